"""The MySQL codec: framing (whole and byte by byte, capped), packets both ways, the
authentication answers, and decoders fuzzed with hypothesis (only PeerProtocolError)."""

from __future__ import annotations

import hashlib

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.protocols.mysql import PeerProtocolError, auth
from appliance.protocols.mysql._wire import MAX_CHUNK, Framer, packet
from appliance.protocols.mysql.constants import Cap, Type
from appliance.protocols.mysql.messages import (
    ColumnDef,
    Err,
    Execute,
    Handshake,
    HandshakeResponse,
    Ok,
    PrepareOk,
    Query,
    SSLRequest,
    binary_row,
    binary_to_text,
    encode_binary_row,
    encode_text_row,
    text_row,
)

CAPS = int(
    Cap.PROTOCOL_41
    | Cap.SECURE_CONNECTION
    | Cap.PLUGIN_AUTH
    | Cap.PLUGIN_AUTH_LENENC_DATA
    | Cap.CONNECT_WITH_DB
    | Cap.CONNECT_ATTRS
    | Cap.SESSION_TRACK
    | Cap.DEPRECATE_EOF
)


def test_framer_whole_and_byte_by_byte() -> None:
    stream = packet(0, b"\x03SELECT 1") + packet(1, b"") + packet(7, b"x" * 300)
    whole = Framer("client").feed(stream)
    framer = Framer("client")
    one = [p for i in range(len(stream)) for p in framer.feed(stream[i : i + 1])]
    assert whole == one == [(0, b"\x03SELECT 1"), (1, b""), (7, b"x" * 300)]


def test_long_payload_is_joined_and_capped() -> None:
    payload = b"a" * (MAX_CHUNK + 10)
    data = packet(3, payload)
    assert Framer("server", max_packet=MAX_CHUNK + 10).feed(data) == [(3, payload)]
    with pytest.raises(PeerProtocolError) as err:
        Framer("server", max_packet=MAX_CHUNK).feed(data)
    assert err.value.code == 1153


def test_handshake_round_trip_with_mariadb_extended_capabilities() -> None:
    hs = Handshake(
        "5.5.5-10.11.19-MariaDB",
        42,
        bytes(range(1, 21)),
        CAPS | int(Cap.MARIADB_STMT_BULK_OPERATIONS),
        45,
        2,
        "mysql_native_password",
    )
    back = Handshake.decode(hs.encode())
    assert back == hs


def test_handshake_response_round_trip_and_ssl_request() -> None:
    r = HandshakeResponse(
        CAPS, 1 << 24, 45, "ci", b"\x01" * 20, "app", "mysql_native_password", {"program_name": "x"}
    )
    assert HandshakeResponse.decode(r.encode()) == r
    assert HandshakeResponse.decode(
        SSLRequest(CAPS | int(Cap.SSL), 1 << 24, 45).encode()
    ).ssl_request


def test_ok_with_session_state_and_err() -> None:
    ok = Ok(3, 7, 2, 1, b"", ((0, b"\x14character_set_client\x04sjis"), (1, b"\x03app")))
    back = Ok.decode(ok.encode(CAPS), CAPS)
    assert back.system_variables() == {"character_set_client": "sjis"} and back.schema() == "app"
    err = Err(1142, "42000", "denied")
    assert Err.decode(err.encode()) == err


def test_rows_text_and_binary() -> None:
    values: list[bytes | None] = [b"1", None, b"x" * 300]
    assert text_row(encode_text_row(values), 3) == values
    types = [Type.LONG, Type.VAR_STRING, Type.DATETIME, Type.DOUBLE]
    raw: list[bytes | None] = [
        (5).to_bytes(4, "little"),
        b"abc",
        b"\xe8\x07\x05\x06\x07\x08\x09",
        None,
    ]
    assert binary_row(encode_binary_row(raw, types), types) == raw
    assert binary_to_text(raw[2] or b"", Type.DATETIME, False) == b"2024-05-06 07:08:09"
    assert binary_to_text(b"\xff", Type.TINY, True) == b"255"


def test_execute_parameters() -> None:
    payload = (
        b"\x17"
        + (9).to_bytes(4, "little")
        + b"\x00"
        + (1).to_bytes(4, "little")
        + b"\x02"
        + b"\x01"
        + bytes((Type.LONGLONG, 0, Type.VAR_STRING, 0))
        + (3).to_bytes(8, "little")
    )
    ex = Execute.decode(payload, 2, None, CAPS)
    assert ex.statement_id == 9 and ex.values == ((3).to_bytes(8, "little"), None)


def test_native_password_matches_the_definition() -> None:
    scramble = bytes(range(20))
    s1 = hashlib.sha1(b"pw").digest()
    want = bytes(
        a ^ b
        for a, b in zip(
            s1, hashlib.sha1(scramble + hashlib.sha1(s1).digest()).digest(), strict=True
        )
    )
    assert auth.native_password("pw", scramble) == want
    assert auth.native_password("", scramble) == b""


def test_ed25519_signature_verifies_with_the_stored_public_key() -> None:
    message = bytes(range(32))
    public = auth.ed25519_public_key("secret")
    nacl.signing.VerifyKey(public).verify(message, auth.ed25519_signature("secret", message))


_DECODERS = [
    lambda b: Handshake.decode(b),
    lambda b: HandshakeResponse.decode(b),
    lambda b: Ok.decode(b, CAPS),
    lambda b: Err.decode(b),
    lambda b: ColumnDef.decode(b),
    lambda b: PrepareOk.decode(b),
    lambda b: text_row(b, 3),
    lambda b: binary_row(b, [Type.LONG, Type.DATETIME, Type.BLOB]),
    lambda b: Execute.decode(b, 3, None, CAPS | int(Cap.QUERY_ATTRIBUTES)),
    lambda b: Query.decode(b, CAPS | int(Cap.QUERY_ATTRIBUTES)),
]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=len(_DECODERS) - 1))
def test_decoders_raise_only_peer_errors(data: bytes, which: int) -> None:
    try:
        _DECODERS[which](data)
    except PeerProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=64))
def test_framer_fuzz_whole_equals_chunked(data: bytes, step: int) -> None:
    def run(chunks: list[bytes]) -> object:
        framer = Framer("client", max_packet=1000)
        out = []
        try:
            for c in chunks:
                out += framer.feed(c)
        except PeerProtocolError:
            return "error"
        return out

    whole = run([data])
    chunked = run([data[i : i + step] for i in range(0, len(data), step)])
    assert whole == chunked or whole == "error" or chunked == "error"
