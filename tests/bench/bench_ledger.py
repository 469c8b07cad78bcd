"""Ledger benchmark (not a test): append rate with checkpoints, and verify rate, on 1M entries.

Goals from issue 3: >= 50k entries/s appended (real fsync, default checkpoint policy: at most
1 s or 10000 entries behind) and >= 200k entries/s verified. Run with
``make bench`` or ``pytest tests/bench/bench_ledger.py -m bench -s``; LEDGER_BENCH_N changes
the entry count. Prints the rates; asserts only correctness, never speed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from appliance.ledger import LedgerWriter
from appliance.ledger.store import read_history
from appliance.ledger.verify import verify_ledger
from appliance.signing.keys import SigningKey

N = int(os.environ.get("LEDGER_BENCH_N", "1000000"))
KEY = SigningKey.generate("bench.example/ledger", seed=b"\x05" * 32)
IDENTITY = {
    "source": "ebpf",
    "pid": 4242,
    "uid": 1000,
    "comm": "psql",
    "exe": "/usr/bin/psql",
    "ci": {"provider": "github", "repository": "acme/shop", "job": "migrate", "run_id": "99"},
}


@pytest.mark.bench
def test_append_and_verify_rates(tmp_path: Path) -> None:
    d = tmp_path / "ledger"
    w = LedgerWriter.open(d, origin="bench.example/ledger", key=KEY)
    t0 = time.perf_counter()
    for i in range(N):
        w.append(
            "statement",
            session=f"s{i // 100}",
            identity=IDENTITY,
            account="ci-ro",
            target="orders",
            data={
                "n": i % 100,
                "text": "SELECT id, name FROM customers WHERE id = $1",
                "params": [str(i)],
                "protocol": "extended",
            },
        )
    t1 = time.perf_counter()
    w.close()
    t2 = time.perf_counter()
    size = (d / "entries.log").stat().st_size
    checkpoints = len(read_history(d)[0])
    print(
        f"\nappend: {N} entries ({size / 1e6:.0f} MB, {checkpoints} checkpoints): "
        f"{N / (t1 - t0):,.0f} entries/s enqueued, {N / (t2 - t0):,.0f} entries/s durable+signed"
    )
    t3 = time.perf_counter()
    report = verify_ledger(d, [KEY.verifier()])
    t4 = time.perf_counter()
    assert report.ok, report.findings
    assert report.entries == N + 1
    print(
        f"verify: {report.entries} entries in {t4 - t3:.1f} s: {report.entries / (t4 - t3):,.0f} entries/s"
    )
