"""The proxy's half of the channel to the writer process (LedgerSender), read off the wire:
what each append sends, in which order, with which seq and ts, and when."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.ledger.api import PendingBlob
from appliance.ledger.entries import encode_entry, encode_trusted, format_ts_us, make_entry
from appliance.ledger.errors import CanonicalError, LedgerError, LedgerUnavailable
from appliance.ledger.sender import (
    BULK,
    CLOSE,
    ENTRY,
    ENTRY_BLOB,
    ENTRY_BLOB_HEAD,
    ENTRY_BLOBS,
    FACTORY,
    HEAD,
    HIGH_WATER,
    HOLE,
    LIMIT,
    LOW_WATER,
    OPEN,
    OPEN_HEAD,
    U32,
    U64,
    UNNUMBERED,
    UNNUMBERED_BLOB,
    UNNUMBERED_BLOB_HEAD,
    WRITE,
    LedgerSender,
    frame,
    split,
)

ORIGIN = "runner-1"


class Clock:
    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0) if len(self.times) > 1 else self.times[0]


class Upper:
    """A transform factory (picklable, has ``new``)."""

    def new(self) -> None:  # pragma: no cover - runs in the writer process
        return None


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def sender(sock: socket.socket, clock: Clock, *, unnumbered: bool = False) -> LedgerSender:
    return LedgerSender(
        sock,
        origin=ORIGIN,
        clock=clock,
        next_seq=7,
        last_ts_us=0,
        unnumbered=unnumbered,
        nonce="n0",
    )


def messages(sock: socket.socket) -> list[tuple[int, bytes]]:
    sock.setblocking(False)
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            break
        data += chunk
    out, pos = [], 0
    while pos < len(data):
        length, kind = HEAD.unpack_from(data, pos)
        out.append((kind, data[pos + HEAD.size : pos + HEAD.size + length]))
        pos += HEAD.size + length
    return out


def test_entries_go_in_call_order_with_seq_and_a_ts_that_never_goes_back(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    s = sender(a, Clock(100.0, 99.0))  # the clock steps back: ts stays
    s.append("statement", session="s1", data={"text": "select 1"})
    s.append("response", session="s1", data={"rows": 1}, trusted=True)
    got = messages(b)
    assert [k for k, _ in got] == [ENTRY, ENTRY]
    expected: list[tuple[int, str, dict[str, object]]] = [
        (7, "statement", {"text": "select 1"}),
        (8, "response", {"rows": 1}),
    ]
    for (_, payload), (seq, type, data) in zip(got, expected, strict=True):
        assert U64.unpack_from(payload, 0)[0] == seq
        assert U64.unpack_from(payload, 8)[0] == 100_000_000
        entry = make_entry(
            origin=ORIGIN, seq=seq, ts=format_ts_us(100_000_000), type=type, data=data, session="s1"
        )
        assert payload[16:] == encode_entry(entry)


def test_a_pending_blob_travels_inside_its_entry_with_where_its_reference_goes(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    s = sender(a, Clock(1.0))
    factory = Upper()
    s.append(
        "response", session="s", data={"n": 1}, blobs={"result": PendingBlob(factory, b"rows")}
    )
    s.append("response", session="s", data={"n": 2}, blobs={"result": PendingBlob(None, b"")})
    got = messages(b)
    # the factory is sent once, then named by its number; one message per entry
    assert [k for k, _ in got] == [FACTORY, ENTRY_BLOB, ENTRY_BLOB]
    assert U32.unpack_from(got[0][1], 0)[0] == 1
    for (_, payload), (seq, n, factory_id, blob) in zip(
        got[1:], [(7, 1, 1, b"rows"), (8, 2, 0, b"")], strict=True
    ):
        seq_, ts_us, factory_, start, end, size = ENTRY_BLOB_HEAD.unpack_from(payload, 0)
        assert (seq_, ts_us, factory_, size) == (seq, 1_000_000, factory_id, len(blob))
        at = ENTRY_BLOB_HEAD.size
        assert payload[at : at + size] == blob
        raw = payload[at + size :]
        assert raw[start:end] == encode_trusted("\x00blob n0 result")
        entry = make_entry(
            origin=ORIGIN,
            seq=seq,
            ts=format_ts_us(1_000_000),
            type="response",
            data={"n": n, "result": "\x00blob n0 result"},
            session="s",
        )
        assert raw == encode_entry(entry)


def test_blobs_opened_before_or_several_blobs_go_as_holes(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    s = sender(a, Clock(1.0))
    factory = Upper()
    opened = s.open_blob(factory)
    opened.write(b"big")
    s.append(
        "response",
        data={"n": 1},
        blobs={"result": opened, "notes": PendingBlob(factory, b"small")},
    )
    got = messages(b)
    kinds = [k for k, _ in got]
    assert kinds == [FACTORY, OPEN, WRITE, OPEN, WRITE, ENTRY_BLOBS]
    assert got[2][1] == U64.pack(1) + b"big"
    blob_id, factory_id = U64.unpack_from(got[3][1], 0)[0], U32.unpack_from(got[3][1], 8)[0]
    assert (blob_id, factory_id) == (2, 1)  # the pending one, opened and written in one go
    assert got[4][1] == U64.pack(2) + b"small"
    payload = got[5][1]
    assert U64.unpack_from(payload, 0)[0] == 7
    count = int.from_bytes(payload[16:18], "big")
    holes = [HOLE.unpack_from(payload, 18 + i * HOLE.size) for i in range(count)]
    raw = payload[18 + count * HOLE.size :]
    assert {blob_id: raw[start:end] for blob_id, start, end in holes} == {
        1: encode_trusted("\x00blob n0 result"),
        2: encode_trusted("\x00blob n0 notes"),
    }
    assert opened.closed  # the entry closes the blob it references


def test_an_unnumbered_pending_blob_says_where_seq_ts_and_its_reference_go(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    s = sender(a, Clock(2.0), unnumbered=True)
    s.append("response", data={"n": 1}, blobs={"result": PendingBlob(None, b"rows")})
    [(kind, payload)] = messages(b)
    assert kind == UNNUMBERED_BLOB
    ts_us, seq_at, ts_at, factory_id, start, end, size = UNNUMBERED_BLOB_HEAD.unpack_from(
        payload, 0
    )
    at = UNNUMBERED_BLOB_HEAD.size
    assert (ts_us, factory_id, payload[at : at + size]) == (2_000_000, 0, b"rows")
    raw = payload[at + size :]
    assert raw[start:end] == encode_trusted("\x00blob n0 result")
    assert end <= seq_at  # the reference's offsets do not move when the seq goes in
    assert raw[ts_at : ts_at + 27] == format_ts_us(2_000_000).encode()


def test_unnumbered_entries_say_where_seq_and_ts_go(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    s = sender(a, Clock(2.0), unnumbered=True)
    s.append("statement", data={"x": 1})
    [(kind, payload)] = messages(b)
    assert kind == UNNUMBERED
    ts_us, seq_at, ts_at = OPEN_HEAD.unpack_from(payload, 0)
    raw = payload[OPEN_HEAD.size :]
    assert ts_us == 2_000_000
    assert raw[seq_at - len(b'"seq":') : seq_at] == b'"seq":'
    assert raw[ts_at : ts_at + 27] == format_ts_us(2_000_000).encode()


def test_bad_input_is_refused_before_anything_is_sent(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    s = sender(a, Clock(1.0))
    with pytest.raises(CanonicalError):
        s.append("statement", data={"x": 1.5})
    with pytest.raises(LedgerError, match="another writer"):
        s.append("response", data={}, blobs={"result": object()})
    with pytest.raises(LedgerError, match="transform factories"):
        s.open_blob(lambda data: data)
    with pytest.raises(LedgerError, match="transform factories"):
        s.append("response", data={}, blobs={"result": PendingBlob(lambda d: d, b"rows")})
    s.append("statement", data={"x": 1})
    [(kind, payload)] = messages(b)
    assert kind == ENTRY and U64.unpack_from(payload, 0)[0] == 7  # no seq was used up


def test_a_gone_writer_fails_this_append_and_every_later_one(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    s = sender(a, Clock(1.0))
    b.close()
    with pytest.raises(LedgerUnavailable, match="gone"):
        s.append("statement", data={"x": 1})
    assert s.failed is not None
    with pytest.raises(LedgerUnavailable, match="stopped"):
        s.append("statement", data={"x": 2})


def test_on_an_event_loop_appends_are_sent_together_shortly_after(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    s = sender(a, Clock(1.0))

    async def run() -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        for n in range(3):
            s.append("statement", data={"n": n})
        before = messages(b)
        await asyncio.sleep(0.05)
        return before, messages(b)

    before, after = asyncio.run(run())
    assert before == []
    assert [U64.unpack_from(p, 0)[0] for _, p in after] == [7, 8, 9]


@pytest.mark.parametrize("unnumbered", [False, True])
def test_session_entries_send_what_append_sends(pair, unnumbered: bool) -> None:  # type: ignore[no-untyped-def]
    """A session's SessionEntries (the recorders' path) and the general append put the same
    bytes on the wire: the same entries, seqs, timestamps and inline blobs."""
    identity = {"job": "build", "user": "ci"}
    factory = Upper()

    def calls(use_entries: bool) -> list[tuple[int, bytes]]:
        a, b = socket.socketpair()
        try:
            s = sender(a, Clock(5.0, 5.5, 4.0, 6.25), unnumbered=unnumbered)
            where = ("s1", identity, "acct", "db")
            entries = s.session_entries(*where)
            script: list[tuple[str, dict[str, object], PendingBlob | None]] = [
                ("statement", {"n": 1, "text": "select 1", "decision": {"d": "allow"}}, None),
                ("response", {"n": 1, "rows": 1}, PendingBlob(factory, b"row")),
                ("response", {"n": 2, "rows": 0}, PendingBlob(None, b"")),
                ("session.end", {"reason": "eof"}, None),
            ]
            for type, data, blob in script:
                if use_entries:
                    if blob is None:
                        entries.append(type, dict(data))
                    else:
                        entries.append(type, dict(data), "result", blob)
                else:
                    s.append(
                        type,
                        session=where[0],
                        identity=where[1],
                        account=where[2],
                        target=where[3],
                        data=data,
                        blobs=None if blob is None else {"result": blob},
                        trusted=True,
                    )
            return messages(b)
        finally:
            a.close()
            b.close()

    general = calls(False)
    assert [k for k, _ in general] == [
        *([UNNUMBERED] if unnumbered else [ENTRY]),
        FACTORY,
        *([UNNUMBERED_BLOB] * 2 if unnumbered else [ENTRY_BLOB] * 2),
        UNNUMBERED if unnumbered else ENTRY,
    ]
    assert calls(True) == general


def test_session_entries_refuse_once_the_writer_failed(pair) -> None:  # type: ignore[no-untyped-def]
    a, _ = pair
    s = sender(a, Clock(1.0))
    entries = s.session_entries("s1", None, None, None)
    s._failed = OSError("gone")
    with pytest.raises(LedgerUnavailable, match="stopped"):
        entries.append("statement", {"n": 1})


# -- never blocking the event loop: backpressure instead (issue 19) ------------------------------


def _small_buffers(a: socket.socket, b: socket.socket) -> None:
    """The kernel holds little: the sender's own backlog is what a slow writer leaves."""
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)


def _run(loop: str, main: Any) -> Any:
    return uvloop.run(main) if loop == "uvloop" else asyncio.run(main)


async def _read_all(sock: socket.socket, size: int) -> bytes:
    """Read ``size`` bytes from the writer's end, on the loop (the sender's callback runs
    between the reads)."""
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    data = bytearray()
    while len(data) < size:
        chunk = await loop.sock_recv(sock, 1 << 20)
        assert chunk, "the channel ended early"
        data += chunk
    return bytes(data)


def _parse(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        length, kind = HEAD.unpack_from(data, pos)
        assert pos + HEAD.size + length <= len(data), "a message cut short"
        out.append((kind, data[pos + HEAD.size : pos + HEAD.size + length]))
        pos += HEAD.size + length
    return out


@pytest.mark.timeout(60)  # a send that blocks would hang here: the peer reads nothing yet
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_full_channel_never_blocks_the_loop_and_everything_comes_out_in_order(
    pair: tuple[socket.socket, socket.socket], loop: str
) -> None:
    a, b = pair
    _small_buffers(a, b)
    s = sender(a, Clock(1.0))
    chunks = [bytes([n]) * 100_000 for n in range(40)]  # 4 MB of a result, 40 entries

    async def main() -> tuple[int, int, bytes]:
        ticks = 0

        async def other_session() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        other = asyncio.create_task(other_session())
        blob = s.open_blob()
        for n, chunk in enumerate(chunks):
            s.append("statement", data={"n": n})
            blob.write(chunk)
            seen = ticks
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert ticks > seen  # the loop goes on between the appends
        blob.close()
        backlog = s.backlog
        other.cancel()
        # nobody has read yet: most of it waits in the sender, nothing was dropped
        data = await _read_all(b, s.added)
        return backlog, s.backlog, data

    backlog, after, data = _run(loop, main())
    assert backlog > HIGH_WATER and after == 0
    got = _parse(data)
    assert [k for k, _ in got] == [OPEN] + [ENTRY, WRITE] * 40 + [CLOSE]
    seqs = [U64.unpack_from(p, 0)[0] for k, p in got if k == ENTRY]
    assert seqs == list(range(7, 47))
    assert [p[8:] for k, p in got if k == WRITE] == chunks


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_congestion_goes_up_at_the_high_mark_and_down_at_the_low_one(
    pair: tuple[socket.socket, socket.socket], loop: str
) -> None:
    """A bulk read (a result's chunk) is held back while the backlog is over HIGH_WATER, a
    read that adds an entry only over LIMIT; ``drained`` settles at LOW_WATER."""
    a, b = pair
    _small_buffers(a, b)
    s = sender(a, Clock(1.0))

    async def main() -> None:
        blob = s.open_blob()
        before = s.added
        blob.write(b"x" * BULK)  # bulk, but the channel is not congested
        assert not s.holds_back(before)
        while s.backlog < HIGH_WATER:
            before = s.added
            blob.write(b"x" * BULK)
        assert s.holds_back(before)
        before = s.added
        s.append("statement", data={"text": "select 1"})  # a small session goes on
        assert not s.holds_back(before)
        assert not s.holds_back(s.added)  # a read that queued nothing
        drained = s.drained()
        assert not drained.done()
        while s.backlog < LIMIT:
            blob.write(b"y" * BULK)
        before = s.added
        s.append("statement", data={"text": "select 1"})
        assert s.holds_back(before)  # over LIMIT, every read that adds is held back
        # the writer reads: the backlog goes down, drained settles at LOW_WATER, not before
        b.setblocking(False)
        ev_loop = asyncio.get_running_loop()
        while not drained.done():
            assert s.backlog > LOW_WATER
            assert await ev_loop.sock_recv(b, 64 * 1024)
            await asyncio.sleep(0)
        assert s.backlog <= LOW_WATER
        assert s.drained().done()  # below the mark: at once
        await _read_all(b, s.backlog)  # (the rest, for the socket's sake)

    _run(loop, main())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_writer_dying_while_bytes_are_queued_fails_closed(
    pair: tuple[socket.socket, socket.socket], loop: str
) -> None:
    a, b = pair
    _small_buffers(a, b)
    s = sender(a, Clock(1.0))

    async def main() -> None:
        blob = s.open_blob()
        while s.backlog < HIGH_WATER:
            blob.write(b"x" * BULK)
        drained = s.drained()
        b.close()  # the writer process is gone
        await drained  # settled by the failure: the session's next append raises
        assert s.failed is not None and s.backlog == 0
        with pytest.raises(LedgerUnavailable, match="stopped"):
            s.append("statement", data={"x": 1})
        with pytest.raises(LedgerUnavailable, match="stopped"):
            s.session_entries("s1", None, None, None).append("statement", {"x": 1})

    _run(loop, main())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_blocking_delivery_from_a_thread_goes_after_what_the_loop_queued(
    pair: tuple[socket.socket, socket.socket], loop: str
) -> None:
    """A flush or close from a thread (``asyncio.to_thread(ledger.close)``) delivers what the
    loop left queued first, then its own message, in order; the loop's callback then finds
    nothing left."""
    a, b = pair
    _small_buffers(a, b)
    s = sender(a, Clock(1.0))

    def flush_like() -> None:  # RemoteLedger.flush without its wait for the answer
        with s._lock:
            s._buffer(WRITE, U64.pack(99))
            s._deliver()

    async def main() -> bytes:
        blob = s.open_blob()
        for n in range(20):
            blob.write(bytes([n]) * BULK)
        assert s.backlog > 0
        reader = asyncio.create_task(asyncio.to_thread(_read_blocking, b, s.added + 13))
        await asyncio.to_thread(flush_like)
        data = await reader
        while s._writing is not None:  # the callback runs once the socket has room
            await asyncio.sleep(0.01)
        return data

    got = _parse(_run(loop, main()))
    assert [k for k, _ in got] == [OPEN] + [WRITE] * 21
    assert [p[8:] for _, p in got[1:-1]] == [bytes([n]) * BULK for n in range(20)]
    assert got[-1][1] == U64.pack(99)
    s._release()


def _read_blocking(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(1 << 20)
        assert chunk
        data += chunk
    return bytes(data)


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=12),
    st.data(),
)
def test_split_takes_the_whole_messages_of_any_prefix(
    sent: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    """split (the reader's compiled loop) is the reverse of frame: of any prefix of a
    stream, the messages it holds whole, and where the first one cut short starts."""
    framed = [frame(kind, payload) for kind, payload in sent]
    stream = b"".join(framed)
    cut = data.draw(st.integers(0, len(stream)))
    whole = 0
    while whole < len(framed) and sum(map(len, framed[: whole + 1])) <= cut:
        whole += 1
    out: list[tuple[int, bytes]] = [(99, b"kept")]
    assert split(stream[:cut], 40, out) == sum(map(len, framed[:whole]))
    assert out == [(99, b"kept"), *sent[:whole]]


def test_split_refuses_a_message_longer_than_the_limit() -> None:
    assert split(frame(3, b"x" * 10), 10, []) == 15
    with pytest.raises(LedgerError, match="message of 11 bytes"):
        split(frame(3, b"x" * 11), 10, [])
