"""annotate: which CI fields a session's identity says are verified, which claimed."""

from __future__ import annotations

from appliance.identity import Outcome, annotate, fields_from_claims

CLAIMED = {
    "source": "ebpf",
    "pid": 7,
    "ci": {"provider": "github", "repository": "acme/prod", "job": "deploy", "run_id": "7",
           "vars": {"GITHUB_REPOSITORY": "acme/prod"}},
}  # fmt: skip
TOKEN = {"status": "verified", "issuer": "github", "sha256": "ab" * 32}


def test_no_issuer_configured_every_field_is_claimed() -> None:
    out = annotate(CLAIMED, None)
    assert out["ci"] == CLAIMED["ci"] and out["verified"] == [] and out["token"] is None
    assert out["mismatch"] == []


def test_rejected_token_changes_nothing_but_says_so() -> None:
    out = annotate(CLAIMED, Outcome("rejected", {"status": "rejected", "reason": "expired"}))
    assert out["ci"] == CLAIMED["ci"] and out["verified"] == []
    assert out["token"] == {"status": "rejected", "reason": "expired"}


def test_verified_fields_win_and_disagreement_is_listed() -> None:
    fields = fields_from_claims(
        "github", {"repository": "acme/fork", "run_id": 7, "ref": "refs/heads/x", "workflow": True}
    )
    assert fields == {
        "provider": "github",
        "repository": "acme/fork",
        "run_id": "7",
        "ref": "refs/heads/x",
    }
    out = annotate(CLAIMED, Outcome("verified", TOKEN, fields))
    assert out["ci"]["repository"] == "acme/fork" and out["ci"]["job"] == "deploy"
    assert out["ci"]["vars"] == {"GITHUB_REPOSITORY": "acme/prod"}  # raw claims stay raw
    assert out["verified"] == ["provider", "ref", "repository", "run_id"]
    assert out["mismatch"] == [
        {"field": "repository", "claimed": "acme/prod", "verified": "acme/fork"}
    ]


def test_a_verified_job_without_ci_variables() -> None:
    fields = fields_from_claims(
        "gitlab", {"project_path": "a/b", "pipeline_id": "5", "job_id": "9"}
    )
    out = annotate({"source": "ebpf", "ci": None}, Outcome("verified", TOKEN, fields))
    assert out["ci"]["provider"] == "gitlab" and out["ci"]["repository"] == "a/b"
    assert out["ci"]["run_id"] == "5" and out["ci"]["job"] is None and out["mismatch"] == []


def test_ledger_show_says_what_is_verified() -> None:
    from appliance.ledger.render import who

    fields = fields_from_claims("github", {"repository": "acme/fork", "run_id": "7"})
    verified = annotate(CLAIMED, Outcome("verified", TOKEN, fields))
    assert who(verified).startswith(
        "github acme/fork deploy run 7 [verified: provider, repository, run_id] "
        "[environment claimed repository=acme/prod]"
    )
    rejected = annotate(CLAIMED, Outcome("rejected", {"status": "rejected", "reason": "expired"}))
    assert "[claimed; token rejected: expired]" in who(rejected)
