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

With :mod:`re`, each detector's patterns are one alternation, and the "no digit before/after"
characters become look-arounds (``(?<![0-9])``, ``(?![0-9])``: a match exists exactly where
one of the pattern as written does); the alternatives that start with a digit after such a
look-behind are grouped behind one ``(?=[0-9])``, so that at most positions one test
rejects them all instead of one per alternative (the phone detector has dozens: it was most
of the :mod:`re` engine's time).

Compiling the Hyperscan databases takes a second or more of CPU (the phone patterns of
every configured region). A compiled :class:`Prefilter` carries its databases serialized
(:meth:`Prefilter.serialized`, a fraction of a millisecond to load): it pickles with them,
so the ledger writer's process loads instead of compiling, and a :class:`DatabaseStore`
passed in (:mod:`appliance.prefilter_cache`: files in the appliance's cache directory)
keeps them from one start to the next. What is loaded is named by :func:`database_key`, a
digest over the patterns, their flags, the Hyperscan version and the platform Hyperscan
compiles for here (CPU features included): databases compiled elsewhere are never taken for
this host's. What cannot be loaded (another Hyperscan build, another CPU, damage) is
compiled again -- never a crash, never a weaker filter.

Nothing here does I/O (the store is passed in). Hyperscan's scratch space is per thread (a
writer thread and the event loop may scan at once).

On the hot path: every statement text the proxy's per-session cache misses asks
:meth:`Prefilter.which` first (:meth:`TargetMasker.mask_text
<appliance.masking._masker.TargetMasker.mask_text>`), and nearly always hears no; this module
is compiled with the hot path (mypyc, :data:`appliance._pure.HOT_MODULES`) for that call.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import struct
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

__all__ = [
    "ENGINE",
    "ENV",
    "DatabaseStore",
    "Prefilter",
    "database_key",
    "prefilter",
]


def _load_hyperscan() -> tuple[Any, bytes]:
    """The hyperscan module if it imports and compiles here, else None; and what the
    databases it compiles here are for (``Version: ... Features: ... Mode: BLOCK``: the
    Hyperscan version and the CPU features it targets on this host)."""
    try:
        import hyperscan

        db: Any = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)  # info() is bytes
        db.compile(expressions=[rb"a"], ids=[0], elements=1, flags=[0])
        target = bytes(db.info())
    except Exception:  # ImportError, or a CPU Hyperscan does not support  # pragma: no cover
        return None, b""
    return hyperscan, target


ENV = "APPLIANCE_PREFILTER"
_hs, _TARGET = _load_hyperscan()
ENGINE = "hyperscan" if _hs is not None and os.environ.get(ENV) != "re" else "re"

# (detector index, pattern); a pattern may start with (?i)
Pattern = tuple[int, str]


class DatabaseStore(Protocol):
    """Where compiled databases are kept between processes and runs, by
    :func:`database_key` (:class:`appliance.prefilter_cache.PrefilterCache`)."""

    def load(self, key: str) -> bytes | None:
        """The bytes saved under ``key``, or None (none, or none that may be trusted)."""
        ...

    def save(self, key: str, data: bytes) -> None:
        """Keep ``data`` under ``key`` (best effort: it never raises)."""
        ...


class Prefilter:
    """The compiled prefilter patterns of a fixed list of detectors (by index).

    ``compiled``: :meth:`serialized` of a Prefilter of the same patterns (another
    process's), loaded instead of compiling if it loads here; ``store``: where to look for
    it, and to keep what is compiled here. :attr:`loaded` says whether the databases were
    loaded (True) or compiled (False; None for :mod:`re` or no patterns)."""

    def __init__(
        self,
        patterns: Sequence[Pattern],
        *,
        engine: str = ENGINE,
        compiled: bytes | None = None,
        store: DatabaseStore | None = None,
    ) -> None:
        if engine not in ("hyperscan", "re") or (engine == "hyperscan" and _hs is None):
            raise ValueError(f"prefilter engine {engine!r} is not available")
        self.patterns = tuple(patterns)
        self.engine = engine
        self.detectors = sorted({i for i, _ in self.patterns})
        self.loaded: bool | None = None
        if engine == "hyperscan" and self.patterns:
            key = database_key(self.patterns)
            if compiled is None and store is not None:
                compiled = store.load(key)
            dbs = _unpack(compiled, key) if compiled is not None else None
            self.loaded = dbs is not None
            if dbs is None:
                dbs = (_compile(self.patterns, single=True), _compile(self.patterns, single=False))
                if store is not None:
                    store.save(key, _pack(key, *dbs))
            self._which_db, self._where_db = dbs
            self._local = threading.local()
        self._res = _re_engine(self.patterns) if engine == "re" else []

    def serialized(self) -> bytes | None:
        """The compiled databases as bytes (for ``compiled=``), or None (nothing compiled)."""
        if self.engine != "hyperscan" or not self.patterns:
            return None
        return _pack(database_key(self.patterns), self._which_db, self._where_db)

    def __reduce__(self) -> tuple[Callable[..., Prefilter], tuple[Any, ...]]:
        return (_rebuild, (self.patterns, self.engine, self.serialized()))

    def which(self, data: bytes) -> list[int]:
        """The detectors (indexes, ascending) one of whose patterns matches in ``data``.

        The hot path's question: every statement text the proxy's per-session cache misses
        asks it, and nearly always hears none. One scan of the ``which`` database, which
        reports each detector at most once (``HS_FLAG_SINGLEMATCH``), so the list needs no
        de-duplication; the scan's arguments are positional (parsing keywords cost a
        quarter of the call: callgrind)."""
        if self.engine == "re" or not self.patterns:
            return sorted(i for i, r in self._res if r.search(data) is not None)
        found: list[int] = []
        # hyperscan's Database.scan(data, match_event_handler, flags, context, scratch)
        self._which_db.scan(data, _add_id, 0, found, self._scratch(0))
        if len(found) > 1:
            found.sort()
        return found

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
        self._where_db.scan(data, _add_hit, 0, hits, self._scratch(1))  # positional: see which
        return hits

    def where_split(self, data: bytes, cut: int) -> list[tuple[int, int, int]]:
        """:meth:`where` of ``data`` cut in two at ``cut``: the spans of ``data[:cut]`` and
        of ``data[cut:]`` (shifted), the second half scanned on a helper thread while this
        one scans the first (Hyperscan scans without the GIL), when ``data`` is at least
        :data:`SPLIT_FROM` long and this process may run on more than one core; else
        :meth:`where` of the whole.

        For a caller whose ranges never cross ``cut`` (rows, when ``cut`` is where one
        starts): a match lying inside a range lies inside one half, and a pattern's "no
        digit before/after" character at the cut is the start or the end of that half
        (``^``, ``$``) instead of the row's terminator. A chunk of an export is scanned in
        about half the time on two cores (the ledger writer's bulk masking waits on it)."""
        n = len(data)
        pool = _helper() if n >= SPLIT_FROM and 0 < cut < n else None
        if pool is None:
            return self.where(data)
        view = memoryview(data)
        later = pool.submit(self.where, bytes(view[cut:]))
        try:
            hits = self.where(bytes(view[:cut]))
        finally:
            rest = later.result()
        hits.extend([(s + cut, e + cut, i) for s, e, i in rest])
        return hits

    def _scratch(self, which: int) -> Any:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = (
                _hs.Scratch(self._which_db),
                _hs.Scratch(self._where_db),
            )
        return scratch[which]


# Data at least this long is scanned in two halves at once (Prefilter.where_split).
SPLIT_FROM = 128 * 1024
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _helper() -> ThreadPoolExecutor | None:
    """The thread that scans second halves (made on first use), or None on one core."""
    global _pool
    if _pool is None and len(os.sched_getaffinity(0)) > 1:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefilter")
    return _pool


def stop_helper() -> None:
    """Stop the helper thread, if one was made (the next long scan makes another): for
    code that needs this process single-threaded again, such as a test before a fork."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True)


def _forget_helper() -> None:
    # A forked child (the ledger writer) has no thread of its parent's: it makes its own.
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_helper)


# The Prefilters made in this process (a compile takes a second; maskers are made per config
# and per test), by patterns and engine.
_MADE: dict[tuple[tuple[Pattern, ...], str], Prefilter] = {}
_MADE_MAX = 32


def prefilter(
    patterns: tuple[Pattern, ...],
    engine: str = ENGINE,
    *,
    compiled: bytes | None = None,
    store: DatabaseStore | None = None,
) -> Prefilter:
    """The :class:`Prefilter` of ``patterns``, made once per process (``compiled`` and
    ``store``: as for :class:`Prefilter`, used only the first time)."""
    made = _MADE.get((patterns, engine))
    if made is None:
        made = Prefilter(patterns, engine=engine, compiled=compiled, store=store)
        if len(_MADE) >= _MADE_MAX:
            del _MADE[next(iter(_MADE))]
        _MADE[(patterns, engine)] = made
    return made


def _rebuild(
    patterns: tuple[Pattern, ...], engine: str, compiled: bytes | None = None
) -> Prefilter:
    if engine == "hyperscan" and _hs is None:  # pragma: no cover (pickled where it imports)
        return prefilter(patterns, "re")
    return prefilter(patterns, engine, compiled=compiled)


# -- Hyperscan databases ------------------------------------------------------------------

# Changed whenever what the key covers or how the databases are packed changes.
_FORMAT = b"appliance prefilter databases 1"
_MAGIC = b"APPFHS1\n"
_LENGTH = struct.Struct("!Q")


def _flags(single: bool) -> int:
    assert _hs is not None
    return int(_hs.HS_FLAG_SINGLEMATCH) if single else 0


def database_key(patterns: Sequence[Pattern]) -> str:
    """The name (hex SHA-256) of the compiled databases of ``patterns`` on this host:
    over the patterns and their ids, the flags and mode of each database, the hyperscan
    package's version, and the Hyperscan version and CPU features of the databases it
    compiles here (a database baked on one host is not this host's unless all agree)."""
    assert _hs is not None
    h = hashlib.sha256(_FORMAT)
    for part in (
        str(getattr(_hs, "__version__", "")).encode(),
        _TARGET,
        platform.machine().encode(),
        str(int(_hs.HS_MODE_BLOCK)).encode(),
        str((_flags(True), _flags(False))).encode(),
        repr(tuple(patterns)).encode(),
    ):
        h.update(_LENGTH.pack(len(part)) + part)
    return h.hexdigest()


def _pack(key: str, which_db: Any, where_db: Any) -> bytes:
    """Both databases, serialized, after a magic and the key they were compiled under."""
    assert _hs is not None
    which, where = _hs.dumpb(which_db), _hs.dumpb(where_db)
    return b"".join(
        (
            _MAGIC,
            bytes.fromhex(key),
            _LENGTH.pack(len(which)),
            which,
            _LENGTH.pack(len(where)),
            where,
        )
    )


def _unpack(data: bytes, key: str) -> tuple[Any, Any] | None:
    """The two databases packed in ``data`` under ``key``, if they load and run here as
    databases compiled here would; else None (compile them)."""
    assert _hs is not None
    head = len(_MAGIC) + 32
    if (
        len(data) < head
        or data[: len(_MAGIC)] != _MAGIC
        or data[len(_MAGIC) : head] != bytes.fromhex(key)
    ):
        return None
    dbs = []
    pos = head
    try:
        for _ in range(2):
            (n,) = _LENGTH.unpack_from(data, pos)
            pos += _LENGTH.size
            if pos + n > len(data):
                return None
            db = _hs.loadb(bytes(data[pos : pos + n]), _hs.HS_MODE_BLOCK)
            pos += n
            # Built for this Hyperscan, these CPU features and block mode, and it runs here
            # (a scratch is refused for a database of another platform).
            if bytes(db.info()) != _TARGET:
                return None
            _hs.Scratch(db)
            dbs.append(db)
    except Exception:  # hyperscan's errors: another version, platform, or damage
        return None
    if pos != len(data):
        return None
    return dbs[0], dbs[1]


def _compile(patterns: Sequence[Pattern], *, single: bool) -> Any:
    assert _hs is not None
    db = _hs.Database(mode=_hs.HS_MODE_BLOCK)
    db.compile(
        expressions=[p.encode("ascii") for _, p in patterns],
        ids=[i for i, _ in patterns],
        elements=len(patterns),
        flags=[_flags(single)] * len(patterns),
    )
    return db


def _add_id(id: int, start: int, end: int, flags: int, found: list[int]) -> None:
    found.append(id)


def _add_hit(id: int, start: int, end: int, flags: int, hits: list[tuple[int, int, int]]) -> None:
    hits.append((end - 1, end, id))


# -- re -----------------------------------------------------------------------------------

# "No digit before/after", as patterns written for Hyperscan say it (in the match), and as
# look-arounds: at a pattern's start or end, a match of one exists where a match of the
# other does.
_BEFORE, _AFTER = "(?:^|[^0-9])", "(?:[^0-9]|$)"
_NOT_AFTER_DIGIT, _NOT_BEFORE_DIGIT = "(?<![0-9])", "(?![0-9])"
# A pattern whose first character is a digit: "[0-9]" not made optional.
_DIGIT_FIRST = re.compile(r"\[0-9\](?![?*]|\{0[,}])")


def _re_engine(patterns: Sequence[Pattern]) -> list[tuple[int, re.Pattern[bytes]]]:
    """One regular expression per detector: its patterns as alternatives (a search each, not
    one per pattern: the phone detector has dozens), with the no-digit-before/after parts
    as look-arounds, and those that start with a digit after one grouped behind one test."""
    by_detector: dict[int, tuple[list[str], list[str]]] = {}
    for i, p in patterns:
        digit_first, others = by_detector.setdefault(i, ([], []))
        if p.startswith("(?i)"):
            others.append(f"(?i:{p[4:]})")
            continue
        if p.endswith(_AFTER):
            p = p[: -len(_AFTER)] + _NOT_BEFORE_DIGIT
        if p.startswith(_BEFORE):
            rest = p[len(_BEFORE) :]
            if _DIGIT_FIRST.match(rest) and not _alternates(rest):
                digit_first.append(f"(?:{rest})")
                continue
            p = _NOT_AFTER_DIGIT + rest
        others.append(f"(?:{p})")
    out = []
    for i, (digit_first, others) in by_detector.items():
        alternatives = list(others)
        if digit_first:
            alternatives.insert(0, f"{_NOT_AFTER_DIGIT}(?=[0-9])(?:{'|'.join(digit_first)})")
        out.append((i, re.compile("|".join(alternatives).encode("ascii"), re.ASCII)))
    return out


def _alternates(pattern: str) -> bool:
    """Whether ``pattern`` has a ``|`` outside every group (then its first character is
    not that of its first alternative)."""
    depth, pos = 0, 0
    while pos < len(pattern):
        c = pattern[pos]
        if c == "\\":
            pos += 1
        elif c == "[":
            pos += 2 if pattern.startswith("[^", pos) else 1
            pos += 1 if pattern.startswith("]", pos) else 0  # a "]" first is in the class
            while pos < len(pattern) and pattern[pos] != "]":
                pos += 2 if pattern[pos] == "\\" else 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return True
        pos += 1
    return False


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
