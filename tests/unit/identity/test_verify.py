"""One token checked: each way a token can be wrong gets its own reason (joserfc underneath)."""

from __future__ import annotations

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from appliance.identity import TokenRejected, inspect, token_sha256, verify
from tests.oidc import TestIssuer

ISS = "https://token.lab.test"
AUD = "appliance:boot-1"
NOW = 1_800_000_000
CLAIMS = {"repository": "acme/prod", "run_id": "77", "sub": "repo:acme/prod:ref:refs/heads/main"}


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer(ISS)


def check(issuer: TestIssuer, token: str, **kw: object) -> dict[str, object]:
    args: dict = {
        "issuer": ISS,
        "audience": AUD,
        "algorithms": ("RS256",),
        "now": NOW,
        "leeway": 60,
    }
    args.update(kw)
    return verify(token, issuer.keys[0], **args)


def reason(issuer: TestIssuer, token: str, **kw: object) -> str:
    with pytest.raises(TokenRejected) as info:
        check(issuer, token, **kw)
    return info.value.reason


def test_a_valid_token_gives_its_claims(issuer: TestIssuer) -> None:
    token = issuer.mint(CLAIMS, audience=AUD, now=NOW)
    claims = check(issuer, token)
    assert claims["repository"] == "acme/prod" and claims["iss"] == ISS
    seen = inspect(token)
    assert (seen.kid, seen.alg, seen.issuer) == ("lab-1", "RS256", ISS)
    assert seen.sha256 == token_sha256(token)
    assert token not in repr(seen.record())


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        ("expired", "expired"),
        ("wrong-audience", "wrong-audience"),
        ("wrong-issuer", "wrong-issuer"),
        ("forged", "bad-signature"),
    ],
)
def test_each_bad_token_is_rejected_with_its_reason(
    issuer: TestIssuer, make: str, expected: str
) -> None:
    assert reason(issuer, issuer.mint(CLAIMS, audience=AUD, now=NOW, make=make)) == expected


def test_time_is_passed_in_and_leeway_applies(issuer: TestIssuer) -> None:
    token = issuer.mint(CLAIMS, audience=AUD, now=NOW, lifetime=300)
    check(issuer, token, now=NOW + 300 + 59)  # within the leeway
    assert reason(issuer, token, now=NOW + 300 + 60) == "expired"
    assert reason(issuer, token, now=NOW - 61) == "not-yet-valid"


def test_audience_may_be_a_list(issuer: TestIssuer) -> None:
    check(issuer, issuer.mint({**CLAIMS, "aud": ["x", AUD]}, audience=AUD, now=NOW))
    assert reason(issuer, issuer.mint({**CLAIMS, "aud": ["x"]}, audience=AUD, now=NOW)) == (
        "wrong-audience"
    )


def test_exp_is_required(issuer: TestIssuer) -> None:
    body = {"iss": ISS, "aud": AUD, **CLAIMS}
    token = jwt.encode({"alg": "RS256", "kid": "lab-1"}, body, issuer.keys[0])
    assert reason(issuer, token) == "bad-claims"


def test_symmetric_and_none_algorithms_are_refused(issuer: TestIssuer) -> None:
    body = {"iss": ISS, "aud": AUD, "exp": NOW + 60, **CLAIMS}
    hs = jwt.encode({"alg": "HS256", "kid": "lab-1"}, body, OctKey.generate_key(256))
    assert reason(issuer, hs) == "algorithm"
    # A token that says "none" is no better.
    head = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"
    payload = hs.split(".")[1]
    assert reason(issuer, f"{head}.{payload}.") == "algorithm"
    # The key must be the issuer's: an RS256 token signed with another RSA key is forged.
    other = RSAKey.generate_key(2048, parameters={"kid": "lab-1"}, private=True)
    token = jwt.encode({"alg": "RS256", "kid": "lab-1"}, body, other)
    assert reason(issuer, token) == "bad-signature"


@pytest.mark.parametrize(
    "text", ["", "abc", "a.b", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln", "x" * 20000]
)
def test_malformed_tokens(text: str) -> None:
    with pytest.raises(TokenRejected) as info:
        inspect(text)
    assert info.value.reason == "malformed"
