"""systemd/appliance.service: verified offline by systemd-analyze, and the directives the
issue asks for are there (hardening, credentials, ordering, no rule removal on stop)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import CaptureConfig

UNIT = Path(__file__).resolve().parents[3] / "systemd" / "appliance.service"
EXE = "/opt/appliance/.venv/bin/appliance"


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_hardening_and_lifecycle_directives() -> None:
    d = directives()
    assert d["ExecStart"] == [f"{EXE} run --config /etc/appliance/config.yaml --grace 20"]
    assert d["ExecStartPre"] == [f"{EXE} capture install --config /etc/appliance/config.yaml"]
    assert not {"ExecStop", "ExecStopPost", "ExecReload"} & d.keys()
    assert "remove" not in " ".join(v for vs in d.values() for v in vs)
    assert d["Restart"] == ["always"]
    assert (d["Type"], d["NotifyAccess"]) == (["notify"], ["main"])
    assert d["CapabilityBoundingSet"][0].split() == [
        "CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_RESOURCE",
        "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH",
    ]  # fmt: skip
    assert (d["ProtectSystem"], d["PrivateTmp"], d["StateDirectory"]) == (
        ["strict"], ["yes"], ["appliance"],
    )  # fmt: skip
    # The masking pre-filter's cache (appliance.prefilter_cache refuses a directory others
    # may write).
    assert (d["CacheDirectory"], d["CacheDirectoryMode"]) == (["appliance"], ["0700"])
    assert any(v.startswith("ledger-signing-key:") for v in d["LoadCredential"])
    assert any(v.startswith("target:") for v in d["LoadCredential"])
    assert any(v.startswith("s3:") for v in d["LoadCredential"])  # ledger.ship, the hub
    assert {"gitlab-runner.service", "actions.runner.service"} <= set(d["Before"][0].split())
    assert "ProtectKernelModules" not in d  # bcc needs /usr/lib/modules/*/build


def test_the_units_cgroup_is_the_configs_appliance_cgroup() -> None:
    # The rules let marked traffic out from capture.appliance_cgroup only: by default, the
    # cgroup systemd gives this unit (its slice, then its name).
    (slice_,) = directives()["Slice"]
    assert CaptureConfig().appliance_cgroup == f"/{slice_}/{UNIT.name}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verify_offline(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this checkout's entry point.
    here = Path(sys.executable).with_name("appliance")
    unit = tmp_path / "appliance.service"
    unit.write_text(UNIT.read_text().replace(EXE, str(here)))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "appliance.service" not in proc.stderr, proc.stderr  # no warning about our unit
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=50", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert security.returncode == 0, security.stdout[-2000:] + security.stderr
