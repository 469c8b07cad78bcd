"""`make demo`: a newcomer's first contact with the appliance, in the lab, without prompts.

What it shows, in under a minute:

1. the lab: a runner namespace (the CI VM, with a job cgroup) and three target namespaces
   (the production database hosts, running a real PostgreSQL and a real MariaDB, each with
   a table of customers, and a web host running OpenSSH's sshd);
2. the appliance started on the runner (`appliance run`): netfilter capture, eBPF
   attribution, policy, masking, the signed ledger;
3. an unmodified job (psql, no password, the database's real address) captured: its
   identity (pid, exe, cgroup, CI variables) recorded, card numbers masked in its output;
4. a DROP denied by policy; a DELETE held until the demo approver signs an approval;
5. the same for MySQL: the mariadb CLI, unmodified, gets masked rows, MySQL's own error for
   the DROP, and its DELETE runs once alice approves it;
6. SSH: an unmodified ``ssh`` with no key of its own runs a command on a protected host
   (Debian's sshd in a third target namespace): the appliance's per-run CA is trusted
   through the runner's ssh_known_hosts, the appliance logs in with the service account's
   key, the output is recorded masked; an ``rm -rf`` is denied with the rule's reason;
7. fail closed: with the appliance stopped, the job's connection is refused at once;
8. the ledger in the fleet's bucket (a real S3 server, Ceph's radosgw, with versioning and
   Object Lock): shipped while the appliance ran and on stop, verified from the bucket, and
   the auditor's evidence package (`appliance report`) made from the bucket alone;
9. `appliance ledger verify` passing, and the commands to look at the ledger yourself;
10. HTTPS (:mod:`tests.lab.demo_http`, its step 12): an API upload held until alice signs, ``kubectl
   delete`` denied with a Kubernetes Status, the AWS CLI uploading to Ceph's S3 with keys
   the appliance injects.

Everything it records is left under ``demo-output/``; the lab is torn down at the end.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.lab.ceph import CephS3
from tests.lab.lab import Lab, MariaServer, PgServer
from tests.lab.sshd import SshServer, job_etc_ssh, job_ssh_binds

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "demo-output"
APPLIANCE = str(ROOT / ".venv" / "bin" / "appliance")
ORIGIN = "demo.appliance.test/ledger"
BUCKET = "demo-evidence"
JOB_ENV = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REPOSITORY": "acme/shop",
    "GITHUB_WORKFLOW": "nightly-cleanup",
    "GITHUB_JOB": "prune-customers",
    "GITHUB_RUN_ID": "4242",
    "GITHUB_RUN_ATTEMPT": "1",
    "RUNNER_NAME": "runner-7",
}

CUSTOMERS = """
CREATE TABLE customers (
    id      serial PRIMARY KEY,
    name    text NOT NULL,
    email   text NOT NULL,
    card    text NOT NULL,
    ssn     text NOT NULL
);
INSERT INTO customers (name, email, card, ssn) VALUES
    ('Ada Lovelace',    'ada@example.com',    '4111 1111 1111 1111', '536-22-1024'),
    ('Alan Turing',     'alan@example.org',   '5500-0000-0000-0004', '412-68-3397'),
    ('Grace Hopper',    'grace@example.net',  '340000000000009',     '301-45-8823'),
    ('Edsger Dijkstra', 'edsger@example.com', '6011000000000004',    '223-19-4507');
ALTER TABLE customers OWNER TO app;
"""

CUSTOMERS_MYSQL = """
CREATE TABLE customers (
    id      INT AUTO_INCREMENT PRIMARY KEY,
    name    VARCHAR(50) NOT NULL,
    email   VARCHAR(100) NOT NULL,
    card    VARCHAR(30) NOT NULL
);
INSERT INTO customers (name, email, card) VALUES
    ('Ada Lovelace',    'ada@example.com',    '4111 1111 1111 1111'),
    ('Alan Turing',     'alan@example.org',   '5500-0000-0000-0004'),
    ('Edsger Dijkstra', 'edsger@example.com', '6011000000000004');
"""

BOLD, DIM, GREEN, RED, YELLOW, RESET = (
    "\033[1m",
    "\033[2m",
    "\033[32m",
    "\033[31m",
    "\033[33m",
    "\033[0m",
)
if not sys.stdout.isatty():
    BOLD = DIM = GREEN = RED = YELLOW = RESET = ""


def step(title: str) -> None:
    print(f"\n{BOLD}== {title}{RESET}", flush=True)


def show(text: str, indent: str = "   ") -> None:
    for line in text.rstrip("\n").splitlines():
        print(f"{indent}{line}", flush=True)


def appliance(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The appliance CLI on the host (ledger, keys, approvals: files and unix sockets)."""
    r = subprocess.run([APPLIANCE, *args], capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise RuntimeError(f"appliance {' '.join(args)} failed ({r.returncode}): {r.stderr}")
    return r


def psql_argv(pg: PgServer, sql: str) -> list[str]:
    return [
        "psql",
        "-X",
        "-h",
        pg.ipv4,
        "-U",
        "ci",
        "-d",
        "app",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ]


def mariadb_argv(maria: MariaServer, sql: str) -> list[str]:
    """The mariadb CLI as a CI job calls it: the database's real address, a user, no password."""
    return ["mariadb", "-h", maria.ipv4, "-u", "ci", "app", "-e", sql]


def write_config(
    lab: Lab,
    pg: PgServer,
    maria: MariaServer,
    sshd: SshServer,
    vkey_alice: str,
    s3_endpoint: str,
) -> Path:
    config = OUT / "config.yaml"
    config.write_text(
        f"""\
# The appliance's configuration for the demo (see `appliance config check`).
targets:
  - name: orders-db
    protocol: postgres
    addresses: ["{pg.ipv4}:5432", "[{pg.ipv6}]:5432"]
    tls: {{mode: prefer}}
    accounts:
      # The job never sees this secret: a root-only file on the runner.
      - {{name: ci, user: app, secret: {{file: {pg.password_file()}}}}}
  - name: shop-mysql
    protocol: mysql
    addresses: ["{maria.ipv4}:3306"]
    tls: {{mode: prefer}}
    accounts:
      - {{name: ci, user: app, secret: {{file: {maria.password_file()}}}}}
  - name: web
    protocol: ssh
    addresses: ["{sshd.ipv4}:22"]
    known_hosts: {sshd.known_hosts}    # the host's real key, checked by the appliance
    accounts:
      # An SSH private key the job never sees (root-only file on the runner).
      - {{name: deploy, user: deploy, secret: {{file: {sshd.account_key}}}}}
ledger:
  dir: {OUT / "ledger"}
  origin: {ORIGIN}
  key: {{file: {OUT / "keys" / "ledger.key"}}}
  checkpoint_interval: 250ms
  # Shipped to the fleet's bucket as it is signed (a real radosgw in its own namespace).
  ship:
    to: s3://{BUCKET}/fleet
    endpoint_url: {s3_endpoint}
    credentials: {{file: {OUT / "keys" / "s3.credentials"}}}
capture:
  listen_port: 15001
  cgroup: {lab.job_cgroup}    # on a real runner: the cgroup v2 root (the default)
  # Where the appliance runs: its marked traffic passes from there only (on a runner,
  # the systemd unit's cgroup, /system.slice/appliance.service: the default).
  appliance_cgroup: {lab.appliance_cgroup_path}
  # The runner's /etc/ssh/ssh_known_hosts, as the lab's job sees it.
  ssh_known_hosts: {job_etc_ssh(lab) / "ssh_known_hosts"}
policy:
  mode: enforce
  approvals:
    timeout: 2m
    socket: {OUT / "run" / "approvals.sock"}
    approvers:
      - {{name: alice, key: "{vkey_alice}"}}
  rules:
    - name: no-destructive-ddl
      match: {{classes: [drop, truncate]}}
      action: deny
      message: "DROP and TRUNCATE are not allowed from CI"
    - name: deletes-need-a-human
      match: {{classes: [delete]}}
      action: review
      approvers: [alice]
    - name: no-recursive-deletes
      match: {{ssh: {{programs: [rm], arguments: ["-rf *", "-fr *"]}}}}
      action: deny
      message: "recursive deletes on hosts are not allowed from CI"
    - name: default
      action: allow
masking:
  response:
    # Jobs of acme/* get masked values back; the ledger is always masked.
    - {{target: orders-db, identity: {{repository: "acme/*"}}}}
    - {{target: shop-mysql, identity: {{repository: "acme/*"}}}}
"""
    )
    return config


def wait_ready(
    proc: subprocess.Popen[bytes], ready: Path, log: Path, timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists() and ready.read_text().strip():
            return dict(json.loads(ready.read_text()))
        if proc.poll() is not None:
            raise RuntimeError(
                f"the appliance exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.05)
    raise RuntimeError(f"the appliance was not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def ledger_entries(session: str | None = None, type_: str | None = None) -> list[dict[str, Any]]:
    args = ["ledger", "query", "--ledger", str(OUT / "ledger"), "--format", "json"]
    if session:
        args += ["--session", session]
    if type_:
        args += ["--type", type_]
    out = appliance(*args).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_for_session(seen: set[str], timeout: float = 30.0) -> dict[str, Any]:
    """The start entry of the first session not in ``seen`` once it has ended.

    Entries reach the ledger through the batched writer, a moment after the job's
    connection closes, so the demo waits for the session's end entry to be on disk.
    """
    deadline = time.monotonic() + timeout
    while True:
        ended = {e["session"] for e in ledger_entries(type_="session.end")}
        for start in ledger_entries(type_="session.start"):
            if start["session"] in ended and start["session"] not in seen:
                seen.add(start["session"])
                return start
        if time.monotonic() > deadline:
            raise RuntimeError(f"no new session reached the ledger within {timeout}s")
        time.sleep(0.1)


def wait_for_request(socket_path: str) -> dict[str, Any]:
    """The first approval request pending on the appliance's socket."""
    for _ in range(300):
        listed = appliance("approvals", "list", "--socket", socket_path, "--format", "json")
        pending = json.loads(listed.stdout)
        if pending:
            return dict(pending[0])
        time.sleep(0.1)
    raise RuntimeError("no approval request appeared")


def approve(request: dict[str, Any], socket_path: str) -> None:
    print(
        f"   {DIM}alice$ appliance approvals approve {request['id']} --key alice.key --reason 'ticket OPS-42'{RESET}"
    )
    show(
        appliance(
            "approvals", "approve", request["id"], "--key", str(OUT / "keys" / "alice.key"),
            "--reason", "ticket OPS-42", "--socket", socket_path,
        ).stdout
    )  # fmt: skip


def main() -> int:
    started = time.monotonic()
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "keys").mkdir(parents=True)
    (OUT / "run").mkdir(mode=0o700)

    # The S3 server takes ~13 s to start: it starts now, beside the lab and PostgreSQL.
    s3 = CephS3()
    s3_failed: list[BaseException] = []

    def start_s3() -> None:
        try:
            s3.start()
        except BaseException as exc:  # reported when the demo needs the server
            s3_failed.append(exc)

    s3_thread = threading.Thread(target=start_s3, name="demo-s3")
    s3_thread.start()
    try:
        return _demo(started, s3, s3_thread, s3_failed)
    finally:
        s3_thread.join()
        s3.stop()


def _demo(
    started: float, s3: CephS3, s3_thread: threading.Thread, s3_failed: list[BaseException]
) -> int:
    step("1. The lab: a runner namespace (the CI VM) and target namespaces (the database hosts)")
    with Lab(n_targets=3) as lab:
        target = lab.targets[0]
        print(
            f"   runner  {lab.runner.name}: {target.runner_ipv4}, job cgroup {lab.job_cgroup.name}"
        )
        for t in lab.targets:
            print(f"   target  {t.name}: {t.ipv4} / {t.ipv6}  (no route leaves the lab)")
        # MariaDB starts beside PostgreSQL (a few seconds each; together they overlap).
        started_maria: list[MariaServer | BaseException] = []

        def start_maria() -> None:
            try:
                server = lab.start_mariadb(1, tls=False)
                server.admin_sql(CUSTOMERS_MYSQL, database="app")
                started_maria.append(server)
            except BaseException as exc:  # handed to the main thread
                started_maria.append(exc)

        maria_thread = threading.Thread(target=start_maria, name="start-mariadb")
        maria_thread.start()
        pg = lab.start_postgres(0)
        pg.admin_sql(CUSTOMERS, database="app")
        maria_thread.join()
        if not isinstance(started_maria[0], MariaServer):
            raise RuntimeError(f"MariaDB did not start: {started_maria[0]}")
        maria = started_maria[0]
        print(f"   PostgreSQL 15 on {pg.ipv4}:5432 with a table of customers (cards, SSNs, emails)")
        print(f"   MariaDB on {maria.ipv4}:3306 with a table of customers too")
        print(
            "   their accounts 'app' (SCRAM-SHA-256, mysql_native_password) have passwords in "
            "root-only files the job cannot read"
        )
        sshd = SshServer(lab, lab.targets[2])
        lab._servers.append(sshd)  # stopped with the lab
        sshd.start()
        sshd.as_user(
            ["sh", "-c", "printf 'order 1017 paid with 4000 0566 5566 5556\\n' > orders.log"]
        )
        print(
            f"   OpenSSH (Debian's sshd) on {sshd.ipv4}:22, user 'deploy'; the key is root-only too"
        )

        step("2. Keys and config: a ledger signing key, an approver key for alice")
        show(
            appliance(
                "keys", "generate", "--name", ORIGIN, "--out", str(OUT / "keys" / "ledger")
            ).stdout
        )
        show(
            appliance(
                "keys", "generate", "--approver", "alice", "--out", str(OUT / "keys" / "alice")
            ).stdout
        )
        vkey_alice = (OUT / "keys" / "alice.vkey").read_text().strip()
        t_wait = time.monotonic()
        s3_thread.join()
        if s3_failed:
            raise s3_failed[0]
        waited = time.monotonic() - t_wait
        s3.create_bucket(BUCKET, default_retention=("COMPLIANCE", 1))
        s3_endpoint = s3.link(lab.runner.name)
        s3.root.shared_file(OUT / "keys" / "s3.credentials")
        print(
            f"   the fleet's bucket: s3://{BUCKET} on Ceph radosgw at {s3_endpoint} (versioning, "
            f"Object Lock COMPLIANCE 1 day); up in {s3.started_in:.1f}s, the demo waited "
            f"{waited:.1f}s for it"
        )
        config = write_config(lab, pg, maria, sshd, vkey_alice, s3_endpoint)
        show(appliance("config", "check", str(config)).stdout)

        step("3. The appliance starts on the runner: capture rules, eBPF attribution, ledger")
        log = OUT / "appliance.log"
        ready = OUT / "run" / "ready.json"
        daemon = lab.popen(
            [APPLIANCE, "run", "--config", str(config), "--ready-file", str(ready)],
            cgroup=lab.appliance_cgroup,
            stdout=subprocess.DEVNULL,
            stderr=open(log, "wb"),  # noqa: SIM115 - closed when the process ends
        )
        try:
            info = wait_ready(daemon, ready, log)
            startup = next(e for e in ledger_entries(type_="appliance.ready"))["data"]["startup_ms"]
            print(
                f"   ready in {startup} ms, listening on {', '.join(info['listening'])} (pid {info['pid']})"
            )
            status = lab.popen(
                [APPLIANCE, "capture", "status", "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            out, _ = status.communicate(timeout=30)
            show("\n".join(out.decode().splitlines()[:8]))

            step(
                "4. An unmodified job runs psql against the database's real address, with no password"
            )
            print(
                f"   {DIM}job$ psql -h {pg.ipv4} -U ci -d app -c 'SELECT name, email, card, ssn FROM customers'{RESET}"
            )
            r = lab.job(
                psql_argv(pg, "SELECT name, email, card, ssn FROM customers ORDER BY id"),
                env=JOB_ENV,
            )
            show(r.stdout + r.stderr)
            seen: set[str] = set()
            session = wait_for_session(seen)
            ident = session["identity"]
            ci = ident.get("ci") or {}
            print(
                f"   {GREEN}captured{RESET}: session {session['session']} of target {session['target']}, "
                f"service account '{session['account']}' injected by the appliance"
            )
            print(
                f"   job identity ({ident.get('how')}): pid {ident.get('pid')} uid {ident.get('uid')} "
                f"exe {ident.get('exe')} cgroup {ident.get('cgroup')}"
            )
            print(
                f"   CI: {ci.get('provider')} {ci.get('repository')} workflow '{ci.get('workflow')}' "
                f"job '{ci.get('job')}' run {ci.get('run_id')}"
            )
            print(
                "   card numbers and SSNs were masked in the job's output (policy: response masking for acme/*)"
            )

            step("5. A DROP is denied by policy, with the protocol's own error")
            print(f"   {DIM}job$ psql ... -c 'DROP TABLE customers'{RESET}")
            r = lab.job(psql_argv(pg, "DROP TABLE customers"), env=JOB_ENV)
            show(r.stderr)
            print(f"   {RED}denied{RESET} (exit {r.returncode}); the table is still there")
            wait_for_session(seen)
            migration = (
                "BEGIN;\nCREATE TABLE customers_v2 (LIKE customers);\n"
                "INSERT INTO customers_v2 SELECT * FROM customers;\n"
                "DROP TABLE customers;\nCOMMIT;\n"
            )
            print(f"   {DIM}job$ psql ... <<EOF  (a migration, one statement at a time){RESET}")
            show(migration, indent="        ")
            argv = ["psql", "-X", "-h", pg.ipv4, "-U", "ci", "-d", "app", "-f", "-"]
            r = lab.job(argv, env=JOB_ENV, input=migration)
            show(r.stdout + r.stderr)
            left = pg.admin_sql("select count(*) from pg_tables where tablename = 'customers_v2'")
            if left.strip() != "0" or "ROLLBACK" not in r.stdout:
                raise RuntimeError(f"the denied migration was not rolled back: {r.stdout}")
            print(
                f"   {RED}denied{RESET} inside the migration: like a server error, the denial "
                "aborted the transaction; COMMIT rolled back, nothing was half-applied"
            )
            wait_for_session(seen)

            step("6. A DELETE is held until a named approver signs off")
            print(
                f"   {DIM}job$ psql ... -c \"DELETE FROM customers WHERE name = 'Edsger Dijkstra'\"{RESET}"
            )
            job = lab.popen(
                psql_argv(pg, "DELETE FROM customers WHERE name = 'Edsger Dijkstra'"),
                job=True,
                env=JOB_ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            socket_path = str(OUT / "run" / "approvals.sock")
            request = wait_for_request(socket_path)
            print(f"   {YELLOW}held{RESET}: the job waits; `appliance approvals list` shows:")
            show(appliance("approvals", "list", "--socket", socket_path).stdout, indent="      ")
            approve(request, socket_path)
            out, err = job.communicate(timeout=60)
            show((out + err).decode())
            print(
                f"   {GREEN}approved and run{RESET}: the signed decision is stored verbatim in the ledger"
            )
            delete_session = wait_for_session(seen)["session"]

            step("7. MySQL too: the mariadb CLI, unmodified, against MariaDB's real address")
            mysql_started = time.monotonic()
            sql = "SELECT name, email, card FROM customers ORDER BY id"
            print(f"   {DIM}job$ mariadb -h {maria.ipv4} -u ci app -e '{sql}'{RESET}")
            r = lab.job(mariadb_argv(maria, sql), env=JOB_ENV)
            show(r.stdout + r.stderr)
            if r.returncode != 0 or "[REDACTED:CARD]" not in r.stdout:
                raise RuntimeError(f"the mariadb job did not get masked rows: {r.stderr}")
            print(
                f"   {GREEN}captured{RESET} and masked: the same policy and masking as PostgreSQL's"
            )
            print(f"   {DIM}job$ mariadb ... -e 'DROP TABLE customers'{RESET}")
            r = lab.job(mariadb_argv(maria, "DROP TABLE customers"), env=JOB_ENV)
            show(r.stderr)
            print(f"   {RED}denied{RESET} (exit {r.returncode}) with MySQL's own ERR 1142")
            delete = "DELETE FROM customers WHERE name = 'Edsger Dijkstra'"
            print(f'   {DIM}job$ mariadb ... -e "{delete}; SELECT ROW_COUNT()"{RESET}')
            job = lab.popen(
                mariadb_argv(maria, f"{delete}; SELECT ROW_COUNT() AS deleted"),
                job=True,
                env=JOB_ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            request = wait_for_request(socket_path)
            print(f"   {YELLOW}held{RESET}: {request['statement']} (target {request['target']})")
            approve(request, socket_path)
            out, err = job.communicate(timeout=60)
            show((out + err).decode())
            left = maria.admin_sql("SELECT COUNT(*) FROM customers", database="app").strip()
            if job.returncode != 0 or left != "2":
                raise RuntimeError(f"the approved DELETE did not run: {err.decode()}")
            print(
                f"   {GREEN}approved and run{RESET}; the MySQL step took "
                f"{time.monotonic() - mysql_started:.1f}s"
            )

            step("8. SSH: the job runs commands on a protected host, with no key of its own")
            ssh = ["ssh", "-o", "BatchMode=yes", f"deploy@{sshd.ipv4}"]
            # The sessions so far (MySQL's step waits for none of them) are not the SSH ones.
            seen.update(e["session"] for e in ledger_entries(type_="session.start"))
            print(f"   {DIM}job$ ssh deploy@{sshd.ipv4} 'hostname; tail -1 orders.log'{RESET}")
            r = lab.job(
                [*ssh, "hostname; tail -1 orders.log"], env=JOB_ENV, binds=job_ssh_binds(lab)
            )
            show(r.stdout + r.stderr)
            ssh_session = wait_for_session(seen)
            login = ledger_entries(ssh_session["session"], "session.ready")[0]
            print(
                f"   {GREEN}captured{RESET}: the host certificate came from the appliance's per-run CA "
                "(trusted through the runner's ssh_known_hosts); the appliance logged in as "
                f"'{login['account']}' with a key the job never held"
            )
            print(f"   {DIM}job$ ssh deploy@{sshd.ipv4} 'rm -rf /srv/app'{RESET}")
            r = lab.job([*ssh, "rm -rf /srv/app"], env=JOB_ENV, binds=job_ssh_binds(lab))
            show(r.stderr)
            print(
                f"   {RED}denied{RESET} (exit {r.returncode}): the command never reached the host"
            )
            wait_for_session(seen)
            print(
                "   The first SSH session, replayed from the ledger (output masked before it was stored):"
            )
            show(
                appliance(
                    "ledger", "replay", "--ledger", str(OUT / "ledger"), ssh_session["session"]
                ).stdout,
                indent="      ",
            )
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()

        step("9. Fail closed: the appliance is stopped, its rules stay; the job is refused at once")
        t0 = time.monotonic()
        r = lab.job(psql_argv(pg, "SELECT 1"), env={**JOB_ENV, "PGCONNECT_TIMEOUT": "10"})
        elapsed = time.monotonic() - t0
        show(r.stderr)
        print(f"   {RED}refused{RESET} in {elapsed:.2f}s: no appliance, no path to the database")
        remove = lab.popen(
            [APPLIANCE, "capture", "remove", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out, _ = remove.communicate(timeout=30)
        print("   (only `appliance capture remove` removes the rules:)")
        show(out.decode(), indent="      ")

        step("10. The ledger in the fleet's bucket: shipped as it was signed, and on stop")
        auditor, endpoint = s3.client_namespace("auditor")
        print(
            f"   {DIM}auditor$ appliance ledger verify --source s3://{BUCKET}/fleet --vkey ledger.vkey{RESET}"
        )
        print(f"   {DIM}(from a machine that reaches only the bucket, never the runner){RESET}")
        r = subprocess.run(
            ["ip", "netns", "exec", auditor, APPLIANCE, "ledger", "verify", "--source",
             f"s3://{BUCKET}/fleet", "--endpoint-url", endpoint,
             "--vkey", str(OUT / "keys" / "ledger.vkey"), "--cache", str(OUT / "bucket-cache")],
            capture_output=True, text=True, timeout=120, env={**s3.root.env(), "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        show(r.stdout + r.stderr)
        if r.returncode != 0:
            raise RuntimeError("the ledger in the bucket did not verify")
        same = (
            OUT / "bucket-cache" / "demo.appliance.test%2Fledger" / "entries.log"
        ).read_bytes() == (OUT / "ledger" / "entries.log").read_bytes()
        print(
            f"   {GREEN}verified from the bucket{RESET}: every object written once, under retention; "
            f"the bucket's copy {'is' if same else 'is NOT'} the runner's ledger, byte for byte"
        )
        print(
            f"\n   {DIM}auditor$ appliance report --source s3://{BUCKET}/fleet --vkey ledger.vkey --out report{RESET}"
        )
        r = subprocess.run(
            ["ip", "netns", "exec", auditor, APPLIANCE, "report", "--source",
             f"s3://{BUCKET}/fleet", "--endpoint-url", endpoint, "--no-progress",
             "--vkey", str(OUT / "keys" / "ledger.vkey"), "--cache", str(OUT / "bucket-cache"),
             "--out", str(OUT / "report")],
            capture_output=True, text=True, timeout=120, env={**s3.root.env(), "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        show(r.stdout + r.stderr)
        if r.returncode != 0:
            raise RuntimeError("the evidence package could not be made from the bucket")
        print(
            f"   the SOC 2 evidence package, from the bucket alone: {OUT.relative_to(ROOT)}/report/"
            "index.html (static HTML, report.json, signed checkpoints, proofs, check_evidence.py)"
        )

    step("11. The lab is torn down (namespaces, cgroup, servers). The evidence remains:")
    verify = appliance(
        "ledger",
        "verify",
        "--ledger",
        str(OUT / "ledger"),
        "--vkey",
        str(OUT / "keys" / "ledger.vkey"),
    )
    show(verify.stdout)
    print("\n   The held-and-approved session, replayed from the ledger:")
    show(
        appliance("ledger", "replay", "--ledger", str(OUT / "ledger"), delete_session).stdout,
        indent="      ",
    )
    rel = OUT.relative_to(ROOT)
    print(f"\n{BOLD}Look for yourself{RESET} (ledger and verifier key are in {rel}/):")
    print(
        f"   .venv/bin/appliance ledger verify --ledger {rel}/ledger --vkey {rel}/keys/ledger.vkey"
    )
    print(
        f"   .venv/bin/appliance ledger query  --ledger {rel}/ledger --type 'policy.*' --type 'approval.*'"
    )
    print(
        f"   .venv/bin/appliance ledger query  --ledger {rel}/ledger --identity ci.repository=acme/shop"
    )
    print(f"   .venv/bin/appliance ledger replay --ledger {rel}/ledger {delete_session}")
    print(
        f"   .venv/bin/appliance ledger export --ledger {rel}/ledger --session {delete_session} --format pcap --out session.pcap"
    )
    from tests.lab import demo_http

    https = OUT / "https"
    https.mkdir()
    demo_http.run(https, vkey_alice, OUT / "keys" / "alice.key")
    print(f"   .venv/bin/appliance ledger query  --ledger {rel}/https/ledger.d --type 'http.*'")
    print(f"\n   demo took {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
