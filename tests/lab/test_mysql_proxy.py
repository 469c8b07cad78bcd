"""MySQL through the appliance, with real MariaDB (Debian's) and real clients as the job.

The session's lab and MariaDB (target 1, TLS on), one appliance for the module: targets for
a native password account, an ed25519 one, one that requires TLS upstream, one that allows
LOAD DATA LOCAL. Jobs log in with no
password; what they see is compared with the server's own answers, and the ledger is
checked for what it must and must not hold.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.certs import server_cert
from tests.lab.lab import Lab, MariaServer
from tests.lab.mysql_proxy import MySQLTarget, mariadb, running_appliance
from tests.lab.proxy import APPLIANCE, Appliance

pytestmark = pytest.mark.lab

PORT, ED_PORT, TLS_PORT, INFILE_PORT, JOB_TLS_PORT, MASKED_PORT = range(13306, 13312)
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
def customers(maria: MariaServer) -> MariaServer:
    maria.admin_sql(
        "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(50), card VARCHAR(30),"
        " balance DECIMAL(10,2), born DATE, seen DATETIME(3), blob_col BLOB, flag TINYINT UNSIGNED);"
        f"INSERT INTO customers VALUES (1,'Ann','{CARD}',12.50,'1990-01-02','2024-05-06 07:08:09.123',X'00ff',1),"
        "(2,'Bob',NULL,-3.00,NULL,NULL,NULL,255);",
        database="app",
    )
    return maria


@pytest.fixture(scope="module")
def app(lab: Lab, customers: MariaServer) -> Iterator[Appliance]:
    work = lab.dir / "mysql-appliance"
    work.mkdir()
    cert = server_cert("appliance job-side CA", "db.lab.test", ["db.lab.test", "127.0.0.1"])
    (work / "job-ca.pem").write_bytes(cert.ca_pem)
    (work / "job-cert.pem").write_bytes(cert.cert_pem)
    (work / "job-key.pem").write_bytes(cert.key_pem)
    (work / "job-key.pem").chmod(0o600)
    client_tls = {"cert": str(work / "job-cert.pem"), "key": str(work / "job-key.pem")}
    targets = [
        MySQLTarget("db", PORT),
        MySQLTarget("ed", ED_PORT, accounts=(("ed", "app_ed"),)),
        MySQLTarget("tls", TLS_PORT, accounts=(("tls", "app_tls"),), tls={"mode": "require"}),
        MySQLTarget("infile", INFILE_PORT, extra={"local_infile": True}),
        MySQLTarget("job-tls", JOB_TLS_PORT, extra={"client_tls": client_tls}),
        MySQLTarget("masked", MASKED_PORT),
    ]
    masking = {"response": [{"target": "masked"}]}
    with running_appliance(
        lab, customers, work, targets=targets, policy=POLICY, masking=masking
    ) as appliance:
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


def test_the_cli_sources_a_script_file(lab: Lab, app: Appliance) -> None:
    """``source`` in the mariadb CLI: each statement of the file goes through policy; the
    denied one fails with MySQL's error and, with --force, the script goes on."""
    where = Path(tempfile.mkdtemp(prefix="mysql-source-"))
    try:
        where.chmod(0o755)  # the job runs as nobody
        script = where / "migrate.sql"
        script.write_text(
            "CREATE TABLE IF NOT EXISTS t_src (a INT);\n"
            "INSERT INTO t_src VALUES (41), (1);\n"
            "SELECT SUM(a) AS total FROM t_src;\n"
            "DROP TABLE t_src;\n"
            "SELECT 'sourced' AS marker;\n"
        )
        script.chmod(0o644)
        r = lab.job(mariadb(PORT, "--force", "-N", "-e", f"source {script}"))
    finally:
        shutil.rmtree(where)
    assert r.stdout.split() == ["42", "sourced"]
    assert "ERROR 1142 (42000)" in r.stderr and "no-drop" in r.stderr
    texts = [e["data"]["text"] for e in _session_with(app, "'sourced'") if e["type"] == "statement"]
    assert "INSERT INTO t_src VALUES (41), (1)" in texts and "DROP TABLE t_src" in texts


def test_unparseable_text_is_denied_by_default(lab: Lab, app: Appliance) -> None:
    r = lab.job(mariadb(PORT, "-e", "FLUSH PRIVILEGES"))
    assert r.returncode == 1 and "ERROR 1142" in r.stderr
    session = _session_with(app, "FLUSH PRIVILEGES")
    decision = next(e for e in session if e["type"] == "policy.decision")["data"]
    assert decision["classes"] == ["unknown"]


def test_pymysql_rows_and_prepared_statements_leave_nothing_raw(lab: Lab, app: Appliance) -> None:
    code = textwrap.dedent(
        f"""
        # The C extension loads the OpenSSL it was built with (3.2, vendored in the wheel)
        # only if Python's ssl module has not loaded Debian's libssl.so.3 (3.0) first.
        import _mysql_connector
        import pymysql, MySQLdb, mysql.connector
        assert mysql.connector.HAVE_CEXT
        out = []
        c = pymysql.connect(host="127.0.0.1", port={PORT}, user="ci", database="app", program_name="pymysql-job")
        cur = c.cursor(); cur.execute("SELECT id, name, card, balance, born FROM customers ORDER BY id")
        out.append(repr(cur.fetchall()))
        cur.execute("SELECT card FROM customers WHERE id = %s", (1,)); out.append(cur.fetchone()[0])
        c.close()
        m = MySQLdb.connect(host="127.0.0.1", port={PORT}, user="ci", database="app")
        mc = m.cursor(); mc.execute("SELECT name FROM customers WHERE id=%s", (2,)); out.append(mc.fetchone()[0])
        m.close()
        for pure in (True, False):  # pure Python, then the C extension (libmysqlclient)
            k = mysql.connector.connect(host="127.0.0.1", port={PORT}, user="ci", database="app", use_pure=pure, ssl_disabled=True)
            assert type(k).__name__ == ("MySQLConnection" if pure else "CMySQLConnection")
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
    assert lines[4] == lines[3]  # the same through its C extension
    time.sleep(1)
    app.wait_for(lambda es: sum(e["type"] == "session.end" for e in es) >= 6)
    assert app.files_containing(CARD.encode()) == []
    executes = [
        e for e in app.entries() if e["type"] == "statement" and e["data"]["protocol"] == "execute"
    ]
    assert executes and all(CARD not in str(e) for e in executes)


def test_rows_are_masked_toward_the_job_as_in_the_ledger(lab: Lab, app: Appliance) -> None:
    """A target whose responses are masked: text rows (PyMySQL) and binary rows
    (mysql-connector's prepared cursor) reach the job masked, with the same values as the
    ledger keeps; a masked value of a type that cannot hold a mask is NULL."""
    code = textwrap.dedent(
        f"""
        import pymysql, mysql.connector
        c = pymysql.connect(host="127.0.0.1", port={MASKED_PORT}, user="ci", database="app",
                            program_name="masked-text")
        cur = c.cursor()
        cur.execute("SELECT id, card, CAST('{CARD}' AS UNSIGNED) FROM customers WHERE id = 1")
        print(repr(cur.fetchone()))
        c.close()
        k = mysql.connector.connect(host="127.0.0.1", port={MASKED_PORT}, user="ci",
                                    database="app", use_pure=True, ssl_disabled=True)
        kc = k.cursor(prepared=True)
        kc.execute("SELECT id, card, name FROM customers WHERE id = ?", (1,))
        print(repr(kc.fetchone()))
        k.close()
        """
    )
    r = lab.job([sys.executable, "-c", code], env={"PYTHONPATH": str(Path(__file__).parents[2])})
    assert r.returncode == 0, r.stderr
    text_row, binary_row = r.stdout.splitlines()
    assert text_row == "(1, '[REDACTED:CARD]', None)"
    assert binary_row == "(1, '[REDACTED:CARD]', 'Ann')"
    session = app.wait_session_end(lambda d: d.get("application_name") == "masked-text")
    response = next(e for e in session if e["type"] == "response" and e["data"]["columns"])
    assert response["data"]["masked_to_job"]["detectors"] == {"card": 2}
    assert app.result_rows(response["data"]) == [["1", "[REDACTED:CARD]", None]]
    # The server names the third column after its expression: the name is masked too.
    assert response["data"]["columns"][2] == "CAST('[REDACTED:CARD]' AS UNSIGNED)"


def test_a_server_side_cursor_fetches_rows_masked(lab: Lab, app: Appliance) -> None:
    """MariaDB Connector/Python's read-only cursor: COM_STMT_EXECUTE opens a cursor on the
    server, the rows come by COM_STMT_FETCH (the connector asks for all of them at once),
    masked toward the job as the target asks, and recorded with nothing raw in the ledger."""
    code = textwrap.dedent(
        f"""
        import mariadb
        from mariadb.constants import CURSOR
        c = mariadb.connect(host="127.0.0.1", port={MASKED_PORT}, user="ci", database="app")
        cur = c.cursor(cursor_type=CURSOR.READ_ONLY)
        cur.execute("SELECT id, card, name FROM customers WHERE id > ? ORDER BY id", (0,))
        for row in cur.fetchall():
            print(repr(row))
        cur.close()
        c.close()
        """
    )
    r = lab.job([sys.executable, "-c", code], env={"PYTHONPATH": str(Path(__file__).parents[2])})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["(1, '[REDACTED:CARD]', 'Ann')", "(2, None, 'Bob')"]
    session = _session_with(app, "WHERE id > ? ORDER BY id")
    fetches = [e for e in session if e["type"] == "statement" and e["data"]["protocol"] == "fetch"]
    # Its EXECUTE came with the PREPARE (execute-direct): recorded as that statement's.
    (execute,) = [e for e in session if e["data"].get("protocol") == "execute"]
    assert execute["data"]["params"] == ["0"]
    assert fetches and fetches[0]["data"]["prepared"] == execute["data"]["prepared"]
    assert CARD not in str(session) and app.files_containing(CARD.encode()) == []


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


ALL_TYPES = (
    "SET NAMES utf8mb4; CREATE TABLE all_types (id INT AUTO_INCREMENT PRIMARY KEY, ti TINYINT, si SMALLINT,"
    " mi MEDIUMINT, bi BIGINT UNSIGNED, f FLOAT, d DOUBLE, dec30 DECIMAL(30,10), b BIT(10),"
    " dt DATE, tm TIME(6), dtm DATETIME(6), ts TIMESTAMP NULL, y YEAR, c CHAR(3),"
    " vc VARCHAR(40) CHARACTER SET utf8mb4, bin BINARY(4), vb VARBINARY(16), tt TINYTEXT,"
    " tx TEXT, lb LONGBLOB, e ENUM('a','b'), st SET('x','y','z'), j JSON, g POINT,"
    " ip INET6, u UUID, KEY (vc), UNIQUE KEY (bi)) ENGINE=InnoDB;"
    "INSERT INTO all_types VALUES (NULL, -128, 32767, -8388608, 18446744073709551615, 1.5,"
    " -2.25e-300, -12345678901234567890.0123456789, b'1010101010', '2024-02-29',"
    " '-838:59:59.000000', '2024-05-06 07:08:09.123456', '2038-01-19 03:14:07', 2155, 'ab',"
    " 'caf\u00e9 \U0001f600 quote'' and \\\\ backslash', X'00010203', X'ff00fe', 'tiny',"
    " REPEAT('long text ', 500), REPEAT(X'00ff7f', 70000), 'b', 'x,z', '{\"k\": [1, null]}',"
    " ST_GeomFromText('POINT(1 2)'), '2001:db8::1', '123e4567-e89b-12d3-a456-426614174000'),"
    " (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
    " NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);"
)


def test_mariadb_dump_through_the_appliance_is_identical_to_a_direct_dump(
    lab: Lab, app: Appliance, maria: MariaServer
) -> None:
    """A schema with many types (integers to their limits, floats, decimals, bits, every
    temporal type, character and binary strings, a 210 KB blob, ENUM, SET, JSON, geometry,
    INET6, UUID, NULLs): dumped through the appliance, byte for byte the direct dump."""
    maria.admin_sql(ALL_TYPES, database="app")
    tables = ["--skip-dump-date", "app", "customers", "all_types"]
    proc = lab.popen(
        ["mariadb-dump", "--no-defaults", "-h", "127.0.0.1", "-P", str(PORT), "-u", "ci",
         "--skip-ssl", *tables],
        job=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    via, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    direct = subprocess.run(
        ["mariadb-dump", "--no-defaults", f"--socket={maria.socket}", "-uroot", *tables],
        capture_output=True, check=True,
    ).stdout  # fmt: skip

    def body(dump: bytes) -> list[bytes]:  # the bytes, blobs included
        return [line for line in dump.split(b"\n") if not line.startswith(b"-- Host:")]

    assert b"INSERT INTO `all_types`" in via and len(via) > 200_000
    assert body(via) == body(direct)


def test_the_job_logs_in_over_tls_with_the_appliances_certificate(lab: Lab, app: Appliance) -> None:
    """TLS on the job's side (the target's ``client_tls``): the mariadb CLI verifies the
    appliance's certificate; a job whose SSL request and ClientHello arrive in one read (a
    client does not wait for an answer to its SSL request) gets in as well."""
    ca = str(app.dir / "job-ca.pem")
    argv = [
        "mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(JOB_TLS_PORT), "-u", "ci",
        "--ssl", f"--ssl-ca={ca}", "--ssl-verify-server-cert", "-N", "app",
        "-e", "SHOW SESSION STATUS LIKE 'Ssl_version'; SELECT 'cli over tls'",
    ]  # fmt: skip
    r = lab.job(argv)
    assert r.returncode == 0, r.stderr
    assert "cli over tls" in r.stdout
    r = lab.job(
        [sys.executable, "-c", TLS_IN_ONE_WRITE, str(JOB_TLS_PORT), ca],
        env={"PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "one write: 2"
    session = _session_with(app, "SELECT 1 + 1 AS one_write")
    assert next(e for e in session if e["type"] == "session.start")["data"]["client_tls"] is True


# A job that speaks the protocol itself: its SSL request and its ClientHello in one write.
TLS_IN_ONE_WRITE = textwrap.dedent(
    """
    import socket, ssl, sys
    from appliance.protocols.mysql import Framer, packet
    from appliance.protocols.mysql.constants import Cap
    from appliance.protocols.mysql.messages import Handshake, HandshakeResponse, SSLRequest, text_row

    port, ca = int(sys.argv[1]), sys.argv[2]
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    framer = Framer("server")
    packets = []
    while not packets:
        packets = framer.feed(sock.recv(65536))
    hello = Handshake.decode(packets[0][1])
    caps = hello.capabilities & int(
        Cap.LONG_PASSWORD | Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH
        | Cap.CONNECT_WITH_DB | Cap.TRANSACTIONS | Cap.SSL
    )
    tls = ssl.create_default_context(cafile=ca)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = tls.wrap_bio(incoming, outgoing, server_hostname="db.lab.test")
    try:
        conn.do_handshake()
    except ssl.SSLWantReadError:
        pass
    sock.sendall(packet(1, SSLRequest(caps, 1 << 24, 45).encode()) + outgoing.read())

    def pump():
        data = sock.recv(65536)
        if not data:
            sys.exit("closed")
        incoming.write(data)

    while True:
        try:
            conn.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            pump()

    def send(seq, payload):
        conn.write(packet(seq, payload))
        sock.sendall(outgoing.read())

    def receive(n):
        got = []
        while len(got) < n:
            try:
                got += framer.feed(conn.read(65536))
            except ssl.SSLWantReadError:
                pump()
        return got

    framer = Framer("server")
    login = HandshakeResponse(caps, 1 << 24, 45, "ci", b"", "app", "mysql_native_password")
    send(2, login.encode())
    (ok,) = receive(1)
    assert ok[1][:1] == b"\\x00", ok
    send(0, b"\\x03SELECT 1 + 1 AS one_write")
    result = receive(5)  # column count, column, EOF, row, EOF
    print("one write:", text_row(result[3][1], 1)[0].decode())
    """
)


def test_ctrl_c_in_the_cli_kills_its_running_statement(lab: Lab, app: Appliance) -> None:
    """Ctrl-C in the mariadb CLI: it opens a new connection with the same login and sends
    ``KILL QUERY <the id the appliance gave it>``; the appliance routes it to the upstream
    connection of the same job, and the statement ends at once."""
    marker = "SELECT 'interrupt me', SLEEP(30)"
    cli = lab.popen(
        mariadb(PORT, "-N", "-e", marker),
        job=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    app.wait_for(
        lambda es: any(e["type"] == "statement" and e["data"]["text"] == marker for e in es)
    )
    time.sleep(0.3)  # the statement reaches the server
    start = time.monotonic()
    cli.send_signal(signal.SIGINT)
    out, err = cli.communicate(timeout=30)
    assert time.monotonic() - start < 5
    assert b"query killed" in out and b"ERROR 1317" in err, (out, err)
    sleeper = _session_with(app, marker)
    sid = sleeper[0]["session"]
    kills = app.wait_for(
        lambda es: any(
            e["type"] == "request" and e["data"].get("session_killed") == sid for e in es
        )
    )
    (kill,) = [
        e for e in kills if e["type"] == "request" and e["data"].get("session_killed") == sid
    ]
    assert kill["data"]["query"] is True and kill["data"]["outcome"] == "forwarded"
    assert kill["session"] != sid
    response = next(e for e in sleeper if e["type"] == "response")["data"]
    assert response["outcome"] == "error" and response["error"]["code"] == 1317


def test_an_alembic_migration_runs_as_the_job(lab: Lab, app: Appliance, maria: MariaServer) -> None:
    """An ORM migration tool as the job (Alembic on SQLAlchemy with PyMySQL): the upgrade
    goes through the appliance statement by statement; the downgrade's DROP is denied by
    policy with MySQL's own error, and Alembic stops there."""
    project = Path("/tmp") / f"alembic-{time.time_ns()}"
    (project / "versions").mkdir(parents=True)
    try:
        (project / "alembic.ini").write_text(
            "[alembic]\nscript_location = %(here)s\n"
            f"sqlalchemy.url = mysql+pymysql://ci@127.0.0.1:{PORT}/app\n"
        )
        (project / "env.py").write_text(ALEMBIC_ENV)
        (project / "script.py.mako").write_text("")
        (project / "versions" / "0001_orders.py").write_text(ALEMBIC_REVISION)
        for path in (project, project / "versions"):
            path.chmod(0o755)
        env = {"PYTHONPATH": str(Path(__file__).parents[2]), "HOME": "/tmp"}
        alembic = [sys.executable, "-m", "alembic", "-c", str(project / "alembic.ini")]
        up = lab.job([*alembic, "upgrade", "head"], env=env)
        assert up.returncode == 0, up.stderr
        current = lab.job([*alembic, "current"], env=env)
        assert "0001 (head)" in current.stdout, current.stdout + current.stderr
        down = lab.job([*alembic, "downgrade", "base"], env=env)
        assert down.returncode != 0 and "1142" in down.stderr and "no-drop" in down.stderr
    finally:
        shutil.rmtree(project)
    # The server itself says what the migration left: the upgrade, and nothing undone.
    assert maria.admin_sql("SELECT COUNT(*) FROM orders", database="app").split() == ["2"]
    assert maria.admin_sql("SELECT version_num FROM alembic_version", database="app").split() == [
        "0001"
    ]
    entries = app.wait_for(
        lambda es: any(
            e["type"] == "statement" and e["data"]["text"].startswith("INSERT INTO alembic_version")
            for e in es
        )
    )
    texts = [e["data"]["text"] for e in entries if e["type"] == "statement"]
    assert any(t.strip().startswith("CREATE TABLE orders") for t in texts)
    assert any("CREATE INDEX ix_orders_placed" in t for t in texts)
    denied = [
        e["data"]
        for e in entries
        if e["type"] == "policy.decision" and e["data"]["rule"] == "no-drop"
    ]
    assert denied


ALEMBIC_ENV = textwrap.dedent(
    """
    from alembic import context
    from sqlalchemy import engine_from_config, pool

    config = context.config
    engine = engine_from_config(
        config.get_section(config.config_ini_section), prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
    """
)

ALEMBIC_REVISION = textwrap.dedent(
    """
    import sqlalchemy as sa
    from alembic import op

    revision = "0001"
    down_revision = None
    branch_labels = None
    depends_on = None


    def upgrade():
        orders = op.create_table(
            "orders",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("customer", sa.String(50), nullable=False),
            sa.Column("placed", sa.DateTime),
        )
        op.add_column("orders", sa.Column("total", sa.Numeric(10, 2)))
        op.create_index("ix_orders_placed", "orders", ["placed"])
        op.bulk_insert(orders, [{"id": 1, "customer": "Ann"}, {"id": 2, "customer": "Bob"}])


    def downgrade():
        op.drop_index("ix_orders_placed", "orders")
        op.drop_table("orders")
    """
)


def test_replay_and_wireshark_read_a_recorded_session(
    lab: Lab, app: Appliance, tmp_path: Path
) -> None:
    """A session recorded from the mariadb CLI: ``ledger replay`` tells it (the job, each
    statement, the denial, masked rows); exported as pcap, Wireshark's own MySQL dissector
    (tshark) reads the login, each query, result rows (masked, as the ledger keeps them),
    an error; no malformed packet and no warning."""
    script = (
        "SELECT id, name, card FROM customers ORDER BY id; "
        "SELECT 'pcap' AS marker; INSERT INTO t_pcap VALUES (1); DROP TABLE customers;"
    )
    lab.job(mariadb(PORT, "-N", "-e", "CREATE TABLE IF NOT EXISTS t_pcap (a INT)"))
    r = lab.job(mariadb(PORT, "-N", "--force", "-e", script))
    assert "ERROR 1142" in r.stderr and CARD in r.stdout
    sid = _session_with(app, "SELECT 'pcap' AS marker")[0]["session"]
    replay = subprocess.run(
        [APPLIANCE, "ledger", "replay", "--ledger", str(app.ledger), sid],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    told = replay.stdout
    assert "SQL> SELECT id, name, card FROM customers ORDER BY id" in told
    assert "[REDACTED:CARD]" in told and CARD not in told and "Ann" in told
    assert "SQL> DROP TABLE customers" in told and "no-drop" in told
    pcap = tmp_path / "mysql.pcap"
    export = subprocess.run(
        [APPLIANCE, "ledger", "export", "--ledger", str(app.ledger), "--session", sid,
         "--format", "pcap", "--out", str(pcap)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr

    def tshark(*args: str) -> str:
        return subprocess.run(
            ["tshark", "-r", str(pcap), *args], capture_output=True, text=True, check=True
        ).stdout

    fields = ["-T", "fields", "-E", "separator=|", "-e", "mysql.command", "-e", "mysql.query",
              "-e", "mysql.row.text", "-e", "mysql.error_code", "-e", "mysql.user"]  # fmt: skip
    lines = tshark("-Y", "mysql", *fields).splitlines()
    assert any(line.endswith("|ci") for line in lines)  # the login, with the job's user
    queries = [line.split("|")[1] for line in lines if line.startswith("3|")]
    assert queries[:2] == [
        "SELECT id, name, card FROM customers ORDER BY id",
        "SELECT 'pcap' AS marker",
    ]
    rows = " ".join(line.split("|")[2] for line in lines)
    assert "[REDACTED:CARD]" in rows and CARD not in rows and "Ann" in rows and "pcap" in rows
    assert any(line.split("|")[3] == "1142" for line in lines)
    expert = tshark("-q", "-z", "expert,warn")
    assert "Warnings" not in expert and "Errors" not in expert and "Malformed" not in expert


def test_ledger_verifies(app: Appliance) -> None:
    assert app.verify().returncode == 0
