"""Run after the lab suite: the host itself carries nothing the project installed.

The root network namespace must have no netfilter rule or chain of the appliance, the root
cgroup no BPF program attached, no BPF program of ours may still be loaded, no lab
namespace or cgroup may be left behind, and the machine's own SSH client configuration
carries no CA line of the appliance (the lab writes it into a lab directory).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from appliance.proxy.ssh.known_hosts import BEGIN
from tests.lab.lab import STATE_DIR, cgroup2_root

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="reads root-only netfilter and BPF state")


def _out(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("tool", ["iptables-save", "ip6tables-save"])
def test_root_namespace_has_no_appliance_rules(tool: str) -> None:
    dump = _out([tool])
    assert "APPLIANCE" not in dump.upper(), dump


def test_root_cgroup_has_no_bpf_programs() -> None:
    shown = _out(["bpftool", "-j", "cgroup", "show", str(cgroup2_root())]).strip()
    assert json.loads(shown or "[]") == []


def test_no_appliance_bpf_program_is_loaded() -> None:
    progs = json.loads(_out(["bpftool", "-j", "prog", "show"]) or "[]")
    ours = [p for p in progs if str(p.get("name", "")).startswith("apl_")]
    assert ours == []


def test_the_machines_ssh_known_hosts_trusts_no_appliance_ca() -> None:
    path = Path("/etc/ssh/ssh_known_hosts")
    assert not path.exists() or BEGIN not in path.read_text()


def test_no_lab_namespace_or_cgroup_left() -> None:
    assert not [n for n in _out(["ip", "netns", "list"]).split() if n.startswith("apl-")]
    assert not list(cgroup2_root().glob("appliance-lab-*"))
    assert not list(STATE_DIR.glob("*.pid")) if STATE_DIR.exists() else True
