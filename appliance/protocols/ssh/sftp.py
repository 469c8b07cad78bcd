"""SFTP version 3 (draft-ietf-secsh-filexfer-02, as OpenSSH speaks it): framing, the
requests a client sends, the replies a server sends, and the STATUS reply the appliance
sends when it refuses a request.

Where this sits: the SFTP subsystem is a byte stream inside an SSH session channel;
:class:`Framer` cuts it into packets (``uint32 length, byte type, ...``), each capped at
:data:`MAX_PACKET`, and :func:`parse_request` / :func:`parse_reply` decode them into
:class:`Request` / :class:`Reply`. The session logic (:mod:`appliance.proxy.ssh.sftp`)
decides and records; this module only reads and writes the format. A malformed or oversized
packet raises :class:`SftpProtocolError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "MAX_PACKET",
    "Framer",
    "Reply",
    "Request",
    "SftpProtocolError",
    "parse_reply",
    "parse_request",
    "status",
]

# OpenSSH's sftp-server refuses messages over 256 KiB (SFTP_MAX_MSG_LENGTH); a little more
# for the header.
MAX_PACKET = 256 * 1024 + 1024

INIT, VERSION = 1, 2
OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT = 3, 4, 5, 6, 7, 8, 9, 10
OPENDIR, READDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME = 11, 12, 13, 14, 15, 16, 17, 18
READLINK, SYMLINK, EXTENDED = 19, 20, 200
STATUS, HANDLE, DATA, NAME, ATTRS, EXTENDED_REPLY = 101, 102, 103, 104, 105, 201

OK, EOF, NO_SUCH_FILE, PERMISSION_DENIED, FAILURE, BAD_MESSAGE = 0, 1, 2, 3, 4, 5
OP_UNSUPPORTED = 8

# OPEN's pflags
FXF_READ, FXF_WRITE, FXF_APPEND, FXF_CREAT, FXF_TRUNC, FXF_EXCL = 1, 2, 4, 8, 0x10, 0x20

REQUEST_NAMES = {
    INIT: "init",
    OPEN: "open",
    CLOSE: "close",
    READ: "read",
    WRITE: "write",
    LSTAT: "lstat",
    FSTAT: "fstat",
    SETSTAT: "setstat",
    FSETSTAT: "fsetstat",
    OPENDIR: "opendir",
    READDIR: "readdir",
    REMOVE: "remove",
    MKDIR: "mkdir",
    RMDIR: "rmdir",
    REALPATH: "realpath",
    STAT: "stat",
    RENAME: "rename",
    READLINK: "readlink",
    SYMLINK: "symlink",
    EXTENDED: "extended",
}

_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
# ATTRS flags (filexfer-02 section 5)
_SIZE, _UIDGID, _PERMISSIONS, _ACMODTIME, _EXTENDED = 1, 2, 4, 8, 0x80000000


class SftpProtocolError(Exception):
    """A peer sent something that is not SFTP version 3 (or too large)."""


@dataclass(frozen=True, slots=True)
class Request:
    """A client's request. ``name``: the request (``open``, ``rename``, or the extension's
    name for ``extended``); ``paths`` as sent (two for rename, symlink and hardlink);
    ``handle`` for requests on an open file or directory; ``pflags`` of an open;
    ``offset``/``length`` of a read or write; ``data`` of a write; ``raw``: the whole packet,
    forwarded as it came."""

    type: int
    id: int
    name: str
    paths: tuple[str, ...] = ()
    handle: bytes | None = None
    handles: tuple[bytes, ...] = ()
    pflags: int = 0
    offset: int = 0
    length: int = 0
    data: bytes = b""
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class Reply:
    """A server's reply to request ``id``: ``status`` code and message, the ``handle`` it
    issued, the ``data`` read, the ``names`` of a NAME reply; ``raw`` as it came."""

    type: int
    id: int
    status: int | None = None
    message: str = ""
    handle: bytes | None = None
    data: bytes = b""
    names: tuple[str, ...] = ()
    raw: bytes = b""


class Framer:
    """Cuts one direction of the byte stream into whole packets (length prefix included)."""

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self.max_packet = max_packet
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The whole packets completed by ``data``; raises SftpProtocolError for an empty
        or oversized one."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 4:
            (length,) = _U32.unpack_from(buf, pos)
            if length == 0 or length > self.max_packet:
                raise SftpProtocolError(f"SFTP packet of {length} bytes (limit {self.max_packet})")
            if len(buf) - pos < 4 + length:
                break
            out.append(bytes(buf[pos : pos + 4 + length]))
            pos += 4 + length
        del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)


class _Reader:
    def __init__(self, packet: bytes) -> None:
        self.buf = packet
        self.pos = 5  # after length and type

    def u32(self) -> int:
        if self.pos + 4 > len(self.buf):
            raise SftpProtocolError("truncated SFTP packet")
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def u64(self) -> int:
        if self.pos + 8 > len(self.buf):
            raise SftpProtocolError("truncated SFTP packet")
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(v)

    def string(self) -> bytes:
        n = self.u32()
        if self.pos + n > len(self.buf):
            raise SftpProtocolError("SFTP string runs past its packet")
        v = self.buf[self.pos : self.pos + n]
        self.pos += n
        return v

    def text(self) -> str:
        try:
            return self.string().decode("utf-8")
        except UnicodeDecodeError:
            raise SftpProtocolError("SFTP path or message is not UTF-8") from None

    def attrs(self) -> None:
        flags = self.u32()
        if flags & _SIZE:
            self.u64()
        if flags & _UIDGID:
            self.u32()
            self.u32()
        if flags & _PERMISSIONS:
            self.u32()
        if flags & _ACMODTIME:
            self.u32()
            self.u32()
        if flags & _EXTENDED:
            for _ in range(self.u32()):
                self.string()
                self.string()


_PATH_REQUESTS = frozenset(
    {LSTAT, SETSTAT, OPENDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT, READLINK}
)
_HANDLE_REQUESTS = frozenset({CLOSE, FSTAT, FSETSTAT, READDIR})
# Extensions whose arguments are known (OpenSSH's PROTOCOL file, draft-ietf-secsh-filexfer
# copy-data and home-directory): name -> what follows the name.
_EXT_PATHS = {"statvfs@openssh.com": 1, "expand-path@openssh.com": 1, "lsetstat@openssh.com": 1}
_EXT_TWO_PATHS = frozenset({"posix-rename@openssh.com", "hardlink@openssh.com"})
_EXT_HANDLE = frozenset({"fstatvfs@openssh.com", "fsync@openssh.com"})
_EXT_NO_PATH = frozenset({"limits@openssh.com", "users-groups-by-id@openssh.com"})


def parse_request(packet: bytes) -> Request:
    """Decode a client's packet; raises SftpProtocolError if it is malformed. Requests
    of types this module does not know are returned with ``name`` ``"type N"``."""
    r = _Reader(packet)
    kind = packet[4]
    if kind == INIT:
        return Request(kind, r.u32(), "init", raw=packet)  # the version, in place of an id
    rid = r.u32()
    name = REQUEST_NAMES.get(kind, f"type {kind}")
    if kind == OPEN:
        path = r.text()
        pflags = r.u32()
        r.attrs()
        return Request(kind, rid, name, (path,), pflags=pflags, raw=packet)
    if kind in (READ, WRITE):
        handle = r.string()
        offset = r.u64()
        if kind == READ:
            return Request(
                kind, rid, name, handle=handle, offset=offset, length=r.u32(), raw=packet
            )
        data = r.string()
        return Request(
            kind, rid, name, handle=handle, offset=offset, length=len(data), data=data, raw=packet
        )
    if kind in _HANDLE_REQUESTS:
        return Request(kind, rid, name, handle=r.string(), raw=packet)
    if kind in _PATH_REQUESTS:
        return Request(kind, rid, name, (r.text(),), raw=packet)
    if kind in (RENAME, SYMLINK):
        first, second = r.text(), r.text()
        return Request(kind, rid, name, (first, second), raw=packet)
    if kind == EXTENDED:
        ext = r.text()
        if ext in _EXT_PATHS:
            return Request(kind, rid, ext, (r.text(),), raw=packet)
        if ext in _EXT_TWO_PATHS:
            first, second = r.text(), r.text()
            return Request(kind, rid, ext, (first, second), raw=packet)
        if ext in _EXT_HANDLE:
            return Request(kind, rid, ext, handle=r.string(), raw=packet)
        if ext == "copy-data":
            src = r.string()
            r.u64()
            r.u64()
            dst = r.string()
            return Request(kind, rid, ext, handles=(src, dst), raw=packet)
        if ext == "home-directory":
            return Request(kind, rid, ext, (f"~{r.text()}",), raw=packet)
        return Request(kind, rid, ext, raw=packet)
    return Request(kind, rid, name, raw=packet)


def parse_reply(packet: bytes) -> Reply:
    """Decode a server's packet; raises SftpProtocolError if it is malformed."""
    r = _Reader(packet)
    kind = packet[4]
    if kind == VERSION:
        return Reply(kind, -1, raw=packet)
    rid = r.u32()
    if kind == STATUS:
        code = r.u32()
        # Version 3 servers may omit the message and language tag.
        message = r.text() if r.pos < len(packet) else ""
        return Reply(kind, rid, status=code, message=message, raw=packet)
    if kind == HANDLE:
        return Reply(kind, rid, handle=r.string(), raw=packet)
    if kind == DATA:
        return Reply(kind, rid, data=r.string(), raw=packet)
    if kind == NAME:
        count = r.u32()
        if count > 1 and count > (len(packet) - r.pos) // 12:
            raise SftpProtocolError("SFTP NAME reply counts more names than it holds")
        names = []
        for _ in range(count):
            names.append(r.text())
            r.string()  # long name
            r.attrs()
        return Reply(kind, rid, names=tuple(names), raw=packet)
    return Reply(kind, rid, raw=packet)


def _string(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value


def _packet(kind: int, body: bytes) -> bytes:
    return _U32.pack(len(body) + 1) + bytes([kind]) + body


def status(request_id: int, code: int, message: str) -> bytes:
    """A STATUS reply (with message and an empty language tag, as OpenSSH sends them)."""
    return _packet(
        STATUS, _U32.pack(request_id) + _U32.pack(code) + _string(message.encode()) + _string(b"")
    )


def realpath(request_id: int, path: str) -> bytes:
    """A REALPATH request (the appliance asks for the session's home directory once)."""
    return _packet(REALPATH, _U32.pack(request_id) + _string(path.encode()))


def init(version: int = 3) -> bytes:
    return _packet(INIT, _U32.pack(version))


def request(kind: int, request_id: int, *strings: bytes, tail: bytes = b"") -> bytes:
    """A request of ``kind`` with string arguments (for tests and the bench)."""
    return _packet(kind, _U32.pack(request_id) + b"".join(_string(s) for s in strings) + tail)
