"""SCRAM-SHA-256 and SCRAM-SHA-256-PLUS client (RFC 5802, RFC 7677), as PostgreSQL uses it.

Where this sits: the upstream state machine (:mod:`appliance.protocols.postgres.server`)
authenticates to the target with the service account's secret; it calls the three steps
below, each of which needs the previous step's result, so they cannot run out of order:

1. :func:`client_first` (the nonce is passed in: randomness comes from the caller);
2. :func:`client_final` with the server-first-message: derives keys from the password
   (SASLprep'd as PostgreSQL does, :mod:`.saslprep`) and computes the proof;
3. :func:`verify_server_final` with the server-final-message: raises unless the server
   proved that it knows the verifier. A server that cannot is an impostor (or a
   misconfigured proxy) and the session must not go on.

PostgreSQL specifics: the user name in the SCRAM messages is empty (PostgreSQL uses the
startup packet's user), and channel binding is ``tls-server-end-point`` (RFC 5929): the
hash of the server's certificate, with SHA-256 replacing MD5 and SHA-1.

Errors: :class:`ScramError` for anything the server sent that is malformed or fails
verification; its messages never contain the password or derived keys.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal

from appliance.credentials.saslprep import prepare_password
from appliance.errors import ApplianceError

MECHANISM = "SCRAM-SHA-256"
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"
CHANNEL_BINDING_TYPE = "tls-server-end-point"
# PostgreSQL's default is 4096 (scram_iterations); a hostile server could ask for 2**31
# and stall the appliance, so the client refuses counts above this unless told otherwise.
DEFAULT_MAX_ITERATIONS = 1_000_000


class ScramError(ApplianceError):
    """The server's SCRAM message is malformed, or the server failed to authenticate."""


@dataclass(frozen=True, slots=True)
class ClientFirst:
    """The client-first-message and what the next step needs from it."""

    message: bytes
    bare: str
    gs2_header: str
    nonce: str
    channel_binding_data: bytes

    @property
    def mechanism(self) -> str:
        return MECHANISM_PLUS if self.gs2_header.startswith("p=") else MECHANISM


@dataclass(frozen=True, slots=True)
class ClientFinal:
    """The client-final-message and the server signature expected in reply."""

    message: bytes
    server_signature: bytes

    def __repr__(self) -> str:
        return "ClientFinal(<hidden>)"


def make_nonce(random_bytes: bytes) -> str:
    """A nonce from at least 18 random bytes (printable, no comma, as RFC 5802 requires)."""
    if len(random_bytes) < 18:
        raise ValueError("a SCRAM nonce needs at least 18 random bytes")
    return base64.b64encode(random_bytes).decode("ascii")


def client_first(
    nonce: str,
    *,
    channel_binding: bytes | None = None,
    flag: Literal["n", "y"] = "n",
    username: str = "",
) -> ClientFirst:
    """Start an exchange. ``channel_binding`` is the tls-server-end-point data (selects
    SCRAM-SHA-256-PLUS); without it ``flag`` says whether the client could have bound the
    channel ('y': TLS is in use but the server offered no -PLUS) or not ('n').
    ``username`` stays empty for PostgreSQL, which takes the user from the startup packet.
    """
    if not nonce or "," in nonce or not nonce.isprintable() or not nonce.isascii():
        raise ValueError("a SCRAM nonce is printable ASCII without commas")
    if channel_binding is not None:
        gs2 = f"p={CHANNEL_BINDING_TYPE},,"
        cb = channel_binding
    else:
        gs2 = f"{flag},,"
        cb = b""
    name = username.replace("=", "=3D").replace(",", "=2C")
    bare = f"n={name},r={nonce}"
    return ClientFirst((gs2 + bare).encode("utf-8"), bare, gs2, nonce, cb)


def _attributes(message: bytes, what: str) -> list[tuple[str, str]]:
    try:
        text = message.decode("ascii")
    except UnicodeDecodeError:
        raise ScramError(f"{what} is not ASCII") from None
    out = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isalpha():
            raise ScramError(f"{what} is malformed: attribute {part[:20]!r}")
        out.append((part[0], part[2:]))
    return out


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ScramError(f"{what} is not valid base64") from None


@functools.lru_cache(maxsize=64)
def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    """Hi(Normalize(password), salt, i) of RFC 5802 with PostgreSQL's SASLprep.

    Cached (per process, a few entries): the server's salt and iteration count are fixed
    per role, and the derivation (4096 rounds of HMAC-SHA-256 by default, a few ms) would
    otherwise run on the proxy's event loop for every new session. The cache holds only
    what the secret already lets anyone compute; the secret itself is in memory anyway.
    """
    return hashlib.pbkdf2_hmac("sha256", prepare_password(password), salt, iterations)


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def client_final(
    first: ClientFirst,
    password: str,
    server_first: bytes,
    *,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> ClientFinal:
    """Answer the server-first-message. Raises ScramError if it is malformed, its nonce
    does not extend ours, it demands an extension, or its iteration count is out of range.
    """
    attrs = _attributes(server_first, "server-first-message")
    if attrs and attrs[0][0] == "m":
        raise ScramError("server-first-message demands an unsupported extension")
    if [k for k, _ in attrs[:3]] != ["r", "s", "i"]:
        raise ScramError("server-first-message must start with r=, s=, i=")
    nonce, salt_b64, iter_text = (v for _, v in attrs[:3])
    if not nonce.startswith(first.nonce) or len(nonce) == len(first.nonce):
        raise ScramError("server nonce does not extend the client nonce")
    if not nonce.isascii() or not nonce.isprintable():
        raise ScramError("server nonce has non-printable characters")
    salt = _b64(salt_b64, "salt")
    if not salt:
        raise ScramError("salt is empty")
    if not iter_text.isdigit():
        raise ScramError("iteration count is not a number")
    iterations = int(iter_text)
    if not 1 <= iterations <= max_iterations:
        raise ScramError(f"iteration count {iterations} outside 1..{max_iterations}")

    salted = salted_password(password, salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    stored_key = hashlib.sha256(client_key).digest()
    cbind = base64.b64encode(first.gs2_header.encode("ascii") + first.channel_binding_data)
    without_proof = f"c={cbind.decode('ascii')},r={nonce}"
    auth_message = b",".join(
        (first.bare.encode("utf-8"), server_first, without_proof.encode("ascii"))
    )
    client_signature = _hmac(stored_key, auth_message)
    proof = bytes(a ^ b for a, b in zip(client_key, client_signature, strict=True))
    server_key = _hmac(salted, b"Server Key")
    message = f"{without_proof},p={base64.b64encode(proof).decode('ascii')}".encode("ascii")
    return ClientFinal(message, _hmac(server_key, auth_message))


def verify_server_final(final: ClientFinal, server_final: bytes) -> None:
    """Return if the server-final-message carries the expected server signature; raise
    ScramError if it reports an error, is malformed, or the signature is wrong."""
    attrs = _attributes(server_final, "server-final-message")
    if attrs[0][0] == "e":
        raise ScramError(f"server reported a SCRAM error: {attrs[0][1][:80]}")
    if attrs[0][0] != "v":
        raise ScramError("server-final-message has no verifier (v=)")
    if not hmac.compare_digest(_b64(attrs[0][1], "server signature"), final.server_signature):
        raise ScramError(
            "the server's SCRAM signature is wrong: it does not know this account's "
            "verifier (wrong target, or a man in the middle)"
        )


def scram_verifier(password: str, salt: bytes, iterations: int) -> str:
    """The verifier PostgreSQL stores in pg_authid.rolpassword for this password:
    ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64 parts)."""
    salted = salted_password(password, salt, iterations)
    stored_key = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
    server_key = _hmac(salted, b"Server Key")

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def tls_server_end_point(certificate_der: bytes) -> bytes | None:
    """Channel-binding data for ``tls-server-end-point`` (RFC 5929 section 4.1): the
    server certificate hashed with its signature's hash algorithm, SHA-256 if that is MD5
    or SHA-1. None when the algorithm has no single hash (Ed25519, Ed448): PostgreSQL
    cannot bind such channels either."""
    # Imported here: the ledger writer process imports the PostgreSQL package for its
    # messages alone, and cryptography is 8 MB of its memory (issue 19).
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes

    try:
        cert = x509.load_der_x509_certificate(certificate_der)
    except ValueError:
        raise ScramError("server certificate is not valid DER") from None
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return None
    if algorithm is None:
        return None
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate_der)
    return digest.finalize()
