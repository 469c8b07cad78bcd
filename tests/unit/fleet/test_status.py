"""``appliance status``: the ledger's signed size and what the bucket holds, from the files
the daemon leaves (no daemon needed to answer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from appliance.bucket import Bucket, BucketSettings, parse_bucket_url
from appliance.config import ShipConfig
from appliance.ledger.fleet import Shipper
from appliance.ledger.fleet.runner import ShipRunner
from tests.unit.fleet.conftest import URL, make_ledger
from tests.unit.ledger.cli_helper import run_cli


def config(tmp_path: Path, ledger: Path, ship: bool = True) -> Path:
    path = tmp_path / "config.yaml"
    text = (
        "targets:\n  - {name: db, protocol: postgres, addresses: [10.0.0.5:5432], "
        "accounts: [{name: a, user: u, secret: {file: /s}}]}\n"
        f"ledger:\n  dir: {ledger}\n  origin: test.example/ledger\n"
    )
    if ship:
        text += f"  ship: {{to: {URL}, backlog_limit: 3, on_backlog: refuse}}\n"
    path.write_text(text)
    return path


def test_status_shows_the_shipping(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, s3: Any
) -> None:
    d = make_ledger(tmp_path / "ledger", sessions=1)
    cfg = config(tmp_path, d)
    code, out = run_cli(capsys, "status", "--config", str(cfg))
    assert code == 0 and "no status yet (is the daemon running?)" in out
    settings = BucketSettings(parse_bucket_url(URL))
    ship = ShipConfig(bucket=settings, backlog_limit=3, on_backlog="refuse")
    ShipRunner(Shipper(d, Bucket(settings)), ship, record=lambda t, data: None).round()
    code, out = run_cli(capsys, "status", "--config", str(cfg))
    assert code == 0, out
    assert "signed size 9" in out and "shipping to s3://evidence/fleet: ok" in out
    assert "bucket holds 3 checkpoints up to size 9" in out and "backlog 0 entries" in out
    code, out = run_cli(capsys, "status", "--config", str(cfg), "--format", "json")
    status = json.loads(out)
    assert status["ship"]["shipped_size"] == 9 and status["ship"]["lag_s"] is None
    code, out = run_cli(capsys, "status", "--config", str(config(tmp_path, d, ship=False)))
    assert "shipping: not configured" in out
