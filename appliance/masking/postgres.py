"""PostgreSQL result rows and COPY data masked, toward the job and toward the ledger, by one
set of decisions.

Where this sits: the relay hands every DataRow frame (and every CopyData frame of a COPY
OUT) to :class:`ResponseMasker` when :meth:`~appliance.masking.MaskingConfig.
response_masking` says so for the session; the ledger writer turns the rows it is given
into a result blob with :class:`LedgerRows` (in its own process, off the event loop). Both
plan a result's columns with :func:`row_plan` (names, the tables they come from, formats,
type OIDs) and mask each value with the target's :class:`~appliance.masking.TargetMasker`
(``mask_values`` for the wire, ``mask_cells`` for the blob, which make the same decision per
value), and read COPY statements the same way (:func:`appliance.policy.copy_spec`). So a
value the job sees masked is the value the ledger keeps.

Fail closed: a binary COPY OUT cannot be masked toward the job (:class:`MaskingRefused`:
the relay withholds the rest of that result and tells the job why); in the ledger its
chunks are kept as binary cells (length only).
"""

from __future__ import annotations

import bisect
import itertools
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.ledger.results import binary_cell
from appliance.masking._copy import CopyFormat, CopyRowError, encode_field, line_ending
from appliance.masking._counts import MaskCounts
from appliance.masking._masker import ColumnPlan, TargetMasker
from appliance.protocols.postgres.copy import CopySpec
from appliance.protocols.postgres.messages import RowDescription, datarow_values, encode_datarow

__all__ = [
    "CopyPlan",
    "HeaderPlan",
    "LedgerRows",
    "MaskingRefused",
    "ResponseMasker",
    "UnknownColumns",
    "header_plan",
    "mask_copy_line",
    "mask_plain_line",
    "row_plan",
]

_LEN = struct.Struct("!I")
_UNKNOWN_COPY = CopySpec("out")
Span = tuple[int, int, int]  # start, end, detector (see TargetMasker.where)


class MaskingRefused(Exception):
    """A result cannot be masked for the job (binary COPY): it is withheld."""


def row_plan(
    masker: TargetMasker,
    columns: Sequence[str | None],
    *,
    tables: Sequence[str | None] | None = None,
    formats: Sequence[int] = (),
    type_oids: Sequence[int | None] | None = None,
) -> ColumnPlan:
    """The plan of a result's rows. ``formats`` as Bind sent them (none: all text; one: all;
    else one per column); codes that do not fit the row take every value as binary. Tables
    and type OIDs are used only when given one per column."""
    n = len(columns)
    if len(formats) > 1 and len(formats) != n:
        formats = (1,)
    return masker.column_plan(
        None,
        list(columns),
        tables=tables if tables is not None and len(tables) == n else None,
        formats=formats,
        type_oids=type_oids if type_oids is not None and len(type_oids) == n else None,
    )


def mask_copy_line(
    masker: TargetMasker,
    line: bytes,
    counts: MaskCounts,
    *,
    copy: CopySpec,
    plans: dict[int, ColumnPlan],
    candidates: Sequence[Sequence[int]] | None = None,
) -> bytes:
    """One COPY text/CSV row (its line end kept) with its values masked. The columns are
    those the COPY statement names, when it names as many as the row has; else every column
    is unknown (column rules that may match apply: fail closed). A row that does not split
    as expected (quoted delimiters, other COPY options) is masked as text by the detectors."""
    csv = copy.format == "csv"
    delimiter = "," if csv else "\t"
    plan = _plan_for(masker, copy, plans, line.count(delimiter.encode()) + 1)
    try:
        return masker.mask_copy_line(
            plan, line, counts, csv=csv, delimiter=delimiter, candidates=candidates
        )
    except CopyRowError:
        text = line.decode("utf-8", "surrogateescape")
        return masker.mask_text(text, counts).encode("utf-8", "surrogateescape")


def _plan_for(
    masker: TargetMasker, copy: CopySpec, plans: dict[int, ColumnPlan], n: int
) -> ColumnPlan:
    """The plan of a COPY's rows of ``n`` fields (kept in ``plans``, per width)."""
    plan = plans.get(n)
    if plan is None:
        if copy.columns is not None and len(copy.columns) == n:
            plan = masker.column_plan(None, list(copy.columns), tables=[copy.table] * n)
        else:
            plan = masker.column_plan(None, [None] * n)
        plans[n] = plan
    return plan


def mask_plain_line(
    masker: TargetMasker,
    line: bytes,
    counts: MaskCounts,
    *,
    copy: CopySpec,
    fmt: CopyFormat,
    plans: dict[int, ColumnPlan],
    spans: list[Span],
) -> bytes:
    """One COPY text/CSV row whose values are its own bytes (no escape, no quote: see
    :func:`escapes`), masked as :func:`mask_copy_line` masks it with the candidates
    :func:`field_candidates` gives for ``spans`` (the pre-filter's, offsets in ``line``),
    in one pass: the row is cut at its delimiters once, and only the fields some span
    overlaps are masked, each by the detectors of those spans; no list of values, of
    candidates or of :class:`~appliance.masking._copy.Field` per row (issue 19: the
    ledger writer masks every row of an export, and most fields of most rows have no
    candidate). ``fmt``: the COPY's format (its default options, as :func:`mask_copy_line`
    reads them). A plan with column rules, JSON or binary columns goes the general way."""
    body, eol = line_ending(line)
    delimiter = fmt.delimiter
    fields = body.split(delimiter)
    n = len(fields)
    plan = _plan_for(masker, copy, plans, n)
    if not plan.scan_only or n != len(plan.columns):
        return mask_copy_line(
            masker, line, counts, copy=copy, plans=plans,
            candidates=field_candidates(line, delimiter, spans),
        )  # fmt: skip
    # The start of each field (as field_candidates: a span over a delimiter, or over the
    # line end, counts for the field before it).
    starts: list[int] = []
    pos = 0
    for field in fields:
        starts.append(pos)
        pos += len(field) + 1
    only: dict[int, list[int]] = {}
    for start, end, detector in spans:
        first = bisect.bisect_right(starts, start) - 1
        last = min(bisect.bisect_right(starts, end - 1) - 1, n - 1)
        for i in range(max(first, 0), last + 1):
            found = only.get(i)
            if found is None:
                only[i] = [detector]
            elif detector not in found:
                found.append(detector)
    columns = plan.columns
    null = fmt.null
    changed = False
    for i, found in only.items():
        raw = fields[i]
        if raw == null:
            continue  # SQL NULL (unquoted: there is no quote in the line)
        if len(found) > 1:
            found.sort()
        new = masker.mask_scanned(columns[i], raw, counts, found)
        if new is not raw:
            fields[i] = encode_field(new, fmt, single=n == 1)
            changed = True
    return delimiter.join(fields) + eol if changed else line


@dataclass(frozen=True, slots=True)
class UnknownColumns:
    """The plan of rows whose columns were never described: Bind's format codes only."""

    formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyPlan:
    """How a COPY OUT's rows are masked: what its statement says, and whether the server
    sends it in binary."""

    copy: CopySpec
    binary: bool


def escapes(body: bytes, csv: bool) -> Iterator[int]:
    """Offsets in ``body`` (COPY lines) after which a value is not the bytes of its line. Text
    format: a backslash that is not the whole of a NULL field (``\\N`` between tabs or line
    ends): an escape. CSV: a quote. Found with ``bytes.find`` (memchr): most chunks hold
    none, and a regular expression with a look-behind would try every byte."""
    if csv:
        at = body.find(b'"')
        while at >= 0:
            yield at
            at = body.find(b'"', at + 1)
        return
    at = body.find(b"\\")
    while at >= 0:
        null = (
            body[at + 1 : at + 3] in (b"N\t", b"N\n")
            and (at == 0 or body[at - 1] in (9, 10))  # tab, newline
        )
        if not null:
            yield at
        at = body.find(b"\\", at + 1)


class _CopyLines:
    """COPY rows of one COPY, masked line by line: the plans per row width, the CSV
    header line still to come."""

    def __init__(self, masker: TargetMasker, copy: CopySpec) -> None:
        self.masker = masker
        self.copy = copy
        self.plans: dict[int, ColumnPlan] = {}
        self.header = copy.header and copy.format == "csv"
        csv = copy.format == "csv"
        self.fmt = CopyFormat.make(csv=csv, delimiter="," if csv else "\t")

    def mask(
        self, line: bytes, counts: MaskCounts, candidates: Sequence[Sequence[int]] | None = None
    ) -> bytes:
        if self.header:
            self.header = False  # the CSV header line: column names, not data
            return line
        return mask_copy_line(
            self.masker, line, counts, copy=self.copy, plans=self.plans, candidates=candidates
        )

    def mask_plain(self, line: bytes, counts: MaskCounts, spans: list[Span]) -> bytes:
        """A line :meth:`to_mask` gave ``spans`` for (its values are its own bytes), masked
        as :meth:`mask` masks it with those spans' candidates (see :func:`mask_plain_line`)."""
        if self.header:
            self.header = False
            return line
        return mask_plain_line(
            self.masker, line, counts, copy=self.copy, fmt=self.fmt, plans=self.plans,
            spans=spans,
        )  # fmt: skip

    def to_mask(self, body: bytes, starts: list[int]) -> dict[int, list[Span] | None]:
        """Of the lines of ``body`` (line ``i`` starts at ``starts[i]``; a last entry is
        its end), those :meth:`mask` may change; it returns every other one unchanged.

        One pre-filter pass over the whole body (:meth:`TargetMasker.where`) instead of a
        call per value: a line that no span touches, that holds no escape (text) or quote
        (CSV), whose values are therefore its own bytes, has nothing to mask, unless a
        column rule applies to this target (then every line is masked one by one). For a
        line whose values are its own bytes, the spans that touch it come along (offsets
        in the line: :func:`field_candidates` turns them into ``candidates``); None for
        the others.
        """
        n = len(starts) - 1
        if self.header or self.masker.has_column_rules:
            return dict.fromkeys(range(n))
        marked: dict[int, list[Span] | None] = {}
        # Two halves at once on two cores, cut where the middle line starts.
        for start, end, detector in self.masker.where(body, starts[n // 2] if n > 1 else 0):
            first = bisect.bisect_right(starts, start) - 1
            last = bisect.bisect_right(starts, end - 1) - 1
            for i in range(first, last + 1):
                spans = marked.setdefault(i, [])
                if spans is not None:
                    spans.append((start - starts[i], end - starts[i], detector))
        for at in escapes(body, self.copy.format == "csv"):
            marked[bisect.bisect_right(starts, at) - 1] = None
        return marked

    @property
    def delimiter(self) -> bytes:
        return b"," if self.copy.format == "csv" else b"\t"


def field_candidates(line: bytes, delimiter: bytes, spans: list[Span]) -> list[list[int]]:
    """Per field of ``line`` (split at ``delimiter``: a line with no escape or quote), the
    detectors of the ``spans`` (offsets in the line) that overlap it."""
    fields = line.split(delimiter)
    starts = list(itertools.accumulate(map((1).__add__, map(len, fields)), initial=0))
    out: list[list[int]] = [[] for _ in fields]
    for start, end, detector in spans:
        first = max(bisect.bisect_right(starts, start) - 1, 0)
        last = min(bisect.bisect_right(starts, end - 1) - 1, len(fields) - 1)
        for i in range(first, last + 1):
            if detector not in out[i]:
                out[i].append(detector)
    for found in out:
        found.sort()
    return out


class ResponseMasker:
    """Rewrites DataRow values and COPY OUT rows for the job (the relay's ``RowMasker``)."""

    def __init__(self, masker: TargetMasker, tables: Mapping[int, str] | None = None) -> None:
        self.masker = masker
        # table OID -> "schema.table", for rules with a table pattern (proxy.pg.catalog)
        self.tables = tables or {}
        self.counts = MaskCounts()
        self._copy: _CopyLines | None = None
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
        return row_plan(
            self.masker,
            [f.name for f in fields],
            tables=[tables.get(f.table_oid) for f in fields] if tables else None,
            formats=formats if len(formats) == len(fields) else [f.format for f in fields],
            type_oids=[f.type_oid for f in fields],
        )

    def mask_frame(self, plan: object, frame: bytes) -> bytes | None:
        """The DataRow ``frame`` rewritten, or None if no value changed."""
        values = datarow_values(frame, 5)
        if not isinstance(plan, ColumnPlan) or len(plan.columns) != len(values):
            plan = self._unknown_plan(plan, len(values))
        masked = self.masker.mask_values(plan, values, self.counts)
        if masked is values:
            return None
        return encode_datarow(masked)

    def mask_row_run(
        self, plan: object, chunk: bytes, frames: list[tuple[int, int]]
    ) -> list[bytes | None]:
        """DataRow frames of one result set, ``chunk[s:e]`` for each ``(s, e)`` of
        ``frames``, masked: per frame, the frame rewritten or None if no value changed (as
        :meth:`mask_frame` of each frame alone). When the plan only scans and every row
        fits it, one pre-filter pass over all their values (:meth:`TargetMasker.
        rows_candidates`) says which rows may change and which detectors to run on which
        value, instead of a pass per row and another per value."""
        masker = self.masker
        if not isinstance(plan, ColumnPlan) or len(frames) < 2 or not plan.scan_only:
            return [self.mask_frame(plan, chunk[s:e]) for s, e in frames]
        rows = [datarow_values(chunk[s:e], 5) for s, e in frames]
        n = len(plan.columns)
        if any(len(values) != n for values in rows):
            return [self.mask_frame(plan, chunk[s:e]) for s, e in frames]
        found = masker.rows_candidates(plan, rows)
        assert found is not None  # a plan that only scans
        out: list[bytes | None] = [None] * len(rows)
        for i, candidates in found.items():
            values = rows[i]
            masked = masker.mask_values(plan, values, self.counts, candidates=candidates)
            if masked is not values:
                out[i] = encode_datarow(masked)
        return out

    def _unknown_plan(self, plan: object, n: int) -> ColumnPlan:
        formats = plan.formats if isinstance(plan, UnknownColumns) else ()
        key = (n, formats)
        cached = self._unknown_plans.get(key)
        if cached is None:
            cached = row_plan(self.masker, [None] * n, formats=formats)
            self._unknown_plans[key] = cached
        return cached

    def copy_plan(self, statement: str, binary: bool) -> CopyPlan:
        # Imported here: the ledger writer's process imports this module without the SQL
        # parser, which this part (the rows sent to the job) alone needs.
        from appliance.policy import copy_spec

        copy = copy_spec(statement) or _UNKNOWN_COPY
        self._copy = _CopyLines(self.masker, copy)
        return CopyPlan(copy, binary)

    def mask_copy(self, plan: object, frame: bytes) -> bytes | None:
        """The CopyData ``frame`` of a COPY OUT with its rows masked, or None if nothing
        changed. Raises MaskingRefused for binary COPY (its values cannot be scanned)."""
        return self.mask_copy_run(plan, frame, [(0, len(frame))])[0]

    def mask_copy_run(
        self, plan: object, chunk: bytes, frames: list[tuple[int, int]]
    ) -> list[bytes | None]:
        """CopyData frames of a COPY OUT, ``chunk[s:e]`` for each ``(s, e)`` of ``frames``,
        masked: per frame, the frame rewritten or None if nothing in it changed (as
        :meth:`mask_copy` of each frame alone). One pre-filter pass over all their rows
        instead of one per frame. Raises MaskingRefused for binary COPY."""
        copy = self._copy
        if not isinstance(plan, CopyPlan) or plan.binary or copy is None:
            raise MaskingRefused(
                "COPY in binary format cannot be masked for the job; use text or CSV format"
            )
        payloads = [chunk[s + 5 : e] for s, e in frames]
        out: list[bytes | None] = [None] * len(payloads)
        body = payloads[0] if len(payloads) == 1 else b"".join(payloads)
        starts = list(itertools.accumulate(map(len, payloads), initial=0))
        for i, spans in copy.to_mask(body, starts).items():
            payload = payloads[i]
            lines = payload.splitlines(keepends=True)
            if spans is not None and len(lines) == 1:
                # One row (a CopyData frame usually is) whose values are its own bytes: the
                # spans say which detectors may find something in which field.
                masked = copy.mask_plain(lines[0], self.counts, spans)
            else:
                masked = b"".join(copy.mask(line, self.counts) for line in lines)
            if masked != payload:
                out[i] = b"d" + _LEN.pack(len(masked) + 4) + masked
        return out

    def take_counts(self) -> MaskCounts:
        counts, self.counts = self.counts, MaskCounts()
        return counts


@dataclass(frozen=True, slots=True)
class HeaderPlan:
    """What a result header gives :class:`LedgerRows`: a COPY's spec, or the rows' plan and
    formats. Immutable: a pure function of the target's masker and the header."""

    copy: CopySpec | None
    plan: ColumnPlan | None
    formats: tuple[int, ...]


def header_plan(masker: TargetMasker | None, header: Mapping[str, Any]) -> HeaderPlan:
    """The plan of a result header the recorder wrote (``columns``, ``types``, ``formats``,
    ``tables``; or ``copy`` and what the COPY statement says)."""
    formats = tuple(header.get("formats") or ())
    columns = header.get("columns")
    if "copy" in header:
        copy = CopySpec(
            str(header["copy"]),
            header.get("table"),
            tuple(columns) if columns else None,
            "binary" if header.get("binary") else "csv" if header.get("csv") else "text",
            bool(header.get("header")),
        )
        return HeaderPlan(copy, None, formats)
    plan = None
    if masker is not None and columns is not None:
        plan = row_plan(
            masker,
            columns,
            tables=header.get("tables"),
            formats=formats,
            type_oids=header.get("types"),
        )
    return HeaderPlan(None, plan, formats)


class LedgerRows:
    """The rows of one result blob, masked into cells (see :mod:`appliance.ledger.results`).

    Fed the result header the recorder wrote (``columns``, ``types``, ``formats``,
    ``tables``; or ``copy`` and what the COPY statement says), then rows; COPY text comes
    in pieces that need not end at a line end, and a value cut in two is masked as one.
    """

    def __init__(self, masker: TargetMasker | None, counts: MaskCounts) -> None:
        self.masker = masker
        self.counts = counts
        self.plan: ColumnPlan | None = None
        self.copy: CopySpec | None = None
        self._copy_lines: _CopyLines | None = None
        self._partial = b""
        self._formats: tuple[int, ...] = ()

    def header(self, header: Mapping[str, Any]) -> None:
        """A new result set (or COPY) starts."""
        self.start(header_plan(self.masker, header))

    def start(self, planned: HeaderPlan) -> None:
        """A new result set (or COPY) starts, planned by :func:`header_plan` (which a caller
        may keep for the next result of the same header)."""
        self._partial = b""
        self.copy = planned.copy
        self.plan = planned.plan
        self._formats = planned.formats
        if planned.copy is not None:
            self._copy_lines = _CopyLines(self.masker, planned.copy) if self.masker else None

    def row(self, values: list[bytes | None]) -> list[Any]:
        """One DataRow's values as masked cells."""
        masker = self.masker
        if masker is None:
            return [None if v is None else v.decode("utf-8", "replace") for v in values]
        plan = self.plan
        if plan is None or len(plan.columns) != len(values):
            plan = self.plan = row_plan(masker, [None] * len(values), formats=self._formats)
        return masker.mask_cells(plan, values, self.counts)

    def rows(self, rows: list[list[bytes | None]]) -> list[list[Any]]:
        """Many DataRows' values (a run of them) as masked cells: one pre-filter pass over
        the run (:meth:`TargetMasker.rows_candidates`); only the rows it does not rule out are
        masked one by one, as :meth:`row` masks them, each value by the detectors that pass
        let through for it."""
        masker = self.masker
        if masker is None or not rows:
            return [self.row(values) for values in rows]
        plan = self.plan
        n = len(rows[0])
        if plan is None or len(plan.columns) != n or any(len(r) != n for r in rows):
            return [self.row(values) for values in rows]
        found = masker.rows_candidates(plan, rows)
        if found is None:
            return [masker.mask_cells(plan, values, self.counts) for values in rows]
        out: list[list[Any]] = []
        for i, values in enumerate(rows):
            candidates = found.get(i)
            if candidates is None:
                out.append([None if v is None else v.decode("utf-8", "replace") for v in values])
            else:
                out.append(masker.mask_cells(plan, values, self.counts, candidates=candidates))
        return out

    def copy_binary(self, size: int) -> dict[str, int]:
        """A chunk of binary COPY: values of unknown types, never written."""
        return binary_cell(size)

    def copy_text(self, payload: bytes) -> list[str]:
        """Complete lines of COPY text/CSV data, masked; the piece after the last newline
        waits for the next call (or :meth:`copy_end`). Give it as much data at once as
        there is: the lines are pre-filtered together, and only those that may hold
        something to mask are masked one by one."""
        return self.copy_lines(self.take_lines(payload))

    def take_lines(self, payload: bytes) -> bytes:
        """The complete lines that ``payload`` ends (with what an earlier piece left after
        its last newline); the piece after the last newline waits for the next call."""
        data = self._partial + payload if self._partial else payload
        cut = data.rfind(b"\n") + 1
        body, self._partial = data[:cut], data[cut:]
        return body

    def copy_lines(self, body: bytes) -> list[str]:
        """Complete lines of COPY text/CSV data (``body`` ends with a newline), masked, as
        :meth:`copy_text` masks them. A COPY's lines may go here in pieces cut at line ends,
        to as many of these as there are pieces: a line is masked on its own, with no state
        but a CSV header line's (the first of the COPY)."""
        if not body:
            return []
        lines = body.split(b"\n")
        lines.pop()  # after the last newline: empty
        # Decoding the whole body and splitting it gives each line's own decoding: a newline
        # is one byte that never belongs to a multi-byte sequence.
        texts = body.decode("utf-8", "replace").split("\n")
        texts.pop()
        copy_lines = self._copy_lines
        if copy_lines is None:
            return texts
        starts = list(itertools.accumulate(map((1).__add__, map(len, lines)), initial=0))
        for i, spans in sorted(copy_lines.to_mask(body, starts).items()):
            line = lines[i]
            if spans is None:
                masked = copy_lines.mask(line, self.counts)
            else:
                masked = copy_lines.mask_plain(line, self.counts, spans)
            texts[i] = masked.decode("utf-8", "replace")
        return texts

    def copy_end(self) -> list[str]:
        """The last line of the COPY, if it had no line end."""
        if not self._partial:
            return []
        line, self._partial = self._partial, b""
        return [self._line(line)]

    def _line(self, line: bytes) -> str:
        if self._copy_lines is not None:
            line = self._copy_lines.mask(line, self.counts)
        return line.decode("utf-8", "replace")
