"""The protocol registry: the config, the daemon and the proxy read the same entries."""

from __future__ import annotations

import pytest

from appliance.config import ConfigError, parse_config
from appliance.proxy import registry
from appliance.proxy.pg.core import PgSession, PgShared

TARGET = """
targets:
  - name: db
    protocol: {protocol}
    addresses: ["10.0.0.5:5432"]
    accounts: [{{name: ci, user: app, secret: {{file: /s}}}}]
{extra}
"""


def test_postgres_entry_loads_its_core_shared_state_and_pcap() -> None:
    entry = registry.get("postgres")
    assert entry.session_factory() is PgSession
    assert isinstance(entry.make_shared(lambda n: b"\0" * n), PgShared)
    from appliance.ledger.pcap import renderer_for

    assert renderer_for("postgres").__module__ == entry.pcap


def test_unknown_protocols_are_config_errors_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="postgres"):
        registry.get("gopher")
    with pytest.raises(ConfigError, match=r"protocol: expected one of"):
        parse_config(TARGET.format(protocol="gopher", extra=""))


def test_a_target_may_use_only_its_protocol_s_keys() -> None:
    cfg = parse_config(
        TARGET.format(protocol="postgres", extra="    startup_parameters: [work_mem]")
    )
    assert cfg.targets["db"].startup_parameters == ("work_mem",)
    with pytest.raises(ConfigError, match="unknown key 'sni'"):
        parse_config(TARGET.format(protocol="postgres", extra="    sni: db.example"))


def test_a_protocol_parses_its_own_options(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = registry.Protocol(
        name="echo",
        description="test",
        default_port=7,
        core="appliance.proxy.pg.core:PgSession",
        target_keys=("greeting",),
        options="tests.unit.proxy.test_registry:_options",
        requires_accounts=False,
    )
    monkeypatch.setitem(registry.PROTOCOLS, "echo", entry)
    text = TARGET.format(protocol="echo", extra="    greeting: hello").replace(
        "    accounts: [{name: ci, user: app, secret: {file: /s}}]\n", ""
    )
    target = parse_config(text).targets["db"]
    assert target.options == {"greeting": "hello"} and target.accounts == ()
    with pytest.raises(ConfigError, match="greeting"):
        parse_config(text.replace("hello", "[1]"))


def _options(m: dict[str, object]) -> dict[str, str]:
    node = m["greeting"]
    return {"greeting": node.string()}  # type: ignore[attr-defined]
