"""Terminal and stream recordings (SSH channels): the blob format, read and written here,
and its export as asciicast v2.

Where this sits: an SSH channel's streams are written by the ledger writer's transform
(:mod:`appliance.proxy.ssh.terminal`, with :func:`header_line` and :func:`event_line`) to a
blob referenced as ``output`` from the channel's ``response`` entry; ``ledger replay``
plays them (:mod:`appliance.ledger.render`) and ``ledger export --format asciicast`` turns
one into an asciicast v2 file (:func:`export_asciicast`) that ``asciinema play`` plays.

Format (JSON Lines, masked): a header object (``pty``, ``term``, ``cols``, ``rows``,
``request``), then one array per event: ``[microseconds since the channel started, kind,
text]`` with kind ``o`` (output), ``e`` (error output), ``i`` (input; a line typed without
echo is ``[NO-ECHO: n characters]``), ``r`` (resize, ``COLSxROWS``). Events are written
when their line is complete: times may go back a little between kinds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from appliance.ledger.entries import ts_to_us
from appliance.ledger.errors import LedgerError
from appliance.ledger.index import Index, Query
from appliance.ledger.store import BlobReader, require_ledger

__all__ = [
    "Recording",
    "asciicast",
    "channel_start_us",
    "event_line",
    "export_asciicast",
    "header_line",
    "read_recording",
    "recordings",
]


def header_line(info: Mapping[str, Any]) -> bytes:
    return orjson.dumps(dict(info), option=orjson.OPT_SORT_KEYS) + b"\n"


def event_line(at_us: int, kind: str, text: str) -> bytes:
    return orjson.dumps([at_us, kind, text]) + b"\n"


@dataclass
class Recording:
    """One channel's recording: its header, events, and where it sits in the session."""

    header: dict[str, Any]
    events: list[tuple[int, str, str]]
    start_us: int = 0  # wall time of the channel's start, microseconds since the epoch
    n: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def read_recording(data: bytes) -> Recording:
    """Parse a recording blob; raises LedgerError if it is not one."""
    lines = data.splitlines()
    try:
        header = orjson.loads(lines[0]) if lines else {}
        events = [tuple(orjson.loads(line)) for line in lines[1:] if line.strip()]
    except orjson.JSONDecodeError as exc:
        raise LedgerError(f"not a recording: {exc}") from None
    if not isinstance(header, dict) or any(len(e) != 3 for e in events):
        raise LedgerError("not a recording: bad header or event")
    return Recording(header, [(int(a), str(k), str(t)) for a, k, t in events])


def channel_start_us(response: Mapping[str, Any]) -> int:
    """When the channel of a ``response`` entry started (its time less its duration):
    the origin of its recording's event times."""
    duration = (response.get("data") or {}).get("duration_us")
    return ts_to_us(str(response["ts"])) - (duration if isinstance(duration, int) else 0)


def _blob(ref: Mapping[str, Any], blobs: BlobReader) -> bytes | None:
    inline = ref.get("inline")
    if isinstance(inline, str):
        return inline.encode()
    sha = ref.get("sha256")
    if isinstance(sha, str) and blobs.exists(sha):
        return blobs.read(sha)
    return None


def recordings(
    entries: Iterator[Mapping[str, Any]] | list[Any], blobs: BlobReader
) -> Iterator[Recording]:
    """The recordings referenced by a session's ``response`` entries, in order."""
    for obj in entries:
        d = obj.get("data") or {}
        ref = d.get("output")
        if obj.get("type") != "response" or d.get("protocol") != "ssh" or not isinstance(ref, dict):
            continue
        data = _blob(ref, blobs)
        if data is None:
            continue
        rec = read_recording(data)
        rec.start_us = channel_start_us(obj)
        rec.n = d.get("n") if isinstance(d.get("n"), int) else None
        rec.meta = {"channel": d.get("channel"), "exit_status": d.get("exit_status")}
        yield rec


def export_asciicast(directory: Path, session: str, out: BinaryIO, *, n: int | None = None) -> int:
    """Write the session's first terminal recording (or request ``n``'s) as asciicast v2;
    return the number of events written. Raises LedgerError when there is none."""
    require_ledger(directory)
    with Index.open(directory) as index:
        found = [e.obj for e in index.query(Query(session=session))]
    if not found:
        raise LedgerError(f"no entries for session {session!r}")
    chosen = None
    for rec in recordings(found, BlobReader(directory)):
        if (n is None and rec.header.get("pty")) or (n is not None and rec.n == n):
            chosen = rec
            break
    if chosen is None:
        what = f"request {n}" if n is not None else "a terminal (pty) channel"
        raise LedgerError(f"session {session!r} has no recording of {what}")
    start = next((o for o in found if o["type"] == "session.start"), found[0])
    lines = asciicast(
        chosen, f"{start.get('target') or 'ssh'} session {session} request {chosen.n}"
    )
    out.writelines(lines)
    return len(lines) - 1


def asciicast(rec: Recording, title: str) -> list[bytes]:
    """One recording as the lines of an asciicast v2 file (header first); error output is
    shown as output, as a terminal would. The same recording gives the same bytes."""
    h = rec.header
    header = {
        "version": 2,
        "width": int(h.get("cols") or 80),
        "height": int(h.get("rows") or 24),
        "timestamp": rec.start_us // 1_000_000,
        "title": title,
        "env": {"TERM": str(h.get("term") or "xterm"), "SHELL": "/bin/sh"},
    }
    lines = [json.dumps(header).encode() + b"\n"]
    for at, kind, text in sorted(rec.events, key=lambda e: e[0]):
        kind = "o" if kind == "e" else kind
        lines.append(json.dumps([round(at / 1_000_000, 6), kind, text]).encode() + b"\n")
    return lines
