"""`appliance report` on the logs of a real appliance in front of a real PostgreSQL (issue 21).

One pristine lab for this module (capture installs rules in its runner namespace). Two runner
boots, each with its own log and origin, as on a fleet:

- boot 1 (capture on, eBPF attribution of the job cgroup, enforce policy, approvals over the
  socket, response masking for acme/*): psql jobs with GitHub variables run a query whose card
  numbers, SSNs and e-mails are masked, a DROP that is denied, a DELETE held and approved by
  alice (`appliance approvals approve`), a TRUNCATE held until it times out; a psql outside
  the job cgroup is an unattributed flow; then, while a job's statement is running, the
  appliance is SIGKILLed: an unclean end, and a session without end;
- boot 2: one more job, then a clean stop.

The report built from both logs must count what the ledger holds (recounted here from the
raw entries, not through the report's adapter), render every section in headless Chromium
(checked through the DOM), be the same bytes when built twice, and say TAMPERING DETECTED on
its first page, with exit status 1, once an entry of boot 1 is rewritten.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.approvals import ApprovalsClient
from appliance.ledger import iter_entries
from tests.chromium import dump_dom, texts_by_id
from tests.lab.lab import Lab, PgServer, stop_process
from tests.ledgers import tamper_denial

APPLIANCE = str(Path(sys.executable).with_name("appliance"))
SHOP = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REPOSITORY": "acme/shop",
    "GITHUB_WORKFLOW": "deploy",
    "GITHUB_JOB": "migrate",
    "GITHUB_RUN_ID": "777",
}
BILLING = {**SHOP, "GITHUB_REPOSITORY": "acme/billing", "GITHUB_JOB": "backfill"}
CUSTOMERS = """
CREATE TABLE customers (id serial PRIMARY KEY, name text, email text, card text, ssn text);
INSERT INTO customers (name, email, card, ssn) VALUES
    ('Ada Lovelace', 'ada@example.com', '4111 1111 1111 1111', '536-22-1024'),
    ('Alan Turing', 'alan@example.org', '5500-0000-0000-0004', '412-68-3397');
CREATE TABLE audit (x int); INSERT INTO audit VALUES (1);
ALTER TABLE customers OWNER TO app; ALTER TABLE audit OWNER TO app;
"""


class Fleet:
    """The appliance's boots on the lab's runner, each writing its own log under ``logs``."""

    def __init__(self, lab: Lab, pg: PgServer, work: Path) -> None:
        self.lab, self.pg, self.work = lab, pg, work
        self.logs = work / "logs"
        self.socket = work / "run" / "approvals.sock"
        self.socket.parent.mkdir(mode=0o700)
        self.proc: subprocess.Popen[bytes] | None = None
        self.config: Path | None = None
        cli("keys", "generate", "--approver", "alice", "--out", str(work / "alice"))
        self.alice = (work / "alice.vkey").read_text().strip()

    def boot(self, n: int) -> Path:
        origin = f"lab.test/runner-1/boot-{n}"
        cli("keys", "generate", "--name", origin, "--out", str(self.work / f"boot-{n}"))
        ledger = self.logs / f"runner-1/boot-{n}"
        config = self.config = self.work / f"config-{n}.yaml"
        config.write_text(
            f"""
targets:
  - name: orders-db
    protocol: postgres
    addresses: ["{self.pg.ipv4}:5432"]
    tls: {{mode: disable}}
    accounts:
      - {{name: ci, user: app, secret: {{file: {self.pg.password_file()}}}}}
ledger:
  dir: {ledger}
  origin: {origin}
  key: {{file: {self.work / f"boot-{n}.key"}}}
  checkpoint_interval: 100ms
capture:
  listen_port: 15001
  cgroup: {self.lab.job_cgroup}
  appliance_cgroup: {self.lab.appliance_cgroup_path}
policy:
  mode: enforce
  approvals:
    timeout: 60s
    socket: {self.socket}
    approvers: [{{name: alice, key: "{self.alice}"}}]
  rules:
    - {{name: no-drops, match: {{classes: [drop]}}, action: deny, message: "DROP is not allowed from CI"}}
    - {{name: quick-review, match: {{classes: [truncate]}}, action: review, approvers: [alice], timeout: 2s}}
    - {{name: deletes-need-alice, match: {{classes: [delete]}}, action: review, approvers: [alice]}}
    - {{name: default, action: allow}}
masking:
  response:
    - {{target: orders-db, identity: {{repository: "acme/*"}}}}
"""
        )
        ready = self.work / "ready.json"
        ready.unlink(missing_ok=True)
        log = (self.work / "appliance.log").open("ab")
        self.proc = self.lab.popen(
            [APPLIANCE, "run", "--config", str(config), "--ready-file", str(ready)],
            cgroup=self.lab.appliance_cgroup,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 30
        while not (ready.exists() and ready.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((self.work / "appliance.log").read_text()[-3000:])
            time.sleep(0.05)
        return ledger

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig)
        self.proc = None

    def psql(self, sql: str, env: dict[str, str], **kw: Any) -> subprocess.Popen[bytes]:
        argv = ["psql", "-X", "-A", "-t", "-h", self.pg.ipv4, "-U", "ci", "-d", "app", "-c", sql]
        return self.lab.popen(
            argv,
            job=kw.pop("job", True),
            env={**env, "PGCONNECT_TIMEOUT": "10", "PGSSLMODE": "disable"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **kw,
        )

    def run(self, sql: str, env: dict[str, str], **kw: Any) -> tuple[int, str]:
        proc = self.psql(sql, env, **kw)
        out, err = proc.communicate(timeout=60)
        return proc.returncode, (out + err).decode()


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([APPLIANCE, *args], capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"appliance {' '.join(args)}: {r.returncode}\n{r.stdout}{r.stderr}")
    return r


def entries(ledger: Path) -> list[dict[str, Any]]:
    return [e.obj for e in iter_entries(ledger)]


def wait(ledger: Path, what: str, test: Any, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [o for o in entries(ledger) if test(o)]
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} in the ledger")
        time.sleep(0.05)


def pending(client: ApprovalsClient, text: str) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for status in client.list_requests():
            if text in status.request.statement:
                return status.request.id
        time.sleep(0.05)
    raise AssertionError(f"no pending request for {text!r}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with Lab(n_targets=1) as lab:
        pg = lab.start_postgres(0)
        pg.admin_sql(CUSTOMERS, database="app")
        fleet = Fleet(lab, pg, tmp_path_factory.mktemp("report-lab"))
        try:
            run_the_jobs(fleet)
            yield fleet
        finally:
            fleet.stop()
            if fleet.config is not None:
                remove = lab.popen(
                    [APPLIANCE, "capture", "remove", "--config", str(fleet.config)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                remove.wait(timeout=30)


def run_the_jobs(f: Fleet) -> None:
    boot1 = f.boot(1)
    code, out = f.run("SELECT name, email, card, ssn FROM customers ORDER BY id", SHOP)
    assert code == 0 and "[REDACTED" in out and "4111" not in out, out
    code, out = f.run("DROP TABLE customers", SHOP)
    assert code != 0 and "DROP is not allowed from CI" in out, out
    client = ApprovalsClient(f.socket, timeout=10)
    job = f.psql("DELETE FROM customers WHERE id = 2", SHOP)
    rid = pending(client, "DELETE FROM customers WHERE id = 2")
    cli("approvals", "approve", rid, "--key", str(f.work / "alice.key"),
        "--reason", "ticket OPS-42", "--socket", str(f.socket))  # fmt: skip
    out, err = job.communicate(timeout=60)
    assert job.returncode == 0 and b"DELETE 1" in out, err
    code, out = f.run("TRUNCATE audit", SHOP)  # quick-review: times out after 2 s
    assert code != 0 and "timed out" in out, out
    # not in the job cgroup: captured all the same, but nobody to attribute it to
    code, out = f.run("SELECT count(*) FROM customers", {}, job=False, uid=65534)
    assert code == 0 and out.strip() == "1", out
    wait(boot1, "unattributed session", lambda o: o["type"] == "session.end"
         and o["identity"] and o["identity"]["source"] == "unattributed")  # fmt: skip
    # a job still running when the appliance is killed
    hanging = f.psql("SELECT pg_sleep(30)", BILLING)
    wait(boot1, "the sleeping statement", lambda o: o["type"] == "statement"
         and "pg_sleep" in o["data"]["text"])  # fmt: skip
    time.sleep(0.5)  # a checkpoint (every 100 ms) signs it
    f.stop(signal.SIGKILL)
    hanging.communicate(timeout=60)
    boot2 = f.boot(2)
    code, out = f.run("SELECT count(*) FROM customers", BILLING)
    assert code == 0, out
    wait(boot2, "the session's end", lambda o: o["type"] == "session.end")
    f.stop()


def report(f: Fleet, out: Path, source: Path | None = None) -> subprocess.CompletedProcess[str]:
    keys = [a for n in (1, 2) for a in ("--vkey", str(f.work / f"boot-{n}.vkey"))]
    return cli("report", "--source", str(source or f.logs), "--out", str(out), *keys, check=False)


@pytest.fixture(scope="module")
def package(fleet: Fleet) -> Path:
    out = fleet.work / "package"
    r = report(fleet, out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "VERIFIED" in r.stdout and "reading logs" in r.stderr  # progress on stderr
    return out


def recount(f: Fleet) -> dict[str, Any]:
    """The facts, counted from the raw entries of both logs (not through the report)."""
    all_entries = [o for n in (1, 2) for o in entries(f.logs / f"runner-1/boot-{n}")]
    starts = {(o["origin"], o["session"]): o for o in all_entries if o["type"] == "session.start"}
    masked: Counter[str] = Counter()
    to_job: Counter[str] = Counter()
    for o in all_entries:
        d = o["data"]
        if o["type"] == "response":
            result = d.get("result") or {}
            masked.update((result.get("masking") or {}).get("detectors", {}))
            masked.update((d.get("masking") or {}).get("detectors", {}))
        elif o["type"] == "statement":
            masked.update((d.get("masking") or {}).get("detectors", {}))
        elif o["type"] == "masking.applied" and d["where"] == "rows sent to the job":
            to_job.update(d["detectors"])
    types = Counter(o["type"] for o in all_entries)
    return {
        "entries": len(all_entries),
        "sessions": len({(o["origin"], o["session"]) for o in all_entries if o["session"]}),
        "statements": types["statement"],
        "denials": sum(
            o["type"] == "statement" and o["data"]["decision"]["decision"] == "deny"
            for o in all_entries
        ),
        "holds": types["approval.requested"],
        "outcomes": {"granted": types["approval.granted"], "timed out": types["approval.timeout"]},
        "unattributed": sum(s["identity"]["source"] == "unattributed" for s in starts.values()),
        "unended": len(
            set(starts)
            - {(o["origin"], o["session"]) for o in all_entries if o["type"] == "session.end"}
        ),
        "masked": dict(masked),
        "to_job": dict(to_job),
    }


def test_the_counts_match_the_ledger(fleet: Fleet, package: Path) -> None:
    want = recount(fleet)
    r = json.loads((package / "report.json").read_text())
    t = r["totals"]
    assert r["status"] == "verified" and t["logs"] == t["logs_verified"] == 2
    assert t["entries"] == want["entries"]
    assert t["sessions"] == want["sessions"] == 7
    assert t["statements"] == want["statements"]
    assert t["denials"] == want["denials"] == 1
    assert t["holds"] == want["holds"] == 2
    assert t["holds_by_outcome"] == want["outcomes"] == {"granted": 1, "timed out": 1}
    assert t["unattributed_sessions"] == want["unattributed"] == 1
    assert r["masked_by_kind"] == want["masked"]
    assert r["masked_to_job_by_kind"] == want["to_job"]
    assert {"card", "ssn", "email"} <= set(want["masked"])
    identities = {g["name"]: len(g["sessions"]) for g in r["identities"]}
    assert identities == {
        "github acme/shop · deploy / migrate": 4,
        "github acme/billing · deploy / backfill": 2,
        "unattributed": 1,
    }
    [approved] = [h for h in r["holds"] if h["outcome"] == "granted"]
    assert approved["approver"] == "alice" and approved["reason"] == "ticket OPS-42"
    assert approved["note"].startswith("appliance/approval-decision/v1\n")
    assert (package / approved["proof"]).is_file()
    gaps = Counter(g["kind"] for g in r["gaps"])
    assert gaps["unclean end"] == 1  # boot 1 has no appliance.stop
    assert gaps["session without end"] == want["unended"] >= 1  # the killed pg_sleep
    assert gaps["unattributed flow"] == 1
    privileged = [s for s in r["sessions"] if s["privileged"]]
    assert {c for s in privileged for c in s["privileged"]} >= {"drop", "delete", "truncate"}


def test_every_section_renders_in_chromium(package: Path) -> None:
    index = texts_by_id(dump_dom(package / "index.html"))
    assert index["status"].startswith("VERIFIED: all 2 log(s)")
    for section in ("summary", "verification", "logs", "totals", "charts", "soc2"):
        assert index.get(section), section
    assert (
        "lab.test/runner-1/boot-1" in index["logs"] and "lab.test/runner-1/boot-2" in index["logs"]
    )
    assert "Denials and holds per day" in index["charts"]
    for criterion in ("CC6.1", "CC6.2", "CC6.3", "CC6.6", "CC7.2", "CC8.1"):
        assert criterion in index["soc2"]
    decisions = texts_by_id(dump_dom(package / "decisions.html"))
    assert "DROP TABLE customers" in decisions["denials"] and "no-drops" in decisions["denials"]
    assert "DELETE FROM customers WHERE id = 2" in decisions["holds"]
    assert (
        "ticket OPS-42" in decisions["holds"]
        and "appliance/approval-decision/v1" in decisions["holds"]
    )
    assert "timed out" in decisions["holds"]
    identities = texts_by_id(dump_dom(package / "identities.html"))["identities"]
    assert "github acme/shop · deploy / migrate" in identities and "unattributed" in identities
    assert "orders-db" in texts_by_id(dump_dom(package / "targets.html"))["targets"]
    privileged = texts_by_id(dump_dom(package / "privileged.html"))["privileged"]
    assert "drop" in privileged and "delete" in privileged
    gaps = texts_by_id(dump_dom(package / "gaps.html"))["gaps"]
    assert "unclean end" in gaps and "session without end" in gaps and "unattributed flow" in gaps
    verify = texts_by_id(dump_dom(package / "verify.html"))["verify"]
    assert "python3 check_evidence.py" in verify and "openssl pkeyutl -verify" in verify
    r = json.loads((package / "report.json").read_text())
    query = next(s for s in r["sessions"] if s["masked"] and s["identity"].endswith("migrate"))
    transcript = texts_by_id(dump_dom(package / query["page"]))["transcript"]
    assert "SELECT name, email, card, ssn FROM customers" in transcript
    assert "[REDACTED:CARD]" in transcript and "4111" not in transcript


def test_the_package_checks_out_and_is_the_same_bytes_again(fleet: Fleet, package: Path) -> None:
    r = subprocess.run(
        ["/usr/bin/python3", "-I", "check_evidence.py", "."],
        cwd=package, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0 and "FAIL" not in r.stdout, r.stdout + r.stderr
    again = fleet.work / "package-again"
    r2 = report(fleet, again)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert (again / "SHA256SUMS").read_bytes() == (package / "SHA256SUMS").read_bytes()


def test_a_rewritten_entry_is_on_the_first_page(fleet: Fleet, tmp_path: Path) -> None:
    copy = tmp_path / "logs"
    shutil.copytree(fleet.logs, copy)
    tamper_denial(copy / "runner-1" / "boot-1")
    r = report(fleet, tmp_path / "out", source=copy)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "TAMPERING DETECTED in lab.test/runner-1/boot-1" in r.stderr
    index = texts_by_id(dump_dom(tmp_path / "out" / "index.html"))
    assert index["status"].startswith("TAMPERING DETECTED: 1 of 2 log(s)")
    assert "do not hash to its root" in index["verification"]
