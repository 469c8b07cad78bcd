"""Shipping the ledger to a real S3 server (Ceph's radosgw) while the appliance runs (issue 15).

The appliance runs in the lab's runner namespace with ``ledger.ship`` pointing at radosgw
(linked to the runner); the auditor runs the CLI from a namespace that reaches only the S3
server. Round trip (ship while running, verify from the bucket, pull and verify locally),
storage down mid-run (serve, and fail closed), and SIGTERM right after a session.
"""

from __future__ import annotations

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
) -> None:
    bucket = bucket_name("roundtrip")
    ceph.create_bucket(bucket)
    url = f"s3://{bucket}/fleet"
    ns, endpoint = auditor
    with running_appliance(
        lab, pg, tmp_path / "app", targets=[TargetSpec("db", 6601)],
        ledger_options=ship_options(url, s3_endpoint, creds_file),
    ) as app:  # fmt: skip
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
        head = ceph.admin().head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] > CephS3.retain_until(0)
        shown = cli(
            ns, ceph.root, "ledger", "show", "--source", url, "--endpoint-url", endpoint,
            "--cache", str(tmp_path / "cache"), session[0]["session"],
        )  # fmt: skip
        assert shown.returncode == 0 and "select 40 + 2" in shown.stdout, shown.stderr
    pulled = cli(
        ns, ceph.root, "ledger", "pull", "--source", url, "--endpoint-url", endpoint,
        "--to", str(tmp_path / "pulled"),
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    copy = tmp_path / "pulled" / "lab.test%2Fledger"
    local = subprocess.run(
        [APPLIANCE, "ledger", "verify", "--ledger", str(copy), "--vkey", str(app.vkey)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert local.returncode == 0, local.stdout + local.stderr
    # the final ship on stop: the bucket's copy is the ledger, byte for byte
    assert (copy / "entries.log").read_bytes() == (app.ledger / "entries.log").read_bytes()


def test_sigterm_right_after_a_session_leaves_everything_in_the_bucket(
    lab: Lab,
    pg: PgServer,
    ceph: CephS3,
    s3_endpoint: str,
    auditor: tuple[str, str],
    creds_file: Path,
    tmp_path: Path,
) -> None:
    bucket = bucket_name("sigterm")
    ceph.create_bucket(bucket)
    url = f"s3://{bucket}/fleet"
    with running_appliance(
        lab, pg, tmp_path / "app", targets=[TargetSpec("db", 6602)],
        ledger_options=ship_options(url, s3_endpoint, creds_file),
    ) as app:  # fmt: skip
        assert psql(lab, 6602, "last-words", "select 'bye'").returncode == 0
        app.session_by_app("last-words")
        app.signal(signal.SIGTERM)  # at once: the session's entries are barely signed
        assert app.stop() == 0
    ns, endpoint = auditor
    pulled = cli(
        ns, ceph.root, "ledger", "pull", "--source", url, "--endpoint-url", endpoint,
        "--to", str(tmp_path / "pulled"),
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    copy = tmp_path / "pulled" / "lab.test%2Fledger"
    assert (copy / "entries.log").read_bytes() == (app.ledger / "entries.log").read_bytes()
    notes, _ = read_history(app.ledger)
    assert (copy / "checkpoint").read_text() == notes[-1]
    assert "appliance.stop" in (copy / "entries.log").read_bytes().decode(errors="replace")
    assert "final ship: the bucket holds the ledger" in app.log_text()


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
) -> None:
    bucket = bucket_name("down")
    ceph.create_bucket(bucket)
    url = f"s3://{bucket}/fleet"
    with running_appliance(
        lab, pg, tmp_path / "app", targets=[TargetSpec("db", 6603)],
        ledger_options=ship_options(url, s3_endpoint, creds_file),
    ) as app:  # fmt: skip
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
) -> None:
    bucket = bucket_name("refuse")
    ceph.create_bucket(bucket)
    url = f"s3://{bucket}/fleet"
    opts = ship_options(url, s3_endpoint, creds_file, backlog_limit=5, on_backlog="refuse")
    with running_appliance(
        lab, pg, tmp_path / "app", targets=[TargetSpec("db", 6604)], ledger_options=opts
    ) as app:
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
