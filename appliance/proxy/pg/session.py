"""The asyncio shell of one PostgreSQL session: sockets in, sans-IO objects, sockets out.

Where this sits: :class:`~appliance.proxy.server.ProxyServer` accepts the job's connection
(explicit listener or transparent capture), knows its target and identity, and runs
:meth:`PgSession.run` in its task group. The session:

1. lets the job in without any secret (:class:`~appliance.protocols.postgres.ClientConnection`:
   SSLRequest answered 'N', or TLS terminated with the appliance's certificate; GSSENC 'N';
   cancel requests routed upstream with the real key);
2. opens the upstream connection with the appliance's socket mark (netfilter lets it out,
   never loops it back), TLS as the target requires, and authenticates as the service
   account (:class:`~appliance.protocols.postgres.ServerConnection`);
3. relays through :class:`~appliance.proxy.pg.relay.Relay`, carrying out its output and its
   approval holds, with backpressure both ways (a side whose socket buffer is full stops the
   other side's reads);
4. ends with a ``session.end`` entry saying how, whatever happened.

Everything here is I/O and flow control; every decision is in the sans-IO layers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from appliance.approvals import Broker
from appliance.capture import upstream_socket
from appliance.config import Target
from appliance.credentials import read_secret
from appliance.errors import ApplianceError
from appliance.ledger.api import Ledger
from appliance.ledger.errors import LedgerUnavailable
from appliance.masking import Masker
from appliance.policy import Policy
from appliance.protocols.postgres import (
    Authenticated,
    CancelKeys,
    CancelRequested,
    ClientConnection,
    GSSEncRequested,
    Messages,
    PeerProtocolError,
    ServerConnection,
    ServerReady,
    SSLRequested,
    StartTLS,
    StartupFailed,
    StartupReceived,
    Terminated,
    UpstreamAuthenticationError,
)
from appliance.protocols.postgres.encodings import ascii_safe
from appliance.protocols.postgres.messages import CancelRequest, error_response
from appliance.proxy.pg.catalog import CatalogReader, catalog_query
from appliance.proxy.pg.hooks import SessionHooks
from appliance.proxy.pg.masking import ResponseMasker
from appliance.proxy.pg.parameters import ParameterRefused, upstream_parameters
from appliance.proxy.pg.recording import SessionRecorder
from appliance.proxy.pg.relay import Relay, SessionRefused, Statement

log = logging.getLogger("appliance.proxy")

ADMIN_SHUTDOWN = "57P01"
CONNECTION_FAILURE = "08006"
REJECTED = "08004"
INSUFFICIENT_PRIVILEGE = "42501"
PROTOCOL_VIOLATION = "08P01"
_HIGH_WATER = 1 << 20


@dataclass(frozen=True)
class CancelRoute:
    """Where a job's cancel request must go: the upstream address and the socket mark."""

    address: tuple[str, int]
    family: int
    mark: int


@dataclass
class SessionServices:
    """What every session shares (one per appliance process)."""

    ledger: Ledger
    policy: Policy | None
    masker: Masker | None
    broker: Broker | None
    cancel_keys: CancelKeys[CancelRoute]
    mark: int
    record_rows: bool
    max_result_bytes: int
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    random_bytes: Callable[[int], bytes] = secrets.token_bytes
    credentials_dir: str | None = None
    client_tls: Mapping[str, ssl.SSLContext] | None = None
    startup_timeout: float = 60.0
    response_masking: Callable[[str, Mapping[str, Any]], bool] | None = None


class SessionEnd(Exception):
    """Ends the session: ``reason`` goes to the ledger; ``error`` (encoded) to the job."""

    def __init__(self, reason: str, error: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class _Endpoint(asyncio.Protocol):
    """One socket of a session; passes bytes and flow-control signals to the session."""

    def __init__(self, session: PgSession, side: str) -> None:
        self.session = session
        self.side = side
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        assert self.transport is not None
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        self.session.on_data(self.side, data)

    def eof_received(self) -> bool:
        self.session.on_eof(self.side)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.session.on_lost(self.side, exc)

    def pause_writing(self) -> None:
        self.session.flow(self.side, paused=True)

    def resume_writing(self) -> None:
        self.session.flow(self.side, paused=False)


class PgSession:
    """One job connection to a PostgreSQL target; see the module docstring."""

    def __init__(
        self,
        services: SessionServices,
        *,
        session_id: str,
        target: Target,
        upstream: tuple[str, int],
        client: tuple[str, int],
        server_address: tuple[str, int],
        identity: Mapping[str, Any],
    ) -> None:
        self.services = services
        self.id = session_id
        self.target = target
        self.upstream = upstream
        self.client_address = client
        self.server_address = server_address
        self.identity = dict(identity)
        self.client = _Endpoint(self, "client")
        self.server: _Endpoint | None = None
        self.job = ClientConnection()
        self.up: ServerConnection | None = None
        self.relay: Relay | None = None
        self.recorder: SessionRecorder | None = None
        self.hooks: SessionHooks | None = None
        self.started = services.monotonic()
        self.done: asyncio.Future[SessionEnd] = asyncio.get_running_loop().create_future()
        self._startup_events: asyncio.Queue[object] = asyncio.Queue()
        self._up_events: asyncio.Queue[object] = asyncio.Queue()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._read_paused: dict[str, set[str]] = {"client": set(), "server": set()}
        self._draining = False
        self._issued_key: Any = None
        self.bytes_to_client = 0
        self.account_name: str | None = None
        self.database: str | None = None
        self.user: str | None = None
        self._hold_paused = False  # reading from the job paused for an approval hold
        self.auth_method: str | None = None

    # -- socket callbacks -------------------------------------------------------------------

    def on_data(self, side: str, data: bytes) -> None:
        if self.done.done():
            return
        relay = self.relay
        try:
            if relay is None:
                self._startup_data(side, data)
                return
            if side == "client":
                for job_event in self.job.receive_data(data):
                    if type(job_event) is Messages:
                        relay.from_client(job_event)
                    elif type(job_event) is Terminated:
                        self._end(SessionEnd("job terminated the session"))
            else:
                assert self.up is not None
                for up_event in self.up.receive_data(data):
                    if type(up_event) is Messages:
                        relay.from_server(up_event)
            self._flush()
            if self._draining and relay.idle:
                self._end(SessionEnd("appliance shutdown", self._shutdown_error()))
        except PeerProtocolError as exc:
            self._protocol_error(exc)
        except SessionRefused as exc:
            self._end(SessionEnd(exc.reason, _fatal(INSUFFICIENT_PRIVILEGE, exc.message)))
        except Exception as exc:  # a bug or an unusable ledger: this session ends, not others
            self._end(self._unexpected(exc))

    def on_eof(self, side: str) -> None:
        if self.relay is None:
            if side == "client":
                self._startup_events.put_nowait(SessionEnd("job disconnected during startup"))
                self._end(SessionEnd("job disconnected during startup"))
            else:
                # Not ended here: the startup task raises this (or the TLS error that
                # closed the socket) with an error message the job can read.
                self._up_events.put_nowait(
                    SessionEnd(
                        "upstream server closed during startup",
                        _fatal(
                            CONNECTION_FAILURE,
                            f"target {self.target.name!r} closed the connection during startup",
                        ),
                    )
                )
            return
        if side == "client":
            self._end(
                SessionEnd(
                    "job disconnected" if not self.job_terminated else "job terminated the session"
                )
            )
        else:
            self._flush()
            # A server that ends a session says why (FATAL ErrorResponse, relayed above); one
            # that vanishes says nothing, and the job must not be left guessing.
            error = b""
            if not self.relay.server_fatal:
                error = _fatal(
                    CONNECTION_FAILURE,
                    f"the appliance lost the connection to target {self.target.name!r}: "
                    "the upstream server closed it",
                )
            self._end(SessionEnd("upstream server closed the connection", error))

    @property
    def job_terminated(self) -> bool:
        return self.relay is not None and self.relay.terminated

    def on_lost(self, side: str, exc: Exception | None) -> None:
        if not self.done.done():
            self.on_eof(side)

    def flow(self, side: str, *, paused: bool) -> None:
        """``side``'s socket buffer is full (or drained): stop (resume) reading the other."""
        other = "server" if side == "client" else "client"
        self._pause(other, "backpressure", paused)

    def _pause(self, side: str, why: str, paused: bool) -> None:
        reasons = self._read_paused[side]
        endpoint = self.client if side == "client" else self.server
        if endpoint is None or endpoint.transport is None:
            return
        was = bool(reasons)
        if paused:
            reasons.add(why)
        else:
            reasons.discard(why)
        if bool(reasons) != was and not endpoint.transport.is_closing():
            if reasons:
                endpoint.transport.pause_reading()
            else:
                endpoint.transport.resume_reading()

    def _flush(self) -> None:
        relay = self.relay
        assert relay is not None
        to_client, to_server = relay.take_output()
        if to_client:
            self.bytes_to_client += len(to_client)
            assert self.client.transport is not None
            self.client.transport.write(to_client)
        if to_server:
            assert self.server is not None and self.server.transport is not None
            self.server.transport.write(to_server)
        held = relay.held
        if held is not self._hold_paused:  # only on a change: this runs per round trip
            self._hold_paused = held
            self._pause("client", "hold", held)

    # -- the session -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the session to its end; never raises (the end is recorded)."""
        try:
            end = await self._run()
        except BaseExceptionGroup as group:
            end = self._unexpected(group.exceptions[0])
        except Exception as exc:
            end = self._unexpected(exc)
        await self._finish(end)

    async def _run(self) -> SessionEnd:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            startup = tg.create_task(self._startup_guarded())
            end = await self.done
            startup.cancel()
            for task in self._tasks:
                task.cancel()  # a held statement's approval request is withdrawn
        return end

    async def _startup_guarded(self) -> None:
        try:
            await asyncio.wait_for(self._startup(), self.services.startup_timeout)
        except SessionEnd as exc:
            self._end(exc)
        except TimeoutError:
            self._end(
                SessionEnd("startup timed out", _fatal(CONNECTION_FAILURE, "startup timed out"))
            )

    def _unexpected(self, exc: BaseException) -> SessionEnd:
        while isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
        if isinstance(exc, SessionEnd):
            return exc
        if isinstance(exc, LedgerUnavailable):
            return SessionEnd(
                f"ledger unavailable: {exc}",
                _fatal(
                    CONNECTION_FAILURE, "the appliance cannot record this session; it is closed"
                ),
            )
        log.error("session %s failed: %s", self.id, exc, exc_info=exc)
        return SessionEnd(
            f"appliance error: {type(exc).__name__}: {exc}",
            _fatal("XX000", "internal error in the appliance; the session is closed"),
        )

    def _end(self, end: SessionEnd) -> None:
        if not self.done.done():
            self.done.set_result(end)

    def _protocol_error(self, exc: PeerProtocolError) -> None:
        self._end(self._protocol_end(exc))

    def _protocol_end(self, exc: PeerProtocolError, *, during: str = "") -> SessionEnd:
        """The end of a session whose peer broke the protocol: recorded (``protocol.error``),
        and the job told whose fault it was (08P01)."""
        if exc.side == "client":
            error = _fatal(exc.sqlstate, exc.message)
        else:
            error = _fatal(
                exc.sqlstate, "the upstream server broke the protocol", detail=exc.message
            )
        if self.recorder is not None:
            with contextlib.suppress(ApplianceError):
                self.recorder.append(
                    "protocol.error",
                    {
                        "side": exc.side,
                        "sqlstate": exc.sqlstate,
                        "message": self.recorder.mask(exc.message),
                    },
                )
        who = "job" if exc.side == "client" else "upstream server"
        return SessionEnd(f"protocol violation by the {who}{during}", error)

    async def _finish(self, end: SessionEnd) -> None:
        transport = self.client.transport
        if self.relay is not None:
            with contextlib.suppress(ApplianceError):
                self.relay.abort("cancelled")
        if transport is not None and not transport.is_closing():
            if self.relay is not None:
                with contextlib.suppress(Exception):
                    to_client, _ = self.relay.take_output()
                    if to_client:
                        transport.write(to_client)
            if end.error:
                transport.write(end.error)
                self.bytes_to_client += len(end.error)
            transport.close()
        if (
            self.server is not None
            and self.server.transport is not None
            and not self.server.transport.is_closing()
        ):
            if self.up is not None:
                with contextlib.suppress(Exception):
                    self.up.close()
                    self.server.transport.write(self.up.data_to_send())
            self.server.transport.close()
        if self._issued_key is not None:
            self.services.cancel_keys.release(self._issued_key)
        if self.recorder is not None:
            self.recorder.discard()
            relay = self.relay
            data = {
                "reason": end.reason,
                "bytes_in": relay.bytes_from_client if relay else 0,
                "bytes_out": self.bytes_to_client,
                "bytes_upstream": relay.bytes_from_server if relay else 0,
                "duration_us": round((self.services.monotonic() - self.started) * 1_000_000),
                "statements": relay.statements if relay else 0,
            }
            with contextlib.suppress(ApplianceError):
                self.recorder.append("session.end", data)
        log.info("session %s ended: %s", self.id, end.reason)

    # -- startup -------------------------------------------------------------------------------

    def _startup_data(self, side: str, data: bytes) -> None:
        try:
            if side == "client":
                for job_event in self.job.receive_data(data):
                    self._startup_events.put_nowait(job_event)
                out = self.job.data_to_send()
                if out and self.client.transport is not None:
                    self.client.transport.write(out)
            else:
                assert self.up is not None
                for up_event in self.up.receive_data(data):
                    self._up_events.put_nowait(up_event)
                self._send_up()
        except (PeerProtocolError, UpstreamAuthenticationError) as exc:
            (self._startup_events if side == "client" else self._up_events).put_nowait(exc)

    def _send_up(self) -> None:
        assert self.up is not None and self.server is not None and self.server.transport is not None
        out = self.up.data_to_send()
        if out:
            self.server.transport.write(out)

    async def _next(self, queue: asyncio.Queue[object]) -> object:
        ev = await queue.get()
        if isinstance(ev, SessionEnd):
            raise ev
        if isinstance(ev, PeerProtocolError):
            raise self._protocol_end(ev, during=" during startup")
        if isinstance(ev, UpstreamAuthenticationError):
            raise SessionEnd(
                f"upstream authentication failed: {ev.message}",
                _fatal(
                    REJECTED,
                    f"the appliance could not authenticate to target {self.target.name!r}",
                    detail=ev.message,
                ),
            )
        return ev

    async def _startup(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            ev = await self._next(self._startup_events)
            if isinstance(ev, SSLRequested):
                context = (self.services.client_tls or {}).get(self.target.name)
                assert self.client.transport is not None
                if context is None:
                    self.job.answer_ssl(False)
                    self.client.transport.write(self.job.data_to_send())
                    continue
                self.client.transport.pause_reading()
                self.job.answer_ssl(True)
                self.client.transport.write(self.job.data_to_send())
                new = await loop.start_tls(
                    self.client.transport, self.client, context, server_side=True
                )
                assert isinstance(new, asyncio.Transport)
                self.client.transport = new
                self.job.tls_established()
            elif isinstance(ev, GSSEncRequested):
                self.job.refuse_gssenc()
                assert self.client.transport is not None
                self.client.transport.write(self.job.data_to_send())
            elif isinstance(ev, CancelRequested):
                await self._forward_cancel(ev.request)
                raise SessionEnd("cancel request")
            elif isinstance(ev, StartupReceived):
                await self._open_upstream(ev)
                return
            else:
                raise SessionEnd(
                    f"unexpected startup event {type(ev).__name__}",
                    _fatal(PROTOCOL_VIOLATION, "unexpected message during startup"),
                )

    async def _forward_cancel(self, request: CancelRequest) -> None:
        found = self.services.cancel_keys.resolve(request)
        entry: dict[str, Any] = {"client": _addr(self.client_address)}
        if found is None:
            entry["outcome"] = "unknown key"
        else:
            real, route = found
            entry["outcome"] = "forwarded"
            sock = upstream_socket(route.family, route.mark)
            try:
                await asyncio.wait_for(
                    asyncio.get_running_loop().sock_connect(sock, route.address), 5
                )
                await asyncio.get_running_loop().sock_sendall(
                    sock, CancelRequest(real.pid, real.key).encode()
                )
            except (OSError, TimeoutError) as exc:
                entry["outcome"] = f"upstream unreachable: {exc}"
            finally:
                sock.close()
        with contextlib.suppress(ApplianceError):
            self.services.ledger.append(
                "cancel.requested",
                session=None,
                identity=self.identity,
                target=self.target.name,
                data=entry,
            )

    async def _open_upstream(self, startup: StartupReceived) -> None:
        target = self.target
        account = target.account_for(startup.user)
        self.account_name = account.name
        self.user = startup.user
        self.database = account.database or startup.database
        policy = self.services.policy
        masker = (
            self.services.masker.for_target(target.name)
            if self.services.masker is not None
            else None
        )
        self.recorder = SessionRecorder(
            self.services.ledger,
            session=self.id,
            target=target.name,
            account=account.name,
            identity=self.identity,
            masker=masker,
            record_rows=self.services.record_rows,
            max_result_bytes=self.services.max_result_bytes,
            clock=self.services.clock,
        )
        start: dict[str, Any] = {
            "protocol": "postgres",
            "client": _addr(self.client_address),
            "server": _addr(self.upstream),
            "listener": _addr(self.server_address),
            "database": self.database,
            "user": startup.user,
            "application_name": startup.startup.parameters.get("application_name"),
            "protocol_version": f"3.{startup.minor}",
            "client_tls": self.job.tls,
        }
        if policy is not None:
            start["policy"] = policy.start_record()
            start["policy_mode"] = policy.mode
        self.recorder.append("session.start", start)
        try:
            parameters = upstream_parameters(
                startup.startup.parameters, allowed=target.startup_parameters
            )
        except ParameterRefused as exc:
            raise SessionEnd(
                f"startup refused: {exc}",
                _fatal(INSUFFICIENT_PRIVILEGE, f"the appliance refuses {exc}"),
            ) from None
        try:
            secret = read_secret(account.secret, credentials_dir=self.services.credentials_dir)
        except ApplianceError as exc:
            raise SessionEnd(
                f"service account secret unavailable: {exc}",
                _fatal(REJECTED, f"the appliance has no usable secret for target {target.name!r}"),
            ) from None
        family = socket.AF_INET6 if ":" in self.upstream[0] else socket.AF_INET
        sock = upstream_socket(family, self.services.mark)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_connect(sock, self.upstream), target.connect_timeout)
        except (OSError, TimeoutError) as exc:
            sock.close()
            why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise SessionEnd(
                f"upstream unreachable: {why}",
                _fatal(
                    CONNECTION_FAILURE,
                    f"the appliance cannot reach target {target.name!r} at {_addr(self.upstream)}: {why}",
                ),
            ) from None
        server = self.server = _Endpoint(self, "server")
        await loop.create_connection(lambda: server, sock=sock)
        self.up = ServerConnection(
            user=account.user,
            database=self.database,
            password=secret,
            random_bytes=self.services.random_bytes,
            parameters=parameters,
            tls=target.tls.mode,  # type: ignore[arg-type]
        )
        del secret
        self.up.initiate()
        self._send_up()
        while True:
            ev = await self._next(self._up_events)
            if isinstance(ev, StartTLS):
                await self._upstream_tls()
            elif isinstance(ev, Authenticated):
                self.auth_method = ev.method
            elif isinstance(ev, StartupFailed):
                error = ev.error
                detail = f"{error.code}: {error.message}"
                why = (
                    "authentication as the service account failed"
                    if ev.authentication_failed
                    else "the target refused the session"
                )
                raise SessionEnd(
                    f"upstream refused: {detail}",
                    _fatal(
                        REJECTED,
                        f"{why} (target {target.name!r}, account {account.name!r})",
                        detail=detail,
                    ),
                )
            elif isinstance(ev, ServerReady):
                tables, lookup = await self._table_names()
                self._ready(ev, tables, lookup)
                return

    async def _upstream_tls(self) -> None:
        assert self.server is not None and self.server.transport is not None and self.up is not None
        tls = self.target.tls
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca) if tls.ca else None
        )
        if tls.mode in ("prefer", "require"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif tls.mode == "verify-ca":
            context.check_hostname = False
        hostname = tls.server_name or self.upstream[0]
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(
                self.server.transport, self.server, context, server_hostname=hostname
            )
        except (ssl.SSLError, OSError) as exc:
            raise SessionEnd(
                f"upstream TLS failed: {exc}",
                _fatal(
                    CONNECTION_FAILURE,
                    f"TLS to target {self.target.name!r} failed",
                    detail=str(exc),
                ),
            ) from None
        assert new is not None
        self.server.transport = new
        ssl_object = new.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.up.tls_established(cert)
        self._send_up()

    async def _table_names(self) -> tuple[dict[int, str], dict[str, Any] | None]:
        """Table OID -> name, for column rules with a table pattern (:mod:`.catalog`):
        asked once, on this upstream connection, before the job's startup completes.
        Returns the map and what to record of the lookup (None: no lookup needed)."""
        assert self.recorder is not None and self.server is not None
        masker = self.recorder.masker
        query = catalog_query(masker.table_scoped_columns()) if masker is not None else None
        if query is None:
            return {}, None
        assert self.server.transport is not None
        self.server.transport.write(query)
        reader = CatalogReader()
        while not reader.done:
            ev = await self._next(self._up_events)
            if isinstance(ev, Messages) and reader.feed(ev):
                raise PeerProtocolError(
                    "the server sent data after answering the catalog lookup", side="server"
                )
        if reader.error is not None:
            log.warning("session %s: catalog lookup failed: %s", self.id, reader.error)
            return {}, {"relations": 0, "error": reader.error}
        return reader.tables, {"relations": len(reader.tables)}

    def _ready(
        self,
        ready: ServerReady,
        tables: dict[int, str] | None = None,
        lookup: dict[str, Any] | None = None,
    ) -> None:
        assert self.recorder is not None and self.client.transport is not None
        self.recorder.tables = tables or {}
        encoding = dict(ready.parameters).get("client_encoding")
        if encoding is not None and not ascii_safe(encoding):
            # A role or database default (ALTER ROLE ... SET client_encoding): statements
            # would be read by the server in an encoding the policy does not parse.
            raise SessionEnd(
                f"startup refused: the server's client_encoding is {encoding}",
                _fatal(
                    INSUFFICIENT_PRIVILEGE,
                    f"the appliance refuses client encoding {encoding!r} for target "
                    f"{self.target.name!r}: the server would read statements otherwise",
                ),
            )
        route = CancelRoute(
            self.upstream,
            socket.AF_INET6 if ":" in self.upstream[0] else socket.AF_INET,
            self.services.mark,
        )
        real = ready.backend_key
        if real is not None:
            self._issued_key = self.services.cancel_keys.issue(
                real, route, key_length=4 if self.job.minor == 0 else 32
            )
        else:
            from appliance.protocols.postgres.messages import BackendKeyData

            self._issued_key = self.services.cancel_keys.issue(
                BackendKeyData(0, b"\0\0\0\0"), route, key_length=4 if self.job.minor == 0 else 32
            )
        self.job.complete_startup(ready.parameters, self._issued_key, notices=ready.notices)
        self.client.transport.write(self.job.data_to_send())
        self.recorder.append(
            "session.ready",
            {
                "auth_method": self.auth_method,
                "upstream_tls": bool(self.up and self.up.tls),
                "server_version": dict(ready.parameters).get("server_version"),
                **({"column_tables": lookup} if lookup is not None else {}),
            },
        )
        # Synchronously: from here on the job's bytes go to the relay; none may be queued
        # for the startup loop in between.
        self._begin_relay(dict(ready.parameters))

    def _begin_relay(self, parameters: Mapping[str, str]) -> None:
        assert self.recorder is not None and self.account_name is not None
        masking = self.services.response_masking
        row_masker = None
        if masking is not None and masking(self.target.name, self.identity):
            assert self.services.masker is not None
            row_masker = ResponseMasker(
                self.services.masker.for_target(self.target.name), tables=self.recorder.tables
            )
        self.hooks = SessionHooks(
            policy=self.services.policy,
            recorder=self.recorder,
            broker=self.services.broker,
            target=self.target.name,
            database=self.database or "",
            account=self.account_name,
            identity=self.identity,
            new_id=lambda: self.services.random_bytes(8).hex(),
            row_masker=row_masker,
            parameters=parameters,
        )
        self.hooks.approval_started = self._approval_started
        self.relay = Relay(self.hooks, now=self.services.monotonic)
        # Messages the job sent before it was let in.
        self.on_data("client", b"")

    def _approval_started(self, stmt: Statement) -> None:
        assert self._tg is not None
        task = self._tg.create_task(self._approval(stmt))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _approval(self, stmt: Statement) -> None:
        assert self.hooks is not None and self.relay is not None
        approved, error, record = await self.hooks.approval_task(stmt)
        if self.done.done():
            return
        try:
            self.relay.approval_result(approved, error=error, record=record)
            self._flush()
        except PeerProtocolError as exc:
            self._protocol_error(exc)

    # -- shutdown ----------------------------------------------------------------------------

    def drain(self) -> None:
        """Finish the statement in flight, then end with 57P01 (administrator shutdown)."""
        self._draining = True
        if self.relay is None:
            self._end(SessionEnd("appliance shutdown during startup", self._shutdown_error()))
            return
        self._pause("client", "drain", True)
        if self.relay.held or self.relay.idle:
            self._end(SessionEnd("appliance shutdown", self._shutdown_error()))

    @staticmethod
    def _shutdown_error() -> bytes:
        return _fatal(ADMIN_SHUTDOWN, "terminating connection: the appliance is shutting down")

    def abort(self, reason: str) -> None:
        self._end(SessionEnd(reason, self._shutdown_error()))


def _fatal(code: str, message: str, *, detail: str | None = None) -> bytes:
    return error_response("FATAL", code, message, detail=detail)


def _addr(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
