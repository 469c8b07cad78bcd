"""The upstream state machine authenticates against a real PostgreSQL 15 (lab: needs root).

A server is started for this module in a temporary directory on 127.0.0.1 (see
``tests/unit/postgres/localpg.py``) with one role per authentication method. A small
blocking driver runs :class:`ServerConnection` over a real socket (and real TLS), which is
what the asyncio shell does, minus the event loop.
"""

from __future__ import annotations

import secrets
import socket
import ssl
from collections.abc import Iterator

import pytest

from appliance.credentials.scram import scram_verifier
from appliance.protocols.postgres import (
    Authenticated,
    Messages,
    PeerProtocolError,
    ServerConnection,
    ServerReady,
    StartTLS,
    StartupFailed,
    UpstreamAuthenticationError,
)
from appliance.protocols.postgres.messages import (
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
