"""The whole appliance with transparent capture: an unmodified job, its real target address.

One pristine lab for this module (capture installs rules in its runner namespace). The
appliance runs as on a runner: ``appliance run --config C`` (capture on) in a cgroup of its
own (the lab's, as systemd gives the unit one), attribution attached to the lab's job
cgroup. The job is psql as uid nobody in the job cgroup, with CI variables in its
environment, connecting to 198.18.0.2:5432 with no password.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import _pure
from appliance.ledger import iter_entries
from tests.lab.lab import Lab, PgServer, stop_process
from tests.lab.test_capture_rules import marked_client, marked_root_job, reject_packets

APPLIANCE = str(Path(sys.executable).with_name("appliance"))
ORIGIN = "lab.test/capture"
CI_ENV = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REPOSITORY": "acme/shop",
    "GITHUB_WORKFLOW": "deploy",
    "GITHUB_JOB": "migrate",
    "GITHUB_RUN_ID": "777",
}


class Runner:
    """The appliance daemon in the lab's runner namespace, restartable."""

    def __init__(self, lab: Lab, pg: PgServer, work: Path) -> None:
        self.lab, self.pg, self.work = lab, pg, work
        self.ledger = work / "ledger"
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run(
            [APPLIANCE, "keys", "generate", "--name", ORIGIN, "--out", str(work / "ledger")],
            check=True,
            capture_output=True,
        )

    def config(self, *, cgroup: Path) -> Path:
        path = self.work / f"config-{cgroup.name}.yaml"
        pg = self.pg
        path.write_text(
            f"""
targets:
  - name: db
    protocol: postgres
    addresses: ["{pg.ipv4}:5432", "[{pg.ipv6}]:5432"]
    tls: {{mode: disable}}
    accounts:
      - {{name: ci, user: app, secret: {{file: {pg.password_file()}}}}}
ledger:
  dir: {self.ledger}
  origin: {ORIGIN}
  key: {{file: {self.work / "ledger.key"}}}
  checkpoint_interval: 100ms
capture:
  listen_port: 15001
  cgroup: {cgroup}
  appliance_cgroup: {self.lab.appliance_cgroup_path}
  # Long: only interface events can explain a guard on a new interface within seconds.
  reconcile_interval: 60s
"""
        )
        return path

    def start(self, *, cgroup: Path | None = None) -> float:
        """Start; return the seconds from spawn to ready."""
        ready = self.work / "ready.json"
        ready.unlink(missing_ok=True)
        config = self.config(cgroup=cgroup or self.lab.job_cgroup)
        log = (self.work / "appliance.log").open("ab")
        t0 = time.monotonic()
        self.proc = self.lab.popen(
            [APPLIANCE, "run", "--config", str(config), "--ready-file", str(ready)],
            cgroup=self.lab.appliance_cgroup,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        deadline = t0 + 30
        while not (ready.exists() and ready.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"appliance did not start:\n{(self.work / 'appliance.log').read_text()[-3000:]}"
                )
            time.sleep(0.02)
        return time.monotonic() - t0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig)
        self.proc = None

    def entries(self, type_: str | None = None) -> list[dict[str, Any]]:
        return [e.obj for e in iter_entries(self.ledger) if type_ is None or e.obj["type"] == type_]

    def new_session(self, before: int) -> dict[str, Any]:
        """The first session.start entry after the ``before`` first ones, once that session's
        end is on disk too (the writer writes out in batches, so a session's entries can
        straddle two writes)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            entries = self.entries()
            starts = [e for e in entries if e["type"] == "session.start"]
            if len(starts) > before:
                sid = starts[before]["session"]
                if any(e["type"] == "session.end" and e["session"] == sid for e in entries):
                    return starts[before]
            time.sleep(0.05)
        raise AssertionError("no new ended session in the ledger")

    def wait_for(self, type_: str) -> list[dict[str, Any]]:
        """Entries of ``type_``, waiting (bounded) until at least one is on disk."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = self.entries(type_)
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no {type_} entry in the ledger")

    def sessions(self) -> int:
        return len(self.entries("session.start"))

    def statements(self, session: str) -> list[str]:
        return [e["data"]["text"] for e in self.entries("statement") if e["session"] == session]


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    with Lab(n_targets=1) as lab:
        pg = lab.start_postgres(0)  # max_connections 300: the churn run has 200 clients
        pg.admin_sql(
            "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2), (3); ALTER TABLE t OWNER TO app;",
            database="app",
        )
        r = Runner(lab, pg, tmp_path_factory.mktemp("capture"))
        try:
            r.start()
            yield r
        finally:
            r.stop()
            rm = lab.popen(
                [APPLIANCE, "capture", "remove", "--config", str(r.config(cgroup=lab.job_cgroup))],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            rm.wait(timeout=30)


# A psql that reports its pid and local port before it runs the query: `exec` keeps the pid.
PSQL = (
    'echo "pid=$$"; exec psql -X -A -t -h "$HOST" -U ci -d app '
    '-c "select inet_client_port()" -c "$SQL"'
)


def job_psql(runner: Runner, host: str, sql: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return runner.lab.job(
        ["sh", "-c", PSQL], env={**CI_ENV, "HOST": host, "SQL": sql, **kw.pop("env", {})}, **kw
    )


def test_an_unmodified_psql_job_is_captured_and_attributed(runner: Runner) -> None:
    before = runner.sessions()
    r = job_psql(runner, runner.pg.ipv4, "select sum(x) from t")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    pid = int(lines[0].removeprefix("pid="))
    server_seen_port = int(lines[1])
    assert lines[-1] == "6"
    start = runner.new_session(before)
    # The server saw another connection than the job's: the appliance's, authenticated as
    # the service account (the job sent no password).
    job_port = int(start["data"]["client"].rsplit(":", 1)[1])
    assert job_port != server_seen_port
    ident = start["identity"]
    assert ident["source"] == "ebpf" and ident["how"].startswith("ebpf")
    assert ident["pid"] == pid
    assert ident["uid"] == 65534
    assert ident["exe"].endswith("/psql")
    assert ident["cgroup"].endswith(f"/{runner.lab.job_cgroup.parent.name}/job")
    assert ident["ci"]["repository"] == "acme/shop" and ident["ci"]["job"] == "migrate"
    assert start["data"]["server"] == f"{runner.pg.ipv4}:5432"
    assert start["account"] == "ci" and start["target"] == "db"
    assert "select sum(x) from t" in runner.statements(start["session"])


def test_ipv6_literal_and_ipv4_mapped_addresses_are_captured(runner: Runner) -> None:
    for host in (runner.pg.ipv6, f"::ffff:{runner.pg.ipv4}"):
        before = runner.sessions()
        r = job_psql(runner, host, "select count(*) from t")
        assert r.returncode == 0, (host, r.stderr)
        assert r.stdout.split()[-1] == "3"
        start = runner.new_session(before)
        assert start["identity"]["source"] == "ebpf", host
        assert "select count(*) from t" in runner.statements(start["session"])


def test_a_container_behind_a_bridge_is_captured(runner: Runner) -> None:
    container = runner.lab.add_container("c1", bridge="docker0", subnet="172.31.0.0/24")
    before = runner.sessions()
    r = runner.lab.job(
        [
            "psql",
            "-X",
            "-A",
            "-t",
            "-h",
            runner.pg.ipv4,
            "-U",
            "ci",
            "-d",
            "app",
            "-c",
            "select 40 + 2",
        ],
        host=container,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "42"
    # The container's interfaces got the egress guard when they appeared, not at the next
    # periodic reconcile (60 s here).
    deadline = time.monotonic() + 10
    while True:
        status = runner.lab.popen(
            [
                APPLIANCE,
                "capture",
                "status",
                "--config",
                str(runner.config(cgroup=runner.lab.job_cgroup)),
            ],
            stdout=subprocess.PIPE,
        )
        out, _ = status.communicate(timeout=30)
        missing = [line for line in out.decode().splitlines() if line.startswith("MISSING")]
        if not missing:
            break
        assert time.monotonic() < deadline, missing
        time.sleep(0.2)
    start = runner.new_session(before)
    assert start["data"]["client"].startswith("172.31.0.2:")
    assert "select 40 + 2" in runner.statements(start["session"])


def test_killed_appliance_means_connection_refused_at_once(runner: Runner) -> None:
    runner.stop(signal.SIGKILL)
    try:
        t0 = time.monotonic()
        r = runner.lab.job(
            ["psql", "-X", "-h", runner.pg.ipv4, "-U", "ci", "-d", "app", "-c", "select 1"],
            env={"PGCONNECT_TIMEOUT": "20"},
        )
        elapsed = time.monotonic() - t0
        assert r.returncode != 0
        assert "Connection refused" in r.stderr, r.stderr
        print(f"refused after {elapsed:.3f}s")  # a hang would have waited for PGCONNECT_TIMEOUT
        # The rules survived the kill: nothing was removed.
        status = runner.lab.popen(
            [
                APPLIANCE,
                "capture",
                "status",
                "--config",
                str(runner.config(cgroup=runner.lab.job_cgroup)),
            ],
            stdout=subprocess.PIPE,
        )
        out, _ = status.communicate(timeout=30)
        missing = [line for line in out.decode().splitlines() if line.startswith("MISSING")]
        # Interfaces created since the last reconcile (the container's) lack the egress
        # guard; every netfilter rule is still there.
        assert all(" device " in line for line in missing), out.decode()
        assert out.decode().count("REJECT --reject-with tcp-reset") >= 4
    finally:
        runner.start()


def test_the_next_start_says_how_the_previous_run_ended(runner: Runner) -> None:
    """Issue 13: after a kill -9 the next appliance.start names the previous run's last
    entry and says it did not stop cleanly; after SIGTERM, that it did."""
    for sig, clean in ((signal.SIGKILL, False), (signal.SIGTERM, True)):
        runner.stop(sig)
        starts = len(runner.entries("appliance.start"))
        runner.start()
        start = runner.entries("appliance.start")[starts]
        previous = start["data"]["previous_run"]
        assert previous["last_seq"] == start["seq"] - 1
        assert previous["stopped_cleanly"] is clean
        assert (previous["last_type"] == "appliance.stop") is clean
        before = [e for e in runner.entries() if e["seq"] == previous["last_seq"]]
        assert before[0]["type"] == previous["last_type"] and before[0]["ts"] == previous["last_ts"]
        # Which build of the hot path served: the one this suite runs (make test: compiled).
        assert start["data"]["hot_path"]["build"] == _pure.running()[0]


def test_outside_its_cgroup_the_appliance_refuses_to_start(runner: Runner) -> None:
    runner.stop()
    try:
        config = runner.config(cgroup=runner.lab.job_cgroup)
        proc = runner.lab.popen(  # in the test's own cgroup, not the configured one
            [APPLIANCE, "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert "capture.appliance_cgroup" in err.decode()
        assert "every upstream connection would be refused" in err.decode()
    finally:
        runner.start()


def test_a_root_job_with_the_appliances_mark_is_refused_and_recorded(runner: Runner) -> None:
    """Issue 13: the mark alone opens nothing. A root job that sets the appliance's mark is
    refused at connect() (eBPF, EPERM) and recorded as a bypass attempt, with who it was;
    IPv4 and IPv6. An unprivileged job cannot set the mark at all."""
    lab = runner.lab
    dsts = []
    for address in (runner.pg.ipv4, runner.pg.ipv6):
        pid, outcome = marked_root_job(lab, address)
        assert outcome.startswith("error PermissionError"), outcome
        deadline = time.monotonic() + 10
        while True:
            found = [
                e
                for e in runner.entries("capture.bypass_attempt")
                if e["identity"] and e["identity"].get("pid") == pid
            ]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        (entry,) = found
        assert entry["identity"]["source"] == "ebpf" and entry["identity"]["uid"] == 0
        assert entry["identity"]["cgroup"].endswith(f"/{lab.job_cgroup.parent.name}/job")
        assert entry["data"]["target"] == "db"
        dsts.append(entry["data"]["dst"])
    assert dsts == ["198.18.0.2:5432", "[fd00:a9e::2]:5432"]
    assert marked_client(lab, runner.pg.ipv4, who="job") == "mark PermissionError"


def test_reconnect_churn_is_never_taken_for_the_appliances_own_traffic(runner: Runner) -> None:
    """Issue 13: ``pgbench -S -C -c 200`` for 60 s (every transaction reconnects). The jobs'
    redirected flows and the appliance's upstream flows leave from the same address to the
    same target; before the appliance's flows had a conntrack zone of their own, a new flow
    of one kind met the lingering entry of the other: 106 of 200 clients were refused in 60
    s (REJECT counted exactly those). Now: no client refused and every session is the job's
    (none on the appliance's own listener). The REJECT counter is printed, not asserted: a
    job socket's closing RST that conntrack finds out of window (INVALID, so not redirected)
    meets it too, about once in 6000 connections here, and refuses nothing."""
    lab, pg = runner.lab, runner.pg
    env = {"PGHOST": pg.ipv4, "PGUSER": "ci", "PGDATABASE": "app"}
    init = lab.job(["pgbench", "-i", "-s", "1", "-q"], env=env, timeout=120)
    assert init.returncode == 0, init.stderr
    rejected = reject_packets(lab), reject_packets(lab, "ip6tables-save")
    before = runner.sessions()
    r = lab.job(
        ["pgbench", "-n", "-S", "-C", "-c", "200", "-j", "2", "-T", "60"], env=env, timeout=240
    )
    refused = r.stderr.count("Connection refused")
    done = int(re.search(r"number of transactions actually processed: (\d+)", r.stdout)[1])  # type: ignore[index]
    print(
        f"churn: {done} transactions, {refused} refused; pgbench stderr tail: {r.stderr[-300:]!r}"
    )
    assert r.returncode == 0 and refused == 0 and "aborted" not in r.stderr, r.stderr[-2000:]
    assert "number of failed transactions: 0 " in r.stdout
    now = reject_packets(lab), reject_packets(lab, "ip6tables-save")
    print(f"churn: REJECT counters went from {rejected} to {now} (IPv4, IPv6)")
    time.sleep(1)  # the last sessions' entries reach the disk
    entries = runner.entries()
    starts = [e for e in entries if e["type"] == "session.start"][before:]
    assert len(starts) >= done
    job = f"/{lab.job_cgroup.parent.name}/job"
    strays = [e for e in starts if e["identity"]["source"] != "ebpf"
              or not e["identity"]["cgroup"].endswith(job) or e["data"]["user"] != "ci"]  # fmt: skip
    assert strays == []
    ids = {e["session"] for e in starts}
    ends = [
        e["data"]["reason"] for e in entries if e["type"] == "session.end" and e["session"] in ids
    ]
    assert [reason for reason in ends if "upstream" in reason] == []
    print(f"churn: {len(starts)} sessions, all the job's")


def test_with_bpf_failing_sessions_flow_unattributed(runner: Runner) -> None:
    runner.stop()
    try:
        runner.start(cgroup=Path("/sys/fs/cgroup/no-such-cgroup-for-appliance"))
        failed = runner.wait_for("capture.bpf_failed")
        assert failed and "no-such-cgroup" in json.dumps(failed[-1]["data"])
        before = runner.sessions()
        r = job_psql(runner, runner.pg.ipv4, "select max(x) from t")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[-1] == "3"
        start = runner.new_session(before)
        assert start["identity"]["source"] == "unattributed"
        assert "eBPF attribution failed" in start["identity"]["how"]
    finally:
        runner.stop()
        runner.start()


def test_the_ledger_verifies(runner: Runner) -> None:
    runner.stop()
    try:
        r = subprocess.run(
            [
                APPLIANCE,
                "ledger",
                "verify",
                "--ledger",
                str(runner.ledger),
                "--vkey",
                str(runner.work / "ledger.vkey"),
            ],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "VERIFIED" in r.stdout
        types = {e["type"] for e in runner.entries()}
        assert {
            "capture.rules_installed",
            "capture.bpf_attached",
            "capture.bpf_failed",
            "session.start",
        } <= types
    finally:
        runner.start()


def test_no_environment_leak_of_the_secret(runner: Runner) -> None:
    secret = runner.pg.password_file().read_text().strip()
    log = (runner.work / "appliance.log").read_bytes()
    assert secret.encode() not in log
    for path in runner.ledger.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert os.stat(runner.pg.password_file()).st_mode & 0o077 == 0


def test_a_secret_on_the_job_s_command_line_never_reaches_the_ledger(runner: Runner) -> None:
    """The job's command line is part of its identity: a password in a connection URI or
    after --password is masked before the identity is kept."""
    before = runner.sessions()
    uri = f"postgresql://ci:Tr0ub4dor-and-3@{runner.pg.ipv4}:5432/app?sslmode=disable"
    r = runner.lab.job(
        ["psql", "-X", "-At", uri, "-c", "select 'cmdline-secret'"],
        env={**CI_ENV, "PGCONNECT_TIMEOUT": "10"},
    )
    assert r.returncode == 0, r.stderr
    start = runner.new_session(before)
    assert start["identity"]["exe"].endswith("/psql")
    assert any("postgresql://" in a for a in start["identity"]["cmdline"])
    for path in [*runner.ledger.rglob("*"), runner.work / "appliance.log"]:
        if path.is_file():
            assert b"Tr0ub4dor-and-3" not in path.read_bytes(), path
