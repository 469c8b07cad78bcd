"""The sans-IO MySQL/MariaDB session: login, upstream authentication, relay, end.

Where this sits: the shell (:mod:`appliance.proxy.shell`) runs one :class:`MySQLSession` per
accepted connection to a ``mysql`` target and carries out the commands it returns.

1. The upstream connection is opened first: the server's handshake tells the version,
   character set and capabilities the job is then greeted with (with an appliance-issued
   connection id, a fresh scramble, and only capabilities the appliance relays: no
   compression, which is refused at negotiation);
2. the job logs in with any user and any or no password (never checked nor forwarded);
   TLS when the target has a client certificate; a client character set the server would
   read otherwise than the appliance (sjis, gbk, big5...) is refused;
3. the appliance authenticates upstream as the service account
   (:class:`~appliance.protocols.mysql.UpstreamConnection`), TLS as the target requires;
   then reads the session's sql_mode and character set (the settings probe of
   :mod:`.hooks`) and lets the job in; the :class:`~.relay.Relay` takes over;
4. whatever happens, the session ends once with a ``session.end`` entry, the job told why
   with an ERR packet.

States (:class:`State`)::

    CONNECTING --UpstreamOpened--> GREETING --server handshake--> LOGIN
    LOGIN --SSLRequest--> JOB_TLS --TLSEstablished--> LOGIN
    LOGIN --handshake response--> AUTHENTICATING (UPSTREAM_TLS) --OK--> PROBING --> RELAY
    any --refusal, EOF, timer "startup", error--> ENDED
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from appliance.config import Target
from appliance.errors import ApplianceError
from appliance.ledger.errors import LedgerUnavailable
from appliance.masking.mysql import ResponseMasker
from appliance.protocols.mysql import (
    Authenticated,
    AuthenticationFailed,
    JobConnection,
    JobHello,
    PeerProtocolError,
    SSLRequested,
    UpstreamAuthenticationError,
    UpstreamConnection,
)
from appliance.protocols.mysql import (
    StartTLS as UpstreamWantsTLS,
)
from appliance.protocols.mysql._wire import Framer, packet
from appliance.protocols.mysql.constants import (
    RELAYABLE,
    Cap,
    Status,
    charset_of_collation,
)
from appliance.protocols.mysql.messages import Err, Handshake, Ok
from appliance.proxy.commands import (
    NO_COMMANDS,
    Abort,
    ApprovalAnswered,
    AwaitDurable,
    ClearTimer,
    Commands,
    ConnectionInfo,
    Drain,
    Durable,
    End,
    Eof,
    Event,
    Log,
    OpenUpstream,
    SetTimer,
    Side,
    StartTLS,
    TimerFired,
    TLSEstablished,
    TLSFailed,
    UpstreamFailed,
    UpstreamOpened,
)
from appliance.proxy.mysql.hooks import SessionPolicy
from appliance.proxy.mysql.kill import ConnectionIds, KillRoute
from appliance.proxy.mysql.recording import MySQLRecorder
from appliance.proxy.mysql.relay import Relay, SessionFailed, Stmt
from appliance.proxy.services import SessionServices
from appliance.proxy.statement_policy import Holds

STARTUP_TIMER = "startup"
ER_ACCESS_DENIED = 1045
ER_CON_COUNT = 1040
ER_SERVER_SHUTDOWN = 1053
ER_CONNECTION_ERROR = 2013  # lost connection (client-side code, used as the server's word)
ER_HANDSHAKE_ERROR = 1043
ER_INTERNAL = 1815  # ER_INTERNAL_ERROR
ER_NOT_SUPPORTED = 1235


class State(enum.Enum):
    CONNECTING = "connecting to the target"
    GREETING = "waiting for the server's handshake"
    LOGIN = "waiting for the job's login"
    JOB_TLS = "TLS handshake with the job"
    AUTHENTICATING = "authenticating to the target"
    UPSTREAM_TLS = "TLS handshake with the target"
    PROBING = "reading the session's settings"
    RELAY = "relaying"
    ENDED = "ended"


@dataclass(frozen=True)
class MySQLOptions:
    """A mysql target's own settings: ``local_infile`` (LOAD DATA LOCAL INFILE relayed,
    the statement itself still decided by policy; default refused at negotiation) and
    ``server_public_key`` (the server's RSA key for caching_sha2_password's full
    authentication without TLS; else it is asked for on the connection)."""

    local_infile: bool = False
    server_public_key: bytes | None = None


@dataclass
class MySQLShared:
    """What all MySQL sessions of one appliance share: the issued connection ids."""

    ids: ConnectionIds


class MySQLSession:
    """One job connection to a MySQL/MariaDB target; see the module docstring."""

    def __init__(
        self, services: SessionServices, shared: MySQLShared, target: Target, info: ConnectionInfo
    ) -> None:
        self.services = services
        self.shared = shared
        self.target = target
        self.info = info
        self.id = info.session_id
        self.identity = dict(info.identity)
        self.options: MySQLOptions = (
            target.options if isinstance(target.options, MySQLOptions) else MySQLOptions()
        )
        self.state = State.CONNECTING
        self.job = JobConnection()
        self.up: UpstreamConnection | None = None
        self.relay: Relay | None = None
        self.recorder: MySQLRecorder | None = None
        self.policy: SessionPolicy | None = None
        self.started = services.monotonic()
        self.bytes_to_job = 0
        self.account_name: str | None = None
        self.database: str | None = None
        self._greeting_framer = Framer("server")
        self._greeting_raw = b""
        self._server: Handshake | None = None
        self._issued: int | None = None
        self._secret: str | None = None
        self._to_job: list[bytes] = []
        self._to_up: list[bytes] = []
        self.holds: Holds[Stmt] = Holds()
        self._probe_ok: Ok | None = None
        self._syncs = 0  # write-ahead syncs asked (AwaitDurable keys)

    # -- the shell's side --------------------------------------------------------------------

    def start(self) -> Commands:
        return [
            SetTimer(STARTUP_TIMER, self.services.startup_timeout),
            OpenUpstream(self.info.upstream, self.target.connect_timeout),
        ]

    def take_output(self) -> tuple[bytes, bytes]:
        relay = self.relay
        if relay is not None and not self._to_job and not self._to_up:
            to_job, to_up = relay.take_output()
        else:
            self._pull_relay()
            to_job, to_up = b"".join(self._to_job), b"".join(self._to_up)
            self._to_job.clear()
            self._to_up.clear()
        self.bytes_to_job += len(to_job)
        return to_job, to_up

    def settle(self) -> None:
        """Nothing is deferred: the MySQL relay records as it goes."""

    def receive(self, side: Side, data: bytes) -> Commands:
        try:
            relay = self.relay
            if self.state is State.RELAY and relay is not None:
                if side == "job":
                    relay.from_job(self.job.framer.feed(data), len(data))
                else:
                    assert self.up is not None
                    relay.from_server(self.up.framer.feed(data), len(data))
                return self._after_relay()
            if side == "job":
                return self._job_login(data)
            return self._upstream(data)
        except PeerProtocolError as exc:
            return self._protocol_end(exc)
        except UpstreamAuthenticationError as exc:
            return self._end(
                f"upstream authentication failed: {exc.message}",
                Err(
                    ER_ACCESS_DENIED,
                    "28000",
                    f"the appliance could not authenticate to target {self.target.name!r}: {exc.message}",
                ),
            )
        except SessionFailed as exc:
            return self._end(exc.reason, exc.err)

    def handle(self, event: Event) -> Commands:
        if self.state is State.ENDED:
            return NO_COMMANDS
        try:
            return self._handle(event)
        except PeerProtocolError as exc:
            return self._protocol_end(exc)
        except SessionFailed as exc:
            return self._end(exc.reason, exc.err)

    def crashed(self, exc: BaseException) -> Commands:
        if isinstance(exc, LedgerUnavailable):
            return self._end(
                f"ledger unavailable: {exc}",
                Err(
                    ER_CONNECTION_ERROR,
                    "08S01",
                    "the appliance cannot record this session; it is closed",
                ),
            )
        return self._end(
            f"appliance error: {type(exc).__name__}: {exc}",
            Err(ER_INTERNAL, "HY000", "internal error in the appliance; the session is closed"),
        )

    # -- events -------------------------------------------------------------------------------

    def _handle(self, event: Event) -> Commands:
        state = self.state
        if isinstance(event, UpstreamOpened):
            # The server's handshake may have been read already (it speaks first).
            if state is State.CONNECTING:
                self.state = State.GREETING
            return NO_COMMANDS
        if isinstance(event, UpstreamFailed) and state is State.CONNECTING:
            return self._end(
                f"upstream unreachable: {event.why}",
                Err(
                    2003,
                    "HY000",
                    f"the appliance cannot reach target {self.target.name!r}: {event.why}",
                ),
                greet=True,
            )
        if isinstance(event, TLSEstablished) and event.side == "job" and state is State.JOB_TLS:
            self.job.tls_established()
            self.state = State.LOGIN
            return NO_COMMANDS
        if isinstance(event, TLSEstablished) and state is State.UPSTREAM_TLS:
            assert self.up is not None
            self.up.tls_established()
            self._to_up.append(self.up.data_to_send())
            self.state = State.AUTHENTICATING
            return NO_COMMANDS
        if isinstance(event, TLSFailed):
            if event.side == "job":
                return self._end(f"job TLS failed: {event.why}")
            return self._end(
                f"upstream TLS failed: {event.why}",
                Err(2026, "HY000", f"TLS to target {self.target.name!r} failed: {event.why}"),
            )
        if isinstance(event, ApprovalAnswered):
            return self._approval_answered(event)
        if isinstance(event, Durable) and self.relay is not None:
            if not event.ok:
                # Not on disk: the command that waited for it is never sent.
                return self._end(
                    f"ledger cannot record: {event.why}",
                    Err(
                        ER_CONNECTION_ERROR,
                        "08S01",
                        "the appliance cannot record this statement; it was not sent, and the "
                        "session is closed",
                    ),
                )
            self.relay.durable_result()
            return self._after_relay()
        if isinstance(event, Eof):
            return self._eof(event.side)
        if isinstance(event, TimerFired) and event.name == STARTUP_TIMER:
            if state is State.RELAY:
                return NO_COMMANDS
            return self._end(
                "startup timed out", Err(ER_HANDSHAKE_ERROR, "08S01", "startup timed out")
            )
        if isinstance(event, Drain):
            return self._drain()
        if isinstance(event, Abort):
            return self._end(event.reason, _shutdown())
        raise AssertionError(f"event {event!r} in state {state.name}")

    def _eof(self, side: Side) -> Commands:
        if side == "job":
            terminated = self.relay is not None and self.relay.terminated
            return self._end("job terminated the session" if terminated else "job disconnected")
        if self.state is not State.RELAY:
            return self._end(
                "upstream server closed during startup",
                Err(
                    ER_CONNECTION_ERROR,
                    "08S01",
                    f"target {self.target.name!r} closed the connection during startup",
                ),
            )
        return self._end(
            "upstream server closed the connection",
            Err(
                ER_CONNECTION_ERROR,
                "08S01",
                f"the appliance lost the connection to target {self.target.name!r}",
            ),
        )

    # -- startup --------------------------------------------------------------------------------

    def _upstream(self, data: bytes) -> Commands:
        if self.state in (State.CONNECTING, State.GREETING):
            self._greeting_raw += data
            packets = self._greeting_framer.feed(data)
            if not packets:
                return NO_COMMANDS
            if len(packets) > 1 or self._greeting_framer.buffered:
                raise PeerProtocolError("the server sent more than its handshake", side="server")
            return self._greet(packets[0][1])
        up = self.up
        if up is None or self.state not in (State.AUTHENTICATING, State.PROBING):
            raise PeerProtocolError(
                f"the server spoke while the appliance was {self.state.value}", side="server"
            )
        if self.state is State.PROBING:
            assert self.relay is not None
            self.relay.from_server(up.framer.feed(data), len(data))
            return self._probe_done()
        events = up.receive_data(data)
        out = up.data_to_send()
        if out:
            self._to_up.append(out)
        for ev in events:
            if isinstance(ev, UpstreamWantsTLS):
                tls = self.target.tls
                self.state = State.UPSTREAM_TLS
                hostname = tls.server_name or self.info.upstream[0]
                return [StartTLS("upstream", self.services.upstream_tls(tls), hostname)]
            if isinstance(ev, AuthenticationFailed):
                detail = f"{ev.error.code} ({ev.error.sqlstate}): {ev.error.message}"
                return self._end(
                    f"upstream refused: {detail}",
                    Err(
                        ER_ACCESS_DENIED,
                        "28000",
                        f"the target refused the service account (target {self.target.name!r}, account {self.account_name!r}): {detail}",
                    ),
                )
            if isinstance(ev, Authenticated):
                return self._authenticated(ev)
        return NO_COMMANDS

    def _greet(self, payload: bytes) -> Commands:
        if payload[:1] == b"\xff":
            err = Err.decode(payload)
            return self._end(
                f"upstream refused the connection: {err.code} {err.message}", err, greet=True
            )
        server = self._server = Handshake.decode(payload)
        self._issued = self.shared.ids.issue(
            KillRoute(self.info.upstream, server.connection_id, "", self.id)
        )
        offer = (
            (server.capabilities & RELAYABLE)
            | Cap.PROTOCOL_41
            | Cap.SECURE_CONNECTION
            | Cap.PLUGIN_AUTH
        )
        offer &= ~int(Cap.LOCAL_FILES) if not self.options.local_infile else ~0
        if self.services.client_tls.get(self.target.name) is not None:
            offer |= Cap.SSL
        else:
            offer &= ~int(Cap.SSL)
        self.job.greet(
            Handshake(
                server.server_version,
                self._issued,
                self.services.random_bytes(20).translate(_NO_NUL),
                offer,
                server.charset,
                Status.AUTOCOMMIT,
                "mysql_native_password",
            )
        )
        self._to_job.append(self.job.data_to_send())
        self.state = State.LOGIN
        return NO_COMMANDS

    def _job_login(self, data: bytes) -> Commands:
        if self.state not in (State.LOGIN,):
            if self.state in (State.CONNECTING, State.GREETING):
                raise PeerProtocolError("the job spoke before it was greeted", side="client")
            self.job.receive_data(data)  # raises for anything but nothing
            return NO_COMMANDS
        for ev in self.job.receive_data(data):
            if isinstance(ev, SSLRequested):
                context = self.services.client_tls.get(self.target.name)
                assert context is not None
                self.state = State.JOB_TLS
                return [StartTLS("job", context, early=ev.early)]
            if isinstance(ev, JobHello):
                return self._hello(ev)
        return NO_COMMANDS

    def _hello(self, hello: JobHello) -> Commands:
        target = self.target
        response = hello.response
        account = target.account_for(response.user)
        self.account_name = account.name
        self.database = account.database or response.database or None
        masker = (
            self.services.masker.for_target(target.name)
            if self.services.masker is not None
            else None
        )
        self.recorder = MySQLRecorder(
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
        assert self._server is not None
        charset = charset_of_collation(response.charset)
        start: dict[str, Any] = {
            "protocol": "mysql",
            "client": _addr(self.info.client),
            "server": _addr(self.info.upstream),
            "listener": _addr(self.info.listener),
            "database": self.database,
            "user": response.user,
            "application_name": response.attributes.get("program_name")
            or response.attributes.get("_client_name"),
            "client_attributes": {k: v for k, v in sorted(response.attributes.items())[:32]},
            "client_charset": charset,
            "client_tls": self.job.tls,
            "connection_id": self._issued,
            "server_version": self._server.server_version,
        }
        policy = self.services.policy
        if policy is not None:
            start["policy"] = policy.start_record()
            start["policy_mode"] = policy.mode
        self.recorder.append("session.start", start)
        if charset is None or charset in (
            "big5",
            "cp932",
            "gbk",
            "sjis",
            "gb18030",
            "ucs2",
            "utf16",
            "utf32",
        ):
            return self._end(
                f"login refused: client character set {charset or response.charset}",
                Err(
                    ER_NOT_SUPPORTED,
                    "42000",
                    f"the appliance refuses client character set {charset or response.charset!r}: the server would read statements otherwise",
                ),
            )
        try:
            self._secret = self.services.read_secret(account.secret)
        except ApplianceError as exc:
            return self._end(
                f"service account secret unavailable: {exc}",
                Err(
                    ER_ACCESS_DENIED,
                    "28000",
                    f"the appliance has no usable secret for target {target.name!r}",
                ),
            )
        wanted = hello.capabilities & RELAYABLE
        if self.options.local_infile:
            wanted |= Cap.LOCAL_FILES
        else:
            wanted &= ~int(Cap.LOCAL_FILES)
        self.up = UpstreamConnection(
            user=account.user,
            password=self._secret,
            database=self.database,
            capabilities=wanted,
            charset=response.charset,
            tls=target.tls.mode,
            attributes={
                "_client_name": "appliance",
                "program_name": str(start["application_name"] or ""),
            },
            server_public_key=self.options.server_public_key,
        )
        self._secret = None
        self.state = State.AUTHENTICATING
        raw, self._greeting_raw = self._greeting_raw, b""
        return self._upstream(raw)

    def _authenticated(self, ev: Authenticated) -> Commands:
        assert self.recorder is not None and self.account_name is not None and self.up is not None
        job_caps = self.job.capabilities
        # The job and the server must read packets alike: both sides' formats are those
        # both agreed to (DEPRECATE_EOF, SESSION_TRACK, QUERY_ATTRIBUTES...).
        for flag in (
            Cap.DEPRECATE_EOF,
            Cap.SESSION_TRACK,
            Cap.QUERY_ATTRIBUTES,
            Cap.MULTI_RESULTS,
            Cap.PS_MULTI_RESULTS,
            Cap.MULTI_STATEMENTS,
        ):
            if bool(job_caps & flag) != bool(ev.capabilities & flag):
                return self._end(
                    f"capability {flag.name} negotiated differently",
                    Err(
                        ER_HANDSHAKE_ERROR,
                        "08S01",
                        f"the appliance and the server could not agree on {flag.name}",
                    ),
                )
        self.policy = SessionPolicy(
            policy=self.services.policy,
            recorder=self.recorder,
            target=self.target.name,
            database=self.database,
            account=self.account_name,
            identity=self.identity,
            new_id=lambda: self.services.random_bytes(8).hex(),
            write_ahead=self.services.write_ahead,
        )
        assert self._issued is not None and self._server is not None
        self.shared.ids.update(
            self._issued,
            KillRoute(self.info.upstream, self._server.connection_id, self.policy.owner, self.id),
        )
        row_masker = None
        masking = self.services.response_masking
        if masking is not None and masking(self.target.name, self.identity):
            assert self.services.masker is not None
            row_masker = ResponseMasker(self.services.masker.for_target(self.target.name))
        self.relay = Relay(
            policy=self.policy,
            recorder=self.recorder,
            capabilities=ev.capabilities,
            now=self.services.monotonic,
            ids=self.shared.ids,
            upstream=self.info.upstream,
            local_infile=self.options.local_infile,
            row_masker=row_masker,
        )
        self._probe_ok = ev.ok
        self.recorder.append(
            "session.ready",
            {
                "auth_method": ev.method,
                "upstream_tls": self.up.tls,
                "server_version": ev.handshake.server_version,
                "upstream_connection_id": ev.handshake.connection_id,
            },
        )
        self.relay.probe()
        self.state = State.PROBING
        return NO_COMMANDS

    def _probe_done(self) -> Commands:
        relay = self.relay
        assert relay is not None and self.policy is not None
        if relay.pending:
            return NO_COMMANDS
        relay.take_output()  # the probe's answer is the appliance's own
        ok = self._probe_ok or Ok()
        self.job.accept(Ok(status=ok.status, session=ok.session))
        self._to_job.append(self.job.data_to_send())
        self.state = State.RELAY
        return [ClearTimer(STARTUP_TIMER), *self.receive("job", b"")]

    # -- relaying -------------------------------------------------------------------------------

    def _after_relay(self) -> Commands:
        """What the relay's last step asks of the shell: approvals to ask, the job's
        reading paused while a statement is held, the end of a drain."""
        relay = self.relay
        assert relay is not None
        held = relay.held is not None or relay.withheld is not None
        commands = self.holds.commands(relay.approvals, held)
        if relay.durable_requested:
            # Before anything else: the command that may change the target waits for its
            # entry to be durable (write-ahead).
            relay.durable_requested = False
            self._syncs += 1
            commands = [AwaitDurable(self._syncs), *(commands or ())]
        if commands is None:
            return NO_COMMANDS  # the hot path
        if self.holds.draining and (relay.idle or held):
            commands.extend(self._end("appliance shutdown", _shutdown()))
        return commands

    def _approval_answered(self, answer: ApprovalAnswered) -> Commands:
        relay, policy = self.relay, self.policy
        stmt = self.holds.answered(answer.key)
        if stmt is None or relay is None or policy is None or relay.held is None:
            return NO_COMMANDS
        approved, err, record = policy.approval_answered(stmt.verdict, answer)
        relay.approval_result(approved, err, record)
        return self._after_relay()

    def _drain(self) -> Commands:
        drain = self.holds.drain()
        if self.state is not State.RELAY:
            return self._end("appliance shutdown during startup", _shutdown())
        return [*drain, *self._after_relay()]

    # -- the end ----------------------------------------------------------------------------------

    def _protocol_end(self, exc: PeerProtocolError) -> Commands:
        message = (
            exc.message
            if exc.side == "client"
            else f"the upstream server broke the protocol: {exc.message}"
        )
        if self.recorder is not None:
            self.recorder.append(
                "protocol.error",
                {"side": exc.side, "code": exc.code, "message": self.recorder.mask(exc.message)},
            )
        who = "job" if exc.side == "client" else "upstream server"
        during = "" if self.state is State.RELAY else " during startup"
        return self._end(
            f"protocol violation by the {who}{during}", Err(exc.code, exc.sqlstate, message)
        )

    def _end(self, reason: str, error: Err | None = None, *, greet: bool = False) -> Commands:
        if self.state is State.ENDED:
            return NO_COMMANDS
        relay = self.relay
        if relay is not None:
            self._pull_relay()
        previous = self.state
        self.state = State.ENDED
        if error is not None:
            if greet or previous in (State.CONNECTING, State.GREETING):
                # Not greeted yet: a server refuses a connection with an ERR as its first packet.
                self._to_job.append(packet(0, error.encode()))
            elif previous in (
                State.LOGIN,
                State.AUTHENTICATING,
                State.UPSTREAM_TLS,
                State.PROBING,
                State.JOB_TLS,
            ):
                self.job.refuse(error)
                self._to_job.append(self.job.data_to_send())
            else:
                # In the command phase: an ERR that answers the command in flight (or none).
                seq = relay.pending[0].seq + 1 if relay is not None and relay.pending else 1
                self._to_job.append(packet(seq, error.encode()))
        if (
            self.up is not None
            and not (relay is not None and relay.terminated)
            and previous is State.RELAY
        ):
            self._to_up.append(packet(0, b"\x01"))  # COM_QUIT
        if self._issued is not None:
            self.shared.ids.release(self._issued)
        recorder = self.recorder
        if recorder is not None:
            recorder.discard()
            data = {
                "reason": reason,
                "bytes_in": relay.bytes_from_job if relay else 0,
                "bytes_out": self.bytes_to_job + sum(len(b) for b in self._to_job),
                "bytes_upstream": relay.bytes_from_server if relay else 0,
                "duration_us": round((self.services.monotonic() - self.started) * 1_000_000),
                "statements": relay.statements if relay else 0,
            }
            try:
                recorder.append("session.end", data)
            except ApplianceError:
                pass
        return [Log("info", f"ended: {reason}"), End(reason)]

    def _pull_relay(self) -> None:
        if self.relay is not None:
            to_job, to_up = self.relay.take_output()
            if to_job:
                self._to_job.append(to_job)
            if to_up:
                self._to_up.append(to_up)


_NO_NUL = bytes.maketrans(b"\0", b"\x01")


def _shutdown() -> Err:
    return Err(ER_SERVER_SHUTDOWN, "08S01", "the appliance is shutting down; the session is closed")


def _addr(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def shared(random_bytes: Any) -> MySQLShared:
    """The registry's factory of the state all MySQL sessions share."""
    return MySQLShared(ConnectionIds(random_bytes))


def options(m: dict[str, Any]) -> MySQLOptions:
    """The registry's reader of a mysql target's own keys (``local_infile``,
    ``server_public_key``: a PEM file)."""
    local = m["local_infile"].boolean() if "local_infile" in m else False
    key = None
    if "server_public_key" in m:
        node = m["server_public_key"]
        path = node.string()
        try:
            with open(path, "rb") as f:
                key = f.read()
        except OSError as exc:
            node.fail(f"cannot read the server's public key {path}: {exc.strerror}")
        if b"PUBLIC KEY" not in (key or b""):
            node.fail(f"{path} is not a PEM public key")
    return MySQLOptions(local, key)


__all__ = ["MySQLOptions", "MySQLSession", "MySQLShared", "State", "options", "shared"]
