"""Verification from the bucket: every kind of tampering with the bucket's copy is found.

moto keeps versions and delete markers as S3 does (it enforces no retention: what a lock
prevents is tested against radosgw). Each test ships a ledger, tampers with the bucket as
whoever can write to it could, and runs the real CLI (``ledger verify --source``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.bucket import Bucket
from appliance.ledger.checkpoint import Checkpoint, sign_checkpoint
from appliance.ledger.fleet import Shipper, layout
from appliance.ledger.merkle import CompactRange
from appliance.ledger.store import read_history, unverified_checkpoint
from tests.unit.fleet.conftest import (
    BUCKET,
    KEY,
    LOG,
    URL,
    VKEY,
    grow,
    make_ledger,
    open_writer,
    versions,
    write_session,
)
from tests.unit.ledger.cli_helper import run_cli
from tests.unit.ledger.conftest import ORIGIN, OTHER_KEY


@pytest.fixture
def shipped(tmp_path: Path, s3: Any, bucket: Bucket) -> Path:
    d = make_ledger(tmp_path / "ledger", sessions=2)
    Shipper(d, bucket).ship()
    return d


def verify(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, *extra: str, vkey: str = VKEY
) -> tuple[int, str]:
    return run_cli(
        capsys, "ledger", "verify", "--source", URL, "--vkey", vkey,
        "--cache", str(tmp_path / "cache"), *extra,
    )  # fmt: skip


def key_of(s3: Any, kind: str, index: int = 0) -> str:
    found = sorted(k for k in versions(s3) if k[len(LOG) :].startswith(kind))
    return found[index]


def purge(s3: Any, key: str) -> None:
    for v in versions(s3, key)[key]:
        s3.delete_object(Bucket=BUCKET, Key=key, VersionId=v["VersionId"])


def test_an_intact_bucket_verifies(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shipped: Path
) -> None:
    code, out = verify(capsys, tmp_path)
    assert code == 0, out
    assert "log test.example/ledger: 17 entries, 5 checkpoints, 4 blobs, size 17" in out
    assert out.rstrip().endswith("VERIFIED")


def test_a_delete_marker_is_found(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shipped: Path, s3: Any
) -> None:
    key = key_of(s3, "entries/")
    s3.delete_object(Bucket=BUCKET, Key=key)
    code, out = verify(capsys, tmp_path)
    assert code == 1, out
    assert f"{key[len(LOG) :]} was deleted (1 delete marker(s)" in out
    assert "its first version is still readable" in out


def test_an_overwrite_is_found_and_the_first_version_is_verified(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shipped: Path, s3: Any
) -> None:
    key = key_of(s3, "entries/")
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=key, Body=body.replace(b"SELECT 1", b"SELECT 7"))
    code, out = verify(capsys, tmp_path)
    assert code == 1, out
    assert "was overwritten: 2 versions with different content" in out
    assert "do not hash" not in out  # the first version is intact


def test_the_same_content_written_twice_is_only_a_warning(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shipped: Path, s3: Any
) -> None:
    key = key_of(s3, "blobs/")
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)  # what radosgw does with a retried put
    code, out = verify(capsys, tmp_path)
    assert code == 0, out
    assert "was written 2 times with the same content" in out


@pytest.mark.parametrize(
    ("kind", "index", "expected"),
    [
        ("checkpoints/", 2, "checkpoints #2 are missing (removed from the bucket)"),
        ("entries/", 0, "checkpoint #0 claims 4 entries but entries.log holds only 0"),
        ("blobs/", 1, "missing from the blob store"),
        ("vkey", 0, "vkey is missing"),
    ],
)
def test_a_removed_object_is_found(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    shipped: Path,
    s3: Any,
    kind: str,
    index: int,
    expected: str,
) -> None:
    purge(s3, key_of(s3, kind, index))
    code, out = verify(capsys, tmp_path)
    assert code == 1, out
    assert expected in out


def test_a_removed_middle_bundle_is_found(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, s3: Any, bucket: Bucket
) -> None:
    d = make_ledger(tmp_path / "ledger", sessions=1)
    Shipper(d, bucket).ship()
    grow(d, "s7")
    Shipper(d, bucket).ship()
    grow(d, "s8")
    Shipper(d, bucket).ship()
    purge(s3, key_of(s3, "entries/", 1))
    code, out = verify(capsys, tmp_path)
    assert code == 1, out
    assert "entries 9..16 are in no bundle (removed from the bucket)" in out


def forked_note(directory: Path, size: int, key: Any = KEY) -> str:
    """A validly signed checkpoint of another history: the first ``size`` leaves replaced."""
    cr = CompactRange()
    for i in range(size):
        cr.append(bytes([i % 256]) * 32)
    return sign_checkpoint(Checkpoint(ORIGIN, size, cr.root()), key)


def test_a_forked_checkpoint_is_found(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shipped: Path, s3: Any
) -> None:
    notes, _ = read_history(shipped)
    fork = forked_note(shipped, unverified_checkpoint(notes[-1]).size)
    key = LOG + layout.checkpoint_key(len(notes))
    s3.put_object(Bucket=BUCKET, Key=key, Body=fork.encode())
    code, out = verify(capsys, tmp_path)
    assert code == 1, out
    assert "fork:" in out and "sign different roots for tree size 17" in out


def test_a_forked_version_of_a_checkpoint_key_is_found(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shipped: Path, s3: Any
) -> None:
    key = LOG + layout.checkpoint_key(1)
    s3.put_object(Bucket=BUCKET, Key=key, Body=forked_note(shipped, 8).encode())
    code, out = verify(capsys, tmp_path)
    assert code == 1, out
    assert "overwritten" in out
    assert "bucket checkpoint #1 (version" in out and "sign different roots for tree size 8" in out


def test_a_checkpoint_by_another_key_is_found(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shipped: Path, s3: Any
) -> None:
    notes, _ = read_history(shipped)
    fake = forked_note(shipped, 3, key=OTHER_KEY)
    s3.put_object(Bucket=BUCKET, Key=LOG + layout.checkpoint_key(len(notes)), Body=fake.encode())
    code, out = verify(capsys, tmp_path)
    assert code == 1, out
    assert "is not signed by the given key" in out


def test_the_wrong_key_cannot_verify(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shipped: Path
) -> None:
    code, out = verify(capsys, tmp_path, vkey=OTHER_KEY.verifier().to_vkey())
    assert code == 1, out
    assert "vkey names the key" in out and "none of the given keys" in out


def test_state_refuses_a_rollback_that_is_otherwise_self_consistent(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, s3: Any, bucket: Bucket
) -> None:
    d = make_ledger(tmp_path / "ledger", sessions=1)
    Shipper(d, bucket).ship()
    before = set(versions(s3))
    grow(d, "s5")
    Shipper(d, bucket).ship()
    state = str(tmp_path / "state")
    code, out = verify(capsys, tmp_path, "--state", state)
    assert code == 0, out
    pins = list(Path(state).glob("*.checkpoint"))
    assert [p.name for p in pins] == ["test.example%2Fledger.checkpoint"]
    # roll the prefix back: everything shipped after the first round is removed for good
    for key in set(versions(s3)) - before:
        purge(s3, key)
    code, out = verify(capsys, tmp_path / "fresh")
    assert code == 0, out  # without memory, the older state verifies: it is self-consistent
    code, out = verify(capsys, tmp_path, "--state", state)
    assert code == 1, out
    assert (
        "rolled back: the bucket's newest checkpoint has size 9, but --state verified size 17"
        in out
    )


def test_state_refuses_a_log_that_is_gone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shipped: Path, s3: Any, bucket: Bucket
) -> None:
    other = tmp_path / "other"
    with open_writer(other, origin="test.example/other", checkpoint_entries=4) as w:
        write_session(w, "o1")
    Shipper(other, bucket).ship()
    state = str(tmp_path / "state")
    assert verify(capsys, tmp_path, "--state", state)[0] == 0
    for key in versions(s3, "fleet/logs/test.example%2Fother/"):
        purge(s3, key)
    code, out = verify(capsys, tmp_path, "--state", state)
    assert code == 1, out
    assert "log test.example/other" in out and "the log is gone from the bucket" in out
