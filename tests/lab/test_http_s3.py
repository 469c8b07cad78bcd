"""The AWS CLI through the appliance against a real SigV4 API: Ceph radosgw's S3.

The S3 server is the fleet issue's lab fixture (:mod:`tests.lab.ceph`: a one-node Ceph
cluster, radosgw on HTTPS with its own lab CA). The job is the real ``aws`` (Debian's
awscli) with dummy keys; the appliance removes its signature and signs every request
again with the target's keys (botocore's SigV4 signer), multipart uploads and downloads
included; radosgw checks each signature.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from tests.lab.ceph import CephS3
from tests.lab.http_lab import HttpAppliance
from tests.lab.lab import Lab

AWS = "/usr/bin/aws"
DUMMY = {
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "dummy-the-job-has-no-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Lab, CephS3, HttpAppliance]]:
    with Lab(n_targets=1) as lab, CephS3(tls=True) as s3:
        endpoint = s3.https(s3.link(lab.runner.name))
        address = endpoint.split("//")[1]
        s3.admin().create_bucket(Bucket="artifacts")
        secret = lab.dir / "secrets" / "s3-secret"
        secret.write_text(s3.root.secret_key + "\n")
        secret.chmod(0o600)
        assert s3.ca_file is not None
        target = {
            "name": "s3",
            "protocol": "http",
            "addresses": [address],
            "names": ["s3.lab.test"],
            "tls": {"mode": "verify-full", "ca": str(s3.ca_file)},
            "auth": {"type": "aws_sigv4", "region": "us-east-1", "service": "s3"},
            "accounts": [
                {"name": "ci", "user": s3.root.access_key, "secret": {"file": str(secret)}}
            ],
            "record_body": "16KiB",
        }
        app = HttpAppliance(
            lab,
            lab.dir / "appliance",
            targets=[target],
            policy={"rules": [{"name": "all", "action": "allow"}]},
        )
        app.set_hosts({"s3.lab.test": address.split(":")[0]})
        config = lab.dir / "aws-config"
        config.write_text(
            "[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n  multipart_threshold = 8MB\n  multipart_chunksize = 8MB\n"
        )
        config.chmod(0o644)
        try:
            app.start()
            yield lab, s3, app
        finally:
            app.stop()


def aws(app: HttpAppliance, lab: Lab, *args: str) -> object:
    env = {
        **DUMMY,
        "AWS_CONFIG_FILE": str(lab.dir / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    return app.job([AWS, "--endpoint-url", "https://s3.lab.test:7443", *args], env=env, timeout=300)


def test_multipart_upload_and_download_with_injected_keys(
    env: tuple[Lab, CephS3, HttpAppliance],
) -> None:
    lab, s3, app = env
    data = hashlib.sha256(b"seed").digest() * (20 * 1024 * 1024 // 32)  # 20 MiB: three parts
    src = lab.dir / "upload.bin"
    src.write_bytes(data)
    src.chmod(0o644)
    r = aws(app, lab, "s3", "cp", str(src), "s3://artifacts/upload.bin")
    assert r.returncode == 0, r.stderr  # type: ignore[attr-defined]
    head = s3.admin().head_object(Bucket="artifacts", Key="upload.bin")
    assert head["ContentLength"] == len(data) and "-" in head["ETag"]  # a multipart object
    r = aws(app, lab, "s3", "cp", "s3://artifacts/upload.bin", "-")
    assert r.returncode == 0, r.stderr  # type: ignore[attr-defined]
    entries = app.entries()
    methods = [e["data"]["method"] for e in entries if e["type"] == "http.request"]
    assert methods.count("PUT") >= 3 and "POST" in methods  # create, parts, complete
    responses = [e["data"] for e in entries if e["type"] == "http.response"]
    assert all(r["status"] < 300 for r in responses), [r["status"] for r in responses]
    assert {tuple(r["credential"]["removed"]) for r in responses if "credential" in r} == {
        ("authorization",)
    }
    app.wait_for(lambda es: True)
    assert app.files_containing(s3.root.secret_key.encode()) == []
    assert app.files_containing(b"dummy-the-job-has-no-key") == []


STREAMING = r"""
import http.client, os, ssl, sys
data = os.urandom(200_000)
chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)] + [b""]
sig = b"0" * 64  # the job's chunk signatures: any; the appliance signs every chunk again
body = b"".join(b"%x;chunk-signature=%s\r\n%s\r\n" % (len(c), sig, c) for c in chunks)
conn = http.client.HTTPSConnection("s3.lab.test", 7443, context=ssl.create_default_context(), timeout=60)
conn.request("PUT", "/artifacts/streamed.bin", body=body, headers={
    "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    "content-encoding": "aws-chunked",
    "x-amz-decoded-content-length": str(len(data)),
    "x-amz-date": "20200101T000000Z",
    "authorization": "AWS4-HMAC-SHA256 Credential=AKIDUMMY/20200101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
})
r = conn.getresponse()
print(r.status, r.read()[:300])
sys.stdout.write(__import__("hashlib").sha256(data).hexdigest() + "\n")
"""


def test_aws_chunked_uploads_are_signed_again_chunk_by_chunk(
    env: tuple[Lab, CephS3, HttpAppliance],
) -> None:
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD (the Java and Go SDKs' signed streaming uploads):
    each chunk's signature is chained from the appliance's own seed signature; radosgw checks
    them all and stores the decoded body."""
    _, s3, app = env
    r = app.job(["/usr/bin/python3", "-c", STREAMING])
    status, digest = r.stdout.splitlines()[0], r.stdout.splitlines()[-1]
    assert status.startswith("200"), r.stdout + r.stderr
    obj = s3.admin().get_object(Bucket="artifacts", Key="streamed.bin")["Body"].read()
    assert hashlib.sha256(obj).hexdigest() == digest

    def resigned(entries: list[dict]) -> list[dict]:
        return [
            e["data"]
            for e in entries
            if e["type"] == "http.response"
            and e["data"].get("credential", {}).get("chunks_resigned")
        ]

    (resp,) = resigned(app.wait_for(lambda es: bool(resigned(es))))
    assert resp["status"] == 200
