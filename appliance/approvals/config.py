"""The transport part of ``policy.approvals`` in the config: the socket and the webhooks.

``policy.approvals`` holds five keys. ``timeout`` and ``approvers`` are parsed by
:mod:`appliance.policy` (it owns the section and its unknown-key check, and should allow
:data:`TRANSPORT_KEYS`); this module parses the other three::

    policy:
      approvals:
        timeout: 10m
        approvers: {...}
        socket: /run/appliance/approvals.sock     # optional; absolute path
        webhooks:                                 # optional; a URL or {url, timeout, retries}
          - https://hooks.example.com/approvals
          - url: http://10.0.0.9:8080/hook
            timeout: 2s                           # one attempt; default 5s
            retries: 3                            # after the first attempt; default 2
        hub:                                      # optional: approvals through the fleet's bucket
          url: s3://evidence/fleet                # requests go under approvals/ (appliance.approvals.hub)
          endpoint_url: https://s3.example:7443   # optional, as ledger.ship; also region, ca,
          credentials: {credential: s3}           # credentials (else the AWS SDK's chain)
          poll_interval: 500ms                    # how often pending requests look for decisions
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from appliance.approvals.server import DEFAULT_SOCKET
from appliance.approvals.webhook import WebhookTarget
from appliance.bucket import BucketSettings
from appliance.config import BUCKET_KEYS, Node, parse_bucket_settings

__all__ = ["TRANSPORT_KEYS", "ApprovalsTransportConfig", "HubConfig", "parse_approvals_transport"]

TRANSPORT_KEYS = ("socket", "webhooks", "hub")


@dataclass(frozen=True)
class HubConfig:
    """``policy.approvals.hub``: the fleet's bucket as an approvals transport."""

    bucket: BucketSettings
    poll_interval: float = 0.5


@dataclass(frozen=True)
class ApprovalsTransportConfig:
    """Where approvers reach the appliance and where it announces requests."""

    socket: Path = DEFAULT_SOCKET
    webhooks: tuple[WebhookTarget, ...] = ()
    hub: HubConfig | None = None


def parse_approvals_transport(node: Node | None) -> ApprovalsTransportConfig:
    """Read ``socket`` and ``webhooks`` from the ``policy.approvals`` node (other keys are
    left to the policy parser); None gives the defaults. Raises ConfigError at the key."""
    if node is None:
        return ApprovalsTransportConfig()
    m = node.mapping()
    socket = DEFAULT_SOCKET
    if "socket" in m:
        text = m["socket"].string()
        if not text.startswith("/"):
            m["socket"].fail(f"the approvals socket must be an absolute path, got {text!r}")
        socket = Path(text)
    webhooks: tuple[WebhookTarget, ...] = ()
    if "webhooks" in m:
        webhooks = tuple(_parse_webhook(item) for item in m["webhooks"].items())
    hub = _parse_hub(m["hub"]) if "hub" in m else None
    return ApprovalsTransportConfig(socket=socket, webhooks=webhooks, hub=hub)


def _parse_hub(node: Node) -> HubConfig:
    m = node.keys(required=("url",), optional=(*BUCKET_KEYS, "poll_interval"))
    interval = m["poll_interval"].duration() if "poll_interval" in m else 0.5
    if not 0.05 <= interval <= 60:
        m["poll_interval"].fail("the poll interval must be between 50ms and 60s")
    return HubConfig(parse_bucket_settings(m, "url"), interval)


def _parse_webhook(node: Node) -> WebhookTarget:
    if not node.is_mapping:
        return WebhookTarget(_parse_url(node))
    m = node.keys(required=("url",), optional=("timeout", "retries"))
    default = WebhookTarget("")
    timeout = m["timeout"].duration() if "timeout" in m else default.timeout
    if timeout <= 0:
        m["timeout"].fail("the webhook timeout must be positive")
    retries = m["retries"].integer(minimum=0, maximum=10) if "retries" in m else default.retries
    return WebhookTarget(_parse_url(m["url"]), timeout=timeout, retries=retries)


def _parse_url(node: Node) -> str:
    url = node.string()
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as exc:
        node.fail(f"invalid webhook URL: {exc}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        node.fail("a webhook is an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        node.fail("user:password in a webhook URL is not supported")
    if parts.fragment:
        node.fail("a webhook URL has no #fragment")
    return url
