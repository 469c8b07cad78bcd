"""Where ledger commands read from: the bucket options and the progress line."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from appliance.cli._source import BucketOptions, Progress, bucket_options


def test_bucket_options_become_one_parameter() -> None:
    seen: list[BucketOptions | None] = []

    @click.command()
    @bucket_options("--source", "where")
    def cmd(bucket: BucketOptions | None) -> None:
        seen.append(bucket)

    runner = CliRunner()
    assert runner.invoke(cmd, []).exit_code == 0
    r = runner.invoke(cmd, ["--source", "s3://evidence/x", "--endpoint-url", "http://h:1"])
    assert r.exit_code == 0, r.output
    assert seen == [None, BucketOptions("s3://evidence/x", "http://h:1", "us-east-1", None)]


def test_the_default_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    b = BucketOptions("s3://evidence/fleet/eu", None, "us-east-1", None)
    assert b.default_cache() == tmp_path / "appliance" / "s3" / "evidence" / "fleet/eu"


def test_progress_lines(capsys: pytest.CaptureFixture[str]) -> None:
    quiet = Progress(None, "pulling")
    quiet(0, 50 << 20)
    assert capsys.readouterr().err == "pulling: 0% of 52.4 MB\n"  # large: on by default
    quiet(0, 50)  # small: silent
    p = Progress(True, "pulling")
    for done in range(0, 1001, 50):
        p(done, 1000)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "pulling: 0% of 0.0 MB" and err[-1] == "pulling: 100% of 0.0 MB"
    assert len(err) == 11
