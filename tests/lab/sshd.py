"""A real OpenSSH server (Debian's sshd) on a lab target, and what an SSH job needs.

:class:`SshServer` starts ``/usr/sbin/sshd -D`` in a target namespace with its own config,
host key, port and authorized keys, all under the lab directory; never the machine's own
sshd, its config or its service. The target is a separate host in every way the tests can
see: its sshd runs in a mount namespace of its own where ``/etc/passwd`` and ``/etc/group``
carry the lab's login user ``deploy`` (home under the lab directory), and ``/run`` is a lab
directory (sshd's privilege-separation directory ``/run/sshd`` lives there; the lab's own
``/run/appliance-lab`` is bound back into it). The machine's own files
stay as they were.

The service account's key (and a certificate for it from a lab user CA) are root-only
files under the lab's ``secrets`` directory; the job never reads them. ``known_hosts`` files
hold the server's real host key (what the appliance checks upstream) and another key (a
host key mismatch).

:func:`job_ssh_binds` gives a job the runner's ``/etc/ssh`` as a lab directory (the
appliance writes its CA line into it): the job's clients are unmodified and read
``/etc/ssh/ssh_known_hosts`` as on a runner.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.lab.lab import STATE_DIR, Lab, LabError, TargetHost, run, wait_port

SSHD = "/usr/sbin/sshd"
USER = "deploy"
UID = 64021  # unused on Debian (the lab's own passwd, in the target's mount namespace)
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


def keygen(path: Path, comment: str) -> str:
    """An Ed25519 key pair at ``path`` (and ``path.pub``); returns the public line."""
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return Path(f"{path}.pub").read_text().strip()


class SshServer:
    """Debian's sshd on a lab target (see the module docstring)."""

    def __init__(self, lab: Lab, host: TargetHost, *, port: int = 22) -> None:
        self.lab = lab
        self.host = host
        self.port = port
        self.dir = lab.dir / f"sshd-{host.index}"
        self.home = self.dir / "home" / USER
        self.proc: subprocess.Popen[bytes] | None = None
        self.secrets = lab.dir / "secrets"

    @property
    def ipv4(self) -> str:
        return self.host.ipv4

    @property
    def account_key(self) -> Path:
        """The service account's private key (root-only)."""
        return self.secrets / f"ssh-{self.host.index}-{USER}"

    @property
    def account_key_with_cert(self) -> Path:
        """The same key followed by its certificate from the lab's user CA (root-only)."""
        return self.secrets / f"ssh-{self.host.index}-{USER}-cert"

    @property
    def known_hosts(self) -> Path:
        """The server's real host key, as the appliance's config names it."""
        return self.dir / "known_hosts"

    @property
    def wrong_known_hosts(self) -> Path:
        """Another host key for the same address: a mismatch."""
        return self.dir / "known_hosts.wrong"

    def start(self) -> None:
        d = self.dir
        (d / "run" / "sshd").mkdir(parents=True, mode=0o755)
        (d / "run" / STATE_DIR.name).mkdir()
        (d / "etc").mkdir()
        (d / "authorized").mkdir(mode=0o755)
        # The login user, in the target's own passwd and group.
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        (d / "etc" / "passwd").write_text(
            passwd + f"{USER}:x:{UID}:{UID}:lab deploy user:{self.home}:/bin/bash\n"
        )
        (d / "etc" / "group").write_text(group + f"{USER}:x:{UID}:\n")
        (self.dir / "home").mkdir()
        self.home.mkdir(mode=0o755)
        os.chown(self.home, UID, UID)
        # Host key, and another one for the mismatch test.
        host_pub = keygen(d / "ssh_host_ed25519_key", f"lab target {self.host.index}")
        other_pub = keygen(d / "other_host_key", "not the target")
        name = self.ipv4 if self.port == 22 else f"[{self.ipv4}]:{self.port}"
        self.known_hosts.write_text(f"{name} {host_pub}\n")
        self.wrong_known_hosts.write_text(f"{name} {other_pub}\n")
        # The service account: a key, and a certificate for it from a user CA.
        account_pub = keygen(self.account_key, "appliance service account")
        self.account_key.chmod(0o600)
        keygen(d / "user_ca", "lab user CA")
        cert_src = self.dir / "account"
        shutil.copy(self.account_key, cert_src)
        shutil.copy(f"{self.account_key}.pub", f"{cert_src}.pub")
        run(
            [
                "ssh-keygen",
                "-q",
                "-s",
                str(d / "user_ca"),
                "-I",
                "appliance",
                "-n",
                USER,
                "-V",
                "-5m:+1d",
                f"{cert_src}.pub",
            ]
        )
        cert = Path(f"{cert_src}-cert.pub").read_text()
        with_cert = self.account_key_with_cert
        fd = os.open(with_cert, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.account_key.read_text() + cert)
        cert_src.unlink()
        Path(f"{cert_src}.pub").unlink()
        (d / "authorized" / USER).write_text(account_pub + "\n")
        (d / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.host.ipv4}",
                    f"ListenAddress {self.host.ipv6}",
                    f"HostKey {d / 'ssh_host_ed25519_key'}",
                    f"PidFile {d / 'sshd.pid'}",
                    f"AuthorizedKeysFile {d / 'authorized'}/%u",
                    f"TrustedUserCAKeys {d / 'user_ca.pub'}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "PermitRootLogin no",
                    f"Subsystem sftp {SFTP_SERVER}",
                    "AllowTcpForwarding yes",
                    "AllowAgentForwarding yes",
                    "X11Forwarding no",
                    "AcceptEnv LANG LC_*",
                    "MaxSessions 64",
                    "MaxStartups 500",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        self.proc = self.lab.popen(
            [SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
            host=self.host,
            binds=[
                (d / "etc" / "passwd", Path("/etc/passwd")),
                (d / "etc" / "group", Path("/etc/group")),
                # /run is the target's own (sshd's privilege separation directory), with
                # the lab's directory (this config) still in it.
                (STATE_DIR, d / "run" / STATE_DIR.name),
                (d / "run", Path("/run")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(d / "sshd.log", "wb"),  # noqa: SIM115 - closed with the process
        )
        try:
            wait_port(self.ipv4, self.port, netns=self.host.path)
        except LabError:
            raise LabError(f"sshd did not start: {self.log()[-2000:]}") from None

    def as_user(self, argv: list[str], *, timeout: float = 60) -> str:
        """Run ``argv`` on the target as the login user (not over SSH: to set up and check
        files), in the target's own passwd."""
        proc = self.lab.popen(
            argv,
            host=self.host,
            uid=UID,
            gid=UID,
            binds=[(self.dir / "etc" / "passwd", Path("/etc/passwd"))],
            env={"HOME": str(self.home)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(self.home),
        )
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise LabError(f"{argv} on the target failed: {err.decode(errors='replace')}")
        return out.decode(errors="replace")

    def log(self) -> str:
        path = self.dir / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def job_etc_ssh(lab: Lab) -> Path:
    """The runner's /etc/ssh as the job sees it: a lab copy of the machine's client config
    (the appliance writes its CA line into ``ssh_known_hosts`` there)."""
    path = lab.dir / "etc-ssh"
    if not path.exists():
        path.mkdir(mode=0o755)
        for name in ("ssh_config", "moduli"):
            src = Path("/etc/ssh") / name
            if src.exists():
                shutil.copy(src, path / name)
        if Path("/etc/ssh/ssh_config.d").is_dir():
            shutil.copytree("/etc/ssh/ssh_config.d", path / "ssh_config.d")
    return path


def job_home(lab: Lab, name: str = "job-home") -> Path:
    """A home directory of the job's own (uid nobody), with no key in it."""
    path = lab.dir / name
    if not path.exists():
        path.mkdir(mode=0o700)
        os.chown(path, 65534, 65534)
    return path


def job_ssh_binds(lab: Lab) -> list[tuple[Path, Path]]:
    return [(job_etc_ssh(lab), Path("/etc/ssh"))]


def wait_gone(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
