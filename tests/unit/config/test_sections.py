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


# -- proxy.workers (issue 19): what several workers cannot do yet is refused by name ---------


def test_proxy_workers_default_auto_and_number() -> None:
    import os

    assert parse_config(BASE).proxy.workers == 1
    assert parse_config(BASE + "proxy: {workers: 3}\n").proxy.workers == 3
    auto = parse_config(BASE + "proxy: {workers: auto}\n").proxy.workers
    assert auto == len(os.sched_getaffinity(0))
    for bad in ("0", "many", "65"):
        with pytest.raises(ConfigError, match="workers"):
            parse_config(BASE + f"proxy: {{workers: {bad}}}\n")


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ("ledger: {writer: thread}\n", "needs ledger.writer: process"),
        (
            "ledger: {ship: {to: 's3://evidence/p', on_backlog: refuse}}\n",
            "on_backlog: refuse yet",
        ),
    ],
)
def test_several_workers_refuse_what_they_do_not_support(extra: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_config(BASE + extra + "proxy: {workers: 2}\n")
    parse_config(BASE + extra + "proxy: {workers: 1}\n")


def test_several_workers_refuse_http_and_ssh_targets() -> None:
    text = BASE + (
        "  - {name: api, protocol: http, addresses: ['10.0.0.6:443']}\nproxy: {workers: 2}\n"
    )
    with pytest.raises(ConfigError, match="does not serve http targets yet"):
        parse_config(text)


def test_several_workers_take_approvers() -> None:
    """Held statements of workers are held by the daemon's broker (appliance.proxy.workers)."""
    from tests.unit.policy.helpers import ALICE

    policy = (
        "policy:\n"
        "  rules: [{name: r, action: review, approvers: [alice]}]\n"
        "  approvals:\n"
        f'    approvers: [{{name: alice, key: "{ALICE}"}}]\n'
    )
    sections = parse_sections(parse_config(BASE + policy + "proxy: {workers: 2}\n"))
    assert sections.policy is not None and sections.policy.approvers
