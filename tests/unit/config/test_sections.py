"""The sections other packages own are parsed in one place, for the daemon and config check."""

from __future__ import annotations

import pytest

from appliance.config import ConfigError, parse_config
from appliance.config.sections import parse_sections

BASE = """
targets:
  - name: db
    protocol: postgres
    addresses: ["10.0.0.5:5432"]
    accounts: [{name: ci, user: app, secret: {file: /s}}]
"""


def test_no_policy_and_default_masking() -> None:
    sections = parse_sections(parse_config(BASE))
    assert sections.policy is None and sections.approvals is None
    assert sections.masking.columns == ()


def test_policy_masking_and_the_approvals_transport() -> None:
    text = (
        BASE
        + """
policy:
  rules: [{name: all, action: allow}]
  approvals: {socket: /run/x.sock}
masking:
  columns: [{target: db, column: ssn, style: redact}]
"""
    )
    sections = parse_sections(parse_config(text))
    assert sections.policy is not None and [r.name for r in sections.policy.rules] == ["all"]
    assert sections.approvals is not None and str(sections.approvals.socket) == "/run/x.sock"
    assert len(sections.masking.columns) == 1


def test_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="masking"):
        parse_sections(parse_config(BASE + "masking: {columns: [{target: nope, column: x}]}\n"))
