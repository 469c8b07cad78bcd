"""What a PostgreSQL session leaves in the ledger, masked before anything is written.

Where this sits: the session's relay hooks call :class:`SessionRecorder` for every statement,
response, notice and decision; it builds the ledger entries (``session.start``,
``statement``, ``policy.decision``, ``response``, ``masking.applied``, ``session.end`` ...)
and hands them to the ledger writer (:class:`~appliance.ledger.api.Ledger`), whose ``append`` only
enqueues. Text that can carry personal data (statement text, bind parameters, error and
notice fields, notification payloads) is masked here, on the event loop, with the
detectors' cheap pre-filter first. Result rows are not decoded here at all: their raw
DataRow/CopyData frames are copied once per run into a blob sink (:class:`~appliance.ledger.
result_sink.RowsSink`, shared by every protocol), and the decoding, masking and JSON
encoding happen in the ledger writer (:class:`~appliance.proxy.pg.rows.RowsTransform`, the
blob's format there), off the hot path: in the writer's own process by default.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from appliance.ledger.result_sink import RowsSink, header_part
from appliance.masking import MaskCounts
from appliance.policy import copy_spec
from appliance.protocols.postgres.messages import (
    ErrorResponse,
    NoticeResponse,
    NotificationResponse,
    RowDescription,
)
from appliance.proxy.pg.relay import Statement
from appliance.proxy.pg.rows import RowsTransform
from appliance.proxy.records import SessionRecords


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


_HEADERS_KEPT = 64  # result shapes whose header part a session keeps (then forgotten at once)


class _ResultView:
    """The per-result-set face of a statement's :class:`RowsSink` (the relay's ResultSink)."""

    def __init__(self, sink: RowsSink) -> None:
        self.sink = sink

    def add(self, frames: bytes) -> None:
        self.sink.add(frames)

    def close(self) -> None:
        self.sink.close()


class SessionRecorder(SessionRecords):
    """Builds and appends one session's ledger entries; see the module docstring."""

    transform = RowsTransform
    # table OID -> "schema.table" (proxy.pg.catalog), set once the session is ready
    tables: Mapping[int, str] = MappingProxyType({})
    # per id() of a RowDescription: it, the formats, the tables, the header's blob part
    _headers: (
        dict[int, tuple[RowDescription | None, tuple[int, ...], Mapping[int, str], bytes]] | None
    ) = None

    def _masked_params(self, stmt: Statement, counts: MaskCounts) -> list[Any]:
        out: list[Any] = []
        for i, value in enumerate(stmt.params):
            fmt = (
                stmt.param_formats[i]
                if len(stmt.param_formats) > 1
                else (stmt.param_formats or (0,))[0]
            )
            if value is None:
                out.append(None)
            elif fmt == 0:
                out.append(self.mask(value.decode("utf-8", "replace"), counts))
            else:
                # A binary parameter: its type is not known here, so it is never written.
                out.append({"binary": len(value)})
        return out

    def _error(self, error: ErrorResponse | NoticeResponse, counts: MaskCounts) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": error.severity, "code": error.code}
        for name in (
            "message",
            "detail",
            "hint",
            "where",
            "table_name",
            "column_name",
            "constraint_name",
        ):
            value = error.get(name)
            if value is not None:
                out[name] = self.mask(value, counts)
        return out

    # -- entries ---------------------------------------------------------------------------

    def statement(self, stmt: Statement) -> None:
        counts = MaskCounts()
        data: dict[str, Any] = {
            "n": stmt.n,
            "protocol": stmt.protocol,
            "text": self.mask_statement(stmt.text, counts),
        }
        if stmt.params:
            data["params"] = self._masked_params(stmt, counts)
        if stmt.statement_name:
            data["prepared"] = stmt.statement_name
        self.statement_entries(stmt.n, data, stmt.verdict.record, counts)

    def response(self, stmt: Statement, *, masked_to_job: MaskCounts | None = None) -> None:
        counts = MaskCounts()
        finished = stmt.finished if stmt.finished is not None else self.clock()
        results = [
            {
                "tag": r.tag,
                "rows": r.rows,
                "columns": self.mask_names(r.columns, counts) if r.columns else None,
            }
            for r in stmt.results
        ]
        last = stmt.results[-1] if stmt.results else None
        data: dict[str, Any] = {
            "n": stmt.n,
            "outcome": stmt.outcome,
            "tag": last.tag if last else None,
            "rows": stmt.rows,
            "columns": (results[-1]["columns"] or []) if results else [],
            "duration_us": max(0, _us(finished - stmt.started)),
            "error": self._error(stmt.error, counts) if stmt.error is not None else None,
        }
        if len(results) > 1:
            data["results"] = results
        if stmt.approval is not None:
            data["approval"] = stmt.approval
        if stmt.notices:
            data["notices"] = stmt.notices
        self.response_entries(stmt.n, data, counts, masked_to_job)

    def result_sink(
        self, stmt: Statement, description: RowDescription | None, formats: tuple[int, ...]
    ) -> _ResultView | None:
        sink = self.sink(stmt.n)
        if sink is None:
            return None
        # The same result shapes come back statement after statement, and the relay keeps
        # one RowDescription per shape: the header's part is kept per description object
        # (and formats, and the table names known when it was made).
        headers = self._headers
        if headers is None:
            headers = self._headers = {}
        hit = headers.get(id(description))
        if (
            hit is None
            or hit[0] is not description
            or hit[1] != formats
            or hit[2] is not self.tables
        ):
            header: dict[str, Any] = {
                "columns": [f.name for f in description.fields] if description else None,
                "types": [f.type_oid for f in description.fields] if description else [],
                "formats": list(formats),
            }
            if self.tables and description:
                header["tables"] = [self.tables.get(f.table_oid) for f in description.fields]
            hit = (description, formats, self.tables, header_part(header))
            if len(headers) >= _HEADERS_KEPT:
                headers.clear()
            headers[id(description)] = hit
        sink.start(hit[3])
        return _ResultView(sink)

    def copy_sink(self, stmt: Statement, direction: str) -> _ResultView | None:
        sink = self.sink(stmt.n)
        if sink is None:
            return None
        copy = copy_spec(stmt.text)
        header: dict[str, Any] = {"copy": direction, "csv": bool(copy and copy.format == "csv")}
        if copy is not None and copy.format == "binary":
            header["binary"] = True
        if copy is not None and copy.columns is not None:
            header["columns"] = list(copy.columns)
            header["table"] = copy.table
        if copy is not None and copy.header:
            header["header"] = True
        sink.header(header, copy=True)
        return _ResultView(sink)

    def request_error(self, request: str, text: str | None, error: ErrorResponse) -> None:
        """A request refused by the server outside any statement (see
        :meth:`~appliance.proxy.pg.relay.RelayHooks.request_failed`)."""
        counts = MaskCounts()
        data: dict[str, Any] = {
            "request": request,
            "text": self.mask(text, counts) if text is not None else None,
            "error": self._error(error, counts),
        }
        if counts:
            data["masking"] = counts.as_dict()
        self.append("request.error", data)

    def notice(self, stmt: Statement | None, notice: NoticeResponse) -> None:
        counts = MaskCounts()
        data = {"n": stmt.n if stmt else None, **self._error(notice, counts)}
        self.append("notice", data)

    def notification(self, notification: NotificationResponse) -> None:
        counts = MaskCounts()
        self.append(
            "notification",
            {
                "channel": notification.channel,
                "payload": self.mask(notification.payload, counts),
                "pid": notification.pid,
            },
        )
