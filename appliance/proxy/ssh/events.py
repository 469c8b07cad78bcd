"""The contract between the SSH session core and its asyncssh glue: events in, commands out.

Where this sits: asyncssh owns both SSH connections (:mod:`.runner`); every callback it
makes becomes one of the :data:`SshEvent` objects below, handed to
:meth:`~appliance.proxy.ssh.core.SshSession.handle`, and the glue carries out the
:data:`SshCommand` objects the core returns, in order. Channels are named by ``chan``, a
number the glue gives each channel the job opens (the same number for its upstream twin).
The generic commands and events of :mod:`appliance.proxy.commands` (``AskApproval`` and
``ApprovalAnswered``, ``AwaitDurable`` and ``Durable``, timers, ``Log``, ``End``,
``Drain``, ``Abort``) are used as they are.

Sides are ``"job"`` and ``"upstream"``, as everywhere in the proxy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from appliance.proxy.commands import (
    Abort,
    ApprovalAnswered,
    AskApproval,
    AwaitDurable,
    ClearTimer,
    Drain,
    Durable,
    End,
    Log,
    SetTimer,
    Side,
    TimerFired,
)

# -- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthBegan:
    """The job asked to log in as ``username`` (any method: the job needs no secret)."""

    username: str
    client_version: str = ""


@dataclass(frozen=True, slots=True)
class UpstreamConnected:
    """The appliance is logged in to the target; ``host_key``: the verified host key's
    type and SHA-256 fingerprint (or its certificate's)."""

    host_key: str
    server_version: str
    auth_method: str


@dataclass(frozen=True, slots=True)
class UpstreamFailed:
    """``stage``: ``connect`` (TCP), ``host_key`` (verification failed), ``auth`` (the
    target refused the service account), ``protocol``."""

    stage: str
    why: str


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    """The job opens a channel: ``kind`` ``session`` or ``direct-tcpip`` (a local forward,
    with ``host``/``port``, and the job's ``origin``)."""

    chan: int
    kind: str
    host: str = ""
    port: int = 0
    origin: str = ""


@dataclass(frozen=True, slots=True)
class RemoteForwardRequested:
    """The job asks the target to listen and forward back (``ssh -R``)."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ForwardedConnection:
    """A connection came in on a remote forward the job asked for (``host``/``port``: the
    listener; ``origin``: who connected on the target's side); the glue opened ``chan``,
    a ``forwarded-tcpip`` channel, toward the job."""

    chan: int
    host: str
    port: int
    origin: str = ""


@dataclass(frozen=True, slots=True)
class PtyRequested:
    chan: int
    term: str
    cols: int
    rows: int
    modes: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EnvRequested:
    chan: int
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ForwardingRequested:
    """Agent (``agent``) or X11 (``x11``) forwarding asked on a session channel."""

    chan: int
    kind: str


@dataclass(frozen=True, slots=True)
class SessionRequested:
    """``exec`` (with ``command``), ``shell``, or ``subsystem`` (with ``subsystem``)."""

    chan: int
    request: str
    command: str = ""
    subsystem: str = ""


@dataclass(frozen=True, slots=True)
class ChannelStarted:
    """The upstream twin of ``chan`` is open and accepted its request."""

    chan: int


@dataclass(frozen=True, slots=True)
class ChannelStartFailed:
    chan: int
    why: str


@dataclass(frozen=True, slots=True)
class Data:
    """Bytes on ``chan`` from ``side`` (``stderr``: extended data, from the target)."""

    chan: int
    side: Side
    data: bytes
    stderr: bool = False


@dataclass(frozen=True, slots=True)
class ChannelEof:
    chan: int
    side: Side


@dataclass(frozen=True, slots=True)
class WindowChanged:
    chan: int
    cols: int
    rows: int
    width: int = 0
    height: int = 0


@dataclass(frozen=True, slots=True)
class SignalSent:
    chan: int
    signal: str


@dataclass(frozen=True, slots=True)
class BreakSent:
    chan: int
    msec: int


@dataclass(frozen=True, slots=True)
class Exited:
    """The target's command ended: ``status``, or ``signal`` (with ``core``, ``message``)."""

    chan: int
    status: int | None = None
    signal: str | None = None
    core: bool = False
    message: str = ""


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    chan: int
    side: Side


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """``side``'s SSH connection ended (``why``: the peer's or the library's words;
    ``error``: it ended in error, a protocol violation or a timeout)."""

    side: Side
    why: str
    error: bool = False


SshEvent = (
    AuthBegan
    | UpstreamConnected
    | UpstreamFailed
    | ChannelOpened
    | RemoteForwardRequested
    | ForwardedConnection
    | PtyRequested
    | EnvRequested
    | ForwardingRequested
    | SessionRequested
    | ChannelStarted
    | ChannelStartFailed
    | Data
    | ChannelEof
    | WindowChanged
    | SignalSent
    | BreakSent
    | Exited
    | ChannelClosed
    | ConnectionLost
    | ApprovalAnswered
    | Durable
    | TimerFired
    | Drain
    | Abort
)

# -- commands -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectUpstream:
    """Connect to ``address`` (marked socket), verify the host key against ``known_hosts``
    (as for host name ``host_name``), log in as ``username`` with ``key`` (an OpenSSH
    private key, with its certificate if the secret holds one); answered by
    :class:`UpstreamConnected` or :class:`UpstreamFailed`."""

    address: tuple[str, int]
    host_name: str
    username: str
    key: str = field(repr=False)
    known_hosts: Path
    timeout: float


@dataclass(frozen=True, slots=True)
class AcceptAuth:
    """Let the job in."""


@dataclass(frozen=True, slots=True)
class RefuseAuth:
    """Refuse the job's login, showing ``banner`` (OpenSSH prints it)."""

    banner: str


@dataclass(frozen=True, slots=True)
class RefuseChannel:
    """Refuse the channel the job is opening (``code``: an RFC 4254 reason code)."""

    chan: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class AnswerRemoteForward:
    """Answer the job's remote forward request: ``allowed`` (the glue asks the target to
    listen, and relays each connection as a :class:`ForwardedConnection`) or not."""

    host: str
    port: int
    allowed: bool


@dataclass(frozen=True, slots=True)
class StartChannel:
    """Open ``chan``'s upstream twin: a session running ``request`` (with the terminal and
    environment the job asked for), or a ``direct-tcpip`` to ``host``/``port``; answered by
    :class:`ChannelStarted` or :class:`ChannelStartFailed`."""

    chan: int
    request: str
    command: str = ""
    subsystem: str = ""
    term: str | None = None
    size: tuple[int, int, int, int] = (0, 0, 0, 0)
    modes: dict[int, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    host: str = ""
    port: int = 0
    origin: tuple[str, int] = ("", 0)


@dataclass(frozen=True, slots=True)
class Forward:
    """Write ``data`` to ``side``'s channel ``chan`` (``stderr``: as extended data)."""

    chan: int
    side: Side
    data: bytes
    stderr: bool = False


@dataclass(frozen=True, slots=True)
class ForwardEof:
    chan: int
    side: Side


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    """Pass a channel request to the target: ``window-change`` (args cols, rows, width,
    height), ``signal`` (args: name), ``break`` (args: msec)."""

    chan: int
    name: str
    args: tuple[int | str, ...] = ()


@dataclass(frozen=True, slots=True)
class FinishChannel:
    """End the job's channel ``chan`` from the appliance: ``message`` to its standard
    error, then exit status ``status`` (or ``signal``), then close (its upstream twin too)."""

    chan: int
    message: str = ""
    status: int | None = None
    signal: str | None = None
    core: bool = False
    signal_message: str = ""


@dataclass(frozen=True, slots=True)
class CloseChannel:
    """Close ``side``'s channel ``chan``."""

    chan: int
    side: Side


@dataclass(frozen=True, slots=True)
class WithdrawApproval:
    """The request behind ``key`` is moot (its channel closed): stop waiting for it."""

    key: int


@dataclass(frozen=True, slots=True)
class PauseChannel:
    """Stop (``paused``) or resume reading ``side``'s channel ``chan`` for ``why``."""

    chan: int
    side: Side
    why: str
    paused: bool


SshCommand = (
    ConnectUpstream
    | AcceptAuth
    | RefuseAuth
    | RefuseChannel
    | AnswerRemoteForward
    | StartChannel
    | Forward
    | ForwardEof
    | ForwardRequest
    | FinishChannel
    | CloseChannel
    | PauseChannel
    | AskApproval
    | AwaitDurable
    | WithdrawApproval
    | SetTimer
    | ClearTimer
    | Log
    | End
)

__all__ = [
    "Abort",
    "AcceptAuth",
    "AnswerRemoteForward",
    "ApprovalAnswered",
    "AskApproval",
    "AuthBegan",
    "AwaitDurable",
    "BreakSent",
    "ChannelClosed",
    "ChannelEof",
    "ChannelOpened",
    "ChannelStartFailed",
    "ChannelStarted",
    "ClearTimer",
    "CloseChannel",
    "ConnectUpstream",
    "ConnectionLost",
    "Data",
    "Drain",
    "Durable",
    "End",
    "EnvRequested",
    "Exited",
    "FinishChannel",
    "Forward",
    "ForwardEof",
    "ForwardRequest",
    "ForwardedConnection",
    "ForwardingRequested",
    "Log",
    "PauseChannel",
    "PtyRequested",
    "RefuseAuth",
    "RefuseChannel",
    "RemoteForwardRequested",
    "SessionRequested",
    "SetTimer",
    "SignalSent",
    "SshCommand",
    "SshEvent",
    "StartChannel",
    "TimerFired",
    "UpstreamConnected",
    "UpstreamFailed",
    "WindowChanged",
    "WithdrawApproval",
]
