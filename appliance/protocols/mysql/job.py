"""The job's side of a MySQL session, where the appliance plays the server (sans-IO).

The appliance greets the job with a handshake of its own (the server's version and
character set, an appliance-issued connection id, a fresh scramble, the capabilities the
appliance can relay), answers an SSLRequest with TLS when the target has a client
certificate (else the job's TLS request is refused: the handshake offers no CLIENT_SSL),
and lets the job in without any secret: whatever user and password it sends are never
checked or forwarded (:class:`JobHello` carries the user it claimed, its database,
capabilities, character set and connection attributes). The session then answers with
:meth:`JobConnection.accept` (an OK) or :meth:`JobConnection.refuse` (an ERR).

States: ``GREETED`` -> (``TLS``) -> ``HELLO`` (the response arrived) -> ``OPEN`` / ``CLOSED``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from appliance.protocols.mysql._errors import LocalProtocolError, PeerProtocolError
from appliance.protocols.mysql._wire import DEFAULT_MAX_PACKET, Framer, packet
from appliance.protocols.mysql.constants import REQUIRED, Cap
from appliance.protocols.mysql.messages import Err, Handshake, HandshakeResponse, Ok


class JobState(enum.Enum):
    GREETED = "handshake sent"
    TLS = "TLS handshake"
    HELLO = "handshake response received"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class SSLRequested:
    """The job asked for TLS: start TLS on the job's socket (the shell), then call
    :meth:`JobConnection.tls_established`. ``early``: bytes that came after the request,
    which belong to the TLS stream (a client sends its ClientHello without waiting for an
    answer, and both may be read at once)."""

    early: bytes = b""


@dataclass(frozen=True)
class JobHello:
    response: HandshakeResponse
    capabilities: int  # negotiated: what the job asked for of what the appliance offered


JobEvent = SSLRequested | JobHello


class JobConnection:
    """See the module docstring."""

    def __init__(self, *, max_packet: int = DEFAULT_MAX_PACKET) -> None:
        self.framer = Framer("client", max_packet)
        self.state = JobState.GREETED
        self.offered = 0
        self.capabilities = 0
        self.tls = False
        self.hello: HandshakeResponse | None = None
        self._seq = 0
        self._out: list[bytes] = []

    def greet(self, handshake: Handshake) -> None:
        self.offered = handshake.capabilities
        self._seq = 0
        self._out.append(packet(0, handshake.encode()))

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> list[JobEvent]:
        if self.state in (JobState.OPEN, JobState.CLOSED):
            raise LocalProtocolError("the relay reads an open job connection")
        if self.state is JobState.HELLO:
            if data:
                raise PeerProtocolError(
                    "the job sent a command before its login was answered", side="client"
                )
            return []
        events: list[JobEvent] = []
        packets = self.framer.feed(data)
        for i, (seq, payload) in enumerate(packets):
            if self.state is not JobState.GREETED:
                raise PeerProtocolError("unexpected packet during login", side="client")
            self._seq = seq
            response = HandshakeResponse.decode(payload)
            caps = response.capabilities & self.offered
            if caps & REQUIRED != REQUIRED:
                raise PeerProtocolError(
                    "the client does not speak protocol 4.1 with secure authentication",
                    side="client",
                )
            if response.ssl_request:
                if not self.offered & Cap.SSL or self.tls:
                    raise PeerProtocolError("TLS requested but not offered", side="client")
                self.state = JobState.TLS
                # What was read after the request is TLS, whatever it looked like.
                after = b"".join(packet(s, p) for s, p in packets[i + 1 :])
                events.append(SSLRequested(after + self.framer.take_rest()))
                break
            self.capabilities = caps
            self.hello = response
            self.state = JobState.HELLO
            events.append(JobHello(response, caps))
            if self.framer.buffered:
                raise PeerProtocolError(
                    "the job sent a command before its login was answered", side="client"
                )
        return events

    def tls_established(self) -> None:
        if self.state is not JobState.TLS:
            raise LocalProtocolError(f"TLS established in state {self.state.name}")
        self.tls = True
        self.state = JobState.GREETED

    def accept(self, ok: Ok) -> None:
        """Let the job in: the OK that ends its login."""
        if self.state is not JobState.HELLO:
            raise LocalProtocolError(f"accept in state {self.state.name}")
        self._out.append(packet(self._seq + 1, ok.encode(self.capabilities)))
        self.state = JobState.OPEN

    def refuse(self, err: Err) -> None:
        """An ERR at any point of the login (the job's next sequence id)."""
        self._out.append(packet(self._seq + 1, err.encode()))
        self.state = JobState.CLOSED


__all__ = ["JobConnection", "JobEvent", "JobHello", "JobState", "SSLRequested"]
