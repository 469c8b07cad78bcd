"""Offline proofs: C2SP tlog-proof (c2sp.org/tlog-proof@v1) for single entries, and
consistency between two checkpoints.

A tlog-proof is::

    c2sp.org/tlog-proof@v1
    extra <base64>            (optional; here: the entry's exact bytes)
    index <N>
    <base64 hash>             (inclusion proof, leaf's sibling first, RFC 6962 §2.1.1)
    ...
    <blank line>
    <the signed checkpoint note, verbatim>

The spec makes ``extra`` opaque and unauthenticated; this ledger puts the entry itself there
so a proof file is self-contained, and the verifier trusts it only because its leaf hash
verifies against the signed root. A proof without ``extra`` needs the entry given separately.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.ledger._framing import ENTRY_MAGIC, FrameScanner, MappedFile
from appliance.ledger.checkpoint import Checkpoint, open_checkpoint
from appliance.ledger.errors import LedgerError, ProofError, TamperError
from appliance.ledger.merkle import (
    HASH_SIZE,
    MerkleTree,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from appliance.ledger.store import ENTRIES
from appliance.signing.keys import VerifierKey
from appliance.signing.note import MalformedNote

HEADER = "c2sp.org/tlog-proof@v1"
_INDEX_RE = re.compile(r"index (0|[1-9][0-9]*)")


class MalformedProof(MalformedNote):
    """The text is not a tlog-proof."""


@dataclass(frozen=True)
class TlogProof:
    index: int
    hashes: tuple[bytes, ...]
    checkpoint: str  # the signed note, verbatim
    extra: bytes | None = None

    def text(self) -> str:
        lines = [HEADER]
        if self.extra is not None:
            lines.append("extra " + base64.b64encode(self.extra).decode())
        lines.append(f"index {self.index}")
        lines.extend(base64.b64encode(h).decode() for h in self.hashes)
        return "\n".join(lines) + "\n\n" + self.checkpoint


def parse_proof(text: str) -> TlogProof:
    """Parse a tlog-proof; raise :class:`MalformedProof` naming the problem."""
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise MalformedProof("tlog-proof has no blank line before its checkpoint")
    lines = head.split("\n")
    if lines[0] != HEADER:
        raise MalformedProof(f"tlog-proof must start with {HEADER!r}")
    pos = 1
    extra = None
    if pos < len(lines) and lines[pos].startswith("extra "):
        try:
            extra = base64.b64decode(lines[pos][6:], validate=True)
        except (binascii.Error, ValueError):
            raise MalformedProof("tlog-proof extra data is not base64") from None
        pos += 1
    m = _INDEX_RE.fullmatch(lines[pos]) if pos < len(lines) else None
    if m is None:
        raise MalformedProof("tlog-proof has no valid 'index N' line")
    hashes = []
    for line in lines[pos + 1 :]:
        try:
            h = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedProof(f"tlog-proof hash line is not base64: {line[:50]!r}") from None
        if len(h) != HASH_SIZE:
            raise MalformedProof("tlog-proof hash line is not a 32-byte hash")
        hashes.append(h)
    return TlogProof(int(m.group(1)), tuple(hashes), note, extra)


def check_proof(
    proof: TlogProof,
    verifiers: Sequence[VerifierKey],
    *,
    entry: bytes | None = None,
    origin: str | None = None,
) -> tuple[Checkpoint, bytes]:
    """Verify ``proof``; return its checkpoint and the entry bytes it proves.

    The entry is ``entry`` if given (it must then equal ``extra`` if both are present), else
    the proof's ``extra``. Raises InvalidSignature / MalformedNote for the checkpoint,
    ProofError if the entry is not included, LedgerError if there is no entry to check.
    """
    cp = open_checkpoint(proof.checkpoint, verifiers, origin=origin)
    if entry is None:
        entry = proof.extra
    elif proof.extra is not None and proof.extra != entry:
        raise ProofError("the given entry differs from the entry carried in the proof")
    if entry is None:
        raise LedgerError("the proof carries no entry (extra); give the entry's bytes")
    verify_inclusion(leaf_hash(entry), proof.index, cp.size, proof.hashes, cp.root)
    return cp, entry


def load_tree(
    directory: Path, size: int | None = None, keep: Iterable[int] = ()
) -> tuple[MerkleTree, dict[int, bytes]]:
    """The Merkle tree of the first ``size`` entries (all if None), and the stored bytes of
    the entries whose indices are in ``keep``.

    Raises TamperError if the log holds fewer entries or is damaged before ``size``.
    """
    wanted = set(keep)
    tree = MerkleTree()
    kept: dict[int, bytes] = {}
    with MappedFile(directory / ENTRIES) as mf:
        scanner = FrameScanner(mf.data, ENTRY_MAGIC)
        for frame in scanner:
            if size is not None and tree.size >= size:
                break
            if frame.seq != tree.size:
                raise TamperError(f"{ENTRIES}: record {tree.size} says seq {frame.seq}")
            if tree.size in wanted:
                kept[tree.size] = frame.payload
            tree.append(leaf_hash(frame.payload))
    if size is not None and tree.size < size:
        # Fewer entries than a signed checkpoint covers: signed history was cut or damaged.
        raise TamperError(f"{ENTRIES} holds {tree.size} readable entries, fewer than {size}")
    return tree, kept


def make_proof(
    tree: MerkleTree, index: int, checkpoint: Checkpoint, *, entry: bytes | None
) -> TlogProof:
    """A tlog-proof of entry ``index`` against ``checkpoint`` (whose root must match),
    carrying ``entry`` (the entry's stored bytes) as its extra data if given."""
    if tree.root(checkpoint.size) != checkpoint.root:
        raise ProofError(f"the entries do not hash to the checkpoint's root ({checkpoint.size})")
    if checkpoint.note is None:
        raise LedgerError("the checkpoint has no signed note")
    if entry is not None and leaf_hash(entry) != tree.leaf(index):
        raise ProofError(f"the given bytes are not entry {index}")
    hashes = tree.inclusion_proof(index, checkpoint.size)
    return TlogProof(index, tuple(hashes), checkpoint.note, entry)


def check_consistency(old: Checkpoint, new: Checkpoint, proof: Sequence[bytes]) -> None:
    """Raise ProofError unless ``new`` extends ``old`` (same origin, consistency proof)."""
    if old.origin != new.origin:
        raise ProofError(f"checkpoints are of different logs: {old.origin!r}, {new.origin!r}")
    verify_consistency(old.size, new.size, proof, old.root, new.root)
