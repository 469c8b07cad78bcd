"""The lab itself: namespaces, no route out, the job's confinement, a real PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.lab.lab import STATE_DIR, Lab, PgServer, cgroup2_root, run


def test_psql_as_job_reaches_postgres_over_lab_network(lab: Lab, pg: PgServer) -> None:
    r = lab.job(
        ["psql", "-X", "-A", "-t", "-h", pg.ipv4, "-U", "app", "-d", "app",
         "-c", "select current_user, inet_server_addr(), inet_client_addr()"],
        env={"PGPASSWORD": pg.passwords["app"]},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"app|{pg.ipv4}|{lab.targets[0].runner_ipv4}"


def test_psycopg_over_ipv6_with_verified_tls(lab: Lab, pg: PgServer) -> None:
    def query() -> tuple[object, ...]:
        with psycopg.connect(
            host=pg.ipv6, user="app", dbname="app", password=pg.passwords["app"],
            sslmode="verify-full", sslrootcert=str(pg.ca_file),
        ) as conn:  # fmt: skip
            row = conn.execute(
                "select ssl from pg_stat_ssl where pid = pg_backend_pid()"
            ).fetchone()
            assert row is not None
            return tuple(row)

    assert lab.run_in_runner(query) == (True,)


def test_the_three_auth_methods_are_real(lab: Lab, pg: PgServer) -> None:
    stored = pg.admin_sql(
        "select rolname, left(rolpassword, 14) from pg_authid where rolname like 'app%' order by 1"
    )
    by_role = dict(line.split("|") for line in stored.split())
    assert by_role["app"] == "SCRAM-SHA-256$"
    assert by_role["app_md5"].startswith("md5")
    hba = (pg.data / "pg_hba.conf").read_text()
    assert "host all app_plain all password" in hba
    r = lab.job(
        ["psql", "-X", "-h", pg.ipv4, "-U", "app", "-d", "app", "-c", "select 1"],
        env={"PGPASSWORD": "wrong"},
    )
    assert r.returncode != 0 and "password authentication failed" in r.stderr


def test_job_cannot_read_the_service_account_secret(lab: Lab, pg: PgServer) -> None:
    r = lab.job(["cat", str(pg.password_file("app"))])
    assert r.returncode != 0 and "Permission denied" in r.stderr
    assert pg.password_file("app").read_text().strip() == pg.passwords["app"]


def test_job_runs_in_runner_namespace_and_job_cgroup_as_nobody(lab: Lab) -> None:
    r = lab.job(["sh", "-c", "id -u; cat /proc/self/cgroup; readlink /proc/self/ns/net"])
    uid, *rest = r.stdout.split("\n")
    assert uid == "65534"
    rel = "/" + str(lab.job_cgroup.relative_to(cgroup2_root()))
    assert f"0::{rel}" in rest
    assert os.readlink("/proc/self/ns/net") not in r.stdout  # not the root namespace


def test_no_route_out_of_the_lab(lab: Lab) -> None:
    assert "default" not in lab.runner.ip("route", "show")
    assert "default" not in lab.runner.ip("-6", "route", "show")

    def connect_out() -> str:
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("192.0.2.1", 80))
        except OSError as exc:
            return type(exc).__name__ + str(exc.errno)
        finally:
            s.close()
        return "connected"

    result = lab.run_in_runner(connect_out)
    assert result.startswith("OSError") and "101" in result  # ENETUNREACH


def test_targets_are_isolated_from_each_other(lab: Lab) -> None:
    # Target 1 has no route to target 0: the runner is not a router.
    assert "198.18.0." not in lab.targets[1].ip("route", "show")


def test_a_killed_lab_is_cleaned_up_by_the_next_one() -> None:
    script = (
        f"import sys, time; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from tests.lab.lab import Lab\n"
        "lab = Lab(n_targets=1); lab.setup()\n"
        "print(lab.lab_id, flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lab_id = proc.stdout.readline().strip()
    assert lab_id
    assert f"apl-{lab_id}-runner" in run(["ip", "netns", "list"])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.1)
    with Lab(n_targets=1) as fresh:
        assert fresh.lab_id != lab_id
        names = run(["ip", "netns", "list"])
        assert f"apl-{lab_id}-" not in names
        assert not (cgroup2_root() / f"appliance-lab-{lab_id}").exists()
        assert not (STATE_DIR / f"{lab_id}.pid").exists()


def test_teardown_runs_when_the_body_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab(n_targets=1) as failing:
        lab_id = failing.lab_id
        raise RuntimeError("boom")
    assert f"apl-{lab_id}-" not in run(["ip", "netns", "list"])
    assert not (cgroup2_root() / f"appliance-lab-{lab_id}").exists()
