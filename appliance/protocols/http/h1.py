"""HTTP/1.1 on both sides of the appliance, sans-IO, with h11 doing the parsing.

- :class:`H1Server` is the job's side: the appliance plays the server. Each request head is
  first checked raw (:func:`._head.check_request_head`: what could be smuggled is refused),
  then parsed by a fresh ``h11.Connection`` per request; what follows one request's end is
  the next request's start (pipelining). Responses are written in request order.
- :class:`H1Client` is the upstream side: the appliance plays the client, one request at a
  time, re-framing each body itself (Content-Length or chunked, never both), so the server
  reads exactly the request policy saw.

Both: ``receive_data(bytes) -> list[event]`` (events of :mod:`._events`), methods that
return bytes to send, :class:`~._errors.PeerError` for a peer that broke the protocol.
After a 101 response both sides stop parsing and hand over (:class:`~._events.Switched`).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable

import h11

from appliance.protocols.http._errors import LocalProtocolError, PeerError
from appliance.protocols.http._events import (
    Body,
    Closed,
    End,
    Event,
    Headers,
    RequestHead,
    ResponseHead,
    Switched,
    header,
)
from appliance.protocols.http._head import HOP_BY_HOP, check_request_head

MAX_HEAD = 64 * 1024
_BARE = re.compile(rb"(?<!\r)\n|\r(?!\n)")


def _text(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers)


def _wire(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def end_to_end(headers: Headers) -> Headers:
    """``headers`` without the connection-specific ones (and those ``Connection`` names)."""
    named = {
        token.strip().lower()
        for value in (v for k, v in headers if k == "connection")
        for token in value.split(",")
    }
    return tuple(
        (k, v) for k, v in headers if k not in HOP_BY_HOP and k not in named and k != "host"
    )


class H1Server:
    """The job's HTTP/1.1 connection; see the module docstring."""

    def __init__(self, *, max_head: int = MAX_HEAD, max_fields: int = 100) -> None:
        self.max_head = max_head
        self.max_fields = max_fields
        self._buffer = bytearray()
        self._current: h11.Connection | None = None  # the request being received
        self._stream = 0
        self._replies: deque[tuple[int, h11.Connection]] = deque()  # awaiting a response
        self._switching = False
        self.switched = False
        self.closed = False
        self.keep_alive = True

    @property
    def head_pending(self) -> bool:
        """Bytes of a request head have arrived, and not its end (for a slow-head timer)."""
        return self._current is None and bool(self._buffer)

    @property
    def idle(self) -> bool:
        """No request is being received or waits for its response."""
        return self._current is None and not self._buffer and not self._replies

    def receive_data(self, data: bytes) -> list[Event]:
        """Events for ``data`` from the job (``b""``: the job closed its side)."""
        if self.switched:
            return [Switched(data)] if data else []
        if not data:
            self.closed = True
            if self._current is not None:
                raise PeerError("the job closed the connection in the middle of a request")
            if self._buffer:
                raise PeerError("the job closed the connection in the middle of a request head")
            return [Closed()]
        self._buffer += data
        events: list[Event] = []
        while self._buffer and not self._switching:
            if self._current is None and not self._start_request(events):
                break
            if not self._pump(events):
                break
        return events

    def _start_request(self, events: list[Event]) -> bool:
        buf = self._buffer
        while buf[:2] == b"\r\n":  # RFC 9112 §2.2: empty lines before a request are ignored
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        # A bare LF or CR is refused at once (else a head that never has CRLF CRLF waits).
        limit = end + 4 if end >= 0 else len(buf) - buf.endswith(b"\r")
        if _BARE.search(bytes(buf[:limit])):
            raise PeerError("a line of the request head does not end in CRLF")
        if end < 0:
            if len(buf) > self.max_head:
                raise PeerError("the request head is too large", status=431)
            return False
        if end + 4 > self.max_head:
            raise PeerError("the request head is too large", status=431)
        check_request_head(bytes(buf[: end + 4]), max_fields=self.max_fields)
        self._current = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head)
        self._stream += 1
        return True

    def _pump(self, events: list[Event]) -> bool:
        """Feed the buffer to the current request's parser; True when it completed."""
        conn = self._current
        assert conn is not None
        conn.receive_data(bytes(self._buffer))
        self._buffer.clear()
        stream = self._stream
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise PeerError(f"malformed request: {exc}") from None
            if event is h11.NEED_DATA:
                return False
            if event is h11.PAUSED:  # an Upgrade request, complete: wait for the answer
                self._finish(conn)
                self._switching = True
                return False
            if isinstance(event, h11.Request):
                events.append(self._head(stream, event))
            elif isinstance(event, h11.Data):
                events.append(Body(stream, bytes(event.data)))
            elif isinstance(event, h11.EndOfMessage):
                events.append(End(stream, _text(event.headers)))
                if conn.their_state is h11._state.MIGHT_SWITCH_PROTOCOL:
                    continue  # next_event says PAUSED and keeps what followed
                self._finish(conn)
                return True
            elif isinstance(event, h11.ConnectionClosed):  # pragma: no cover - data was fed
                return False

    def _finish(self, conn: h11.Connection) -> None:
        leftover, _ = conn.trailing_data
        self._buffer[:0] = leftover
        self._replies.append((self._stream, conn))
        self._current = None
        if not conn.their_http_version or conn.their_http_version < b"1.1":
            self.keep_alive = False

    def _head(self, stream: int, req: h11.Request) -> RequestHead:
        headers = _text(req.headers)
        length = header(headers, "content-length")
        chunked = header(headers, "transfer-encoding") is not None
        connection = (header(headers, "connection") or "").lower()
        if "close" in connection:
            self.keep_alive = False
        upgrade = header(headers, "upgrade") if "upgrade" in connection else None
        target = req.target.decode("latin-1")
        if not target.startswith("/"):
            raise PeerError("only origin-form request targets are served (no proxy requests)")
        return RequestHead(
            stream=stream,
            method=req.method.decode("ascii"),
            target=target,
            authority=header(headers, "host") or "",
            headers=end_to_end(headers),
            http_version=req.http_version.decode("ascii"),
            body=chunked or bool(length and int(length) > 0),
            content_length=int(length) if length is not None else None,
            upgrade=upgrade.lower() if upgrade else None,
            scheme="https",
        )

    # -- responses ---------------------------------------------------------------------------

    def _reply_conn(self, stream: int) -> h11.Connection:
        if not self._replies or self._replies[0][0] != stream:
            if self._current is not None and self._stream == stream:
                return self._current  # answered before its body was all read (a refusal)
            raise LocalProtocolError(f"response for request {stream} out of order")
        return self._replies[0][1]

    def respond(self, head: ResponseHead, *, close: bool = False) -> bytes:
        """The bytes of a response head for ``head.stream`` (the oldest unanswered request)."""
        conn = self._reply_conn(head.stream)
        headers = list(head.headers)
        if close or not self.keep_alive:
            headers.append(("connection", "close"))
            self.keep_alive = False
        if head.status == 101:
            headers.append(("connection", "upgrade"))
        try:
            if head.informational:
                out = conn.send(
                    h11.InformationalResponse(
                        status_code=head.status, headers=_wire(tuple(headers)), reason=head.reason
                    )
                )
            else:
                out = conn.send(
                    h11.Response(
                        status_code=head.status, headers=_wire(tuple(headers)), reason=head.reason
                    )
                )
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(str(exc)) from None
        if head.status == 101:
            self.switched = True
            self._switching = False
        return out or b""

    def body(self, stream: int, data: bytes) -> bytes:
        if not data:
            return b""
        return self._reply_conn(stream).send(h11.Data(data=data)) or b""

    def end(self, stream: int) -> bytes:
        """The end of the response to ``stream``; the next request may be answered after."""
        conn = self._reply_conn(stream)
        out = conn.send(h11.EndOfMessage()) or b""
        if self._replies and self._replies[0][1] is conn:
            self._replies.popleft()
        if self._switching:  # the upgrade was refused: go on reading requests
            self._switching = False
        return out

    def take_switched(self) -> bytes:
        """After a 101: what the job sent behind its upgrade request."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class H1Client:
    """The upstream HTTP/1.1 connection, one request at a time; see the module docstring."""

    def __init__(self, *, max_head: int = MAX_HEAD) -> None:
        self.max_head = max_head
        self._conn: h11.Connection | None = None
        self.stream = 0
        self.switched = False
        self.reusable = True
        self._method = ""

    @property
    def busy(self) -> bool:
        return self._conn is not None

    def request(self, head: RequestHead, headers: Headers) -> bytes:
        """Bytes of ``head`` with ``headers`` (end-to-end, credentials already applied);
        framing is the appliance's: Content-Length when known, else chunked."""
        if self._conn is not None:
            raise LocalProtocolError("a request is already in flight upstream")
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=self.max_head)
        self.stream = head.stream
        self._method = head.method
        out = [("host", head.authority), *(h for h in headers if h[0] != "content-length")]
        if head.body:
            if head.content_length is not None:
                out.append(("content-length", str(head.content_length)))
            else:
                out.append(("transfer-encoding", "chunked"))
        if head.upgrade:
            out += [("connection", "upgrade"), ("upgrade", head.upgrade)]
        try:
            return (
                self._conn.send(
                    h11.Request(method=head.method, target=head.target, headers=_wire(tuple(out)))
                )
                or b""
            )
        except h11.LocalProtocolError as exc:
            raise PeerError(f"the request cannot be forwarded: {exc}") from None

    def body(self, data: bytes) -> bytes:
        assert self._conn is not None
        if not data:
            return b""
        try:
            return self._conn.send(h11.Data(data=data)) or b""
        except h11.LocalProtocolError as exc:
            raise PeerError(f"the request body does not match its length: {exc}") from None

    def end(self) -> bytes:
        assert self._conn is not None
        try:
            return self._conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            raise PeerError(f"the request body does not match its length: {exc}") from None

    def receive_data(self, data: bytes) -> list[Event]:
        """Events of the response (``b""``: the server closed)."""
        if self.switched:
            return [Switched(data)] if data else []
        conn = self._conn
        if conn is None:
            if data:
                raise PeerError(
                    "the server sent data with no request in flight", side="upstream", status=502
                )
            return [Closed()]
        conn.receive_data(data)
        events: list[Event] = []
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise PeerError(f"malformed response: {exc}", side="upstream", status=502) from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return events
            if isinstance(event, h11.InformationalResponse | h11.Response):
                headers = _text(event.headers)
                informational = isinstance(event, h11.InformationalResponse)
                if event.status_code == 101:
                    self.switched = True
                    leftover, _ = conn.trailing_data
                    events.append(self._response(event, headers, body=False))
                    events.append(Switched(bytes(leftover)))
                    return events
                if "close" in (header(headers, "connection") or "").lower():
                    self.reusable = False
                body = (
                    not informational
                    and self._method != "HEAD"
                    and event.status_code not in (204, 304)
                )
                events.append(self._response(event, headers, body=body))
            elif isinstance(event, h11.Data):
                events.append(Body(self.stream, bytes(event.data)))
            elif isinstance(event, h11.EndOfMessage):
                events.append(End(self.stream, _text(event.headers)))
                if conn.their_state is not h11.DONE:
                    self.reusable = False
                self._conn = None
                return events
            elif isinstance(event, h11.ConnectionClosed):
                raise PeerError(
                    "the server closed the connection mid-response", side="upstream", status=502
                )

    def _response(
        self, event: h11.Response | h11.InformationalResponse, headers: Headers, *, body: bool
    ) -> ResponseHead:
        return ResponseHead(
            stream=self.stream,
            status=event.status_code,
            headers=end_to_end(headers) if event.status_code != 101 else headers,
            reason=event.reason.decode("latin-1"),
            http_version=event.http_version.decode("ascii"),
            body=body,
        )


__all__ = ["MAX_HEAD", "H1Client", "H1Server", "end_to_end"]
