"""Which claims of a CI provider's identity token mean which CI field (pure).

Where this sits: once :mod:`._verify` has checked a token, :func:`fields_from_claims` maps
its claims onto the keys the environment's CI variables are mapped onto
(:data:`appliance.capture._ci.KEYS`), so that a verified value and a claimed one can be put
side by side, and policy can match either.

Only claims with the same meaning as the field are mapped; a field the provider's token
does not carry stays *claimed* (from the environment) even when the token is verified:

- GitHub Actions (https://docs.github.com/actions/security-for-github-actions/
  security-hardening-your-deployments/about-security-hardening-with-openid-connect): the
  token has no claim for the job's name (``GITHUB_JOB``) or the runner's, so ``job`` and
  ``runner`` stay claimed; ``job_workflow_ref`` (the workflow file that defines the job) is
  kept in the token record.
- GitLab ``id_tokens`` (https://docs.gitlab.com/ci/secrets/id_token_authentication/):
  ``project_path`` is the repository, ``pipeline_id`` the run; no job name.
- Buildkite (https://buildkite.com/docs/agent/v3/cli-oidc): ``pipeline_slug`` is the
  workflow, ``build_branch`` the ref; the repository URL and build UUID of the environment
  have no claim.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from appliance.capture._ci import KEYS, MAX_VALUE

CLAIMS: Mapping[str, Mapping[str, str]] = {
    "github": {
        "repository": "repository",
        "workflow": "workflow",
        "workflow_ref": "workflow_ref",
        "run_id": "run_id",
        "run_attempt": "run_attempt",
        "environment": "environment",
        "ref": "ref",
        "actor": "actor",
        "sha": "sha",
    },
    "gitlab": {
        "repository": "project_path",
        "workflow": "pipeline_source",
        "workflow_ref": "ci_config_ref_uri",
        "job_id": "job_id",
        "run_id": "pipeline_id",
        "environment": "environment",
        "ref": "ref",
        "actor": "user_login",
        "sha": "sha",
    },
    "buildkite": {
        "workflow": "pipeline_slug",
        "job_id": "job_id",
        "ref": "build_branch",
        "sha": "build_commit",
    },
}
"""provider -> {field: claim}; every field is one of :data:`~appliance.capture._ci.KEYS`."""

PROVIDERS = tuple(CLAIMS)

# Claims kept in a verified token's record beyond the mapped fields (who and what for).
EXTRA_CLAIMS = ("sub", "jti", "job_workflow_ref", "repository_owner", "event_name", "ref_type")

assert all(field in KEYS for mapping in CLAIMS.values() for field in mapping)


def _text(value: Any) -> str | None:
    """A claim as a field value: strings and integers as text (bounded), others not at all."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    return text[:MAX_VALUE] if text else None


def fields_from_claims(provider: str, claims: Mapping[str, Any]) -> dict[str, str]:
    """The CI fields a verified token of ``provider`` states: ``{field: value}``, only the
    fields whose claim is present and a string or integer. ``provider`` is one of
    :data:`PROVIDERS` (the config checked it)."""
    out: dict[str, str] = {"provider": provider}
    for field, claim in CLAIMS[provider].items():
        value = _text(claims.get(claim))
        if value is not None:
            out[field] = value
    return out


def extra_claims(claims: Mapping[str, Any]) -> dict[str, str]:
    """The claims of :data:`EXTRA_CLAIMS` that the token has, as text."""
    out: dict[str, str] = {}
    for name in EXTRA_CLAIMS:
        value = _text(claims.get(name))
        if value is not None:
            out[name] = value
    return out
