"""The identity section: accepted shapes and each mistake with its key and line."""

from __future__ import annotations

import pytest

from appliance.config import ConfigError, parse_config
from appliance.identity import parse_identity

HEAD = """targets: [{name: db, protocol: postgres, addresses: ["198.18.0.2:5432"],
            accounts: [{name: ci, user: app, secret: {file: /x}}]}]
identity:
"""
GITHUB = (
    '    - {name: github, provider: github, issuer: "https://token.actions.githubusercontent.com",'
    ' audience: "appliance:{boot_id}", token: {request: github}}\n'
)


def parse(body: str):  # type: ignore[no-untyped-def]
    return parse_identity(parse_config(HEAD + body, source="c.yaml").identity)


def test_github_request_and_gitlab_env_with_pinned_keys() -> None:
    config = parse(
        "  timeout: 2s\n  issuers:\n" + GITHUB + "    - name: gitlab\n      provider: gitlab\n"
        "      issuer: https://gitlab.example.com\n      audience: https://appliance.example\n"
        "      token: {env: APPLIANCE_ID_TOKEN}\n      keys: {file: /etc/appliance/gitlab.jwks}\n"
        "      algorithms: [RS256, ES256]\n      leeway: 30s\n"
    )
    assert config is not None and config.timeout == 2.0
    github, gitlab = config.issuers
    assert github.token.kind == "request" and github.token.hosts == (
        "*.actions.githubusercontent.com",
    )
    assert github.audience_for("b") == "appliance:b"
    assert github.token.variables == {
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    }
    assert gitlab.token.variables == {"APPLIANCE_ID_TOKEN"}
    assert (gitlab.algorithms, gitlab.leeway) == (("RS256", "ES256"), 30)
    assert str(gitlab.keys_file) == "/etc/appliance/gitlab.jwks"
    assert parse_identity(None) is None


ISSUER = "    - name: x\n      provider: github\n      issuer: https://i.example\n"
ERRORS = [
    ("no issuers", "  issuers: []  # <-\n", "at least one issuer"),
    ("http issuer", "  issuers:\n    - name: x\n      provider: github\n      issuer: http://i.example  # <-\n"
     "      audience: a\n      token: {env: T}\n", "expected an https URL"),
    ("unknown provider", "  issuers:\n    - name: x\n      provider: circle  # <-\n      issuer: https://i\n"
     "      audience: a\n      token: {env: T}\n", "expected one of github, gitlab, buildkite"),
    ("request audience not bound to the boot", "  issuers:\n" + ISSUER
     + "      audience: appliance  # <-\n      token: {request: github}\n", "must contain {boot_id}"),
    ("env audience with the boot id", "  issuers:\n" + ISSUER
     + "      audience: 'a:{boot_id}'  # <-\n      token: {env: T}\n", "cannot know {boot_id}"),
    ("both token sources", "  issuers:\n" + ISSUER
     + "      audience: a\n      token: {env: T, request: github}  # <-\n", "exactly one of"),
    ("symmetric algorithm", "  issuers:\n" + ISSUER
     + "      audience: a\n      token: {env: T}\n      algorithms: [HS256]  # <-\n", "expected one of RS256"),
    ("pinned and fetched", "  issuers:\n" + ISSUER
     + "      audience: a\n      token: {env: T}\n      keys: {file: /k}\n      jwks_uri: https://i/k  # <-\n",
     "not both"),
    ("duplicate name", "  issuers:\n" + GITHUB + GITHUB.replace("    - {", "    - {  ").rstrip() + "  # <-\n",
     "duplicate issuer name"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "body", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_name_the_key_and_line(name: str, body: str, message: str) -> None:
    text = HEAD + body
    marked = [i + 1 for i, line in enumerate(text.splitlines()) if "# <-" in line]
    with pytest.raises(ConfigError) as info:
        parse_identity(parse_config(text, source="c.yaml").identity)
    assert message in str(info.value)
    assert str(info.value).startswith(f"c.yaml:{marked[0]}: "), str(info.value)
