"""Where the time of one write-ahead sync goes, per sync, across both processes.

What it measures: pgbench's transactions played through the session core at one client (as
:mod:`tests.bench.pgcore` does, with a real :class:`~appliance.ledger.remote.RemoteLedger`
and its writer process), with time stamps (``CLOCK_MONOTONIC``, one clock for both
processes) at each step of every :meth:`RemoteLedger.sync`:

- ``send``: ``sync()`` called until its SYNC message is handed to the socket;
- ``to_child``: until the writer process has read it (the ``recv`` that brought it);
- ``to_fsync``: until the writer starts its first fsync (handling the gulp, writing);
- ``fsync``: the fsyncs and fdatasyncs (how many per sync, of which files: the sync
  journal's, or the log's), until the last one ends;
- ``answer``: until SYNCED is sent;
- ``to_listener``: until the proxy's side has read the answer and settles the waiter;
- ``to_loop``: until the settling callback runs on the event loop;
- ``resume``: until the coroutine that awaited ``sync()`` runs again.

The stamps are :mod:`tests.bench.synctrace`'s: the writer process is instrumented through a
``sitecustomize`` module on its ``PYTHONPATH`` (it wraps ``os.fsync`` before the ledger is
imported, and a few methods of :mod:`appliance.ledger.remote`); nothing in the appliance is
changed. Timings include the instrumentation's own few µs per stamp. Each sync's stamps are
matched by its token, so syncs of several sessions at once (group commit: one fsync answers
every SYNC of a gulp) are each measured from their own call. Run by hand::

    .venv/bin/python -m tests.bench.syncpath tpcb-like simple 2000 [uvloop|asyncio [SERVER_US]]

``SERVER_US``: the server's answer to each statement comes that many µs later (the loop
runs meanwhile, so the sender's batching timer may fire inside a transaction, as in a lab).

``lab``: the same stamps in a lab (needs root), in the daemon and its writer process as
:mod:`tests.bench.bench_pgbench` runs them, while pgbench runs ``CLIENTS`` clients (default 1)
for ``SECONDS`` (default 8) with ``-r``: at several clients the daemon's event loop is shared
by the sessions, and the steps show where a sync waits for it::

    .venv/bin/python -m tests.bench.syncpath lab tpcb-like simple [CLIENTS [SECONDS]]
"""

from __future__ import annotations

import asyncio
import bisect
import os
import pickle
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from appliance.proxy.commands import AwaitDurable, Durable
from tests.bench import pgcore, synctrace
from tests.bench.synctrace import Events


def _slow_server(seconds: float) -> None:
    """The server takes ``seconds`` to answer each statement (the loop runs meanwhile, as in
    a lab: the sender's batching timer may fire inside a transaction)."""
    real_step = pgcore.Conversation.step

    async def step(self: pgcore.Conversation, client: bytes, server: bytes) -> None:
        real_receive = self.core.receive
        commands = real_receive("job", client)
        self._out()
        for command in commands:
            if isinstance(command, AwaitDurable):
                await self.ledger.sync()
                self.core.handle(Durable(command.key, True))
                self._out()
        await asyncio.sleep(seconds)
        real_receive("upstream", server)
        self._out()

    del real_step
    pgcore.Conversation.step = step  # type: ignore[method-assign]


STEPS = ("send", "to_child", "to_fsync", "fsync", "answer", "to_listener", "to_loop", "resume")


def breakdown(proxy: Events, child: Events) -> dict[str, Any]:
    """Per sync, the step durations (µs, see the module docstring), its stamps matched by
    its token: in the writer, the SYNC handled, the ``recv`` that brought it (the last one
    before), the fsyncs between it and the first answer that covers its token; in the
    proxy, its ``call``, ``sent``, ``listener``, ``settle`` and ``resumed``. A sync missing
    a stamp (the run ended first) is left out. ``fsyncs_per_sync``: the fsyncs in each
    sync's wait (one shared by a gulp's syncs counts for each); ``fsynced``: the files of
    those fsyncs, each fsync once."""
    stamps: dict[str, dict[int, int]] = {
        k: {} for k in ("call", "sent", "listener", "settle", "resumed")
    }
    for kind, t, token in proxy:
        stamps[kind].setdefault(token, t)
    handled = {e[2]: e[1] for e in child if e[0] == "sync"}
    recvs = sorted(e[1] for e in child if e[0] == "recv")
    answers = sorted((e[1], e[2]) for e in child if e[0] == "synced")
    answer_times = [t for t, _ in answers]
    fsyncs = sorted((e[1], e[2], e[3]) for e in child if e[0] == "fsync")
    fsync_starts = [f[0] for f in fsyncs]
    steps: dict[str, list[float]] = {k: [] for k in (*STEPS, "total")}
    per_sync: list[int] = []
    covered: set[tuple[int, int, str]] = set()
    slow: list[str] = []
    us = 1e-3
    for token, t_call in sorted(stamps["call"].items()):
        t_sync = handled.get(token)
        got = [stamps[k].get(token) for k in ("sent", "listener", "settle", "resumed")]
        if t_sync is None or None in got:
            continue
        sent, listener, settle, resumed = (t for t in got if t is not None)
        at = bisect.bisect_right(recvs, t_sync)
        t_recv = recvs[at - 1] if at else t_sync
        # (searched from the SYNC's handling on: the lists are sorted by time)
        i = bisect.bisect_left(answer_times, t_sync)
        while i < len(answers) and answers[i][1] < token:
            i += 1
        if i == len(answers):
            continue
        t_synced = answers[i][0]
        lo = bisect.bisect_left(fsync_starts, t_sync)
        hi = bisect.bisect_right(fsync_starts, t_synced)
        these = [f for f in fsyncs[lo:hi] if f[1] <= t_synced]
        per_sync.append(len(these))
        covered.update(these)
        first = these[0][0] if these else t_synced
        last = these[-1][1] if these else t_synced
        for k, v in zip(
            (*STEPS, "total"),
            (
                sent - t_call,
                t_recv - sent,
                first - t_recv,
                last - first,
                t_synced - last,
                listener - t_synced,
                settle - listener,
                resumed - settle,
                resumed - t_call,
            ),
            strict=True,
        ):
            steps[k].append(v * us)
        if (resumed - t_call) * us > 1000:
            slow.append(
                f"slow sync: total {(resumed - t_call) * us:.0f} µs, "
                + ", ".join(f"{k} {steps[k][-1]:.0f}" for k in STEPS)
                + f"; fsyncs {[f[2].rsplit('/', 1)[-1] for f in these]}"
            )
    out: dict[str, Any] = {"syncs": len(steps["total"])}
    for k, v in steps.items():
        if v:
            v.sort()
            out[k] = (statistics.median(v), v[int(len(v) * 0.99)], statistics.mean(v))
    out["fsyncs_per_sync"] = statistics.mean(per_sync) if per_sync else 0
    late = steps["to_child"]
    out["late"] = sum(1 for v in late if v > 500) / len(late) if late else 0.0
    names: dict[str, int] = {}
    for f in covered:
        names[f[2]] = names.get(f[2], 0) + 1
    out["fsynced"] = names
    out["slow"] = slow
    return out


def report(out: dict[str, Any]) -> None:
    """Print :func:`breakdown`'s figures."""
    syncs, waited, fsynced = out.pop("syncs"), out.pop("fsyncs_per_sync"), out.pop("fsynced")
    distinct = sum(fsynced.values()) / syncs if syncs else 0.0
    print(f"syncs matched: {syncs}; fsyncs in a sync's wait: {waited:.2f}; fsyncs a sync, each")
    print(f"counted once: {distinct:.2f} (under 1: group commit answered several syncs with one)")
    print("fsynced:", fsynced)
    print(f"syncs read by the writer over 500 µs after they were sent: {out.pop('late'):.1%}")
    for line in out.pop("slow")[:20]:
        print(line)
    print(f"{'step':<12} {'p50 µs':>8} {'p99 µs':>8} {'mean µs':>8}")
    for k, (p50, p99, mean) in out.items():
        print(f"{k:<12} {p50:8.1f} {p99:8.1f} {mean:8.1f}")


def main() -> None:
    if sys.argv[1] == "lab":
        workload, mode = sys.argv[2], sys.argv[3]
        clients = int(sys.argv[4]) if len(sys.argv) > 4 else 1
        seconds = int(sys.argv[5]) if len(sys.argv) > 5 else 8
        in_lab(workload, mode, clients, seconds)
        return
    workload, mode = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    loop = sys.argv[4] if len(sys.argv) > 4 else "uvloop"
    server_us = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    with tempfile.TemporaryDirectory() as tmp:
        site = synctrace.sitecustomize(Path(tmp))
        trace = Path(tmp) / "child.pickle"
        os.environ[synctrace.WRITER_ENV] = str(trace)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        proxy: synctrace.Events = []
        synctrace.instrument_proxy(proxy)
        if server_us:
            _slow_server(server_us / 1e6)
        coro = pgcore.run(workload, mode, n, clients=1)
        if loop == "uvloop":  # as the daemon runs
            import uvloop

            result = uvloop.run(coro)
        else:
            result = asyncio.run(coro)
        child = pickle.loads(trace.read_bytes())
    calls = sum(1 for e in proxy if e[0] == "call")
    print(f"{workload} {mode} ({loop}): {n} transactions (+1 warm-up), {calls} syncs")
    print(" ".join(f"{k}={v:.1f}" for k, v in result.items()))
    report(breakdown(proxy, child))


def in_lab(workload: str, mode: str, clients: int, seconds: int) -> None:
    """The stamps of every sync in a lab's daemon and writer while pgbench runs (see the
    module docstring); prints pgbench's summary and END's latency, then the steps."""
    from tests.bench.bench_pgbench import WORKLOADS, local_env, pgbench_appliance, pgbench_server
    from tests.lab.lab import Lab

    flags = dict(WORKLOADS)[workload]
    with tempfile.TemporaryDirectory() as tmp, Lab(n_targets=1) as lab:
        os.chmod(tmp, 0o755)  # the daemon and its writer write their stamps here
        site = synctrace.sitecustomize(Path(tmp))
        trace, prefix = Path(tmp) / "child.pickle", Path(tmp) / "proxy.pickle"
        env = {
            "PYTHONPATH": str(site),
            synctrace.WRITER_ENV: str(trace),
            synctrace.PROXY_ENV: str(prefix),
        }
        pg = pgbench_server(lab)
        with pgbench_appliance(lab, pg, Path(tmp) / "appliance", 6432, env=env):
            job_env = local_env(6432)
            lab.job(["pgbench", "-n", "-c", str(clients), "-T", "2"], env=job_env, timeout=60)
            command = ["pgbench", "-n", "-r", "-c", str(clients), "-j", str(min(clients, 2))]
            command += ["-T", str(seconds), "-M", mode, *flags]
            run = lab.job(
                command,
                env=job_env,
                timeout=seconds + 60,
            )
            assert run.returncode == 0, run.stderr
        # the daemon has stopped: both processes wrote their stamps
        proxy, child = synctrace.proxy_events(prefix), pickle.loads(trace.read_bytes())
    print(f"{workload} -M {mode}, {clients} clients, -T {seconds}, write-ahead, in a lab:")
    for line in run.stdout.splitlines():
        if line.startswith(("tps", "latency average")) or line.strip().endswith("END;"):
            print("  " + line.strip())
    calls = sum(1 for e in proxy if e[0] == "call")
    print(f"{calls} syncs")
    report(breakdown(proxy, child))


if __name__ == "__main__":
    main()
