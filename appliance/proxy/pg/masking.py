"""Response masking toward the job: DataRow values and COPY OUT rows rewritten before the
job sees them.

Where this sits: when :meth:`~appliance.masking.MaskingConfig.response_masking` says so for
a session's target and identity, the relay hands every DataRow frame to
:class:`ResponseMasker`, and every CopyData frame of a COPY OUT. Rows whose values need no
mask are passed on untouched (the detectors' pre-filter makes that cheap); a changed row is
re-encoded with its new lengths. A value that must be masked but arrives in binary format
cannot be rewritten: the relay withholds the result and tells the job which column and why
(fail closed). A binary-format COPY OUT is refused the same way: its rows are not scanned.

:func:`mask_copy_line` is shared with the ledger's row recording (text and CSV COPY rows).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from pglast.parser import ParseError, parse_sql_json

from appliance.masking import (
    BinaryColumnError,
    ColumnPlan,
    CopyRowError,
    MaskCounts,
    TargetMasker,
)
from appliance.protocols.postgres.messages import RowDescription, datarow_values, encode_datarow
from appliance.proxy.pg.relay import MaskingRefused

_CSV = re.compile(r"\bcsv\b", re.IGNORECASE)
_BINARY = re.compile(r"\bbinary\b", re.IGNORECASE)
_LEN = struct.Struct("!I")


def copy_is_csv(statement: str) -> bool:
    """Whether a COPY statement asks for CSV (the protocol does not say; the text does)."""
    return bool(_CSV.search(statement))


def copy_is_binary(statement: str) -> bool:
    """Whether a COPY statement asks for the binary format (``FORMAT binary``, ``BINARY``)."""
    return bool(_BINARY.search(statement))


@dataclass(frozen=True, slots=True)
class CopyColumns:
    """What a COPY statement says of its rows (the protocol says nothing): the table, when
    written with its schema (unqualified, it depends on search_path: None), the column list
    when written (pg_dump writes both), and whether CSV rows start with a header line."""

    table: str | None = None
    columns: tuple[str, ...] | None = None
    header: bool = False


def copy_columns(statement: str) -> CopyColumns:
    """Read :class:`CopyColumns` from a COPY statement; nothing known if it does not parse
    as one COPY (then every column is unknown: fail closed)."""
    try:
        stmts = json.loads(parse_sql_json(statement)).get("stmts") or []
    except (ParseError, ValueError):
        return CopyColumns()
    if len(stmts) != 1 or "CopyStmt" not in stmts[0].get("stmt", {}):
        return CopyColumns()
    copy = stmts[0]["stmt"]["CopyStmt"]
    relation = copy.get("relation") or {}
    table = None
    if relation.get("schemaname") and relation.get("relname"):
        table = f"{relation['schemaname']}.{relation['relname']}"
    names = [a.get("String", {}).get("sval") for a in copy.get("attlist") or []]
    columns = tuple(names) if names and all(isinstance(n, str) for n in names) else None
    header = False
    for option in copy.get("options") or []:
        elem = option.get("DefElem", {})
        if elem.get("defname") == "header":
            arg = elem.get("arg")
            if arg is None:
                header = True
            elif "Boolean" in arg:
                header = bool(arg["Boolean"].get("boolval"))
            else:
                value = str(arg.get("String", {}).get("sval", "")).lower()
                header = value in ("true", "on", "1", "match")
    return CopyColumns(table, columns, header)


def mask_copy_line(
    masker: TargetMasker,
    line: bytes,
    counts: MaskCounts,
    *,
    csv: bool,
    plans: dict[int, ColumnPlan],
    copy: CopyColumns | None = None,
) -> bytes:
    """One COPY text/CSV row (its line end kept) with its values masked. The columns are
    those the COPY statement names (``copy``), when it names as many as the row has; else
    every column is unknown (column rules that may match apply: fail closed). A row that
    does not split as expected (quoted delimiters, other COPY options) is masked as text by
    the detectors instead."""
    delimiter = "," if csv else "\t"
    n = line.count(delimiter.encode()) + 1
    plan = plans.get(n)
    if plan is None:
        if copy is not None and copy.columns is not None and len(copy.columns) == n:
            plan = masker.column_plan(None, list(copy.columns), tables=[copy.table] * n)
        else:
            plan = masker.column_plan(None, [None] * n)
        plans[n] = plan
    try:
        return masker.mask_copy_line(plan, line, counts, csv=csv, delimiter=delimiter)
    except CopyRowError:
        text = line.decode("utf-8", "surrogateescape")
        return masker.mask_text(text, counts).encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class UnknownColumns:
    """The plan of rows whose columns were never described: Bind's format codes only."""

    formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyPlan:
    """How a COPY OUT's rows are masked: CSV or text, or refused (binary); the columns and
    table the statement names."""

    csv: bool
    binary: bool
    copy: CopyColumns = CopyColumns()


class ResponseMasker:
    """Implements :class:`~appliance.proxy.pg.relay.RowMasker` with a target's masker."""

    def __init__(self, masker: TargetMasker, tables: Mapping[int, str] | None = None) -> None:
        self.masker = masker
        # table OID -> "schema.table", for rules with a table pattern (proxy.pg.catalog)
        self.tables = tables or {}
        self.counts = MaskCounts()
        self._copy_plans: dict[int, ColumnPlan] = {}
        self._copy_header = False  # a CSV header line is still to come
        self._unknown_plans: dict[tuple[int, tuple[int, ...]], ColumnPlan] = {}

    def plan(
        self, row_description: RowDescription | None, formats: tuple[int, ...]
    ) -> ColumnPlan | UnknownColumns:
        if row_description is None:
            # Rows of a portal never described: names and types unknown (column rules
            # that may match apply), formats as Bind sent them.
            return UnknownColumns(formats)
        fields = row_description.fields
        tables = self.tables
        return self.masker.column_plan(
            None,
            [f.name for f in fields],
            tables=[tables.get(f.table_oid) for f in fields] if tables else None,
            formats=formats if len(formats) == len(fields) else [f.format for f in fields],
            type_oids=[f.type_oid for f in fields],
        )

    def mask_frame(self, plan: object, frame: bytes) -> bytes | None:
        """The DataRow ``frame`` rewritten, or None if no value changed. Raises
        MaskingRefused for a binary value that must be masked."""
        values = datarow_values(frame, 5)
        if not isinstance(plan, ColumnPlan) or len(plan.columns) != len(values):
            plan = self._unknown_plan(plan, len(values))
        try:
            masked = self.masker.mask_values(plan, values, self.counts)
        except BinaryColumnError as exc:
            raise MaskingRefused(str(exc)) from None
        if masked is values:
            return None
        return encode_datarow(masked)

    def _unknown_plan(self, plan: object, n: int) -> ColumnPlan:
        formats = plan.formats if isinstance(plan, UnknownColumns) else ()
        key = (n, formats)
        cached = self._unknown_plans.get(key)
        if cached is None:
            if len(formats) > 1 and len(formats) != n:
                formats = (1,)  # codes that do not fit the row: take every value as binary
            cached = self.masker.column_plan(None, [None] * n, formats=formats)
            self._unknown_plans[key] = cached
        return cached

    def copy_plan(self, statement: str, binary: bool) -> CopyPlan:
        copy = copy_columns(statement)
        self._copy_plans.clear()  # planned anew for this COPY's columns
        self._copy_header = copy.header
        return CopyPlan(csv=copy_is_csv(statement), binary=binary, copy=copy)

    def mask_copy(self, plan: object, frame: bytes) -> bytes | None:
        """The CopyData ``frame`` of a COPY OUT with its rows masked, or None if nothing
        changed. Raises MaskingRefused for binary COPY (its values cannot be scanned)."""
        if not isinstance(plan, CopyPlan) or plan.binary:
            raise MaskingRefused(
                "COPY in binary format cannot be masked for the job; use text or CSV format"
            )
        payload = frame[5:]
        lines = payload.splitlines(keepends=True)
        parts = []
        if lines and self._copy_header:
            self._copy_header = False  # the CSV header line: column names, not data
            parts.append(lines.pop(0))
        parts.extend(
            mask_copy_line(
                self.masker, line, self.counts, csv=plan.csv, plans=self._copy_plans, copy=plan.copy
            )
            for line in lines
        )
        masked = b"".join(parts)
        if masked == payload:
            return None
        return b"d" + _LEN.pack(len(masked) + 4) + masked

    def take_counts(self) -> MaskCounts:
        counts, self.counts = self.counts, MaskCounts()
        return counts
