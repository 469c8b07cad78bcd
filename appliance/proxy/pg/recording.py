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
encoding happen in the ledger writer (:class:`RowsTransform`), off the hot path: in the
writer's own process by default.

Result blobs follow :mod:`appliance.ledger.results` (the one home of that format); the
header of a PostgreSQL result set also carries ``types`` (OIDs), ``formats`` and, when the
target's column rules name tables, ``tables``; a COPY's header says what its statement
says (``csv``, ``binary``, ``table``, ``columns``, ``header``). Everything in a blob is
masked, by the same decisions as the job's rows (:mod:`appliance.masking.postgres`).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson

from appliance.ledger import transform_helper
from appliance.ledger.result_sink import COPY, COPY_END, HEADER, ROWS, RowsSink, header_part
from appliance.masking import MaskCounts, TargetMasker
from appliance.masking.postgres import HeaderPlan, LedgerRows, header_plan
from appliance.policy import copy_spec
from appliance.protocols.postgres.messages import (
    ErrorResponse,
    NoticeResponse,
    NotificationResponse,
    RowDescription,
    datarow_values,
)
from appliance.proxy.pg.relay import Statement
from appliance.proxy.records import MaskingTransform, SessionRecords, pieces

_LEN = struct.Struct("!I")


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


class RowsTransform(MaskingTransform):
    """Runs in the ledger writer (its process or thread): the parts of a :class:`~appliance.
    ledger.result_sink.RowsSink` in (row runs are whole DataRow frames, COPY runs whole
    CopyData frames), masked JSON lines out (:mod:`appliance.ledger.results`), masked by
    :class:`~appliance.masking.postgres.LedgerRows` exactly as the job's rows are."""

    def __init__(self, masker: TargetMasker | None) -> None:
        super().__init__(masker)
        self.rows = LedgerRows(masker, self.counts)

    def part(self, kind: bytes, body: bytes) -> bytes:
        rows = self.rows
        if kind == HEADER:
            self.header = body
            # The same result shapes come back statement after statement: what a header
            # gives (its plan, its masked line, what masking it counted) is kept per
            # target and header bytes.
            planned, line, found = _cached_header(self.masker, body)
            rows.start(planned)
            if found:
                self.counts.update(found)
            return line
        if kind == ROWS:
            # All the run's rows at once: masking pre-filters them together.
            frames = _frames(body)
            if len(body) >= transform_helper.SHARE_FROM and self._splits_rows(frames):
                return self.shared(ROWS, pieces(frames))
            return self.masked(ROWS, frames)
        if kind == COPY and rows.copy is not None and rows.copy.format == "binary":
            return orjson.dumps(rows.copy_binary(sum(len(p) for p in _frames(body)))) + b"\n"
        if kind == COPY:
            # All the chunk's rows at once: masking pre-filters them together.
            lines = rows.take_lines(b"".join(_frames(body)))
            if len(lines) >= transform_helper.SHARE_FROM and self._splits_copy():
                return self.shared(COPY, _line_pieces(lines))
            return self.masked(COPY, [lines])
        if kind == COPY_END:
            return b"".join([orjson.dumps(line) + b"\n" for line in rows.copy_end()])
        return b""

    # A long run in pieces, some of which the ledger writer's helper process may mask on a
    # core that would sit idle (MaskingTransform.shared).

    def _splits_rows(self, frames: list[bytes]) -> bool:
        """Whether a run of DataRows may be masked in pieces: a masker and a header whose
        plan every row fits (else rows are planned one by one, and a plan made for one row
        is kept for the next: state the pieces would not share)."""
        plan = self.rows.plan
        if self.masker is None or self.header is None or plan is None or len(frames) < 2:
            return False
        width = _WIDTH.pack(len(plan.columns))
        return all(p[:2] == width for p in frames)

    def _splits_copy(self) -> bool:
        """Whether COPY lines may be masked in pieces: text format (a CSV value may span
        lines), with a masker."""
        copy = self.rows.copy
        return (
            self.masker is not None
            and self.header is not None
            and copy is not None
            and copy.format == "text"
        )

    def resume(self, header: bytes) -> None:
        self.rows.start(_cached_header(self.masker, header)[0])

    def masked(self, kind: bytes, frames: list[bytes]) -> bytes:
        """DataRow payloads, or one body of lines of a text COPY (which has no header line)."""
        rows = self.rows
        if kind == ROWS:
            cells = rows.rows([datarow_values(p) for p in frames])
            return b"".join([orjson.dumps(c) + b"\n" for c in cells])
        return b"".join([orjson.dumps(t) + b"\n" for t in rows.copy_lines(frames[0])])


def _line_pieces(lines: bytes) -> list[list[bytes]]:
    """Lines (``lines`` ends with a newline) in pieces of about :data:`~appliance.ledger.
    transform_helper.PIECE` bytes, cut at line ends."""
    pieces: list[list[bytes]] = []
    start, n = 0, len(lines)
    while start < n:
        end = lines.find(b"\n", min(start + transform_helper.PIECE, n) - 1) + 1
        pieces.append([lines[start:end]])
        start = end
    return pieces


_WIDTH = struct.Struct("!H")
_HEADER_CACHE = 1024
_HEADERS_KEPT = 64  # result shapes whose header part a session keeps (then forgotten at once)
_HEADERS: dict[tuple[TargetMasker | None, bytes], tuple[HeaderPlan, bytes, MaskCounts]] = {}


def _cached_header(
    masker: TargetMasker | None, body: bytes
) -> tuple[HeaderPlan, bytes, MaskCounts]:
    """:func:`_header`, kept per target and header bytes."""
    key = (masker, body)
    hit = _HEADERS.get(key)
    if hit is None:
        hit = _header(masker, body)
        if len(_HEADERS) >= _HEADER_CACHE:
            _HEADERS.clear()
        _HEADERS[key] = hit
    return hit


def _header(masker: TargetMasker | None, body: bytes) -> tuple[HeaderPlan, bytes, MaskCounts]:
    """A result header part: its plan (rows are planned by the real column names), its line
    in the blob, and what masking that line counted. The counts may not be changed by the
    caller (they are cached)."""
    header = orjson.loads(body)
    planned = header_plan(masker, header)
    found = MaskCounts()
    if masker is None or not header.get("columns"):
        return planned, body + b"\n", found
    # Written masked: a column may be named after a value ("AS "4111...").
    masked = dict(header)
    masked["columns"] = [
        None if c is None else masker.mask_text(c, found) for c in header["columns"]
    ]
    return planned, orjson.dumps(masked, option=orjson.OPT_SORT_KEYS) + b"\n", found


def _frames(body: bytes) -> list[bytes]:
    """Payloads of back-to-back frames (type byte + length + payload)."""
    out = []
    pos, n = 0, len(body)
    while pos + 5 <= n:
        (length,) = _LEN.unpack_from(body, pos + 1)
        out.append(body[pos + 5 : pos + 1 + length])
        pos += 1 + length
    return out


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
