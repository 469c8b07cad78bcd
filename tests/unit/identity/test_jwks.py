"""JWKS parsing: signing keys by key id; anything else is refused with the reason."""

from __future__ import annotations

import pytest
from joserfc.jwk import RSAKey

from appliance.identity._keys import KeysUnavailable, parse_jwks


def test_signing_keys_by_kid_and_encryption_keys_left_out() -> None:
    sig = RSAKey.generate_key(2048, parameters={"kid": "a", "use": "sig"}).as_dict(private=False)
    enc = RSAKey.generate_key(2048, parameters={"kid": "b", "use": "enc"}).as_dict(private=False)
    plain = RSAKey.generate_key(2048, parameters={"kid": "c"}).as_dict(private=False)
    assert sorted(parse_jwks({"keys": [sig, enc, plain]}, source="t")) == ["a", "c"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "not a JWKS"),
        ({"keys": "x"}, "not a JWKS"),
        ({"keys": []}, "bad JWKS"),
        ({"keys": [{"kty": "RSA", "kid": "k", "n": "!", "e": "AQAB"}]}, "t:"),
    ],
)
def test_bad_documents(doc: object, message: str) -> None:
    with pytest.raises(KeysUnavailable, match=message):
        parse_jwks(doc, source="t")
