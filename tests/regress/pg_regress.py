"""PostgreSQL's own regression suite, direct and through the appliance (``make pg-regress``).

Issue 12 asks that the server's installcheck tests give the same pass/fail set through the
appliance, with a policy that allows everything, as they give direct, or that each
difference be explained. This driver:

1. builds a lab with two target hosts, each running a fresh PostgreSQL 15 from the Debian
   packages (the same server for both runs, so neither run sees what the other left);
   ``pg_hba.conf`` trusts the lab's addresses, as a local installcheck does;
2. runs Debian's ``pg_regress`` (postgresql-client-15) over the regression schedule of the
   server's own source package (fetched by ``scripts/pg-regress-setup.sh``) from the runner
   namespace, as the server's ``postgres`` user: once straight at the first server, once at
   an ``appliance run`` listener in front of the second, with an allow-everything policy
   (a catch-all ``allow`` rule and one for class ``unknown``) and every record on;
3. prints both pass/fail sets and their difference, writes the diff between the two runs'
   outputs of each differing test under ``build/pg-regress/<run>/differences/``, and checks
   the appliance's ledger with ``appliance ledger verify``.

It exits 0 when both runs completed (whatever they found), 1 when the ledger does not verify,
2 when a run could not be carried out. This is not part of ``make test``: it takes minutes
(the README says how long) and its result is a report, not a verdict.
"""

from __future__ import annotations

import difflib
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.lab import Lab, PgServer
from tests.lab.proxy import TargetSpec, running_appliance

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "pg-regress"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_REGRESS = Path("/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress")
LISTEN_PORT = 6543
RUN_TIMEOUT = 45 * 60  # seconds per run; a run still going then is stopped and reported
KEEP_RUNS = 3  # earlier runs' outputs (some 80 MB each) are removed

ALLOW_EVERYTHING = {
    "mode": "enforce",
    "rules": [
        # class `unknown` (DO, CALL, what the parser cannot read) is allowed only by a rule
        # that names it (appliance/policy/_rules.py)
        {"name": "allow-unknown", "match": {"classes": ["unknown"]}, "action": "allow"},
        {"name": "allow-everything", "action": "allow"},
    ],
}

# "test name ... ok 12 ms" (serial) or "     name ... FAILED 12 ms" (in a parallel group)
_RESULT = re.compile(r"^(?:test\s+|\s+)(\S+)\s+\.\.\.\s+(ok|FAILED|failed \(ignored\))")


@dataclass
class SuiteRun:
    """One pg_regress run: each test's outcome, in schedule order."""

    name: str
    outdir: Path
    results: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    returncode: int | None = None
    timed_out: bool = False

    @property
    def passed(self) -> set[str]:
        return {t for t, r in self.results.items() if r == "ok"}

    @property
    def failed(self) -> set[str]:
        return {t for t, r in self.results.items() if r != "ok"}


def source_tree() -> Path:
    """The regression suite of the installed server's version (see pg-regress-setup.sh)."""
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "postgresql-15"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    regress = BUILD / f"src-{version}" / "src" / "test" / "regress"
    if not (regress / "regress.so").is_file():
        raise SystemExit(f"{regress}/regress.so missing: run scripts/pg-regress-setup.sh")
    return regress


def trust_the_lab(pg: PgServer) -> None:
    """pg_hba.conf as for a local installcheck: the lab's addresses are trusted."""
    (pg.data / "pg_hba.conf").write_text(
        "local all all trust\nhost all all 198.18.0.0/15 trust\nhost all all fd00:a9e::/32 trust\n"
    )
    pg.admin_sql("SELECT pg_reload_conf()")
    # The appliance's account for the superuser needs a secret file; trust never asks for it.
    secret = pg.password_file("postgres")
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("unused: the lab trusts its own addresses\n")


def run_suite(lab: Lab, regress: Path, name: str, outdir: Path, host: str, port: int) -> SuiteRun:
    """Run the parallel schedule against ``host:port`` from the runner namespace."""
    pw = pwd.getpwnam("postgres")
    outdir.mkdir(parents=True)
    os.chown(outdir, pw.pw_uid, pw.pw_gid)  # the server writes results/ (COPY ... TO) too
    argv = [
        str(PG_REGRESS),
        f"--inputdir={regress}",
        f"--bindir={PG_BIN}",
        f"--dlpath={regress}",
        f"--outputdir={outdir}",
        f"--schedule={regress / 'parallel_schedule'}",
        f"--host={host}",
        f"--port={port}",
        "--user=postgres",
        "--max-concurrent-tests=20",
    ]
    env = {"PGSSLMODE": "disable", "PGGSSENCMODE": "disable", "PGCONNECT_TIMEOUT": "20"}
    run = SuiteRun(name, outdir)
    log = outdir.parent / f"{name}.log"
    started = time.monotonic()
    with log.open("wb") as out:
        proc = lab.popen(
            argv,
            uid=pw.pw_uid,
            gid=pw.pw_gid,
            env={**env, "HOME": str(outdir)},
            cwd=outdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            run.returncode = proc.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            run.timed_out = True
            proc.kill()
            proc.wait()
    run.seconds = time.monotonic() - started
    for line in log.read_text(errors="replace").splitlines():
        m = _RESULT.match(line)
        if m:
            run.results[m.group(1)] = "ok" if m.group(2) == "ok" else "failed"
    return run


def scheduled_tests(regress: Path) -> list[str]:
    tests: list[str] = []
    for line in (regress / "parallel_schedule").read_text().splitlines():
        if line.startswith("test:"):
            tests += line.split(":", 1)[1].split()
    return tests


def write_differences(direct: SuiteRun, through: SuiteRun, tests: list[str], out: Path) -> None:
    """For each test whose outcome differs, the diff between the two runs' outputs."""
    out.mkdir(exist_ok=True)
    for test in tests:
        a = direct.outdir / "results" / f"{test}.out"
        b = through.outdir / "results" / f"{test}.out"
        lines = [
            p.read_text(errors="replace").splitlines(keepends=True) if p.exists() else []
            for p in (a, b)
        ]
        diff = difflib.unified_diff(*lines, f"direct/{test}.out", f"appliance/{test}.out")
        (out / f"{test}.diff").write_text("".join(diff))


def report(direct: SuiteRun, through: SuiteRun, tests: list[str], out: Path) -> list[str]:
    """Print the two runs and their difference; return the tests whose outcome differs."""

    def line(run: SuiteRun) -> str:
        missing = [t for t in tests if t not in run.results]
        extra = f", {len(missing)} did not run" if missing else ""
        extra += ", STOPPED after the time limit" if run.timed_out else ""
        return (
            f"{run.name}: {len(run.passed)} passed, {len(run.failed)} failed{extra} "
            f"in {run.seconds:.0f} s"
        )

    print(f"\nPostgreSQL regression suite: {len(tests)} tests in the schedule")
    print(line(direct))
    print(line(through))
    print(f"failed direct: {' '.join(sorted(direct.failed)) or '-'}")
    print(f"failed through the appliance: {' '.join(sorted(through.failed)) or '-'}")
    status = {
        t: (direct.results.get(t, "not run"), through.results.get(t, "not run")) for t in tests
    }
    differ = [t for t in tests if status[t][0] != status[t][1]]
    if not differ:
        print("difference: none (the same pass/fail set)")
        return differ
    write_differences(direct, through, differ, out)
    print(f"difference ({len(differ)} tests; output diffs in {out}):")
    for t in differ:
        print(f"  {t}: direct {status[t][0]}, through the appliance {status[t][1]}")
    return differ


def main() -> int:
    regress = source_tree()
    tests = scheduled_tests(regress)
    out = BUILD / time.strftime("run-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    for old in sorted(BUILD.glob("run-*"))[:-KEEP_RUNS]:
        shutil.rmtree(old)
    started = time.monotonic()
    with Lab(n_targets=2) as lab:
        direct_pg, appliance_pg = lab.start_postgres(0), lab.start_postgres(1)
        for pg in (direct_pg, appliance_pg):
            trust_the_lab(pg)
        print(f"direct run against {direct_pg.ipv4}:{direct_pg.port} ...", flush=True)
        direct = run_suite(lab, regress, "direct", out / "direct", direct_pg.ipv4, direct_pg.port)
        print(f"  {len(direct.passed)} passed, {len(direct.failed)} failed", flush=True)
        spec = TargetSpec("regress", LISTEN_PORT, accounts=[("postgres", "postgres")])
        with running_appliance(
            lab, appliance_pg, out / "appliance-run", targets=[spec], policy=ALLOW_EVERYTHING
        ) as app:
            print(f"through the appliance (127.0.0.1:{LISTEN_PORT}) ...", flush=True)
            through = run_suite(
                lab, regress, "appliance", out / "appliance", "127.0.0.1", LISTEN_PORT
            )
            print(f"  {len(through.passed)} passed, {len(through.failed)} failed", flush=True)
        verified = app.verify()
        entries = len(app.entries())
    report(direct, through, tests, out / "differences")
    print(
        f"appliance ledger: {entries} entries; ledger verify exit {verified.returncode} "
        f"({verified.stdout.strip().splitlines()[-1] if verified.stdout.strip() else verified.stderr.strip()})"
    )
    print(f"outputs in {out}; {time.monotonic() - started:.0f} s in all")
    if direct.timed_out or through.timed_out or not direct.results or not through.results:
        return 2
    return 0 if verified.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
