"""The scanning engine: pre-filter, candidates, validation, overlaps, replacement.

For a set of enabled detectors a :class:`Scanner` compiles their pre-filter patterns into one
:class:`~appliance.masking._prefilter.Prefilter`. One pass of it over a text says which
detectors can find something there (usually none); only those run their pattern, and their
validators keep the real findings.

Overlapping findings are resolved greedily by priority, then length: the winner is masked
and the losers are dropped. Masking then repeats on its own output until nothing is found
(at most :data:`MAX_PASSES` times), so that what a loser leaves behind is masked too and the
output never contains a value a detector would find -- which also makes masking idempotent.
Findings that lie inside one of our own tokens (``[HMAC:...]``) are not findings.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from appliance.masking._counts import MaskCounts
from appliance.masking._detectors import Detector, Options
from appliance.masking._prefilter import ENGINE, DatabaseStore, Prefilter, prefilter
from appliance.masking._styles import TOKEN_RE, Style, keyed_hash, label_for, partial, redact

__all__ = ["MAX_PASSES", "Counted", "Finding", "Renderer", "Scanner"]

MAX_PASSES = 4
# From this many characters on, a text's pre-filter matches are located, and detectors whose
# matches keep to runs of some characters (Detector.runs) search only the runs around them.
WINDOW_FROM = 256


class Finding(NamedTuple):
    """One value to mask. ``value`` is the normalised value (for the keyed hash); it must never
    be logged or recorded. (A named tuple: one is made per finding, in about an eighth of
    the time a frozen dataclass takes.)"""

    start: int
    end: int
    detector: str
    priority: int
    value: str

    def __repr__(self) -> str:
        # The value stays out of logs, tracebacks and assertion messages: only its length.
        return (
            f"Finding(start={self.start}, end={self.end}, detector={self.detector!r},"
            f" priority={self.priority}, value=<{len(self.value)} chars>)"
        )


class Renderer:
    """What a finding is replaced with: its detector's style (``styles``, by detector name)
    applied to it, the keyed hash under ``key``. Called once per finding; a class of this
    compiled module (not a method of the interpreted masker) so that no Python frame is
    entered per finding, and a redaction's token is made once per detector, not per finding
    (issue 19)."""

    def __init__(self, styles: Mapping[str, Style | None], key: bytes) -> None:
        self.styles = dict(styles)
        self.key = key
        # Every style but partial and hash redacts (enabled detectors have a style).
        self._tokens = {
            name: redact(label_for(name))
            for name, style in self.styles.items()
            if style is not Style.PARTIAL and style is not Style.HASH
        }

    def __reduce__(self) -> tuple[Any, ...]:
        # Spelled out, as Scanner's: made again by its constructor when unpickled.
        return (Renderer, (self.styles, self.key))

    def __call__(self, f: Finding, raw: str) -> str:
        """The replacement of ``raw``, the text of finding ``f``."""
        token = self._tokens.get(f.detector)
        if token is not None:
            return token
        style = self.styles[f.detector]
        if style is Style.PARTIAL:
            return partial(raw)
        return keyed_hash(self.key, f.value.encode("utf-8", "surrogateescape"))


class Counted:
    """A ``found`` callback for :meth:`Scanner.mask`: counts each finding in ``counts`` under
    its detector and ``where`` (a column, or None). Compiled, unlike a closure in the
    masker: no Python frame per finding."""

    def __init__(self, counts: MaskCounts, where: str | None = None) -> None:
        self.counts = counts
        self.where = where

    def __call__(self, f: Finding) -> None:
        self.counts.add(f.detector, self.where)


class Scanner:
    """Finds and masks the findings of a fixed set of detectors."""

    def __init__(
        self,
        detectors: Sequence[Detector],
        options: Options,
        *,
        engine: str = ENGINE,
        window_from: int = WINDOW_FROM,
        store: DatabaseStore | None = None,
        built: Prefilter | None = None,
    ) -> None:
        self.detectors = tuple(sorted(detectors, key=lambda d: d.priority))
        self.options = options
        self.window_from = window_from
        patterns = tuple(
            (i, p) for i, d in enumerate(self.detectors) for p in d.prefilter_for(options)
        )
        # ``built``: this scanner's pre-filter, unpickled (its databases with it).
        self.prefilter = (
            built
            if built is not None and built.patterns == patterns and built.engine == engine
            else prefilter(patterns, engine, store=store)
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Spelled out: compiled (mypyc), a scanner is made again by its constructor when
        # unpickled (the ledger writer's process), with its pre-filter's databases.
        return (
            _scanner,
            (self.detectors, self.options, self.prefilter.engine, self.window_from, self.prefilter),
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.detectors)

    def might_match(self, text: str) -> bool:
        """False only if no enabled detector can find anything in ``text``."""
        return bool(self.prefilter.which(text.encode("utf-8", "surrogatepass")))

    def might_match_bytes(self, data: bytes) -> bool:
        """:meth:`might_match` on UTF-8 (or any ASCII-compatible) bytes, without decoding."""
        return bool(self.prefilter.which(data))

    def candidates_bytes(self, data: bytes) -> list[int]:
        """The detectors (indexes into :attr:`detectors`) that may find something in
        ``data`` (UTF-8 bytes): pass them to :meth:`find` as ``only``."""
        return self.prefilter.which(data)

    def candidates_rows(
        self, rows: Sequence[Sequence[bytes | None]]
    ) -> dict[int, list[Sequence[int]]]:
        """:meth:`candidates_bytes` for every value of many rows (UTF-8 bytes; None: NULL) by
        one pre-filter pass over them all, joined by a NUL byte (a pattern's match in a
        value is a match in the joined bytes: no value's stretch of digits runs into the
        next), instead of a pass per value.

        Returns, per row that some pre-filter span touches, per value, the detectors (sorted)
        of the spans overlapping it, or ending on the NUL after it: every detector that
        :meth:`candidates_bytes` gives for it, and maybe more (a span across two values),
        which costs only a search that finds nothing (a detector finds nothing where none of
        its pre-filter patterns matches). A row not in it is clean as it stands. Two halves
        at once (:meth:`Prefilter.where_split
        <appliance.masking._prefilter.Prefilter.where_split>`), cut after the middle row."""
        flat: list[bytes] = []
        ends: list[int] = []  # per row: the offset after its last value and the NUL after it
        pos = 0
        for row in rows:
            for v in row:
                if v is not None:
                    flat.append(v)
                    pos += len(v) + 1
            ends.append(pos)
        if not flat:
            return {}
        cut = ends[len(rows) // 2 - 1] if len(rows) > 1 else 0
        return spans_by_value(rows, ends, self.prefilter.where_split(b"\x00".join(flat), cut))

    def windowed(self, text: str) -> bool:
        """Whether :meth:`find` locates the pre-filter's matches in ``text`` itself (a long
        ASCII text: detectors confined to runs of some characters search only the runs
        around them), rather than taking the detectors to run as ``only``."""
        return len(text) >= self.window_from and text.isascii()

    def find(self, text: str, *, only: Sequence[int] | None = None) -> list[Finding]:
        """The findings to mask in ``text``, sorted by position and not overlapping.

        ``only``: the detectors the pre-filter let through for this text (from
        :meth:`candidates_bytes` on its bytes); None runs the pre-filter here.
        """
        spans: dict[int, list[int]] = {}
        if only is None:
            data = text.encode("utf-8", "surrogatepass")
            if self.windowed(text):
                # Long text: where each detector's pre-filter patterns matched, so that a
                # detector whose matches are confined to runs of some characters runs only
                # on the runs around them (byte offsets are character offsets here).
                for _, end, i in self.prefilter.where(data):
                    spans.setdefault(i, []).append(end)
                only = sorted(spans)
            else:
                only = self.prefilter.which(data)
        if not only:
            return []
        # Detectors run in priority order, and each one's findings are selected at once
        # (greedily, as _select does for all of them together: by priority, then longest,
        # then leftmost): then a match lying inside a finding already selected is not
        # validated at all -- whatever it yields starts inside that finding and loses to it
        # (a card number is not also looked up as a phone number).
        tokens: list[tuple[int, int]] | None = None
        starts: list[int] = []
        chosen: list[Finding] = []
        for i in sorted(only):
            detector = self.detectors[i]
            ends = spans.get(i)
            matches = (
                _in_runs(detector, text, ends)
                if ends is not None and detector.runs is not None
                else detector.pattern.finditer(text)
            )
            found: list[Finding] = []
            for match in matches:
                if chosen:
                    k = bisect.bisect_right(starts, match.start()) - 1
                    if k >= 0 and chosen[k].end >= match.end():
                        continue
                for start, end, value in detector.validate(match, self.options):
                    if end > start:
                        # What Finding(...) does, without the Python frame of the named
                        # tuple's __new__ (a lambda made by eval, slow to call from here).
                        f = tuple.__new__(
                            Finding, (start, end, detector.name, detector.priority, value)
                        )
                        found.append(f)
            if not found:
                continue
            if tokens is None:
                tokens = [t.span() for t in TOKEN_RE.finditer(text)] if "[" in text else []
            if tokens:
                found = [f for f in found if not _inside_any(f, tokens)]
            _add(found, starts, chosen)
            if chosen and chosen[0].start == 0 and chosen[0].end == len(text):
                # One finding spans the text (a card column's value): every match of the
                # detectors still to run lies inside it and would be skipped above, so they
                # are not run (a card's digits are not searched for phone numbers).
                break
        return chosen

    def mask_value(
        self,
        value: bytes,
        render: Callable[[Finding, str], str],
        counts: MaskCounts,
        where: str | None,
        *,
        only: Sequence[int] | None = None,
    ) -> bytes:
        """:meth:`mask` on a value's UTF-8 bytes (read with ``surrogateescape``, written back
        the same way), each replacement counted in ``counts`` under its detector and
        ``where``. Returns ``value`` itself (the same object) if nothing was found. The
        masker's per-value path, here so that the value's decoding, masking and encoding
        run in compiled code."""
        text = value.decode("utf-8", "surrogateescape")
        masked = self.mask(text, render, Counted(counts, where), only=only)
        if masked is text:
            return value
        return masked.encode("utf-8", "surrogateescape")

    def mask(
        self,
        text: str,
        render: Callable[[Finding, str], str],
        found: Callable[[Finding], None],
        *,
        only: Sequence[int] | None = None,
    ) -> str:
        """``text`` with every finding replaced by ``render(finding, original)``; ``found`` is
        called once per replacement. Returns ``text`` itself (the same object) if nothing was
        found.

        Other occurrences of a found value (the password of ``password=x`` repeated further
        on, where nothing says it is a password) are replaced too, where they stand alone.
        """
        if only is None and not self.windowed(text):
            # The common case, first: a text the pre-filter finds nothing in (a statement
            # with a few literals) is answered by one scan (what find would do first).
            only = self.prefilter.which(text.encode("utf-8", "surrogatepass"))
            if not only:
                return text
        for n in range(MAX_PASSES):
            findings = self.find(text, only=only if n == 0 else None)
            if not findings:
                return text
            if len(findings) == 1 and findings[0].start == 0 and findings[0].end == len(text):
                # The whole text is one value (a result column's): if its rendering is one of
                # our tokens, nothing can be found in it (findings inside tokens are none).
                f = findings[0]
                rendered = render(f, text)
                found(f)
                if TOKEN_RE.fullmatch(rendered):
                    return rendered
                text = rendered
                continue
            parts: list[str] = []
            renderings: dict[str, tuple[Finding, str]] = {}
            pos = 0
            for f in findings:
                raw = text[f.start : f.end]
                rendered = render(f, raw)
                parts.append(text[pos : f.start])
                parts.append(rendered)
                found(f)
                renderings.setdefault(raw, (f, rendered))
                pos = f.end
            parts.append(text[pos:])
            text = "".join(parts)
            for raw, (f, rendered) in sorted(renderings.items(), key=lambda kv: -len(kv[0])):
                text = _replace_elsewhere(text, raw, rendered, f, found)
        findings = self.find(text)
        if not findings:
            return text
        # The renderings keep producing findings: give up on keeping anything (fail closed).
        found(findings[0])
        return redact(label_for(findings[0].detector))


def spans_by_value(
    rows: Sequence[Sequence[bytes | None]],
    ends: Sequence[int],
    spans: Iterable[tuple[int, int, int]],
) -> dict[int, list[Sequence[int]]]:
    """Per row that one of ``spans`` (``(start, end, detector)``, offsets in the rows'
    values joined by a NUL byte, NULLs left out; ``ends``: per row, the offset after its
    last value and the NUL after it) overlaps, per value, the detectors (sorted) of the
    spans overlapping the value or the NUL after it: see :meth:`Scanner.candidates_rows`."""
    out: dict[int, list[Sequence[int]]] = {}
    n = len(rows)
    for start, end, detector in spans:
        last = max(start, end - 1)  # the span's last byte
        # The rows, then their values (each with the NUL after it), the span overlaps:
        # found by offsets only where a span is (most values have none).
        r = bisect.bisect_right(ends, start)
        at = ends[r - 1] if r > 0 else 0
        while r < n and at <= last:
            row = rows[r]
            for c, v in enumerate(row):
                if v is None:
                    continue
                stop = at + len(v) + 1
                if stop > start:
                    found = out.get(r)
                    if found is None:
                        found = [()] * len(row)
                        out[r] = found
                    detectors = found[c]
                    if not detectors:
                        found[c] = [detector]
                    elif detector not in detectors:
                        found[c] = sorted([*detectors, detector])
                at = stop
                if at > last:
                    break
            r += 1
    return out


def _scanner(
    detectors: Sequence[Detector],
    options: Options,
    engine: str,
    window_from: int,
    built: Prefilter,
) -> Scanner:
    return Scanner(detectors, options, engine=engine, window_from=window_from, built=built)


def _replace_elsewhere(
    text: str, raw: str, rendered: str, f: Finding, found: Callable[[Finding], None]
) -> str:
    """Replace the stand-alone occurrences of ``raw`` outside our tokens."""
    if raw not in text:
        return text
    head = r"(?<![A-Za-z0-9])" if raw[:1].isalnum() else ""
    tail = r"(?![A-Za-z0-9])" if raw[-1:].isalnum() else ""
    tokens = [t.span() for t in TOKEN_RE.finditer(text)]
    parts: list[str] = []
    pos = 0
    for m in re.finditer(head + re.escape(raw) + tail, text):
        if any(a < m.end() and m.start() < b for a, b in tokens):
            continue
        parts.append(text[pos : m.start()])
        parts.append(rendered)
        found(f)
        pos = m.end()
    if not parts:
        return text
    parts.append(text[pos:])
    return "".join(parts)


def _in_runs(detector: Detector, text: str, ends: list[int]) -> Iterator[re.Match[str]]:
    """The matches of ``detector.pattern`` in the runs of ``detector.runs`` characters that
    hold one of the pre-filter match ends ``ends``: the same matches as a search of the
    whole text makes there, and the only ones that can be findings.

    Why the same: a match consists of run characters only, so it lies inside one run, and
    a search of the whole text enters each run with no match begun before it; searching
    from the run's start (look-behinds still see the text before it, look-aheads the text
    after it) finds the matches the whole search finds in the run. Why the only ones: every
    finding holds a pre-filter match (whose characters are run characters too, but for the
    non-digit a pattern may take after the digits), so its run holds that match's end, or
    ends right before it: the run searched is the one around ``end - 1`` or ending there.
    """
    allowed = detector.runs
    assert allowed is not None
    extend = _run_re(allowed)
    done = 0
    for end in sorted(ends):
        if end - 1 <= done:
            continue  # inside the run just searched, or the non-digit right after it
        start = end - 1
        while start > 0 and text[start - 1] in allowed:
            start -= 1
        m = extend.match(text, end)
        stop = m.end() if m is not None else end
        for match in detector.pattern.finditer(text, start):
            if match.start() >= stop:
                break
            yield match
        done = stop


@functools.cache
def _run_re(allowed: frozenset[str]) -> re.Pattern[str]:
    return re.compile("[" + "".join(re.escape(c) for c in sorted(allowed)) + "]*")


def _inside_any(f: Finding, spans: list[tuple[int, int]]) -> bool:
    return any(start <= f.start and f.end <= end for start, end in spans)


def _select(candidates: list[Finding]) -> list[Finding]:
    """Greedy interval selection: by priority, then longest, then leftmost."""
    if len(candidates) == 1:
        return candidates
    candidates.sort(key=lambda f: (f.priority, f.start - f.end, f.start))
    starts: list[int] = []
    chosen: list[Finding] = []
    _add(candidates, starts, chosen)
    return chosen


def _add(candidates: list[Finding], starts: list[int], chosen: list[Finding]) -> None:
    """Add to ``chosen`` (sorted by start, not overlapping; ``starts`` its starts) those of
    ``candidates`` that overlap nothing chosen before them, longest first, then leftmost
    (all of one priority, or sorted by priority first)."""
    if len(candidates) > 1:
        candidates.sort(key=lambda f: (f.priority, f.start - f.end, f.start))
    for f in candidates:
        i = bisect.bisect_left(starts, f.start)
        if i > 0 and chosen[i - 1].end > f.start:
            continue
        if i < len(chosen) and chosen[i].start < f.end:
            continue
        starts.insert(i, f.start)
        chosen.insert(i, f)
