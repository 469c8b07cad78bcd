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
  a drain) add their reasons, and a side is read only when no reason holds it;
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
from appliance.proxy._endpoint import HIGH_WATER, Endpoint
from appliance.proxy._starttls import start_tls
from appliance.proxy.commands import Command, Commands, Event, SessionCore, Side
from appliance.proxy.waits import (
    ApprovalBroker,
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
        core = self.core
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
        if commands:
            self._carry_out(commands)

    def on_eof(self, side: Side, lost: str | None) -> None:
        endpoint = self.job if side == "job" else self.upstream
        if endpoint is None or endpoint.eof:
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
