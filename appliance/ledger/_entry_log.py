"""The ledger writer's work per entry, as functions compiled with mypyc.

Where it sits: :class:`~appliance.ledger.writer.LedgerWriter` calls these for every entry it
writes (two per statement through the proxy: the statement and its response), in the writer
process by default; the steps themselves are defined where they always were (the record
framing in :mod:`appliance.ledger._framing`, the Merkle leaf and compact range in
:mod:`appliance.ledger.merkle`, canonical JSON in :mod:`appliance.ledger.entries`), and this
module only strings them together natively (``appliance._pure.HOT_MODULES``), where the
writer's own methods would pay an interpreted call per step. Functions, not writer
methods: tests replace writer methods on instances, which a compiled class does not allow.
"""

from __future__ import annotations

import hashlib
from typing import Any

from appliance.ledger._framing import ENTRY_MAGIC, encode_frame
from appliance.ledger.entries import encode_trusted
from appliance.ledger.merkle import CompactRange, leaf_hash

__all__ = ["add_entry", "inline_ref", "spliced"]


def add_entry(buf: bytearray, compact: CompactRange, seq: int, raw: bytes) -> int:
    """Entry ``seq`` (its canonical bytes ``raw``) framed onto the end of ``buf``, and its
    leaf hash appended to ``compact``. Returns the size of ``buf`` now."""
    buf += encode_frame(ENTRY_MAGIC, seq, raw)
    compact.append(leaf_hash(raw))
    return len(buf)


def inline_ref(content: bytes) -> dict[str, Any] | None:
    """The reference that carries a (transformed) blob inline in its entry: its SHA-256,
    size and text; None if ``content`` is not UTF-8 (then it goes to the blob store)."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content), "inline": text}


def spliced(raw: bytes, start: int, end: int, ref: dict[str, Any]) -> bytes:
    """``raw`` (an entry's canonical bytes) with the canonical JSON of ``ref`` in place of
    ``raw[start:end]`` (a blob's marker)."""
    return b"".join((raw[:start], encode_trusted(ref), raw[end:]))
