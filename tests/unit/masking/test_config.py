"""The masking: config section: what loads, defaults, and errors that name key and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.config import ConfigError, SecretRef, parse_config
from appliance.masking import DETECTOR_NAMES, MaskingConfig, Style, parse_masking

TARGETS = """\
targets:
  - name: orders-db
    protocol: postgres
    addresses: [10.0.0.5:5432]
    accounts: [{name: ci, user: app, secret: {file: /etc/appliance/app.pw}}]
  - name: billing-db
    protocol: postgres
    addresses: [10.0.0.6:5432]
    accounts: [{name: ci, user: app, secret: {file: /etc/appliance/app.pw}}]
"""


def parse(section: str) -> MaskingConfig:
    cfg = parse_config(TARGETS + section)
    return parse_masking(cfg.masking, targets=cfg.targets)


def error(section: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(section)
    return str(info.value)


def test_defaults() -> None:
    for config in (parse(""), MaskingConfig(), parse("masking:\n")):
        on = {n for n, s in config.detectors.items() if s.style is not None}
        assert on == set(DETECTOR_NAMES) - {"ipv4", "ipv6"}
        assert all(s.style in (Style.REDACT, None) for s in config.detectors.values())
        assert all(s.scope == "all" for s in config.detectors.values())
        assert config.columns == ()
        assert not config.response_masking("orders-db", {"source": "ebpf"})
        assert not config.uses_hash


FULL = """\
masking:
  key: {file: /etc/appliance/mask.key}
  phone_regions: [US, DE]
  detectors:
    card: partial
    email: {style: hash, scope: results}
    ipv4: on
    phone: off
  columns:
    - {target: orders-db, table: public.customers, column: "card*", style: partial}
    - {table: customers, column: id, style: none}
    - {column: ssn, style: redact, label: SSN}
    - {column: "*_token", style: hash}
  response:
    - target: orders-db
      identity: {repository: "org/*", uid: 1000}
"""


def test_a_full_section() -> None:
    config = parse(FULL)
    assert config.key == SecretRef(file=Path("/etc/appliance/mask.key"))
    assert config.phone_regions == ("US", "DE")
    assert config.detectors["card"].style is Style.PARTIAL
    assert config.detectors["email"].style is Style.HASH
    assert config.detectors["email"].scope == "results"
    assert config.detectors["ipv4"].style is Style.REDACT
    assert config.detectors["phone"].style is None
    assert config.uses_hash
    assert [r.style for r in config.columns] == [
        Style.PARTIAL,
        Style.NONE,
        Style.REDACT,
        Style.HASH,
    ]
    identity = {
        "source": "ebpf",
        "uid": 1000,
        "ci": {"provider": "github", "repository": "org/app"},
    }
    assert config.response_masking("orders-db", identity)
    assert not config.response_masking("billing-db", identity)
    assert not config.response_masking("orders-db", {**identity, "uid": 0})
    other = {"source": "ebpf", "uid": 1000, "ci": {"repository": "elsewhere/app"}}
    assert not config.response_masking("orders-db", other)
    # An identity without the key (unattributed) is masked: fail closed.
    assert config.response_masking("orders-db", {"source": "unattributed"})


def test_response_true_masks_everything() -> None:
    config = parse("masking:\n  response: true\n")
    assert config.response_masking("billing-db", {})
    assert not parse("masking:\n  response: false\n").response_masking("orders-db", {})


def test_column_rule_matching() -> None:
    config = parse(FULL)
    rule = config.column_rule("orders-db", "public.customers", "card_number")
    assert rule is not None and rule.style is Style.PARTIAL
    # The first rule is for orders-db only.
    assert config.column_rule("billing-db", "public.customers", "card_number") is None
    # Case does not matter (SQL folds identifiers); bare table patterns match any schema.
    rule = config.column_rule("billing-db", "sales.CUSTOMERS", "ID")
    assert rule is not None and rule.style is Style.NONE
    assert config.column_rule("billing-db", "sales.orders", "id") is None
    rule = config.column_rule("billing-db", None, "api_token")
    assert rule is not None and rule.style is Style.HASH
    # Unknown table: of the rules that may match, the one that hides most.
    rule = config.column_rule("orders-db", None, "id")
    assert rule is not None and rule.style is Style.NONE
    rule = config.column_rule("orders-db", None, None)
    assert rule is not None and rule.style is Style.REDACT


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            "masking:\n  detectors: {cards: redact}\n",
            "masking.detectors.cards: unknown detector 'cards'",
        ),
        (
            "masking:\n  detectors: {card: blur}\n",
            "expected one of redact, partial, hash; got 'blur'",
        ),
        (
            "masking:\n  detectors: {card: {style: redact, scope: logs}}\n",
            "scope: expected one of all, results",
        ),
        ("masking:\n  detectors: {card: hash}\n", "the hash style needs a masking key"),
        ("masking:\n  columns: [{column: x, style: hash}]\n", "the hash style needs a masking key"),
        ("masking:\n  columns: [{column: x}]\n", "missing required key 'style'"),
        (
            "masking:\n  columns: [{column: x, style: none, target: nope}]\n",
            "unknown target 'nope'",
        ),
        ("masking:\n  columns: [{column: 'x[', style: none}]\n", "unbalanced [ ]"),
        (
            "masking:\n  columns: [{column: x, style: redact, label: 'bad label'}]\n",
            "does not match",
        ),
        ("masking:\n  response: [{target: nope}]\n", "unknown target 'nope'"),
        ("masking:\n  response: [{identity: {repo: x}}]\n", "unknown identity key 'repo'"),
        ("masking:\n  key: hunter2\n", "secrets are never written in the config"),
        ("masking:\n  phone_regions: [XX]\n", "unknown phone region 'XX'"),
        ("masking:\n  colums: []\n", "unknown key 'colums'"),
    ],
)
def test_errors_name_the_key_and_line(section: str, message: str) -> None:
    text = error(section)
    assert message in text
    where = re.match(r"<config>:(\d+): masking", text)
    assert where is not None, text
    assert int(where.group(1)) >= 10  # the section starts after the ten lines of targets


def test_error_lines_point_into_the_section() -> None:
    text = error("masking:\n  detectors:\n    card: redact\n    cards: redact\n")
    assert text.startswith("<config>:13: masking.detectors.cards:")
