"""Applying masks: free text, result rows (DataRow values) and COPY OUT rows.

:class:`Masker` is built once from the config and the masking key; :meth:`Masker.for_target`
gives the :class:`TargetMasker` of one target (cached). Everything here is synchronous and
pure: text in, masked text and counts out.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.errors import ApplianceError
from appliance.ledger.results import binary_cell
from appliance.masking._config import ColumnRule, MaskingConfig
from appliance.masking._copy import CopyFormat, CopyRowError, encode_field, split_row
from appliance.masking._counts import MaskCounts
from appliance.masking._detectors import DETECTORS, Options
from appliance.masking._pgtypes import Kind, binary_is_text, decode_number, kind_of
from appliance.masking._prefilter import DatabaseStore
from appliance.masking._scan import Counted, Renderer, Scanner
from appliance.masking._styles import Style, keyed_hash, partial, redact

__all__ = [
    "ColumnAction",
    "ColumnPlan",
    "Masker",
    "MaskingKeyError",
    "TargetMasker",
]

MIN_KEY_BYTES = 16
COLUMN_RULE = "column_rule"  # the "detector" name counted for whole-value column masks
BINARY_UNSCANNED = "binary_unscanned"  # counted for binary values no detector could read


class MaskingKeyError(ApplianceError):
    """The masking key is missing or too short for the hash style."""


@dataclass(frozen=True, slots=True)
class ColumnAction:
    """What happens to the values of one result column."""

    name: str  # "table.column", or "column", or "#3" when the name is unknown
    rule: ColumnRule | None  # whole-value mask (never a rule of style none)
    label: str  # the redaction label of the rule
    kind: Kind
    binary: bool
    type_oid: int | None = None
    # For a binary column: how its values read as text (see _text_view); None if they do not.
    text: ColumnAction | None = None


@dataclass(frozen=True)
class ColumnPlan:
    """Per-column decisions for one result shape (one RowDescription or COPY)."""

    columns: tuple[ColumnAction, ...]

    @functools.cached_property
    def scan_only(self) -> bool:
        """Every column is text format, scanned by the detectors and under no column rule,
        and what is scanned is the value's own bytes (not JSON, whose strings are unescaped
        first): then a row no detector can find anything in is kept as it is."""
        return all(
            c.rule is None and not c.binary and c.kind in (Kind.TEXT, Kind.STRICT)
            for c in self.columns
        )

    @property
    def unreadable_binary(self) -> tuple[str, ...]:
        """Binary columns whose values cannot be read as text here (see :func:`_text_kind`):
        never scanned, and made NULL when a column rule covers them."""
        return tuple(c.name for c in self.columns if c.binary and c.text is None)


class Masker:
    """Masks for every target, from one config and the appliance's masking key."""

    def __init__(
        self,
        config: MaskingConfig,
        *,
        hmac_key: bytes,
        prefilter_cache: DatabaseStore | None = None,
    ) -> None:
        """``prefilter_cache``: where compiled pre-filter databases are kept between starts
        (:class:`appliance.prefilter_cache.PrefilterCache`); None compiles them (once per process)."""
        if config.uses_hash and len(hmac_key) < MIN_KEY_BYTES:
            raise MaskingKeyError(
                f"the hash style needs a masking key of at least {MIN_KEY_BYTES} bytes"
                f" (got {len(hmac_key)})"
            )
        self.config = config
        self._key = hmac_key
        options = Options(config.phone_regions)
        enabled = [d for d in DETECTORS if config.detectors[d.name].style is not None]
        everywhere = [d for d in enabled if config.detectors[d.name].scope == "all"]
        self._text = Scanner(everywhere, options, store=prefilter_cache)
        self._values = Scanner(enabled, options, store=prefilter_cache)
        self._targets: dict[str, TargetMasker] = {}
        # What a detector's finding is replaced with, per its style (compiled: called per
        # finding).
        self.render = Renderer({n: s.style for n, s in config.detectors.items()}, hmac_key)

    @property
    def prefilter_loaded(self) -> bool | None:
        """Whether the pre-filter's databases were loaded (True: from the cache or another
        process) or compiled (False); None with the re engine."""
        loaded = {self._text.prefilter.loaded, self._values.prefilter.loaded} - {None}
        return None if not loaded else all(loaded)

    def for_target(self, target: str) -> TargetMasker:
        """The (cached) masker for ``target``'s column rules."""
        masker = self._targets.get(target)
        if masker is None:
            masker = TargetMasker(self, target)
            self._targets[target] = masker
        return masker

    # Shared by the target maskers.

    def render_rule(self, rule: ColumnRule, label: str, text: str, raw: bytes) -> str:
        if rule.style is Style.PARTIAL:
            return partial(text)
        if rule.style is Style.HASH:
            return keyed_hash(self._key, raw)
        return redact(label)


class TargetMasker:
    """Masks for one target. Build with :meth:`Masker.for_target`."""

    def __init__(self, masker: Masker, target: str) -> None:
        self._m = masker
        self.target = target
        self._copy_formats: dict[tuple[object, ...], CopyFormat] = {}
        # column_plan's answers: a plan depends only on its arguments and the config, and the
        # same result shapes come back statement after statement (per result set, in the
        # ledger writer and toward the job).
        self._plans: dict[tuple[object, ...], ColumnPlan] = {}
        self._has_rules = any(
            r.applies_to(target) and r.style is not Style.NONE for r in masker.config.columns
        )

    @property
    def has_column_rules(self) -> bool:
        """Whether some column rule (other than style none) applies to this target."""
        return self._has_rules

    def where(self, data: bytes, cut: int = 0) -> list[tuple[int, int, int]]:
        """``(start, end, detector)`` spans of ``data`` (UTF-8 bytes holding many values:
        rows of a COPY): a result-value detector can find something in a value lying inside
        ``data`` only if one of its spans overlaps that value; a value no span overlaps is
        clean as it stands (see :meth:`Prefilter.where
        <appliance.masking._prefilter.Prefilter.where>`). Pass the detectors of the spans
        overlapping each value to :meth:`mask_values` as ``candidates``. ``cut``: where a
        value starts that no value before it runs past, about the middle of a long
        ``data``, to scan its two halves at once (:meth:`Prefilter.where_split
        <appliance.masking._prefilter.Prefilter.where_split>`); 0: one scan."""
        return self._m._values.prefilter.where_split(data, cut)

    # -- free text ------------------------------------------------------------------------------

    def mask_text(self, text: str, counts: MaskCounts) -> str:
        """``text`` with every finding of the detectors on in scope ``all`` masked, each
        counted by detector. Returns ``text`` itself if it is clean: on the proxy's hot path
        (every statement text its per-session cache misses), a text the pre-filter finds
        nothing in is answered by that one scan.

        Column rules apply where PostgreSQL quotes column values in an error detail: the
        values of ``Key (tax_id)=(12-3456789) already exists.`` are masked as the rule for
        ``tax_id`` says, and ``Failing row contains (...)`` -- values without column names --
        is redacted whole when this target has column rules.
        """
        scanner = self._m._text
        only = None
        if self._has_rules and ("ey (" in text or "Failing row contains (" in text):
            text = self._mask_error_detail(text, counts)
        else:
            # The hot path: a statement the pre-filter finds nothing in is answered by one
            # scan; else what it found is what the scanner runs (not scanned again).
            only = scanner.prefilter.which(text.encode("utf-8", "surrogatepass"))
            if not only:
                return text
            if scanner.windowed(text):
                only = None
        return scanner.mask(text, self._m.render, Counted(counts), only=only)

    def _mask_error_detail(self, text: str, counts: MaskCounts) -> str:
        def key(m: re.Match[str]) -> str:
            columns = [c.strip().strip('"') for c in m.group(1).split(",")]
            rules = [self._m.config.column_rule(self.target, None, c) for c in columns]
            ruled = [(c, r) for c, r in zip(columns, rules, strict=True) if r is not None]
            ruled = [(c, r) for c, r in ruled if r.style is not Style.NONE]
            if not ruled:
                return m.group()
            column, rule = max(ruled, key=lambda cr: _STRENGTH[cr[1].style])
            values = m.group(2)
            raw = values.encode("utf-8", "surrogateescape")
            masked = self._m.render_rule(rule, rule.redaction_label(column), values, raw)
            counts.add(COLUMN_RULE, column)
            head = m.group()[: m.start(2) - m.start()]
            return f"{head}{masked}){m.group(3)}"

        def row(m: re.Match[str]) -> str:
            counts.add(COLUMN_RULE, None)
            return "Failing row contains ([REDACTED:ROW])"

        return _FAILING_ROW.sub(row, _KEY_DETAIL.sub(key, text))

    def mask_value_text(self, text: str, counts: MaskCounts, where: str | None = None) -> str:
        """``text`` masked with the detectors on for result values (HTTP bodies, query
        values); each finding counted under ``where``. Returns ``text`` itself if clean."""
        return self._m._values.mask(text, self._m.render, Counted(counts, where))

    def mask_whole(self, text: str, style: Style, label: str) -> str:
        """``text`` masked whole in ``style`` (a JSON path rule)."""
        raw = text.encode("utf-8", "surrogateescape")
        if style is Style.PARTIAL:
            return partial(text)
        if style is Style.HASH:
            return keyed_hash(self._m._key, raw)
        return redact(label)

    def detect(self, text: str, *, results: bool = False) -> list[tuple[str, int, int]]:
        """``(detector, start, end)`` of each finding in ``text`` (no values). ``results``:
        use the detectors on for result values, else those on for free text."""
        scanner = self._m._values if results else self._m._text
        return [(f.detector, f.start, f.end) for f in scanner.find(text)]

    # -- result columns -------------------------------------------------------------------------

    def table_scoped_columns(self) -> list[str]:
        """The column patterns of this target's rules that also name a table: only for
        those does it matter which table a result column comes from."""
        return [r.column for r in self._m.config.columns if r.applies_to(self.target) and r.table]

    def column_plan(
        self,
        table: str | None,
        columns: Sequence[str | None],
        *,
        tables: Sequence[str | None] | None = None,
        formats: Sequence[int] = (),
        type_oids: Sequence[int | None] | None = None,
    ) -> ColumnPlan:
        """Decide, per result column, the whole-value rule (if any) and how values are scanned.

        ``table`` applies to every column unless ``tables`` gives one per column (None:
        unknown, e.g. a computed column). A column name may be None (COPY of a query).
        ``formats`` follows the protocol: empty means all text, one entry applies to all,
        else one per column (1 = binary). ``type_oids`` from RowDescription lets masked values
        of non-text types become NULL instead of unparsable text; without it every column is
        taken as text. Plans are cached (immutable, a pure function of the arguments).
        """
        key = (
            table,
            tuple(columns),
            None if tables is None else tuple(tables),
            tuple(formats),
            None if type_oids is None else tuple(type_oids),
        )
        plan = self._plans.get(key)
        if plan is None:
            plan = self._column_plan(table, columns, tables, formats, type_oids)
            if len(self._plans) >= _PLAN_CACHE:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _column_plan(
        self,
        table: str | None,
        columns: Sequence[str | None],
        tables: Sequence[str | None] | None,
        formats: Sequence[int],
        type_oids: Sequence[int | None] | None,
    ) -> ColumnPlan:
        n = len(columns)
        if tables is not None and len(tables) != n:
            raise ValueError("tables must have one entry per column")
        if type_oids is not None and len(type_oids) != n:
            raise ValueError("type_oids must have one entry per column")
        if len(formats) not in (0, 1, n):
            raise ValueError("formats must be empty, one entry, or one per column")
        actions = []
        for i, column in enumerate(columns):
            col_table = tables[i] if tables is not None else table
            binary = bool(formats[0] if len(formats) == 1 else formats[i] if formats else 0)
            rule = self._m.config.column_rule(self.target, col_table, column)
            if rule is not None and rule.style is Style.NONE:
                rule = None
            if column is None:
                name = f"{col_table}.#{i + 1}" if col_table else f"#{i + 1}"
            else:
                name = f"{col_table}.{column}" if col_table else column
                # The name keys the counts in the ledger, and it may hold a value: MySQL
                # names a column after its expression (SELECT '4111...'), an alias can be
                # anything.
                name = self.mask_text(name, MaskCounts())
            label = rule.redaction_label(column) if rule is not None else ""
            oid = type_oids[i] if type_oids is not None else None
            actions.append(_action(name, rule, label, kind_of(oid, binary), binary, oid))
        return ColumnPlan(tuple(actions))

    def parameter_plan(
        self, n: int, *, formats: Sequence[int] = (), type_oids: Sequence[int | None] | None = None
    ) -> ColumnPlan:
        """A plan for ``n`` bind parameters (named ``$1`` ...): detectors only, no column rules
        (a parameter's column is only known from the statement). ``formats`` and
        ``type_oids`` as in Bind and ParameterDescription."""
        if len(formats) not in (0, 1, n):
            raise ValueError("formats must be empty, one entry, or one per parameter")
        if type_oids is not None and len(type_oids) != n:
            raise ValueError("type_oids must have one entry per parameter")
        actions = []
        for i in range(n):
            binary = bool(formats[0] if len(formats) == 1 else formats[i] if formats else 0)
            oid = type_oids[i] if type_oids is not None else None
            actions.append(_action(f"${i + 1}", None, "", kind_of(oid, binary), binary, oid))
        return ColumnPlan(tuple(actions))

    def mask_values(
        self,
        plan: ColumnPlan,
        values: list[bytes | None],
        counts: MaskCounts,
        *,
        candidates: Sequence[Sequence[int]] | None = None,
    ) -> list[bytes | None]:
        """The row's values masked per ``plan``, for the wire (toward the job); ``values``
        itself if nothing changed. None is SQL NULL.

        A binary-format value is masked through its text (see :func:`_text_kind`, the same
        decision as :meth:`mask_cells` makes for the ledger): a text-like or ``jsonb`` value
        is rewritten in its binary form; any other type that must be masked (a column rule,
        a detector finding in a binary number) becomes NULL, as a masked value of a non-text
        type does in text format. A binary value that cannot be read here passes unscanned
        (counted as ``binary_unscanned``), or becomes NULL when a column rule covers it.

        ``candidates``: per value, the detectors that may find something in it, when the
        caller has pre-filtered many values at once (see :meth:`where`); else each value is
        pre-filtered here.
        """
        if len(values) != len(plan.columns):
            raise ValueError(f"row has {len(values)} values, plan has {len(plan.columns)}")
        if candidates is not None and len(candidates) != len(values):
            raise ValueError("candidates must have one entry per value")
        if candidates is None and self._clean_row(plan, values):
            return values
        out: list[bytes | None] | None = None
        prefilter = self._m._values.candidates_bytes
        for i, value in enumerate(values):
            if value is None:
                continue
            action = plan.columns[i]
            if action.binary:
                new = self._mask_binary(action, value, counts)
            elif action.rule is not None or action.kind is Kind.JSON:
                new = self._mask_one(action, value, counts)
            else:
                only = prefilter(value) if candidates is None else candidates[i]
                if not only:
                    continue
                new = self._mask_one(action, value, counts, only=only)
            if new is not value:
                if out is None:
                    out = list(values)
                out[i] = new
        return values if out is None else out

    def mask_scanned(
        self,
        action: ColumnAction,
        value: bytes,
        counts: MaskCounts,
        only: Sequence[int] | None,
    ) -> bytes | None:
        """One text-format value of a column that is only scanned (see
        :attr:`ColumnPlan.scan_only`) masked by the detectors ``only`` that the pre-filter let
        through for it, exactly as :meth:`mask_values` masks it with those ``candidates``:
        ``value`` itself if unchanged, None for SQL NULL (a masked value of a non-text
        type). For callers that split rows themselves (COPY lines whose values are their
        own bytes) and so skip building a list of values and one of candidates per row.
        (:meth:`_mask_one` masks such values here too; ``only`` None: not asked yet.)"""
        # Decoded, masked and encoded in compiled code (issue 19: once per value that the
        # pre-filter lets through, every row of an export).
        masked = self._m._values.mask_value(value, self._m.render, counts, action.name, only=only)
        if masked is value:
            return value
        if action.kind is Kind.STRICT:
            return None
        return masked

    def mask_cells(
        self,
        plan: ColumnPlan,
        values: list[bytes | None],
        counts: MaskCounts,
        *,
        candidates: Sequence[Sequence[int]] | None = None,
    ) -> list[str | dict[str, int] | None]:
        """The row's values masked per ``plan``, for the ledger's result blobs: each as the
        text it has in text format (masked exactly as :meth:`mask_values` masks it for the
        job), None for NULL, or :func:`~appliance.ledger.results.binary_cell` for a binary
        value that cannot be read as text here (never written). ``candidates``: per value,
        the detectors the pre-filter let through for it (:meth:`rows_candidates`), or None
        to run the pre-filter here; a binary value's text is pre-filtered here either way."""
        if len(values) != len(plan.columns):
            raise ValueError(f"row has {len(values)} values, plan has {len(plan.columns)}")
        if candidates is not None and len(candidates) != len(values):
            raise ValueError("candidates must have one entry per value")
        if candidates is None and self._clean_row(plan, values):
            return [None if v is None else v.decode("utf-8", "replace") for v in values]
        prefilter = self._m._values.candidates_bytes
        out: list[str | dict[str, int] | None] = []
        for i, value in enumerate(values):
            if value is None:
                out.append(None)
                continue
            action = plan.columns[i]
            text = value
            # The detectors the pre-filter let through for the text: given for a text value.
            only = candidates[i] if candidates is not None and not action.binary else None
            if action.binary:
                if action.text is None:
                    if action.rule is None:
                        counts.add(BINARY_UNSCANNED, action.name)
                    out.append(binary_cell(len(value)))
                    continue
                readable = _text_of(action, value)
                if readable is None:  # malformed for its type: nothing readable to write
                    out.append(binary_cell(len(value)))
                    continue
                text, action = readable, action.text
            if action.rule is not None or action.kind is Kind.JSON:
                only = None  # masked whole, or each string of the document pre-filtered
            elif only is None:
                only = prefilter(text)
            if only is None or only:
                masked = self._mask_one(action, text, counts, only=only)
                if masked is None:
                    out.append(None)
                    continue
                text = masked
            out.append(text.decode("utf-8", "replace"))
        return out

    def rows_candidates(
        self, plan: ColumnPlan, rows: Sequence[Sequence[bytes | None]]
    ) -> dict[int, list[Sequence[int]]] | None:
        """Of many rows of one ``plan`` (a run of rows on its way to the ledger, or to the
        job), those that masking may change: every other row is clean as it stands, and
        :meth:`mask_values` / :meth:`mask_cells` would return it unchanged. One pre-filter
        pass over all their values (joined by a NUL byte: a pattern's match in a value is a
        match in the joined bytes, as no value's stretch of digits runs into the next),
        instead of one per row. Per row that masking may change, per value, what the
        pre-filter let through for it: the detectors to pass to :meth:`mask_cells`
        (or :meth:`mask_values`) as ``candidates`` (:meth:`Scanner.candidates_rows
        <appliance.masking._scan.Scanner.candidates_rows>`: one pass over all the rows, no
        pass per row and per value). None when the plan is not
        :attr:`ColumnPlan.scan_only`: then every row is masked one by one, and pre-filtered
        there."""
        if not plan.scan_only:
            return None
        # One scan (a "which" first would scan every chunk with a finding twice).
        return self._m._values.candidates_rows(rows)

    def _clean_row(self, plan: ColumnPlan, values: list[bytes | None]) -> bool:
        """True if no value of the row can change: one pre-filter pass over all its values
        (joined: a match across two of them only sends the row down the slow path)."""
        if not plan.scan_only or len(values) < 2:
            return False
        joined = b"\x00".join([v for v in values if v is not None])
        return not self._m._values.candidates_bytes(joined)

    def _mask_one(
        self,
        action: ColumnAction,
        value: bytes,
        counts: MaskCounts,
        *,
        only: Sequence[int] | None = None,
    ) -> bytes | None:
        """One text-format value (or the text of a binary one) masked: the value itself if
        unchanged, None for SQL NULL. ``only``: the detectors the pre-filter let through for
        ``value`` (None: not asked yet)."""
        if action.rule is not None:
            return self._mask_whole(action, value, counts)
        if action.kind is Kind.JSON:
            # What is scanned is each string (and number) of the document, unescaped: the
            # pre-filter runs on each of them, never on the document's bytes.
            text = value.decode("utf-8", "surrogateescape")
            return self._scan_json(action, text, value, counts)
        return self.mask_scanned(action, value, counts, only)

    def _mask_binary(self, action: ColumnAction, value: bytes, counts: MaskCounts) -> bytes | None:
        """A binary-format value masked for the wire (see :meth:`mask_values`)."""
        text_action = action.text
        text = _text_of(action, value) if text_action is not None else None
        if text_action is None or text is None:
            if action.rule is not None:
                counts.add(COLUMN_RULE, action.name)
                return None  # a rule covers it, and it cannot be read here: no value at all
            counts.add(BINARY_UNSCANNED, action.name)
            return value
        only = None
        if text_action.rule is None and text_action.kind is not Kind.JSON:
            only = self._m._values.candidates_bytes(text)
            if not only:
                return value
        masked = self._mask_one(text_action, text, counts, only=only)
        if masked is text:
            return value
        if masked is None or action.kind is Kind.NUMBER:
            return None  # a binary number cannot hold a mask
        if action.kind is Kind.JSONB_BINARY:
            return _JSONB_VERSION + masked
        if binary_is_text(action.type_oid):
            return masked  # a text-like type: its binary form is its text
        return None  # a type not known to be text: the masked text would not parse

    def _mask_whole(self, action: ColumnAction, value: bytes, counts: MaskCounts) -> bytes | None:
        rule = action.rule
        assert rule is not None
        counts.add(COLUMN_RULE, action.name)
        text = value.decode("utf-8", "surrogateescape")
        masked = self._m.render_rule(rule, action.label, text, value)
        if action.kind is Kind.STRICT:
            return None
        if action.kind is Kind.JSON and not _is_json(masked):
            masked = json.dumps(masked, ensure_ascii=False)
        return masked.encode("utf-8", "surrogateescape")

    def _scan_json(
        self, action: ColumnAction, text: str, value: bytes, counts: MaskCounts
    ) -> bytes | None:
        try:
            doc = json.loads(text)
        except ValueError:
            # Not JSON after all: mask as text, and if that changes it, hide it whole.
            masked = self._mask(text, action.name, counts)
            return value if masked is text else None
        changed = False

        def walk(x: object) -> object:
            nonlocal changed
            if isinstance(x, str):
                masked = self._mask(x, action.name, counts)
                changed = changed or masked is not x
                return masked
            if isinstance(x, bool) or x is None:
                return x
            if isinstance(x, int | float):
                as_text = json.dumps(x)
                masked = self._mask(as_text, action.name, counts)
                if masked is as_text:
                    return x
                changed = True
                return masked
            if isinstance(x, list):
                return [walk(item) for item in x]
            if isinstance(x, dict):
                return {walk(k): walk(v) for k, v in x.items()}
            return x  # pragma: no cover - json.loads makes nothing else

        masked_doc = walk(doc)
        if not changed:
            return value
        return json.dumps(masked_doc, ensure_ascii=False).encode("utf-8", "surrogateescape")

    def _mask(
        self, text: str, column: str, counts: MaskCounts, *, only: Sequence[int] | None = None
    ) -> str:
        return self._m._values.mask(text, self._m.render, Counted(counts, column), only=only)

    # -- COPY OUT -------------------------------------------------------------------------------

    def mask_copy_line(
        self,
        plan: ColumnPlan,
        line: bytes,
        counts: MaskCounts,
        *,
        csv: bool,
        delimiter: str,
        null: str | None = None,
        quote: str = '"',
        escape: str | None = None,
        candidates: Sequence[Sequence[int]] | None = None,
    ) -> bytes:
        """One COPY OUT row (text or CSV format) with its values masked per ``plan``.

        ``null``/``quote``/``escape`` are the COPY options (defaults as PostgreSQL's). Fields
        that no mask changes are kept byte for byte. ``candidates`` as in
        :meth:`mask_values`, per field. Raises CopyRowError if the row does not parse or has
        a different number of fields than the plan.
        """
        key = (csv, delimiter, null, quote, escape)
        fmt = self._copy_formats.get(key)
        if fmt is None:
            fmt = CopyFormat.make(
                csv=csv, delimiter=delimiter, null=null, quote=quote, escape=escape
            )
            self._copy_formats[key] = fmt
        if any(c.binary for c in plan.columns):
            raise ValueError("a COPY text/CSV row needs a plan of text columns (formats=[0])")
        fields, eol = split_row(line, fmt)
        if len(fields) != len(plan.columns):
            raise CopyRowError(
                f"COPY row has {len(fields)} fields, the plan has {len(plan.columns)} columns"
            )
        values = [f.value for f in fields]
        masked = self.mask_values(plan, values, counts, candidates=candidates)
        if masked is values:
            return line
        single = len(fields) == 1
        parts = [
            f.raw if new is old else encode_field(new, fmt, single=single)
            for f, old, new in zip(fields, values, masked, strict=True)
        ]
        return fmt.delimiter.join(parts) + eol


_PLAN_CACHE = 1024  # result shapes remembered per target (then the cache starts afresh)
_JSONB_VERSION = b"\x01"  # jsonb's binary format: a version byte, then the JSON text


def _text_kind(kind: Kind) -> Kind | None:
    """How the values of a binary column of ``kind`` read as text, or None if they cannot
    be read here: text-like types are their text; ``jsonb`` is JSON after its version
    byte; integers and ``numeric`` read as digits (a masked number is NULL, as for a
    non-text type in text format); other types are opaque."""
    if kind is Kind.TEXT:
        return Kind.TEXT
    if kind is Kind.JSONB_BINARY:
        return Kind.JSON
    if kind is Kind.NUMBER:
        return Kind.STRICT
    return None


def _action(
    name: str, rule: ColumnRule | None, label: str, kind: Kind, binary: bool, oid: int | None
) -> ColumnAction:
    """A column's action; a binary column also gets the action for its text (made once per
    plan, not per value)."""
    text = None
    if binary:
        text_kind = _text_kind(kind)
        if text_kind is not None:
            text = ColumnAction(name, rule, label, text_kind, False, oid)
    return ColumnAction(name, rule, label, kind, binary, oid, text)


def _text_of(action: ColumnAction, value: bytes) -> bytes | None:
    """The text a binary ``value`` of ``action``'s column has in text format, or None if
    it is malformed for its type."""
    if action.kind is Kind.JSONB_BINARY:
        return value[1:] if value[:1] == _JSONB_VERSION else None
    if action.kind is Kind.NUMBER:
        if action.type_oid is None:
            return None
        digits = decode_number(action.type_oid, value)
        return digits.encode() if digits is not None else None
    return value


_STRENGTH = {Style.NONE: 0, Style.PARTIAL: 1, Style.HASH: 2, Style.REDACT: 3}

# The DETAIL of unique, foreign key and exclusion violations (ri_triggers.c, nbtinsert.c,
# execIndexing.c) and of NOT NULL and check violations (execMain.c).
_KEY_DETAIL = re.compile(
    r"\b[Kk]ey \((.+?)\)=\((.*?)\)"
    r"( already exists| is not present| is still referenced| conflicts with|\.?\s*\Z)",
    re.DOTALL,
)
_FAILING_ROW = re.compile(r"Failing row contains \((.*)\)", re.DOTALL)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
