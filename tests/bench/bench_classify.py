"""Micro-benchmark of classify() on the statements pgbench sends (captured from a real run,
tests/data/policy/pgbench_statements.yaml) and on psql's catalog queries: microseconds per
statement, cold (cache emptied, every text parsed) and cached (every text seen before).

Run: ``.venv/bin/python -m pytest tests/bench/bench_classify.py -q -s -m bench``. It prints
figures and asserts nothing about time (machines differ); it does check that cold and cached
runs give the same classifications.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from appliance.policy import Classification, classify
from appliance.policy._classify import cache_clear

DATA = Path(__file__).resolve().parents[1] / "data" / "policy"
CLASSIFICATIONS_PER_SET = 20000  # rounds x statements, whatever the set size


def _statements(name: str) -> list[str]:
    return [item["sql"] for item in yaml.safe_load((DATA / name).read_text())]


def _per_statement_us(texts: list[str], before_round: Callable[[], None]) -> float:
    rounds = max(5, CLASSIFICATIONS_PER_SET // len(texts))
    total = 0.0
    for _ in range(rounds):
        before_round()
        start = time.perf_counter()
        for text in texts:
            classify(text)
        total += time.perf_counter() - start
    return total / (rounds * len(texts)) * 1e6


def _tpcb_transaction(n: int) -> list[str]:
    """pgbench -M simple's TPC-B-like script with fresh literals, as the proxy sees it."""
    aid, tid, delta = 1 + n * 7919 % 100000, 1 + n % 10, n % 10000 - 5000
    return [
        "BEGIN;",
        f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};",
        f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};",
        f"UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid};",
        f"UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = 1;",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
        f"VALUES ({tid}, 1, {aid}, {delta}, CURRENT_TIMESTAMP);",
        "END;",
    ]


@pytest.mark.bench
def test_bench_classify() -> None:
    sets = {
        "pgbench (captured)": _statements("pgbench_statements.yaml"),
        "pgbench tpcb, fresh literals": [s for n in range(300) for s in _tpcb_transaction(n)],
        "psql catalog queries": _statements("psql_queries.yaml"),
    }
    print()
    for name, texts in sets.items():
        cache_clear()
        cold_results: list[Classification] = [classify(t) for t in texts]
        cold = _per_statement_us(texts, cache_clear)
        cached = _per_statement_us(texts, lambda: None)
        assert [classify(t) for t in texts] == cold_results
        print(
            f"classify {name:30} {len(texts):5} statements: "
            f"cold {cold:7.1f} µs/statement, cached {cached:5.2f} µs/statement"
        )
