"""SSH policy, approvals, forwards and replay through the appliance, with real clients
(issue 18): a denied exec (the job is told why, exit status 126), a held exec that runs
once alice signs, port forwards refused unless a rule names them (and one that a rule
allows), agent forwarding never relayed, the recorded shell replayed and exported as
asciicast with the card number masked, and the job never holding the upstream key.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.approvals import ApprovalsClient
from tests.lab.lab import in_netns, wait_port
from tests.lab.ssh import APPLIANCE, SshRunner, Terminal, of_type, ssh

CARD = "5555 5555 5555 4444"
METRICS = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 9100))
s.listen()
while True:
    c, _ = s.accept()
    c.recv(100)
    c.sendall(b"metrics ok")
    c.close()
"""


@pytest.fixture(scope="module")
def target(ssh_runner: SshRunner) -> SshRunner:
    s = ssh_runner.sshd
    s.as_user(["sh", "-c", f"printf 'invoice for bob card {CARD} due\\n' > invoice.txt"])
    s.as_user(
        [
            "sh",
            "-c",
            "printf '#!/bin/sh\\necho released > released.txt\\necho release done\\n' > release.sh && chmod +x release.sh",
        ]
    )
    return ssh_runner


def test_a_denied_command_is_refused_with_the_rule_and_status_126(target: SshRunner) -> None:
    r = target.job(ssh(target.sshd.ipv4, "rm -rf /tmp/precious && echo gone"))
    assert r.returncode == 126
    assert (
        "appliance: denied by policy rule 'no-recursive-rm': no recursive deletes from CI"
        in r.stderr
    )
    assert "gone" not in r.stdout
    session = target.session("rm -rf /tmp/precious")
    decision = of_type(session, "policy.decision")[0]["data"]
    assert decision["decision"] == "deny" and decision["rule"] == "no-recursive-rm"
    assert decision["decision_id"] in r.stderr
    response = of_type(session, "response")[0]["data"]
    assert response["refused"] is True and response["exit_status"] == 126


def test_a_sudo_shell_is_denied(target: SshRunner) -> None:
    r = target.job(ssh(target.sshd.ipv4, "sudo -i"))
    assert r.returncode == 126
    assert "no-root-shells" in r.stderr


def test_a_held_command_runs_once_alice_signs(target: SshRunner) -> None:
    marker = target.sshd.home / "released.txt"
    marker.unlink(missing_ok=True)
    proc = target.popen_job(
        ssh(target.sshd.ipv4, "./release.sh v1.2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        client = ApprovalsClient(target.socket, timeout=10)
        deadline = time.monotonic() + 20
        pending = None
        while pending is None and time.monotonic() < deadline:
            pending = next(
                (s for s in client.list_requests() if "release.sh" in s.request.statement), None
            )
            time.sleep(0.05)
        assert pending is not None, "no approval request"
        assert not marker.exists()  # held: nothing ran yet
        assert pending.request.rule == "releases-need-alice"
        r = target.approve(pending.request.id, "ticket REL-7")
        assert r.returncode == 0, r.stderr
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert b"release done" in out
    assert marker.read_text() == "released\n"
    session = target.session("./release.sh v1.2")
    types = [e["type"] for e in session]
    assert "approval.requested" in types and "approval.granted" in types
    granted = of_type(session, "approval.granted")[0]["data"]
    assert granted["approver"] == "alice" and "ticket REL-7" in json.dumps(granted)
    response = of_type(session, "response")[0]["data"]
    assert response["approval"]["outcome"] == "granted"


def forward(target: SshRunner, flag: str, spec: str) -> list[str]:
    """ssh -N with one forward (-L or -R) and nothing else."""
    opts = ["-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes"]
    return ["ssh", "-N", *opts, flag, spec, f"deploy@{target.sshd.ipv4}"]


def _local_port(target: SshRunner) -> int:
    def free() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    return int(target.lab.run_in_runner(free))


def _through(target: SshRunner, port: int, payload: bytes) -> bytes:
    """Connect to the job's forwarded local port from the runner; what comes back."""

    def talk() -> bytes:
        deadline = time.monotonic() + 15
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with s:
            s.sendall(payload)
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except OSError:
                pass
            return data

    result: bytes = target.lab.run_in_runner(talk)
    return result


def test_a_local_forward_is_refused_unless_a_rule_names_it(target: SshRunner) -> None:
    # A small server on the target's loopback, the "metrics" port the policy opens.
    with in_netns(target.sshd.host.path):
        metrics = subprocess.Popen(["python3", "-c", METRICS])
    try:
        wait_port("127.0.0.1", 9100, netns=target.sshd.host.path)
        for dest, allowed in (("127.0.0.1:9100", True), ("127.0.0.1:22", False)):
            port = _local_port(target)
            host, dport = dest.split(":")
            fwd = target.popen_job(
                forward(target, "-L", f"127.0.0.1:{port}:{host}:{dport}"),
                stderr=subprocess.PIPE,
            )
            try:
                data = _through(target, port, b"GET /\n")
            finally:
                fwd.terminate()
                try:
                    _, err = fwd.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    fwd.kill()
                    _, err = fwd.communicate(timeout=10)
            if allowed:
                assert data == b"metrics ok", err
            else:
                assert data == b""
                assert b"administratively prohibited" in err, err
        entries = target.wait_for(
            lambda es: any(
                e["type"] == "policy.decision" and "127.0.0.1:22" in json.dumps(e["data"])
                for e in es
            )
        )
        forwards = [
            e["data"] for e in of_type(entries, "statement") if e["data"]["request"] == "forward"
        ]
        by_text = {f["text"]: f["decision"]["decision"] for f in forwards}
        assert by_text["local forward to 127.0.0.1:9100"] == "allow"
        assert by_text["local forward to 127.0.0.1:22"] == "deny"
        # A catch-all allow does not open a tunnel: only a rule naming the class does.
        denied = next(f for f in forwards if f["text"] == "local forward to 127.0.0.1:22")
        assert denied["decision"]["rule"] == "(no rule matched)"
    finally:
        metrics.kill()
        metrics.wait()


def test_a_remote_forward_is_refused_and_recorded(target: SshRunner) -> None:
    r = target.job(
        forward(target, "-R", "127.0.0.1:9200:127.0.0.1:80"),
        timeout=30,
    )
    assert r.returncode == 255
    assert "remote port forwarding failed" in r.stderr, r.stderr
    target.wait_for(
        lambda es: any(
            e["type"] == "statement"
            and e["data"].get("text") == "remote forward 127.0.0.1:9200"
            and e["data"]["decision"]["decision"] == "deny"
            for e in es
        )
    )


JOB_SERVER = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hello from the job")
    c.close()
"""


def test_a_remote_forward_a_rule_allows_reaches_back_to_the_job(target: SshRunner) -> None:
    server = target.popen_job([sys.executable, "-c", JOB_SERVER], stdout=subprocess.PIPE)
    fwd = None
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        fwd = target.popen_job(
            forward(target, "-R", f"127.0.0.1:9201:127.0.0.1:{port}"), stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 20
        data = b""
        with in_netns(target.sshd.host.path):
            while time.monotonic() < deadline and not data:
                try:
                    with socket.create_connection(("127.0.0.1", 9201), timeout=5) as s:
                        data = s.recv(100)
                except OSError:
                    time.sleep(0.1)
        assert data == b"hello from the job"
    finally:
        for proc in (fwd, server):
            if proc is not None:
                proc.kill()
                proc.wait()
    entries = target.wait_for(
        lambda es: any(
            e["type"] == "statement" and e["data"].get("request") == "forwarded" for e in es
        )
    )
    allowed = [
        e["data"]
        for e in of_type(entries, "statement")
        if e["data"].get("text") == "remote forward 127.0.0.1:9201"
    ]
    assert allowed and allowed[-1]["decision"]["rule"] == "tunnel-back"


def test_agent_forwarding_is_never_relayed(target: SshRunner) -> None:
    sock = target.home / "agent.sock"
    agent = target.popen_job(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        r = target.job(
            [
                "ssh",
                "-A",
                "-o",
                "BatchMode=yes",
                f"deploy@{target.sshd.ipv4}",
                "echo agent=${SSH_AUTH_SOCK:-none}",
            ],
            env={"SSH_AUTH_SOCK": str(sock)},
        )
    finally:
        agent.kill()
        agent.wait()
    assert r.returncode == 0, r.stderr
    assert "agent=none" in r.stdout
    session = target.session("echo agent=")
    refused = of_type(session, "ssh.refused")
    assert [e["data"]["what"] for e in refused] == ["agent_forward"]


def test_the_replay_shows_what_the_operator_saw_masked(target: SshRunner, tmp_path: Path) -> None:
    term = Terminal(target)
    try:
        term.expect(b"$ ")
        term.type("echo replay-marker; cat invoice.txt\r")
        term.expect(b"due")
        term.type("exit\r")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert CARD.encode() in term.seen  # the operator saw the real value
    session = target.session("shell", latest=True)
    sid = session[0]["session"]
    replay = subprocess.run(
        [APPLIANCE, "ledger", "replay", "--ledger", str(target.ledger), sid, "--speed", "50"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr
    assert "replay-marker" in replay.stdout, replay.stdout
    assert "invoice for bob card [REDACTED:CARD] due" in replay.stdout
    assert "5555" not in replay.stdout
    cast = tmp_path / "shell.cast"
    r = subprocess.run(
        [
            APPLIANCE,
            "ledger",
            "export",
            "--ledger",
            str(target.ledger),
            "--session",
            sid,
            "--format",
            "asciicast",
            "--out",
            str(cast),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    lines = cast.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2 and header["width"] == 80 and header["height"] == 24
    events = [json.loads(line) for line in lines[1:]]
    assert all(isinstance(e[0], float) and e[1] in ("o", "i", "r") for e in events)
    assert [e[0] for e in events] == sorted(e[0] for e in events)
    shown = "".join(e[2] for e in events if e[1] == "o")
    assert "[REDACTED:CARD]" in shown and "5555" not in shown
    # asciinema itself reads it (asciinema cat prints the output stream).
    cat = subprocess.run(
        [str(Path(APPLIANCE).with_name("asciinema")), "cat", str(cast)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cat.returncode == 0, cat.stderr
    assert "invoice for bob card [REDACTED:CARD] due" in cat.stdout


def test_the_job_never_holds_the_upstream_key(target: SshRunner) -> None:
    key = target.sshd.account_key.read_text()
    body = "".join(key.strip().splitlines()[1:-1])
    public = Path(f"{target.sshd.account_key}.pub").read_text().split()[1]
    # Not in its files: the job cannot read the key, nor any secret of the appliance.
    r = target.job(["cat", str(target.sshd.account_key)])
    assert r.returncode != 0 and "Permission denied" in r.stderr
    # Not in its environment, nor in any message it receives: the job's SSH connection
    # ends at the appliance (the verbose client log shows every key it was offered).
    r = target.job(
        [
            "sh",
            "-c",
            "env; ssh -vvv -o BatchMode=yes deploy@" + target.sshd.ipv4 + " 'env; echo key-check'",
        ]
    )
    assert r.returncode == 0, r.stderr
    everything = r.stdout + r.stderr
    assert "key-check" in everything
    assert body[:40] not in everything and public not in everything
    # Nor in the ledger or the appliance's log.
    ledger = b"".join(p.read_bytes() for p in target.ledger.rglob("*") if p.is_file())
    assert body[:40].encode() not in ledger and public.encode() not in ledger
    assert body[:40] not in target.log()


def test_a_target_host_key_that_does_not_match_is_refused(target: SshRunner) -> None:
    ipv6 = target.sshd.host.ipv6
    r = target.job(ssh(ipv6, "touch mismatch-ran"))
    assert r.returncode == 255
    assert "host key" in r.stderr, r.stderr
    assert not (target.sshd.home / "mismatch-ran").exists()
    entries = target.wait_for(
        lambda es: any(e["type"] == "ssh.upstream_refused" and e["target"] == "web6" for e in es)
    )
    refused = [e for e in entries if e["type"] == "ssh.upstream_refused" and e["target"] == "web6"][
        -1
    ]
    assert refused["data"]["stage"] == "host_key"
    sid = refused["session"]
    end = target.wait_for(
        lambda es: any(e["type"] == "session.end" and e["session"] == sid for e in es)
    )
    assert any(e["type"] == "session.end" and e["session"] == sid for e in end)
