"""Listeners and connections: the appliance's asyncio server.

Where this sits: the daemon (:mod:`appliance.daemon`) builds a :class:`ProxyServer` with the
shared :class:`~appliance.proxy.services.SessionServices`, the shell's services and a
:class:`FlowResolver`, and runs :meth:`ProxyServer.serve`. Two kinds of listeners:

- an *explicit* listener per target that has ``listen:`` in the config (before transparent
  capture, or for jobs that are pointed at the appliance on purpose): the target is known;
- the *transparent* listener on ``capture.listen_port`` (IPv4 and IPv6), to which netfilter
  redirects the job's connections: the target comes from the connection's original
  destination; a flow to an address that is not (or no longer) protected is refused and
  recorded.

Every accepted connection becomes one :class:`~appliance.proxy.shell.Connection` task in the
server's task group (structured concurrency: no session outlives the server), running the
session core of its target's protocol (:mod:`appliance.proxy.registry`). On stop, the
listeners close, every session is asked to drain (finish what is in flight, then end as its
protocol says an administrator shutdown ends); after the grace period the rest are cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from appliance.capture import unattributed
from appliance.config import Config, Target, format_endpoint
from appliance.errors import ApplianceError
from appliance.proxy import registry
from appliance.proxy.commands import ConnectionInfo
from appliance.proxy.services import SessionServices
from appliance.proxy.shell import Connection, ShellServices

log = logging.getLogger("appliance.proxy")
_TRIM_EVERY = 10.0
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: no malloc_trim
    _LIBC = None


@dataclass(frozen=True)
class Listener:
    """A listening address; ``target`` is None for the transparent listener."""

    host: str
    port: int
    target: str | None = None

    @property
    def transparent(self) -> bool:
        return self.target is None


@dataclass(frozen=True)
class Flow:
    """What an accepted connection is: which target, where upstream, who."""

    target: Target
    upstream: tuple[str, int]
    identity: Mapping[str, Any] = field(
        default_factory=lambda: unattributed("no attribution configured")
    )


class Refused(Exception):
    """The connection is refused (not a protected destination, unresolvable target)."""

    def __init__(self, reason: str, data: Mapping[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.data = dict(data or {})


class FlowResolver(Protocol):
    async def resolve(self, conn: socket.socket, listener: Listener) -> Flow:
        """The flow of an accepted connection, or raise Refused."""


class ProxyServer:
    """Accepts connections on the configured listeners and runs a session for each."""

    def __init__(
        self,
        config: Config,
        services: SessionServices,
        resolver: FlowResolver,
        *,
        shell: ShellServices | None = None,
        transparent: bool = False,
        new_session_id: Callable[[], str] | None = None,
    ) -> None:
        self.config = config
        self.services = services
        self.shell = shell or ShellServices()
        self.resolver = resolver
        self._protocols = {
            name: registry.get(name) for name in {t.protocol for t in config.targets.values()}
        }
        self._factories = {name: p.session_factory() for name, p in self._protocols.items()}
        for name in self._protocols:
            if name not in services.shared:
                services.shared[name] = registry.get(name).make_shared(services.random_bytes)
        self.listeners: list[Listener] = [
            Listener(t.listen[0], t.listen[1], t.name)
            for t in config.targets.values()
            if t.listen is not None
        ]
        if transparent:
            port = config.capture.listen_port
            self.listeners += [Listener("0.0.0.0", port), Listener("::", port)]
        self.sessions: set[Any] = set()  # Connection, or a protocol's own runner
        self._new_id = new_session_id or (lambda: services.random_bytes(8).hex())
        self._stop = asyncio.Event()
        self._sockets: list[socket.socket] = []
        self._handed_over = False
        self._tg: asyncio.TaskGroup | None = None
        self._grace = 30.0
        self._trimmed = -_TRIM_EVERY

    def bind(self) -> list[tuple[str, int]]:
        """Open every listening socket now (so that failures surface before 'ready');
        return the bound addresses."""
        bound = []
        for listener in self.listeners:
            family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((listener.host, listener.port))
                sock.listen(1024)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                raise ApplianceError(
                    f"cannot listen on {listener.host}:{listener.port}: {exc.strerror or exc}"
                ) from None
            self._sockets.append(sock)
            bound.append(sock.getsockname()[:2])
        return bound

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets :meth:`bind` opened, in the order of :attr:`listeners`."""
        return list(self._sockets)

    def take_handed_over(self) -> None:
        """Serve connections another process accepted (a proxy worker: the daemon accepts
        and hands each over, see :mod:`appliance.proxy.workers`) through :meth:`hand_over`,
        instead of listening."""
        self._handed_over = True

    def hand_over(self, conn: socket.socket, listener: int) -> None:
        """Serve ``conn``, accepted on listener number ``listener``; closed at once if this
        server is stopping or not serving."""
        tg = self._tg
        if tg is None or self._stop.is_set() or not 0 <= listener < len(self.listeners):
            conn.close()
            return
        try:
            peer = conn.getpeername()
        except OSError:  # the client has gone already
            conn.close()
            return
        tg.create_task(self._session(conn, peer, self.listeners[listener]))

    async def serve(self) -> None:
        """Serve until :meth:`stop`; then drain the sessions (see the module docstring)."""
        if not self._sockets and not self._handed_over:
            self.bind()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                listening = [] if self._handed_over else self.listeners
                accepts = [
                    tg.create_task(self._accept(tg, s, listener))
                    for s, listener in zip(self._sockets, listening, strict=True)
                ]
                await self._stop.wait()
                for task in accepts:
                    task.cancel()
                for sock in self._sockets:
                    sock.close()
                await self._drain()
        finally:
            self._tg = None
            for sock in self._sockets:
                sock.close()

    def stop(self, grace: float = 30.0) -> None:
        self._grace = grace
        self._stop.set()

    async def _drain(self) -> None:
        for session in list(self.sessions):
            session.drain()
        if not self.sessions:
            return
        done = asyncio.gather(*(s.done for s in list(self.sessions)), return_exceptions=True)
        try:
            await asyncio.wait_for(asyncio.shield(done), self._grace)
        except TimeoutError:
            for session in list(self.sessions):
                session.abort("appliance shutdown: grace period over")

    async def _accept(self, tg: asyncio.TaskGroup, sock: socket.socket, listener: Listener) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except OSError as exc:
                log.warning("accept on %s:%s failed: %s", listener.host, listener.port, exc)
                await asyncio.sleep(0.1)
                continue
            tg.create_task(self._session(conn, peer, listener))

    async def _session(
        self, conn: socket.socket, peer: tuple[Any, ...], listener: Listener
    ) -> None:
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            flow = await self.resolver.resolve(conn, listener)
        except Refused as refused:
            log.warning("refused connection from %s: %s", peer[:2], refused.reason)
            data = {"client": format_endpoint(peer[0], peer[1]), **refused.data}
            with contextlib.suppress(ApplianceError):
                if self.services.refusals is not None:
                    self.services.refusals.refused(
                        source=str(peer[0]),
                        reason=refused.reason,
                        data=data,
                        kind="capture.refused",
                    )
                else:
                    self.services.ledger.append(
                        "capture.refused", data={"reason": refused.reason, **data}
                    )
            # A reset, not a FIN: the job sees "connection refused/reset", as without us.
            conn.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            conn.close()
            return
        local = conn.getsockname()
        target = flow.target
        info = ConnectionInfo(
            session_id=self._new_id(),
            client=(peer[0], peer[1]),
            listener=(local[0], local[1]),
            upstream=flow.upstream,
            identity=flow.identity,
        )
        make = self._factories[target.protocol]
        shared = self.services.shared.get(target.protocol)
        connection: Any
        if self._protocols[target.protocol].core is not None:
            core = make(self.services, shared, target, info)
            connection = Connection(core, self.shell, name=info.session_id)
        else:
            connection = make(self.services, shared, target, info, self.shell)
        self.sessions.add(connection)
        try:
            await connection.run(conn)
        finally:
            self.sessions.discard(connection)
            if not self.sessions:
                self._idle_trim()

    def _idle_trim(self) -> None:
        """When the last session ends, give the memory sessions used back to the system
        (a collection, then malloc_trim), at most once every ``_TRIM_EVERY`` seconds: the
        heap of 200 sessions must not stay the daemon's size while it idles."""
        now = time.monotonic()
        if now - self._trimmed < _TRIM_EVERY:
            return
        self._trimmed = now
        gc.collect()
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
