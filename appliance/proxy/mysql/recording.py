"""What a MySQL session leaves in the ledger, masked before anything is written.

Where this sits: the relay (:mod:`.relay`) calls :class:`MySQLRecorder` for every request,
response and decision; the entries have the same types and shapes as PostgreSQL's
(``session.start``, ``statement``, ``policy.decision``, ``response``, ``masking.applied``,
``request``, ``session.end``), so that queries, replay and reports read both alike. Text
that can carry personal data (statement text, parameters, error messages) is masked here.

Result rows are not decoded on the event loop: each row packet's payload goes, length-
prefixed, into a :class:`~appliance.proxy.pg.recording.RowsSink`; the ledger writer runs
:class:`RowsTransform` on it (in its own process by default), which decodes text and
binary rows by the column types, masks them per column and writes JSON lines: a header
``{"columns": [...], "types": ["mysql:<type>"...], "tables": [...]}`` per result set, then
one array per row (strings, null, ``{"binary": <length>}`` for a value that cannot be
shown as text). Everything in a blob is masked.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from appliance.ledger.api import Blob, Ledger, PendingBlob
from appliance.ledger.entries import canonical_json
from appliance.ledger.results import binary_cell
from appliance.masking import ColumnPlan, MaskCounts, TargetMasker
from appliance.protocols.mysql import PeerProtocolError
from appliance.protocols.mysql.constants import BINARY_CHARSET, Type
from appliance.protocols.mysql.messages import (
    ColumnDef,
    Err,
    binary_row,
    binary_to_text,
    text_row,
)
from appliance.proxy.pg.recording import RowsSink

_LEN = struct.Struct("!I")  # as RowsSink frames its parts
_HEADER, _ROWS = b"H", b"D"

# MySQL column types -> the PostgreSQL type OIDs the masker knows, so that a masked value
# of a type text would not parse as becomes NULL (appliance.masking: result values).
_MASK_TYPES: dict[int, int] = {
    Type.TINY: 21, Type.SHORT: 21, Type.YEAR: 21, Type.INT24: 23, Type.LONG: 23,
    Type.LONGLONG: 20, Type.FLOAT: 700, Type.DOUBLE: 701, Type.DECIMAL: 1700,
    Type.NEWDECIMAL: 1700, Type.DATE: 1082, Type.NEWDATE: 1082, Type.TIME: 1083,
    Type.TIME2: 1083, Type.DATETIME: 1114, Type.DATETIME2: 1114, Type.TIMESTAMP: 1114,
    Type.TIMESTAMP2: 1114, Type.JSON: 114, Type.BIT: 1560,
}  # fmt: skip
_TEXT_OID = 25


def mask_type(column_type: int) -> int:
    """The masker's type for a MySQL column type (strings, blobs, enums: text)."""
    return _MASK_TYPES.get(column_type, _TEXT_OID)


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


def result_header(columns: Sequence[ColumnDef], binary: bool) -> dict[str, Any]:
    """The blob header of one result set."""
    return {
        "columns": [c.name for c in columns],
        "types": [c.type for c in columns],
        "unsigned": [c.unsigned for c in columns],
        "bytes": [c.charset == BINARY_CHARSET for c in columns],
        "tables": [f"{c.schema}.{c.org_table}" if c.org_table else None for c in columns],
        "binary": binary,
    }


def decode_row(
    payload: bytes, types: Sequence[int], unsigned: Sequence[bool], binary: bool
) -> list[bytes | None]:
    """A row's values in their text form (binary-protocol numbers and dates converted);
    raises PeerProtocolError for a malformed row."""
    if not binary:
        return text_row(payload, len(types))
    raw = binary_row(payload, list(types))
    return [
        None if v is None else binary_to_text(v, types[i], unsigned[i]) for i, v in enumerate(raw)
    ]


class RowsTransform:
    """Runs in the ledger writer: raw row payloads in, masked JSON lines out."""

    def __init__(self, masker: TargetMasker | None, counts: MaskCounts) -> None:
        self.masker = masker
        self.counts = counts
        self.plan: ColumnPlan | None = None
        self.types: list[int] = []
        self.unsigned: list[bool] = []
        self.binary = False
        self.bytes_columns: list[bool] = []

    def __call__(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        pos, end = 0, len(chunk)
        while pos + 5 <= end:
            (n,) = _LEN.unpack_from(chunk, pos + 1)
            kind, body = chunk[pos : pos + 1], chunk[pos + 5 : pos + 5 + n]
            pos += 5 + n
            if kind == _HEADER:
                out.append(self._header(body))
            else:
                out.extend(self._rows(body))
        return b"".join(out)

    def _header(self, body: bytes) -> bytes:
        header = orjson.loads(body)
        self.types = list(header["types"])
        self.unsigned = list(header["unsigned"])
        self.bytes_columns = list(header.get("bytes") or [False] * len(self.types))
        self.binary = bool(header["binary"])
        self.plan = None
        if self.masker is not None:
            tables = header.get("tables")
            self.plan = self.masker.column_plan(
                None,
                header["columns"],
                tables=tables if tables and any(tables) else None,
                type_oids=[mask_type(t) for t in self.types],
            )
        shown = {k: header[k] for k in ("columns", "tables") if k in header}
        shown["types"] = [f"mysql:{_type_name(t)}" for t in self.types]
        return orjson.dumps(shown, option=orjson.OPT_SORT_KEYS) + b"\n"

    def _rows(self, body: bytes) -> list[bytes]:
        out = []
        pos, end = 0, len(body)
        while pos + 4 <= end:
            (n,) = _LEN.unpack_from(body, pos)
            payload = body[pos + 4 : pos + 4 + n]
            pos += 4 + n
            try:
                values = decode_row(payload, self.types, self.unsigned, self.binary)
            except PeerProtocolError:
                out.append(orjson.dumps({"malformed_row": len(payload)}) + b"\n")
                continue
            if self.masker is not None and self.plan is not None:
                values = self.masker.mask_values(self.plan, values, self.counts)
            row: list[Any] = []
            for i, v in enumerate(values):
                if v is None:
                    row.append(None)
                elif i < len(self.bytes_columns) and self.bytes_columns[i] and not _printable(v):
                    row.append(binary_cell(len(v)))
                else:
                    row.append(v.decode("utf-8", "replace"))
            out.append(orjson.dumps(row) + b"\n")
        return out


def _printable(v: bytes) -> bool:
    try:
        return v.decode("utf-8").isprintable()
    except UnicodeDecodeError:
        return False


def _type_name(t: int) -> str:
    try:
        return Type(t).name.lower()
    except ValueError:
        return str(t)


class RowsTransforms:
    """The ledger's transform factory for one target's result blobs (picklable)."""

    def __init__(self, masker: TargetMasker | None) -> None:
        self.masker = masker

    def new(self) -> tuple[Callable[[bytes], bytes], Callable[[], Mapping[str, Any]]]:
        counts = MaskCounts()
        return RowsTransform(
            self.masker, counts
        ), lambda: {"masking": counts.as_dict()} if counts else {}


@functools.lru_cache(maxsize=256)
def rows_transforms(masker: TargetMasker | None) -> RowsTransforms:
    return RowsTransforms(masker)


class ResultRecorder:
    """One statement's result rows on their way to its blob (:class:`RowsSink`)."""

    __slots__ = ("_run", "sink")

    def __init__(self, sink: RowsSink) -> None:
        self.sink = sink
        self._run: list[bytes] = []

    def header(self, columns: Sequence[ColumnDef], binary: bool) -> None:
        self.flush()
        self.sink.header(result_header(columns, binary))

    def row(self, payload: bytes) -> None:
        self._run.append(_LEN.pack(len(payload)) + payload)
        if len(self._run) >= 256:
            self.flush()

    def flush(self) -> None:
        if self._run:
            self.sink.add(b"".join(self._run))
            self._run.clear()


class MySQLRecorder:
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
        self._rows = rows_transforms(masker)
        self._results: dict[int, ResultRecorder] = {}
        canonical_json(self.identity)

    def append(
        self,
        type: str,
        data: Mapping[str, Any],
        blobs: Mapping[str, Blob | PendingBlob] | None = None,
    ) -> None:
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

    def mask(self, text: str, counts: MaskCounts | None = None) -> str:
        if not text.isascii():
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        if self.masker is None:
            return text
        return self.masker.mask_text(text, counts if counts is not None else MaskCounts())

    def error(self, err: Err, counts: MaskCounts) -> dict[str, Any]:
        return {
            "code": err.code,
            "sqlstate": err.sqlstate,
            "message": self.mask(err.message, counts),
        }

    def statement(
        self,
        n: int,
        protocol: str,
        text: str,
        decision: Mapping[str, Any],
        *,
        params: Sequence[bytes | None] | None = None,
        prepared: int | None = None,
    ) -> None:
        counts = MaskCounts()
        data: dict[str, Any] = {"n": n, "protocol": protocol, "text": self.mask(text, counts)}
        if params is not None:
            data["params"] = [
                None if v is None else self.mask(v.decode("utf-8", "replace"), counts)
                for v in params
            ]
        if prepared is not None:
            data["prepared"] = prepared
        data["decision"] = dict(decision)
        if counts:
            data["masking"] = counts.as_dict()
        self.append("statement", data)
        decided = decision.get("decision")
        if (decided != "allow") or decision.get("enforced") is False:
            self.append("policy.decision", {"n": n, **decision})
        if counts:
            self.append("masking.applied", {"n": n, "where": "statement", **counts.as_dict()})

    def result(self, n: int) -> ResultRecorder | None:
        if not self.record_rows:
            return None
        rec = self._results.get(n)
        if rec is None:
            rec = self._results[n] = ResultRecorder(
                RowsSink(self.ledger, self._rows, self.max_result_bytes)
            )
        return rec

    def response(
        self,
        n: int,
        *,
        outcome: str,
        started: float,
        finished: float,
        rows: int,
        affected: int,
        columns: Sequence[str],
        results: int,
        error: Err | None,
        approval: Mapping[str, Any] | None = None,
        masked_to_job: MaskCounts | None = None,
    ) -> None:
        counts = MaskCounts()
        data: dict[str, Any] = {
            "n": n,
            "outcome": outcome,
            "rows": rows,
            "affected_rows": affected,
            "columns": list(columns),
            "duration_us": max(0, _us(finished - started)),
            "error": self.error(error, counts) if error is not None else None,
        }
        if results > 1:
            data["results"] = results
        if approval is not None:
            data["approval"] = dict(approval)
        blobs = None
        rec = self._results.pop(n, None)
        if rec is not None:
            rec.flush()
            blobs = {"result": rec.sink.finish()}
            if rec.sink.truncated:
                data["result_truncated"] = True
        else:
            data["result"] = None
        if counts:
            data["masking"] = counts.as_dict()
        if masked_to_job:
            data["masked_to_job"] = masked_to_job.as_dict()
        self.append("response", data, blobs)
        if counts:
            self.append("masking.applied", {"n": n, "where": "error fields", **counts.as_dict()})
        if masked_to_job:
            self.append(
                "masking.applied",
                {"n": n, "where": "rows sent to the job", **masked_to_job.as_dict()},
            )

    def request(self, command: str, data: Mapping[str, Any]) -> None:
        """A command that is not a statement (COM_RESET_CONNECTION, COM_SET_OPTION, a
        refused command, KILL) and what became of it."""
        self.append("request", {"command": command, **data})

    def discard(self) -> None:
        for rec in self._results.values():
            rec.sink.abort()
        self._results.clear()
