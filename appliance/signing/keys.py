"""Ed25519 keys in the C2SP signed-note formats (ledger signing keys and approver keys).

Formats (C2SP signed-note; the same as golang.org/x/mod/sumdb/note):

- verifier key (vkey): ``<name>+<key id, 8 hex>+<base64(0x01 || public key)>``
- signing key (skey): ``PRIVATE+KEY+<name>+<key id>+<base64(0x01 || 32-byte seed)>``
- key id: the first 4 bytes of ``SHA-256(name || 0x0A || 0x01 || public key)``.

Signing and verifying here is raw Ed25519 over given bytes; note framing lives in
:mod:`appliance.signing.note`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from pathlib import Path

import nacl.exceptions
import nacl.signing

from appliance.errors import ApplianceError

ALG_ED25519 = 0x01
# A key name is a non-empty string of printable characters without space or '+'.
_NAME_RE = re.compile(r"[\x21-\x2a\x2c-\x7e]+")


class KeyFormatError(ApplianceError):
    """A key string or key file is malformed or unusable."""


class InvalidSignature(ApplianceError):
    """A signature does not verify under the given key."""

    exit_code = 1


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte C2SP key id of an Ed25519 key."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


def _check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise KeyFormatError(f"invalid key name {name!r}: printable characters, no spaces or '+'")
    return name


class VerifierKey:
    """A named Ed25519 public key."""

    def __init__(self, name: str, public_key: bytes) -> None:
        if len(public_key) != 32:
            raise KeyFormatError("an Ed25519 public key is 32 bytes")
        self.name = _check_name(name)
        self.public_key = public_key
        self.key_id = key_id(name, public_key)
        self._verify_key = nacl.signing.VerifyKey(public_key)

    @classmethod
    def from_vkey(cls, text: str) -> VerifierKey:
        """Parse ``name+hash+base64``; raise KeyFormatError if malformed or the id mismatches."""
        parts = text.strip().split("+", 2)
        if len(parts) != 3:
            raise KeyFormatError("a verifier key has the form name+keyid+base64key")
        name, hex_id, b64 = parts
        try:
            raw = base64.b64decode(b64, validate=True)
            want_id = bytes.fromhex(hex_id)
        except (binascii.Error, ValueError):
            raise KeyFormatError("malformed verifier key (bad base64 or key id)") from None
        if len(want_id) != 4 or len(raw) != 33 or raw[0] != ALG_ED25519:
            raise KeyFormatError("not an Ed25519 verifier key")
        key = cls(name, raw[1:])
        if key.key_id != want_id:
            raise KeyFormatError("verifier key id does not match its name and key")
        return key

    def to_vkey(self) -> str:
        b64 = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{b64}"

    def verify(self, message: bytes, signature: bytes) -> None:
        """Return if ``signature`` is this key's Ed25519 signature of ``message``; else raise
        :class:`InvalidSignature`."""
        try:
            self._verify_key.verify(message, signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            raise InvalidSignature(f"signature does not verify with key {self.name}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifierKey) and (self.name, self.public_key) == (
            other.name,
            other.public_key,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.public_key))

    def __repr__(self) -> str:
        return f"VerifierKey({self.to_vkey()!r})"


class SigningKey:
    """A named Ed25519 private key."""

    def __init__(self, name: str, seed: bytes) -> None:
        if len(seed) != 32:
            raise KeyFormatError("an Ed25519 seed is 32 bytes")
        self.name = _check_name(name)
        self._seed = seed
        self._signing_key = nacl.signing.SigningKey(seed)
        self.public_key = bytes(self._signing_key.verify_key)
        self.key_id = key_id(name, self.public_key)

    @classmethod
    def generate(cls, name: str, *, seed: bytes | None = None) -> SigningKey:
        """A new key; ``seed`` (32 bytes) may be passed in for tests."""
        return cls(name, seed if seed is not None else os.urandom(32))

    @classmethod
    def from_skey(cls, text: str) -> SigningKey:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise KeyFormatError("a signing key has the form PRIVATE+KEY+name+keyid+base64key")
        _, _, name, hex_id, b64 = parts
        try:
            raw = base64.b64decode(b64, validate=True)
            want_id = bytes.fromhex(hex_id)
        except (binascii.Error, ValueError):
            raise KeyFormatError("malformed signing key (bad base64 or key id)") from None
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise KeyFormatError("not an Ed25519 signing key")
        key = cls(name, raw[1:])
        if key.key_id != want_id:
            raise KeyFormatError("signing key id does not match its name and key")
        return key

    def to_skey(self) -> str:
        b64 = base64.b64encode(bytes([ALG_ED25519]) + self._seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_id.hex()}+{b64}"

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message`` (deterministic)."""
        return bytes(self._signing_key.sign(message).signature)

    def verifier(self) -> VerifierKey:
        return VerifierKey(self.name, self.public_key)

    def __repr__(self) -> str:
        return f"SigningKey(name={self.name!r}, key_id={self.key_id.hex()})"


def load_signing_key(path: str | Path) -> SigningKey:
    """Read a signing key file (skey text). Raises KeyFormatError with the path on failure."""
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFormatError(f"cannot read signing key {p}: {exc}") from None
    try:
        return SigningKey.from_skey(text)
    except KeyFormatError as exc:
        raise KeyFormatError(f"{p}: {exc}") from None


def load_verifier_key(file_or_text: str | Path) -> VerifierKey:
    """A verifier key given as a file path or directly as vkey text."""
    s = str(file_or_text)
    p = Path(s)
    if "+" in s and not p.exists():
        return VerifierKey.from_vkey(s)
    try:
        text = p.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFormatError(f"cannot read verifier key {s}: {exc}") from None
    try:
        return VerifierKey.from_vkey(text)
    except KeyFormatError as exc:
        raise KeyFormatError(f"{p}: {exc}") from None


def write_key_pair(key: SigningKey, key_path: Path, vkey_path: Path) -> None:
    """Write the signing key (mode 0600, never overwriting) and the verifier key."""
    for p in (key_path, vkey_path):
        if p.exists():
            raise KeyFormatError(f"{p} already exists; refusing to overwrite a key")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.to_skey() + "\n")
    vkey_path.write_text(key.verifier().to_vkey() + "\n", encoding="ascii")
