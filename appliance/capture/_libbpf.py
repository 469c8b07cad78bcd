"""The few libbpf calls bcc does not wrap: list, name and detach programs attached to a cgroup.

Where this sits: :class:`appliance.capture.Attribution` detaches stale ``apl_*`` programs
left on its cgroup by a previous run (programs attached with ``BPF_PROG_ATTACH`` outlive
the process that attached them: a ``kill -9`` leaves them in place). libbpf.so.1 is the
library bcc itself links against, so it is there whenever bcc is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

from appliance.capture._errors import AttributionUnavailable


class _ProgInfo(ctypes.Structure):
    """The head of ``struct bpf_prog_info`` (<linux/bpf.h>), up to ``name``; the kernel
    fills only as many bytes as it is given."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


_lib: ctypes.CDLL | None = None


def _libbpf() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise AttributionUnavailable(f"libbpf cannot be loaded: {exc}") from None
        u32p = ctypes.POINTER(ctypes.c_uint32)
        lib.bpf_prog_query.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_uint32,
            u32p,
            u32p,
            u32p,
        ]
        lib.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
        lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, u32p]
        lib.bpf_prog_detach2.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        _lib = lib
    return _lib


def _check(result: int, what: str) -> int:
    """libbpf 1.x returns ``-errno`` on failure."""
    if result < 0:
        raise OSError(-result, f"{what}: {os.strerror(-result)}")
    return result


def attached_programs(cgroup_fd: int, attach_type: int) -> list[int]:
    """The ids of the programs attached to the cgroup for ``attach_type``."""
    lib = _libbpf()
    size = 64
    while True:
        ids = (ctypes.c_uint32 * size)()
        count = ctypes.c_uint32(size)
        flags = ctypes.c_uint32(0)
        result = lib.bpf_prog_query(cgroup_fd, attach_type, 0, flags, ids, count)
        if result == -errno.ENOSPC:
            size *= 4
            continue
        _check(result, "BPF_PROG_QUERY")
        return list(ids[: count.value])


def program_name(prog_id: int) -> str:
    """The name the program was loaded with (``""`` if it is gone)."""
    lib = _libbpf()
    fd = lib.bpf_prog_get_fd_by_id(prog_id)
    if fd == -errno.ENOENT:
        return ""
    _check(fd, f"BPF_PROG_GET_FD_BY_ID {prog_id}")
    try:
        info = _ProgInfo()
        length = ctypes.c_uint32(ctypes.sizeof(info))
        _check(lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), length), "BPF_OBJ_GET_INFO")
        name: bytes = info.name
        return name.decode(errors="replace")
    finally:
        os.close(fd)


def detach_program(prog_id: int, cgroup_fd: int, attach_type: int) -> None:
    """Detach one program from the cgroup (it is freed when nothing else holds it)."""
    lib = _libbpf()
    fd = lib.bpf_prog_get_fd_by_id(prog_id)
    if fd == -errno.ENOENT:
        return
    _check(fd, f"BPF_PROG_GET_FD_BY_ID {prog_id}")
    try:
        _check(lib.bpf_prog_detach2(fd, cgroup_fd, attach_type), f"BPF_PROG_DETACH {prog_id}")
    finally:
        os.close(fd)
