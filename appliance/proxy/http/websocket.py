"""WebSocket messages after a 101, recorded as they pass (sans-IO).

Where this sits: once the target answers an upgrade with 101, the HTTP session core relays
the bytes of both directions unchanged and feeds them here. Frames are read with wsproto's
frame parser (client-to-server frames masked, the other way not); each message, its first
``record_body`` bytes, becomes a ``websocket.message`` entry (text masked; binary as its
length). The job's ``Sec-WebSocket-Extensions`` is not forwarded, so no compression is
negotiated and every frame can be read.

Kubernetes streaming (``v5.channel.k8s.io`` and ``v4``/``channel.k8s.io``: binary
messages whose first byte is the channel; ``base64.channel.k8s.io``: text, a digit then
base64): each message carries ``channel`` (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize;
v5's 255 closes a channel) and its data as masked text: ``appliance ledger export --format
asciicast`` replays stdout and stderr as a terminal session (asciicast v2).

A frame the parser refuses (a broken stream) raises :class:`~appliance.protocols.http.
PeerError`: the session ends (nothing passes unrecorded).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from appliance.masking import MaskCounts
from appliance.protocols.http import PeerError
from appliance.proxy.http.recording import HttpRecorder

KUBE_BINARY = (
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
)
KUBE_BASE64 = ("v5.base64.channel.k8s.io", "v4.base64.channel.k8s.io", "base64.channel.k8s.io")
CHANNELS = {0: "stdin", 1: "stdout", 2: "stderr", 3: "error", 4: "resize", 255: "close"}


class _Direction:
    def __init__(self, client_frames: bool) -> None:
        # Frames the client sent are read the way a server reads them.
        self.parser = FrameProtocol(client=not client_frames, extensions=[])
        self.opcode: Opcode | None = None
        self.buffer = bytearray()
        self.size = 0
        self.in_message = False


class WebSocketRecorder:
    """One upgraded connection's messages; see the module docstring."""

    def __init__(
        self, recorder: HttpRecorder, n: int, subprotocol: str | None, *, kube: bool
    ) -> None:
        self.recorder = recorder
        self.n = n
        self.subprotocol = (subprotocol or "").strip()
        self.kube_binary = kube and self.subprotocol in KUBE_BINARY
        self.kube_base64 = kube and self.subprotocol in KUBE_BASE64
        self.cap = max(recorder.record_body, 1024)
        self.directions = {"c2s": _Direction(True), "s2c": _Direction(False)}
        self.messages = 0
        self.closed = False

    def feed(self, direction: str, data: bytes) -> None:
        d = self.directions[direction]
        d.parser.receive_bytes(data)
        try:
            for frame in d.parser.received_frames():
                if frame.opcode in (Opcode.PING, Opcode.PONG):
                    continue
                if frame.opcode is Opcode.CLOSE:
                    self.closed = True
                    self._append(direction, {"opcode": "close"})
                    continue
                if not d.in_message:
                    # A message starts (wsproto hands a frame over in pieces as its bytes
                    # arrive, each with the frame's opcode).
                    d.in_message = True
                    d.opcode = frame.opcode
                    d.buffer.clear()
                    d.size = 0
                payload = frame.payload
                raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)  # type: ignore[arg-type]
                d.size += len(raw)
                room = self.cap - len(d.buffer)
                if room > 0:
                    d.buffer += raw[:room]
                if frame.message_finished:
                    self._message(direction, d)
                    d.buffer.clear()
                    d.size = 0
                    d.in_message = False
        except ParseFailed as exc:
            raise PeerError(
                f"a WebSocket frame the appliance cannot read: {exc}",
                side="job" if direction == "c2s" else "upstream",
                status=400,
            ) from None

    def _message(self, direction: str, d: _Direction) -> None:
        data = bytes(d.buffer)
        record: dict[str, Any] = {"size": d.size, "truncated": d.size > len(data)}
        counts = MaskCounts()
        if self.kube_binary and d.opcode is Opcode.BINARY and data:
            channel, body = data[0], data[1:]
            record.update(self._channel(channel, body, counts))
        elif self.kube_base64 and d.opcode is Opcode.TEXT and data[:1].isdigit():
            try:
                body = base64.b64decode(data[1:], validate=False)
            except (binascii.Error, ValueError):
                body = b""
            record.update(self._channel(data[0] - 0x30, body, counts))
        elif d.opcode is Opcode.TEXT:
            record["opcode"] = "text"
            record["text"] = self.recorder.mask(data.decode("utf-8", "replace"), counts)
        else:
            record["opcode"] = "binary"
        if counts:
            record["masking"] = counts.as_dict()
        self._append(direction, record)

    def _channel(self, channel: int, body: bytes, counts: MaskCounts) -> dict[str, Any]:
        out: dict[str, Any] = {
            "opcode": "binary",
            "channel": channel,
            "stream": CHANNELS.get(channel, str(channel)),
        }
        text = body.decode("utf-8", "replace")
        out["text"] = self.recorder.mask(text, counts)
        return out

    def _append(self, direction: str, record: dict[str, Any]) -> None:
        self.messages += 1
        self.recorder.append(
            "websocket.message",
            {
                "n": self.n,
                "direction": direction,
                "subprotocol": self.subprotocol or None,
                **record,
            },
        )

    def finish(self) -> None:
        """Messages cut off by the end of the connection are recorded as far as they came."""
        for direction, d in self.directions.items():
            if d.size:
                self._message(direction, d)
                d.buffer.clear()
                d.size = 0


__all__ = ["CHANNELS", "KUBE_BASE64", "KUBE_BINARY", "WebSocketRecorder"]
