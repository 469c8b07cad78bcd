"""Mask styles: what a sensitive value is replaced with.

Three styles, the same for detector findings and for column rules:

- ``redact``: ``[REDACTED:CARD]`` -- the detector name (or the column rule's label) in capitals.
- ``partial``: every letter and digit but the last four becomes ``*``; separators stay, so
  ``4111-1111-1111-1111`` becomes ``****-****-****-1111``. Never more than half of the letters
  and digits are kept, so a short value does not come back whole.
- ``hash``: ``[HMAC:<16 hex>]``, the first 64 bits of HMAC-SHA256 under the appliance's masking
  key. Equal values give equal tokens, so masked columns stay joinable; without the key the
  token says nothing about the value.

The tokens have a grammar of their own (:data:`TOKEN_RE`) so that masking an already masked
text finds nothing new (masking is idempotent).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re

__all__ = [
    "TOKEN_RE",
    "Style",
    "keyed_hash",
    "label_for",
    "looks_masked",
    "partial",
    "redact",
]


class Style(enum.StrEnum):
    """How a value is masked. ``NONE`` exists for column rules only: "no whole-value mask"."""

    REDACT = "redact"
    PARTIAL = "partial"
    HASH = "hash"
    NONE = "none"


# The tokens this module writes. A finding that lies inside one of them is not a new finding.
TOKEN_RE = re.compile(r"\[(?:REDACTED:[A-Z0-9_]{1,64}|HMAC:[0-9a-f]{16})\]", re.ASCII)
_HASH_HEX = 16
_KEEP = 4


def redact(label: str) -> str:
    """``[REDACTED:<label>]``; ``label`` must already be a valid label (see :func:`label_for`)."""
    return f"[REDACTED:{label}]"


@functools.lru_cache(maxsize=1024)  # detector and column names: a handful, one per mask
def label_for(name: str) -> str:
    """A redaction label made from a detector or column name: capitals, digits and ``_``."""
    label = re.sub(r"[^A-Z0-9_]+", "_", name.upper()).strip("_")[:64]
    return label or "COLUMN"


def partial(value: str) -> str:
    """Keep the last four letters or digits (at most half of them); star the others."""
    alnum = sum(1 for c in value if c.isalnum())
    if alnum < 2:
        # Nothing worth keeping, and the separators alone may be the secret ("!!!!").
        return "*" * len(value)
    keep = min(_KEEP, alnum // 2)
    starred = alnum - keep
    out: list[str] = []
    seen = 0
    for c in value:
        if c.isalnum():
            out.append("*" if seen < starred else c)
            seen += 1
        else:
            out.append(c)
    return "".join(out)


def keyed_hash(key: bytes, value: bytes) -> str:
    """``[HMAC:<first 16 hex of HMAC-SHA256(key, value)>]``.

    HMAC (RFC 2104) from the key's two padded blocks, each hashed once per key and copied
    per value (:func:`_pads`): ``hmac.new`` hashes both again for every value, half its
    cost for a short one (issue 19: with ``style: hash`` on e-mail addresses, an export
    hashes one in every row)."""
    inner_pad, outer_pad = _pads(key)
    inner = inner_pad.copy()
    inner.update(value)
    outer = outer_pad.copy()
    outer.update(inner.digest())
    return f"[HMAC:{outer.hexdigest()[:_HASH_HEX]}]"


@functools.lru_cache(maxsize=8)
def _pads(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """SHA-256 states after HMAC's inner and outer padded key blocks (a key longer than a
    block is hashed first, a shorter one padded with zero bytes)."""
    block = 64  # SHA-256's block size
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\x00")
    return (
        hashlib.sha256(bytes(b ^ 0x36 for b in key)),
        hashlib.sha256(bytes(b ^ 0x5C for b in key)),
    )


def looks_masked(value: str) -> bool:
    """True if ``value`` is one of our tokens or the output of :func:`partial`.

    Detectors that accept almost any value (a password after ``password=``) use this so that
    a second pass over masked text finds nothing.
    """
    if TOKEN_RE.fullmatch(value):
        return True
    core = "".join(c for c in value if c.isalnum() or c == "*")
    tail = core.lstrip("*")
    if len(tail) == len(core) or "*" in tail:
        return False
    return len(tail) <= min(_KEEP, len(core) // 2)
