"""Is any job process in a position to undo the appliance? (root, capabilities, secrets, sudo)

Where this sits: the threat model (README, "Security") holds against an *unprivileged* job.
A job process that is root, or holds one of :data:`DANGEROUS` in the initial user
namespace, or can read the appliance's secrets or write its ledger, or whose user may use
sudo or the Docker socket, can flush netfilter, set the appliance's socket mark, detach its
BPF programs, read its memory or its keys: nothing on the same host holds against it.
:func:`check_jobs` looks at every process of the jobs' cgroup(s) and says which of these
hold. ``appliance capture status`` prints the findings as warnings; the daemon runs the
check on each reconcile and records each new finding as ``capture.job_privileged``.

The checks read ``/proc/<pid>/status`` (uids, gids, capability sets), ``/proc/<pid>/ns/user``
and the mode bits of the files (POSIX ACLs are not evaluated: the appliance sets none), and
ask ``sudo -n -l -U USER`` (as root) for each user the job processes run as.
"""

from __future__ import annotations

import glob
import os
import pwd
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config import Config

__all__ = [
    "CREDENTIAL_DIRS",
    "DANGEROUS",
    "Finding",
    "JobsReport",
    "ProcessStatus",
    "appliance_secrets",
    "can_access",
    "check_jobs",
    "jobs_cgroup",
    "read_status",
    "sudo_rights",
]

# Capability number (linux/capability.h) -> (name, what it lets a job do to the appliance).
DANGEROUS: dict[int, tuple[str, str]] = {
    1: ("CAP_DAC_OVERRIDE", "read and write the appliance's secrets and ledger"),
    2: ("CAP_DAC_READ_SEARCH", "read the appliance's secrets and keys"),
    7: ("CAP_SETUID", "become root"),
    12: ("CAP_NET_ADMIN", "flush the capture rules, set the appliance's socket mark"),
    16: ("CAP_SYS_MODULE", "load kernel modules"),
    19: ("CAP_SYS_PTRACE", "attach to the appliance, read its memory"),
    21: ("CAP_SYS_ADMIN", "almost anything: BPF, mounts, other namespaces"),
    39: ("CAP_BPF", "load BPF programs, detach the attribution programs"),
}

# Where the systemd unit's LoadCredential= sources live, and where systemd puts the
# service's credentials at run time (systemd/appliance.service).
CREDENTIAL_DIRS = (Path("/etc/appliance/credentials"), Path("/run/credentials/appliance.service"))
DOCKER_SOCKETS = (Path("/run/docker.sock"), Path("/var/run/docker.sock"))

_R, _W, _X = 4, 2, 1


def appliance_secrets(config: Config) -> list[Path]:
    """The files no job may read: the secret files the config names (ledger key, service
    accounts) and every file under :data:`CREDENTIAL_DIRS`."""
    refs = [config.ledger.key, *(a.secret for t in config.targets.values() for a in t.accounts)]
    found = {ref.file for ref in refs if ref.file is not None}
    for directory in CREDENTIAL_DIRS:
        if directory.is_dir():
            found.update(p for p in directory.rglob("*") if p.is_file())
    return sorted(found)


def jobs_cgroup(config: Config) -> str | None:
    """The jobs' cgroup directory pattern: ``capture.jobs_cgroup``, else the cgroup the
    attribution attaches to when it is not the root (the whole host is not "the jobs")."""
    if config.capture.jobs_cgroup is not None:
        return config.capture.jobs_cgroup
    return str(config.capture.cgroup) if config.capture.cgroup is not None else None


@dataclass(frozen=True)
class ProcessStatus:
    """What ``/proc/<pid>/status`` says about who a process is and what it may do."""

    pid: int
    comm: str
    uids: tuple[int, ...]  # real, effective, saved, filesystem
    gids: tuple[int, ...]  # real, effective, saved, filesystem, then supplementary groups
    caps: int  # permitted | effective | ambient: what the process can use now or at will
    own_userns: bool  # in a user namespace other than the appliance's: caps are not ours


def read_status(
    pid: int, *, proc: Path = Path("/proc"), userns: str | None = None
) -> ProcessStatus | None:
    """The :class:`ProcessStatus` of ``pid``; None if it is gone. ``userns`` is the
    appliance's user namespace (``readlink /proc/self/ns/user``)."""
    try:
        text = (proc / str(pid) / "status").read_text()
        ns = os.readlink(proc / str(pid) / "ns" / "user")
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    try:
        uids = tuple(int(x) for x in fields["Uid"].split())
        gids = tuple(int(x) for x in fields["Gid"].split())
        groups = tuple(int(x) for x in fields.get("Groups", "").split())
        caps = 0
        for name in ("CapPrm", "CapEff", "CapAmb"):
            caps |= int(fields.get(name, "0"), 16)
    except (KeyError, ValueError):
        return None
    own = userns is not None and ns != userns
    return ProcessStatus(pid, fields.get("Name", "?"), uids, gids + groups, caps, own)


def can_access(path: Path, uid: int, gids: Iterable[int], want: int) -> bool:
    """Whether ``uid`` with groups ``gids`` may open ``path`` for ``want`` (4 read, 2
    write) by the mode bits of the path and every directory above it. Root may."""
    if uid == 0:
        return True
    groups = set(gids)
    try:
        target = Path(os.path.realpath(path))
        for directory in reversed(target.parents):
            if not _allowed(directory.stat(), uid, groups, _X):
                return False
        return _allowed(target.stat(), uid, groups, want)
    except OSError:
        return False


def _allowed(st: os.stat_result, uid: int, groups: set[int], bit: int) -> bool:
    if st.st_uid == uid:
        return bool((st.st_mode >> 6) & bit)
    if st.st_gid in groups:
        return bool((st.st_mode >> 3) & bit)
    return bool(st.st_mode & bit)


def sudo_rights(user: str) -> list[str]:
    """What ``sudo -l`` lists for ``user`` ([] if nothing, or sudo is not installed)."""
    try:
        out = subprocess.run(
            ["sudo", "-n", "-l", "-U", user], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    if "may run the following commands" not in out:
        return []
    lines = out.split("may run the following commands", 1)[1].splitlines()[1:]
    return [line.strip() for line in lines if line.strip()]


@dataclass(frozen=True)
class Finding:
    """One dangerous condition of one job process."""

    pid: int
    comm: str
    uid: int
    problem: str  # root | capability | secret | ledger | sudo | docker
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "comm": self.comm,
            "uid": self.uid,
            "problem": self.problem,
            "detail": self.detail,
        }


@dataclass
class JobsReport:
    """The check of the jobs' cgroup(s): ``checked`` False (with ``note``) when there is no
    jobs cgroup to look at."""

    cgroups: list[str]
    processes: int = 0
    findings: list[Finding] = field(default_factory=list)
    checked: bool = True
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "cgroups": self.cgroups,
            "checked": self.checked,
            "note": self.note,
            "processes": self.processes,
            "findings": [f.to_dict() for f in self.findings],
        }


def _job_pids(cgroups: Sequence[Path]) -> list[int]:
    pids: list[int] = []
    for root in cgroups:
        for procs in sorted(root.rglob("cgroup.procs")):
            try:
                pids += [int(p) for p in procs.read_text().split()]
            except (OSError, ValueError):
                continue
    return sorted(set(pids))


def check_jobs(
    pattern: str | None,
    *,
    secrets: Sequence[Path],
    ledger: Path | None,
    proc: Path = Path("/proc"),
    sudo: Callable[[str], list[str]] = sudo_rights,
    exclude: Iterable[int] = (),
) -> JobsReport:
    """Check every process of the cgroup directories matching ``pattern`` (a path, glob
    allowed; None: nothing to check). ``secrets`` are files no job may read, ``ledger`` a
    directory no job may write; ``exclude`` pids that are not jobs (the appliance)."""
    if pattern is None:
        return JobsReport([], checked=False, note="no jobs cgroup configured (capture.jobs_cgroup)")
    cgroups = [Path(p) for p in sorted(glob.glob(pattern)) if Path(p).is_dir()]
    report = JobsReport([str(c) for c in cgroups])
    if not cgroups:
        report.note = f"no cgroup matches {pattern} (no job running?)"
        return report
    try:
        userns: str | None = os.readlink(proc / "self" / "ns" / "user")
    except OSError:
        userns = None
    skip = set(exclude)
    users: dict[int, list[str]] = {}
    for pid in _job_pids(cgroups):
        if pid in skip:
            continue
        status = read_status(pid, proc=proc, userns=userns)
        if status is None:
            continue
        report.processes += 1
        report.findings += _findings(status, secrets, ledger, users, sudo)
    return report


def _findings(
    st: ProcessStatus,
    secrets: Sequence[Path],
    ledger: Path | None,
    users: dict[int, list[str]],
    sudo: Callable[[str], list[str]],
) -> list[Finding]:
    out: list[Finding] = []
    uid = st.uids[1]

    def add(problem: str, detail: str) -> None:
        out.append(Finding(st.pid, st.comm, uid, problem, detail))

    if 0 in st.uids:
        add("root", f"runs as root (uids {'/'.join(map(str, st.uids))})")
    if not st.own_userns:
        for bit, (name, why) in sorted(DANGEROUS.items()):
            if st.caps >> bit & 1:
                add("capability", f"holds {name}: can {why}")
    if 0 in st.uids:
        return out  # root reads and writes everything: the file checks say nothing new
    for path in secrets:
        if can_access(path, uid, st.gids, _R):
            add("secret", f"can read {path}")
    if ledger is not None and can_access(ledger, uid, st.gids, _W):
        add("ledger", f"can write the ledger directory {ledger}")
    for sock in DOCKER_SOCKETS:
        if sock.exists() and can_access(sock, uid, st.gids, _W):
            add("docker", f"can use the Docker socket {sock} (root on this host)")
            break
    if uid not in users:
        try:
            users[uid] = sudo(pwd.getpwuid(uid).pw_name)
        except KeyError:  # a uid without a user name: sudo knows nothing of it either
            users[uid] = []
    if users[uid]:
        add("sudo", f"its user may use sudo: {'; '.join(users[uid])}")
    return out
