"""Shared by the SSH unit tests: SFTP packet builders, a ledger that keeps what it is given
(blobs run through their transforms, as the writer would), services and a target."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from appliance.config import Account, Address, SecretRef, Target
from appliance.ledger.api import PendingBlob
from appliance.masking import Masker, MaskingConfig
from appliance.policy import Policy
from appliance.proxy.commands import ConnectionInfo
from appliance.proxy.services import SessionServices
from appliance.proxy.ssh.options import SshOptions


def u32(n: int) -> bytes:
    return struct.pack("!I", n)


def u64(n: int) -> bytes:
    return struct.pack("!Q", n)


def s(b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return u32(len(b)) + b


def packet(kind: int, body: bytes) -> bytes:
    return u32(len(body) + 1) + bytes([kind]) + body


class Blob:
    def __init__(self, transform: Any) -> None:
        if transform is not None and hasattr(transform, "new"):
            self.fn, self.annotate = transform.new()
        else:
            self.fn, self.annotate = transform, None
        self.data = b""
        self.closed = False
        self.aborted = False

    def write(self, chunk: bytes) -> None:
        self.data += self.fn(chunk) if self.fn is not None else chunk

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


class FakeLedger:
    """Keeps entries as (type, session, data, blobs); blobs hold their transformed bytes."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str | None, dict[str, Any], dict[str, Any]]] = []
        self.fail: BaseException | None = None

    def append(
        self,
        type: str,
        *,
        session: str | None = None,
        data: Mapping[str, Any],
        blobs: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> None:
        if self.fail is not None:
            raise self.fail
        resolved: dict[str, Any] = {}
        for key, blob in (blobs or {}).items():
            if isinstance(blob, PendingBlob):
                b = Blob(blob.transform)
                b.write(blob.data)
                blob = b
            resolved[key] = blob.data
        self.entries.append((type, session, dict(data), resolved))

    def open_blob(self, transform: Any = None) -> Blob:
        return Blob(transform)

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def failed(self) -> BaseException | None:
        return None

    def types(self) -> list[str]:
        return [t for t, _, _, _ in self.entries]

    def of(self, type: str) -> list[dict[str, Any]]:
        return [d for t, _, d, _ in self.entries if t == type]

    def blobs(self, type: str) -> list[dict[str, Any]]:
        return [b for t, _, _, b in self.entries if t == type]


SECRET = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n"


def target(**options: Any) -> Target:
    return Target(
        "web",
        "ssh",
        (Address("ip", "10.0.0.7", 22), Address("host", "web1.example", 22)),
        (
            Account("deploy", "deploy", SecretRef(file=Path("/secrets/deploy"))),
            Account("ops", "root", SecretRef(credential="ops")),
        ),
        connect_timeout=5.0,
        options=SshOptions(Path("/etc/appliance/web.known_hosts"), **options),
    )


def counter_bytes() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def services(
    ledger: FakeLedger,
    *,
    policy: Policy | None = None,
    secret: Callable[[SecretRef], str] | None = None,
) -> SessionServices:
    clock = itertools.count(0)
    return SessionServices(
        ledger=ledger,  # type: ignore[arg-type]
        policy=policy,
        masker=Masker(MaskingConfig(), hmac_key=b"k" * 32),
        clock=lambda: 1_700_000_000.0,
        monotonic=lambda: next(clock) / 1000,
        random_bytes=counter_bytes(),
        read_secret=secret or (lambda ref: SECRET),
    )


INFO = ConnectionInfo(
    session_id="s1",
    client=("10.9.0.2", 40000),
    listener=("10.9.0.1", 15001),
    upstream=("10.0.0.7", 22),
    identity={
        "source": "ebpf",
        "uid": 1000,
        "exe": "/usr/bin/ssh",
        "ci": {"repository": "acme/app"},
    },
)
