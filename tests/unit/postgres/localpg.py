"""A throwaway PostgreSQL 15 on 127.0.0.1, for the lab auth test and the transcript capture.

Not a test module: it needs root (the server runs as the ``postgres`` OS user through
``runuser``), so only ``tests/lab/test_pg_auth.py`` and ``capture.py`` use it. The cluster
lives in a fresh temporary directory, listens on 127.0.0.1 on a free port and on a unix
socket in that directory, and is stopped and removed by :meth:`LocalPg.stop` (use it as a
context manager).

Roles made by :meth:`LocalPg.start` (password = ``PASSWORDS[role]``), each with its own
``pg_hba.conf`` method so one server covers every authentication path:

- ``scram_user``: SCRAM-SHA-256 (a non-ASCII password, to exercise SASLprep);
- ``md5_user``: md5; ``clear_user``: cleartext ``password``; ``trust_user``: trust;
- ``plus_user``: SCRAM over TLS only (``hostssl``), for channel binding.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.certs import server_cert

PG_BIN = Path("/usr/lib/postgresql/15/bin")

PASSWORDS = {
    "scram_user": "pencil-\u00fc\u00adx I\u2163",  # ü, a soft hyphen (mapped out), Roman four
    "md5_user": "md5-secret",
    "clear_user": "clear secret",
    "trust_user": "unused",
    "plus_user": "plus-secret",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPg:
    def __init__(self, *, tls: bool = True) -> None:
        self.tls = tls
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="appliance-pg-"))
        self.data = self.dir / "data"
        self.started = False
        self.ca_der: bytes | None = None
        self.ca_pem: Path | None = None

    def __enter__(self) -> LocalPg:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _as_postgres(self, *argv: str, input: bytes | None = None) -> str:
        proc = subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            input=input,
            capture_output=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {proc.stderr.decode(errors='replace')}")
        return proc.stdout.decode()

    def start(self) -> None:
        pw = pwd.getpwnam("postgres")
        os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o700)
        self._as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "admin", "-E",
            "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        conf = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.dir}'",
            "fsync = off",
            "log_connections = on",
        ]
        if self.tls:
            conf += self._make_tls()
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n".join(conf) + "\n")
        hba = [
            "local all admin trust",
            "host all trust_user 127.0.0.1/32 trust",
            "host all clear_user 127.0.0.1/32 password",
            "host all md5_user 127.0.0.1/32 md5",
            "hostssl all plus_user 127.0.0.1/32 scram-sha-256",
            "host all scram_user 127.0.0.1/32 scram-sha-256",
        ]
        (self.data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        self._as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w",
            "start",
        )  # fmt: skip
        self.started = True
        for role, password in PASSWORDS.items():
            enc = "md5" if role == "md5_user" else "scram-sha-256"
            quoted = password.replace("'", "''")
            self.sql(
                f"SET password_encryption = '{enc}'; CREATE ROLE {role} LOGIN PASSWORD '{quoted}';"
            )
            self.sql(f"CREATE DATABASE {role} OWNER {role}")

    def _make_tls(self) -> list[str]:
        from cryptography.hazmat.primitives import hashes

        # SHA-384: so that the channel-binding hash is not the default one.
        tls = server_cert(
            "appliance test CA", "localhost", ["localhost", "127.0.0.1"], sign_hash=hashes.SHA384()
        )
        pw = pwd.getpwnam("postgres")
        for name, data in (("server.crt", tls.cert_pem), ("server.key", tls.key_pem)):
            path = self.dir / name
            path.write_bytes(data)
            os.chown(path, pw.pw_uid, pw.pw_gid)
            os.chmod(path, 0o600)
        self.ca_pem = self.dir / "ca.crt"
        self.ca_pem.write_bytes(tls.ca_pem)
        os.chmod(self.ca_pem, 0o644)
        self.ca_der = tls.ca_der
        return [
            "ssl = on",
            f"ssl_cert_file = '{self.dir / 'server.crt'}'",
            f"ssl_key_file = '{self.dir / 'server.key'}'",
        ]

    def sql(self, sql: str, *, database: str = "postgres") -> str:
        """Run SQL as the superuser over the unix socket; return psql's unaligned output."""
        return self._as_postgres(
            str(PG_BIN / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h",
            str(self.dir), "-p", str(self.port), "-U", "admin", "-d", database, "-c", sql,
        )  # fmt: skip

    def stop(self) -> None:
        try:
            if self.started:
                subprocess.run(
                    ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D",
                     str(self.data), "-m", "immediate", "-w", "stop"],
                    capture_output=True,
                    timeout=60,
                )  # fmt: skip
                self.started = False
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.dir / "log").read_text(errors="replace")
        except OSError:
            return ""


def wait_until(predicate: object, timeout: float = 10.0) -> None:
    """Poll ``predicate()`` until true (used only by the capture relay, never asserted on)."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.01)
