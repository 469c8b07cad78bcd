"""Whose fault it is: a peer that broke HTTP, or the appliance's own bug.

:class:`PeerError` carries the status the job is answered with (400 for a malformed or
ambiguous request, 431 for a head that is too large, 502 when the upstream server broke
the protocol) and which side broke it; after one the connection is closed (RFC 9112 §11:
a message whose framing cannot be trusted ends the connection).
"""

from __future__ import annotations

from typing import Literal

PeerSide = Literal["job", "upstream"]


class PeerError(Exception):
    """A peer sent what HTTP does not allow, or what the appliance refuses as ambiguous."""

    def __init__(self, message: str, *, status: int = 400, side: PeerSide = "job") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.side = side


class LocalProtocolError(Exception):
    """The appliance asked a codec for something the protocol does not allow (a bug)."""


__all__ = ["LocalProtocolError", "PeerError", "PeerSide"]
