"""SCRAM-SHA-256: the RFC 7677 test vector, PostgreSQL-made verifiers (SASLprep), channel
binding data, and refusal of malformed server messages."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from appliance.credentials import scram
from appliance.credentials.saslprep import prepare_password, saslprep

VERIFIERS = json.loads((Path(__file__).parent / "data" / "pg15_scram_verifiers.json").read_text())


def test_rfc7677_vector() -> None:
    # RFC 7677 section 3: user "user", password "pencil".
    first = scram.client_first("rOprNGfwEbeRWgbNEkqO", username="user")
    assert first.message == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    final = scram.client_final(first, "pencil", server_first)
    assert final.message == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    scram.verify_server_final(final, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    with pytest.raises(scram.ScramError, match="signature is wrong"):
        scram.verify_server_final(final, b"v=" + base64.b64encode(bytes(32)))
    assert "pencil" not in repr(final)


@pytest.mark.parametrize("case", VERIFIERS, ids=lambda c: ascii(c["password"]))
def test_verifiers_made_by_postgresql_15(case: dict[str, str]) -> None:
    verifier = case["verifier"]
    iterations, salt = verifier.split("$")[1].split(":")
    assert scram.scram_verifier(case["password"], base64.b64decode(salt), int(iterations)) == (
        verifier
    )


@pytest.mark.parametrize(
    ("password", "prepared"),
    [
        ("pencil", "pencil"),
        ("\x07bell", "\x07bell"),  # ASCII is never touched
        ("I\u00adX", "IX"),
        ("\u2168", "IX"),
        ("x\u200by", "x y"),
        ("\u0627\u0031", None),
        ("\u00ad", None),
        ("x\udcffy", None),  # an undecodable byte (surrogateescape): used as is
    ],
)
def test_saslprep(password: str, prepared: str | None) -> None:
    assert saslprep(password) == prepared
    expected = prepared if prepared is not None else password
    assert prepare_password(password) == expected.encode("utf-8", "surrogateescape")


def test_nonce_rules() -> None:
    assert scram.make_nonce(bytes(18)) == "AAAAAAAAAAAAAAAAAAAAAAAA"
    with pytest.raises(ValueError):
        scram.make_nonce(bytes(17))
    for bad in ("", "a,b", "caf\u00e9", "a\nb"):
        with pytest.raises(ValueError):
            scram.client_first(bad)


@pytest.mark.parametrize(
    "server_final",
    [b"e=invalid-proof", b"x=1", b"v=***", b"", b"v"],
)
def test_bad_server_final(server_final: bytes) -> None:
    first = scram.client_first("abc")
    final = scram.client_final(first, "pw", b"r=abcdef,s=c2FsdA==,i=1")
    with pytest.raises(scram.ScramError):
        scram.verify_server_final(final, server_final)


def test_non_ascii_server_first() -> None:
    first = scram.client_first("abc")
    with pytest.raises(scram.ScramError, match="not ASCII"):
        scram.client_final(first, "pw", "r=abcé,s=c2FsdA==,i=1".encode())


def make_certificate(hash_name: str) -> tuple[bytes, bytes]:
    """A self-signed EC certificate signed with ``hash_name``; returns (DER, the RFC 5929
    tls-server-end-point data it must produce)."""
    algorithm = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}[hash_name]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    digest = {"sha256": hashlib.sha256, "sha384": hashlib.sha384}[hash_name]
    return der, digest(der).digest()


@pytest.mark.parametrize("hash_name", ["sha256", "sha384"])
def test_tls_server_end_point(hash_name: str) -> None:
    der, expected = make_certificate(hash_name)
    assert scram.tls_server_end_point(der) == expected


# A certificate signed with ecdsa-with-SHA1 (made once with `openssl req -x509 -sha1`;
# cryptography no longer signs with SHA-1): RFC 5929 says hash it with SHA-256.
SHA1_CERT = base64.b64decode(
    "MIIBejCCASKgAwIBAgIUGcxa5hlEoe5lMKIqTIcZXnRfBl4wCQYHKoZIzj0EATAUMRIwEAYDVQQDDAlzaGExLXRl"
    "c3QwHhcNMjYxMTI1MjA1NTA3WhcNMzYxMTIyMjA1NTA3WjAUMRIwEAYDVQQDDAlzaGExLXRlc3QwWTATBgcqhkjO"
    "PQIBBggqhkjOPQMBBwNCAAQAInToJUmhMw8UVOMmgHgaxZ5vzq0dzIjZekhIelDABTb5tWM8cyLeEeQLb7pS8Kgf"
    "Qr57Hd1rNqb0AtlR4DAwo1MwUTAdBgNVHQ4EFgQUJZpIBun3r9WVGWHL4tDPrttMhHMwHwYDVR0jBBgwFoAUJZpI"
    "Bun3r9WVGWHL4tDPrttMhHMwDwYDVR0TAQH/BAUwAwEB/zAJBgcqhkjOPQQBA0cAMEQCIDV7J7tz4liE75RRF/n2"
    "b31A5uBWFswZQemtB+JHYvazAiAgqb2uw3ZMQKau1a9QjCOBGx9METT0SzxrefutMhAKSg=="
)


def test_tls_server_end_point_sha1_becomes_sha256() -> None:
    assert x509.load_der_x509_certificate(SHA1_CERT).signature_hash_algorithm.name == "sha1"  # type: ignore[union-attr]
    assert scram.tls_server_end_point(SHA1_CERT) == hashlib.sha256(SHA1_CERT).digest()


def test_tls_server_end_point_ed25519_has_no_binding() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, None)
    )
    assert scram.tls_server_end_point(cert.public_bytes(serialization.Encoding.DER)) is None
    with pytest.raises(scram.ScramError):
        scram.tls_server_end_point(b"not a certificate")


def test_channel_binding_in_client_final() -> None:
    first = scram.client_first("abc", channel_binding=b"\x01\x02")
    assert first.mechanism == scram.MECHANISM_PLUS
    assert first.message == b"p=tls-server-end-point,,n=,r=abc"
    final = scram.client_final(first, "pw", b"r=abcdef,s=c2FsdA==,i=1")
    c = final.message.split(b",")[0][2:]
    assert base64.b64decode(c) == b"p=tls-server-end-point,,\x01\x02"
