"""The result-blob format: what the recorder writes is what replay, pcap and the report read."""

from __future__ import annotations

import orjson

from appliance.ledger.results import (
    ResultSet,
    binary_cell,
    cell_bytes,
    cell_text,
    is_binary_cell,
    read_result,
)


def _blob(*objects: object) -> bytes:
    return b"".join(orjson.dumps(o) + b"\n" for o in objects)


def test_result_sets_and_cells_read_back() -> None:
    blob = _blob(
        {"columns": ["id", "card", "doc"], "types": [23, 25, 17], "formats": [0, 0, 1]},
        ["1", "[REDACTED:CARD]", binary_cell(16)],
        ["2", None, binary_cell(3)],
        {"columns": ["n"]},
        ["7"],
        {"copy": "out", "csv": True},
        "a,b",
    )
    first, second, copy = read_result(blob)
    assert first == ResultSet(
        ["id", "card", "doc"],
        [["1", "[REDACTED:CARD]", {"binary": 16}], ["2", None, {"binary": 3}]],
        2,
    )
    assert (second.columns, second.rows, second.total) == (["n"], [["7"]], 1)
    assert (copy.copy, copy.rows) == ("out", [["a,b"]])
    assert [cell_text(c) for c in first.rows[1]] == ["2", "NULL", "<binary, 3 bytes>"]
    assert [cell_bytes(c) for c in first.rows[1]] == [b"2", None, b"<binary, 3 bytes>"]
    assert is_binary_cell(binary_cell(0)) and not is_binary_cell({"binary": "x"})


def test_max_rows_keeps_the_count_and_damage_is_shown() -> None:
    blob = _blob({"columns": ["n"]}, ["1"], ["2"], ["3"]) + b"not json\n"
    (result,) = read_result(blob, max_rows=2)
    assert result.rows == [["1"], ["2"]] and result.total == 4
    (whole,) = read_result(blob)
    assert whole.rows[-1] == ["not json"]
