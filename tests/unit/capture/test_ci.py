"""CI variables: the providers' names mapped onto one shape, and nothing else read."""

from __future__ import annotations

from appliance.capture._ci import ALLOWED, MAX_VALUE, ci_from_environ, parse_environ

GITHUB = (
    b"PATH=/usr/bin\0GITHUB_ACTIONS=true\0GITHUB_REPOSITORY=acme/shop\0GITHUB_WORKFLOW=ci\0"
    b"GITHUB_JOB=migrate\0GITHUB_RUN_ID=9001\0GITHUB_RUN_ATTEMPT=2\0RUNNER_NAME=runner-7\0"
    b"GITHUB_TOKEN=ghs_secret\0ACTIONS_RUNTIME_TOKEN=eyJ-secret\0PGPASSWORD=hunter2\0"
    b"GITHUB_SHA=abc123\0"
)


def test_github_actions() -> None:
    ci = ci_from_environ(parse_environ(GITHUB))
    assert ci == {
        "provider": "github",
        "repository": "acme/shop",
        "workflow": "ci",
        "workflow_ref": None,
        "job": "migrate",
        "job_id": None,
        "run_id": "9001",
        "run_attempt": "2",
        "runner": "runner-7",
        "environment": None,
        "ref": None,
        "actor": None,
        "sha": "abc123",
        "vars": {
            "GITHUB_ACTIONS": "true",
            "GITHUB_RUN_ID": "9001",
            "GITHUB_REPOSITORY": "acme/shop",
            "GITHUB_WORKFLOW": "ci",
            "GITHUB_JOB": "migrate",
            "GITHUB_RUN_ATTEMPT": "2",
            "RUNNER_NAME": "runner-7",
            "GITHUB_SHA": "abc123",
        },
    }


def test_secrets_in_the_environment_are_never_read() -> None:
    env = parse_environ(GITHUB)
    assert "GITHUB_TOKEN" not in env and "PGPASSWORD" not in env
    assert "ACTIONS_RUNTIME_TOKEN" not in env and "PATH" not in env
    assert not {n for n in ALLOWED if "TOKEN" in n or "PASSWORD" in n or "SECRET" in n}
    assert "secret" not in repr(ci_from_environ(env)) and "hunter2" not in repr(env)


def test_gitlab_buildkite_jenkins() -> None:
    gitlab = ci_from_environ(
        {"GITLAB_CI": "true", "CI_PROJECT_PATH": "acme/shop", "CI_JOB_ID": "77",
         "CI_PIPELINE_ID": "5", "CI_JOB_NAME": "test", "CI_RUNNER_DESCRIPTION": "r1"}
    )  # fmt: skip
    assert gitlab is not None
    assert (gitlab["provider"], gitlab["repository"], gitlab["job_id"], gitlab["run_id"]) == (
        "gitlab", "acme/shop", "77", "5",
    )  # fmt: skip
    buildkite = ci_from_environ(
        {"BUILDKITE": "true", "BUILDKITE_PIPELINE_SLUG": "shop", "BUILDKITE_JOB_ID": "j-1",
         "BUILDKITE_BUILD_ID": "b-1", "BUILDKITE_RETRY_COUNT": "1", "BUILDKITE_AGENT_NAME": "a"}
    )  # fmt: skip
    assert buildkite is not None
    assert (buildkite["workflow"], buildkite["job_id"], buildkite["run_attempt"]) == (
        "shop", "j-1", "1",
    )  # fmt: skip
    jenkins = ci_from_environ(
        {"JENKINS_URL": "https://ci/", "JOB_NAME": "shop/main", "BUILD_ID": "12",
         "NODE_NAME": "agent-3"}
    )  # fmt: skip
    assert jenkins is not None
    assert (jenkins["provider"], jenkins["workflow"], jenkins["run_id"], jenkins["runner"]) == (
        "jenkins", "shop/main", "12", "agent-3",
    )  # fmt: skip


def test_no_provider_no_ci_and_values_are_bounded() -> None:
    assert ci_from_environ({"CI": "true", "HOME": "/root"}) is None
    assert ci_from_environ({"GITHUB_ACTIONS": ""}) is None
    long = parse_environ(b"GITHUB_REPOSITORY=" + b"x" * 5000 + b"\0")
    assert len(long["GITHUB_REPOSITORY"]) == MAX_VALUE
    assert parse_environ(b"garbage-without-equals\0\xff\xfe=1\0") == {}
