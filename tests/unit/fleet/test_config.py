"""The fleet's config keys: ledger.ship, the origin's placeholders, policy.approvals.hub."""

from __future__ import annotations

import socket

import pytest

from appliance.approvals import parse_approvals_transport
from appliance.bucket import ObjectLock, parse_bucket_url
from appliance.config import ConfigError, SecretRef, parse_config

BASE = """\
targets:
  - {name: db, protocol: postgres, addresses: [10.0.0.5:5432], accounts: [{name: a, user: u, secret: {file: /s}}]}
"""


def ledger(text: str) -> str:
    return BASE + "ledger:\n" + "".join(f"  {line}\n" for line in text.splitlines())


def test_ship_loads_with_its_defaults_and_every_key() -> None:
    cfg = parse_config(ledger("ship: {to: s3://evidence/fleet/eu}"))
    ship = cfg.ledger.ship
    assert ship is not None
    assert ship.bucket.url == parse_bucket_url("s3://evidence/fleet/eu")
    assert (ship.bucket.endpoint_url, ship.bucket.credentials, ship.object_lock) == (
        None,
        None,
        None,
    )
    assert (ship.backlog_limit, ship.on_backlog) == (100_000, "serve")
    full = parse_config(
        ledger(
            "ship:\n"
            "  to: s3://evidence\n"
            "  endpoint_url: https://198.19.0.1:7443\n"
            "  region: eu-west-1\n"
            "  ca: /etc/appliance/s3-ca.pem\n"
            "  credentials: {credential: s3_credentials}\n"
            "  object_lock: {mode: COMPLIANCE, retain_days: 400}\n"
            "  backlog_limit: 5000\n"
            "  on_backlog: refuse\n"
        )
    ).ledger.ship
    assert full is not None
    assert full.bucket.credentials == SecretRef(credential="s3_credentials")
    assert full.object_lock == ObjectLock("COMPLIANCE", 400)
    assert (full.backlog_limit, full.on_backlog, full.bucket.region) == (
        5000,
        "refuse",
        "eu-west-1",
    )


@pytest.mark.parametrize(
    ("ship", "message"),
    [
        ("{endpoint_url: http://x}", "ledger.ship: missing required key 'to'"),
        (
            "{to: evidence/fleet}",
            "ledger.ship.to: expected s3://BUCKET[/PREFIX], got 'evidence/fleet'",
        ),
        ("{to: s3://Evidence_1}", "ledger.ship.to: invalid bucket name 'Evidence_1'"),
        (
            "{to: s3://evidence, endpoint_url: ftp://x}",
            "ledger.ship.endpoint_url: an endpoint URL is http(s)://host[:port]",
        ),
        ("{to: s3://evidence, on_backlog: drop}", "ledger.ship.on_backlog"),
        (
            "{to: s3://evidence, object_lock: {mode: compliance, retain_days: 1}}",
            "ledger.ship.object_lock.mode",
        ),
        (
            "{to: s3://evidence, object_lock: {mode: COMPLIANCE}}",
            "missing required key 'retain_days'",
        ),
        ("{to: s3://evidence, credentials: AKIA123}", "secrets are never written in the config"),
        ("{to: s3://evidence, backlog_limit: 0}", "ledger.ship.backlog_limit"),
    ],
)
def test_ship_errors_name_the_key(ship: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(ledger(f"ship: {ship}"))
    assert message in str(err.value), str(err.value)


def test_origin_placeholders() -> None:
    cfg = parse_config(ledger("origin: 'ci.example/{hostname}/{boot_id}'"))
    host, boot = cfg.ledger.origin.split("/")[1:]
    assert host == socket.gethostname()
    assert len(boot) == 36 and boot.count("-") == 4
    with pytest.raises(ConfigError, match=r"unknown placeholder \{pid\}"):
        parse_config(ledger("origin: 'ci.example/{pid}'"))


def test_the_approvals_hub() -> None:
    cfg = parse_config(
        BASE + "policy:\n  approvals:\n    hub: {url: s3://evidence/fleet, poll_interval: 250ms, "
        "endpoint_url: 'http://198.19.0.1:7480'}\n"
    )
    assert cfg.policy is not None
    t = parse_approvals_transport(cfg.policy.mapping()["approvals"])
    assert t.hub is not None
    assert (str(t.hub.bucket.url), t.hub.poll_interval) == ("s3://evidence/fleet", 0.25)
    assert t.hub.bucket.endpoint_url == "http://198.19.0.1:7480"
    for hub, message in [
        ("{url: s3://evidence, poll_interval: 0s}", "hub.poll_interval: the poll interval must be"),
        ("{url: s3://e}", "policy.approvals.hub.url: invalid bucket name 'e'"),
        ("{endpoint_url: 'http://x'}", "missing required key 'url'"),
    ]:
        bad = parse_config(BASE + f"policy:\n  approvals:\n    hub: {hub}\n")
        assert bad.policy is not None
        with pytest.raises(ConfigError) as err:
            parse_approvals_transport(bad.policy.mapping()["approvals"])
        assert message in str(err.value), str(err.value)
