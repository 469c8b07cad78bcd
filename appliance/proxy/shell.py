"""The asyncio shell of one connection: it carries out what the session core decides.

Where this sits: :class:`~appliance.proxy.server.ProxyServer` accepts a connection, resolves
its flow and builds the protocol's session core; :meth:`Connection.run` then runs the
connection in its own task group until the core says :class:`~.commands.End`:

- bytes read from the job or the upstream go to :meth:`SessionCore.receive`; after every
  call the core's output is written to the two sockets, the core settles what it deferred
  until then (:meth:`SessionCore.settle`), then its commands are carried out in order
  (:mod:`appliance.proxy.commands`);
- commands that wait (connect upstream, TLS on either side, an approval, a one-shot send)
  run as tasks of the connection's task group and answer with an event; timers are loop
  callbacks that answer with :class:`~.commands.TimerFired`;
- backpressure: a side whose write buffer is over the high-water mark stops the reading
  of the other side until it drains; a core's own pauses (a statement held for approval,
  a drain) add their reasons, and a side is read only when no reason holds it; so does the
  ledger channel (issue 19): a read whose recording queued bulk (a result's chunk) while the
  channel to the ledger writer is congested stops the reading of that side until the
  channel has drained (:meth:`LedgerSender.holds_back
  <appliance.ledger.sender.LedgerSender.holds_back>`), so one session's export waits for
  the writer, not every session of the process;
- turns (issue 19): a side gets at most :data:`~appliance.proxy._endpoint.TURN` bytes handed
  to its core per turn of the event loop. A bigger read is handed over in pieces, one per
  turn, its side not read meanwhile; a read of that size or more ends its side's turn
  (reading stops until the next turn). A core's work per byte (masking the rows of an
  export for the job: ~40 ms per 256 KB read) then delays another session's statement by
  one piece at most, not by a whole read, nor by the dozens of reads uvloop (libuv reads a
  ready socket up to 32 times per poll) would otherwise hand over back to back: measured
  before, one session's ``COPY TO STDOUT`` held every other session for 1.5 s at a time.
  The core sees the same bytes in the same order (only cut at other places, as TCP may cut
  them), and an end of the side after them reaches it after the last piece;
- a core that raises is a bug (or a ledger that cannot record): the connection ends with
  what :meth:`SessionCore.crashed` says, and the other connections go on.

Nothing here knows a protocol, a SQLSTATE or a ledger entry type."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from appliance.ledger.errors import LedgerUnavailable
from appliance.proxy import commands as c
from appliance.proxy._endpoint import HIGH_WATER, TURN, Endpoint
from appliance.proxy._starttls import start_tls
from appliance.proxy.commands import Command, Commands, Event, SessionCore, Side
from appliance.proxy.waits import (
    ApprovalBroker,
    LedgerBacklog,
    Unreachable,
    ask_approval,
    await_durable,
    connect_marked,
    why,
)

log = logging.getLogger("appliance.proxy")

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@dataclass(frozen=True)
class ShellServices:
    """What the shell needs of the appliance: the socket mark of its upstream connections
    and the approvals broker (None: approvals are not configured)."""

    mark: int = 0
    broker: ApprovalBroker | None = None
    upstream_socket: Callable[[int, int], socket.socket] | None = None
    durable: Callable[[], Awaitable[None]] | None = None  # the ledger's sync
    backlog: LedgerBacklog | None = None  # the ledger channel's queue (None: no channel)


# The name each job's TLS handshake asked for (SNI), by TLS object: a server-side SSLObject
# does not keep it (its server_hostname is None), so the context's SNI callback notes it.
_SNI: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _record_sni(context: ssl.SSLContext) -> None:
    """Make ``context`` note the SNI of each handshake in :data:`_SNI` (once per context;
    a callback the context has already, e.g. one picking a certificate, still runs)."""
    if getattr(context, "_appliance_notes_sni", False):
        return
    inner = context.sni_callback

    def note(obj: Any, name: str | None, ctx: ssl.SSLContext) -> int | None:
        if name:
            _SNI[obj] = name
        return inner(obj, name, ctx) if inner is not None else None  # type: ignore[arg-type]

    context.sni_callback = note
    context._appliance_notes_sni = True  # type: ignore[attr-defined]


class Connection:
    """One accepted connection and its session core; see the module docstring."""

    def __init__(self, core: SessionCore, services: ShellServices, *, name: str) -> None:
        self.core = core
        self.services = services
        self.name = name
        self.job = Endpoint(self, "job")
        self.upstream: Endpoint | None = None
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._paused: dict[Side, set[str]] = {"job": set(), "upstream": set()}
        self._tls_early: dict[Side, list[bytes]] = {}
        self._backlog = services.backlog
        # Turns (see the module docstring): bytes read from a side and not yet handed to the
        # core, and an end of that side seen behind them (its ``lost`` reason).
        self._rest: dict[Side, tuple[bytes, int]] = {}  # (bytes, where the rest starts)
        self._end_after: dict[Side, str | None] = {}
        # The ledger channel's ``added`` when that read came: whether it queued bulk is
        # judged over the whole read, as before it was cut (see _receive).
        self._read_before: dict[Side, int] = {}

    # -- running -------------------------------------------------------------------------

    async def run(self, sock: socket.socket) -> None:
        """Run the connection on the accepted ``sock`` until the core ends it."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tls = self.started()  # before any byte of the job is delivered
                if tls is None:
                    await loop.connect_accepted_socket(lambda: self.job, sock)
                    # A reason to pause that came before the transport did holds now.
                    if self._paused["job"] and self.job.transport is not None:
                        self.job.transport.pause_reading()
                else:
                    await self._accept_tls(sock, tls)
                await self.done
                for task in list(self._tasks):
                    task.cancel()  # a held request's approval is withdrawn, a connect dropped
        finally:
            for timer in self._timers.values():
                timer.cancel()
            self._close_all()

    def started(self) -> c.StartTLS | None:
        """The job's socket is accepted: the core starts before any byte is read (its first
        commands may be to pause reading). A ``StartTLS`` of the job's side among them is
        returned, not spawned: the handshake is the socket's first use (see
        :meth:`_accept_tls`), so no byte of it can reach the core in clear."""
        try:
            commands = self.core.start()
        except Exception as exc:
            self._crashed(exc)
            return None
        tls = next((x for x in commands if isinstance(x, c.StartTLS) and x.side == "job"), None)
        self._carry_out([x for x in commands if x is not tls])
        return tls

    async def _accept_tls(self, sock: socket.socket, command: c.StartTLS) -> None:
        """Accept ``sock`` with TLS from its first byte (the appliance is the server); the
        core hears :class:`~.commands.TLSEstablished` (ALPN, the SNI the job asked for) or
        :class:`~.commands.TLSFailed`; bytes decrypted before it heard wait for it."""
        loop = asyncio.get_running_loop()
        _record_sni(command.context)
        self._tls_early["job"] = []
        try:
            await loop.connect_accepted_socket(
                lambda: self.job, sock, ssl=command.context, ssl_handshake_timeout=30.0
            )
        except (ssl.SSLError, OSError, ConnectionError, TimeoutError) as exc:
            sock.close()
            self._tls_early.pop("job", None)
            self.event(c.TLSFailed("job", str(exc) or type(exc).__name__))
            return
        transport = self.job.transport
        assert transport is not None
        if self._paused["job"]:
            transport.pause_reading()
        tls = transport.get_extra_info("ssl_object")
        alpn = tls.selected_alpn_protocol() if tls is not None else None
        early = self._tls_early.pop("job", [])
        self.event(c.TLSEstablished("job", None, alpn, _SNI.pop(tls, None)))
        for data in early:
            self.on_data("job", data)

    def drain(self) -> None:
        self.event(c.Drain())

    def abort(self, reason: str) -> None:
        self.event(c.Abort(reason))

    # -- from the sockets ------------------------------------------------------------------

    def on_data(self, side: Side, data: bytes) -> None:
        if self.done.done():
            return
        early = self._tls_early.get(side)
        if early is not None:
            # Decrypted bytes can arrive before start_tls returns: they wait for the core
            # to hear that TLS is up (else its answer would go out on the raw socket).
            early.append(data)
            return
        rest = self._rest.get(side)
        if rest is not None:  # (a transport that delivers while paused) behind the rest
            self._rest[side] = (rest[0][rest[1] :] + data, 0)
            return
        backlog = self._backlog
        before = backlog.added if backlog is not None else 0
        if len(data) >= TURN:
            # A bulk read ends this side's turn; what is over TURN waits for the next ones.
            if len(data) > TURN:
                self._rest[side] = (data, TURN)
                self._read_before[side] = before
                data = data[:TURN]
            self.pause(side, "turn", True)
            asyncio.get_running_loop().call_soon(self._next_turn, side)
        self._receive(side, data, before)

    def _next_turn(self, side: Side) -> None:
        """A new turn of the loop for ``side``: the next piece of its rest to the core, or,
        with nothing left, its end if one came, else reading again."""
        if self.done.done():
            return
        rest = self._rest.pop(side, None)
        if rest is not None:
            data, at = rest
            if len(data) - at > TURN:
                self._rest[side] = (data, at + TURN)
                before = self._read_before[side]
            else:
                before = self._read_before.pop(side)
            asyncio.get_running_loop().call_soon(self._next_turn, side)
            self._receive(side, data[at : at + TURN], before)
            return
        if side in self._end_after:
            self.on_eof(side, self._end_after.pop(side))
        self.pause(side, "turn", False)

    def _receive(self, side: Side, data: bytes, before: int) -> None:
        """Hand ``data`` read from ``side`` to the core and carry out what it answers;
        ``before``: the ledger channel's ``added`` when the read of ``data`` came (its bytes
        queued since then are the read's, for the channel's backpressure)."""
        core = self.core
        backlog = self._backlog
        try:
            commands = core.receive(side, data)
        except Exception as exc:  # a bug in the core, or a ledger that cannot record
            self._crashed(exc)
            return
        # The hot path, inline: write what the core produced, then its commands (rarely any).
        to_job, to_upstream = core.take_output()
        if to_job:
            transport = self.job.transport
            if transport is not None:
                transport.write(to_job)
        if to_upstream:
            upstream = self.upstream
            if upstream is not None and upstream.transport is not None:
                upstream.transport.write(to_upstream)
        # What the core deferred until its bytes were on their way (its recording).
        try:
            core.settle()
        except Exception as exc:
            self._crashed(exc)
            return
        # What this read queued for the ledger (result chunks in receive, entries in settle).
        if backlog is not None and backlog.holds_back(before):
            self._wait_for_ledger(side, backlog)
        if commands:
            self._carry_out(commands)

    def on_eof(self, side: Side, lost: str | None) -> None:
        endpoint = self.job if side == "job" else self.upstream
        if endpoint is None or endpoint.eof:
            return
        if side in self._rest:  # the end comes after the bytes read before it
            self._end_after.setdefault(side, lost)
            return
        endpoint.eof = True
        self.event(c.Eof(side, lost))

    def event(self, event: Event) -> None:
        """Hand ``event`` to the core and carry out what it answers."""
        if not self.done.done():
            self._call(self.core.handle, event)

    # -- carrying out ------------------------------------------------------------------------

    def _call(self, fn: Callable[..., Commands], *args: Any) -> None:
        try:
            commands = fn(*args)
        except Exception as exc:
            self._crashed(exc)
            return
        self._flush()
        try:
            self.core.settle()
        except Exception as exc:
            self._crashed(exc)
            return
        self._carry_out(commands)

    def _crashed(self, exc: BaseException) -> None:
        if not isinstance(exc, LedgerUnavailable):
            log.error("session %s failed: %s", self.name, exc, exc_info=exc)
        try:
            commands = self.core.crashed(exc)
        except Exception as again:  # the last words failed too: just close
            log.error("session %s could not end cleanly: %s", self.name, again, exc_info=again)
            self._finish("appliance error")
            return
        self._flush()
        self._carry_out(commands)

    def _flush(self) -> None:
        to_job, to_upstream = self.core.take_output()
        if to_job and self.job.transport is not None and not self.job.transport.is_closing():
            self.job.transport.write(to_job)
        up = self.upstream
        if to_upstream and up is not None and up.transport and not up.transport.is_closing():
            up.transport.write(to_upstream)

    def _carry_out(self, commands: Commands) -> None:
        for command in commands:
            if self.done.done():
                return
            self._one(command)

    def _one(self, command: Command) -> None:
        if isinstance(command, c.PauseReading):
            self.pause(command.side, command.why, command.paused)
        elif isinstance(command, c.End):
            self._finish(command.reason)
        elif isinstance(command, c.OpenUpstream):
            self._spawn(self._open_upstream(command))
        elif isinstance(command, c.StartTLS):
            if command.side == "job":
                _record_sni(command.context)
            self.pause(command.side, "tls", True)
            self._tls_early[command.side] = []
            self._spawn(self._start_tls(command))
        elif isinstance(command, c.AskApproval):
            self._spawn(self._approval(command))
        elif isinstance(command, c.AwaitDurable):
            self._spawn(self._durable(command))
        elif isinstance(command, c.SendOnce):
            self._spawn(self._send_once(command))
        elif isinstance(command, c.SetTimer):
            old = self._timers.pop(command.name, None)
            if old is not None:
                old.cancel()
            self._timers[command.name] = asyncio.get_running_loop().call_later(
                command.seconds, self._fire, command.name
            )
        elif isinstance(command, c.ClearTimer):
            timer = self._timers.pop(command.name, None)
            if timer is not None:
                timer.cancel()
        elif isinstance(command, c.Log):
            level = _LEVELS.get(command.level, logging.INFO)
            log.log(level, "session %s: %s", self.name, command.message)
        else:  # pragma: no cover - the Command union is closed
            raise TypeError(f"unknown command {command!r}")

    def _fire(self, name: str) -> None:
        self._timers.pop(name, None)
        self.event(c.TimerFired(name))

    def _spawn(self, coro: Any) -> None:
        assert self._tg is not None
        task = self._tg.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def pause(self, side: Side, why: str, paused: bool) -> None:
        """Add or remove a reason not to read ``side``; read it only when none holds it."""
        reasons = self._paused[side]
        endpoint = self.job if side == "job" else self.upstream
        was = bool(reasons)
        if paused:
            reasons.add(why)
        else:
            reasons.discard(why)
        if endpoint is None or endpoint.transport is None or endpoint.transport.is_closing():
            return
        if bool(reasons) != was:
            if reasons:
                endpoint.transport.pause_reading()
            else:
                endpoint.transport.resume_reading()

    def _wait_for_ledger(self, side: Side, backlog: LedgerBacklog) -> None:
        """Stop reading ``side`` until the ledger channel has drained (see the module
        docstring); the bytes read so far are handled, nothing is dropped."""
        if "ledger" in self._paused[side]:
            return
        self.pause(side, "ledger", True)
        self._spawn(self._ledger_drained(side, backlog))

    async def _ledger_drained(self, side: Side, backlog: LedgerBacklog) -> None:
        # (A writer that is gone settles it too: the next append raises, the core ends.)
        await backlog.drained()
        self.pause(side, "ledger", False)

    def _finish(self, reason: str) -> None:
        if self.done.done():
            return
        self._close_all()
        self.done.set_result(reason)

    def _close_all(self) -> None:
        for endpoint in (self.job, self.upstream):
            if endpoint and endpoint.transport and not endpoint.transport.is_closing():
                endpoint.transport.close()

    # -- the commands that wait ----------------------------------------------------------------

    async def _open_upstream(self, command: c.OpenUpstream) -> None:
        try:
            sock = await connect_marked(self.services, command.address, command.timeout)
        except Unreachable as exc:
            self.event(c.UpstreamFailed(exc.why, timed_out=exc.timed_out))
            return
        endpoint = self.upstream = Endpoint(self, "upstream")
        local = sock.getsockname()
        await asyncio.get_running_loop().create_connection(lambda: endpoint, sock=sock)
        if self._paused["upstream"]:
            assert endpoint.transport is not None
            endpoint.transport.pause_reading()
        self.event(c.UpstreamOpened((local[0], local[1])))

    async def _start_tls(self, command: c.StartTLS) -> None:
        side = command.side
        endpoint = self.job if side == "job" else self.upstream
        assert endpoint is not None and endpoint.transport is not None
        try:
            new = await start_tls(
                endpoint.transport,
                endpoint,
                command.context,
                server_side=side == "job",
                server_hostname=None if side == "job" else command.server_hostname,
                early=command.early,
            )
        except (ssl.SSLError, OSError, ConnectionError) as exc:
            self._tls_early.pop(side, None)
            self.event(c.TLSFailed(side, str(exc)))
            return
        if new is None:  # the connection closed during the handshake
            self._tls_early.pop(side, None)
            self.event(c.TLSFailed(side, "the connection closed during the TLS handshake"))
            return
        endpoint.transport = new
        if self._paused[side] - {"tls"}:
            new.pause_reading()  # a reason that arose during the handshake still holds
        tls = new.get_extra_info("ssl_object")
        cert = tls.getpeercert(binary_form=True) if tls is not None and side == "upstream" else None
        alpn = tls.selected_alpn_protocol() if tls is not None else None
        name = _SNI.pop(tls, None) if side == "job" else None
        self.pause(side, "tls", False)
        early = self._tls_early.pop(side, [])
        self.event(c.TLSEstablished(side, cert, alpn, name))
        for data in early:
            self.on_data(side, data)

    async def _approval(self, command: c.AskApproval) -> None:
        self.event(await ask_approval(self.services.broker, command))

    async def _durable(self, command: c.AwaitDurable) -> None:
        self.event(await await_durable(self.services.durable, command))

    async def _send_once(self, command: c.SendOnce) -> None:
        try:
            sock = await connect_marked(self.services, command.address, command.timeout)
        except Unreachable as exc:
            self.event(c.SentOnce(False, exc.why))
            return
        try:
            await asyncio.get_running_loop().sock_sendall(sock, command.payload)
        except OSError as exc:
            self.event(c.SentOnce(False, why(exc)))
            return
        finally:
            sock.close()
        self.event(c.SentOnce(True))


__all__ = ["HIGH_WATER", "Connection", "ShellServices"]
