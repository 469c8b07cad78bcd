"""The cgroup v2 hierarchy: where it is mounted and which directory a cgroup id names.

Where this sits: :class:`Attribution` attaches to a cgroup v2 directory (the root by
default); identity resolution turns the cgroup id BPF recorded
(``bpf_get_current_cgroup_id``, the inode number of the cgroup's directory) back into the
path a reader knows, ``/actions_job/...``, even after the process has exited. The capture
rules let marked traffic out only from the appliance's own cgroup (``capture.appliance_cgroup``,
a path like ``/system.slice/appliance.service``): :func:`lookup_cgroup_id` and
:func:`own_cgroup` answer for it.
"""

from __future__ import annotations

import os
from pathlib import Path

from appliance.capture._errors import CaptureError

_MOUNTS = Path("/proc/self/mounts")


def cgroup2_root(mounts: Path = _MOUNTS) -> Path | None:
    """The mount point of the cgroup v2 hierarchy (``/sys/fs/cgroup`` on a unified host,
    ``/sys/fs/cgroup/unified`` on a hybrid one), or None if it is not mounted."""
    try:
        text = mounts.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            return Path(parts[1].replace("\\040", " "))
    return None


def cgroup_id(path: Path) -> int:
    """The id of the cgroup at ``path`` (its directory's inode number)."""
    return os.stat(path).st_ino


def cgroup_dir(path: str, root: Path | None = None) -> Path | None:
    """The directory of the cgroup ``path`` (``/a/b``, as /proc/PID/cgroup writes it), or
    None when no cgroup v2 hierarchy is mounted."""
    root = root if root is not None else cgroup2_root()
    return None if root is None else root / path.lstrip("/")


def lookup_cgroup_id(path: str) -> int | None:
    """The id of the cgroup ``path`` (``/a/b``), or None if it does not exist (now)."""
    directory = cgroup_dir(path)
    if directory is None:
        return None
    try:
        return cgroup_id(directory)
    except OSError:
        return None


def cgroup_level(path: str) -> int:
    """How deep ``path`` is in the hierarchy: ``/`` is 0, ``/a/b`` is 2."""
    return len([part for part in path.split("/") if part])


def own_cgroup(proc_cgroup: Path = Path("/proc/self/cgroup")) -> str | None:
    """The cgroup v2 path of the calling process (the ``0::`` line), or None if unknown."""
    try:
        text = proc_cgroup.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def within(path: str, ancestor: str) -> bool:
    """Whether cgroup ``path`` is ``ancestor`` or below it."""
    parts, top = path.rstrip("/").split("/"), ancestor.rstrip("/").split("/")
    return parts[: len(top)] == top


class CgroupPaths:
    """Cgroup id -> path relative to the hierarchy root (``"/"`` for the root), cached.

    A miss walks the hierarchy once; cgroups come and go, so a cached answer is checked
    (the directory still has that inode) before it is trusted.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._known: dict[int, str] = {}

    def path_of(self, ident: int) -> str | None:
        if self.root is None:
            return None
        cached = self._known.get(ident)
        if cached is not None and self._inode(cached) == ident:
            return cached
        for dirpath, _dirs, _files in os.walk(self.root):
            try:
                inode = os.stat(dirpath).st_ino
            except OSError:
                continue
            rel = os.path.relpath(dirpath, self.root)
            self._known[inode] = "/" if rel == "." else "/" + rel
            if inode == ident:
                return self._known[inode]
        return None

    def remember(self, path: str, ident: int) -> bool:
        """Record ``path`` for ``ident`` if the directory really has that id; True if so."""
        if self._inode(path) == ident:
            self._known[ident] = path
            return True
        return False

    def _inode(self, rel: str) -> int | None:
        if self.root is None:
            return None
        try:
            return os.stat(self.root / rel.lstrip("/")).st_ino
        except OSError:
            return None


def require_own_cgroup(expected: str, proc_cgroup: Path = Path("/proc/self/cgroup")) -> str:
    """The calling process's cgroup, which must be ``expected`` (``capture.appliance_cgroup``)
    or below it: the capture rules let the appliance's marked connections out from there
    only, so anywhere else every upstream connection would be refused.

    Returns the cgroup; raises CaptureError saying where the process is instead.
    """
    own = own_cgroup(proc_cgroup)
    if own is None or not within(own, expected):
        raise CaptureError(
            f"the appliance runs in cgroup {own or '(unknown)'}, but capture.appliance_cgroup "
            f"is {expected}: the capture rules let marked traffic out from that cgroup only, so "
            "every upstream connection would be refused. Run it as the systemd unit "
            "(systemd/appliance.service runs in /system.slice/appliance.service) or set "
            "capture.appliance_cgroup to the cgroup it runs in"
        )
    return own
