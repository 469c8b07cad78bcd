"""Errors of the PostgreSQL protocol layer, each saying whose fault it is.

- :class:`PeerProtocolError`: the job (``side="client"``) or the upstream server
  (``side="server"``) sent something malformed, oversized or unexpected. The session ends
  with a FATAL ErrorResponse to the job carrying :attr:`PeerProtocolError.sqlstate` and a
  ledger entry; other sessions are not affected.
- :class:`UpstreamAuthenticationError`: the appliance cannot authenticate to the upstream
  server in a way the configuration allows (no common method, TLS or channel binding
  required but refused, the server failed to prove it knows the password verifier).
- :class:`LocalProtocolError`: the appliance asked a connection object to do something
  invalid in its current state. That is a bug in the appliance, so it is *not* an
  :class:`~appliance.errors.ApplianceError` (see :mod:`appliance.errors`).
"""

from __future__ import annotations

from typing import Literal

from appliance.errors import ApplianceError
from appliance.protocols.postgres.sqlstate import PROTOCOL_VIOLATION, REJECTED_ESTABLISHMENT

Side = Literal["client", "server"]


class PeerProtocolError(ApplianceError):
    """A peer broke the PostgreSQL protocol.

    ``side`` is ``"client"`` for the job and ``"server"`` for the upstream target;
    ``sqlstate`` is the code for the FATAL ErrorResponse the job is sent (08P01,
    protocol_violation, unless a more precise code applies). The message never contains
    message payloads beyond a short, printable excerpt, so it is safe to log.
    """

    def __init__(self, message: str, *, side: Side, sqlstate: str = PROTOCOL_VIOLATION) -> None:
        self.message = message
        self.side: Side = side
        self.sqlstate = sqlstate
        who = "client (job)" if side == "client" else "upstream server"
        super().__init__(f"{who} protocol violation: {message}")


class UpstreamAuthenticationError(ApplianceError):
    """The appliance could not authenticate to the upstream server as configured.

    Never carries the secret. ``sqlstate`` is what the job is told (08004).
    """

    sqlstate = REJECTED_ESTABLISHMENT

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(f"cannot authenticate to the upstream server: {message}")


class LocalProtocolError(RuntimeError):
    """The appliance asked a connection for something invalid in its state (our bug)."""
