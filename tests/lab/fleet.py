"""Helpers for the fleet's lab tests: the appliance CLI run from a namespace that reaches only
the S3 server, buckets per test, and the ledger's shipping config for a lab appliance."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.lab.ceph import S3Credentials
from tests.lab.proxy import APPLIANCE


def bucket_name(what: str) -> str:
    return f"{what}-{secrets.token_hex(4)}"


def cli(
    netns: str, creds: S3Credentials, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``appliance ARGS`` run inside ``netns`` with ``creds`` as the AWS SDK's variables."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, APPLIANCE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", **creds.env()},
    )


def ship_options(
    url: str,
    endpoint: str,
    credentials: Path,
    *,
    lock: tuple[str, int] | None = ("COMPLIANCE", 1),
    **extra: Any,
) -> dict[str, Any]:
    """``ledger.ship`` of a lab appliance."""
    ship: dict[str, Any] = {
        "to": url,
        "endpoint_url": endpoint,
        "credentials": {"file": str(credentials)},
        **extra,
    }
    if lock is not None:
        ship["object_lock"] = {"mode": lock[0], "retain_days": lock[1]}
    return {"ship": ship}


def wait_shipped(
    ledger: Path, *, timeout: float = 30, size: int | None = None
) -> Mapping[str, Any]:
    """The ship status once the bucket holds everything signed locally (at least ``size``)."""
    import json

    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            status = json.loads((ledger / "ship.json").read_text())
        except (FileNotFoundError, ValueError):
            status = {}
        if (
            status.get("state") == "ok"
            and status.get("backlog") == 0
            and status.get("shipped_size", 0) >= (size or 1)
        ):
            return status
        time.sleep(0.1)
    raise AssertionError(f"not shipped within {timeout}s: {status}")


def ship_local(
    ceph: Any, directory: Path, url: str, *, lock: tuple[str, int] | None = None
) -> None:
    """Ship a ledger directory from the test process (inside the storage namespace)."""
    from appliance.bucket import Bucket, BucketSettings, Credentials, ObjectLock, parse_bucket_url
    from appliance.ledger.fleet import Shipper

    settings = BucketSettings(parse_bucket_url(url), endpoint_url="http://127.0.0.1:7480")
    creds = Credentials(ceph.root.access_key, ceph.root.secret_key)
    with ceph.inside():
        bucket = Bucket(settings, credentials=creds, attempts=1)
        Shipper(directory, bucket, lock=ObjectLock(*lock) if lock else None).ship()
