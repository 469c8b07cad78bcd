"""The sans-IO HTTPS session: TLS with the job, policy per request, credentials, recording.

Where this sits: the shell (:mod:`appliance.proxy.shell`) runs one :class:`HttpSession` per
connection to an ``http`` target and carries out the commands it returns. The codecs are
:mod:`appliance.protocols.http`; the CA and contexts come from :class:`HttpShared`.

1. TLS with the job (unless the target's port is 80): the handshake presents the leaf of
   the name the job asked for (SNI); a name the target does not protect fails it. ALPN
   ``h2`` picks :class:`~appliance.protocols.http.H2Server`, else HTTP/1.1.
2. The upstream connection (the shell marks it), TLS verified against the system store
   (or the target's ``tls.ca``), SNI = the job's name; HTTP/1.1.
3. Per request: ``Host``/``:authority`` must be the TLS name (421 otherwise: no HTTP/2
   connection coalescing to another name); the Kubernetes reading when the target is an
   API server; policy (:meth:`~appliance.policy.Policy.decide_http`): allow, deny with the
   API's own error (:mod:`.errors`), or hold until a signed approval; then the credential
   (:mod:`.credentials`) and the request goes upstream, one at a time, its body streamed.
4. Responses stream back (bounded: the shell's backpressure, HTTP/2 flow control); a 101
   switches the connection to a WebSocket relay whose messages are recorded
   (:mod:`.websocket`).
5. Every bad input (:class:`~appliance.protocols.http.PeerError`) ends this session alone:
   an error response when one can still be sent, a ``protocol.error`` entry, the end.

States (:class:`State`)::

    JOB_TLS --TLSEstablished(job)--> CONNECTING --UpstreamOpened--> UPSTREAM_TLS
    UPSTREAM_TLS --TLSEstablished(upstream)--> RELAY <--> (upstream closed: CONNECTING again)
    RELAY --101--> WEBSOCKET
    any --error, EOF, timer--> ENDED
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

from appliance.approvals.request import identity_key
from appliance.config import Target, format_endpoint
from appliance.errors import ApplianceError
from appliance.ledger.errors import LedgerUnavailable
from appliance.masking import MaskCounts
from appliance.masking._bodies import body_kind, mask_body
from appliance.policy import Decision, HttpRequestContext
from appliance.protocols.http import (
    Body,
    Closed,
    End,
    H1Client,
    H1Server,
    H2Server,
    KubeRequest,
    LocalProtocolError,
    PeerError,
    RequestHead,
    Reset,
    ResponseHead,
    Switched,
    header,
    parse_kube,
)
from appliance.proxy.commands import (
    NO_COMMANDS,
    Abort,
    ApprovalAnswered,
    AskApproval,
    ClearTimer,
    Command,
    Commands,
    ConnectionInfo,
    Drain,
    Eof,
    Event,
    Log,
    OpenUpstream,
    PauseReading,
    SetTimer,
    Side,
    StartTLS,
    TimerFired,
    TLSEstablished,
    TLSFailed,
    UpstreamFailed,
    UpstreamOpened,
)
from appliance.proxy.commands import (
    End as EndSession,
)
from appliance.proxy.http.ca import InterceptionCA, is_ip, name_matches
from appliance.proxy.http.credentials import (
    Applied,
    ChunkResigner,
    Credential,
    CredentialRefused,
    Injector,
)
from appliance.proxy.http.errors import error_body
from appliance.proxy.http.options import HttpOptions
from appliance.proxy.http.recording import BodyCapture, HttpRecorder
from appliance.proxy.http.websocket import WebSocketRecorder
from appliance.proxy.services import SessionServices

HANDSHAKE_TIMER = "handshake"
HEAD_TIMER = "head"
IDLE_TIMER = "idle"
HEAD_TIMEOUT = 20.0  # seconds for a request head once its first byte came (slowloris)
IDLE_TIMEOUT = 300.0  # seconds a connection may sit with nothing in flight
WINDOW_HIGH = 1 << 20  # HTTP/2 response bytes waiting for the job's window: stop reading upstream


class State(enum.Enum):
    JOB_TLS = "TLS handshake with the job"
    CONNECTING = "connecting to the target"
    UPSTREAM_TLS = "TLS handshake with the target"
    RELAY = "relaying requests"
    WEBSOCKET = "relaying a WebSocket"
    ENDED = "ended"


@dataclass
class HttpShared:
    """What all HTTPS sessions of one appliance share: the interception CA and the upstream
    TLS contexts (made before the CA joined the system store; see :mod:`.ca`)."""

    ca: InterceptionCA
    upstream_context: Callable[[Target], ssl.SSLContext]


@dataclass
class Exchange:
    """One request and its response."""

    n: int
    head: RequestHead
    kube: KubeRequest | None
    started: float
    state: str = "waiting"  # waiting | held | forwarding | responding | refused | done
    ended: bool = False  # the request's end has arrived from the job
    pending: deque[bytes] = field(default_factory=deque)
    pending_flow: int = 0
    request_body: BodyCapture | None = None
    response: ResponseHead | None = None
    response_body: BodyCapture | None = None
    responded: float | None = None
    decision: dict[str, Any] | None = None
    decision_obj: Decision | None = None
    approval: dict[str, Any] | None = None
    applied: Applied | None = None
    resigner: ChunkResigner | None = None
    discard: bool = False  # the job reset the stream: the response is read and dropped
    held_body: bytearray | None = None  # a response held whole to be masked toward the job
    masked_to_job: MaskCounts | None = None


class HttpSession:
    """One job connection to an ``http`` target; see the module docstring."""

    def __init__(
        self, services: SessionServices, shared: HttpShared, target: Target, info: ConnectionInfo
    ) -> None:
        if shared is None:
            raise ApplianceError("the http protocol needs its shared state (the interception CA)")
        self.services = services
        self.shared = shared
        self.target = target
        self.options: HttpOptions = target.options
        self.info = info
        self.id = info.session_id
        self.identity = dict(info.identity)
        self.state = State.JOB_TLS
        self.plaintext = info.upstream[1] == 80
        self.started = services.monotonic()
        self.codec: H1Server | H2Server | None = None
        self.client = H1Client()
        self.sni: str | None = None
        self.alpn: str | None = None
        self.account = target.accounts[0] if target.accounts else None
        self.injector: Injector | None = None
        masker = services.masker.for_target(target.name) if services.masker is not None else None
        paths = services.masker.config.json_paths if services.masker is not None else ()
        self.recorder = HttpRecorder(
            services.ledger,
            session=self.id,
            target=target.name,
            account=self.account.name if self.account else None,
            identity=self.identity,
            masker=masker,
            paths=tuple(paths),
            record_body=self.options.record_body,
        )
        masking = services.response_masking
        self.mask_to_job = bool(
            masking is not None and masker is not None and masking(target.name, self.identity)
        )
        self.exchanges: dict[int, Exchange] = {}  # by stream
        self.queue: deque[Exchange] = deque()
        self.active: Exchange | None = None
        self.upstream_ready = False
        self.upstream_open = False
        self.websocket: WebSocketRecorder | None = None
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self._to_job: list[bytes] = []
        self._to_up: list[bytes] = []
        self._asked: dict[int, Exchange] = {}
        self._timers: set[str] = set()
        self._paused_upstream = False
        self._draining = False
        self._close_after = False
        self._recorded_start = False

    # -- the shell's side ------------------------------------------------------------------

    def start(self) -> Commands:
        if self.plaintext:
            self.codec = H1Server()
            self._record_start()
            return [SetTimer(IDLE_TIMER, IDLE_TIMEOUT), *self._connect()]
        names = self.options.names
        default = next((n for n in names if not n.startswith("*.") and is_ip(n)), None)
        context = self.shared.ca.job_context(names, default=default)
        self._timers.add(HANDSHAKE_TIMER)
        return [SetTimer(HANDSHAKE_TIMER, 30.0), StartTLS("job", context)]

    def take_output(self) -> tuple[bytes, bytes]:
        to_job, to_up = b"".join(self._to_job), b"".join(self._to_up)
        self._to_job.clear()
        self._to_up.clear()
        self.bytes_out += len(to_job)
        return to_job, to_up

    def settle(self) -> None:
        """Nothing is deferred: requests are recorded as they go."""

    def receive(self, side: Side, data: bytes) -> Commands:
        if self.state is State.ENDED:
            return NO_COMMANDS
        try:
            if self.state is State.WEBSOCKET:
                return self._websocket(side, data)
            if side == "job":
                self.bytes_in += len(data)
                return self._from_job(data)
            return self._from_upstream(data)
        except PeerError as exc:
            return self._protocol_end(exc)
        except CredentialRefused as exc:  # pragma: no cover - handled per exchange
            return self._end(f"credential refused: {exc}")

    def handle(self, event: Event) -> Commands:
        if self.state is State.ENDED:
            return NO_COMMANDS
        try:
            return self._handle(event)
        except PeerError as exc:
            return self._protocol_end(exc)

    def crashed(self, exc: BaseException) -> Commands:
        if isinstance(exc, LedgerUnavailable):
            return self._end(
                f"ledger unavailable: {exc}",
                status=503,
                message="the appliance cannot record this session",
            )
        return self._end(
            f"appliance error: {type(exc).__name__}: {exc}",
            status=500,
            message="internal error in the appliance; the connection is closed",
        )

    # -- events ------------------------------------------------------------------------------

    def _handle(self, event: Event) -> Commands:
        state = self.state
        if isinstance(event, TLSEstablished) and event.side == "job" and state is State.JOB_TLS:
            return self._job_tls(event)
        if isinstance(event, TLSFailed) and event.side == "job":
            self._record_start(tls_error=event.why)
            return self._end(f"job TLS failed: {event.why}")
        if isinstance(event, UpstreamOpened) and state is State.CONNECTING:
            if self.target.tls.mode == "disable" or self.plaintext:
                return self._upstream_ready()
            self.state = State.UPSTREAM_TLS
            hostname = self.target.tls.server_name or self.sni or self.info.upstream[0]
            return [StartTLS("upstream", self.shared.upstream_context(self.target), hostname)]
        if isinstance(event, UpstreamFailed) and state is State.CONNECTING:
            return self._upstream_failed(f"cannot reach the target: {event.why}")
        if isinstance(event, TLSEstablished) and event.side == "upstream":
            return self._upstream_ready()
        if isinstance(event, TLSFailed) and event.side == "upstream":
            return self._upstream_failed(f"TLS to the target failed: {event.why}")
        if isinstance(event, ApprovalAnswered):
            return self._approval_answered(event)
        if isinstance(event, Eof):
            return self._eof(event.side, event.lost)
        if isinstance(event, TimerFired):
            return self._timer(event.name)
        if isinstance(event, Drain):
            self._draining = True
            if self.active is None and not self.queue and not self._asked:
                return self._end("appliance shutdown")
            return [PauseReading("job", "drain", True)]
        if isinstance(event, Abort):
            return self._end(event.reason, status=503, message="the appliance is shutting down")
        raise AssertionError(f"event {event!r} in state {state.name}")

    def _job_tls(self, event: TLSEstablished) -> Commands:
        self._timers.discard(HANDSHAKE_TIMER)
        self.sni = (event.server_name or "").lower() or None
        if self.sni is None:
            ips = [n for n in self.options.names if is_ip(n)]
            self.sni = ips[0] if ips else None
        self.alpn = event.alpn
        if event.alpn == "h2":
            codec = H2Server()
            self.codec = codec
            self._to_job.append(codec.data_to_send())
        else:
            self.codec = H1Server()
        self._record_start()
        self._timers.add(IDLE_TIMER)
        try:
            self._credentials()  # now: the secret is known to the recorder before any entry
        except ApplianceError:
            pass  # told to the job with its first request (_pump)
        return [ClearTimer(HANDSHAKE_TIMER), SetTimer(IDLE_TIMER, IDLE_TIMEOUT), *self._connect()]

    def _connect(self) -> list[Command]:
        self.state = State.CONNECTING
        self.upstream_open = True
        self.upstream_ready = False
        return [OpenUpstream(self.info.upstream, self.target.connect_timeout)]

    def _upstream_ready(self) -> Commands:
        self.state = State.RELAY
        self.upstream_ready = True
        self.client = H1Client()
        return self._pump()

    def _upstream_failed(self, why: str) -> Commands:
        self.upstream_open = False
        commands: list[Command] = [Log("warning", why)]
        for ex in [*([self.active] if self.active else []), *self.queue]:
            commands += self._refuse(
                ex, 502, f"the appliance {why} ({self.target.name!r})", rule=None
            )
        self.active = None
        self.queue.clear()
        return [*commands, *self._end(f"upstream: {why}")]

    def _eof(self, side: Side, lost: str | None) -> Commands:
        if side == "job":
            if self.codec is not None and self.state is not State.WEBSOCKET:
                try:
                    self.codec.receive_data(b"")
                except PeerError:
                    pass
            return self._end(
                "job closed the connection" if lost is None else f"job connection lost: {lost}"
            )
        # The upstream closed: a close-delimited response ends here; otherwise a response
        # in flight is lost; between requests the next one opens a new connection.
        self.upstream_ready = False
        self.upstream_open = False
        if self.state is State.WEBSOCKET:
            return self._end("the target closed the WebSocket connection")
        commands: list[Command] = []
        if self.active is not None:
            try:
                commands += self._upstream_events(self.client.receive_data(b""))
            except PeerError:
                pass
            if self.active is not None:
                ex = self.active
                self.active = None
                if ex.response is None:
                    commands += self._refuse(
                        ex, 502, "the target closed the connection before it answered", rule=None
                    )
                    return [*commands, *self._end("the target closed the connection mid-request")]
                return [*commands, *self._end("the target closed the connection mid-response")]
        if self.queue:
            commands += self._connect()
        return commands

    def _timer(self, name: str) -> Commands:
        self._timers.discard(name)
        if name == HANDSHAKE_TIMER and self.state is State.JOB_TLS:
            return self._end("TLS handshake timed out")
        if name == HEAD_TIMER:
            return self._protocol_end(
                PeerError("the request head did not arrive in time", status=408)
            )
        if name == IDLE_TIMER:
            if (
                self.active is None
                and not self.queue
                and not self._asked
                and self.state is not State.WEBSOCKET
            ):
                return self._end("idle")
            self._timers.add(IDLE_TIMER)
            return [SetTimer(IDLE_TIMER, IDLE_TIMEOUT)]
        return NO_COMMANDS

    # -- the job's requests ------------------------------------------------------------------

    def _from_job(self, data: bytes) -> Commands:
        codec = self.codec
        if codec is None:
            raise PeerError("data before the TLS handshake")
        commands: list[Command] = []
        for ev in codec.receive_data(data):
            if isinstance(ev, RequestHead):
                commands += self._request(ev)
            elif isinstance(ev, Body):
                commands += self._request_body(ev)
            elif isinstance(ev, End):
                commands += self._request_end(ev.stream)
            elif isinstance(ev, Reset):
                commands += self._reset(ev.stream)
            elif isinstance(ev, Switched):  # pragma: no cover - only after a 101, in WEBSOCKET
                pass
            elif isinstance(ev, Closed):
                return [*commands, *self._end("job closed the connection")]
        if isinstance(codec, H2Server):
            self._to_job.append(codec.data_to_send())
            if self._paused_upstream and codec.buffered < WINDOW_HIGH // 2:
                self._paused_upstream = False
                commands.append(PauseReading("upstream", "window", False))
        else:
            commands += self._head_timer(codec)
        return commands

    def _head_timer(self, codec: H1Server) -> list[Command]:
        if codec.head_pending and HEAD_TIMER not in self._timers:
            self._timers.add(HEAD_TIMER)
            return [SetTimer(HEAD_TIMER, HEAD_TIMEOUT)]
        if not codec.head_pending and HEAD_TIMER in self._timers:
            self._timers.discard(HEAD_TIMER)
            return [ClearTimer(HEAD_TIMER)]
        return []

    def _request(self, head: RequestHead) -> Commands:
        self.requests += 1
        n = self.requests
        kube = parse_kube(head.method, head.target) if self.options.kubernetes else None
        ex = Exchange(n, head, kube, self.services.monotonic())
        ex.request_body = self.recorder.capture(head.headers) if head.body else None
        self.exchanges[head.stream] = ex
        host = _host(head.authority)
        refusal: tuple[int, str, str] | None = None
        if self.plaintext and self.options.plaintext == "refuse":
            refusal = (
                403,
                "(built-in) plaintext",
                f"plain HTTP to target {self.target.name!r} is refused: use https",
            )
        elif not self.plaintext and (self.sni is None or host != self.sni):
            refusal = (
                421,
                "(built-in) host-is-sni",
                f"this connection serves {self.sni!r} only (the TLS name); open a connection for {host!r}",
            )
        elif head.upgrade is not None and head.upgrade != "websocket":
            refusal = (400, "(built-in) upgrade", f"upgrade to {head.upgrade!r} is not relayed")
        elif self.plaintext and not any(name_matches(p, host) for p in self.options.names):
            refusal = (
                421,
                "(built-in) host",
                f"{host!r} is not a name of target {self.target.name!r}",
            )
        if refusal is not None:
            status, rule, message = refusal
            ex.decision = {
                "decision": "deny",
                "rule": rule,
                "enforced": True,
                "decision_id": self._new_id(),
            }
            self._record_request(ex)
            self.recorder.append("policy.decision", {"n": n, **ex.decision})
            return self._refuse(ex, status, message, rule=rule)
        decision = self._decide(ex)
        self._record_request(ex)
        record = ex.decision or {}
        if record.get("decision") != "allow" or record.get("enforced") is False:
            self.recorder.append("policy.decision", {"n": n, **record})
        if decision is not None and not decision.lets_through:
            if decision.action == "deny":
                return self._refuse(ex, 403, _denial_message(decision, ex), rule=decision.rule)
            ex.state = "held"
            self._asked[n] = ex
            commands: list[Command] = [AskApproval(n, self._approval_fields(ex, decision))]
            if isinstance(self.codec, H1Server):
                commands.append(PauseReading("job", "hold", True))
            return commands
        self.queue.append(ex)
        return self._pump()

    def _decide(self, ex: Exchange) -> Decision | None:
        policy = self.services.policy
        head = ex.head
        if policy is None:
            ex.decision = {"decision": "allow", "rule": "(no policy)"}
            return None
        query = {k: tuple(v) for k, v in parse_qs(head.query, keep_blank_values=True).items()}
        decision = policy.decide_http(
            HttpRequestContext(
                identity=self.identity,
                target=self.target.name,
                account=self.account.name if self.account else "",
                method=head.method,
                host=_host(head.authority),
                path=head.path,
                query=query,
                headers=dict(head.headers),
                kube=ex.kube,
            )
        )
        record = dict(decision.to_record())
        record["decision"] = decision.action
        for key in ("statement", "statements", "classes"):
            record.pop(key, None)
        if decision.action != "allow" or not decision.enforced:
            record["decision_id"] = self._new_id()
        ex.decision = record
        ex.decision_obj = decision
        return decision

    def _request_body(self, ev: Body) -> Commands:
        ex = self.exchanges.get(ev.stream)
        if ex is None:
            self._ack(ev.stream, ev.flow)
            return NO_COMMANDS
        if ex.request_body is not None:
            ex.request_body.add(ev.data)
        if ex.state == "forwarding":
            self._forward_body(ex, ev.data)
            self._ack(ev.stream, ev.flow)
        elif ex.state in ("refused", "done", "responding"):
            self._ack(ev.stream, ev.flow)  # dropped: the request was answered already
        else:
            ex.pending.append(ev.data)
            ex.pending_flow += ev.flow
        return NO_COMMANDS

    def _request_end(self, stream: int) -> Commands:
        ex = self.exchanges.get(stream)
        if ex is None:
            return NO_COMMANDS
        ex.ended = True
        if ex.state == "forwarding":
            self._end_request_upstream(ex)
        elif ex.state in ("refused", "done"):
            self._forget(ex)
        return NO_COMMANDS

    def _reset(self, stream: int) -> Commands:
        ex = self.exchanges.get(stream)
        if ex is None:
            return NO_COMMANDS
        if ex in self.queue:
            self.queue.remove(ex)
            self._finish_record(ex, error="reset by the job before it was sent")
            self._forget(ex)
        elif ex.state == "held":
            ex.state = "refused"
        elif ex is self.active:
            if not ex.ended:
                # Half a request went upstream; HTTP/1.1 cannot take it back.
                return self._end("the job reset a stream in the middle of its request body")
            ex.discard = True
        return NO_COMMANDS

    def _ack(self, stream: int, flow: int) -> None:
        if flow and isinstance(self.codec, H2Server):
            self._to_job.append(self.codec.ack(stream, flow))

    # -- forwarding --------------------------------------------------------------------------

    def _pump(self) -> Commands:
        """Send the next allowed request upstream when nothing is in flight there."""
        commands: list[Command] = []
        while self.active is None and self.queue and self.state is not State.ENDED:
            if not self.upstream_ready:
                if not self.upstream_open:
                    commands += self._connect()
                return commands
            ex = self.queue.popleft()
            try:
                applied = self._credentials().apply(ex.head, now=self._now())
            except CredentialRefused as exc:
                commands += self._refuse(ex, 400, str(exc), rule="(built-in) credential")
                continue
            except ApplianceError as exc:
                commands += self._refuse(
                    ex, 502, f"the appliance has no usable credential: {exc}", rule=None
                )
                continue
            if ex.head.upgrade:
                # No WebSocket extension (compression) is negotiated: every frame stays
                # readable for the record (.websocket).
                applied.headers = tuple(
                    h for h in applied.headers if h[0] != "sec-websocket-extensions"
                )
            ex.applied = applied
            ex.resigner = applied.resigner
            ex.state = "forwarding"
            self.active = ex
            self._to_up.append(self.client.request(ex.head, applied.headers))
            while ex.pending:
                self._forward_body(ex, ex.pending.popleft())
            self._ack(ex.head.stream, ex.pending_flow)
            ex.pending_flow = 0
            if ex.ended:
                self._end_request_upstream(ex)
        if self._draining and self.active is None and not self.queue and not self._asked:
            commands += self._end("appliance shutdown")
        return commands

    def _forward_body(self, ex: Exchange, data: bytes) -> None:
        if ex.resigner is not None:
            data = ex.resigner.feed(data)
        self._to_up.append(self.client.body(data))

    def _end_request_upstream(self, ex: Exchange) -> None:
        self._to_up.append(self.client.end())
        ex.state = "responding" if ex.response is None else ex.state

    def _credentials(self) -> Injector:
        if self.injector is None:
            credential = None
            if self.account is not None and self.options.auth.type not in ("none", "client_cert"):
                secret = self.services.read_secret(self.account.secret)
                credential = Credential(self.account.user, secret.strip())
                self.recorder.add_secret(credential.secret)
                if self.options.auth.type == "basic":
                    import base64

                    pair = f"{credential.user}:{credential.secret}".encode()
                    self.recorder.add_secret(base64.b64encode(pair).decode())
            self.injector = Injector(self.options.auth, credential)
        return self.injector

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.services.clock(), datetime.UTC)

    # -- the target's responses -------------------------------------------------------------

    def _from_upstream(self, data: bytes) -> Commands:
        return self._upstream_events(self.client.receive_data(data))

    def _upstream_events(self, events: list[Any]) -> Commands:
        commands: list[Command] = []
        codec = self.codec
        assert codec is not None
        for i, ev in enumerate(events):
            ex = self.active
            if isinstance(ev, Closed | Switched):
                continue
            if ex is None:
                raise PeerError(
                    "the target answered a request it was not sent", side="upstream", status=502
                )
            stream = ex.head.stream
            if isinstance(ev, ResponseHead):
                if ev.status == 101:
                    after = events[i + 1] if i + 1 < len(events) else None
                    leftover = after.data if isinstance(after, Switched) else b""
                    return [*commands, *self._switch(ex, ev, leftover)]
                if ev.informational:
                    if not ex.discard and isinstance(codec, H1Server) and ev.status == 100:
                        self._to_job.append(
                            codec.respond(ResponseHead(stream, 100, (), "Continue"))
                        )
                    elif not ex.discard and isinstance(codec, H2Server) and ev.status == 100:
                        self._to_job.append(codec.respond(ResponseHead(stream, 100, ())))
                    continue
                ex.response = ev
                ex.responded = self.services.monotonic()
                ex.response_body = self.recorder.capture(ev.headers) if ev.body else None
                if self.mask_to_job and ev.body and _maskable(ev.headers):
                    ex.held_body = bytearray()  # sent at its end, masked (Content-Length fixed)
                elif not ex.discard:
                    head = ResponseHead(stream, ev.status, ev.headers, ev.reason, body=ev.body)
                    if isinstance(codec, H1Server):
                        self._to_job.append(codec.respond(head, close=self._draining))
                    else:
                        self._to_job.append(codec.respond(head))
            elif isinstance(ev, Body):
                if ex.response_body is not None:
                    ex.response_body.add(ev.data)
                if ex.held_body is not None:
                    ex.held_body += ev.data
                    if len(ex.held_body) > self.services.max_result_bytes:
                        # Fail closed: a response that cannot be masked whole is not sent.
                        self.active = None
                        ex.held_body = None
                        ex.response = None
                        commands += self._refuse(
                            ex,
                            502,
                            "the response is too large to be masked for this job",
                            rule=None,
                        )
                        return [*commands, *self._end("a response too large to mask")]
                elif not ex.discard:
                    self._to_job.append(codec.body(stream, ev.data))
                    if (
                        isinstance(codec, H2Server)
                        and codec.buffered > WINDOW_HIGH
                        and not self._paused_upstream
                    ):
                        self._paused_upstream = True
                        commands.append(PauseReading("upstream", "window", True))
            elif isinstance(ev, End):
                if ex.held_body is not None and not ex.discard:
                    self._send_masked(ex)
                elif not ex.discard:
                    self._to_job.append(codec.end(stream))
                self.active = None
                ex.state = "done"
                self._finish_record(ex)
                if ex.ended:
                    self._forget(ex)
                if not self.client.reusable:
                    self.upstream_ready = False
                    self.upstream_open = False
                if isinstance(codec, H1Server) and not codec.keep_alive and codec.idle:
                    return [*commands, *self._end("the job asked to close the connection")]
                commands += self._pump()
        return commands

    def _send_masked(self, ex: Exchange) -> None:
        """A held response, masked, with its Content-Length fixed."""
        codec, resp, body = self.codec, ex.response, ex.held_body
        assert codec is not None and resp is not None and body is not None
        masker = self.recorder.masker
        assert masker is not None
        counts = MaskCounts()
        content_type = header(resp.headers, "content-type")
        masked = mask_body(masker, bytes(body), content_type, counts, paths=self.recorder.paths)
        out = bytes(body) if masked is None else masked.encode()
        ex.masked_to_job = counts
        headers = tuple(
            (k, v) for k, v in resp.headers if k not in ("content-length", "etag", "content-md5")
        )
        head = ResponseHead(
            ex.head.stream, resp.status, (*headers, ("content-length", str(len(out)))), resp.reason
        )
        if isinstance(codec, H1Server):
            self._to_job.append(codec.respond(head, close=self._draining))
        else:
            self._to_job.append(codec.respond(head))
        self._to_job.append(codec.body(ex.head.stream, out))
        self._to_job.append(codec.end(ex.head.stream))
        ex.held_body = None

    def _switch(self, ex: Exchange, head: ResponseHead, leftover_up: bytes) -> Commands:
        """A 101: the connection leaves HTTP; WebSocket messages are relayed and recorded."""
        codec = self.codec
        if not isinstance(codec, H1Server):
            raise PeerError("101 Switching Protocols on HTTP/2", side="upstream", status=502)
        ex.response = head
        ex.responded = self.services.monotonic()
        self._to_job.append(
            codec.respond(
                ResponseHead(
                    ex.head.stream, 101, _switch_headers(head.headers), "Switching Protocols"
                )
            )
        )
        self._finish_record(ex)
        ex.state = "done"
        self._forget(ex)
        self.active = None
        self.state = State.WEBSOCKET
        subprotocol = header(head.headers, "sec-websocket-protocol")
        self.websocket = WebSocketRecorder(
            self.recorder, ex.n, subprotocol, kube=self.options.kubernetes
        )
        commands: list[Command] = []
        leftover_job = codec.take_switched()
        if leftover_job:
            commands += self._websocket("job", leftover_job)
        if leftover_up:
            commands += self._websocket("upstream", leftover_up)
        if HEAD_TIMER in self._timers:
            self._timers.discard(HEAD_TIMER)
            commands.append(ClearTimer(HEAD_TIMER))
        return commands

    def _websocket(self, side: Side, data: bytes) -> Commands:
        ws = self.websocket
        assert ws is not None
        if side == "job":
            self.bytes_in += len(data)
            ws.feed("c2s", data)
            self._to_up.append(data)
        else:
            ws.feed("s2c", data)
            self._to_job.append(data)
        return NO_COMMANDS

    # -- approvals ---------------------------------------------------------------------------

    def _approval_fields(self, ex: Exchange, decision: Decision) -> dict[str, Any]:
        head = ex.head
        counts = MaskCounts()
        what = f"{head.method} https://{head.authority}{self.recorder.url(head.target, counts)}"
        if ex.kube is not None and ex.kube.resource_request:
            k = ex.kube
            what += f" (Kubernetes {k.verb} {k.resource}{'/' + k.name if k.name else ''}"
            what += f" in {k.namespace})" if k.namespace else ")"
        digest = hashlib.sha256(
            f"{head.method} {head.authority} {head.target}".encode()
        ).hexdigest()
        return {
            "session": self.id,
            "identity": identity_key(self.identity),
            "target": self.target.name,
            "account": self.account.name if self.account else "-",
            "rule": decision.rule,
            "approvers": decision.approvers,
            "statement": what,
            "statement_sha256": digest,
            "window": timedelta(seconds=decision.window),
            "timeout": timedelta(seconds=decision.timeout),
        }

    def _approval_answered(self, answer: ApprovalAnswered) -> Commands:
        ex = self._asked.pop(answer.key, None)
        if ex is None:
            return NO_COMMANDS
        commands: list[Command] = []
        if isinstance(self.codec, H1Server):
            commands.append(PauseReading("job", "hold", False))
        outcome = answer.outcome
        decision_id = (ex.decision or {}).get("decision_id")
        if answer.error is not None or outcome is None:
            ex.approval = {"outcome": "unavailable", "error": answer.error}
            return [
                *commands,
                *self._refuse(
                    ex,
                    403,
                    f"this request needs an approval, and none can be asked: {answer.error}",
                    rule=None,
                    decision_id=decision_id,
                ),
            ]
        ex.approval = {
            "request": answer.request,
            "outcome": outcome.verdict.value,
            "approver": outcome.approver,
        }
        if ex.state == "refused":  # the job gave up meanwhile
            self._finish_record(ex, error="reset by the job while held")
            return commands
        if not outcome.granted:
            return [
                *commands,
                *self._refuse(ex, 403, outcome.message(), rule=None, decision_id=decision_id),
            ]
        ex.state = "waiting"
        self.queue.append(ex)
        return [*commands, *self._pump()]

    # -- refusing and recording -------------------------------------------------------------

    def _flavor(self) -> str:
        if self.options.kubernetes:
            return "kubernetes"
        if self.options.auth.type == "aws_sigv4" and self.options.auth.service == "s3":
            return "s3"
        return "json"

    def _refuse(
        self,
        ex: Exchange,
        status: int,
        message: str,
        *,
        rule: str | None,
        decision_id: str | None = None,
    ) -> list[Command]:
        """Answer ``ex`` with an error in the API's own shape, without forwarding it."""
        codec = self.codec
        ex.state = "refused"
        decision_id = decision_id or (ex.decision or {}).get("decision_id")
        details = None
        if ex.kube is not None and ex.kube.resource_request:
            details = {"kind": ex.kube.resource}
            if ex.kube.name:
                details["name"] = ex.kube.name
        headers, body = error_body(
            status, message, flavor=self._flavor(), decision=decision_id, details=details
        )
        if decision_id:
            headers = (*headers, ("x-appliance-decision", decision_id))
        head = ResponseHead(ex.head.stream, status, headers, body=True)
        ex.response = head
        ex.responded = self.services.monotonic()
        ex.response_body = self.recorder.capture(headers)
        ex.response_body.add(body)
        commands: list[Command] = []
        if isinstance(codec, H1Server):
            # The body of a refused request is not read: the connection closes after the answer.
            close = not ex.ended
            self._to_job.append(codec.respond(head, close=close))
            self._to_job.append(codec.body(ex.head.stream, body))
            self._to_job.append(codec.end(ex.head.stream))
            if close or not codec.keep_alive:
                self._close_after = True
        elif isinstance(codec, H2Server):
            self._to_job.append(codec.respond(head))
            self._to_job.append(codec.body(ex.head.stream, body))
            self._to_job.append(codec.end(ex.head.stream))
            self._ack(ex.head.stream, ex.pending_flow)
            ex.pending.clear()
            ex.pending_flow = 0
        self._finish_record(ex)
        if ex.ended:
            self._forget(ex)
        if self._close_after and isinstance(codec, H1Server):
            commands += self._end(f"refused request {ex.n} with its body unread")
        return commands

    def _forget(self, ex: Exchange) -> None:
        if self.exchanges.get(ex.head.stream) is ex:
            del self.exchanges[ex.head.stream]

    def _record_start(self, tls_error: str | None = None) -> None:
        if self._recorded_start:
            return
        self._recorded_start = True
        start: dict[str, Any] = {
            "protocol": "http",
            "client": format_endpoint(*self.info.client),
            "server": format_endpoint(*self.info.upstream),
            "listener": format_endpoint(*self.info.listener),
            "tls": not self.plaintext,
            "sni": self.sni,
            "alpn": self.alpn,
            "kubernetes": self.options.kubernetes,
            "credential": self.options.auth.type,
        }
        if tls_error is not None:
            start["tls_error"] = tls_error
        policy = self.services.policy
        if policy is not None:
            start["policy"] = policy.start_record()
            start["policy_mode"] = policy.mode
        self.recorder.append("session.start", start)

    def _record_request(self, ex: Exchange) -> None:
        head = ex.head
        counts = MaskCounts()
        secret = (
            self.injector.header_name if self.injector is not None else self.options.auth.header
        )
        data: dict[str, Any] = {
            "n": ex.n,
            "stream": head.stream,
            "method": head.method,
            "scheme": "http" if self.plaintext else "https",
            "host": head.authority,
            "url": self.recorder.url(head.target, counts),
            "http_version": head.http_version,
            "headers": self.recorder.headers(head.headers, counts, secret=secret),
            "decision": ex.decision,
        }
        if ex.kube is not None:
            data["kube"] = ex.kube.to_record()
        if head.upgrade:
            data["upgrade"] = head.upgrade
        if counts:
            data["masking"] = counts.as_dict()
        self.recorder.append("http.request", data)

    def _finish_record(self, ex: Exchange, *, error: str | None = None) -> None:
        now = self.services.monotonic()
        counts = MaskCounts()
        data: dict[str, Any] = {"n": ex.n, "duration_us": round((now - ex.started) * 1e6)}
        blobs: dict[str, Any] = {}
        resp = ex.response
        if resp is not None:
            data["status"] = resp.status
            data["reason"] = resp.reason
            data["headers"] = self.recorder.headers(resp.headers, counts)
            if ex.responded is not None:
                data["wait_us"] = max(0, round((ex.responded - ex.started) * 1e6))
        if error is not None:
            data["error"] = error
        if ex.applied is not None:
            data["credential"] = {
                "removed": list(ex.applied.removed),
                "added": self.options.auth.type,
                **({"chunks_resigned": True} if ex.resigner is not None else {}),
            }
        if ex.approval is not None:
            data["approval"] = ex.approval
        if ex.masked_to_job is not None:
            data["masked_to_job"] = ex.masked_to_job.as_dict()
        for key, capture in (("request_body", ex.request_body), ("body", ex.response_body)):
            summary, pending = self.recorder.body(capture)
            if summary is not None:
                data[key] = summary
                if pending is not None:
                    blobs[f"{key}_blob"] = pending
        if counts:
            data["masking"] = counts.as_dict()
        self.recorder.append("http.response", data, blobs or None)

    def _protocol_end(self, exc: PeerError) -> Commands:
        self.recorder.append(
            "protocol.error",
            {"side": exc.side, "status": exc.status, "message": self.recorder.mask(exc.message)},
        )
        if exc.side == "job":
            return self._end(
                f"protocol violation by the job: {exc.message}",
                status=exc.status,
                message=exc.message,
            )
        return self._end(
            f"protocol violation by the target: {exc.message}",
            status=502,
            message=f"the target broke the protocol: {exc.message}",
        )

    def _end(
        self, reason: str, *, status: int | None = None, message: str | None = None
    ) -> Commands:
        """End the session once: a last error to the job when HTTP allows one, the entries
        of what was in flight, and ``session.end``."""
        if self.state is State.ENDED:
            return NO_COMMANDS
        codec = self.codec
        if (
            status is not None
            and message is not None
            and codec is not None
            and self.state is not State.WEBSOCKET
        ):
            self._last_words(codec, status, message)
        for ex in list(self.exchanges.values()):
            if ex.state in ("waiting", "held", "forwarding", "responding"):
                try:
                    self._finish_record(ex, error=f"session ended: {reason}")
                except ApplianceError:
                    pass
        if self.websocket is not None:
            self.websocket.finish()
        self.state = State.ENDED
        self._record_start()
        data = {
            "reason": reason,
            "requests": self.requests,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out + sum(len(b) for b in self._to_job),
            "duration_us": round((self.services.monotonic() - self.started) * 1_000_000),
        }
        try:
            self.recorder.append("session.end", data)
        except ApplianceError:
            pass
        return [Log("info", f"ended: {reason}"), EndSession(reason)]

    def _last_words(self, codec: H1Server | H2Server, status: int, message: str) -> None:
        headers, body = error_body(status, message, flavor=self._flavor())
        if isinstance(codec, H2Server):
            self._to_job.append(codec.goaway())
            return
        # HTTP/1.1: an answer only where the job will read it as the answer to the request
        # it belongs to; a response already under way can only be cut short.
        waiting = sorted(
            (ex for ex in self.exchanges.values() if ex.state != "done"),
            key=lambda e: e.head.stream,
        )
        if any(ex.response is not None for ex in waiting):
            return
        if not waiting:
            self._raw_answer(status, headers, body)  # a head that never parsed
            return
        stream = waiting[0].head.stream
        try:
            self._to_job.append(codec.respond(ResponseHead(stream, status, headers), close=True))
            self._to_job.append(codec.body(stream, body))
            self._to_job.append(codec.end(stream))
        except LocalProtocolError:
            return

    def _raw_answer(self, status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> None:
        """An answer to a request that never parsed (a bad head, a timeout)."""
        lines = [
            f"HTTP/1.1 {status} {_REASON.get(status, 'Error')}",
            *(f"{k}: {v}" for k, v in headers),
            "connection: close",
        ]
        self._to_job.append(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def _new_id(self) -> str:
        return self.services.random_bytes(8).hex()


_REASON = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _maskable(headers: tuple[tuple[str, str], ...]) -> bool:
    """A response body the appliance can mask toward the job: text it can read, not
    compressed (a compressed or binary body passes as it is; the ledger's copy is masked)."""
    encoding = (header(headers, "content-encoding") or "identity").lower()
    return encoding == "identity" and body_kind(header(headers, "content-type")) != "binary"


def _switch_headers(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    keep = ("upgrade", "sec-websocket-accept", "sec-websocket-protocol", "sec-websocket-extensions")
    return tuple((k, v) for k, v in headers if k in keep)


def _denial_message(decision: Decision, ex: Exchange) -> str:
    message = f"request denied by policy rule {decision.rule!r}"
    if decision.message and decision.message != f"denied by policy rule {decision.rule!r}":
        message += f": {decision.message}"
    return message


def _host(authority: str) -> str:
    host = authority.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


__all__ = ["Exchange", "HttpSession", "HttpShared", "State"]
