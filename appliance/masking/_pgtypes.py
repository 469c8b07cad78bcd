"""What a PostgreSQL result column can carry once masked, by type OID and format.

A mask replaces a value with text (``[REDACTED:CARD]``, ``****1111``). That is a valid value
of a text column, but not of an ``int8`` or ``date`` column: a client would fail to parse it.
So, in text format:

- text-like types (``text``, ``varchar``, ``bpchar``, ``name``, ``char``, ``xml``, ``unknown``,
  and the types of extensions, OID >= 16384, which clients read as text) get the mask;
- ``json``/``jsonb`` get it where it keeps the document valid JSON, else SQL NULL;
- every other built-in type gets SQL NULL: the value is gone, the client still parses the row,
  and the ledger counts say what was masked.

In binary format, text-like types carry the same bytes as in text format (``jsonb`` after a
version byte) and are masked the same way; integers and ``numeric`` are decoded so the
detectors can see the digits, but cannot be rewritten; anything else cannot be scanned.
Type OIDs are from ``pg_type.dat`` (stable across PostgreSQL versions).
"""

from __future__ import annotations

import enum
import struct

__all__ = ["Kind", "binary_is_text", "decode_number", "kind_of"]

FIRST_NORMAL_OID = 16384  # OIDs below are built in (transam.h FirstNormalObjectId)

_TEXT_LIKE = frozenset({0, 18, 19, 25, 142, 705, 1042, 1043})
# Types whose binary format is their text (textsend and alike): a masked value can be
# written back in binary. 0 (no type known) is not one of them.
_BINARY_IS_TEXT = _TEXT_LIKE - {0}
_JSON = 114
_JSONB = 3802
_INTS = {21: "!h", 23: "!i", 20: "!q", 26: "!I"}  # int2, int4, int8, oid
_NUMERIC = 1700
_NUMERIC_NEG = 0x4000


class Kind(enum.Enum):
    """How a column's values are scanned and how a mask is written back."""

    TEXT = "text"  # the mask is written as text
    JSON = "json"  # written if the result is valid JSON, else NULL
    STRICT = "strict"  # text format: a masked value becomes NULL
    NUMBER = "number"  # binary int/numeric: scanned as digits, never rewritten
    JSONB_BINARY = "jsonb_binary"  # version byte 1, then JSON text
    OPAQUE = "opaque"  # binary and not decodable here: cannot be scanned


def kind_of(type_oid: int | None, binary: bool) -> Kind:
    """The :class:`Kind` of a column of ``type_oid`` (None: unknown, taken as text)."""
    if type_oid is None or type_oid in _TEXT_LIKE or type_oid >= FIRST_NORMAL_OID:
        if binary and type_oid is not None and type_oid >= FIRST_NORMAL_OID:
            return Kind.OPAQUE
        return Kind.TEXT
    if type_oid == _JSON:
        return Kind.JSON
    if type_oid == _JSONB:
        return Kind.JSONB_BINARY if binary else Kind.JSON
    if binary:
        return Kind.NUMBER if type_oid in _INTS or type_oid == _NUMERIC else Kind.OPAQUE
    return Kind.STRICT


def binary_is_text(type_oid: int | None) -> bool:
    """Whether a binary value of ``type_oid`` is its text, so a mask can be written back."""
    return type_oid in _BINARY_IS_TEXT


def decode_number(type_oid: int, data: bytes) -> str | None:
    """The decimal text of a binary ``int2``/``int4``/``int8``/``oid``/``numeric``, or None
    if ``data`` is not a well-formed value of that type (or is NaN or infinite)."""
    fmt = _INTS.get(type_oid)
    if fmt is not None:
        if len(data) != struct.calcsize(fmt):
            return None
        return str(struct.unpack(fmt, data)[0])
    if type_oid != _NUMERIC or len(data) < 8:
        return None
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHH", data)
    if ndigits < 0 or len(data) != 8 + 2 * ndigits or sign not in (0, _NUMERIC_NEG):
        return None
    groups = struct.unpack_from(f"!{ndigits}H", data, 8)
    if any(g > 9999 for g in groups):
        return None
    # Base-10000 digit groups; the first ``weight + 1`` are the integer part (numeric.c).
    digits = "".join(f"{g:04d}" for g in groups)
    whole = weight + 1
    if whole >= ndigits:
        int_part, frac = digits + "0000" * (whole - ndigits), ""
    elif whole <= 0:
        int_part, frac = "0", "0000" * -whole + digits
    else:
        int_part, frac = digits[: 4 * whole], digits[4 * whole :]
    text = int_part.lstrip("0") or "0"
    if dscale:
        text += "." + (frac + "0" * dscale)[:dscale]
    return "-" + text if sign == _NUMERIC_NEG else text
