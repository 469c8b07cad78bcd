"""HTTPS in the lab: a real nginx (Debian) in a target namespace, and an appliance with
transparent capture in front of it, for tests, the demo and benchmarks.

- :class:`Nginx`: nginx with a certificate from a lab CA of its own (``ca_file``), on
  443 (TLS, HTTP/2) and 80 of the target's IPv4 and IPv6 addresses, for the names
  ``api.lab.test`` and ``other.lab.test``. It serves static files (``/orders.json`` holds
  a card number and an SSN; ``/big/*`` files made on request), takes uploads with WebDAV PUT
  under ``/upload/``, echoes the credential it received at ``/whoami``, answers
  ``/protected/`` only with the target's token, and serves a git repository through
  git-http-backend (fcgiwrap) at ``/git/repo.git``.
- :class:`HttpAppliance`: ``appliance run`` with capture on in the runner namespace, the
  ``interception`` section pointed at a scratch trust tree (``update-ca-certificates`` runs
  for real on it: the host's own store is never touched) and a job environment file.
- :meth:`HttpAppliance.job`: runs a command as the job (uid nobody, job cgroup) in a mount
  namespace of its own where ``/etc/hosts`` names the lab's hosts and
  ``/etc/ssl/certs/ca-certificates.crt`` is the bundle the appliance wrote: what a runner
  image's job sees after the appliance started; the job environment file's variables are
  in its environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from appliance.ledger import iter_entries
from tests.certs import server_cert
from tests.lab.lab import JOB_GID, JOB_UID, Lab, LabError, TargetHost, wait_port

APPLIANCE = str(Path(sys.executable).with_name("appliance"))
ORIGIN = "lab.test/http"
NAMES = ("api.lab.test", "other.lab.test")
TOKEN_FILE = "api-token"
CI_ENV = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REPOSITORY": "acme/shop",
    "GITHUB_WORKFLOW": "deploy",
    "GITHUB_JOB": "api",
    "GITHUB_RUN_ID": "4242",
}
ORDERS = {
    "orders": [
        {"id": 1, "customer": "Ada", "card": "4111 1111 1111 1111", "ssn": "536-22-8119"},
        {"id": 2, "customer": "Bob", "card": "5500 0000 0000 0004", "ssn": "401-62-7853"},
    ]
}


class Nginx:
    """A real nginx in a target namespace; see the module docstring."""

    def __init__(
        self, lab: Lab, host: TargetHost, *, token: str, names: Sequence[str] = NAMES
    ) -> None:
        self.lab = lab
        self.host = host
        self.names = tuple(names)
        self.token = token
        self.dir = lab.dir / f"nginx-{host.index}"
        self.www = self.dir / "www"
        self.ca_file = self.dir / "ca.pem"
        self.proc: subprocess.Popen[bytes] | None = None
        self.fcgi: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        d = self.dir
        for sub in ("www/upload", "www/big", "tmp", "git"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        tls = server_cert(
            f"lab nginx CA {self.lab.lab_id}",
            self.names[0],
            [*self.names, self.host.ipv4, self.host.ipv6],
        )
        self.ca_file.write_bytes(tls.ca_pem)
        (d / "server.crt").write_bytes(tls.cert_pem)
        (d / "server.key").write_bytes(tls.key_pem)
        (d / "server.key").chmod(0o600)
        (self.www / "orders.json").write_text(json.dumps(ORDERS))
        (self.www / "hello.txt").write_text("hello from nginx\n")
        self._git()
        sock = d / "fcgiwrap.sock"
        self.fcgi = self.lab.popen(
            ["fcgiwrap", "-s", f"unix:{sock}"],
            host=self.host,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        v4, v6 = self.host.ipv4, self.host.ipv6
        conf = f"""
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
daemon off;
events {{ worker_connections 1024; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  types {{ application/json json; text/plain txt; application/octet-stream bin; }}
  default_type application/octet-stream;
  client_max_body_size 4g;
  keepalive_requests 100000;
  sendfile on;
  server {{
    listen {v4}:443 ssl http2;
    listen [{v6}]:443 ssl http2;
    listen {v4}:80;
    listen [{v6}]:80;
    server_name {" ".join(self.names)};
    ssl_certificate {d}/server.crt;
    ssl_certificate_key {d}/server.key;
    root {self.www};
    location /upload/ {{ dav_methods PUT DELETE; create_full_put_path on; dav_access user:rw all:r; }}
    location = /whoami {{ default_type text/plain; return 200 "authorization=$http_authorization\\n"; }}
    location /protected/ {{
      if ($http_authorization != "Bearer {self.token}") {{ return 401; }}
      default_type application/json; return 200 '{{"secret_ok": true}}';
    }}
    location ~ ^/git(/.*)$ {{
      fastcgi_pass unix:{sock};
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param GIT_PROJECT_ROOT {d}/git;
      fastcgi_param PATH_INFO $1;
      fastcgi_param REMOTE_USER $remote_user;
    }}
  }}
}}
"""
        (d / "nginx.conf").write_text(conf)
        self.proc = self.lab.popen(
            ["nginx", "-e", str(d / "error.log"), "-c", str(d / "nginx.conf")],
            host=self.host,
            stdout=subprocess.DEVNULL,
            stderr=open(d / "stderr.log", "wb"),  # noqa: SIM115 - closed with the process
        )
        try:
            wait_port(v4, 443, netns=self.host.path)
        except LabError:
            raise LabError(
                f"nginx did not start: {(d / 'error.log').read_text(errors='replace')[-2000:]}"
            ) from None

    def _git(self) -> None:
        work = self.dir / "git-src"
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "lab",
            "GIT_AUTHOR_EMAIL": "lab@lab.test",
            "GIT_COMMITTER_NAME": "lab",
            "GIT_COMMITTER_EMAIL": "lab@lab.test",
        }
        subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True, env=env)
        (work / "README.md").write_text("a repository served by git-http-backend\n")
        subprocess.run(["git", "-C", str(work), "add", "."], check=True, env=env)
        subprocess.run(["git", "-C", str(work), "commit", "-q", "-m", "first"], check=True, env=env)
        subprocess.run(
            ["git", "clone", "-q", "--bare", str(work), str(self.dir / "git" / "repo.git")],
            check=True,
            env=env,
        )

    def big_file(self, name: str, size: int) -> Path:
        """A file of ``size`` bytes under ``/big/`` (sparse: zeros cost no disk)."""
        path = self.www / "big" / name
        with path.open("wb") as f:
            f.truncate(size)
        return path

    def stop(self) -> None:
        for proc in (self.proc, self.fcgi):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


class HttpAppliance:
    """The appliance with capture in the runner namespace; see the module docstring."""

    def __init__(
        self,
        lab: Lab,
        work: Path,
        *,
        targets: list[dict[str, Any]],
        policy: Mapping[str, Any] | None = None,
        masking: Mapping[str, Any] | None = None,
        trust: Path | None = None,
        capture: bool = True,
    ) -> None:
        self.lab = lab
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.ledger = work / "ledger.d"
        self.log = work / "appliance.log"
        self.ready = work / "ready.json"
        # The job (uid nobody) reads the bundle: under the lab's directory, which it can reach.
        self.trust = trust or lab.dir / "trust"
        self.env_file = self.trust / "job.env"
        self.bundle = self.trust / "etc-ssl-certs" / "ca-certificates.crt"
        self.proc: subprocess.Popen[bytes] | None = None
        self.capture = capture
        subprocess.run(
            [APPLIANCE, "keys", "generate", "--name", ORIGIN, "--out", str(work / "ledger")],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        etc = self.trust / "etc-ssl-certs"
        etc.mkdir(parents=True, exist_ok=True)
        (self.trust / "local").mkdir(exist_ok=True)
        (self.trust / "hooks").mkdir(exist_ok=True)
        shutil.copy("/etc/ca-certificates.conf", self.trust / "ca-certificates.conf")
        doc: dict[str, Any] = {
            "targets": targets,
            "ledger": {
                "dir": str(self.ledger),
                "origin": ORIGIN,
                "key": {"file": str(work / "ledger.key")},
                "checkpoint_interval": "100ms",
            },
            "capture": {
                "listen_port": 15001,
                "cgroup": str(lab.job_cgroup),
                "appliance_cgroup": lab.appliance_cgroup_path,
                "reconcile_interval": "60s",
            },
            "interception": {
                "ca_file": str(self.trust / "interception-ca.pem"),
                "bundle": str(self.trust / "bundle.pem"),
                "env_file": str(self.env_file),
                "system": True,
                "system_bundle": str(self.bundle),
                "local_dir": str(self.trust / "local"),
                "etc_dir": str(etc),
                "certs_conf": str(self.trust / "ca-certificates.conf"),
                "hooks_dir": str(self.trust / "hooks"),
            },
        }
        if policy is not None:
            doc["policy"] = dict(policy)
        if masking is not None:
            doc["masking"] = dict(masking)
        self.config = work / "config.yaml"
        self.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.hosts = work / "hosts"

    def start(self, *, timeout: float = 30) -> None:
        self.ready.unlink(missing_ok=True)
        log = self.log.open("ab")
        self.proc = self.lab.popen(
            [APPLIANCE, "run", "--config", str(self.config), "--ready-file", str(self.ready), "--grace", "10",
             *([] if self.capture else ["--no-capture"])],
            cgroup=self.lab.appliance_cgroup, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while not (self.ready.exists() and self.ready.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(
                    f"appliance did not start: {self.log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.02)

    def stop(self) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def set_hosts(self, names: Mapping[str, str]) -> None:
        lines = ["127.0.0.1 localhost", *(f"{ip} {name}" for name, ip in names.items())]
        self.hosts.write_text("\n".join(lines) + "\n")

    def job_env(self) -> dict[str, str]:
        env = dict(CI_ENV)
        for line in self.env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
        return env

    def job(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
        input: bytes | None = None,
        trust_env: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as the job; see the module docstring."""
        script = (
            f"mount --bind {self.hosts} /etc/hosts && "
            f"mount --bind {self.bundle} /etc/ssl/certs/ca-certificates.crt && "
            f'exec setpriv --reuid={JOB_UID} --regid={JOB_GID} --clear-groups -- "$@"'
        )
        full_env = {
            **(self.job_env() if trust_env else dict(CI_ENV)),
            "HOME": "/tmp",
            **(env or {}),
        }
        proc = self.lab.popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "job", *argv],
            job=True, uid=0, env=full_env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise LabError(f"job {argv!r} timed out: {err.decode(errors='replace')}") from None
        return subprocess.CompletedProcess(
            list(argv), proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
        )

    # -- the ledger --------------------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        if not (self.ledger / "entries.log").exists():
            return []
        return [e.obj for e in iter_entries(self.ledger)]

    def wait_for(self, predicate: Any, *, timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            entries = self.entries()
            if predicate(entries):
                return entries
            if time.monotonic() > deadline:
                tail = "\n".join(json.dumps(e)[:400] for e in entries[-12:])
                raise AssertionError(f"ledger condition not met in {timeout}s; tail:\n{tail}")
            time.sleep(0.05)

    def sessions_after(
        self, before: int, n: int = 1, *, timeout: float = 20
    ) -> list[list[dict[str, Any]]]:
        """The entries of the ``n`` sessions started after the first ``before``, once ended."""

        def done(entries: list[dict[str, Any]]) -> bool:
            starts = [
                e["session"]
                for e in entries
                if e["type"] == "session.start" and e["data"].get("protocol") == "http"
            ][before:]
            ends = {e["session"] for e in entries if e["type"] == "session.end"}
            return len(starts) >= n and all(s in ends for s in starts[:n])

        entries = self.wait_for(done, timeout=timeout)
        starts = [
            e["session"]
            for e in entries
            if e["type"] == "session.start" and e["data"].get("protocol") == "http"
        ][before : before + n]
        return [[e for e in entries if e["session"] == s] for s in starts]

    def session_count(self) -> int:
        return sum(
            1
            for e in self.entries()
            if e["type"] == "session.start" and e["data"].get("protocol") == "http"
        )

    def files_containing(self, needle: bytes) -> list[Path]:
        return [
            p
            for p in [*sorted(self.ledger.rglob("*")), self.log]
            if p.is_file() and needle in p.read_bytes()
        ]


@contextlib.contextmanager
def nginx_and_appliance(
    lab: Lab,
    work: Path,
    *,
    token: str,
    policy: Mapping[str, Any] | None = None,
    masking: Mapping[str, Any] | None = None,
    extra_targets: Sequence[dict[str, Any]] = (),
) -> Iterator[tuple[Nginx, HttpAppliance]]:
    """nginx on target 0 behind an appliance whose ``api`` target injects ``token``."""
    nginx = Nginx(lab, lab.targets[0], token=token)
    nginx.start()
    token_file = lab.dir / "secrets" / TOKEN_FILE
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    t = lab.targets[0]
    target = {
        "name": "api",
        "protocol": "http",
        "addresses": [f"{t.ipv4}:443", f"[{t.ipv6}]:443", f"{t.ipv4}:80", f"[{t.ipv6}]:80"],
        "names": ["api.lab.test"],
        "tls": {"mode": "verify-full", "ca": str(nginx.ca_file)},
        "auth": {"type": "bearer"},
        "accounts": [{"name": "ci", "user": "-", "secret": {"file": str(token_file)}}],
    }
    app = HttpAppliance(lab, work, targets=[target, *extra_targets], policy=policy, masking=masking)
    app.set_hosts({"api.lab.test": t.ipv4, "other.lab.test": t.ipv4})
    try:
        app.start()
        yield nginx, app
    finally:
        app.stop()
        nginx.stop()


class KubeServer:
    """The lab's small Kubernetes API server (:mod:`tests.lab.kube_server`; not
    kube-apiserver) on a target's port 443, with a certificate from its own lab CA."""

    def __init__(
        self, lab: Lab, host: TargetHost, *, token: str, name: str = "kube.lab.test"
    ) -> None:
        self.lab = lab
        self.host = host
        self.name = name
        self.token = token
        self.dir = lab.dir / f"kube-{host.index}"
        self.ca_file = self.dir / "ca.pem"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tls = server_cert(f"lab kube CA {self.lab.lab_id}", self.name, [self.name, self.host.ipv4])
        self.ca_file.write_bytes(tls.ca_pem)
        (self.dir / "server.crt").write_bytes(tls.cert_pem)
        (self.dir / "server.key").write_bytes(tls.key_pem)
        (self.dir / "server.key").chmod(0o600)
        token_file = self.dir / "token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        root = Path(__file__).resolve().parents[2]
        self.proc = self.lab.popen(
            [sys.executable, "-m", "tests.lab.kube_server", str(self.dir / "server.crt"), str(self.dir / "server.key"), self.host.ipv4, "443", str(token_file)],
            host=self.host, cwd=str(root), stdout=subprocess.DEVNULL, stderr=open(self.dir / "server.log", "wb"),  # noqa: SIM115
        )  # fmt: skip
        try:
            wait_port(self.host.ipv4, 443, netns=self.host.path)
        except LabError:
            raise LabError(
                f"the lab Kubernetes server did not start: {(self.dir / 'server.log').read_text()[-2000:]}"
            ) from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def kube_target(self, token_file: Path) -> dict[str, Any]:
        return {
            "name": "k8s",
            "protocol": "http",
            "addresses": [f"{self.host.ipv4}:443"],
            "names": [self.name],
            "kubernetes": True,
            "tls": {"mode": "verify-full", "ca": str(self.ca_file)},
            "auth": {"type": "bearer"},
            "accounts": [{"name": "deployer", "user": "-", "secret": {"file": str(token_file)}}],
        }

    def kubeconfig(self, path: Path) -> Path:
        """What the runner image writes for the job: the real server, no secret, and no
        ``certificate-authority-data`` (kubectl would then ignore the system store)."""
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "lab", "cluster": {"server": f"https://{self.name}"}}],
                    "users": [
                        {"name": "ci", "user": {"token": "placeholder-the-job-has-no-secret"}}
                    ],
                    "contexts": [
                        {
                            "name": "lab",
                            "context": {"cluster": "lab", "user": "ci", "namespace": "default"},
                        }
                    ],
                    "current-context": "lab",
                }
            )
        )
        path.chmod(0o644)
        return path
