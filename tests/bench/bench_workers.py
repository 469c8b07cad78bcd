"""pgbench through 1, 2 and 4 proxy workers (``proxy.workers``, issue 19), beside direct and
PgBouncer, in one lab and one run (benchmark, not a test; needs root: it builds a lab).

Kept apart from the main table (:mod:`tests.bench.bench_pgbench`, whose helpers it uses):
every setup runs at once on its own port, measured in alternation (``PGBENCH_ROUNDS``
rounds, default 3, the order rotated each round); per workload and setup: the median tps
[min-max], the ratios to direct, to PgBouncer and to one worker, CPU µs per transaction of
the setup's processes (daemon, writer and workers; PgBouncer), and how the sessions of the
last round spread over the workers is in each appliance's ``proxy.worker.stopped`` entries.

Cores (``PGBENCH_CPUS``):

- ``shared`` (default): every process may run on every CPU of the machine;
- ``split``: a cpuset each (``sched_setaffinity`` on every thread of the processes): pgbench
  and PostgreSQL (the postmaster before any backend is forked, so backends inherit it) on
  CPU 0, the proxies (the appliance's daemon, writer and workers; PgBouncer) on the other
  CPUs. On a 2-core machine the proxies then have one CPU: more workers cannot scale there;
  the split shows what workers cost on one core, ``shared`` what they give on two. Scaling to
  4 workers needs a runner with 6 or more CPUs.

``PGBENCH_WORKERS=1,2,4`` chooses the worker counts. Nothing is asserted about speed.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from tests.bench.bench_pgbench import (
    CLIENTS,
    POLICY,
    PORTS,
    SCALE,
    SECONDS,
    appliance_pids,
    cpu_seconds,
    direct_env,
    local_env,
    pgbouncer,
    run_pgbench,
    warm_up,
    workloads,
)
from tests.lab.lab import Lab
from tests.lab.proxy import Appliance, TargetSpec, running_appliance

BASE_PORT = 6460


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(FileNotFoundError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(FileNotFoundError):
                    todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of ``pids`` onto ``cpus`` (new threads and children inherit it)."""
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(int(task.name), cpus)


@dataclass
class Setup:
    name: str
    env: dict[str, str]
    app: Appliance | None = None
    pids: tuple[int, ...] = ()

    def cpu_pids(self) -> list[int]:
        if self.app is not None:
            return appliance_pids(self.app)
        return list(self.pids)


@contextlib.contextmanager
def pinned_pgbench(cpus: set[int] | None) -> Iterator[None]:
    """pgbench as the job, on ``cpus`` (None: anywhere): the lab's job inherits the caller's
    affinity, so this process holds it while pgbench runs."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@pytest.mark.bench
@pytest.mark.timeout(7200)
def test_pgbench_proxy_workers(tmp_path: Path) -> None:
    """See the module docstring."""
    counts = [int(n) for n in os.environ.get("PGBENCH_WORKERS", "1,2,4").split(",")]
    rounds = int(os.environ.get("PGBENCH_ROUNDS", "3"))
    mode = os.environ.get("PGBENCH_CPUS", "shared")
    cpus = sorted(os.sched_getaffinity(0))
    split = mode == "split" and len(cpus) >= 2
    load_cpus = {cpus[0]} if split else None
    proxy_cpus = set(cpus[1:]) if split else None
    policy = POLICY
    tps: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    with Lab(n_targets=1) as lab, contextlib.ExitStack() as stack:
        pg = lab.start_postgres(0)
        if split and pg.proc is not None:
            pin(descendants(pg.proc.pid), load_cpus or set())
        with pinned_pgbench(load_cpus):
            init = lab.job(
                ["pgbench", "-i", "-q", "-s", str(SCALE)], env=direct_env(pg), timeout=600
            )
        assert init.returncode == 0, init.stderr
        pg.admin_sql("vacuum analyze", database="app")
        setups = [Setup("direct", direct_env(pg))]
        for i, n in enumerate(counts):
            port = BASE_PORT + i
            app = stack.enter_context(
                running_appliance(
                    lab, pg, tmp_path / f"w{n}",
                    targets=[TargetSpec("db", port, accounts=[("app", "app")])],
                    policy=policy, ledger_options={"checkpoint_interval": "1s"},
                    proxy={"workers": n},
                )
            )  # fmt: skip
            if proxy_cpus is not None:
                pin(appliance_pids(app), proxy_cpus)
            setups.append(Setup(f"appliance x{n}", local_env(port), app))
        proc = stack.enter_context(pgbouncer(lab, pg, lab.dir / "pgbouncer"))
        if proxy_cpus is not None:
            pin([proc.pid], proxy_cpus)
        setups.append(Setup("pgbouncer", local_env(PORTS["pgbouncer"]), pids=(proc.pid,)))
        warm_up(lab, [setup.env for setup in setups])
        for r in range(rounds):
            order = setups[r % len(setups) :] + setups[: r % len(setups)]
            for workload, flags, m in workloads():
                key = f"{workload} -M {m}"
                for setup in order:
                    pids = setup.cpu_pids()
                    c0 = cpu_seconds(pids)
                    try:
                        with pinned_pgbench(load_cpus):
                            t, done = run_pgbench(
                                lab, setup.env, [*flags, "-M", m], SECONDS, CLIENTS
                            )
                    except AssertionError as exc:  # e.g. no transaction in the time
                        print(f"round {r + 1} {key} {setup.name}: FAILED {exc!s:.300}")
                        continue
                    used = cpu_seconds(pids) - c0
                    tps.setdefault((key, setup.name), []).append(t)
                    if pids:
                        cpu.setdefault((key, setup.name), []).append(used / done * 1e6)
                    print(f"round {r + 1} {key:<24} {setup.name:<15} {t:9.0f} tps", flush=True)
        spread = {}
        for setup in setups:
            if setup.app is not None:
                setup.app.stop()
                time.sleep(0.1)
                spread[setup.name] = [
                    e["data"]["sessions"]
                    for e in setup.app.entries()
                    if e["type"] == "proxy.worker.stopped"
                ]
    where = (
        f"cpuset split: pgbench + postgres on CPU {cpus[0]}, proxies on {cpus[1:]}"
        if split
        else f"all processes on CPUs {cpus}"
    )
    print(
        f"\npgbench {date.today().isoformat()}, proxy workers: {CLIENTS} clients -j 2 -T "
        f"{SECONDS}, scale {SCALE}, {rounds} rounds in alternation (median [min-max]); {where}"
    )
    print(
        f"| {'workload':<22} | {'setup':<15} | {'tps':>21} | {'x direct':>8} | "
        f"{'x pgbouncer':>11} | {'x 1 worker':>10} | {'CPU us/tx':>9} |"
    )
    for key in dict.fromkeys(k for k, _ in tps):
        base = statistics.median(tps.get((key, "direct"), [float("nan")]))
        bouncer = statistics.median(tps.get((key, "pgbouncer"), [float("nan")]))
        one = statistics.median(tps.get((key, f"appliance x{counts[0]}"), [float("nan")]))
        for setup in setups:
            samples = tps.get((key, setup.name))
            if not samples:
                continue
            med = statistics.median(samples)
            c = cpu.get((key, setup.name))
            cell = f"{statistics.median(c):9.0f}" if c else f"{'-':>9}"
            vs_one = f"{med / one:10.2f}" if setup.app is not None else f"{'-':>10}"
            print(
                f"| {key:<22} | {setup.name:<15} | "
                f"{f'{med:7.0f} [{min(samples):.0f}-{max(samples):.0f}]':>21} | "
                f"{med / base:8.2f} | {med / bouncer:11.2f} | {vs_one} | {cell} |"
            )
    for name, sessions in spread.items():
        print(f"{name}: sessions per worker over the run {sessions}")
