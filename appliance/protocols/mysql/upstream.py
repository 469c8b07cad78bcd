"""The upstream side of a MySQL session, where the appliance is the client and
authenticates as the service account (sans-IO).

States: ``GREETING`` (waiting for the server's handshake) -> ``TLS`` (SSLRequest sent,
the shell runs the handshake, :meth:`UpstreamConnection.tls_established`) -> ``AUTH``
(handshake response sent: auth switches, caching_sha2's fast and full authentication,
the server's RSA key) -> ``READY`` (OK received: :class:`Authenticated`) or ``FAILED``
(ERR: :class:`AuthenticationFailed`). After READY the session's relay reads the server's
packets with :attr:`UpstreamConnection.framer`.

Only what the configuration allows is used: clear text needs TLS; caching_sha2's full
authentication without TLS needs the server's RSA key (asked for on the connection, or
configured); TLS ``require`` and stricter fail when the server offers none.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from appliance.protocols.mysql import auth
from appliance.protocols.mysql._errors import (
    LocalProtocolError,
    PeerProtocolError,
    UpstreamAuthenticationError,
)
from appliance.protocols.mysql._wire import DEFAULT_MAX_PACKET, Framer, Reader, packet
from appliance.protocols.mysql.constants import REQUIRED, Cap
from appliance.protocols.mysql.messages import (
    AUTH_MORE_DATA,
    AUTH_SWITCH,
    ERR_HEADER,
    OK_HEADER,
    Err,
    Handshake,
    HandshakeResponse,
    Ok,
    SSLRequest,
)


class UpState(enum.Enum):
    GREETING = "waiting for the server's handshake"
    TLS = "TLS handshake"
    AUTH = "authenticating"
    READY = "authenticated"
    FAILED = "refused"


@dataclass(frozen=True)
class StartTLS:
    """Start TLS on the upstream socket now (the SSLRequest is queued before it)."""


@dataclass(frozen=True)
class Authenticated:
    handshake: Handshake
    ok: Ok
    method: str
    capabilities: int


@dataclass(frozen=True)
class AuthenticationFailed:
    """The server refused (``error``): wrong password, unknown account, TLS required..."""

    error: Err


UpstreamEvent = StartTLS | Authenticated | AuthenticationFailed


class UpstreamConnection:
    """See the module docstring. ``capabilities`` are those the job negotiated (the
    appliance adds what it needs and drops what it cannot relay); ``tls`` follows the
    target's mode (``disable``/``prefer``/``require``/``verify-ca``/``verify-full``)."""

    def __init__(
        self,
        *,
        user: str,
        password: str,
        database: str | None,
        capabilities: int,
        charset: int,
        tls: str = "prefer",
        max_packet: int = DEFAULT_MAX_PACKET,
        attributes: dict[str, str] | None = None,
        server_public_key: bytes | None = None,
    ) -> None:
        self.user = user
        self._password = password
        self.database = database
        self.wanted = capabilities
        self.charset = charset
        self.tls_mode = tls
        self.max_packet = max_packet
        self.attributes = dict(attributes or {})
        self.server_public_key = server_public_key
        self.framer = Framer("server", max_packet)
        self.state = UpState.GREETING
        self.handshake: Handshake | None = None
        self.capabilities = 0
        self.tls = False
        self.method = ""
        self._scramble = b""
        self._seq = 0
        self._out: list[bytes] = []
        self._asked_key = False

    # -- I/O ---------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _send(self, payload: bytes) -> None:
        self._seq = (self._seq + 1) & 0xFF
        self._out.append(packet(self._seq, payload))

    def receive_data(self, data: bytes) -> list[UpstreamEvent]:
        events: list[UpstreamEvent] = []
        for seq, payload in self.framer.feed(data):
            if self.state in (UpState.READY, UpState.FAILED):
                raise PeerProtocolError(
                    "the server sent a packet after authentication ended", side="server"
                )
            if self.state is UpState.TLS:
                raise PeerProtocolError(
                    "the server sent a packet in clear during TLS set-up", side="server"
                )
            self._seq = seq
            if not payload:
                raise PeerProtocolError("empty packet during authentication", side="server")
            event = (
                self._greeting(payload) if self.state is UpState.GREETING else self._auth(payload)
            )
            if event is not None:
                events.append(event)
                if not isinstance(event, StartTLS):
                    break
        return events

    def tls_established(self) -> None:
        if self.state is not UpState.TLS:
            raise LocalProtocolError(f"TLS established in state {self.state.name}")
        self.tls = True
        self.state = UpState.AUTH
        self._send_response()

    # -- phases ---------------------------------------------------------------------------------

    def _greeting(self, payload: bytes) -> UpstreamEvent | None:
        if payload[0] == ERR_HEADER:
            self.state = UpState.FAILED
            return AuthenticationFailed(Err.decode(payload))
        hs = self.handshake = Handshake.decode(payload)
        if hs.capabilities & REQUIRED != REQUIRED:
            raise UpstreamAuthenticationError(
                "the server does not speak protocol 4.1 with secure authentication"
            )
        caps = (self.wanted & hs.capabilities & ~int(Cap.SSL) & ~int(Cap.COMPRESS)) | REQUIRED
        caps |= hs.capabilities & (
            Cap.PLUGIN_AUTH | Cap.PLUGIN_AUTH_LENENC_DATA | Cap.CONNECT_ATTRS
        )
        caps |= Cap.LONG_PASSWORD | Cap.TRANSACTIONS
        caps &= hs.capabilities | Cap.LONG_PASSWORD
        if self.database:
            caps |= Cap.CONNECT_WITH_DB
        else:
            caps &= ~int(Cap.CONNECT_WITH_DB)
        server_tls = bool(hs.capabilities & Cap.SSL)
        if self.tls_mode in ("require", "verify-ca", "verify-full") and not server_tls:
            raise UpstreamAuthenticationError(
                f"TLS is required (mode {self.tls_mode}) but the server does not offer it"
            )
        self._scramble = hs.scramble
        if server_tls and self.tls_mode != "disable":
            caps |= Cap.SSL
            self.capabilities = caps
            self._send(SSLRequest(caps, self.max_packet, self.charset).encode())
            self.state = UpState.TLS
            return StartTLS()
        self.capabilities = caps
        self.state = UpState.AUTH
        self._send_response()
        return None

    def _send_response(self) -> None:
        hs = self.handshake
        assert hs is not None
        plugin = hs.auth_plugin if hs.auth_plugin in auth.PLUGINS else auth.NATIVE
        if plugin == auth.CLEAR and not self.tls:
            plugin = auth.NATIVE  # never clear text without TLS; the server may switch
        self.method = plugin
        response = HandshakeResponse(
            self.capabilities,
            self.max_packet,
            self.charset,
            self.user,
            self._answer(plugin, self._scramble),
            self.database,
            plugin,
            self.attributes,
        )
        self._send(response.encode())

    def _answer(self, plugin: str, scramble: bytes) -> bytes:
        pw = self._password
        if plugin == auth.NATIVE:
            return auth.native_password(pw, scramble)
        if plugin == auth.CACHING_SHA2:
            return auth.caching_sha2_scramble(pw, scramble)
        if plugin == auth.ED25519:
            return auth.ed25519_signature(pw, scramble)
        if plugin in (auth.CLEAR, auth.SHA256):
            if self.tls:
                return auth.clear_password(pw)
            if plugin == auth.CLEAR:
                raise UpstreamAuthenticationError(
                    "the server asks for the password in clear text on a connection without TLS"
                )
            if self.server_public_key is not None:
                return auth.rsa_encrypted_password(pw, scramble, self.server_public_key)
            self._asked_key = True
            return b"\x01"  # sha256_password: send me your public key
        raise UpstreamAuthenticationError(f"the server asks for unsupported method {plugin!r}")

    def _auth(self, payload: bytes) -> UpstreamEvent | None:
        head = payload[0]
        if head == OK_HEADER:
            self.state = UpState.READY
            self._password = ""
            assert self.handshake is not None
            return Authenticated(
                self.handshake,
                Ok.decode(payload, self.capabilities),
                self.method,
                self.capabilities,
            )
        if head == ERR_HEADER:
            self.state = UpState.FAILED
            self._password = ""
            return AuthenticationFailed(Err.decode(payload))
        if head == AUTH_SWITCH:
            r = Reader(payload, "server", "auth switch request", pos=1)
            plugin = r.nul_or_rest().decode("ascii", "replace")
            data = r.rest()
            if data.endswith(b"\0"):
                data = data[:-1]
            self._scramble = data
            self.method = plugin
            self._asked_key = False
            self._send(self._answer(plugin, data))
            return None
        if head == AUTH_MORE_DATA:
            self._more_data(payload[1:])
            return None
        raise PeerProtocolError(
            f"unexpected packet 0x{head:02x} during authentication", side="server"
        )

    def _more_data(self, data: bytes) -> None:
        if self.method == auth.CACHING_SHA2 and data[:1] == bytes((auth.CACHING_SHA2_FAST_OK,)):
            return None  # fast authentication succeeded; the OK follows
        if self.method == auth.CACHING_SHA2 and data[:1] == bytes((auth.CACHING_SHA2_FULL,)):
            if self.tls:
                self._send(auth.clear_password(self._password))
            elif self.server_public_key is not None:
                self._send(
                    auth.rsa_encrypted_password(
                        self._password, self._scramble, self.server_public_key
                    )
                )
            else:
                self._asked_key = True
                self._send(auth.REQUEST_PUBLIC_KEY)
            return None
        if self._asked_key and data.startswith(b"-----BEGIN"):
            self._asked_key = False
            try:
                answer = auth.rsa_encrypted_password(self._password, self._scramble, data)
            except ValueError as exc:
                raise PeerProtocolError(
                    f"the server's public key is unusable: {exc}", side="server"
                ) from None
            self._send(answer)
            return None
        raise PeerProtocolError("unexpected authentication data from the server", side="server")


__all__ = [
    "Authenticated",
    "AuthenticationFailed",
    "StartTLS",
    "UpState",
    "UpstreamConnection",
    "UpstreamEvent",
]
