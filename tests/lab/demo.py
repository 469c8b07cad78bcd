"""`make demo`: a newcomer's first contact with the appliance, in the lab, without prompts.

It builds the lab (a runner namespace playing the CI runner VM, a target namespace playing
the production database host), starts a real PostgreSQL with a small table of customers,
runs an unmodified job (psql) against the target's real address, shows what happened, then
tears the lab down and says so. What the demo records is left under ``demo-output/``.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from tests.lab.lab import Lab, PgServer

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "demo-output"

CUSTOMERS = """
CREATE TABLE customers (
    id      serial PRIMARY KEY,
    name    text NOT NULL,
    email   text NOT NULL,
    card    text NOT NULL,
    ssn     text NOT NULL
);
INSERT INTO customers (name, email, card, ssn) VALUES
    ('Ada Lovelace',   'ada@example.com',    '4111 1111 1111 1111', '123-45-6789'),
    ('Alan Turing',    'alan@example.org',   '5500-0000-0000-0004', '219-09-9999'),
    ('Grace Hopper',   'grace@example.net',  '340000000000009',     '078-05-1120'),
    ('Edsger Dijkstra','edsger@example.com', '6011000000000004',    '457-55-5462');
ALTER TABLE customers OWNER TO app;
"""

BOLD, DIM, GREEN, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"
if not sys.stdout.isatty():
    BOLD = DIM = GREEN = RED = RESET = ""


def step(title: str) -> None:
    print(f"\n{BOLD}== {title}{RESET}", flush=True)


def show(text: str, indent: str = "   ") -> None:
    for line in text.rstrip("\n").splitlines():
        print(f"{indent}{line}")


def job_psql(lab: Lab, pg: PgServer, sql: str, *, password: str | None = None) -> tuple[int, str]:
    env = {
        "GITHUB_REPOSITORY": "acme/shop",
        "GITHUB_WORKFLOW": "nightly-report",
        "GITHUB_JOB": "export",
    }
    if password is not None:
        env["PGPASSWORD"] = password
    r = lab.job(["psql", "-X", "-h", pg.ipv4, "-U", "app", "-d", "app", "-c", sql], env=env)
    return r.returncode, (r.stdout + r.stderr)


def main() -> int:
    started = time.monotonic()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    step(
        "Building the lab: a runner namespace (the CI VM) and a target namespace (the database host)"
    )
    with Lab(n_targets=1) as lab:
        target = lab.targets[0]
        print(f"   runner  {lab.runner.name}: {target.runner_ipv4}")
        print(f"   target  {target.name}: {target.ipv4} / {target.ipv6}  (no route leaves the lab)")
        print(f"   job cgroup {lab.job_cgroup}")

        step("Starting PostgreSQL 15 on the target, with a table of customers")
        pg = lab.start_postgres(0)
        pg.admin_sql(CUSTOMERS, database="app")
        print(
            f"   postgres listening on {pg.ipv4}:5432, role 'app' authenticates with SCRAM-SHA-256"
        )
        print("   its password lives in a root-only file: the job (uid nobody) cannot read it")
        r = lab.job(["cat", str(pg.password_file())])
        show(f"job$ cat {pg.password_file()}\n{r.stderr.strip()}", indent="   ")

        step("The job runs psql against the database's real address, as CI jobs do today")
        code, out = job_psql(lab, pg, "SELECT name, email, card, ssn FROM customers ORDER BY id")
        show(
            f"job$ psql -h {pg.ipv4} -U app -d app -c 'SELECT name, email, card, ssn FROM customers'"
        )
        show(out)
        if code != 0:
            print(
                f"   {GREEN}refused{RESET}: without the service account's password the job gets nothing"
            )
        code, out = job_psql(
            lab,
            pg,
            "SELECT name, email, card, ssn FROM customers ORDER BY id",
            password=pg.passwords["app"],
        )
        print(
            f"\n   {RED}Today{RESET}: a job that holds the long-lived password reads every card number,"
        )
        print("   and nothing records which job ran what:")
        show(out)
        (OUT / "README.txt").write_text(
            "This directory holds what `make demo` recorded.\n"
            "The appliance's ledger and verifier key appear here as the capabilities land.\n"
        )
    step("Lab torn down: namespaces, cgroup and server removed")
    print(
        f"   outputs kept in {OUT.relative_to(ROOT)}/ ; demo took {time.monotonic() - started:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
