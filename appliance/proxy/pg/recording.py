"""What a PostgreSQL session leaves in the ledger, masked before anything is written.

Where this sits: the session's relay hooks call :class:`SessionRecorder` for every statement,
response, notice and decision; it builds the ledger entries (``session.start``,
``statement``, ``policy.decision``, ``response``, ``masking.applied``, ``session.end`` ...)
and hands them to the ledger writer (:class:`~appliance.ledger.api.Ledger`), whose ``append`` only
enqueues. Text that can carry personal data (statement text, bind parameters, error and
notice fields, notification payloads) is masked here, on the event loop, with the
detectors' cheap pre-filter first. Result rows are not decoded here at all: their raw
DataRow/CopyData frames are copied once per run into a blob sink, and the decoding,
masking and JSON encoding happen in the ledger writer (:class:`RowsTransform`, made by
:class:`RowsTransforms`), off the hot path: in the writer's own process by default.

Result blobs follow :mod:`appliance.ledger.results` (the one home of that format); the
header of a PostgreSQL result set also carries ``types`` (OIDs), ``formats`` and, when the
target's column rules name tables, ``tables``; a COPY's header says what its statement
says (``csv``, ``binary``, ``table``, ``columns``, ``header``). Everything in a blob is
masked, by the same decisions as the job's rows (:mod:`appliance.masking.postgres`).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from appliance.ledger.api import Blob, Ledger, PendingBlob
from appliance.ledger.entries import canonical_json
from appliance.masking import MaskCounts, TargetMasker
from appliance.masking.postgres import LedgerRows
from appliance.policy import copy_spec
from appliance.protocols.postgres.messages import (
    ErrorResponse,
    NoticeResponse,
    NotificationResponse,
    RowDescription,
    datarow_values,
)
from appliance.proxy.pg.relay import Statement

_CHUNK = 256 * 1024
_MASK_CACHE = 64  # masked statement texts remembered per session (then forgotten at once)
_HEADER, _ROWS, _COPY, _COPY_END = b"H", b"D", b"d", b"e"
_LEN = struct.Struct("!I")


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


class RowsTransform:
    """Runs in the ledger writer (its process or thread): raw frames in, masked JSON lines
    out (:mod:`appliance.ledger.results`), masked by :class:`~appliance.masking.postgres.
    LedgerRows` exactly as the job's rows are."""

    def __init__(self, masker: TargetMasker | None, counts: MaskCounts) -> None:
        self.rows = LedgerRows(masker, counts)

    def __call__(self, chunk: bytes) -> bytes:
        """A chunk written by :class:`RowsSink`: parts of ``kind (1 byte), length (4),
        body``, back to back."""
        out: list[bytes] = []
        pos, end = 0, len(chunk)
        while pos + 5 <= end:
            (n,) = _LEN.unpack_from(chunk, pos + 1)
            out.append(self._part(chunk[pos : pos + 1], chunk[pos + 5 : pos + 5 + n]))
            pos += 5 + n
        return b"".join(out)

    def _part(self, kind: bytes, body: bytes) -> bytes:
        rows = self.rows
        if kind == _HEADER:
            rows.header(orjson.loads(body))
            return body + b"\n"
        out: list[bytes] = []
        if kind == _ROWS:
            for payload in _frames(body):
                out.append(orjson.dumps(rows.row(datarow_values(payload))))
        elif kind == _COPY and rows.copy is not None and rows.copy.format == "binary":
            out.append(orjson.dumps(rows.copy_binary(sum(len(p) for p in _frames(body)))))
        elif kind == _COPY:
            for payload in _frames(body):
                out.extend(orjson.dumps(line) for line in rows.copy_text(payload))
        elif kind == _COPY_END:
            out.extend(orjson.dumps(line) for line in rows.copy_end())
        return b"\n".join(out) + b"\n" if out else b""


class RowsTransforms:
    """The :class:`~appliance.ledger.TransformFactory` of result blobs for one target: a
    :class:`RowsTransform` per blob, whose masking counts annotate the blob's reference.
    Picklable (a masker and nothing else), so a writer in another process can run it."""

    def __init__(self, masker: TargetMasker | None) -> None:
        self.masker = masker

    def __reduce__(self) -> tuple[Any, ...]:
        # Spelled out: a class compiled by mypyc is pickled only this way.
        return (RowsTransforms, (self.masker,))

    def new(self) -> tuple[Callable[[bytes], bytes], Callable[[], Mapping[str, Any]]]:
        counts = MaskCounts()
        return RowsTransform(
            self.masker, counts
        ), lambda: {"masking": counts.as_dict()} if counts else {}


@functools.lru_cache(maxsize=256)
def rows_transforms(masker: TargetMasker | None) -> RowsTransforms:
    """One factory per target masker (the masker is cached per target), so that a writer
    in another process receives each factory once."""
    return RowsTransforms(masker)


def _frames(body: bytes) -> list[bytes]:
    """Payloads of back-to-back frames (type byte + length + payload)."""
    out = []
    pos, n = 0, len(body)
    while pos + 5 <= n:
        (length,) = _LEN.unpack_from(body, pos + 1)
        out.append(body[pos + 5 : pos + 1 + length])
        pos += 1 + length
    return out


class RowsSink:
    """A statement's result rows on their way to one blob; bounded by ``limit`` bytes.

    Everything (result headers, row runs, COPY data) is gathered here and handed to the
    ledger in few writes, every ``_CHUNK`` bytes: the blob is opened only then. A result
    that stays smaller (nearly all) never opens one: :meth:`finish` leaves it as a
    :class:`~appliance.ledger.api.PendingBlob` that travels with the response entry, one
    hand-over instead of an open, a write and a close.
    """

    def __init__(self, ledger: Ledger, transform: object, limit: int) -> None:
        self.ledger = ledger
        self.transform = transform
        self.limit = limit
        self.size = 0
        self.truncated = False
        self.blob: Blob | None = None  # once opened
        self.pending: PendingBlob | None = None  # after finish, if never opened
        self._pending = bytearray()  # parts ready for the blob
        self._run = bytearray()  # frames of the current run, not yet a part
        self._kind = _ROWS
        self.closed = False

    def header(self, header: Mapping[str, Any], *, copy: bool = False) -> None:
        """Start a result set (or COPY data) in the blob."""
        self._end_run()
        self._kind = _COPY if copy else _ROWS
        self._part(_HEADER, orjson.dumps(header, option=orjson.OPT_SORT_KEYS))

    def add(self, frames: bytes) -> None:
        if self.truncated or self.closed:
            return
        if self.size + len(frames) > self.limit:
            self.truncated = True
            return
        self.size += len(frames)
        self._run += frames
        if len(self._run) + len(self._pending) >= _CHUNK:
            self._flush()

    def _part(self, kind: bytes, body: bytes) -> None:
        self._pending += kind + _LEN.pack(len(body)) + body

    def _end_run(self) -> None:
        if self._run:
            self._part(self._kind, bytes(self._run))
            self._run.clear()

    def _flush(self) -> None:
        self._end_run()
        if self._pending:
            if self.blob is None:
                self.blob = self.ledger.open_blob(self.transform)
            self.blob.write(bytes(self._pending))
            self._pending.clear()

    def close(self) -> None:
        """End of one result set (the blob stays open for the statement's next one)."""
        if self.closed:
            return
        self._end_run()
        if self._kind == _COPY and not self.truncated:
            self._part(_COPY_END, b"")  # the last line may have no newline
            self._kind = _ROWS

    def finish(self) -> Blob | PendingBlob:
        """The blob to reference from the response entry."""
        if not self.closed:
            self.closed = True
            if self.blob is None:
                self._end_run()
                self.pending = PendingBlob(self.transform, bytes(self._pending))
                self._pending.clear()
            else:
                self._flush()
                self.blob.close()
        if self.blob is not None:
            return self.blob
        assert self.pending is not None
        return self.pending

    def abort(self) -> None:
        """Nothing will reference these rows (the session ended mid-statement)."""
        self.closed = True
        if self.blob is not None:
            self.blob.abort()
        self._pending.clear()


class _ResultView:
    """The per-result-set face of a statement's :class:`RowsSink` (the relay's ResultSink)."""

    def __init__(self, sink: RowsSink) -> None:
        self.sink = sink

    def add(self, frames: bytes) -> None:
        self.sink.add(frames)

    def close(self) -> None:
        self.sink.close()


class SessionRecorder:
    """Builds and appends one session's ledger entries; see the module docstring."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        session: str,
        target: str,
        account: str | None,
        identity: Mapping[str, Any],
        masker: TargetMasker | None,
        record_rows: bool,
        max_result_bytes: int,
        clock: Callable[[], float],
    ) -> None:
        self.ledger = ledger
        self.session = session
        self.target = target
        self.account = account
        self.identity = dict(identity)
        self.masker = masker
        self.record_rows = record_rows
        self.max_result_bytes = max_result_bytes
        self.clock = clock
        self._sinks: dict[int, RowsSink] = {}
        self._rows = rows_transforms(masker)
        # table OID -> "schema.table" (proxy.pg.catalog), set once the session is ready
        self.tables: Mapping[int, str] = {}
        self._masked: dict[str, tuple[str, MaskCounts]] = {}
        # Checked once here, so that the per-statement appends can skip the type walk.
        canonical_json(self.identity)

    def append(
        self,
        type: str,
        data: Mapping[str, Any],
        blobs: Mapping[str, Blob | PendingBlob] | None = None,
    ) -> None:
        """Append an entry of this session. Everything this class builds is str, int, bool,
        None, lists and dicts (see :meth:`mask` for text), so the append is ``trusted``."""
        self.ledger.append(
            type,
            session=self.session,
            identity=self.identity,
            account=self.account,
            target=self.target,
            data=data,
            blobs=blobs,
            trusted=True,
        )

    # -- masking of text -------------------------------------------------------------------

    def mask(self, text: str, counts: MaskCounts | None = None) -> str:
        """``text`` with sensitive values masked, as valid Unicode (bytes that were not UTF-8
        become U+FFFD, never lone surrogates)."""
        if not text.isascii():
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        if self.masker is None:
            return text
        return self.masker.mask_text(text, counts if counts is not None else MaskCounts())

    def mask_statement(self, text: str, counts: MaskCounts) -> str:
        """:meth:`mask` for statement text, cached per session: the same prepared or ORM
        statement text comes back again and again (its counts are added each time)."""
        hit = self._masked.get(text)
        if hit is None:
            found = MaskCounts()
            hit = (self.mask(text, found), found)
            if len(self._masked) >= _MASK_CACHE:
                self._masked.clear()
            self._masked[text] = hit
        masked, found = hit
        if found:
            counts.update(found)
        return masked

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
        verdict = stmt.verdict.record
        data["decision"] = verdict
        if counts:
            data["masking"] = counts.as_dict()
        self.append("statement", data)
        decided = verdict.get("decision")
        if (decided != "allow" and decided != "syntax_error") or verdict.get("enforced") is False:
            self.append("policy.decision", {"n": stmt.n, **verdict})
        if counts:
            self.append("masking.applied", {"n": stmt.n, "where": "statement", **counts.as_dict()})

    def response(self, stmt: Statement, *, masked_to_job: MaskCounts | None = None) -> None:
        counts = MaskCounts()
        finished = stmt.finished if stmt.finished is not None else self.clock()
        results = [
            {"tag": r.tag, "rows": r.rows, "columns": list(r.columns) if r.columns else None}
            for r in stmt.results
        ]
        last = stmt.results[-1] if stmt.results else None
        data: dict[str, Any] = {
            "n": stmt.n,
            "outcome": stmt.outcome,
            "tag": last.tag if last else None,
            "rows": stmt.rows,
            "columns": list(last.columns) if last and last.columns else [],
            "duration_us": max(0, _us(finished - stmt.started)),
            "error": self._error(stmt.error, counts) if stmt.error is not None else None,
        }
        if len(results) > 1:
            data["results"] = results
        if stmt.approval is not None:
            data["approval"] = stmt.approval
        if stmt.notices:
            data["notices"] = stmt.notices
        blobs = None
        sink = self._sinks.pop(stmt.n, None)
        if sink is not None:
            blobs = {"result": sink.finish()}
            if sink.truncated:
                data["result_truncated"] = True
        else:
            data["result"] = None
        if counts:
            data["masking"] = counts.as_dict()
        if masked_to_job:
            data["masked_to_job"] = masked_to_job.as_dict()
        self.append("response", data, blobs)
        if counts:
            self.append(
                "masking.applied", {"n": stmt.n, "where": "error fields", **counts.as_dict()}
            )
        if masked_to_job:
            self.append(
                "masking.applied",
                {"n": stmt.n, "where": "rows sent to the job", **masked_to_job.as_dict()},
            )

    def result_sink(
        self, stmt: Statement, description: RowDescription | None, formats: tuple[int, ...]
    ) -> _ResultView | None:
        if not self.record_rows:
            return None
        sink = self._sink_for(stmt)
        header: dict[str, Any] = {
            "columns": [f.name for f in description.fields] if description else None,
            "types": [f.type_oid for f in description.fields] if description else [],
            "formats": list(formats),
        }
        if self.tables and description:
            header["tables"] = [self.tables.get(f.table_oid) for f in description.fields]
        sink.header(header)
        return _ResultView(sink)

    def copy_sink(self, stmt: Statement, direction: str) -> _ResultView | None:
        if not self.record_rows:
            return None
        sink = self._sink_for(stmt)
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

    def _sink_for(self, stmt: Statement) -> RowsSink:
        sink = self._sinks.get(stmt.n)
        if sink is None:
            # The writer decodes and masks the rows, and adds the masking counts to the
            # blob's reference in the entry.
            sink = self._sinks[stmt.n] = RowsSink(self.ledger, self._rows, self.max_result_bytes)
        return sink

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

    def discard(self) -> None:
        """Abort result blobs no entry will reference (a session that ended mid-statement)."""
        for sink in self._sinks.values():
            sink.abort()
        self._sinks.clear()
