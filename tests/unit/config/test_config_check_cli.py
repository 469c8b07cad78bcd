"""`appliance config check`: the shipped examples pass; a mistake in any section names its line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli.main import cli
from appliance.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("example", ["packer/config.example.yaml", "appliance/policy/example.yaml"])
def test_shipped_examples_pass(example: str) -> None:
    result = CliRunner().invoke(cli, ["config", "check", str(ROOT / example)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


def test_json_summary_never_shows_secrets(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["config", "check", "--format", "json", str(ROOT / "packer/config.example.yaml")]
    )
    assert result.exit_code == 0, result.output
    assert '"secret": "credential \'target_orders-db-ci\'"' in result.output


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        ("policy:\n  rules: []\n", "c.yaml:9: policy.rules: the rule list is empty"),
        (
            "policy:\n  rules:\n    - {name: x, action: maybe}\n",
            "c.yaml:10: policy.rules[0].action: expected one of allow, deny, review",
        ),
        (
            "masking:\n  detectors: {nope: redact}\n",
            "c.yaml:9: masking.detectors.nope: unknown detector",
        ),
    ],
)
def test_errors_in_other_sections_name_the_line(tmp_path: Path, tail: str, expected: str) -> None:
    base = (
        "targets:\n  - name: db\n    protocol: postgres\n    addresses: [10.0.0.1:5432]\n"
        "    accounts:\n      - {name: ci, user: u, secret: {file: /x}}\n"
        "# sections follow\n"
    )
    path = tmp_path / "c.yaml"
    path.write_text(base + tail)
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert isinstance(result.exception, ConfigError), result.output
    assert expected in str(result.exception)
