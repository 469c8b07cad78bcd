"""The bucket layer: URLs, endpoints, credentials files, errors by whose fault, listings."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from appliance.bucket import (
    Bucket,
    BucketError,
    BucketURLError,
    ObjectMissing,
    check_endpoint_url,
    parse_bucket_url,
    parse_credentials,
)
from appliance.bucket._url import BucketURL
from appliance.bucket.policy import fleet_policy
from tests.unit.fleet.conftest import BUCKET


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("s3://evidence", BucketURL("evidence", "")),
        ("s3://evidence/", BucketURL("evidence", "")),
        ("s3://evidence/fleet/eu/", BucketURL("evidence", "fleet/eu")),
        ("s3://a.b-c/x", BucketURL("a.b-c", "x")),
    ],
)
def test_bucket_urls(text: str, url: BucketURL) -> None:
    assert parse_bucket_url(text) == url
    assert url.key("logs", "x") == "/".join(p for p in (url.prefix, "logs", "x") if p)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("evidence/fleet", "expected s3://BUCKET[/PREFIX]"),
        ("https://evidence", "expected s3://BUCKET[/PREFIX]"),
        ("s3://ab", "invalid bucket name 'ab'"),
        ("s3://Evidence", "invalid bucket name"),
        ("s3://e..x/y", "invalid bucket name"),
        ("s3://evidence/a//b", "invalid key prefix"),
        ("s3://evidence/a/../b", "invalid key prefix"),
        ("s3://evidence/x?versionId=1", "only a bucket and a prefix"),
        ("s3://user@evidence/x", "only a bucket and a prefix"),
    ],
)
def test_bad_bucket_urls(text: str, message: str) -> None:
    with pytest.raises(BucketURLError) as err:
        parse_bucket_url(text)
    assert message in str(err.value)


def test_endpoints() -> None:
    assert check_endpoint_url("https://198.19.0.1:7443") == "https://198.19.0.1:7443"
    for bad in ["198.19.0.1:7480", "ftp://x", "http://u:p@x", "http://x/path", "http://x:99999"]:
        with pytest.raises(BucketURLError):
            check_endpoint_url(bad)


def test_credentials_files() -> None:
    creds = parse_credentials("[default]\naws_access_key_id = AK\naws_secret_access_key = s3cr%t\n")
    assert (creds.access_key, creds.secret_key, creds.session_token) == ("AK", "s3cr%t", None)
    only = parse_credentials(
        "[runner]\naws_access_key_id=A\naws_secret_access_key=B\naws_session_token=T\n"
    )
    assert only.session_token == "T"
    for bad, message in [
        ("AKIA:secret", "not an AWS shared-credentials file"),
        ("[a]\naws_access_key_id=1\n[b]\naws_access_key_id=2\n", "give a [default] profile"),
        (
            "[default]\naws_access_key_id = AK\n",
            "needs aws_access_key_id and aws_secret_access_key",
        ),
    ]:
        with pytest.raises(BucketError) as err:
            parse_credentials(bad, where="s3 creds")
        assert message in str(err.value) and "secret" not in str(err.value).replace(
            "aws_secret_access_key", ""
        ).replace("s3 creds", "")


def test_reads_writes_and_listings(bucket: Bucket, s3: Any) -> None:
    assert bucket.put_once("logs/a/vkey", b"k\n") is not None  # a version id: versioned
    assert bucket.get("logs/a/vkey") == b"k\n"
    assert bucket.head("logs/a/vkey") == (hashlib.md5(b"k\n").hexdigest(), 2)
    assert bucket.head("logs/a/none") is None
    with pytest.raises(ObjectMissing):
        bucket.get("logs/a/none")
    bucket.put_once("logs/b/vkey", b"x")
    assert [k for k, _, _ in bucket.list_keys("logs/")] == ["logs/a/vkey", "logs/b/vkey"]
    assert [k for k, _, _ in bucket.list_keys("logs/", start_after="logs/a/vkey")] == [
        "logs/b/vkey"
    ]
    assert bucket.list_prefixes("logs") == ["logs/a/", "logs/b/"]
    s3.delete_object(Bucket=BUCKET, Key="fleet/logs/a/vkey")
    versions = bucket.child("logs/a").list_versions("")
    assert [(v.key, v.delete_marker) for v in versions] == [("vkey", False), ("vkey", True)]


def test_a_missing_bucket_is_an_error_not_a_missing_object(s3: Any) -> None:
    from appliance.bucket import BucketSettings

    gone = Bucket(BucketSettings(parse_bucket_url("s3://no-such-bucket/x")))
    with pytest.raises(BucketError) as err:
        gone.get("k")
    assert not isinstance(err.value, ObjectMissing)


def test_the_policy_denies_rewriting_evidence_to_everyone_it_names() -> None:
    p = fleet_policy(
        "s3://evidence/fleet", runners=["arn:r"], approvers=["arn:a"], auditors=["arn:x"]
    )
    (deny,) = [s for s in p["Statement"] if s["Effect"] == "Deny"]
    assert deny["Principal"] == {"AWS": ["arn:r", "arn:a", "arn:x"]}
    assert {
        "s3:DeleteObjectVersion",
        "s3:PutObjectRetention",
        "s3:BypassGovernanceRetention",
    } <= set(deny["Action"])
    runners = next(s for s in p["Statement"] if s["Sid"] == "RunnersWriteLogsAndRequests")
    assert "arn:aws:s3:::evidence/fleet/approvals/*/*/request" in runners["Resource"]
    with_lock = fleet_policy("s3://evidence/fleet", runners=["arn:r"], runner_sets_retention=True)
    (deny,) = [s for s in with_lock["Statement"] if s["Effect"] == "Deny"]
    assert "s3:PutObjectRetention" not in deny["Action"]
