"""The lab's S3 server over HTTPS (for the fleet's TLS endpoints and issue 16's real SigV4 API).

The session's cluster serves HTTPS with a throwaway CA as well as HTTP. boto3's default
streaming checksums over HTTPS are refused by radosgw (411), which is why the appliance's
client computes checksums only when an operation requires them.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.lab.ceph import CephS3
from tests.lab.fleet import bucket_name, cli
from tests.lab.lab import in_netns


def https_client(ceph: CephS3, endpoint: str, **config: Any) -> Any:
    assert ceph.ca_file is not None
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ceph.root.access_key,
        aws_secret_access_key=ceph.root.secret_key,
        region_name="us-east-1",
        verify=str(ceph.ca_file),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **config),
    )


def test_https_with_the_lab_ca_and_the_streaming_checksum_difference(ceph: CephS3) -> None:
    ns, endpoint = ceph.client_namespace("tls")
    https = CephS3.https(endpoint)
    bucket = bucket_name("tls")
    ceph.create_bucket(bucket)
    with in_netns(f"/run/netns/{ns}"):
        ok = https_client(ceph, https, request_checksum_calculation="when_required")
        ok.put_object(Bucket=bucket, Key="a", Body=b"over TLS")
        assert ok.get_object(Bucket=bucket, Key="a")["Body"].read() == b"over TLS"
        default = https_client(ceph, https)  # boto3's default: streaming checksums
        with pytest.raises(ClientError) as refused:
            default.put_object(Bucket=bucket, Key="b", Body=b"streamed")
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 411
    # the appliance's CLI over HTTPS with the CA: nothing shipped yet, nothing to verify
    assert ceph.ca_file is not None
    r = cli(
        ns, ceph.root, "ledger", "query", "--source", f"s3://{bucket}/fleet",
        "--endpoint-url", https, "--ca", str(ceph.ca_file),
    )  # fmt: skip
    assert r.returncode == 2 and "no logs under s3://" in r.stderr, r.stderr
