"""The authentication answers the appliance computes as a MySQL/MariaDB client, from the
service account's password and the server's scramble (sans-IO, no secret kept).

- ``mysql_native_password``: ``SHA1(pw) XOR SHA1(scramble + SHA1(SHA1(pw)))``;
- ``caching_sha2_password``: fast authentication ``SHA256(pw) XOR SHA256(SHA256(SHA256(pw))
  + scramble)``; full authentication sends the password in clear over TLS, or encrypted
  with the server's RSA public key (RSA-OAEP with SHA-1, the password NUL-terminated and
  XORed with the scramble) over a plain connection;
- ``sha256_password``: the same full authentication;
- MariaDB's ``client_ed25519``: an Ed25519 signature of the scramble under the key whose
  expanded secret is ``SHA512(pw)`` (MariaDB's ref10 derivation: the password stands in for
  the 32-byte seed), computed here with libsodium's group operations;
- ``mysql_clear_password``: the password, NUL-terminated: only over TLS.
"""

from __future__ import annotations

import hashlib

from nacl import bindings

NATIVE = "mysql_native_password"
CACHING_SHA2 = "caching_sha2_password"
SHA256 = "sha256_password"
ED25519 = "client_ed25519"
CLEAR = "mysql_clear_password"
PLUGINS = frozenset({NATIVE, CACHING_SHA2, SHA256, ED25519, CLEAR})

# caching_sha2_password's AuthMoreData bytes.
CACHING_SHA2_FAST_OK = 3
CACHING_SHA2_FULL = 4
REQUEST_PUBLIC_KEY = b"\x02"


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=False))


def native_password(password: str, scramble: bytes) -> bytes:
    if not password:
        return b""
    stage1 = hashlib.sha1(password.encode("utf-8")).digest()
    stage2 = hashlib.sha1(stage1).digest()
    return _xor(stage1, hashlib.sha1(scramble[:20] + stage2).digest())


def caching_sha2_scramble(password: str, scramble: bytes) -> bytes:
    if not password:
        return b""
    p1 = hashlib.sha256(password.encode("utf-8")).digest()
    p2 = hashlib.sha256(p1).digest()
    p3 = hashlib.sha256(p2 + scramble[:20]).digest()
    return _xor(p1, p3)


def rsa_encrypted_password(password: str, scramble: bytes, public_key_pem: bytes) -> bytes:
    """The password for full authentication on a plain connection. Raises ValueError when
    the key is not an RSA public key."""
    # Imported here: the ledger writer process imports this package for the messages
    # alone, and cryptography is 8 MB of its memory (issue 19).
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the server's public key is not an RSA key")
    plain = password.encode("utf-8") + b"\0"
    salt = scramble[:20]
    mixed = bytes(b ^ salt[i % len(salt)] for i, b in enumerate(plain))
    return key.encrypt(
        mixed,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
    )


def clear_password(password: str) -> bytes:
    return password.encode("utf-8") + b"\0"


def ed25519_public_key(password: str) -> bytes:
    """The public key MariaDB stores for an ed25519 account (``ed25519_password(pw)``)."""
    az = _ed25519_expanded(password)
    return bindings.crypto_scalarmult_ed25519_base_noclamp(az[:32])


def ed25519_signature(password: str, message: bytes) -> bytes:
    """MariaDB client_ed25519's answer: the 64-byte signature of the server's scramble."""
    az = _ed25519_expanded(password)
    a = az[:32]
    public = bindings.crypto_scalarmult_ed25519_base_noclamp(a)
    r = bindings.crypto_core_ed25519_scalar_reduce(hashlib.sha512(az[32:] + message).digest())
    big_r = bindings.crypto_scalarmult_ed25519_base_noclamp(r)
    k = bindings.crypto_core_ed25519_scalar_reduce(
        hashlib.sha512(big_r + public + message).digest()
    )
    a_reduced = bindings.crypto_core_ed25519_scalar_reduce(a + b"\0" * 32)
    s = bindings.crypto_core_ed25519_scalar_add(
        r, bindings.crypto_core_ed25519_scalar_mul(k, a_reduced)
    )
    return big_r + s


def _ed25519_expanded(password: str) -> bytes:
    az = bytearray(hashlib.sha512(password.encode("utf-8")).digest())
    az[0] &= 248
    az[31] &= 63
    az[31] |= 64
    return bytes(az)
