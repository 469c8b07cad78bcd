"""Masking's compiled pre-filter databases kept on disk from one start to the next (issue 19).

Where it sits: beside the daemon, which does masking's I/O (the masking package does none).
The daemon (and each proxy worker) makes its :class:`~appliance.masking.Masker` with a
:class:`PrefilterCache` of the appliance's cache directory (systemd's ``CacheDirectory=``, which it names in ``$CACHE_DIRECTORY``); the
pre-filter (:mod:`appliance.masking._prefilter`, which does no I/O) loads its Hyperscan
databases from here instead of compiling them -- a second or more of CPU at every start --
and saves what it had to compile. Without a cache directory nothing is kept: every start
compiles, as tests do.

A loaded database decides which detectors run on a text, so a file here is trusted as
little as possible:

- it is read only from a directory owned by this process's effective user and writable by
  nobody else, and only if it is a regular file (not a symbolic link), owned by that user,
  writable by nobody else, with one link; anything else is refused, logged, and compiled;
- its name is the pre-filter's :func:`~appliance.masking._prefilter.database_key` (a digest
  over the patterns, flags, Hyperscan version and the CPU features it compiles for), and
  the key is inside the databases too: a file of other patterns, another Hyperscan or
  another host's CPU is never loaded as this one's;
- it carries a SHA-256 of its content: a torn or damaged file is recompiled and replaced;
- it is written whole to a temporary file in the same directory (mode 0600, fsynced) and
  renamed over the old one, so a reader sees the old file or the new one.

Not baked into the runner image: the image carries an example config that is edited after
the build (packer/provision.sh), and the key holds the CPU features of the host that
compiled, so a baked file would rarely be the one a VM asks for (and would be harmless when
not). The first start on a VM compiles and saves; later starts (``Restart=always``, reboots)
load. An image that bakes its final config can start the appliance once during the build.

None of this stands against the appliance's own user (it could as well change the code);
it stands against damage, other users, and databases made elsewhere. Nothing here raises:
the cache is an optimisation, and every failure means "compile".
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ENV", "PrefilterCache"]

log = logging.getLogger("appliance.masking")

ENV = "CACHE_DIRECTORY"  # set by systemd for CacheDirectory= (appliance.service)
MAGIC = b"APPFCACH"
MAX_BYTES = 256 * 1024 * 1024
KEEP = 8  # files kept (one per pattern set: configs change rarely)
_KEY = re.compile(r"[0-9a-f]{64}")
_PREFIX, _SUFFIX = "prefilter-", ".hsdb"


class PrefilterCache:
    """Compiled pre-filter databases in ``directory`` (a
    :class:`~appliance.masking._prefilter.DatabaseStore`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._usable: bool | None = None  # checked once, on first use

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> PrefilterCache | None:
        """The cache in ``$CACHE_DIRECTORY`` (the first, if systemd names several), or None."""
        first = environ.get(ENV, "").split(":")[0]
        return cls(Path(first)) if first else None

    def load(self, key: str) -> bytes | None:
        path = self._path(key)
        if not self._directory_usable():
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:  # ELOOP: a symbolic link
            log.warning("masking pre-filter cache: %s refused (%s); compiling", path, exc)
            return None
        try:
            st = os.fstat(fd)
            refused = _refusal(st, file=True)
            if refused is None and not len(MAGIC) + 32 < st.st_size <= MAX_BYTES:
                refused = f"size {st.st_size}"
            if refused is not None:
                log.warning("masking pre-filter cache: %s refused (%s); compiling", path, refused)
                return None
            data = _read(fd, st.st_size)
        except OSError as exc:
            log.warning("masking pre-filter cache: cannot read %s (%s); compiling", path, exc)
            return None
        finally:
            os.close(fd)
        head = len(MAGIC) + 32
        if (
            data[: len(MAGIC)] != MAGIC
            or hashlib.sha256(data[head:]).digest() != data[len(MAGIC) : head]
        ):
            log.warning("masking pre-filter cache: %s is damaged; compiling", path)
            return None
        return data[head:]

    def save(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if not self._directory_usable():
            return
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{_PREFIX}", suffix=".tmp", dir=self.directory)
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + hashlib.sha256(data).digest() + data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            log.warning("masking pre-filter cache: cannot write %s (%s)", path, exc)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        self._prune(keep=path)

    def _path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError(f"not a pre-filter database key: {key!r}")
        return self.directory / f"{_PREFIX}{key}{_SUFFIX}"

    def _directory_usable(self) -> bool:
        """Whether the directory may hold databases (created, mode 0700, if missing)."""
        if self._usable is None:
            with contextlib.suppress(FileExistsError, FileNotFoundError):
                os.mkdir(self.directory, 0o700)
            try:
                refused = _refusal(os.lstat(self.directory), file=False)
            except OSError as exc:
                refused = str(exc)
            if refused is not None:
                log.warning(
                    "masking pre-filter cache: directory %s refused (%s); compiling at every start",
                    self.directory,
                    refused,
                )
            self._usable = refused is None
        return self._usable

    def _prune(self, keep: Path) -> None:
        """Remove the oldest databases beyond :data:`KEEP` (other pattern sets)."""
        try:
            files = sorted(
                (p.stat().st_mtime, p)
                for p in self.directory.glob(f"{_PREFIX}*{_SUFFIX}")
                if p != keep
            )
            for _, p in files[: max(0, len(files) - (KEEP - 1))]:
                p.unlink()
        except OSError:
            pass


def _refusal(st: os.stat_result, *, file: bool) -> str | None:
    """Why a file (or the directory) with this status may not be trusted, or None."""
    if file and not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if not file and not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not {os.geteuid()}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    if file and st.st_nlink != 1:
        return f"{st.st_nlink} links"
    return None


def _read(fd: int, size: int) -> bytes:
    parts = []
    while size > 0:
        part = os.read(fd, min(size, 1 << 20))
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)
