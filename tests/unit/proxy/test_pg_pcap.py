"""A recorded PostgreSQL session rendered back as protocol messages (the pcap export's
PostgreSQL renderer); Wireshark's own reading of a whole export is in
tests/unit/ledger/test_export.py."""

from __future__ import annotations

from pathlib import Path

import orjson

from appliance.ledger.store import BlobReader
from appliance.protocols.postgres.messages import DataRow, Query, RowDescription, decode_backend
from appliance.proxy.pg.pcap import render_postgres


def test_renderer_without_result_blob(tmp_path: Path) -> None:
    entries = [
        {"type": "statement", "ts": "2026-11-25T20:33:05.000000Z", "data": {"text": "DELETE"}},
        {
            "type": "response",
            "ts": "2026-11-25T20:33:05.100000Z",
            "data": {"error": {"code": "42501", "message": "denied by policy"}},
        },
    ]
    segs = render_postgres(entries, BlobReader(tmp_path))
    assert segs[1][1] == "s2c" and segs[1][2].startswith(b"E")
    assert b"C42501\x00Mdenied by policy\x00\x00" in segs[1][2]


def test_rows_come_from_the_inline_result_masked_and_binary_cells_as_text(tmp_path: Path) -> None:
    result = b"".join(
        orjson.dumps(o) + b"\n"
        for o in ({"columns": ["id", "card", "doc"]}, ["1", "[REDACTED:CARD]", {"binary": 4}])
    )
    entries = [
        {"type": "statement", "ts": "2026-11-25T20:33:05.000000Z", "data": {"text": "select 1"}},
        {
            "type": "response",
            "ts": "2026-11-25T20:33:05.100000Z",
            "data": {"tag": "SELECT 1", "result": {"inline": result.decode()}},
        },
    ]
    (query, response) = render_postgres(entries, BlobReader(tmp_path))
    assert query[2] == Query("select 1").encode()
    payload = response[2]
    assert payload[0] == ord("T")
    n = int.from_bytes(payload[1:5], "big")
    desc = decode_backend(ord("T"), payload[5 : 1 + n])
    assert isinstance(desc, RowDescription) and [f.name for f in desc.fields] == [
        "id",
        "card",
        "doc",
    ]
    row = DataRow((b"1", b"[REDACTED:CARD]", b"<binary, 4 bytes>")).encode()
    assert payload[1 + n : 1 + n + len(row)] == row
