"""Privileged job processes: root, dangerous capabilities, secrets, sudo (a /proc of files)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.capture._privileges import can_access, check_jobs, read_status

NOBODY = 65534


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory every user can traverse (pytest's own tmp_path is root-only), as the
    file checks walk every directory above a file."""
    d = Path(tempfile.mkdtemp(prefix="appliance-priv-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def status_text(name: str, uid: int, caps: int = 0, groups: str = "") -> str:
    return (
        f"Name:\t{name}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
        f"Groups:\t{groups}\nCapInh:\t0000000000000000\nCapPrm:\t{caps:016x}\n"
        f"CapEff:\t{caps:016x}\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n"
    )


class World:
    def __init__(self, tmp: Path) -> None:
        self.proc = tmp / "proc"
        self.cgroup = tmp / "cg" / "jobs"
        (self.cgroup / "step").mkdir(parents=True)
        (self.proc / "self" / "ns").mkdir(parents=True)
        os.symlink("user:[4026531837]", self.proc / "self" / "ns" / "user")
        self.pids: dict[Path, list[int]] = {}

    def process(
        self, pid: int, text: str, *, userns: str = "user:[4026531837]", sub: str = ""
    ) -> None:
        d = self.proc / str(pid)
        (d / "ns").mkdir(parents=True)
        (d / "status").write_text(text)
        os.symlink(userns, d / "ns" / "user")
        where = self.cgroup / sub
        self.pids.setdefault(where, []).append(pid)
        (where / "cgroup.procs").write_text("\n".join(map(str, self.pids[where])) + "\n")


def test_root_and_capabilities_are_found_others_are_not(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.process(10, status_text("bash", NOBODY))
    w.process(11, status_text("sudo-bash", 0, caps=(1 << 41) - 1))
    w.process(12, status_text("tool", NOBODY, caps=1 << 12), sub="step")  # ambient-style NET_ADMIN
    # Full capabilities, but in a user namespace of its own (rootless container): not ours.
    w.process(13, status_text("unshare", NOBODY, caps=(1 << 41) - 1), userns="user:[4026532000]")
    report = check_jobs(str(w.cgroup), secrets=[], ledger=None, proc=w.proc, sudo=lambda user: [])
    assert report.processes == 4
    by_pid = {}
    for f in report.findings:
        by_pid.setdefault(f.pid, []).append(f.detail)
    assert set(by_pid) == {11, 12}
    assert by_pid[11][0].startswith("runs as root")
    assert any("CAP_NET_ADMIN" in d for d in by_pid[11]) and any("CAP_BPF" in d for d in by_pid[11])
    assert by_pid[12] == [
        "holds CAP_NET_ADMIN: can flush the capture rules, set the appliance's socket mark"
    ]


def test_secrets_ledger_and_sudo(open_tmp: Path) -> None:
    tmp_path = open_tmp
    w = World(tmp_path)
    w.process(20, status_text("psql", NOBODY, groups="4242"))
    secret = tmp_path / "etc" / "ledger.key"
    secret.parent.mkdir()
    secret.write_text("k")
    secret.chmod(0o600)
    shared = tmp_path / "etc" / "group-readable"
    shared.write_text("k")
    shared.chmod(0o640)
    os.chown(shared, 0, 4242)
    ledger = tmp_path / "ledger"
    ledger.mkdir(mode=0o777)
    ledger.chmod(0o777)
    report = check_jobs(
        str(w.cgroup),
        secrets=[secret, shared],
        ledger=ledger,
        proc=w.proc,
        sudo=lambda user: ["(ALL : ALL) NOPASSWD: ALL"] if user == "nobody" else [],
    )
    problems = sorted((f.problem, f.detail) for f in report.findings)
    assert problems == [
        ("ledger", f"can write the ledger directory {ledger}"),
        ("secret", f"can read {shared}"),
        ("sudo", "its user may use sudo: (ALL : ALL) NOPASSWD: ALL"),
    ]


def test_can_access_walks_the_directories(open_tmp: Path) -> None:
    tmp_path = open_tmp
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    inner = locked / "file"
    inner.write_text("x")
    inner.chmod(0o644)
    assert not can_access(inner, NOBODY, [NOBODY], 4)  # the directory stops it
    assert can_access(inner, 0, [], 4)
    locked.chmod(0o755)
    assert can_access(inner, NOBODY, [NOBODY], 4) and not can_access(inner, NOBODY, [], 2)
    assert not can_access(tmp_path / "missing", NOBODY, [], 4)


def test_no_jobs_cgroup_is_said_not_guessed(tmp_path: Path) -> None:
    report = check_jobs(None, secrets=[], ledger=None)
    assert not report.checked and report.note and "jobs_cgroup" in report.note
    none = check_jobs(str(tmp_path / "nothing-*"), secrets=[], ledger=None)
    assert none.checked and none.processes == 0 and none.note and "no cgroup matches" in none.note
    assert read_status(999999999) is None
