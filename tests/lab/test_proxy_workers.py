"""Several proxy workers, one ledger (``proxy.workers: 2``, issue 19).

Real pgbench clients through an appliance that serves from two worker processes: every
session of every worker lands in one ledger with one gap-free seq that ``appliance ledger
verify`` accepts; both workers served (each records ``proxy.worker.stopped`` with its pid
and its count of sessions); SIGTERM stops both cleanly before ``appliance.stop``. Killing the
ledger writer with SIGKILL stops every worker: no change reaches the server without its
record, and no new connection is served.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.lab import Lab, PgServer
from tests.lab.proxy import TargetSpec, job_env, pgbench_database, running_appliance

PORT = 6520
DB = "workers"
WORKERS = {"workers": 2}


@pytest.fixture(scope="module")
def bench_db(lab: Lab, pg: PgServer) -> Iterator[str]:
    pgbench_database(lab, pg, DB)
    yield DB


def _env(port: int) -> dict[str, str]:
    return {**job_env(port, PGAPPNAME="workers-bench"), "PGDATABASE": DB, "PGUSER": "ci"}


def _history(pg: PgServer) -> int:
    return int(pg.admin_sql("select count(*) from pgbench_history", database=DB).strip())


def _recorded_history_inserts(entries: list[dict[str, Any]]) -> int:
    return sum(
        1
        for e in entries
        if e["type"] == "statement"
        and str(e["data"].get("text", "")).startswith("INSERT INTO pgbench_history")
    )


def test_two_workers_serve_many_clients_into_one_gap_free_verified_ledger(
    lab: Lab, pg: PgServer, bench_db: str, tmp_path: Path
) -> None:
    pg.admin_sql("truncate pgbench_history", database=DB)
    with running_appliance(
        lab, pg, tmp_path / "two", targets=[TargetSpec("db", PORT)], proxy=WORKERS
    ) as app:
        pids = sorted(app.children(b"appliance.proxy.workers"))
        assert len(pids) == 2
        # -C: a new connection (a new session) for every transaction, from 8 clients
        bench = lab.job(
            ["pgbench", "-n", "-C", "-c", "8", "-j", "2", "-t", "15"],
            env=_env(PORT), timeout=300,
        )  # fmt: skip
        assert bench.returncode == 0, bench.stdout + bench.stderr
        assert app.stop() == 0
    entries = app.entries()
    assert [e["seq"] for e in entries] == list(range(len(entries)))
    ready = sorted(e["data"]["pid"] for e in entries if e["type"] == "proxy.worker.ready")
    assert ready == pids
    stopped = {e["data"]["pid"]: e for e in entries if e["type"] == "proxy.worker.stopped"}
    assert sorted(stopped) == pids
    sessions = [e for e in entries if e["type"] == "session.start"]
    assert len(sessions) >= 8 * 15
    served = [stopped[p]["data"]["sessions"] for p in pids]
    assert all(n > 0 for n in served), served  # both workers served
    assert sum(served) == len(sessions)
    assert len({e["session"] for e in sessions}) == len(sessions)  # unique across workers
    # SIGTERM: both workers ended (their sessions too) before the daemon's stop record
    last = entries[-1]
    assert last["type"] == "appliance.stop" and last["data"]["reason"] == "signal"
    assert all(e["seq"] < last["seq"] for e in stopped.values())
    ends = [e for e in entries if e["type"] == "session.end"]
    assert len(ends) == len(sessions)
    stamps = [e["ts"] for e in entries]
    assert stamps == sorted(stamps)
    assert _recorded_history_inserts(entries) == _history(pg) == 8 * 15
    verify = app.verify()
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{p}").exists() and _alive(p) for p in pids):
        if time.monotonic() > deadline:
            raise AssertionError(f"workers still running {timeout}s after the writer died")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_killing_the_writer_stops_every_worker(
    lab: Lab, pg: PgServer, bench_db: str, tmp_path: Path
) -> None:
    pg.admin_sql("truncate pgbench_history", database=DB)
    with running_appliance(
        lab, pg, tmp_path / "kill", targets=[TargetSpec("db", PORT + 1)], proxy=WORKERS
    ) as app:
        workers = app.children(b"appliance.proxy.workers")
        assert len(workers) == 2
        bench = lab.popen(
            ["pgbench", "-n", "-c", "8", "-j", "2", "-T", "60"],
            job=True, env=_env(PORT + 1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        # some transactions committed through the workers first (however loaded the machine)
        deadline = time.monotonic() + 60
        while _history(pg) == 0:
            assert time.monotonic() < deadline, "no transaction committed through the workers"
            time.sleep(0.1)
        (writer,) = app.children(b"appliance.ledger.remote")
        os.kill(writer, signal.SIGKILL)
        _wait_gone(workers, 20)
        out, err = bench.communicate(timeout=120)
        text = out.decode() + err.decode()
        assert bench.returncode != 0 or "aborted" in text, text[-2000:]
        committed = _history(pg)
        assert committed > 0, text[-2000:]
        # nothing serves any more: a new client is not answered by a worker
        after = lab.job(["psql", "-Atc", "select 1"], env=_env(PORT + 1), timeout=30)
        assert after.returncode != 0 and after.stdout.strip() != "1"
        assert _history(pg) == committed
        assert app.stop() != 0  # the daemon exits with the error
        # Reopen (one process this time): recovery keeps what was durable and signs it.
        app.start()
        app.stop()
    assert _recorded_history_inserts(app.entries()) >= committed
    verify = app.verify()
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_sigterm_lets_every_worker_finish_its_in_flight_statements(
    lab: Lab, pg: PgServer, tmp_path: Path
) -> None:
    port = PORT + 2
    with running_appliance(
        lab, pg, tmp_path / "term", targets=[TargetSpec("db", port)], proxy=WORKERS
    ) as app:
        jobs = [
            lab.popen(
                ["psql", "-X", "-At", "-c", "select 'done after ' || pg_sleep(2)"],
                job=True,
                env=job_env(port, PGAPPNAME=f"slow-{i}"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for i in range(4)
        ]
        app.wait_for(lambda es: sum(e["type"] == "session.start" for e in es) == 4)
        time.sleep(0.7)  # the statements are running upstream
        app.signal(signal.SIGTERM)
        outs = [p.communicate(timeout=60) for p in jobs]
        assert app.stop() == 0
    for out, err in outs:
        assert out.decode().strip() == "done after", err.decode()
    entries = app.entries()
    stopped = [e["data"] for e in entries if e["type"] == "proxy.worker.stopped"]
    assert sorted(d["sessions"] for d in stopped) == [2, 2]  # handed over in turn
    answered = [e for e in entries if e["type"] == "response" and e["data"].get("error") is None]
    assert len(answered) == 4
    assert entries[-1]["type"] == "appliance.stop"
    assert app.verify().returncode == 0
