"""Signing primitives: Ed25519 keys and C2SP signed notes, shared by everyone who signs.

Where it sits: the ledger signs its checkpoints with them, approvers sign decisions with
them, the policy names approver keys by them; none of those packages imports another for
this. Nothing here knows what a note says.

- :mod:`~appliance.signing.keys`: keys in the C2SP vkey/skey text forms
  (``SigningKey``, ``VerifierKey``, key ids, key files);
- :mod:`~appliance.signing.note`: C2SP signed notes (``sign_note``, ``open_note``).
"""

from appliance.signing.keys import (
    InvalidSignature,
    KeyFormatError,
    SigningKey,
    VerifierKey,
    load_signing_key,
    load_verifier_key,
    write_key_pair,
)
from appliance.signing.note import MalformedNote, NoteError, UnverifiedNote, open_note, sign_note

__all__ = [
    "InvalidSignature",
    "KeyFormatError",
    "MalformedNote",
    "NoteError",
    "SigningKey",
    "UnverifiedNote",
    "VerifierKey",
    "load_signing_key",
    "load_verifier_key",
    "open_note",
    "sign_note",
    "write_key_pair",
]
