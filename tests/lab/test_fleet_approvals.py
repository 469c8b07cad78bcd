"""Approvals through the fleet's bucket (issue 15), against a real radosgw.

The runner (the lab's runner namespace) holds a DELETE for alice; alice works from a
namespace that reaches only the S3 server, never the runner: she lists the fleet's pending
requests and approves through the bucket. A decision signed by a key the policy does not
know, and a request posted by someone who can write to the bucket but has no ledger key, are
refused; both refusals are visible (the runner's ledger, the approver's command).
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from appliance.approvals import ApprovalRequest
from appliance.approvals.hub import request_note
from appliance.signing.keys import SigningKey
from tests.lab.approvals import ALICE_REVIEWS_DELETES
from tests.lab.ceph import CephS3
from tests.lab.fleet import bucket_name, cli
from tests.lab.lab import Lab, PgServer
from tests.lab.proxy import APPLIANCE, TargetSpec, job_env, running_appliance

PORT = 6611


def keygen(workdir: Path, name: str) -> tuple[Path, str]:
    out = workdir / name
    subprocess.run(
        [APPLIANCE, "keys", "generate", "--approver", name, "--out", str(out)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return out.with_suffix(".key"), out.with_suffix(".vkey").read_text().strip()


def test_approved_from_a_namespace_that_reaches_only_the_bucket(
    lab: Lab, pg: PgServer, ceph: CephS3, s3_endpoint: str, tmp_path: Path
) -> None:
    bucket = bucket_name("approvals")
    ceph.create_bucket(bucket)
    url = f"s3://{bucket}/fleet"
    ns, endpoint = ceph.client_namespace("approver")
    alice_key, alice_vkey = keygen(tmp_path, "alice")
    mallory_key, _ = keygen(tmp_path, "mallory")
    creds = ceph.root.shared_file(tmp_path / "s3.credentials")
    policy = {
        "approvals": {
            "timeout": "90s",
            "socket": str(tmp_path / "run" / "approvals.sock"),
            "approvers": [{"name": "alice", "key": alice_vkey}],
            "hub": {
                "url": url,
                "endpoint_url": s3_endpoint,
                "credentials": {"file": str(creds)},
                "poll_interval": "300ms",
            },
        },
        "rules": ALICE_REVIEWS_DELETES,
    }
    pg.admin_sql(
        "DROP TABLE IF EXISTS hubheld; CREATE TABLE hubheld (id int);"
        "INSERT INTO hubheld SELECT generate_series(1, 5); ALTER TABLE hubheld OWNER TO app;",
        database="app",
    )
    hub = ["--hub", url, "--endpoint-url", endpoint]
    with running_appliance(
        lab, pg, tmp_path / "app", targets=[TargetSpec("db", PORT)], policy=policy
    ) as app:
        vkey = ["--vkey", str(app.vkey)]
        job = lab.popen(
            ["psql", "-X", "-A", "-t", "-c", "DELETE FROM hubheld WHERE id = 3"],
            job=True, env=job_env(PORT, PGAPPNAME="held-on-runner"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            request_id = _wait_listed(ns, ceph, hub + vkey, "DELETE FROM hubheld")
            # the approver's namespace cannot reach the runner: only the bucket
            reach = subprocess.run(
                ["ip", "netns", "exec", ns, "psql", "-h", "127.0.0.1", "-p", str(PORT),
                 "-c", "select 1"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert reach.returncode != 0
            # 1. a decision signed by a key the policy does not know: refused, recorded
            forged = cli(
                ns, ceph.root, "approvals", "approve", request_id, "--key", str(mallory_key),
                "--approver", "alice", *hub, *vkey,
            )  # fmt: skip
            assert forged.returncode == 1, forged.stdout + forged.stderr
            assert "unknown-key" in forged.stderr
            rejected = app.wait_for(lambda es: any(e["type"] == "approval.rejected" for e in es))
            (rej,) = [e for e in rejected if e["type"] == "approval.rejected"]
            assert rej["data"]["reason"] == "unknown-key"
            assert job.poll() is None  # still held
            # 2. a request posted by whoever can write to the bucket, without a ledger key
            fake = _forged_request(ceph, bucket, request_id)
            listed = cli(ns, ceph.root, "approvals", "list", *hub, *vkey)
            assert f"REFUSED request {fake}" in listed.stderr, listed.stderr
            assert fake not in listed.stdout and request_id in listed.stdout
            refused = cli(
                ns, ceph.root, "approvals", "approve", fake, "--key", str(alice_key), *hub, *vkey
            )
            assert refused.returncode == 1 and "is refused" in refused.stderr
            # 3. alice approves through the bucket; the statement runs within ~2 s
            t0 = time.monotonic()
            approved = cli(
                ns, ceph.root, "approvals", "approve", request_id, "--key", str(alice_key),
                "--reason", "from the hub", *hub, *vkey,
            )  # fmt: skip
            assert approved.returncode == 0, approved.stdout + approved.stderr
            assert f"accepted: request {request_id} approved" in approved.stdout
            out, err = job.communicate(timeout=30)
            released = time.monotonic() - t0
            assert job.returncode == 0, err
            assert b"DELETE 1" in out or out.strip() == b"", (out, err)
        finally:
            if job.poll() is None:
                job.kill()
        assert pg.admin_sql("SELECT count(*) FROM hubheld", database="app").strip() == "4"
        assert released < 10, released
        granted = app.wait_for(lambda es: any(e["type"] == "approval.granted" for e in es))
        (g,) = [e for e in granted if e["type"] == "approval.granted"]
        assert g["data"]["approver"] == "alice" and g["data"]["reason"] == "from the hub"
        # from the decision landing in the bucket to the statement's release (the runner polls
        # every 300 ms here): the grant is recorded before the statement runs
        decisions = [
            v for v in ceph.all_versions(bucket, "fleet/approvals/") if "/decision." in v["Key"]
        ]
        posted = max(v["LastModified"] for v in decisions)
        granted_at = datetime.fromisoformat(g["ts"].replace("Z", "+00:00"))
        latency = (granted_at - posted).total_seconds()
        assert latency < 3.0, f"decision to release took {latency:.2f} s"
        # the runner posted the outcome: the fleet's list no longer shows it
        deadline = time.monotonic() + 10
        while True:
            listed = cli(ns, ceph.root, "approvals", "list", *hub, *vkey, "--format", "json")
            if request_id not in [r["id"] for r in json.loads(listed.stdout)]:
                break
            assert time.monotonic() < deadline, listed.stdout
            time.sleep(0.3)
        shown = cli(ns, ceph.root, "approvals", "show", request_id, *hub, *vkey)
        assert "granted" in shown.stdout and "rejected (unknown-key)" in shown.stdout


def _wait_listed(ns: str, ceph: CephS3, args: list[str], text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = cli(ns, ceph.root, "approvals", "list", *args, "--format", "json")
        assert r.returncode == 0, r.stderr
        for req in json.loads(r.stdout):
            if text in req["statement"]:
                assert req["origin"] == "lab.test/ledger"
                return str(req["id"])
        time.sleep(0.3)
    raise AssertionError(f"no request for {text!r} in the hub")


def _forged_request(ceph: CephS3, bucket: str, like: str) -> str:
    """Post a request signed by a key with the ledger's name but not the ledger's key."""
    intruder = SigningKey.generate("lab.test/ledger")
    listing = ceph.all_versions(bucket, "fleet/approvals/")
    key = next(v["Key"] for v in listing if v["Key"].endswith(f"/{like}/request"))
    body = ceph.admin().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    data = json.loads(body.split("\n")[1])
    data.pop("origin")
    fake = ApprovalRequest.from_dict({**data, "id": "f" * 20, "statement": "SELECT 1"})
    day = key.split("/")[2]
    ceph.admin().put_object(
        Bucket=bucket,
        Key=f"fleet/approvals/{day}/{fake.id}/request",
        Body=request_note(fake, "lab.test/ledger", intruder).encode(),
    )
    return fake.id


pytestmark = pytest.mark.lab
