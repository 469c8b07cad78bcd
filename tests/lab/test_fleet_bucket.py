"""The bucket as WORM evidence, against a real radosgw (issue 15): what Object Lock prevents,
what verification from the bucket finds, and the least-privilege policy for runners.

moto, used by the unit tests, enforces no retention; every WORM claim is tested here.
Ledgers are made in the test process and shipped with the real shipper; ``ledger verify
--source`` runs from a namespace that reaches only the S3 server (the auditor's machine).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from appliance.ledger.checkpoint import Checkpoint, sign_checkpoint
from appliance.ledger.fleet import layout
from appliance.ledger.merkle import CompactRange
from appliance.ledger.store import read_history, unverified_checkpoint
from tests.lab.ceph import CephS3
from tests.lab.fleet import bucket_name, cli, ship_local
from tests.lab.proxy import APPLIANCE
from tests.unit.ledger.conftest import KEY, ORIGIN, open_writer, write_session

LOG = "fleet/logs/test.example%2Fledger/"
VKEY = KEY.verifier().to_vkey()


@pytest.fixture(scope="module")
def auditor(ceph: CephS3) -> tuple[str, str]:
    return ceph.client_namespace("audit2")


@pytest.fixture(scope="module")
def locked(ceph: CephS3) -> str:
    name = bucket_name("worm")
    ceph.create_bucket(name)
    return name


@pytest.fixture(scope="module")
def unlocked(ceph: CephS3) -> str:
    """Versioned but without Object Lock: what a bucket's administrator can rewrite."""
    name = bucket_name("plain")
    ceph.create_bucket(name, object_lock=False)
    return name


def make_ledger(directory: Path, sessions: int = 2, start: int = 0) -> Path:
    with open_writer(directory, checkpoint_entries=4, checkpoint_interval=3600) as w:
        for i in range(start, start + sessions):
            write_session(w, f"s{i}")
    return directory


def shipped(ceph: CephS3, tmp_path: Path, bucket: str, **kw: Any) -> tuple[Path, str]:
    url = f"s3://{bucket}/{tmp_path.name}/fleet"
    d = make_ledger(tmp_path / "ledger")
    ship_local(ceph, d, url, **kw)
    return d, url


def verify(
    ceph: CephS3, auditor: tuple[str, str], tmp_path: Path, url: str, *extra: str
) -> tuple[int, str]:
    ns, endpoint = auditor
    r = cli(
        ns, ceph.root, "ledger", "verify", "--source", url, "--endpoint-url", endpoint,
        "--vkey", VKEY, "--cache", str(tmp_path / "cache"), *extra,
    )  # fmt: skip
    return r.returncode, r.stdout + r.stderr


def keys(ceph: CephS3, bucket: str, prefix: str) -> list[dict[str, Any]]:
    return ceph.all_versions(bucket, prefix)


def key_of(ceph: CephS3, bucket: str, url: str, kind: str, index: int = 0) -> str:
    prefix = url.split("/", 3)[3] + "/logs/test.example%2Fledger/" + kind
    return sorted({v["Key"] for v in keys(ceph, bucket, prefix)})[index]


def test_radosgw_differs_from_aws_as_the_design_expects(ceph: CephS3, unlocked: str) -> None:
    s3 = ceph.admin()
    # If-None-Match: * on a versioned bucket writes a second version...
    s3.put_object(Bucket=unlocked, Key="inm", Body=b"1", IfNoneMatch="*")
    s3.put_object(Bucket=unlocked, Key="inm", Body=b"2", IfNoneMatch="*")
    assert len([v for v in ceph.all_versions(unlocked, "inm") if v["Key"] == "inm"]) == 2
    # ...and is refused (412) only on an unversioned bucket
    plain = bucket_name("noversions")
    ceph.create_bucket(plain, object_lock=False, versioning=False)
    s3.put_object(Bucket=plain, Key="inm", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=plain, Key="inm", Body=b"2", IfNoneMatch="*")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    # a wrong SHA-256 checksum is accepted (and not stored); a wrong Content-MD5 is not
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    s3.put_object(Bucket=unlocked, Key="sha", Body=b"data", ChecksumSHA256=wrong)
    head = s3.head_object(Bucket=unlocked, Key="sha", ChecksumMode="ENABLED")
    assert "ChecksumSHA256" not in head
    bad_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as digest:
        s3.put_object(Bucket=unlocked, Key="md5", Body=b"data", ContentMD5=bad_md5)
    assert digest.value.response["Error"]["Code"] == "BadDigest"


def test_locked_objects_cannot_be_deleted_or_their_retention_shortened(
    ceph: CephS3, locked: str, auditor: tuple[str, str], tmp_path: Path
) -> None:
    _, url = shipped(ceph, tmp_path, locked, lock=("COMPLIANCE", 2))
    key = key_of(ceph, locked, url, "checkpoints/")
    (version,) = keys(ceph, locked, key)
    s3 = ceph.admin()
    retention = s3.get_object_retention(Bucket=locked, Key=key, VersionId=version["VersionId"])
    assert retention["Retention"]["Mode"] == "COMPLIANCE"
    with pytest.raises(ClientError) as denied:
        s3.delete_object(Bucket=locked, Key=key, VersionId=version["VersionId"])
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError) as shorter:
        s3.put_object_retention(
            Bucket=locked, Key=key, VersionId=version["VersionId"],
            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": CephS3.retain_until(1)},
        )  # fmt: skip
    assert shorter.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError):
        s3.put_object_retention(
            Bucket=locked, Key=key, VersionId=version["VersionId"],
            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": CephS3.retain_until(3)},
        )  # fmt: skip
    # deleting without a version id only adds a delete marker: the evidence stays...
    s3.delete_object(Bucket=locked, Key=key)
    assert s3.get_object(Bucket=locked, Key=key, VersionId=version["VersionId"])["Body"].read()
    # ...and verification from the bucket reports the attempt
    code, out = verify(ceph, auditor, tmp_path, url)
    assert code == 1, out
    assert "checkpoints/00000000000000000000 was deleted (1 delete marker(s)" in out


def test_an_overwrite_is_found(
    ceph: CephS3, locked: str, auditor: tuple[str, str], tmp_path: Path
) -> None:
    _, url = shipped(ceph, tmp_path, locked, lock=("COMPLIANCE", 1))
    assert verify(ceph, auditor, tmp_path, url)[0] == 0
    key = key_of(ceph, locked, url, "entries/")
    s3 = ceph.admin()
    body = s3.get_object(Bucket=locked, Key=key)["Body"].read()
    s3.put_object(
        Bucket=locked, Key=key, Body=body.replace(b"SELECT 1", b"SELECT 6"), IfNoneMatch="*"
    )
    code, out = verify(ceph, auditor, tmp_path, url)
    assert code == 1, out
    assert "was overwritten: 2 versions with different content" in out


@pytest.mark.parametrize(
    ("kind", "index", "expected"),
    [
        ("checkpoints/", 1, "checkpoints #1 are missing (removed from the bucket)"),
        ("entries/", 0, "checkpoint #0 claims 4 entries but entries.log holds only 0"),
        ("blobs/", 2, "missing from the blob store"),
    ],
)
def test_a_removed_object_is_found(
    ceph: CephS3,
    unlocked: str,
    auditor: tuple[str, str],
    tmp_path: Path,
    kind: str,
    index: int,
    expected: str,
) -> None:
    _, url = shipped(ceph, tmp_path, unlocked)
    ceph.purge(unlocked, key_of(ceph, unlocked, url, kind, index))
    code, out = verify(ceph, auditor, tmp_path, url)
    assert code == 1, out
    assert expected in out


def test_a_forked_checkpoint_is_found(
    ceph: CephS3, locked: str, auditor: tuple[str, str], tmp_path: Path
) -> None:
    d, url = shipped(ceph, tmp_path, locked)
    notes, _ = read_history(d)
    size = unverified_checkpoint(notes[-1]).size
    cr = CompactRange()
    for i in range(size):
        cr.append(hashlib.sha256(b"another history %d" % i).digest())
    fork = sign_checkpoint(Checkpoint(ORIGIN, size, cr.root()), KEY)  # by the log's own key
    prefix = url.split("/", 3)[3]
    ceph.admin().put_object(
        Bucket=locked, Key=f"{prefix}/logs/test.example%2Fledger/" + layout.checkpoint_key(len(notes)),
        Body=fork.encode(),
    )  # fmt: skip
    code, out = verify(ceph, auditor, tmp_path, url)
    assert code == 1, out
    assert f"sign different roots for tree size {size}" in out


def test_a_rollback_is_refused_once_state_has_seen_the_newer_log(
    ceph: CephS3, unlocked: str, auditor: tuple[str, str], tmp_path: Path
) -> None:
    url = f"s3://{unlocked}/{tmp_path.name}/fleet"
    d = make_ledger(tmp_path / "ledger", sessions=1)
    ship_local(ceph, d, url)
    prefix = url.split("/", 3)[3]
    old = {v["Key"] for v in ceph.all_versions(unlocked, prefix)}
    make_ledger(d, sessions=1, start=5)  # the runner goes on
    ship_local(ceph, d, url)
    state = str(tmp_path / "state")
    code, out = verify(ceph, auditor, tmp_path, url, "--state", state)
    assert code == 0, out
    for key in {v["Key"] for v in ceph.all_versions(unlocked, prefix)} - old:
        ceph.purge(unlocked, key)  # the prefix rolled back to its older, consistent state
    code, out = verify(ceph, auditor, tmp_path, url)
    assert code == 0, out  # nothing in the bucket can tell
    code, out = verify(ceph, auditor, tmp_path, url, "--state", state)
    assert code == 1, out
    assert (
        "rolled back: the bucket's newest checkpoint has size 9, but --state verified size 17"
        in out
    )


def test_runners_least_privilege_policy(ceph: CephS3, tmp_path: Path) -> None:
    bucket = bucket_name("policy")
    ceph.create_bucket(bucket, default_retention=("COMPLIANCE", 1))
    runner = ceph.add_user(bucket + "-runner")
    approver = ceph.add_user(bucket + "-approver")
    printed = subprocess.run(
        [APPLIANCE, "bucket-policy", f"s3://{bucket}/fleet", "--runner", runner.arn,
         "--approver", approver.arn],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    policy = json.loads(printed.stdout)
    s3 = ceph.admin()
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    r = ceph.admin(runner)
    log = "fleet/logs/r1/"
    r.put_object(Bucket=bucket, Key=log + "vkey", Body=b"k\n")
    assert r.get_object(Bucket=bucket, Key=log + "vkey")["Body"].read() == b"k\n"
    r.list_objects_v2(Bucket=bucket, Prefix="fleet/logs/")
    r.put_object(Bucket=bucket, Key="fleet/approvals/2026-12-06/abcdef0123/request", Body=b"r")
    (version,) = ceph.all_versions(bucket, log + "vkey")
    held = r.head_object(Bucket=bucket, Key=log + "vkey")
    assert held["ObjectLockMode"] == "COMPLIANCE"  # the bucket's default retention
    for denied in (
        lambda: r.delete_object(Bucket=bucket, Key=log + "vkey"),
        lambda: r.delete_object(Bucket=bucket, Key=log + "vkey", VersionId=version["VersionId"]),
        lambda: r.put_object_retention(
            Bucket=bucket,
            Key=log + "vkey",
            VersionId=version["VersionId"],
            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": CephS3.retain_until(1)},
        ),
        lambda: r.put_object(Bucket=bucket, Key="elsewhere/x", Body=b"x"),
        lambda: r.put_object(
            Bucket=bucket, Key="fleet/approvals/2026-12-06/abcdef0123/decision.00", Body=b"d"
        ),
        lambda: r.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy)),
        lambda: r.put_object_lock_configuration(
            Bucket=bucket, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"}
        ),
    ):
        with pytest.raises(ClientError) as err:
            denied()
        assert err.value.response["Error"]["Code"] == "AccessDenied"
    a = ceph.admin(approver)
    a.get_object(Bucket=bucket, Key="fleet/approvals/2026-12-06/abcdef0123/request")
    a.put_object(Bucket=bucket, Key="fleet/approvals/2026-12-06/abcdef0123/decision.00", Body=b"d")
    for denied in (
        lambda: a.put_object(
            Bucket=bucket, Key="fleet/approvals/2026-12-06/abcdef0123/request", Body=b"x"
        ),
        lambda: a.put_object(
            Bucket=bucket, Key=log + "checkpoints/00000000000000000009", Body=b"x"
        ),
        lambda: a.delete_object(
            Bucket=bucket, Key="fleet/approvals/2026-12-06/abcdef0123/decision.00"
        ),
    ):
        with pytest.raises(ClientError) as err:
            denied()
        assert err.value.response["Error"]["Code"] == "AccessDenied"
