"""Unmodified SSH clients as the job, through the appliance, against Debian's sshd (issue 18).

The job (uid nobody, job cgroup, no key of its own) reaches the target by its real address
on port 22; netfilter brings the connection to the appliance, which presents a host
certificate from its per-run CA (trusted through the runner's ssh_known_hosts), logs in to
the target with the service account's key, and records what runs.
"""

from __future__ import annotations

from tests.lab.ssh import SshRunner, of_type, ssh


def test_ssh_host_command(ssh_runner: SshRunner) -> None:
    host = ssh_runner.sshd.ipv4
    r = ssh_runner.job(ssh(host, "echo hello from $(hostname -s); id -un; echo 4111111111111111"))
    assert r.returncode == 0, r.stderr + ssh_runner.log()[-3000:]
    assert "hello from" in r.stdout
    assert "deploy" in r.stdout
    assert "4111111111111111" in r.stdout  # the job sees the real output
    session = ssh_runner.session("echo hello from")
    start = of_type(session, "session.start")[0]
    assert start["identity"]["source"] == "ebpf", start["identity"]
    assert start["identity"]["ci"]["repository"] == "acme/infra"
    ready = of_type(session, "session.ready")[0]
    assert ready["account"] == "deploy"
    assert ready["data"]["host_key"].startswith("ssh-ed25519 SHA256:")
