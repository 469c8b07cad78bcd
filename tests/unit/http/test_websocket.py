"""WebSocket messages recorded as they pass (:mod:`appliance.proxy.http.websocket`)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from wsproto.frame_protocol import FrameProtocol

from appliance.masking import Masker, MaskingConfig
from appliance.protocols.http import PeerError
from appliance.proxy.http.recording import HttpRecorder
from appliance.proxy.http.websocket import WebSocketRecorder


class Ledger:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def append(self, type: str, *, data: Any, **_: Any) -> None:
        self.entries.append(dict(data))


def _recorder(subprotocol: str | None, kube: bool = True) -> tuple[Ledger, WebSocketRecorder]:
    ledger = Ledger()
    rec = HttpRecorder(
        ledger,  # type: ignore[arg-type]
        session="s", target="k8s", account=None, identity={},
        masker=Masker(MaskingConfig(), hmac_key=b"k" * 32).for_target("k8s"), paths=(), record_body=1024,
    )  # fmt: skip
    return ledger, WebSocketRecorder(rec, 1, subprotocol, kube=kube)


def test_fragmented_binary_channels_byte_by_byte() -> None:
    ledger, ws = _recorder("v5.channel.k8s.io")
    client = FrameProtocol(client=True, extensions=[])
    wire = client.send_data(b"\x00echo 4111", fin=False) + client.send_data(
        b" 1111 1111 1111\n", fin=True
    )
    for i in range(len(wire)):
        ws.feed("c2s", wire[i : i + 1])
    (m,) = ledger.entries
    assert (m["stream"], m["direction"]) == ("stdin", "c2s")
    assert "4111" not in m["text"] and m["size"] == len(b"\x00echo 4111 1111 1111 1111\n")


def test_base64_channels_and_plain_text() -> None:
    ledger, ws = _recorder("base64.channel.k8s.io")
    server = FrameProtocol(client=False, extensions=[])
    ws.feed("s2c", server.send_data("1" + base64.b64encode(b"hi\n").decode(), fin=True))
    assert ledger.entries[0]["stream"] == "stdout" and ledger.entries[0]["text"] == "hi\n"
    ledger, ws = _recorder(None, kube=False)
    ws.feed("s2c", server.send_data("ssn 536-22-8119", fin=True))
    assert ledger.entries[0] == {
        "n": 1,
        "direction": "s2c",
        "subprotocol": None,
        "size": 15,
        "truncated": False,
        "opcode": "text",
        "text": "ssn [REDACTED:SSN]",
        "masking": {"columns": {}, "detectors": {"ssn": 1}},
    }


def test_an_unmasked_client_frame_is_a_peer_error() -> None:
    _, ws = _recorder(None)
    server = FrameProtocol(client=False, extensions=[])
    with pytest.raises(PeerError):
        ws.feed("c2s", server.send_data(b"x", fin=True))  # server frames are not masked
