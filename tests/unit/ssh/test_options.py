"""An SSH target's settings in the config (:mod:`appliance.proxy.ssh.options`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import ConfigError, parse_config
from appliance.proxy.ssh.options import SshOptions

BASE = """
targets:
  - name: web
    protocol: ssh
    addresses: ["10.0.0.7:22"]
{extra}
    accounts: [{{name: deploy, user: deploy, secret: {{file: /k}}}}]
"""


def load(extra: str) -> SshOptions:
    config = parse_config(BASE.format(extra=extra), source="t.yaml")
    options = config.targets["web"].options
    assert isinstance(options, SshOptions)
    return options


def test_defaults_and_settings() -> None:
    o = load("    known_hosts: /etc/appliance/web.known_hosts")
    assert o == SshOptions(Path("/etc/appliance/web.known_hosts"))
    o = load(
        "    known_hosts: /kh\n    login_timeout: 5s\n    max_channels: 4\n"
        "    max_recording: 1MiB\n    max_transfer_content: 4KiB"
    )
    assert (o.login_timeout, o.max_channels, o.max_recording, o.max_transfer_content) == (
        5.0,
        4,
        1 << 20,
        4096,
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("", "needs 'known_hosts'"),
        ("    known_hosts: /kh\n    login_timeout: 0s", "longer than 0"),
        ("    known_hosts: /kh\n    max_channels: 0", "max_channels"),
        ("    known_hosts: /kh\n    tls: {mode: disable}", "tls"),
    ],
)
def test_mistakes(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(extra)


def test_the_runner_known_hosts_file_is_a_capture_setting() -> None:
    text = BASE.format(extra="    known_hosts: /kh") + "capture: {ssh_known_hosts: /tmp/kh}\n"
    assert parse_config(text, source="t.yaml").capture.ssh_known_hosts == Path("/tmp/kh")
    default = parse_config(BASE.format(extra="    known_hosts: /kh"), source="t.yaml")
    assert default.capture.ssh_known_hosts == Path("/etc/ssh/ssh_known_hosts")
