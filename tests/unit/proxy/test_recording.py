"""What a session leaves in a real ledger (:mod:`appliance.proxy.pg.recording`): entries
masked on the way in, result rows and COPY data masked in the writer thread, whatever the
protocol did to cut them; nothing raw anywhere under the ledger directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from appliance.ledger import BlobReader, LedgerWriter, iter_entries
from appliance.masking import Masker, MaskingConfig
from appliance.protocols.postgres.messages import (
    CopyData,
    DataRow,
    ErrorResponse,
    FieldDescription,
    RowDescription,
    decode_backend,
    error_response,
)
from appliance.proxy.pg.recording import SessionRecorder
from appliance.proxy.pg.relay import ALLOW, Result, Statement
from appliance.signing.keys import SigningKey

ORIGIN = "test.example/ledger"
KEY = SigningKey.generate(ORIGIN, seed=b"\x33" * 32)
CARD, OTHER = "4111111111111111", "5500000000000004"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LedgerWriter]:
    clock = iter(range(10**6))
    w = LedgerWriter.open(
        tmp_path / "ledger",
        origin=ORIGIN,
        key=KEY,
        clock=lambda: 1.8e9 + next(clock),
        inline_limit=0,  # result blobs as files, read back by the tests
    )
    try:
        yield w
    finally:
        w.close()


def recorder(ledger: LedgerWriter, *, limit: int = 1 << 20) -> SessionRecorder:
    masker = Masker(MaskingConfig(), hmac_key=b"k" * 32).for_target("db")
    return SessionRecorder(
        ledger, session="s1", target="db", account="ci", identity={"source": "unattributed"},
        masker=masker, record_rows=True, max_result_bytes=limit, clock=lambda: 0.0,
    )  # fmt: skip


def blobs(ledger: LedgerWriter) -> list[list[object]]:
    """Each response's result blob as parsed JSON lines."""
    ledger.flush()
    reader = BlobReader(ledger.directory)
    out = []
    for entry in iter_entries(ledger.directory):
        ref = entry.obj["data"].get("result") if entry.obj["type"] == "response" else None
        if ref:
            out.append([orjson.loads(line) for line in reader.read(ref["sha256"]).splitlines()])
    return out


def everything(ledger: LedgerWriter) -> bytes:
    ledger.flush()
    return b"".join(p.read_bytes() for p in ledger.directory.rglob("*") if p.is_file())


def stmt(n: int, text: str, params: tuple[bytes | None, ...] = ()) -> Statement:
    return Statement(n, "extended" if params else "simple", text, params=params, verdict=ALLOW)


def test_rows_of_several_results_are_masked_in_one_blob(ledger: LedgerWriter) -> None:
    rec = recorder(ledger)
    s = stmt(1, "select id, card from customers; select 1")
    rec.statement(s)
    desc = RowDescription((FieldDescription("id", type_oid=23), FieldDescription("card")))
    sink = rec.result_sink(s, desc, (0, 0))
    assert sink is not None
    sink.add(DataRow((b"1", CARD.encode())).encode() + DataRow((b"2", None)).encode())
    sink.add(DataRow((b"3", OTHER.encode())).encode())
    sink.close()
    one = rec.result_sink(s, RowDescription((FieldDescription("?column?"),)), (0,))
    assert one is not None
    one.add(DataRow((b"1",)).encode())
    one.close()
    s.results = [Result("SELECT 3", 3, ("id", "card")), Result("SELECT 1", 1, ("?column?",))]
    s.outcome = "ok"
    rec.response(s)
    (rows,) = blobs(ledger)
    assert rows == [
        {"columns": ["id", "card"], "formats": [0, 0], "types": [23, 25]},
        ["1", "[REDACTED:CARD]"],
        ["2", None],
        ["3", "[REDACTED:CARD]"],
        {"columns": ["?column?"], "formats": [0], "types": [25]},
        ["1"],
    ]
    assert CARD.encode() not in everything(ledger)


def test_a_result_shape_that_comes_back_gets_the_header_of_the_moment(
    ledger: LedgerWriter,
) -> None:
    """The relay hands the same RowDescription object for the same shape; the recorder keeps
    its header's part, but formats that differ and table names learnt since still show."""
    rec = recorder(ledger)
    desc = RowDescription((FieldDescription("id", type_oid=23, table_oid=7),))
    for n, formats in enumerate([(0,), (0,), (1,), (1,)], start=1):
        if n == 4:
            rec.tables = {7: "public.t"}  # the catalog, once the session is ready
        s = stmt(n, "select id from t")
        rec.statement(s)
        sink = rec.result_sink(s, desc, formats)
        assert sink is not None
        sink.close()
        s.results = [Result("SELECT 0", 0, ("id",))]
        s.outcome = "ok"
        rec.response(s)
    headers = [rows[0] for rows in blobs(ledger)]
    assert headers == [
        {"columns": ["id"], "formats": [0], "types": [23]},
        {"columns": ["id"], "formats": [0], "types": [23]},
        {"columns": ["id"], "formats": [1], "types": [23]},
        {"columns": ["id"], "formats": [1], "tables": ["public.t"], "types": [23]},
    ]


def test_binary_values_are_decoded_when_text_like_else_never_written(
    ledger: LedgerWriter,
) -> None:
    rec = recorder(ledger)
    s = stmt(1, "select id, card, blob from t")
    desc = RowDescription(
        (
            FieldDescription("id", type_oid=23, format=1),
            FieldDescription("card", type_oid=25, format=1),
            FieldDescription("blob", type_oid=17, format=1),
        )
    )
    sink = rec.result_sink(s, desc, (1, 1, 1))
    assert sink is not None
    sink.add(DataRow((b"\0\0\0\x07", CARD.encode(), b"\x01" + OTHER.encode())).encode())
    sink.close()
    rec.response(s)
    (rows,) = blobs(ledger)
    assert rows[1] == ["7", "[REDACTED:CARD]", {"binary": 17}]
    data = everything(ledger)
    assert CARD.encode() not in data and OTHER.encode() not in data


def test_copy_in_lines_cut_across_copy_data_are_masked_whole(ledger: LedgerWriter) -> None:
    rec = recorder(ledger)
    s = stmt(1, "copy customers from stdin")
    sink = rec.copy_sink(s, "in")
    assert sink is not None
    data = f"1\t{CARD}\n2\t{OTHER}\n3\tlast".encode()
    # A client sends its buffer as it fills: the cuts fall inside the card numbers.
    for piece in (data[:6], data[6:25], data[25:]):
        sink.add(CopyData(piece).encode())
    sink.close()
    rec.response(s)
    (rows,) = blobs(ledger)
    assert rows == [
        {"copy": "in", "csv": False},
        "1\t[REDACTED:CARD]",
        "2\t[REDACTED:CARD]",
        "3\tlast",
    ]
    stored = everything(ledger)
    assert CARD.encode() not in stored and OTHER.encode() not in stored
    assert CARD[6:].encode() not in stored  # no piece of a cut value either


def test_binary_copy_is_recorded_as_sizes(ledger: LedgerWriter) -> None:
    rec = recorder(ledger)
    s = stmt(1, 'COPY "public"."t" FROM STDIN (FORMAT binary)')
    sink = rec.copy_sink(s, "in")
    assert sink is not None
    sink.add(CopyData(b"PGCOPY\n\xff\r\n\0" + CARD.encode()).encode())
    sink.close()
    rec.response(s)
    (rows,) = blobs(ledger)
    assert rows == [{"binary": True, "copy": "in", "csv": False}, {"binary": 27}]
    assert CARD.encode() not in everything(ledger)


def test_results_over_the_limit_are_truncated(ledger: LedgerWriter) -> None:
    rec = recorder(ledger, limit=100)
    s = stmt(1, "select x from t")
    sink = rec.result_sink(s, RowDescription((FieldDescription("x"),)), (0,))
    assert sink is not None
    for i in range(20):
        sink.add(DataRow((str(i).encode() * 5,)).encode())
    sink.close()
    rec.response(s)
    (rows,) = blobs(ledger)
    assert 1 < len(rows) < 21
    (response,) = [
        e.obj["data"] for e in iter_entries(ledger.directory) if e.obj["type"] == "response"
    ]
    assert response["result_truncated"] is True


def test_statement_parameters_errors_and_request_errors_are_masked(
    ledger: LedgerWriter,
) -> None:
    rec = recorder(ledger)
    s = stmt(1, f"insert into t values ($1, '{OTHER}')", params=(CARD.encode(), None))
    rec.statement(s)
    error = decode_backend(
        ord("E"),
        error_response(
            "ERROR", "23505", "duplicate key", detail=f"Key (card)=({CARD}) already exists."
        )[5:],
    )
    assert isinstance(error, ErrorResponse)
    s.error, s.outcome = error, "error"
    rec.response(s)
    rec.request_error("Parse", f"selec '{CARD}'", error)
    ledger.flush()
    entries = {e.obj["type"]: e.obj["data"] for e in iter_entries(ledger.directory)}
    assert entries["statement"]["params"] == ["[REDACTED:CARD]", None]
    assert entries["statement"]["text"] == "insert into t values ($1, '[REDACTED:CARD]')"
    assert entries["response"]["error"]["detail"] == "Key (card)=([REDACTED:CARD]) already exists."
    assert entries["request.error"]["text"] == "selec '[REDACTED:CARD]'"
    data = everything(ledger)
    assert CARD.encode() not in data and OTHER.encode() not in data
