"""The per-run CA, host certificates, account keys (:mod:`appliance.proxy.ssh.keys`) and the
runner's ``@cert-authority`` block (:mod:`appliance.proxy.ssh.known_hosts`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from appliance.config import Address, Target, parse_config
from appliance.errors import ApplianceError
from appliance.proxy.ssh import known_hosts as kh
from appliance.proxy.ssh.keys import account_key, shared

from .helpers import counter_bytes


def test_the_ca_comes_from_the_randomness_passed_in() -> None:
    a, b = shared(counter_bytes()), shared(counter_bytes())
    assert a.ca_public_line() == b.ca_public_line()
    assert a.ca_public_line() != shared(lambda n: os.urandom(n)).ca_public_line()
    assert a.ca_public_line().startswith("ssh-ed25519 ")


def test_openssh_accepts_the_host_certificate_for_its_principals(tmp_path: Path) -> None:
    ca = shared(counter_bytes())
    cert = ca.host_certificate(
        ["10.0.0.7", "web1.example"], now=1_700_000_000, key_id="appliance s1"
    )
    path = tmp_path / "host-cert.pub"
    path.write_bytes(cert.export_certificate("openssh"))
    shown = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert "host certificate" in shown
    assert "10.0.0.7" in shown and "web1.example" in shown
    assert ca.fingerprint() in shown


def test_account_keys_with_and_without_a_certificate(tmp_path: Path) -> None:
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ca")], check=True
    )
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(tmp_path / "ca"), "-I", "x", "-n", "deploy", f"{key}.pub"],
        check=True,
    )
    k, cert = account_key(key.read_text())
    assert cert is None and k.get_algorithm() == "ssh-ed25519"
    k, cert = account_key(key.read_text() + Path(f"{key}-cert.pub").read_text())
    assert cert is not None and cert.principals == ["deploy"]
    with pytest.raises(ApplianceError, match="no OpenSSH or PEM private key") as err:
        account_key("hunter2")
    assert "hunter2" not in str(err.value)
    with pytest.raises(ApplianceError, match="cannot be read"):
        account_key("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----")


def _target(*addresses: Address, listen: tuple[str, int] | None = None) -> Target:
    return Target("t", "ssh", addresses, (), listen=listen)


def test_patterns() -> None:
    targets = [
        _target(Address("ip", "10.0.0.7", 22), Address("host", "web1.example", 22)),
        _target(Address("ip", "10.0.0.8", 2222), listen=("127.0.0.1", 2022)),
        _target(Address("cidr", "10.1.2.0/24", 22), Address("cidr", "10.1.3.128/25", 22)),
        _target(Address("cidr", "10.2.0.0/16", 22), Address("cidr", "fd00::/64", 22)),
        _target(Address("ip", "10.0.0.7", 22)),  # a repeat
    ]
    assert kh.patterns(targets) == [
        "10.0.0.7",
        "web1.example",
        "[10.0.0.8]:2222",
        "[127.0.0.1]:2022",
        "10.1.2.*",
        "10.1.3.*",
        "10.2.*",
        "*:*",
    ]


def test_the_block_is_written_replaced_and_removed_leaving_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "ssh_known_hosts"
    path.write_text("other.example ssh-ed25519 AAAAexisting\n")
    path.chmod(0o644)
    targets = [_target(Address("ip", "10.0.0.7", 22))]
    line = kh.install(path, "ssh-ed25519 AAAAfirst appliance-ssh-ca", targets)
    assert line == "@cert-authority 10.0.0.7 ssh-ed25519 AAAAfirst appliance-ssh-ca"
    kh.install(path, "ssh-ed25519 AAAAsecond appliance-ssh-ca", targets)
    text = path.read_text()
    assert text.count(kh.BEGIN) == 1 and "AAAAfirst" not in text and "AAAAsecond" in text
    assert text.startswith("other.example ssh-ed25519 AAAAexisting\n")
    assert path.stat().st_mode & 0o777 == 0o644
    assert kh.remove(path) is True
    assert path.read_text() == "other.example ssh-ed25519 AAAAexisting\n"
    assert kh.remove(path) is False
    assert kh.remove(tmp_path / "absent") is False


def test_the_registry_hooks_use_the_configured_file(tmp_path: Path) -> None:
    path = tmp_path / "known"
    config = parse_config(
        f"""
targets:
  - name: web
    protocol: ssh
    addresses: ["10.0.0.7:22"]
    known_hosts: /etc/appliance/web.known_hosts
    accounts: [{{name: deploy, user: deploy, secret: {{file: /k}}}}]
capture: {{ssh_known_hosts: {path}}}
""",
        source="t.yaml",
    )
    done = kh.trust(config, list(config.targets.values()), shared(counter_bytes()))
    assert done["file"] == str(path) and done["line"].startswith("@cert-authority 10.0.0.7 ")
    assert kh.untrust(config) == [f"the SSH CA line in {path}"]
    assert kh.untrust(config) == []


def test_prepare_records_the_trust_and_serves_on_when_it_cannot(tmp_path: Path) -> None:
    text = """
targets:
  - name: web
    protocol: ssh
    addresses: ["10.0.0.7:22"]
    known_hosts: /kh
    accounts: [{{name: deploy, user: deploy, secret: {{file: /k}}}}]
capture: {{ssh_known_hosts: {path}}}
"""
    recorded: list[tuple[str, dict[str, object]]] = []
    ok = parse_config(text.format(path=tmp_path / "known"), source="t.yaml")
    first = kh.prepare(ok, lambda t, d: recorded.append((t, d)))
    missing = parse_config(
        text.format(path=tmp_path / "no" / "such" / "dir" / "known"), source="t.yaml"
    )
    second = kh.prepare(missing, lambda t, d: recorded.append((t, d)))
    assert [t for t, _ in recorded] == ["capture.trust_installed", "capture.trust_failed"]
    assert recorded[0][1]["protocol"] == "ssh" and "No such file" in str(recorded[1][1]["error"])
    # Each run its own CA, and the line written is that CA's.
    assert first.fingerprint() != second.fingerprint()
    assert recorded[0][1]["ca_fingerprint"] == first.fingerprint()
    assert first.ca_public_line() in (tmp_path / "known").read_text()
