"""The appliance's own cgroup: where the process is, and whether that is where the rules
let marked traffic out (no cgroup is touched here: /proc files are written to tmp_path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.capture import CaptureError, require_own_cgroup
from appliance.capture._cgroup import cgroup_dir, cgroup_level, own_cgroup, within

HYBRID = "12:pids:/system.slice/appliance.service\n1:name=systemd:/system.slice/x\n0::/{}\n"


def proc(tmp_path: Path, v2: str) -> Path:
    path = tmp_path / "cgroup"
    path.write_text(HYBRID.format(v2.lstrip("/")))
    return path


def test_own_cgroup_is_the_v2_line(tmp_path: Path) -> None:
    assert own_cgroup(proc(tmp_path, "/system.slice/appliance.service")) == (
        "/system.slice/appliance.service"
    )
    assert own_cgroup(proc(tmp_path, "/")) == "/"
    (tmp_path / "v1only").write_text("4:memory:/x\n")
    assert own_cgroup(tmp_path / "v1only") is None
    assert own_cgroup(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("path", "ancestor", "expected"),
    [
        ("/system.slice/appliance.service", "/system.slice/appliance.service", True),
        ("/system.slice/appliance.service/writer", "/system.slice/appliance.service", True),
        ("/system.slice/appliance.service2", "/system.slice/appliance.service", False),
        ("/system.slice", "/system.slice/appliance.service", False),
        ("/", "/system.slice/appliance.service", False),
        ("/user.slice/job", "/system.slice", False),
    ],
)
def test_within(path: str, ancestor: str, expected: bool) -> None:
    assert within(path, ancestor) is expected


def test_level_and_directory() -> None:
    assert cgroup_level("/") == 0
    assert cgroup_level("/system.slice/appliance.service") == 2
    assert cgroup_dir("/a/b", Path("/sys/fs/cgroup")) == Path("/sys/fs/cgroup/a/b")


def test_the_daemon_must_run_in_the_configured_cgroup(tmp_path: Path) -> None:
    unit = "/system.slice/appliance.service"
    assert require_own_cgroup(unit, proc(tmp_path, unit)) == unit
    with pytest.raises(CaptureError, match=r"runs in cgroup /user.slice/session-4.scope.*"):
        require_own_cgroup(unit, proc(tmp_path, "/user.slice/session-4.scope"))
    with pytest.raises(CaptureError, match=r"runs in cgroup \(unknown\)"):
        require_own_cgroup(unit, tmp_path / "missing")
