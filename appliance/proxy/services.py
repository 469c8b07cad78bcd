"""What every session core shares, one set per appliance process (sans-IO).

Where this sits: the daemon builds one :class:`SessionServices` at start and hands it to the
proxy server, which passes it to each protocol's core. Everything a core needs from the
world comes through here as a value or a function: the ledger (``append`` only enqueues),
policy, masking, secrets, clocks and randomness, TLS contexts. So a core can be driven in a
unit test with a fake ledger, a fixed clock and no files.
"""

from __future__ import annotations

import secrets as _secrets
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.config import SecretRef, UpstreamTLS
from appliance.ledger.api import Ledger
from appliance.masking import Masker
from appliance.policy import Policy
from appliance.proxy.refusals import RefusalLog


def _no_tls(tls: UpstreamTLS) -> ssl.SSLContext:
    raise ValueError("no upstream TLS factory configured")


def _no_secret(ref: SecretRef) -> str:
    raise ValueError("no secret reader configured")


def _never() -> float:
    raise ValueError("no clock configured")


@dataclass
class SessionServices:
    """The appliance's shared services (see the module docstring).

    ``clock`` is wall time (entry timestamps), ``monotonic`` for durations; ``read_secret``
    reads an account's secret (raises ApplianceError when it cannot); ``upstream_tls``
    makes (and may cache) the context that verifies a target as its config says;
    ``client_tls`` holds the contexts that terminate the job's TLS, per target;
    ``response_masking(target, identity)`` says whether results are masked toward the job.
    """

    ledger: Ledger
    policy: Policy | None = None
    masker: Masker | None = None
    approvals: bool = False
    record_rows: bool = True
    max_result_bytes: int = 16 * 1024 * 1024
    clock: Callable[[], float] = _never
    monotonic: Callable[[], float] = _never
    random_bytes: Callable[[int], bytes] = _secrets.token_bytes
    read_secret: Callable[[SecretRef], str] = _no_secret
    upstream_tls: Callable[[UpstreamTLS], ssl.SSLContext] = _no_tls
    client_tls: Mapping[str, ssl.SSLContext] = field(default_factory=dict)
    startup_timeout: float = 60.0
    # ledger.durability "write-ahead": a statement that may change a target is sent only
    # once its entry is durable (False: entries are durable at the next checkpoint).
    write_ahead: bool = False
    # Connections that end before their session starts: recorded, aggregated (None: the
    # ledger directly, one entry each).
    refusals: RefusalLog | None = None
    response_masking: Callable[[str, Mapping[str, Any]], bool] | None = None
    # Per protocol, state all its sessions share (PostgreSQL: the cancel key table), made
    # by the registry entry's ``shared`` factory.
    shared: dict[str, Any] = field(default_factory=dict)


__all__ = ["SessionServices"]
