"""The ``identity`` section of the configuration: which CI token issuers are trusted.

Shape (see ``packer/config.example.yaml``)::

    identity:
      timeout: 5s                    # one HTTPS request (token, JWKS, discovery)
      refresh_interval: 30s          # at most one JWKS fetch per issuer this often
      issuers:                       # tried in order; the first whose token variables
        - name: github               # the job's environment has is used
          provider: github           # claims mapping: github | gitlab | buildkite
          issuer: https://token.actions.githubusercontent.com
          # The appliance asks the job's token endpoint itself (ACTIONS_ID_TOKEN_REQUEST_URL
          # and _TOKEN in the job's environment: `permissions: id-token: write`) for this
          # audience; {boot_id} makes a token minted here useless on any other runner boot.
          audience: "appliance:{boot_id}"
          token: {request: github, hosts: ["*.actions.githubusercontent.com"]}
        - name: gitlab
          provider: gitlab
          issuer: https://gitlab.example.com
          audience: https://appliance.example   # as in the pipeline's id_tokens: aud
          token: {env: APPLIANCE_ID_TOKEN}      # the pipeline's `id_tokens:` variable
          keys: {file: /etc/appliance/oidc/gitlab.jwks}   # pinned JWKS: never fetched
          # jwks_uri: https://...        # default: from {issuer}/.well-known/openid-configuration
          # ca: /etc/appliance/oidc-ca.pem   # CA bundle for the fetches (default: system)
          # algorithms: [RS256]          # default [RS256]
          # leeway: 60s                  # clock skew allowed on exp/nbf/iat

Every mistake is a :class:`~appliance.errors.ConfigError` naming the key and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Node
from appliance.identity._claims import PROVIDERS

__all__ = [
    "ALGORITHMS",
    "BOOT_ID",
    "REQUEST_TOKEN",
    "REQUEST_URL",
    "IdentityConfig",
    "Issuer",
    "TokenSource",
    "parse_identity",
]

# Asymmetric signatures only: a shared-secret (HS*) or "none" token is never a CI identity.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
# GitHub Actions' token endpoint, in the environment of a job with `id-token: write`.
REQUEST_URL = "ACTIONS_ID_TOKEN_REQUEST_URL"
REQUEST_TOKEN = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"
BOOT_ID = "{boot_id}"
GITHUB_HOSTS = ("*.actions.githubusercontent.com",)
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
_VARIABLE = r"[A-Za-z_][A-Za-z0-9_]{0,127}"


@dataclass(frozen=True)
class TokenSource:
    """How the appliance gets a job's token.

    ``kind`` ``request``: it asks the job's GitHub Actions token endpoint itself
    (:data:`REQUEST_URL` with the bearer :data:`REQUEST_TOKEN`, both read from the job's
    environment), only at an https URL whose host matches one of ``hosts``. ``env``: the
    token is the value of ``variable`` in the job's environment (GitLab ``id_tokens``).
    """

    kind: str
    variable: str | None = None
    hosts: tuple[str, ...] = ()

    @property
    def variables(self) -> frozenset[str]:
        """The environment variables this source reads (all of them secrets)."""
        if self.kind == "request":
            return frozenset({REQUEST_URL, REQUEST_TOKEN})
        assert self.variable is not None
        return frozenset({self.variable})


@dataclass(frozen=True)
class Issuer:
    """One trusted issuer of CI identity tokens; see the module docstring."""

    name: str
    provider: str
    issuer: str
    audience: str
    token: TokenSource
    jwks_uri: str | None = None
    keys_file: Path | None = None
    ca: Path | None = None
    algorithms: tuple[str, ...] = ("RS256",)
    leeway: int = 60

    def audience_for(self, boot_id: str) -> str:
        """The audience a token must have on this boot."""
        return self.audience.replace(BOOT_ID, boot_id)


@dataclass(frozen=True)
class IdentityConfig:
    issuers: tuple[Issuer, ...]
    timeout: float = 5.0
    refresh_interval: float = 30.0
    max_key_age: float = 3600.0


def parse_identity(node: Node | None) -> IdentityConfig | None:
    """Check the ``identity`` section (None if the file has none: every CI field is then
    claimed only). Raises ConfigError at the first problem."""
    if node is None:
        return None
    m = node.keys(required=("issuers",), optional=("timeout", "refresh_interval", "max_key_age"))
    items = m["issuers"].items()
    if not items:
        m["issuers"].fail("at least one issuer is required (or leave the section out)")
    issuers: list[Issuer] = []
    for item in items:
        issuer = _parse_issuer(item)
        if any(i.name == issuer.name for i in issuers):
            item.mapping()["name"].fail(f"duplicate issuer name {issuer.name!r}")
        issuers.append(issuer)
    d = IdentityConfig(())
    return IdentityConfig(
        tuple(issuers),
        timeout=_positive(m["timeout"]) if "timeout" in m else d.timeout,
        refresh_interval=_positive(m["refresh_interval"])
        if "refresh_interval" in m
        else d.refresh_interval,
        max_key_age=_positive(m["max_key_age"]) if "max_key_age" in m else d.max_key_age,
    )


def _parse_issuer(node: Node) -> Issuer:
    m = node.keys(
        required=("name", "provider", "issuer", "audience", "token"),
        optional=("jwks_uri", "keys", "ca", "algorithms", "leeway"),
    )
    name = m["name"].string(pattern=_NAME)
    provider = m["provider"].string(choices=PROVIDERS)
    issuer = _https(m["issuer"])
    token = _parse_token(m["token"])
    audience = m["audience"].string()
    if token.kind == "request" and BOOT_ID not in audience:
        m["audience"].fail(
            f"a requested token's audience must contain {BOOT_ID}: bound to this runner's "
            "boot, a token minted for it is refused on any other runner"
        )
    if token.kind == "env" and BOOT_ID in audience:
        m["audience"].fail(f"a token from the job's environment cannot know {BOOT_ID}")
    keys_file = None
    if "keys" in m:
        keys_file = Path(m["keys"].keys(required=("file",))["file"].string())
        if "jwks_uri" in m:
            m["jwks_uri"].fail("pinned keys are never fetched: give 'keys' or 'jwks_uri', not both")
    algorithms: tuple[str, ...] = ("RS256",)
    if "algorithms" in m:
        algorithms = tuple(a.string(choices=ALGORITHMS) for a in m["algorithms"].items_or_one())
        if not algorithms:
            m["algorithms"].fail("at least one algorithm is required")
    leeway = 60
    if "leeway" in m:
        leeway = round(m["leeway"].duration())
        if leeway > 300:
            m["leeway"].fail("more than 5 minutes of clock skew is not skew")
    return Issuer(
        name=name,
        provider=provider,
        issuer=issuer,
        audience=audience,
        token=token,
        jwks_uri=_https(m["jwks_uri"]) if "jwks_uri" in m else None,
        keys_file=keys_file,
        ca=Path(m["ca"].string()) if "ca" in m else None,
        algorithms=algorithms,
        leeway=leeway,
    )


def _parse_token(node: Node) -> TokenSource:
    m = node.keys(optional=("request", "hosts", "env"))
    if ("request" in m) == ("env" in m):
        node.fail("give exactly one of 'request' (github) or 'env' (a variable's name)")
    if "env" in m:
        if "hosts" in m:
            m["hosts"].fail("'hosts' is for 'request'")
        return TokenSource("env", variable=m["env"].string(pattern=_VARIABLE))
    m["request"].string(choices=("github",))
    hosts: tuple[str, ...] = GITHUB_HOSTS
    if "hosts" in m:
        hosts = tuple(
            h.string(pattern=r"[A-Za-z0-9*][A-Za-z0-9*.-]*") for h in m["hosts"].items_or_one()
        )
        if not hosts:
            m["hosts"].fail("at least one host pattern is required")
    return TokenSource("request", hosts=hosts)


def _https(node: Node) -> str:
    url = node.string()
    if not re.fullmatch(r"https://[^\s/?#]+(/[^\s?#]*)?", url):
        node.fail(f"expected an https URL without query or fragment, got {url!r}")
    return url


def _positive(node: Node) -> float:
    seconds = node.duration()
    if seconds <= 0:
        node.fail("must be longer than 0")
    return seconds
