"""The upstream side of a session: the appliance plays the PostgreSQL *client* and
authenticates as the service account.

Where this sits: once the job's startup packet is in, the proxy shell opens a socket to the
target, creates a :class:`ServerConnection` with the account's user and secret, sends
:meth:`ServerConnection.initiate`'s bytes and then feeds what the server says to
:meth:`ServerConnection.receive_data`, sending :meth:`ServerConnection.data_to_send` after
each call. The secret goes to the server only; no event, error or repr contains it.

States (:class:`ServerState`)::

    START --initiate()--> AWAIT_SSL_RESPONSE --'S'--> NEED_TLS (event StartTLS)
                                                --tls_established(cert)--> AUTHENTICATING
                                             --'N' (TLS optional)--> AUTHENTICATING
          --initiate() (TLS disabled)--> AUTHENTICATING
    AUTHENTICATING --AuthenticationOk--> AWAIT_READY (event Authenticated)
    AWAIT_READY --ReadyForQuery--> READY (event ServerReady)
    AUTHENTICATING | AWAIT_READY --ErrorResponse--> FAILED (event StartupFailed)
    any --close()/receive_eof()--> CLOSED

Authentication methods answered (each allowed only if in ``auth_methods``, after libpq's
``require_auth``): ``scram-sha-256`` (SCRAM-SHA-256, or -PLUS with tls-server-end-point
channel binding when TLS is up and the server certificate allows it), ``md5``,
``password`` (cleartext) and ``none`` (the server asks nothing). The server must prove
itself at the end of SCRAM; AuthenticationOk before that proof is refused. Like libpq,
``channel_binding="require"`` refuses anything but a completed SCRAM-SHA-256-PLUS.

Blame: malformed or out-of-order server messages raise :class:`PeerProtocolError`
(``side="server"``); a server whose demands the configuration does not allow, or whose
SCRAM proof is wrong, raises :class:`UpstreamAuthenticationError`; a server that refuses
us with an ErrorResponse (wrong secret: 28P01) is the :class:`StartupFailed` event.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from appliance.credentials import scram
from appliance.credentials.md5 import md5_response
from appliance.protocols.postgres._errors import (
    LocalProtocolError,
    PeerProtocolError,
    UpstreamAuthenticationError,
)
from appliance.protocols.postgres._framing import (
    BACKEND_STARTUP_TYPES,
    BACKEND_TYPES,
    Framer,
    Limits,
    Messages,
)
from appliance.protocols.postgres.codes import (
    B_AUTHENTICATION,
    B_ERROR,
    B_KEY,
    B_NEGOTIATE,
    B_NOTICE,
    B_PARAMETER,
    B_READY,
)
from appliance.protocols.postgres.messages import (
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationOther,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    ErrorResponse,
    NegotiateProtocolVersion,
    ParameterStatus,
    PasswordMessage,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    StartupMessage,
    Terminate,
    decode_backend,
)

AUTH_METHODS = frozenset({"scram-sha-256", "md5", "password", "none"})
TLSMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]
ChannelBinding = Literal["disable", "prefer", "require"]


class ServerState(enum.Enum):
    START = "not started"
    AWAIT_SSL_RESPONSE = "SSLRequest sent"
    NEED_TLS = "TLS handshake needed"
    AUTHENTICATING = "startup sent, authenticating"
    AWAIT_READY = "authenticated, awaiting ReadyForQuery"
    READY = "ready"
    FAILED = "refused by the server"
    CLOSED = "closed"


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartTLS:
    """The server accepted TLS: wrap the socket (verifying the server as configured), then
    call :meth:`ServerConnection.tls_established` with the server's certificate."""


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The server accepted the service account. ``method``: ``scram-sha-256-plus``,
    ``scram-sha-256``, ``md5``, ``password`` or ``none``."""

    method: str


@dataclass(frozen=True, slots=True)
class ServerReady:
    """The upstream session is ready. ``parameters`` are the ParameterStatus values in the
    order received, ``backend_key`` the real cancel key (None if the server sent none),
    ``notices`` raw NoticeResponse frames sent during startup, ``minor`` the protocol
    minor version in use."""

    parameters: tuple[tuple[str, str], ...]
    backend_key: BackendKeyData | None
    notices: tuple[bytes, ...]
    minor: int


@dataclass(frozen=True, slots=True)
class StartupFailed:
    """The server refused the session with an ErrorResponse; it closes the connection."""

    error: ErrorResponse

    @property
    def authentication_failed(self) -> bool:
        """True for a wrong secret or a role not allowed to log in (class 28)."""
        return self.error.code.startswith("28")


@dataclass(frozen=True, slots=True)
class ServerClosed:
    """The server closed its end between messages."""


ServerEvent = StartTLS | Authenticated | ServerReady | StartupFailed | Messages | ServerClosed


class ServerConnection:
    """Sans-IO state machine for one upstream connection; see the module docstring.

    ``user``/``database``: the upstream role and database. ``parameters``: the other
    startup parameters (the job's ``application_name``, ``options``, GUCs), not ``user``,
    ``database`` or ``_pq_.*``. ``password``: the service account's secret.
    ``random_bytes(n)``: the source of SCRAM nonces (``secrets.token_bytes``).
    ``minor``: the protocol minor version to ask for (0, or 2 for 3.2).
    """

    def __init__(
        self,
        *,
        user: str,
        database: str,
        password: str,
        random_bytes: Callable[[int], bytes],
        parameters: Mapping[str, str] | None = None,
        tls: TLSMode = "prefer",
        channel_binding: ChannelBinding = "prefer",
        auth_methods: frozenset[str] = AUTH_METHODS,
        limits: Limits | None = None,
        minor: int = 0,
        max_scram_iterations: int = scram.DEFAULT_MAX_ITERATIONS,
    ) -> None:
        params = dict(parameters or {})
        for reserved in ("user", "database"):
            if reserved in params:
                raise LocalProtocolError(f"pass {reserved} as its own argument")
        if any(k.startswith("_pq_.") for k in params):
            raise LocalProtocolError("_pq_.* options are not forwarded upstream")
        if not auth_methods or not auth_methods <= AUTH_METHODS:
            raise ValueError(f"auth_methods must be a non-empty subset of {sorted(AUTH_METHODS)}")
        if channel_binding == "require" and tls == "disable":
            raise ValueError("channel_binding=require needs TLS")
        self.limits = limits or Limits()
        self.state = ServerState.START
        self.tls = False
        self.minor = minor
        self.method: str | None = None
        self._user = user
        self._database = database
        self._params = params
        self.__password = password
        self._random_bytes = random_bytes
        self._tls_mode = tls
        self._channel_binding = channel_binding
        self._auth_methods = auth_methods
        self._max_iterations = max_scram_iterations
        self._cbind: bytes | None = None
        self._answered = False  # a password/md5/SASL answer was sent
        self._scram_first: scram.ClientFirst | None = None
        self._scram_final: scram.ClientFinal | None = None
        self._scram_verified = False
        self._parameters: list[tuple[str, str]] = []
        self._notices: list[bytes] = []
        self._key: BackendKeyData | None = None
        self._out: list[bytes] = []
        # Every backend type is framed during startup (the state decides what is allowed),
        # so that asynchronous messages right after ReadyForQuery split correctly.
        self._framer = Framer(
            self.limits.caps(BACKEND_STARTUP_TYPES + BACKEND_TYPES, frontend=False), side="server"
        )
        self._ssl_error = False

    def __repr__(self) -> str:
        return f"ServerConnection(user={self._user!r}, state={self.state.name})"

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message."""
        return self._framer.buffered

    # -- output ----------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued for the server since the last call."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _require(self, *states: ServerState) -> None:
        if self.state not in states:
            names = ", ".join(s.name for s in states)
            raise LocalProtocolError(f"not allowed in state {self.state.name} (needs {names})")

    def initiate(self) -> None:
        """Queue the first bytes: an SSLRequest, or the startup packet if TLS is disabled."""
        self._require(ServerState.START)
        if self._tls_mode == "disable":
            self._send_startup()
        else:
            self._out.append(SSLRequest().encode())
            self.state = ServerState.AWAIT_SSL_RESPONSE

    def tls_established(self, server_certificate: bytes | None) -> None:
        """The TLS handshake is done. ``server_certificate`` (DER) enables channel binding;
        pass None if it is not available. Queues the startup packet."""
        self._require(ServerState.NEED_TLS)
        self.tls = True
        if server_certificate is not None and self._channel_binding != "disable":
            try:
                self._cbind = scram.tls_server_end_point(server_certificate)
            except scram.ScramError as exc:
                raise PeerProtocolError(str(exc), side="server") from None
        self._send_startup()

    def close(self) -> None:
        """Queue Terminate (if a session was started) and stop."""
        if self.state in (ServerState.AUTHENTICATING, ServerState.AWAIT_READY, ServerState.READY):
            self._out.append(Terminate().encode())
        self.state = ServerState.CLOSED

    def _send_startup(self) -> None:
        params = {"user": self._user, "database": self._database, **self._params}
        self._out.append(StartupMessage(3, self.minor, params).encode())
        self.state = ServerState.AUTHENTICATING

    # -- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[ServerEvent]:
        """Feed bytes read from the server; return the events they complete.

        Raises PeerProtocolError (side ``server``) or UpstreamAuthenticationError; see the
        module docstring.
        """
        state = self.state
        if state is ServerState.READY:
            chunk, frames = self._framer.feed(data)
            return [Messages(chunk, frames)] if frames else []
        if state is ServerState.AWAIT_SSL_RESPONSE and not self._ssl_error:
            return self._ssl_response(data)
        if state in (
            ServerState.AUTHENTICATING,
            ServerState.AWAIT_READY,
            ServerState.AWAIT_SSL_RESPONSE,
        ):
            chunk, frames = self._framer.feed(data)
            return self._startup_frames(chunk, frames)
        if state is ServerState.NEED_TLS:
            raise LocalProtocolError("fed data during the TLS handshake: feed decrypted data")
        if state is ServerState.START:
            raise LocalProtocolError("fed data before initiate()")
        if data:  # FAILED or CLOSED: the server should have closed
            raise PeerProtocolError("data after the session ended", side="server")
        return []

    def receive_eof(self) -> list[ServerEvent]:
        """The server closed its end. Raises PeerProtocolError if that happened before the
        session was ready, or inside a message."""
        state, partial = self.state, self._framer.buffered
        self.state = ServerState.CLOSED
        if state in (ServerState.FAILED, ServerState.CLOSED):
            return [ServerClosed()]
        if state is not ServerState.READY:
            raise PeerProtocolError(
                f"server closed the connection unexpectedly ({state.value})", side="server"
            )
        if partial:
            raise PeerProtocolError(
                f"server closed the connection inside a message ({partial} bytes pending)",
                side="server",
            )
        return [ServerClosed()]

    def _ssl_response(self, data: bytes) -> list[ServerEvent]:
        if not data:
            return []
        answer, rest = data[:1], data[1:]
        if answer == b"S":
            if rest:
                raise PeerProtocolError(
                    "received unencrypted data after the SSL response (a server bug or a "
                    "man-in-the-middle injection)",
                    side="server",
                )
            self.state = ServerState.NEED_TLS
            return [StartTLS()]
        if answer == b"N":
            if self._tls_mode != "prefer":
                raise UpstreamAuthenticationError(
                    f"the server does not support TLS, but tls mode is {self._tls_mode}"
                )
            if rest:
                raise PeerProtocolError("data after the SSL refusal", side="server")
            self._send_startup()
            return []
        if answer == b"E":  # an ErrorResponse instead of an answer (e.g. too many clients)
            self._ssl_error = True
            self._framer.set_caps(self.limits.caps(b"E", frontend=False))
            chunk, frames = self._framer.feed(data)
            return self._startup_frames(chunk, frames)
        raise PeerProtocolError(f"invalid response to SSLRequest: {answer!r}", side="server")

    def _startup_frames(
        self, chunk: bytes, frames: list[tuple[int, int, int]]
    ) -> list[ServerEvent]:
        events: list[ServerEvent] = []
        for i, (t, s, e) in enumerate(frames):
            payload = chunk[s + 5 : e]
            if t == B_ERROR:
                error = decode_backend(t, payload)
                assert isinstance(error, ErrorResponse)
                self.state = ServerState.FAILED
                events.append(StartupFailed(error))
                return events
            if t == B_NOTICE:
                decode_backend(t, payload)  # shape check
                self._notices.append(chunk[s:e])
            elif self.state is ServerState.AUTHENTICATING:
                event = self._authentication_message(t, payload)
                if event is not None:
                    events.append(event)
            else:
                ready = self._ready_phase_message(t, payload)
                if ready is not None:
                    events.append(ready)
                    later = frames[i + 1 :]
                    if later:  # asynchronous messages right after ReadyForQuery
                        base = later[0][1]
                        events.append(
                            Messages(chunk[base:], [(u, a - base, b - base) for u, a, b in later])
                        )
                    return events
        return events

    def _authentication_message(self, t: int, payload: bytes) -> ServerEvent | None:
        if t == B_NEGOTIATE:
            if self._answered or self.method is not None:
                raise PeerProtocolError(
                    "NegotiateProtocolVersion after authentication began", side="server"
                )
            npv = decode_backend(t, payload)
            assert isinstance(npv, NegotiateProtocolVersion)
            if npv.major != 3 or npv.minor > self.minor:
                raise PeerProtocolError(
                    f"server negotiated protocol {npv.major}.{npv.minor} after we asked for 3.{self.minor}",
                    side="server",
                )
            self.minor = npv.minor
            return None
        if t != B_AUTHENTICATION:
            raise PeerProtocolError(
                f"message {chr(t)!r} before authentication completed", side="server"
            )
        msg = decode_backend(t, payload)
        if isinstance(msg, AuthenticationOk):
            return self._authentication_ok()
        if isinstance(msg, AuthenticationSASLContinue):
            self._scram_continue(msg.data)
            return None
        if isinstance(msg, AuthenticationSASLFinal):
            self._scram_complete(msg.data)
            return None
        if self._answered:
            raise PeerProtocolError("a second authentication request", side="server")
        self._answered = True
        if isinstance(msg, AuthenticationCleartextPassword):
            self._allow("password", "a cleartext password")
            self.method = "password"
            self._out.append(PasswordMessage(self.__password).encode())
        elif isinstance(msg, AuthenticationMD5Password):
            self._allow("md5", "an md5 password")
            self.method = "md5"
            self._out.append(
                PasswordMessage(md5_response(self.__password, self._user, msg.salt)).encode()
            )
        elif isinstance(msg, AuthenticationSASL):
            self._scram_start(msg.mechanisms)
        else:
            assert isinstance(msg, AuthenticationOther)
            raise UpstreamAuthenticationError(
                f"the server asks for {msg.method} authentication, which the appliance does not support"
            )
        return None

    def _allow(self, method: str, what: str) -> None:
        if method not in self._auth_methods:
            raise UpstreamAuthenticationError(
                f"the server asks for {what}, which the configuration does not allow"
            )
        if self._channel_binding == "require":
            raise UpstreamAuthenticationError(
                f"channel binding is required, but the server asks for {what}"
            )

    def _scram_start(self, mechanisms: tuple[str, ...]) -> None:
        self._allow_scram()
        nonce = scram.make_nonce(self._random_bytes(18))
        if self._cbind is not None and scram.MECHANISM_PLUS in mechanisms:
            first = scram.client_first(nonce, channel_binding=self._cbind)
        elif self._channel_binding == "require":
            raise UpstreamAuthenticationError(
                "channel binding is required, but the server does not offer SCRAM-SHA-256-PLUS"
                + ("" if self._cbind is not None else " over this connection")
            )
        elif scram.MECHANISM in mechanisms:
            # 'y': we could bind but the server offered no -PLUS (RFC 5802 downgrade check).
            first = scram.client_first(nonce, flag="y" if self._cbind is not None else "n")
        else:
            raise UpstreamAuthenticationError(
                f"the server offers no supported SASL mechanism ({', '.join(mechanisms) or 'none'})"
            )
        self._scram_first = first
        self.method = first.mechanism.lower()
        self._out.append(SASLInitialResponse(first.mechanism, first.message).encode())

    def _allow_scram(self) -> None:
        if "scram-sha-256" not in self._auth_methods:
            raise UpstreamAuthenticationError(
                "the server asks for SCRAM-SHA-256, which the configuration does not allow"
            )

    def _scram_continue(self, data: bytes) -> None:
        if self._scram_first is None or self._scram_final is not None:
            raise PeerProtocolError("unexpected AuthenticationSASLContinue", side="server")
        try:
            self._scram_final = scram.client_final(
                self._scram_first, self.__password, data, max_iterations=self._max_iterations
            )
        except scram.ScramError as exc:
            raise UpstreamAuthenticationError(str(exc)) from None
        self._out.append(SASLResponse(self._scram_final.message).encode())

    def _scram_complete(self, data: bytes) -> None:
        if self._scram_final is None or self._scram_verified:
            raise PeerProtocolError("unexpected AuthenticationSASLFinal", side="server")
        try:
            scram.verify_server_final(self._scram_final, data)
        except scram.ScramError as exc:
            raise UpstreamAuthenticationError(str(exc)) from None
        self._scram_verified = True

    def _authentication_ok(self) -> ServerEvent:
        if self._scram_first is not None and not self._scram_verified:
            raise UpstreamAuthenticationError(
                "the server sent AuthenticationOk before proving it knows the SCRAM verifier"
            )
        if self.method is None:
            if "none" not in self._auth_methods:
                raise UpstreamAuthenticationError(
                    "the server let the service account in without authentication, which "
                    "the configuration does not allow"
                )
            self.method = "none"
        if self._channel_binding == "require" and self.method != "scram-sha-256-plus":
            raise UpstreamAuthenticationError(
                "channel binding is required, but the server authenticated without it"
            )
        self.state = ServerState.AWAIT_READY
        return Authenticated(self.method)

    def _ready_phase_message(self, t: int, payload: bytes) -> ServerEvent | None:
        if t == B_PARAMETER:
            msg = decode_backend(t, payload)
            assert isinstance(msg, ParameterStatus)
            self._parameters.append((msg.name, msg.value))
            return None
        if t == B_KEY:
            key = decode_backend(t, payload)
            assert isinstance(key, BackendKeyData)
            if self._key is not None:
                raise PeerProtocolError("BackendKeyData sent twice", side="server")
            if self.minor == 0 and len(key.key) != 4:
                raise PeerProtocolError("protocol 3.0 cancel keys are 4 bytes", side="server")
            self._key = key
            return None
        if t == B_READY:
            decode_backend(t, payload)
            self.state = ServerState.READY
            self._framer.set_caps(self.limits.caps(BACKEND_TYPES, frontend=False))
            return ServerReady(tuple(self._parameters), self._key, tuple(self._notices), self.minor)
        raise PeerProtocolError(
            f"message {chr(t)!r} between AuthenticationOk and ReadyForQuery", side="server"
        )
