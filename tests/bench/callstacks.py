"""Where one of the appliance's processes spends its CPU during pgbench, by function, with
whole call stacks (needs root and ``perf``: it builds a lab).

What it measures: pgbench at 8 clients through the appliance (write-ahead; ``DURABILITY=
checkpoint`` for the other) for ``-T SECONDS``, while ``perf record --call-graph dwarf``
samples the daemon (or its ledger writer process) on CPU, 999 times a second. DWARF
unwinding walks through CPython, the compiled hot path (mypyc names a method
``CPyDef_<module>___<Class>___<method>``), uvloop and the kernel, which frame pointers do not
(CPython 3.11 has none). It prints, of the process's samples:

- each function's inclusive share (the share of the CPU time spent in it or below it), the
  ``N`` largest (default 60); with ``CALLSTACKS_MATCH=CPyDef_`` only the functions whose
  names hold that text (here: the compiled hot path's own);
- the self share of the leaves (where the time is spent), the largest 25.

Functions without symbols (a library's stripped code: Hyperscan's scan, orjson) show as the
caller's leaf ``[unknown]``. Samples are taken by the clock (cpu-clock: a VM has no
hardware counters), so a stretch with interrupts off is counted where they come back on
(``_raw_spin_unlock_irqrestore``, ``finish_task_switch``). The README's "where the daemon's
CPU goes" figures come from this.

Beside ``PGBENCH_PROFILE`` (:func:`tests.bench.bench_pgbench.profiled`: py-spy's raw stacks
of every setup of a table run, not summed): py-spy samples by the wall clock, pausing the
process at each sample, so a thread asleep or a ``write`` that is preempted counts as time
there, and it sees no kernel frames; here only time on a CPU counts, the process runs
undisturbed, and the kernel's part (TCP, wake-ups) is split by function too. Run by hand (``SECONDS``, default 10)::

    .venv/bin/python -m tests.bench.callstacks select-only simple [daemon|writer] [N]
"""

from __future__ import annotations

import collections
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

SECONDS = int(os.environ.get("SECONDS", "10"))
FREQUENCY = 999
UNKNOWN = "[unknown]"


def stacks(script: Iterable[str]) -> Iterator[list[str]]:
    """The call stacks (leaf first, function names without offsets) of ``perf script``'s
    default output: a sample's header line at the margin, then one indented line per frame,
    ``address symbol+0xoffset (object)``, then a blank line."""
    stack: list[str] = []
    for line in script:
        if not line.strip():
            if stack:
                yield stack
            stack = []
        elif line[0] in " \t":
            fields = line.split(None, 1)
            if len(fields) < 2:
                continue
            symbol = fields[1].rsplit(" (", 1)[0].strip()
            stack.append(symbol.split("+0x", 1)[0] or UNKNOWN)
        else:  # a new sample's header: the stack before it ended without a blank line
            if stack:
                yield stack
            stack = []
    if stack:
        yield stack


def shares(
    samples: Iterable[list[str]],
) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """The number of samples, and per function the samples that hold it anywhere in their
    stack (inclusive; once per sample, however deep it recurs) and those whose leaf it is
    (self)."""
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for stack in samples:
        total += 1
        inclusive.update(set(stack))
        leaves[stack[0]] += 1
    return total, inclusive, leaves


def report(
    total: int,
    inclusive: collections.Counter[str],
    leaves: collections.Counter[str],
    top: int,
    match: str = "",
) -> str:
    """The two lists this module's docstring describes, as text (the first only of the
    functions whose names hold ``match``)."""
    if not total:
        return "no samples"
    named = f" of those named *{match}*" if match else ""
    lines = [f"{total} samples; inclusive share, the {top} largest{named}:"]
    chosen = [(k, n) for k, n in inclusive.most_common() if k != UNKNOWN and match in k]
    for name, n in chosen[:top]:
        lines.append(f"  {n / total * 100:5.1f}%  {name}")
    lines.append("self share (leaves), the 25 largest:")
    for name, n in leaves.most_common(25):
        lines.append(f"  {n / total * 100:5.1f}%  {name}")
    return "\n".join(lines)


def main() -> None:
    from tests.bench.bench_pgbench import (
        APPLIANCES,
        CLIENTS,
        appliance_pids,
        local_env,
        pgbench_appliance,
        pgbench_server,
        run_pgbench,
    )
    from tests.lab.lab import Lab

    workload, mode = sys.argv[1], sys.argv[2]
    which = sys.argv[3] if len(sys.argv) > 3 else "daemon"
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 60
    if which not in ("daemon", "writer"):
        raise SystemExit("the process is daemon or writer")
    flags = (["-S"] if workload == "select-only" else []) + ["-M", mode]
    durability = os.environ.get("DURABILITY", "write-ahead")
    name, port, env, _ = next(a for a in APPLIANCES if a[0] == "appliance")
    with (
        tempfile.TemporaryDirectory() as tmp,
        Lab(n_targets=1) as lab,
        contextlib.ExitStack() as stack,
    ):
        os.chdir(tmp)  # (as cpusplit.py: no `appliance` package in the working directory)
        pg = pgbench_server(lab)
        app = stack.enter_context(
            pgbench_appliance(lab, pg, Path(tmp) / name, port, env=env, durability=durability)
        )
        run_pgbench(lab, local_env(port), ["-S"], 3, CLIENTS)  # warm-up
        pid = appliance_pids(app)[0 if which == "daemon" else 1]
        data = Path(tmp) / "perf.data"
        perf = subprocess.Popen(
            ["perf", "record", "-F", str(FREQUENCY), "-e", "cpu-clock",
             "--call-graph", "dwarf,16384", "-o", str(data), "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            tps, n = run_pgbench(lab, local_env(port), flags, SECONDS, CLIENTS)
        finally:
            perf.send_signal(2)
            perf.wait(120)
        script = subprocess.run(
            ["perf", "script", "-i", str(data)], capture_output=True, text=True, check=True
        ).stdout
        print(
            f"{workload} -M {mode}, {CLIENTS} clients, -T {SECONDS}, {durability}: "
            f"{tps:.0f} tps, {n} transactions; the {which} (pid {pid})"
        )
        total, inclusive, leaves = shares(stacks(script.splitlines()))
        print(report(total, inclusive, leaves, top, os.environ.get("CALLSTACKS_MATCH", "")))


if __name__ == "__main__":
    main()
