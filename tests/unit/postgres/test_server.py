"""The upstream state machine: real server conversations replayed (our bytes must equal
what libpq sent, byte for byte, given libpq's nonce), a scripted SCRAM server for the
failure paths, and every way a server can misbehave during startup."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Iterable

import pytest

from appliance.credentials.scram import salted_password
from appliance.protocols.postgres import (
    Authenticated,
    Messages,
    PeerProtocolError,
    ServerClosed,
    ServerConnection,
    ServerReady,
    ServerState,
    StartTLS,
    StartupFailed,
    UpstreamAuthenticationError,
)
from appliance.protocols.postgres._errors import LocalProtocolError
from appliance.protocols.postgres.messages import (
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationOther,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    DataRow,
    NegotiateProtocolVersion,
    NoticeResponse,
    NotificationResponse,
    ParameterStatus,
    ReadyForQuery,
    SASLInitialResponse,
    StartupMessage,
    datarow_values,
    decode_backend,
    decode_frontend,
    decode_sasl_initial_response,
    decode_startup,
    error_response,
)
from tests.unit.postgres.transcripts import (
    NAMES,
    bytewise,
    load,
    reference_split,
    startup_length,
)

READY_TAIL = (
    ParameterStatus("server_version", "15.0").encode()
    + BackendKeyData(99, b"\x00\x01\x02\x03").encode()
    + ReadyForQuery("I").encode()
)


def fixed(data: bytes) -> Callable[[int], bytes]:
    def random_bytes(n: int) -> bytes:
        assert n == len(data)
        return data

    return random_bytes


def connection(
    password: str = "secret", random_bytes: Callable[[int], bytes] | None = None, **kw: object
) -> ServerConnection:
    conn = ServerConnection(
        user="svc",
        database="db",
        password=password,
        random_bytes=random_bytes or fixed(bytes(range(18))),
        tls=kw.pop("tls", "disable"),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    conn.initiate()
    return conn


def feed(conn: ServerConnection, pieces: Iterable[bytes]) -> list[object]:
    events: list[object] = []
    for data in pieces:
        for ev in conn.receive_data(data):
            if isinstance(ev, Messages):
                events += [("msg", t, ev.chunk[s:e]) for t, s, e in ev.frames]
            else:
                events.append(ev)
    return events


def replay(name: str, pieces: Iterable[bytes] | None = None) -> tuple[list[object], bytes, bytes]:
    """Run a ServerConnection configured like libpq was against the recorded server
    bytes; return events, what we sent, and what libpq sent."""
    t = load(name)
    client = t.stream("c")
    packets, pos = [], 0
    while pos < startup_length(client):
        length = int.from_bytes(client[pos : pos + 4], "big")
        packets.append(decode_startup(client[pos : pos + length]))
        pos += length
    startup = packets[-1]
    assert isinstance(startup, StartupMessage)
    params = dict(startup.parameters)
    user, database = params.pop("user"), params.pop("database")
    nonce = bytes(18)
    first = reference_split(client[pos:])[0]
    if first[0] == ord("p") and first[1][5:].startswith(b"SCRAM"):
        sasl = decode_sasl_initial_response(first[1][5:])
        assert sasl.data is not None
        nonce = base64.b64decode(sasl.data.split(b"r=")[1])
    conn = ServerConnection(
        user=user,
        database=database,
        password=t.password,
        random_bytes=fixed(nonce),
        parameters=params,
        tls="prefer" if len(packets) > 1 else "disable",
    )
    conn.initiate()
    sent = [conn.data_to_send()]
    events: list[object] = []
    for data in t.pieces("s") if pieces is None else pieces:
        events += feed(conn, [data])
        sent.append(conn.data_to_send())
    return events, b"".join(sent), client


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("psql_scram", "scram-sha-256"),
        ("psql_md5", "md5"),
        ("psql_clear", "password"),
        ("psql_trust", "none"),
        ("psycopg_trust", "none"),
        ("asyncpg_trust", "none"),
    ],
)
def test_replayed_server_conversation(name: str, method: str) -> None:
    events, sent, client = replay(name)
    assert Authenticated(method) in events
    [ready] = [e for e in events if isinstance(e, ServerReady)]
    assert dict(ready.parameters)["server_version"].startswith("15")
    assert ready.backend_key is not None and ready.minor == 0
    # Our startup and authentication bytes are what libpq sent (asyncpg orders its
    # startup parameters differently, so compare that one decoded).
    if name.startswith("psql"):
        assert client.startswith(sent)
    # Everything after ReadyForQuery came out as relayable messages, split correctly.
    server = load(name).stream("s")
    tail = [("msg", t, fr) for t, fr in reference_split(server.removeprefix(b"N"))]
    i = [type(x).__name__ for x in (decode_backend(t, fr[5:]) for _, t, fr in tail)].index(
        "ReadyForQuery"
    )
    assert [e for e in events if isinstance(e, tuple)] == tail[i + 1 :]
    # One byte at a time: the same events and the same bytes sent.
    t = load(name)
    assert replay(name, bytewise(t.pieces("s")))[:2] == (events, sent)


def test_scram_client_messages_equal_libpq_byte_for_byte() -> None:
    _, sent, client = replay("psql_scram")
    frames = reference_split(client[startup_length(client) :])
    ours = reference_split(sent[startup_length(sent) :])
    assert [f for _, f in ours] == [f for _, f in frames[: len(ours)]]
    assert [t for t, _ in ours] == [ord("p"), ord("p")]  # SASLInitialResponse, SASLResponse


@pytest.mark.parametrize("name", NAMES)
def test_every_real_backend_message_decodes_and_reencodes_identically(name: str) -> None:
    for ty, fr in reference_split(load(name).stream("s").removeprefix(b"N")):
        msg = decode_backend(ty, fr[5:])
        assert msg.encode() == fr, msg
        if isinstance(msg, DataRow):
            assert tuple(datarow_values(fr, 5)) == msg.values


# -- a scripted SCRAM server (RFC 5802 server side), for the failure paths ----------------


class ScramServer:
    def __init__(self, password: str, *, salt: bytes = b"0123456789ab", iterations: int = 4096):
        salted = salted_password(password, salt, iterations)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        self.stored_key = hashlib.sha256(client_key).digest()
        self.server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self.salt, self.iterations = salt, iterations

    def first(self, initial: bytes, *, nonce_suffix: str = "SERVERNONCE") -> bytes:
        msg = decode_frontend(ord("p"), initial[5:])
        sasl = decode_sasl_initial_response(msg.data)  # type: ignore[union-attr]
        assert sasl.data is not None
        self.gs2, _, self.client_bare = sasl.data.partition(b"n=")
        self.client_bare = b"n=" + self.client_bare
        self.mechanism = sasl.mechanism
        self.nonce = self.client_bare.split(b"r=")[1].decode() + nonce_suffix
        salt = base64.b64encode(self.salt).decode()
        self.server_first = f"r={self.nonce},s={salt},i={self.iterations}".encode()
        return AuthenticationSASLContinue(self.server_first).encode()

    def final(self, response: bytes, *, tamper: bool = False) -> bytes:
        client_final = response[5:]
        without_proof, _, proof_b64 = client_final.rpartition(b",p=")
        auth = self.client_bare + b"," + self.server_first + b"," + without_proof
        signature = hmac.new(self.stored_key, auth, hashlib.sha256).digest()
        client_key = bytes(
            a ^ b for a, b in zip(base64.b64decode(proof_b64), signature, strict=True)
        )
        assert hashlib.sha256(client_key).digest() == self.stored_key, "wrong client proof"
        server_sig = hmac.new(self.server_key, auth, hashlib.sha256).digest()
        if tamper:
            server_sig = bytes(32)
        return AuthenticationSASLFinal(b"v=" + base64.b64encode(server_sig)).encode()


def test_scram_against_scripted_server() -> None:
    conn = connection()
    server = ScramServer("secret")
    final = scram_exchange_until_final(conn, server)
    assert server.gs2 == b"n,,"  # no TLS: no channel binding possible
    feed(conn, [server.final(final)])
    events = feed(conn, [AuthenticationOk().encode() + READY_TAIL])
    assert events[0] == Authenticated("scram-sha-256")
    assert isinstance(events[1], ServerReady) and conn.state is ServerState.READY
    assert "secret" not in repr(conn) + repr(events)


def _last_frame(conn: ServerConnection) -> bytes:
    """The newest frame the connection queued (the startup packet is dropped)."""
    data = conn.data_to_send()
    while data[:1] == b"\0":  # untyped SSLRequest / startup packets first
        data = data[int.from_bytes(data[:4], "big") :]
    return reference_split(data)[-1][1]


def scram_exchange_until_final(
    conn: ServerConnection, server: ScramServer, mechanisms: tuple[str, ...] = ("SCRAM-SHA-256",)
) -> bytes:
    feed(conn, [AuthenticationSASL(mechanisms).encode()])
    feed(conn, [server.first(_last_frame(conn))])
    return _last_frame(conn)


def test_wrong_server_signature_is_refused() -> None:
    conn = connection()
    server = ScramServer("secret")
    final = scram_exchange_until_final(conn, server)
    with pytest.raises(UpstreamAuthenticationError, match="signature is wrong"):
        feed(conn, [server.final(final, tamper=True)])


def test_authentication_ok_before_the_server_proof_is_refused() -> None:
    conn = connection()
    scram_exchange_until_final(conn, ScramServer("secret"))
    with pytest.raises(UpstreamAuthenticationError, match="before proving"):
        feed(conn, [AuthenticationOk().encode()])


def test_server_that_does_not_know_the_password_fails_our_check_first() -> None:
    # A server holding another verifier cannot produce our expected signature.
    conn = connection(password="secret")
    impostor = ScramServer("other")
    feed(conn, [AuthenticationSASL(("SCRAM-SHA-256",)).encode()])
    feed(conn, [impostor.first(_last_frame(conn))])
    _last_frame(conn)
    fake_final = AuthenticationSASLFinal(b"v=" + base64.b64encode(bytes(32))).encode()
    with pytest.raises(UpstreamAuthenticationError, match="signature is wrong"):
        feed(conn, [fake_final])


@pytest.mark.parametrize(
    ("server_first", "problem"),
    [
        (b"r=AAECAwQFBgcICQoLDA0ODxAR,s=c2FsdA==,i=4096", "does not extend"),
        (b"r=other,s=c2FsdA==,i=4096", "does not extend"),
        (b"r=AAECAwQFBgcICQoLDA0ODxARxx,s=c2FsdA==,i=999999999", "iteration count"),
        (b"r=AAECAwQFBgcICQoLDA0ODxARxx,s=!!,i=4096", "base64"),
        (b"r=AAECAwQFBgcICQoLDA0ODxARxx,i=4096", "must start with"),
        (b"m=ext,r=AAECAwQFBgcICQoLDA0ODxARxx,s=c2FsdA==,i=1", "extension"),
        (b"garbage", "malformed"),
        (b"r=AAECAwQFBgcICQoLDA0ODxARxx,s=,i=4096", "salt is empty"),
    ],
)
def test_malformed_server_first_messages(server_first: bytes, problem: str) -> None:
    conn = connection()
    feed(conn, [AuthenticationSASL(("SCRAM-SHA-256",)).encode()])
    with pytest.raises(UpstreamAuthenticationError, match=problem):
        feed(conn, [AuthenticationSASLContinue(server_first).encode()])


def test_scram_plus_with_channel_binding_over_tls() -> None:
    from tests.unit.credentials.test_scram import make_certificate

    cert, expected_cbind = make_certificate("sha384")
    conn = connection(tls="require")
    assert conn.data_to_send() == b"\0\0\0\x08\x04\xd2\x16\x2f"
    assert feed(conn, [b"S"]) == [StartTLS()]
    conn.tls_established(cert)
    server = ScramServer("secret")
    final = scram_exchange_until_final(conn, server, ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"))
    assert server.mechanism == "SCRAM-SHA-256-PLUS"
    assert server.gs2 == b"p=tls-server-end-point,,"
    c_attr = final[5:].split(b",")[0]
    assert base64.b64decode(c_attr[2:]) == b"p=tls-server-end-point,," + expected_cbind
    feed(conn, [server.final(final)])
    assert feed(conn, [AuthenticationOk().encode()]) == [Authenticated("scram-sha-256-plus")]


def test_tls_without_plus_offered_says_y() -> None:
    from tests.unit.credentials.test_scram import make_certificate

    conn = connection(tls="prefer")
    feed(conn, [b"S"])
    conn.tls_established(make_certificate("sha256")[0])
    server = ScramServer("secret")
    scram_exchange_until_final(conn, server)
    assert server.gs2 == b"y,,"  # we could bind, the server did not offer it (RFC 5802)


def test_channel_binding_required_but_not_offered() -> None:
    from tests.unit.credentials.test_scram import make_certificate

    conn = connection(tls="require", channel_binding="require")
    feed(conn, [b"S"])
    conn.tls_established(make_certificate("sha256")[0])
    with pytest.raises(UpstreamAuthenticationError, match="does not offer SCRAM-SHA-256-PLUS"):
        feed(conn, [AuthenticationSASL(("SCRAM-SHA-256",)).encode()])


def test_channel_binding_required_refuses_trust() -> None:
    from tests.unit.credentials.test_scram import make_certificate

    conn = connection(tls="require", channel_binding="require")
    feed(conn, [b"S"])
    conn.tls_established(make_certificate("sha256")[0])
    with pytest.raises(UpstreamAuthenticationError, match=r"without (authentication|it)"):
        feed(conn, [AuthenticationOk().encode()])


def test_md5_and_cleartext_answers() -> None:
    conn = connection()
    feed(conn, [AuthenticationMD5Password(b"\x01\x02\x03\x04").encode()])
    frame = _last_frame(conn)
    inner = hashlib.md5(b"secretsvc").hexdigest().encode()
    assert (
        frame[5:] == b"md5" + hashlib.md5(inner + b"\x01\x02\x03\x04").hexdigest().encode() + b"\0"
    )
    conn = connection()
    feed(conn, [AuthenticationCleartextPassword().encode()])
    assert _last_frame(conn) == b"p\0\0\0\x0bsecret\0"


@pytest.mark.parametrize(
    ("request_", "allowed", "problem"),
    [
        (AuthenticationCleartextPassword(), {"scram-sha-256"}, "cleartext"),
        (AuthenticationMD5Password(b"abcd"), {"scram-sha-256", "password"}, "md5"),
        (AuthenticationSASL(("SCRAM-SHA-256",)), {"md5"}, "SCRAM-SHA-256"),
        (AuthenticationOk(), {"md5"}, "without authentication"),
        (AuthenticationSASL(("SCRAM-SHA-1",)), {"scram-sha-256"}, "no supported SASL"),
        (AuthenticationOther(7), {"scram-sha-256"}, "GSSAPI"),
    ],
)
def test_methods_the_configuration_does_not_allow(
    request_: object, allowed: set[str], problem: str
) -> None:
    conn = connection(auth_methods=frozenset(allowed))
    with pytest.raises(UpstreamAuthenticationError, match=problem):
        feed(conn, [request_.encode()])  # type: ignore[attr-defined]


def test_wrong_password_is_startup_failed() -> None:
    conn = connection()
    feed(conn, [AuthenticationCleartextPassword().encode()])
    err = error_response("FATAL", "28P01", 'password authentication failed for user "svc"')
    [ev] = feed(conn, [err])
    assert isinstance(ev, StartupFailed) and ev.authentication_failed
    assert conn.state is ServerState.FAILED
    assert conn.receive_eof() == [ServerClosed()]


def test_error_after_authentication_is_startup_failed() -> None:
    conn = connection()
    err = error_response("FATAL", "3D000", 'database "db" does not exist')
    events = feed(conn, [AuthenticationOk().encode() + err])
    assert events[0] == Authenticated("none")
    assert isinstance(events[1], StartupFailed) and not events[1].authentication_failed


def test_notices_during_startup_are_kept_for_the_job() -> None:
    conn = connection()
    notice = NoticeResponse({"S": "WARNING", "C": "01000", "M": "hi"}).encode()
    events = feed(conn, [AuthenticationOk().encode() + notice + READY_TAIL])
    ready = events[1]
    assert isinstance(ready, ServerReady) and ready.notices == (notice,)
    assert ready.parameters == (("server_version", "15.0"),)


def test_asynchronous_messages_right_after_ready_are_relayed() -> None:
    conn = connection()
    note = NotificationResponse(1, "c", "p").encode()
    events = feed(conn, [AuthenticationOk().encode() + READY_TAIL + note])
    assert events[-1] == ("msg", ord("A"), note)


def test_negotiate_protocol_version_down_from_32() -> None:
    conn = connection(minor=2)
    startup = decode_startup(conn.data_to_send())
    assert isinstance(startup, StartupMessage) and startup.minor == 2
    events = feed(
        conn, [NegotiateProtocolVersion(3, 0).encode() + AuthenticationOk().encode() + READY_TAIL]
    )
    assert isinstance(events[1], ServerReady) and events[1].minor == 0


def test_protocol_32_accepts_a_long_backend_key() -> None:
    conn = connection(minor=2)
    key = BackendKeyData(5, bytes(range(32)))
    tail = key.encode() + ReadyForQuery("I").encode()
    events = feed(conn, [AuthenticationOk().encode() + tail])
    assert isinstance(events[1], ServerReady) and events[1].backend_key == key


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (NegotiateProtocolVersion(3, 5).encode(), "negotiated protocol 3.5"),
        (ReadyForQuery("I").encode(), "before authentication"),
        (ParameterStatus("a", "b").encode(), "before authentication"),
        (b"D\0\0\0\x06\0\0", "'D' before authentication"),
        (b"x\0\0\0\x04", "unexpected message type 'x'"),
        (AuthenticationSASLFinal(b"v=x").encode(), "unexpected AuthenticationSASLFinal"),
        (AuthenticationSASLContinue(b"r=x").encode(), "unexpected AuthenticationSASLContinue"),
        (
            AuthenticationCleartextPassword().encode() * 2,
            "a second authentication request",
        ),
        (AuthenticationOk().encode() + AuthenticationOk().encode(), "between AuthenticationOk"),
        (
            AuthenticationOk().encode() + BackendKeyData(1, bytes(8)).encode(),
            "3.0 cancel keys are 4 bytes",
        ),
        (
            AuthenticationOk().encode() + BackendKeyData(1, bytes(4)).encode() * 2,
            "BackendKeyData sent twice",
        ),
        (b"R\0\0\0\x03", "invalid message length 3"),
        (b"R\0\0\0\x08\0\0\0\x05", "truncated"),
    ],
)
def test_misbehaving_server_during_startup(data: bytes, problem: str) -> None:
    conn = connection()
    with pytest.raises(PeerProtocolError, match=problem) as info:
        feed(conn, [data])
    assert info.value.side == "server"


@pytest.mark.parametrize(
    ("answer", "exc", "problem"),
    [
        (b"S" + b"R\0\0\0\x08\0\0\0\0", PeerProtocolError, "unencrypted data after the SSL"),
        (b"X", PeerProtocolError, "invalid response to SSLRequest"),
        (b"NR", PeerProtocolError, "data after the SSL refusal"),
    ],
)
def test_bad_ssl_responses(answer: bytes, exc: type[Exception], problem: str) -> None:
    conn = connection(tls="prefer")
    with pytest.raises(exc, match=problem):
        feed(conn, [answer])


def test_tls_required_but_refused() -> None:
    conn = connection(tls="verify-full")
    with pytest.raises(UpstreamAuthenticationError, match="does not support TLS"):
        feed(conn, [b"N"])


def test_tls_preferred_but_refused_goes_on_in_clear() -> None:
    conn = connection(tls="prefer")
    conn.data_to_send()
    assert feed(conn, [b"N"]) == []
    assert isinstance(decode_startup(conn.data_to_send()), StartupMessage)
    assert not conn.tls


def test_error_instead_of_ssl_answer() -> None:
    conn = connection(tls="prefer")
    err = error_response("FATAL", "53300", "sorry, too many clients already")
    events = feed(conn, bytewise([err]))
    assert len(events) == 1 and isinstance(events[0], StartupFailed)
    assert events[0].error.code == "53300"


def test_eof_before_ready_blames_the_server() -> None:
    conn = connection()
    with pytest.raises(PeerProtocolError, match="closed the connection unexpectedly"):
        conn.receive_eof()


def test_eof_inside_a_message_after_ready() -> None:
    conn = connection()
    feed(conn, [AuthenticationOk().encode() + READY_TAIL + b"D\0\0"])
    with pytest.raises(PeerProtocolError, match="inside a message"):
        conn.receive_eof()


def test_close_sends_terminate() -> None:
    conn = connection()
    conn.data_to_send()
    conn.close()
    assert conn.data_to_send() == b"X\0\0\0\x04"
    with pytest.raises(PeerProtocolError, match="after the session ended"):
        conn.receive_data(b"x")


def test_constructor_and_order_checks() -> None:
    with pytest.raises(LocalProtocolError):
        ServerConnection(
            user="u", database="d", password="p", random_bytes=bytes, parameters={"user": "x"}
        )
    with pytest.raises(LocalProtocolError):
        ServerConnection(
            user="u", database="d", password="p", random_bytes=bytes, parameters={"_pq_.a": "1"}
        )
    with pytest.raises(ValueError):
        ServerConnection(
            user="u", database="d", password="p", random_bytes=bytes, auth_methods=frozenset()
        )
    conn = ServerConnection(user="u", database="d", password="p", random_bytes=bytes)
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"R")
    with pytest.raises(LocalProtocolError):
        conn.tls_established(None)
    conn.initiate()
    with pytest.raises(LocalProtocolError):
        conn.initiate()


def test_sasl_initial_response_wire_shape() -> None:
    conn = connection()
    feed(conn, [AuthenticationSASL(("SCRAM-SHA-256",)).encode()])
    frame = _last_frame(conn)
    msg = decode_sasl_initial_response(frame[5:])
    assert msg == SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=AAECAwQFBgcICQoLDA0ODxAR")
