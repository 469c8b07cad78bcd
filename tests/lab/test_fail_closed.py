"""Fail closed for real (issue 13): no change the server acknowledged without its record.

pgbench (tpcb-like, 8 clients; for MySQL, mariadb clients inserting rows) runs through the appliance while its ledger breaks: the
writer process is killed with SIGKILL, or the ledger's file system fills up. With
``ledger.durability: write-ahead`` (the default) every statement that may change the
target is on disk before it is sent, or, inside a transaction block (pgbench's BEGIN ...
END), before the END that commits it, so every transaction the server committed has its
INSERT INTO pgbench_history in the ledger (counted against the server, after the ledger
is reopened and recovered), and the clients whose statements could not be recorded got an
error.
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

from appliance.ledger import iter_entries
from tests.lab.lab import Lab, MariaServer, PgServer, run
from tests.lab.mysql_proxy import MySQLTarget, mariadb
from tests.lab.mysql_proxy import running_appliance as running_mysql
from tests.lab.proxy import Appliance, TargetSpec, job_env, running_appliance

PORT = 6490
MYSQL_PORT = 6493
DB = "walcheck"


@pytest.fixture(scope="module")
def bench_db(lab: Lab, pg: PgServer) -> Iterator[str]:
    pg.admin_sql(f"DROP DATABASE IF EXISTS {DB}")
    pg.admin_sql(f"CREATE DATABASE {DB} OWNER app")
    init = lab.job(
        ["pgbench", "-i", "-q", "-s", "1"],
        env={**job_env(PORT), "PGHOST": pg.ipv4, "PGPORT": str(pg.port), "PGDATABASE": DB,
             "PGUSER": "app", "PGPASSWORD": pg.passwords["app"]},
        timeout=120,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    yield DB


def _writer_pid(app: Appliance) -> int:
    assert app.proc is not None
    children = Path(f"/proc/{app.proc.pid}/task/{app.proc.pid}/children").read_text().split()
    for pid in map(int, children):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"appliance.ledger.remote" in cmdline:
            return pid
    raise AssertionError(f"no ledger writer among {children}")


def _pgbench(lab: Lab, seconds: int) -> subprocess.Popen[bytes]:
    env = {**job_env(PORT, PGAPPNAME="wal-bench"), "PGDATABASE": DB, "PGUSER": "ci"}
    return lab.popen(
        ["pgbench", "-n", "-c", "8", "-j", "2", "-T", str(seconds)],
        job=True, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _recorded_history_inserts(ledger: Path) -> int:
    return sum(
        1
        for e in iter_entries(ledger)
        if e.obj["type"] == "statement"
        and str(e.obj["data"].get("text", "")).startswith("INSERT INTO pgbench_history")
    )


def _check(
    pg: PgServer, app: Appliance, bench: subprocess.Popen[bytes], *, before_reopen: Any = None
) -> None:
    out, err = bench.communicate(timeout=180)
    text = out.decode() + err.decode()
    assert bench.returncode != 0 or "aborted" in text, text[-2000:]
    committed = int(pg.admin_sql("select count(*) from pgbench_history", database=DB).strip())
    assert committed > 0, text[-2000:]
    app.stop()
    if before_reopen is not None:
        before_reopen()
    # Reopen the ledger: recovery keeps what was durable and signs it.
    app.start()
    app.stop()
    recorded = _recorded_history_inserts(app.ledger)
    assert recorded >= committed, (recorded, committed)
    verify = app.verify()
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_killing_the_ledger_writer_loses_no_acknowledged_change(
    lab: Lab, pg: PgServer, bench_db: str, tmp_path: Path
) -> None:
    pg.admin_sql("truncate pgbench_history", database=DB)
    with running_appliance(lab, pg, tmp_path / "kill", targets=[TargetSpec("db", PORT)]) as app:
        bench = _pgbench(lab, 30)
        time.sleep(4)
        os.kill(_writer_pid(app), signal.SIGKILL)
        _check(pg, app, bench)


def test_a_full_ledger_disk_loses_no_acknowledged_change(
    lab: Lab, pg: PgServer, bench_db: str, tmp_path: Path
) -> None:
    pg.admin_sql("truncate pgbench_history", database=DB)
    disk = tmp_path / "small"
    disk.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=0750", "tmpfs", str(disk)])
    try:
        with running_appliance(lab, pg, disk, targets=[TargetSpec("db", PORT)]) as app:
            bench = _pgbench(lab, 120)

            def grow() -> None:  # room again, so that the ledger can be reopened
                run(["mount", "-o", "remount,size=64m", str(disk)])

            _check(pg, app, bench, before_reopen=grow)
    finally:
        run(["umount", "-l", str(disk)], check=False)


def test_connections_refused_before_startup_are_recorded_and_a_flood_is_counted(
    lab: Lab, pg: PgServer, tmp_path: Path
) -> None:
    """Garbage, an oversized startup packet, a startup with no user: each gets its FATAL
    and a ledger entry; a flood of 40 more from one source costs five entries and one
    count (written when the appliance stops, or every minute)."""
    import socket
    import struct

    def probe(payload: bytes) -> bytes:
        def body() -> bytes:
            with socket.create_connection(("127.0.0.1", PORT + 1), timeout=10) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                out = b""
                while chunk := s.recv(65536):
                    out += chunk
                return out

        return lab.run_in_runner(body)

    params = b"database\0app\0\0"
    with running_appliance(
        lab, pg, tmp_path / "refused", targets=[TargetSpec("db", PORT + 1)]
    ) as app:
        answers = {
            "garbage": probe(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            "oversized": probe(struct.pack("!ii", 1 << 20, 196608) + b"x" * 64),
            "no user": probe(struct.pack("!ii", 8 + len(params), 196608) + params),
        }
        for _ in range(40):
            probe(b"\x16\x03\x01\x02\x00garbage")
        app.stop()
        refused = [e for e in app.entries() if e["type"] == "connection.refused"]
        summaries = [e["data"] for e in app.entries() if e["type"] == "connection.refused.summary"]
    for name, answer in answers.items():
        assert answer[:1] == b"E" and b"FATAL" in answer, (name, answer)
    assert b"28000" in answers["no user"]
    reasons = [e["data"]["reason"] for e in refused]
    assert reasons.count("protocol violation by the job during startup") == 5  # then counted
    assert all(e["data"]["source"] == "127.0.0.1" for e in refused)
    (summary,) = summaries
    assert summary["count"] == 43 and summary["recorded"] == 5


def test_killing_the_ledger_writer_loses_no_acknowledged_mysql_change(
    lab: Lab, maria: MariaServer, tmp_path: Path
) -> None:
    """The same for MySQL: four mariadb clients insert one row per statement (autocommit)
    while the ledger writer is killed; every row the server holds has its INSERT on
    record."""
    maria.admin_sql(
        "DROP TABLE IF EXISTS walcheck; CREATE TABLE walcheck (c INT, n INT)", database="app"
    )
    target = MySQLTarget("db", MYSQL_PORT)
    with running_mysql(lab, maria, tmp_path / "mysql", targets=[target]) as app:
        clients = []
        for c in range(4):
            script = tmp_path / f"inserts-{c}.sql"
            script.write_text(
                "".join(f"INSERT INTO walcheck VALUES ({c}, {n});\n" for n in range(50_000))
            )
            with script.open("rb") as stdin:  # opened here: the job's user cannot read it
                clients.append(
                    lab.popen(
                        mariadb(MYSQL_PORT),
                        job=True,
                        stdin=stdin,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                    )
                )
        time.sleep(3)
        os.kill(_writer_pid(app), signal.SIGKILL)
        errors = [p.communicate(timeout=120)[1].decode() for p in clients]
        assert all(p.returncode != 0 for p in clients), errors
        committed = int(
            maria.admin_sql("SELECT COUNT(*) FROM walcheck", database="app").split()[-1]
        )
        assert committed > 0, errors
        app.stop()
        app.start()
        app.stop()
    recorded = sum(
        1
        for e in iter_entries(app.ledger)
        if e.obj["type"] == "statement"
        and str(e.obj["data"].get("text", "")).startswith("INSERT INTO walcheck")
    )
    assert recorded >= committed, (recorded, committed)
    verify = app.verify()
    assert verify.returncode == 0, verify.stdout + verify.stderr
