"""The settings of an ``http`` target, and the ``interception`` section, from the config.

A target (``protocol: http``) may have, beyond the common keys::

    - name: orders-api
      protocol: http
      addresses: ["api.orders.example:443", "10.20.0.0/24:443"]
      names: ["api.orders.example"]       # TLS names (SNI) served; default: the host names
      kubernetes: false                   # read requests as Kubernetes API calls
      auth: {type: bearer}                # bearer | basic | header | aws_sigv4 | client_cert | none
      accounts: [{name: ci, user: "-", secret: {credential: orders-api-token}}]
      tls: {mode: verify-full}            # upstream: the system store (or ca: FILE)
      record_body: 64KiB                  # body bytes kept per message (masked); 0: none
      plaintext: refuse                   # port-80 HTTP: refuse (403) or forward

``auth`` and the account give the upstream credential: ``bearer`` (the secret is the token;
also a Kubernetes service-account token), ``basic`` (user and secret), ``header`` (``name:``
the header, the secret its value), ``aws_sigv4`` (user = access key id, secret = secret
key; ``region``, ``service``: the request is re-signed), ``client_cert`` (``cert``/``key``
files: TLS client certificate upstream). ``none``: nothing is added, and whatever the job
sent is still removed.

The appliance-wide ``interception`` section says where the CA goes (:mod:`.trust`)::

    interception:
      ca_file: /run/appliance/interception-ca.pem
      bundle: /run/appliance/ca-bundle.pem
      env_file: /run/appliance/job-ca.env
      system: true                        # update-ca-certificates
      lifetime: 30d
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.config import Node
from appliance.proxy.http.trust import TrustConfig

AUTH_TYPES = ("none", "bearer", "basic", "header", "aws_sigv4", "client_cert")
_TARGET_KEYS = ("names", "kubernetes", "auth", "record_body", "plaintext")
TARGET_KEYS = (*_TARGET_KEYS, "tls")


@dataclass(frozen=True)
class Auth:
    type: str = "none"
    header: str | None = None
    region: str | None = None
    service: str | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class HttpOptions:
    names: tuple[str, ...]
    kubernetes: bool = False
    auth: Auth = Auth()
    record_body: int = 64 * 1024
    plaintext: str = "refuse"


def parse_options(m: dict[str, Node]) -> HttpOptions:
    """The registry's ``options`` hook: the target's checked keys -> :class:`HttpOptions`."""
    names: list[str] = []
    if "names" in m:
        for item in m["names"].items_or_one():
            name = item.string(pattern=r"(\*\.)?[A-Za-z0-9.:-]+").lower().rstrip(".")
            names.append(name)
    else:
        for item in m["addresses"].items_or_one():
            host = item.string().rsplit(":", 1)[0].strip("[]")
            if "/" not in host:
                names.append(host.lower())
    if not names:
        m["addresses"].fail(
            "an http target addressed by networks only needs 'names' (the TLS names it serves)"
        )
    auth = Auth()
    if "auth" in m:
        a = m["auth"].keys(
            required=("type",), optional=("header", "region", "service", "cert", "key")
        )
        kind = a["type"].string(choices=AUTH_TYPES)
        if kind == "header" and "header" not in a:
            m["auth"].fail("auth type header needs 'header' (the header's name)")
        if kind == "aws_sigv4" and ("region" not in a or "service" not in a):
            m["auth"].fail("auth type aws_sigv4 needs 'region' and 'service'")
        if kind == "client_cert" and ("cert" not in a or "key" not in a):
            m["auth"].fail("auth type client_cert needs 'cert' and 'key' files")
        auth = Auth(
            kind,
            header=a["header"].string(pattern=r"[A-Za-z0-9-]+").lower() if "header" in a else None,
            region=a["region"].string() if "region" in a else None,
            service=a["service"].string() if "service" in a else None,
            cert=Path(a["cert"].string()) if "cert" in a else None,
            key=Path(a["key"].string()) if "key" in a else None,
        )
        if kind in ("bearer", "basic", "header", "aws_sigv4") and "accounts" not in m:
            m["auth"].fail(f"auth type {kind} needs an account whose secret is the credential")
    return HttpOptions(
        names=tuple(names),
        kubernetes=m["kubernetes"].boolean() if "kubernetes" in m else False,
        auth=auth,
        record_body=m["record_body"].size() if "record_body" in m else 64 * 1024,
        plaintext=m["plaintext"].string(choices=("refuse", "forward"))
        if "plaintext" in m
        else "refuse",
    )


@dataclass(frozen=True)
class Interception:
    trust: TrustConfig
    lifetime: float = 30 * 86400.0


def parse_interception(node: Node | None) -> Interception:
    """The ``interception`` section (None: the defaults)."""
    if node is None or node.is_null:
        return Interception(TrustConfig())
    m = node.keys(
        optional=(
            "ca_file",
            "bundle",
            "env_file",
            "system",
            "system_bundle",
            "local_dir",
            "etc_dir",
            "certs_dir",
            "certs_conf",
            "hooks_dir",
            "lifetime",
        )
    )
    d = TrustConfig()

    def path(key: str, default: Path) -> Path:
        return Path(m[key].string()) if key in m else default

    trust = TrustConfig(
        ca_file=path("ca_file", d.ca_file),
        bundle=path("bundle", d.bundle),
        env_file=(None if m["env_file"].is_null else Path(m["env_file"].string()))
        if "env_file" in m
        else d.env_file,
        system=m["system"].boolean() if "system" in m else d.system,
        system_bundle=path("system_bundle", d.system_bundle),
        local_dir=path("local_dir", d.local_dir),
        etc_dir=path("etc_dir", d.etc_dir),
        certs_dir=path("certs_dir", d.certs_dir),
        certs_conf=path("certs_conf", d.certs_conf),
        hooks_dir=path("hooks_dir", d.hooks_dir),
    )
    lifetime = m["lifetime"].duration() if "lifetime" in m else 30 * 86400.0
    if lifetime <= 0:
        m["lifetime"].fail("must be longer than 0")
    return Interception(trust, lifetime)


__all__ = [
    "AUTH_TYPES",
    "TARGET_KEYS",
    "Auth",
    "HttpOptions",
    "Interception",
    "parse_interception",
    "parse_options",
]
