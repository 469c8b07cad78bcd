"""Helpers of the lab's approval tests (PostgreSQL's and MySQL's): approver keys, the
pending requests on the appliance's approvals socket, the ``appliance approvals`` CLI, the
ledger's approval entries."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from appliance.approvals import ApprovalsClient, RequestStatus
from tests.lab.proxy import APPLIANCE, Appliance

# The rules of the approval tests: a DELETE waits for alice's signed decision, the rest runs.
ALICE_REVIEWS_DELETES: list[dict[str, Any]] = [
    {
        "name": "deletes-need-alice",
        "match": {"classes": ["delete"]},
        "action": "review",
        "approvers": ["alice"],
    },
    {"name": "default", "action": "allow"},
]


def keygen(workdir: Path, name: str) -> tuple[Path, str]:
    out = workdir / name
    subprocess.run(
        [APPLIANCE, "keys", "generate", "--approver", name, "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out.with_suffix(".key"), out.with_suffix(".vkey").read_text().strip()


def wait_pending(client: ApprovalsClient, *, text: str, timeout: float = 20) -> RequestStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for status in client.list_requests():
            if text in status.request.statement:
                return status
        time.sleep(0.05)
    raise AssertionError(f"no pending request for {text!r}")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [APPLIANCE, "approvals", *args], capture_output=True, text=True, timeout=30
    )


def entries_of(app: Appliance, type_: str, request_id: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [
            e for e in app.entries() if e["type"] == type_ and e["data"].get("id") == request_id
        ]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {type_} for {request_id}")
