"""The runner lab: network namespaces, a job cgroup and real servers, for tests, demo, benchmarks.

Layout (one lab, ``<id>`` a short random hex id)::

    apl-<id>-runner  (plays the runner VM: the job and the appliance run here)
        ap<id>r<n> 198.18.<n>.1/24, fd00:a9e:<n>::1/64  ──veth──  ap<id>t<n>  198.18.<n>.2/24,
                                                                  fd00:a9e:<n>::2/64
                                                                  apl-<id>-t<n> (a protected host)
    <cgroup2>/appliance-lab-<id>/job         (the job's cgroup)
    <cgroup2>/appliance-lab-<id>/appliance   (the appliance's: ``popen(..., cgroup=...)``;
                                              configs name it ``capture.appliance_cgroup``)

Addresses come from the benchmarking range 198.18.0.0/15 (RFC 2544) and a ULA prefix; no
namespace has a default route, so nothing leaves the lab. Everything the lab creates is named
after its id and listed in ``/run/appliance-lab/<id>.pid`` with the owner's pid, so that a lab
left behind by a killed run is removed by the next one (:func:`cleanup_stale`).

The lab never touches the root network namespace or the root cgroup beyond creating its own
veth pairs' peers inside its namespaces and its own child cgroup.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tests.certs import server_cert

STATE_DIR = Path("/run/appliance-lab")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
JOB_UID = 65534  # nobody: the job must not be able to read the lab's secrets
JOB_GID = 65534
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18

_libc = ctypes.CDLL("libc.so.6", use_errno=True)


class LabError(RuntimeError):
    """The lab could not be built or used."""


def run(
    argv: Sequence[str], *, check: bool = True, input: bytes | None = None, timeout: float = 60
) -> str:
    """Run a command on the host; return stdout; raise LabError with stderr on failure."""
    proc = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(
            f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()}"
        )
    return proc.stdout.decode(errors="replace")


def cgroup2_root() -> Path:
    """The mount point of the cgroup v2 hierarchy (``/sys/fs/cgroup`` or ``.../unified``)."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            return Path(parts[1])
    raise LabError("no cgroup v2 hierarchy is mounted")


def setns(path: str | Path) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def in_netns(path: str | Path) -> Iterator[None]:
    """Run the body with the calling thread inside a network namespace, then come back."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns(path)
        try:
            yield
        finally:
            if _libc.setns(back, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original namespace failed")
    finally:
        os.close(back)


def private_mounts(binds: Sequence[tuple[Path, Path]]) -> None:
    """Give the calling process its own mount namespace (nothing propagates back to the
    host) and bind each source over its target in it: a lab host's own /etc files."""
    if _libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "making / private")
    for source, target in binds:
        if _libc.mount(bytes(source), bytes(target), None, MS_BIND | MS_REC, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"bind {source} over {target}: {os.strerror(err)}")


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30
) -> None:
    """Send ``sig`` to ``proc`` if it runs and wait; SIGKILL it after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_cgroup(path: Path) -> None:
    """Kill every process in a cgroup subtree and remove the cgroups, deepest first."""
    if not path.exists():
        return
    kill = path / "cgroup.kill"
    if kill.exists():
        with contextlib.suppress(OSError):
            kill.write_text("1")
    else:
        for procs in path.rglob("cgroup.procs"):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    dirs = sorted(
        (p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    )
    for d in [*dirs, path]:
        for _ in range(50):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)


def _netns_pids(name: str) -> list[int]:
    out = run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in out.split()]


def _delete_netns(name: str) -> None:
    for _ in range(3):
        pids = _netns_pids(name)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not pids:
            break
        time.sleep(0.1)
    run(["ip", "netns", "del", name], check=False)


def cleanup_stale() -> list[str]:
    """Remove labs whose owner process is gone. Returns the ids removed."""
    removed: list[str] = []
    if not STATE_DIR.exists():
        return removed
    for pidfile in STATE_DIR.glob("*.pid"):
        lab_id = pidfile.stem
        try:
            owner = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            owner = 0
        if owner and _alive(owner):
            continue
        _teardown_by_id(lab_id)
        removed.append(lab_id)
    return removed


def _teardown_by_id(lab_id: str) -> None:
    prefix = f"apl-{lab_id}-"
    # Processes first (servers in target namespaces, jobs), then namespaces, then cgroups.
    _kill_cgroup(cgroup2_root() / f"appliance-lab-{lab_id}")
    for line in run(["ip", "netns", "list"], check=False).splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(prefix):
            _delete_netns(name)
    tmp = STATE_DIR / lab_id
    if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (STATE_DIR / f"{lab_id}.pid").unlink()


@dataclass
class Host:
    """A network namespace of the lab."""

    name: str

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.name

    def ip(self, *args: str) -> str:
        return run(["ip", "-n", self.name, *args])


@dataclass
class TargetHost(Host):
    index: int = 0
    ipv4: str = ""
    ipv6: str = ""
    runner_ipv4: str = ""
    runner_ipv6: str = ""


@dataclass
class Lab:
    """A runner namespace, ``n_targets`` target namespaces and a job cgroup. Use as a context
    manager; teardown always runs."""

    n_targets: int = 1
    lab_id: str = field(default_factory=lambda: secrets.token_hex(3))
    runner: Host = field(init=False)
    targets: list[TargetHost] = field(init=False, default_factory=list)
    job_cgroup: Path = field(init=False)
    appliance_cgroup: Path = field(init=False)
    dir: Path = field(init=False)
    _servers: list[PgServer | MariaServer] = field(init=False, default_factory=list)
    _procs: list[subprocess.Popen[bytes]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.runner = Host(f"apl-{self.lab_id}-runner")
        self.dir = STATE_DIR / self.lab_id
        self.job_cgroup = cgroup2_root() / f"appliance-lab-{self.lab_id}" / "job"
        self.appliance_cgroup = self.job_cgroup.with_name("appliance")

    @property
    def appliance_cgroup_path(self) -> str:
        """The appliance's cgroup as a config names it (``/appliance-lab-<id>/appliance``)."""
        return "/" + str(self.appliance_cgroup.relative_to(cgroup2_root()))

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def setup(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, cgroups)")
        cleanup_stale()
        STATE_DIR.mkdir(mode=0o755, exist_ok=True)
        (STATE_DIR / f"{self.lab_id}.pid").write_text(f"{os.getpid()}\n")
        self.dir.mkdir(mode=0o755)
        (self.dir / "secrets").mkdir(mode=0o700)
        run(["ip", "netns", "add", self.runner.name])
        self.runner.ip("link", "set", "lo", "up")
        for n in range(self.n_targets):
            self._add_target(n)
        self.job_cgroup.mkdir(parents=True)
        self.appliance_cgroup.mkdir()

    def teardown(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        for server in self._servers:
            server.stop()
        _teardown_by_id(self.lab_id)

    def _add_target(self, n: int) -> None:
        host = TargetHost(
            f"apl-{self.lab_id}-t{n}",
            index=n,
            ipv4=f"198.18.{n}.2",
            ipv6=f"fd00:a9e:{n}::2",
            runner_ipv4=f"198.18.{n}.1",
            runner_ipv6=f"fd00:a9e:{n}::1",
        )
        run(["ip", "netns", "add", host.name])
        host.ip("link", "set", "lo", "up")
        r_if, t_if = f"ap{self.lab_id}r{n}", f"ap{self.lab_id}t{n}"
        # Create the pair directly inside the namespaces: it never appears in the root one.
        self.runner.ip(
            "link", "add", r_if, "type", "veth", "peer", "name", t_if, "netns", host.name
        )
        self.runner.ip("addr", "add", f"{host.runner_ipv4}/24", "dev", r_if)
        self.runner.ip("-6", "addr", "add", f"{host.runner_ipv6}/64", "dev", r_if, "nodad")
        self.runner.ip("link", "set", r_if, "up")
        host.ip("addr", "add", f"{host.ipv4}/24", "dev", t_if)
        host.ip("-6", "addr", "add", f"{host.ipv6}/64", "dev", t_if, "nodad")
        host.ip("link", "set", t_if, "up")
        self.targets.append(host)

    # -- containers (a namespace behind a bridge in the runner) ------------------------------

    def add_container(
        self, name: str = "c0", bridge: str = "docker0", subnet: str = "172.30.0.0/24"
    ) -> Host:
        """A namespace behind a Linux bridge in the runner namespace, like a Docker container.

        The bridge gets the subnet's first address and is the container's default gateway;
        targets get a route back to the subnet through the runner, so that without the
        appliance a bypass would really reach them (and tests can show it does not).
        """
        net = ipaddress.ip_network(subnet)
        gw, addr = str(net.network_address + 1), str(net.network_address + 2)
        host = Host(f"apl-{self.lab_id}-{name}")
        run(["ip", "netns", "add", host.name])
        host.ip("link", "set", "lo", "up")
        existing = self.runner.ip("-o", "link", "show")
        if f" {bridge}:" not in existing:
            self.runner.ip("link", "add", bridge, "type", "bridge")
            self.runner.ip("addr", "add", f"{gw}/{net.prefixlen}", "dev", bridge)
            self.runner.ip("link", "set", bridge, "up")
        c_if, b_if = f"ap{self.lab_id}c{len(name)}", f"ap{self.lab_id}b{len(name)}"
        self.runner.ip(
            "link", "add", b_if, "type", "veth", "peer", "name", c_if, "netns", host.name
        )
        self.runner.ip("link", "set", b_if, "master", bridge)
        self.runner.ip("link", "set", b_if, "up")
        host.ip("addr", "add", f"{addr}/{net.prefixlen}", "dev", c_if)
        host.ip("link", "set", c_if, "up")
        host.ip("route", "add", "default", "via", gw)
        run(["ip", "netns", "exec", self.runner.name, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for t in self.targets:
            t.ip("route", "add", subnet, "via", t.runner_ipv4)
        return host

    # -- running processes ---------------------------------------------------------------------

    def _preexec(
        self,
        netns: Path,
        cgroup: Path | None,
        uid: int | None,
        gid: int | None,
        binds: Sequence[tuple[Path, Path]] = (),
    ):  # type: ignore[no-untyped-def]
        def enter() -> None:
            if cgroup is not None:
                (cgroup / "cgroup.procs").write_text(str(os.getpid()))
            setns(netns)
            if binds:
                private_mounts(binds)
            if gid is not None:
                os.setgroups([])
                os.setgid(gid)
            if uid is not None:
                os.setuid(uid)

        return enter

    def popen(
        self,
        argv: Sequence[str],
        *,
        host: Host | None = None,
        job: bool = False,
        uid: int | None = None,
        gid: int | None = None,
        env: Mapping[str, str] | None = None,
        binds: Sequence[tuple[Path, Path]] = (),
        cgroup: Path | None = None,
        **kwargs: object,
    ) -> subprocess.Popen[bytes]:
        """Start a process in a lab namespace (default: the runner). ``job=True`` runs it as
        the job: in the job cgroup, as uid/gid nobody, with a minimal environment plus ``env``.
        ``binds``: (source, target) bind mounts in a mount namespace of its own.
        ``cgroup``: the cgroup of a process that is not the job (the appliance's, say)."""
        host = host or self.runner
        if job:
            uid = JOB_UID if uid is None else uid
            base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
            full_env = {**base, **(env or {})}
            preexec = self._preexec(
                host.path, self.job_cgroup, uid, JOB_GID if uid else None, binds
            )
        else:
            full_env = {**os.environ, **(env or {})}
            preexec = self._preexec(host.path, cgroup, uid, gid, binds)
        proc = subprocess.Popen(list(argv), env=full_env, preexec_fn=preexec, **kwargs)  # type: ignore[call-overload]
        self._procs.append(proc)
        return proc  # type: ignore[no-any-return]

    def job(
        self,
        argv: Sequence[str],
        *,
        input: bytes | str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
        uid: int | None = None,
        host: Host | None = None,
        binds: Sequence[tuple[Path, Path]] = (),
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as the job and wait for it: stdout/stderr as text, never raises on a
        non-zero exit (tests assert on returncode)."""
        proc = self.popen(
            argv,
            host=host,
            job=True,
            uid=uid,
            env=env,
            binds=binds,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        data = input.encode() if isinstance(input, str) else input
        try:
            out, err = proc.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise LabError(
                f"job {argv!r} timed out after {timeout}s; stderr: {err.decode(errors='replace')}"
            ) from None
        return subprocess.CompletedProcess(
            list(argv), proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
        )

    def in_runner(self) -> contextlib.AbstractContextManager[None]:
        """Context manager: the calling *thread* runs inside the runner namespace (sockets made
        there stay there). Not in the job cgroup: for clients that need no attribution."""
        return in_netns(self.runner.path)

    def run_in_runner(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Call ``fn`` in a fresh thread that lives in the runner namespace; return its result."""
        box: dict[str, object] = {}

        def body() -> None:
            try:
                setns(self.runner.path)
                box["result"] = fn(*args, **kwargs)
            except BaseException as exc:  # handed back to the caller
                box["error"] = exc

        t = threading.Thread(target=body, name="lab-runner-thread")
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box.get("result")

    # -- servers -------------------------------------------------------------------------------

    def start_mariadb(self, target: int = 1, *, tls: bool = True, port: int = 3306) -> MariaServer:
        """MariaDB on target namespace ``target`` (1 by default: PostgreSQL is on 0)."""
        server = MariaServer(self, self.targets[target], port=port, tls=tls)
        self._servers.append(server)
        server.start()
        return server

    def start_postgres(
        self, target: int = 0, *, tls: bool = False, port: int = 5432, tls_names: Sequence[str] = ()
    ) -> PgServer:
        """A PostgreSQL on a target; ``tls_names`` are further names its certificate has."""
        server = PgServer(self, self.targets[target], port=port, tls=tls, tls_names=tls_names)
        self._servers.append(server)
        server.start()
        return server


def wait_port(host: str, port: int, *, netns: Path, timeout: float = 20) -> None:
    """Wait until a TCP port accepts connections from inside ``netns``."""
    deadline = time.monotonic() + timeout
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last: Exception | None = None
    with in_netns(netns):
        while time.monotonic() < deadline:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(1)
            try:
                s.connect((host, port))
                return
            except OSError as exc:
                last = exc
                time.sleep(0.05)
            finally:
                s.close()
    raise LabError(f"{host}:{port} did not accept connections within {timeout}s: {last}")


class PgServer:
    """A real PostgreSQL 15 server in a target namespace, initdb'd into the lab directory.

    Roles: ``app`` (SCRAM-SHA-256 password), ``app_md5`` (md5) and ``app_plain`` (cleartext
    ``password`` method), all owners of database ``app``. Their passwords are random and
    stored only in root-only files (``password_file(role)``), never readable by the job.
    """

    ROLES: ClassVar[dict[str, str]] = {
        "app": "scram-sha-256",
        "app_md5": "md5",
        "app_plain": "password",
    }

    def __init__(
        self, lab: Lab, host: TargetHost, *, port: int, tls: bool, tls_names: Sequence[str] = ()
    ) -> None:
        self.lab = lab
        self.host = host
        self.port = port
        self.tls = tls
        self.tls_names = tuple(tls_names)
        self.dir = lab.dir / f"pg-{host.index}"
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.passwords = {role: secrets.token_urlsafe(24) for role in self.ROLES}
        self.ca_file: Path | None = None

    @property
    def ipv4(self) -> str:
        return self.host.ipv4

    @property
    def ipv6(self) -> str:
        return self.host.ipv6

    def password_file(self, role: str = "app") -> Path:
        return self.lab.dir / "secrets" / f"pg-{self.host.index}-{role}.password"

    def start(self) -> None:
        self.dir.mkdir()
        self.socket_dir.mkdir()
        shutil.chown(self.dir, "postgres", "postgres")
        shutil.chown(self.socket_dir, "postgres", "postgres")
        pwfile = Path(tempfile.mkstemp(dir=self.dir)[1])
        pwfile.write_text("unused-superuser-password\n")
        shutil.chown(pwfile, "postgres", "postgres")
        run(
            [
                "runuser", "-u", "postgres", "--",
                str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                "--auth-local=trust", "--auth-host=reject", f"--pwfile={pwfile}",
                "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
            ]
        )  # fmt: skip
        pwfile.unlink()
        hba = ["local all all trust"]
        hba += [f"host all {role} all {method}" for role, method in self.ROLES.items()]
        hba += ["host all all all reject"]
        (self.data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        conf = [
            f"listen_addresses = '{self.host.ipv4},{self.host.ipv6}'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.socket_dir}'",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "max_connections = 300",
            "shared_buffers = 128MB",
            "log_min_messages = warning",
        ]
        if self.tls:
            conf += self._make_tls()
        with (self.data / "postgresql.conf").open("a") as f:
            f.write("\n".join(conf) + "\n")
        pw = pwd.getpwnam("postgres")
        self.proc = self.lab.popen(
            [str(PG_BIN / "postgres"), "-D", str(self.data)],
            host=self.host,
            uid=pw.pw_uid,
            gid=pw.pw_gid,
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "server.log", "wb"),  # noqa: SIM115 - closed with the process
        )
        self._wait_ready()
        for role in self.ROLES:
            method = self.ROLES[role]
            encryption = "md5" if method == "md5" else "scram-sha-256"
            self.admin_sql(
                f"SET password_encryption = '{encryption}';"
                f"CREATE ROLE {role} LOGIN PASSWORD '{self.passwords[role]}';"
            )
            pw = self.password_file(role)
            fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.passwords[role] + "\n")
        self.admin_sql("CREATE DATABASE app OWNER app;")
        self.admin_sql(
            "GRANT ALL ON SCHEMA public TO app_md5, app_plain; GRANT CREATE ON DATABASE app TO app_md5, app_plain;",
            database="app",
        )
        self.admin_sql("ALTER SCHEMA public OWNER TO app;", database="app")

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise LabError(f"postgres exited: {(self.dir / 'server.log').read_text()[-2000:]}")
            probe = subprocess.run(
                [
                    str(PG_BIN / "pg_isready"),
                    "-h",
                    str(self.socket_dir),
                    "-p",
                    str(self.port),
                    "-q",
                ],
                capture_output=True,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.05)
        raise LabError("postgres did not become ready")

    def _make_tls(self) -> list[str]:
        tls = server_cert(
            f"appliance lab CA {self.lab.lab_id}",
            f"db{self.host.index}.lab.test",
            [f"db{self.host.index}.lab.test", *self.tls_names, self.host.ipv4, self.host.ipv6],
        )
        self.ca_file = self.dir / "ca.pem"
        self.ca_file.write_bytes(tls.ca_pem)
        crt, pkey = self.data / "server.crt", self.data / "server.key"
        crt.write_bytes(tls.cert_pem)
        pkey.write_bytes(tls.key_pem)
        for p in (crt, pkey):
            shutil.chown(p, "postgres", "postgres")
        pkey.chmod(0o600)
        return ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"]

    def admin_sql(self, sql: str, *, database: str = "postgres") -> str:
        """Run SQL as the superuser over the server's unix socket; return psql's output."""
        return run(
            [
                "runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t",
                "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir), "-p", str(self.port),
                "-d", database, "-c", sql,
            ]
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGQUIT: immediate shutdown; the lab's data is disposable.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class MariaServer:
    """A real MariaDB server (Debian's) in a target namespace, from a fresh data directory in
    the lab directory, on port 3306 of the target's addresses.

    Accounts (database ``app``, all privileges on it): ``app`` (mysql_native_password),
    ``app_ed`` (MariaDB's ed25519) and ``app_tls`` (native password, REQUIRE SSL). Passwords
    are random, in root-only files (:meth:`password_file`). With ``tls=True`` the server has
    a certificate from a lab CA (``ca_file``). Root logs in over the unix socket only.
    """

    ACCOUNTS: ClassVar[tuple[str, ...]] = ("app", "app_ed", "app_tls")

    def __init__(self, lab: Lab, host: TargetHost, *, port: int = 3306, tls: bool = True) -> None:
        self.lab = lab
        self.host = host
        self.port = port
        self.tls = tls
        self.dir = lab.dir / f"mariadb-{host.index}"
        self.data = self.dir / "data"
        self.socket = self.dir / "mysqld.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.passwords = {a: secrets.token_urlsafe(18) for a in self.ACCOUNTS}
        self.ca_file: Path | None = None

    @property
    def ipv4(self) -> str:
        return self.host.ipv4

    def password_file(self, account: str = "app") -> Path:
        return self.lab.dir / "secrets" / f"mariadb-{self.host.index}-{account}.password"

    def start(self) -> None:
        self.dir.mkdir()
        shutil.chown(self.dir, "mysql", "mysql")
        run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={self.data}", "--user=mysql",
             "--auth-root-authentication-method=socket", "--skip-test-db"],
            timeout=120,
        )  # fmt: skip
        args = [
            "mariadbd", "--no-defaults", f"--datadir={self.data}", f"--socket={self.socket}",
            f"--port={self.port}", f"--bind-address={self.host.ipv4}", "--user=mysql",
            "--skip-name-resolve", f"--pid-file={self.dir / 'mariadbd.pid'}",
            f"--log-error={self.dir / 'error.log'}", "--innodb-buffer-pool-size=64M",
            "--innodb-flush-log-at-trx-commit=0", "--skip-log-bin", "--max-connections=300",
            "--plugin-load-add=auth_ed25519",
        ]  # fmt: skip
        if self.tls:
            args += self._make_tls()
        self.proc = self.lab.popen(
            args, host=self.host, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise LabError(f"mariadbd exited: {(self.dir / 'error.log').read_text()[-2000:]}")
            probe = subprocess.run(
                ["mariadb-admin", "--no-defaults", f"--socket={self.socket}", "-uroot", "ping"],
                capture_output=True,
            )
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise LabError("mariadbd did not become ready")
            time.sleep(0.1)
        pw = self.passwords
        self.admin_sql(
            "CREATE DATABASE app;"
            f"CREATE USER app@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{pw['app']}');"
            f"CREATE USER app_ed@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{pw['app_ed']}');"
            f"CREATE USER app_tls@'%' IDENTIFIED BY '{pw['app_tls']}' REQUIRE SSL;"
            "GRANT ALL ON app.* TO app@'%', app_ed@'%', app_tls@'%';"
            "GRANT PROCESS ON *.* TO app@'%';"
        )
        for account in self.ACCOUNTS:
            path = self.password_file(account)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(pw[account] + "\n")

    def _make_tls(self) -> list[str]:
        tls = server_cert(
            f"appliance lab CA {self.lab.lab_id}",
            f"mysql{self.host.index}.lab.test",
            [f"mysql{self.host.index}.lab.test", self.host.ipv4, self.host.ipv6],
        )
        self.ca_file = self.dir / "ca.pem"
        self.ca_file.write_bytes(tls.ca_pem)
        crt, key = self.dir / "server.crt", self.dir / "server.key"
        crt.write_bytes(tls.cert_pem)
        key.write_bytes(tls.key_pem)
        for p in (crt, key, self.ca_file):
            shutil.chown(p, "mysql", "mysql")
        key.chmod(0o600)
        return [f"--ssl-cert={crt}", f"--ssl-key={key}", f"--ssl-ca={self.ca_file}"]

    def admin_sql(self, sql: str, *, database: str | None = None) -> str:
        """Run SQL as root over the unix socket; return the tab-separated output."""
        argv = ["mariadb", "--no-defaults", f"--socket={self.socket}", "-uroot", "-N", "-B"]
        if database:
            argv.append(database)
        return run([*argv, "-e", sql])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(Exception):
                self.proc.wait(timeout=10)
