"""What a COPY statement says of its data: the wire protocol says nothing of it.

A CopyOutResponse names only the format (text or binary) and each column's; the statement
names the table, the columns, CSV and its header line. :func:`appliance.policy.copy_spec`
reads a statement into a :class:`CopySpec` (it needs the SQL parser); the masking of COPY
rows (:mod:`appliance.masking.postgres`) and the result blob headers use it, the ledger
writer's process included, which has no parser loaded: hence this module of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CopySpec"]


@dataclass(frozen=True)
class CopySpec:
    """What a COPY statement says of its data (the protocol says nothing): the direction,
    the table when written with its schema (unqualified, it depends on ``search_path``:
    None), the column list when written (pg_dump writes both), the format (``text``,
    ``csv`` or ``binary``) and whether CSV data starts with a header line."""

    direction: str  # "in" (FROM) | "out" (TO)
    table: str | None = None
    columns: tuple[str, ...] | None = None
    format: str = "text"
    header: bool = False
