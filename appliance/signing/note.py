"""C2SP signed notes (c2sp.org/signed-note@v1.0.0), Ed25519 only.

A note is a text ending in a newline, a blank line, then one or more signature lines
``— <key name> base64(4-byte key id || signature)``. Parsing follows the spec and Go's
reference implementation (golang.org/x/mod/sumdb/note ``Open``) rule for rule:

- the whole note is valid UTF-8 without ASCII control characters other than newline;
- the text is everything up to and including the newline before the *last* blank line;
- every line after it is a signature line and ends in a newline; at most 100 of them;
- a signature whose (name, key id) matches no known key is ignored; one that matches a known
  key must verify, else the note is rejected (:class:`~appliance.signing.keys.InvalidSignature`);
- at least one known key must have signed, else the note is rejected (InvalidSignature).

Malformed notes raise :class:`MalformedNote` (a :class:`NoteError`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from appliance.errors import ApplianceError
from appliance.signing.keys import InvalidSignature, SigningKey, VerifierKey

MAX_SIGNATURES = 100
_SIG_PREFIX = "— "  # U+2014 EM DASH, space


class NoteError(ApplianceError):
    """A signed note cannot be used."""


class MalformedNote(NoteError):
    """The note does not follow the signed-note format."""


class UnverifiedNote(InvalidSignature):
    """The note is well formed but no known key signed it. ``signers`` lists who did."""

    def __init__(self, message: str, signers: list[tuple[str, bytes]]) -> None:
        self.signers = signers
        super().__init__(message)


def _valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def sign_note(text: str, keys: Sequence[SigningKey]) -> str:
    """The note ``text`` signed by each of ``keys`` in order.

    ``text`` must end in a newline and must not contain a blank line at its end (the blank
    line is the separator); raises :class:`MalformedNote` otherwise.
    """
    if not text.endswith("\n") or text.endswith("\n\n") or text == "\n":
        raise MalformedNote("note text must end in exactly one newline")
    if not keys:
        raise NoteError("a note needs at least one signing key")
    _check_chars(text)
    msg = text.encode()
    lines = []
    for key in keys:
        sig = base64.b64encode(key.key_id + key.sign(msg)).decode()
        lines.append(f"{_SIG_PREFIX}{key.name} {sig}\n")
    return text + "\n" + "".join(lines)


def _check_chars(note: str) -> None:
    for ch in note:
        if ch < " " and ch != "\n":
            raise MalformedNote("note contains an ASCII control character")


def parse_note(note: str | bytes) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """Split a note into its text and its signatures ``(name, key id, signature)``.

    No signature is checked here; raises :class:`MalformedNote`.
    """
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedNote("note is not valid UTF-8") from None
    if any(0xD800 <= ord(c) <= 0xDFFF for c in note):
        raise MalformedNote("note is not valid UTF-8")
    _check_chars(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise MalformedNote("note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block or not block.endswith("\n"):
        raise MalformedNote("note has no signature lines, or its last line has no newline")
    sigs: list[tuple[str, bytes, bytes]] = []
    for line in block[:-1].split("\n"):
        if not line.startswith(_SIG_PREFIX):
            raise MalformedNote(f"not a signature line: {line[:40]!r}")
        name, _, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedNote(f"signature of {name!r} is not base64") from None
        if not _valid_name(name) or not b64 or len(raw) < 5:
            raise MalformedNote(f"malformed signature line for {name!r}")
        sigs.append((name, raw[:4], raw[4:]))
        if len(sigs) > MAX_SIGNATURES:
            raise MalformedNote(f"more than {MAX_SIGNATURES} signatures")
    return text, sigs


def open_note(note: str | bytes, verifiers: Sequence[VerifierKey]) -> tuple[str, list[VerifierKey]]:
    """Verify a note; return its text and the known keys whose signatures verified.

    Raises :class:`MalformedNote` if malformed, :class:`InvalidSignature` if a known key's
    signature is bad, :class:`UnverifiedNote` (an InvalidSignature) if no known key signed.
    """
    text, sigs = parse_note(note)
    known: dict[tuple[str, bytes], list[VerifierKey]] = {}
    for v in verifiers:
        known.setdefault((v.name, v.key_id), []).append(v)
    msg = text.encode()
    verified: list[VerifierKey] = []
    for name, kid, sig in sigs:
        candidates = known.get((name, kid))
        if not candidates:
            continue  # unknown keys are ignored (signed-note §Signatures)
        if len(candidates) > 1 and len(set(candidates)) > 1:
            raise NoteError(f"ambiguous verifier key {name}+{kid.hex()}")
        key = candidates[0]
        if key in verified:
            continue  # a repeated signature by one key counts once
        try:
            key.verify(msg, sig)
        except InvalidSignature:
            raise InvalidSignature(f"invalid signature for key {name}+{kid.hex()}") from None
        verified.append(key)
    if not verified:
        signers = [(name, kid) for name, kid, _ in sigs]
        who = ", ".join(f"{n}+{k.hex()}" for n, k in signers)
        raise UnverifiedNote(f"note has no signature by a known key (signed by: {who})", signers)
    return text, verified
