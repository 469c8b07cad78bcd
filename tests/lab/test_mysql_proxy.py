"""MySQL through the appliance, with real MariaDB (Debian's) and real clients as the job.

One lab and one appliance for the module: MariaDB on target 1 (TLS on), three targets
(native password, ed25519, an account that requires TLS upstream). Jobs log in with no
password; what they see is compared with the server's own answers, and the ledger is
checked for what it must and must not hold.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.lab import Lab, MariaServer
from tests.lab.mysql_proxy import MySQLTarget, mariadb, running_appliance
from tests.lab.proxy import Appliance

pytestmark = pytest.mark.lab

PORT, ED_PORT, TLS_PORT, INFILE_PORT = 13306, 13307, 13308, 13309
CARD = "4111111111111111"
POLICY = {
    "mode": "enforce",
    "rules": [
        {"name": "no-drop", "action": "deny", "match": {"classes": ["drop", "truncate"]}},
        {
            "name": "work",
            "action": "allow",
            "match": {
                "classes": [
                    "select",
                    "insert",
                    "update",
                    "delete",
                    "set",
                    "transaction",
                    "ddl",
                    "explain",
                    "prepare",
                    "lock",
                    "alter",
                    "copy_from",
                ]
            },
        },
    ],
}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(n_targets=2) as lab:
        yield lab


@pytest.fixture(scope="module")
def maria(lab: Lab) -> MariaServer:
    server = lab.start_mariadb()
    server.admin_sql(
        "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(50), card VARCHAR(30),"
        " balance DECIMAL(10,2), born DATE, seen DATETIME(3), blob_col BLOB, flag TINYINT UNSIGNED);"
        f"INSERT INTO customers VALUES (1,'Ann','{CARD}',12.50,'1990-01-02','2024-05-06 07:08:09.123',X'00ff',1),"
        "(2,'Bob',NULL,-3.00,NULL,NULL,NULL,255);",
        database="app",
    )
    return server


@pytest.fixture(scope="module")
def app(
    lab: Lab, maria: MariaServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Appliance]:
    targets = [
        MySQLTarget("db", PORT),
        MySQLTarget("ed", ED_PORT, accounts=(("ed", "app_ed"),)),
        MySQLTarget("tls", TLS_PORT, accounts=(("tls", "app_tls"),), tls={"mode": "require"}),
        MySQLTarget("infile", INFILE_PORT, extra={"local_infile": True}),
    ]
    work = lab.dir / "mysql-appliance"
    with running_appliance(lab, maria, work, targets=targets, policy=POLICY) as appliance:
        yield appliance


def _session(app: Appliance, program: str) -> list[dict[str, Any]]:
    return app.wait_session_end(
        lambda d: d.get("protocol") == "mysql" and d.get("application_name") == program
    )


def _session_with(app: Appliance, text: str) -> list[dict[str, Any]]:
    """The entries of the ended session that ran a statement containing ``text``."""

    def sid(entries: list[dict[str, Any]]) -> str | None:
        found = {
            e["session"] for e in entries if e["type"] == "statement" and text in e["data"]["text"]
        }
        ended = {e["session"] for e in entries if e["type"] == "session.end"}
        return next(iter(found & ended), None)

    entries = app.wait_for(lambda es: sid(es) is not None)
    s = sid(entries)
    return [e for e in entries if e["session"] == s]


@pytest.mark.parametrize(
    "port,account", [(PORT, "app"), (ED_PORT, "app_ed"), (TLS_PORT, "app_tls")]
)
def test_cli_logs_in_without_password_as_the_service_account(
    lab: Lab, app: Appliance, port: int, account: str
) -> None:
    marker = f"SELECT CURRENT_USER(), {port}"
    r = lab.job(mariadb(port, "-N", "-e", marker))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == f"{account}@%"
    session = _session_with(app, marker)
    ready = next(e for e in session if e["type"] == "session.ready")
    assert ready["data"]["upstream_tls"] is True
    assert ready["data"]["auth_method"] == (
        "client_ed25519" if account == "app_ed" else "mysql_native_password"
    )


def test_drop_denied_with_mysql_error_inside_transaction(
    lab: Lab, app: Appliance, maria: MariaServer
) -> None:
    script = textwrap.dedent(
        """
        CREATE TABLE IF NOT EXISTS t_tx (a INT);
        START TRANSACTION;
        INSERT INTO t_tx VALUES (1);
        DROP TABLE customers;
        SELECT COUNT(*) FROM t_tx;
        COMMIT;
        """
    )
    r = lab.job(mariadb(PORT, "--force", "-N"), input=script)
    assert "ERROR 1142 (42000)" in r.stderr and "no-drop" in r.stderr
    # Like a server error: the transaction goes on and commits.
    assert r.stdout.split() == ["1"]
    assert maria.admin_sql("SELECT COUNT(*) FROM customers", database="app").strip() == "2"
    assert maria.admin_sql("SELECT COUNT(*) FROM t_tx", database="app").strip() == "1"


def test_unparseable_text_is_denied_by_default(lab: Lab, app: Appliance) -> None:
    r = lab.job(mariadb(PORT, "-e", "FLUSH PRIVILEGES"))
    assert r.returncode == 1 and "ERROR 1142" in r.stderr
    session = _session_with(app, "FLUSH PRIVILEGES")
    decision = next(e for e in session if e["type"] == "policy.decision")["data"]
    assert decision["classes"] == ["unknown"]


def test_pymysql_rows_and_prepared_statements_leave_nothing_raw(lab: Lab, app: Appliance) -> None:
    code = textwrap.dedent(
        f"""
        import pymysql, MySQLdb, mysql.connector
        out = []
        c = pymysql.connect(host="127.0.0.1", port={PORT}, user="ci", database="app", program_name="pymysql-job")
        cur = c.cursor(); cur.execute("SELECT id, name, card, balance, born FROM customers ORDER BY id")
        out.append(repr(cur.fetchall()))
        cur.execute("SELECT card FROM customers WHERE id = %s", (1,)); out.append(cur.fetchone()[0])
        c.close()
        m = MySQLdb.connect(host="127.0.0.1", port={PORT}, user="ci", database="app")
        mc = m.cursor(); mc.execute("SELECT name FROM customers WHERE id=%s", (2,)); out.append(mc.fetchone()[0])
        m.close()
        for pure in (True,):  # the C extension is not in the wheel installed here
            k = mysql.connector.connect(host="127.0.0.1", port={PORT}, user="ci", database="app", use_pure=pure, ssl_disabled=True)
            kc = k.cursor(prepared=True)
            kc.execute("SELECT id, card, balance, born, seen, flag FROM customers WHERE id = ?", (1,))
            out.append(repr(kc.fetchall()))
            k.close()
        print("\\n".join(out))
        """
    )
    r = lab.job([sys.executable, "-c", code], env={"PYTHONPATH": str(Path(__file__).parents[2])})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert (
        CARD in lines[0]
        and "Decimal('12.50')" in lines[0]
        and "datetime.date(1990, 1, 2)" in lines[0]
    )
    assert lines[1] == CARD and lines[2] == "Bob"
    assert CARD in lines[3]  # binary rows (mysql-connector, pure Python)
    time.sleep(1)
    app.wait_for(lambda es: sum(e["type"] == "session.end" for e in es) >= 5)
    assert app.files_containing(CARD.encode()) == []
    executes = [
        e for e in app.entries() if e["type"] == "statement" and e["data"]["protocol"] == "execute"
    ]
    assert executes and all(CARD not in str(e) for e in executes)


def test_duplicate_key_error_is_masked_in_the_ledger(lab: Lab, app: Appliance) -> None:
    r = lab.job(
        mariadb(
            PORT,
            "-e",
            f"CREATE TABLE IF NOT EXISTS cards (c VARCHAR(30) PRIMARY KEY); INSERT IGNORE INTO cards VALUES ('{CARD}'); INSERT INTO cards VALUES ('{CARD}')",
        )
    )
    assert "Duplicate entry" in r.stderr and CARD in r.stderr  # the job sees the server's words
    time.sleep(0.5)
    assert app.files_containing(CARD.encode()) == []


def test_load_data_local_refused_unless_the_target_allows_it(
    lab: Lab, app: Appliance, tmp_path: Path
) -> None:
    data = Path("/tmp") / f"infile-{time.time_ns()}.tsv"
    data.write_text("7\tEve\n")
    data.chmod(0o644)
    try:
        sql = f"CREATE TABLE IF NOT EXISTS li (id INT, name VARCHAR(10)); LOAD DATA LOCAL INFILE '{data}' INTO TABLE li"
        refused = lab.job(mariadb(PORT, "--local-infile=1", "-e", sql))
        assert (refused.returncode == 1 and "4166" in refused.stderr) or "1148" in refused.stderr, (
            refused.stderr
        )
        allowed = lab.job(
            mariadb(INFILE_PORT, "--local-infile=1", "-e", sql + "; SELECT name FROM li")
        )
        assert allowed.returncode == 0, allowed.stderr
        assert "Eve" in allowed.stdout
    finally:
        data.unlink()


def test_kill_query_from_a_second_connection_cancels_only_its_own(lab: Lab, app: Appliance) -> None:
    sleeper = lab.popen(
        mariadb(PORT, "-N", "-e", "SELECT CONNECTION_ID(); SELECT SLEEP(20)"),
        job=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.5)
    sessions = [e for e in app.entries() if e["type"] == "session.start"]
    issued = sessions[-1]["data"]["connection_id"]
    start = time.monotonic()
    killer = lab.job(mariadb(PORT, "-e", f"KILL QUERY {issued}"))
    assert killer.returncode == 0, killer.stderr
    out, err = sleeper.communicate(timeout=30)
    assert time.monotonic() - start < 10
    assert b"1317" in err or out.strip().endswith(
        b"1"
    )  # interrupted (MariaDB returns 1 from SLEEP)
    # An id the appliance never issued (the upstream one, or another job's) is unknown.
    bogus = lab.job(mariadb(PORT, "-e", "KILL QUERY 1"))
    assert "ERROR 1094" in bogus.stderr
    other_job = lab.job(mariadb(PORT, "-e", f"KILL QUERY {issued}"), uid=1000)
    assert other_job.returncode == 1


def test_mariadb_dump_through_the_appliance_is_identical_to_a_direct_dump(
    lab: Lab, app: Appliance, maria: MariaServer
) -> None:
    via = lab.job(
        [
            "mariadb-dump",
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            str(PORT),
            "-u",
            "ci",
            "--skip-ssl",
            "--skip-dump-date",
            "app",
            "customers",
        ]
    )
    assert via.returncode == 0, via.stderr
    direct = subprocess.run(
        [
            "mariadb-dump",
            "--no-defaults",
            f"--socket={maria.socket}",
            "-uroot",
            "--skip-dump-date",
            "app",
            "customers",
        ],
        capture_output=True,
        check=True,
    )

    def body(dump: str) -> list[str]:
        return [line for line in dump.splitlines() if not line.startswith("-- Host:")]

    assert body(via.stdout) == body(direct.stdout.decode(errors="replace"))


def test_ledger_verifies(app: Appliance) -> None:
    assert app.verify().returncode == 0
