"""The asyncssh glue (:mod:`appliance.proxy.ssh.runner`) on loopback, without root: an
asyncssh client plays the job, an asyncssh server plays the target (its commands are a few
Python lines, its SFTP a directory). The lab tests run the same glue between OpenSSH's
clients and Debian's sshd; this one checks its wiring in seconds: logins both ways, exec
with input and exit status, a refusal, a host key mismatch, SFTP with a transfer recorded.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.config import Account, Address, SecretRef, Target
from appliance.proxy.commands import ConnectionInfo
from appliance.proxy.shell import ShellServices
from appliance.proxy.ssh._asyncssh import asyncssh
from appliance.proxy.ssh.keys import shared
from appliance.proxy.ssh.options import SshOptions
from appliance.proxy.ssh.runner import SshRunner
from tests.unit.policy.helpers import rules

from .helpers import FakeLedger, services

POLICY = """
- {name: no-rm, match: {ssh: {programs: [rm]}}, action: deny, message: not here}
- {name: rest, action: allow}
"""


async def _target_process(process: Any) -> None:
    command = process.command or ""
    if command.startswith("echo "):
        process.stdout.write(command[5:] + "\n")
        process.exit(0)
    elif command == "shout":
        data = await process.stdin.read()
        process.stdout.write(data.upper())
        process.stderr.write("done\n")
        process.exit(3)
    elif command.startswith("flood "):
        chunk = "x" * 65536  # (the target server is in text mode)
        for _ in range(int(command[6:]) // len(chunk)):
            process.stdout.write(chunk)
            await process.stdout.drain()
        process.exit(0)
    else:
        process.exit(127)


class Loopback:
    """A target server, a runner per job connection, and the runner's ledger."""

    def __init__(self, tmp: Path, *, host_ca: bool = False) -> None:
        self.tmp = tmp
        # A host CA signs the target's host key (its known_hosts then holds the CA).
        self.host_ca = asyncssh.generate_private_key("ssh-ed25519") if host_ca else None
        self.ledger = FakeLedger()
        self.shared = shared(os.urandom)
        self.account = asyncssh.generate_private_key("ssh-ed25519")
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        (tmp / "files").mkdir()
        self.server: Any = None

    async def start(self) -> None:
        host_keys: list[Any] = [self.host_key]
        if self.host_ca is not None:
            cert = self.host_ca.generate_host_certificate(
                self.host_key, "target", principals=["127.0.0.1"]
            )
            host_keys = [(self.host_key, cert)]
        self.server = await asyncssh.create_server(
            asyncssh.SSHServer,
            "127.0.0.1",
            0,
            server_host_keys=host_keys,
            authorized_client_keys=asyncssh.import_authorized_keys(
                self.account.export_public_key().decode()
            ),
            process_factory=_target_process,
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(self.tmp / "files")),
        )
        self.port = self.server.sockets[0].getsockname()[1]

    def target(self, *, right_key: bool = True) -> Target:
        key = self.host_key if right_key else asyncssh.generate_private_key("ssh-ed25519")
        known = self.tmp / ("known" if right_key else "wrong")
        if self.host_ca is not None:
            ca = self.host_ca if right_key else key
            line = f"@cert-authority [127.0.0.1]:{self.port} {ca.export_public_key().decode()}"
        else:
            line = f"[127.0.0.1]:{self.port} {key.export_public_key().decode()}"
        known.write_text(line)
        return Target(
            "web",
            "ssh",
            (Address("ip", "127.0.0.1", self.port),),
            (Account("deploy", "deploy", SecretRef(file=Path("/k"))),),
            options=SshOptions(known, login_timeout=5),
        )

    async def job(
        self,
        target: Target,
        body: Callable[[Any], Awaitable[Any]],
        shell: ShellServices | None = None,
        started: Callable[[SshRunner], None] | None = None,
    ) -> tuple[Any, SshRunner]:
        """Run ``body(connection)`` as the job through a runner; (its result, the runner)."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        port = listener.getsockname()[1]
        secret = self.account.export_private_key().decode()
        svc = services(self.ledger, policy=rules(POLICY), secret=lambda ref: secret)
        svc.clock = time.time  # the job checks the host certificate's validity against now
        ca = self.tmp / "ca_known_hosts"
        ca.write_text(f"@cert-authority [127.0.0.1]:{port} {self.shared.ca_public_line()}\n")

        async def serve() -> SshRunner:
            conn, peer = await loop.sock_accept(listener)
            info = ConnectionInfo("s1", peer[:2], conn.getsockname()[:2], ("127.0.0.1", self.port))
            runner = SshRunner(svc, self.shared, target, info, shell or ShellServices())
            if started is not None:
                started(runner)
            await runner.run(conn)
            return runner

        serving = asyncio.create_task(serve())
        try:
            async with asyncssh.connect(
                "127.0.0.1",
                port,
                username="deploy",
                known_hosts=str(ca),
                client_keys=None,
                agent_path=None,
                config=[],
            ) as conn:
                result = await body(conn)
        finally:
            listener.close()
        runner = await asyncio.wait_for(serving, 10)
        return result, runner


def run(tmp: Path, test: Callable[[Loopback], Awaitable[None]], *, host_ca: bool = False) -> None:
    async def main() -> None:
        lb = Loopback(tmp, host_ca=host_ca)
        await lb.start()
        try:
            await test(lb)
        finally:
            lb.server.close()

    asyncio.run(main())


def test_exec_with_input_output_and_exit_status(tmp_path: Path) -> None:
    async def test(lb: Loopback) -> None:
        async def body(conn: Any) -> list[Any]:
            a = await conn.run("echo hello", check=False)
            b = await conn.run("shout", input="quiet please\n", check=False)
            c = await conn.run("rm -rf /", check=False)
            return [a, b, c]

        (a, b, c), runner = await lb.job(lb.target(), body)
        assert (a.stdout, a.exit_status) == ("hello\n", 0)
        assert (b.stdout, b.stderr, b.exit_status) == ("QUIET PLEASE\n", "done\n", 3)
        assert c.exit_status == 126 and "denied by policy rule 'no-rm': not here" in c.stderr
        assert runner.done.result().startswith("job disconnected")
        types = lb.ledger.types()
        assert types[:2] == ["session.start", "session.ready"]
        assert types.count("statement") == 3 and types[-1] == "session.end"
        exits = [r.get("exit_status") for r in lb.ledger.of("response")]
        assert exits == [0, 3, 126]

    run(tmp_path, test)


def test_a_wrong_host_key_refuses_the_login_with_a_banner(tmp_path: Path) -> None:
    async def test(lb: Loopback) -> None:
        # The banner says why, then the appliance disconnects with the same words.
        with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError), match="host"):
            await lb.job(lb.target(right_key=False), lambda conn: asyncio.sleep(0))
        assert lb.ledger.of("ssh.upstream_refused")[0]["stage"] == "host_key"

    run(tmp_path, test)


def test_a_target_certified_by_a_host_ca(tmp_path: Path) -> None:
    async def test(lb: Loopback) -> None:
        result, _ = await lb.job(lb.target(), lambda conn: conn.run("echo certified", check=False))
        assert result.stdout == "certified\n"
        # The certificate was checked against the CA; the key it certifies is recorded.
        fingerprint = lb.host_key.get_fingerprint("sha256")
        assert lb.ledger.of("session.ready")[0]["host_key"] == f"ssh-ed25519 {fingerprint}"
        with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError), match="host"):
            await lb.job(lb.target(right_key=False), lambda conn: asyncio.sleep(0))

    run(tmp_path, test, host_ca=True)


def test_sftp_through_the_glue_records_the_transfer(tmp_path: Path) -> None:
    local = tmp_path / "upload.txt"
    local.write_text("card 4111 1111 1111 1111\n")

    async def test(lb: Loopback) -> None:
        async def body(conn: Any) -> bytes:
            async with conn.start_sftp_client() as sftp:
                await sftp.put(str(local), "up.txt")
                async with sftp.open("up.txt", "rb") as f:
                    data: bytes = await f.read()
                return data

        data, _ = await lb.job(lb.target(), body)
        assert data == local.read_bytes()
        assert (tmp_path / "files" / "up.txt").read_bytes() == local.read_bytes()
        transfers = lb.ledger.of("ssh.transfer")
        assert {(t["direction"], t["complete"]) for t in transfers} == {
            ("upload", True),
            ("download", True),
        }
        content = lb.ledger.blobs("ssh.transfer")[0]["content"].decode()
        assert content == "card [REDACTED:CARD]\n"

    run(tmp_path, test)


class CongestedLedger:
    """The ledger channel as the runner sees it (``LedgerBacklog``), congested until
    :meth:`release`: every read that queued something must stop until it drains."""

    def __init__(self) -> None:
        self.added = 0
        self.congested = True
        self.waiting: list[asyncio.Future[None]] = []

    def holds_back(self, before: int) -> bool:
        return self.congested

    def drained(self) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        if self.congested:
            self.waiting.append(future)
        else:
            future.set_result(None)
        return future

    def release(self) -> None:
        self.congested = False
        for future in self.waiting:
            future.set_result(None)


def test_a_congested_ledger_channel_pauses_the_channel_until_it_drains(tmp_path: Path) -> None:
    """Issue 19's backpressure, as the shell does it: an output the ledger writer cannot keep
    up with stops being read from the target (the SSH window then stops the target); once
    the channel drains, the rest comes, and the job gets every byte."""
    total = 4 * 1024 * 1024  # more than an SSH window (2 MiB) holds
    ledger = CongestedLedger()
    runners: list[SshRunner] = []

    async def test(lb: Loopback) -> None:
        async def body(conn: Any) -> tuple[int, int, int | None]:
            process = await conn.create_process(f"flood {total}", encoding=None)
            got = len(await process.stdout.read(65536))
            for _ in range(500):  # up to 5 s for the runner to read and hold back
                if ledger.waiting:
                    break
                got += len(await asyncio.wait_for(process.stdout.read(65536), 1))
            assert ledger.waiting, "the runner never held the channel back"
            (pair,) = runners[0].pairs.values()
            assert "ledger" in pair.paused["upstream"]
            # Held: what is in flight arrives, then nothing more while the channel is held.
            while True:
                try:
                    got += len(await asyncio.wait_for(process.stdout.read(1 << 20), 0.3))
                except TimeoutError:
                    break
            held = got
            ledger.release()
            while chunk := await process.stdout.read(1 << 20):
                got += len(chunk)
            await process.wait()
            return held, got, process.exit_status

        (held, got, status), _ = await lb.job(
            lb.target(), body, ShellServices(backlog=ledger), runners.append
        )
        assert held < total // 2  # the target was stopped, not read to the end
        assert (got, status) == (total, 0)

    run(tmp_path, test)


def test_the_asyncssh_import_is_quiet() -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import appliance.proxy.ssh._asyncssh"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr
