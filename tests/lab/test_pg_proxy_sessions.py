"""Sessions through a real appliance when things are not ordinary (issue 4): credential
injection for each authentication method, with and without verified upstream TLS; the
job never seeing the password; malformed and oversized input from the job; an upstream
that misbehaves, vanishes or cannot be reached; graceful shutdown.

Whatever goes wrong in one session, the others go on: a connection opened at the start of
the module is used again at the end of each test that breaks something.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from appliance.protocols.postgres.messages import ErrorResponse, decode_backend
from tests.lab.lab import Lab, PgServer, setns
from tests.lab.proxy import (
    Appliance,
    RawClient,
    TargetSpec,
    dsn,
    frames,
    job_env,
    running_appliance,
)

PLAIN, TLS, BAD_NAME, FAKE, GONE = 6442, 6443, 6444, 6445, 6446
FAKE_UPSTREAM = 15432  # the scripted server below, on 127.0.0.1 in the runner namespace
ROLES = {"ci": "app", "md5": "app_md5", "plain": "app_plain"}
METHODS = {"ci": "scram-sha-256", "md5": "md5", "plain": "password"}


@pytest.fixture(scope="module")
def fake(lab: Lab) -> Iterator[FakeUpstream]:
    server = FakeUpstream(lab)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def appliance(
    lab: Lab, pg: PgServer, fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Appliance]:
    assert pg.ca_file is not None
    verify = {"mode": "verify-full", "ca": str(pg.ca_file)}
    targets = [
        TargetSpec("db", PLAIN),
        TargetSpec("dbtls", TLS, tls=verify),
        TargetSpec("badname", BAD_NAME, tls={**verify, "server_name": "other.lab.test"}),
        TargetSpec("fake", FAKE, address=f"127.0.0.1:{FAKE_UPSTREAM}", accounts=[("ci", "app")]),
        TargetSpec("gone", GONE, address=f"{lab.targets[1].ipv4}:5432"),
    ]
    with running_appliance(lab, pg, tmp_path_factory.mktemp("sessions"), targets=targets) as app:
        yield app


@pytest.fixture(scope="module")
def bystander(lab: Lab, appliance: Appliance) -> Iterator[Callable[[], None]]:
    """A session opened before the trouble starts; calling it checks it still works."""
    opened: dict[str, psycopg.Connection[Any]] = {}

    def connect() -> None:
        opened["c"] = psycopg.connect(dsn(PLAIN, application_name="bystander"), autocommit=True)

    lab.run_in_runner(connect)
    conn = opened["c"]
    counter = iter(range(1, 10**6))

    def check() -> None:
        n = next(counter)
        assert conn.execute("select %s::int", (n,)).fetchone() == (n,)

    try:
        yield check
    finally:
        conn.close()


# -- credential injection ------------------------------------------------------------------------


@pytest.mark.parametrize("account", ["ci", "md5", "plain"])
@pytest.mark.parametrize("port", [PLAIN, TLS], ids=["no-tls", "verify-full"])
def test_credentials_are_injected_for_every_method(
    lab: Lab, appliance: Appliance, account: str, port: int
) -> None:
    app_name = f"auth-{account}-{port}"
    r = lab.job(
        ["psql", "-X", "-A", "-t", "-c",
         "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()"],
        env=job_env(port, account, PGAPPNAME=app_name),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    tls = port == TLS
    assert r.stdout.strip() == f"{ROLES[account]}|{'t' if tls else 'f'}"
    session = appliance.session_by_app(app_name)
    (ready,) = [e["data"] for e in session if e["type"] == "session.ready"]
    method = METHODS[account]
    if tls and method == "scram-sha-256":
        method = "scram-sha-256-plus"  # channel binding to the verified certificate
    assert ready["auth_method"] == method
    assert ready["upstream_tls"] is tls
    assert {e["account"] for e in session} == {account}


def test_upstream_certificate_for_another_name_is_refused(
    lab: Lab, appliance: Appliance, bystander: Callable[[], None]
) -> None:
    r = lab.job(["psql", "-X", "-c", "select 1"], env=job_env(BAD_NAME, PGAPPNAME="badname"))
    assert r.returncode != 0
    assert "TLS to target 'badname' failed" in r.stderr
    assert "certificate verify failed" in r.stderr or "hostname mismatch" in r.stderr
    session = appliance.session_by_app("badname")
    assert session[-1]["data"]["reason"].startswith("upstream TLS failed")
    bystander()


def test_unreachable_upstream_is_a_clear_error(
    lab: Lab, appliance: Appliance, bystander: Callable[[], None]
) -> None:
    r = lab.job(["psql", "-X", "-c", "select 1"], env=job_env(GONE, PGAPPNAME="gone"))
    assert r.returncode != 0
    assert "the appliance cannot reach target 'gone'" in r.stderr
    session = appliance.session_by_app("gone")
    assert session[-1]["data"]["reason"].startswith("upstream unreachable")
    bystander()


# -- the password ------------------------------------------------------------------------------


def test_the_job_never_sees_the_password(lab: Lab, pg: PgServer, appliance: Appliance) -> None:
    for role in ROLES.values():
        r = lab.job(["cat", str(pg.password_file(role))])
        assert r.returncode != 0 and "Permission denied" in r.stderr
    # Everything the job receives in sessions for every method, with and without TLS,
    # including an error, a notice and the server's parameters.
    seen = bytearray()
    for port in (PLAIN, TLS):
        for account in ROLES:
            conn = RawClient(lab, port, account)
            try:
                seen += conn.startup()
                seen += conn.query("select current_user, 1/0")
                seen += conn.query("do $$ begin raise notice '%', current_user; end $$")
                seen += conn.query("show all")
            finally:
                seen += conn.close()
    assert b"app_md5" in seen and b"division by zero" in seen
    for role, password in pg.passwords.items():
        secret = password.encode()
        assert secret not in seen, role
        assert appliance.files_containing(secret) == [], role


# -- bad input from the job ----------------------------------------------------------------------

BAD_INPUT = {
    "unterminated query": b"Q" + struct.pack("!I", 12) + b"select 1",
    "oversized query": b"Q" + struct.pack("!I", 0x7FFFFFFF) + b"select",
    "unknown type": b"\x01" + struct.pack("!I", 4),
    "length below 4": b"Q" + struct.pack("!I", 2),
    "bad bind": b"B" + struct.pack("!I", 10) + b"\0\0\xff\xff\0\0",
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_malformed_input_ends_that_session_with_08P01(
    lab: Lab, appliance: Appliance, bystander: Callable[[], None], case: str
) -> None:
    conn = RawClient(lab, PLAIN, "ci", application_name=f"bad-{case}")
    try:
        conn.startup()
        conn.send(BAD_INPUT[case])
        received = conn.read_to_end()
    finally:
        conn.close()
    (error,) = [decode_backend(t, p) for t, p in frames(received) if t == ord("E")]
    assert isinstance(error, ErrorResponse)
    assert (error.severity, error.code) == ("FATAL", "08P01")
    session = appliance.session_by_app(f"bad-{case}")
    (violation,) = [e["data"] for e in session if e["type"] == "protocol.error"]
    assert violation["side"] == "client" and violation["sqlstate"] == "08P01"
    assert session[-1]["data"]["reason"] == "protocol violation by the job"
    bystander()
    assert appliance.running


# -- an upstream that misbehaves -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ("garbage", "the upstream server broke the protocol"),
        ("unasked", "the upstream server broke the protocol"),
        ("oversized", "the upstream server broke the protocol"),
        ("vanish", "lost the connection to target 'fake'"),
        ("reset", "lost the connection to target 'fake'"),
    ],
)
def test_misbehaving_upstream_ends_the_session_with_a_clear_error(
    lab: Lab,
    appliance: Appliance,
    fake: FakeUpstream,
    bystander: Callable[[], None],
    behaviour: str,
    expected: str,
) -> None:
    r = lab.job(
        ["psql", "-X", "-c", "select 1"],
        env=job_env(FAKE, PGDATABASE=behaviour, PGAPPNAME=f"fake-{behaviour}"),
    )
    assert r.returncode != 0
    assert expected in r.stderr, r.stderr
    session = appliance.session_by_app(f"fake-{behaviour}")
    end = session[-1]["data"]["reason"]
    if behaviour in ("vanish", "reset"):
        assert end == "upstream server closed the connection"
    else:
        assert end == "protocol violation by the upstream server"
        (violation,) = [e["data"] for e in session if e["type"] == "protocol.error"]
        assert violation["side"] == "server"
    bystander()


def test_backend_terminated_by_the_server_reaches_the_job(
    lab: Lab, pg: PgServer, appliance: Appliance, bystander: Callable[[], None]
) -> None:
    def body() -> str:
        with psycopg.connect(dsn(PLAIN, application_name="terminated")) as conn:
            pid = conn.execute("select pg_backend_pid()").fetchone()
            assert pid is not None
            pg.admin_sql(f"select pg_terminate_backend({pid[0]})")
            try:
                conn.execute("select 1")
            except psycopg.OperationalError as exc:
                return str(exc)
            return "no error"

    message = lab.run_in_runner(body)
    assert "terminating connection due to administrator command" in message
    session = appliance.session_by_app("terminated")
    assert session[-1]["data"]["reason"] == "upstream server closed the connection"
    bystander()


# -- graceful shutdown ---------------------------------------------------------------------------


def test_graceful_shutdown_finishes_the_statement_in_flight(
    lab: Lab, pg: PgServer, tmp_path: Path
) -> None:
    with running_appliance(lab, pg, tmp_path / "stop", targets=[TargetSpec("db", 6450)]) as app:
        results: dict[str, Any] = {}
        idle = RawClient(lab, 6450, "ci", application_name="idle")
        idle.startup()

        def busy() -> None:
            with psycopg.connect(dsn(6450, application_name="busy"), autocommit=True) as conn:
                # libpq hands an error that arrives while idle to the notice processor.
                notices: list[str] = []
                conn.add_notice_handler(
                    lambda d: notices.append(f"{d.sqlstate} {d.message_primary}")
                )
                results["row"] = conn.execute("select pg_sleep(1.5), 'finished'").fetchone()
                try:
                    conn.execute("select 1")
                except psycopg.OperationalError as exc:
                    results["after"] = [str(exc), *notices]

        thread = threading.Thread(target=lambda: lab.run_in_runner(busy))
        thread.start()
        app.wait_for(
            lambda es: any(e["type"] == "statement" and "pg_sleep" in e["data"]["text"] for e in es)
        )
        app.signal(15)
        thread.join(timeout=30)
        assert app.proc is not None and app.proc.wait(timeout=30) == 0
        assert results["row"] == ("", "finished")
        assert any(
            "terminating connection: the appliance is shutting down" in m for m in results["after"]
        ), results["after"]
        received = idle.read_to_end()
        idle.close()
        (error,) = [decode_backend(t, p) for t, p in frames(received) if t == ord("E")]
        assert isinstance(error, ErrorResponse) and error.code == "57P01"
        busy_session = app.session_by_app("busy")
        (response,) = [e["data"] for e in busy_session if e["type"] == "response"]
        assert response["outcome"] == "ok" and response["rows"] == 1
        assert busy_session[-1]["data"]["reason"] == "appliance shutdown"
        assert app.session_by_app("idle")[-1]["data"]["reason"] == "appliance shutdown"
        assert app.entries()[-1]["type"] == "appliance.stop"
        verified = app.verify()
        assert verified.returncode == 0, verified.stdout + verified.stderr


def test_ledger_of_the_module_verifies(appliance: Appliance) -> None:
    r = appliance.verify()
    assert r.returncode == 0, r.stdout + r.stderr


# -- helpers -------------------------------------------------------------------------------------


class FakeUpstream:
    """A scripted PostgreSQL server on 127.0.0.1:FAKE_UPSTREAM in the runner namespace.

    It lets anyone in (AuthenticationOk), then misbehaves as the database name says when
    the first Query arrives: ``garbage`` (bytes that are no message), ``unasked`` (a
    DataRow and CommandComplete nobody asked for: ReadyForQuery is fine, the rest not),
    ``oversized`` (a DataRow header declaring 2 GiB), ``vanish`` (close), ``reset`` (RST).
    """

    def __init__(self, lab: Lab) -> None:
        ready = threading.Event()
        self._stop = False
        self._error: BaseException | None = None

        def serve() -> None:
            setns(lab.runner.path)
            self.listener = socket.create_server(("127.0.0.1", FAKE_UPSTREAM))
            self.listener.settimeout(0.2)
            ready.set()
            while not self._stop:
                try:
                    conn, _ = self.listener.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=self._session, args=(conn,), daemon=True).start()
            self.listener.close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        ready.wait(10)

    def _session(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(15)
            (length,) = struct.unpack("!I", _recv_exact(conn, 4))
            body = _recv_exact(conn, length - 4)
            params = body[4:].split(b"\0")
            database = params[params.index(b"database") + 1].decode()
            conn.sendall(
                b"R\0\0\0\x08\0\0\0\0"
                + b"S\0\0\0\x19server_encoding\0UTF8\0"
                + b"S\0\0\0\x19client_encoding\0UTF8\0"
                + b"S\0\0\0\x18server_version\x0015.0\0"
                + b"K\0\0\0\x0c\0\0\0\x01\0\0\0\x02"
                + b"Z\0\0\0\x05I"
            )
            conn.recv(65536)  # the job's query
            if database == "garbage":
                conn.sendall(b"\x00\x01\x02 this is not the PostgreSQL protocol")
            elif database == "unasked":
                conn.sendall(b"D\0\0\0\x0b\0\x01\0\0\0\x01x" + b"Z\0\0\0\x05I")
            elif database == "oversized":
                conn.sendall(b"D\x7f\xff\xff\xff\0\x01")
            elif database == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if database not in ("vanish", "reset"):
                conn.recv(65536)  # until the appliance hangs up
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.thread.join(timeout=5)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def test_a_dead_ledger_writer_stops_the_appliance_with_an_error(
    lab: Lab, pg: PgServer, tmp_path: Path
) -> None:
    """Nothing may run unrecorded: when the ledger's writer process dies, sessions are
    refused, and the daemon exits non-zero (its service manager restarts it)."""
    with running_appliance(lab, pg, tmp_path / "dead", targets=[TargetSpec("db", 6499)]) as app:
        assert app.proc is not None
        r = lab.job(["psql", "-X", "-c", "select 1"], env=job_env(6499, PGAPPNAME="before"))
        assert r.returncode == 0, r.stderr
        app.session_by_app("before")  # on disk, under a checkpoint
        writer = subprocess.run(
            ["pgrep", "-P", str(app.proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(writer) == 1, writer
        os.kill(int(writer[0]), signal.SIGKILL)
        code = app.proc.wait(timeout=30)
        assert code != 0
        assert "the ledger cannot record" in app.log_text()
        r = lab.job(["psql", "-X", "-c", "select 1"], env=job_env(6499, PGAPPNAME="after"))
        assert r.returncode != 0
    # What was recorded before is intact and verifies.
    assert any(e["type"] == "session.end" for e in app.entries())
    verified = app.verify()
    assert verified.returncode == 0, verified.stdout + verified.stderr
