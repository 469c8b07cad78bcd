"""Applying masks: free text, result rows (DataRow values) and COPY OUT rows.

:class:`Masker` is built once from the config and the masking key; :meth:`Masker.for_target`
gives the :class:`TargetMasker` of one target (cached). Everything here is synchronous and
pure: text in, masked text and counts out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.errors import ApplianceError
from appliance.masking._config import ColumnRule, MaskingConfig
from appliance.masking._copy import CopyFormat, CopyRowError, encode_field, split_row
from appliance.masking._counts import MaskCounts
from appliance.masking._detectors import DETECTORS, Options
from appliance.masking._pgtypes import Kind, decode_number, kind_of
from appliance.masking._scan import Finding, Scanner
from appliance.masking._styles import Style, keyed_hash, label_for, partial, redact

__all__ = [
    "BinaryColumnError",
    "ColumnAction",
    "ColumnPlan",
    "Masker",
    "MaskingKeyError",
    "TargetMasker",
]

MIN_KEY_BYTES = 16
COLUMN_RULE = "column_rule"  # the "detector" name counted for whole-value column masks
BINARY_UNSCANNED = "binary_unscanned"  # counted for binary values no detector could read


class BinaryColumnError(ApplianceError):
    """A value that must be masked arrived in binary format, where it cannot be rewritten.

    Fail closed: the caller must not pass the row on. The message names the column and why.
    """

    def __init__(self, column: str, reason: str) -> None:
        self.column = column
        self.reason = reason
        super().__init__(f"column {column}: {reason}; refusing to pass it on unmasked")


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


@dataclass(frozen=True)
class ColumnPlan:
    """Per-column decisions for one result shape (one RowDescription or COPY)."""

    columns: tuple[ColumnAction, ...]

    @property
    def refused_binary(self) -> tuple[str, ...]:
        """Columns whose non-NULL values :meth:`TargetMasker.mask_values` will refuse."""
        return tuple(c.name for c in self.columns if c.binary and c.rule is not None)


class Masker:
    """Masks for every target, from one config and the appliance's masking key."""

    def __init__(self, config: MaskingConfig, *, hmac_key: bytes) -> None:
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
        self._text = Scanner(everywhere, options)
        self._values = Scanner(enabled, options)
        self._targets: dict[str, TargetMasker] = {}

    def for_target(self, target: str) -> TargetMasker:
        """The (cached) masker for ``target``'s column rules."""
        masker = self._targets.get(target)
        if masker is None:
            masker = TargetMasker(self, target)
            self._targets[target] = masker
        return masker

    # Shared by the target maskers.

    def render(self, f: Finding, raw: str) -> str:
        style = self.config.detectors[f.detector].style
        if style is Style.PARTIAL:
            return partial(raw)
        if style is Style.HASH:
            return keyed_hash(self._key, f.value.encode("utf-8", "surrogateescape"))
        return redact(label_for(f.detector))

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
        self._has_rules = any(
            r.applies_to(target) and r.style is not Style.NONE for r in masker.config.columns
        )

    # -- free text ------------------------------------------------------------------------------

    def mask_text(self, text: str, counts: MaskCounts) -> str:
        """``text`` with every finding of the detectors on in scope ``all`` masked, each
        counted by detector. Returns ``text`` itself if it is clean.

        Column rules apply where PostgreSQL quotes column values in an error detail: the
        values of ``Key (tax_id)=(12-3456789) already exists.`` are masked as the rule for
        ``tax_id`` says, and ``Failing row contains (...)`` -- values without column names --
        is redacted whole when this target has column rules.
        """
        if self._has_rules and ("ey (" in text or "Failing row contains (" in text):
            text = self._mask_error_detail(text, counts)
        return self._m._text.mask(text, self._m.render, lambda f: counts.add(f.detector))

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

        def found(f: Finding) -> None:
            counts.add(f.detector, where)

        return self._m._values.mask(text, self._m.render, found)

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
        taken as text.
        """
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
            label = rule.redaction_label(column) if rule is not None else ""
            oid = type_oids[i] if type_oids is not None else None
            actions.append(ColumnAction(name, rule, label, kind_of(oid, binary), binary, oid))
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
            actions.append(ColumnAction(f"${i + 1}", None, "", kind_of(oid, binary), binary, oid))
        return ColumnPlan(tuple(actions))

    def mask_values(
        self, plan: ColumnPlan, values: list[bytes | None], counts: MaskCounts
    ) -> list[bytes | None]:
        """The row's values masked per ``plan``; ``values`` itself if nothing changed.

        Raises BinaryColumnError for a non-NULL binary value that a column rule covers, or in
        which a detector finds something (binary integers and numerics are read as digits).
        Binary values of types that cannot be read here are passed on and counted as
        ``binary_unscanned``.
        """
        if len(values) != len(plan.columns):
            raise ValueError(f"row has {len(values)} values, plan has {len(plan.columns)}")
        out: list[bytes | None] | None = None
        scanner = self._m._values
        for i, value in enumerate(values):
            if value is None:
                continue
            action = plan.columns[i]
            if action.rule is not None:
                new = self._mask_whole(action, value, counts)
            elif action.kind in _BINARY_KINDS:
                new = self._scan_binary(action, value, counts)
            elif not scanner.might_match_bytes(value):
                continue
            else:
                new = self._scan_value(action, value, counts, gated=True)
            if new is not value:
                if out is None:
                    out = list(values)
                out[i] = new
        return values if out is None else out

    def _mask_whole(self, action: ColumnAction, value: bytes, counts: MaskCounts) -> bytes | None:
        rule = action.rule
        assert rule is not None
        if action.binary:
            raise BinaryColumnError(
                action.name,
                f"the column rule for {rule.column!r} masks it ({rule.style.value}), and a"
                " value in binary format cannot be rewritten (ask for text format)",
            )
        counts.add(COLUMN_RULE, action.name)
        text = value.decode("utf-8", "surrogateescape")
        masked = self._m.render_rule(rule, action.label, text, value)
        if action.kind is Kind.STRICT:
            return None
        if action.kind is Kind.JSON and not _is_json(masked):
            masked = json.dumps(masked, ensure_ascii=False)
        return masked.encode("utf-8", "surrogateescape")

    def _scan_value(
        self, action: ColumnAction, value: bytes, counts: MaskCounts, *, gated: bool = False
    ) -> bytes | None:
        text = value.decode("utf-8", "surrogateescape")
        if action.kind in (Kind.JSON, Kind.JSONB_BINARY):
            return self._scan_json(action, text, value, counts)
        masked = self._mask(text, action.name, counts, gated=gated)
        if masked is text:
            return value
        if action.kind is Kind.STRICT:
            return None
        return masked.encode("utf-8", "surrogateescape")

    def _scan_json(
        self, action: ColumnAction, text: str, value: bytes, counts: MaskCounts
    ) -> bytes | None:
        prefix = ""
        if action.kind is Kind.JSONB_BINARY:
            prefix, text = text[:1], text[1:]
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
        return (prefix + json.dumps(masked_doc, ensure_ascii=False)).encode(
            "utf-8", "surrogateescape"
        )

    def _scan_binary(self, action: ColumnAction, value: bytes, counts: MaskCounts) -> bytes:
        if action.kind is Kind.JSONB_BINARY and value[:1] == b"\x01":
            if not self._m._values.might_match_bytes(value):
                return value
            new = self._scan_value(action, value, counts)
            assert new is not None  # JSON text after its version byte stays JSON
            return new
        if action.kind is Kind.NUMBER and action.type_oid is not None:
            digits = decode_number(action.type_oid, value)
            if digits is not None:
                findings = self._m._values.find(digits)
                if findings:
                    raise BinaryColumnError(
                        action.name,
                        f"the {findings[0].detector} detector matches its value, and a binary"
                        " number cannot be rewritten (ask for text format)",
                    )
                return value
        counts.add(BINARY_UNSCANNED, action.name)
        return value

    def _mask(self, text: str, column: str, counts: MaskCounts, *, gated: bool = False) -> str:
        def found(f: Finding) -> None:
            counts.add(f.detector, column)

        return self._m._values.mask(text, self._m.render, found, gated=gated)

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
    ) -> bytes:
        """One COPY OUT row (text or CSV format) with its values masked per ``plan``.

        ``null``/``quote``/``escape`` are the COPY options (defaults as PostgreSQL's). Fields
        that no mask changes are kept byte for byte. Raises CopyRowError if the row does not
        parse or has a different number of fields than the plan.
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
        masked = self.mask_values(plan, values, counts)
        if masked is values:
            return line
        single = len(fields) == 1
        parts = [
            f.raw if new is old else encode_field(new, fmt, single=single)
            for f, old, new in zip(fields, values, masked, strict=True)
        ]
        return fmt.delimiter.join(parts) + eol


_BINARY_KINDS = frozenset({Kind.NUMBER, Kind.OPAQUE, Kind.JSONB_BINARY})
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
