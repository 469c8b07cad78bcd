"""Unmodified SSH clients as the job, through the appliance, against Debian's sshd (issue 18).

The job (uid nobody, job cgroup, no key of its own) reaches the target by its real address
on port 22; netfilter brings the connection to the appliance, which presents a host
certificate from its per-run CA (trusted through the runner's ssh_known_hosts), logs in to
the target with the service account's key, and records what runs: ``ssh host cmd``, an
interactive shell on a terminal (typed input, a window resize, a password typed without
echo), ``scp`` both ways (SFTP and the legacy protocol), ``sftp -b``, ``rsync -e ssh``,
``git clone`` over SSH, signals from an asyncssh client, and Ansible (ping and copy).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab.ssh import SshRunner, Terminal, of_type, recording, ssh

CARD = "4111 1111 1111 1111"
SECRET = "hunter2-no-echo"


@pytest.fixture(scope="module")
def target(ssh_runner: SshRunner) -> SshRunner:
    """The target's files: a file with a card number, a release script, a bare git repo."""
    s = ssh_runner.sshd
    s.as_user(["sh", "-c", f"printf 'customer ada {CARD} paid\\n' > cards.txt"])
    s.as_user(
        [
            "sh",
            "-c",
            "printf '#!/bin/sh\\necho released > released.txt\\n' > release.sh && chmod +x release.sh",
        ]
    )
    s.as_user(["sh", "-c", "mkdir -p secrets && echo token > secrets/token"])
    s.as_user(
        [
            "sh",
            "-c",
            "git init -q --bare -b main repo.git && git init -q -b main work && cd work && "
            "echo '# app' > README.md && git add README.md && "
            "git -c user.email=ci@lab.test -c user.name=ci commit -q -m init && "
            "git push -q ../repo.git main",
        ]
    )
    return ssh_runner


def test_ssh_host_command(target: SshRunner) -> None:
    host = target.sshd.ipv4
    r = target.job(ssh(host, "echo hello from $(hostname -s); id -un; cat cards.txt"))
    assert r.returncode == 0, r.stderr + target.log()[-3000:]
    assert "hello from" in r.stdout and "deploy" in r.stdout
    assert CARD in r.stdout  # the job sees the real output
    session = target.session("echo hello from")
    start = of_type(session, "session.start")[0]
    assert start["identity"]["source"] == "ebpf", start["identity"]
    assert start["identity"]["ci"]["repository"] == "acme/infra"
    assert start["data"]["server"] == f"{host}:22"
    ready = of_type(session, "session.ready")[0]
    assert ready["account"] == "deploy"
    assert ready["data"]["host_key"].startswith("ssh-ed25519 SHA256:")
    statement = of_type(session, "statement")[0]["data"]
    assert statement["request"] == "exec"
    programs = [op.get("program") for op in statement["decision"]["operations"]]
    assert programs == ["echo", "id", "cat", "hostname"]
    response = of_type(session, "response")[0]["data"]
    assert response["exit_status"] == 0
    output = response["output"]
    text = output.get("inline", "")
    assert "[REDACTED:CARD]" in text and "4111" not in text
    assert output["masking"]["detectors"]["card"] >= 1


def test_exit_status_and_stderr_are_relayed(target: SshRunner) -> None:
    r = target.job(ssh(target.sshd.ipv4, "echo to-stderr >&2; exit 7"))
    assert r.returncode == 7
    assert "to-stderr" in r.stderr


def test_standard_input_reaches_the_command(target: SshRunner) -> None:
    r = target.job(
        ssh(target.sshd.ipv4, "cat > piped.txt && wc -c < piped.txt"), input="a" * 100_000
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "100000"


def test_a_certificate_account_logs_in(target: SshRunner) -> None:
    r = target.job(ssh(target.sshd.ipv4, "echo cert-login", user="deploy-cert"))
    assert r.returncode == 0, r.stderr
    ready = of_type(target.session("echo cert-login"), "session.ready")[0]
    assert ready["account"] == "deploy-cert"
    assert ready["data"]["auth_method"] == "publickey (certificate)"


def test_an_interactive_shell_on_a_terminal(target: SshRunner) -> None:
    term = Terminal(target)
    try:
        term.expect(b"$ ")
        term.type("stty size; echo shell-marker\r")
        term.expect(b"24 80")
        term.resize(30, 100)
        time.sleep(0.5)
        term.type("stty size\r")
        term.expect(b"30 100")
        term.type("cat cards.txt\r")
        term.expect(b"paid")
        # The prompt is built at run time, so that the echo of this line does not hold it.
        term.type('p=Pass; read -s -p "${p}word: " pw; echo; echo got ${#pw} chars\r')
        term.expect(b"Password: ")
        term.type(SECRET + "\r")
        term.expect(b"got 15 chars")
        term.type("exit\r")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    session = target.session("shell", latest=True)
    statement = of_type(session, "statement")[0]["data"]
    assert statement["request"] == "shell"
    assert statement["pty"] == {"term": "xterm", "cols": 80, "rows": 24}
    response = of_type(session, "response")[0]["data"]
    blob = recording(target, response["output"])
    assert "[REDACTED:CARD]" in blob and "4111" not in blob
    assert SECRET not in blob
    assert "[NO-ECHO: 15 characters]" in blob
    assert '"r", "100x30"' in blob or '"r","100x30"' in blob
    assert "shell-marker" in blob


def test_scp_up_and_down_over_sftp_and_the_legacy_protocol(
    target: SshRunner, tmp_path: Path
) -> None:
    host = target.sshd.ipv4
    local = target.home / "upload.txt"
    content = f"release notes\ncard {CARD}\n".encode() * 50
    local.write_bytes(content)
    os.chown(local, 65534, 65534)
    digest = hashlib.sha256(content).hexdigest()
    for mode, name in (([], "up-sftp.txt"), (["-O"], "up-legacy.txt")):
        r = target.job(
            ["scp", "-q", "-o", "BatchMode=yes", *mode, str(local), f"deploy@{host}:{name}"]
        )
        assert r.returncode == 0, (mode, r.stderr)
        assert (target.sshd.home / name).read_bytes() == content
        down = target.home / f"down-{name}"
        r = target.job(
            ["scp", "-q", "-o", "BatchMode=yes", *mode, f"deploy@{host}:{name}", str(down)]
        )
        assert r.returncode == 0, (mode, r.stderr)
        assert down.read_bytes() == content
    transfers = target.wait_for(lambda es: len(of_type(es, "ssh.transfer")) >= 4)
    moved = {
        (t["data"]["protocol"], t["data"]["direction"], Path(t["data"]["path"]).name): t["data"]
        for t in of_type(transfers, "ssh.transfer")
    }
    for key in (
        ("sftp", "upload", "up-sftp.txt"),
        ("sftp", "download", "up-sftp.txt"),
        ("scp", "upload", "up-legacy.txt"),
        ("scp", "download", "up-legacy.txt"),
    ):
        t = moved[key]
        assert t["size"] == len(content) and t["sha256"] == digest and t["complete"], (key, t)
        text = recording(target, t["content"])
        assert "[REDACTED:CARD]" in text and "4111" not in text, key


def test_sftp_batch_and_a_denied_operation(target: SshRunner) -> None:
    host = target.sshd.ipv4
    batch = target.home / "batch.sftp"
    batch.write_text(
        "mkdir drop\nput /etc/hostname drop/hostname\nls drop\nrename drop/hostname drop/h2\nrm drop/h2\nrmdir drop\n"
    )
    r = target.job(["sftp", "-o", "BatchMode=yes", "-b", str(batch), f"deploy@{host}"])
    assert r.returncode == 0, r.stderr
    assert not (target.sshd.home / "drop").exists()
    # A denied read: the client gets permission denied and sftp -b stops with status 1.
    batch.write_text("get secrets/token /tmp/stolen\n")
    r = target.job(["sftp", "-o", "BatchMode=yes", "-b", str(batch), f"deploy@{host}"])
    assert r.returncode == 1
    # OpenSSH's sftp prints the status code's own words; the rule's message is in the ledger.
    assert "Permission denied" in r.stderr, r.stderr
    decisions = target.wait_for(
        lambda es: any(
            e["type"] == "policy.decision" and e["data"].get("rule") == "sftp-secret-dir"
            for e in es
        )
    )
    ops = [e["data"]["request"] for e in of_type(decisions, "statement")]
    # OpenSSH renames with its posix-rename extension when the server offers it.
    for op in (
        "sftp.mkdir",
        "sftp.open",
        "sftp.posix-rename@openssh.com",
        "sftp.remove",
        "sftp.rmdir",
    ):
        assert op in ops, ops


def test_rsync_over_ssh(target: SshRunner) -> None:
    src = target.home / "tree"
    src.mkdir(exist_ok=True)
    (src / "a.txt").write_text("alpha\n" * 1000)
    (src / "b.txt").write_text("beta\n")
    subprocess.run(["chown", "-R", "65534:65534", str(src)], check=True)
    r = target.job(
        ["rsync", "-a", "-e", "ssh -o BatchMode=yes", f"{src}/", f"deploy@{target.sshd.ipv4}:tree/"]
    )
    assert r.returncode == 0, r.stderr
    assert (target.sshd.home / "tree" / "a.txt").read_text() == "alpha\n" * 1000
    statement = of_type(target.session("rsync --server"), "statement")[0]["data"]
    assert "file_write" in statement["decision"]["classes"]


def test_git_clone_over_ssh(target: SshRunner) -> None:
    dest = target.home / "clone"
    r = target.job(
        ["git", "clone", "-q", f"deploy@{target.sshd.ipv4}:repo.git", str(dest)],
        env={"GIT_SSH_COMMAND": "ssh -o BatchMode=yes"},
    )
    assert r.returncode == 0, r.stderr
    assert (dest / "README.md").read_text() == "# app\n"
    response = of_type(target.session("git-upload-pack"), "response")[0]["data"]
    assert response["exit_status"] == 0 and response["bytes_out"] > 0
    assert len(response["sha256_out"]) == 64


def test_signals_and_window_changes_from_an_asyncssh_client(target: SshRunner) -> None:
    """OpenSSH's client never sends signal requests; asyncssh's does (a real client)."""
    script = (
        "import asyncio, asyncssh\n"
        "async def main():\n"
        f"    async with asyncssh.connect('{target.sshd.ipv4}', username='deploy', known_hosts='/etc/ssh/ssh_known_hosts', client_keys=None, agent_path=None) as c:\n"
        "        p = await c.create_process('echo started; exec sleep 30', term_type='xterm')\n"
        "        print(await p.stdout.readline(), end='', flush=True)\n"
        "        p.change_terminal_size(120, 40)\n"
        "        p.send_signal('TERM')\n"
        "        r = await p.wait(check=False)\n"
        "        print('exit', r.exit_status, r.exit_signal and r.exit_signal[0])\n"
        "asyncio.run(main())\n"
    )
    r = target.job([sys.executable, "-c", script])
    assert r.returncode == 0, r.stderr
    assert "started" in r.stdout and "exit" in r.stdout
    assert "TERM" in r.stdout, r.stdout
    session = target.session("exec sleep 30")
    assert [e["data"]["signal"] for e in of_type(session, "ssh.signal")] == ["TERM"]


def test_ansible_ping_and_copy(target: SshRunner) -> None:
    host = target.sshd.ipv4
    inventory = target.home / "inventory.ini"
    inventory.write_text(
        f"web ansible_host={host} ansible_user=deploy ansible_python_interpreter=/usr/bin/python3\n"
    )
    bin_dir = Path(sys.executable).parent
    env = {
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_LOCAL_TEMP": str(target.home / "ansible-local"),
        "ANSIBLE_SSH_ARGS": "-o BatchMode=yes",
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{bin_dir}:/usr/bin:/bin",
    }
    r = target.job(
        [str(bin_dir / "ansible"), "-i", str(inventory), "web", "-m", "ping"], env=env, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"ping": "pong"' in r.stdout
    src = target.home / "motd.txt"
    src.write_text("deployed by ansible\n")
    os.chown(src, 65534, 65534)
    r = target.job(
        [
            str(bin_dir / "ansible"),
            "-i",
            str(inventory),
            "web",
            "-m",
            "copy",
            "-a",
            f"src={src} dest=motd.txt mode=0644",
        ],
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (target.sshd.home / "motd.txt").read_text() == "deployed by ansible\n"
