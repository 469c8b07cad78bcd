"""Who the job is, and what it cannot do (issue 20), with real processes.

One lab: PostgreSQL on target 0; on target 1 two local OIDC issuers (``tests/oidc.py``,
real HTTPS servers with a lab CA) stand in for GitHub Actions (the appliance requests each
job's token from its endpoint, for an audience bound to this boot) and GitLab (the job's
``id_tokens`` variable). The appliance runs as on a runner (``appliance run``, capture on,
attribution on the job cgroup) with an ``identity`` section and a policy that needs
verified identity. Jobs are psql as uid nobody in the job cgroup, with CI variables that
say ``acme/prod``.

- a valid token verifies the repository: the prod rule allows;
- forged, expired, wrong-audience and wrong-issuer tokens are recorded as such (the session's
  ``token`` and an ``identity.rejected`` entry) and verify nothing: the claimed
  ``acme/prod`` is not enough, the default rule denies;
- a job whose environment says ``acme/prod`` and whose token says ``acme/fork`` is
  ``acme/fork`` for the rule that needs verified identity, and the mismatch is recorded;
- a key rotation at the issuer is followed (unknown key id: the JWKS is fetched again);
- no token (nor the request's bearer token) reaches the ledger or the log;
- the job, as the unprivileged user, cannot flush netfilter, set SO_MARK, load BPF, read the
  appliance's secrets or ptrace it; a deliberately over-privileged job is a warning in
  ``appliance capture status`` and a ``capture.job_privileged`` entry.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.certs import server_cert
from tests.lab.lab import Lab, PgServer
from tests.lab.test_appliance_capture import APPLIANCE, Runner
from tests.oidc import TestIssuer, requests_logged

ROOT = Path(__file__).resolve().parents[2]
ISSUER_HOST = "198.18.1.2"
GITHUB = f"https://{ISSUER_HOST}:8443"
GITLAB = f"https://{ISSUER_HOST}:8444"
GITLAB_AUD = "https://appliance.lab"
PROD_ENV = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REPOSITORY": "acme/prod",
    "GITHUB_WORKFLOW": "deploy",
    "GITHUB_JOB": "migrate",
    "GITHUB_RUN_ID": "777",
}
PROD_CLAIMS = {
    "repository": "acme/prod",
    "workflow": "deploy",
    "run_id": "777",
    "ref": "refs/heads/main",
}


class World(Runner):
    """The capture test's appliance (:class:`Runner`) with an ``identity`` section, a policy
    that needs verified identity, and the lab's two issuers; see the module docstring."""

    def __init__(self, lab: Lab, pg: PgServer, work: Path) -> None:
        super().__init__(lab, pg, work)
        self.log = work / "appliance.log"
        self.issuers = {GITHUB: TestIssuer(GITHUB), GITLAB: TestIssuer(GITLAB)}
        self.dirs = {url: work / f"issuer-{url.rsplit(':', 1)[1]}" for url in self.issuers}
        self.jobs: dict[str, dict[str, Any]] = {}
        tls = server_cert("lab OIDC CA", ISSUER_HOST, [ISSUER_HOST])
        (work / "ca.pem").write_bytes(tls.ca_pem)
        (work / "cert.pem").write_bytes(tls.cert_pem)
        (work / "key.pem").write_bytes(tls.key_pem)
        for url, issuer in self.issuers.items():
            d = self.dirs[url]
            d.mkdir()
            issuer.save(d, jobs={})
            lab.popen(
                [sys.executable, "-m", "tests.oidc", str(d), ISSUER_HOST, url.rsplit(":", 1)[1],
                 str(work / "cert.pem"), str(work / "key.pem")],
                host=lab.targets[1], cwd=str(ROOT),
                stdout=subprocess.DEVNULL, stderr=(d / "server.log").open("wb"),
            )  # fmt: skip
        for d in self.dirs.values():
            _wait(lambda d=d: (d / "ready").exists(), "issuer")  # type: ignore[misc]
        self.config_path = self.config(cgroup=lab.job_cgroup)

    def config(self, *, cgroup: Path) -> Path:
        path = super().config(cgroup=cgroup)
        ca = self.work / "ca.pem"
        # Reconcile (and so the jobs' privilege check) every second, not every minute.
        base = path.read_text().replace("reconcile_interval: 60s", "reconcile_interval: 1s")
        path.write_text(
            base
            + f"""
identity:
  refresh_interval: 1s
  issuers:
    - name: github
      provider: github
      issuer: "{GITHUB}"
      audience: "appliance:{{boot_id}}"
      token: {{request: github, hosts: ["{ISSUER_HOST}"]}}
      ca: {ca}
    - name: gitlab
      provider: gitlab
      issuer: "{GITLAB}"
      audience: "{GITLAB_AUD}"
      token: {{env: APPLIANCE_ID_TOKEN}}
      ca: {ca}
policy:
  rules:
    - name: fork
      match: {{identity: {{verified: true, repository: acme/fork}}}}
      action: deny
      message: "acme/fork may not touch this database"
    - name: prod
      match: {{identity: {{repository: acme/prod}}}}
      action: allow
    - name: default
      action: deny
      message: "only a verified acme/prod job may"
"""
        )
        return path

    def remove(self) -> None:
        self.lab.popen(
            [APPLIANCE, "capture", "remove", "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ).wait(timeout=30)

    # -- jobs --------------------------------------------------------------------------------

    def github_job(self, make: str = "valid", **claims: str) -> dict[str, str]:
        """The environment of a GitHub job whose token endpoint mints ``make`` tokens with
        ``claims`` (the prod job's, by default). The request token is a fresh secret."""
        name = f"{make}-{secrets.token_urlsafe(12)}"
        self.jobs[name] = {"claims": {**PROD_CLAIMS, **claims}, "make": make}
        self.issuers[GITHUB].save(self.dirs[GITHUB], jobs=self.jobs)
        return {
            **PROD_ENV,
            "ACTIONS_ID_TOKEN_REQUEST_URL": f"{GITHUB}/token?api-version=2.0",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": name,
        }

    def psql(
        self, app: str, env: dict[str, str], sql: str = "select 1"
    ) -> subprocess.CompletedProcess[str]:
        return self.lab.job(
            ["psql", "-X", "-A", "-t", "-h", self.pg.ipv4, "-U", "ci", "-d", "app", "-c", sql],
            env={**env, "PGAPPNAME": app, "PGCONNECT_TIMEOUT": "15"},
        )

    def session(self, app: str) -> list[dict[str, Any]]:
        """The entries of the session started by ``app``, once it has ended."""

        def ended() -> list[dict[str, Any]] | None:
            entries = self.entries()
            sids = [
                e["session"] for e in entries
                if e["type"] == "session.start" and e["data"].get("application_name") == app
            ]  # fmt: skip
            if sids and any(
                e["type"] == "session.end" and e["session"] == sids[0] for e in entries
            ):
                return [e for e in entries if e["session"] == sids[0]]
            return None

        return _wait(ended, f"session {app}", self)

    def decision(self, session: list[dict[str, Any]]) -> dict[str, Any]:
        """The policy's record of the session's first statement."""
        return dict(next(e["data"]["decision"] for e in session if e["type"] == "statement"))

    def tokens_minted(self) -> list[str]:
        out = []
        for d in self.dirs.values():
            log = d / "tokens.log"
            out += log.read_text().split() if log.exists() else []
        return out


def _wait(predicate: Any, what: str, world: World | None = None, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        if world is not None and world.proc is not None and world.proc.poll() is not None:
            raise AssertionError(f"appliance exited: {world.log.read_text()[-3000:]}")
        time.sleep(0.05)
    tail = world.log.read_text()[-3000:] if world is not None and world.log.exists() else ""
    raise AssertionError(f"{what} not ready in {timeout}s\n{tail}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with Lab(n_targets=2) as lab:
        pg = lab.start_postgres(0)
        w = World(lab, pg, tmp_path_factory.mktemp("identity"))
        try:
            w.start()
            yield w
        finally:
            w.stop()
            w.remove()


# -- verified identity ---------------------------------------------------------------------


def test_keys_are_fetched_at_start(world: World) -> None:
    loaded = {
        e["data"]["issuer"]: e["data"]
        for e in world.entries()
        if e["type"] == "identity.keys_loaded"
    }
    assert set(loaded) == {"github", "gitlab"}
    assert loaded["github"]["kids"] == ["lab-1"] and not loaded["github"]["pinned"]


def test_a_valid_github_token_verifies_the_job(world: World) -> None:
    r = world.psql("valid", world.github_job())
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
    session = world.session("valid")
    ident = session[0]["identity"]
    token = ident["token"]
    assert token["status"] == "verified" and token["issuer"] == "github" and token["kid"] == "lab-1"
    assert token["iss"] == GITHUB and token["aud"].startswith("appliance:")
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert token["aud"] == f"appliance:{boot}"  # the audience this boot asked for
    assert {"provider", "repository", "workflow", "run_id", "ref"} <= set(ident["verified"])
    assert "job" not in ident["verified"]  # GitHub's token names no job: it stays claimed
    assert ident["ci"]["repository"] == "acme/prod" and ident["mismatch"] == []
    assert world.decision(session)["rule"] == "prod"
    # Every entry of the session carries the same identity.
    assert all(e["identity"] == ident for e in session)
    minted = world.tokens_minted()
    assert token["sha256"] in {hashlib.sha256(t.encode()).hexdigest() for t in minted}


def test_the_same_job_reuses_its_verified_token(world: World) -> None:
    env = world.github_job()
    name = env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"]
    for n in range(3):
        assert world.psql(f"again-{n}", env).returncode == 0
        assert world.session(f"again-{n}")[0]["identity"]["token"]["status"] == "verified"
    assert [job for job, _ in requests_logged(world.dirs[GITHUB])].count(name) == 1


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        ("forged", "bad-signature"),
        ("expired", "expired"),
        ("wrong-audience", "wrong-audience"),
        ("wrong-issuer", "wrong-issuer"),
    ],
)
def test_bad_tokens_are_recorded_as_such_and_get_claimed_fields_only(
    world: World, make: str, reason: str
) -> None:
    r = world.psql(make, world.github_job(make))
    assert r.returncode != 0 and "only a verified acme/prod job may" in r.stderr
    session = world.session(make)
    ident = session[0]["identity"]
    assert ident["token"]["status"] == "rejected" and ident["token"]["reason"] == reason
    assert ident["verified"] == [] and ident["ci"]["repository"] == "acme/prod"  # claimed
    assert world.decision(session)["rule"] == "default"
    rejected = [e["data"] for e in world.entries() if e["type"] == "identity.rejected"]
    assert any(d["sha256"] == ident["token"]["sha256"] and d["reason"] == reason for d in rejected)


def test_environment_says_prod_token_says_fork(world: World) -> None:
    r = world.psql("fork", world.github_job(repository="acme/fork"))
    assert r.returncode != 0 and "acme/fork may not touch this database" in r.stderr
    session = world.session("fork")
    ident = session[0]["identity"]
    assert ident["ci"]["repository"] == "acme/fork" and "repository" in ident["verified"]
    assert ident["ci"]["vars"]["GITHUB_REPOSITORY"] == "acme/prod"  # what the job claimed
    assert ident["mismatch"] == [
        {"field": "repository", "claimed": "acme/prod", "verified": "acme/fork"}
    ]
    assert world.decision(session)["rule"] == "fork"
    mismatches = [e["data"] for e in world.entries() if e["type"] == "identity.mismatch"]
    assert any(d["sha256"] == ident["token"]["sha256"] for d in mismatches)


def test_a_gitlab_token_from_the_jobs_environment(world: World) -> None:
    gitlab = world.issuers[GITLAB]
    claims = {"project_path": "acme/prod", "pipeline_id": "55", "job_id": "9", "ref": "main"}
    token = gitlab.mint(claims, audience=GITLAB_AUD)
    env = {"GITLAB_CI": "true", "CI_PROJECT_PATH": "acme/prod", "CI_JOB_ID": "9",
           "CI_PIPELINE_ID": "55", "APPLIANCE_ID_TOKEN": token}  # fmt: skip
    assert world.psql("gitlab", env).returncode == 0
    ident = world.session("gitlab")[0]["identity"]
    assert ident["token"]["status"] == "verified" and ident["token"]["issuer"] == "gitlab"
    assert {"repository", "run_id", "job_id"} <= set(ident["verified"])
    expired = gitlab.mint(claims, audience=GITLAB_AUD, make="expired")
    r = world.psql("gitlab-expired", {**env, "APPLIANCE_ID_TOKEN": expired})
    assert r.returncode != 0
    assert world.session("gitlab-expired")[0]["identity"]["token"]["reason"] == "expired"
    for t in (token, expired):
        assert t.encode() not in world.log.read_bytes()
        assert not _files_containing(world.ledger, t.encode())


def test_a_rotated_issuer_key_is_fetched_when_a_token_names_it(world: World) -> None:
    github = world.issuers[GITHUB]
    github.rotate("lab-2")
    time.sleep(1.1)  # refresh_interval: 1s since the last fetch
    r = world.psql("rotated", world.github_job())
    assert r.returncode == 0, r.stderr
    assert world.session("rotated")[0]["identity"]["token"]["kid"] == "lab-2"


def test_no_token_reaches_the_ledger_or_the_log(world: World) -> None:
    minted = world.tokens_minted()
    assert len(minted) >= 8
    bearers = list(world.jobs)
    for secret in [*minted, *bearers]:
        assert secret.encode() not in world.log.read_bytes(), secret[:20]
        assert not _files_containing(world.ledger, secret.encode()), secret[:20]


def _files_containing(directory: Path, needle: bytes) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and needle in p.read_bytes()]


# -- the job is not root -------------------------------------------------------------------

# A socket filter "r0 = 0; exit" loaded with bpf(BPF_PROG_LOAD): what any BPF loader does.
BPF_LOAD = r"""
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
insns = struct.pack("<BBhi", 0xb7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
buf = ctypes.create_string_buffer(insns)
lic = ctypes.create_string_buffer(b"GPL")
attr = struct.pack("<IIQQIIQI", 1, 2, ctypes.addressof(buf), ctypes.addressof(lic), 0, 0, 0, 0)
a = ctypes.create_string_buffer(attr, 128)
fd = libc.syscall(321, 5, a, 128)
print("loaded" if fd >= 0 else os.strerror(ctypes.get_errno()))
"""
PTRACE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
r = libc.ptrace(16, int(sys.argv[1]), None, None)
print("attached" if r == 0 else os.strerror(ctypes.get_errno()))
"""
SO_MARK = r"""
import socket
s = socket.socket()
try:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x4150)
    print("marked")
except OSError as e:
    print(e.strerror)
"""


def test_the_unprivileged_job_cannot_undo_the_appliance(world: World) -> None:
    lab = world.lab
    assert world.proc is not None
    job = lab.job(["id", "-u"])
    assert job.stdout.strip() == "65534"
    for argv in (["/usr/sbin/iptables", "-t", "nat", "-F"], ["/usr/sbin/iptables", "-F", "APPLIANCE-OUTPUT"],
                 ["/usr/sbin/nft", "flush", "ruleset"]):  # fmt: skip
        r = lab.job(argv)
        assert r.returncode != 0, argv
    assert lab.job(["/usr/bin/python3", "-c", SO_MARK]).stdout.strip() == "Operation not permitted"
    assert lab.job(["/usr/bin/python3", "-c", BPF_LOAD]).stdout.strip() == "Operation not permitted"
    pid = str(world.proc.pid)
    assert (
        lab.job(["/usr/bin/python3", "-c", PTRACE, pid]).stdout.strip() == "Operation not permitted"
    )
    for secret in (world.work / "ledger.key", world.pg.password_file()):
        r = lab.job(["cat", str(secret)])
        assert r.returncode != 0 and "Permission denied" in r.stderr, secret
    r = lab.job(["cat", f"/proc/{pid}/environ"])
    assert r.returncode != 0 and "Permission denied" in r.stderr
    # The rules are all still in place, and nothing in the jobs' cgroup is privileged.
    st = lab.popen(
        [APPLIANCE, "capture", "status", "--config", str(world.config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = st.communicate(timeout=60)
    assert st.returncode == 0, err
    assert b"WARNING" not in out and b"none privileged" in out, out


def test_status_reports_a_deliberately_over_privileged_job(world: World) -> None:
    lab = world.lab
    # A root shell in the jobs' cgroup, and a nobody process given CAP_NET_ADMIN as an
    # ambient capability (what a careless runner set-up might hand its jobs).
    root = lab.popen(["sleep", "120"], job=True, uid=0)
    capable = lab.popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         "--inh-caps=+net_admin", "--ambient-caps=+net_admin", "sleep", "120"],
        job=True, uid=0,
    )  # fmt: skip
    try:
        time.sleep(0.3)
        st = lab.popen(
            [
                APPLIANCE,
                "capture",
                "status",
                "--config",
                str(world.config_path),
                "--format",
                "json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = st.communicate(timeout=60)
        assert st.returncode == 0, err  # a warning, not a failure: the rules are in place
        found = json.loads(out)["jobs"]["findings"]
        mine = {(f["pid"], f["problem"]) for f in found}
        assert (root.pid, "root") in mine
        assert (capable.pid, "capability") in mine and (capable.pid, "root") not in mine
        detail = next(f["detail"] for f in found if f["pid"] == capable.pid)
        assert "CAP_NET_ADMIN" in detail
        text = lab.popen(
            [APPLIANCE, "capture", "status", "--config", str(world.config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ).communicate(timeout=60)[0]
        assert (
            f"WARNING job process {capable.pid} (sleep, uid 65534): holds CAP_NET_ADMIN".encode()
            in text
        )
        # The daemon records them on its next reconcile.
        recorded = _wait(
            lambda: [
                e["data"] for e in world.entries()
                if e["type"] == "capture.job_privileged" and e["data"]["pid"] in (root.pid, capable.pid)
            ],
            "capture.job_privileged",
            world,
        )  # fmt: skip
        assert {d["pid"] for d in recorded} >= {capable.pid}
    finally:
        for p in (root, capable):
            p.kill()
            p.wait()
