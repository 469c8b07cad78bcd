"""The shell carries out a core's commands on real sockets (loopback, no root): a scripted
core relays between a job and an echo upstream, asks for TLS, timers, approvals and one-shot
sends, and crashes; the shell must do exactly what it is told and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from appliance.ledger.result_sink import ROWS, RowsSink, parts
from appliance.ledger.sender import ENTRY, HEAD, HIGH_WATER, WRITE, LedgerSender
from appliance.proxy._endpoint import TURN
from appliance.proxy.commands import (
    ApprovalAnswered,
    AskApproval,
    Command,
    Commands,
    End,
    Eof,
    Event,
    Log,
    OpenUpstream,
    PauseReading,
    SendOnce,
    SentOnce,
    SetTimer,
    Side,
    StartTLS,
    TimerFired,
    TLSEstablished,
    UpstreamFailed,
    UpstreamOpened,
)
from appliance.proxy.shell import Connection, ShellServices
from tests.certs import server_cert


class ScriptedCore:
    """Relays job <-> upstream; ``on`` maps an event type (or "start") to its commands."""

    def __init__(self, on: dict[Any, Callable[[Any], list[Command]]] | None = None) -> None:
        self.on = on or {}
        self.events: list[Event] = []
        self.to_job: list[bytes] = []
        self.to_up: list[bytes] = []
        self.crash_on: bytes | None = None
        self.crashes: list[BaseException] = []
        self.settles: list[int] = []  # at each settle(): the bytes not yet taken
        self.settle_fails = False

    def start(self) -> Commands:
        return self.on.get("start", lambda _: [])(None)

    def receive(self, side: Side, data: bytes) -> Commands:
        if self.crash_on is not None and self.crash_on in data:
            raise RuntimeError("core bug")
        (self.to_up if side == "job" else self.to_job).append(data)
        return ()

    def handle(self, event: Event) -> Commands:
        self.events.append(event)
        if isinstance(event, Eof):
            return [End(f"{event.side} closed")]
        return self.on.get(type(event), lambda _: [])(event)

    def take_output(self) -> tuple[bytes, bytes]:
        out = b"".join(self.to_job), b"".join(self.to_up)
        self.to_job.clear()
        self.to_up.clear()
        return out

    def settle(self) -> None:
        self.settles.append(sum(map(len, self.to_job)) + sum(map(len, self.to_up)))
        if self.settle_fails:
            raise RuntimeError("settle bug")

    def crashed(self, exc: BaseException) -> Commands:
        self.crashes.append(exc)
        self.to_job.append(b"last words\n")
        return [End("crashed")]


async def _echo_server() -> tuple[asyncio.Server, tuple[str, int]]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[:2]


async def _run(
    core: ScriptedCore,
    client: Callable[[tuple[str, int]], Awaitable[Any]],
    services: ShellServices | None = None,
) -> Any:
    """Accept one connection into a Connection running ``core``; run ``client`` against it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    conn = Connection(core, services or ShellServices(), name="test")

    async def serve() -> None:
        sock, _ = await loop.sock_accept(listener)
        await conn.run(sock)

    try:
        async with asyncio.timeout(10):
            task = asyncio.create_task(serve())
            result = await client(listener.getsockname()[:2])
            await task
            return result
    finally:
        listener.close()


async def _ping(address: tuple[str, int]) -> bytes:
    """A job that sends ping once its upstream is open, and reads four bytes back."""
    reader, writer = await asyncio.open_connection(*address)
    await asyncio.sleep(0.05)  # the upstream is being opened
    writer.write(b"ping")
    got = await reader.readexactly(4)
    writer.close()
    return got


def test_bytes_relay_through_an_opened_upstream_and_eof_ends() -> None:
    async def main() -> None:
        server, echo = await _echo_server()
        core = ScriptedCore({"start": lambda _: [OpenUpstream(echo, 5), Log("info", "hi")]})

        assert await _run(core, _ping) == b"ping"
        assert isinstance(core.events[0], UpstreamOpened)
        assert core.events[-1] == Eof("job", None) or core.events[-1].side == "job"  # type: ignore[union-attr]
        server.close()

    asyncio.run(main())


def test_the_core_settles_once_each_step_s_bytes_are_taken_and_its_failure_ends_it() -> None:
    async def main() -> None:
        server, echo = await _echo_server()

        core = ScriptedCore({"start": lambda _: [OpenUpstream(echo, 5)]})
        assert await _run(core, _ping) == b"ping"
        # After the job's bytes and after the echo (and the events): nothing left untaken.
        assert len(core.settles) >= 3 and set(core.settles) == {0}
        assert core.crashes == []

        core = ScriptedCore({"start": lambda _: [OpenUpstream(echo, 5)]})
        core.settle_fails = True

        async def crashing(address: tuple[str, int]) -> bytes:
            reader, writer = await asyncio.open_connection(*address)
            await asyncio.sleep(0.05)
            writer.write(b"ping")
            return await reader.read()

        assert await _run(core, crashing) == b"last words\n"
        assert [str(e) for e in core.crashes] == ["settle bug"]
        server.close()

    asyncio.run(main())


def test_an_unreachable_upstream_is_an_event() -> None:
    async def main() -> None:
        closed = socket.create_server(("127.0.0.1", 0))
        address = closed.getsockname()[:2]
        closed.close()  # nothing listens there now
        core = ScriptedCore(
            {
                "start": lambda _: [OpenUpstream(address, 5)],
                UpstreamFailed: lambda ev: [End("refused")],
            }
        )

        async def client(address: tuple[str, int]) -> bytes:
            reader, _ = await asyncio.open_connection(*address)
            return await reader.read()

        assert await _run(core, client) == b""
        (failed,) = [e for e in core.events if isinstance(e, UpstreamFailed)]
        assert "refused" in failed.why.lower()

    asyncio.run(main())


def test_timers_fire_and_approvals_without_a_broker_answer_with_an_error() -> None:
    async def main() -> None:
        core = ScriptedCore(
            {
                "start": lambda _: [SetTimer("t", 0.01), AskApproval(7, {})],
                TimerFired: lambda ev: [],
                ApprovalAnswered: lambda ev: [End("answered")],
            }
        )

        async def client(address: tuple[str, int]) -> bytes:
            reader, _ = await asyncio.open_connection(*address)
            return await reader.read()

        await _run(core, client)
        answered = [e for e in core.events if isinstance(e, ApprovalAnswered)]
        assert answered == [ApprovalAnswered(7, error="approvals are not configured")]

    asyncio.run(main())


def test_a_crashing_core_ends_with_its_last_words() -> None:
    async def main() -> None:
        core = ScriptedCore()
        core.crash_on = b"boom"

        async def client(address: tuple[str, int]) -> bytes:
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"boom")
            return await reader.read()

        assert await _run(core, client) == b"last words\n"
        assert [str(e) for e in core.crashes] == ["core bug"]

    asyncio.run(main())


def test_send_once_delivers_the_payload_on_a_new_connection() -> None:
    async def main() -> None:
        received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.set_result(await reader.read())
            writer.close()

        server = await asyncio.start_server(sink, "127.0.0.1", 0)
        target = server.sockets[0].getsockname()[:2]
        core = ScriptedCore(
            {"start": lambda _: [SendOnce(target, b"cancel!")], SentOnce: lambda ev: [End("sent")]}
        )

        async def client(address: tuple[str, int]) -> bytes:
            reader, _ = await asyncio.open_connection(*address)
            return await reader.read()

        await _run(core, client)
        assert await received == b"cancel!"
        assert SentOnce(True) in core.events
        server.close()

    asyncio.run(main())


def _server_context(tmp_path: Any) -> ssl.SSLContext:
    """The appliance's job-side TLS context, with a certificate for appliance.test whose CA
    is written to ``tmp_path/ca.pem``."""
    tls = server_cert("shell test CA", "appliance.test", ["appliance.test"])
    (tmp_path / "cert.pem").write_bytes(tls.cert_pem)
    (tmp_path / "key.pem").write_bytes(tls.key_pem)
    (tmp_path / "ca.pem").write_bytes(tls.ca_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


def test_job_side_tls_pauses_reading_until_the_handshake_is_done(tmp_path: Any) -> None:
    context = _server_context(tmp_path)

    async def main() -> None:
        core = ScriptedCore(
            {
                "start": lambda _: [StartTLS("job", context)],
                TLSEstablished: lambda ev: [PauseReading("job", "x", False)],
            }
        )

        def greet(data: bytes) -> None:
            core.to_job.append(b"hello over TLS:" + data)

        core.receive = lambda side, data: (greet(data), ())[1]  # type: ignore[method-assign]

        async def client(address: tuple[str, int]) -> bytes:
            ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            reader, writer = await asyncio.open_connection(
                *address, ssl=ctx, server_hostname="appliance.test"
            )
            writer.write(b"hi")
            got = await reader.readexactly(len(b"hello over TLS:hi"))
            writer.close()
            return got

        assert await _run(core, client) == b"hello over TLS:hi"
        assert any(isinstance(e, TLSEstablished) and e.side == "job" for e in core.events)

    asyncio.run(main())


def _tls_client(address: tuple[str, int], cafile: str, request: bytes, message: bytes) -> bytes:
    """A client that sends its TLS request and its ClientHello in one write (as a MySQL
    client may: it does not wait for an answer to its SSL request), then ``message`` over
    TLS; returns what comes back over TLS until the server closes."""
    context = ssl.create_default_context(cafile=cafile)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="appliance.test")
    with socket.create_connection(address, timeout=10) as sock:
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        sock.sendall(request + outgoing.read())  # one write: request and ClientHello
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if pending := outgoing.read():
                    sock.sendall(pending)
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the handshake") from None
                incoming.write(data)
        tls.write(message)
        sock.sendall(outgoing.read())
        got = b""
        while True:
            try:
                chunk = tls.read(65536)
                if not chunk:  # the server's close_notify
                    return got
                got += chunk
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    return got
                incoming.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return got


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls_bytes_read_with_the_request_are_handed_to_tls(tmp_path: Any, loop: str) -> None:
    """StartTLS ``early``: the ClientHello that came in the same read as the protocol's
    TLS request reaches the TLS layer, ahead of what is read after it."""
    context = _server_context(tmp_path)
    early: list[bytes] = []

    async def main() -> bytes:
        core = ScriptedCore({TLSEstablished: lambda ev: []})
        encrypted = False

        def receive(side: Side, data: bytes) -> Commands:
            nonlocal encrypted
            if not encrypted:
                assert data.startswith(b"TLS?")
                encrypted = True
                early.append(data[4:])
                return [StartTLS("job", context, early=data[4:])]
            core.to_job.append(b"over TLS: " + data)
            return [End("said it")]

        core.receive = receive  # type: ignore[method-assign]

        async def client(address: tuple[str, int]) -> bytes:
            return await asyncio.to_thread(
                _tls_client, address, str(tmp_path / "ca.pem"), b"TLS?", b"hello"
            )

        return await _run(core, client)  # type: ignore[no-any-return]

    got = uvloop.run(main()) if loop == "uvloop" else asyncio.run(main())
    assert got == b"over TLS: hello"
    assert early and early[0][:1] == b"\x16"  # a TLS handshake record came with the request


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls_from_start_reports_the_sni_and_alpn_the_job_asked_for(
    tmp_path: Any, loop: str
) -> None:
    """A StartTLS of the job's side among the core's first commands is the socket's first
    use, on asyncio and uvloop alike (a handshake started after the accepted socket began
    reading would lose the ClientHello); the SNI the job sent and the ALPN chosen come with
    TLSEstablished, and a certificate picked by the context's own SNI callback is used."""
    tls = server_cert("shell test CA", "a.test", ["a.test", "b.test"])
    (tmp_path / "cert.pem").write_bytes(tls.cert_pem)
    (tmp_path / "key.pem").write_bytes(tls.key_pem)
    (tmp_path / "ca.pem").write_bytes(tls.ca_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    context.set_alpn_protocols(["h2", "http/1.1"])
    picked: list[str | None] = []
    context.sni_callback = lambda obj, name, ctx: picked.append(name)  # type: ignore[assignment,func-returns-value]

    async def main() -> None:
        core = ScriptedCore({"start": lambda _: [SetTimer("t", 30), StartTLS("job", context)]})

        def greet(data: bytes) -> None:
            core.to_job.append(b"ok:" + data)

        core.receive = lambda side, data: (greet(data), ())[1]  # type: ignore[method-assign]

        async def client(address: tuple[str, int]) -> bytes:
            ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            ctx.set_alpn_protocols(["http/1.1"])
            reader, writer = await asyncio.open_connection(
                *address, ssl=ctx, server_hostname="b.test"
            )
            writer.write(b"hi")
            got = await reader.readexactly(5)
            writer.close()
            return got

        assert await _run(core, client) == b"ok:hi"
        (established,) = [e for e in core.events if isinstance(e, TLSEstablished)]
        assert (established.server_name, established.alpn) == ("b.test", "http/1.1")
        assert picked == ["b.test"]

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


class FakeTransport:
    """A transport that says whether it is read, and keeps what is written to it."""

    def __init__(self) -> None:
        self.reading = True
        self.writes: list[bytes] = []

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.writes.append(data)


@pytest.mark.parametrize("paused", [True, False])
def test_pause_reasons_add_up(paused: bool) -> None:
    """A side is read only when no reason holds it: the core's own and backpressure."""

    async def main() -> None:
        conn = Connection(ScriptedCore(), ShellServices(), name="t")
        transport = FakeTransport()
        conn.job.transport = transport  # type: ignore[assignment]
        conn.pause("job", "hold", True)
        conn.pause("job", "backpressure", paused)
        conn.pause("job", "hold", False)
        assert transport.reading is (not paused)
        conn.pause("job", "backpressure", False)
        assert transport.reading

    asyncio.run(main())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_congested_ledger_channel_pauses_the_session_reading_bulk_until_it_drains(
    loop: str,
) -> None:
    """Issue 19: a session whose upstream reads queue result chunks for a ledger writer that
    reads nothing stops reading its upstream (the loop goes on; another session's entry is
    not held back); once the writer reads, it resumes, and the job and the ledger get every
    byte, in order."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    ledger = LedgerSender(
        a, origin="o", clock=lambda: 1.0, next_seq=1, last_ts_us=0, unnumbered=False, nonce="n"
    )
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB of "rows"
    stop = threading.Event()

    def read_channel() -> bytes:  # the writer process, once it reads
        b.settimeout(0.05)
        data = bytearray()
        while not (stop.is_set() and len(data) >= ledger.added):
            try:
                chunk = b.recv(1 << 20)
            except TimeoutError:
                continue
            assert chunk
            data += chunk
        return bytes(data)

    async def main() -> tuple[bytes, bytes, int]:
        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for i in range(0, len(payload), 65536):
                writer.write(payload[i : i + 65536])
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        sink = RowsSink(ledger, None, 1 << 30)
        core = ScriptedCore({"start": lambda _: [OpenUpstream(server.sockets[0].getsockname(), 5)]})

        def receive(side: Side, data: bytes) -> Commands:
            if side == "upstream":
                sink.add(data)  # a chunk for the ledger every 256 KiB
                core.to_job.append(data)
            return ()

        plain_handle = core.handle

        def handle(event: Event) -> Commands:
            if isinstance(event, Eof) and event.side == "upstream":
                sink.close()
                sink.finish()
            return plain_handle(event)

        core.receive = receive  # type: ignore[method-assign]
        core.handle = handle  # type: ignore[method-assign]
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        ev_loop = asyncio.get_running_loop()
        conn = Connection(core, ShellServices(backlog=ledger), name="export")

        async def serve() -> None:
            sock, _ = await ev_loop.sock_accept(listener)
            await conn.run(sock)

        serving = asyncio.create_task(serve())
        job_reader, job_writer = await asyncio.open_connection(*listener.getsockname()[:2])
        to_job = asyncio.create_task(job_reader.read())  # the job reads everything at once
        while "ledger" not in conn._paused["upstream"]:
            await asyncio.sleep(0.01)
        assert conn.upstream is not None and conn.upstream.transport is not None
        assert not conn.upstream.transport.is_reading()
        held = ledger.backlog
        before = ledger.added
        ledger.append("statement", session="other", data={"text": "select 1"})
        assert not ledger.holds_back(before)  # another session's statement goes on
        for _ in range(50):
            await asyncio.sleep(0)
        assert "ledger" in conn._paused["upstream"]
        assert ledger.backlog <= held + 1024  # bounded: nothing more read from upstream
        channel = asyncio.create_task(asyncio.to_thread(read_channel))
        got = await to_job
        job_writer.close()
        await serving
        while ledger.backlog:
            await asyncio.sleep(0.01)
        stop.set()
        server.close()
        listener.close()
        return got, await channel, held

    try:
        got, channel, held = uvloop.run(main()) if loop == "uvloop" else asyncio.run(main())
    finally:
        ledger._release()
        a.close()
        b.close()
    assert got == payload
    assert held >= HIGH_WATER
    rows = bytearray()
    messages, pos = [], 0
    while pos < len(channel):
        length, kind = HEAD.unpack_from(channel, pos)
        messages.append((kind, channel[pos + HEAD.size : pos + HEAD.size + length]))
        pos += HEAD.size + length
    assert pos == len(channel)
    for kind, body in messages:
        if kind == WRITE:
            rows += b"".join(part for k, part in parts(body[8:]) if k == ROWS)
    assert bytes(rows) == payload
    assert [k for k, _ in messages].count(ENTRY) == 1  # the other session's statement


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_bulk_read_waits_its_turn_behind_another_sides_bytes(loop: str) -> None:
    """Issue 19: an upstream that always has bytes ready (an export) gets at most TURN bytes
    handed to the core per turn of the loop, so a byte the job sends meanwhile reaches the
    core after at most a piece or two of the export, not after one whole 256 KB read, nor
    after the dozens of reads uvloop hands over back to back (measured before: the
    masking of those held another session 1.5 s). Every byte reaches the core, in order,
    and the upstream's end only after the last one."""
    total = 8 << 20
    payload = bytes(range(256)) * (total // 256)
    listener = socket.create_server(("127.0.0.1", 0))

    def upstream() -> None:  # the server: the socket is never short of bytes to read
        sock, _ = listener.accept()
        with sock:
            sock.sendall(payload)

    job, job_peer = socket.socketpair()
    got: list[bytes] = []
    sizes: list[int] = []
    waited: list[int] = []  # upstream bytes received after the job's byte was sent
    sent_at: list[int] = []
    ended_after: list[int] = []

    core = ScriptedCore({"start": lambda _: [OpenUpstream(listener.getsockname(), 5)]})

    def receive(side: Side, data: bytes) -> Commands:
        received = sum(map(len, got))
        if side == "job":
            waited.append(received - sent_at[0])
            return ()
        got.append(data)
        sizes.append(len(data))
        if not sent_at and received + len(data) >= 1 << 20:
            job_peer.send(b"x")  # the other session's statement, readable at once
            sent_at.append(received + len(data))
        return ()

    plain_handle = core.handle

    def handle(event: Event) -> Commands:
        if isinstance(event, Eof) and event.side == "upstream":
            ended_after.append(sum(map(len, got)))
        return plain_handle(event)

    core.receive = receive  # type: ignore[method-assign]
    core.handle = handle  # type: ignore[method-assign]

    async def main() -> None:
        conn = Connection(core, ShellServices(), name="export")
        job.setblocking(False)
        await conn.run(job)

    thread = threading.Thread(target=upstream)
    thread.start()
    try:
        uvloop.run(main()) if loop == "uvloop" else asyncio.run(main())
    finally:
        thread.join()
        listener.close()
        job_peer.close()
    assert len(waited) == 1 and waited[0] <= 2 * TURN, (waited, sent_at)
    assert max(sizes) <= TURN
    assert b"".join(got) == payload
    assert ended_after == [total]


def test_a_read_in_pieces_keeps_its_order_with_later_bytes_and_the_end() -> None:
    """Bytes a transport delivers while a big read is still being handed over in pieces
    (a TLS transport may, paused or not), and the side's end (a reset), reach the core after
    that read's last piece, in order; the side is not read meanwhile, and is again after."""

    big = bytes(range(256)) * (3 * TURN // 256 + 1)  # four pieces, the last one short
    heard: list[Any] = []

    async def main() -> tuple[bool, bool]:
        core = ScriptedCore()
        receive = core.receive

        def noting(side: Side, data: bytes) -> Commands:
            heard.append(data)
            return receive(side, data)

        def handle(event: Event) -> Commands:
            heard.append(event)
            return ()

        core.receive = noting  # type: ignore[method-assign]
        core.handle = handle  # type: ignore[method-assign]
        conn = Connection(core, ShellServices(), name="t")
        transport = FakeTransport()
        conn.job.transport = transport  # type: ignore[assignment]
        conn.on_data("job", big)
        conn.on_data("job", b"later")
        conn.on_eof("job", "reset")
        paused = not transport.reading
        for _ in range(10):
            await asyncio.sleep(0)
        return paused, transport.reading

    paused, reading = asyncio.run(main())
    assert paused and reading
    pieces = [x for x in heard if isinstance(x, bytes)]
    assert [len(p) for p in pieces] == [TURN, TURN, TURN, len(big) - 3 * TURN + 5]
    assert b"".join(pieces) == big + b"later"
    assert heard[-1] == Eof("job", "reset") and len(heard) == 5
