"""MySQL result rows masked toward the job and toward the ledger (appliance.masking.mysql):
one decision per value for both, in the text and the binary protocol, with the column types
and column rules of the target; a binary value of a BLOB column stays a binary cell in the
ledger; malformed rows leave nothing readable."""

from __future__ import annotations

import struct

from appliance.config import parse_config
from appliance.ledger.results import is_binary_cell
from appliance.masking import MaskCounts, Masker, parse_masking
from appliance.masking.mysql import (
    LedgerRows,
    ResponseMasker,
    ResultColumns,
    mask_type,
    row_texts,
)
from appliance.protocols.mysql.constants import BINARY_CHARSET, Type
from appliance.protocols.mysql.messages import (
    ColumnDef,
    binary_row,
    encode_binary_row,
    encode_text_row,
    text_row,
)
from tests.unit.masking.helpers import KEY

CARD = b"4111111111111111"
CONFIG = """\
targets:
  - name: shop
    protocol: mysql
    addresses: [10.0.0.5:3306]
    accounts: [{name: ci, user: app, secret: {file: /etc/appliance/app.pw}}]
masking:
  key: {file: /etc/appliance/mask.key}
  columns:
    - {table: app.customers, column: secret_answer, style: redact}
"""


def _masker() -> Masker:
    cfg = parse_config(CONFIG)
    return Masker(parse_masking(cfg.masking, targets=cfg.targets), hmac_key=KEY)


def _col(name: str, type_: int, *, table: str = "customers", charset: int = 45) -> ColumnDef:
    return ColumnDef("app", table, table, name, name, charset, 255, type_, 0, 0)


COLUMNS = [
    _col("id", Type.LONG, charset=BINARY_CHARSET),
    _col("card", Type.VAR_STRING),
    _col("account_no", Type.LONGLONG, charset=BINARY_CHARSET),
    _col("secret_answer", Type.VAR_STRING),
    _col("photo", Type.BLOB, charset=BINARY_CHARSET),
    _col("born", Type.DATE, charset=BINARY_CHARSET),
]


def _binary_row() -> bytes:
    return encode_binary_row(
        [
            struct.pack("<i", 7),
            CARD,
            struct.pack("<q", 4111111111111111),  # a card number stored as a number
            b"Rex",
            b"\x00\xff\x10",
            bytes((1990 & 0xFF, 1990 >> 8, 1, 2)),
        ],
        [c.type for c in COLUMNS],
    )


def _text_row() -> bytes:
    return encode_text_row(
        [b"7", CARD, b"4111111111111111", b"Rex", b"\x00\xff\x10", b"1990-01-02"]
    )


def test_a_text_row_is_masked_alike_for_the_job_and_the_ledger() -> None:
    tm = _masker().for_target("shop")
    columns = ResultColumns.of(COLUMNS, binary=False)
    job = ResponseMasker(tm)
    sent = text_row(job.mask_row(job.plan(columns), columns, _text_row()), len(COLUMNS))
    assert sent == [
        b"7",
        b"[REDACTED:CARD]",
        None,
        b"[REDACTED:SECRET_ANSWER]",
        b"\x00\xff\x10",
        b"1990-01-02",
    ]
    counts = MaskCounts()
    ledger = LedgerRows(tm, counts)
    ledger.header(columns.header())
    cells = ledger.row(_text_row())
    assert cells[:4] == ["7", "[REDACTED:CARD]", None, "[REDACTED:SECRET_ANSWER]"]
    assert is_binary_cell(cells[4]) and cells[5] == "1990-01-02"
    assert counts.as_dict() == job.take_counts().as_dict()


def test_a_binary_row_keeps_its_types_and_masks_what_the_text_row_masks() -> None:
    tm = _masker().for_target("shop")
    columns = ResultColumns.of(COLUMNS, binary=True)
    job = ResponseMasker(tm)
    out = job.mask_row(job.plan(columns), columns, _binary_row())
    values = binary_row(out, [c.type for c in COLUMNS])
    # A masked number cannot hold a mask: NULL, as in a text row; strings get the mask;
    # what no mask touched goes out byte for byte.
    assert values[0] == struct.pack("<i", 7) and values[1] == b"[REDACTED:CARD]"
    assert values[2] is None and values[3] == b"[REDACTED:SECRET_ANSWER]"
    assert values[4] == b"\x00\xff\x10" and values[5] == bytes((1990 & 0xFF, 1990 >> 8, 1, 2))
    ledger = LedgerRows(tm, MaskCounts())
    ledger.header(columns.header())
    assert ledger.row(_binary_row())[:4] == [
        "7",
        "[REDACTED:CARD]",
        None,
        "[REDACTED:SECRET_ANSWER]",
    ]
    assert ledger.row(_binary_row())[5] == "1990-01-02"


def test_a_clean_row_is_sent_as_it_came() -> None:
    tm = _masker().for_target("other")  # no column rules there
    columns = ResultColumns.of(COLUMNS[:2], binary=False)
    job = ResponseMasker(tm)
    row = encode_text_row([b"1", b"nothing to see"])
    assert job.mask_row(job.plan(columns), columns, row) is row
    assert not job.take_counts()


def test_the_header_round_trips_and_types_map_to_the_masker() -> None:
    columns = ResultColumns.of(COLUMNS, binary=True)
    assert ResultColumns.from_header(columns.header()) == columns
    assert columns.tables[0] == "app.customers" and columns.bytes[4] and not columns.bytes[1]
    assert mask_type(Type.LONGLONG) == 20 and mask_type(Type.VAR_STRING) == 25


def test_malformed_rows_leave_only_their_length() -> None:
    columns = ResultColumns.of(COLUMNS, binary=True)
    ledger = LedgerRows(_masker().for_target("shop"), MaskCounts())
    assert ledger.row(b"\x00\x00") == [{"binary": 2}]  # before any header
    ledger.header(columns.header())
    assert ledger.row(b"\x01garbage") == [{"binary": 8}]
    raw, texts = row_texts(encode_text_row([b"a", None]), ResultColumns.of(COLUMNS[:2], False))
    assert raw is texts and texts == [b"a", None]


def test_a_column_named_after_a_value_never_keys_the_counts_with_it() -> None:
    """MySQL names a column after its expression: ``SELECT '4111...'`` has a column named
    ``4111...``, and the counts the ledger keeps are keyed by column names."""
    tm = _masker().for_target("shop")
    columns = ResultColumns.of([_col(CARD.decode(), Type.VAR_STRING, table="")], binary=False)
    job = ResponseMasker(tm)
    job.mask_row(job.plan(columns), columns, encode_text_row([CARD]))
    counts = job.take_counts().as_dict()
    assert counts["detectors"] == {"card": 1} and CARD.decode() not in str(counts)


SYSBENCH_C = b"68487932199-96439406143-93774651418-41631865787-96406072701"
NOTES = [SYSBENCH_C, b"call (415) 555-2671", b"bob@example.com", b"nothing", b"4111 1111 1111 1111"]


def test_a_run_of_rows_is_masked_as_each_row_alone() -> None:
    """LedgerRows.rows pre-filters a run of rows together; the cells and counts are those of
    masking each row on its own (clean rows, dirty rows, a malformed one, column rules)."""
    tm = _masker().for_target("shop")
    text_cols = [_col("id", Type.LONG), _col("note", Type.VAR_STRING), _col("c", Type.STRING)]
    for columns in (ResultColumns.of(text_cols, False), ResultColumns.of(COLUMNS, False)):
        n = len(columns.types)
        payloads = [
            encode_text_row([str(i).encode(), NOTES[i % 5], SYSBENCH_C, *[b"x"] * (n - 3)])
            for i in range(12)
        ]
        payloads.insert(5, b"\x01garbage")
        alone, together, own = MaskCounts(), MaskCounts(), MaskCounts()
        one = LedgerRows(tm, alone)
        one.header(columns.header())
        many = LedgerRows(tm, together)
        many.header(columns.header())
        expected = [one.row(p) for p in payloads]
        assert many.rows(payloads) == expected
        assert together.as_dict() == alone.as_dict()
        assert together.total() > 0
        # ... and those of each value pre-filtered on its own (no candidates from a run)
        assert one.plan is not None
        for p, cells in zip(payloads, expected, strict=True):
            if p == b"\x01garbage":
                assert len(cells) == 1 and is_binary_cell(cells[0])
                continue
            values = tm.mask_values(one.plan, row_texts(p, columns)[1], own)
            assert LedgerRows._cells(columns, values) == cells
        assert own.as_dict() == alone.as_dict()
