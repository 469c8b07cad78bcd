"""The ``http`` protocol's start: the interception CA, its upstream contexts, its trust.

Where this sits: the daemon calls :func:`prepare` (the registry entry's ``prepare``) once
before it listens; tests call :func:`make_shared`.
"""

from __future__ import annotations

import datetime
import functools
import ssl
from collections.abc import Callable
from typing import Any

from appliance.config import Config, Target
from appliance.proxy.http.ca import InterceptionCA, upstream_context
from appliance.proxy.http.core import HttpShared
from appliance.proxy.http.options import parse_interception
from appliance.proxy.http.trust import install

__all__ = ["make_shared", "prepare"]


def make_shared(
    targets: list[Target], *, now: datetime.datetime, lifetime: float = 30 * 86400.0
) -> HttpShared:
    """The CA for every name of ``targets`` and their upstream contexts (made now, from the
    system store as it is before the CA joins it)."""
    names = [n for t in targets for n in t.options.names]
    ca = InterceptionCA(names, now=now, lifetime=datetime.timedelta(seconds=lifetime))
    default = upstream_context()
    contexts: dict[str, ssl.SSLContext] = {}
    for target in targets:
        auth = target.options.auth
        if target.tls.ca is None and auth.type != "client_cert":
            contexts[target.name] = default
            continue
        load: Callable[[ssl.SSLContext], None] | None = None
        if auth.type == "client_cert":
            assert auth.cert is not None and auth.key is not None
            load = functools.partial(_load_client_cert, cert=str(auth.cert), key=str(auth.key))
        contexts[target.name] = upstream_context(
            str(target.tls.ca) if target.tls.ca else None, load=load
        )
    return HttpShared(ca, lambda t: contexts[t.name])


def _load_client_cert(context: ssl.SSLContext, *, cert: str, key: str) -> None:
    context.load_cert_chain(cert, key)


def prepare(config: Config, record: Callable[[str, dict[str, Any]], None]) -> HttpShared:
    """The daemon's start hook: make the CA, put it into the runner's trust, record it."""
    interception = parse_interception(config.interception)
    targets = [t for t in config.targets.values() if t.protocol == "http"]
    shared = make_shared(
        targets, now=datetime.datetime.now(datetime.UTC), lifetime=interception.lifetime
    )
    done = install(shared.ca.cert_pem, interception.trust)
    record(
        "interception.ca",
        {
            "sha256": shared.ca.fingerprint,
            "names": list(shared.ca.names),
            "not_after": shared.ca.cert.not_valid_after_utc.isoformat(),
            **done,
        },
    )
    return shared
