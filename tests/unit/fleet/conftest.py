"""Fixtures for the fleet's unit tests: an in-process S3 (moto) with one versioned,
Object-Lock-enabled bucket, and small ledgers to ship.

moto serves the S3 API (versions, delete markers, conditional puts) but enforces no
retention: every WORM claim is tested against radosgw in tests/lab/test_fleet_*.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from appliance.bucket import Bucket, BucketSettings, parse_bucket_url
from appliance.ledger import LedgerWriter
from tests.unit.ledger.conftest import KEY, ORIGIN, no_fsync, write_session
from tests.unit.ledger.conftest import open_writer as _open_writer


def open_writer(directory: Path, **kw: Any) -> LedgerWriter:
    """The ledger tests' writer, without the disk flushes (what is shipped is the point)."""
    kw.setdefault("fsync", no_fsync)
    return _open_writer(directory, **kw)


BUCKET = "evidence"
URL = f"s3://{BUCKET}/fleet"
VKEY = KEY.verifier().to_vkey()
LOG = "fleet/logs/test.example%2Fledger/"

__all__ = ["BUCKET", "KEY", "LOG", "ORIGIN", "URL", "VKEY", "open_writer", "write_session"]


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A raw boto3 client of the in-process S3, with the bucket created."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
        yield client


@pytest.fixture
def bucket(s3: Any) -> Bucket:
    return Bucket(BucketSettings(parse_bucket_url(URL)))


def make_ledger(directory: Path, sessions: int = 2) -> Path:
    """A closed ledger: sessions with result blobs, checkpoints every 4 entries."""
    with open_writer(directory, checkpoint_entries=4, checkpoint_interval=3600) as w:
        for i in range(sessions):
            write_session(w, f"s{i}")
    return directory


def grow(directory: Path, session: str) -> None:
    """Append one more session to a closed ledger (a writer reopened, as after a restart)."""
    w: LedgerWriter = open_writer(directory, checkpoint_entries=4, checkpoint_interval=3600)
    with w:
        write_session(w, session)


def versions(s3: Any, prefix: str = LOG) -> dict[str, list[dict[str, Any]]]:
    """Every version and delete marker by key, newest first."""
    out: dict[str, list[dict[str, Any]]] = {}
    page = s3.list_object_versions(Bucket=BUCKET, Prefix=prefix)
    for v in page.get("Versions", []):
        out.setdefault(v["Key"], []).append(v)
    for m in page.get("DeleteMarkers", []):
        out.setdefault(m["Key"], []).append({**m, "DeleteMarker": True})
    return out
