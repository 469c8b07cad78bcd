"""The ``http`` target settings and the ``interception`` section
(:mod:`appliance.proxy.http.options`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import parse_config
from appliance.errors import ConfigError
from appliance.proxy.http.options import parse_interception


def test_names_default_to_host_addresses() -> None:
    cfg = parse_config(
        "targets:\n  - {name: api, protocol: http, addresses: ['API.example:443', '10.0.0.0/24:443']}\n"
    )
    options = cfg.targets["api"].options
    assert (
        options.names == ("api.example",)
        and options.auth.type == "none"
        and options.plaintext == "refuse"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("auth: {type: header}", "needs 'header'"),
        ("auth: {type: aws_sigv4, region: x}", "needs 'region' and 'service'"),
        ("auth: {type: bearer}", "needs an account"),
        ("auth: {type: magic}", "expected one of"),
        ("plaintext: maybe", "expected one of"),
    ],
)
def test_mistakes_name_the_key(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(
            f"targets:\n  - name: api\n    protocol: http\n    addresses: ['a.test:443']\n    {extra}\n"
        )


def test_networks_only_need_names() -> None:
    with pytest.raises(ConfigError, match="needs 'names'"):
        parse_config("targets:\n  - {name: api, protocol: http, addresses: ['10.0.0.0/24:443']}\n")


def test_interception_section() -> None:
    cfg = parse_config(
        "targets:\n  - {name: api, protocol: http, addresses: ['a.test:443']}\n"
        "interception: {ca_file: /x/ca.pem, env_file: null, system: false, lifetime: 24h}\n"
    )
    section = parse_interception(cfg.interception)
    assert section.trust.ca_file == Path("/x/ca.pem") and section.trust.env_file is None
    assert not section.trust.system and section.lifetime == 86400
    assert parse_interception(None).trust.system
