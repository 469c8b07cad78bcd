"""sysbench through the appliance, compared (benchmark, not a test; needs root: it builds a lab).

In one lab (Debian's MariaDB in a target namespace, Debian's sysbench 1.0 as the job in the
runner namespace), sysbench at 8 threads runs the same workloads against:

- ``direct``: the server itself (sysbench logs in with the password);
- ``appliance``: ``appliance run`` with everything on: decoding both ways, policy per
  statement, recording every statement and result set to the signed ledger (rows decoded and
  masked by the ledger writer), default masking (uvloop, as in production);
- ``appliance-norows``: the same with ``ledger.record_rows: false`` (what result blobs cost);
- ``relay``/``relay-uvloop``: a bare Python asyncio TCP relay (bench_pgbench's: the floor for
  any Python proxy), with the standard event loop and with uvloop.

ProxySQL, the usual C proxy for MySQL, is not packaged by Debian 12 (nor is MySQL Router),
and nothing is downloaded here: the relay stands for "a proxy that does not decode".

Workloads: ``oltp_read_only`` and ``oltp_read_write``, each with server-side prepared
statements (``--db-ps-mode=auto``: COM_STMT_EXECUTE, binary rows) and without (``disable``:
COM_QUERY, text rows); 4 tables of 10,000 rows; ``--time $SYSBENCH_SECONDS`` (default 15).
The ratios to ``direct``, all measured in one run, are printed; nothing is asserted about
speed. ``SYSBENCH_ONLY=appliance,direct`` restricts the setups. Run with ``make bench`` or
``pytest tests/bench/bench_mysql.py -m bench -s``.

``SYSBENCH_BASELINE=/path/to/.venv/bin/appliance`` (another build, e.g. a worktree of an
earlier commit) runs :func:`test_sysbench_against_a_baseline_build`: both builds at once in
one lab, measured in alternation (``SYSBENCH_ROUNDS``, default 3), medians compared.

The numbers are noisy on a shared 2-core machine: sysbench, MariaDB, the appliance and its
ledger writer share two cores (and other people's work), so a ratio says more than a tps.

Where the time goes (first run, load average 10-18 from other work on the 2 cores; ratios
to direct): ``appliance`` 0.01x, ``appliance-norows`` 0.09-0.19x, the bare relay 0.38-0.79x.

- With result rows recorded, the ledger writer process is the bottleneck (py-spy: busy all
  the time, the event loop mostly idle waiting for it): it masks every value of every row,
  and sysbench's ``c`` and ``pad`` columns are runs of eleven-digit groups that the card,
  SSN and phone detectors all have to examine (about 240 us per row under that load, 8 us
  without a masker). oltp_read_only reads some 300 rows per transaction. The card detector
  no longer searches groups no card can start at (4x less on these rows). Since then
  (issue 19, masking): the card and phone pre-filters want a whole stretch of digits of
  their lengths (13-19; 7-15, or the configured regions' lengths), which groups of eleven
  digits never are, and the writer pre-filters a whole run of rows at once
  (``LedgerRows.rows``): these rows are clean after one pass (about 5 us a row left,
  mostly decoding; a second run, load average 10-13: ``appliance`` 0.04-0.09x,
  ``appliance-norows`` 0.03-0.24x -- too noisy to say more than "no longer 0.01x").
- Without rows, prepared statements (``ps=auto``) are classified once per PREPARE;
  unprepared ones (``ps=disable``) carry their values in the text, so every statement was a
  new text for sqlglot (pure Python, about 1 ms per statement under that load): half the
  tps again.

Session 14 (2026-12-07, quiet machine, 15 s): ``appliance`` 0.12-0.18x, ``appliance-norows``
0.14-0.31x, the bare uvloop relay 0.49-0.54x. MySQL's hot path is compiled (mypyc); results
up to 64 KiB are inline in their entry, not blob files; text statements that differ only in
integers share one remembered allow (their shape), so sqlglot parses each shape once. Still
the ledger writer's main cost: the phone number's pre-filter patterns scan the digit groups
of ``c`` and ``pad`` at about 50 MB/s (45% of its time). Read-write pays an fsync per
change: MySQL writes each ahead on its own, even inside a transaction.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.bench.bench_pgbench import ratio_table, relay
from tests.lab.lab import Lab, MariaServer
from tests.lab.mysql_proxy import MySQLTarget, running_appliance
from tests.lab.proxy import APPLIANCE, HOST

SECONDS = int(os.environ.get("SYSBENCH_SECONDS", "15"))
THREADS = 8
TABLES, TABLE_SIZE = 4, 10_000
WORKLOADS = ["oltp_read_only", "oltp_read_write"]
PS_MODES = ["auto", "disable"]
PORTS = {"appliance": 13501, "appliance-norows": 13502, "relay": 13503, "relay-uvloop": 13504}
SETUPS = ["direct", "appliance", "appliance-norows", "relay", "relay-uvloop"]
POLICY = {
    "rules": [
        {"name": "no-drop", "match": {"classes": ["drop", "truncate"]}, "action": "deny"},
        {"name": "default", "action": "allow"},
    ]
}


def _connection(host: str, port: int, password: str | None) -> list[str]:
    args = [f"--mysql-host={host}", f"--mysql-port={port}", "--mysql-user=app", "--mysql-db=app"]
    if password is not None:
        args.append(f"--mysql-password={password}")
    return args


def sysbench(lab: Lab, workload: str, connection: list[str], *args: str) -> str:
    r = lab.job(
        ["sysbench", workload, "--db-driver=mysql", *connection,
         f"--tables={TABLES}", f"--table-size={TABLE_SIZE}", *args],
        timeout=SECONDS * 4 + 120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


def tps(lab: Lab, workload: str, ps_mode: str, connection: list[str]) -> float:
    out = sysbench(
        lab, workload, connection, f"--threads={THREADS}", f"--time={SECONDS}",
        f"--db-ps-mode={ps_mode}", "--report-interval=0", "run",
    )  # fmt: skip
    m = re.search(r"transactions:\s+\d+\s+\(([\d.]+) per sec\.\)", out)
    assert m, out
    # sysbench stops at any error but the ones it retries (deadlocks and lock waits, which
    # read-write with 8 threads meets now and then, direct or not).
    errors = re.search(r"ignored errors:\s+(\d+)", out)
    if errors and errors.group(1) != "0":
        print(f"  ({errors.group(1)} deadlocks or lock waits retried)", flush=True)
    return float(m.group(1))


def _prepare(lab: Lab, maria: MariaServer) -> None:
    direct = _connection(maria.ipv4, maria.port, maria.passwords["app"])
    sysbench(lab, "oltp_read_write", direct, "prepare")
    maria.admin_sql(
        "ANALYZE TABLE " + ", ".join(f"sbtest{i}" for i in range(1, TABLES + 1)), database="app"
    )


def _appliance_connection(port: int) -> list[str]:
    return _connection(HOST, port, None)  # no password: the appliance logs in upstream


@pytest.mark.bench
@pytest.mark.timeout(3600)
def test_sysbench_ratios(tmp_path: Path) -> None:
    only = set(filter(None, os.environ.get("SYSBENCH_ONLY", "").split(",")))
    results: dict[str, dict[str, float]] = {}

    def run_all(setup: str, connection: list[str]) -> None:
        for workload in WORKLOADS:
            for ps_mode in PS_MODES:
                key = f"{workload} ps={ps_mode}"
                value = results.setdefault(key, {})[setup] = tps(lab, workload, ps_mode, connection)
                print(f"{setup:>16} {key:<28} {value:9.0f} tps", flush=True)

    print("ProxySQL (and MySQL Router) are not packaged by Debian 12: the bare relay stands in")
    with Lab(n_targets=2) as lab:
        maria = lab.start_mariadb(1, tls=False)
        _prepare(lab, maria)
        run_all("direct", _connection(maria.ipv4, maria.port, maria.passwords["app"]))
        for setup, rows in (("appliance", True), ("appliance-norows", False)):
            if only and setup not in only:
                continue
            target = MySQLTarget(
                "db", PORTS[setup], accounts=(("app", "app"),), tls={"mode": "disable"}
            )
            with running_appliance(
                lab, maria, tmp_path / setup, targets=[target], policy=POLICY,
                ledger_options={"checkpoint_interval": "1s", "record_rows": rows},
            ) as app:  # fmt: skip
                run_all(setup, _appliance_connection(PORTS[setup]))
                size = sum(p.stat().st_size for p in app.ledger.rglob("*") if p.is_file())
                print(
                    f"{setup} ledger: {len(app.entries())} entries, {size / 1e6:.0f} MB", flush=True
                )
        for loop in ("asyncio", "uvloop"):
            name = "relay" if loop == "asyncio" else "relay-uvloop"
            if only and name not in only:
                continue
            with relay(lab, (maria.ipv4, maria.port), tmp_path, loop=loop, port=PORTS[name]):
                run_all(name, _connection(HOST, PORTS[name], maria.passwords["app"]))
    ratio_table(
        results,
        setups=SETUPS,
        reference="direct",
        title=f"sysbench, {THREADS} threads, --time {SECONDS}, {TABLES} tables of {TABLE_SIZE} rows",
    )


@pytest.mark.bench
@pytest.mark.timeout(7200)
@pytest.mark.skipif(
    not os.environ.get("SYSBENCH_BASELINE"),
    reason="set SYSBENCH_BASELINE to another build's `appliance` executable to compare with it",
)
def test_sysbench_against_a_baseline_build(tmp_path: Path) -> None:
    """This build against another, in one lab, both running at once and measured in
    alternation: the median tps of each, and the ratio."""
    baseline = os.environ["SYSBENCH_BASELINE"]
    rounds = int(os.environ.get("SYSBENCH_ROUNDS", "3"))
    builds: Mapping[str, tuple[str, int]] = {
        "this": (APPLIANCE, 13511),
        "baseline": (baseline, 13512),
    }
    samples: dict[str, dict[str, list[float]]] = {}
    with Lab(n_targets=2) as lab:
        maria = lab.start_mariadb(1, tls=False)
        _prepare(lab, maria)
        with contextlib.ExitStack() as stack:
            for name, (exe, port) in builds.items():
                target = MySQLTarget(
                    "db", port, accounts=(("app", "app"),), tls={"mode": "disable"}
                )
                stack.enter_context(
                    running_appliance(
                        lab, maria, tmp_path / name, targets=[target], policy=POLICY,
                        ledger_options={"checkpoint_interval": "1s"}, executable=exe,
                    )
                )  # fmt: skip
            for _ in range(rounds):
                for workload in WORKLOADS:
                    for ps_mode in PS_MODES:
                        key = f"{workload} ps={ps_mode}"
                        for name, (_, port) in builds.items():
                            value = tps(lab, workload, ps_mode, _appliance_connection(port))
                            samples.setdefault(key, {}).setdefault(name, []).append(value)
                            print(f"{name:>9} {key:<28} {value:9.0f} tps", flush=True)
    medians = {k: {n: statistics.median(v) for n, v in row.items()} for k, row in samples.items()}
    ratio_table(
        medians,
        setups=["baseline", "this"],
        reference="baseline",
        title=f"sysbench, {THREADS} threads, --time {SECONDS}, median of {rounds}",
    )
