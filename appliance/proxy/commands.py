"""The contract between the shell and a session core: events in, commands out.

Where this sits: :mod:`appliance.proxy.shell` feeds a session core (one per accepted
connection, see :class:`SessionCore`) the bytes it reads and the :data:`Event` objects below,
and carries out the :data:`Command` objects the core returns. The core decides everything
(what to answer, when to open or end, what to record); the shell decides nothing. Bytes
from either side are the hot path: they go in through :meth:`SessionCore.receive` and come
out through :meth:`SessionCore.take_output`, with no object per message; everything else is
an object here, so that every decision shows in a unit test's transcript.

Sides are named ``"job"`` (the accepted connection) and ``"upstream"`` (the target).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Side = Literal["job", "upstream"]

# -- commands: what a core asks the shell to do -------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    """Connect to ``address`` with the appliance's socket mark (netfilter lets it out),
    within ``timeout`` seconds; answered by :class:`UpstreamOpened` or :class:`UpstreamFailed`."""

    address: tuple[str, int]
    timeout: float


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Wrap ``side`` in TLS with ``context`` (the appliance is the server on the job side,
    the client upstream, checking ``server_hostname`` as the context says); reading that
    side is paused until :class:`TLSEstablished` or :class:`TLSFailed`. Output queued
    before this command is written in clear first. ``early``: bytes already read from that
    side that belong to the TLS stream, handed to TLS before anything read after them (a
    MySQL client sends its ClientHello right behind its SSL request, without waiting for
    an answer, and both may arrive in one read)."""

    side: Side
    context: ssl.SSLContext
    server_hostname: str | None = None
    early: bytes = b""


@dataclass(frozen=True, slots=True)
class AskApproval:
    """Hold a request until a named approver signs (``fields`` are the broker's
    ``new_request`` arguments, text already masked); answered by :class:`ApprovalAnswered`
    with the same ``key``. Withdrawn if the session ends first."""

    key: int
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AwaitDurable:
    """Make every ledger entry appended so far durable (fsynced); answered by
    :class:`Durable` with the same ``key``. The write-ahead of a statement that may change
    the target: it is sent only after that answer."""

    key: int


@dataclass(frozen=True, slots=True)
class SendOnce:
    """Open a new marked connection to ``address``, send ``payload``, close (a PostgreSQL
    cancel request); answered by :class:`SentOnce`."""

    address: tuple[str, int]
    payload: bytes
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class PauseReading:
    """Stop (``paused``) or resume reading ``side`` for ``why`` (a hold for approval, a
    drain); the shell reads a side only when no reason, its own backpressure included,
    holds it."""

    side: Side
    why: str
    paused: bool


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Fire :class:`TimerFired` ``name`` after ``seconds`` (replaces a timer of that name)."""

    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class ClearTimer:
    name: str


@dataclass(frozen=True, slots=True)
class Log:
    """A line for the appliance's log (``level``: info, warning, error)."""

    level: str
    message: str


@dataclass(frozen=True, slots=True)
class End:
    """The session is over: write what :meth:`SessionCore.take_output` holds, close both
    sides. The core has recorded the end already. ``reason`` is for the log."""

    reason: str


Command = (
    OpenUpstream
    | StartTLS
    | AskApproval
    | AwaitDurable
    | SendOnce
    | PauseReading
    | SetTimer
    | ClearTimer
    | Log
    | End
)

# -- events: what happened, for the core to decide on ------------------------------------------


@dataclass(frozen=True, slots=True)
class UpstreamOpened:
    local: tuple[str, int]


@dataclass(frozen=True, slots=True)
class UpstreamFailed:
    why: str
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class TLSEstablished:
    side: Side
    peer_certificate: bytes | None = None  # DER, the upstream server's
    alpn: str | None = None
    server_name: str | None = None  # the SNI the job asked for (job side)


@dataclass(frozen=True, slots=True)
class TLSFailed:
    side: Side
    why: str


@dataclass(frozen=True, slots=True)
class ApprovalAnswered:
    """``outcome`` is the broker's :class:`~appliance.approvals.Outcome`; ``request`` the
    request id; ``error`` set instead when the request could not be made at all."""

    key: int
    outcome: Any = None
    request: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Durable:
    """The answer to :class:`AwaitDurable`: ``ok``, or why the entries are not on disk."""

    key: int
    ok: bool
    why: str | None = None


@dataclass(frozen=True, slots=True)
class SentOnce:
    ok: bool
    why: str | None = None


@dataclass(frozen=True, slots=True)
class Eof:
    """``side`` closed its end (or the connection was lost: ``lost`` says why)."""

    side: Side
    lost: str | None = None


@dataclass(frozen=True, slots=True)
class TimerFired:
    name: str


@dataclass(frozen=True, slots=True)
class Drain:
    """The appliance is stopping: finish what is in flight, then end."""


@dataclass(frozen=True, slots=True)
class Abort:
    """End now (the drain's grace period is over)."""

    reason: str


Event = (
    UpstreamOpened
    | UpstreamFailed
    | TLSEstablished
    | TLSFailed
    | ApprovalAnswered
    | Durable
    | SentOnce
    | Eof
    | TimerFired
    | Drain
    | Abort
)


@dataclass(frozen=True)
class ConnectionInfo:
    """What the shell knows of an accepted connection before its core starts."""

    session_id: str
    client: tuple[str, int]
    listener: tuple[str, int]
    upstream: tuple[str, int]
    identity: Mapping[str, Any] = field(default_factory=dict)


class SessionCore(Protocol):
    """A protocol's sans-IO session (see :mod:`appliance.proxy` for the whole contract).

    Every method returns the commands to carry out now, in order; :meth:`take_output`
    is drained by the shell after each call. A core raises only for its own bugs (and
    :class:`~appliance.ledger.errors.LedgerUnavailable`): the shell then calls
    :meth:`crashed` and ends the connection.
    """

    def start(self) -> Commands:
        """The connection is accepted."""

    def receive(self, side: Side, data: bytes) -> Commands:
        """Bytes read from ``side`` (the hot path)."""

    def handle(self, event: Event) -> Commands:
        """Anything else that happened."""

    def take_output(self) -> tuple[bytes, bytes]:
        """Bytes for the job and for the upstream since the last call."""

    def settle(self) -> None:
        """The output taken is written: do the work the core deferred until then (the PG
        core records its statements and responses here, off the path of the bytes).
        Every other method settles first, so skipping a call loses nothing."""

    def crashed(self, exc: BaseException) -> Commands:
        """The core raised ``exc``: record the end, queue the job's last words, End."""


Commands = Sequence[Command]
NO_COMMANDS: Commands = ()  # the hot path's usual answer
