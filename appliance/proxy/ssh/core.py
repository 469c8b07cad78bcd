"""The sans-IO SSH session: the job's login, the upstream login, each channel decided,
relayed and recorded, the end.

Where this sits: asyncssh owns both SSH connections (:mod:`.runner`, the glue); every
callback it makes becomes an event (:mod:`.events`) for :meth:`SshSession.handle`, and the
glue carries out the commands returned. Every decision of a session is here:

1. ``session.start`` is recorded when the job's login begins; a connection that ends
   before (malformed or oversized packets, a key exchange that fails or never finishes,
   a client that rejects the appliance's host key) is a ``connection.refused``, aggregated
   per source and reason like every protocol's (:mod:`appliance.proxy.refusals`);
2. the job logs in as any user, with anything or nothing: its identity is the attributed
   process. Its user name picks the service account (else the first); the appliance logs
   in to the target as that account with the account's key (:class:`.events.
   ConnectUpstream`), after checking the target's host key against the target's
   ``known_hosts``; only then is the job let in (``session.ready``). A failure refuses the
   job's login with a banner that says why, and is recorded;
3. channels: a session channel takes a terminal and environment requests (``LANG`` and
   ``LC_*`` are passed on, the rest dropped and recorded), then one of exec, shell or
   subsystem, which is classified (:mod:`appliance.policy._ssh`), decided
   (:mod:`.decisions`) and recorded as a ``statement``: allowed, it opens its upstream
   twin; denied, the job's channel gets the reason on standard error and exit status
   :data:`DENIED_STATUS`; held, the channel waits for a signed approval. An ``sftp``
   subsystem is relayed request by request (:mod:`.sftp`); ``scp -t``/``-f`` has its file
   stream read (:mod:`appliance.protocols.ssh.scp`); rsync and git's pack commands are
   binary (byte counts and SHA-256 each way); other channels' streams are recorded (masked
   by the ledger writer, :mod:`.terminal`). Local and remote forwards are policy's (only a
   rule naming their class opens one); agent and X11 forwarding are never relayed;
4. limits: at most ``max_channels`` channels at once; past ``max_refused_channels``
   refused opens the session ends as a flood; malformed SSH, an unfinished key exchange
   (``login_timeout``), a malformed SFTP or SCP stream end that session (or channel) with
   a ``protocol.error`` entry;
5. whatever happens, the session ends once with ``session.end``.

States (:class:`State`)::

    LOGIN --AuthBegan--> CONNECTING --UpstreamConnected--> OPEN --ConnectionLost/Abort--> ENDED
    LOGIN/CONNECTING --UpstreamFailed, ConnectionLost (timeout, malformed)--> ENDED

Channel states: ``requests`` (terminal, environment) -> ``held`` (an approval) ->
``starting`` (its upstream twin opening) -> ``running`` -> ``finished`` (both sides closed).
"""

from __future__ import annotations

import enum
import hashlib
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.config import Target
from appliance.errors import ApplianceError
from appliance.ledger.errors import LedgerUnavailable
from appliance.policy import (
    Classification,
    SshOperation,
    classify_exec,
    forward_request,
    shell_request,
    subsystem_request,
)
from appliance.protocols.ssh.scp import ScpEvent, ScpProtocolError, ScpSource
from appliance.protocols.ssh.sftp import Request as SftpRequest
from appliance.protocols.ssh.sftp import SftpProtocolError
from appliance.proxy.commands import ConnectionInfo, Side
from appliance.proxy.refusals import connection_refused
from appliance.proxy.services import SessionServices
from appliance.proxy.ssh.decisions import SshDecider, SshVerdict
from appliance.proxy.ssh.events import (
    Abort,
    AcceptAuth,
    AnswerRemoteForward,
    ApprovalAnswered,
    AskApproval,
    AuthBegan,
    AwaitDurable,
    BreakSent,
    ChannelClosed,
    ChannelEof,
    ChannelOpened,
    ChannelStarted,
    ChannelStartFailed,
    CloseChannel,
    ConnectionLost,
    ConnectUpstream,
    Data,
    Drain,
    Durable,
    End,
    EnvRequested,
    Exited,
    FinishChannel,
    Forward,
    ForwardedConnection,
    ForwardEof,
    ForwardingRequested,
    ForwardRequest,
    Log,
    PauseChannel,
    PtyRequested,
    RefuseAuth,
    RefuseChannel,
    RemoteForwardRequested,
    SessionRequested,
    SignalSent,
    SshCommand,
    SshEvent,
    StartChannel,
    TimerFired,
    UpstreamConnected,
    UpstreamFailed,
    WindowChanged,
    WithdrawApproval,
)
from appliance.proxy.ssh.options import SshOptions
from appliance.proxy.ssh.recording import SshRecorder, StreamRecording
from appliance.proxy.ssh.sftp import SftpRelay
from appliance.proxy.ssh.transfers import Transfer

__all__ = ["DENIED_STATUS", "FAILED_STATUS", "SshSession", "State"]

DENIED_STATUS = 126  # the job's command was refused (POSIX shells: "cannot execute")
FAILED_STATUS = 255  # the appliance or the target could not run it (ssh's own failure status)
# RFC 4254 section 5.1 reason codes
OPEN_ADMINISTRATIVELY_PROHIBITED = 1
OPEN_CONNECT_FAILED = 2
OPEN_RESOURCE_SHORTAGE = 4
_PASSED_ENV = re.compile(r"LANG|LANGUAGE|LC_[A-Z]+|TZ")
_READS = frozenset({"file_read", "file_list"})  # classes that change nothing on the target
MAX_EARLY = 4 * 1024 * 1024  # bytes a channel may send before it runs
_BINARY_PROGRAMS = frozenset({"rsync", "git-upload-pack", "git-receive-pack", "git-upload-archive"})

Commands = list[SshCommand]


class State(enum.Enum):
    LOGIN = "key exchange and the job's login"
    CONNECTING = "logging in to the target"
    OPEN = "relaying channels"
    ENDED = "ended"


@dataclass
class _Channel:
    chan: int
    kind: str  # session | direct-tcpip | forwarded-tcpip
    state: str = "requests"
    n: int | None = None
    request: str = ""
    command: str = ""
    subsystem: str = ""
    pty: PtyRequested | None = None
    env: dict[str, str] = field(default_factory=dict)
    dropped_env: list[str] = field(default_factory=list)
    verdict: SshVerdict | None = None
    approval: dict[str, Any] | None = None
    mode: str = "plain"  # plain | sftp | scp | binary | tunnel
    sftp: SftpRelay | None = None
    scp: ScpSource | None = None
    scp_side: str = "job"  # the side that sends the files
    scp_path: str = ""
    scp_into: bool = False  # the path is a directory the files go into
    scp_transfer: Transfer | None = None
    scp_offset: int = 0
    recording: StreamRecording | None = None
    started: float = 0.0
    bytes_in: int = 0  # job -> target
    bytes_out: int = 0  # target -> job
    hashes: dict[str, Any] = field(default_factory=dict)
    exited: Exited | None = None
    job_open: bool = True
    upstream_open: bool = False
    held: bool = False
    key: int | None = None  # an approval being asked
    destination: tuple[str, int] = ("", 0)
    origin: tuple[str, int] = ("", 0)
    # What the job sent before its request was decided and started (asyncssh delivers a
    # few packets before a pause takes effect): replayed once it runs.
    early: list[bytes] = field(default_factory=list)
    early_size: int = 0
    early_eof: bool = False


class SshSession:
    """One job connection to an SSH target; see the module docstring."""

    def __init__(self, services: SessionServices, target: Target, info: ConnectionInfo) -> None:
        options = target.options
        assert isinstance(options, SshOptions)
        self.services = services
        self.target = target
        self.options = options
        self.info = info
        self.id = info.session_id
        self.identity = dict(info.identity)
        self.state = State.LOGIN
        masker = services.masker.for_target(target.name) if services.masker is not None else None
        self.recorder = SshRecorder(
            services.ledger,
            session=self.id,
            target=target.name,
            identity=self.identity,
            masker=masker,
            recording_limit=options.max_recording,
        )
        self.decider: SshDecider | None = None
        self.username = ""
        self.client_version = ""
        self.account = ""
        self.started = services.monotonic()
        self.channels: dict[int, _Channel] = {}
        self.statements = 0
        self.refused_opens = 0
        self.draining = False
        self.started_recorded = False
        self.bytes_in = 0
        self.bytes_out = 0
        self._asked: dict[int, tuple[int, str]] = {}  # key -> (chan, "channel" | "sftp")
        self._next_key = 0
        # Asked by an SFTP relay (an approval, a write-ahead), not yet returned.
        self._pending_asks: list[AskApproval | AwaitDurable] = []

    # -- the glue's side -------------------------------------------------------------------

    def start(self) -> Commands:
        """The connection is accepted: nothing is recorded until the job's login begins (a
        connection that ends before, in the key exchange, is a refusal, aggregated)."""
        return []

    def _record_start(self) -> None:
        start: dict[str, Any] = {
            "protocol": "ssh",
            "client": _addr(self.info.client),
            "server": _addr(self.info.upstream),
            "listener": _addr(self.info.listener),
            "user": self.recorder.mask(self.username),
            "client_version": self.client_version,
        }
        policy = self.services.policy
        if policy is not None:
            start["policy"] = policy.start_record()
            start["policy_mode"] = policy.mode
        self.recorder.append("session.start", start)
        self.started_recorded = True

    def handle(self, event: SshEvent) -> Commands:
        if self.state is State.ENDED:
            return []
        return self._dispatch(event)

    def crashed(self, exc: BaseException) -> Commands:
        if isinstance(exc, LedgerUnavailable):
            return self._end(
                f"ledger unavailable: {exc}", "the appliance cannot record this session"
            )
        return self._end(
            f"appliance error: {type(exc).__name__}: {exc}", "internal error in the appliance"
        )

    def _dispatch(self, event: SshEvent) -> Commands:
        if isinstance(event, Data):
            return self._data(event)
        if isinstance(event, AuthBegan):
            return self._auth(event)
        if isinstance(event, UpstreamConnected):
            return self._upstream_ready(event)
        if isinstance(event, UpstreamFailed):
            return self._upstream_failed(event)
        if isinstance(event, ChannelOpened):
            return self._open(event)
        if isinstance(event, ForwardedConnection):
            return self._forwarded(event)
        if isinstance(event, RemoteForwardRequested):
            return self._remote_forward(event)
        if isinstance(event, PtyRequested):
            self._channel(event.chan).pty = event
            return []
        if isinstance(event, EnvRequested):
            return self._env(event)
        if isinstance(event, ForwardingRequested):
            return self._forwarding(event)
        if isinstance(event, SessionRequested):
            return self._session_request(event)
        if isinstance(event, ChannelStarted):
            return self._started(event)
        if isinstance(event, ChannelStartFailed):
            return self._start_failed(event)
        if isinstance(event, ChannelEof):
            return self._eof(event)
        if isinstance(event, WindowChanged):
            return self._window(event)
        if isinstance(event, SignalSent):
            return self._signal(event)
        if isinstance(event, BreakSent):
            return [ForwardRequest(event.chan, "break", (event.msec,))]
        if isinstance(event, Exited):
            self._channel(event.chan).exited = event
            return []
        if isinstance(event, ChannelClosed):
            return self._closed(event)
        if isinstance(event, ApprovalAnswered):
            return self._answered(event)
        if isinstance(event, Durable):
            return self._durable(event)
        if isinstance(event, ConnectionLost):
            return self._lost(event)
        if isinstance(event, Drain):
            self.draining = True
            if not any(c.state != "finished" for c in self.channels.values()):
                return self._end("appliance shutdown")
            return []
        if isinstance(event, Abort):
            return self._end(event.reason, "the appliance is shutting down")
        if isinstance(event, TimerFired):
            return []
        raise AssertionError(f"event {event!r} in state {self.state.name}")

    # -- logins ------------------------------------------------------------------------------

    def _auth(self, event: AuthBegan) -> Commands:
        if self.state is not State.LOGIN:
            return [RefuseAuth("appliance: one login per connection")]
        self.username = event.username
        self.client_version = event.client_version
        account = self.target.account_for(event.username)
        self.account = account.name
        self.recorder.account = account.name
        self._record_start()
        self.decider = SshDecider(
            self.services.policy,
            identity=self.identity,
            target=self.target.name,
            account=account.name,
            new_id=lambda: self.services.random_bytes(8).hex(),
        )
        try:
            key = self.services.read_secret(account.secret)
        except ApplianceError as exc:
            self.recorder.append(
                "ssh.upstream_refused",
                {"stage": "secret", "reason": str(exc), "user": event.username},
            )
            return self._end(
                f"service account secret unavailable: {exc}",
                f"the appliance has no usable key for target {self.target.name!r}",
                login=True,
            )
        self.state = State.CONNECTING
        return [
            ConnectUpstream(
                self.info.upstream,
                _host_name(self.target, self.info.upstream),
                account.user,
                key,
                self.options.known_hosts,
                self.target.connect_timeout,
            )
        ]

    def _upstream_ready(self, event: UpstreamConnected) -> Commands:
        if self.state is not State.CONNECTING:
            raise AssertionError(f"upstream connected in state {self.state.name}")
        account = self.target.account_for(self.account)
        self.recorder.append(
            "session.ready",
            {
                "user": self.recorder.mask(self.username),
                "upstream_user": account.user,
                "host_key": event.host_key,
                "server_version": event.server_version,
                "client_version": self.client_version,
                "auth_method": event.auth_method,
            },
        )
        self.state = State.OPEN
        return [AcceptAuth()]

    def _upstream_failed(self, event: UpstreamFailed) -> Commands:
        self.recorder.append(
            "ssh.upstream_refused",
            {"stage": event.stage, "reason": self.recorder.mask(event.why)},
        )
        name = self.target.name
        what = {
            "connect": f"cannot reach target {name!r} at {_addr(self.info.upstream)}",
            "host_key": f"target {name!r} presented a host key its known_hosts does not hold; refused",
            "auth": f"target {name!r} refused the service account {self.account!r}",
        }.get(event.stage, f"the SSH connection to target {name!r} failed")
        return self._end(
            f"upstream {event.stage} failed: {event.why}", f"{what}: {event.why}", login=True
        )

    # -- channels ------------------------------------------------------------------------------

    def _open(self, event: ChannelOpened) -> Commands:
        if self.state is not State.OPEN or self.draining:
            return [
                RefuseChannel(
                    event.chan,
                    OPEN_ADMINISTRATIVELY_PROHIBITED,
                    "appliance: not accepting channels now",
                )
            ]
        live = sum(1 for c in self.channels.values() if c.state != "finished")
        if live >= self.options.max_channels:
            self.refused_opens += 1
            if self.refused_opens == 1:
                self.recorder.refused(
                    "channel", f"more than {self.options.max_channels} channels open at once"
                )
            if self.refused_opens > self.options.max_refused_channels:
                self.recorder.append(
                    "protocol.error",
                    {
                        "side": "job",
                        "message": f"channel-open flood: {self.refused_opens} opens refused",
                    },
                )
                return [
                    RefuseChannel(
                        event.chan, OPEN_RESOURCE_SHORTAGE, "appliance: too many channels"
                    ),
                    *self._end("channel-open flood", "too many channels opened"),
                ]
            return [
                RefuseChannel(event.chan, OPEN_RESOURCE_SHORTAGE, "appliance: too many channels")
            ]
        channel = _Channel(event.chan, event.kind, started=self.services.monotonic())
        self.channels[event.chan] = channel
        if event.kind == "session":
            return []
        if event.kind != "direct-tcpip":
            del self.channels[event.chan]
            return [
                RefuseChannel(
                    event.chan,
                    OPEN_ADMINISTRATIVELY_PROHIBITED,
                    f"appliance: {event.kind} channels are not relayed",
                )
            ]
        channel.mode = "tunnel"
        channel.request = "forward"
        channel.destination = (event.host, event.port)
        channel.origin = (event.origin, 0)
        text = f"local forward to {event.host}:{event.port}"
        verdict = self._decide_channel(
            channel, forward_request("local", event.host, event.port), text
        )
        return self._after_decision(channel, verdict, text.encode())

    def _forwarded(self, event: ForwardedConnection) -> Commands:
        channel = _Channel(event.chan, "forwarded-tcpip", started=self.services.monotonic())
        channel.mode = "tunnel"
        channel.request = "forward"
        channel.state = "starting"
        channel.job_open = False
        channel.upstream_open = True
        self.channels[event.chan] = channel
        self.statements += 1
        channel.n = self.statements
        self.recorder.statement(
            channel.n,
            event.chan,
            "forwarded",
            f"connection to remote forward {event.host}:{event.port} from {event.origin}",
            {"decision": "allow", "rule": "(remote forward allowed)"},
        )
        return [
            PauseChannel(event.chan, "upstream", "starting", True),
            StartChannel(event.chan, "forwarded-tcpip", host=event.host, port=event.port),
        ]

    def _remote_forward(self, event: RemoteForwardRequested) -> Commands:
        text = f"remote forward {event.host}:{event.port}"
        if self.state is not State.OPEN or self.draining:
            return [AnswerRemoteForward(event.host, event.port, False)]
        _, verdict = self._decide(
            None, "forward", forward_request("remote", event.host, event.port), text
        )
        allowed = verdict.lets_through
        if verdict.action == "review" and verdict.enforced:
            # A global request has no channel to hold: it is answered now.
            self.recorder.refused("remote_forward", "a remote forward cannot wait for an approval")
        return [AnswerRemoteForward(event.host, event.port, allowed)]

    def _env(self, event: EnvRequested) -> Commands:
        channel = self._channel(event.chan)
        if _PASSED_ENV.fullmatch(event.name) and len(event.value) < 256:
            channel.env[event.name] = event.value
        else:
            channel.dropped_env.append(self.recorder.mask(event.name))
        return []

    def _forwarding(self, event: ForwardingRequested) -> Commands:
        channel = self._channel(event.chan)
        text = f"{event.kind} forwarding"
        _, verdict = self._decide(channel.chan, "forward", forward_request(event.kind), text)
        self.recorder.refused(
            f"{event.kind}_forward",
            "the appliance never relays agent or X11 forwarding"
            + ("" if verdict.lets_through else f" ({verdict.message or verdict.action})"),
            channel=event.chan,
        )
        return []

    def _session_request(self, event: SessionRequested) -> Commands:
        channel = self._channel(event.chan)
        if channel.state != "requests" or channel.kind != "session":
            return [
                FinishChannel(event.chan, "appliance: one request per channel\r\n", FAILED_STATUS)
            ]
        channel.request = event.request
        classification: Classification
        if event.request == "exec":
            channel.command = event.command
            classification = classify_exec(event.command)
            text = event.command
            channel.mode = _exec_mode(classification)
            if channel.mode == "scp":
                stmt = classification.statements[0]
                assert isinstance(stmt, SshOperation)
                channel.scp = ScpSource()
                channel.scp_side = "job" if "file_write" in stmt.classes else "upstream"
                channel.scp_path = stmt.paths[0] if stmt.paths else "."
                flags = "".join(a[1:] for a in stmt.arguments if a.startswith("-") and a != "--")
                # scp -t PATH: PATH is the file unless -d (several files) or -r says it is a
                # directory; scp -f PATH: PATH names the file (or the tree, with -r).
                channel.scp_into = bool(set(flags) & {"d", "r"}) or channel.scp_path.endswith("/")
        elif event.request == "shell":
            classification = shell_request(pty=channel.pty is not None)
            text = "shell"
        else:
            channel.subsystem = event.subsystem
            classification = subsystem_request(event.subsystem)
            text = f"subsystem {event.subsystem}"
            channel.mode = "sftp" if event.subsystem == "sftp" else "binary"
        verdict = self._decide_channel(channel, classification, text)
        return self._after_decision(channel, verdict, text.encode())

    def _decide(
        self,
        chan: int | None,
        request: str,
        classification: Classification,
        text: str,
        **extra: Any,
    ) -> tuple[int, SshVerdict]:
        """Decide an operation and record it as statement ``n``; (n, verdict)."""
        assert self.decider is not None
        verdict = self.decider.decide(classification)
        self.statements += 1
        n = self.statements
        self.recorder.statement(n, chan, request, text, verdict.record, **extra)
        return n, verdict

    def _decide_channel(
        self, channel: _Channel, classification: Classification, text: str
    ) -> SshVerdict:
        extra: dict[str, Any] = {}
        if channel.pty is not None:
            p = channel.pty
            extra["pty"] = {"term": p.term, "cols": p.cols, "rows": p.rows}
        if channel.env:
            extra["env"] = sorted(channel.env)
        if channel.dropped_env:
            extra["env_dropped"] = sorted(channel.dropped_env)
        channel.n, channel.verdict = self._decide(
            channel.chan, channel.request, classification, text, **extra
        )
        return channel.verdict

    def _after_decision(self, channel: _Channel, verdict: SshVerdict, exact: bytes) -> Commands:
        if verdict.lets_through:
            return self._start(channel)
        if verdict.action == "deny":
            return self._refuse(channel, verdict.message, {"decision": "deny"})
        # review: the channel waits, reading nothing, for the approver's signed answer
        assert self.decider is not None
        channel.state = "held"
        key = self._ask(channel.chan, "channel")
        channel.key = key
        fields = self.decider.approval_fields(
            session=self.id,
            verdict=verdict,
            text=self.recorder.mask(exact.decode("utf-8", "replace")),
            exact=exact,
        )
        return [PauseChannel(channel.chan, "job", "hold", True), AskApproval(key, fields)]

    def _ask(self, chan: int, kind: str) -> int:
        self._next_key += 1
        self._asked[self._next_key] = (chan, kind)
        return self._next_key

    def _start(self, channel: _Channel) -> Commands:
        """Open the channel's upstream twin; with ``ledger.durability: write-ahead``, only
        once its statement is on disk (an operation that only reads waits for nothing)."""
        verdict = channel.verdict
        reads_only = verdict is not None and set(verdict.record.get("classes", ())) <= _READS
        if self.services.write_ahead and not reads_only and channel.mode != "sftp":
            channel.state = "syncing"
            key = self._ask(channel.chan, "start")
            return [PauseChannel(channel.chan, "job", "starting", True), AwaitDurable(key)]
        return self._start_now(channel)

    def _start_now(self, channel: _Channel) -> Commands:
        channel.state = "starting"
        if channel.kind == "direct-tcpip":
            host, port = channel.destination
            return [
                PauseChannel(channel.chan, "job", "starting", True),
                StartChannel(
                    channel.chan, "direct-tcpip", host=host, port=port, origin=channel.origin
                ),
            ]
        pty = channel.pty
        return [
            PauseChannel(channel.chan, "job", "starting", True),
            StartChannel(
                channel.chan,
                channel.request,
                command=channel.command,
                subsystem=channel.subsystem,
                term=pty.term if pty is not None else None,
                size=(pty.cols, pty.rows, 0, 0) if pty is not None else (0, 0, 0, 0),
                modes=dict(pty.modes) if pty is not None else {},
                env=dict(channel.env),
            ),
        ]

    def _refuse(
        self,
        channel: _Channel,
        message: str,
        record: Mapping[str, Any],
        status: int = DENIED_STATUS,
    ) -> Commands:
        """The job's request is not run: it is told why, with exit status 126 (or
        ``status``)."""
        newline = "\r\n" if channel.pty is not None else "\n"
        channel.state = "finishing"
        if channel.n is not None:
            self.recorder.response(
                channel.n,
                {"channel": channel.chan, "refused": True, "exit_status": status, **record},
                None,
                0,
            )
            channel.n = None  # answered
        if channel.kind != "session":
            channel.state = "finished"  # a refused forward takes no channel slot
            return [
                RefuseChannel(
                    channel.chan, OPEN_ADMINISTRATIVELY_PROHIBITED, f"appliance: {message}"
                )
            ]
        return [FinishChannel(channel.chan, f"appliance: {message}{newline}", status)]

    def _started(self, event: ChannelStarted) -> Commands:
        channel = self._channel(event.chan)
        if channel.state in ("finishing", "finished"):
            return [CloseChannel(event.chan, "upstream")]  # the job left while it opened
        channel.state = "running"
        channel.upstream_open = True
        channel.job_open = True
        channel.started = self.services.monotonic()
        if channel.mode == "sftp":
            channel.sftp = SftpRelay(
                decide=lambda c, r: self._sftp_decide(channel, c, r),
                ask=lambda n, v, t, e: self._sftp_ask(channel, v, t, e),
                sync=(lambda: self._sftp_sync(channel)) if self.services.write_ahead else None,
                outcome=lambda n, s, m: self._sftp_outcome(channel, n, s, m),
                finished=lambda t, ok: self.recorder.transfer(t, complete=ok, chan=channel.chan),
                content_cap=self.options.max_transfer_content,
            )
        elif channel.mode in ("plain", "scp") and channel.kind == "session":
            pty = channel.pty
            info: dict[str, Any] = {"pty": pty is not None, "request": channel.request}
            if pty is not None:
                info.update(term=pty.term, cols=pty.cols, rows=pty.rows)
            channel.recording = self.recorder.stream(info) if channel.mode == "plain" else None
        elif channel.mode in ("binary", "tunnel"):
            channel.hashes = {"in": hashlib.sha256(), "out": hashlib.sha256()}
        out: Commands = []
        early, channel.early, channel.early_size = channel.early, [], 0
        for data in early:
            out.extend(self._data(Data(channel.chan, "job", data)))
        if channel.early_eof:
            out.append(ForwardEof(channel.chan, "upstream"))
        side: Side = "upstream" if channel.kind == "forwarded-tcpip" else "job"
        out.append(PauseChannel(channel.chan, side, "starting", False))
        return out

    def _start_failed(self, event: ChannelStartFailed) -> Commands:
        channel = self._channel(event.chan)
        if channel.n is not None:
            self.recorder.response(
                channel.n,
                {"channel": channel.chan, "error": self.recorder.mask(event.why)},
                None,
                0,
            )
            channel.n = None
        channel.state = "finishing"
        if channel.kind == "forwarded-tcpip":
            return [CloseChannel(channel.chan, "upstream")]
        if channel.kind != "session":
            return [CloseChannel(channel.chan, "job")]
        newline = "\r\n" if channel.pty is not None else "\n"
        message = f"appliance: target {self.target.name!r} refused the {channel.request}: {event.why}{newline}"
        return [FinishChannel(channel.chan, message, FAILED_STATUS)]

    # -- data ----------------------------------------------------------------------------------

    def _data(self, event: Data) -> Commands:
        channel = self.channels.get(event.chan)
        if channel is None or channel.state in ("finishing", "finished"):
            return []
        if channel.state != "running":
            if event.side != "job":
                return []
            channel.early.append(event.data)
            channel.early_size += len(event.data)
            if channel.early_size > MAX_EARLY:
                return self._channel_protocol_error(
                    channel, "job", f"more than {MAX_EARLY} bytes sent before the request ran"
                )
            return []
        data, side = event.data, event.side
        other: Side = "upstream" if side == "job" else "job"
        at = round((self.services.monotonic() - channel.started) * 1_000_000)
        if side == "job":
            channel.bytes_in += len(data)
            self.bytes_in += len(data)
        else:
            channel.bytes_out += len(data)
            self.bytes_out += len(data)
        mode = channel.mode
        if mode == "sftp":
            return self._sftp_data(channel, event)
        recording = channel.recording
        if recording is not None:
            kind = b"i" if side == "job" else (b"e" if event.stderr else b"o")
            recording.add(kind, at, data)
        elif mode == "scp" and side == channel.scp_side and channel.scp is not None:
            try:
                self._scp(channel, channel.scp.feed(data))
            except ScpProtocolError as exc:
                return self._channel_protocol_error(channel, side, str(exc))
        elif channel.hashes:
            channel.hashes["in" if side == "job" else "out"].update(data)
        return [Forward(event.chan, other, data, event.stderr)]

    def _scp(self, channel: _Channel, events: list[ScpEvent]) -> None:
        direction = "upload" if channel.scp_side == "job" else "download"
        for ev in events:
            if ev.kind == "file":
                path = _scp_path(channel.scp_path, channel.scp_into, channel.scp_side, ev)
                transfer = Transfer(
                    "scp", direction, path, cap=self.options.max_transfer_content, n=channel.n or 0
                )
                channel.scp_transfer = transfer
                channel.scp_offset = 0
            elif ev.kind == "data" and channel.scp_transfer is not None:
                channel.scp_transfer.add(channel.scp_offset, ev.data)
                channel.scp_offset += len(ev.data)
            elif ev.kind == "end" and channel.scp_transfer is not None:
                self.recorder.transfer(channel.scp_transfer, complete=True, chan=channel.chan)
                channel.scp_transfer = None

    def _sftp_data(self, channel: _Channel, event: Data) -> Commands:
        relay = channel.sftp
        if relay is None:
            return []
        if event.stderr:
            return [Forward(event.chan, "job", event.data, True)]
        was_held = relay.held
        try:
            if event.side == "job":
                relay.from_job(event.data)
            else:
                relay.from_upstream(event.data)
        except SftpProtocolError as exc:
            return self._channel_protocol_error(channel, event.side, str(exc))
        return self._sftp_flush(channel, was_held)

    def _sftp_flush(self, channel: _Channel, was_held: bool) -> Commands:
        relay = channel.sftp
        assert relay is not None
        to_job, to_up = relay.take()
        out: Commands = []
        if to_up:
            out.append(Forward(channel.chan, "upstream", to_up))
        if to_job:
            out.append(Forward(channel.chan, "job", to_job))
        if relay.held is not was_held:
            out.append(PauseChannel(channel.chan, "job", "hold", relay.held))
        out.extend(self._take_asks())
        return out

    def _sftp_decide(
        self, channel: _Channel, classification: Classification, req: SftpRequest
    ) -> tuple[int, SshVerdict]:
        text = classification.statements[0].text
        return self._decide(channel.chan, f"sftp.{req.name}", classification, text)

    def _sftp_ask(self, channel: _Channel, verdict: SshVerdict, text: str, exact: bytes) -> None:
        assert self.decider is not None
        key = self._ask(channel.chan, "sftp")
        channel.key = key
        fields = self.decider.approval_fields(
            session=self.id, verdict=verdict, text=self.recorder.mask(text), exact=exact
        )
        self._pending_asks.append(AskApproval(key, fields))

    def _sftp_sync(self, channel: _Channel) -> None:
        key = self._ask(channel.chan, "sftp")
        channel.key = key
        self._pending_asks.append(AwaitDurable(key))

    def _sftp_outcome(self, channel: _Channel, n: int, status: int, message: str) -> None:
        self.recorder.response(
            n,
            {"channel": channel.chan, "status": status, "message": self.recorder.mask(message)},
            None,
            0,
        )

    def _channel_protocol_error(self, channel: _Channel, side: str, message: str) -> Commands:
        self.recorder.append(
            "protocol.error",
            {"side": side, "channel": channel.chan, "message": self.recorder.mask(message)},
        )
        who = "the job" if side == "job" else f"target {self.target.name!r}"
        newline = "\r\n" if channel.pty is not None else "\n"
        return [
            FinishChannel(
                channel.chan,
                f"appliance: {who} broke the protocol: {message}{newline}",
                FAILED_STATUS,
            )
        ]

    # -- channel requests after the start ------------------------------------------------------

    def _window(self, event: WindowChanged) -> Commands:
        channel = self._channel(event.chan)
        if channel.recording is not None:
            at = round((self.services.monotonic() - channel.started) * 1_000_000)
            channel.recording.add(b"r", at, f"{event.cols}x{event.rows}".encode())
        if channel.state != "running":
            if channel.pty is not None:
                p = channel.pty
                channel.pty = PtyRequested(p.chan, p.term, event.cols, event.rows, p.modes)
            return []
        return [
            ForwardRequest(
                event.chan, "window-change", (event.cols, event.rows, event.width, event.height)
            )
        ]

    def _signal(self, event: SignalSent) -> Commands:
        channel = self._channel(event.chan)
        self.recorder.append(
            "ssh.signal", {"n": channel.n, "channel": event.chan, "signal": event.signal}
        )
        if channel.state != "running":
            return []
        return [ForwardRequest(event.chan, "signal", (event.signal,))]

    def _eof(self, event: ChannelEof) -> Commands:
        channel = self.channels.get(event.chan)
        if channel is None:
            return []
        if channel.state != "running":
            channel.early_eof = channel.early_eof or event.side == "job"
            return []
        return [ForwardEof(event.chan, "upstream" if event.side == "job" else "job")]

    def _closed(self, event: ChannelClosed) -> Commands:
        channel = self.channels.get(event.chan)
        if channel is None:
            return []
        out: Commands = []
        if event.side == "upstream":
            channel.upstream_open = False
            if channel.job_open and channel.state != "finishing":
                ex = channel.exited
                if channel.kind != "session":
                    out.append(CloseChannel(channel.chan, "job"))
                elif ex is not None and ex.signal is not None:
                    out.append(
                        FinishChannel(
                            channel.chan, signal=ex.signal, core=ex.core, signal_message=ex.message
                        )
                    )
                else:
                    out.append(
                        FinishChannel(channel.chan, status=ex.status if ex is not None else None)
                    )
        else:
            channel.job_open = False
            if channel.upstream_open:
                out.append(CloseChannel(channel.chan, "upstream"))
            if channel.key is not None:
                out.append(WithdrawApproval(channel.key))
                self._asked.pop(channel.key, None)
                channel.key = None
        if not channel.job_open and not channel.upstream_open:
            self._finish(channel)
        if self.draining and not any(c.state != "finished" for c in self.channels.values()):
            out.extend(self._end("appliance shutdown"))
        return out

    def _finish(self, channel: _Channel) -> None:
        """Record how the channel's operation ended (once)."""
        if channel.state == "finished":
            return
        channel.state = "finished"
        at = round((self.services.monotonic() - channel.started) * 1_000_000)
        if channel.sftp is not None:
            channel.sftp.close()
        if channel.scp_transfer is not None:
            self.recorder.transfer(channel.scp_transfer, complete=False, chan=channel.chan)
            channel.scp_transfer = None
        if channel.n is None:
            if channel.recording is not None:
                channel.recording.abort()
            return
        data: dict[str, Any] = {
            "channel": channel.chan,
            "duration_us": at,
            "bytes_in": channel.bytes_in,
            "bytes_out": channel.bytes_out,
        }
        ex = channel.exited
        if ex is not None:
            if ex.signal is not None:
                data["exit_signal"] = ex.signal
            else:
                data["exit_status"] = ex.status
        if channel.hashes:
            data["sha256_in"] = channel.hashes["in"].hexdigest()
            data["sha256_out"] = channel.hashes["out"].hexdigest()
        if channel.sftp is not None:
            data["operations"] = channel.sftp.operations
        if channel.approval is not None:
            data["approval"] = channel.approval
        self.recorder.response(channel.n, data, channel.recording, at)
        channel.recording = None
        channel.n = None

    # -- approvals -----------------------------------------------------------------------------

    def _answered(self, answer: ApprovalAnswered) -> Commands:
        asked = self._asked.pop(answer.key, None)
        if asked is None:
            return []
        chan, kind = asked
        channel = self.channels.get(chan)
        if channel is None or channel.state == "finished":
            return []
        channel.key = None
        if kind == "sftp":
            relay = channel.sftp
            assert relay is not None and self.decider is not None
            held = relay._held
            verdict = held.verdict if held is not None else None
            approved, message, record = (
                self.decider.answered(verdict, answer) if verdict is not None else (False, "", {})
            )
            if held is not None:
                self.recorder.append("approval.outcome", {"n": held.n, "channel": chan, **record})
            relay.answered(approved, message)
            return self._sftp_flush(channel, True)
        verdict = channel.verdict
        assert verdict is not None and self.decider is not None
        approved, message, record = self.decider.answered(verdict, answer)
        channel.approval = record
        if approved:
            return [PauseChannel(chan, "job", "hold", False), *self._start(channel)]
        return [
            PauseChannel(chan, "job", "hold", False),
            *self._refuse(channel, message, {"approval": record}),
        ]

    def _durable(self, event: Durable) -> Commands:
        """The write-ahead of a channel's statement (or of an SFTP operation) is answered:
        it runs, or it is refused without reaching the target."""
        asked = self._asked.pop(event.key, None)
        if asked is None:
            return []
        chan, kind = asked
        channel = self.channels.get(chan)
        if channel is None or channel.state in ("finishing", "finished"):
            return []
        message = f"the appliance cannot record this; it was not run: {event.why}"
        if kind == "sftp":
            assert channel.sftp is not None
            channel.sftp.answered(event.ok, message)
            return self._sftp_flush(channel, True)
        if event.ok:
            return self._start_now(channel)
        return self._refuse(channel, message, {"durable": False}, FAILED_STATUS)

    def _take_asks(self) -> Commands:
        asks, self._pending_asks = self._pending_asks, []
        return list(asks)

    # -- the end -------------------------------------------------------------------------------

    def _lost(self, event: ConnectionLost) -> Commands:
        if event.side == "job" and not self.started_recorded:
            why = event.why.lower()
            if "timeout" in why or "timed out" in why:
                key = "login timed out"
            else:
                key = "protocol error before login" if event.error else "disconnected before login"
            return self._end(key, detail=event.why)
        if event.side == "job":
            if event.error:
                self.recorder.append(
                    "protocol.error", {"side": "job", "message": self.recorder.mask(event.why)}
                )
            during = "" if self.state is State.OPEN else " during login"
            return self._end(
                f"job disconnected{during}: {event.why}"
                if event.error
                else f"job disconnected{during}"
            )
        if event.error:
            self.recorder.append(
                "protocol.error", {"side": "upstream", "message": self.recorder.mask(event.why)}
            )
        return self._end(
            f"target closed the connection: {event.why}",
            f"target {self.target.name!r} closed the connection",
        )

    def _end(
        self, reason: str, message: str = "", *, login: bool = False, detail: str | None = None
    ) -> Commands:
        """End the session once: the job told why (a login banner, or on each open
        channel's standard error), every channel's operation recorded, ``session.end``."""
        if self.state is State.ENDED:
            return []
        if not self.started_recorded:
            # Ended in the key exchange, before any login: a refusal (see ..refusals).
            self.state = State.ENDED
            connection_refused(
                self.services.refusals,
                self.services.ledger,
                self.info,
                protocol="ssh",
                target=self.target.name,
                reason=reason,
                detail=detail,
            )
            return [Log("info", f"ended: {reason}"), End(reason)]
        out: Commands = []
        if login and self.state in (State.LOGIN, State.CONNECTING):
            out.append(RefuseAuth(f"appliance: {message}\r\n"))
        for channel in list(self.channels.values()):
            if channel.state == "finished":
                continue
            if channel.job_open and channel.kind == "session" and message:
                newline = "\r\n" if channel.pty is not None else "\n"
                out.append(
                    FinishChannel(channel.chan, f"appliance: {message}{newline}", FAILED_STATUS)
                )
            if channel.key is not None:
                out.append(WithdrawApproval(channel.key))
            try:
                self._finish(channel)
            except ApplianceError:
                pass  # the ledger is failing; the session ends anyway
        self.state = State.ENDED
        data = {
            "reason": reason,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_us": round((self.services.monotonic() - self.started) * 1_000_000),
            "statements": self.statements,
            "channels": len(self.channels),
        }
        try:
            self.recorder.append("session.end", data)
        except ApplianceError:
            pass  # the ledger is failing: the daemon's watchdog stops the appliance
        return [*out, Log("info", f"ended: {reason}"), End(reason)]

    def _channel(self, chan: int) -> _Channel:
        channel = self.channels.get(chan)
        if channel is None:
            raise AssertionError(f"unknown channel {chan}")
        return channel


def _exec_mode(classification: Classification) -> str:
    """How an exec's streams are read: ``scp`` (its file stream), ``binary`` (rsync and
    git: counted and hashed), or ``plain`` (recorded, masked)."""
    statements = classification.statements
    if len(statements) != 1:
        return "plain"
    program = getattr(statements[0], "program", None)
    if program is None:
        return "plain"
    name = posixpath.basename(program)
    if name == "scp" and statements[0].classes & {"file_read", "file_write"}:
        return "scp"
    if name in _BINARY_PROGRAMS and statements[0].classes & {"file_read", "file_write"}:
        return "binary"
    return "plain"


def _scp_path(path: str, into: bool, source: str, ev: ScpEvent) -> str:
    """Where a file of an scp stream is on the target. Upload (``scp -t PATH``): PATH
    itself, or a file in it when it is a directory; download (``scp -f PATH``): PATH, or
    the file a pattern or a tree (-r) named."""
    if source == "job":
        return posixpath.join(path, *ev.dirs, ev.name) if into or ev.dirs else path
    if ev.dirs:
        return posixpath.join(path, *ev.dirs[1:], ev.name)
    if posixpath.basename(path) == ev.name:
        return path
    return posixpath.join(posixpath.dirname(path), ev.name)


def _host_name(target: Target, upstream: tuple[str, int]) -> str:
    """The name the target's known_hosts is searched for: the target's first host name if
    it has one, else the address connected to (asyncssh also matches the address)."""
    for address in target.addresses:
        if address.kind == "host":
            return address.value
    return upstream[0]


def _addr(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
