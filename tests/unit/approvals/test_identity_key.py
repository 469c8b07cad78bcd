"""Approval windows are keyed by who runs the session; a verified CI identity and a claimed
one with the same values never share a window."""

from __future__ import annotations

from appliance.approvals.request import UNATTRIBUTED, identity_key

CI = {
    "provider": "github",
    "repository": "acme/app",
    "workflow": "deploy",
    "job": "db",
    "run_id": "7",
}


def test_keys() -> None:
    assert identity_key({"source": "unattributed"}) == UNATTRIBUTED
    claimed = identity_key({"source": "ebpf", "ci": CI, "token": None})
    verified = identity_key({"source": "ebpf", "ci": CI, "token": {"status": "verified"}})
    rejected = identity_key({"source": "ebpf", "ci": CI, "token": {"status": "rejected"}})
    assert claimed == rejected == "ci:github/acme/app/deploy/db/7"
    assert verified == "ci-verified:github/acme/app/deploy/db/7" != claimed
    assert identity_key({"source": "ebpf", "uid": 1000, "exe": "/usr/bin/psql"}) == (
        "uid:1000:exe:/usr/bin/psql"
    )
