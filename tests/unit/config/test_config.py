"""The config loader: shapes that load, and errors that name the key, expectation and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import Address, ConfigError, load_config, parse_config
from appliance.proxy.registry import PROTOCOLS

GOOD = """\
targets:
  - name: orders-db
    protocol: postgres
    addresses: [10.0.0.5:5432, "[fd00::5]:5432", db.example.com:5432, 10.1.0.0/16:6432]
    listen: 127.0.0.1:6432
    tls: {mode: verify-full, ca: /etc/appliance/ca.pem, server_name: db.example.com}
    startup_parameters: [work_mem]
    accounts:
      - {name: ci-writer, user: app, secret: {file: /etc/appliance/app.pw}}
      - {name: ci-reader, user: reader, secret: {credential: reader-pw}, database: app}
ledger:
  dir: /var/lib/appliance/ledger
  origin: runner-7.example/ledger
  key: {file: /etc/appliance/ledger.key}
  checkpoint_interval: 500ms
  checkpoint_entries: 2000
  max_result_bytes: 8MiB
  writer: thread
capture:
  listen_port: 15001
  mark: 0x4150
"""


def test_a_full_config_loads() -> None:
    cfg = parse_config(GOOD)
    db = cfg.targets["orders-db"]
    assert db.addresses == (
        Address("ip", "10.0.0.5", 5432),
        Address("ip", "fd00::5", 5432),
        Address("host", "db.example.com", 5432),
        Address("cidr", "10.1.0.0/16", 6432),
    )
    assert str(db.addresses[1]) == "[fd00::5]:5432"
    assert db.listen == ("127.0.0.1", 6432)
    assert db.tls.mode == "verify-full"
    assert db.account_for("ci-reader").user == "reader"
    assert db.account_for("anything-else").name == "ci-writer"
    assert cfg.ledger.checkpoint_interval == 0.5
    assert cfg.ledger.max_result_bytes == 8 * 1024 * 1024
    assert cfg.capture.mark == 0x4150
    assert cfg.capture.appliance_cgroup == "/system.slice/appliance.service"  # the unit's
    assert cfg.capture.conntrack_zone == 0x4150
    assert db.startup_parameters == ("work_mem",)
    assert cfg.ledger.writer == "thread"
    assert parse_config(GOOD.replace("  writer: thread\n", "")).ledger.writer == "process"


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(GOOD)
    assert load_config(p).source == str(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the configuration is empty"),
        ("targets: [", "<config>:1: YAML syntax error"),
        ("targets: []\n", "<config>:1: targets: at least one target is required"),
        ("targets: {}\n", "<config>:1: targets: expected a list, got a mapping"),
        ("targetz: []\n", "<config>:1: targetz: unknown key 'targetz'"),
        (
            "targets:\n  - name: a\n    protocol: postgres\n    addresses: [10.0.0.1:5432]\n"
            "    startup_parameters: [replication]\n"
            "    accounts:\n      - {name: x, user: u, secret: {file: /a}}\n",
            "<config>:5: targets[0].startup_parameters[0]: 'replication' is not a setting",
        ),
        (
            "targets:\n  - name: a\n    protocol: postgres\n    addresses: [10.0.0.1:5432]\n"
            "    accounts:\n      - {name: x, user: u, secret: {file: /a}}\n"
            "ledger:\n  writer: fork\n",
            "<config>:8: ledger.writer: expected one of process, thread; got 'fork'",
        ),
        (
            "targets:\n  - name: a\n    protocol: oracle\n    addresses: [x:1]\n    accounts: []\n",
            f"<config>:3: targets[0].protocol: expected one of {', '.join(PROTOCOLS)}; got 'oracle'",
        ),
        (
            "targets:\n  - name: a\n    protocol: postgres\n    addresses: [10.0.0.1]\n    accounts: []\n",
            "<config>:4: targets[0].addresses[0]: expected host:port",
        ),
        (
            "targets:\n  - name: a\n    protocol: postgres\n    addresses: [10.0.0.1:70000]\n    accounts: []\n",
            "port out of range",
        ),
        (
            "targets:\n  - name: a\n    protocol: postgres\n    addresses: [10.0.0.1:5432]\n"
            "    accounts:\n      - {name: x, user: u, secret: hunter2}\n",
            "<config>:6: targets[0].accounts[0].secret: secrets are never written in the config",
        ),
        (
            "targets:\n  - name: a\n    protocol: postgres\n    addresses: [10.0.0.1:5432]\n"
            "    accounts:\n      - {name: x, user: u, secret: {file: /a, credential: b}}\n",
            "give exactly one of 'file' or 'credential'",
        ),
        (
            "targets:\n  - name: a\n    protocol: postgres\n    addresses: [10.0.0.1:5432]\n"
            "    tls: {mode: verify-full}\n"
            "    accounts:\n      - {name: x, user: u, secret: {file: /a}}\n",
            "<config>:5: targets[0].tls: tls mode verify-full needs 'ca'",
        ),
        (
            "targets:\n  - name: a\n    protocol: postgres\n    addresses: [10.0.0.1:5432]\n"
            "    accounts:\n      - {name: x, user: u, secret: {file: /a}}\n"
            "  - name: a\n    protocol: postgres\n    addresses: [10.0.0.2:5432]\n"
            "    accounts:\n      - {name: x, user: u, secret: {file: /a}}\n",
            "<config>:7: targets[1].name: duplicate target name 'a'",
        ),
        (
            "targets:\n  - name: a\n    protocol: postgres\n    addresses: [10.0.0.1:5432]\n"
            "    accounts:\n      - {name: x, user: u, secret: {file: /a}}\n"
            "ledger:\n  checkpoint_interval: soon\n",
            "<config>:8: ledger.checkpoint_interval: expected a duration",
        ),
        (
            "targets:\n  - name: a\n    protocol: postgres\n    addresses: [10.0.0.1:5432]\n"
            "    accounts:\n      - {name: x, user: u, secret: {file: /a}}\n"
            "capture:\n  listen_port: yes\n",
            "<config>:8: capture.listen_port: expected an integer, got 'yes'",
        ),
        (
            "targets:\n  - name: a\n    protocol: postgres\n    addresses: [10.0.0.1:5432]\n"
            "    accounts:\n      - {name: x, user: u, secret: {file: /a}}\n"
            "capture:\n  appliance_cgroup: /\n",
            "<config>:8: capture.appliance_cgroup: expected a cgroup path below the root",
        ),
        (
            "targets:\n  - name: a\n    protocol: postgres\n    addresses: [10.0.0.1:5432]\n"
            "    accounts:\n      - {name: x, user: u, secret: {file: /a}}\n"
            "capture:\n  appliance_cgroup: 'system.slice/my \"unit\"'\n",
            "<config>:8: capture.appliance_cgroup: expected a cgroup path below the root",
        ),
        (
            "targets:\n  - name: a\n    protocol: postgres\n    addresses: [10.0.0.1:5432]\n"
            "    accounts:\n      - {name: x, user: u, secret: {file: /a}}\n"
            "capture:\n  appliance_cgroup: /sys/fs/cgroup/system.slice/appliance.service\n",
            "<config>:8: capture.appliance_cgroup: write the cgroup's path in the hierarchy",
        ),
        (
            "targets:\n  - name: a\n    protocol: postgres\n    addresses: [10.0.0.1:5432]\n"
            "    accounts:\n      - {name: x, user: u, secret: {file: /a}}\n"
            "capture:\n  conntrack_zone: 70000\n",
            "<config>:8: capture.conntrack_zone: must be at most 65535",
        ),
        (
            "targets:\n  - name: a\n    name: b\n",
            "<config>:3: targets[0].name: duplicate key",
        ),
    ],
)
def test_errors_name_key_expectation_and_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert expected in str(info.value)
