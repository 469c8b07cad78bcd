"""The pgbench table's own arithmetic (tests/bench/bench_pgbench.py; the table itself needs
root and a lab): the disk's flush latency it prints, and the goals it records from the
rounds' figures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bench import bench_pgbench, goals
from tests.bench.bench_pgbench import Setup, disk_flush_us


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    goals.clear()
    yield
    goals.clear()


def test_the_disk_flush_is_timed_once_per_write_and_leaves_no_file(tmp_path: Path) -> None:
    flush = disk_flush_us(tmp_path, 20)
    assert len(flush) == 20 and flush == sorted(flush)
    assert flush[0] > 0
    assert list(tmp_path.iterdir()) == []


def test_tpcb_likes_one_client_latency_goal_notes_the_disk_flush() -> None:
    tps = {(k, s): [t] for k in ("select-only -M simple", "tpcb-like -M simple")
           for s, t in (("direct", 1000.0), ("appliance", 500.0), ("pgbouncer", 800.0))}  # fmt: skip
    cpu = {(k, s): [c] for (k, s) in tps for c in (40.0,) if s != "direct"}
    lat = {
        ("select-only -M simple", "direct"): [100, 100, 100],
        ("select-only -M simple", "appliance"): [150, 150, 150],
        ("tpcb-like -M simple", "direct"): [700, 700, 700],
        ("tpcb-like -M simple", "appliance"): [1400, 1400, 1400],
    }
    setups = [Setup("direct", {}), Setup("appliance", {}), Setup("pgbouncer", {})]
    bench_pgbench._record_goals(setups, tps, cpu, lat, "fdatasync p50 175 us, p90 240 us")
    latency = {f.goal: f for f in goals.figures() if "p50 added per statement" in f.goal}
    select = latency["select-only -M simple, 1 client: p50 added per statement"]
    tpcb = latency["tpcb-like -M simple, 1 client: p50 added per statement"]
    assert (select.measured, select.note) == (50.0, "")
    assert tpcb.measured == 100.0 and tpcb.met
    assert tpcb.note == "a write-ahead sync a transaction; fdatasync p50 175 us, p90 240 us"


# pgbench 15's report with -r (its end), one client of tpcb-like.
REPORT = """\
latency average = 1.693 ms
initial connection time = 3.114 ms
tps = 590.636350 (without initial connection time)
statement latencies in milliseconds and failures:
         0.001           0  \\set aid random(1, 100000 * :scale)
         0.000           0  \\set bid random(1, 1 * :scale)
         0.129           0  BEGIN;
         0.230           0  UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
         0.196           0  SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
         0.596           0  END;
"""


def test_pgbench_r_s_statement_latencies_are_read_in_order_without_meta_commands() -> None:
    got = bench_pgbench.statement_latencies(REPORT)
    assert list(got) == [
        "BEGIN;",
        "UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = :aid;",
        "END;",
    ]
    assert got["END;"] == pytest.approx(596.0) and got["BEGIN;"] == pytest.approx(129.0)
    assert bench_pgbench.statement_latencies("tps = 5\n") == {}


def test_the_statements_table_has_a_column_per_setup_and_skips_one_statement_workloads() -> None:
    tpcb = "tpcb-like -M simple"
    per = {
        (tpcb, "direct"): {"BEGIN;": [80.0, 82.0, 90.0], "END;": [95.0]},
        (tpcb, "appliance"): {"BEGIN;": [129.0], "END;": [596.0, 602.0]},
        ("select-only -M simple", "direct"): {"SELECT abalance FROM pgbench_accounts": [90.0]},
    }
    text = bench_pgbench.statements_table(["direct", "appliance", "pgbouncer"], per)
    assert text.splitlines()[1:] == [
        f"{tpcb}, 1 client: latency per statement (pgbench -r, us, median of rounds)",
        "| statement | direct | appliance |",
        "|---|---|---|",
        "| BEGIN; | 82 | 129 |",
        "| END; | 95 | 599 |",
    ]
