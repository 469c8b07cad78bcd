"""What a MySQL session leaves in the ledger, masked before anything is written.

Where this sits: the relay (:mod:`.relay`) calls :class:`MySQLRecorder` for every request,
response and decision; the entries have the same types and shapes as PostgreSQL's
(``session.start``, ``statement``, ``policy.decision``, ``response``, ``masking.applied``,
``request``, ``session.end``), so that queries, replay and reports read both alike. Text
that can carry personal data (statement text, parameters, error messages) is masked here.

Result rows are not decoded on the event loop: each row packet's payload goes, length-
prefixed, into a :class:`~appliance.ledger.result_sink.RowsSink` (shared by every protocol);
the ledger writer runs :class:`RowsTransform` on it (in its own process by default), which
masks them with :class:`~appliance.masking.mysql.LedgerRows` (the same decisions as the
job's rows) and writes the blob format of :mod:`appliance.ledger.results`: a header
``{"columns": [...], "types": ["mysql:<type>"...], "tables": [...]}`` per result set, then
one array of cells per row. Everything in a blob is masked.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from appliance.ledger import transform_helper
from appliance.ledger.result_sink import HEADER, RowsSink
from appliance.masking import MaskCounts, TargetMasker
from appliance.masking.mysql import LedgerRows, ResultColumns
from appliance.protocols.mysql.constants import Type
from appliance.protocols.mysql.messages import ColumnDef, Err
from appliance.proxy.records import MaskingTransform, SessionRecords, pieces

_LEN = struct.Struct("!I")  # a row payload's length, before it in a run


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


class RowsTransform(MaskingTransform):
    """Runs in the ledger writer: headers and runs of length-prefixed row payloads in,
    masked JSON lines out."""

    def __init__(self, masker: TargetMasker | None) -> None:
        super().__init__(masker)
        self.rows = LedgerRows(masker, self.counts)

    def part(self, kind: bytes, body: bytes) -> bytes:
        if kind == HEADER:
            self.header = body
            header = orjson.loads(body)
            columns = self.rows.header(header)  # planned by the real names
            shown: dict[str, Any] = {"columns": self._names(columns.names)}
            if "tables" in header:
                shown["tables"] = header["tables"]
            shown["types"] = [f"mysql:{_type_name(t)}" for t in columns.types]
            return orjson.dumps(shown, option=orjson.OPT_SORT_KEYS) + b"\n"
        payloads = []
        pos, end = 0, len(body)
        while pos + 4 <= end:
            (n,) = _LEN.unpack_from(body, pos)
            payloads.append(body[pos + 4 : pos + 4 + n])
            pos += 4 + n
        if (
            len(body) >= transform_helper.SHARE_FROM
            and self.masker is not None
            and self.rows.plan is not None
        ):
            # A long run in pieces, some of which the ledger writer's helper process may
            # mask on a core that would sit idle (rows are masked one by one after their
            # header: MaskingTransform.shared).
            return self.shared(kind, pieces(payloads))
        return self.masked(kind, payloads)

    def resume(self, header: bytes) -> None:
        self.rows.header(orjson.loads(header))

    def masked(self, kind: bytes, frames: list[bytes]) -> bytes:
        # The run's rows at once: masking pre-filters them together.
        return b"".join([orjson.dumps(cells) + b"\n" for cells in self.rows.rows(frames)])

    def _names(self, names: Sequence[str]) -> list[str]:
        """Column names as written: masked (MySQL names a column after its expression,
        ``SELECT '4111...'``)."""
        masker = self.masker
        if masker is None:
            return list(names)
        return [masker.mask_text(name, self.counts) for name in names]


def _type_name(t: int) -> str:
    try:
        return Type(t).name.lower()
    except ValueError:
        return str(t)


class ResultRecorder:
    """One statement's result rows on their way to its blob (:class:`RowsSink`): each row
    payload length-prefixed, as :class:`RowsTransform` reads them."""

    __slots__ = ("sink",)

    def __init__(self, sink: RowsSink) -> None:
        self.sink = sink

    def header(self, columns: Sequence[ColumnDef], binary: bool) -> None:
        self.sink.header(ResultColumns.of(columns, binary).header())

    def row(self, payload: bytes) -> None:
        self.sink.add(_LEN.pack(len(payload)) + payload)

    def close(self) -> None:
        """The end of one result set."""
        self.sink.close()


class MySQLRecorder(SessionRecords):
    """Builds and appends one session's ledger entries; see the module docstring."""

    transform = RowsTransform

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
        data: dict[str, Any] = {
            "n": n,
            "protocol": protocol,
            "text": self.mask_statement(text, counts),
        }
        if params is not None:
            data["params"] = [
                None if v is None else self.mask(v.decode("utf-8", "replace"), counts)
                for v in params
            ]
        if prepared is not None:
            data["prepared"] = prepared
        self.statement_entries(n, data, dict(decision), counts)

    def result(self, n: int) -> ResultRecorder | None:
        """Where statement ``n``'s result rows go (None: rows are not recorded)."""
        sink = self.sink(n)
        return ResultRecorder(sink) if sink is not None else None

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
            "columns": self.mask_names(columns, counts),
            "duration_us": max(0, _us(finished - started)),
            "error": self.error(error, counts) if error is not None else None,
        }
        if results > 1:
            data["results"] = results
        if approval is not None:
            data["approval"] = dict(approval)
        self.response_entries(n, data, counts, masked_to_job)

    def request(self, command: str, data: Mapping[str, Any]) -> None:
        """A command that is not a statement (COM_RESET_CONNECTION, COM_SET_OPTION, a
        refused command, KILL) and what became of it."""
        self.append("request", {"command": command, **data})
