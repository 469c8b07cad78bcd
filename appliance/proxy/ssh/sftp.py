"""One SFTP channel: each request decided by policy and recorded, handles and transfers
followed, refusals answered in SFTP's own terms.

Where this sits: the SSH session core (:mod:`.core`) hands an ``sftp`` subsystem channel's
bytes to :class:`SftpRelay` (:meth:`~SftpRelay.from_job`, :meth:`~SftpRelay.from_upstream`)
and forwards what :meth:`~SftpRelay.take` returns. For each request:

- a path request (open, opendir, stat, setstat, mkdir, remove, rmdir, rename, symlink,
  realpath, readlink, and the OpenSSH extensions that name paths) is classified
  (``file_read``, ``file_write``, ``file_remove``, ``file_rename``, ``file_list``) with its
  paths made absolute against the session's home directory, decided, and recorded as an
  operation; a denial is answered with ``SSH_FX_PERMISSION_DENIED`` and the rule, a review
  holds the channel until the approver's answer;
- a request on a handle (read, write, close, fstat, fsetstat, readdir, fsync...) passes
  only for a handle the server issued in this channel, and a write only for a handle
  opened for writing (fsetstat is decided as a write of the handle's path);
- an unknown request or extension is answered ``SSH_FX_OP_UNSUPPORTED`` (fail closed).

The home directory: right after the server's VERSION, the relay asks ``realpath(".")``
itself (request id :data:`HOME_ID`, while the job's requests wait: no id can clash), so
that ``../../etc/passwd`` is matched as ``/etc/passwd``. Paths are normalized lexically: a
symbolic link on the target can still lead elsewhere.

Uploads (writes) and downloads (read replies) feed a :class:`~.transfers.Transfer` per
handle, recorded when the handle is closed or the channel ends. With write-ahead
durability, an allowed operation that changes the target (not a read or a listing) is
held until its record is on disk, as a review is until its approval.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.policy import Classification, file_operation
from appliance.protocols.ssh import sftp as fx
from appliance.proxy.ssh.decisions import SshVerdict
from appliance.proxy.ssh.transfers import Transfer

__all__ = ["HOME_ID", "MAX_HANDLES", "MAX_OUTSTANDING", "SftpRelay"]

HOME_ID = 0xFFFFFFFF
MAX_OUTSTANDING = 4096  # requests forwarded and not yet answered
MAX_HANDLES = 1024

# Path requests: (class, how many paths)
_PATH_CLASSES = {
    "opendir": "file_list",
    "lstat": "file_list",
    "stat": "file_list",
    "realpath": "file_list",
    "readlink": "file_list",
    "setstat": "file_write",
    "mkdir": "file_write",
    "remove": "file_remove",
    "rmdir": "file_remove",
    "rename": "file_rename",
    "symlink": "file_write",
    "posix-rename@openssh.com": "file_rename",
    "hardlink@openssh.com": "file_write",
    "statvfs@openssh.com": "file_list",
    "expand-path@openssh.com": "file_list",
    "lsetstat@openssh.com": "file_write",
    "home-directory": "file_list",
}
# Extensions on handles, and those that name nothing at all.
_HANDLE_EXTENSIONS = frozenset({"fstatvfs@openssh.com", "fsync@openssh.com"})
_FREE_EXTENSIONS = frozenset({"limits@openssh.com", "users-groups-by-id@openssh.com"})
_READS = frozenset({"file_read", "file_list"})  # operations that change nothing
_WRITE_FLAGS = fx.FXF_WRITE | fx.FXF_APPEND | fx.FXF_CREAT | fx.FXF_TRUNC


@dataclass
class _Handle:
    path: str
    n: int
    directory: bool = False
    readable: bool = False
    writable: bool = False
    transfer: Transfer | None = None


@dataclass
class _Pending:
    """A forwarded request waiting for its reply."""

    name: str
    n: int | None = None
    path: str = ""
    pflags: int = 0
    handle: bytes | None = None
    offset: int = 0
    record: bool = False


@dataclass
class _Held:
    packet: bytes
    request: fx.Request
    n: int
    verdict: SshVerdict
    queue: list[bytes] = field(default_factory=list)


Decide = Callable[[Classification, fx.Request], tuple[int, SshVerdict]]
Ask = Callable[[int, SshVerdict, str, bytes], None]
Outcome = Callable[[int, int, str], None]
Finished = Callable[[Transfer, bool], None]


class SftpRelay:
    """See the module docstring. The callables come from the session core:

    ``decide(classification, request) -> (n, verdict)`` decides and records an operation;
    ``ask(n, verdict, text, exact)`` asks for an approval (answered with :meth:`answered`);
    ``outcome(n, status, message)`` records how an operation ended; ``finished(transfer,
    complete)`` records a transfer; ``sync()`` (write-ahead, None without) asks for the
    ledger's sync before an operation that changes the target goes on (answered with
    :meth:`answered` too).
    """

    def __init__(
        self,
        *,
        decide: Decide,
        ask: Ask,
        outcome: Outcome,
        finished: Finished,
        content_cap: int,
        sync: Callable[[], None] | None = None,
    ) -> None:
        self._decide = decide
        self._ask = ask
        self._sync = sync
        self._outcome = outcome
        self._finished = finished
        self._cap = content_cap
        self._from_job = fx.Framer()
        self._from_up = fx.Framer()
        self._to_job: list[bytes] = []
        self._to_up: list[bytes] = []
        self._handles: dict[bytes, _Handle] = {}
        self._pending: dict[int, _Pending] = {}
        self._held: _Held | None = None
        self._waiting: list[bytes] = []  # job packets waiting for the home directory
        self.state = "init"  # init -> version -> home -> open
        self.home: str | None = None
        self.operations = 0

    @property
    def held(self) -> bool:
        """The job's requests wait (an approval, or the home directory)."""
        return self._held is not None or self.state in ("version", "home")

    def take(self) -> tuple[bytes, bytes]:
        to_job, to_up = b"".join(self._to_job), b"".join(self._to_up)
        self._to_job.clear()
        self._to_up.clear()
        return to_job, to_up

    # -- the job's requests --------------------------------------------------------------------

    def from_job(self, data: bytes) -> None:
        """Raises SftpProtocolError for a malformed or oversized packet."""
        for packet in self._from_job.feed(data):
            if self._held is not None:
                self._held.queue.append(packet)
            elif self.state in ("version", "home"):
                self._waiting.append(packet)
            else:
                self._request(packet)

    def _request(self, packet: bytes) -> None:
        req = fx.parse_request(packet)
        if self.state == "init":
            if req.type != fx.INIT:
                raise fx.SftpProtocolError(f"the job's first SFTP packet is {req.name}, not init")
            self.state = "version"
            self._to_up.append(packet)
            return
        if req.type == fx.INIT:
            raise fx.SftpProtocolError("a second SFTP init")
        if req.id == HOME_ID:
            self._reply(req.id, fx.FAILURE, "request id reserved by the appliance")
            return
        if len(self._pending) >= MAX_OUTSTANDING:
            raise fx.SftpProtocolError(f"more than {MAX_OUTSTANDING} SFTP requests unanswered")
        name = req.name
        if req.type in (fx.OPEN, fx.OPENDIR) or name in _PATH_CLASSES:
            self._path_request(packet, req)
        elif req.type in (fx.READ, fx.WRITE, fx.CLOSE, fx.FSTAT, fx.READDIR, fx.FSETSTAT):
            self._handle_request(packet, req)
        elif name in _HANDLE_EXTENSIONS:
            if self._handle(req) is not None:
                self._forward(packet, req, _Pending(name))
        elif name == "copy-data":
            src, dst = (self._handles.get(h) for h in req.handles)
            if src is None or dst is None:
                self._reply(req.id, fx.FAILURE, "the appliance knows no such handle")
            elif not dst.writable:
                self._reply(
                    req.id,
                    fx.PERMISSION_DENIED,
                    "the appliance refuses: the destination handle is not open for writing",
                )
            else:
                self._forward(packet, req, _Pending(name))
        elif name in _FREE_EXTENSIONS:
            self._forward(packet, req, _Pending(name))
        else:
            self._reply(req.id, fx.OP_UNSUPPORTED, f"the appliance does not relay SFTP {name}")

    def _path_request(self, packet: bytes, req: fx.Request) -> None:
        paths = tuple(self._absolute(p) for p in req.paths)
        if req.type == fx.OPEN:
            classes = []
            if req.pflags & fx.FXF_READ or not req.pflags & _WRITE_FLAGS:
                classes.append("file_read")
            if req.pflags & _WRITE_FLAGS:
                classes.append("file_write")
            cls = classes[-1]
        else:
            cls = _PATH_CLASSES[req.name]
        classification = file_operation(req.name, cls, paths)
        stmt = classification.statements[0]
        if req.type == fx.OPEN and len(classes) > 1:
            stmt = dataclasses.replace(stmt, classes=frozenset(classes))
            classification = Classification.of([stmt])
        if self.home is None and any(not p.startswith(("/", "~")) for p in paths):
            # Without the home directory a relative path could lead anywhere.
            stmt = dataclasses.replace(stmt, classes=stmt.classes | {"unknown"})
            classification = Classification.of(
                [stmt], parse_error="the session's home directory is unknown"
            )
        n, verdict = self._decide(classification, req)
        self.operations += 1
        if verdict.lets_through and self._sync is not None and not stmt.classes <= _READS:
            self._held = _Held(packet, req, n, verdict)  # written ahead: held until on disk
            self._sync()
        elif verdict.lets_through:
            self._forward_path(packet, req, n, paths)
        elif verdict.action == "deny":
            self._reply(req.id, fx.PERMISSION_DENIED, f"the appliance refuses: {verdict.message}")
        else:
            self._held = _Held(packet, req, n, verdict)
            text = f"sftp {req.name} " + " ".join(paths)
            self._ask(n, verdict, text, packet[4:])

    def _forward_path(self, packet: bytes, req: fx.Request, n: int, paths: tuple[str, ...]) -> None:
        changes = req.name not in (
            "opendir",
            "lstat",
            "stat",
            "realpath",
            "readlink",
            "statvfs@openssh.com",
            "expand-path@openssh.com",
            "home-directory",
        )
        self._forward(
            packet,
            req,
            _Pending(req.name, n, paths[0], req.pflags, record=changes),
        )

    def _handle_request(self, packet: bytes, req: fx.Request) -> None:
        handle = self._handle(req)
        if handle is None:
            return
        if req.type == fx.WRITE:
            if not handle.writable:
                self._reply(
                    req.id,
                    fx.PERMISSION_DENIED,
                    "the appliance refuses: the handle is not open for writing",
                )
                return
            if handle.transfer is None:
                handle.transfer = Transfer("sftp", "upload", handle.path, cap=self._cap, n=handle.n)
            handle.transfer.add(req.offset, req.data)
        elif req.type == fx.FSETSTAT and not handle.writable:
            classification = file_operation("fsetstat", "file_write", (handle.path,))
            n, verdict = self._decide(classification, req)
            if verdict.lets_through and self._sync is not None:
                self._held = _Held(packet, req, n, verdict)
                self._sync()
                return
            if not verdict.lets_through:
                if verdict.action == "review":
                    self._held = _Held(packet, req, n, verdict)
                    self._ask(n, verdict, f"sftp fsetstat {handle.path}", packet[4:])
                else:
                    self._reply(
                        req.id, fx.PERMISSION_DENIED, f"the appliance refuses: {verdict.message}"
                    )
                return
        self._forward(packet, req, _Pending(req.name, handle=req.handle, offset=req.offset))

    def _handle(self, req: fx.Request) -> _Handle | None:
        handle = self._handles.get(req.handle or b"")
        if handle is None:
            self._reply(req.id, fx.FAILURE, "the appliance knows no such handle")
        return handle

    def _forward(self, packet: bytes, req: fx.Request, pending: _Pending) -> None:
        self._pending[req.id] = pending
        self._to_up.append(packet)

    def _reply(self, request_id: int, code: int, message: str) -> None:
        self._to_job.append(fx.status(request_id, code, message))

    def _absolute(self, path: str) -> str:
        if path.startswith("~"):
            return path  # home-directory: a user name, not a path
        if self.home is not None and not path.startswith("/"):
            path = posixpath.join(self.home, path)
        if not path.startswith("/"):
            return posixpath.normpath(path) if path else "."
        # normpath keeps a leading "//"; the target's kernel does not.
        return "/" + posixpath.normpath(path).lstrip("/")

    # -- approvals --------------------------------------------------------------------------------

    def answered(self, approved: bool, message: str) -> None:
        """The held request's approval was answered: forward it or refuse it, then go on
        with the requests that waited behind it."""
        held = self._held
        if held is None:
            return
        self._held = None
        req = held.request
        if approved:
            if req.type == fx.FSETSTAT:
                self._forward(held.packet, req, _Pending(req.name, handle=req.handle))
            else:
                paths = tuple(self._absolute(p) for p in req.paths)
                self._forward_path(held.packet, req, held.n, paths)
        else:
            self._reply(req.id, fx.PERMISSION_DENIED, f"the appliance refuses: {message}")
        self._replay(held.queue)

    def _replay(self, packets: list[bytes]) -> None:
        for i, packet in enumerate(packets):
            if self._held is not None or self.state in ("version", "home"):
                rest = packets[i:]
                if self._held is not None:
                    self._held.queue[:0] = rest
                else:
                    self._waiting[:0] = rest
                return
            self._request(packet)

    # -- the server's replies ------------------------------------------------------------------

    def from_upstream(self, data: bytes) -> None:
        """Raises SftpProtocolError for a malformed or oversized packet."""
        for packet in self._from_up.feed(data):
            reply = fx.parse_reply(packet)
            if reply.type == fx.VERSION:
                if self.state != "version":
                    raise fx.SftpProtocolError("the server sent VERSION out of turn")
                self._to_job.append(packet)
                self.state = "home"
                self._to_up.append(fx.realpath(HOME_ID, "."))
                continue
            if reply.id == HOME_ID and self.state == "home":
                if reply.type == fx.NAME and reply.names and reply.names[0].startswith("/"):
                    self.home = reply.names[0]
                self.state = "open"
                waiting, self._waiting = self._waiting, []
                self._replay(waiting)
                continue
            pending = self._pending.pop(reply.id, None)
            if pending is not None:
                self._replied(pending, reply)
            self._to_job.append(packet)

    def _replied(self, pending: _Pending, reply: fx.Reply) -> None:
        name = pending.name
        if reply.type == fx.HANDLE and name in ("open", "opendir") and pending.n is not None:
            if len(self._handles) >= MAX_HANDLES:
                raise fx.SftpProtocolError(f"more than {MAX_HANDLES} SFTP handles open")
            assert reply.handle is not None
            flags = pending.pflags
            self._handles[reply.handle] = _Handle(
                pending.path,
                pending.n,
                directory=name == "opendir",
                readable=name == "open" and bool(flags & fx.FXF_READ),
                writable=name == "open" and bool(flags & _WRITE_FLAGS),
            )
            return
        if name == "read" and reply.type == fx.DATA and pending.handle is not None:
            handle = self._handles.get(pending.handle)
            if handle is not None:
                if handle.transfer is None:
                    handle.transfer = Transfer(
                        "sftp", "download", handle.path, cap=self._cap, n=handle.n
                    )
                handle.transfer.add(pending.offset, reply.data)
            return
        if name == "close" and pending.handle is not None:
            handle = self._handles.pop(pending.handle, None)
            if handle is not None and handle.transfer is not None:
                self._finished(handle.transfer, reply.status == fx.OK)
            return
        recorded = pending.record or reply.status != fx.OK
        if reply.type == fx.STATUS and pending.n is not None and recorded:
            self._outcome(pending.n, reply.status or 0, reply.message)

    def close(self) -> None:
        """The channel ended: transfers still open are recorded as incomplete."""
        for handle in self._handles.values():
            if handle.transfer is not None:
                self._finished(handle.transfer, False)
        self._handles.clear()
