"""Claims to CI fields, per provider: only claims that mean the same as the field."""

from __future__ import annotations

from appliance.capture._ci import KEYS
from appliance.identity._claims import CLAIMS, extra_claims, fields_from_claims


def test_every_mapped_field_is_a_ci_key() -> None:
    assert all(field in KEYS for mapping in CLAIMS.values() for field in mapping)


def test_buildkite_and_what_is_left_claimed() -> None:
    claims = {"pipeline_slug": "shop", "job_id": "j-1", "build_branch": "main", "build_number": 7,
              "organization_slug": "acme", "sub": "organization:acme:pipeline:shop"}  # fmt: skip
    assert fields_from_claims("buildkite", claims) == {
        "provider": "buildkite", "workflow": "shop", "job_id": "j-1", "ref": "main",
    }  # fmt: skip
    assert extra_claims(claims) == {"sub": "organization:acme:pipeline:shop"}


def test_values_that_are_not_text_or_integers_are_not_fields() -> None:
    got = fields_from_claims(
        "github", {"repository": ["a"], "run_id": 3.5, "actor": "", "ref": True}
    )
    assert got == {"provider": "github"}
    assert fields_from_claims("github", {"repository": "x" * 5000})["repository"] == "x" * 256
