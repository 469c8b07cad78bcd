"""``appliance capture``: registered, documented, and its errors are clear (no root needed;
the commands' real work is tested in tests/lab/test_capture_rules.py)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from appliance.cli.main import cli


def test_capture_group_is_registered() -> None:
    result = CliRunner().invoke(cli, ["capture", "--help"])
    assert result.exit_code == 0
    for command in ("install", "remove", "status"):
        assert command in result.output


def test_install_and_status_need_a_config() -> None:
    for command in ("install", "status"):
        result = CliRunner().invoke(cli, ["capture", command])
        assert result.exit_code == 2 and "--config" in result.output


def test_a_bad_bridge_name_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "targets:\n  - {name: db, protocol: postgres, addresses: [192.0.2.1:5432],\n"
        "     accounts: [{name: a, user: u, secret: {file: /x}}]}\n"
        "capture: {bridges: ['br-*-x']}\n"
    )
    result = CliRunner().invoke(cli, ["capture", "status", "--config", str(config)])
    assert result.exit_code != 0
    assert "capture.bridges" in str(result.exception)
