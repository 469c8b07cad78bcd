"""``policy.approvals`` transport keys: socket and webhooks, with errors at the key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.approvals import (
    DEFAULT_SOCKET,
    ApprovalsTransportConfig,
    WebhookTarget,
    parse_approvals_transport,
)
from appliance.config import ConfigError
from appliance.config._node import load_document


def approvals_node(yaml_text: str):  # type: ignore[no-untyped-def]
    root = load_document(yaml_text, "test.yaml")
    return root.mapping()["policy"].mapping()["approvals"]


def test_full_section() -> None:
    node = approvals_node(
        """\
policy:
  approvals:
    timeout: 10m
    approvers: {alice: "alice+0123abcd+AAAA"}
    socket: /run/appliance/approvals.sock
    webhooks:
      - https://hooks.example.com/services/T0/B0/XYZ
      - url: http://10.0.0.9:8080/hook
        timeout: 500ms
        retries: 0
"""
    )
    assert parse_approvals_transport(node) == ApprovalsTransportConfig(
        socket=Path("/run/appliance/approvals.sock"),
        webhooks=(
            WebhookTarget("https://hooks.example.com/services/T0/B0/XYZ"),
            WebhookTarget("http://10.0.0.9:8080/hook", timeout=0.5, retries=0),
        ),
    )


def test_defaults() -> None:
    assert parse_approvals_transport(None) == ApprovalsTransportConfig(DEFAULT_SOCKET, ())
    node = approvals_node("policy:\n  approvals:\n    timeout: 5m\n")
    assert parse_approvals_transport(node) == ApprovalsTransportConfig()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("socket: run/approvals.sock", "test.yaml:3: policy.approvals.socket: .*absolute path"),
        ("socket: 42", "expected a string"),
        ("webhooks: https://x.example/h", "policy.approvals.webhooks: expected a list"),
        ("webhooks: [ftp://x.example/h]", r"webhooks\[0\]: a webhook is an http"),
        ("webhooks: ['https:///nohost']", "with a host"),
        ("webhooks: ['https://u:p@x.example/h']", "user:password"),
        ("webhooks: ['https://x.example/h#frag']", "fragment"),
        ("webhooks: ['http://x.example:99999/h']", "invalid webhook URL"),
        ("webhooks: [{url: 'http://x.example/', retries: 11}]", "at most 10"),
        ("webhooks: [{url: 'http://x.example/', timeout: 0s}]", "must be positive"),
        ("webhooks: [{url: 'http://x.example/', headers: {}}]", "unknown key 'headers'"),
        ("webhooks: [{timeout: 1s}]", "missing required key 'url'"),
    ],
)
def test_errors_name_the_key_and_line(section: str, message: str) -> None:
    node = approvals_node(f"policy:\n  approvals:\n    {section}\n")
    with pytest.raises(ConfigError, match=message):
        parse_approvals_transport(node)
