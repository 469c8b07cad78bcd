"""What a session's identity says is verified and what is only claimed (pure).

Where this sits: capture resolves a session's identity (process, cgroup, and ``ci``: the CI
variables of the job's environment, all *claimed*); :class:`~appliance.identity.Verifier`
obtains and checks the job's token; :func:`annotate` puts the two together into the identity
that the session's every ledger entry carries and policy matches. The keys it adds::

    "ci":       {"provider", "repository", ...}  each field from the verified token where
                 it states one, else from the environment; "vars" are always the raw
                 environment values
    "verified": ["provider", "repository", ...]  the keys of "ci" that come from a verified
                 token ([] when there is none: every field is claimed)
    "token":    null (no issuer configured) or {"status": "verified" | "rejected" |
                 "unavailable" | "absent", "issuer": config name, ...}: for a verified
                 token its issuer URL, key id, algorithm, SHA-256, subject, audience, times;
                 for a rejected one the reason and what it claimed about itself, unverified
    "mismatch": [{"field", "claimed", "verified"}]  where the environment says otherwise
                 than the verified token

The token itself is never part of it: only its hash, key id and claims.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.capture._ci import KEYS

__all__ = ["STATUSES", "Outcome", "annotate"]

STATUSES = ("verified", "rejected", "unavailable", "absent")


@dataclass(frozen=True)
class Outcome:
    """What became of one job's token: ``status`` (one of :data:`STATUSES`), the record the
    ledger keeps of it (never the token), the verified CI fields (status ``verified``)."""

    status: str
    record: Mapping[str, Any]
    fields: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.status in STATUSES, self.status
        assert self.status == "verified" or not self.fields


def annotate(identity: Mapping[str, Any], outcome: Outcome | None) -> dict[str, Any]:
    """``identity`` with ``ci`` made effective and ``verified``, ``token``, ``mismatch``
    added (see the module docstring). ``outcome`` None: no issuer is configured."""
    out = dict(identity)
    out["token"] = dict(outcome.record) if outcome is not None else None
    out["verified"] = []
    out["mismatch"] = []
    if outcome is None or outcome.status != "verified":
        return out
    claimed = identity.get("ci")
    claimed = claimed if isinstance(claimed, Mapping) else {}
    ci: dict[str, Any] = {"provider": None, **dict.fromkeys(KEYS), **claimed}
    mismatch = []
    for key, value in outcome.fields.items():
        said = claimed.get(key)
        if said is not None and str(said) != value:
            mismatch.append({"field": key, "claimed": said, "verified": value})
        ci[key] = value
    out["ci"] = ci
    out["verified"] = sorted(outcome.fields)
    out["mismatch"] = mismatch
    return out
