"""What was masked, counted: per detector and per column, never the values themselves.

The proxy keeps one :class:`MaskCounts` per recorded message (or per result set) and puts
:meth:`MaskCounts.as_dict` into the ledger entry, so an auditor sees *that* a card number was
masked in ``customers.card`` three times, and nothing else about it.
"""

from __future__ import annotations

__all__ = ["MaskCounts"]


class MaskCounts:
    """Counters keyed by detector name (or ``column_rule``) and by ``table.column``."""

    __slots__ = ("_columns", "_detectors")

    def __init__(self) -> None:
        self._detectors: dict[str, int] = {}
        self._columns: dict[str, int] = {}

    def add(self, detector: str, column: str | None = None, n: int = 1) -> None:
        """Count ``n`` masks made by ``detector``, in ``column`` when the value had one."""
        if n < 0:
            raise ValueError("a mask count cannot be negative")
        if n == 0:
            return
        self._detectors[detector] = self._detectors.get(detector, 0) + n
        if column is not None:
            self._columns[column] = self._columns.get(column, 0) + n

    def update(self, other: MaskCounts) -> None:
        """Add ``other``'s counts to these."""
        for name, n in other._detectors.items():
            self._detectors[name] = self._detectors.get(name, 0) + n
        for name, n in other._columns.items():
            self._columns[name] = self._columns.get(name, 0) + n

    def raw(self) -> tuple[dict[str, int], dict[str, int]]:
        """The counts per detector and per column (copies), for :meth:`of`."""
        return dict(self._detectors), dict(self._columns)

    @staticmethod
    def of(raw: tuple[dict[str, int], dict[str, int]]) -> MaskCounts:
        """Counts made from :meth:`raw`'s (another process's)."""
        counts = MaskCounts()
        detectors, columns = raw
        counts._detectors.update(detectors)
        counts._columns.update(columns)
        return counts

    def as_dict(self) -> dict[str, dict[str, int]]:
        """``{"detectors": {"card": 3}, "columns": {"customers.card": 3}}``, keys sorted."""
        return {
            "detectors": dict(sorted(self._detectors.items())),
            "columns": dict(sorted(self._columns.items())),
        }

    def total(self) -> int:
        """How many masks were counted (over all detectors)."""
        return sum(self._detectors.values())

    def __bool__(self) -> bool:
        return bool(self._detectors)

    def __repr__(self) -> str:
        return f"MaskCounts({self.as_dict()!r})"
