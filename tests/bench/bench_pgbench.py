"""pgbench through the appliance, compared: the one table of ``make bench`` (benchmark, not a
test; needs root: it builds a lab).

In one lab (PostgreSQL 15 in a target namespace, pgbench as the job in the runner namespace),
every setup runs at once on its own port, and the workloads are measured in alternation
(``PGBENCH_ROUNDS`` rounds, default 2, the order of the setups rotated each round):

- ``direct``: the server itself (pgbench authenticates with the password);
- ``appliance``: ``appliance run`` with everything on (decoding, policy, recording of every
  statement and result to the signed ledger, default masking, ``ledger.durability:
  write-ahead``), the compiled build (mypyc, ``scripts/compile.py``), uvloop;
- ``appliance-pure``: the same with ``APPLIANCE_PURE=1`` (the pure-Python build);
- ``appliance-checkpoint``: the compiled build with ``ledger.durability: checkpoint``
  (statements that change the target are not fsynced before they are sent): what the
  write-ahead costs;
- ``pgbouncer``: Debian's PgBouncer in session mode (C, decodes no statement);
- ``relay``: a bare uvloop TCP relay in Python (the floor for any Python proxy).

Workloads: ``-S`` (select-only) and tpcb-like, each ``-M simple`` and ``-M prepared``, 8
clients, ``-j 2 -T $PGBENCH_SECONDS`` (10), scale 10. Per workload and setup the table
shows: tps (median of the rounds, [min-max]), ratios to direct and to PgBouncer, CPU µs per
transaction of the setup's own processes (the appliance's daemon plus its ledger writer
process; PgBouncer; the relay; from /proc), the latency of one client (pgbench ``--log``,
``-T $PGBENCH_LATENCY_SECONDS`` in every round, the transactions of all rounds pooled: p50
and p99 per transaction, and the p50 added over direct per statement: a tpcb-like
transaction is 7 statements), and for the appliance setups the
peak RSS (MB, daemon + writer) while 200 sessions run select-only; under it, each
appliance's start-to-ready time (a restart, process start to ready file), and the CPU per
transaction of the appliance and of PgBouncer at the same rate (``pgbench -R``, 90% of the
appliance's median tps; ``PGBENCH_SAME_RATE=0`` leaves it out): per transaction a process
spends more the fewer transactions share each wake-up, so the table's CPU column compares
the appliance at its throughput with PgBouncer at a higher one. Also under it: the disk's
flush latency in the ledgers' file system (:func:`disk_flush_us`, measured before the
rounds: each write-ahead sync waits for one), and for tpcb-like one client's latency per
statement and setup (``pgbench -r`` in the latency runs, :func:`statements_table`). Nothing
is asserted about speed. ``PGBENCH_ONLY=appliance,pgbouncer`` restricts the setups (direct
always runs), ``PGBENCH_WORKLOADS=select-only:simple,tpcb-like:prepared`` the workloads.

``tests/bench/pgcore.py`` plays the same conversations through the session core without
sockets (CPU µs per transaction of the proxy and of its writer process, repeatable, or
instruction counts under callgrind): use it to compare changes on this noisy machine.
``tests/bench/writerfeed.py`` keeps what pgcore's proxy sent its writer and replays it into a
writer in its own process (the writer's side alone, under callgrind too).

Where the time goes (2-core VM; see the README for the last table and its analysis):

- throughput here is bound by CPU per transaction: pgbench, PostgreSQL, the daemon and its
  ledger writer process share two cores, so every microsecond the appliance spends is
  taken from the others. PgBouncer and the bare relay spend ~20 µs a select-only
  transaction, mostly the kernel's socket work (the daemon makes the same four calls).
- the daemon's user time is the session core (``pgcore.py``; under callgrind with
  ``--toggle-collect=CPyPy_pg___core___PgSession___receive`` and ``...___settle`` its
  instructions per transaction:
  ~100k for select-only simple at the end of session 9, 122k at its start, with literals
  that differ per transaction as pgbench's): the two ledger entries per statement
  (``appliance/ledger/sender.py``, ~13k each), masking the statement's text (one Hyperscan
  scan when it is clean, ~12k), policy (a shape per statement in the simple protocol, then
  a dict lookup), decoding and the recorder.
- the writer process: ~15 µs a select (``writerfeed.py`` replays pgcore's channel into a
  writer: the result blob's transform, i.e. decoding and masking its row, ~5 µs; per entry
  framing, leaf hash and the Merkle tree; two channel messages per select: the statement's
  entry and the response's with its small result blob inside).
- tpcb-like with write-ahead: one sync per transaction block (at END), one fsync per sync
  (``entries.log`` only; a checkpoint, once a second, adds ``checkpoints.log``, the temp
  file and the directory, signed after the answer since session 11), group-committed across
  sessions, 2-5 ms under load; ``appliance-checkpoint`` shows the hot path without it.
  ``tests/bench/syncpath.py`` times each step of one sync across both processes (one
  client, uvloop, quiet machine, p50 µs): SYNC sent 10-18, read by the writer 13-23, the
  transaction's entries handled 60-80, the fsync 200-290 (~160 alone on this disk), the
  answer 11-15, read and settled on the loop ~25, the coroutine resumed ~5 (before session
  11: the listener thread 18, its hand-over to the loop 20-35). With a server that answers
  later (``SERVER_US``), the sender's batch timer fires inside transactions, and the writer
  process's 2 ms nap after that short read held the transaction's sync (removed in session
  11).
- the simple protocol: every text differs (literals); an allow is remembered under the
  text's shape (integer literals as 0) for reads and for UPDATE/INSERT/DELETE whose classes
  no number can change, so pglast parses pgbench's statements once per session and shape.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tests.bench import goals
from tests.lab.lab import Lab, PgServer, wait_port
from tests.lab.proxy import APPLIANCE, Appliance, TargetSpec, running_appliance

SECONDS = int(os.environ.get("PGBENCH_SECONDS", "10"))
SAME_RATE = os.environ.get("PGBENCH_SAME_RATE", "1") != "0"
SAME_RATE_SHARE = 0.9  # of the appliance's median tps
LATENCY_SECONDS = int(os.environ.get("PGBENCH_LATENCY_SECONDS", "4"))
CLIENTS = 8
SCALE = 10
WORKLOADS = [("select-only", ["-S"]), ("tpcb-like", [])]
MODES = ["simple", "prepared"]


def workloads() -> list[tuple[str, list[str], str]]:
    """(workload, pgbench flags, mode) to measure, in order: every workload in each mode, or
    those named in ``PGBENCH_WORKLOADS`` (e.g. ``select-only:simple,tpcb-like:prepared``)."""
    every = [(w, flags, m) for w, flags in WORKLOADS for m in MODES]
    wanted = [x for x in os.environ.get("PGBENCH_WORKLOADS", "").split(",") if x]
    unknown = set(wanted) - {f"{w}:{m}" for w, _, m in every}
    if unknown:
        raise ValueError(f"PGBENCH_WORKLOADS: unknown {sorted(unknown)}; workload:mode pairs")
    return [(w, f, m) for w, f, m in every if not wanted or f"{w}:{m}" in wanted]


PORTS = {"appliance": 6432, "pgbouncer": 6433, "relay": 6434, "relay-uvloop": 6435}
# Every appliance of the benches: everything allowed but DROP (so that policy is decided).
POLICY = {
    "rules": [
        {"name": "no-drop", "match": {"classes": ["drop"]}, "action": "deny"},
        {"name": "default", "action": "allow"},
    ]
}

# The appliance setups: name, port, environment, ledger.durability.
APPLIANCES = [
    ("appliance", 6432, None, "write-ahead"),
    ("appliance-pure", 6436, {"APPLIANCE_PURE": "1"}, "write-ahead"),
    ("appliance-checkpoint", 6437, None, "checkpoint"),
]

RELAY = r'''
"""A bare asyncio TCP relay: no decoding, just bytes both ways with flow control."""
import asyncio, socket, sys

UP = (sys.argv[1], int(sys.argv[2]))
PORT = int(sys.argv[3])


class Pipe(asyncio.Protocol):
    def __init__(self, peer=None):
        self.peer = peer
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        if not self.peer.transport.is_closing():  # the other side may have gone first
            self.peer.transport.write(data)

    def connection_lost(self, exc):
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self):
        self.peer.transport.pause_reading()

    def resume_writing(self):
        self.peer.transport.resume_reading()


class Front(Pipe):
    def connection_made(self, transport):
        super().connection_made(transport)
        self.early = []
        transport.pause_reading()
        self.task = asyncio.get_running_loop().create_task(self.connect())

    def data_received(self, data):
        if self.peer is None:
            self.early.append(data)
        elif not self.peer.transport.is_closing():
            self.peer.transport.write(data)

    async def connect(self):
        loop = asyncio.get_running_loop()
        _, back = await loop.create_connection(lambda: Pipe(self), *UP)
        self.peer = back
        back.transport.write(b"".join(self.early))
        self.transport.resume_reading()


async def main():
    server = await asyncio.get_running_loop().create_server(Front, "127.0.0.1", PORT)
    print("ready", flush=True)
    await server.serve_forever()

if sys.argv[4] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
'''


def pgbench(lab: Lab, env: dict[str, str], args: list[str]) -> float:
    r = lab.job(
        ["pgbench", "-n", "-c", str(CLIENTS), "-j", "2", "-T", str(SECONDS), *args],
        env=env,
        timeout=SECONDS * 4 + 60,
    )
    assert r.returncode == 0, r.stderr
    assert "number of failed transactions: 0" in r.stdout, r.stdout
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", r.stdout)
    assert m, r.stdout
    return float(m.group(1))


def direct_env(pg: PgServer) -> dict[str, str]:
    return {
        "PGHOST": pg.ipv4,
        "PGPORT": str(pg.port),
        "PGUSER": "app",
        "PGDATABASE": "app",
        "PGPASSWORD": pg.passwords["app"],
        "PGSSLMODE": "disable",
    }


def local_env(port: int, *, password: str | None = None) -> dict[str, str]:
    env = {
        "PGHOST": "127.0.0.1",
        "PGPORT": str(port),
        "PGUSER": "app",
        "PGDATABASE": "app",
        "PGSSLMODE": "disable",
    }
    if password is not None:
        env["PGPASSWORD"] = password
    return env


@contextmanager
def pgbouncer(lab: Lab, pg: PgServer, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    workdir.mkdir(parents=True)
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"app = host={pg.ipv4} port={pg.port} dbname=app user=app password={pg.passwords['app']}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {PORTS['pgbouncer']}\n"
        "auth_type = any\npool_mode = session\nmax_client_conn = 300\n"
        "default_pool_size = 20\nunix_socket_dir =\n"
        f"logfile = {workdir / 'pgbouncer.log'}\n"
    )
    pw = pwd.getpwnam("postgres")
    shutil.chown(workdir, "postgres", "postgres")
    shutil.chown(ini, "postgres", "postgres")
    ini.chmod(0o600)
    proc = lab.popen(
        ["pgbouncer", str(ini)], uid=pw.pw_uid, gid=pw.pw_gid,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port("127.0.0.1", PORTS["pgbouncer"], netns=lab.runner.path)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def relay(
    lab: Lab, upstream: tuple[str, int], workdir: Path, *, loop: str, port: int
) -> Iterator[subprocess.Popen[bytes]]:
    """The bare relay (:data:`RELAY`) on 127.0.0.1:``port`` in the runner namespace, to
    ``upstream``; ``loop``: asyncio or uvloop (bench_mysql.py uses it too)."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / f"relay-{port}.py"
    script.write_text(RELAY)
    proc = lab.popen(
        [sys.executable, str(script), upstream[0], str(upstream[1]), str(port), loop],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port("127.0.0.1", port, netns=lab.runner.path)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def pgbench_server(lab: Lab) -> PgServer:
    """The lab's PostgreSQL with pgbench's tables (scale :data:`SCALE`), vacuumed: where every
    pgbench benchmark starts."""
    pg = lab.start_postgres(0)
    init = lab.job(["pgbench", "-i", "-q", "-s", str(SCALE)], env=direct_env(pg), timeout=600)
    assert init.returncode == 0, init.stderr
    pg.admin_sql("vacuum analyze", database="app")
    return pg


def pgbench_appliance(
    lab: Lab,
    pg: PgServer,
    workdir: Path,
    port: int,
    *,
    env: Mapping[str, str] | None = None,
    durability: str | None = None,
    executable: str = APPLIANCE,
) -> AbstractContextManager[Appliance]:
    """An appliance as the pgbench benchmarks run it: target ``db`` on ``port`` (account
    ``app``), :data:`POLICY`, a checkpoint every second, ``ledger.durability`` (None: the
    build's default), ``executable`` (another build's, for a baseline)."""
    ledger: dict[str, Any] = {"checkpoint_interval": "1s"}
    if durability is not None:
        ledger["durability"] = durability
    return running_appliance(
        lab, pg, workdir,
        targets=[TargetSpec("db", port, accounts=[("app", "app")])],
        policy=POLICY, env=env, ledger_options=ledger, executable=executable,
    )  # fmt: skip


@contextmanager
def profiled(pids: list[int], out: Path) -> Iterator[None]:
    """Sample ``pids`` (the daemon, its writer) with py-spy while the body runs, when
    ``PGBENCH_PROFILE`` names a directory: one folded-stack file per process there
    (``--native``, which pauses the process at each sample: its tps drops while it runs)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    where = os.environ.get("PGBENCH_PROFILE")
    if not where or not Path(spy).exists():
        yield
        return
    procs = []
    for i, pid in enumerate(pids):
        path = Path(where) / f"{out.name}-{'writer' if i else 'daemon'}.txt"
        cmd = [spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
               "--native", "--output", str(path)]  # fmt: skip
        procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL), path))
    try:
        yield
    finally:
        for proc, path in procs:
            proc.send_signal(2)
            proc.wait(30)
            print(f"profile: {path}")


@dataclass
class Setup:
    """One way to reach the server: its port (None: direct), the processes whose CPU counts
    (the appliance and its ledger writer; PgBouncer; the relay), and the environment."""

    name: str
    env: dict[str, str]
    pids: Callable[[], list[int]] = lambda: []
    ready_s: float | None = None  # start to ready (appliance setups)
    rss: tuple[float, float] | None = None  # MB at 200 sessions: main process, writer


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of ``pids`` (and of their threads), from /proc."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += sum(cpu_times(pid))
    return total


def appliance_pids(app: Appliance) -> list[int]:
    """The daemon and its descendants: the ledger writer process (and its transform
    helper, if it started one)."""
    assert app.proc is not None
    found = [app.proc.pid]
    for pid in found:  # grows as it goes
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            found.extend(int(c) for c in children)
    return found


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_pgbench(lab: Lab, env: dict[str, str], args: list[str], seconds: int, clients: int):  # type: ignore[no-untyped-def]
    """pgbench as the job: (tps, transactions)."""
    r = lab.job(
        [
            "pgbench",
            "-n",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(seconds),
            *args,
        ],
        env=env,
        timeout=seconds * 4 + 120,
    )
    assert r.returncode == 0, r.stderr
    assert "number of failed transactions: 0" in r.stdout, r.stdout
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", r.stdout)
    n = re.search(r"number of transactions actually processed: (\d+)", r.stdout)
    assert m and n, r.stdout
    return float(m.group(1)), int(n.group(1))


def warm_up(lab: Lab, envs: list[dict[str, str]]) -> None:
    """A short select-only run through each setup before anything is measured: the first
    run in a fresh lab (cold server caches, first imports) came out ~40% slower, and
    counted against whichever setup went first."""
    for env in envs:
        run_pgbench(lab, env, ["-S"], 3, CLIENTS)


def latencies(
    lab: Lab,
    env: dict[str, str],
    args: list[str],
    logdir: Path,
    statements: dict[str, list[float]] | None = None,
) -> list[int]:
    """Per-transaction latencies (µs) of one client (pgbench --log). With ``statements``,
    each statement's average latency in the run (µs, ``pgbench -r``) is appended there."""
    for old in logdir.glob("tx*"):
        old.unlink()
    report = ["-r"] if statements is not None else []
    r = lab.job(
        ["pgbench", "-n", "-c", "1", "-j", "1", "-T", str(LATENCY_SECONDS), "-l",
         f"--log-prefix={logdir / 'tx'}", *report, *args],
        env=env, timeout=LATENCY_SECONDS * 4 + 60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    if statements is not None:
        for text, us in statement_latencies(r.stdout).items():
            statements.setdefault(text, []).append(us)
    out = []
    for log in logdir.glob("tx*"):
        for line in log.read_text().splitlines():
            out.append(int(line.split()[2]))
    return sorted(out)


_STATEMENT_LINE = re.compile(r"\s+([\d.]+)(?:\s+\d+)*\s+(\S.*)")


def statement_latencies(report: str) -> dict[str, float]:
    """``pgbench -r``'s statement latencies (µs, the run's average), by statement text, in
    the script's order; its meta-commands (``\\set``) left out."""
    out: dict[str, float] = {}
    lines = iter(report.splitlines())
    for line in lines:
        if line.startswith("statement latencies"):
            break
    for line in lines:
        m = _STATEMENT_LINE.fullmatch(line)
        if m is None:
            break
        if not m.group(2).startswith("\\"):
            out[m.group(2)] = float(m.group(1)) * 1000
    return out


def disk_flush_us(directory: Path, times: int = 500) -> list[float]:
    """How long the disk takes to make a small write durable, as the ledger's sync journal
    does it: ``pwrite`` of a few hundred bytes into a file of fixed length written once,
    then ``fdatasync`` (no size or block changes), ``times`` times, µs each, sorted. A
    write-ahead sync waits for one; the figure moves from day to day on this VM (93 µs at
    the median in session 16, 129-176 in session 20), and the write-ahead rows with it."""
    path = directory / "disk-flush.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.pwrite(fd, bytes(1 << 20), 0)
        os.fsync(fd)
        record = bytes(range(256)) + bytes(44)
        out = []
        for i in range(times):
            t0 = time.perf_counter_ns()
            os.pwrite(fd, record, (i * 4096) % (1 << 20))
            os.fdatasync(fd)
            out.append((time.perf_counter_ns() - t0) / 1e3)
        return sorted(out)
    finally:
        os.close(fd)
        path.unlink()


def pct(values: Sequence[float], q: float) -> float:
    return float(values[min(len(values) - 1, int(q * len(values)))]) if values else float("nan")


def sessions_rss(lab: Lab, setup: Setup, pids: list[int]) -> tuple[float, float]:
    """Peak RSS (MB) of the daemon and of its writer while 200 sessions run select-only."""
    peak = [0.0, 0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for i, pid in enumerate(pids[:2]):
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    peak[i] = max(peak[i], rss_mb(pid))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run_pgbench(lab, setup.env, ["-S"], 6, 200)
    finally:
        stop.set()
        sampler.join()
    return peak[0], peak[1]


@pytest.mark.bench
@pytest.mark.timeout(5400)
def test_pgbench_table(tmp_path: Path) -> None:
    """The one table of ``make bench``: see the module docstring."""
    only = set(filter(None, os.environ.get("PGBENCH_ONLY", "").split(",")))
    rounds = int(os.environ.get("PGBENCH_ROUNDS", "2"))
    tps: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    lat: dict[tuple[str, str], list[int]] = {}
    per_statement: dict[tuple[str, str], dict[str, list[float]]] = {}
    with Lab(n_targets=1) as lab, contextlib.ExitStack() as stack:
        pg = pgbench_server(lab)
        setups = [Setup("direct", direct_env(pg))]
        for name, port, env, durability in APPLIANCES:
            if only and name not in only:
                continue
            t0 = time.monotonic()
            app = stack.enter_context(
                pgbench_appliance(lab, pg, tmp_path / name, port, env=env, durability=durability)
            )
            # Start to ready, measured again on a restart (the first start also made keys).
            app.stop()
            t0 = time.monotonic()
            app.start()
            ready = time.monotonic() - t0
            setups.append(
                Setup(name, local_env(port), functools.partial(appliance_pids, app), ready)
            )
        if not only or "pgbouncer" in only:
            proc = stack.enter_context(pgbouncer(lab, pg, lab.dir / "pgbouncer"))
            setups.append(Setup("pgbouncer", local_env(PORTS["pgbouncer"]), lambda p=proc: [p.pid]))
        if not only or "relay" in only:
            proc = stack.enter_context(
                relay(lab, (pg.ipv4, pg.port), tmp_path, loop="uvloop", port=PORTS["relay-uvloop"])
            )
            env = local_env(PORTS["relay-uvloop"], password=pg.passwords["app"])
            setups.append(Setup("relay", env, lambda p=proc: [p.pid]))
        warm_up(lab, [setup.env for setup in setups])
        flush = disk_flush_us(tmp_path)
        logdir = lab.dir / "pgbench-log"
        logdir.mkdir()
        logdir.chmod(0o777)  # the job (nobody) writes its transaction log there
        for r in range(rounds):
            order = setups[r % len(setups) :] + setups[: r % len(setups)]
            for workload, flags, mode in workloads():
                key = f"{workload} -M {mode}"
                for setup in order:
                    pids = setup.pids()
                    sampled = (
                        profiled(pids, Path(f"{setup.name}-{workload}-{mode}"))
                        if r == 0 and setup.name.startswith("appliance")
                        else contextlib.nullcontext()
                    )
                    with sampled:
                        c0 = cpu_seconds(pids)
                        t, n = run_pgbench(lab, setup.env, [*flags, "-M", mode], SECONDS, CLIENTS)
                        used = cpu_seconds(pids) - c0
                    tps.setdefault((key, setup.name), []).append(t)
                    if pids:
                        cpu.setdefault((key, setup.name), []).append(used / n * 1e6)
                    # One client's latency in every round, pooled: one 4 s run per setup
                    # moved the p50 by tens of µs per statement between tables.
                    lat[(key, setup.name)] = sorted(
                        lat.get((key, setup.name), [])
                        + latencies(
                            lab,
                            setup.env,
                            [*flags, "-M", mode],
                            logdir,
                            per_statement.setdefault((key, setup.name), {}),
                        )
                    )
                    print(f"round {r + 1} {key:<24} {setup.name:<21} {t:9.0f} tps", flush=True)
        rated = same_rate(lab, setups, tps) if SAME_RATE else {}
        for setup in setups:
            if setup.name.startswith("appliance"):
                setup.rss = sessions_rss(lab, setup, setup.pids())
    _print_table(setups, tps, cpu, lat, rounds, flush)
    print(statements_table([s.name for s in setups], per_statement))
    _print_same_rate(rated)


def statements_table(
    names: list[str], per_statement: dict[tuple[str, str], dict[str, list[float]]]
) -> str:
    """One client's latency per statement (``pgbench -r``: the median of the rounds'
    averages, µs), a block per workload of more than one statement (tpcb-like), a column
    per setup: where a setup's added latency goes (the write-ahead sync holds END)."""
    out = []
    for key in dict.fromkeys(k for k, _ in per_statement):
        columns = [n for n in names if per_statement.get((key, n))]
        texts = list(dict.fromkeys(t for n in columns for t in per_statement[(key, n)]))
        if len(texts) < 2:
            continue
        out.append(f"\n{key}, 1 client: latency per statement (pgbench -r, us, median of rounds)")
        out.append("| statement | " + " | ".join(columns) + " |")
        out.append("|---|" + "---|" * len(columns))
        for text in texts:
            cells = []
            for n in columns:
                runs = per_statement[(key, n)].get(text)
                cells.append(f"{statistics.median(runs):.0f}" if runs else "-")
            short = text if len(text) <= 40 else text[:37] + "..."
            out.append(f"| {short} | " + " | ".join(cells) + " |")
    return "\n".join(out)


# (workload key, setup name) -> (the rate asked, tps reached, CPU µs per transaction)
Rated = dict[tuple[str, str], tuple[int, float, float]]


def same_rate(lab: Lab, setups: list[Setup], tps: dict[tuple[str, str], list[float]]) -> Rated:
    """CPU per transaction of the appliance and of PgBouncer, each held by ``pgbench -R`` to
    :data:`SAME_RATE_SHARE` of the appliance's median tps (one run each)."""
    out: Rated = {}
    for workload, flags, mode in workloads():
        key = f"{workload} -M {mode}"
        reached = tps.get((key, "appliance"))
        if not reached:
            continue
        rate = int(statistics.median(reached) * SAME_RATE_SHARE)
        for setup in setups:
            if setup.name not in ("appliance", "pgbouncer"):
                continue
            pids = setup.pids()
            c0 = cpu_seconds(pids)
            args = [*flags, "-M", mode, "-R", str(rate)]
            t, n = run_pgbench(lab, setup.env, args, SECONDS, CLIENTS)
            out[(key, setup.name)] = (rate, t, (cpu_seconds(pids) - c0) / n * 1e6)
            print(f"same rate {key:<24} {setup.name:<21} {t:9.0f} tps (-R {rate})", flush=True)
    return out


def _print_same_rate(rated: Rated) -> None:
    """The same-rate CPU, and its goal row (the table's CPU column has its own)."""
    if not rated:
        return
    print(
        f"\nCPU per transaction at the same rate (pgbench -R, {SAME_RATE_SHARE:.0%} of the "
        "appliance's median tps; daemon + ledger writer, PgBouncer, from /proc):"
    )
    for key in dict.fromkeys(k for k, _ in rated):
        app, bouncer = rated.get((key, "appliance")), rated.get((key, "pgbouncer"))
        if app is None or bouncer is None:
            continue
        ratio = app[2] / bouncer[2]
        print(
            f"  {key:<24} -R {app[0]:>6}: appliance {app[2]:6.1f} us ({app[1]:.0f} tps), "
            f"pgbouncer {bouncer[2]:6.1f} us ({bouncer[1]:.0f} tps): {ratio:.2f}x"
        )
        goals.at_most(
            f"{key}: CPU per transaction at the same rate / PgBouncer's",
            ratio,
            2.0,
            "x",
            f"pgbench -R {app[0]}; both reached {min(app[1], bouncer[1]):.0f} tps or more",
        )


def _print_table(
    setups: list[Setup],
    tps: dict[tuple[str, str], list[float]],
    cpu: dict[tuple[str, str], list[float]],
    lat: dict[tuple[str, str], list[int]],
    rounds: int,
    flush: list[float],
) -> None:
    """One table: each workload and setup (medians of the rounds, spread in brackets), and
    under it the disk's flush latency measured before the rounds (:func:`disk_flush_us`)."""
    names = [s.name for s in setups]
    print(
        f"\npgbench {date.today().isoformat()}: {CLIENTS} clients -j 2 -T {SECONDS}, scale {SCALE}, "
        f"{rounds} rounds in alternation (median [min-max]); 1 client -T {LATENCY_SECONDS} per "
        f"round for latency (pooled); CPU = the setup's processes from /proc per transaction; +us/stmt = p50 over "
        f"direct's, per statement; RSS at {200} sessions (daemon + ledger writer)"
    )
    head = (
        f"| {'workload':<22} | {'setup':<21} | {'tps':>21} | {'x direct':>8} | "
        f"{'x pgbouncer':>11} | {'CPU us/tx':>9} | {'p50 us':>7} | {'p99 us':>7} | "
        f"{'+us/stmt':>8} | {'RSS MB':>9} |"
    )
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    keys = list(dict.fromkeys(k for k, _ in tps))
    for key in keys:
        per_tx = 7 if key.startswith("tpcb") else 1
        base = statistics.median(tps.get((key, "direct"), [float("nan")]))
        bouncer = statistics.median(tps.get((key, "pgbouncer"), [float("nan")]))
        direct_p50 = pct(lat.get((key, "direct"), []), 0.5)
        for name in names:
            samples = tps.get((key, name))
            if not samples:
                continue
            med = statistics.median(samples)
            spread = f"{med:7.0f} [{min(samples):.0f}-{max(samples):.0f}]"
            c = cpu.get((key, name))
            cpu_cell = f"{statistics.median(c):9.0f}" if c else f"{'-':>9}"
            lats = lat.get((key, name), [])
            p50, p99 = pct(lats, 0.5), pct(lats, 0.99)
            added = (p50 - direct_p50) / per_tx if name != "direct" else 0.0
            setup = next(s for s in setups if s.name == name)
            rss = f"{setup.rss[0]:.0f} + {setup.rss[1]:.0f}" if setup.rss else "-"
            print(
                f"| {key:<22} | {name:<21} | {spread:>21} | {med / base:8.2f} | "
                f"{med / bouncer:11.2f} | {cpu_cell} | {p50:7.0f} | {p99:7.0f} | "
                f"{added:8.0f} | {rss:>9} |"
            )
    for setup in setups:
        if setup.ready_s is not None:
            print(f"{setup.name}: start to ready {setup.ready_s:.2f} s")
    fsync = f"fdatasync p50 {pct(flush, 0.5):.0f} us, p90 {pct(flush, 0.9):.0f} us"
    print(
        f"disk flush in the ledgers' file system ({len(flush)} pwrite + fdatasync of a file "
        f"written in place, as the sync journal does; a write-ahead sync waits for one): {fsync}"
    )
    _record_goals(setups, tps, cpu, lat, fsync)


def _record_goals(
    setups: list[Setup],
    tps: dict[tuple[str, str], list[float]],
    cpu: dict[tuple[str, str], list[float]],
    lat: dict[tuple[str, str], list[int]],
    fsync: str,
) -> None:
    """Issue 19's goals for the appliance with everything on (compiled build), for the
    summary at the end of the run (:mod:`tests.bench.goals`). ``fsync``: the disk's flush
    latency this run, noted beside tpcb-like's one-client latency (one write-ahead sync a
    transaction)."""
    nan = float("nan")

    def median(samples: list[float] | None) -> float:
        return statistics.median(samples) if samples else nan

    appliance = next((s for s in setups if s.name == "appliance"), None)
    if appliance is None:
        return
    for key in dict.fromkeys(k for k, _ in tps):
        per_tx = 7 if key.startswith("tpcb") else 1
        goals.at_least(
            f"{key}, {CLIENTS} clients: tps / PgBouncer's",
            median(tps.get((key, "appliance"))) / median(tps.get((key, "pgbouncer"))),
            1.0,
            "x",
        )
        lats = lat.get((key, "appliance"), [])
        added = (pct(lats, 0.5) - pct(lat.get((key, "direct"), []), 0.5)) / per_tx
        goals.at_most(
            f"{key}, 1 client: p50 added per statement",
            added,
            100,
            "us",
            f"a write-ahead sync a transaction; {fsync}" if key.startswith("tpcb") else "",
        )
        goals.at_most(
            f"{key}, 1 client: slowest transaction (a stall shows as 40 ms)",
            max(lats) / 1000 if lats else nan,
            40,
            "ms",
            f"p99 {pct(lats, 0.99) / 1000:.1f} ms",
        )
        goals.at_most(
            f"{key}: CPU per transaction / PgBouncer's",
            median(cpu.get((key, "appliance"))) / median(cpu.get((key, "pgbouncer"))),
            2.0,
            "x",
            "daemon + ledger writer, from /proc",
        )
    if appliance.rss:
        goals.at_most(
            "RSS at 200 sessions (daemon + writer)", sum(appliance.rss), 200, "MB", "select-only"
        )
    if appliance.ready_s is not None:
        goals.at_most("start to ready", appliance.ready_s, 3.0, "s", "a restart")


def ratio_table(
    results: dict[str, dict[str, float]], *, setups: list[str], reference: str, title: str
) -> None:
    """Print ``results`` (workload -> setup -> tps) with each setup's ratio to ``reference``
    (bench_mysql.py prints its table with it too)."""
    print(f"\n{title}: tps (ratio to {reference})")
    print(f"{'':<24}" + "".join(f"{s:>20}" for s in setups))
    for key, row in results.items():
        cells = []
        for s in setups:
            if s not in row or reference not in row:
                cells.append(f"{'-':>20}")
                continue
            ratio = row[s] / row[reference]
            cells.append(f"{row[s]:>11.0f} ({ratio:4.2f}x)")
        print(f"{key:<24}" + "".join(cells))


@pytest.mark.bench
@pytest.mark.timeout(7200)
@pytest.mark.skipif(
    not os.environ.get("PGBENCH_BASELINE"),
    reason="set PGBENCH_BASELINE to another build's `appliance` executable to compare with it",
)
def test_pgbench_against_a_baseline_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This build against another (``PGBENCH_BASELINE=/path/to/.venv/bin/appliance``, e.g. a
    worktree of an earlier commit), in one lab, both running at once and measured in
    alternation (``PGBENCH_ROUNDS``, default 3): the median tps of each, and the ratio.
    Then, with ``PGBENCH_BASELINE_LATENCY=1``, one client's latency (``-T
    $PGBENCH_LATENCY_SECONDS``) through each build and direct, in alternation each round:
    p50 and p99 per transaction of all rounds' transactions, the p50 added over direct (the
    median of the rounds'), and the load average while it ran."""
    baseline = os.environ["PGBENCH_BASELINE"]
    # started from a directory that holds no ``appliance`` package: an older build's writer
    # process (``python -c``) would import this checkout's package instead of its own
    monkeypatch.chdir(tmp_path)
    rounds = int(os.environ.get("PGBENCH_ROUNDS", "3"))
    samples: dict[str, dict[str, list[float]]] = {}
    with Lab(n_targets=1) as lab:
        pg = pgbench_server(lab)
        builds = {"this": (APPLIANCE, 6442), "baseline": (baseline, 6443)}
        with contextlib.ExitStack() as stack:
            for name, (exe, port) in builds.items():
                stack.enter_context(
                    pgbench_appliance(lab, pg, tmp_path / name, port, executable=exe)
                )
            warm_up(lab, [local_env(port) for _, port in builds.values()])
            for r in range(rounds):
                for workload, flags, mode in workloads():
                    key = f"{workload} -M {mode}"
                    order = list(builds.items())  # which goes first alternates each round
                    for name, (_, port) in order[::-1] if r % 2 else order:
                        tps = pgbench(lab, local_env(port), [*flags, "-M", mode])
                        samples.setdefault(key, {}).setdefault(name, []).append(tps)
                        print(f"{name:>9} {key:<24} {tps:10.0f} tps", flush=True)
            if os.environ.get("PGBENCH_BASELINE_LATENCY"):
                _baseline_latencies(lab, pg, builds, rounds)
    medians = {
        key: {name: statistics.median(v) for name, v in row.items()} for key, row in samples.items()
    }
    ratio_table(
        medians,
        setups=["baseline", "this"],
        reference="baseline",
        title=f"pgbench, {CLIENTS} clients, -T {SECONDS}, scale {SCALE}",
    )


def _baseline_latencies(
    lab: Lab, pg: PgServer, builds: dict[str, tuple[str, int]], rounds: int
) -> None:
    """One client through each build and direct, alternated; see the test's docstring."""
    logdir = lab.dir / "pgbench-log"
    logdir.mkdir(exist_ok=True)
    logdir.chmod(0o777)  # the job (nobody) writes its transaction log there
    setups = {"direct": direct_env(pg), **{n: local_env(port) for n, (_, port) in builds.items()}}
    every: dict[tuple[str, str], list[int]] = {}
    added: dict[tuple[str, str], list[float]] = {}
    loads: list[float] = []
    for r in range(rounds):
        for workload, flags, mode in workloads():
            key = f"{workload} -M {mode}"
            order = list(setups.items())
            order = order[r % len(order) :] + order[: r % len(order)]
            p50s = {}
            for name, env in order:
                lat = latencies(lab, env, [*flags, "-M", mode], logdir)
                loads.append(os.getloadavg()[0])
                every.setdefault((key, name), []).extend(lat)
                p50s[name] = pct(lat, 0.5)
                print(f"round {r + 1} {key:<24} {name:>9} p50 {p50s[name]:7.0f} us", flush=True)
            for name in builds:
                added.setdefault((key, name), []).append(p50s[name] - p50s["direct"])
    print(
        f"\n1 client, -T {LATENCY_SECONDS}, {rounds} rounds in alternation; load average "
        f"(1 min) while measuring: {min(loads):.2f}-{max(loads):.2f}"
    )
    print(f"{'workload':<24}{'setup':>10}{'p50 us':>9}{'p99 us':>9}{'+p50 us/tx':>12}  per round")
    for workload, _, mode in workloads():
        key = f"{workload} -M {mode}"
        for name in setups:
            lat = sorted(every[(key, name)])
            rounds_added = added.get((key, name), [0.0])
            print(
                f"{key:<24}{name:>10}{pct(lat, 0.5):9.0f}{pct(lat, 0.99):9.0f}"
                f"{statistics.median(rounds_added):12.0f}  "
                + " ".join(f"{a:.0f}" for a in rounds_added)
            )
