"""Which CI job a process belongs to, from the CI variables in its environment (pure).

Where this sits: :func:`appliance.capture.resolve_identity` reads ``/proc/<pid>/environ`` of
the attributed process and its ancestors and asks :func:`ci_from_environ`. Only the
variables named here are ever read out of an environment: a job's environment holds its
secrets (``GITHUB_TOKEN``, ``CI_JOB_TOKEN``, ``ACTIONS_RUNTIME_TOKEN``...) and none of them
may reach the ledger.

Every provider is mapped onto the same keys (:data:`KEYS`: ``repository``, ``workflow``,
``workflow_ref``, ``job``, ``job_id``, ``run_id``, ``run_attempt``, ``runner``,
``environment``, ``ref``, ``actor``, ``sha``; None when the provider has no such variable or
it is unset), plus ``vars``, the raw values of the variables that were read. These values are
*claimed*: the job writes its own environment. :mod:`appliance.identity` maps the claims of a
verified CI token onto the same keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

KEYS = (
    "repository",
    "workflow",
    "workflow_ref",
    "job",
    "job_id",
    "run_id",
    "run_attempt",
    "runner",
    "environment",
    "ref",
    "actor",
    "sha",
)
MAX_VALUE = 256  # characters kept of one value: the ledger entry stays bounded


@dataclass(frozen=True)
class Provider:
    name: str
    detect: tuple[str, ...]  # any of these present: this provider
    fields: Mapping[str, str | None]  # normalised key -> variable (None: the provider has none)
    extra: tuple[str, ...] = ()  # further variables kept in "vars"


PROVIDERS: tuple[Provider, ...] = (
    Provider(
        "github",
        ("GITHUB_ACTIONS", "GITHUB_RUN_ID", "GITHUB_REPOSITORY"),
        {
            "repository": "GITHUB_REPOSITORY",
            "workflow": "GITHUB_WORKFLOW",
            "workflow_ref": "GITHUB_WORKFLOW_REF",
            "job": "GITHUB_JOB",
            "job_id": None,
            "run_id": "GITHUB_RUN_ID",
            "run_attempt": "GITHUB_RUN_ATTEMPT",
            "runner": "RUNNER_NAME",
            "environment": None,  # GitHub sets no variable for the deployment environment
            "ref": "GITHUB_REF",
            "actor": "GITHUB_ACTOR",
            "sha": "GITHUB_SHA",
        },
        ("GITHUB_SERVER_URL", "GITHUB_EVENT_NAME", "GITHUB_RUN_NUMBER"),
    ),
    Provider(
        "gitlab",
        ("GITLAB_CI", "CI_JOB_ID", "CI_PROJECT_PATH"),
        {
            "repository": "CI_PROJECT_PATH",
            "workflow": "CI_PIPELINE_SOURCE",
            "workflow_ref": None,
            "job": "CI_JOB_NAME",
            "job_id": "CI_JOB_ID",
            "run_id": "CI_PIPELINE_ID",
            "run_attempt": None,
            "runner": "CI_RUNNER_DESCRIPTION",
            "environment": "CI_ENVIRONMENT_NAME",
            "ref": "CI_COMMIT_REF_NAME",
            "actor": "GITLAB_USER_LOGIN",
            "sha": "CI_COMMIT_SHA",
        },
        ("CI_RUNNER_ID", "CI_SERVER_URL", "CI_JOB_URL"),
    ),
    Provider(
        "buildkite",
        ("BUILDKITE", "BUILDKITE_JOB_ID", "BUILDKITE_BUILD_ID"),
        {
            "repository": "BUILDKITE_REPO",
            "workflow": "BUILDKITE_PIPELINE_SLUG",
            "workflow_ref": None,
            "job": "BUILDKITE_LABEL",
            "job_id": "BUILDKITE_JOB_ID",
            "run_id": "BUILDKITE_BUILD_ID",
            "run_attempt": "BUILDKITE_RETRY_COUNT",
            "runner": "BUILDKITE_AGENT_NAME",
            "environment": None,
            "ref": "BUILDKITE_BRANCH",
            "actor": None,
            "sha": "BUILDKITE_COMMIT",
        },
        ("BUILDKITE_BUILD_NUMBER", "BUILDKITE_ORGANIZATION_SLUG",
         "BUILDKITE_STEP_KEY", "BUILDKITE_BUILD_URL"),
    ),
    Provider(
        "jenkins",
        ("JENKINS_URL", "BUILD_TAG", "JENKINS_HOME"),
        {
            "repository": "GIT_URL",
            "workflow": "JOB_NAME",
            "workflow_ref": None,
            "job": "STAGE_NAME",
            "job_id": None,
            "run_id": "BUILD_ID",
            "run_attempt": None,
            "runner": "NODE_NAME",
            "environment": None,
            "ref": "GIT_BRANCH",
            "actor": None,
            "sha": "GIT_COMMIT",
        },
        ("BUILD_NUMBER", "BUILD_URL", "EXECUTOR_NUMBER"),
    ),
)  # fmt: skip

ALLOWED = frozenset(
    v for p in PROVIDERS for v in (*p.detect, *p.fields.values(), *p.extra) if v is not None
)
"""Every variable name this module may read; nothing else is taken from an environment."""


def parse_environ(
    raw: bytes, allowed: frozenset[str] = ALLOWED, max_value: int = MAX_VALUE
) -> dict[str, str]:
    """The ``allowed`` variables of a ``/proc/<pid>/environ`` blob (NUL-separated ``K=V``),
    each cut to ``max_value`` characters.

    ``allowed`` defaults to the CI variables. :mod:`appliance.identity` passes the names of
    the token variables it needs (``ACTIONS_ID_TOKEN_REQUEST_URL``...): those are secrets,
    used to obtain a token and never recorded.
    """
    found: dict[str, str] = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if not sep:
            continue
        key = name.decode(errors="replace")
        if key in allowed:
            found[key] = value.decode(errors="replace")[:max_value]
    return found


def ci_from_environ(env: Mapping[str, str]) -> dict[str, object] | None:
    """The CI job described by ``env``, or None if no provider's variables are there.

    Returns ``{"provider", <KEYS>..., "vars": {name: value}}``; providers are tried in the
    order of :data:`PROVIDERS`.
    """
    for provider in PROVIDERS:
        if not any(env.get(v) for v in provider.detect):
            continue
        names = [n for n in (*provider.detect, *provider.fields.values(), *provider.extra) if n]
        out: dict[str, object] = {"provider": provider.name}
        for key in KEYS:
            var = provider.fields[key]
            value = env.get(var) if var else None
            out[key] = value[:MAX_VALUE] if value else None
        out["vars"] = {n: env[n][:MAX_VALUE] for n in dict.fromkeys(names) if env.get(n)}
        return out
    return None
