"""The result-blob format: how result sets are kept in the ledger, written and read here.

A ``response`` entry references its rows as a blob (or carries them inline when small):
JSON Lines, masked before they are written (:meth:`~appliance.masking.TargetMasker.mask_cells`).

- A **result set** starts with a header object, ``{"columns": [names], ...}``; the protocol
  may add what it knows (PostgreSQL: ``types`` OIDs, ``formats``, ``tables``). Each row
  follows as a JSON array of cells.
- A **cell** is a string (the value as text, masked), ``null`` (SQL NULL), or a binary
  cell ``{"binary": <length>}``: a binary value the appliance could not read as text, so
  it was never written (only its length).
- **COPY** data starts with ``{"copy": "in" | "out", "csv": bool, ...}`` (``"binary":
  true`` for binary COPY); each text or CSV line follows as a JSON string; binary COPY
  leaves only a binary cell per chunk.

Readers (``ledger replay``, pcap export, the auditor's report) use :func:`read_result` and
the cell helpers, so that a change of format is made here once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = [
    "ResultSet",
    "binary_cell",
    "cell_bytes",
    "cell_text",
    "is_binary_cell",
    "read_result",
    "result_bytes",
]

_BINARY = "binary"


def binary_cell(length: int) -> dict[str, int]:
    """The cell of a binary value that is not written: its length only."""
    return {_BINARY: length}


def is_binary_cell(cell: object) -> bool:
    return isinstance(cell, dict) and isinstance(cell.get(_BINARY), int)


def cell_text(cell: object) -> str:
    """A cell for display: the text, ``NULL``, or ``<binary, N bytes>``."""
    if cell is None:
        return "NULL"
    if is_binary_cell(cell):
        assert isinstance(cell, dict)
        return f"<binary, {cell[_BINARY]} bytes>"
    return str(cell)


def cell_bytes(cell: object) -> bytes | None:
    """A cell as a wire value in text format: None for NULL; a binary cell, whose value
    was never kept, as its display text."""
    if cell is None:
        return None
    return cell_text(cell).encode()


@dataclass
class ResultSet:
    """One result set read back: its columns, the rows read, and how many rows it has."""

    columns: list[str] = field(default_factory=list)
    rows: list[list[object]] = field(default_factory=list)
    total: int = 0
    copy: str | None = None  # "in" | "out" for COPY data


def result_bytes(data: Mapping[str, Any], load_blob: Callable[[str], bytes | None]) -> bytes | None:
    """The result blob a ``response`` entry's ``data`` references: carried inline, or loaded
    by its SHA-256 with ``load_blob`` (None if missing); None when it has none."""
    res = data.get("result")
    if not isinstance(res, Mapping):
        return None
    inline, sha = res.get("inline"), res.get("sha256")
    if isinstance(inline, str):
        return inline.encode()
    return load_blob(sha) if isinstance(sha, str) else None


def read_result(blob: bytes, max_rows: int | None = None) -> list[ResultSet]:
    """The result sets of a blob, with up to ``max_rows`` rows each (None: all). A line that
    is not JSON is kept as one text cell (a damaged blob is shown, not hidden)."""
    sets: list[ResultSet] = []
    current: ResultSet | None = None
    for line in blob.splitlines():
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            value = [line.decode("utf-8", "replace")]
        if isinstance(value, dict) and not is_binary_cell(value):
            current = ResultSet(
                columns=[str(c) for c in value.get("columns") or []],
                copy=str(value["copy"]) if "copy" in value else None,
            )
            sets.append(current)
            continue
        if current is None:
            current = ResultSet()
            sets.append(current)
        current.total += 1
        if max_rows is None or len(current.rows) < max_rows:
            current.rows.append(value if isinstance(value, list) else [value])
    return sets
