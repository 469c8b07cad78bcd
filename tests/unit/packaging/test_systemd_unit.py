"""The runner image's unit file, checked by systemd's own verifier (no PID 1 needed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
UNIT = ROOT / "systemd" / "appliance.service"
INSTALLED = "/opt/appliance/.venv/bin/appliance"


def verify(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # scripts/setup.sh installs systemd: a missing verifier is a broken set-up, not a skip.
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: run scripts/setup.sh"
    unit = tmp_path / "appliance.service"
    # The image installs the package at /opt/appliance; here it is this checkout's venv.
    unit.write_text(text.replace(INSTALLED, str(Path(sys.executable).with_name("appliance"))))
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )


def test_the_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert INSTALLED in text
    r = verify(text, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout + r.stderr == ""


def test_the_verifier_would_see_a_mistake(tmp_path: Path) -> None:
    """The check above can fail: a misspelt directive is reported."""
    r = verify(UNIT.read_text().replace("ProtectClock=", "ProtectClok="), tmp_path)
    assert "Unknown key 'ProtectClok'" in r.stdout + r.stderr


def test_stopping_never_removes_the_capture_rules() -> None:
    directives = [
        line for line in UNIT.read_text().splitlines() if line and not line.startswith("#")
    ]
    assert any(
        line.startswith("ExecStartPre=") and "capture install" in line for line in directives
    )
    assert not any("capture remove" in line for line in directives)
    assert not any(line.startswith("ExecStop") for line in directives)


def test_status_checks_the_credentials_the_unit_loads() -> None:
    """capture status looks for readable secrets where the unit loads its credentials from
    (and where systemd puts them for the service): one list, the unit's."""
    from appliance.capture._privileges import CREDENTIAL_DIRS

    sources = {
        line.split("=", 1)[1].split(":", 1)[1]
        for line in UNIT.read_text().splitlines()
        if line.startswith("LoadCredential=")
    }
    assert sources, "the unit loads no credentials"
    assert all(
        any(src.startswith(f"{d}/") or src == str(d) for d in CREDENTIAL_DIRS) for src in sources
    )
    assert "/run/credentials/appliance.service" in {str(d) for d in CREDENTIAL_DIRS}


def test_the_final_ship_has_the_network_and_the_time_it_needs() -> None:
    """On stop the daemon ships its ledger (issue 15): systemd stops units in the reverse
    of their start order, so ordering after the network keeps it up meanwhile, and the stop
    timeout must cover the sessions' grace period plus the final ship."""
    from appliance.daemon import FINAL_SHIP_TIMEOUT

    lines = [line for line in UNIT.read_text().splitlines() if line and not line.startswith("#")]
    after = " ".join(line.split("=", 1)[1] for line in lines if line.startswith("After="))
    assert "network-online.target" in after.split() and "nss-lookup.target" in after.split()
    (stop,) = [line for line in lines if line.startswith("TimeoutStopSec=")]
    (start,) = [line for line in lines if line.startswith("ExecStart=")]
    grace = float(start.split("--grace", 1)[1].split()[0])
    assert float(stop.split("=", 1)[1].rstrip("s")) > grace + FINAL_SHIP_TIMEOUT
