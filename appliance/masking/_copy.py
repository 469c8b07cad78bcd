"""COPY OUT rows in text and CSV format: split into fields, and write a field back.

PostgreSQL sends one row per CopyData message. The rules here are those of
``src/backend/commands/copyfromparse.c`` (reading) and ``copyto.c`` (writing):

- text: fields separated by the delimiter (tab); ``\\N`` is NULL (compared before
  de-escaping); backslash escapes ``\\b \\f \\n \\r \\t \\v``, ``\\ooo`` octal, ``\\xhh`` hex, and
  a backslash before any other character stands for that character. Writing escapes
  backslash, the delimiter and the six control characters above.
- CSV: fields separated by the delimiter (comma); a field in quotes may hold anything, a quote
  inside doubled (or led by the ESCAPE character); an unquoted field equal to the NULL string
  (empty by default) is NULL. Writing quotes a field that holds the delimiter, the quote, CR or
  LF, or that equals the NULL string.

Only the fields that a mask changes are written back; every other byte of the row is kept as
the server sent it. Rows are taken as UTF-8 (or another ASCII-compatible encoding whose
multi-byte characters never contain ASCII bytes).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from appliance.errors import ApplianceError

__all__ = ["CopyFormat", "CopyRowError", "Field", "encode_field", "line_ending", "split_row"]


class CopyRowError(ApplianceError):
    """A COPY OUT row from the server does not follow the COPY format (the server's fault,
    or a wrong format description from the caller)."""


@dataclass(frozen=True)
class CopyFormat:
    """A COPY's format options. Kept by a target's masker (its formats in use), and so
    pickled with it into the ledger writer process."""

    csv: bool = False
    delimiter: bytes = b"\t"
    null: bytes = b"\\N"
    quote: bytes = b'"'
    escape: bytes = b'"'

    def __reduce__(self) -> tuple[Any, ...]:
        # Spelled out: compiled (mypyc), a frozen dataclass cannot be unpickled field by
        # field ("cannot assign to field"); it is made again from its fields.
        return (CopyFormat, (self.csv, self.delimiter, self.null, self.quote, self.escape))

    @staticmethod
    def make(
        *,
        csv: bool,
        delimiter: str,
        null: str | None = None,
        quote: str = '"',
        escape: str | None = None,
    ) -> CopyFormat:
        """Check and build; single-byte ASCII delimiter, quote and escape as PostgreSQL needs."""
        for name, ch in (("delimiter", delimiter), ("quote", quote), ("escape", escape or quote)):
            if len(ch) != 1 or not ch.isascii() or ch in "\r\n":
                raise CopyRowError(f"COPY {name} must be one ASCII character, got {ch!r}")
        if not csv and delimiter == "\\":
            raise CopyRowError("COPY delimiter cannot be backslash")
        default_null = "" if csv else "\\N"
        return CopyFormat(
            csv=csv,
            delimiter=delimiter.encode(),
            null=(default_null if null is None else null).encode(),
            quote=quote.encode(),
            escape=(escape or quote).encode(),
        )


@dataclass(frozen=True, slots=True)
class Field:
    raw: bytes  # as on the wire
    value: bytes | None  # decoded; None is SQL NULL


def split_row(row: bytes, fmt: CopyFormat) -> tuple[list[Field], bytes]:
    """The fields of ``row`` and its line ending (``b"\\n"``, ``b"\\r\\n"`` or ``b""``)."""
    body, eol = line_ending(row)
    return (_split_csv(body, fmt) if fmt.csv else _split_text(body, fmt)), eol


def line_ending(row: bytes) -> tuple[bytes, bytes]:
    """``row`` without its line ending, and that ending (``b"\\n"``, ``b"\\r\\n"`` or
    ``b""``)."""
    if row.endswith(b"\r\n"):
        return row[:-2], b"\r\n"
    if row.endswith(b"\n"):
        return row[:-1], b"\n"
    return row, b""


def encode_field(value: bytes | None, fmt: CopyFormat, *, single: bool = False) -> bytes:
    """``value`` as COPY TO would write it. ``single``: the row has one column."""
    if value is None:
        return fmt.null
    if not fmt.csv:
        return _text_escaper(fmt.delimiter).sub(_text_escape, value)
    quote = value == fmt.null or (single and value == b"\\.")
    if not quote:
        quote = any(ch in value for ch in (fmt.delimiter, fmt.quote, b"\n", b"\r"))
    if not quote:
        return value
    out = bytearray(fmt.quote)
    for b in value:
        ch = bytes((b,))
        if ch == fmt.quote or ch == fmt.escape:
            out += fmt.escape
        out += ch
    out += fmt.quote
    return bytes(out)


# -- text ---------------------------------------------------------------------------------------

_TEXT_UNESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.DOTALL)
_CONTROL = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}
_CONTROL_OUT = {v: b"\\" + k for k, v in _CONTROL.items()}


@functools.cache
def _text_field(delimiter: bytes) -> re.Pattern[bytes]:
    # A lone backslash at the very end is kept as a literal (the server never sends one).
    return re.compile(rb"(?:[^\\" + re.escape(delimiter) + rb"]|\\.?)*", re.DOTALL)


@functools.cache
def _text_escaper(delimiter: bytes) -> re.Pattern[bytes]:
    specials = b"\\\\" + re.escape(delimiter) + b"\b\f\n\r\t\v"
    return re.compile(b"[" + specials + b"]")


def _text_escape(m: re.Match[bytes]) -> bytes:
    ch = m.group()
    return _CONTROL_OUT.get(ch, b"\\" + ch)


def _unescape_text(raw: bytes) -> bytes:
    if b"\\" not in raw:
        return raw

    def one(m: re.Match[bytes]) -> bytes:
        octal, hexa, other = m.groups()
        if octal is not None:
            return bytes((int(octal, 8) & 0xFF,))
        if hexa is not None:
            return bytes((int(hexa, 16),))
        return _CONTROL.get(other, other)

    return _TEXT_UNESCAPE.sub(one, raw)


def _split_text(body: bytes, fmt: CopyFormat) -> list[Field]:
    if b"\\" not in body:
        # No escapes (most rows): each field is its own bytes, cut at the delimiters.
        null = fmt.null
        return [Field(raw, None if raw == null else raw) for raw in body.split(fmt.delimiter)]
    field_re = _text_field(fmt.delimiter)
    fields: list[Field] = []
    pos = 0
    while True:
        m = field_re.match(body, pos)
        assert m is not None  # the pattern matches the empty string
        raw = body[pos : m.end()]
        fields.append(Field(raw, None if raw == fmt.null else _unescape_text(raw)))
        pos = m.end()
        if pos >= len(body):
            return fields
        pos += 1  # the delimiter


# -- CSV ----------------------------------------------------------------------------------------


def _split_csv(body: bytes, fmt: CopyFormat) -> list[Field]:
    delim, quote, escape = fmt.delimiter[0], fmt.quote[0], fmt.escape[0]
    fields: list[Field] = []
    n = len(body)
    i = 0
    while True:
        start = i
        out = bytearray()
        saw_quote = False
        while i < n and body[i] != delim:
            c = body[i]
            i += 1
            if c != quote:
                out.append(c)
                continue
            saw_quote = True
            while True:
                if i >= n:
                    raise CopyRowError("unterminated quoted field in a CSV COPY row")
                c = body[i]
                i += 1
                if c == escape and i < n and body[i] in (escape, quote):
                    out.append(body[i])
                    i += 1
                    continue
                if c == quote:
                    break
                out.append(c)
        raw = body[start:i]
        fields.append(Field(raw, None if not saw_quote and raw == fmt.null else bytes(out)))
        if i >= n:
            return fields
        i += 1  # the delimiter
