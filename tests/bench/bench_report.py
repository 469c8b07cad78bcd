"""Report benchmark (not a test): the evidence package of 1,000 sessions and about 200k
entries (issue 21 asks for under 30 s).

Ten runner boots of 100 sessions each, written by the real ledger writer (tests.ledgers):
most sessions are long runs of queries with masked result rows, some a denied DROP, a held
DELETE approved with a signed decision, a TRUNCATE held until it timed out, a DDL migration,
an unattributed flow. Prints the time (wall and CPU: the machine is shared, the load
average says how much) to build the package (whole-log verification, facts,
1,000 session pages, entries, proofs, charts) and the peak memory; asserts only that the
counts are right, never the time. ``REPORT_BENCH_SESSIONS`` changes the session count.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest

from appliance.report import ReportRequest, build_report
from tests.ledgers import KINDS, Boot, Expected, ledger_key

SESSIONS = int(os.environ.get("REPORT_BENCH_SESSIONS", "1000"))
BOOTS = 10
T0 = 1796083200.0


@pytest.mark.bench
def test_report_of_1000_sessions(tmp_path: Path) -> None:
    expected = Expected()
    keys = []
    t0 = time.perf_counter()
    for b in range(BOOTS):
        origin = f"bench.example/runner-{b}/boot-1"
        keys.append(ledger_key(origin).verifier())
        boot = Boot(tmp_path / "fleet" / f"runner-{b}", origin, expected, start=T0 + b * 3600)
        for n in range(SESSIONS // BOOTS):
            kind = KINDS[n % len(KINDS)]
            boot.session(n, kind, statements=200 if kind in ("query", "unattributed") else 1)
        boot.close()
    written = time.perf_counter() - t0
    t1, cpu1 = time.perf_counter(), time.process_time()
    result = build_report(ReportRequest([str(tmp_path / "fleet")], tmp_path / "out", keys))
    took, cpu = time.perf_counter() - t1, time.process_time() - cpu1
    totals = result.facts.totals()
    assert result.facts.status == "verified"
    assert totals["sessions"] == expected.sessions == SESSIONS
    assert totals["statements"] == expected.statements
    assert totals["denials"] == expected.denials and totals["holds"] == expected.holds
    entries = totals["entries"]
    size = sum(p.stat().st_size for p in (tmp_path / "fleet").rglob("entries.log"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\nreport: {SESSIONS} sessions, {entries} entries ({size / 1e6:.0f} MB of logs, "
        f"written in {written:.1f} s) -> {result.files} files in {took:.1f} s "
        f"({entries / took:,.0f} entries/s), {cpu:.1f} s of CPU; peak RSS {peak:.0f} MB; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
