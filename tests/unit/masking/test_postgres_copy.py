"""What a COPY statement tells of its data (read once, from the classification), for
masking its rows per column, toward the job and toward the ledger alike."""

from __future__ import annotations

import pytest

from appliance.masking import ColumnRule, MaskCounts, Masker, MaskingConfig, Style
from appliance.masking.postgres import mask_copy_line
from appliance.policy import CopySpec, copy_spec


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "COPY public.people (name, id) TO stdout;",
            CopySpec("out", "public.people", ("name", "id")),
        ),
        ("copy people (name) to stdout", CopySpec("out", None, ("name",))),
        ("COPY people TO STDOUT CSV HEADER", CopySpec("out", None, None, "csv", True)),
        (
            "copy s.t (a) to stdout with (format csv, header true)",
            CopySpec("out", "s.t", ("a",), "csv", True),
        ),
        (
            "copy s.t (a) to stdout with (format csv, header false)",
            CopySpec("out", "s.t", ("a",), "csv"),
        ),
        ("COPY (SELECT name FROM people) TO STDOUT", CopySpec("out")),
        ("COPY s.t (a) FROM STDIN", CopySpec("in", "s.t", ("a",))),
        ("COPY t TO STDOUT (FORMAT binary)", CopySpec("out", format="binary")),
        ("COPY t TO STDOUT BINARY", CopySpec("out", format="binary")),
        # The grammar decides, not words in the text (a table named csv, a comment).
        ("COPY csv TO STDOUT -- binary", CopySpec("out")),
        ('COPY "binary" TO STDOUT', CopySpec("out")),
        ("not sql at all", None),
        ("COPY s.t (a) TO STDOUT; SELECT 1", None),
    ],
)
def test_copy_spec(sql: str, expected: CopySpec | None) -> None:
    assert copy_spec(sql) == expected


def test_rows_are_masked_per_named_column() -> None:
    config = MaskingConfig(columns=(ColumnRule("name", Style.REDACT, table="people", label="N"),))
    masker = Masker(config, hmac_key=b"k" * 32).for_target("db")
    line = b"Ada\tWidget\n"

    def masked(copy: CopySpec) -> bytes:
        return mask_copy_line(masker, line, MaskCounts(), copy=copy, plans={})

    assert masked(CopySpec("out", "public.people", ("name", "other"))) == b"[REDACTED:N]\tWidget\n"
    assert masked(CopySpec("out", "public.products", ("name", "other"))) == line
    # columns unknown: every column the rule may match is masked (fail closed)
    assert masked(CopySpec("out")) == b"[REDACTED:N]\t[REDACTED:N]\n"
