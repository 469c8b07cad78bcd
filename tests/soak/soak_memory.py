"""Memory of the appliance under many long sessions, and after they end (issue 13; a soak,
run by ``make soak``, not by ``make test``).

In one lab, pgbench (select-only, simple protocol, so that every statement text differs)
holds ``SOAK_CLIENTS`` (200) sessions through the appliance for ``SOAK_SECONDS`` (300), then
``SOAK_CHURN_SECONDS`` (60) of the same with a new connection per transaction (``-C``);
the daemon's resident memory (VmRSS, and its ledger writer process's) is sampled every few
seconds and printed, and then again after the sessions have ended. Memory is not time:
the bound is asserted (RSS within ``SOAK_LIMIT_MB``, default 264 = 200 + 64, and back near
its start once idle).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.lab.lab import Lab
from tests.lab.proxy import TargetSpec, running_appliance

CLIENTS = int(os.environ.get("SOAK_CLIENTS", "200"))
SECONDS = int(os.environ.get("SOAK_SECONDS", "300"))
CHURN = int(os.environ.get("SOAK_CHURN_SECONDS", "60"))
LIMIT_MB = int(os.environ.get("SOAK_LIMIT_MB", "264"))
PORT = 6444


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def writer_of(pid: int) -> int | None:
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if b"appliance.ledger.remote" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    return None


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_memory_stays_bounded_with_many_long_sessions(tmp_path: Path) -> None:
    with Lab(n_targets=1) as lab:
        pg = lab.start_postgres(0)
        env = {"PGHOST": pg.ipv4, "PGPORT": str(pg.port), "PGUSER": "app", "PGDATABASE": "app",
               "PGPASSWORD": pg.passwords["app"], "PGSSLMODE": "disable"}  # fmt: skip
        init = lab.job(["pgbench", "-i", "-q", "-s", "10"], env=env, timeout=600)
        assert init.returncode == 0, init.stderr
        policy = {"rules": [{"name": "all", "action": "allow"}]}
        with running_appliance(
            lab, pg, tmp_path / "soak", targets=[TargetSpec("db", PORT, accounts=[("app", "app")])],
            policy=policy,
        ) as app:  # fmt: skip
            assert app.proc is not None
            pid = app.proc.pid
            writer = writer_of(pid)
            samples: list[tuple[float, str, float, float]] = []
            stop = threading.Event()
            t0 = time.monotonic()

            def sample(phase: list[str]) -> None:
                while not stop.wait(5):
                    w = rss_mb(writer) if writer else 0.0
                    samples.append((time.monotonic() - t0, phase[0], rss_mb(pid), w))

            phase = ["idle"]
            start = rss_mb(pid)
            sampler = threading.Thread(target=sample, args=(phase,), daemon=True)
            sampler.start()
            local = {"PGHOST": "127.0.0.1", "PGPORT": str(PORT), "PGUSER": "app",
                     "PGDATABASE": "app", "PGSSLMODE": "disable"}  # fmt: skip
            try:
                for name, extra, seconds in (("sessions", [], SECONDS), ("churn", ["-C"], CHURN)):
                    phase[0] = name
                    r = lab.job(
                        ["pgbench", "-n", "-S", "-M", "simple", "-c", str(CLIENTS), "-j", "2",
                         "-T", str(seconds), *extra],
                        env=local, timeout=seconds * 3 + 120,
                    )  # fmt: skip
                    print(r.stdout[-400:])
                    assert r.returncode == 0, r.stderr[-2000:]
                phase[0] = "after"
                time.sleep(15)
                end = rss_mb(pid)
            finally:
                stop.set()
                sampler.join()
    peak = max(s[2] for s in samples)
    by_phase: dict[str, list[float]] = {}
    for _, name, rss, _ in samples:
        by_phase.setdefault(name, []).append(rss)
    print(f"\nappliance RSS (MB): start {start:.0f}, peak {peak:.0f}, after the sessions {end:.0f}")
    for name, values in by_phase.items():
        print(f"  {name:<9} min {min(values):6.0f}  max {max(values):6.0f}  last {values[-1]:6.0f}")
    writer_peak = max(s[3] for s in samples)
    print(f"ledger writer process RSS peak: {writer_peak:.0f} MB")
    assert peak <= LIMIT_MB, f"peak RSS {peak:.0f} MB over {LIMIT_MB} MB"
    assert end <= start + 64, f"RSS after the sessions {end:.0f} MB (start {start:.0f} MB)"
