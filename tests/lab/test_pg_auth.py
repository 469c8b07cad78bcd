"""The upstream state machine authenticates against a real PostgreSQL 15 (lab: needs root).

A server is started for this module in a temporary directory on 127.0.0.1 (see
``tests/unit/postgres/localpg.py``) with one role per authentication method. A small
blocking driver runs :class:`ServerConnection` over a real socket (and real TLS), which is
what the asyncio shell does, minus the event loop.
"""

from __future__ import annotations

import secrets
import selectors
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from appliance.credentials.scram import scram_verifier
from appliance.protocols.postgres import (
    Authenticated,
    CancelKeys,
    CancelRequested,
    ClientConnection,
    Messages,
    PeerProtocolError,
    ServerConnection,
    ServerReady,
    SSLRequested,
    StartTLS,
    StartupFailed,
    StartupReceived,
    Terminated,
    UpstreamAuthenticationError,
)
from appliance.protocols.postgres.messages import (
    CancelRequest,
    CommandComplete,
    DataRow,
    Query,
    decode_backend,
)
from tests.unit.postgres.localpg import PASSWORDS, LocalPg

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def pg() -> Iterator[LocalPg]:
    with LocalPg(tls=True) as server:
        yield server


def drive(
    pg: LocalPg, conn: ServerConnection, *, verify: bool = True
) -> tuple[list[object], socket.socket]:
    """Run ``conn`` to READY or failure over a real socket; return events and the socket."""
    sock: socket.socket = socket.create_connection(("127.0.0.1", pg.port), timeout=30)
    events: list[object] = []
    conn.initiate()
    try:
        while True:
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
            data = sock.recv(65536)
            new = conn.receive_eof() if not data else conn.receive_data(data)
            events.extend(new)
            for ev in new:
                if isinstance(ev, StartTLS):
                    ctx = ssl.create_default_context(cafile=str(pg.ca_pem))
                    if not verify:
                        ctx.check_hostname = False
                        ctx.verify_mode = ssl.CERT_NONE
                    sock = ctx.wrap_socket(sock, server_hostname="localhost")
                    conn.tls_established(sock.getpeercert(binary_form=True))
            if any(isinstance(ev, ServerReady | StartupFailed) for ev in new) or not data:
                out = conn.data_to_send()
                if out:
                    sock.sendall(out)
                return events, sock
    except BaseException:
        sock.close()
        raise


def query(conn: ServerConnection, sock: socket.socket, sql: str) -> list[object]:
    sock.sendall(Query(sql).encode())
    decoded: list[object] = []
    while not decoded or type(decoded[-1]).__name__ != "ReadyForQuery":
        data = sock.recv(65536)
        assert data, "server closed"
        for ev in conn.receive_data(data):
            assert isinstance(ev, Messages)
            decoded += [decode_backend(t, ev.payload(i)) for i, (t, _, _) in enumerate(ev.frames)]
    return decoded


def connection(user: str, *, password: str | None = None, **kw: object) -> ServerConnection:
    return ServerConnection(
        user=user,
        database=user,
        password=PASSWORDS[user] if password is None else password,
        random_bytes=secrets.token_bytes,
        parameters={"application_name": "appliance-test"},
        **kw,  # type: ignore[arg-type]
    )


def ready_of(events: list[object]) -> ServerReady:
    ready = [e for e in events if isinstance(e, ServerReady)]
    assert ready, f"not ready: {events}"
    return ready[0]


@pytest.mark.parametrize(
    ("user", "tls", "method"),
    [
        ("scram_user", "disable", "scram-sha-256"),
        ("scram_user", "require", "scram-sha-256-plus"),
        ("md5_user", "disable", "md5"),
        ("md5_user", "prefer", "md5"),
        ("clear_user", "disable", "password"),
        ("clear_user", "verify-full", "password"),
        ("trust_user", "disable", "none"),
        ("plus_user", "verify-full", "scram-sha-256-plus"),
    ],
)
def test_authenticates_and_queries(pg: LocalPg, user: str, tls: str, method: str) -> None:
    conn = connection(user, tls=tls)
    events, sock = drive(pg, conn)
    try:
        assert Authenticated(method) in events
        assert conn.tls == (tls != "disable")
        ready = ready_of(events)
        params = dict(ready.parameters)
        assert params["application_name"] == "appliance-test"
        assert params["server_version"].startswith("15")
        assert ready.backend_key is not None and len(ready.backend_key.key) == 4
        rows = query(
            conn, sock, "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()"
        )
        values = [m.values for m in rows if isinstance(m, DataRow)]
        assert values == [(user.encode(), b"t" if tls != "disable" else b"f")]
        assert CommandComplete("SELECT 1") in rows
    finally:
        sock.close()


@pytest.mark.parametrize("user", ["scram_user", "md5_user", "clear_user"])
def test_wrong_secret_is_startup_failed_28p01(pg: LocalPg, user: str) -> None:
    conn = connection(user, password="wrong", tls="disable")
    events, sock = drive(pg, conn)
    sock.close()
    failed = [e for e in events if isinstance(e, StartupFailed)]
    assert len(failed) == 1 and failed[0].authentication_failed
    assert failed[0].error.code == "28P01"
    assert "wrong" not in repr(events)


def test_channel_binding_required_over_tls(pg: LocalPg) -> None:
    conn = connection("scram_user", tls="require", channel_binding="require")
    events, sock = drive(pg, conn)
    sock.close()
    assert Authenticated("scram-sha-256-plus") in events


def test_channel_binding_required_refuses_md5(pg: LocalPg) -> None:
    conn = connection("md5_user", tls="require", channel_binding="require")
    with pytest.raises(UpstreamAuthenticationError, match="channel binding is required"):
        drive(pg, conn)


def test_cleartext_refused_when_not_allowed(pg: LocalPg) -> None:
    conn = connection("clear_user", tls="disable", auth_methods=frozenset({"scram-sha-256"}))
    with pytest.raises(UpstreamAuthenticationError, match="cleartext password"):
        drive(pg, conn)


def test_hostssl_role_without_tls_is_refused_by_server(pg: LocalPg) -> None:
    conn = connection("plus_user", tls="disable")
    events, sock = drive(pg, conn)
    sock.close()
    failed = [e for e in events if isinstance(e, StartupFailed)]
    assert failed and failed[0].error.code == "28000"  # no pg_hba.conf entry


def test_protocol_32_request_is_negotiated_down_by_pg15(pg: LocalPg) -> None:
    conn = connection("scram_user", tls="disable", minor=2)
    events, sock = drive(pg, conn)
    sock.close()
    assert ready_of(events).minor == 0


def test_verifier_matches_postgres(pg: LocalPg) -> None:
    stored = pg.sql("select rolpassword from pg_authid where rolname = 'scram_user'").strip()
    _, rest = stored.split("$", 1)
    iterations_salt, _ = rest.split("$", 1)
    iterations, salt_b64 = iterations_salt.split(":")
    import base64

    salt = base64.b64decode(salt_b64)
    assert scram_verifier(PASSWORDS["scram_user"], salt, int(iterations)) == stored


def test_server_vanishing_mid_startup_is_a_server_error(pg: LocalPg) -> None:
    conn = connection("scram_user", tls="disable")
    conn.initiate()
    with socket.create_connection(("127.0.0.1", pg.port), timeout=30) as sock:
        sock.sendall(conn.data_to_send())
        conn.receive_data(sock.recv(65536))  # AuthenticationSASL
        sock.sendall(conn.data_to_send())
    with pytest.raises(PeerProtocolError) as info:
        conn.receive_eof()
    assert info.value.side == "server"


# -- end to end: a minimal blocking proxy built from the sans-IO pieces ---------------------


class MiniProxy:
    """Just enough of the shell to show the pieces compose: one thread per job connection,
    the job authenticates with nothing, the appliance injects the service account's
    secret upstream, messages are relayed untouched, cancels are mapped to the real key."""

    def __init__(self, pg: LocalPg, user: str) -> None:
        self.pg, self.user = pg, user
        self.keys: CancelKeys[tuple[str, int]] = CancelKeys(random_bytes=secrets.token_bytes)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cancels_forwarded = 0
        self.errors: list[BaseException] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(sock,), daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _session(self, job_sock: socket.socket) -> None:
        job = ClientConnection()
        up_sock: socket.socket | None = None
        try:
            up: ServerConnection | None = None
            while up is None:
                data = job_sock.recv(65536)
                if not data:
                    return
                for ev in job.receive_data(data):
                    if isinstance(ev, SSLRequested):
                        job.answer_ssl(False)
                    elif isinstance(ev, CancelRequested):
                        found = self.keys.resolve(ev.request)
                        if found is not None:
                            real, route = found
                            with socket.create_connection(route) as s:
                                s.sendall(CancelRequest(real.pid, real.key).encode())
                            self.cancels_forwarded += 1
                        return
                    elif isinstance(ev, StartupReceived):
                        up = ServerConnection(
                            user=self.user, database=self.user, password=PASSWORDS[self.user],
                            random_bytes=secrets.token_bytes,
                            parameters=ev.forwardable_parameters(), tls="disable",
                        )  # fmt: skip
                        events, up_sock = drive(self.pg, up)
                        ready = ready_of(events)
                        assert ready.backend_key is not None
                        issued = self.keys.issue(ready.backend_key, ("127.0.0.1", self.pg.port))
                        job.complete_startup(ready.parameters, issued, notices=ready.notices)
                job_sock.sendall(job.data_to_send())
            assert up_sock is not None
            for ev in job.receive_data(b""):
                assert isinstance(ev, Messages)
                up_sock.sendall(ev.chunk)
            self._relay(job, job_sock, up, up_sock)
        except BaseException as exc:  # the test reports these
            self.errors.append(exc)
        finally:
            job_sock.close()
            if up_sock is not None:
                up_sock.close()

    def _relay(
        self,
        job: ClientConnection,
        job_sock: socket.socket,
        up: ServerConnection,
        up_sock: socket.socket,
    ) -> None:
        sel = selectors.DefaultSelector()
        sel.register(job_sock, selectors.EVENT_READ, "job")
        sel.register(up_sock, selectors.EVENT_READ, "up")
        while True:
            for key, _ in sel.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data = sock.recv(65536)
                if key.data == "job":
                    events = job.receive_eof() if not data else job.receive_data(data)
                    target = up_sock
                else:
                    events = up.receive_eof() if not data else up.receive_data(data)
                    target = job_sock
                for ev in events:
                    if isinstance(ev, Messages):
                        target.sendall(ev.chunk)
                if not data or any(isinstance(e, Terminated) for e in events):
                    return


@pytest.fixture
def proxy(pg: LocalPg) -> Iterator[MiniProxy]:
    p = MiniProxy(pg, "scram_user")
    try:
        yield p
    finally:
        p.close()
    assert not p.errors, p.errors


def test_psql_without_password_through_the_proxy(pg: LocalPg, proxy: MiniProxy) -> None:
    env = {"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "20"}  # no PGPASSWORD, no .pgpass
    out = subprocess.run(
        ["/usr/lib/postgresql/15/bin/psql", "-X", "-At", "-h", "127.0.0.1", "-p",
         str(proxy.port), "-U", "job", "-d", "scram_user",
         "-c", "select current_user, count(*) from generate_series(1, 5000)"],
        env=env, capture_output=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().strip() == "scram_user|5000"


_CANCEL_CLIENT = """
import sys, threading, time, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
assert conn.execute("select %s::int + 1", (41,)).fetchone() == (42,)
with conn.cursor().copy("copy (select generate_series(1, 3)) to stdout") as copy:
    assert [bytes(row) for row in copy] == [b"1\\n", b"2\\n", b"3\\n"]
print(conn.pgconn.backend_pid, flush=True)
errors = []
def sleeper():
    try:
        conn.execute("select pg_sleep(60)")
    except BaseException as exc:
        errors.append(exc)
t = threading.Thread(target=sleeper)
t.start()
sys.stdin.readline()  # the test saw the statement running on the server
conn.cancel()
t.join(timeout=60)
print(type(errors[0]).__name__ if errors else "no error", flush=True)
"""


def test_psycopg_extended_copy_and_cancel_through_the_proxy(pg: LocalPg, proxy: MiniProxy) -> None:
    # The client runs in its own process: libpq's cancel blocks while holding the GIL, which
    # would starve this in-process proxy's threads.
    dsn = f"host=127.0.0.1 port={proxy.port} user=job dbname=scram_user sslmode=prefer"
    client = subprocess.Popen(
        [sys.executable, "-c", _CANCEL_CLIENT, dsn],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert client.stdout is not None and client.stdin is not None
        info = int(client.stdout.readline())
        assert info != 0
        for _ in range(1200):  # wait (bounded) until the statement runs on the server
            active = pg.sql("select string_agg(query, ',') from pg_stat_activity")
            if "pg_sleep(60)" in active:
                break
            threading.Event().wait(0.05)
        client.stdin.write("go\n")
        client.stdin.flush()
        outcome = client.stdout.readline().strip()
        assert outcome == "QueryCanceled", client.stderr.read() if client.stderr else ""
        assert proxy.cancels_forwarded == 1
        # The job's backend pid is the appliance's, not the server's.
        server_pids = pg.sql("select string_agg(pid::text, ',') from pg_stat_activity")
        assert str(info) not in server_pids.split(",")
    finally:
        client.kill()
        client.wait()
