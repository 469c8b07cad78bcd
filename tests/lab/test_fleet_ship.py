"""Shipping the ledger to a real S3 server (Ceph's radosgw) while the appliance runs (issue 15).

The appliance runs in the lab's runner namespace with ``ledger.ship`` pointing at radosgw
(linked to the runner); the auditor runs the CLI from a namespace that reaches only the S3
server. Round trip (ship while running, verify from the bucket, pull and verify locally),
storage down mid-run (serve, and fail closed), and SIGTERM right after a session.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.ledger.store import read_history
from tests.lab.ceph import CephS3
from tests.lab.fleet import bucket_name, cli, ship_options, wait_shipped
from tests.lab.lab import Lab, PgServer
from tests.lab.proxy import APPLIANCE, Appliance, TargetSpec, job_env, running_appliance


@pytest.fixture(scope="module")
def auditor(ceph: CephS3) -> tuple[str, str]:
    """A namespace (an auditor's laptop) that reaches only the S3 server, and its endpoint."""
    return ceph.client_namespace("auditor")


@pytest.fixture(scope="module")
def creds_file(ceph: CephS3, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ceph.root.shared_file(tmp_path_factory.mktemp("s3") / "s3.credentials")


@pytest.fixture
def url(ceph: CephS3) -> str:
    """A fresh bucket (versioning, Object Lock) for the test: its fleet URL."""
    bucket = bucket_name("fleet")
    ceph.create_bucket(bucket)
    return f"s3://{bucket}/fleet"


@contextlib.contextmanager
def shipping(
    lab: Lab, pg: PgServer, workdir: Path, port: int, url: str, endpoint: str, creds: Path,
    workers: int = 1, **ship: Any,
) -> Iterator[Appliance]:  # fmt: skip
    """An appliance in the runner with ``ledger.ship`` to ``url`` (COMPLIANCE, 1 day), served
    by ``workers`` proxy processes."""
    with running_appliance(
        lab, pg, workdir, targets=[TargetSpec("db", port)],
        ledger_options=ship_options(url, endpoint, creds, **ship), proxy={"workers": workers},
    ) as app:  # fmt: skip
        yield app


def pull(ceph: CephS3, auditor: tuple[str, str], url: str, to: Path) -> Path:
    """``ledger pull`` from the auditor's namespace; the copy of the lab's log."""
    ns, endpoint = auditor
    r = cli(ns, ceph.root, "ledger", "pull", "--source", url, "--endpoint-url", endpoint,
            "--to", str(to))  # fmt: skip
    assert r.returncode == 0, r.stderr
    return to / "lab.test%2Fledger"


def psql(lab: Lab, port: int, app: str, sql: str = "select 1") -> subprocess.CompletedProcess[str]:
    return lab.job(["psql", "-X", "-A", "-t", "-c", sql], env=job_env(port, PGAPPNAME=app))


def status(app: Appliance) -> dict[str, Any]:
    try:
        return json.loads((app.ledger / "ship.json").read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, ValueError):
        return {}


def wait_status(app: Appliance, pred: Any, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = status(app)
        if s and pred(s):
            return s
        time.sleep(0.1)
    raise AssertionError(f"status not reached in {timeout}s: {status(app)}")


def test_round_trip_ship_while_running_verify_from_the_bucket_pull_and_verify(
    lab: Lab,
    pg: PgServer,
    ceph: CephS3,
    s3_endpoint: str,
    auditor: tuple[str, str],
    creds_file: Path,
    tmp_path: Path,
    url: str,
) -> None:
    ns, endpoint = auditor
    with shipping(lab, pg, tmp_path / "app", 6601, url, s3_endpoint, creds_file) as app:
        r = psql(lab, 6601, "shipped", "select 40 + 2")
        assert r.returncode == 0 and r.stdout.strip() == "42", r.stderr
        session = app.session_by_app("shipped")
        # shipped while the daemon runs: the bucket catches up within seconds
        wait_shipped(app.ledger, size=session[-1]["seq"] + 1, timeout=20)
        verified = cli(
            ns, ceph.root, "ledger", "verify", "--source", url, "--endpoint-url", endpoint,
            "--vkey", str(app.vkey), "--cache", str(tmp_path / "cache"), "--format", "json",
        )  # fmt: skip
        assert verified.returncode == 0, verified.stdout + verified.stderr
        (log,) = json.loads(verified.stdout)
        assert log["ok"] and log["origin"] == "lab.test/ledger" and log["entries"] >= len(session)
        # every object is under COMPLIANCE retention, as configured
        key = f"fleet/logs/lab.test%2Fledger/checkpoints/{0:020d}"
        head = ceph.admin().head_object(Bucket=url.split("/")[2], Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] > CephS3.retain_until(0)
        shown = cli(
            ns, ceph.root, "ledger", "show", "--source", url, "--endpoint-url", endpoint,
            "--cache", str(tmp_path / "cache"), session[0]["session"],
        )  # fmt: skip
        assert shown.returncode == 0 and "select 40 + 2" in shown.stdout, shown.stderr
    copy = pull(ceph, auditor, url, tmp_path / "pulled")
    local = subprocess.run(
        [APPLIANCE, "ledger", "verify", "--ledger", str(copy), "--vkey", str(app.vkey)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert local.returncode == 0, local.stdout + local.stderr
    # the final ship on stop: the bucket's copy is the ledger, byte for byte
    assert (copy / "entries.log").read_bytes() == (app.ledger / "entries.log").read_bytes()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_right_after_a_session_leaves_everything_in_the_bucket(
    workers: int,
    lab: Lab,
    pg: PgServer,
    ceph: CephS3,
    s3_endpoint: str,
    auditor: tuple[str, str],
    creds_file: Path,
    tmp_path: Path,
    url: str,
) -> None:
    with shipping(
        lab, pg, tmp_path / "app", 6602, url, s3_endpoint, creds_file, workers=workers
    ) as app:
        assert psql(lab, 6602, "last-words", "select 'bye'").returncode == 0
        app.session_by_app("last-words")
        app.signal(signal.SIGTERM)  # at once: the session's entries are barely signed
        assert app.proc is not None and app.proc.wait(timeout=60) == 0
    copy = pull(ceph, auditor, url, tmp_path / "pulled")
    assert (copy / "entries.log").read_bytes() == (app.ledger / "entries.log").read_bytes()
    notes, _ = read_history(app.ledger)
    assert (copy / "checkpoint").read_text() == notes[-1]
    assert "appliance.stop" in (copy / "entries.log").read_bytes().decode(errors="replace")
    assert "final ship: the bucket holds the ledger" in app.log_text()
    if workers > 1:  # shipped after the last worker had stopped
        stopped = [e for e in app.entries() if e["type"] == "proxy.worker.stopped"]
        assert len(stopped) == workers


@pytest.fixture
def gateway_back(ceph: CephS3) -> Iterator[None]:
    """Whatever a test does to the gateway, it is up again afterwards."""
    try:
        yield
    finally:
        if "rgw" not in ceph._procs:
            ceph.start_gateway()


def test_storage_down_mid_run_sessions_go_on_and_everything_ships_after(
    lab: Lab,
    pg: PgServer,
    ceph: CephS3,
    s3_endpoint: str,
    auditor: tuple[str, str],
    creds_file: Path,
    tmp_path: Path,
    gateway_back: None,
    url: str,
) -> None:
    with shipping(lab, pg, tmp_path / "app", 6603, url, s3_endpoint, creds_file) as app:
        wait_shipped(app.ledger)
        ceph.stop_gateway()
        for i in range(3):
            r = psql(lab, 6603, f"while-down-{i}", f"select {i}")
            assert r.returncode == 0, r.stderr
        app.session_by_app("while-down-2")
        down = wait_status(app, lambda s: s["state"] == "retrying" and s["backlog"] > 0)
        assert "Could not connect" in down["last_error"] or "connect" in down["last_error"].lower()
        shown = subprocess.run(
            [APPLIANCE, "status", "--config", str(app.config)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert shown.returncode == 0 and "retrying" in shown.stdout and "backlog" in shown.stdout
        ceph.start_gateway()
        back = wait_status(app, lambda s: s["state"] == "ok" and s["backlog"] == 0, timeout=60)
        assert back["shipped_size"] == back["local_size"]
        entries = app.wait_for(lambda es: any(e["type"] == "ledger.ship_resumed" for e in es))
        types = [e["type"] for e in entries]
        assert types.index("ledger.ship_stalled") < types.index("ledger.ship_resumed")
    ns, endpoint = auditor
    verified = cli(
        ns, ceph.root, "ledger", "verify", "--source", url, "--endpoint-url", endpoint,
        "--vkey", str(app.vkey), "--cache", str(tmp_path / "cache"),
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    copy = tmp_path / "cache" / "lab.test%2Fledger"
    assert (copy / "entries.log").read_bytes() == (app.ledger / "entries.log").read_bytes()
    for i in range(3):
        assert f"select {i}".encode() in (copy / "entries.log").read_bytes()


def test_storage_down_with_on_backlog_refuse_fails_closed_until_it_drains(
    lab: Lab,
    pg: PgServer,
    ceph: CephS3,
    s3_endpoint: str,
    creds_file: Path,
    tmp_path: Path,
    gateway_back: None,
    url: str,
) -> None:
    with shipping(
        lab, pg, tmp_path / "app", 6604, url, s3_endpoint, creds_file,
        backlog_limit=5, on_backlog="refuse",
    ) as app:  # fmt: skip
        wait_shipped(app.ledger)
        ceph.stop_gateway()
        r = psql(lab, 6604, "before-limit")  # its entries push the backlog over the limit
        assert r.returncode == 0, r.stderr
        wait_status(app, lambda s: s["refusing"])
        refused = psql(lab, 6604, "over-limit")
        assert refused.returncode != 0
        assert "cannot record this session" in refused.stderr
        # refused before anything reached the target: the session's only record is its end
        ends = app.wait_for(
            lambda es: any("on_backlog: refuse" in str(e["data"].get("reason")) for e in es)
        )
        (end,) = [e for e in ends if "on_backlog: refuse" in str(e["data"].get("reason"))]
        assert end["type"] == "session.end" and end["data"]["statements"] == 0
        assert [e["type"] for e in ends if e["session"] == end["session"]] == ["session.end"]
        ceph.start_gateway()
        wait_status(app, lambda s: not s["refusing"] and s["backlog"] == 0, timeout=60)
        r = psql(lab, 6604, "drained", "select 'open again'")
        assert r.returncode == 0 and "open again" in r.stdout, r.stderr
        entries = app.wait_for(
            lambda es: (
                [e["data"]["state"] for e in es if e["type"] == "ledger.ship_backlog"]
                == ["refusing", "serving"]
            )
        )
        assert [e["type"] for e in entries].count("ledger.ship_stalled") == 1
