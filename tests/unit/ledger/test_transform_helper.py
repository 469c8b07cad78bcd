"""The ledger writer's transform helper: pieces of a long run of rows masked in a second
process (:mod:`appliance.ledger.transform_helper`), with the same bytes and counts as one
process makes, and the work done here whenever the helper cannot or is late."""

from __future__ import annotations

import operator
import os
import select
import signal
import struct
import time
from collections.abc import Callable, Iterator

import orjson
import pytest

from appliance.ledger import transform_helper
from appliance.ledger.result_sink import COPY, COPY_END, HEADER, ROWS, _framed
from appliance.masking import ColumnRule, Masker, MaskingConfig, Style, TargetMasker
from appliance.protocols.postgres.messages import DataRow
from appliance.proxy.mysql.recording import RowsTransform as MySQLRows
from appliance.proxy.pg.rows import RowsTransform

pytestmark = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="the helper is used only on two cores or more"
)


@pytest.fixture
def helper(monkeypatch: pytest.MonkeyPatch) -> Iterator[transform_helper.Helper]:
    """A fresh helper, started, and every run of two rows or more shared, in pieces of
    about 100 bytes."""
    monkeypatch.delenv(transform_helper.ENV, raising=False)
    monkeypatch.setattr(transform_helper, "SHARE_FROM", 1)
    monkeypatch.setattr(transform_helper, "PIECE", 100)
    monkeypatch.setattr(transform_helper, "WAIT", True)
    transform_helper.stop()
    h = transform_helper.helper()
    assert h is not None
    _until(h.idle)
    yield h
    transform_helper.stop()


def _until(ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        assert time.monotonic() < deadline, "the helper did not start"
        time.sleep(0.01)


def _rows(n: int) -> list[tuple[bytes, ...]]:
    out: list[tuple[bytes, ...]] = []
    for i in range(n):
        card = b"4111 1111 1111 1111" if i % 3 else b"5500-0000-0000-0004"
        note = b"call (415) 555-2671 today" if i % 4 == 1 else b"nothing to see, id 12345678"
        email = f"user{i}@example.com".encode() if i % 2 else b"-"
        out.append((str(i).encode(), email, card, note))
    return out


def _chunks(rows: list[tuple[bytes, ...]]) -> list[bytes]:
    """A result set's DataRows, then a text COPY of the same rows whose CopyData frames cut
    lines anywhere, in chunks as a RowsSink writes them."""
    header = orjson.dumps(
        {"columns": ["id", "email", "card", "note"], "types": [23, 25, 25, 25], "formats": [0]},
        option=orjson.OPT_SORT_KEYS,
    )
    data_rows = b"".join(DataRow(r).encode() for r in rows)
    text = b"".join(b"\t".join(r) + b"\n" for r in rows)
    copy = b"".join(
        b"d" + struct.pack("!I", len(piece) + 4) + piece
        for piece in (text[i : i + 333] for i in range(0, len(text), 333))
    )
    return [
        _framed(HEADER, header) + _framed(ROWS, data_rows),
        _framed(HEADER, orjson.dumps({"copy": "out", "csv": False})) + _framed(COPY, copy),
        _framed(COPY, copy) + _framed(COPY_END, b""),
    ]


def _masker(rules: bool) -> TargetMasker:
    columns = (ColumnRule("card", Style.PARTIAL),) if rules else ()
    return Masker(MaskingConfig(columns=columns), hmac_key=b"k" * 32).for_target("db")


def _run(masker: TargetMasker, chunks: list[bytes]) -> tuple[bytes, object]:
    transform = RowsTransform(masker)
    out = b"".join(transform(c) for c in chunks)
    return out, transform.annotation()


@pytest.mark.parametrize("rules", [False, True], ids=["detectors", "column rule"])
def test_runs_masked_in_pieces_are_the_bytes_and_counts_of_one_process(
    helper: transform_helper.Helper, monkeypatch: pytest.MonkeyPatch, rules: bool
) -> None:
    masker = _masker(rules)
    chunks = _chunks(_rows(120))
    shared = _run(masker, chunks)
    # The DataRows and both COPY chunks each gave the helper a piece at least.
    assert helper.answered >= 3
    answered = helper.answered
    monkeypatch.setattr(transform_helper, "SHARE_FROM", 1 << 40)
    alone = _run(masker, chunks)
    assert helper.answered == answered
    assert shared == alone
    counts = orjson.loads(orjson.dumps(alone[1]))["masking"]["detectors"]
    if rules:  # the COPY names no columns: the rule may be any, every value is masked
        assert counts == {"column_rule": 120 + 2 * 4 * 120, "email": 60, "phone": 30}
    else:
        assert counts == {"card": 3 * 120, "email": 3 * 60, "phone": 3 * 30}


def test_mysql_runs_masked_in_pieces_are_the_bytes_and_counts_of_one_process(
    helper: transform_helper.Helper, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = {
        "columns": ["id", "email", "card", "note"],
        "types": [253] * 4,
        "unsigned": [False] * 4,
        "bytes": [False] * 4,
        "binary": False,
    }
    payloads = [b"".join(bytes([len(v)]) + v for v in row) for row in _rows(120)]
    payloads[7] = b"\xff"  # unreadable: one binary cell of its length
    run = b"".join(struct.pack("!I", len(p)) + p for p in payloads)
    chunk = _framed(HEADER, orjson.dumps(header)) + _framed(ROWS, run)
    masker = _masker(False)
    t = MySQLRows(masker)
    shared = t(chunk), t.annotation()
    assert helper.answered >= 1
    monkeypatch.setattr(transform_helper, "SHARE_FROM", 1 << 40)
    t = MySQLRows(masker)
    alone = t(chunk), t.annotation()
    assert shared == alone
    assert orjson.loads(orjson.dumps(alone[1]))["masking"]["detectors"]["card"] == 119


def test_csv_copy_and_rows_of_other_widths_are_not_shared(
    helper: transform_helper.Helper,
) -> None:
    """A CSV value may span lines, and rows wider than their header are planned one by one:
    neither goes to the helper."""
    masker = _masker(False)
    csv = b"".join(b",".join(r) + b"\n" for r in _rows(40))
    rows = b"".join(DataRow((*r, b"x")).encode() for r in _rows(40))
    header = orjson.dumps({"columns": ["a"], "types": [25], "formats": [0]})
    transform = RowsTransform(masker)
    transform(
        _framed(HEADER, orjson.dumps({"copy": "out", "csv": True, "header": True}))
        + _framed(COPY, b"d" + struct.pack("!I", len(csv) + 4) + csv)
        + _framed(COPY_END, b"")
        + _framed(HEADER, header)
        + _framed(ROWS, rows)
    )
    assert helper.answered == 0
    # 40 rows, then 40 CSV lines of which the first is the header line
    assert transform.annotation()["masking"]["detectors"]["card"] == 79


def test_a_helper_that_dies_leaves_the_work_to_this_process(
    helper: transform_helper.Helper,
) -> None:
    masker = _masker(False)
    chunks = _chunks(_rows(60))
    expected = _run(masker, chunks)
    proc = helper._proc
    assert proc is not None
    proc.kill()
    proc.wait()
    assert _run(masker, chunks) == expected
    assert helper.failed is not None
    assert transform_helper.helper() is None  # not used again in this process


def test_pieces_the_helper_does_come_back_in_order(helper: transform_helper.Helper) -> None:
    pieces = list(range(50))
    assert transform_helper.share(pieces, lambda p: p + 1, operator.add, 1) == [
        p + 1 for p in pieces
    ]
    assert helper.answered >= 1


def test_this_thread_does_not_wait_for_a_helper_that_is_late(
    helper: transform_helper.Helper, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper that gets no CPU (stopped here) costs nothing: its pieces are done here,
    and its late answers are dropped; it is used again once it is idle."""
    monkeypatch.setattr(transform_helper, "WAIT", False)
    proc = helper._proc
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)
    try:
        assert transform_helper.share([1, 2, 3], lambda p: p * 10, operator.add, 1) == [10, 20, 30]
        assert helper.waiting == transform_helper.DEPTH == 2 and helper.answered == 0
    finally:
        proc.send_signal(signal.SIGCONT)
    select.select([helper.answers_fd], [], [], 30)
    time.sleep(0.1)
    # The late answers (1 + 3 and 1 + 2), read by this call, must not stand for its pieces.
    assert transform_helper.share([1, 2, 3], lambda p: p * 5, operator.mul, 5) == [5, 10, 15]
    _until(helper.idle)
    assert helper.failed is None
    monkeypatch.setattr(transform_helper, "WAIT", True)
    answered = helper.answered
    assert transform_helper.share([1, 2, 3], lambda p: p * 5, operator.mul, 5) == [5, 10, 15]
    assert helper.answered == answered + 2


def test_an_error_in_the_helper_leaves_its_piece_to_this_process(
    helper: transform_helper.Helper,
) -> None:
    # 1 / 0 in the helper; here, the piece gives its own answer
    assert transform_helper.share([5, 0], lambda p: -1, operator.truediv, 1) == [-1, -1]
    assert helper.failed is not None and "ZeroDivisionError" in helper.failed
    assert transform_helper.helper() is None


def test_an_error_here_keeps_the_helper_in_step(helper: transform_helper.Helper) -> None:
    def fails(p: int) -> int:
        raise ValueError("here")

    with pytest.raises(ValueError, match="here"):
        transform_helper.share([1, 2, 3], fails, operator.add, 1)
    _until(helper.idle)
    assert transform_helper.share([1, 2, 3], lambda p: p * 2, operator.mul, 2) == [2, 4, 6]
    assert helper.answered == 2 and helper.failed is None


def test_no_helper_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    transform_helper.stop()
    monkeypatch.setenv(transform_helper.ENV, "0")
    assert transform_helper.helper() is None
    assert transform_helper.share([1, 2], lambda p: p, operator.add, 5) == [1, 2]
