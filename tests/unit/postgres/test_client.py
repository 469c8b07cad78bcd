"""The job-facing state machine: real client conversations replayed whole, one byte at a
time and in odd chunk sizes (same events every time), then negotiation and error paths."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from appliance.protocols.postgres import (
    CancelRequested,
    ClientClosed,
    ClientConnection,
    ClientState,
    GSSEncRequested,
    Limits,
    LocalProtocolError,
    Messages,
    PasswordReceived,
    PeerProtocolError,
    SSLRequested,
    StartupReceived,
    Terminated,
    UpstreamAuthenticationError,
)
from appliance.protocols.postgres.messages import (
    BackendKeyData,
    CancelRequest,
    ErrorResponse,
    GSSENCRequest,
    NegotiateProtocolVersion,
    PasswordMessage,
    Query,
    SSLRequest,
    StartupMessage,
    Sync,
    Terminate,
    decode_backend,
    decode_frontend,
)
from tests.unit.postgres.transcripts import (
    NAMES,
    bytewise,
    load,
    reference_split,
    resplit,
    startup_length,
)

KEY = BackendKeyData(4242, b"\x01\x02\x03\x04")
PARAMS = [("server_version", "15.0"), ("client_encoding", "UTF8")]


def play(
    pieces: Iterable[bytes], *, ask_password: bool = False, conn: ClientConnection | None = None
) -> tuple[list[tuple[object, ...]], bytes]:
    """Drive a ClientConnection the way the shell does; return a normalized event log and
    everything the appliance sent to the job."""
    conn = conn or ClientConnection()
    log: list[tuple[object, ...]] = []
    sent = []
    for data in pieces:
        events = list(conn.receive_data(data))
        while events:
            ev = events.pop(0)
            if isinstance(ev, SSLRequested):
                log.append(("ssl",))
                conn.answer_ssl(False)
            elif isinstance(ev, GSSEncRequested):
                log.append(("gss",))
                conn.refuse_gssenc()
            elif isinstance(ev, StartupReceived):
                log.append(("startup", ev.user, ev.database, ev.minor, ev.unrecognized))
                if ask_password:
                    conn.request_password()
                else:
                    conn.complete_startup(PARAMS, KEY)
                    events += conn.receive_data(b"")
            elif isinstance(ev, PasswordReceived):
                log.append(("password",))
                conn.complete_startup(PARAMS, KEY)
                events += conn.receive_data(b"")
            elif isinstance(ev, Messages):
                log += [("msg", t, ev.chunk[s:e]) for t, s, e in ev.frames]
            else:
                log.append((type(ev).__name__,))
        sent.append(conn.data_to_send())
    return log, b"".join(sent)


@pytest.mark.parametrize("name", ["psql_trust", "psycopg_trust", "asyncpg_trust"])
def test_real_client_conversation_same_events_however_it_is_cut(name: str) -> None:
    t = load(name)
    pieces = t.pieces("c")
    whole, sent = play(pieces)
    assert play(bytewise(pieces))[0] == whole
    # A client waits for the SSL answer, so the startup-phase pieces keep their boundaries.
    head, done = [], 0
    while done < startup_length(t.stream("c")):
        head.append(pieces[len(head)])
        done += len(head[-1])
    for size in (2, 7, 4096):
        assert play(head + list(resplit(pieces[len(head) :], size)))[0] == whole
    # The framer's split equals the obvious one, and the conversation ended with Terminate.
    stream = t.stream("c")
    expected = [("msg", ty, fr) for ty, fr in reference_split(stream[startup_length(stream) :])]
    assert [e for e in whole if e[0] == "msg"] == expected
    assert whole[-1] == ("Terminated",)
    assert ("startup", "trust_user", "trust_user", 0, ()) in whole
    # What the job was told: (N,) AuthenticationOk, parameters, our key, ReadyForQuery.
    frames = reference_split(sent.removeprefix(b"N"))
    assert [decode_backend(ty, fr[5:]) for ty, fr in frames][-1].encode() == b"Z\0\0\0\x05I"
    assert KEY.encode() in sent


@pytest.mark.parametrize("name", NAMES)
def test_every_real_frontend_message_decodes_and_reencodes_identically(name: str) -> None:
    stream = load(name).stream("c")
    for ty, fr in reference_split(stream[startup_length(stream) :]):
        msg = decode_frontend(ty, fr[5:])
        assert msg.encode() == fr, msg


def test_psql_with_requested_password_is_accepted_and_discarded() -> None:
    t = load("psql_clear")
    log, sent = play(t.pieces("c"), ask_password=True)
    assert log[:2] == [("startup", "clear_user", "clear_user", 0, ()), ("password",)]
    assert sent.startswith(b"R\0\0\0\x08\0\0\0\x03")  # AuthenticationCleartextPassword
    assert t.password not in repr(log)  # the password is not in any event
    assert log[-1] == ("Terminated",)


def test_ssl_refused_then_startup() -> None:
    conn = ClientConnection()
    assert conn.receive_data(SSLRequest().encode()) == [SSLRequested()]
    assert conn.state is ClientState.SSL_REQUESTED
    conn.answer_ssl(False)
    assert conn.data_to_send() == b"N"
    [ev] = conn.receive_data(StartupMessage(3, 0, {"user": "u"}).encode())
    assert isinstance(ev, StartupReceived) and ev.database == "u"


def test_ssl_accepted_waits_for_handshake_then_startup_over_tls() -> None:
    conn = ClientConnection()
    conn.receive_data(SSLRequest().encode())
    conn.answer_ssl(True)
    assert conn.data_to_send() == b"S"
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"\x16\x03\x01")  # the shell must not feed TLS records
    conn.tls_established()
    [ev] = conn.receive_data(StartupMessage(3, 0, {"user": "u", "database": "d"}).encode())
    assert isinstance(ev, StartupReceived) and conn.tls


def test_second_ssl_request_inside_tls_is_rejected() -> None:
    conn = ClientConnection()
    conn.receive_data(SSLRequest().encode())
    conn.answer_ssl(True)
    conn.tls_established()
    with pytest.raises(PeerProtocolError, match="second SSLRequest"):
        conn.receive_data(SSLRequest().encode())


def test_bytes_after_ssl_request_in_the_same_read_are_rejected() -> None:
    # CVE-2021-23214: a man in the middle appends a cleartext query to the SSLRequest.
    conn = ClientConnection()
    injected = SSLRequest().encode() + StartupMessage(3, 0, {"user": "u"}).encode()
    with pytest.raises(PeerProtocolError, match="unencrypted data after SSL") as info:
        conn.receive_data(injected)
    assert info.value.side == "client" and info.value.sqlstate == "08P01"


def test_bytes_arriving_before_the_ssl_answer_are_rejected() -> None:
    conn = ClientConnection()
    conn.receive_data(SSLRequest().encode())
    with pytest.raises(PeerProtocolError, match="unencrypted data after SSL"):
        conn.receive_data(b"\0")


def test_gssenc_refused_then_ssl_then_startup() -> None:
    conn = ClientConnection()
    assert conn.receive_data(GSSENCRequest().encode()) == [GSSEncRequested()]
    with pytest.raises(LocalProtocolError):
        conn.answer_ssl(False)
    conn.refuse_gssenc()
    assert conn.data_to_send() == b"N"
    assert conn.receive_data(SSLRequest().encode()) == [SSLRequested()]
    conn.answer_ssl(False)
    with pytest.raises(PeerProtocolError, match="second GSSENCRequest"):
        conn.receive_data(GSSENCRequest().encode())


def test_bytes_after_gssenc_request_are_rejected() -> None:
    conn = ClientConnection()
    with pytest.raises(PeerProtocolError, match="GSSAPI"):
        conn.receive_data(GSSENCRequest().encode() + b"x")


def test_cancel_request_ends_the_connection() -> None:
    conn = ClientConnection()
    request = CancelRequest(77, b"\xaa\xbb\xcc\xdd")
    assert conn.receive_data(request.encode()) == [CancelRequested(request)]
    assert conn.state is ClientState.CLOSED
    assert "aabb" not in repr(CancelRequested(request))
    with pytest.raises(PeerProtocolError):
        conn.receive_data(b"more")


def test_protocol_32_cancel_request_with_long_key() -> None:
    conn = ClientConnection()
    request = CancelRequest(77, bytes(range(32)))
    [ev] = conn.receive_data(request.encode())
    assert isinstance(ev, CancelRequested) and ev.request.key == bytes(range(32))


@pytest.mark.parametrize(
    ("minor", "options", "max_minor", "negotiated", "npv"),
    [
        (0, {}, 2, 0, None),
        (2, {}, 2, 2, None),
        (2, {}, 0, 0, NegotiateProtocolVersion(3, 0)),
        (1, {}, 2, 0, NegotiateProtocolVersion(3, 0)),
        (7, {}, 2, 2, NegotiateProtocolVersion(3, 2)),
        (
            0,
            {"_pq_.compression": "on", "_pq_.x": "1"},
            2,
            0,
            NegotiateProtocolVersion(3, 0, ("_pq_.compression", "_pq_.x")),
        ),
        (3, {"_pq_.a": "b"}, 2, 2, NegotiateProtocolVersion(3, 2, ("_pq_.a",))),
    ],
)
def test_protocol_version_negotiation(
    minor: int,
    options: dict[str, str],
    max_minor: int,
    negotiated: int,
    npv: NegotiateProtocolVersion | None,
) -> None:
    conn = ClientConnection(max_minor=max_minor)
    [ev] = conn.receive_data(StartupMessage(3, minor, {"user": "u", **options}).encode())
    assert isinstance(ev, StartupReceived)
    assert ev.minor == negotiated == conn.minor
    assert ev.forwardable_parameters() == {}
    key = BackendKeyData(1, bytes(32) if negotiated == 2 else bytes(4))
    conn.complete_startup([], key)
    sent = conn.data_to_send()
    frames = reference_split(sent)
    first = decode_backend(frames[0][0], frames[0][1][5:])
    if npv is None:
        assert frames[0][0] == ord("R")
    else:
        assert first == npv  # NegotiateProtocolVersion comes before AuthenticationOk
        assert frames[1][1] == b"R\0\0\0\x08\0\0\0\0"


def test_protocol_30_refuses_a_long_key_from_the_shell() -> None:
    conn = ClientConnection()
    conn.receive_data(StartupMessage(3, 0, {"user": "u"}).encode())
    with pytest.raises(LocalProtocolError, match="4 bytes"):
        conn.complete_startup([], BackendKeyData(1, bytes(32)))


def test_unsupported_major_version_is_0a000() -> None:
    with pytest.raises(PeerProtocolError, match=r"unsupported frontend protocol 2\.0") as info:
        ClientConnection().receive_data(StartupMessage(2, 0).encode())
    assert info.value.sqlstate == "0A000"


def test_missing_user_is_28000() -> None:
    with pytest.raises(PeerProtocolError, match="no PostgreSQL user") as info:
        ClientConnection().receive_data(StartupMessage(3, 0, {"database": "d"}).encode())
    assert info.value.sqlstate == "28000"


@pytest.mark.parametrize(
    ("packet", "problem"),
    [
        (b"\0\0\0\x04", "invalid length of startup packet: 4"),
        (b"\0\0\x30\x00" + bytes(12284), "invalid length of startup packet: 12288"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01", "TLS handshake"),
        (b"\0\0\0\x0c\0\x03\0\0user", "unterminated string"),
        (b"\0\0\0\x0e\0\x03\0\0u\0v\0\0x", "trailing"),
        (b"\0\0\0\x11\0\x03\0\0a\0b\0a\0c\0\0", "given twice"),
        (b"\0\0\0\x0c\x04\xd2\x16\x2f\0\0\0\0", "trailing"),  # SSLRequest with a body
        (b"\0\0\0\x0c\x04\xd2\x16\x2e\0\0\0\x01", "cancel key of 0 bytes"),
    ],
)
def test_malformed_startup_packets(packet: bytes, problem: str) -> None:
    with pytest.raises(PeerProtocolError, match=problem):
        ClientConnection().receive_data(packet)


def test_oversized_message_is_refused_from_its_header() -> None:
    conn = ClientConnection(limits=Limits(query=1000))
    play([StartupMessage(3, 0, {"user": "u"}).encode()], conn=conn)
    header = b"Q" + (1005).to_bytes(4, "big")  # body never sent: refused on the header
    with pytest.raises(PeerProtocolError, match="over the cap of 1000"):
        conn.receive_data(header)


def test_password_message_is_refused_after_authentication() -> None:
    conn = ClientConnection()
    play([StartupMessage(3, 0, {"user": "u"}).encode()], conn=conn)
    with pytest.raises(PeerProtocolError, match="unexpected message type 'p'"):
        conn.receive_data(PasswordMessage("x").encode())


def test_messages_sent_before_authentication_completes_are_kept_for_ready() -> None:
    conn = ClientConnection()
    early = Query("select 1").encode() + Sync().encode()
    [ev] = conn.receive_data(StartupMessage(3, 0, {"user": "u"}).encode() + early[:3])
    assert isinstance(ev, StartupReceived)
    assert conn.receive_data(early[3:]) == []
    conn.complete_startup([], KEY)
    [msgs] = conn.receive_data(b"")
    assert isinstance(msgs, Messages) and msgs.chunk == early and msgs.types() == b"QS"


def test_too_much_before_authentication_completes_is_refused() -> None:
    conn = ClientConnection(limits=Limits(frontend_other=100))
    with pytest.raises(PeerProtocolError, match="before authentication completed"):
        conn.receive_data(StartupMessage(3, 0, {"user": "u"}).encode() + bytes(101))


def test_data_after_terminate_is_refused() -> None:
    conn = ClientConnection()
    play([StartupMessage(3, 0, {"user": "u"}).encode()], conn=conn)
    with pytest.raises(PeerProtocolError, match="data after Terminate"):
        conn.receive_data(Terminate().encode() + Sync().encode())


def test_terminate_closes() -> None:
    conn = ClientConnection()
    play([StartupMessage(3, 0, {"user": "u"}).encode()], conn=conn)
    events = conn.receive_data(Query("select 1").encode() + Terminate().encode())
    assert isinstance(events[0], Messages) and events[0].types() == b"QX"
    assert events[1] == Terminated() and conn.state is ClientState.CLOSED


def test_eof_between_messages_is_clean_inside_a_message_is_not() -> None:
    conn = ClientConnection()
    assert conn.receive_eof() == [ClientClosed()]
    conn = ClientConnection()
    play([StartupMessage(3, 0, {"user": "u"}).encode()], conn=conn)
    conn.receive_data(Query("select 1").encode()[:4])
    with pytest.raises(PeerProtocolError, match="inside a message"):
        conn.receive_eof()


def test_reject_sends_fatal_and_closes() -> None:
    conn = ClientConnection()
    conn.receive_data(StartupMessage(3, 0, {"user": "u"}).encode())
    conn.reject("08004", "cannot reach the target", detail="connection refused")
    [(ty, fr)] = reference_split(conn.data_to_send())
    err = decode_backend(ty, fr[5:])
    assert err.encode() == fr
    assert err.severity == "FATAL" and err.code == "08004"  # type: ignore[union-attr]
    assert conn.state is ClientState.CLOSED
    with pytest.raises(LocalProtocolError):
        conn.reject("08004", "again")


def test_reject_peer_error_blames_the_server_without_confusing_the_job() -> None:
    conn = ClientConnection()
    conn.receive_data(StartupMessage(3, 0, {"user": "u"}).encode())
    conn.reject_peer_error(PeerProtocolError("bad BackendKeyData", side="server"))
    [(ty, fr)] = reference_split(conn.data_to_send())
    err = decode_backend(ty, fr[5:])
    assert err.message == "the upstream server broke the protocol"  # type: ignore[union-attr]
    assert err.detail == "bad BackendKeyData"  # type: ignore[union-attr]


def test_reject_upstream_authentication_error() -> None:
    conn = ClientConnection()
    conn.receive_data(StartupMessage(3, 0, {"user": "u"}).encode())
    conn.reject_peer_error(UpstreamAuthenticationError("the server asks for GSSAPI"))
    [(ty, fr)] = reference_split(conn.data_to_send())
    err = decode_backend(ty, fr[5:])
    assert isinstance(err, ErrorResponse)
    assert err.code == "08004" and err.detail == "the server asks for GSSAPI"


def test_actions_out_of_state_are_local_errors() -> None:
    conn = ClientConnection()
    for action in (
        lambda: conn.answer_ssl(True),
        conn.tls_established,
        conn.refuse_gssenc,
        conn.request_password,
        lambda: conn.complete_startup([], KEY),
    ):
        with pytest.raises(LocalProtocolError):
            action()
