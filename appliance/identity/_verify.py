"""Checking one CI identity token: signature, issuer, audience, time (pure, joserfc).

Where this sits: :class:`~appliance.identity.Verifier` has obtained a job's token; it asks
:func:`inspect` what the token says about itself (unverified: which key, which issuer), gets
that key from the issuer's key store, and calls :func:`verify`, which either returns the
verified claims or raises :class:`TokenRejected` with a reason. The JOSE work (JWS
signature with the issuer's JWK, the registered claims ``iss``, ``aud``, ``exp``, ``nbf``,
``iat``) is joserfc's (https://jose.authlib.org); this module only picks the checks and
names the outcome. Time comes in as ``now``: tests are exact.

Nothing here keeps or returns the token itself: a token is a bearer credential. What may
be recorded is :attr:`UnverifiedToken.record` (key id, algorithm, the issuer it claims, its
SHA-256) and the verified claims.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import Key

from appliance.identity._config import ALGORITHMS

__all__ = [
    "ALGORITHMS",
    "MAX_TOKEN_BYTES",
    "REASONS",
    "TokenRejected",
    "UnverifiedToken",
    "inspect",
    "token_sha256",
    "verify",
]

MAX_TOKEN_BYTES = 16 * 1024
_MAX_RECORDED = 256  # characters kept of an unverified value in a record

REASONS = (
    "malformed",  # not a compact JWS with a JSON object payload, or too large
    "wrong-issuer",  # the token names another issuer than the configured one
    "unknown-key",  # no key of the issuer has the token's key id (after a refresh)
    "algorithm",  # an algorithm the issuer's config does not allow
    "bad-signature",  # the signature does not verify with the issuer's key: forged
    "expired",
    "not-yet-valid",  # nbf or iat in the future
    "wrong-audience",  # not minted for this appliance (this runner's boot)
    "bad-claims",  # a registered claim is missing or malformed
)


class TokenRejected(Exception):
    """The token is not a valid identity for this appliance. ``reason`` is one of
    :data:`REASONS`; ``detail`` says more (never a byte of the token)."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def token_sha256(token: str) -> str:
    """The SHA-256 of the token's text, hex: how records name a token."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _short(value: Any) -> Any:
    if isinstance(value, str):
        return value[:_MAX_RECORDED]
    if isinstance(value, bool) or (isinstance(value, int) and abs(value) < 2**53):
        return value
    if isinstance(value, list):
        return [v[:_MAX_RECORDED] for v in value[:8] if isinstance(v, str)]
    return None


@dataclass(frozen=True)
class UnverifiedToken:
    """What a token says about itself before anything is checked."""

    sha256: str
    kid: str | None
    alg: str | None
    claims: Mapping[str, Any]

    @property
    def issuer(self) -> str | None:
        iss = self.claims.get("iss")
        return iss if isinstance(iss, str) else None

    def record(self) -> dict[str, Any]:
        """Key id, algorithm, SHA-256 and the unverified ``iss``, ``sub``, ``aud``, ``exp``
        (bounded): what a rejected token's record says about it."""
        out: dict[str, Any] = {
            "sha256": self.sha256,
            "kid": _short(self.kid),
            "alg": _short(self.alg),
        }
        out["unverified"] = {k: _short(self.claims.get(k)) for k in ("iss", "sub", "aud", "exp")}
        return out


def inspect(token: str) -> UnverifiedToken:
    """Split a compact JWS and read its header and claims without checking anything.

    Raises TokenRejected("malformed") if it is larger than :data:`MAX_TOKEN_BYTES`, not a
    compact JWS, or its payload is not a JSON object.
    """
    raw = token.encode("utf-8", "surrogateescape")
    digest = hashlib.sha256(raw).hexdigest()
    if len(raw) > MAX_TOKEN_BYTES:
        raise TokenRejected("malformed", f"token is larger than {MAX_TOKEN_BYTES} bytes")
    if raw.count(b".") != 2:
        raise TokenRejected("malformed", "not a compact JWS (three dot-separated parts)")
    try:
        obj = jws.extract_compact(raw)
        header = obj.headers()
        claims = json.loads(obj.payload)
    except (JoseError, ValueError, TypeError) as exc:
        raise TokenRejected("malformed", f"cannot decode the token: {type(exc).__name__}") from None
    if not isinstance(claims, dict):
        raise TokenRejected("malformed", "the payload is not a JSON object")
    kid, alg = header.get("kid"), header.get("alg")
    return UnverifiedToken(
        digest,
        kid if isinstance(kid, str) else None,
        alg if isinstance(alg, str) else None,
        claims,
    )


def verify(
    token: str,
    key: Key,
    *,
    issuer: str,
    audience: str,
    algorithms: tuple[str, ...],
    now: int,
    leeway: int,
) -> dict[str, Any]:
    """The claims of ``token`` once its signature verifies with ``key`` under one of
    ``algorithms``, its ``iss`` is ``issuer``, its ``aud`` is or contains ``audience``, and
    ``now`` is within ``nbf``/``iat`` .. ``exp`` (``leeway`` seconds of clock skew).
    ``exp`` is required.

    Raises TokenRejected with the reason.
    """
    seen = inspect(token)
    if seen.alg not in algorithms:
        raise TokenRejected("algorithm", f"algorithm {seen.alg!r} is not one of {list(algorithms)}")
    try:
        decoded = jwt.decode(token, key, algorithms=list(algorithms))
    except BadSignatureError:
        raise TokenRejected("bad-signature", "the signature does not verify") from None
    except JoseError as exc:
        raise TokenRejected(
            "malformed", f"cannot verify: {exc.error or type(exc).__name__}"
        ) from None
    registry = jwt.JWTClaimsRegistry(
        now=now,
        leeway=leeway,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
    )
    try:
        registry.validate(decoded.claims)
    except ExpiredTokenError:
        raise TokenRejected(
            "expired", f"expired at {decoded.claims.get('exp')}, now {now}"
        ) from None
    except MissingClaimError as exc:
        raise TokenRejected("bad-claims", f"missing claim {exc.claim}") from None
    except ClaimError as exc:
        if exc.claim == "aud":
            raise TokenRejected(
                "wrong-audience",
                f"audience {_short(decoded.claims.get('aud'))!r} is not {audience!r}",
            ) from None
        if exc.claim == "iss":
            raise TokenRejected("wrong-issuer", f"issuer is not {issuer!r}") from None
        if exc.claim in ("nbf", "iat") and "NumericDate" not in exc.description:
            raise TokenRejected("not-yet-valid", exc.description) from None
        raise TokenRejected("bad-claims", exc.description) from None
    return dict(decoded.claims)
