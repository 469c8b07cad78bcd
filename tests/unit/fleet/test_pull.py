"""Pulling logs from the bucket: an ordinary ledger directory per log, incrementally; and
the fleet-wide query, show and replay over the pulled logs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.bucket import Bucket
from appliance.ledger.fleet import Shipper, list_logs, pull_log, take_inventory
from appliance.ledger.verify import verify_ledger
from tests.unit.fleet.conftest import (
    BUCKET,
    KEY,
    LOG,
    URL,
    grow,
    make_ledger,
    open_writer,
    versions,
    write_session,
)
from tests.unit.ledger.cli_helper import run_cli


def pull(bucket: Bucket, cache: Path) -> Any:
    (log,) = list_logs(bucket)
    return pull_log(bucket, take_inventory(bucket, log), cache)


def test_a_pulled_log_is_the_ledger_byte_for_byte(tmp_path: Path, bucket: Bucket) -> None:
    d = make_ledger(tmp_path / "ledger")
    Shipper(d, bucket).ship()
    got = pull(bucket, tmp_path / "cache")
    assert (got.entries, got.added_blobs) == (17, 4)
    for name in ("entries.log", "checkpoints.log", "checkpoint"):
        assert (got.directory / name).read_bytes() == (d / name).read_bytes(), name
    assert sorted(p.name for p in (got.directory / "blobs").rglob("*") if p.is_file()) == sorted(
        p.name for p in (d / "blobs").rglob("*") if p.is_file() and p.parent.name != "tmp"
    )
    assert verify_ledger(got.directory, [KEY.verifier()]).ok


def test_pulls_are_incremental(tmp_path: Path, s3: Any, bucket: Bucket) -> None:
    d = make_ledger(tmp_path / "ledger", sessions=1)
    Shipper(d, bucket).ship()
    cache = tmp_path / "cache"
    first = pull(bucket, cache)
    assert (first.added_entries, first.added_checkpoints) == (9, 3)
    assert pull(bucket, cache).added_entries == 0
    grow(d, "s5")
    Shipper(d, bucket).ship()
    again = pull(bucket, cache)
    assert (again.added_entries, again.rebuilt) == (8, False)
    assert (again.directory / "entries.log").read_bytes() == (d / "entries.log").read_bytes()
    # a pull cut short (more bytes than the manifest) is cut back to what it says
    with (again.directory / "entries.log").open("ab") as f:
        f.write(b"partial")
    assert pull(bucket, cache).added_entries == 0
    assert (again.directory / "entries.log").read_bytes() == (d / "entries.log").read_bytes()


def test_a_changed_first_version_rebuilds_the_copy(tmp_path: Path, s3: Any, bucket: Bucket) -> None:
    d = make_ledger(tmp_path / "ledger", sessions=1)
    Shipper(d, bucket).ship()
    cache = tmp_path / "cache"
    pull(bucket, cache)
    key = next(k for k in versions(s3) if "/entries/" in k)
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    for v in versions(s3, key)[key]:  # an unlocked bucket: its admin replaces the bundle
        s3.delete_object(Bucket=BUCKET, Key=key, VersionId=v["VersionId"])
    s3.put_object(Bucket=BUCKET, Key=key, Body=body.replace(b"SELECT 1", b"SELECT 9"))
    again = pull(bucket, cache)
    assert again.rebuilt
    assert b"SELECT 9" in (again.directory / "entries.log").read_bytes()
    assert not verify_ledger(again.directory, [KEY.verifier()]).ok


def fleet(tmp_path: Path, bucket: Bucket, n: int = 3) -> list[Path]:
    dirs = []
    for i in range(n):
        d = tmp_path / f"runner{i}"
        with open_writer(d, origin=f"ci.example/runner-{i}", checkpoint_entries=4) as w:
            write_session(w, f"sess-{i}-abc")
        Shipper(d, bucket).ship()
        dirs.append(d)
    return dirs


def test_query_show_and_replay_across_the_fleet(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bucket: Bucket, s3: Any
) -> None:
    fleet(tmp_path, bucket)
    src = ["--source", URL, "--cache", str(tmp_path / "cache")]
    code, out = run_cli(capsys, "ledger", "query", *src, "--type", "session.start")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("ORIGIN")
    assert [line.split()[0] for line in lines[1:]] == [f"ci.example/runner-{i}" for i in range(3)]
    code, out = run_cli(capsys, "ledger", "query", *src, "--origin", "*-1", "--format", "json")
    assert code == 0 and '"origin":"ci.example/runner-1"' in out and "runner-0" not in out
    code, out = run_cli(capsys, "ledger", "show", *src, "sess-2")
    assert code == 0, out
    assert "session sess-2-abc" in out
    code, out = run_cli(capsys, "ledger", "replay", *src, "sess-1-abc")
    assert code == 0 and "SELECT 1" in out
    code, out = run_cli(capsys, "ledger", "show", *src, "sess-")
    assert code == 2 and "beginning of several sessions" in out
    out_file = tmp_path / "s.jsonl"
    code, out = run_cli(
        capsys, "ledger", "export", *src, "--session", "sess-0", "--out", str(out_file)
    )
    assert code == 0, out
    code, out = run_cli(
        capsys, "ledger", "verify-bundle", str(out_file), "--vkey", KEY.verifier().to_vkey()
    )
    assert code == 0, out
    # --offline reads the cache as it is: nothing is asked of the bucket
    for v in versions(s3, "fleet/").values():
        for x in v:
            s3.delete_object(Bucket=BUCKET, Key=x["Key"], VersionId=x["VersionId"])
    code, out = run_cli(capsys, "ledger", "query", *src, "--offline", "--type", "session.end")
    assert code == 0 and len(out.splitlines()) == 4, out
    code, out = run_cli(capsys, "ledger", "query", *src, "--type", "session.end")
    assert code == 2 and "no logs under" in out


def test_pull_command(capsys: pytest.CaptureFixture[str], tmp_path: Path, bucket: Bucket) -> None:
    fleet(tmp_path, bucket, n=2)
    code, out = run_cli(capsys, "ledger", "pull", "--source", URL, "--to", str(tmp_path / "c"))
    assert code == 0, out
    assert "pulled 2 logs" in out
    code, out = run_cli(
        capsys, "ledger", "verify", "--ledger", str(tmp_path / "c" / "ci.example%2Frunner-1"),
        "--vkey", KEY.verifier().to_vkey(),
    )  # fmt: skip
    assert code == 0, out
    code, out = run_cli(capsys, "ledger", "query", "--source", URL, "--origin", "nope*")
    assert code == 2 and "no logs with origin 'nope*'" in out


def test_ship_command(capsys: pytest.CaptureFixture[str], tmp_path: Path, s3: Any) -> None:
    d = make_ledger(tmp_path / "ledger", sessions=1)
    code, out = run_cli(capsys, "ledger", "ship", "--ledger", str(d), "--to", URL)
    assert code == 0, out
    assert "shipped 3 checkpoints, 9 entries, 2 blobs" in out
    code, out = run_cli(capsys, "ledger", "ship", "--ledger", str(d), "--to", URL)
    assert code == 0 and "shipped 0 checkpoints" in out
    assert all(len(v) == 1 for v in versions(s3, LOG).values())
    code, out = run_cli(capsys, "ledger", "ship", "--ledger", str(d), "--to", "s3://Bad_Name")
    assert code == 2 and "invalid bucket name" in out
