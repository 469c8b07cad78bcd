"""The job-facing side of a session: the appliance plays the PostgreSQL *server*.

Where this sits: the proxy shell accepts the job's connection, feeds what it reads to
:meth:`ClientConnection.receive_data` and acts on the events; whatever the appliance must
say to the job is queued by the methods below and drained with
:meth:`ClientConnection.data_to_send`. After authentication the job's messages come out as
:class:`Messages` (type + offsets, no per-message objects) for the session layer to
inspect on demand and relay upstream.

States (:class:`ClientState`) and what moves between them::

    AWAIT_STARTUP --SSLRequest--> SSL_REQUESTED --answer_ssl(False)--> AWAIT_STARTUP
                                               --answer_ssl(True)--> TLS_HANDSHAKE
                                                  --tls_established()--> AWAIT_STARTUP
    AWAIT_STARTUP --GSSENCRequest--> GSSENC_REQUESTED --refuse_gssenc()--> AWAIT_STARTUP
    AWAIT_STARTUP --CancelRequest--> CLOSED                       (event CancelRequested)
    AWAIT_STARTUP --StartupMessage--> STARTUP_RECEIVED            (event StartupReceived)
    STARTUP_RECEIVED --request_password()--> AWAIT_PASSWORD --'p'--> AUTHENTICATING
    STARTUP_RECEIVED | AUTHENTICATING --complete_startup()--> READY
    READY --Terminate--> CLOSED;  any state --reject()/receive_eof()--> CLOSED

Authentication of the job: the job holds no secret, so the appliance never needs one from
it. The default is to answer the startup with AuthenticationOk directly (``trust``): every
client connects whatever its password settings (libpq with no PGPASSWORD and no .pgpass
fails with "fe_sendauth: no password supplied" if asked for one). A shell that wants the
job to send *some* password first (a client configured with ``require_auth=password``)
calls :meth:`ClientConnection.request_password`; whatever the job sends is checked for
shape and discarded, never recorded.

Protocol versions: 3.0 and 3.2 (PostgreSQL 18: variable-length cancel keys) are spoken.
A request for a newer minor version, for 3.1 (never released) or with ``_pq_.*`` options
(none of which the appliance implements) is answered with NegotiateProtocolVersion, as
PostgreSQL does. The appliance issues the job's cancel key itself (see :mod:`.cancel`), so
the job-side version does not depend on what the upstream server speaks.

Security rules enforced here, after PostgreSQL (CVE-2021-23214): bytes that arrive after
an SSLRequest or GSSENCRequest before the answer is sent (and, for TLS, before the
handshake) are refused, since a man in the middle could have injected them in clear.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from appliance.protocols.postgres._errors import (
    LocalProtocolError,
    PeerProtocolError,
    UpstreamAuthenticationError,
)
from appliance.protocols.postgres._framing import (
    FRONTEND_AUTH_TYPES,
    FRONTEND_TYPES,
    Framer,
    Limits,
    Messages,
)
from appliance.protocols.postgres.codes import F_TERMINATE
from appliance.protocols.postgres.messages import (
    AuthenticationCleartextPassword,
    AuthenticationOk,
    BackendKeyData,
    CancelRequest,
    GSSENCRequest,
    NegotiateProtocolVersion,
    ParameterStatus,
    ReadyForQuery,
    SSLRequest,
    StartupMessage,
    decode_password,
    decode_startup,
    error_response,
)
from appliance.protocols.postgres.sqlstate import FEATURE_NOT_SUPPORTED, INVALID_AUTHORIZATION

SUPPORTED_MINORS = (0, 2)  # 3.1 was never released; 3.2 is PostgreSQL 18's


class ClientState(enum.Enum):
    AWAIT_STARTUP = "awaiting a startup packet"
    SSL_REQUESTED = "SSLRequest received, answer pending"
    TLS_HANDSHAKE = "TLS handshake in progress"
    GSSENC_REQUESTED = "GSSENCRequest received, answer pending"
    STARTUP_RECEIVED = "startup received, authentication pending"
    AWAIT_PASSWORD = "password requested"
    AUTHENTICATING = "password received, upstream pending"
    READY = "ready"
    CLOSED = "closed"


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SSLRequested:
    """The job asked for TLS: call :meth:`ClientConnection.answer_ssl`."""


@dataclass(frozen=True, slots=True)
class GSSEncRequested:
    """The job asked for GSSAPI encryption: call :meth:`ClientConnection.refuse_gssenc`."""


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """A cancel request (on its own connection, which is now done). Map the key with
    :class:`~appliance.protocols.postgres.cancel.CancelKeys` and send it upstream."""

    request: CancelRequest

    def __repr__(self) -> str:
        return f"CancelRequested(pid={self.request.pid})"


@dataclass(frozen=True, slots=True)
class StartupReceived:
    """The job's startup packet. ``minor`` is the protocol minor version the session will
    use with the job (0 or 2); ``unrecognized`` the ``_pq_.*`` options refused."""

    startup: StartupMessage
    minor: int
    unrecognized: tuple[str, ...]

    @property
    def user(self) -> str:
        return self.startup.parameters["user"]

    @property
    def database(self) -> str:
        """The database the job asked for; PostgreSQL's default is the user name."""
        return self.startup.parameters.get("database") or self.user

    def forwardable_parameters(self) -> dict[str, str]:
        """The job's parameters to pass upstream: everything but ``user``, ``database``
        and the ``_pq_.*`` protocol options (the appliance negotiates those itself)."""
        return {
            k: v
            for k, v in self.startup.parameters.items()
            if k not in ("user", "database") and not k.startswith("_pq_.")
        }


@dataclass(frozen=True, slots=True)
class PasswordReceived:
    """The job answered the password request (the password itself is discarded)."""


@dataclass(frozen=True, slots=True)
class Terminated:
    """The job sent Terminate (included in the preceding :class:`Messages`)."""


@dataclass(frozen=True, slots=True)
class ClientClosed:
    """The job closed its end cleanly (between messages)."""


ClientEvent = (
    SSLRequested
    | GSSEncRequested
    | CancelRequested
    | StartupReceived
    | PasswordReceived
    | Messages
    | Terminated
    | ClientClosed
)


class ClientConnection:
    """Sans-IO state machine for one job connection; see the module docstring.

    ``max_minor`` caps the protocol minor version offered to the job (2: protocol 3.2, or
    0). ``limits`` are the message size caps.
    """

    def __init__(self, *, limits: Limits | None = None, max_minor: int = 2) -> None:
        if max_minor not in SUPPORTED_MINORS:
            raise ValueError(f"max_minor must be one of {SUPPORTED_MINORS}")
        self.limits = limits or Limits()
        self.max_minor = max_minor
        self.state = ClientState.AWAIT_STARTUP
        self.minor = 0
        self.tls = False
        self._ssl_done = False
        self._gss_done = False
        self._negotiate: bytes = b""
        self._out: list[bytes] = []
        self._framer = Framer([0] * 256, side="client")
        self._normal_caps = self.limits.caps(FRONTEND_TYPES, frontend=True)
        self._auth_caps = self.limits.caps(FRONTEND_AUTH_TYPES, frontend=True)

    # -- output ----------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued for the job since the last call."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    # -- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        """Feed bytes read from the job; return the events they complete.

        Raises PeerProtocolError (side ``client``) for anything malformed, oversized or
        unexpected; the shell then answers with :meth:`reject` and closes.
        """
        state = self.state
        if state is ClientState.READY:
            chunk, frames = self._framer.feed(data)
            if not frames:
                return []
            msgs = Messages(chunk, frames)
            for i, (t, _, _) in enumerate(frames):
                if t == F_TERMINATE:
                    if i != len(frames) - 1 or self._framer.buffered:
                        raise PeerProtocolError("data after Terminate", side="client")
                    self.state = ClientState.CLOSED
                    return [msgs, Terminated()]
            return [msgs]
        if state is ClientState.CLOSED:
            if data:
                raise PeerProtocolError("data after the session ended", side="client")
            return []
        if state in (ClientState.SSL_REQUESTED, ClientState.GSSENC_REQUESTED):
            if data:
                what = "SSL" if state is ClientState.SSL_REQUESTED else "GSSAPI encryption"
                raise PeerProtocolError(
                    f"received unencrypted data after {what} request (a client bug or a "
                    "man-in-the-middle injection)",
                    side="client",
                )
            return []
        if state is ClientState.TLS_HANDSHAKE:
            raise LocalProtocolError("fed data during the TLS handshake: feed decrypted data")
        if state is ClientState.AWAIT_STARTUP:
            self._framer.append(data)
            events = self._startup_packet()
            if self.state is ClientState.STARTUP_RECEIVED:
                self._check_early_bytes()
            return events
        if state is ClientState.AWAIT_PASSWORD:
            self._framer.append(data)
            taken = self._framer.take_frame()
            if taken is None:
                return []
            decode_password(taken[1])  # shape check only; the value is discarded
            self.state = ClientState.AUTHENTICATING
            self._framer.set_caps(self._normal_caps)
            return [PasswordReceived()]
        # STARTUP_RECEIVED or AUTHENTICATING: the job should wait; keep what it sends
        # early (a pipelining client) until READY, within bounds.
        self._framer.append(data)
        self._check_early_bytes()
        return []

    def _check_early_bytes(self) -> None:
        if self._framer.buffered > self.limits.frontend_other:
            raise PeerProtocolError(
                f"{self._framer.buffered} bytes sent before authentication completed",
                side="client",
            )

    @property
    def buffered(self) -> int:
        """Bytes held for incomplete (or not yet readable) messages."""
        return self._framer.buffered

    def receive_eof(self) -> list[ClientEvent]:
        """The job closed its end. Raises PeerProtocolError if it left a message
        incomplete; otherwise the connection is CLOSED."""
        partial = self._framer.buffered
        self.state = ClientState.CLOSED
        if partial:
            raise PeerProtocolError(
                f"connection closed inside a message ({partial} bytes pending)", side="client"
            )
        return [ClientClosed()]

    def _startup_packet(self) -> list[ClientEvent]:
        packet = self._framer.take_untyped(self.limits.startup)
        if packet is None:
            return []
        msg = decode_startup(packet)
        leftover = self._framer.buffered
        if isinstance(msg, SSLRequest | GSSENCRequest):
            ssl = isinstance(msg, SSLRequest)
            if (self._ssl_done if ssl else self._gss_done) or self.tls:
                raise PeerProtocolError(
                    f"second {'SSL' if ssl else 'GSSENC'}Request on one connection",
                    side="client",
                )
            if leftover:
                raise PeerProtocolError(
                    f"received unencrypted data after {'SSL' if ssl else 'GSSAPI encryption'}"
                    " request (a client bug or a man-in-the-middle injection)",
                    side="client",
                )
            if ssl:
                self.state = ClientState.SSL_REQUESTED
                return [SSLRequested()]
            self.state = ClientState.GSSENC_REQUESTED
            return [GSSEncRequested()]
        if isinstance(msg, CancelRequest):
            if leftover:
                raise PeerProtocolError("data after CancelRequest", side="client")
            self.state = ClientState.CLOSED
            return [CancelRequested(msg)]
        return [self._startup(msg)]

    def _startup(self, msg: StartupMessage) -> StartupReceived:
        if msg.major != 3:
            raise PeerProtocolError(
                f"unsupported frontend protocol {msg.major}.{msg.minor}: the appliance "
                f"supports 3.0 to 3.{self.max_minor}",
                side="client",
                sqlstate=FEATURE_NOT_SUPPORTED,
            )
        if not msg.parameters.get("user"):
            raise PeerProtocolError(
                "no PostgreSQL user name specified in startup packet",
                side="client",
                sqlstate=INVALID_AUTHORIZATION,
            )
        unrecognized = tuple(msg.protocol_options)
        if msg.minor >= self.max_minor:
            minor = self.max_minor
        else:
            minor = max(m for m in SUPPORTED_MINORS if m <= msg.minor)
        if minor != msg.minor or unrecognized:
            self._negotiate = NegotiateProtocolVersion(3, minor, unrecognized).encode()
        self.minor = minor
        self.state = ClientState.STARTUP_RECEIVED
        self._framer.set_caps(self._normal_caps)
        return StartupReceived(msg, minor, unrecognized)

    # -- actions ---------------------------------------------------------------------------

    def _require(self, *states: ClientState) -> None:
        if self.state not in states:
            names = ", ".join(s.name for s in states)
            raise LocalProtocolError(f"not allowed in state {self.state.name} (needs {names})")

    def answer_ssl(self, accept: bool) -> None:
        """Answer an SSLRequest: 'S' (then wrap the socket in TLS and call
        :meth:`tls_established`) or 'N' (the job may go on in clear or hang up)."""
        self._require(ClientState.SSL_REQUESTED)
        self._ssl_done = True
        self._out.append(b"S" if accept else b"N")
        if accept:
            self._gss_done = True
            self.state = ClientState.TLS_HANDSHAKE
        else:
            self.state = ClientState.AWAIT_STARTUP

    def tls_established(self) -> None:
        """The TLS handshake with the job is done: decrypted bytes follow."""
        self._require(ClientState.TLS_HANDSHAKE)
        self.tls = True
        self.state = ClientState.AWAIT_STARTUP

    def refuse_gssenc(self) -> None:
        """Answer a GSSENCRequest with 'N' (the appliance has no GSSAPI)."""
        self._require(ClientState.GSSENC_REQUESTED)
        self._gss_done = True
        self._out.append(b"N")
        self.state = ClientState.AWAIT_STARTUP

    def request_password(self) -> None:
        """Ask the job for a cleartext password (which is checked for shape and thrown
        away); see the module docstring for when that is useful."""
        self._require(ClientState.STARTUP_RECEIVED)
        self._out.append(self._negotiate)
        self._negotiate = b""
        self._out.append(AuthenticationCleartextPassword().encode())
        self.state = ClientState.AWAIT_PASSWORD
        self._framer.set_caps(self._auth_caps)

    def complete_startup(
        self,
        parameters: Iterable[tuple[str, str]],
        backend_key: BackendKeyData,
        *,
        notices: Iterable[bytes] = (),
    ) -> None:
        """Let the job in: AuthenticationOk, the upstream's ParameterStatus values (in the
        order received), the upstream's startup notices (frames, relayed as is), the
        appliance-issued ``backend_key`` and ReadyForQuery('I').

        After this call, feed ``receive_data(b"")`` once to get any messages the job sent
        early. Raises LocalProtocolError for a key length wrong for the protocol version
        (4 bytes in 3.0; 4 to 256 in 3.2).
        """
        self._require(ClientState.STARTUP_RECEIVED, ClientState.AUTHENTICATING)
        if self.minor == 0 and len(backend_key.key) != 4:
            raise LocalProtocolError("protocol 3.0 cancel keys are exactly 4 bytes")
        out = self._out
        out.append(self._negotiate)
        self._negotiate = b""
        out.append(AuthenticationOk().encode())
        out.extend(ParameterStatus(name, value).encode() for name, value in parameters)
        out.extend(notices)
        out.append(backend_key.encode())
        out.append(ReadyForQuery("I").encode())
        self.state = ClientState.READY

    def reject(
        self, code: str, message: str, *, detail: str | None = None, hint: str | None = None
    ) -> None:
        """End the session with a FATAL ErrorResponse (allowed in every state but CLOSED
        and TLS_HANDSHAKE). Before the job's startup packet PostgreSQL sends such errors
        too; a client that sent SSLRequest reads the 'E' as a refusal."""
        if self.state in (ClientState.CLOSED, ClientState.TLS_HANDSHAKE):
            raise LocalProtocolError(f"cannot send an error in state {self.state.name}")
        self._out.append(error_response("FATAL", code, message, detail=detail, hint=hint))
        self.state = ClientState.CLOSED

    def reject_peer_error(self, exc: PeerProtocolError | UpstreamAuthenticationError) -> None:
        """:meth:`reject` with the code and text of a PeerProtocolError of either side, or
        of an UpstreamAuthenticationError (neither carries a secret)."""
        if isinstance(exc, UpstreamAuthenticationError):
            self.reject(
                exc.sqlstate,
                "the appliance could not authenticate to the target",
                detail=exc.message,
            )
        elif exc.side == "client":
            self.reject(exc.sqlstate, exc.message)
        else:
            self.reject(exc.sqlstate, "the upstream server broke the protocol", detail=exc.message)
