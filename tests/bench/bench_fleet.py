"""Fleet benchmark (not a test): 50 runners' logs, 200k entries, in a real radosgw (issue 15).

Each simulated runner writes its ledger (sessions with statements, decisions, responses and
some result blobs; a checkpoint every 500 entries) and ships it with the real shipper. Then,
as the security team would, from a namespace that reaches only the bucket: ``ledger pull``
(cold, then incremental with nothing new, then with 5 logs grown), ``ledger query --source``
(first run builds each log's SQLite index, second reuses them), ``ledger verify --source``.
Prints the figures; asserts only correctness. ``FLEET_BENCH_LOGS`` and
``FLEET_BENCH_ENTRIES`` change the size. Needs root (namespaces, Ceph): ``make bench``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from appliance.bucket import Bucket, BucketSettings, Credentials, parse_bucket_url
from appliance.ledger import LedgerWriter
from appliance.ledger.fleet import Shipper
from appliance.signing.keys import SigningKey
from tests.lab.ceph import CephS3
from tests.lab.proxy import APPLIANCE

LOGS = int(os.environ.get("FLEET_BENCH_LOGS", "50"))
ENTRIES = int(os.environ.get("FLEET_BENCH_ENTRIES", "200000"))
KEY = SigningKey.generate("bench.example/ledger", seed=b"\x07" * 32)
RESULT = b'{"columns":["id","card"]}\n' + b'["1","4111********1111"]\n' * 400


def no_fsync(fd: int) -> None:
    """Writing 200k entries is not what is measured here."""


def write_log(directory: Path, origin: str, entries: int, run: int) -> None:
    w = LedgerWriter.open(
        directory, origin=origin, key=KEY, checkpoint_entries=500,
        checkpoint_interval=3600, fsync=no_fsync,
    )  # fmt: skip
    ident = {"source": "ebpf", "pid": 4242, "ci": {"repository": f"acme/repo-{run % 7}"}}
    n = 0
    s = 0
    with w:
        while n < entries:
            sid = f"{run:04d}{s:012d}"
            common = {"session": sid, "account": "ci", "target": "orders-db", "identity": ident}
            w.append("session.start", data={"protocol": "postgres", "user": "ci"}, **common)
            for k in range(4):
                w.append("statement", data={"n": k, "text": f"SELECT {k} FROM t"}, **common)
                decision = "deny" if (s + k) % 11 == 0 else "allow"
                w.append("policy.decision", data={"n": k, "decision": decision}, **common)
                blobs = None
                if k == 0 and s % 10 == 0:
                    sink = w.open_blob()
                    sink.write(RESULT + sid.encode())
                    blobs = {"result": sink}
                w.append("response", data={"n": k, "rows": 400}, blobs=blobs, **common)
            w.append("session.end", data={"reason": "client closed"}, **common)
            n += 14
            s += 1


@pytest.mark.bench
def test_fleet_pull_query_verify(tmp_path: Path) -> None:
    per_log = ENTRIES // LOGS
    with CephS3() as ceph:
        ceph.create_bucket("fleet-bench")
        url = "s3://fleet-bench/fleet"
        ns, endpoint = ceph.client_namespace("security")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **ceph.root.env()}
        t0 = time.perf_counter()
        dirs = []
        for i in range(LOGS):
            d = tmp_path / "runners" / f"r{i:03d}"
            write_log(d, f"ci.example/runner-{i:03d}", per_log, i)
            dirs.append(d)
        written = time.perf_counter() - t0
        settings = BucketSettings(parse_bucket_url(url), endpoint_url="http://127.0.0.1:7480")
        creds = Credentials(ceph.root.access_key, ceph.root.secret_key)
        t0 = time.perf_counter()
        with ceph.inside():
            bucket = Bucket(settings, credentials=creds)
            objects = 0
            for d in dirs:
                r = Shipper(d, bucket).ship()
                objects += r.checkpoints + r.blobs + 1
        shipped = time.perf_counter() - t0

        def appliance(*args: str) -> tuple[float, str]:
            t = time.perf_counter()
            r = subprocess.run(
                ["ip", "netns", "exec", ns, APPLIANCE, *args, "--endpoint-url", endpoint],
                capture_output=True, text=True, timeout=3600, env=env,
            )  # fmt: skip
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
            return time.perf_counter() - t, r.stdout

        cache = str(tmp_path / "cache")
        pull_cold, _ = appliance("ledger", "pull", "--source", url, "--to", cache)
        pull_again, _ = appliance("ledger", "pull", "--source", url, "--to", cache)
        q = ["ledger", "query", "--source", url, "--cache", cache, "--format", "json"]
        query_cold, out = appliance(*q, "--decision", "deny")
        denials = len(out.splitlines())
        query_warm, _ = appliance(*q, "--decision", "deny")
        query_ident, out = appliance(
            *q, "--identity", "ci.repository=acme/repo-3", "--type", "session.start"
        )
        sessions = len(out.splitlines())
        grown = 0
        with ceph.inside():
            for i, d in enumerate(dirs[:5]):
                write_log(d, f"ci.example/runner-{i:03d}", 700, 1000 + i)
                grown += Shipper(d, bucket).ship().entries
        pull_grown, _ = appliance("ledger", "pull", "--source", url, "--to", cache)
        verify, out = appliance(
            "ledger", "verify", "--source", url, "--cache", cache, "--vkey",
            KEY.verifier().to_vkey(), "--format", "json",
        )  # fmt: skip
        assert out.count('"ok": true') == LOGS
        total = sum(len(list((d / "blobs").rglob("*"))) for d in dirs)
        print(
            f"\nfleet bench: {LOGS} logs, {per_log * LOGS} entries ({per_log} per log), radosgw "
            f"in the lab (one memstore OSD), 2 cores shared with the client (noisy: one run)\n"
            f"  write the {LOGS} ledgers            {written:7.2f} s\n"
            f"  ship them (real shipper)         {shipped:7.2f} s  ({objects} objects + bundles)\n"
            f"  ledger pull, cold                {pull_cold:7.2f} s\n"
            f"  ledger pull, nothing new         {pull_again:7.2f} s\n"
            f"  ledger pull, 5 logs grew by {grown:5d} {pull_grown:7.2f} s\n"
            f"  query --decision deny, cold idx  {query_cold:7.2f} s  ({denials} entries)\n"
            f"  query --decision deny, warm idx  {query_warm:7.2f} s\n"
            f"  query identity + type, warm      {query_ident:7.2f} s  ({sessions} sessions)\n"
            f"  verify --source (all {LOGS} logs)   {verify:7.2f} s\n"
            f"  (blob files on the runners: {total})"
        )
        assert denials > 0 and sessions > 0
