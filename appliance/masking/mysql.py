"""MySQL result rows masked, toward the job and toward the ledger, by one set of decisions.

Where this sits: the relay (:mod:`appliance.proxy.mysql.relay`) hands each row of a result
set to :class:`ResponseMasker` when :meth:`~appliance.masking.MaskingConfig.
response_masking` says so for the session; the ledger writer turns the row payloads the
recorder gathered into a result blob with :class:`LedgerRows` (run by the recorder's blob
transform, off the event loop). Both describe a result set's columns as
:class:`ResultColumns` (the relay from the column definitions, the ledger from the blob
header the recorder wrote with :meth:`ResultColumns.header`), plan them with
:func:`row_plan`, read a row's values as text with :func:`row_texts` (text-protocol values
as they are; binary-protocol numbers and dates as the text the server would have sent) and
mask them with :meth:`~appliance.masking.TargetMasker.mask_values`. So a value the job sees
masked is the value the ledger keeps.

Toward the job a masked value is written back in its row's own protocol: in a binary row a
string, blob, enum, set or JSON column gets the masked text, any other type (a number, a
date) becomes NULL, as a masked value of a non-text type does in a text row. In the ledger a
value of a binary-charset column (BLOB, BINARY) that is not printable text is kept as a
binary cell (its length only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.ledger.results import binary_cell
from appliance.masking._counts import MaskCounts
from appliance.masking._masker import ColumnPlan, TargetMasker
from appliance.protocols.mysql import PeerProtocolError
from appliance.protocols.mysql.constants import BINARY_CHARSET, Type
from appliance.protocols.mysql.messages import (
    ColumnDef,
    binary_row,
    binary_to_text,
    encode_binary_row,
    encode_text_row,
    text_row,
)

__all__ = [
    "LedgerRows",
    "ResponseMasker",
    "ResultColumns",
    "mask_type",
    "row_plan",
    "row_texts",
]

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

# Binary-protocol types whose value is a length-encoded string that a masked text can take.
_TEXT_IN_BINARY = frozenset(
    {
        Type.VARCHAR, Type.JSON, Type.ENUM, Type.SET, Type.TINY_BLOB, Type.MEDIUM_BLOB,
        Type.LONG_BLOB, Type.BLOB, Type.VAR_STRING, Type.STRING, Type.GEOMETRY,
    }
)  # fmt: skip


def mask_type(column_type: int) -> int:
    """The masker's type for a MySQL column type (strings, blobs, enums: text)."""
    return _MASK_TYPES.get(column_type, _TEXT_OID)


@dataclass(frozen=True)
class ResultColumns:
    """What masking needs of a result set's columns: names, the tables they come from
    (``schema.table``, None for computed columns), MySQL types, unsigned flags, binary
    charset flags, and whether its rows are in the binary protocol."""

    names: tuple[str, ...]
    tables: tuple[str | None, ...]
    types: tuple[int, ...]
    unsigned: tuple[bool, ...]
    bytes: tuple[bool, ...]
    binary: bool

    @classmethod
    def of(cls, columns: Sequence[ColumnDef], binary: bool) -> ResultColumns:
        """From the server's column definitions."""
        return cls(
            tuple(c.name for c in columns),
            tuple(f"{c.schema}.{c.org_table}" if c.org_table else None for c in columns),
            tuple(c.type for c in columns),
            tuple(c.unsigned for c in columns),
            tuple(c.charset == BINARY_CHARSET for c in columns),
            binary,
        )

    def header(self) -> dict[str, Any]:
        """The result set's header as the recorder writes it into the blob (read back with
        :meth:`from_header`)."""
        return {
            "columns": list(self.names),
            "types": list(self.types),
            "unsigned": list(self.unsigned),
            "bytes": list(self.bytes),
            "tables": list(self.tables),
            "binary": self.binary,
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> ResultColumns:
        types = tuple(int(t) for t in header["types"])
        n = len(types)
        return cls(
            tuple(str(c) for c in header["columns"]),
            tuple(header.get("tables") or (None,) * n),
            types,
            tuple(bool(u) for u in header.get("unsigned") or (False,) * n),
            tuple(bool(b) for b in header.get("bytes") or (False,) * n),
            bool(header.get("binary")),
        )


def row_plan(masker: TargetMasker, columns: ResultColumns) -> ColumnPlan:
    """The masking plan of a result set's rows (every value is planned as text: binary
    values are read as text first, see :func:`row_texts`)."""
    tables = columns.tables
    return masker.column_plan(
        None,
        list(columns.names),
        tables=list(tables) if any(tables) else None,
        type_oids=[mask_type(t) for t in columns.types],
    )


def row_texts(
    payload: bytes, columns: ResultColumns
) -> tuple[list[bytes | None], list[bytes | None]]:
    """A row's values as sent (``raw``) and as text (the same list for a text row; for a
    binary row each value in the text the server would have sent, None where it cannot be
    read). Raises PeerProtocolError for a malformed row."""
    if not columns.binary:
        values = text_row(payload, len(columns.types))
        return values, values
    types, unsigned = columns.types, columns.unsigned
    raw = binary_row(payload, list(types))
    texts = [
        None if v is None else binary_to_text(v, types[i], unsigned[i]) for i, v in enumerate(raw)
    ]
    return raw, texts


class ResponseMasker:
    """Rewrites row packets for the job (see the module docstring); counts what it masked."""

    def __init__(self, masker: TargetMasker) -> None:
        self.masker = masker
        self.counts = MaskCounts()

    def plan(self, columns: ResultColumns) -> ColumnPlan:
        """Once per result set."""
        return row_plan(self.masker, columns)

    def mask_row(self, plan: ColumnPlan, columns: ResultColumns, payload: bytes) -> bytes:
        """The row ``payload`` with its values masked (``payload`` itself if none changed).
        Raises PeerProtocolError for a malformed row."""
        raw, texts = row_texts(payload, columns)
        masked = self.masker.mask_values(plan, texts, self.counts)
        if masked is texts:
            return payload
        if not columns.binary:
            return encode_text_row(masked)
        types = columns.types
        out: list[bytes | None] = []
        for i, new in enumerate(masked):
            if new is texts[i]:
                out.append(raw[i])
            elif new is None or types[i] not in _TEXT_IN_BINARY:
                out.append(None)  # a masked number or date cannot be written as its type
            else:
                out.append(new)
        return encode_binary_row(out, list(types))

    def take_counts(self) -> MaskCounts:
        counts, self.counts = self.counts, MaskCounts()
        return counts


class LedgerRows:
    """The rows of one result blob, masked into cells (:mod:`appliance.ledger.results`):
    fed each result set's header, then its row payloads."""

    def __init__(self, masker: TargetMasker | None, counts: MaskCounts) -> None:
        self.masker = masker
        self.counts = counts
        self.columns: ResultColumns | None = None
        self.plan: ColumnPlan | None = None

    def header(self, header: Mapping[str, Any]) -> ResultColumns:
        """A new result set starts."""
        self.columns = ResultColumns.from_header(header)
        self.plan = row_plan(self.masker, self.columns) if self.masker is not None else None
        return self.columns

    def row(self, payload: bytes) -> list[Any]:
        """One row as masked cells; a row that cannot be read (malformed, or without a
        header) is one binary cell of its length: nothing of it is written."""
        return self.rows([payload])[0]

    def rows(self, payloads: Sequence[bytes]) -> list[list[Any]]:
        """Many rows (a run of them) as masked cells, as :meth:`row` makes each: one
        pre-filter pass over the run's values (:meth:`TargetMasker.rows_candidates`); only the
        rows it does not rule out are masked one by one, each value by the detectors that
        pass let through for it (as PostgreSQL's ledger rows are)."""
        columns = self.columns
        if columns is None:
            return [[binary_cell(len(p))] for p in payloads]
        texts: list[list[bytes | None] | None] = []
        for payload in payloads:
            try:
                texts.append(row_texts(payload, columns)[1])
            except PeerProtocolError:
                texts.append(None)
        masker, plan = self.masker, self.plan
        # per readable row that masking may change, its values' candidates; None: mask
        # every readable row, each value pre-filtered on its own (not a scan-only plan)
        found: dict[int, list[Sequence[int]]] | None = {}
        if masker is not None and plan is not None:
            found = masker.rows_candidates(plan, [t for t in texts if t is not None])
        out: list[list[Any]] = []
        readable = 0  # the index of a readable row among the readable ones
        for payload, values in zip(payloads, texts, strict=True):
            if values is None:
                out.append([binary_cell(len(payload))])
                continue
            if found is None:
                assert masker is not None and plan is not None
                values = masker.mask_values(plan, values, self.counts)
            else:
                candidates = found.get(readable)
                if candidates is not None:
                    assert masker is not None and plan is not None
                    values = masker.mask_values(plan, values, self.counts, candidates=candidates)
            readable += 1
            out.append(self._cells(columns, values))
        return out

    @staticmethod
    def _cells(columns: ResultColumns, values: list[bytes | None]) -> list[Any]:
        cells: list[Any] = []
        for i, v in enumerate(values):
            if v is None:
                cells.append(None)
            elif columns.bytes[i] and not _printable(v):
                cells.append(binary_cell(len(v)))
            else:
                cells.append(v.decode("utf-8", "replace"))
        return cells


def _printable(v: bytes) -> bool:
    try:
        return v.decode("utf-8").isprintable()
    except UnicodeDecodeError:
        return False
