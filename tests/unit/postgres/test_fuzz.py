"""Fuzzing both directions: random bytes and mutated real conversations, fed whole and in
small pieces. Whatever arrives, the only errors are the peer errors, every call returns
(no hang), and the buffers stay within the caps."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.protocols.postgres import (
    ClientConnection,
    GSSEncRequested,
    Limits,
    Messages,
    PasswordReceived,
    PeerProtocolError,
    ServerConnection,
    SSLRequested,
    StartTLS,
    StartupReceived,
    UpstreamAuthenticationError,
)
from appliance.protocols.postgres.messages import (
    BackendKeyData,
    datarow_values,
    decode_backend,
    decode_frontend,
    decode_startup,
)
from tests.unit.postgres.transcripts import load

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LIMITS = Limits(
    startup=2000, query=4096, bind=4096, copy_data=4096, data_row=4096, frontend_other=1024,
    backend_other=2048,
)  # fmt: skip
BOUND = max(LIMITS.largest + 5, LIMITS.frontend_other)

CLIENT_STREAMS = [load(n).stream("c") for n in ("psycopg_trust", "asyncpg_trust", "psql_clear")]
SERVER_STREAMS = [
    load(n).stream("s")
    for n in ("psycopg_trust", "asyncpg_trust", "psql_md5", "psql_clear", "psql_trust")
]
SERVER_STREAMS[-1] = SERVER_STREAMS[-1][:6000]  # the head of psql's session (with N)


@st.composite
def mutated(draw: st.DrawFn, streams: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(streams)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        op = draw(st.sampled_from(["flip", "delete", "insert", "length", "truncate"]))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "length":
            data[pos : pos + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\0\0\0\0",
                                                        b"\x7f\xff\xff\xff", b"\0\0\0\x03"]))  # fmt: skip
        else:
            del data[pos:]
    return bytes(data)


def pieces(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        out.append(data[pos : pos + size])
        pos += size
        i += 1
    return out


def run_client(chunks: list[bytes]) -> None:
    conn = ClientConnection(limits=LIMITS)
    try:
        for data in chunks:
            events = conn.receive_data(data)
            while events:
                ev = events.pop(0)
                if isinstance(ev, SSLRequested):
                    conn.answer_ssl(False)
                elif isinstance(ev, GSSEncRequested):
                    conn.refuse_gssenc()
                elif isinstance(ev, StartupReceived):
                    if ev.startup.parameters.get("user") == "clear_user":
                        conn.request_password()
                    else:
                        conn.complete_startup([], BackendKeyData(1, bytes(32 if ev.minor else 4)))
                        events += conn.receive_data(b"")
                elif isinstance(ev, PasswordReceived):
                    conn.complete_startup([], BackendKeyData(1, bytes(32 if conn.minor else 4)))
                    events += conn.receive_data(b"")
                elif isinstance(ev, Messages):
                    for i, (t, _, _) in enumerate(ev.frames):
                        try:
                            decode_frontend(t, ev.payload(i))
                        except PeerProtocolError:
                            pass
            conn.data_to_send()
            assert conn.buffered <= BOUND
        conn.receive_eof()
    except PeerProtocolError as exc:
        assert exc.side == "client"
        if conn.state.name not in ("CLOSED", "TLS_HANDSHAKE"):
            conn.data_to_send()
            conn.reject_peer_error(exc)  # the shell's answer must always be possible
            assert conn.data_to_send().startswith(b"E")


def run_server(chunks: list[bytes]) -> None:
    conn = ServerConnection(
        user="md5_user", database="md5_user", password="md5-secret",
        random_bytes=lambda n: bytes(n), tls="prefer", limits=LIMITS,
    )  # fmt: skip
    conn.initiate()
    try:
        for data in chunks:
            for ev in conn.receive_data(data):
                if isinstance(ev, StartTLS):
                    conn.tls_established(None)
                elif isinstance(ev, Messages):
                    for i, (t, s, e) in enumerate(ev.frames):
                        try:
                            decode_backend(t, ev.payload(i))
                            if t == ord("D"):
                                datarow_values(ev.chunk, s + 5, e)
                        except PeerProtocolError:
                            pass
            conn.data_to_send()
            assert conn.buffered <= LIMITS.largest + 5
        conn.receive_eof()
    except PeerProtocolError as exc:
        assert exc.side == "server"
    except UpstreamAuthenticationError:
        pass


@FUZZ
@given(mutated(CLIENT_STREAMS), st.lists(st.integers(1, 300), max_size=5))
def test_client_side_mutated_streams(data: bytes, sizes: list[int]) -> None:
    run_client(pieces(data, sizes))


@FUZZ
@given(st.binary(max_size=3000), st.lists(st.integers(1, 64), max_size=5))
def test_client_side_random_bytes(data: bytes, sizes: list[int]) -> None:
    run_client(pieces(data, sizes))


@FUZZ
@given(mutated(SERVER_STREAMS), st.lists(st.integers(1, 300), max_size=5))
def test_server_side_mutated_streams(data: bytes, sizes: list[int]) -> None:
    run_server(pieces(data, sizes))


@FUZZ
@given(st.binary(max_size=3000), st.lists(st.integers(1, 64), max_size=5))
def test_server_side_random_bytes(data: bytes, sizes: list[int]) -> None:
    run_server(pieces(b"N" + data, sizes))


@FUZZ
@given(st.integers(0, 255), st.binary(max_size=200))
def test_decoders_raise_only_peer_errors(t: int, payload: bytes) -> None:
    for decode in (decode_frontend, decode_backend):
        try:
            decode(t, payload)
        except PeerProtocolError:
            pass
    try:
        datarow_values(payload)
    except PeerProtocolError:
        pass
    try:
        decode_startup(len(payload).to_bytes(4, "big") + payload[4:])
    except PeerProtocolError:
        pass


@pytest.mark.parametrize("stream", range(len(CLIENT_STREAMS)))
def test_client_side_one_byte_at_a_time_with_a_mutation(stream: int) -> None:
    data = bytearray(CLIENT_STREAMS[stream])
    data[len(data) // 2] ^= 0x5A
    run_client([bytes(data[i : i + 1]) for i in range(len(data))])


def test_oversized_lengths_are_refused_without_buffering() -> None:
    conn = ClientConnection(limits=LIMITS)
    run = conn.receive_data(b"\0\0\0\x10\0\x03\0\0user\0u\0\0")
    assert isinstance(run[0], StartupReceived)
    conn.complete_startup([], BackendKeyData(1, bytes(4)))
    with pytest.raises(PeerProtocolError, match="over the cap"):
        conn.receive_data(b"d\x7f\xff\xff\xff" + bytes(100))
    assert conn.buffered == 0
