"""The writer process (RemoteLedger): same ledger as the in-thread writer, failure is loud."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.ledger import (
    CanonicalError,
    LedgerError,
    LedgerUnavailable,
    TamperError,
    iter_entries,
    verify_ledger,
)
from appliance.ledger.api import PendingBlob
from appliance.ledger.remote import RemoteLedger
from appliance.ledger.result_sink import RowsSink, transforms
from appliance.ledger.sender import SEND_DELAY
from appliance.ledger.store import ENTRIES
from appliance.ledger.writer import INLINE_LIMIT
from appliance.masking import Masker, MaskingConfig
from appliance.protocols.postgres.messages import DataRow
from appliance.proxy.pg.rows import RowsTransform
from tests.unit.ledger.conftest import KEY, ORIGIN, OTHER_KEY, open_writer, write_session

ROOT = Path(__file__).resolve().parents[3]


def open_remote(directory: Path, **kw: object) -> RemoteLedger:
    kw.setdefault("origin", ORIGIN)
    kw.setdefault("key", KEY)
    return RemoteLedger.open(directory, **kw)  # type: ignore[arg-type]


def objs(directory: Path) -> list[dict[str, object]]:
    return [e.obj for e in iter_entries(directory)]


def test_entries_and_masked_result_blobs_reach_a_verifiable_ledger(tmp_path: Path) -> None:
    d = tmp_path / "l"
    masker = Masker(MaskingConfig(), hmac_key=b"k" * 32).for_target("db")
    with open_remote(d) as ledger:
        for n in range(3):
            ledger.append("statement", session="s1", data={"n": n, "text": "select card"})
            sink = RowsSink(ledger, transforms(RowsTransform, masker), 1 << 24)
            sink.header({"columns": ["card"], "types": [25], "formats": [0]})
            # the last result is large: its blob is opened and streamed before the entry
            for _ in range(1 if n < 2 else 20_000):
                sink.add(DataRow((b"4111 1111 1111 1111",)).encode())
            sink.close()
            blob = sink.finish()
            assert (sink.blob is None) == (n < 2)
            ledger.append("response", session="s1", data={"n": n}, blobs={"result": blob})
        ledger.flush(30)
        assert ledger.signed_size == 7  # key.published + 6
    entries = objs(d)
    assert [e["seq"] for e in entries] == list(range(7))
    assert [e["type"] for e in entries[1:3]] == ["statement", "response"]
    result = entries[2]["data"]["result"]  # type: ignore[index]
    assert "[REDACTED:CARD]" in result["inline"] and "4111" not in result["inline"]
    assert result["masking"]["detectors"] == {"card": 1}
    large = entries[6]["data"]["result"]  # type: ignore[index]
    assert "inline" not in large and large["masking"]["detectors"] == {"card": 20_000}
    report = verify_ledger(d, [KEY.verifier()])
    assert report.ok and report.entries == 7 and report.blobs == 1


def test_the_same_calls_give_the_same_ledger_as_the_thread_writer(tmp_path: Path) -> None:
    """Byte for byte after the first entry (key.published, stamped by each writer's own
    clock): same entries, same blob references."""
    later = 1900000000.0  # 2030: after the key.published stamp, so entries keep this time
    thread_dir, remote_dir = tmp_path / "t", tmp_path / "r"
    with open_writer(thread_dir, clock=lambda: later, inline_limit=0) as w:
        write_session(w, "s1")
    with open_remote(remote_dir, clock=lambda: later, inline_limit=0) as r:
        write_session(r, "s1")  # type: ignore[arg-type]
    thread = [e.raw for e in iter_entries(thread_dir)]
    remote = [e.raw for e in iter_entries(remote_dir)]
    assert len(thread) == len(remote) == 9
    assert thread[1:] == remote[1:]
    assert verify_ledger(remote_dir, [KEY.verifier()]).ok


def test_a_value_without_canonical_form_is_refused_in_the_callers_process(
    tmp_path: Path,
) -> None:
    with open_remote(tmp_path / "l") as ledger:
        with pytest.raises(CanonicalError, match="float"):
            ledger.append("statement", data={"x": 1.5})
        ledger.append("statement", data={"x": 1})  # nothing was consumed: seq 1 is next
    assert [e["seq"] for e in objs(tmp_path / "l")] == [0, 1]


def test_plain_functions_cannot_cross_into_the_writer_process(tmp_path: Path) -> None:
    with (
        open_remote(tmp_path / "l") as ledger,
        pytest.raises(LedgerError, match="transform factories"),
    ):
        ledger.open_blob(lambda b: b)


def test_appends_from_an_event_loop_are_batched_and_all_arrive(tmp_path: Path) -> None:
    d = tmp_path / "l"
    ledger = open_remote(d)

    async def burst() -> None:
        for n in range(2000):
            ledger.append("statement", data={"n": n})
            if n % 100 == 0:
                await asyncio.sleep(0)

    asyncio.run(burst())
    ledger.close()
    assert [e["data"]["n"] for e in objs(d)[1:]] == list(range(2000))  # type: ignore[index]


def test_hurried_entries_leave_at_the_end_of_the_loops_turn_not_after_the_batch_delay(
    tmp_path: Path,
) -> None:
    """From an event loop entries wait SEND_DELAY for more; ``hurry()`` (a write-ahead sync is
    coming) sends what is queued once the loop's turn ends, so the writer process has them
    before the SYNC. Outside a loop, with nothing queued, or while a sync is on its way (the
    next SYNC carries them), it does nothing."""
    d = tmp_path / "l"
    ledger = open_remote(d, checkpoint_interval=3600)
    ledger.hurry()  # no loop: nothing to do (appends from no loop are sent at once)
    sent: list[int] = []

    async def main() -> None:
        ledger.hurry()  # nothing queued
        ledger.append("statement", data={"n": 1})
        await asyncio.sleep(0)
        sent.append(ledger.backlog)  # still waiting for the batch delay
        ledger.hurry()
        ledger.hurry()  # once per turn
        assert ledger.backlog > 0  # not from within the call
        await asyncio.sleep(0)
        sent.append(ledger.backlog)
        await asyncio.wait_for(ledger.sync(), 10)
        # With a sync on its way (the writer stopped: it is not answered), the next SYNC
        # carries what is queued: nothing is hurried.
        assert ledger._proc is not None
        os.kill(ledger._proc.pid, signal.SIGSTOP)
        try:
            waiting = asyncio.ensure_future(ledger.sync())
            await asyncio.sleep(0.05)
            ledger.append("statement", data={"n": 2})
            ledger.hurry()
            await asyncio.sleep(0)
            sent.append(ledger.backlog)
        finally:
            os.kill(ledger._proc.pid, signal.SIGCONT)
        await asyncio.wait_for(waiting, 10)
        await asyncio.wait_for(ledger.sync(), 10)

    asyncio.run(main())
    assert sent[0] > 0 and sent[1] == 0 and sent[2] > 0
    ledger.close()
    assert [e["data"] for e in objs(d) if e["type"] == "statement"] == [{"n": 1}, {"n": 2}]


def test_sends_left_pending_by_a_closed_loop_do_not_hold_back_the_next_loops(
    tmp_path: Path,
) -> None:
    """A sender used from one event loop and then another (``asyncio.run`` twice, as a test
    or a restarted worker does): the batch send and the hurried send that the first loop
    never ran (it closed with them pending) do not keep the next loop from scheduling its
    own, and nothing queued is lost."""
    d = tmp_path / "l"
    ledger = open_remote(d, checkpoint_interval=3600)
    loop = asyncio.new_event_loop()

    async def leave_pending() -> None:
        ledger.append("statement", data={"n": 1})  # a batch send, SEND_DELAY from now
        ledger.hurry()  # and one at the end of this turn
        loop.stop()  # the loop ends this turn without running either

    task = loop.create_task(leave_pending())
    loop.run_forever()
    loop.close()
    assert task.done() and ledger.backlog > 0
    backlog: list[int] = []

    async def next_loop() -> None:
        ledger.append("statement", data={"n": 2})
        ledger.hurry()
        await asyncio.sleep(0)
        backlog.append(ledger.backlog)  # hurried: sent at the end of the turn
        ledger.append("statement", data={"n": 3})
        await asyncio.sleep(SEND_DELAY * 4)
        backlog.append(ledger.backlog)  # sent by this loop's batch send

    asyncio.run(next_loop())
    assert backlog == [0, 0]
    ledger.close()
    assert [e["data"] for e in objs(d) if e["type"] == "statement"] == [
        {"n": 1},
        {"n": 2},
        {"n": 3},
    ]


def test_tampering_found_by_the_writer_process_is_raised_as_tampering(tmp_path: Path) -> None:
    d = tmp_path / "l"
    with open_writer(d) as w:
        write_session(w, "s1")
    raw = bytearray((d / ENTRIES).read_bytes())
    i = raw.index(b"acme/shop")
    raw[i] ^= 1
    (d / ENTRIES).write_bytes(bytes(raw))
    with pytest.raises(TamperError):
        open_remote(d)


def test_another_origin_or_a_held_lock_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "l"
    with open_remote(d):
        t0 = time.monotonic()
        with pytest.raises(LedgerError, match="another writer holds"):
            open_remote(d, lock_wait=0.3)
        assert time.monotonic() - t0 >= 0.3
    with pytest.raises(LedgerError, match="origin"):
        open_remote(d, origin="other.example/ledger", key=OTHER_KEY)


def _kill_writer_until_appends_fail(ledger: RemoteLedger) -> None:
    """Kill the writer process; an append raises LedgerUnavailable within 10 s."""
    assert ledger._proc is not None
    os.kill(ledger._proc.pid, signal.SIGKILL)
    ledger._proc.wait()
    deadline = time.monotonic() + 10
    with pytest.raises(LedgerUnavailable):
        while time.monotonic() < deadline:
            ledger.append("statement", data={"n": 2})
            time.sleep(0.01)


def test_a_dead_writer_process_fails_every_later_append(tmp_path: Path) -> None:
    ledger = open_remote(tmp_path / "l")
    ledger.append("statement", data={"n": 1})
    ledger.flush(30)
    _kill_writer_until_appends_fail(ledger)
    assert ledger.failed is not None
    with pytest.raises(LedgerUnavailable):
        ledger.flush(5)
    with pytest.raises(LedgerUnavailable):
        ledger.close()


def test_a_killed_proxy_leaves_everything_it_sent_signed(tmp_path: Path) -> None:
    """kill -9 of the proxy: its writer process signs what it received, then exits."""
    d = tmp_path / "l"
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from appliance.ledger.remote import RemoteLedger
        from tests.unit.ledger.conftest import KEY, ORIGIN
        ledger = RemoteLedger.open({str(d)!r}, origin=ORIGIN, key=KEY)
        for n in range(500):
            ledger.append("statement", data={{"n": n}})  # sent at once: no event loop
        print(ledger._proc.pid, flush=True)
        os.kill(os.getpid(), 9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    child = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
        time.sleep(0.05)
    report = verify_ledger(d, [KEY.verifier()])
    assert report.ok, report.findings
    assert report.entries == 501
    assert report.latest is not None and report.latest.size == 501
    # The next opener learns how the previous writer ended: what its last entry was.
    with open_remote(d) as again:
        last = again.last_at_open
        assert last is not None and (last.seq, last.type) == (500, "statement")
        assert last.ts == objs(d)[-1]["ts"]
        again.close()


def test_the_last_entry_at_open_is_the_same_from_either_writer(tmp_path: Path) -> None:
    d = tmp_path / "l"
    with open_remote(d) as ledger:
        assert ledger.last_at_open is None  # a new ledger
        ledger.append("appliance.stop", data={"reason": "signal"})
        ledger.close()
    with open_remote(d) as remote:
        remote_last = remote.last_at_open
        remote.close()
    with open_writer(d) as thread:
        assert thread.last_at_open == remote_last
    assert remote_last is not None and (remote_last.seq, remote_last.type) == (1, "appliance.stop")


def test_a_writer_without_thread_works_only_when_pumped(tmp_path: Path) -> None:
    d = tmp_path / "l"
    w = open_writer(d, threaded=False, checkpoint_interval=0.2)
    w.append("statement", data={"n": 1})
    assert w.signed_size == 0 and not (d / ENTRIES).read_bytes()  # nothing done yet
    wait = w.pump()  # written, a checkpoint is due within the interval
    assert wait is not None and 0 < wait <= 0.2
    assert w.signed_size == 0
    time.sleep(wait)
    assert w.pump() is None  # signed
    assert w.signed_size == 2
    w.append("statement", data={"n": 2})
    w.flush()
    assert w.signed_size == 3
    w.close()
    assert verify_ledger(d, [KEY.verifier()]).ok


def test_sync_makes_entries_durable_before_they_are_signed(tmp_path: Path) -> None:
    """The write-ahead: after sync() the entries are on disk, although no checkpoint covers
    them yet; syncs asked at once share the writer's fsyncs (group commit)."""
    d = tmp_path / "l"
    ledger = open_remote(d, checkpoint_interval=3600, checkpoint_entries=10**6)

    async def main() -> None:
        for n in range(3):
            ledger.append("statement", data={"n": n})
        await asyncio.gather(*(ledger.sync() for _ in range(8)))

    asyncio.run(main())
    on_disk = (d / ENTRIES).read_bytes()
    assert on_disk.count(b'"statement"') == 3
    assert ledger.signed_size < 3  # durable, not yet signed
    # kill -9 now: the entries survive and the next writer signs them on open.
    os.kill(ledger._proc.pid, signal.SIGKILL)
    ledger._proc.wait()
    reopened = open_remote(d)
    reopened.close()
    assert [o["data"] for o in objs(d) if o["type"] == "statement"] == [
        {"n": 0},
        {"n": 1},
        {"n": 2},
    ]


def test_sync_fails_once_the_writer_is_gone(tmp_path: Path) -> None:
    ledger = open_remote(tmp_path / "l")
    ledger.append("statement", data={"n": 1})
    os.kill(ledger._proc.pid, signal.SIGKILL)
    ledger._proc.wait()

    async def main() -> None:
        with pytest.raises(LedgerUnavailable):
            await asyncio.wait_for(ledger.sync(), 10)

    asyncio.run(main())
    with pytest.raises(LedgerUnavailable):
        ledger.close()


def test_a_sync_is_answered_before_a_due_checkpoint_is_signed(tmp_path: Path) -> None:
    """The writer process's durable() (a write-ahead) fsyncs the entries and returns; a
    checkpoint that is due waits for the next pump, after the answer (issue 19)."""
    d = tmp_path / "l"
    w = open_writer(d, threaded=False, checkpoint_interval=0.05)
    w.append("statement", data={"n": 1})
    w.pump()
    time.sleep(0.06)  # a checkpoint is due
    w.append("statement", data={"n": 2})
    w.durable()
    assert (d / ENTRIES).read_bytes().count(b'"statement"') == 2  # durable
    assert w.signed_size == 0  # not signed yet
    assert w.pump() is None  # now it is
    assert w.signed_size == 3
    w.close()
    assert verify_ledger(d, [KEY.verifier()]).ok


def test_the_writer_process_reads_a_sync_at_once_after_a_short_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No nap after a read that did not fill the buffer (issue 19): a sync that arrived
    during one waited for the rest of it. The writer process's loop runs in a thread here,
    so its sleeps can be seen."""
    import pickle

    from appliance.ledger import remote

    naps: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if threading.current_thread().name == "writer-process":
            naps.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(remote.time, "sleep", sleep)
    d = tmp_path / "l"
    parent, child = remote._pair()
    thread = threading.Thread(target=remote._Child(child).run, name="writer-process")
    thread.start()
    setup = {
        "directory": str(d),
        "origin": ORIGIN,
        "skey": KEY.to_skey(),
        "checkpoint_interval": 3600.0,
        "checkpoint_entries": 10000,
        "inline_limit": INLINE_LIMIT,
        "lock_wait": 10.0,
    }
    parent.sendall(remote.frame(remote._SETUP, pickle.dumps(setup)))
    reader = remote._Reader(parent)
    got = reader.next(timeout=60)
    assert got is not None and got[0] == remote._READY
    ready = orjson.loads(got[1])
    ledger = RemoteLedger(
        parent, None, directory=d, origin=ORIGIN, ready=ready, clock=time.time, reader=reader
    )
    ledger._worker.start()

    async def main() -> None:
        for n in range(5):
            ledger.append("statement", data={"n": n})
            await asyncio.sleep(0.05)  # the batch timer sent it: the child read it alone
            ledger.append("statement", data={"n": n, "write": True})
            await asyncio.wait_for(ledger.sync(), 10)

    try:
        asyncio.run(main())
    finally:
        ledger.close()  # no process of ours: a hang-up, then the child signs and returns
        thread.join(60)
    assert naps == []
    assert len([o for o in objs(d) if o["type"] == "statement"]) == 10


def _run(loop_kind: str, coro: Any) -> Any:
    if loop_kind == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_sync_answers_are_read_on_the_awaiting_loop_not_handed_over_by_a_thread(
    tmp_path: Path, loop_kind: str
) -> None:
    """Issue 19: a sync's answer is read by the event loop that awaits it (one wake-up),
    not by the listener thread and handed over with call_soon_threadsafe (two wake-ups and a
    GIL hand-over per write-ahead sync)."""
    ledger = open_remote(tmp_path / "l", checkpoint_interval=3600)
    handed: list[object] = []
    parked: list[float] = []  # the listener thread's waits while the loop reads
    real_wait = ledger._park.wait

    def wait(timeout: float | None = None) -> bool:
        parked.append(time.monotonic())
        return real_wait(timeout)

    ledger._park.wait = wait  # type: ignore[method-assign]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any, **kw: Any) -> Any:
            handed.append(callback)
            return real(callback, *args, **kw)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        for n in range(20):
            ledger.append("statement", data={"n": n})
            await asyncio.wait_for(ledger.sync(), 10)
        parked.append(-1.0)

    try:
        _run(loop_kind, main())
    finally:
        ledger.close()
    # the first answer may beat the loop to the socket: read by the thread, handed over
    assert len(handed) <= 1, handed
    # ... and the answers do not wake the waiting thread (it looks every _PARK s only)
    during = parked[: parked.index(-1.0)]
    span = during[-1] - during[0] if during else 0.0
    assert len(during) <= 2 + span / 0.5, during


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_writer_that_dies_while_the_loop_reads_fails_the_syncs_and_appends(
    tmp_path: Path, loop_kind: str
) -> None:
    """Fail closed with the answers read on the loop: the writer's end of the channel fails
    a sync awaited then and every later append (no hang)."""
    ledger = open_remote(tmp_path / "l", checkpoint_interval=3600)

    async def main() -> None:
        ledger.append("statement", data={"n": 1})
        await asyncio.wait_for(ledger.sync(), 10)  # the loop reads from now on
        ledger.append("statement", data={"n": 2})
        assert ledger._proc is not None
        os.kill(ledger._proc.pid, signal.SIGSTOP)  # the sync below is read, not answered
        waiting = asyncio.ensure_future(asyncio.wait_for(ledger.sync(), 10))
        await asyncio.sleep(0.1)
        os.kill(ledger._proc.pid, signal.SIGKILL)
        with pytest.raises(LedgerUnavailable):
            await waiting
        with pytest.raises(LedgerUnavailable):
            ledger.append("statement", data={"n": 3})
        with pytest.raises(LedgerUnavailable):
            await asyncio.wait_for(ledger.sync(), 10)

    _run(loop_kind, main())
    with pytest.raises(LedgerUnavailable):
        ledger.close()


def test_the_thread_reads_again_once_the_loop_that_read_is_gone(tmp_path: Path) -> None:
    """A loop that read the answers ends without a flush or close: the listener thread reads
    again, so a writer that dies afterwards still fails every later append."""
    ledger = open_remote(tmp_path / "l", checkpoint_interval=3600)

    async def main() -> None:
        ledger.append("statement", data={"n": 1})
        await ledger.sync()

    asyncio.run(main())  # the loop is closed now
    _kill_writer_until_appends_fail(ledger)
    with pytest.raises(LedgerUnavailable):
        ledger.close()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_flush_or_close_on_the_loops_own_thread_after_syncs_does_not_hang(
    tmp_path: Path, loop_kind: str
) -> None:
    """flush() and close() block their thread for the writer's answer: called on the loop's
    own thread once the loop reads the answers, the listener thread reads them instead."""
    d = tmp_path / "l"
    ledger = open_remote(d, checkpoint_interval=3600)

    async def main() -> None:
        ledger.append("statement", data={"n": 1})
        await ledger.sync()
        ledger.flush(10)  # blocks this (the loop's) thread
        assert ledger.signed_size >= 2
        ledger.append("statement", data={"n": 2})
        await ledger.sync()  # the loop reads again
        ledger.close()

    _run(loop_kind, main())
    assert [o["data"] for o in objs(d) if o["type"] == "statement"] == [{"n": 1}, {"n": 2}]


def test_the_thread_writer_syncs_too(tmp_path: Path) -> None:
    d = tmp_path / "t"
    writer = open_writer(d, checkpoint_interval=3600)
    writer.append("statement", data={"n": 1})
    asyncio.run(writer.sync())
    assert (d / ENTRIES).read_bytes().count(b'"statement"') == 1
    assert writer.signed_size == 0 or writer.signed_size < writer.next_seq
    writer.close()


def test_the_writer_process_ignores_a_package_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child imports this build's ``appliance``, not one beside the daemon's working
    directory (a benchmark runs another checkout's build from this one's tree)."""
    shadow = tmp_path / "cwd" / "appliance"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise SystemExit('the shadowing package was imported')\n")
    monkeypatch.chdir(shadow.parent)
    d = tmp_path / "l"
    with open_remote(d) as ledger:
        ledger.append("statement", session="s1", data={"text": "select 1"})
        ledger.flush(30)
    assert [o["type"] for o in objs(d)][-1:] == ["statement"]


# -- proxy workers: several processes, one writer, one order (proxy.workers > 1) -------------


def test_entries_from_several_connections_get_one_gap_free_order(tmp_path: Path) -> None:
    """The writer numbers the entries of the daemon and of each worker as they arrive: one
    seq without gaps, ts never going back, blobs still spliced into their own entries."""
    d = tmp_path / "l"
    masker = Masker(MaskingConfig(), hmac_key=b"k" * 32).for_target("db")
    main = open_remote(d, workers=2)
    workers = [RemoteLedger.attach(s, directory=d, origin=ORIGIN) for s in main.worker_sockets]
    # a worker whose clock is behind: the writer keeps ts from going back
    workers[1]._clock = lambda: 1_000_000_000.0
    try:
        main.append("appliance.start", data={"workers": 2})
        for n in range(50):
            for k, w in enumerate(workers):
                w.append("statement", session=f"w{k}", data={"n": n, "text": "select card"})
                sink = RowsSink(w, transforms(RowsTransform, masker), 1 << 24)
                sink.header({"columns": ["card"], "types": [25], "formats": [0]})
                sink.add(DataRow((b"4111 1111 1111 1111",)).encode())
                sink.close()
                w.append(
                    "response", session=f"w{k}", data={"n": n}, blobs={"result": sink.finish()}
                )
        for w in workers:
            w.close()
        main.append("appliance.stop", data={})
    finally:
        main.close()
    entries = objs(d)
    assert [e["seq"] for e in entries] == list(range(len(entries)))
    assert len(entries) == 1 + 1 + 200 + 1  # key.published, start, 2 x 50 x 2, stop
    assert entries[-1]["type"] == "appliance.stop"
    stamps = [e["ts"] for e in entries]
    assert stamps == sorted(stamps)
    for k in range(2):
        mine = [e for e in entries if e["session"] == f"w{k}"]
        assert [e["data"]["n"] for e in mine if e["type"] == "statement"] == list(range(50))
        for e in mine:
            if e["type"] == "response":
                assert "[REDACTED:CARD]" in e["data"]["result"]["inline"]  # type: ignore[index]
    report = verify_ledger(d, [KEY.verifier()])
    assert report.ok and report.entries == len(entries)


def test_a_worker_that_goes_away_is_dropped_and_the_others_go_on(tmp_path: Path) -> None:
    d = tmp_path / "l"
    main = open_remote(d, workers=2)
    gone, stays = (RemoteLedger.attach(s, directory=d, origin=ORIGIN) for s in main.worker_sockets)
    try:
        blob = gone.open_blob()
        blob.write(b"half a result")  # never referenced: aborted when the worker goes
        gone._sock.close()  # as a worker killed with -9 leaves it
        stays.append("statement", session="s", data={"n": 1})
        stays.flush(30)
        assert stays.failed is None
        stays.close()
    finally:
        main.close()
    assert [e["type"] for e in objs(d)] == ["key.published", "statement"]
    assert verify_ledger(d, [KEY.verifier()]).ok


def test_every_worker_fails_closed_when_the_writer_dies(tmp_path: Path) -> None:
    d = tmp_path / "l"
    main = open_remote(d, workers=2)
    workers = [RemoteLedger.attach(s, directory=d, origin=ORIGIN) for s in main.worker_sockets]
    try:
        assert main._proc is not None
        os.kill(main._proc.pid, signal.SIGKILL)
        main._proc.wait()
        for w in workers:
            deadline = time.monotonic() + 10
            while w.failed is None and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(LedgerUnavailable):
                w.append("statement", session="s", data={"n": 1})
            with pytest.raises(LedgerUnavailable):
                asyncio.run(w.sync())
            with pytest.raises(LedgerUnavailable):
                w.close()
    finally:
        with pytest.raises(LedgerUnavailable):
            main.close()


def test_syncs_from_several_workers_are_answered_each(tmp_path: Path) -> None:
    d = tmp_path / "l"
    main = open_remote(d, workers=2, checkpoint_interval=3600.0)
    workers = [RemoteLedger.attach(s, directory=d, origin=ORIGIN) for s in main.worker_sockets]

    async def both() -> None:
        for k, w in enumerate(workers):
            w.append("statement", session=f"w{k}", data={"n": k, "text": "delete"})
        await asyncio.gather(*(w.sync() for w in workers))

    try:
        asyncio.run(both())
        # durable (in entries.log) though not yet signed
        raw = (d / ENTRIES).read_bytes()
        assert b'"session":"w0"' in raw and b'"session":"w1"' in raw
        for w in workers:
            w.close()
    finally:
        main.close()


def test_the_channel_reader_gives_the_same_messages_however_the_bytes_are_cut() -> None:
    """A transcript of the channel, whole, one byte at a time, and cut at random places;
    a message larger than a read (a big blob chunk) is put together from many."""
    import random
    import socket

    from appliance.ledger.remote import _Reader
    from appliance.ledger.sender import frame  # what the proxy's side sends

    sock, other = socket.socketpair()

    sent = [(0, b"x" * 40), (4, b""), (3, b"y" * 300_000), (10, b"\x00" * 7), (1, b"z")]
    stream = b"".join(frame(kind, payload) for kind, payload in sent)
    rng = random.Random(5)
    cuts = sorted(rng.sample(range(1, len(stream)), 40))
    for pieces in (
        [stream],
        [stream[i : i + 1] for i in range(0, 2000)] + [stream[2000:]],
        [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)],
    ):
        reader = _Reader(sock)
        got = [m for piece in pieces for m in reader.messages(piece)]
        assert got == sent
        assert not reader.buf
    too_big = _Reader(sock)
    with pytest.raises(LedgerError):
        too_big.messages(b"\xff\xff\xff\xff\x00")
    # what the socket brings, read into the reader's own buffer
    other.sendall(stream[:1000])
    assert _Reader(sock).messages(_Reader(sock).recv()) == sent[:2]
    sock.close()
    other.close()


def test_a_failure_in_the_writer_process_stops_it_before_any_later_signature(
    tmp_path: Path,
) -> None:
    """Without a writer thread (the writer process) entries are written as they arrive; an
    I/O error there stops the writer for good: nothing after it is signed."""
    d = tmp_path / "l"
    w = open_writer(d, threaded=False)
    w.flush()
    signed = w.signed_size
    seq = w.next_seq
    w.append_encoded(seq, 1, b'{"seq":%d}' % seq)
    # The log's descriptor now writes to a full disk, and an entry of 1 MiB is written out
    # as it arrives.
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, w._log_fd)
    finally:
        os.close(full)
    big = b'{"seq":%d,"x":"%s"}' % (seq + 1, b"x" * (1 << 20))
    with pytest.raises(LedgerUnavailable, match="No space left"):
        w.append_encoded(seq + 1, 2, big)
    assert isinstance(w.failed, OSError)
    with pytest.raises(LedgerUnavailable):
        w.pump(flush=True)
    with pytest.raises(LedgerUnavailable):
        w.close()
    assert w.signed_size == signed


def _pending_session(ledger: Any, masker: Any) -> None:
    """Responses whose result blob travels whole with the entry (PendingBlob): inlined and
    masked, too large to inline, not UTF-8, a transform that fails, empty; then one blob
    opened before its entry and one entry with two blobs (holes)."""
    factory = transforms(RowsTransform, masker)

    def rows(n: int) -> PendingBlob:
        sink = RowsSink(ledger, factory, 1 << 24)
        sink.header({"columns": ["card"], "types": [25], "formats": [0]})
        for _ in range(n):
            sink.add(DataRow((b"4111 1111 1111 1111",)).encode())
        sink.close()
        blob = sink.finish()
        assert isinstance(blob, PendingBlob)
        return blob

    results: list[Any] = [
        rows(1),
        rows(5000),  # ~100 kB masked: past the inline limit; 150 kB, under the sink's chunk
        PendingBlob(None, b"\xff\xfe not UTF-8"),
        PendingBlob(factory, b"H\x00\x00\x00\x03{{{"),  # a header that is not JSON
        PendingBlob(None, b""),
    ]
    for n, result in enumerate(results):
        ledger.append("statement", session="s1", data={"n": n, "text": "select card"})
        ledger.append("response", session="s1", data={"n": n}, blobs={"result": result})
    opened = ledger.open_blob(factory)
    opened.write(rows(2).data)
    ledger.append("response", session="s1", data={"n": 5}, blobs={"result": opened})
    ledger.append(
        "response", session="s1", data={"n": 6}, blobs={"a": rows(3), "b": PendingBlob(None, b"x")}
    )


def test_pending_blobs_give_the_same_ledger_as_the_thread_writer(tmp_path: Path) -> None:
    """Byte for byte after key.published, blob files included, whether the writer process
    numbers the entries (workers) or the proxy does."""
    later = 1900000000.0
    masker = Masker(MaskingConfig(), hmac_key=b"k" * 32).for_target("db")
    dirs = {name: tmp_path / name for name in ("thread", "remote", "unnumbered")}
    with open_writer(dirs["thread"], clock=lambda: later, inline_limit=INLINE_LIMIT) as w:
        _pending_session(w, masker)
    with open_remote(dirs["remote"], clock=lambda: later) as r:
        _pending_session(r, masker)
    main = open_remote(dirs["unnumbered"], clock=lambda: later, workers=1)
    try:
        assert main._unnumbered
        _pending_session(main, masker)
    finally:
        main.close()
    ledgers = {name: [e.raw for e in iter_entries(d)][1:] for name, d in dirs.items()}
    assert len(ledgers["thread"]) == 12
    assert ledgers["remote"] == ledgers["thread"] == ledgers["unnumbered"]
    refs = [orjson.loads(raw)["data"].get("result") for raw in ledgers["thread"][1::2]]
    assert refs[0]["masking"]["detectors"] == {"card": 1}
    assert "4111" not in refs[0]["inline"]
    assert "inline" not in refs[1] and refs[1]["masking"]["detectors"] == {"card": 5000}
    assert "inline" not in refs[2]
    assert refs[3]["error"].startswith("blob transform failed")
    assert refs[4]["inline"] == ""
    blobs = {name: sorted(p.name for p in (d / "blobs").glob("??/*")) for name, d in dirs.items()}
    assert len(blobs["thread"]) == 2
    assert blobs["remote"] == blobs["thread"] == blobs["unnumbered"]
    for d in dirs.values():
        assert verify_ledger(d, [KEY.verifier()]).ok


def test_the_writer_reads_a_channel_transcript_the_same_however_it_is_cut(
    tmp_path: Path,
) -> None:
    """What a sender sent (entries, entries with their blob inside, blobs opened before,
    several blobs), fed to the writer process's reader whole, one byte at a time and cut at
    random places: the same ledger each time, and with a writer thread too."""
    import random
    import socket

    from appliance.ledger.remote import _Child
    from appliance.ledger.sender import LedgerSender

    masker = Masker(MaskingConfig(), hmac_key=b"k" * 32).for_target("db")
    a, b = socket.socketpair()
    try:
        sender = LedgerSender(
            a,
            origin=ORIGIN,
            clock=lambda: 1900000000.0,
            next_seq=1,  # after the key.published entry the writer starts with
            last_ts_us=0,
            unnumbered=False,
            nonce="n0",
        )
        sent = bytearray()

        def drain() -> None:  # the writer's end, read as the sender writes
            while chunk := b.recv(1 << 20):
                sent.extend(chunk)

        reading = threading.Thread(target=drain)
        reading.start()
        _pending_session(sender, masker)
        a.shutdown(socket.SHUT_WR)
        reading.join(30)
    finally:
        a.close()
        b.close()
    stream = bytes(sent)
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(stream)), 50))
    ledgers = []
    for k, (pieces, threaded) in enumerate(
        (
            ([stream], False),
            ([stream[i : i + 1] for i in range(len(stream))], False),
            ([stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)], strict=True)], False),
            ([stream], True),
        )
    ):
        d = tmp_path / str(k)
        writer = open_writer(d, threaded=threaded, inline_limit=INLINE_LIMIT)
        x, y = socket.socketpair()
        child = _Child(x)
        try:
            for piece in pieces:
                for kind, payload in child.main.reader.messages(piece):
                    child.handle(writer, child.main, kind, payload)
            assert not child.main.reader.buf and not child.main.blobs
            writer.close()
        finally:
            x.close()
            y.close()
        ledgers.append([e.raw for e in iter_entries(d)][1:])
        assert verify_ledger(d, [KEY.verifier()]).ok
    assert len(ledgers[0]) == 12
    assert ledgers[1] == ledgers[0] == ledgers[2] == ledgers[3]


def test_the_writer_process_keeps_its_freed_heap_unless_the_environment_says_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """glibc's malloc thresholds reach the writer process (a blob transform would otherwise
    have its heap trimmed and refaulted per chunk); an operator's own setting wins."""

    def environ(ledger: RemoteLedger) -> dict[str, str]:
        assert ledger._proc is not None
        raw = Path(f"/proc/{ledger._proc.pid}/environ").read_bytes()
        return dict(kv.split("=", 1) for kv in raw.decode().split("\0") if "=" in kv)

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    with open_remote(tmp_path / "l") as ledger:
        env = environ(ledger)
    assert env["MALLOC_TRIM_THRESHOLD_"] == str(32 << 20)
    assert env["MALLOC_MMAP_THRESHOLD_"] == "1048576"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_results_queued_from_a_loop_behind_a_slow_writer_all_reach_the_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    """Issue 19: with little room in the channel and a writer that masks, the loop queues
    instead of blocking; a flush from a thread and a close on the loop deliver everything
    queued before them, in order, and the ledger verifies."""
    import uvloop

    from appliance.ledger import remote

    monkeypatch.setattr(remote, "_SOCKBUF", 32 * 1024)
    d = tmp_path / "l"
    ledger = open_remote(d)
    masker = Masker(MaskingConfig(), hmac_key=b"k" * 32).for_target("db")

    async def main() -> None:
        for n in range(6):
            ledger.append("statement", session="s1", data={"n": n})
            sink = RowsSink(ledger, transforms(RowsTransform, masker), 1 << 26)
            sink.header({"columns": ["card", "n"], "types": [25, 23], "formats": [0, 0]})
            for _ in range(10_000):
                sink.add(DataRow((b"4111 1111 1111 1111", b"%d" % n)).encode())
            sink.close()
            ledger.append("response", session="s1", data={"n": n}, blobs={"result": sink.finish()})
            await asyncio.sleep(0)
        await asyncio.to_thread(ledger.flush, 120)
        ledger.append("statement", session="s1", data={"n": "last"})
        ledger.close()  # on the loop: delivers what is queued, then the stop

    uvloop.run(main()) if loop == "uvloop" else asyncio.run(main())
    entries = objs(d)
    assert [e["data"]["n"] for e in entries[1:]] == [  # type: ignore[index]
        n for i in range(6) for n in (i, i)
    ] + ["last"]
    for e in entries[2::2]:
        assert e["data"]["result"]["masking"]["detectors"] == {"card": 10_000}  # type: ignore[index]
    report = verify_ledger(d, [KEY.verifier()])
    assert report.ok and report.entries == 14 and report.blobs == 6
