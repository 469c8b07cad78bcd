"""Verified CI identity: a job's identity token checked against its issuer's keys.

A job writes its own environment, so the CI variables capture reads there are *claimed*
(``appliance.capture``). The CI systems also issue signed job identity tokens (OIDC: GitHub
Actions, GitLab ``id_tokens``, Buildkite); a token that verifies against its issuer's keys
makes the fields it states *verified* (DESIGN.md, "Identity"). Where this sits::

    accepted connection ─► capture: eBPF owner, /proc ─► identity (ci: claimed)
                       └─► capture.job_environ(owner, Verifier.variables): the token variables
    Verifier.identify(identity, environ)   (awaited: HTTPS in a worker thread)
        obtain: GitHub token request (audience bound to this boot) | a variable's value
        check:  _verify.inspect → KeyStore.key(kid) → _verify.verify (joserfc)
        annotate(identity, outcome) ─► ci effective, verified [...], token {...}, mismatch
    ─► session.start and every entry of the session; policy matches verified fields

The pieces: :mod:`._config` (the ``identity`` section), :mod:`._fetch` (HTTPS off the
loop), :mod:`._keys` (JWKS: pinned, or fetched and refreshed on an unknown key id),
:mod:`._verify` (one token, joserfc), :mod:`._claims` (claims → CI fields per provider),
:mod:`._record` (verified vs claimed in the session's identity), :mod:`._verifier` (the
per-job cache and the ledger records).

A token is a bearer credential: it never reaches the ledger or a log; records name it by its
SHA-256 and keep its claims, issuer and key id.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from appliance.identity._claims import CLAIMS, PROVIDERS, fields_from_claims
from appliance.identity._config import IdentityConfig, Issuer, TokenSource, parse_identity
from appliance.identity._fetch import Fetcher, FetchError
from appliance.identity._record import STATUSES, Outcome, annotate

if TYPE_CHECKING:
    from appliance.identity._keys import KeyStore, KeysUnavailable, parse_jwks
    from appliance.identity._verifier import Verifier
    from appliance.identity._verify import REASONS, TokenRejected, inspect, token_sha256, verify

# What checks tokens needs joserfc (and through it cryptography): about 9 MB and 40 ms that a
# daemon with no ``identity`` section never uses (issue 19), so those names are imported on
# first use (PEP 562).
_LAZY = {
    "KeyStore": "_keys",
    "KeysUnavailable": "_keys",
    "parse_jwks": "_keys",
    "Verifier": "_verifier",
    "REASONS": "_verify",
    "TokenRejected": "_verify",
    "inspect": "_verify",
    "token_sha256": "_verify",
    "verify": "_verify",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CLAIMS",
    "PROVIDERS",
    "REASONS",
    "STATUSES",
    "FetchError",
    "Fetcher",
    "IdentityConfig",
    "Issuer",
    "KeyStore",
    "KeysUnavailable",
    "Outcome",
    "TokenRejected",
    "TokenSource",
    "Verifier",
    "annotate",
    "boot_id",
    "fields_from_claims",
    "inspect",
    "parse_identity",
    "parse_jwks",
    "token_sha256",
    "verify",
]


def boot_id() -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``): requested tokens' audience."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()
