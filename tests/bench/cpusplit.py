"""Where a setup's CPU goes per pgbench transaction, process by process, and how busy the
machine was meanwhile (needs root: it builds a lab).

What it measures: pgbench at 8 clients through each setup of :mod:`tests.bench.bench_pgbench`
chosen (the appliance with write-ahead, with ``ledger.durability: checkpoint``, PgBouncer),
one after the other in one lab, each for ``-T SECONDS``; per setup and transaction:

- each of its processes' user and system CPU µs (``/proc/PID/stat``): the daemon, its ledger
  writer process (and a transform helper if one started), PgBouncer;
- the system calls and context switches each process made (``perf stat`` on tracepoints
  ``syscalls:sys_enter_*``, counted by the kernel: no sampling; the tracing itself slows the
  run a little, so its tps is lower than in the table of ``make bench``);
- the machine's CPU time split (``/proc/stat``): idle, user, system, softirq. A setup that
  leaves the machine idle is not limited by CPU: with tpcb-like, PostgreSQL's row locks on
  the 10 ``pgbench_branches`` rows are held from each UPDATE to the COMMIT, so whatever a
  proxy adds to the latency of the statements in between (the write-ahead sync before the
  COMMIT first) makes the other clients wait for the lock.

``CPUSPLIT_BASELINE=/path/to/appliance`` adds ``baseline``: another build's executable (e.g. a
worktree of an earlier commit) with write-ahead, measured right after ``appliance``.

Run by hand (``SECONDS`` per setup, default 10)::

    .venv/bin/python -m tests.bench.cpusplit tpcb-like simple [appliance,appliance-checkpoint,pgbouncer]
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.bench.bench_pgbench import (
    APPLIANCES,
    CLIENTS,
    PORTS,
    appliance_pids,
    cpu_times,
    local_env,
    pgbench_appliance,
    pgbench_server,
    pgbouncer,
    run_pgbench,
)
from tests.lab.lab import Lab

SECONDS = int(os.environ.get("SECONDS", "10"))
SYSCALLS = [
    "read", "write", "recvfrom", "sendto", "epoll_wait", "epoll_pwait", "epoll_ctl", "select",
    "pwrite64", "fsync", "fdatasync", "futex", "brk", "mmap", "munmap", "madvise", "getpid",
]  # fmt: skip
EVENTS = [f"syscalls:sys_enter_{name}" for name in SYSCALLS] + ["context-switches", "page-faults"]


def machine_times() -> list[int]:
    """The ``cpu`` line of /proc/stat: user, nice, system, idle, iowait, irq, softirq, ..."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def perf_counts(path: Path) -> dict[str, int]:
    """``perf stat -x,`` output: event name -> count (events it could not count left out)."""
    out = {}
    for line in path.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].strip().isdigit():
            out[fields[2].removeprefix("syscalls:sys_enter_")] = int(fields[0])
    return out


def measure(lab: Lab, name: str, port: int, pids: list[int], flags: list[str], out: Path) -> None:
    """One pgbench run through ``port`` with ``pids`` counted; prints the setup's lines."""
    before = [cpu_times(pid) for pid in pids]
    stats = [out / f"{name}-{i}.perf" for i in range(len(pids))]
    perfs = [
        subprocess.Popen(
            ["perf", "stat", "-x,", "-e", ",".join(EVENTS), "-p", str(pid), "-o", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid, path in zip(pids, stats, strict=True)
    ]
    m0 = machine_times()
    try:
        tps, n = run_pgbench(lab, local_env(port), flags, SECONDS, CLIENTS)
    finally:
        for perf in perfs:
            perf.send_signal(2)
            perf.wait(30)
    m1 = machine_times()
    after = [cpu_times(pid) for pid in pids]
    spent = [b - a for a, b in zip(m0, m1, strict=True)]
    share = {
        k: spent[i] / sum(spent) * 100
        for k, i in (("idle", 3), ("user", 0), ("system", 2), ("softirq", 6))
    }
    print(
        f"{name}: {tps:.0f} tps, {n} transactions; machine "
        + ", ".join(f"{k} {v:.0f}%" for k, v in share.items())
    )
    for i in range(len(pids)):
        user = (after[i][0] - before[i][0]) / n * 1e6
        system = (after[i][1] - before[i][1]) / n * 1e6
        role = "daemon" if i == 0 else "writer" if i == 1 else "helper"
        if name == "pgbouncer":
            role = "pgbouncer"
        counts = perf_counts(stats[i]) if stats[i].exists() else {}
        calls = ", ".join(f"{k} {v / n:.2f}" for k, v in counts.items() if v / n >= 0.05)
        print(f"  {role:<9} user {user:6.1f} us/tx, system {system:6.1f} us/tx; per tx: {calls}")


def main() -> None:
    workload, mode = sys.argv[1], sys.argv[2]
    wanted = (
        sys.argv[3] if len(sys.argv) > 3 else "appliance,appliance-checkpoint,pgbouncer"
    ).split(",")
    flags = (["-S"] if workload == "select-only" else []) + ["-M", mode]
    with (
        tempfile.TemporaryDirectory() as tmp,
        Lab(n_targets=1) as lab,
        contextlib.ExitStack() as stack,
    ):
        # From a directory without an ``appliance`` package: a baseline build's writer process
        # (``python -c``) would import this checkout's package from the working directory.
        os.chdir(tmp)
        pg = pgbench_server(lab)
        setups = []
        for name, port, env, durability in APPLIANCES:
            if name in wanted:
                app = stack.enter_context(
                    pgbench_appliance(
                        lab, pg, Path(tmp) / name, port, env=env, durability=durability
                    )
                )
                setups.append((name, port, lambda app=app: appliance_pids(app)))
            baseline = os.environ.get("CPUSPLIT_BASELINE")
            if name == "appliance" and baseline:
                app = stack.enter_context(
                    pgbench_appliance(lab, pg, Path(tmp) / "baseline", 6443, executable=baseline)
                )
                setups.append(("baseline", 6443, lambda app=app: appliance_pids(app)))
        if "pgbouncer" in wanted:
            proc = stack.enter_context(pgbouncer(lab, pg, lab.dir / "pgbouncer"))
            setups.append(("pgbouncer", PORTS["pgbouncer"], lambda proc=proc: [proc.pid]))
        for _, port, _ in setups:  # warm up (first imports, the server's caches)
            run_pgbench(lab, local_env(port), ["-S"], 3, CLIENTS)
        print(f"{workload} -M {mode}, {CLIENTS} clients, -T {SECONDS} per setup")
        for name, port, pids in setups:
            measure(lab, name, port, pids(), flags, Path(tmp))


if __name__ == "__main__":
    main()
