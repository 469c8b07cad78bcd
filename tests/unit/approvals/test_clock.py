"""Time in text and the manual clock's timers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from appliance.approvals import ManualClock, SystemClock, format_time, parse_time

from .helpers import T0


def test_rfc3339_round_trip() -> None:
    assert format_time(T0) == "2026-11-25T12:00:00Z"
    assert format_time(T0 + timedelta(microseconds=500)) == "2026-11-25T12:00:00.000500Z"
    cet = T0.astimezone(timezone(timedelta(hours=1)))
    assert format_time(cet) == "2026-11-25T12:00:00Z"
    for text in ("2026-11-25T12:00:00Z", "2026-11-25T12:00:00.5Z", "2026-11-25T12:00:00.123456Z"):
        assert parse_time(text).tzinfo is not None
    assert parse_time(format_time(T0 + timedelta(microseconds=7))) == T0 + timedelta(microseconds=7)


@pytest.mark.parametrize(
    "text",
    ["2026-11-25T12:00:00", "2026-11-25 12:00:00Z", "2026-11-25T12:00:00+00:00", "yesterday"],
)
def test_parse_time_refuses_other_forms(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError):
        format_time(datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        ManualClock(datetime(2026, 1, 1))


def test_manual_clock_fires_due_timers_in_order_and_skips_cancelled() -> None:
    clock = ManualClock(T0)
    fired: list[str] = []
    clock.call_at(T0 + timedelta(seconds=10), lambda: fired.append("b"))
    clock.call_at(T0 + timedelta(seconds=5), lambda: fired.append("a"))
    clock.call_at(T0 + timedelta(seconds=10), lambda: fired.append("c"))
    cancelled = clock.call_at(T0 + timedelta(seconds=1), lambda: fired.append("x"))
    cancelled.cancel()

    clock.advance(4.999)
    assert fired == []
    clock.advance(0.001)
    assert fired == ["a"]
    clock.set(T0 + timedelta(seconds=60))
    assert fired == ["a", "b", "c"]
    assert clock.now() == T0 + timedelta(seconds=60)
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_system_clock_timer_fires_from_the_loop() -> None:
    async def scenario() -> list[str]:
        clock = SystemClock()
        fired: list[str] = []
        done = asyncio.Event()

        def cb() -> None:
            fired.append("due")
            done.set()

        clock.call_at(clock.now(), cb)
        clock.call_at(clock.now() + timedelta(hours=1), lambda: fired.append("late")).cancel()
        await done.wait()
        assert clock.now().tzinfo is UTC
        return fired

    assert asyncio.run(scenario()) == ["due"]
