"""SSH failing closed (issue 18): a bypass with the target's real host key pinned, a stopped
appliance, malformed and oversized packets, a key exchange that never finishes, a flood of
channel opens. Each is bounded, ends that connection alone with a ledger entry (before the
login: ``connection.refused``, aggregated per source and reason like every protocol's;
after it: the session's own entries), and the appliance keeps serving; ``capture remove``
takes the CA line away.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.lab.ssh import SshRunner, of_type, ssh


@pytest.fixture(scope="module")
def target(ssh_runner: SshRunner) -> SshRunner:
    return ssh_runner


def _raw(target: SshRunner, talk: Callable[[socket.socket], Any]) -> Any:
    """Run ``talk`` on a TCP connection to the target's port 22, opened from the runner as
    the job would (netfilter sends it to the appliance)."""

    def body() -> Any:
        with socket.create_connection((target.sshd.ipv4, 22), timeout=15) as s:
            return talk(s)

    return target.lab.run_in_runner(body)


def _read_all(s: socket.socket, limit: float = 15) -> bytes:
    s.settimeout(limit)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def _new_sessions(target: SshRunner, before: int, n: int = 1) -> list[list[dict[str, Any]]]:
    """The entries of the sessions started after the first ``before``, once ``n`` ended."""

    def ended(entries: list[dict[str, Any]]) -> bool:
        starts = of_type(entries, "session.start")[before:]
        ends = {e["session"] for e in of_type(entries, "session.end")}
        return len(starts) >= n and all(s["session"] in ends for s in starts[:n])

    entries = target.wait_for(ended, timeout=30)
    sids = [s["session"] for s in of_type(entries, "session.start")[before:][:n]]
    return [[e for e in entries if e["session"] == sid] for sid in sids]


def _new_refusals(target: SshRunner, before: int, n: int = 1) -> list[dict[str, Any]]:
    """The data of the ``connection.refused`` entries after the first ``before``, once
    there are ``n`` more."""
    entries = target.wait_for(lambda es: len(of_type(es, "connection.refused")) >= before + n)
    return [e["data"] for e in of_type(entries, "connection.refused")[before:]]


def _still_serving(target: SshRunner) -> None:
    r = target.job(ssh(target.sshd.ipv4, "echo still-serving"))
    assert r.returncode == 0 and "still-serving" in r.stdout, r.stderr


def test_a_bypass_with_the_real_host_key_pinned_fails_closed(target: SshRunner) -> None:
    pinned = target.home / "pinned_known_hosts"
    pinned.write_text(target.sshd.known_hosts.read_text())
    marker = target.sshd.home / "bypassed"
    sessions = len(target.entries("session.start"))
    before = len(target.entries("connection.refused"))
    for extra in ([], ["-o", "HostKeyAlgorithms=ssh-ed25519"]):
        r = target.job(
            [
                "ssh",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={pinned}",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                *extra,
                f"deploy@{target.sshd.ipv4}",
                "touch bypassed",
            ],
        )
        assert r.returncode == 255, r.stdout + r.stderr
        assert "Host key verification failed" in r.stderr, r.stderr
    assert not marker.exists()
    # Each attempt reached the appliance (and nothing else), and never logged in.
    refused = _new_refusals(target, before, 2)
    assert all(r["protocol"] == "ssh" and "before login" in r["reason"] for r in refused), refused
    assert len(target.entries("session.start")) == sessions
    _still_serving(target)


def test_malformed_and_oversized_packets_end_that_session_alone(target: SshRunner) -> None:
    cases = {
        "garbage after the version": b"SSH-2.0-evil\r\n" + b"\x00\x00\x00\x0c\x0a" + b"\xff" * 11,
        "oversized packet": b"SSH-2.0-evil\r\n" + b"\x7f\xff\xff\xf0" + b"\x00" * 16,
        "not SSH at all": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    for what, payload in cases.items():
        before = len(target.entries("connection.refused"))

        def talk(s: socket.socket, payload: bytes = payload) -> bytes:
            s.sendall(payload)
            return _read_all(s)

        answer = _raw(target, talk)
        assert answer.startswith(b"SSH-2.0-appliance"), (what, answer[:80])
        (refused,) = _new_refusals(target, before)
        assert refused["reason"] == "protocol error before login", (what, refused)
        assert refused["detail"], refused
    _still_serving(target)


def test_a_key_exchange_that_never_finishes_is_cut_after_the_login_timeout(
    target: SshRunner,
) -> None:
    before = len(target.entries("connection.refused"))

    def talk(s: socket.socket) -> tuple[float, bytes]:
        s.sendall(b"SSH-2.0-slowloris\r\n")  # then nothing: no KEXINIT
        t0 = time.monotonic()
        data = _read_all(s, limit=30)
        return time.monotonic() - t0, data

    waited, _ = _raw(target, talk)
    assert 2.0 < waited < 15, waited  # login_timeout is 3s in the lab config
    (refused,) = _new_refusals(target, before)
    assert refused["reason"] == "login timed out", refused
    _still_serving(target)


def test_a_flood_of_channel_opens_ends_that_session_alone(target: SshRunner) -> None:
    script = (
        "import asyncio, asyncssh\n"
        "async def main():\n"
        f"    async with asyncssh.connect('{target.sshd.ipv4}', username='deploy', known_hosts='/etc/ssh/ssh_known_hosts', client_keys=None, agent_path=None) as c:\n"
        "        refused = 0\n"
        "        held = []\n"
        "        for i in range(300):\n"
        "            try:\n"
        "                chan, _ = await c.create_session(asyncssh.SSHClientSession, 'sleep 30')\n"
        "                held.append(chan)\n"
        "            except (asyncssh.Error, OSError):\n"
        "                refused += 1\n"
        "            if c.is_closed():\n"
        "                print('ended after', i, 'opens,', refused, 'refused', flush=True)\n"
        "                return\n"
        "        print('never ended', flush=True)\n"
        "asyncio.run(main())\n"
    )
    before = len(target.entries("session.start"))
    r = target.job([sys.executable, "-c", script], timeout=120)
    assert "ended after" in r.stdout, r.stdout + r.stderr
    (session,) = _new_sessions(target, before)
    refused = of_type(session, "ssh.refused")
    assert refused and refused[0]["data"]["what"] == "channel"
    assert "flood" in of_type(session, "protocol.error")[0]["data"]["message"]
    assert of_type(session, "session.end")[0]["data"]["reason"] == "channel-open flood"
    # At most max_channels (8) ran at once on the target.
    assert len(of_type(session, "statement")) <= 8
    _still_serving(target)


def test_stopped_means_refused_and_capture_remove_takes_the_ca_away(target: SshRunner) -> None:
    assert "@cert-authority" in target.known_hosts.read_text()
    target.stop()
    try:
        r = target.job(ssh(target.sshd.ipv4, "echo unrecorded"), timeout=30)
        assert r.returncode == 255
        assert "Connection refused" in r.stderr, r.stderr
        removed = target.remove_capture()
        assert removed.returncode == 0, removed.stderr
        assert "SSH CA" in removed.stdout
        assert "@cert-authority" not in target.known_hosts.read_text()
    finally:
        target.start()
    assert "@cert-authority" in target.known_hosts.read_text()
    _still_serving(target)
