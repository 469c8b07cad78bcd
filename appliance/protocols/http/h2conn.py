"""HTTP/2 toward the job (the appliance plays the server), sans-IO, with the h2 library.

Where this sits: when the job's TLS handshake picked ``h2`` (ALPN), the session core reads
the job's bytes through :class:`H2Server` instead of :class:`~.h1.H1Server`; the events are
the same (:mod:`._events`), with HTTP/2 stream ids. Upstream stays HTTP/1.1
(:class:`~.h1.H1Client`): the core serves the job's streams one after another.

Bounds (each abuse ends the connection with a GOAWAY and a :class:`~._errors.PeerError`):

- at most ``max_streams`` concurrent streams (SETTINGS_MAX_CONCURRENT_STREAMS, enforced
  by h2: a stream past it is refused);
- header blocks: h2 refuses a block of more than 64 CONTINUATION frames and a header list
  larger than SETTINGS_MAX_HEADER_LIST_SIZE (``max_header_list``): the CONTINUATION flood
  (CVE-2024-27316 and kin) is bounded in memory and time;
- rapid reset (CVE-2023-44487): a job that resets more than ``max_resets`` streams before
  their responses is told ENHANCE_YOUR_CALM and cut off;
- response bodies wait in a per-stream buffer only while the job's flow-control window is
  closed; :attr:`H2Server.buffered` tells the core to stop reading upstream meanwhile.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

from appliance.protocols.http._errors import PeerError
from appliance.protocols.http._events import (
    Body,
    Closed,
    End,
    Event,
    Headers,
    RequestHead,
    Reset,
    ResponseHead,
    header,
)
from appliance.protocols.http._head import HOP_BY_HOP

ALPN_H2 = "h2"


def _data_body_repr(self: hyperframe.frame.DataFrame) -> str:
    return f"<{len(self.data)} bytes>"


# h2 builds ``repr(frame)`` for a trace log line on every frame it receives, even with
# logging off, and a DATA frame's repr serialises and dumps its payload: a third of the
# event loop's time during an upload over HTTP/2 (py-spy). The repr of DATA frames says
# their length instead (it is only ever read in logs).
hyperframe.frame.DataFrame._body_repr = _data_body_repr  # type: ignore[method-assign,assignment]


class H2Server:
    """The job's HTTP/2 connection; see the module docstring."""

    def __init__(
        self, *, max_streams: int = 100, max_header_list: int = 64 * 1024, max_resets: int = 100
    ) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.conn.decoder.max_header_list_size = max_header_list
        self.conn.initiate_connection()
        # Streams that wait for their turn hold their windows unacknowledged: the connection's
        # window has room for every stream's, so that the one being served never starves.
        self.conn.increment_flow_control_window(max_streams * 65535)
        self.max_resets = max_resets
        self.resets = 0
        self.closed = False
        self._answered: set[int] = set()
        self._pending: dict[int, bytearray] = {}
        self._ending: set[int] = set()

    def data_to_send(self) -> bytes:
        return bytes(self.conn.data_to_send())

    @property
    def buffered(self) -> int:
        """Response bytes waiting for the job's flow-control window."""
        return sum(len(b) for b in self._pending.values())

    def receive_data(self, data: bytes) -> list[Event]:
        if not data:
            self.closed = True
            return [Closed()]
        try:
            raw = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 queued the GOAWAY; the core sends data_to_send() before closing.
            raise PeerError(f"HTTP/2 protocol error: {exc}") from None
        events: list[Event] = []
        for ev in raw:
            if isinstance(ev, h2.events.RequestReceived):
                assert ev.stream_id is not None and ev.headers is not None
                events.append(self._head(ev.stream_id, ev.headers, ev.stream_ended is not None))
                if ev.stream_ended is not None:
                    events.append(End(ev.stream_id))
            elif isinstance(ev, h2.events.DataReceived):
                assert ev.stream_id is not None and ev.data is not None
                # The window reopens when the core has passed the bytes on (ack): a stream
                # that waits (its turn upstream, an approval) holds one window at most.
                events.append(Body(ev.stream_id, bytes(ev.data), ev.flow_controlled_length or 0))
                if ev.stream_ended is not None:
                    events.append(End(ev.stream_id))
            elif isinstance(ev, h2.events.TrailersReceived):
                assert ev.stream_id is not None
                events.append(End(ev.stream_id, _text(ev.headers or [])))
            elif isinstance(ev, h2.events.StreamEnded):
                assert ev.stream_id is not None
                events.append(End(ev.stream_id))
            elif isinstance(ev, h2.events.StreamReset):
                assert ev.stream_id is not None
                if ev.remote_reset and ev.stream_id not in self._answered:
                    self.resets += 1
                    if self.resets > self.max_resets:
                        self.conn.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                        raise PeerError(
                            f"more than {self.max_resets} streams reset before their response "
                            "(HTTP/2 rapid reset)"
                        )
                self._pending.pop(ev.stream_id, None)
                self._ending.discard(ev.stream_id)
                events.append(Reset(ev.stream_id, f"reset by the job ({ev.error_code!r})"))
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.closed = True
                events.append(Closed())
            elif isinstance(ev, h2.events.WindowUpdated):
                self._flush()
        return events

    def _head(self, stream: int, raw: Any, ended: bool) -> RequestHead:
        pseudo: dict[str, str] = {}
        headers: list[tuple[str, str]] = []
        for k, v in raw:
            key = k.decode("latin-1") if isinstance(k, bytes) else k
            value = v.decode("latin-1") if isinstance(v, bytes) else v
            if key.startswith(":"):
                pseudo[key] = value
            elif key not in HOP_BY_HOP and key != "host":
                headers.append((key, value))
        if pseudo.get(":method") == "CONNECT":
            raise PeerError("CONNECT is not served")
        path = pseudo.get(":path", "")
        if not path.startswith("/"):
            raise PeerError("an HTTP/2 request without an origin-form :path")
        authority = pseudo.get(":authority") or header(_text(raw), "host") or ""
        length = header(tuple(headers), "content-length")
        if length is not None and not length.isdigit():
            raise PeerError("a content-length that is not a number")
        method = pseudo.get(":method", "")
        # As in HTTP/1.1 (see ._head): a body on GET is not forwarded. The stream's end may
        # come with an empty DATA frame: that is no body.
        if method in ("GET", "HEAD", "TRACE") and not ended and length not in (None, "0"):
            raise PeerError(f"a body on {method}")
        return RequestHead(
            stream=stream,
            method=method,
            target=path,
            authority=authority,
            headers=tuple(h for h in headers if h[0] != "content-length"),
            http_version="2",
            body=not ended,
            content_length=int(length) if length is not None else None,
            scheme=pseudo.get(":scheme", "https"),
        )

    def ack(self, stream: int, n: int) -> bytes:
        """``n`` flow-controlled bytes of ``stream`` were passed on: reopen the window."""
        if n:
            try:
                self.conn.acknowledge_received_data(n, stream)
            except h2.exceptions.StreamClosedError:
                self.conn.increment_flow_control_window(n)
        return self.data_to_send()

    # -- responses ---------------------------------------------------------------------------

    def respond(self, head: ResponseHead) -> bytes:
        stream = head.stream
        if head.informational and head.status != 100:
            return b""  # 101 has no meaning in HTTP/2; others are dropped
        headers = [(":status", str(head.status))]
        headers += [(k, v) for k, v in head.headers if k not in HOP_BY_HOP]
        end = not head.body and not head.informational
        try:
            self.conn.send_headers(stream, headers, end_stream=end)
        except h2.exceptions.StreamClosedError:
            return self.data_to_send()
        if not head.informational:
            self._answered.add(stream)
        return self.data_to_send()

    def body(self, stream: int, data: bytes) -> bytes:
        if data:
            self._pending.setdefault(stream, bytearray()).extend(data)
            self._flush()
        return self.data_to_send()

    def end(self, stream: int) -> bytes:
        self._ending.add(stream)
        self._flush()
        return self.data_to_send()

    def refuse(self, stream: int) -> bytes:
        """Reset ``stream`` (the appliance cannot answer it)."""
        self._pending.pop(stream, None)
        self._ending.discard(stream)
        try:
            self.conn.reset_stream(stream, h2.errors.ErrorCodes.REFUSED_STREAM)
        except h2.exceptions.StreamClosedError:
            pass
        return self.data_to_send()

    def goaway(self) -> bytes:
        self.conn.close_connection()
        return self.data_to_send()

    def _flush(self) -> None:
        for stream in list(self._pending.keys() | self._ending):
            pending = self._pending.get(stream, bytearray())
            try:
                while pending:
                    window = min(
                        self.conn.local_flow_control_window(stream),
                        self.conn.max_outbound_frame_size,
                    )
                    if window <= 0:
                        break
                    self.conn.send_data(stream, bytes(pending[:window]))
                    del pending[:window]
                if not pending:
                    self._pending.pop(stream, None)
                    if stream in self._ending:
                        self._ending.discard(stream)
                        self.conn.end_stream(stream)
            except h2.exceptions.StreamClosedError:
                self._pending.pop(stream, None)
                self._ending.discard(stream)


def _text(raw: object) -> Headers:
    out = []
    for k, v in raw:  # type: ignore[attr-defined]
        out.append(
            (
                k.decode("latin-1") if isinstance(k, bytes) else k,
                v.decode("latin-1") if isinstance(v, bytes) else v,
            )
        )
    return tuple(out)


__all__ = ["ALPN_H2", "H2Server"]
