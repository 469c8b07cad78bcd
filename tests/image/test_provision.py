"""Baking the runner image, for real: packer/provision.sh in a fresh Debian root, booted.

A Debian 12 root file system is made with debootstrap from Debian's packages (plus what the
cloud image has and a job's client: systemd, dbus, sudo, postgresql-client), then
``packer/provision.sh`` runs in it (``systemd-nspawn``, as packer's shell provisioner would
run it on the VM), then the root is *booted* with ``systemd-nspawn -b`` inside the lab's
runner network namespace, with the example config (``packer/config.example.yaml``) as
provisioned plus test credentials (the ledger key, the database password, the database's
CA, the masking key) and ``db.internal.example`` pointing at the lab's PostgreSQL. Then:

- ``appliance.service`` is enabled, and active after boot (Type=notify: it said READY),
  its hot path compiled (mypyc, by provision.sh);
- a job, as the job user ``runner`` in a unit of the container (as a runner service would
  start it), connects to ``db.internal.example:5432`` with psql and no password: it is
  captured (the example policy allows ``select 1``), and the ledger in the container records
  the session and verifies with the ledger's key;
- the job user has no sudo (``sudo -l`` lists nothing, ``sudo -n true`` fails).

Caching (``$APPLIANCE_IMAGE_CACHE``, default ``/var/cache/appliance-image-test``): the
debootstrapped base tree (keyed by suite, mirror and package list), the downloaded .debs and
pip's cache. Cold (nothing cached) the test takes about 5 to 7 minutes on the 2-core VM
(debootstrap under a minute, provisioning three to five); warm about 3.5 minutes, mostly
dpkg unpacking bcc's LLVM, pip building the venv and mypyc compiling the hot path. It runs in ``make test`` (target
``image``) and alone with ``make image-test``.

Attribution: on the development VM bcc fails to compile ``bpf/attribution.c`` inside the
container, so the job's session is recorded ``unattributed`` with that reason (the test
accepts it, and checks the program is at least found); on a runner whose kernel matches
its headers this is expected to load, but it is not shown here.

Two accommodations for this machine, not for a runner image: the container gets the host's
``/lib/modules`` and ``/usr/src`` (read-only) because bcc compiles against the running
kernel's headers and this kernel is not Debian's; and pip in the container trusts the host's
CA bundle (this workplace's egress goes through a TLS proxy).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from appliance.ledger import iter_entries
from tests.lab.lab import Lab, PgServer, run

ROOT = Path(__file__).resolve().parents[2]
APPLIANCE = str(Path(sys.executable).with_name("appliance"))
CACHE = Path(os.environ.get("APPLIANCE_IMAGE_CACHE", "/var/cache/appliance-image-test"))
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
INCLUDE = ("systemd", "systemd-sysv", "dbus", "libpam-systemd", "sudo", "ca-certificates",
           "postgresql-client")  # fmt: skip
DB_NAME = "db.internal.example"  # the example config's target host
ORIGIN = "ci-runners.example/ledger"  # the example config's ledger origin
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")

pytestmark = pytest.mark.image


def base_tree() -> Path:
    """The debootstrapped root for :data:`INCLUDE`, made once and cached."""
    key = hashlib.sha256(json.dumps([SUITE, MIRROR, "minbase", INCLUDE]).encode()).hexdigest()
    base = CACHE / f"base-{key[:16]}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with _cache_lock():
        if base.is_dir():
            return base
        return _debootstrap(base, key)


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """The cache is shared by every run on this machine: one user at a time (two apt runs
    would fight over the archives' lock, two debootstraps over the same base tree)."""
    with open(CACHE / "cache.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _debootstrap(base: Path, key: str) -> Path:
    tmp = CACHE / f"base-{key[:16]}.tmp-{os.getpid()}"
    try:
        run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", SUITE,
             str(tmp), MIRROR],
            timeout=900,
        )  # fmt: skip
        tmp.rename(base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return base


def nspawn(root: Path, *args: str) -> list[str]:
    """systemd-nspawn on ``root``, not registered with a host systemd (there may be none)."""
    return ["systemd-nspawn", "-D", str(root), "--register=no", "--keep-unit", "-q", *args]


def provision(root: Path) -> None:
    (CACHE / "apt").mkdir(parents=True, exist_ok=True)
    (CACHE / "pip").mkdir(parents=True, exist_ok=True)
    with _cache_lock():
        proc = _provision(root)
    assert proc.returncode == 0, (
        f"provision.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def _provision(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        nspawn(
            root,
            f"--bind-ro={ROOT}:/tmp/appliance-src",
            f"--bind={CACHE / 'apt'}:/var/cache/apt/archives",
            f"--bind={CACHE / 'pip'}:/root/.cache/pip",
            f"--bind-ro={HOST_CA}:/run/host-ca.pem",
            "--setenv=PIP_CERT=/run/host-ca.pem",
            "--setenv=PIP_CACHE_DIR=/root/.cache/pip",
            "--setenv=APPLIANCE_SRC=/tmp/appliance-src",
            "/bin/bash", "/tmp/appliance-src/packer/provision.sh",
        ),
        capture_output=True,
        text=True,
        timeout=1500,
    )  # fmt: skip


class Machine:
    """The booted container: its init's pid, commands run inside it."""

    def __init__(self, lab: Lab, root: Path, name: str) -> None:
        self.lab, self.root, self.name = lab, root, name
        self.cgroup = lab.job_cgroup.parent / "image"
        self.cgroup.mkdir()
        self.log = root.parent / "boot.log"
        cgroup = self.cgroup

        def enter() -> None:  # the container's cgroups go under the lab's, never the root
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

        self.proc = subprocess.Popen(
            nspawn(
                root, "-b", "-M", name, f"--network-namespace-path={lab.runner.path}",
                "--capability=CAP_NET_ADMIN,CAP_BPF,CAP_PERFMON", "--bind-ro=/lib/modules", "--bind-ro=/usr/src",
            ),
            stdin=subprocess.DEVNULL, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
            preexec_fn=enter,
        )  # fmt: skip
        self.pid = self._init_pid()
        self.booted = self._wait_booted()

    def _wait_booted(self, timeout: float = 120) -> str:
        """The system state once boot is over (``running`` or ``degraded``)."""
        deadline = time.monotonic() + timeout
        r = None
        while time.monotonic() < deadline:
            r = self.sh(["systemctl", "is-system-running"], timeout=20)
            if r.stdout.strip() in ("running", "degraded"):
                return r.stdout.strip()
            time.sleep(0.5)
        raise AssertionError(f"the container did not boot: {r}\n{self.log.read_text()[-3000:]}")

    def _init_pid(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nspawn exited: {self.log.read_text()[-3000:]}")
            for pid in (int(p) for p in (self.cgroup / "cgroup.procs").read_text().split()):
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return pid
            for sub in self.cgroup.rglob("cgroup.procs"):
                for pid in (int(p) for p in sub.read_text().split() if p):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{pid}/exe").endswith("/systemd"):
                            return pid
            time.sleep(0.1)
        raise AssertionError(f"no init in the container: {self.log.read_text()[-3000:]}")

    def sh(self, argv: Sequence[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", "--", *argv],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def job(self, argv: Sequence[str], **env: str) -> subprocess.CompletedProcess[str]:
        """``argv`` as the job user, in a unit of its own (as a runner service starts jobs)."""
        sets = [f"--setenv={k}={v}" for k, v in env.items()]
        return self.sh(
            ["systemd-run", "--wait", "--pipe", "--quiet", "--uid=runner", "--gid=runner",
             *sets, "--", *argv],
        )  # fmt: skip

    def wait_active(self, unit: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.sh(["systemctl", "is-active", unit]).stdout.strip()
            if state in ("active", "failed"):
                return state
            time.sleep(0.5)
        return state

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.sh(["systemctl", "poweroff"], timeout=10)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()


def give_credentials(root: Path, pg: PgServer, work: Path) -> None:
    """Test credentials where the unit's LoadCredential= takes them, the database's CA where
    the example config names it, and the database's name in /etc/hosts."""
    subprocess.run(
        [APPLIANCE, "keys", "generate", "--name", ORIGIN, "--out", str(work / "ledger")],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [APPLIANCE, "keys", "generate", "--masking-key", "--out", str(work / "masking")],
        check=True, capture_output=True,
    )  # fmt: skip
    creds = root / "etc/appliance/credentials"
    for source, name in (("ledger.key", "ledger-signing-key"), ("masking.key", "masking-key")):
        shutil.copy(work / source, creds / name)
        (creds / name).chmod(0o600)
    password = pg.passwords["app"]
    pg.admin_sql(f"CREATE ROLE ci_writer LOGIN PASSWORD '{password}'; GRANT app TO ci_writer;")
    hba = pg.data / "pg_hba.conf"
    hba.write_text("host all ci_writer all scram-sha-256\n" + hba.read_text())
    pg.admin_sql("SELECT pg_reload_conf()")
    (creds / "targets/orders-db-ci").write_text(password + "\n")
    (creds / "targets/orders-db-ci").chmod(0o600)
    # The example config ships to the fleet's bucket (AWS): the image has no route there, so
    # the appliance must serve on and say it is retrying (README: "Storage down").
    (creds / "s3/credentials").write_text(
        "[default]\naws_access_key_id = AKIAIMAGETEST\naws_secret_access_key = not-a-secret\n"
    )
    (creds / "s3/credentials").chmod(0o600)
    assert pg.ca_file is not None
    shutil.copy(pg.ca_file, root / "etc/appliance/db-ca.pem")
    with (root / "etc/hosts").open("a") as f:
        f.write(f"{pg.ipv4} {DB_NAME}\n")


@pytest.fixture(scope="module")
def image() -> Iterator[tuple[Machine, Path, Path]]:
    with Lab(n_targets=1) as lab:
        pg = lab.start_postgres(0, tls=True, tls_names=[DB_NAME])
        work = Path(f"/var/tmp/appliance-image-{lab.lab_id}")
        work.mkdir()
        root = work / "root"
        machine = None
        try:
            run(["cp", "-a", str(base_tree()), str(root)], timeout=600)
            provision(root)
            give_credentials(root, pg, work)
            machine = Machine(lab, root, f"apl-img-{lab.lab_id}")
            yield machine, root, work
        finally:
            if machine is not None:
                machine.stop()
            shutil.rmtree(work, ignore_errors=True)


def entries(root: Path) -> list[dict[str, Any]]:
    ledger = root / "var/lib/appliance/ledger"
    return [e.obj for e in iter_entries(ledger)] if (ledger / "entries.log").exists() else []


def test_the_unit_is_enabled_and_starts_on_boot(image: tuple[Machine, Path, Path]) -> None:
    machine, root, _ = image
    assert machine.sh(["systemctl", "is-enabled", "appliance.service"]).stdout.strip() == "enabled"
    state = machine.wait_active("appliance.service")
    journal = machine.sh(["journalctl", "-u", "appliance", "--no-pager", "-n", "60"]).stdout
    assert state == "active", journal
    types = [e["type"] for e in entries(root)]
    assert "appliance.ready" in types and "capture.rules_installed" in types, types
    start = next(e["data"] for e in entries(root) if e["type"] == "appliance.start")
    assert start["config"] == "/etc/appliance/config.yaml" and start["capture"] is True
    # The image's hot path is compiled (provision.sh runs scripts/compile.py), not the
    # pure-Python build at about twice the CPU per statement.
    assert start["hot_path"] == {"build": "compiled"}, start["hot_path"]
    assert "hot path: compiled (mypyc)" in journal, journal
    version = machine.sh(["/opt/appliance/.venv/bin/appliance", "--version"])
    assert version.stdout.endswith("(hot path: compiled)\n"), version
    # The container's cgroups are the lab's, not the host's root.
    own = Path(f"/proc/{machine.pid}/cgroup").read_text()
    assert f"/appliance-lab-{machine.lab.lab_id}/image" in own, own
    status = machine.sh(
        ["/opt/appliance/.venv/bin/appliance", "status", "--config", "/etc/appliance/config.yaml",
         "--format", "json"],
    )  # fmt: skip
    ship = json.loads(status.stdout)["ship"]
    assert ship is not None and ship["state"] in ("starting", "retrying"), status.stdout


def test_a_job_in_the_container_is_captured(image: tuple[Machine, Path, Path]) -> None:
    machine, root, work = image
    assert machine.wait_active("appliance.service") == "active"
    r = machine.job(
        ["psql", "-X", "-A", "-t", "-h", DB_NAME, "-U", "ci", "-d", "app", "-c", "select 1"],
        PGAPPNAME="image-job", PGCONNECT_TIMEOUT="20",
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stdout + r.stderr
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = entries(root)
        starts = [
            e for e in found
            if e["type"] == "session.start" and e["data"].get("application_name") == "image-job"
        ]  # fmt: skip
        if starts and any(
            e["type"] == "session.end" and e["session"] == starts[0]["session"] for e in found
        ):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(
            f"no ended session in the container's ledger: {[e['type'] for e in found]}"
        )
    session = [e for e in found if e["session"] == starts[0]["session"]]
    assert [e["data"]["text"] for e in session if e["type"] == "statement"] == ["select 1"]
    assert session[0]["account"] == "ci" and session[0]["target"] == "orders-db"
    ident = session[0]["identity"]
    runner_uid = machine.sh(["id", "-u", "runner"]).stdout.strip()
    if ident["source"] == "ebpf":
        assert str(ident["uid"]) == runner_uid and ident["exe"].endswith("/psql")
    else:
        # On this development VM bcc does not compile attribution.c inside the container
        # (its kernel is not Debian's; the cause is not pinned down yet): capture holds
        # without it (DESIGN.md, invariant 2), and the reason is recorded. The program
        # itself must be found, which a plain pip install of the image did not do.
        (failed,) = [e["data"] for e in found if e["type"] == "capture.bpf_failed"]
        assert "not found" not in failed["reason"], failed
        assert ident["how"].startswith("unattributed: eBPF attribution failed to load")
    verify = subprocess.run(
        [APPLIANCE, "ledger", "verify", "--ledger", str(root / "var/lib/appliance/ledger"),
         "--vkey", str(work / "ledger.vkey")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_job_user_has_no_sudo(image: tuple[Machine, Path, Path]) -> None:
    machine, _, _ = image
    listed = machine.sh(["sudo", "-n", "-l", "-U", "runner"])
    assert "may run the following commands" not in listed.stdout
    assert "not allowed to run sudo" in listed.stdout + listed.stderr, listed
    r = machine.job(["sudo", "-n", "true"])
    assert r.returncode != 0
    groups = machine.sh(["id", "-nG", "runner"]).stdout.split()
    assert not {"sudo", "docker", "disk", "adm"} & set(groups), groups
