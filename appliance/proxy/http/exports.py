"""An HTTP session's entries as other tools read them: HAR 1.2, asciicast v2, pcap.

Where this sits: ``appliance ledger export --format har|asciicast|pcap`` reads one session's
entries (and their blobs) and calls :func:`har`, :func:`asciicast` or, through
:mod:`appliance.ledger.pcap`'s registry, :func:`render_pcap`. Everything shown is what
the ledger holds: masked values, credential headers as ``[REDACTED]``, bodies as far as
they were kept (``record_body``), their full size and SHA-256 noted.

- HAR 1.2 (http://www.softwareishard.com/blog/har-12-spec/): one ``entries[]`` item per
  exchange (``http.request`` + ``http.response``), timings from the recorded durations;
  opens in browsers' developer tools.
- asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/): the Kubernetes exec/attach
  streams of the session (``websocket.message`` entries with a channel): stdout and stderr
  as output events, stdin as input events.
- pcap: each exchange rebuilt as HTTP/1.1 text over the recorded client and server
  addresses (:mod:`appliance.ledger.pcap`), decrypted: Wireshark reads it as HTTP when told
  to decode the port as HTTP.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any, Protocol

from appliance.ledger.entries import ts_to_us
from appliance.ledger.pcap import C2S, S2C, Segment, register_renderer


class Blobs(Protocol):
    def read(self, sha256: str) -> bytes: ...


def blob_text(ref: object, blobs: Blobs) -> str | None:
    """The text of a body blob reference (inline or stored), or None."""
    if not isinstance(ref, Mapping) or not isinstance(ref.get("sha256"), str):
        return None
    inline = ref.get("inline")
    if isinstance(inline, str):
        return inline
    try:
        return blobs.read(ref["sha256"]).decode("utf-8", "replace")
    except Exception:
        return None


def _exchanges(entries: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    requests: dict[int, dict[str, Any]] = {}
    order: list[int] = []
    responses: dict[int, dict[str, Any]] = {}
    for e in entries:
        d = e.get("data") or {}
        if e.get("type") == "http.request" and isinstance(d.get("n"), int):
            requests[d["n"]] = e
            order.append(d["n"])
        elif e.get("type") == "http.response" and isinstance(d.get("n"), int):
            responses[d["n"]] = e
    return [(requests[n], responses.get(n)) for n in order]


def _iso(ts: str) -> str:
    us = ts_to_us(ts)
    return (
        datetime.datetime.fromtimestamp(us / 1e6, datetime.UTC).isoformat().replace("+00:00", "Z")
    )


def har(
    entries: list[dict[str, Any]], blobs: Blobs, *, creator: str = "appliance"
) -> dict[str, Any]:
    """The HAR 1.2 document of one session's entries."""
    out = []
    for req_e, resp_e in _exchanges(entries):
        rq = req_e["data"]
        rs = (resp_e or {}).get("data") or {}
        url = f"{rq.get('scheme', 'https')}://{rq.get('host', '')}{rq.get('url', '')}"
        query = []
        if "?" in str(rq.get("url", "")):
            for pair in str(rq["url"]).split("?", 1)[1].split("&"):
                name, _, value = pair.partition("=")
                query.append({"name": name, "value": value})
        req: dict[str, Any] = {
            "method": rq.get("method", ""),
            "url": url,
            "httpVersion": "HTTP/2"
            if rq.get("http_version") == "2"
            else f"HTTP/{rq.get('http_version', '1.1')}",
            "cookies": [],
            "headers": [{"name": k, "value": v} for k, v in rq.get("headers") or []],
            "queryString": query,
            "headersSize": -1,
            "bodySize": (rs.get("request_body") or {}).get("length", 0),
        }
        body_text = blob_text(rs.get("request_body_blob"), blobs)
        if body_text is not None:
            req["postData"] = {
                "mimeType": _header(rq.get("headers"), "content-type") or "",
                "text": body_text,
            }
        resp_headers = rs.get("headers") or []
        content: dict[str, Any] = {
            "size": (rs.get("body") or {}).get("length", 0),
            "mimeType": _header(resp_headers, "content-type") or "",
        }
        text = blob_text(rs.get("body_blob"), blobs)
        if text is not None:
            content["text"] = text
        if rs.get("body"):
            content["comment"] = (
                f"{rs['body'].get('digest')}; truncated: {rs['body'].get('truncated')}"
            )
        wait = rs.get("wait_us", 0) / 1000
        total = rs.get("duration_us", 0) / 1000
        out.append(
            {
                "startedDateTime": _iso(req_e["ts"]),
                "time": total,
                "request": req,
                "response": {
                    "status": rs.get("status", 0),
                    "statusText": rs.get("reason", "") or rs.get("error", ""),
                    "httpVersion": req["httpVersion"],
                    "cookies": [],
                    "headers": [{"name": k, "value": v} for k, v in resp_headers],
                    "content": content,
                    "redirectURL": _header(resp_headers, "location") or "",
                    "headersSize": -1,
                    "bodySize": content["size"],
                },
                "cache": {},
                "timings": {"send": 0, "wait": wait, "receive": max(0.0, total - wait)},
                "comment": json.dumps({"decision": rq.get("decision"), "kube": rq.get("kube")}),
            }
        )
    return {"log": {"version": "1.2", "creator": {"name": creator, "version": "1"}, "entries": out}}


def _header(headers: object, name: str) -> str | None:
    for item in headers if isinstance(headers, list) else []:
        if isinstance(item, list) and len(item) == 2 and item[0] == name:
            return str(item[1])
    return None


def asciicast(entries: list[dict[str, Any]], *, width: int = 120, height: int = 40) -> list[str]:
    """asciicast v2 lines (header, then events) of the session's Kubernetes streams."""
    start: int | None = None
    events: list[str] = []
    title = ""
    for e in entries:
        d = e.get("data") or {}
        if e.get("type") == "http.request" and d.get("kube", {}).get("verb") in ("exec", "attach"):
            title = str(d.get("url", ""))
        if e.get("type") != "websocket.message" or "channel" not in d:
            continue
        now = ts_to_us(e["ts"])
        start = now if start is None else start
        kind = {0: "i", 1: "o", 2: "o"}.get(d["channel"])
        if kind is None or not d.get("text"):
            continue
        events.append(json.dumps([round((now - start) / 1e6, 6), kind, d["text"]]))
    first = next((e for e in entries if e.get("type") == "session.start"), None)
    header = {
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": ts_to_us(first["ts"]) // 1_000_000 if first else 0,
        "title": title,
    }
    return [json.dumps(header), *events]


def render_pcap(entries: list[dict[str, Any]], blobs: Blobs) -> list[Segment]:
    """Each exchange as HTTP/1.1 text, request then response."""
    segments: list[Segment] = []
    for req_e, resp_e in _exchanges(entries):
        rq = req_e["data"]
        lines = [f"{rq.get('method')} {rq.get('url')} HTTP/1.1", f"host: {rq.get('host')}"]
        lines += [
            f"{k}: {v}"
            for k, v in rq.get("headers") or []
            if k not in ("content-length", "transfer-encoding")
        ]
        rs = (resp_e or {}).get("data") or {}
        body = (blob_text(rs.get("request_body_blob"), blobs) or "").encode()
        lines.append(f"content-length: {len(body)}")
        segments.append(
            (ts_to_us(req_e["ts"]) / 1e6, C2S, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        )
        if resp_e is None:
            continue
        out = [f"HTTP/1.1 {rs.get('status', 502)} {rs.get('reason') or ''}".rstrip()]
        out += [
            f"{k}: {v}"
            for k, v in rs.get("headers") or []
            if k not in ("content-length", "transfer-encoding")
        ]
        text = (blob_text(rs.get("body_blob"), blobs) or "").encode()
        out.append(f"content-length: {len(text)}")
        segments.append(
            (ts_to_us(resp_e["ts"]) / 1e6, S2C, ("\r\n".join(out) + "\r\n\r\n").encode() + text)
        )
    return segments


register_renderer("http", render_pcap)

__all__ = ["asciicast", "blob_text", "har", "render_pcap"]
