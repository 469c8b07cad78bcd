"""caching_sha2_password, MySQL 8's default, on the upstream side (the appliance as the
client): the fast answer checked against a scramble and answer snooped from a real MySQL 8
exchange (tests/data/mysql/caching_sha2_mysql8.json: no MySQL 8 server runs here, Debian 12
packages MariaDB only), the packets around it scripted after MySQL's documented exchanges:
fast authentication, full authentication in clear only over TLS, with the server's RSA key
(asked for, or configured) on a plain connection, and an auth switch to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from appliance.protocols.mysql import auth
from appliance.protocols.mysql._errors import PeerProtocolError
from appliance.protocols.mysql._wire import Framer, packet
from appliance.protocols.mysql.constants import Cap
from appliance.protocols.mysql.messages import Handshake, HandshakeResponse, Ok
from appliance.protocols.mysql.upstream import Authenticated, StartTLS, UpstreamConnection

VECTOR = json.loads(
    (Path(__file__).parents[2] / "data" / "mysql" / "caching_sha2_mysql8.json").read_text()
)
PASSWORD = VECTOR["password"]
SCRAMBLE = bytes.fromhex(VECTOR["scramble_hex"])
ANSWER = bytes.fromhex(VECTOR["answer_hex"])
CAPS = int(
    Cap.LONG_PASSWORD | Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH
    | Cap.PLUGIN_AUTH_LENENC_DATA | Cap.TRANSACTIONS | Cap.MULTI_STATEMENTS | Cap.MULTI_RESULTS
)  # fmt: skip


def _mysql8(
    scramble: bytes = SCRAMBLE, *, tls: bool = False, plugin: str = auth.CACHING_SHA2
) -> bytes:
    caps = CAPS | (int(Cap.SSL) if tls else 0)
    return packet(0, Handshake("8.0.36", 11, scramble, caps, 255, 2, plugin).encode())


def _client(tls: str = "disable", key: bytes | None = None) -> UpstreamConnection:
    return UpstreamConnection(
        user="app",
        password=PASSWORD,
        database="app",
        capabilities=CAPS,
        charset=255,
        tls=tls,
        server_public_key=key,
    )


def _sent(up: UpstreamConnection) -> list[tuple[int, bytes]]:
    return list(Framer("client", 1 << 24).feed(up.data_to_send()))


def _ok(up: UpstreamConnection, seq: int) -> Authenticated:
    (event,) = up.receive_data(packet(seq, Ok(0, 0, 2, 0).encode(up.capabilities)))
    assert isinstance(event, Authenticated) and event.method == auth.CACHING_SHA2
    return event


def _key() -> tuple[rsa.RSAPrivateKey, bytes]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, pem


def _decrypt(private: rsa.RSAPrivateKey, sealed: bytes, scramble: bytes) -> bytes:
    mixed = private.decrypt(
        sealed,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
    )
    return bytes(b ^ scramble[i % 20] for i, b in enumerate(mixed))


def test_the_fast_answer_is_the_one_a_real_mysql8_exchange_carried() -> None:
    assert auth.caching_sha2_scramble(PASSWORD, SCRAMBLE) == ANSWER
    up = _client()
    assert up.receive_data(_mysql8()) == []
    ((seq, response),) = _sent(up)
    sent = HandshakeResponse.decode(response)
    assert seq == 1 and sent.auth_plugin == auth.CACHING_SHA2 and sent.auth_response == ANSWER
    assert PASSWORD.encode() not in response
    # fast authentication succeeded (AuthMoreData 0x03), then the OK
    assert up.receive_data(packet(2, b"\x01\x03")) == [] and up.data_to_send() == b""
    _ok(up, 3)


def test_full_authentication_sends_the_password_in_clear_only_over_tls() -> None:
    up = _client(tls="require")
    (event,) = up.receive_data(_mysql8(tls=True))
    assert isinstance(event, StartTLS)
    up.data_to_send()  # the SSL request, before the handshake
    up.tls_established()
    ((seq, response),) = _sent(up)
    assert seq == 2 and HandshakeResponse.decode(response).auth_response == ANSWER
    up.receive_data(packet(3, b"\x01\x04"))  # the server's cache is cold: full authentication
    assert _sent(up) == [(4, PASSWORD.encode() + b"\0")]
    _ok(up, 5)


def test_full_authentication_on_a_plain_connection_asks_for_the_servers_key() -> None:
    private, pem = _key()
    up = _client()
    up.receive_data(_mysql8())
    up.data_to_send()
    up.receive_data(packet(2, b"\x01\x04"))
    assert _sent(up) == [(3, auth.REQUEST_PUBLIC_KEY)]
    up.receive_data(packet(4, b"\x01" + pem))
    ((seq, sealed),) = _sent(up)
    assert seq == 5 and PASSWORD.encode() not in sealed
    assert _decrypt(private, sealed, SCRAMBLE) == PASSWORD.encode() + b"\0"
    _ok(up, 6)


def test_a_configured_server_key_is_used_without_asking() -> None:
    private, pem = _key()
    up = _client(key=pem)
    up.receive_data(_mysql8())
    up.data_to_send()
    up.receive_data(packet(2, b"\x01\x04"))
    ((seq, sealed),) = _sent(up)
    assert seq == 3 and _decrypt(private, sealed, SCRAMBLE) == PASSWORD.encode() + b"\0"
    _ok(up, 4)


def test_an_auth_switch_to_caching_sha2_answers_the_new_scramble() -> None:
    other = bytes(range(40, 60))
    up = _client()
    up.receive_data(_mysql8(other, plugin=auth.NATIVE))
    ((_, response),) = _sent(up)
    assert HandshakeResponse.decode(response).auth_plugin == auth.NATIVE
    up.receive_data(packet(2, b"\xfe" + auth.CACHING_SHA2.encode() + b"\0" + SCRAMBLE + b"\0"))
    assert _sent(up) == [(3, ANSWER)]
    up.receive_data(packet(4, b"\x01\x03"))
    _ok(up, 5)


@pytest.mark.parametrize("key", [b"-----BEGIN PUBLIC KEY-----\nnot a key\n", b"garbage"])
def test_an_unusable_server_key_is_the_servers_fault(key: bytes) -> None:
    up = _client()
    up.receive_data(_mysql8())
    up.data_to_send()
    up.receive_data(packet(2, b"\x01\x04"))
    up.data_to_send()
    with pytest.raises(PeerProtocolError) as caught:
        up.receive_data(packet(4, b"\x01" + key))
    assert caught.value.side == "server"
