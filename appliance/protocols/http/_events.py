"""The events both codecs (HTTP/1.1 and HTTP/2) hand the session core, one shape for both.

A *stream* names one request/response exchange on a connection: HTTP/2's stream id, or,
for HTTP/1.1, the request's number on the connection (1, 2, ...). Header names are
lower-case text, values text (ISO-8859-1, as the bytes came); pseudo-headers and
connection-specific headers are not among them.
"""

from __future__ import annotations

from dataclasses import dataclass

Headers = tuple[tuple[str, str], ...]


def header(headers: Headers, name: str) -> str | None:
    """The first value of ``name`` (lower-case) in ``headers``, or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request's head. ``target`` is origin-form (path and query); ``authority`` the
    Host header or ``:authority``; ``body``: a body follows (else an :class:`End` comes at
    once); ``upgrade``: the protocol the job asks to switch to (``websocket``)."""

    stream: int
    method: str
    target: str
    authority: str
    headers: Headers
    http_version: str
    body: bool
    content_length: int | None = None
    upgrade: str | None = None
    scheme: str = "https"

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A response's head; ``informational`` for 1xx (100 Continue, 101 Switching)."""

    stream: int
    status: int
    headers: Headers
    reason: str = ""
    http_version: str = "1.1"
    body: bool = True

    @property
    def informational(self) -> bool:
        return self.status < 200


@dataclass(frozen=True, slots=True)
class Body:
    """Body bytes of ``stream``; ``flow``: HTTP/2 flow-controlled bytes to acknowledge
    (:meth:`~.h2conn.H2Server.ack`) once they are passed on."""

    stream: int
    data: bytes
    flow: int = 0


@dataclass(frozen=True, slots=True)
class End:
    """The message on ``stream`` is complete (``trailers`` if it had any)."""

    stream: int
    trailers: Headers = ()


@dataclass(frozen=True, slots=True)
class Reset:
    """The peer abandoned ``stream`` (HTTP/2 RST_STREAM)."""

    stream: int
    why: str


@dataclass(frozen=True, slots=True)
class Switched:
    """The connection left HTTP (101 Switching Protocols): ``data`` is what followed."""

    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Closed:
    """The peer closed the connection cleanly between messages."""


Event = RequestHead | ResponseHead | Body | End | Reset | Switched | Closed

__all__ = [
    "Body",
    "Closed",
    "End",
    "Event",
    "Headers",
    "RequestHead",
    "Reset",
    "ResponseHead",
    "Switched",
    "header",
]
