"""A real ``appliance run`` in the lab's runner namespace, for tests with real clients.

:func:`running_appliance` writes a config (targets pointing at the lab's PostgreSQL, one
explicit listener per target on 127.0.0.1), generates a ledger key with ``appliance keys
generate``, starts ``appliance run --no-capture --ready-file F`` in the runner namespace
with its log in a file, waits for the ready file, and always stops it (SIGTERM, then
SIGKILL) on the way out. Test modules make one per module (module-scoped fixture) to keep
the suite fast.

:class:`Appliance` reads what the appliance left behind: ledger entries through the
ledger's read API (:func:`appliance.ledger.iter_entries`), ``appliance ledger verify``,
the log, and every byte under the ledger directory (for "this value never reached disk"
checks).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from appliance.ledger import BlobReader, iter_entries
from appliance.ledger.results import read_result
from appliance.protocols.postgres.messages import CopyData, CopyDone, Query, StartupMessage
from tests.lab.lab import Lab, LabError, PgServer

APPLIANCE = str(Path(sys.executable).with_name("appliance"))
ORIGIN = "lab.test/ledger"
HOST = "127.0.0.1"


@dataclass
class TargetSpec:
    """One protected target of the test config: the lab's PostgreSQL behind a listener."""

    name: str
    port: int  # the appliance's listener on 127.0.0.1
    tls: Mapping[str, Any] = field(default_factory=lambda: {"mode": "disable"})
    accounts: Sequence[tuple[str, str]] = (
        ("ci", "app"),
        ("md5", "app_md5"),
        ("plain", "app_plain"),
    )
    address: str | None = None  # default: the server's IPv4 address and port


@dataclass
class Appliance:
    """A running appliance and what it writes; see the module docstring."""

    lab: Lab
    dir: Path
    config: Path
    ledger: Path
    log: Path
    vkey: Path
    ready: Path
    proc: subprocess.Popen[bytes] | None = None
    targets: dict[str, int] = field(default_factory=dict)
    executable: str = APPLIANCE  # another build's ``appliance`` (benchmarks compare two)
    env: Mapping[str, str] | None = None  # added to its environment (APPLIANCE_PURE=1 ...)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, timeout: float = 30) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.ready.unlink()
        log = self.log.open("ab")
        try:
            self.proc = self.lab.popen(
                [self.executable, "run", "--config", str(self.config), "--no-capture",
                 "--ready-file", str(self.ready), "--grace", "20"],
                host=self.lab.runner, stdout=subprocess.DEVNULL, stderr=log,
                # The cache directory systemd gives the unit (CacheDirectory=): the compiled
                # masking pre-filter is kept there from one start to the next.
                env={"CACHE_DIRECTORY": str(self.dir / "cache"), **(self.env or {})},
            )  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.proc.poll() is not None:
                raise LabError(f"appliance exited ({self.proc.returncode}): {self.log_text()}")
            if time.monotonic() > deadline:
                raise LabError(f"appliance not ready after {timeout}s: {self.log_text()}")
            time.sleep(0.02)

    def stop(self, *, timeout: float = 30) -> int:
        """SIGTERM, wait (in-flight statements finish), SIGKILL if it hangs. Returns the
        exit status."""
        proc = self.proc
        if proc is None:
            return 0
        self.proc = None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise LabError(f"appliance ignored SIGTERM for {timeout}s") from None
        return proc.returncode

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def children(self, marker: bytes) -> list[int]:
        """The pids of the daemon's child processes whose command line holds ``marker``
        (``b"appliance.ledger.remote"``: the ledger writer; ``b"appliance.proxy.workers"``:
        the proxy workers)."""
        assert self.proc is not None
        pid = self.proc.pid
        found = []
        for child in map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split()):
            with contextlib.suppress(FileNotFoundError):
                if marker in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(child)
        return found

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- what it left behind -----------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """Every ledger entry written so far (objects)."""
        if not (self.ledger / "entries.log").exists():
            return []
        return [e.obj for e in iter_entries(self.ledger)]

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], *, timeout: float = 20
    ) -> list[dict[str, Any]]:
        """Entries once ``predicate(entries)`` holds (the writer runs in the background);
        raise AssertionError with the tail of the ledger after ``timeout`` seconds."""
        return wait_for_entries(self.entries, predicate, timeout=timeout)

    def session_entries(self, session: str) -> list[dict[str, Any]]:
        return [e for e in self.entries() if e["session"] == session]

    def wait_session_end(
        self, match: Callable[[dict[str, Any]], bool], *, timeout: float = 20
    ) -> list[dict[str, Any]]:
        """The entries of the one session whose ``session.start`` data matches ``match``,
        once its ``session.end`` is written."""

        def ended(entries: list[dict[str, Any]]) -> bool:
            sid = _session_of(entries, match)
            return sid is not None and any(
                e["type"] == "session.end" and e["session"] == sid for e in entries
            )

        entries = self.wait_for(ended, timeout=timeout)
        sid = _session_of(entries, match)
        return [e for e in entries if e["session"] == sid]

    def session_by_app(self, application_name: str, *, timeout: float = 20) -> list[dict[str, Any]]:
        """The entries of the session started with ``application_name``, once ended."""
        return self.wait_session_end(
            lambda d: d.get("application_name") == application_name, timeout=timeout
        )

    def verify(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [APPLIANCE, "ledger", "verify", "--ledger", str(self.ledger), "--vkey", str(self.vkey)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def result_rows(self, response: Mapping[str, Any]) -> list[list[object]]:
        """The rows (cells) of a ``response`` entry's data, as the ledger keeps them."""
        res = response.get("result")
        if not isinstance(res, dict):
            return []
        inline = res.get("inline")
        blob = (
            inline.encode()
            if isinstance(inline, str)
            else BlobReader(self.ledger).read(res["sha256"])
        )
        return [row for result in read_result(blob) for row in result.rows]

    def files_containing(self, needle: bytes) -> list[Path]:
        """Files under the ledger directory, or the log, whose bytes contain ``needle``."""
        found = []
        for path in [*sorted(self.ledger.rglob("*")), self.log]:
            if path.is_file() and needle in path.read_bytes():
                found.append(path)
        return found


def wait_for_entries(
    entries: Callable[[], list[dict[str, Any]]],
    predicate: Callable[[list[dict[str, Any]]], bool],
    *,
    timeout: float = 20,
) -> list[dict[str, Any]]:
    """``entries()`` once ``predicate`` holds of it, polled every 50 ms; AssertionError with
    the tail of the ledger after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = entries()
        if predicate(found):
            return found
        if time.monotonic() > deadline:
            tail = "\n".join(json.dumps(e)[:300] for e in found[-15:])
            raise AssertionError(f"ledger condition not met in {timeout}s; tail:\n{tail}")
        time.sleep(0.05)


def _session_of(
    entries: list[dict[str, Any]], match: Callable[[dict[str, Any]], bool]
) -> str | None:
    found = [e["session"] for e in entries if e["type"] == "session.start" and match(e["data"])]
    if len(found) > 1:
        raise AssertionError(f"{len(found)} sessions match")
    return found[0] if found else None


def statements(session: list[dict[str, Any]]) -> list[str]:
    """The statement texts of one session's entries, in ledger order."""
    return [e["data"]["text"] for e in session if e["type"] == "statement"]


def responses(session: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The response entries of one session by statement number."""
    return {e["data"]["n"]: e["data"] for e in session if e["type"] == "response"}


def write_config(
    path: Path,
    *,
    pg: PgServer,
    targets: Sequence[TargetSpec],
    ledger: Path,
    key: Path,
    policy: Mapping[str, Any] | None = None,
    masking: Mapping[str, Any] | None = None,
    ledger_options: Mapping[str, Any] | None = None,
    proxy: Mapping[str, Any] | None = None,
) -> None:
    doc: dict[str, Any] = {
        "targets": [
            {
                "name": t.name,
                "protocol": "postgres",
                "addresses": [t.address or f"{pg.ipv4}:{pg.port}"],
                "listen": f"{HOST}:{t.port}",
                "tls": dict(t.tls),
                "connect_timeout": "5s",
                "accounts": [
                    {"name": name, "user": role, "secret": {"file": str(pg.password_file(role))}}
                    for name, role in t.accounts
                ],
            }
            for t in targets
        ],
        "ledger": {
            "dir": str(ledger),
            "origin": ORIGIN,
            "key": {"file": str(key)},
            "checkpoint_interval": "200ms",
            **(ledger_options or {}),
        },
    }
    if policy is not None:
        doc["policy"] = dict(policy)
    if masking is not None:
        doc["masking"] = dict(masking)
    if proxy is not None:
        doc["proxy"] = dict(proxy)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


@contextlib.contextmanager
def running_appliance(
    lab: Lab,
    pg: PgServer,
    workdir: Path,
    *,
    targets: Sequence[TargetSpec],
    policy: Mapping[str, Any] | None = None,
    masking: Mapping[str, Any] | None = None,
    ledger_options: Mapping[str, Any] | None = None,
    executable: str = APPLIANCE,
    env: Mapping[str, str] | None = None,
    proxy: Mapping[str, Any] | None = None,
) -> Iterator[Appliance]:
    """Configure, start and (always) stop an appliance (``executable``: this checkout's by
    default); see the module docstring."""
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [APPLIANCE, "keys", "generate", "--name", ORIGIN, "--out", str(workdir / "ledger")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    app = Appliance(
        lab=lab,
        dir=workdir,
        config=workdir / "config.yaml",
        ledger=workdir / "ledger.d",
        log=workdir / "appliance.log",
        vkey=workdir / "ledger.vkey",
        ready=workdir / "ready",
        targets={t.name: t.port for t in targets},
        executable=executable,
        env=env,
    )
    write_config(
        app.config,
        pg=pg,
        targets=targets,
        ledger=app.ledger,
        key=workdir / "ledger.key",
        policy=policy,
        masking=masking,
        ledger_options=ledger_options,
        proxy=proxy,
    )
    try:
        app.start()
        yield app
    finally:
        app.stop()


def pgbench_database(lab: Lab, pg: PgServer, name: str, *, scale: int = 1) -> None:
    """A new database ``name`` owned by ``app`` with pgbench's tables (``pgbench -i``, run
    as the job straight against the server)."""
    pg.admin_sql(f"DROP DATABASE IF EXISTS {name}")
    pg.admin_sql(f"CREATE DATABASE {name} OWNER app")
    init = lab.job(
        ["pgbench", "-i", "-q", "-s", str(scale)],
        env={**job_env(pg.port), "PGHOST": pg.ipv4, "PGDATABASE": name, "PGUSER": "app",
             "PGPASSWORD": pg.passwords["app"]},
        timeout=120,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr


def job_env(port: int, user: str = "ci", **extra: str) -> dict[str, str]:
    """libpq environment for a job that talks to the appliance's listener (no password)."""
    env = {
        "PGHOST": HOST,
        "PGPORT": str(port),
        "PGUSER": user,
        "PGDATABASE": "app",
        "PGCONNECT_TIMEOUT": "10",
        "PGSSLMODE": "disable",
        "PGGSSENCMODE": "disable",
    }
    env.update(extra)
    return env


def dsn(port: int, user: str = "ci", **extra: str) -> str:
    parts = {
        "host": HOST,
        "port": str(port),
        "user": user,
        "dbname": "app",
        "connect_timeout": "10",
        "sslmode": "disable",
        "gssencmode": "disable",
        **extra,
    }
    return " ".join(f"{k}={v}" for k, v in parts.items())


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of the whole backend messages at the head of ``data``."""
    out, pos = [], 0
    while pos + 5 <= len(data):
        (length,) = struct.unpack_from("!I", data, pos + 1)
        out.append((data[pos], data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


class RawClient:
    """A job speaking the protocol byte by byte from the runner namespace (no libpq), to
    send what no client library would and see every byte that comes back."""

    def __init__(self, lab: Lab, port: int, user: str, *, application_name: str = "raw") -> None:
        self.user = user
        self.application_name = application_name
        box: dict[str, socket.socket] = {}

        def connect() -> None:
            box["s"] = socket.create_connection(("127.0.0.1", port), timeout=15)

        lab.run_in_runner(connect)
        self.sock = box["s"]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def startup(self) -> bytes:
        params = {"user": self.user, "database": "app", "application_name": self.application_name}
        self.send(StartupMessage(3, 0, params).encode())
        return self._until_ready()

    def query(self, sql: str) -> bytes:
        self.send(Query(sql).encode())
        return self._until_ready()

    def copy_in(self, sql: str, pieces: list[bytes]) -> bytes:
        """COPY ... FROM STDIN with ``pieces`` as CopyData messages, cut where the test
        wants (not at line ends); returns what came back."""
        self.send(Query(sql).encode())
        data = b""
        while not any(t in (ord("G"), ord("E")) for t, _ in frames(data)):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed: {data!r}")
            data += chunk
        self.send(b"".join(CopyData(p).encode() for p in pieces) + CopyDone().encode())
        return data + self._until_ready()

    def _until_ready(self) -> bytes:
        data = b""
        while not any(t == ord("Z") for t, _ in frames(data)):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed: {data!r}")
            data += chunk
        return data

    def read_to_end(self) -> bytes:
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := self.sock.recv(65536):
                data += chunk
        return data

    def close(self) -> bytes:
        data = b""
        with contextlib.suppress(OSError):
            self.send(b"X\0\0\0\x04")
            data = self.read_to_end()
        self.sock.close()
        return data
