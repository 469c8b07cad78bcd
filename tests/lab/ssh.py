"""An appliance protecting a real OpenSSH server, with transparent capture, for SSH lab tests.

:class:`SshRunner` writes the config (target ``web``: the lab sshd on target 1, port 22,
captured by netfilter; ``web6``: the same server by its IPv6 address, configured with the
wrong host key), generates the ledger and approver keys, and runs ``appliance run`` in the
lab's runner namespace with capture on and eBPF attribution on the lab's job cgroup. The
policy is :data:`POLICY`. Jobs run as uid nobody in the job cgroup, with the runner's
``/etc/ssh`` as a lab directory (where the appliance writes its CA line) and a home of
their own with no key in it.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from appliance.ledger import iter_entries
from tests.lab.lab import Lab
from tests.lab.proxy import wait_for_entries
from tests.lab.sshd import SshServer, job_etc_ssh, job_home, job_ssh_binds

APPLIANCE = str(Path(sys.executable).with_name("appliance"))
ORIGIN = "lab.test/ssh"
LISTEN_PORT = 15022
CI_ENV = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REPOSITORY": "acme/infra",
    "GITHUB_WORKFLOW": "deploy",
    "GITHUB_JOB": "release",
    "GITHUB_RUN_ID": "4242",
}


def policy(alice_vkey: str, socket: Path) -> dict[str, Any]:
    return {
        "approvals": {
            "timeout": "60s",
            "socket": str(socket),
            "approvers": [{"name": "alice", "key": alice_vkey}],
        },
        "rules": [
            {
                "name": "no-recursive-rm",
                "match": {"ssh": {"programs": ["rm"], "arguments": ["-rf *", "-fr *"]}},
                "action": "deny",
                "message": "no recursive deletes from CI",
            },
            {
                "name": "no-root-shells",
                "match": {"ssh": {"sudo": ["(shell)", "bash", "sh"]}},
                "action": "deny",
            },
            {
                "name": "releases-need-alice",
                "match": {"ssh": {"programs": ["release.sh"]}},
                "action": "review",
                "approvers": ["alice"],
                "timeout": "30s",
            },
            {
                "name": "etc-is-read-only",
                "match": {"classes": ["file_changes"], "ssh": {"paths": ["/etc/*"]}},
                "action": "deny",
            },
            {
                "name": "sftp-secret-dir",
                "match": {"classes": ["file_read"], "ssh": {"paths": ["*/secrets/*"]}},
                "action": "deny",
                "message": "secrets stay on the host",
            },
            {
                "name": "tunnel-to-metrics",
                "match": {
                    "classes": ["ssh_port_forward"],
                    "ssh": {"destinations": ["127.0.0.1:9100"]},
                },
                "action": "allow",
            },
            {
                "name": "tunnel-back",
                "match": {
                    "classes": ["ssh_remote_forward"],
                    "ssh": {"destinations": ["127.0.0.1:9201"]},
                },
                "action": "allow",
            },
            {"name": "default", "action": "allow"},
        ],
    }


class SshRunner:
    """The appliance daemon with capture, protecting the lab sshd; see the module docstring."""

    def __init__(self, lab: Lab, sshd: SshServer, work: Path) -> None:
        self.lab, self.sshd, self.work = lab, sshd, work
        self.ledger = work / "ledger"
        self.proc: subprocess.Popen[bytes] | None = None
        self.socket = work / "approvals.sock"
        self.config_path = work / "config.yaml"
        self.known_hosts = job_etc_ssh(lab) / "ssh_known_hosts"
        self.home = job_home(lab)
        for args in (
            ["keys", "generate", "--name", ORIGIN, "--out", str(work / "ledger")],
            ["keys", "generate", "--approver", "alice", "--out", str(work / "alice")],
        ):
            subprocess.run([APPLIANCE, *args], check=True, capture_output=True, timeout=60)
        self.alice_key = work / "alice.key"
        alice_vkey = (work / "alice.vkey").read_text().strip()
        self.write_config(policy(alice_vkey, self.socket))

    def write_config(self, policy_doc: Mapping[str, Any], **target: Any) -> None:
        s = self.sshd
        doc: dict[str, Any] = {
            "targets": [
                {
                    "name": "web",
                    "protocol": "ssh",
                    "addresses": [f"{s.ipv4}:22"],
                    "known_hosts": str(s.known_hosts),
                    "login_timeout": "3s",
                    "max_channels": 8,
                    "accounts": [
                        {
                            "name": "deploy",
                            "user": "deploy",
                            "secret": {"file": str(s.account_key)},
                        },
                        {
                            "name": "deploy-cert",
                            "user": "deploy",
                            "secret": {"file": str(s.account_key_with_cert)},
                        },
                    ],
                    **target,
                },
                {
                    "name": "web6",
                    "protocol": "ssh",
                    "addresses": [f"[{s.host.ipv6}]:22"],
                    "known_hosts": str(s.wrong_known_hosts),
                    "accounts": [
                        {
                            "name": "deploy",
                            "user": "deploy",
                            "secret": {"file": str(s.account_key)},
                        },
                    ],
                },
            ],
            "ledger": {
                "dir": str(self.ledger),
                "origin": ORIGIN,
                "key": {"file": str(self.work / "ledger.key")},
                "checkpoint_interval": "100ms",
            },
            "capture": {
                "listen_port": LISTEN_PORT,
                "cgroup": str(self.lab.job_cgroup),
                "reconcile_interval": "60s",
                "ssh_known_hosts": str(self.known_hosts),
                "appliance_cgroup": self.lab.appliance_cgroup_path,
            },
            "policy": dict(policy_doc),
        }
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))

    # -- the daemon ----------------------------------------------------------------------

    def start(self) -> None:
        ready = self.work / "ready.json"
        ready.unlink(missing_ok=True)
        log = (self.work / "appliance.log").open("ab")
        self.proc = self.lab.popen(
            [APPLIANCE, "run", "--config", str(self.config_path), "--ready-file", str(ready)],
            cgroup=self.lab.appliance_cgroup,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 60
        while not (ready.exists() and ready.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"appliance did not start:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def remove_capture(self) -> subprocess.CompletedProcess[str]:
        proc = self.lab.popen(
            [APPLIANCE, "capture", "remove", "--config", str(self.config_path)],
            cgroup=self.lab.appliance_cgroup,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = proc.communicate(timeout=60)
        return subprocess.CompletedProcess([], proc.returncode, out.decode(), err.decode())

    def log(self) -> str:
        path = self.work / "appliance.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- jobs ----------------------------------------------------------------------------

    def job(
        self,
        argv: Sequence[str],
        *,
        input: str | bytes | None = None,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` as the job: uid nobody, job cgroup, CI variables, the runner's /etc/ssh."""
        return self.lab.job(
            argv,
            input=input,
            timeout=timeout,
            env={**CI_ENV, "HOME": str(self.home), **(env or {})},
            binds=job_ssh_binds(self.lab),
        )

    def popen_job(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        env = {**CI_ENV, "HOME": str(self.home), **kwargs.pop("env", {})}
        return self.lab.popen(argv, job=True, env=env, binds=job_ssh_binds(self.lab), **kwargs)

    # -- the ledger ----------------------------------------------------------------------

    def entries(self, type_: str | None = None) -> list[dict[str, Any]]:
        if not (self.ledger / "entries.log").exists():
            return []
        return [e.obj for e in iter_entries(self.ledger) if type_ is None or e.obj["type"] == type_]

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], *, timeout: float = 20
    ) -> list[dict[str, Any]]:
        return wait_for_entries(self.entries, predicate, timeout=timeout)

    def session(
        self, text: str, *, timeout: float = 20, latest: bool = False
    ) -> list[dict[str, Any]]:
        """The entries of the one ended session with a statement whose text holds ``text``
        (``latest``: the last of several)."""

        def sid(entries: list[dict[str, Any]]) -> str | None:
            found = list(
                dict.fromkeys(
                    e["session"]
                    for e in entries
                    if e["type"] == "statement" and text in str(e["data"].get("text", ""))
                )
            )
            if len(found) > 1 and not latest:
                raise AssertionError(f"{len(found)} sessions ran {text!r}")
            return found[-1] if found else None

        def ended(entries: list[dict[str, Any]]) -> bool:
            s = sid(entries)
            return s is not None and any(
                e["type"] == "session.end" and e["session"] == s for e in entries
            )

        entries = self.wait_for(ended, timeout=timeout)
        s = sid(entries)
        return [e for e in entries if e["session"] == s]

    def approve(self, request_id: str, reason: str = "ok") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                APPLIANCE,
                "approvals",
                "approve",
                request_id,
                "--key",
                str(self.alice_key),
                "--reason",
                reason,
                "--socket",
                str(self.socket),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )


class Terminal:
    """An interactive ssh on a pseudo-terminal, driven expect-style."""

    def __init__(self, target: SshRunner, *args: str) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.proc = target.popen_job(
            ["ssh", "-tt", "-o", "BatchMode=yes", f"deploy@{target.sshd.ipv4}", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={"TERM": "xterm"},
        )
        os.close(slave)
        self.seen = b""

    def expect(self, needle: bytes, timeout: float = 20) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not seen; got {self.seen[-500:]!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(
                        f"{needle!r} not seen before EOF; got {self.seen[-500:]!r}"
                    )
                self.seen += chunk
        return self.seen

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.kill(self.proc.pid, signal.SIGWINCH)

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=20)
        finally:
            os.close(self.master)


def recording(runner: SshRunner, ref: dict[str, object]) -> str:
    """A recording blob's text (inline, or from the blob store)."""
    if isinstance(ref.get("inline"), str):
        return str(ref["inline"])
    sha = str(ref["sha256"])
    return (runner.ledger / "blobs" / sha[:2] / sha).read_text()


def of_type(entries: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e for e in entries if e["type"] == type_]


def ssh(host: str, *args: str, user: str = "deploy") -> list[str]:
    """An unmodified OpenSSH command line (batch mode: a prompt would be a failure)."""
    return ["ssh", "-o", "BatchMode=yes", f"{user}@{host}", *args]
