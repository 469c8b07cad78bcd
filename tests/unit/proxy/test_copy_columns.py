"""What a COPY statement tells of its rows, for masking them per column."""

from __future__ import annotations

import pytest

from appliance.masking import ColumnRule, MaskCounts, Masker, MaskingConfig, Style
from appliance.proxy.pg.masking import CopyColumns, copy_columns, mask_copy_line


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("COPY public.people (name, id) TO stdout;", CopyColumns("public.people", ("name", "id"))),
        ("copy people (name) to stdout", CopyColumns(None, ("name",))),
        ("COPY people TO STDOUT CSV HEADER", CopyColumns(None, None, True)),
        ("copy s.t (a) to stdout with (format csv, header true)", CopyColumns("s.t", ("a",), True)),
        ("copy s.t (a) to stdout with (format csv, header false)", CopyColumns("s.t", ("a",))),
        ("COPY (SELECT name FROM people) TO STDOUT", CopyColumns()),
        ("COPY s.t (a) FROM STDIN", CopyColumns("s.t", ("a",))),
        ("not sql at all", CopyColumns()),
        ("COPY s.t (a) TO STDOUT; SELECT 1", CopyColumns()),
    ],
)
def test_copy_columns(sql: str, expected: CopyColumns) -> None:
    assert copy_columns(sql) == expected


def test_rows_are_masked_per_named_column() -> None:
    config = MaskingConfig(columns=(ColumnRule("name", Style.REDACT, table="people", label="N"),))
    masker = Masker(config, hmac_key=b"k" * 32).for_target("db")
    line = b"Ada\tWidget\n"

    def masked(copy: CopyColumns) -> bytes:
        return mask_copy_line(masker, line, MaskCounts(), csv=False, plans={}, copy=copy)

    assert masked(CopyColumns("public.people", ("name", "other"))) == b"[REDACTED:N]\tWidget\n"
    assert masked(CopyColumns("public.products", ("name", "other"))) == line
    # columns unknown: every column the rule may match is masked (fail closed)
    assert masked(CopyColumns()) == b"[REDACTED:N]\t[REDACTED:N]\n"
