"""The cgroup v2 hierarchy: where it is mounted and which directory a cgroup id names.

Where this sits: :class:`Attribution` attaches to a cgroup v2 directory (the root by
default); identity resolution turns the cgroup id BPF recorded
(``bpf_get_current_cgroup_id``, the inode number of the cgroup's directory) back into the
path a reader knows, ``/actions_job/...``, even after the process has exited.
"""

from __future__ import annotations

import os
from pathlib import Path

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
