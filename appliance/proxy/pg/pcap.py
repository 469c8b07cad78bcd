"""A recorded PostgreSQL session rendered back as PostgreSQL v3 traffic, for the pcap export
(:mod:`appliance.ledger.pcap` wraps it in a TCP connection Wireshark reassembles).

Deliberately small and built with the codec's own encoders (:mod:`appliance.protocols.
postgres.messages`): a StartupMessage and AuthenticationOk for ``session.start``; a simple
Query per ``statement``; per ``response``, RowDescription (as text columns) and DataRows from
the result blob (:mod:`appliance.ledger.results`), CommandComplete or the recorded
ErrorResponse, then ReadyForQuery; Terminate for ``session.end``. What it shows is what the
ledger holds: masked values.
"""

from __future__ import annotations

from typing import Any

from appliance.ledger.entries import ts_to_us
from appliance.ledger.pcap import C2S, S2C, Segment, register_renderer
from appliance.ledger.results import cell_bytes, read_result, result_bytes
from appliance.ledger.store import BlobReader
from appliance.protocols.postgres.messages import (
    AuthenticationOk,
    CommandComplete,
    DataRow,
    FieldDescription,
    Query,
    ReadyForQuery,
    RowDescription,
    StartupMessage,
    Terminate,
    error_response,
)
from appliance.protocols.postgres.sqlstate import INTERNAL_ERROR

__all__ = ["render_postgres"]

_READY = ReadyForQuery("I").encode()


def _ts(entry: dict[str, Any]) -> float:
    return ts_to_us(entry["ts"]) / 1e6


def _result(data: dict[str, Any], blobs: BlobReader) -> bytes:
    """RowDescription and DataRows of a response's (masked) result sets."""
    content = result_bytes(data, blobs.get)
    out: list[bytes] = []
    if content is None:
        columns = [str(c) for c in data.get("columns") or []]
        if columns:
            out.append(RowDescription(tuple(FieldDescription(c) for c in columns)).encode())
        return b"".join(out)
    for result in read_result(content):
        if result.copy is not None:
            continue  # COPY data is not replayed as rows
        if result.columns:
            fields = tuple(FieldDescription(c) for c in result.columns)
            out.append(RowDescription(fields).encode())
        out.extend(DataRow(tuple(cell_bytes(c) for c in row)).encode() for row in result.rows)
    return b"".join(out)


def render_postgres(entries: list[dict[str, Any]], blobs: BlobReader) -> list[Segment]:
    """Minimal valid PostgreSQL v3 traffic for a recorded session (see the module docstring)."""
    out: list[Segment] = []
    for e in entries:
        d, ts, typ = e["data"], _ts(e), e["type"]
        if typ == "session.start":
            parameters = {"user": str(d.get("user", "")), "database": str(d.get("database", ""))}
            out.append((ts, C2S, StartupMessage(3, 0, parameters).encode()))
            out.append((ts, S2C, AuthenticationOk().encode() + _READY))
        elif typ == "statement":
            out.append((ts, C2S, Query(str(d.get("text", ""))).encode()))
        elif typ == "response":
            err = d.get("error")
            if isinstance(err, dict):
                code = str(err.get("code") or INTERNAL_ERROR)
                msg = error_response(
                    "ERROR", code if len(code) == 5 else INTERNAL_ERROR, str(err.get("message", ""))
                )
            else:
                msg = _result(d, blobs) + CommandComplete(str(d.get("tag") or "")).encode()
            out.append((ts, S2C, msg + _READY))
        elif typ == "session.end":
            out.append((ts, C2S, Terminate().encode()))
    return out


register_renderer("postgres", render_postgres)
