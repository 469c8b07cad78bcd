"""A persistent masking key (issue 12, item 9): hash tokens compare across restarts and
runners that share the key, the ledger says which key made them, and ``ephemeral`` is a
choice the config spells out, never what a configured key falls back to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli.main import cli
from appliance.config import SecretRef
from appliance.credentials import SecretError
from appliance.daemon import load_masking_key
from appliance.errors import ConfigError
from appliance.masking import EPHEMERAL, MaskCounts, Masker, MaskingConfig, key_id
from tests.unit.masking.test_config import TARGETS, parse

CARD = "4111 1111 1111 1111"
HASHED = "masking:\n  detectors: {card: hash}\n"


def _masking(text: str) -> MaskingConfig:
    return parse(text)


def _runner(config: MaskingConfig, credentials: Path | None) -> tuple[str, dict[str, object]]:
    """One run of one runner: load the key as the daemon does, mask a card."""
    key, record = load_masking_key(config, str(credentials) if credentials else None)
    masked = Masker(config, hmac_key=key).for_target("db").mask_text(f"card {CARD}", MaskCounts())
    return masked, record


@pytest.fixture
def fleet_key(tmp_path: Path) -> Path:
    """The fleet's key as each runner gets it: a systemd credential written by keys generate."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    result = CliRunner().invoke(
        cli, ["keys", "generate", "--masking-key", "--out", str(creds / "masking-key")]
    )
    assert result.exit_code == 0, result.output
    path = creds / "masking-key.key"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    path.rename(creds / "masking-key")
    return creds


def test_runners_sharing_a_key_give_the_same_tokens(fleet_key: Path, tmp_path: Path) -> None:
    config = _masking(HASHED + "  key: {credential: masking-key}\n")
    a, rec_a = _runner(config, fleet_key)  # runner 1
    b, rec_b = _runner(config, fleet_key)  # runner 2 (or runner 1 after a restart)
    assert a == b and a.startswith("card [HMAC:") and CARD not in a
    assert rec_a == rec_b
    assert rec_a["source"] == "credential 'masking-key'" and rec_a["used"] is True
    key = (fleet_key / "masking-key").read_text().rstrip("\n").encode()
    assert rec_a["id"] == key_id(key) and "warning" not in rec_a
    # a file works the same; another key gives other tokens and another id
    other = tmp_path / "other.key"
    other.write_text("another fleet's key, 32 bytes long")
    os.chmod(other, 0o600)
    c, rec_c = _runner(_masking(HASHED + f"  key: {{file: {other}}}\n"), None)
    assert c != a and rec_c["id"] != rec_a["id"]


def test_ephemeral_is_spelled_out_and_recorded(caplog: pytest.LogCaptureFixture) -> None:
    config = _masking(HASHED + f"  key: {EPHEMERAL}\n")
    assert config.ephemeral_key and config.key is None
    a, rec_a = _runner(config, None)
    b, rec_b = _runner(config, None)
    assert a != b and rec_a["id"] != rec_b["id"]
    assert rec_a["source"] == EPHEMERAL
    assert "compare only within this run" in str(rec_a["warning"])
    assert "ephemeral masking key" in caplog.text


def test_the_hash_style_without_a_key_names_both_choices() -> None:
    with pytest.raises(ConfigError) as info:
        _masking(HASHED)
    assert "key: {credential: NAME} or {file: PATH}" in str(info.value)
    assert "key: ephemeral" in str(info.value)


def test_a_configured_key_never_falls_back_to_a_random_one(tmp_path: Path) -> None:
    config = _masking(HASHED + "  key: {credential: masking-key}\n")
    with pytest.raises(SecretError, match="does not exist"):
        load_masking_key(config, str(tmp_path))


def test_no_hash_style_needs_no_key() -> None:
    _, record = load_masking_key(MaskingConfig(), None)
    assert record["used"] is False and record["source"] == "none configured (no style is hash)"
    assert MaskingConfig(key=SecretRef(credential="k")).key is not None


def test_config_check_says_which_key(tmp_path: Path) -> None:
    base = TARGETS
    cfg = tmp_path / "c.yaml"
    cfg.write_text(base + HASHED + "  key: {credential: masking-key}\n")
    result = CliRunner().invoke(cli, ["config", "check", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "masking key: credential 'masking-key' (hash tokens compare across" in result.output
    cfg.write_text(base + HASHED + "  key: ephemeral\n")
    result = CliRunner().invoke(cli, ["config", "check", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "WARNING: masking key: ephemeral" in result.output
    result = CliRunner().invoke(cli, ["config", "check", "--format", "json", str(cfg)])
    assert '"key": "ephemeral"' in result.output
