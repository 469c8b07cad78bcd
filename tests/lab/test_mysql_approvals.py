"""Just-in-time approvals for MySQL through a real appliance, with the session's MariaDB and
real clients as the job (PostgreSQL's are in test_approvals_e2e.py).

A ``review`` statement is held while the mariadb CLI waits; decisions arrive over the
appliance's approvals socket, signed with approver keys made by ``appliance keys generate
--approver``. Held then approved (it runs, the signed note is in the ledger verbatim), held
then denied (the job gets MySQL's ERR 1142 with the approver's name and reason, and the
session goes on), and a prepared statement's execution held with its parameters in what the
approver signs.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.approvals import ApprovalsClient
from appliance.signing.keys import load_verifier_key
from appliance.signing.note import open_note
from tests.lab.approvals import ALICE_REVIEWS_DELETES, cli, entries_of, keygen, wait_pending
from tests.lab.lab import Lab, MariaServer
from tests.lab.mysql_proxy import MySQLTarget, mariadb, running_appliance

PORT = 13406


@pytest.fixture(scope="module")
def setup(
    lab: Lab, maria: MariaServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("mysql-approvals")
    alice_key, alice_vkey = keygen(work, "alice")
    socket_path = work / "run" / "approvals.sock"
    policy = {
        "approvals": {
            "timeout": "60s",
            "socket": str(socket_path),
            "approvers": [{"name": "alice", "key": alice_vkey}],
        },
        "rules": ALICE_REVIEWS_DELETES,
    }
    maria.admin_sql(
        "CREATE TABLE held (id INT PRIMARY KEY);"
        "INSERT INTO held VALUES (1),(2),(3),(4),(5),(6),(7),(8),(9),(10);",
        database="app",
    )
    with running_appliance(
        lab, maria, work / "appliance", targets=[MySQLTarget("db", PORT)], policy=policy
    ) as app:
        yield {
            "app": app,
            "client": ApprovalsClient(socket_path, timeout=10),
            "alice": alice_key,
            "alice_vkey": alice_vkey,
            "socket": socket_path,
        }


def _count(maria: MariaServer, where: str) -> str:
    return maria.admin_sql(f"SELECT COUNT(*) FROM held WHERE {where}", database="app").strip()


def _job(lab: Lab, sql: str) -> subprocess.Popen[bytes]:
    # A script on stdin with --force: after a refused statement the CLI goes on with the
    # next one (with -e it stops at the first error).
    with tempfile.TemporaryFile() as script:
        script.write(f"{sql};\nSELECT 'still usable';\n".encode())
        script.seek(0)
        return lab.popen(
            mariadb(PORT, "-N", "--force"),
            job=True,
            stdin=script,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )


def _decide(setup: dict[str, Any], verb: str, request: str, reason: str) -> None:
    r = cli(
        verb, request, "--key", str(setup["alice"]), "--reason", reason,
        "--socket", str(setup["socket"]),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_held_then_approved_by_a_signed_decision_runs(
    lab: Lab, maria: MariaServer, setup: dict[str, Any]
) -> None:
    job = _job(lab, "DELETE FROM held WHERE id = 1")
    status = wait_pending(setup["client"], text="DELETE FROM held WHERE id = 1")
    assert job.poll() is None  # the job waits, the row is still there
    assert _count(maria, "id = 1") == "1"
    _decide(setup, "approve", status.request.id, "ticket OPS-7")
    out, err = job.communicate(timeout=60)
    assert b"still usable" in out, err
    assert _count(maria, "id = 1") == "0"
    granted = entries_of(setup["app"], "approval.granted", status.request.id)[0]
    text, keys = open_note(granted["data"]["note"], [load_verifier_key(setup["alice_vkey"])])
    assert f"request {status.request.id}\n" in text and "decision approve\n" in text
    assert [k.name for k in keys] == ["alice"] and granted["session"] == status.request.session


def test_held_then_refused_answers_with_mysqls_error_and_the_session_goes_on(
    lab: Lab, maria: MariaServer, setup: dict[str, Any]
) -> None:
    job = _job(lab, "DELETE FROM held WHERE id = 2")
    status = wait_pending(setup["client"], text="DELETE FROM held WHERE id = 2")
    _decide(setup, "deny", status.request.id, "change freeze")
    out, err = job.communicate(timeout=60)
    assert b"ERROR 1142 (42000)" in err and b"denied by alice: change freeze" in err, err
    assert b"still usable" in out, (out, err)
    assert _count(maria, "id = 2") == "1"
    entries_of(setup["app"], "approval.denied", status.request.id)


_CONNECTORS = {
    # COM_STMT_PREPARE answered, then COM_STMT_EXECUTE
    "mysql-connector": """
        import mysql.connector
        c = mysql.connector.connect(host="127.0.0.1", port={port}, user="ci", database="app",
                                    use_pure=True, ssl_disabled=True)
        cur = c.cursor(prepared=True)
        cur.execute("DELETE FROM held WHERE id = ?", ({id},))
        c.commit()
        print("deleted", cur.rowcount)
        """,
    # MariaDB's execute-direct: PREPARE and EXECUTE (of "the statement just prepared") in one
    # write, before the server answers the PREPARE
    "mariadb-connector": """
        import mariadb
        c = mariadb.connect(host="127.0.0.1", port={port}, user="ci", database="app")
        cur = c.cursor()
        cur.execute("DELETE FROM held WHERE id = ?", ({id},))
        c.commit()
        print("deleted", cur.rowcount)
        """,
}


@pytest.mark.parametrize(("connector", "row"), [("mysql-connector", 7), ("mariadb-connector", 8)])
def test_a_prepared_execution_is_held_with_its_parameters(
    lab: Lab, maria: MariaServer, setup: dict[str, Any], connector: str, row: int
) -> None:
    """A prepared DELETE: COM_STMT_PREPARE passes, each COM_STMT_EXECUTE is held; the
    approver signs the text with the bound value. MariaDB Connector/Python sends its EXECUTE
    with the PREPARE: it is held all the same, as the statement the server prepared."""
    code = textwrap.dedent(_CONNECTORS[connector].format(port=PORT, id=row))
    job = lab.popen(
        [sys.executable, "-c", code],
        job=True,
        env={"PYTHONPATH": str(Path(__file__).parents[2])},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    status = wait_pending(setup["client"], text="DELETE FROM held WHERE id = ?")
    assert _count(maria, f"id = {row}") == "1"
    _decide(setup, "approve", status.request.id, "cleanup")
    out, err = job.communicate(timeout=60)
    assert out.strip() == b"deleted 1", err
    assert _count(maria, f"id = {row}") == "0"
    statements = [
        e["data"]
        for e in setup["app"].entries()
        if e["type"] == "statement" and e["session"] == status.request.session
    ]
    (execute,) = [s for s in statements if s["protocol"] == "execute"]
    assert execute["params"] == [str(row)] and execute["decision"]["decision"] == "review"


def test_the_ledger_verifies(setup: dict[str, Any]) -> None:
    r = setup["app"].verify()
    assert r.returncode == 0, r.stdout + r.stderr
