"""The local approvals socket: where ``appliance approvals`` lists requests and sends decisions.

A Unix stream socket (default ``/run/appliance/approvals.sock``) in a directory of mode 0700,
the socket itself mode 0600; both belong to the appliance's user (root in production), so
only root can connect. As a second lock, every connection's peer credentials (SO_PEERCRED,
taken by the kernel at ``connect``) are checked and only the allowed uids (``{0}``) are
served; tests inject their own uid. Anyone who gets in still cannot approve anything without
an approver's private key: the socket only carries signed decisions to the broker.

Protocol: one JSON object per line each way (UTF-8, at most 64 KiB a line)::

    {"op": "list"}                 -> {"ok": true, "requests": [request, ...]}
    {"op": "get", "id": ID}        -> {"ok": true, "request": request}
    {"op": "decide", "note": NOTE} -> {"ok": true, "accepted": true, "id": ..., "decision": ...,
                                       "approver": ..., "detail": ...}
    any failure                    -> {"ok": false, "code": CODE, "error": MESSAGE}

where ``request`` is :meth:`~appliance.approvals.request.RequestStatus.to_dict`, and a
refused decision answers ``"rejected": true`` with ``code`` the
:class:`~appliance.approvals.broker.RejectReason` value. Other codes: ``bad-request``,
``not-found``, ``forbidden``, ``too-long``, ``internal``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Collection
from pathlib import Path

from appliance.approvals.broker import Broker
from appliance.approvals.errors import ApprovalsSocketError

__all__ = ["DEFAULT_SOCKET", "MAX_LINE", "ApprovalServer", "peer_uid"]

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/run/appliance/approvals.sock")
MAX_LINE = 64 * 1024
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_uid(conn: socket.socket) -> tuple[int, int]:
    """The (pid, uid) of the process at the other end of a connected Unix socket."""
    pid, uid, _gid = _UCRED.unpack(
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return pid, uid


def _error(code: str, message: str, **extra: object) -> dict[str, object]:
    return {"ok": False, "code": code, "error": message, **extra}


class ApprovalServer:
    """Serves the approvals protocol for one broker on one Unix socket path."""

    def __init__(
        self,
        broker: Broker,
        path: Path = DEFAULT_SOCKET,
        *,
        allowed_uids: Collection[int] = frozenset({0}),
    ) -> None:
        self.broker = broker
        self.path = Path(path)
        self.allowed_uids = frozenset(allowed_uids)
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None

    # -- the socket file ---------------------------------------------------------------------

    def bind(self) -> None:
        """Create the directory (0700) and the listening socket (0600).

        A stale socket left by a crash is replaced; a live one (something answers) or any
        other kind of file is not. Raises ApprovalsSocketError.
        """
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(directory)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                raise ApprovalsSocketError(
                    f"{directory} must be a directory owned by uid {os.geteuid()}"
                )
            if stat.S_IMODE(st.st_mode) != 0o700:
                os.chmod(directory, 0o700)
            self._remove_stale()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                # The directory is 0700, so nobody else can reach the socket before chmod.
                sock.bind(str(self.path))
                os.chmod(self.path, 0o600)
                sock.listen(16)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            raise ApprovalsSocketError(
                f"cannot create approvals socket {self.path}: {exc}"
            ) from None
        st = os.stat(self.path)
        self._sock, self._inode = sock, (st.st_dev, st.st_ino)
        log.info("approvals socket listening on %s", self.path)

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ApprovalsSocketError(f"{self.path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(self.path)  # nobody listens: left over from a crash
            return
        finally:
            probe.close()
        raise ApprovalsSocketError(f"{self.path} is in use by another process")

    def close(self) -> None:
        """Stop listening and remove the socket file if it is still ours. Idempotent."""
        if self._sock is None:
            return
        self._sock.close()
        self._sock = None
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)

    # -- serving -----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Accept and serve connections until cancelled; binds first if needed.

        Each connection runs in this coroutine's task group; on exit (cancellation) they are
        all cancelled and the socket file removed.
        """
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    conn, _ = await loop.sock_accept(self._sock)
                    tg.create_task(self._connection(conn))
        finally:
            self.close()

    async def _connection(self, conn: socket.socket) -> None:
        try:
            pid, uid = peer_uid(conn)
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=MAX_LINE)
        except OSError:
            conn.close()
            return
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # asyncio.LimitOverrunError: no newline within the limit
                    await self._send(writer, _error("too-long", f"line over {MAX_LINE} bytes"))
                    return
                if not line:
                    return
                if uid not in self.allowed_uids:
                    # Answer the request (closing on unread data would reset the connection
                    # before the peer reads why), then hang up.
                    log.warning("approvals socket: refused pid %d uid %d (not allowed)", pid, uid)
                    await self._send(
                        writer, _error("forbidden", f"uid {uid} may not use approvals")
                    )
                    return
                await self._send(writer, self._dispatch(line, pid, uid))
        except ConnectionError:
            pass
        except Exception:
            # A bug in serving one connection must not close the socket for everyone.
            log.exception("approvals socket: error serving pid %d", pid)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, message: dict[str, object]) -> None:
        writer.write(json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n")
        await writer.drain()

    def _dispatch(self, line: bytes, pid: int, uid: int) -> dict[str, object]:
        try:
            message = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return _error("bad-request", "each request is one JSON object on one line")
        if not isinstance(message, dict):
            return _error("bad-request", "each request is one JSON object on one line")
        op = message.get("op")
        if op == "list":
            return {"ok": True, "requests": [s.to_dict() for s in self.broker.pending()]}
        if op == "get":
            request_id = message.get("id")
            if not isinstance(request_id, str):
                return _error("bad-request", "get needs a string 'id'")
            status = self.broker.status(request_id)
            if status is None:
                return _error("not-found", f"no approval request {request_id[:70]!r}")
            return {"ok": True, "request": status.to_dict()}
        if op == "decide":
            note = message.get("note")
            if not isinstance(note, str):
                return _error("bad-request", "decide needs a string 'note'")
            log.info("approvals socket: decision from pid %d uid %d", pid, uid)
            try:
                result = self.broker.submit(note)
            except Exception as exc:
                # The ledger could not record it: the broker changed nothing (it records
                # before it releases), so the approver may simply try again.
                log.exception("approvals socket: cannot act on a decision")
                return _error("internal", f"the appliance could not act on the decision: {exc}")
            if not result.accepted:
                assert result.reason is not None
                return _error(result.reason.value, result.detail, rejected=True)
            return {
                "ok": True,
                "accepted": True,
                "id": result.request_id,
                "decision": result.decision,
                "approver": result.approver,
                "detail": result.detail,
            }
        return _error("bad-request", f"unknown op {str(op)[:40]!r}; expected list, get, decide")
