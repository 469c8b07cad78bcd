"""The sans-IO PostgreSQL session: startup, upstream authentication, relay, end.

Where this sits: the shell (:mod:`appliance.proxy.shell`) runs one :class:`PgSession` per
accepted connection to a PostgreSQL target and carries out the commands it returns
(:mod:`appliance.proxy.commands`). Every decision of a session is here, where a unit test
can drive it without sockets:

1. the job is let in without any secret (:class:`~appliance.protocols.postgres.ClientConnection`:
   SSLRequest answered 'N', or TLS with the target's client certificate; GSSENC 'N'); its
   startup settings pass only when harmless (:mod:`.parameters`); a cancel request is
   forwarded with the real key and recorded against the session it cancels;
2. the upstream connection is opened (the shell adds the socket mark), TLS as the target
   requires, and the appliance authenticates as the service account
   (:class:`~appliance.protocols.postgres.ServerConnection`); column rules with a table
   pattern read the catalog once (:mod:`.catalog`);
3. the job's startup completes with a cancel key the appliance issued, and the
   :class:`~appliance.proxy.pg.relay.Relay` takes over (the hot path); statements held
   for review become ``AskApproval`` commands;
4. whatever happens, the session ends once with a ``session.end`` entry and the job told
   why in PostgreSQL's own terms (a FATAL ErrorResponse with its SQLSTATE).

States (:class:`State`)::

    STARTUP --SSLRequest, TLS configured--> JOB_TLS --TLSEstablished--> STARTUP
    STARTUP --CancelRequest--> CANCELLING --SentOnce--> ENDED
    STARTUP --StartupMessage--> CONNECTING --UpstreamOpened--> AUTHENTICATING
    AUTHENTICATING --'S'--> UPSTREAM_TLS --TLSEstablished--> AUTHENTICATING
    AUTHENTICATING --ReadyForQuery--> CATALOG (table-scoped column rules) --> RELAY
                                  --> RELAY
    any --refusal, EOF, timer "startup", error--> ENDED
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.config import Target, format_endpoint
from appliance.errors import ApplianceError
from appliance.ledger.api import Ledger
from appliance.ledger.errors import LedgerUnavailable
from appliance.masking.postgres import ResponseMasker
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
    StartupFailed,
    StartupReceived,
    Terminated,
    UpstreamAuthenticationError,
)
from appliance.protocols.postgres import (
    StartTLS as UpstreamWantsTLS,
)
from appliance.protocols.postgres.encodings import ascii_safe
from appliance.protocols.postgres.messages import BackendKeyData, CancelRequest, error_response
from appliance.protocols.postgres.sqlstate import (
    ADMIN_SHUTDOWN,
    CONNECTION_FAILURE,
    INSUFFICIENT_PRIVILEGE,
    INTERNAL_ERROR,
    PROTOCOL_VIOLATION,
)
from appliance.protocols.postgres.sqlstate import REJECTED_ESTABLISHMENT as REJECTED
from appliance.proxy.commands import (
    NO_COMMANDS,
    Abort,
    ApprovalAnswered,
    AwaitDurable,
    ClearTimer,
    Command,
    Commands,
    ConnectionInfo,
    Drain,
    Durable,
    End,
    Eof,
    Event,
    Log,
    OpenUpstream,
    SendOnce,
    SentOnce,
    SetTimer,
    Side,
    StartTLS,
    TimerFired,
    TLSEstablished,
    TLSFailed,
    UpstreamFailed,
    UpstreamOpened,
)
from appliance.proxy.pg.catalog import CatalogReader, catalog_query
from appliance.proxy.pg.hooks import SessionHooks
from appliance.proxy.pg.parameters import ParameterRefused, upstream_parameters
from appliance.proxy.pg.recording import SessionRecorder
from appliance.proxy.pg.relay import Relay, SessionRefused, Statement
from appliance.proxy.refusals import connection_refused
from appliance.proxy.services import SessionServices
from appliance.proxy.statement_policy import Holds

STARTUP_TIMER = "startup"


class State(enum.Enum):
    STARTUP = "waiting for the job's startup packet"
    JOB_TLS = "TLS handshake with the job"
    CONNECTING = "connecting to the target"
    AUTHENTICATING = "authenticating to the target"
    UPSTREAM_TLS = "TLS handshake with the target"
    CATALOG = "reading the catalog for column rules"
    RELAY = "relaying"
    CANCELLING = "forwarding a cancel request"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class CancelRoute:
    """Where a job's cancel request goes, and which session it cancels."""

    address: tuple[str, int]
    session: str


@dataclass
class PgShared:
    """What all PostgreSQL sessions of one appliance share: the issued cancel keys."""

    cancel_keys: CancelKeys[CancelRoute]


class PgSession:
    """One job connection to a PostgreSQL target; see the module docstring."""

    def __init__(
        self, services: SessionServices, shared: PgShared, target: Target, info: ConnectionInfo
    ) -> None:
        self.services = services
        self.shared = shared
        self.target = target
        self.info = info
        self.id = info.session_id
        self.identity = dict(info.identity)
        self.state = State.STARTUP
        self.job = ClientConnection()
        self.up: ServerConnection | None = None
        self.relay: Relay | None = None
        self.recorder: SessionRecorder | None = None
        self.hooks: SessionHooks | None = None
        self.started = services.monotonic()
        self.bytes_to_job = 0
        self.account_name: str | None = None
        self.database: str | None = None
        self.auth_method: str | None = None
        self._secret: str | None = None
        self._parameters: dict[str, str] = {}
        self._ready: ServerReady | None = None
        self._catalog: CatalogReader | None = None
        self._issued: BackendKeyData | None = None
        self._cancel: CancelRoute | None = None
        self._to_job: list[bytes] = []
        self._to_up: list[bytes] = []
        self.holds: Holds[Statement] = Holds()
        self._syncs = 0

    # -- the shell's side ------------------------------------------------------------------

    def start(self) -> Commands:
        return [SetTimer(STARTUP_TIMER, self.services.startup_timeout)]

    def take_output(self) -> tuple[bytes, bytes]:
        relay = self.relay
        if relay is not None and not self._to_job and not self._to_up:
            to_job, to_up = relay.take_output()  # the hot path
        else:
            self._pull_relay()
            to_job, to_up = b"".join(self._to_job), b"".join(self._to_up)
            self._to_job.clear()
            self._to_up.clear()
        self.bytes_to_job += len(to_job)
        return to_job, to_up

    def settle(self) -> None:
        """The step's bytes are written: record what the relay's hooks deferred (the
        statements and responses of the step, see :meth:`SessionHooks.settle
        <appliance.proxy.pg.hooks.SessionHooks.settle>`). Every other call settles first
        too, so a caller that never calls this loses nothing and keeps the order."""
        hooks = self.hooks
        if hooks is not None:
            hooks.settle()
            relay = self.relay
            if relay is not None and relay.owes_sync:
                # The block's sync comes at its end: the writer handles its entries
                # meanwhile, not all at once after the SYNC (issue 19).
                self.services.ledger.hurry()

    def receive(self, side: Side, data: bytes) -> Commands:
        relay = self.relay
        hooks = self.hooks
        if hooks is not None:
            hooks.settle()
        try:
            if self.state is State.RELAY and relay is not None:
                if side == "job":
                    for job_event in self.job.receive_data(data):
                        if type(job_event) is Messages:
                            relay.from_client(job_event)
                        elif type(job_event) is Terminated:
                            return self._end("job terminated the session")
                else:
                    assert self.up is not None
                    for up_event in self.up.receive_data(data):
                        if type(up_event) is Messages:
                            relay.from_server(up_event)
                return self._after_relay()
            if side == "job":
                return self._job_startup(data)
            return self._upstream_startup(data)
        except PeerProtocolError as exc:
            return self._protocol_end(exc)
        except UpstreamAuthenticationError as exc:
            return self._end(
                f"upstream authentication failed: {exc.message}",
                _fatal(
                    REJECTED,
                    f"the appliance could not authenticate to target {self.target.name!r}",
                    detail=exc.message,
                ),
            )
        except SessionRefused as exc:
            return self._end(exc.reason, _fatal(INSUFFICIENT_PRIVILEGE, exc.message))

    def handle(self, event: Event) -> Commands:
        if self.state is State.ENDED:
            return NO_COMMANDS
        try:
            self.settle()
            return self._handle(event)
        except PeerProtocolError as exc:
            return self._protocol_end(exc)

    def crashed(self, exc: BaseException) -> Commands:
        if isinstance(exc, LedgerUnavailable):
            return self._end(
                f"ledger unavailable: {exc}",
                _fatal(
                    CONNECTION_FAILURE, "the appliance cannot record this session; it is closed"
                ),
            )
        return self._end(
            f"appliance error: {type(exc).__name__}: {exc}",
            _fatal(INTERNAL_ERROR, "internal error in the appliance; the session is closed"),
        )

    # -- events ------------------------------------------------------------------------------

    def _handle(self, event: Event) -> Commands:
        state = self.state
        if isinstance(event, UpstreamOpened) and state is State.CONNECTING:
            return self._authenticate()
        if isinstance(event, UpstreamFailed) and state is State.CONNECTING:
            address = _addr(self.info.upstream)
            return self._end(
                f"upstream unreachable: {event.why}",
                _fatal(
                    CONNECTION_FAILURE,
                    f"the appliance cannot reach target {self.target.name!r} at {address}: {event.why}",
                ),
            )
        if isinstance(event, TLSEstablished) and event.side == "job" and state is State.JOB_TLS:
            self.job.tls_established()
            self.state = State.STARTUP
            return NO_COMMANDS
        if isinstance(event, TLSEstablished) and state is State.UPSTREAM_TLS:
            assert self.up is not None
            self.up.tls_established(event.peer_certificate)
            self._to_up.append(self.up.data_to_send())
            self.state = State.AUTHENTICATING
            return NO_COMMANDS
        if isinstance(event, TLSFailed):
            if event.side == "job":
                return self._end("job TLS failed", detail=event.why)
            return self._end(
                f"upstream TLS failed: {event.why}",
                _fatal(
                    CONNECTION_FAILURE,
                    f"TLS to target {self.target.name!r} failed",
                    detail=event.why,
                ),
            )
        if isinstance(event, ApprovalAnswered):
            return self._approval_answered(event)
        if isinstance(event, Durable) and self.relay is not None:
            if not event.ok:
                # Not on disk: what waited for it is never sent, and the session ends.
                return self._end(
                    f"ledger cannot record: {event.why}",
                    _fatal(
                        CONNECTION_FAILURE,
                        "the appliance cannot record this statement; it was not sent, and "
                        "the session is closed",
                    ),
                )
            self.relay.durable_result(True)
            return self._after_relay()
        if isinstance(event, SentOnce) and state is State.CANCELLING:
            return self._cancel_sent(event)
        if isinstance(event, Eof):
            return self._eof(event.side)
        if isinstance(event, TimerFired) and event.name == STARTUP_TIMER:
            if state is State.RELAY:
                return NO_COMMANDS
            return self._end("startup timed out", _fatal(CONNECTION_FAILURE, "startup timed out"))
        if isinstance(event, Drain):
            return self._drain()
        if isinstance(event, Abort):
            return self._end(event.reason, _shutdown_error())
        raise AssertionError(f"event {event!r} in state {state.name}")

    def _eof(self, side: Side) -> Commands:
        if self.state is not State.RELAY:
            if side == "job":
                return self._end("job disconnected during startup")
            return self._end(
                "upstream server closed during startup",
                _fatal(
                    CONNECTION_FAILURE,
                    f"target {self.target.name!r} closed the connection during startup",
                ),
            )
        relay = self.relay
        assert relay is not None
        if side == "job":
            return self._end(
                "job terminated the session" if relay.terminated else "job disconnected"
            )
        # A server that ends a session says why (FATAL ErrorResponse, relayed); one that
        # vanishes says nothing, and the job must not be left guessing.
        error = b""
        if not relay.server_fatal:
            error = _fatal(
                CONNECTION_FAILURE,
                f"the appliance lost the connection to target {self.target.name!r}: "
                "the upstream server closed it",
            )
        return self._end("upstream server closed the connection", error)

    # -- startup, job side ---------------------------------------------------------------

    def _job_startup(self, data: bytes) -> Commands:
        commands: list[Command] = []
        for ev in self.job.receive_data(data):
            if isinstance(ev, SSLRequested):
                context = self.services.client_tls.get(self.target.name)
                self.job.answer_ssl(context is not None)
                self._to_job.append(self.job.data_to_send())
                if context is not None:
                    self.state = State.JOB_TLS
                    commands.append(StartTLS("job", context))
            elif isinstance(ev, GSSEncRequested):
                self.job.refuse_gssenc()
                self._to_job.append(self.job.data_to_send())
            elif isinstance(ev, CancelRequested):
                return self._forward_cancel(ev.request)
            elif isinstance(ev, StartupReceived):
                return self._startup_received(ev)
            else:
                return self._end(
                    f"unexpected startup event {type(ev).__name__}",
                    _fatal(PROTOCOL_VIOLATION, "unexpected message during startup"),
                )
        out = self.job.data_to_send()
        if out:
            self._to_job.append(out)
        return commands

    def _startup_received(self, startup: StartupReceived) -> Commands:
        target = self.target
        account = target.account_for(startup.user)
        self.account_name = account.name
        self.database = account.database or startup.database
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
            "client": _addr(self.info.client),
            "server": _addr(self.info.upstream),
            "listener": _addr(self.info.listener),
            "database": self.database,
            "user": startup.user,
            "application_name": startup.startup.parameters.get("application_name"),
            "protocol_version": f"3.{startup.minor}",
            "client_tls": self.job.tls,
        }
        policy = self.services.policy
        if policy is not None:
            start["policy"] = policy.start_record()
            start["policy_mode"] = policy.mode
        self.recorder.append("session.start", start)
        try:
            self._parameters = upstream_parameters(
                startup.startup.parameters, allowed=target.startup_parameters
            )
        except ParameterRefused as exc:
            return self._end(
                f"startup refused: {exc}",
                _fatal(INSUFFICIENT_PRIVILEGE, f"the appliance refuses {exc}"),
            )
        try:
            self._secret = self.services.read_secret(account.secret)
        except ApplianceError as exc:
            return self._end(
                f"service account secret unavailable: {exc}",
                _fatal(REJECTED, f"the appliance has no usable secret for target {target.name!r}"),
            )
        self.state = State.CONNECTING
        return [OpenUpstream(self.info.upstream, target.connect_timeout)]

    def _forward_cancel(self, request: CancelRequest) -> Commands:
        found = self.shared.cancel_keys.resolve(request)
        if found is None:
            # Guessing keys costs the guesser nothing: aggregated, like other refusals.
            self._refused("cancel request with an unknown key")
            self.state = State.CANCELLING  # recorded: the end below records nothing more
            return self._end("cancel request")
        real, route = found
        self._cancel = route
        self.state = State.CANCELLING
        return [SendOnce(route.address, CancelRequest(real.pid, real.key).encode())]

    def _cancel_sent(self, sent: SentOnce) -> Commands:
        outcome = "forwarded" if sent.ok else f"upstream unreachable: {sent.why}"
        self._record_cancel(self._cancel, outcome)
        return self._end("cancel request")

    def _record_cancel(self, route: CancelRoute | None, outcome: str) -> None:
        """A cancel request is filed under the session it cancels (None: no live session
        has that key); the connection it came on is named in the data."""
        self.services.ledger.append(
            "cancel.requested",
            session=route.session if route is not None else None,
            identity=self.identity,
            target=self.target.name,
            data={"client": _addr(self.info.client), "connection": self.id, "outcome": outcome},
        )

    # -- startup, upstream side ------------------------------------------------------------

    def _authenticate(self) -> Commands:
        assert self.account_name is not None and self._secret is not None
        account = self.target.account_for(self.account_name)
        self.up = ServerConnection(
            user=account.user,
            database=self.database or account.user,
            password=self._secret,
            random_bytes=self.services.random_bytes,
            parameters=self._parameters,
            tls=self.target.tls.mode,  # type: ignore[arg-type]
        )
        self._secret = None
        self.up.initiate()
        self._to_up.append(self.up.data_to_send())
        self.state = State.AUTHENTICATING
        return NO_COMMANDS

    def _upstream_startup(self, data: bytes) -> Commands:
        up = self.up
        if up is None:
            raise PeerProtocolError("the server spoke before it was asked", side="server")
        events = up.receive_data(data)
        out = up.data_to_send()
        if out:
            self._to_up.append(out)
        for ev in events:
            if self.state is State.CATALOG:
                return self._catalog_answer(ev)
            if isinstance(ev, UpstreamWantsTLS):
                tls = self.target.tls
                self.state = State.UPSTREAM_TLS
                hostname = tls.server_name or self.info.upstream[0]
                return [StartTLS("upstream", self.services.upstream_tls(tls), hostname)]
            if isinstance(ev, Authenticated):
                self.auth_method = ev.method
            elif isinstance(ev, StartupFailed):
                error = ev.error
                detail = f"{error.code}: {error.message}"
                why = (
                    "authentication as the service account failed"
                    if ev.authentication_failed
                    else "the target refused the session"
                )
                return self._end(
                    f"upstream refused: {detail}",
                    _fatal(
                        REJECTED,
                        f"{why} (target {self.target.name!r}, account {self.account_name!r})",
                        detail=detail,
                    ),
                )
            elif isinstance(ev, ServerReady):
                return self._server_ready(ev)
        return NO_COMMANDS

    def _server_ready(self, ready: ServerReady) -> Commands:
        masker = self.recorder.masker if self.recorder is not None else None
        query = catalog_query(masker.table_scoped_columns()) if masker is not None else None
        if query is None:
            return self._complete(ready, {}, None)
        self._ready = ready
        self._catalog = CatalogReader()
        self._to_up.append(query)
        self.state = State.CATALOG
        return NO_COMMANDS

    def _catalog_answer(self, ev: object) -> Commands:
        """Table OID -> name, for column rules with a table pattern (:mod:`.catalog`): asked
        once, on this upstream connection, before the job's startup completes."""
        reader = self._catalog
        assert reader is not None and self._ready is not None
        if isinstance(ev, Messages) and reader.feed(ev):
            raise PeerProtocolError(
                "the server sent data after answering the catalog lookup", side="server"
            )
        if not reader.done:
            return NO_COMMANDS
        if reader.error is not None:
            return [
                Log("warning", f"catalog lookup failed: {reader.error}"),
                *self._complete(self._ready, {}, {"relations": 0, "error": reader.error}),
            ]
        return self._complete(self._ready, reader.tables, {"relations": len(reader.tables)})

    def _complete(
        self, ready: ServerReady, tables: dict[int, str], lookup: dict[str, Any] | None
    ) -> Commands:
        """Let the job in, then relay (the job's early messages go through at once)."""
        recorder = self.recorder
        assert recorder is not None and self.account_name is not None
        recorder.tables = tables
        parameters = dict(ready.parameters)
        encoding = parameters.get("client_encoding")
        if encoding is not None and not ascii_safe(encoding):
            # A role or database default (ALTER ROLE ... SET client_encoding): statements
            # would be read by the server in an encoding the policy does not parse.
            return self._end(
                f"startup refused: the server's client_encoding is {encoding}",
                _fatal(
                    INSUFFICIENT_PRIVILEGE,
                    f"the appliance refuses client encoding {encoding!r} for target "
                    f"{self.target.name!r}: the server would read statements otherwise",
                ),
            )
        real = ready.backend_key or BackendKeyData(0, b"\0\0\0\0")
        self._issued = self.shared.cancel_keys.issue(
            real,
            CancelRoute(self.info.upstream, self.id),
            key_length=4 if self.job.minor == 0 else 32,
        )
        self.job.complete_startup(ready.parameters, self._issued, notices=ready.notices)
        self._to_job.append(self.job.data_to_send())
        recorder.append(
            "session.ready",
            {
                "auth_method": self.auth_method,
                "upstream_tls": bool(self.up and self.up.tls),
                "server_version": parameters.get("server_version"),
                **({"column_tables": lookup} if lookup is not None else {}),
            },
        )
        row_masker = None
        masking = self.services.response_masking
        if masking is not None and masking(self.target.name, self.identity):
            assert self.services.masker is not None
            row_masker = ResponseMasker(
                self.services.masker.for_target(self.target.name), tables=recorder.tables
            )
        self.hooks = SessionHooks(
            policy=self.services.policy,
            recorder=recorder,
            target=self.target.name,
            database=self.database or "",
            account=self.account_name,
            identity=self.identity,
            new_id=lambda: self.services.random_bytes(8).hex(),
            row_masker=row_masker,
            parameters=parameters,
            write_ahead=self.services.write_ahead,
            can_defer=_ledger_ok(self.services.ledger),
        )
        self.relay = Relay(self.hooks, now=self.services.monotonic)
        self.state = State.RELAY
        # Messages the job sent before it was let in go through now.
        return [ClearTimer(STARTUP_TIMER), *self.receive("job", b"")]

    # -- relaying ----------------------------------------------------------------------------

    def _after_relay(self) -> Commands:
        """What the relay's last step asks of the shell: approvals to ask, the job's
        reading paused while a statement is held, the end of a drain."""
        hooks, relay = self.hooks, self.relay
        assert hooks is not None and relay is not None
        commands = self.holds.commands(hooks.approvals, relay.held)
        if hooks.durable_requested:
            # Before anything else: the statements that may change the target wait for
            # their entries to be durable (write-ahead).
            hooks.durable_requested = False
            self._syncs += 1
            commands = [AwaitDurable(self._syncs), *(commands or ())]
        if commands is None:
            return NO_COMMANDS  # the hot path
        if self.holds.draining and (relay.idle or relay.held):
            commands.extend(self._end("appliance shutdown", _shutdown_error()))
        return commands

    def _approval_answered(self, answer: ApprovalAnswered) -> Commands:
        stmt = self.holds.answered(answer.key)
        if stmt is None or self.relay is None or self.hooks is None:
            return NO_COMMANDS
        approved, error, record = self.hooks.approval_answered(stmt, answer)
        self.relay.approval_result(approved, error=error, record=record)
        return self._after_relay()

    def _drain(self) -> Commands:
        """Finish the statement in flight, then end with 57P01 (administrator shutdown)."""
        drain = self.holds.drain()
        if self.state is not State.RELAY:
            return self._end("appliance shutdown during startup", _shutdown_error())
        return [*drain, *self._after_relay()]

    # -- the end -------------------------------------------------------------------------------

    def _protocol_end(self, exc: PeerProtocolError) -> Commands:
        """A peer broke the protocol: recorded (``protocol.error``), and the job told whose
        fault it was."""
        if exc.side == "client":
            error = _fatal(exc.sqlstate, exc.message)
        else:
            error = _fatal(
                exc.sqlstate, "the upstream server broke the protocol", detail=exc.message
            )
        if self.recorder is not None:
            self.settle()
            self.recorder.append(
                "protocol.error",
                {
                    "side": exc.side,
                    "sqlstate": exc.sqlstate,
                    "message": self.recorder.mask(exc.message),
                },
            )
        who = "job" if exc.side == "client" else "upstream server"
        during = "" if self.state is State.RELAY else " during startup"
        return self._end(f"protocol violation by the {who}{during}", error, detail=exc.message)

    def _end(self, reason: str, error: bytes = b"", *, detail: str | None = None) -> Commands:
        """End the session once: statements in flight finish as cancelled, the job gets
        ``error`` after whatever the relay still had for it, the server a Terminate, and
        the ledger ``session.end`` (or, before the session started, a refusal)."""
        if self.state is State.ENDED:
            return NO_COMMANDS
        if self.recorder is None and self.state is not State.CANCELLING:
            self._refused(reason, detail)
        relay = self.relay
        if relay is not None:
            try:
                relay.abort("cancelled")
                self.settle()  # before the sinks are discarded and the session ends
            except ApplianceError:
                pass  # the ledger is failing; the session ends anyway
            self._pull_relay()
        self.state = State.ENDED
        if error:
            self._to_job.append(error)
        if self.up is not None and not (relay is not None and relay.terminated):
            self.up.close()  # a Terminate, unless the job's own went through already
            self._to_up.append(self.up.data_to_send())
        if self._issued is not None:
            self.shared.cancel_keys.release(self._issued)
        recorder = self.recorder
        if recorder is not None:
            recorder.discard()
            data = {
                "reason": reason,
                "bytes_in": relay.bytes_from_client if relay else 0,
                "bytes_out": self.bytes_to_job + sum(len(b) for b in self._to_job),
                "bytes_upstream": relay.bytes_from_server if relay else 0,
                "duration_us": round((self.services.monotonic() - self.started) * 1_000_000),
                "statements": relay.statements if relay else 0,
            }
            try:
                recorder.append("session.end", data)
            except ApplianceError:
                pass  # the ledger is failing: the daemon's watchdog stops the appliance
        return [Log("info", f"ended: {reason}"), End(reason)]

    def _refused(self, reason: str, detail: str | None = None) -> None:
        """A connection that ended before its session started (see :mod:`..refusals`)."""
        connection_refused(
            self.services.refusals,
            self.services.ledger,
            self.info,
            protocol="postgres",
            target=self.target.name,
            reason=reason,
            detail=detail,
        )

    def _pull_relay(self) -> None:
        """Move the relay's pending output behind what this core queued before it."""
        if self.relay is not None:
            to_job, to_up = self.relay.take_output()
            if to_job:
                self._to_job.append(to_job)
            if to_up:
                self._to_up.append(to_up)


def _ledger_ok(ledger: Ledger) -> Callable[[], bool]:
    """Whether entries may wait for :meth:`PgSession.settle`: not once the ledger has
    failed (an entry appended at once then stops its statement before it is sent)."""
    return lambda: ledger.failed is None


def _fatal(code: str, message: str, *, detail: str | None = None) -> bytes:
    return error_response("FATAL", code, message, detail=detail)


def _shutdown_error() -> bytes:
    return _fatal(ADMIN_SHUTDOWN, "terminating connection: the appliance is shutting down")


def _addr(address: tuple[str, int]) -> str:
    return format_endpoint(address[0], address[1])


def shared(random_bytes: Any) -> PgShared:
    """The registry's factory of the state all PostgreSQL sessions share."""
    return PgShared(CancelKeys[CancelRoute](random_bytes=random_bytes))


__all__ = ["CancelRoute", "PgSession", "PgShared", "State", "shared"]
