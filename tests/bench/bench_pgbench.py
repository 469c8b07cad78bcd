"""pgbench through the appliance, compared (benchmark, not a test; needs root: it builds a lab).

In one lab (PostgreSQL 15 in a target namespace, pgbench as the job in the runner namespace),
pgbench at 8 clients runs the same workloads against:

- ``direct``: the server itself (pgbench authenticates with the password);
- ``appliance``: ``appliance run`` with everything on: decoding, policy, recording of every
  statement and result to the signed ledger, default masking (uvloop, as in production);
- ``appliance-checkpoint``: the same with ``ledger.durability: checkpoint`` (statements
  that change the target are not written ahead: what the write-ahead costs);
- ``appliance-thread``: the same with ``ledger.writer: thread`` (the ledger writer in a thread
  of the daemon, sharing the event loop's GIL, instead of its own process);
- ``appliance-norows``: the same with ``ledger.record_rows: false`` (what result blobs cost);
- ``pgbouncer``: Debian's PgBouncer 1.x in session mode (a C proxy that does not decode
  statements), in the runner namespace;
- ``relay``/``relay-uvloop``: a bare Python asyncio TCP relay (the floor for any Python proxy),
  with the standard event loop and with uvloop.

Workloads: ``-S`` (select-only) and the default tpcb-like, each with ``-M simple`` and
``-M prepared``; ``-c 8 -j 2 -T $PGBENCH_SECONDS`` (default 15) on a scale-10 database. The
ratios to ``direct`` are printed; the goal is >= 0.61 for the appliance. Nothing is asserted
about speed. Run with ``make bench`` or
``pytest tests/bench/bench_pgbench.py -m bench -s``; ``PGBENCH_ONLY=appliance,direct``
restricts the setups, ``PGBENCH_PROFILE=1`` samples the appliance with py-spy during its
runs (the flame graphs land in the temp dir, printed at the end).

Where the time went (py-spy, /proc CPU counters; select-only -M prepared, 2-core VM):

- session 1: the ledger writer thread made one blob file per result set and was woken on
  every append, so it and the event loop traded the GIL per statement. Fixed then: small
  results inline in their entry, batched queue, "trusted" hot-path appends.
- session 2: the writer thread still took a third of the process's GIL time, and a wake-up
  per statement. Now the writer runs in its own process (appliance/ledger/remote.py): the
  loop encodes entries and sends them every few ms in one write; rows are decoded and
  masked there. select-only prepared went from 0.10x (writer thread, same run) to 0.14x.
  The thread writer no longer wakes per append either (it polls every 10 ms under load).
- now, at ~8k tps: the event loop uses ~0.8 core (0.57 user, 0.23 system) and the writer
  process ~0.45 core, with 1.8 of the 2 cores busy. Of the loop's time about a third is
  the two socket writes per round trip (a bare relay's whole cost), the rest is decoding,
  statement tracking, the policy cache, masking bind parameters and building two entries.
- next: one entry per completed statement instead of two; a specialised Bind/Execute path
  that builds no message objects; several proxy processes on SO_REUSEPORT sharing one
  writer process, for hosts with cores to spare.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.lab.lab import Lab, PgServer, wait_port
from tests.lab.proxy import APPLIANCE, TargetSpec, running_appliance

SECONDS = int(os.environ.get("PGBENCH_SECONDS", "15"))
CLIENTS = 8
SCALE = 10
WORKLOADS = [("select-only", ["-S"]), ("tpcb-like", [])]
MODES = ["simple", "prepared"]
PORTS = {"appliance": 6432, "pgbouncer": 6433, "relay": 6434, "relay-uvloop": 6435}

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
        else:
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
def pgbouncer(lab: Lab, pg: PgServer, workdir: Path) -> Iterator[None]:
    workdir.mkdir(parents=True)
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"app = host={pg.ipv4} port={pg.port} dbname=app user=app password={pg.passwords['app']}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {PORTS['pgbouncer']}\n"
        "auth_type = any\npool_mode = session\nmax_client_conn = 100\n"
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
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def relay(lab: Lab, pg: PgServer, workdir: Path, *, loop: str, port: int) -> Iterator[None]:
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "relay.py"
    script.write_text(RELAY)
    proc = lab.popen(
        [sys.executable, str(script), pg.ipv4, str(pg.port), str(port), loop],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port("127.0.0.1", port, netns=lab.runner.path)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def profiled(pid: int, out: Path) -> Iterator[None]:
    """Sample ``pid`` with py-spy while the body runs (when PGBENCH_PROFILE=1)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if os.environ.get("PGBENCH_PROFILE") != "1" or not Path(spy).exists():
        yield
        return
    proc = subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", "200", "--format", "speedscope",
         "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        proc.send_signal(2)
        proc.wait(30)
        print(f"profile: {out}")


@pytest.mark.bench
@pytest.mark.timeout(3600)
def test_pgbench_ratios(tmp_path: Path) -> None:
    only = set(filter(None, os.environ.get("PGBENCH_ONLY", "").split(",")))
    results: dict[str, dict[str, float]] = {}

    def run_all(setup: str, env: dict[str, str], pid: int | None = None) -> None:
        for workload, flags in WORKLOADS:
            for mode in MODES:
                key = f"{workload} -M {mode}"
                if pid is not None:
                    with profiled(pid, tmp_path / f"{setup}-{workload}-{mode}.speedscope.json"):
                        tps = pgbench(lab, env, [*flags, "-M", mode])
                else:
                    tps = pgbench(lab, env, [*flags, "-M", mode])
                results.setdefault(key, {})[setup] = tps
                print(f"{setup:>13} {key:<24} {tps:10.0f} tps", flush=True)

    with Lab(n_targets=1) as lab:
        pg = lab.start_postgres(0)
        init = lab.job(["pgbench", "-i", "-q", "-s", str(SCALE)], env=direct_env(pg), timeout=600)
        assert init.returncode == 0, init.stderr
        pg.admin_sql("vacuum analyze", database="app")
        run_all("direct", direct_env(pg))
        policy = {
            "rules": [
                {"name": "no-drop", "match": {"classes": ["drop"]}, "action": "deny"},
                {"name": "default", "action": "allow"},
            ]
        }
        # "appliance-norows": the same without recording result rows (ledger.record_rows:
        # false), to show what the result blobs cost; "appliance-thread": the ledger writer
        # in a thread of the daemon instead of its own process (ledger.writer: thread).
        for setup, rows, writer, durability in (
            ("appliance", True, "process", "write-ahead"),
            ("appliance-checkpoint", True, "process", "checkpoint"),
            ("appliance-thread", True, "thread", "write-ahead"),
            ("appliance-norows", False, "process", "write-ahead"),
        ):
            if only and setup not in only:
                continue
            with running_appliance(
                lab, pg, tmp_path / setup,
                targets=[TargetSpec("db", PORTS["appliance"], accounts=[("app", "app")])],
                policy=policy,
                ledger_options={
                    "checkpoint_interval": "1s",
                    "record_rows": rows,
                    "writer": writer,
                    "durability": durability,
                },
            ) as app:  # fmt: skip
                assert app.proc is not None
                run_all(setup, local_env(PORTS["appliance"]), pid=app.proc.pid)
                ledger_mb = sum(p.stat().st_size for p in app.ledger.rglob("*") if p.is_file())
                entries = len(app.entries())
                print(f"{setup} ledger: {entries} entries, {ledger_mb / 1e6:.0f} MB", flush=True)
        if not only or "pgbouncer" in only:
            with pgbouncer(lab, pg, lab.dir / "pgbouncer"):  # readable by its user
                run_all("pgbouncer", local_env(PORTS["pgbouncer"]))
        for loop in ("asyncio", "uvloop"):
            name = "relay" if loop == "asyncio" else "relay-uvloop"
            if only and name not in only:
                continue
            with relay(lab, pg, tmp_path, loop=loop, port=PORTS[name]):
                run_all(name, local_env(PORTS[name], password=pg.passwords["app"]))

    _table(
        results,
        setups=[
            "direct",
            "appliance",
            "appliance-checkpoint",
            "appliance-thread",
            "appliance-norows",
            "pgbouncer",
            "relay",
            "relay-uvloop",
        ],
        reference="direct",
    )


def _table(results: dict[str, dict[str, float]], *, setups: list[str], reference: str) -> None:
    print(f"\npgbench, {CLIENTS} clients, -T {SECONDS}, scale {SCALE}: tps (ratio to {reference})")
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
def test_pgbench_against_a_baseline_build(tmp_path: Path) -> None:
    """This build against another (``PGBENCH_BASELINE=/path/to/.venv/bin/appliance``, e.g. a
    worktree of an earlier commit), in one lab, both running at once and measured in
    alternation (``PGBENCH_ROUNDS``, default 3): the median tps of each, and the ratio."""
    baseline = os.environ["PGBENCH_BASELINE"]
    rounds = int(os.environ.get("PGBENCH_ROUNDS", "3"))
    samples: dict[str, dict[str, list[float]]] = {}
    policy = {
        "rules": [
            {"name": "no-drop", "match": {"classes": ["drop"]}, "action": "deny"},
            {"name": "default", "action": "allow"},
        ]
    }
    with Lab(n_targets=1) as lab:
        pg = lab.start_postgres(0)
        init = lab.job(["pgbench", "-i", "-q", "-s", str(SCALE)], env=direct_env(pg), timeout=600)
        assert init.returncode == 0, init.stderr
        pg.admin_sql("vacuum analyze", database="app")
        builds = {"this": (APPLIANCE, 6442), "baseline": (baseline, 6443)}
        with contextlib.ExitStack() as stack:
            for name, (exe, port) in builds.items():
                stack.enter_context(
                    running_appliance(
                        lab, pg, tmp_path / name,
                        targets=[TargetSpec("db", port, accounts=[("app", "app")])],
                        policy=policy, ledger_options={"checkpoint_interval": "1s"},
                        executable=exe,
                    )
                )  # fmt: skip
            for _ in range(rounds):
                for workload, flags in WORKLOADS:
                    for mode in MODES:
                        key = f"{workload} -M {mode}"
                        for name, (_, port) in builds.items():
                            tps = pgbench(lab, local_env(port), [*flags, "-M", mode])
                            samples.setdefault(key, {}).setdefault(name, []).append(tps)
                            print(f"{name:>9} {key:<24} {tps:10.0f} tps", flush=True)
    medians = {
        key: {name: statistics.median(v) for name, v in row.items()} for key, row in samples.items()
    }
    _table(medians, setups=["baseline", "this"], reference="baseline")
