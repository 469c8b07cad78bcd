"""COPY OUT rows: PostgreSQL's text and CSV escaping, round trips, and masked rows.

Vectors follow the COPY documentation ("File Formats") and copyto.c: what the server writes.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.masking import CopyRowError, MaskCounts
from appliance.masking._copy import CopyFormat, encode_field, split_row
from tests.unit.masking.helpers import masker

TEXT = CopyFormat.make(csv=False, delimiter="\t")
CSV = CopyFormat.make(csv=True, delimiter=",")
TM = masker()


def values(row: bytes, fmt: CopyFormat) -> list[bytes | None]:
    fields, _ = split_row(row, fmt)
    return [f.value for f in fields]


def test_text_format_vectors() -> None:
    row = b"1\tAl\\\\ice\t\\N\tline1\\nline2\ttab\\there\t\\101\\x42\\q\t\n"
    assert values(row, TEXT) == [b"1", b"Al\\ice", None, b"line1\nline2", b"tab\there", b"ABq", b""]
    assert split_row(row, TEXT)[1] == b"\n"
    assert encode_field(b"a\tb\\c\nd\x01", TEXT) == b"a\\tb\\\\c\\nd\x01"
    assert encode_field(None, TEXT) == b"\\N"
    # A custom delimiter is escaped; the default one is then an ordinary character.
    pipe = CopyFormat.make(csv=False, delimiter="|")
    assert values(b"a\\|b|c\td\n", pipe) == [b"a|b", b"c\td"]
    assert encode_field(b"a|b\tc", pipe) == b"a\\|b\\tc"


def test_csv_format_vectors() -> None:
    row = b'1,"Smith, Alice",,"","say ""hi""","two\nlines"\n'
    assert values(row, CSV) == [b"1", b"Smith, Alice", None, b"", b'say "hi"', b"two\nlines"]
    assert encode_field(b"", CSV) == b'""'  # equal to the NULL string: quoted
    assert encode_field(None, CSV) == b""
    assert encode_field(b'say "hi"', CSV) == b'"say ""hi"""'
    assert encode_field(b"plain", CSV) == b"plain"
    assert encode_field(b"\\.", CSV, single=True) == b'"\\."'
    backslash = CopyFormat.make(csv=True, delimiter=",", escape="\\")
    assert values(b'"a\\"b\\\\c"\n', backslash) == [b'a"b\\c']
    assert encode_field(b'a"b\\c', backslash) == b'"a\\"b\\\\c"'
    with pytest.raises(CopyRowError, match="unterminated"):
        split_row(b'1,"open\n', CSV)


def test_bad_formats_are_refused() -> None:
    with pytest.raises(CopyRowError):
        CopyFormat.make(csv=False, delimiter="\\")
    with pytest.raises(CopyRowError):
        CopyFormat.make(csv=True, delimiter=",,")


cells = st.one_of(st.none(), st.binary(max_size=20), st.text(max_size=12).map(str.encode))


@settings(derandomize=True, deadline=None, database=None, max_examples=400)
@given(
    st.lists(cells, min_size=1, max_size=6),
    st.sampled_from(
        [
            CopyFormat.make(csv=False, delimiter="\t"),
            CopyFormat.make(csv=False, delimiter="|"),
            CopyFormat.make(csv=False, delimiter=",", null="NULL"),
            CopyFormat.make(csv=True, delimiter=","),
            CopyFormat.make(csv=True, delimiter=";", null="\\N"),
            CopyFormat.make(csv=True, delimiter=",", escape="\\"),
        ]
    ),
)
def test_round_trip(row: list[bytes | None], fmt: CopyFormat) -> None:
    if not fmt.csv:
        # Text format cannot tell a value equal to the NULL marker from NULL; nor can the server.
        row = [None if v == fmt.null else v for v in row]
    line = fmt.delimiter.join(encode_field(v, fmt, single=len(row) == 1) for v in row) + b"\n"
    assert values(line, fmt) == row


def test_mask_copy_line_text() -> None:
    plan = TM.column_plan("public.customers", ["id", "card", "note"])
    counts = MaskCounts()
    line = b"1\t4111111111111111\tmail bob@example.com\\tcc \\x41\n"
    out = TM.mask_copy_line(plan, line, counts, csv=False, delimiter="\t")
    assert out == b"1\t[REDACTED:CARD]\tmail [REDACTED:EMAIL]\\tcc A\n"
    assert counts.as_dict()["columns"] == {"public.customers.card": 1, "public.customers.note": 1}
    clean = b"2\t\\N\tnothing to see \\x41\n"
    assert TM.mask_copy_line(plan, clean, MaskCounts(), csv=False, delimiter="\t") is clean


def test_mask_copy_line_keeps_untouched_fields_byte_for_byte() -> None:
    plan = TM.column_plan(None, ["a", "b"])
    line = b"\\101\\x42\t536-90-4399\n"  # escapes the server never writes, kept as they are
    out = TM.mask_copy_line(plan, line, MaskCounts(), csv=False, delimiter="\t")
    assert out == b"\\101\\x42\t[REDACTED:SSN]\n"


def test_mask_copy_line_csv() -> None:
    plan = TM.column_plan(None, ["id", "who", "memo"])
    line = b'1,"Smith, Alice <alice@example.com>",""\r\n'
    out = TM.mask_copy_line(plan, line, MaskCounts(), csv=True, delimiter=",")
    assert out == b'1,"Smith, Alice <[REDACTED:EMAIL]>",""\r\n'
    # A mask that holds the delimiter is quoted.
    colon = b"1:alice@example.com:x\n"
    out = TM.mask_copy_line(plan, colon, MaskCounts(), csv=True, delimiter=":")
    assert out == b'1:"[REDACTED:EMAIL]":x\n'
    assert values(out, CopyFormat.make(csv=True, delimiter=":")) == [
        b"1",
        b"[REDACTED:EMAIL]",
        b"x",
    ]


def test_mask_copy_line_checks_the_shape() -> None:
    plan = TM.column_plan(None, ["a", "b"])
    with pytest.raises(CopyRowError, match="3 fields"):
        TM.mask_copy_line(plan, b"1\t2\t3\n", MaskCounts(), csv=False, delimiter="\t")
