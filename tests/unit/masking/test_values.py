"""Result values: column plans, whole-value rules, detectors in cells, types and formats.

Binary encodings come from psycopg's own dumpers, the client side of the real protocol.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from psycopg.types.numeric import DecimalBinaryDumper, Int8BinaryDumper

from appliance.config import parse_config
from appliance.masking import (
    MaskCounts,
    Masker,
    MaskingConfig,
    TargetMasker,
    parse_masking,
)
from appliance.masking._pgtypes import Kind, decode_number, kind_of
from appliance.masking._styles import keyed_hash
from tests.unit.masking.helpers import KEY
from tests.unit.masking.test_corpus import _load

INT4, INT8, TEXT, VARCHAR, NUMERIC, JSONB, JSON_, UUID, DATE = (
    23,
    20,
    25,
    1043,
    1700,
    3802,
    114,
    2950,
    1082,
)

CONFIG = """\
targets:
  - name: orders-db
    protocol: postgres
    addresses: [10.0.0.5:5432]
    accounts: [{name: ci, user: app, secret: {file: /etc/appliance/app.pw}}]
masking:
  key: {file: /etc/appliance/mask.key}
  columns:
    - {table: public.customers, column: "card*", style: partial}
    - {table: customers, column: tax_id, style: hash}
    - {column: secret_answer, style: redact}
    - {column: id, style: none}
"""


def numeric(text: str) -> bytes:
    """``text`` as psycopg sends a numeric in binary format."""
    data = DecimalBinaryDumper(Decimal).dump(Decimal(text))
    assert data is not None
    return bytes(data)


def int8(n: int) -> bytes:
    data = Int8BinaryDumper(int).dump(n)
    assert data is not None
    return bytes(data)


def target_masker(text: str = CONFIG) -> TargetMasker:
    cfg = parse_config(text)
    config = parse_masking(cfg.masking, targets=cfg.targets)
    return Masker(config, hmac_key=KEY).for_target("orders-db")


TM = target_masker()


def test_a_result_row_transcript() -> None:
    plan = TM.column_plan(
        "public.customers",
        ["id", "name", "email", "card_number", "tax_id", "notes"],
        type_oids=[INT4, TEXT, VARCHAR, TEXT, TEXT, TEXT],
    )
    assert [c.name for c in plan.columns] == [
        "public.customers.id",
        "public.customers.name",
        "public.customers.email",
        "public.customers.card_number",
        "public.customers.tax_id",
        "public.customers.notes",
    ]
    counts = MaskCounts()
    row: list[bytes | None] = [
        b"7",
        b"Alice Smith",
        b"alice@example.com",
        b"4111-1111-1111-1111",
        b"12-3456789",
        b"called from (415) 555-2671 about ssn 536-90-4399",
    ]
    masked = TM.mask_values(plan, row, counts)
    assert masked == [
        b"7",
        b"Alice Smith",
        b"[REDACTED:EMAIL]",
        b"****-****-****-1111",
        keyed_hash(KEY, b"12-3456789").encode(),
        b"called from [REDACTED:PHONE] about ssn [REDACTED:SSN]",
    ]
    assert masked is not row and row[2] == b"alice@example.com"  # the input is not modified
    assert counts.as_dict() == {
        "detectors": {"column_rule": 2, "email": 1, "phone": 1, "ssn": 1},
        "columns": {
            "public.customers.card_number": 1,
            "public.customers.email": 1,
            "public.customers.notes": 2,
            "public.customers.tax_id": 1,
        },
    }


def test_clean_rows_come_back_as_the_same_list() -> None:
    plan = TM.column_plan("public.orders", ["id", "total", "note"])
    row: list[bytes | None] = [b"1", b"19.99", None]
    counts = MaskCounts()
    assert TM.mask_values(plan, row, counts) is row
    assert not counts


def test_a_rule_of_style_none_does_not_stop_the_detectors() -> None:
    plan = TM.column_plan("public.customers", ["id"])
    assert plan.columns[0].rule is None
    assert TM.mask_values(plan, [b"4111111111111111"], MaskCounts()) == [b"[REDACTED:CARD]"]


def test_masked_values_of_non_text_types_become_null() -> None:
    plan = TM.column_plan(None, ["amount", "cc_as_int", "day"], type_oids=[NUMERIC, INT8, DATE])
    counts = MaskCounts()
    row: list[bytes | None] = [b"12.50", b"4111111111111111", b"2024-01-15"]
    assert TM.mask_values(plan, row, counts) == [b"12.50", None, b"2024-01-15"]
    assert counts.as_dict()["detectors"] == {"card": 1}
    # A whole-value rule on an int column: NULL as well.
    plan = TM.column_plan("public.customers", ["card_id"], type_oids=[INT8])
    assert TM.mask_values(plan, [b"42"], MaskCounts()) == [None]


def test_json_documents_stay_json() -> None:
    plan = TM.column_plan("t", ["doc", "raw"], type_oids=[JSONB, JSON_])
    doc = {"card": 4111111111111111, "contact": {"email": "bob@example.com"}, "n": 3, "ok": True}
    row: list[bytes | None] = [json.dumps(doc).encode(), b'["536-90-4399", 1.5]']
    counts = MaskCounts()
    masked = TM.mask_values(plan, row, counts)
    assert json.loads(masked[0] or b"") == {
        "card": "[REDACTED:CARD]",
        "contact": {"email": "[REDACTED:EMAIL]"},
        "n": 3,
        "ok": True,
    }
    assert json.loads(masked[1] or b"") == ["[REDACTED:SSN]", 1.5]
    # A whole-value rule on a JSON column gives a JSON string.
    plan = TM.column_plan(None, ["secret_answer"], type_oids=[JSONB])
    assert TM.mask_values(plan, [b'{"a": 1}'], MaskCounts()) == [b'"[REDACTED:SECRET_ANSWER]"']


def test_unknown_tables_and_columns_fail_closed() -> None:
    # A card* column of an unknown table may be public.customers': the rule applies.
    plan = TM.column_plan(None, ["card_number"])
    assert TM.mask_values(plan, [b"4000 0000 0000 0002"], MaskCounts()) == [b"**** **** **** 0002"]
    # An unknown column (COPY of a query): the strongest rule that may apply.
    plan = TM.column_plan("public.customers", [None, "name"])
    assert plan.columns[0].name == "public.customers.#1"
    masked = TM.mask_values(plan, [b"anything", b"Bob"], MaskCounts())
    assert masked == [b"[REDACTED:COLUMN]", b"Bob"]
    # Per-column tables.
    plan = TM.column_plan(None, ["card", "card"], tables=["public.customers", "public.orders"])
    assert [c.rule is not None for c in plan.columns] == [True, False]


def test_binary_values() -> None:
    plan = TM.column_plan(
        "public.customers",
        ["card_number", "notes", "n", "big", "uid", "doc"],
        formats=[1],
        type_oids=[TEXT, TEXT, NUMERIC, INT8, UUID, JSONB],
    )
    assert plan.unreadable_binary == ("public.customers.uid",)
    counts = MaskCounts()
    clean: list[bytes | None] = [
        None,  # NULL needs no masking, even under a rule
        b"mail bob@example.com",  # binary text is the text itself
        numeric("12.5"),
        int8(42),
        bytes(16),
        b'\x01{"e": "bob@example.com"}',
    ]
    masked = TM.mask_values(plan, clean, counts)
    assert masked[1] == b"mail [REDACTED:EMAIL]"
    assert masked[2:5] == clean[2:5]
    assert masked[5] == b'\x01{"e": "[REDACTED:EMAIL]"}'
    assert counts.as_dict()["detectors"] == {"binary_unscanned": 1, "email": 2}
    # The ledger keeps the same values as text: what the job reads, masked alike.
    cells = TM.mask_cells(plan, clean, MaskCounts())
    assert cells == [
        None,
        "mail [REDACTED:EMAIL]",
        "12.5",
        "42",
        {"binary": 16},
        '{"e": "[REDACTED:EMAIL]"}',
    ]

    # A rule on a binary text column rewrites it (its binary form is its text); a binary
    # number that must be masked becomes NULL, as a non-text type in text format does.
    card = [
        b"4111111111111111",
        None,
        numeric("4111111111111111"),
        int8(4111111111111111),
        None,
        None,
    ]
    masked = TM.mask_values(plan, card, MaskCounts())
    assert masked == [b"************1111", None, None, None, None, None]
    cells = TM.mask_cells(plan, card, MaskCounts())
    assert cells == ["************1111", None, None, None, None, None]
    # A rule on a column whose binary values cannot be read: NULL, never the raw bytes.
    uid_rule = TM.column_plan("public.customers", ["card_uid"], formats=[1], type_oids=[UUID])
    assert TM.mask_values(uid_rule, [bytes(16)], MaskCounts()) == [None]


def test_formats_follow_the_protocol() -> None:
    assert [c.binary for c in TM.column_plan(None, ["a", "b"]).columns] == [False, False]
    assert [c.binary for c in TM.column_plan(None, ["a", "b"], formats=[1]).columns] == [True, True]
    assert [c.binary for c in TM.column_plan(None, ["a", "b"], formats=[0, 1]).columns] == [
        False,
        True,
    ]
    with pytest.raises(ValueError):
        TM.column_plan(None, ["a", "b", "c"], formats=[0, 1])
    with pytest.raises(ValueError):
        TM.mask_values(TM.column_plan(None, ["a"]), [b"1", b"2"], MaskCounts())


def test_bytes_that_are_not_utf8_survive() -> None:
    plan = TM.column_plan(None, ["note"])
    masked = TM.mask_values(plan, [b"\xff\xfe card 4111111111111111 \xe9"], MaskCounts())
    assert masked == [b"\xff\xfe card [REDACTED:CARD] \xe9"]


def test_default_config_without_key() -> None:
    tm = Masker(MaskingConfig(), hmac_key=b"").for_target("any")
    plan = tm.column_plan(None, ["ip", "note"])
    # ipv4 is off by default.
    row: list[bytes | None] = [b"10.1.2.3", b"token=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"]
    assert tm.mask_values(plan, row, MaskCounts()) == [
        b"10.1.2.3",
        b"token=[REDACTED:GITHUB_TOKEN]",
    ]


def test_kinds_and_numbers() -> None:
    assert kind_of(None, False) is Kind.TEXT
    assert kind_of(TEXT, True) is Kind.TEXT
    assert kind_of(INT8, False) is Kind.STRICT
    assert kind_of(INT8, True) is Kind.NUMBER
    assert kind_of(UUID, True) is Kind.OPAQUE
    assert kind_of(20000, False) is Kind.TEXT  # an extension type: clients read it as text
    assert kind_of(20000, True) is Kind.OPAQUE
    for text in (
        "4111111111111111",
        "-12.340",
        "0.0001",
        "123456789.000001",
        "0",
        "1E+20",
        "1E-10",
    ):
        data = numeric(text)
        assert Decimal(decode_number(NUMERIC, data) or "nan") == Decimal(text)
    assert decode_number(NUMERIC, numeric("NaN")) is None
    assert decode_number(INT8, b"\x00") is None
    assert decode_number(INT4, (-5).to_bytes(4, "big", signed=True)) == "-5"


def test_parameters_get_detectors_but_no_column_rules() -> None:
    plan = TM.parameter_plan(3, formats=[0, 0, 1], type_oids=[TEXT, TEXT, INT8])
    assert [c.name for c in plan.columns] == ["$1", "$2", "$3"]
    assert all(c.rule is None for c in plan.columns)
    counts = MaskCounts()
    params: list[bytes | None] = [b"anything", b"bob@example.com", int8(42)]
    assert TM.mask_values(plan, params, counts) == [b"anything", b"[REDACTED:EMAIL]", int8(42)]
    assert counts.as_dict() == {"detectors": {"email": 1}, "columns": {"$2": 1}}


def test_error_details_follow_the_column_rules() -> None:
    counts = MaskCounts()
    detail = "Key (tax_id)=(12-3456789) already exists."
    assert TM.mask_text(detail, counts) == (
        f"Key (tax_id)=({keyed_hash(KEY, b'12-3456789')}) already exists."
    )
    assert counts.as_dict() == {"detectors": {"column_rule": 1}, "columns": {"tax_id": 1}}
    detail = 'Key (id, secret_answer)=(7, my first dog) is not present in table "t".'
    assert TM.mask_text(detail, MaskCounts()) == (
        'Key (id, secret_answer)=([REDACTED:SECRET_ANSWER]) is not present in table "t".'
    )
    exclusion = "Key (secret_answer)=(a) conflicts with existing key (secret_answer)=(b)."
    assert TM.mask_text(exclusion, MaskCounts()) == (
        "Key (secret_answer)=([REDACTED:SECRET_ANSWER]) conflicts with existing key"
        " (secret_answer)=([REDACTED:SECRET_ANSWER])."
    )
    # Columns without a rule: only the detectors.
    detail = "Key (email)=(bob@example.com) already exists."
    assert TM.mask_text(detail, MaskCounts()) == "Key (email)=([REDACTED:EMAIL]) already exists."
    # A failing row has no column names: with column rules on this target, all of it goes.
    failing = "Failing row contains (7, Bob, null)."
    assert TM.mask_text(failing, MaskCounts()) == "Failing row contains ([REDACTED:ROW])."
    no_rules = Masker(MaskingConfig(), hmac_key=b"").for_target("orders-db")
    assert no_rules.mask_text(failing, MaskCounts()) is failing


def test_a_row_pre_filtered_whole_is_masked_as_value_by_value() -> None:
    """Rows of text columns are pre-filtered in one pass over all their values (a clean row
    is kept as it is); what comes out is what masking each value alone gives."""
    texts = [r["text"].encode() for r in _load()][::7]
    texts += [b"plain", b"2024-05-01 10:00:00+00", b"12345.67", b"note: nothing here"] * 40
    one = TM.column_plan(None, ["v"])
    strict = TM.column_plan(None, ["a", "b", "c", "d", "e"], type_oids=[25, 20, 25, 1700, 25])
    for plan in (TM.column_plan(None, ["a", "b", "c", "d", "e"]), strict):
        assert plan.scan_only
        for i in range(0, len(texts) - 4, 3):
            row: list[bytes | None] = [*texts[i : i + 4], None][::-1] if i % 2 else texts[i : i + 5]
            cells = TM.mask_cells(plan, row, MaskCounts())
            values = TM.mask_values(plan, row, MaskCounts())
            for k, v in enumerate(row):
                alone = plan.columns[k]
                single = type(one)((alone,))
                assert cells[k] == TM.mask_cells(single, [v], MaskCounts())[0]
                assert values[k] == TM.mask_values(single, [v], MaskCounts())[0]


def test_cells_by_the_candidates_of_one_pass_over_the_rows() -> None:
    """mask_cells given each value's detectors (rows_candidates: one pre-filter pass over
    many rows) makes the cells and counts it makes pre-filtering each value itself."""
    tm = Masker(MaskingConfig(), hmac_key=b"").for_target("any")
    plan = tm.column_plan(None, ["note", "email", "n"], type_oids=[TEXT, TEXT, INT4])
    rows: list[list[bytes | None]] = [
        [b"card 4111111111111111", b"bob@example.com", b"4111111111111111"],
        [b"clean", None, b"7"],
        [None, b"call (415) 555-2671", b"1"],
        [b"x", b"y", b"2"],
    ]
    found = tm.rows_candidates(plan, rows)
    assert found is not None and sorted(found) == [0, 2]
    alone, together = MaskCounts(), MaskCounts()
    for i in found:
        expected = tm.mask_cells(plan, rows[i], alone)
        assert tm.mask_cells(plan, rows[i], together, candidates=found[i]) == expected
    assert together.as_dict() == alone.as_dict() and alone.total() == 4
    with pytest.raises(ValueError, match="one entry per value"):
        tm.mask_cells(plan, rows[0], MaskCounts(), candidates=[[]])


def test_cells_of_binary_values_are_pre_filtered_whatever_the_candidates() -> None:
    # A binary value's text is not its bytes: candidates given for the row do not apply.
    plan = TM.column_plan(None, ["note", "n"], formats=[1, 0], type_oids=[TEXT, TEXT])
    assert TM.rows_candidates(plan, []) is None  # not scan-only: every row is masked alone
    row: list[bytes | None] = [b"bob@example.com", b"x"]
    assert TM.mask_cells(plan, row, MaskCounts(), candidates=[[], []]) == [
        "[REDACTED:EMAIL]",
        "x",
    ]
