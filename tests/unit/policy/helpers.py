"""Shared helpers: a fixed set of targets, policies written as YAML, request contexts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.config import parse_config
from appliance.policy import Policy, RequestContext, classify, parse_policy

DATA = Path(__file__).resolve().parents[2] / "data" / "policy"
EXAMPLE = Path(__file__).resolve().parents[3] / "appliance" / "policy" / "example.yaml"

ALICE = "alice+82e4fd33+AdZw9y79lHW2InX653PrX16x/qTyoIgObSGYMnO/laCv"
BOB = "bob+3c95ee94+AZ9VGZv2MWCDFcYaBpLBZ36oyUGubEU5RJV3xidwAFP5"

TARGETS = """\
targets:
  - name: orders-db
    protocol: postgres
    addresses: ["10.1.2.3:5432"]
    accounts:
      - {name: ci-writer, user: w, secret: {credential: w}}
      - {name: ci-reader, user: r, secret: {credential: r}}
  - name: app-db
    protocol: postgres
    addresses: ["10.1.2.4:5432"]
    accounts:
      - {name: app-ci, user: a, secret: {credential: a}}
"""

APPROVALS = f"""\
  approvals:
    approvers:
      - {{name: alice, key: "{ALICE}"}}
      - {{name: bob, key: "{BOB}"}}
"""

ATTRIBUTED: Mapping[str, Any] = {
    "source": "ebpf",
    "uid": 1000,
    "exe": "/usr/bin/psql",
    "cgroup": "/ci/job-17/step",
    "ci": {"provider": "github", "repository": "org/app", "workflow": "deploy", "job": "db"},
}
"""An attributed session whose CI fields are all claimed (no token)."""

VERIFIED: Mapping[str, Any] = {
    **ATTRIBUTED,
    "verified": ["provider", "repository", "workflow"],
    "token": {"status": "verified", "issuer": "github", "sha256": "0" * 64},
    "mismatch": [],
}
"""The same session with a verified token stating provider, repository and workflow (the
GitHub token has no job name: ``job`` stays claimed)."""


def config_text(policy_body: str, *, approvals: bool = True) -> str:
    """A whole config: the fixed targets, then ``policy:`` with ``policy_body`` (indented by
    two spaces already) and, unless told otherwise, the approvers alice and bob."""
    return TARGETS + "policy:\n" + (APPROVALS if approvals else "") + policy_body


def load_policy(policy_body: str, *, approvals: bool = True) -> Policy:
    """The policy of :func:`config_text`, parsed as in a config that trusts a token issuer
    (rules may need verified identity fields)."""
    config = parse_config(config_text(policy_body, approvals=approvals), source="test.yaml")
    return parse_policy(config.policy, targets=config.targets, verifiable=True)


def rules(text: str, *, mode: str = "enforce") -> Policy:
    """A policy from a YAML rule list (written at column 0, as under ``rules:``)."""
    indented = "".join(f"    {line}\n" for line in text.strip("\n").splitlines())
    return load_policy(f"  mode: {mode}\n  rules:\n{indented}")


def ctx(
    sql: str,
    *,
    identity: Mapping[str, Any] = ATTRIBUTED,
    target: str = "orders-db",
    database: str | None = "orders",
    account: str = "ci-writer",
) -> RequestContext:
    return RequestContext(identity, target, database, account, classify(sql))
