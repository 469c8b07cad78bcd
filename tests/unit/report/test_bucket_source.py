"""`appliance report --source s3://...`: the fleet's bucket as a source. Logs shipped by the
real shipper to an in-process S3 (moto) give the same facts as the local logs they came
from, named by their bucket names; a prefix without logs is a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.bucket import Bucket
from appliance.ledger.fleet import Shipper
from tests.ledgers import ledger_key, read_json, write_fleet
from tests.unit.fleet.conftest import URL, bucket, s3
from tests.unit.ledger.cli_helper import run_cli

__all__ = ["bucket", "s3"]  # fixtures


def test_a_report_from_the_bucket_matches_the_local_logs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bucket: Bucket, s3: Any
) -> None:
    logs = tmp_path / "logs"
    write_fleet(logs, boots=2, sessions=4, statements=2, unclean_last=False)
    keys: list[str] = []
    for b in range(2):
        Shipper(logs / f"runner-{b}" / "boot-1", bucket).ship()
        keys += ["--vkey", ledger_key(f"ci.example/runner-{b}/boot-1").verifier().to_vkey()]
    common = ["--no-progress", *keys]

    code, out = run_cli(capsys, "report", "--source", str(logs), "--out", str(tmp_path / "local"), *common)  # fmt: skip
    assert code == 0, out
    code, out = run_cli(
        capsys, "report", "--source", URL, "--cache", str(tmp_path / "cache"),
        "--out", str(tmp_path / "bucket"), *common,
    )  # fmt: skip
    assert code == 0, out
    assert "VERIFIED" in out and "2 logs" in out

    local = read_json(tmp_path / "local" / "report.json")
    remote = read_json(tmp_path / "bucket" / "report.json")
    assert remote["totals"] == local["totals"]
    names = sorted(log["name"] for log in remote["logs"])
    assert names == ["ci.example%2Frunner-0%2Fboot-1", "ci.example%2Frunner-1%2Fboot-1"]

    code, out = run_cli(
        capsys, "report", "--source", URL + "/nothing-here", "--cache", str(tmp_path / "c2"),
        "--out", str(tmp_path / "none"), *common,
    )  # fmt: skip
    assert code == 2 and "no logs under" in out
