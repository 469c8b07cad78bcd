"""``tests/bench/syncpath.py``'s matching of the time stamps of syncs (the runs themselves
are benchmarks, run by hand)."""

from __future__ import annotations

import pytest

from tests.bench.syncpath import STEPS, breakdown


def us(t: float) -> int:
    """A stamp in ns from µs."""
    return int(t * 1000)


# Two sessions' syncs read in one gulp and answered by one fsync (group commit), and a third
# sync that the run ended before it was answered.
PROXY = [
    ("call", us(1000), 1),
    ("sent", us(1010), 1),
    ("call", us(1100), 2),
    ("sent", us(1110), 2),
    ("call", us(2000), 3),
    ("sent", us(2005), 3),
    ("listener", us(1500), 1),
    ("listener", us(1500), 2),
    ("settle", us(1510), 1),
    ("settle", us(1520), 2),
    ("resumed", us(1530), 1),
    ("resumed", us(1540), 2),
]
JOURNAL = "/l/entries.journal"
CHILD = [
    ("recv", us(900), 64),  # an earlier gulp
    ("recv", us(1120), 4096),  # the one that brought both SYNCs
    ("sync", us(1125), 1),
    ("sync", us(1126), 2),
    ("synced", us(1127), 0),  # an answer to an earlier sync: covers neither
    ("fsync", us(1200), us(1400), JOURNAL),
    ("synced", us(1410), 2),
    ("recv", us(2010), 64),
    ("sync", us(2011), 3),
]


def test_each_sync_is_measured_from_its_own_stamps() -> None:
    out = breakdown(PROXY, CHILD)
    assert out["syncs"] == 2  # the third was never answered
    expected = {
        1: [10, 110, 80, 200, 10, 90, 10, 20],
        2: [10, 10, 80, 200, 10, 90, 20, 20],
    }
    for i, step in enumerate(STEPS):
        p50, p99, mean = out[step]
        both = [expected[1][i], expected[2][i]]
        assert p50 == pytest.approx(sum(both) / 2)
        assert mean == pytest.approx(sum(both) / 2)
        assert p99 == pytest.approx(max(both))
    assert out["total"][2] == pytest.approx((530 + 440) / 2)
    # one fsync answered both: it is in each sync's wait, and counted once per file
    assert out["fsyncs_per_sync"] == 1
    assert out["fsynced"] == {JOURNAL: 1}
    assert out["late"] == 0
    assert out["slow"] == []


def test_a_sync_over_a_millisecond_is_listed_with_its_steps() -> None:
    child = [e if e[0] != "fsync" else ("fsync", us(1200), us(2400), JOURNAL) for e in CHILD]
    child = [e if e[:2] != ("synced", us(1410)) else ("synced", us(2410), 2) for e in child]
    proxy = [
        (k, t + us(1000) if k in ("listener", "settle", "resumed") else t, n) for k, t, n in PROXY
    ]
    out = breakdown(proxy, child)
    assert [line.split(",")[0] for line in out["slow"]] == [
        "slow sync: total 1530 µs",
        "slow sync: total 1440 µs",
    ]
    assert "fsync 1200" in out["slow"][0]
    assert out["slow"][0].endswith("fsyncs ['entries.journal']")
