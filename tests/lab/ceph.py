"""A real S3 server for lab tests: a one-node Ceph cluster (monitor, memstore OSD, radosgw).

Layout (``<id>`` a short random hex id, registered like a :class:`~tests.lab.lab.Lab`, so a
cluster left behind by a killed run is removed by the next lab's :func:`cleanup_stale`)::

    apl-<id>-s3        the storage host: ceph-mon (127.0.0.1:3300), ceph-osd (memstore, 1 GiB),
                       radosgw (beast, 0.0.0.0:7480, and :7443 with TLS), plain processes
                       run as user ceph from /run/appliance-lab/<id>/ with their own ceph.conf,
                       cephx, pool size 1, no mgr, no systemd
        ap<id>s<k> 198.19.<k>.1/24  ──veth──  ap<id>c<k> 198.19.<k>.2/24   a client namespace
                                                (a lab's runner, an approver's laptop...)

Clients reach the gateway only through a link made by :meth:`CephS3.link`; no namespace has
a default route. The small API: :meth:`start`, :meth:`link` (-> endpoint URL), :attr:`root`
(the S3 user's credentials), :meth:`add_user`, :meth:`create_bucket` (versioning and
Object Lock), :meth:`admin` (a boto3 client whose calls run inside the storage namespace),
:meth:`stop_gateway`/:meth:`start_gateway` (storage down), :meth:`stop`.

radosgw (Ceph 16.2) differs from AWS S3 in three ways the appliance designs for (issue 15):
``If-None-Match: *`` on a *versioned* bucket writes a new version (412 only on unversioned
buckets); the SHA-256 checksum header is ignored (not stored, a wrong one accepted;
``Content-MD5`` is checked); boto3's default streaming checksums over HTTPS are refused
with 411, hence ``request_checksum_calculation="when_required"``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.certs import server_cert
from tests.lab.lab import STATE_DIR, LabError, _teardown_by_id, cleanup_stale, in_netns, run

HTTP_PORT = 7480
HTTPS_PORT = 7443
_CEPH_USER = "ceph"
_RGW = "client.rgw.lab"


@dataclass(frozen=True)
class S3Credentials:
    """An S3 user's access key pair."""

    access_key: str
    secret_key: str
    user: str = "lab"

    @property
    def arn(self) -> str:
        """The user as a bucket policy names it (no tenant)."""
        return f"arn:aws:iam:::user/{self.user}"

    def shared_file(self, path: Path, *, mode: int = 0o600) -> Path:
        """Write the pair as an AWS shared credentials file (``[default]`` profile)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(
                "[default]\n"
                f"aws_access_key_id = {self.access_key}\n"
                f"aws_secret_access_key = {self.secret_key}\n"
            )
        return path

    def env(self) -> dict[str, str]:
        """The pair as the AWS SDK's environment variables."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


class _InNamespace:
    """A boto3 client whose every call runs with the calling thread inside ``netns``."""

    def __init__(self, client: Any, netns: Path) -> None:
        self._client = client
        self._netns = netns

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with in_netns(self._netns):
                return attr(*args, **kwargs)

        return call


class CephS3:
    """A one-node Ceph cluster with radosgw in its own lab namespace (see the module doc).

    Use as a context manager, or :meth:`start` / :meth:`stop` (stop always removes
    everything, also after a failed start). ``tls=True`` also serves HTTPS on
    :data:`HTTPS_PORT` with a throwaway CA (:attr:`ca_file`) for the name ``s3.lab.test``
    and every link address.
    """

    def __init__(self, *, tls: bool = False) -> None:
        self.id = secrets.token_hex(3)
        self.netns = f"apl-{self.id}-s3"
        self.dir = STATE_DIR / self.id
        self.conf = self.dir / "ceph.conf"
        self.tls = tls
        self.ca_file: Path | None = None
        self.root = S3Credentials("LAB" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._links = 0
        self.started_in: float | None = None

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> CephS3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 90) -> None:
        """Build the namespace and the cluster, start the gateway, create the root user.
        Raises LabError (after removing what was built) if any step fails."""
        if os.geteuid() != 0:
            raise LabError("the S3 lab needs root (network namespaces)")
        t0 = time.monotonic()
        cleanup_stale()
        STATE_DIR.mkdir(mode=0o755, exist_ok=True)
        (STATE_DIR / f"{self.id}.pid").write_text(f"{os.getpid()}\n")
        try:
            self.dir.mkdir(mode=0o755)
            run(["ip", "netns", "add", self.netns])
            run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
            self._configure()
            self._start_mon()
            self._start_osd()
            self.start_gateway(timeout=timeout)
            self._radosgw_admin(
                "user", "create", "--uid=lab", "--display-name=lab",
                f"--access-key={self.root.access_key}", f"--secret-key={self.root.secret_key}",
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - t0

    def stop(self) -> None:
        """Stop every daemon and remove the namespace, its links and the cluster's files."""
        for name in ("rgw", "osd", "mon"):
            proc = self._procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        _teardown_by_id(self.id)

    # -- cluster -----------------------------------------------------------------------------

    def _configure(self) -> None:
        d = self.dir
        for sub in ("mon", "osd/ceph-0", "run", "log"):
            (d / sub).mkdir(parents=True)
        fsid = str(uuid.uuid4())
        frontends = f"beast endpoint=0.0.0.0:{HTTP_PORT}"
        if self.tls:
            frontends += self._make_tls()
        conf = f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:3300
mon initial members = a
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = {d}/$name.keyring
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
log to stderr = false
err to stderr = true
ms bind ipv6 = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
# A killed radosgw leaves its watches on the control objects until this timeout: metadata
# writes (a new bucket) wait for it after stop_gateway/start_gateway (30 s by default).
osd client watch timeout = 3

[mon]
mon data = {d}/mon/$cluster-$id

[osd]
osd data = {d}/osd/$cluster-$id
osd objectstore = memstore
memstore device bytes = {1 << 30}
osd max object name len = 256
osd max object namespace len = 64

[{_RGW}]
rgw frontends = {frontends}
rgw thread pool size = 64
rgw enable usage log = false
"""
        self.conf.write_text(conf)
        auth = ["ceph-authtool", "--create-keyring"]
        run([*auth, str(d / "mon.keyring"), "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"])
        admin = d / "client.admin.keyring"
        run(
            [*auth, str(admin), "--gen-key", "-n", "client.admin",
             "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"]
        )  # fmt: skip
        run(["ceph-authtool", str(d / "mon.keyring"), "--import-keyring", str(admin)])
        run(
            ["monmaptool", "--create", "--addv", "a", "[v2:127.0.0.1:3300]",
             "--fsid", fsid, str(d / "monmap")]
        )  # fmt: skip
        run(["chown", "-R", f"{_CEPH_USER}:{_CEPH_USER}", str(d)])
        self._as_ceph(
            ["ceph-mon", "-c", str(self.conf), "--mkfs", "-i", "a",
             "--monmap", str(d / "monmap"), "--keyring", str(d / "mon.keyring")]
        )  # fmt: skip

    def _make_tls(self) -> str:
        names = ["s3.lab.test", *(f"198.19.{k}.1" for k in range(64)), "127.0.0.1"]
        tls = server_cert(f"appliance S3 lab CA {self.id}", "s3.lab.test", names)
        self.ca_file = self.dir / "ca.pem"
        self.ca_file.write_bytes(tls.ca_pem)
        (self.dir / "rgw.crt").write_bytes(tls.cert_pem)
        key = self.dir / "rgw.key"
        key.write_bytes(tls.key_pem)
        key.chmod(0o600)
        return (
            f" ssl_endpoint=0.0.0.0:{HTTPS_PORT} ssl_certificate={self.dir / 'rgw.crt'}"
            f" ssl_private_key={key}"
        )

    def _as_ceph(self, argv: list[str], *, timeout: float = 60) -> str:
        """Run a ceph tool as user ceph inside the storage namespace."""
        return run(
            ["ip", "netns", "exec", self.netns, "setpriv", "--reuid", _CEPH_USER,
             "--regid", _CEPH_USER, "--init-groups", *argv],
            timeout=timeout,
        )  # fmt: skip

    def ceph(self, *args: str) -> str:
        """The ``ceph`` command as client.admin against this cluster."""
        return self._as_ceph(["ceph", "-c", str(self.conf), "-n", "client.admin", *args])

    def _radosgw_admin(self, *args: str) -> str:
        return self._as_ceph(["radosgw-admin", "-c", str(self.conf), "-n", "client.admin", *args])

    def _daemon(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.dir / "log" / f"{name}.out", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *argv,
             "-c", str(self.conf), "-f", "--setuser", _CEPH_USER, "--setgroup", _CEPH_USER],
            stdout=log,
            stderr=log,
        )  # fmt: skip
        log.close()
        self._procs[name] = proc
        return proc

    def _start_mon(self) -> None:
        self._daemon("mon", ["ceph-mon", "-i", "a"])
        self._wait(lambda: self.ceph("mon", "stat", "--connect-timeout", "5"), "monitor", 30)

    def _start_osd(self) -> None:
        d = self.dir
        osd_uuid = str(uuid.uuid4())
        keyring = d / "osd.0.keyring"
        run(["ceph-authtool", "--create-keyring", str(keyring), "--gen-key", "-n", "osd.0"])
        secret = run(["ceph-authtool", "-p", "-n", "osd.0", str(keyring)]).strip()
        secret_file = d / "osd-secret.json"
        secret_file.write_text(json.dumps({"cephx_secret": secret}))
        run(["chown", f"{_CEPH_USER}:{_CEPH_USER}", str(keyring), str(secret_file)])
        osd_id = self.ceph("osd", "new", osd_uuid, "-i", str(secret_file)).strip()
        if osd_id != "0":
            raise LabError(f"ceph osd new gave id {osd_id!r}, expected 0")
        self._as_ceph(
            ["ceph-osd", "-c", str(self.conf), "-i", "0", "--mkfs", "--osd-uuid", osd_uuid]
        )
        self._daemon("osd", ["ceph-osd", "-i", "0"])
        self._wait(
            lambda: self.ceph("osd", "stat", "-f", "json"),
            "OSD",
            30,
            ok=lambda out: json.loads(out).get("num_up_osds") == 1,
        )

    def start_gateway(self, timeout: float = 90) -> None:
        """Start radosgw and wait until S3 answers (it creates its pools on first start)."""
        keyring = self.dir / f"{_RGW}.keyring"
        if not keyring.exists():
            self.ceph(
                "auth", "get-or-create", _RGW, "mon", "allow rw", "osd", "allow rwx",
                "-o", str(keyring),
            )  # fmt: skip
        self._daemon("rgw", ["radosgw", "-n", _RGW])
        self._wait(self._probe, "radosgw", timeout)

    def stop_gateway(self) -> None:
        """Stop radosgw (the cluster keeps its data): storage is down for every client."""
        proc = self._procs.pop("rgw", None)
        if proc is None:
            return
        # radosgw under `ip netns exec`: the exec replaced the process, the pid is radosgw's.
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def _probe(self) -> str:
        out = run(
            ["ip", "netns", "exec", self.netns, "curl", "-s", "-o", "/dev/null", "-w",
             "%{http_code}", f"http://127.0.0.1:{HTTP_PORT}/"],
            check=False,
        )  # fmt: skip
        if out.strip() != "200":
            raise LabError(f"radosgw answered {out.strip() or 'nothing'}")
        return out

    def _wait(
        self,
        probe: Callable[[], str],
        what: str,
        timeout: float,
        ok: Callable[[str], bool] = lambda _: True,
    ) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    tail = (self.dir / "log" / f"{name}.out").read_text(errors="replace")[-1500:]
                    raise LabError(f"ceph {name} exited ({proc.returncode}): {tail}")
            try:
                if ok(probe()):
                    return
            except (LabError, ValueError) as exc:
                last = exc
            time.sleep(0.2)
        raise LabError(f"the {what} did not come up within {timeout}s: {last}")

    # -- clients -----------------------------------------------------------------------------

    def link(self, netns: str) -> str:
        """Join namespace ``netns`` (by name) to the storage host with a veth pair; return the
        HTTP endpoint URL the namespace reaches the gateway at (HTTPS: :meth:`https`)."""
        k = self._links
        self._links += 1
        if k > 63:
            raise LabError("at most 64 links to one S3 lab")
        s_if, c_if = f"ap{self.id}s{k}", f"ap{self.id}c{k}"
        run(["ip", "-n", self.netns, "link", "add", s_if, "type", "veth",
             "peer", "name", c_if, "netns", netns])  # fmt: skip
        run(["ip", "-n", self.netns, "addr", "add", f"198.19.{k}.1/24", "dev", s_if])
        run(["ip", "-n", self.netns, "link", "set", s_if, "up"])
        run(["ip", "-n", netns, "addr", "add", f"198.19.{k}.2/24", "dev", c_if])
        run(["ip", "-n", netns, "link", "set", c_if, "up"])
        return f"http://198.19.{k}.1:{HTTP_PORT}"

    @staticmethod
    def https(endpoint: str) -> str:
        """The HTTPS endpoint on the same link as the HTTP ``endpoint`` (``tls=True``)."""
        return endpoint.replace("http://", "https://").replace(f":{HTTP_PORT}", f":{HTTPS_PORT}")

    def client_namespace(self, name: str) -> tuple[str, str]:
        """A new namespace that reaches only the storage host (an auditor's or an approver's
        machine); removed with the cluster. Returns (namespace name, endpoint URL)."""
        ns = f"apl-{self.id}-{name}"
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        return ns, self.link(ns)

    def add_user(self, uid: str) -> S3Credentials:
        """A new S3 user (no buckets of its own; give it access with a bucket policy)."""
        creds = S3Credentials(
            "LAB" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30), user=uid
        )
        self._radosgw_admin(
            "user", "create", f"--uid={uid}", f"--display-name={uid}",
            f"--access-key={creds.access_key}", f"--secret-key={creds.secret_key}",
        )  # fmt: skip
        return creds

    def admin(self, creds: S3Credentials | None = None) -> Any:
        """A boto3 S3 client (as ``creds``, default the root user) whose calls run inside the
        storage namespace, against http://127.0.0.1:7480."""
        import boto3
        from botocore.config import Config

        creds = creds or self.root
        client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{HTTP_PORT}",
            aws_access_key_id=creds.access_key,
            aws_secret_access_key=creds.secret_key,
            region_name="us-east-1",
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
            ),
        )
        return _InNamespace(client, self.netns_path)

    def create_bucket(
        self,
        name: str,
        *,
        object_lock: bool = True,
        versioning: bool = True,
        default_retention: tuple[str, int] | None = None,
    ) -> None:
        """A bucket owned by the root user. ``object_lock`` implies versioning (S3 turns it on
        with the lock); ``default_retention`` = (mode, days) sets the bucket's default."""
        s3 = self.admin()
        if object_lock:
            s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        else:
            s3.create_bucket(Bucket=name)
            if versioning:
                s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        if default_retention is not None:
            mode, days = default_retention
            s3.put_object_lock_configuration(
                Bucket=name,
                ObjectLockConfiguration={
                    "ObjectLockEnabled": "Enabled",
                    "Rule": {"DefaultRetention": {"Mode": mode, "Days": days}},
                },
            )

    def all_versions(self, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
        """Every object version and delete marker under ``prefix`` (``"DeleteMarker"`` set on
        markers), newest first per key."""
        s3 = self.admin()
        out: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        while True:
            page = s3.list_object_versions(**kwargs)
            out += [{**v, "DeleteMarker": False} for v in page.get("Versions", [])]
            out += [{**m, "DeleteMarker": True} for m in page.get("DeleteMarkers", [])]
            if not page.get("IsTruncated"):
                return out
            kwargs.update(
                KeyMarker=page["NextKeyMarker"], VersionIdMarker=page["NextVersionIdMarker"]
            )

    def purge(self, bucket: str, key: str) -> None:
        """Remove every version of ``key`` for good (only where no lock holds it): what an
        administrator of an unlocked bucket can do."""
        s3 = self.admin()
        for v in self.all_versions(bucket, key):
            if v["Key"] == key:
                s3.delete_object(Bucket=bucket, Key=key, VersionId=v["VersionId"])

    @staticmethod
    def retain_until(days: int) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """The calling thread runs inside the storage namespace for the body."""
        with in_netns(self.netns_path):
            yield

    def log_tail(self, name: str = "rgw", chars: int = 3000) -> str:
        path = self.dir / "log" / f"{name}.out"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""
