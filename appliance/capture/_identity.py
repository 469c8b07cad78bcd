"""Who a session belongs to: the attributed process, its executable, cgroup and CI job.

Where this sits: for each accepted connection the daemon calls :func:`resolve_identity`
with what :meth:`Attribution.lookup` returned; the session's start entry in the ledger
carries the result, including *how* it was obtained (DESIGN.md, "Identity").

From the BPF record (taken at ``connect()``, so it survives the process) come pid, uid, gid,
comm and cgroup id; from ``/proc/<pid>`` come the executable, the command line, the cgroup
path and the CI variables, which are searched in the process and then its ancestors (a CI
step's shell has them, the client it starts may not). If the process has exited (or its pid
now names a younger process), the BPF record is all there is; the cgroup path is found from
the cgroup id, and the CI variables from another process of the same cgroup.

Per-process facts are cached by (pid, start time, comm), so that a pid reused by another
process, or an ``exec``, is never served from the cache; a typical lookup costs a few
``/proc`` reads the first time and none after.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.capture._attribution import FlowOwner
from appliance.capture._cgroup import CgroupPaths, cgroup2_root
from appliance.capture._ci import ci_from_environ, parse_environ
from appliance.config import format_endpoint

MAX_ANCESTORS = 64
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessInfo:
    """What ``/proc/<pid>`` says about one process (None where it could not be read)."""

    pid: int
    ppid: int
    start_ticks: int
    comm: str
    exe: str | None
    cmdline: tuple[str, ...] | None
    cgroup: str | None
    ci: dict[str, object] | None
    errors: tuple[str, ...] = ()

    @property
    def start_ns(self) -> int:
        return self.start_ticks * 1_000_000_000 // _CLK_TCK


@dataclass
class IdentityCache:
    """Bounded LRU of :class:`ProcessInfo` by (pid, start time, comm), and cgroup paths.

    ``mask`` masks a command line argument before it is kept (identities go to the ledger,
    and a job's command line may carry a password or a token: ``curl -H "Authorization:
    ..."``, ``psql postgresql://u:secret@...``); see :func:`mask_cmdline`."""

    maxsize: int = 4096
    cgroups: CgroupPaths = field(default_factory=lambda: CgroupPaths(cgroup2_root()))
    mask: Callable[[str], str] | None = None
    _items: OrderedDict[tuple[int, int, str], ProcessInfo] = field(default_factory=OrderedDict)
    hits: int = 0
    misses: int = 0

    def get(self, key: tuple[int, int, str]) -> ProcessInfo | None:
        info = self._items.get(key)
        if info is not None:
            self._items.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
        return info

    def put(self, info: ProcessInfo) -> None:
        self._items[(info.pid, info.start_ticks, info.comm)] = info
        self._items.move_to_end((info.pid, info.start_ticks, info.comm))
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)


# An argument naming a secret whose value is the next argument (``--password x``, ``-H``
# takes a header that the detectors read on their own).
_SECRET_FLAG = re.compile(
    r"-{1,2}[\w-]*(pass(word)?|passwd|pwd|token|secret|api[-_]?key|credential)s?", re.I
)
_REDACTED = "[REDACTED:SECRET]"


def mask_cmdline(args: list[str], mask: Callable[[str], str] | None) -> tuple[str, ...]:
    """A command line with its secrets masked: each argument through ``mask`` (the
    detectors: ``password=...``, ``Authorization: ...``, URI passwords, tokens, cards), and
    the argument after a flag that names a secret (``--password VALUE``) redacted whole."""
    out: list[str] = []
    after_flag = False
    for arg in args:
        if after_flag and not arg.startswith("-"):
            out.append(_REDACTED)
        else:
            out.append(mask(arg) if mask is not None else arg)
        after_flag = bool(_SECRET_FLAG.fullmatch(arg))
    return tuple(out)


def _stat(proc: Path, pid: int) -> tuple[str, int, int] | None:
    """(comm, ppid, start time in clock ticks) from ``/proc/<pid>/stat``; None if gone."""
    try:
        raw = (proc / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The comm is in parentheses and may itself contain ") "; the last ")" ends it.
    head, _, tail = raw.rpartition(b")")
    comm = head.partition(b"(")[2].decode(errors="replace")
    fields = tail.split()
    try:
        return comm, int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _process(proc: Path, pid: int, cache: IdentityCache) -> ProcessInfo | None:
    stat = _stat(proc, pid)
    if stat is None:
        return None
    comm, ppid, start = stat
    cached = cache.get((pid, start, comm))
    if cached is not None:
        return cached
    base = proc / str(pid)
    errors: list[str] = []

    def read(name: str) -> bytes | None:
        try:
            return (base / name).read_bytes()
        except OSError as exc:
            errors.append(f"{base / name}: {exc.strerror}")
            return None

    try:
        exe: str | None = os.readlink(base / "exe")
    except OSError as exc:
        exe = None
        errors.append(f"{base / 'exe'}: {exc.strerror}")
    raw_cmdline = read("cmdline")
    cmdline = (
        mask_cmdline(
            [a.decode(errors="replace") for a in raw_cmdline.split(b"\0")[:-1]], cache.mask
        )
        if raw_cmdline
        else None
    )
    raw_cgroup = read("cgroup")
    cgroup = None
    for line in (raw_cgroup or b"").decode(errors="replace").splitlines():
        if line.startswith("0::"):
            cgroup = line[3:]
    raw_env = read("environ")
    ci = ci_from_environ(parse_environ(raw_env)) if raw_env is not None else None
    info = ProcessInfo(pid, ppid, start, comm, exe, cmdline, cgroup, ci, tuple(errors))
    if _stat(proc, pid) == stat:  # still the same process after the reads: cacheable
        cache.put(info)
    return info


def _ci_from_cgroup(
    proc: Path, cgroup: str | None, cache: IdentityCache, skip: int
) -> tuple[dict[str, object] | None, int | None]:
    """The CI variables of another process in the cgroup, for a process that has exited."""
    root = cache.cgroups.root
    if root is None or cgroup is None:
        return None, None
    try:
        pids = [int(p) for p in (root / cgroup.lstrip("/") / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return None, None
    for pid in pids:
        if pid == skip:
            continue
        info = _process(proc, pid, cache)
        if info is not None and info.ci is not None:
            return info.ci, pid
    return None, None


def _lineage(proc: Path, leaf: ProcessInfo, cache: IdentityCache) -> Iterator[ProcessInfo]:
    """``leaf``, its parent, and so on up to :data:`MAX_ANCESTORS` processes."""
    current: ProcessInfo | None = leaf
    for _ in range(MAX_ANCESTORS):
        if current is None:
            return
        yield current
        if current.ppid <= 0:
            return
        current = _process(proc, current.ppid, cache)


def job_environ(
    owner: FlowOwner,
    names: frozenset[str],
    *,
    proc: Path = Path("/proc"),
    cache: IdentityCache | None = None,
    max_value: int = 16384,
) -> tuple[int | None, dict[str, str]]:
    """The variables ``names`` in the environment of the process that opened the flow, or
    of its nearest ancestor that has any of them: ``(pid, {name: value})``, or ``(None,
    {})`` when none has them or the process has exited (its pid may name another process
    by now, whose environment must not speak for this flow).

    Used for the CI token variables (:mod:`appliance.identity`), which are secrets: they
    are read here on each call, never cached with the process facts, and the caller
    records none of them.
    """
    cache = cache if cache is not None else IdentityCache()
    leaf = _process(proc, owner.tgid, cache)
    if leaf is None or leaf.start_ns > owner.boot_ns:
        return None, {}
    for current in _lineage(proc, leaf, cache):
        stat = (current.comm, current.ppid, current.start_ticks)
        try:
            raw = (proc / str(current.pid) / "environ").read_bytes()
        except OSError:
            continue
        found = parse_environ(raw, names, max_value)
        if found and _stat(proc, current.pid) == stat:  # still the process we walked to
            return current.pid, found
    return None, {}


def unattributed(reason: str) -> dict[str, object]:
    """The identity of a session nobody could be found for."""
    return {
        "source": "unattributed",
        "how": f"unattributed: {reason}",
        **dict.fromkeys(
            ("pid", "tgid", "tid", "uid", "gid", "comm", "exe", "cmdline", "cgroup",
             "cgroup_id", "netns_cookie", "dst", "ci", "ci_source_pid", "ci_source")
        ),
        "errors": [],
    }  # fmt: skip


def resolve_identity(
    owner: FlowOwner | None,
    *,
    proc: Path = Path("/proc"),
    cache: IdentityCache | None = None,
    reason: str | None = None,
) -> dict[str, object]:
    """The identity of a session whose connection ``owner`` opened.

    ``owner`` None: ``unattributed`` with ``reason`` (why there is no BPF record). Keys:
    ``source`` (``ebpf`` | ``unattributed``), ``how`` (``ebpf+procfs``, ``ebpf (process
    exited)`` or ``unattributed: <reason>``), ``pid`` (= ``tgid``, the process id), ``tid``,
    ``uid``, ``gid``, ``comm``, ``exe``, ``cmdline``, ``cgroup`` (path in the cgroup v2
    hierarchy), ``cgroup_id``, ``netns_cookie``, ``dst`` (the original destination), ``ci``
    (see :mod:`._ci`), ``ci_source_pid`` and ``ci_source`` (``process``, ``ancestor`` or,
    for an exited process, ``cgroup``), ``errors`` (what could not be read, e.g. an
    ``environ`` without CAP_SYS_PTRACE). Never raises for a vanished or unreadable process.
    """
    if owner is None:
        return unattributed(reason or "no BPF record of this connection")
    cache = cache if cache is not None else IdentityCache()
    leaf = _process(proc, owner.tgid, cache)
    if leaf is not None and leaf.start_ns > owner.boot_ns:
        leaf = None  # the pid now names a process younger than the connection
    cgroup = None
    if leaf is not None and leaf.cgroup and cache.cgroups.remember(leaf.cgroup, owner.cgroup_id):
        cgroup = leaf.cgroup
    if cgroup is None:
        cgroup = cache.cgroups.path_of(owner.cgroup_id)
    ci: dict[str, object] | None = None
    ci_pid: int | None = None
    ci_source: str | None = None
    if leaf is not None:
        for depth, current in enumerate(_lineage(proc, leaf, cache)):
            if current.ci is not None:
                ci, ci_pid = current.ci, current.pid
                ci_source = "process" if depth == 0 else "ancestor"
                break
    else:
        ci, ci_pid = _ci_from_cgroup(proc, cgroup, cache, owner.tgid)
        ci_source = "cgroup" if ci is not None else None
    return {
        "source": "ebpf",
        "how": "ebpf+procfs" if leaf is not None else "ebpf (process exited)",
        "pid": owner.tgid,
        "tgid": owner.tgid,
        "tid": owner.pid,
        "uid": owner.uid,
        "gid": owner.gid,
        "comm": owner.comm,
        "exe": leaf.exe if leaf else None,
        "cmdline": list(leaf.cmdline) if leaf and leaf.cmdline is not None else None,
        "cgroup": cgroup,
        "cgroup_id": owner.cgroup_id,
        "netns_cookie": owner.netns_cookie,
        "dst": format_endpoint(owner.dst[0], owner.dst[1]),
        "ci": ci,
        "ci_source_pid": ci_pid,
        "ci_source": ci_source,
        "errors": list(leaf.errors) if leaf else [],
    }
