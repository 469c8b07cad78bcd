"""`make demo` runs to the end and shows what it promises (it is a newcomer's first contact)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_to_the_end() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tests.lab.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    out = r.stdout
    # captured, attributed, masked
    assert "captured: session" in out and "ebpf+procfs" in out and "acme/shop" in out
    assert "[REDACTED:CARD]" in out and "4111 1111 1111 1111" not in out
    # denied, held then approved
    assert "statement denied by policy rule 'no-destructive-ddl'" in out
    assert "approved by alice" in out and "DELETE 1" in out
    # SSH: captured with no key, denied with the rule, replayed masked
    assert "order 1017 paid with 4000 0566 5566 5556" in out  # what the job saw
    assert "order 1017 paid with [REDACTED:CARD]" in out  # what the ledger keeps
    assert "appliance: denied by policy rule 'no-recursive-deletes'" in out
    assert "the appliance logged in as 'deploy'" in out
    assert "removed the SSH CA line" in out
    # MySQL: masked rows, MySQL's own error for the DROP, the DELETE held and approved
    mysql = out[out.index("== 7. MySQL too") : out.index("== 8.")]
    assert mysql.count("[REDACTED:CARD]") == 3 and "6011000000000004" not in mysql
    assert "ERROR 1142 (42000)" in mysql and "no-destructive-ddl" in mysql
    assert "(target shop-mysql)" in mysql and "approved by alice" in mysql
    assert "deleted\n   1\n" in mysql
    # fail closed, verified, torn down
    assert "Connection refused" in out
    assert "VERIFIED" in out
    # shipped to the fleet's bucket (radosgw) and verified from there
    assert "verified from the bucket" in out and "byte for byte" in out and "is NOT" not in out
    assert "the SOC 2 evidence package, from the bucket alone" in out
    assert (ROOT / "demo-output" / "report" / "index.html").is_file()
    assert "The lab is torn down" in out
    assert (ROOT / "demo-output" / "ledger").is_dir()
    assert (ROOT / "demo-output" / "keys" / "ledger.vkey").is_file()
    # HTTPS: held then run, a Kubernetes delete denied, an S3 upload with injected keys
    assert "approved and run: nginx answered 201" in out
    assert "CI may not delete pods" in out and "Forbidden" in out
    assert "uploaded (12582912 bytes in S3)" in out
    assert "no secret reached the ledger: yes" in out
