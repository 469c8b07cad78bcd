"""A sans-IO drive of the HTTP session core: the job and the target played with h11 and h2.

No sockets, no TLS: the drive hands the core the events the shell would (TLS established
with an SNI and an ALPN, upstream opened) and keeps what comes out: bytes each way, the
commands, the ledger entries.
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Mapping
from typing import Any

import h11

from appliance.config import parse_config
from appliance.masking import Masker, MaskingConfig
from appliance.proxy.commands import (
    Command,
    ConnectionInfo,
    End,
    Event,
    TLSEstablished,
    UpstreamOpened,
)
from appliance.proxy.http.core import HttpSession, HttpShared
from appliance.proxy.http.setup import make_shared
from appliance.proxy.services import SessionServices

TOKEN = "tok-7c1f0e9a-never-in-the-ledger"
NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)

BASE = """\
targets:
  - name: api
    protocol: http
    addresses: ["api.lab.test:443"]
    auth: {type: bearer}
    accounts: [{name: ci, user: "-", secret: {file: /x}}]
  - name: k8s
    protocol: http
    addresses: ["198.18.9.2:443"]
    names: ["kube.lab.test", "198.18.9.2"]
    kubernetes: true
    auth: {type: bearer}
    accounts: [{name: deployer, user: "-", secret: {file: /x}}]
  - name: s3
    protocol: http
    addresses: ["s3.lab.test:443"]
    names: ["s3.lab.test", "*.s3.lab.test"]
    auth: {type: aws_sigv4, region: us-east-1, service: s3}
    accounts: [{name: ci, user: AKIDREALKEY0000, secret: {file: /x}}]
"""

ALLOW_ALL = """\
policy:
  rules:
    - {name: all, action: allow}
"""


class FakeLedger:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str | None, dict[str, Any], dict[str, Any]]] = []

    def append(
        self,
        type: str,
        *,
        session: str | None = None,
        data: Mapping[str, Any],
        blobs: Any = None,
        **_: Any,
    ) -> None:
        self.entries.append((type, session, dict(data), dict(blobs or {})))

    def open_blob(self, transform: Any = None) -> Any:
        raise AssertionError("bodies travel as pending blobs")

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def failed(self) -> BaseException | None:
        return None

    def types(self) -> list[str]:
        return [t for t, *_ in self.entries]

    def all(self, type: str) -> list[dict[str, Any]]:
        return [d for t, _, d, _ in self.entries if t == type]

    def blobs(self, type: str) -> list[dict[str, Any]]:
        return [b for t, _, _, b in self.entries if t == type]


_SHARED: dict[str, HttpShared] = {}


def config(policy: str = ALLOW_ALL) -> Any:
    return parse_config(BASE + policy)


def shared_for(cfg: Any) -> HttpShared:
    key = "all"
    if key not in _SHARED:
        _SHARED[key] = make_shared([t for t in cfg.targets.values()], now=NOW)
    return _SHARED[key]


class Drive:
    """One core and everything that came out of it."""

    def __init__(
        self,
        target: str = "api",
        *,
        policy: str = ALLOW_ALL,
        upstream: tuple[str, int] = ("198.18.0.2", 443),
        masker: bool = True,
        mask_responses: bool = False,
        max_result_bytes: int = 16 << 20,
    ) -> None:
        from appliance.policy import parse_policy

        cfg = config(policy)
        clock = itertools.count()
        self.ledger = FakeLedger()
        self.services = SessionServices(
            ledger=self.ledger,
            policy=parse_policy(cfg.policy, targets=cfg.targets),
            masker=Masker(MaskingConfig(), hmac_key=b"k" * 32) if masker else None,
            clock=lambda: NOW.timestamp(),
            monotonic=lambda: float(next(clock)) / 1000,
            random_bytes=lambda n: b"\x01" * n,
            response_masking=(lambda t, i: True) if mask_responses else None,
            max_result_bytes=max_result_bytes,
            read_secret=lambda ref: (
                TOKEN if cfg.targets[target].options.auth.type != "aws_sigv4" else "REALSECRET/abc"
            ),
        )
        self.target = cfg.targets[target]
        info = ConnectionInfo("s1", ("10.9.0.1", 40000), ("127.0.0.1", 15001), upstream)
        self.core = HttpSession(self.services, shared_for(cfg), self.target, info)
        self.to_job = b""
        self.to_up = b""
        self.commands: list[Command] = []

    def _out(self, commands: Any) -> list[Command]:
        to_job, to_up = self.core.take_output()
        self.to_job += to_job
        self.to_up += to_up
        self.commands += list(commands)
        return list(commands)

    def start(self) -> list[Command]:
        return self._out(self.core.start())

    def event(self, event: Event) -> list[Command]:
        return self._out(self.core.handle(event))

    def open(self, sni: str = "api.lab.test", alpn: str | None = "http/1.1") -> None:
        """Start, the job's TLS up, the upstream connected and its TLS up."""
        self.start()
        self.event(TLSEstablished("job", None, alpn, sni))
        self.event(UpstreamOpened(("198.18.0.1", 50000)))
        self.event(TLSEstablished("upstream", b"der", "http/1.1", None))

    def job(self, data: bytes, *, bytewise: bool = False) -> list[Command]:
        pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
        out: list[Command] = []
        for piece in pieces:
            out += self._out(self.core.receive("job", piece))
        return out

    def up(self, data: bytes, *, bytewise: bool = False) -> list[Command]:
        pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
        out: list[Command] = []
        for piece in pieces:
            out += self._out(self.core.receive("upstream", piece))
        return out

    def take_job(self) -> bytes:
        out, self.to_job = self.to_job, b""
        return out

    def take_up(self) -> bytes:
        out, self.to_up = self.to_up, b""
        return out

    @property
    def ended(self) -> End | None:
        return next((c for c in self.commands if isinstance(c, End)), None)


def request(
    method: str,
    target: str,
    host: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> bytes:
    """A request as a client writes it (h11)."""
    c = h11.Connection(h11.CLIENT)
    hs = [("host", host), *(headers or [])]
    if body:
        hs.append(("content-length", str(len(body))))
    out = c.send(h11.Request(method=method, target=target, headers=hs)) or b""
    if body:
        out += c.send(h11.Data(data=body)) or b""
    return out + (c.send(h11.EndOfMessage()) or b"")


def parse_requests(data: bytes) -> list[tuple[h11.Request, bytes]]:
    """The requests (and bodies) the target received."""
    out = []
    while data:
        s = h11.Connection(h11.SERVER)
        s.receive_data(data)
        req, body = None, b""
        while True:
            ev = s.next_event()
            if isinstance(ev, h11.Request):
                req = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
            elif ev is h11.NEED_DATA:
                raise AssertionError(f"incomplete request: {data!r}")
        assert req is not None
        out.append((req, body))
        data = s.trailing_data[0]
    return out


def parse_responses(data: bytes, n: int = 1) -> list[tuple[h11.Response, bytes]]:
    """The first ``n`` responses the job received."""
    out = []
    for _ in range(n):
        c = h11.Connection(h11.CLIENT)
        c.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        c.send(h11.EndOfMessage())
        c.receive_data(data)
        resp, body = None, b""
        while True:
            ev = c.next_event()
            if isinstance(ev, h11.Response):
                resp = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
            elif ev is h11.NEED_DATA or isinstance(ev, h11.ConnectionClosed):
                raise AssertionError(f"incomplete response: {data!r}")
        assert resp is not None
        out.append((resp, body))
        data = c.trailing_data[0]
    return out


def response(status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> bytes:
    hs = [*(headers or []), ("content-length", str(len(body)))]
    return (
        f"HTTP/1.1 {status} OK\r\n".encode()
        + b"".join(f"{k}: {v}\r\n".encode() for k, v in hs)
        + b"\r\n"
        + body
    )
