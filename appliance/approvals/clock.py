"""Time for the approvals broker, passed in: wall-clock ``now`` and timers at a wall-clock time.

The broker never reads the clock itself. Production uses :class:`SystemClock` (asyncio timers
that re-check the wall clock when they fire, so a timer never fires early even if the clock
is stepped); tests and proxy transcripts use :class:`ManualClock`, whose timers fire only
when the test advances it. Times are timezone-aware UTC datetimes; :func:`format_time` and
:func:`parse_time` are their RFC 3339 text form in records, the wire protocol and decisions.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock", "Timer", "format_time", "parse_time"]

_RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")


def format_time(when: datetime) -> str:
    """RFC 3339 UTC text: ``2025-01-02T03:04:05Z``, with ``.ffffff`` only if sub-second.

    Raises ValueError for a naive datetime (a bug in the caller).
    """
    if when.tzinfo is None:
        raise ValueError("naive datetime: times must be timezone-aware")
    when = when.astimezone(UTC)
    base = when.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{when.microsecond:06d}Z" if when.microsecond else f"{base}Z"


def parse_time(text: str) -> datetime:
    """Parse RFC 3339 UTC text (``Z`` suffix, up to 6 fraction digits); raise ValueError."""
    if not _RFC3339_UTC.fullmatch(text):
        raise ValueError(f"not an RFC 3339 UTC time (YYYY-MM-DDTHH:MM:SSZ): {text!r}")
    return datetime.fromisoformat(text[:-1] + "+00:00")


class Timer(Protocol):
    """A scheduled callback that can be cancelled (cancelling twice or late is harmless)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the broker needs of time."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def call_at(self, when: datetime, callback: Callable[[], None]) -> Timer:
        """Call ``callback`` once, from the event loop, as soon as ``now() >= when``."""
        ...


class _SystemTimer:
    def __init__(self, loop: asyncio.AbstractEventLoop, when: datetime, cb: Callable[[], None]):
        self._loop = loop
        self._when = when
        self._cb = cb
        self._handle: asyncio.TimerHandle | None = None
        self._cancelled = False
        self._arm()

    def _arm(self) -> None:
        delay = (self._when - datetime.now(UTC)).total_seconds()
        self._handle = self._loop.call_later(max(delay, 0.0), self._fire)

    def _fire(self) -> None:
        if self._cancelled:
            return
        if datetime.now(UTC) < self._when:  # the wall clock was stepped back: wait on
            self._arm()
            return
        self._cancelled = True
        self._cb()

    def cancel(self) -> None:
        self._cancelled = True
        if self._handle is not None:
            self._handle.cancel()


class SystemClock:
    """The real clock. ``call_at`` must be called from a running event loop."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def call_at(self, when: datetime, callback: Callable[[], None]) -> Timer:
        return _SystemTimer(asyncio.get_running_loop(), when, callback)


class _ManualTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told to; timers fire inside :meth:`advance`/:meth:`set`.

    Callbacks run synchronously, in deadline order (ties in scheduling order), with ``now()``
    already at the new time.
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("naive datetime: times must be timezone-aware")
        self._now = start.astimezone(UTC)
        self._timers: list[tuple[datetime, int, _ManualTimer, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self._now

    def call_at(self, when: datetime, callback: Callable[[], None]) -> Timer:
        timer = _ManualTimer()
        heapq.heappush(self._timers, (when, next(self._seq), timer, callback))
        return timer

    def advance(self, seconds: float) -> None:
        """Move forward by ``seconds`` (>= 0) and fire every timer now due."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self.set(self._now + timedelta(seconds=seconds))

    def set(self, when: datetime) -> None:
        """Move to ``when`` (not earlier than now) and fire every timer now due."""
        if when < self._now:
            raise ValueError("a clock does not go backwards")
        self._now = when
        while self._timers and self._timers[0][0] <= self._now:
            _, _, timer, callback = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True
                callback()
