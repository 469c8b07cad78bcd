"""Errors of the MySQL protocol layer, each saying whose fault it is.

- :class:`PeerProtocolError`: the job (``side="client"``) or the upstream server
  (``side="server"``) sent something malformed, oversized or unexpected. The session ends
  with an ERR packet to the job (:attr:`PeerProtocolError.code`, SQLSTATE 08S01) and a
  ledger entry; other sessions are not affected.
- :class:`UpstreamAuthenticationError`: the appliance cannot authenticate to the upstream
  server as configured (no usable method, TLS required but refused, clear text without TLS).
- :class:`LocalProtocolError`: the appliance asked a connection object for something
  invalid in its state: a bug, so *not* an :class:`~appliance.errors.ApplianceError`.
"""

from __future__ import annotations

from typing import Literal

from appliance.errors import ApplianceError

Side = Literal["client", "server"]

# ER_NET_PACKETS_OUT_OF_ORDER / ER_UNKNOWN_COM_ERROR... the job is told 1158-style "got an
# error reading communication packets" (08S01), the server's own words for a broken peer.
ER_NET_READ_ERROR = 1158
ER_NET_PACKET_TOO_LARGE = 1153
ER_ACCESS_DENIED = 1045


class PeerProtocolError(ApplianceError):
    """A peer broke the MySQL protocol.

    ``side``: ``"client"`` (the job) or ``"server"`` (the target); ``code`` and ``sqlstate``
    are those of the ERR packet the job is sent. The message holds no payload bytes beyond
    a short printable excerpt, so it is safe to log.
    """

    def __init__(
        self,
        message: str,
        *,
        side: Side,
        code: int = ER_NET_READ_ERROR,
        sqlstate: str = "08S01",
    ) -> None:
        self.message = message
        self.side: Side = side
        self.code = code
        self.sqlstate = sqlstate
        who = "client (job)" if side == "client" else "upstream server"
        super().__init__(f"{who} protocol violation: {message}")


class UpstreamAuthenticationError(ApplianceError):
    """The appliance could not authenticate to the upstream server as configured (never
    carries the secret)."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(f"cannot authenticate to the upstream server: {message}")


class LocalProtocolError(RuntimeError):
    """The appliance asked a connection for something invalid in its state (our bug)."""
