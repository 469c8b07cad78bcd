"""The multi-pattern pre-filter: which detectors can find something in a text, and where.

Where it sits: first thing :class:`~appliance.masking._scan.Scanner` does with a text, and
what the bulk paths of :mod:`appliance.masking._masker` run over a whole chunk of rows. Each
detector brings ``prefilter`` patterns (:mod:`appliance.masking._detectors`): a *necessary*
condition -- every value the detector finds (after validation) contains a match of one of
them -- so a detector none of whose patterns match cannot find anything, and its pattern
and validator never run. Text no pattern matches is clean after one scan.

The patterns of all enabled detectors are compiled into one Hyperscan database (Intel's
multi-pattern engine, the ``hyperscan`` package; one pass over the text at hundreds of
MB/s whatever the number of patterns). Where it cannot be imported or cannot run on this
CPU, the same patterns run one by one with :mod:`re` (:data:`ENGINE` says which): slower,
same answers. ``APPLIANCE_PREFILTER=re`` in the environment makes :mod:`re` the engine even
where Hyperscan imports (``make unit-pure`` runs the unit suite so; child processes such as
the ledger writer inherit it).

Patterns are ASCII and have no look-arounds or back-references; they run over UTF-8 bytes
(``str`` is encoded with ``surrogatepass``: every non-ASCII character becomes bytes >= 0x80
that no ASCII class matches, so a match in the text is a match in its bytes). Where a
detector needs "no digit before/after" (a card's or a phone number's whole stretch of
digits), its pattern takes that character into the match (``(?:^|[^0-9])``): such a pattern
matches in a value alone, and in many values joined by a non-digit (a NUL, a tab, a
newline), but not in a value glued to digits; callers that scan many values at once join
them so.

Nothing here does I/O. Hyperscan's scratch space is per thread (a writer thread and the
event loop may scan at once); a :class:`Prefilter` pickles as its patterns and is compiled
again on the other side (the ledger writer's process).
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["ENGINE", "ENV", "Prefilter", "prefilter"]


def _load_hyperscan() -> Any:
    """The hyperscan module if it imports and compiles here, else None."""
    try:
        import hyperscan

        db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        db.compile(expressions=[rb"a"], ids=[0], elements=1, flags=[0])
    except Exception:  # ImportError, or a CPU Hyperscan does not support  # pragma: no cover
        return None
    return hyperscan


ENV = "APPLIANCE_PREFILTER"
_hs = _load_hyperscan()
ENGINE = "hyperscan" if _hs is not None and os.environ.get(ENV) != "re" else "re"

# (detector index, pattern); a pattern may start with (?i)
Pattern = tuple[int, str]


class Prefilter:
    """The compiled prefilter patterns of a fixed list of detectors (by index)."""

    def __init__(self, patterns: Sequence[Pattern], *, engine: str = ENGINE) -> None:
        if engine not in ("hyperscan", "re") or (engine == "hyperscan" and _hs is None):
            raise ValueError(f"prefilter engine {engine!r} is not available")
        self.patterns = tuple(patterns)
        self.engine = engine
        self.detectors = sorted({i for i, _ in self.patterns})
        if engine == "hyperscan" and self.patterns:
            self._which_db = _compile(self.patterns, single=True)
            self._where_db = _compile(self.patterns, single=False)
            self._local = threading.local()
        if engine == "re":
            # One pattern per detector: its patterns as alternatives (a search each, not one
            # per pattern: the phone detector has dozens).
            by_detector: dict[int, list[str]] = {}
            for i, p in self.patterns:
                by_detector.setdefault(i, []).append(
                    f"(?i:{p[4:]})" if p.startswith("(?i)") else f"(?:{p})"
                )
            self._res = [
                (i, re.compile("|".join(ps).encode("ascii"), re.ASCII))
                for i, ps in by_detector.items()
            ]

    def __reduce__(self) -> tuple[Callable[..., Prefilter], tuple[Any, ...]]:
        return (_rebuild, (self.patterns, self.engine))

    def which(self, data: bytes) -> list[int]:
        """The detectors (indexes, ascending) one of whose patterns matches in ``data``."""
        if not self.patterns:
            return []
        if self.engine == "re":
            return sorted({i for i, r in self._res if r.search(data) is not None})
        found: set[int] = set()
        self._which_db.scan(
            data, match_event_handler=_add_id, context=found, scratch=self._scratch(0)
        )
        return sorted(found)

    def where(self, data: bytes) -> list[tuple[int, int, int]]:
        """``(start, end, detector)`` spans, unordered and possibly repeated, such that every
        match of a detector's pattern that lies inside a range of ``data`` overlaps a span of
        that detector inside the same range, or ending one byte past it. (Hyperscan reports
        every end offset of every match: the span is the match's last byte, which is the
        non-digit after a value for the patterns that want one. :mod:`re` finds the leftmost
        match from each start: the span is that match, which may run past the range.)"""
        if not self.patterns:
            return []
        if self.engine == "re":
            return [(m.start(), m.end(), i) for i, r in self._res for m in _finditer_all(r, data)]
        hits: list[tuple[int, int, int]] = []
        self._where_db.scan(
            data, match_event_handler=_add_hit, context=hits, scratch=self._scratch(1)
        )
        return hits

    def _scratch(self, which: int) -> Any:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = (
                _hs.Scratch(self._which_db),
                _hs.Scratch(self._where_db),
            )
        return scratch[which]


@functools.lru_cache(maxsize=32)
def prefilter(patterns: tuple[Pattern, ...], engine: str = ENGINE) -> Prefilter:
    """The :class:`Prefilter` of ``patterns``, compiled once per process (a compile takes a
    tenth of a second; maskers are made per config and per test)."""
    return Prefilter(patterns, engine=engine)


def _rebuild(patterns: tuple[Pattern, ...], engine: str) -> Prefilter:
    return prefilter(patterns, engine if engine != "hyperscan" or _hs else "re")


def _compile(patterns: Sequence[Pattern], *, single: bool) -> Any:
    assert _hs is not None
    db = _hs.Database(mode=_hs.HS_MODE_BLOCK)
    db.compile(
        expressions=[p.encode("ascii") for _, p in patterns],
        ids=[i for i, _ in patterns],
        elements=len(patterns),
        flags=[_hs.HS_FLAG_SINGLEMATCH if single else 0] * len(patterns),
    )
    return db


def _add_id(id: int, start: int, end: int, flags: int, found: set[int]) -> None:
    found.add(id)


def _add_hit(id: int, start: int, end: int, flags: int, hits: list[tuple[int, int, int]]) -> None:
    hits.append((end - 1, end, id))


def _finditer_all(pattern: re.Pattern[bytes], data: bytes) -> list[re.Match[bytes]]:
    """The leftmost match from each start where one begins (not only non-overlapping
    ones): a match that lies inside a range starts inside it, and so does one found here."""
    out: list[re.Match[bytes]] = []
    pos = 0
    while True:
        m = pattern.search(data, pos)
        if m is None:
            return out
        out.append(m)
        pos = m.start() + 1
