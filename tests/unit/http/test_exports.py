"""HAR 1.2, asciicast v2 and pcap of an HTTP session (:mod:`appliance.proxy.http.exports`),
from entries as the ledger holds them, and the API-shaped errors (:mod:`appliance.proxy.
http.errors`)."""

from __future__ import annotations

import json

from appliance.ledger.pcap import C2S, S2C, renderer_for
from appliance.proxy.http.errors import error_body
from appliance.proxy.http.exports import asciicast, har


class NoBlobs:
    def read(self, sha256: str) -> bytes:
        raise KeyError(sha256)


ENTRIES = [
    {"ts": "2026-01-02T03:04:05.000000Z", "type": "session.start", "data": {"protocol": "http"}},
    {
        "ts": "2026-01-02T03:04:05.100000Z",
        "type": "http.request",
        "data": {
            "n": 1,
            "method": "GET",
            "scheme": "https",
            "host": "a.test",
            "url": "/x?card=[REDACTED:CARD]",
            "http_version": "2",
            "headers": [["accept", "*/*"]],
            "decision": {"decision": "allow"},
        },
    },
    {
        "ts": "2026-01-02T03:04:05.200000Z",
        "type": "http.response",
        "data": {
            "n": 1,
            "status": 200,
            "reason": "",
            "headers": [["content-type", "application/json"]],
            "duration_us": 100000,
            "wait_us": 40000,
            "body": {"length": 2, "digest": "sha256:00", "truncated": False},
            "body_blob": {"sha256": "aa" * 32, "size": 2, "inline": "{}"},
        },
    },
    {
        "ts": "2026-01-02T03:04:06.000000Z",
        "type": "websocket.message",
        "data": {"n": 2, "channel": 1, "stream": "stdout", "text": "hello\n"},
    },
    {
        "ts": "2026-01-02T03:04:06.500000Z",
        "type": "websocket.message",
        "data": {"n": 2, "channel": 0, "stream": "stdin", "text": "ls\n"},
    },
]


def test_har() -> None:
    doc = har(ENTRIES, NoBlobs())
    (entry,) = doc["log"]["entries"]
    assert doc["log"]["version"] == "1.2"
    assert entry["request"]["url"] == "https://a.test/x?card=[REDACTED:CARD]"
    assert entry["request"]["queryString"] == [{"name": "card", "value": "[REDACTED:CARD]"}]
    assert entry["response"]["content"] == {
        "size": 2,
        "mimeType": "application/json",
        "text": "{}",
        "comment": "sha256:00; truncated: False",
    }
    assert entry["timings"] == {"send": 0, "wait": 40.0, "receive": 60.0}


def test_asciicast() -> None:
    header, *events = asciicast(ENTRIES)
    assert json.loads(header)["version"] == 2
    assert [json.loads(e)[1:] for e in events] == [["o", "hello\n"], ["i", "ls\n"]]


def test_pcap_renderer_is_registered_through_the_registry() -> None:
    segments = renderer_for("http")(ENTRIES, NoBlobs())  # type: ignore[arg-type]
    assert [d for _, d, _ in segments] == [C2S, S2C]
    assert segments[1][2].endswith(b"\r\n\r\n{}")


def test_error_shapes() -> None:
    headers, body = error_body(403, "no", flavor="kubernetes", decision="d1")
    assert json.loads(body)["kind"] == "Status" and dict(headers)["content-length"] == str(
        len(body)
    )
    _, body = error_body(403, "no <way>", flavor="s3", decision="d1")
    assert (
        b"<Code>AccessDenied</Code><Message>no &lt;way&gt;</Message><RequestId>d1</RequestId>"
        in body
    )
    _, body = error_body(421, "elsewhere", flavor="json")
    assert json.loads(body) == {"error": {"code": 421, "message": "elsewhere"}}
