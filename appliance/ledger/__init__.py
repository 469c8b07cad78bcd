"""The signed, append-only ledger: entries, Merkle tree, C2SP checkpoints and proofs.

Where it sits: the proxy and the capture layer call :class:`LedgerWriter` (``append``,
``open_blob``); the CLI and auditors read with :func:`iter_entries`, verify with
:func:`verify_ledger`, and prove with :mod:`appliance.ledger.proof`.

- :mod:`~appliance.ledger.entries`: entry types and canonical JSON (the hashed bytes);
- :mod:`~appliance.ledger.merkle`: RFC 6962/9162 tree, inclusion and consistency proofs;
- :mod:`~appliance.ledger.checkpoint`: C2SP tlog-checkpoints (signed notes and keys live in
  :mod:`appliance.signing`);
- :mod:`~appliance.ledger.store`, :mod:`~appliance.ledger.recovery`,
  :mod:`~appliance.ledger.writer`: the directory layout, crash recovery, the single writer;
- :mod:`~appliance.ledger.verify`, :mod:`~appliance.ledger.proof`: whole-ledger verification,
  tlog-proofs and consistency; :mod:`~appliance.ledger.index`, :mod:`~appliance.ledger.render`:
  queries and transcripts; :mod:`~appliance.ledger.export`, :mod:`~appliance.ledger.pcap`:
  offline bundles and pcaps (protocol packages call ``pcap.register_renderer``).
"""

from appliance.ledger.checkpoint import Checkpoint
from appliance.ledger.entries import Entry
from appliance.ledger.errors import (
    CanonicalError,
    LedgerError,
    LedgerUnavailable,
    TamperError,
)
from appliance.ledger.recovery import RecoveryReport, recover
from appliance.ledger.store import BlobReader, iter_entries, latest_checkpoint
from appliance.ledger.verify import VerifyReport, verify_ledger
from appliance.ledger.writer import BlobSink, LedgerWriter
from appliance.signing.keys import SigningKey, VerifierKey

__all__ = [
    "BlobReader",
    "BlobSink",
    "CanonicalError",
    "Checkpoint",
    "Entry",
    "LedgerError",
    "LedgerUnavailable",
    "LedgerWriter",
    "RecoveryReport",
    "SigningKey",
    "TamperError",
    "VerifierKey",
    "VerifyReport",
    "iter_entries",
    "latest_checkpoint",
    "recover",
    "verify_ledger",
]
