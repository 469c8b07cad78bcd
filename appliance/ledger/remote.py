"""The ledger writer in a process of its own, behind the :class:`LedgerWriter` interface.

Why: the proxy's event loop and a writer thread share one GIL. Under load the writer's
work (decoding and masking result rows, hashing, framing, the Merkle tree) is a third of
the process's time, and every hand-over of the GIL delays the loop. Here the loop thread
only builds each entry's canonical bytes, as before, and appends them to a buffer that is
sent to the writer process every few milliseconds (one ``send`` for many entries).

Who does what:

- :class:`RemoteLedger` (the proxy's side) assigns ``seq`` and ``ts`` in call order,
  encodes the entry (so a :class:`CanonicalError` is still raised to the caller), and
  sends it; blobs are opened with a :class:`~appliance.ledger.writer.TransformFactory`
  (pickled to the child once) and their chunks sent raw: the transform runs in the child.
- the child (``python -P -c 'from appliance.ledger.remote import child_main; child_main()'``)
  owns the ledger directory through an ordinary :class:`LedgerWriter` and feeds it
  (:meth:`LedgerWriter.append_encoded`); it reports each signed size, flush completions,
  and a failure, after which it exits;
- a sync (:meth:`RemoteLedger.sync`, the write-ahead of a statement that may change a
  target) is sent at once, not after the batching delay; the child answers all the syncs
  it read in one gulp with one fsync (group commit across sessions).

Failing closed: if the child reports a failure or dies, every later ``append`` raises
:class:`LedgerUnavailable`. Backpressure: when the child falls behind, its writer's queue
and then the socket fill up, and ``send`` blocks the caller, as a full queue does in-thread.

Wire format, both ways: 4-byte big-endian payload length, 1 kind byte, payload.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import os
import pickle
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from appliance.ledger.api import PendingBlob
from appliance.ledger.entries import PrefixCache, encode_trusted, format_ts_us
from appliance.ledger.errors import CanonicalError, LedgerError, LedgerUnavailable
from appliance.ledger.recovery import LastEntry
from appliance.ledger.writer import INLINE_LIMIT, BlobSink, LedgerWriter, TransformFactory
from appliance.signing.keys import SigningKey

_HEAD = struct.Struct("!IB")
_U64 = struct.Struct("!Q")
_U32 = struct.Struct("!I")
_HOLE = struct.Struct("!QII")  # blob id, where its reference goes in the entry: start, end
# proxy -> writer
_ENTRY, _ENTRY_BLOBS, _FACTORY, _OPEN, _WRITE, _CLOSE, _ABORT, _PUT, _FLUSH, _STOP, _SYNC = range(
    11
)
# writer -> proxy
_READY, _SIGNED, _FLUSHED, _FAILED, _SYNCED = range(5)
_SETUP = 100
# From the event loop, the buffer is sent _SEND_DELAY seconds after its first entry (one
# send for many entries: durability comes with the next checkpoint anyway), or at once
# beyond _SEND_AT bytes.
_SEND_DELAY = 0.005
_SEND_AT = 256 * 1024
_SOCKBUF = 4 * 1024 * 1024
_MAX_MESSAGE = 80 * 1024 * 1024
_RECV = 1 << 20
# The writer process's nap after a read that did not fill its buffer.
_NAP = 0.002


def _frame(kind: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack(len(payload), kind) + payload


class _Reader:
    """Whole messages from a stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.ready: collections.deque[tuple[int, bytes]] = collections.deque()

    def messages(self, data: bytes) -> list[tuple[int, bytes]]:
        """The messages completed by ``data`` (the rest waits in the buffer)."""
        self.buf += data
        out = []
        pos, n = 0, len(self.buf)
        while n - pos >= _HEAD.size:
            length, kind = _HEAD.unpack_from(self.buf, pos)
            if length > _MAX_MESSAGE:
                raise LedgerError(f"ledger channel: message of {length} bytes")
            if n - pos - _HEAD.size < length:
                break
            start = pos + _HEAD.size
            out.append((kind, bytes(self.buf[start : start + length])))
            pos = start + length
        del self.buf[:pos]
        return out

    def next(self, timeout: float | None = None) -> tuple[int, bytes] | None:
        """The next message, waiting for it; None at the end of the stream. Raises
        TimeoutError after ``timeout`` seconds without one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ready:
            if deadline is not None:
                ready, _, _ = select.select(
                    [self.sock], [], [], max(0, deadline - time.monotonic())
                )
                if not ready:
                    raise TimeoutError
            data = self.sock.recv(1 << 20)
            if not data:
                return None
            self.ready.extend(self.messages(data))
        return self.ready.popleft()


class RemoteBlob:
    """A blob written by the writer process (see :class:`~appliance.ledger.BlobSink`)."""

    def __init__(self, ledger: RemoteLedger, blob_id: int) -> None:
        self._ledger = ledger
        self.id = blob_id
        self._state = "open"

    @property
    def closed(self) -> bool:
        return self._state != "open"

    def write(self, chunk: bytes) -> None:
        if self._state != "open":
            raise LedgerError(f"write to a {self._state} blob sink")
        self._ledger._send(_WRITE, _U64.pack(self.id) + bytes(chunk))

    def close(self) -> None:
        if self._state == "open":
            self._state = "closed"
            self._ledger._send(_CLOSE, _U64.pack(self.id))

    def abort(self) -> None:
        if self._state == "open":
            self._state = "aborted"
            self._ledger._send(_ABORT, _U64.pack(self.id))


class RemoteLedger:
    """A ledger directory written by a child process; create with :meth:`open`."""

    def __init__(
        self,
        sock: socket.socket,
        proc: subprocess.Popen[bytes],
        *,
        directory: Path,
        origin: str,
        ready: Mapping[str, Any],
        clock: Callable[[], float],
    ) -> None:
        self.directory = directory
        self.origin = origin
        self.recovery_summary = str(ready.get("recovery", ""))
        last = ready.get("last")
        self.last_at_open = (
            LastEntry(int(last["seq"]), last.get("type"), last.get("ts"))
            if isinstance(last, dict)
            else None
        )
        self._sock = sock
        self._proc = proc
        self._clock = clock
        self._lock = threading.Lock()  # order of seq == order on the wire
        self._next_seq = int(ready["next_seq"])
        self._last_ts_us = int(ready["last_ts_us"])
        self._out = bytearray()
        self._scheduled = False
        self._failed: BaseException | None = None
        self._closed = False
        self._stop_sent = False  # the child was told to stop: its exit is no failure
        self._blob_ids = itertools.count(1)
        self._factories: dict[int, tuple[int, object]] = {}
        self._prefixes = PrefixCache(origin)
        self._nonce = os.urandom(8).hex()
        self._flush_tokens = itertools.count(1)
        self._sync_tokens = itertools.count(1)
        self._sync_waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._cond = threading.Condition()
        self._signed_size = int(ready["signed"])
        self._flushed = 0
        self._synced = 0
        self._reader = _Reader(sock)
        self._worker = threading.Thread(target=self._listen, name="ledger-remote", daemon=True)

    # -- starting ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        origin: str,
        key: SigningKey,
        checkpoint_interval: float = 1.0,
        checkpoint_entries: int = 10000,
        clock: Callable[[], float] = time.time,
        inline_limit: int = INLINE_LIMIT,
        start_timeout: float = 60.0,
        lock_wait: float = 10.0,
    ) -> RemoteLedger:
        """Start the writer process on ``directory`` (it locks and recovers it, as
        :meth:`LedgerWriter.open` does) and return once it is ready. Raises LedgerError
        (TamperError included) with the child's message if it cannot open the ledger.
        ``lock_wait``: how long the child waits for the directory's lock (the writer process
        of a proxy that was just killed may still be signing its last checkpoint)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (parent, child):
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                s.setsockopt(socket.SOL_SOCKET, opt, _SOCKBUF)
        env = dict(os.environ, APPLIANCE_LEDGER_FD=str(child.fileno()))
        proc = subprocess.Popen(
            # -P: the working directory is not put on sys.path, so a directory that holds
            # another ``appliance`` package (another checkout) never shadows this one
            [
                sys.executable,
                "-P",
                "-c",
                "from appliance.ledger.remote import child_main; child_main()",
            ],
            pass_fds=(child.fileno(),),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        child.close()
        setup = {
            "directory": str(directory),
            "origin": origin,
            "skey": key.to_skey(),
            "checkpoint_interval": checkpoint_interval,
            "checkpoint_entries": checkpoint_entries,
            "inline_limit": inline_limit,
            "lock_wait": lock_wait,
        }
        try:
            parent.sendall(_frame(_SETUP, pickle.dumps(setup)))
            reader = _Reader(parent)
            try:
                got = reader.next(timeout=start_timeout)
            except TimeoutError:
                raise LedgerError(
                    f"the ledger writer process did not start within {start_timeout}s"
                ) from None
            if got is None:
                raise LedgerError(
                    f"the ledger writer process exited during startup ({proc.wait()})"
                )
            kind, payload = got
            if kind == _FAILED:
                error = pickle.loads(payload)
                raise error if isinstance(error, LedgerError) else LedgerError(str(error))
            if kind != _READY:
                raise LedgerError(f"unexpected message {kind} from the ledger writer process")
        except BaseException:
            parent.close()
            proc.kill()
            proc.wait()
            raise
        ledger = cls(
            parent,
            proc,
            directory=Path(directory),
            origin=origin,
            ready=orjson.loads(payload),
            clock=clock,
        )
        ledger._reader = reader  # it may hold bytes past the ready message
        ledger._worker.start()
        return ledger

    # -- the proxy's side ------------------------------------------------------------------------

    @property
    def signed_size(self) -> int:
        return self._signed_size

    @property
    def failed(self) -> BaseException | None:
        return self._failed

    def _check(self) -> None:
        if self._failed is not None:
            raise LedgerUnavailable(f"ledger writer has stopped: {self._failed}")
        if self._closed:
            raise LedgerUnavailable("ledger writer is closed")

    def _send(self, kind: int, payload: bytes) -> None:
        with self._lock:
            self._check()
            self._buffer(kind, payload)

    def _buffer(self, kind: int, payload: bytes) -> None:
        """Queue a message (holding ``_lock``); send now, or shortly from the running event
        loop, so that one ``send`` carries many entries."""
        self._out += _HEAD.pack(len(payload), kind)
        self._out += payload
        if len(self._out) >= _SEND_AT:
            self._send_out()
            return
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._send_out()
            return
        self._scheduled = True
        loop.call_later(_SEND_DELAY, self._send_scheduled)

    def _send_scheduled(self) -> None:
        with self._lock:
            self._scheduled = False
            if self._failed is None and self._out:
                # A failure is kept in _failed: the next append raises it to its caller.
                with contextlib.suppress(LedgerUnavailable):
                    self._send_out()

    def _send_out(self) -> None:
        data, self._out = self._out, bytearray()
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self._failed = self._failed or LedgerUnavailable(
                f"the ledger writer process is gone ({exc})"
            )
            raise LedgerUnavailable(f"ledger writer has stopped: {self._failed}") from None

    def append(
        self,
        type: str,
        *,
        session: str | None = None,
        identity: Mapping[str, Any] | None = None,
        account: str | None = None,
        target: str | None = None,
        data: Mapping[str, Any],
        blobs: Mapping[str, Any] | None = None,
        trusted: bool = False,
    ) -> None:
        """As :meth:`LedgerWriter.append`; the entry is written by the writer process."""
        if blobs:
            for sink in blobs.values():
                if not isinstance(sink, PendingBlob) and (
                    not isinstance(sink, RemoteBlob) or sink._ledger is not self
                ):
                    raise LedgerError("blob sink belongs to another writer")
            data = dict(data)
            data.update((k, self._marker(k)) for k in blobs)
        with self._lock:
            self._check()
            ts_us = max(round(self._clock() * 1_000_000), self._last_ts_us)
            seq = self._next_seq
            prefix = self._prefixes.get(session, identity, account, target)
            raw = prefix.encode(seq, format_ts_us(ts_us), type, data, trusted=trusted)
            head = _U64.pack(seq) + _U64.pack(ts_us)
            if blobs:
                refs = []
                for k, sink in blobs.items():
                    if isinstance(sink, PendingBlob):
                        # open, write and close in one go: no sink object for a small result
                        blob_id = next(self._blob_ids)
                        self._buffer(
                            _OPEN, _U64.pack(blob_id) + _U32.pack(self._factory_id(sink.transform))
                        )
                        self._buffer(_WRITE, _U64.pack(blob_id) + sink.data)
                    else:
                        blob_id = sink.id
                        if not sink.closed:
                            sink._state = "closed"
                    # Where the writer puts the blob's reference (see LedgerWriter._splice).
                    marker = encode_trusted(self._marker(k))
                    start = raw.find(marker)
                    refs.append(_HOLE.pack(blob_id, start, start + len(marker)))
                body = struct.pack("!H", len(refs)) + b"".join(refs) + raw
                self._buffer(_ENTRY_BLOBS, head + body)
            else:
                self._buffer(_ENTRY, head + raw)
            self._next_seq = seq + 1
            self._last_ts_us = ts_us

    def _marker(self, name: str) -> str:
        """What stands for blob ``name``'s reference in an entry until the writer process
        puts it there (as :meth:`LedgerWriter._marker`)."""
        return f"\x00blob {self._nonce} {name}"

    def open_blob(
        self, transform: Callable[[bytes], bytes] | TransformFactory | None = None
    ) -> RemoteBlob:
        """A blob written by the child; ``transform`` must be a picklable
        :class:`TransformFactory` (a plain function cannot cross into the child)."""
        if transform is not None and not hasattr(transform, "new"):
            raise LedgerError("a remote ledger takes transform factories, not functions")
        with self._lock:
            self._check()
            factory_id = self._factory_id(transform)
            sink = RemoteBlob(self, next(self._blob_ids))
            self._buffer(_OPEN, _U64.pack(sink.id) + _U32.pack(factory_id))
            return sink

    def _factory_id(self, transform: object) -> int:
        """The number naming ``transform`` in the child (sent there the first time; holding
        ``_lock``); 0 for none."""
        if transform is None:
            return 0
        if not hasattr(transform, "new"):
            raise LedgerError("a remote ledger takes transform factories, not functions")
        known = self._factories.get(id(transform))
        if known is not None:
            return known[0]
        factory_id = len(self._factories) + 1
        try:
            blob = pickle.dumps(transform)
        except Exception as exc:
            raise LedgerError(f"transform factory cannot be sent: {exc}") from None
        # Keep the factory alive: its id() names it.
        self._factories[id(transform)] = (factory_id, transform)
        self._buffer(_FACTORY, _U32.pack(factory_id) + blob)
        return factory_id

    def put_blob(self, data: bytes) -> str:
        data = bytes(data)
        self._send(_PUT, data)
        return hashlib.sha256(data).hexdigest()

    async def sync(self) -> None:
        """Return once everything appended so far is written and fsynced by the writer
        process (not necessarily signed yet). Raises LedgerUnavailable if it cannot be."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._check()
            token = next(self._sync_tokens)
            with self._cond:
                self._sync_waiters.append((token, loop, future))
                if self._failed is not None:  # failed meanwhile: the listener is done
                    self._resolve_syncs(final=True)
            self._buffer(_SYNC, _U64.pack(token))
            self._send_out()
        await future

    def _resolve_syncs(self, *, final: bool = False) -> None:
        """Settle the sync waiters the writer has answered, or all of them once it failed or
        its channel ended (``final``); holding ``_cond``, from the listener thread."""
        keep = []
        for token, loop, future in self._sync_waiters:
            if self._failed is not None or (final and token > self._synced):
                why = self._failed or "the ledger writer is closed"
                error = LedgerUnavailable(f"ledger writer has stopped: {why}")
                loop.call_soon_threadsafe(_settle, future, error)
            elif token <= self._synced:
                loop.call_soon_threadsafe(_settle, future, None)
            else:
                keep.append((token, loop, future))
        self._sync_waiters = keep

    def flush(self, timeout: float | None = None) -> None:
        """Return once everything appended so far is fsynced and under a signed checkpoint."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._check()
            token = next(self._flush_tokens)
            self._buffer(_FLUSH, _U64.pack(token))
            self._send_out()
        with self._cond:
            while self._flushed < token:
                if self._failed is not None:
                    raise LedgerUnavailable(f"ledger writer has stopped: {self._failed}")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise LedgerError(f"ledger flush timed out after {timeout} s")
                self._cond.wait(remaining)

    def close(self) -> None:
        """Flush, let the child sign a final checkpoint and exit; raise LedgerUnavailable if
        the writer had failed."""
        if self._closed:
            return
        try:
            with self._lock:
                if self._failed is None:
                    self._stop_sent = True
                    self._buffer(_STOP, b"")
                    if self._out:  # without an event loop, _buffer has sent it already
                        self._send_out()
                self._closed = True
        except LedgerUnavailable:
            pass
        finally:
            self._closed = True
            try:
                code = self._proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                code = self._proc.wait()
            self._worker.join(timeout=10)
            self._sock.close()
        if self._failed is not None:
            raise LedgerUnavailable(f"ledger writer had stopped: {self._failed}")
        if code != 0:
            raise LedgerUnavailable(f"the ledger writer process exited with {code}")

    def __enter__(self) -> RemoteLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _listen(self) -> None:
        """The writer's messages: signed sizes, flush completions, a failure."""
        try:
            while True:
                got = self._reader.next()
                if got is None:
                    break
                kind, payload = got
                with self._cond:
                    if kind == _SIGNED:
                        self._signed_size = max(self._signed_size, _U64.unpack(payload)[0])
                    elif kind == _FLUSHED:
                        self._flushed = max(self._flushed, _U64.unpack(payload)[0])
                    elif kind == _SYNCED:
                        self._synced = max(self._synced, _U64.unpack(payload)[0])
                    elif kind == _FAILED:
                        error = pickle.loads(payload)
                        self._failed = (
                            error
                            if isinstance(error, BaseException)
                            else LedgerUnavailable(str(error))
                        )
                    self._resolve_syncs()
                    self._cond.notify_all()
        except Exception as exc:
            with self._cond:
                self._failed = self._failed or LedgerUnavailable(f"ledger channel: {exc}")
                self._resolve_syncs()
                self._cond.notify_all()
            return
        with self._cond:
            if not self._closed and not self._stop_sent and self._failed is None:
                self._failed = LedgerUnavailable("the ledger writer process exited")
            self._resolve_syncs(final=True)
            self._cond.notify_all()


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    """Resolve a sync waiter on its own loop (it may have been cancelled meanwhile)."""
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


# -- the writer process --------------------------------------------------------------------------


class _Child:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = _Reader(sock)
        self.send_lock = threading.Lock()
        self.writer: LedgerWriter | None = None
        self.factories: dict[int, TransformFactory] = {}
        self.blobs: dict[int, BlobSink] = {}
        self.sync_token = 0  # the latest sync asked for
        self.synced = 0  # the latest answered

    def send(self, kind: int, payload: bytes) -> None:
        with self.send_lock:
            self.sock.sendall(_frame(kind, payload))

    def fail(self, exc: BaseException) -> None:
        try:
            payload = pickle.dumps(exc)
        except Exception:
            payload = pickle.dumps(LedgerUnavailable(f"{type(exc).__name__}: {exc}"))
        try:
            self.send(_FAILED, payload)
        except OSError:
            pass

    def run(self) -> int:
        got = self.reader.next()
        if got is None:
            return 1
        setup = pickle.loads(got[1])
        try:
            self.writer = writer = LedgerWriter.open(
                Path(setup["directory"]),
                origin=setup["origin"],
                key=SigningKey.from_skey(setup["skey"]),
                checkpoint_interval=setup["checkpoint_interval"],
                checkpoint_entries=setup["checkpoint_entries"],
                inline_limit=setup["inline_limit"],
                on_signed=lambda size: self.send(_SIGNED, _U64.pack(size)),
                lock_wait=setup["lock_wait"],
                threaded=False,
            )
        except BaseException as exc:
            self.fail(exc)
            return 1
        ready = {
            "next_seq": writer.next_seq,
            "last_ts_us": writer.last_ts_us,
            "signed": writer.signed_size,
            "recovery": "; ".join(writer.recovery.summary()),
            "last": writer.last_at_open.to_dict() if writer.last_at_open else None,
        }
        self.send(_READY, orjson.dumps(ready))
        try:
            stopped = self.serve(writer)
        except BaseException as exc:
            self.fail(exc)
            try:
                writer.close()
            except Exception:
                pass
            return 1
        # Told to stop, or the proxy went away (killed): either way, sign what arrived.
        del stopped
        try:
            writer.close()
        except BaseException as exc:
            self.fail(exc)
            return 1
        return 0

    def serve(self, writer: LedgerWriter) -> bool:
        """Feed the writer until told to stop (True) or the proxy goes away (False).

        Reading in gulps: after a read that did not fill the buffer the child naps briefly,
        so that the next ``recv`` takes many entries (their durability point is the next
        checkpoint anyway)."""
        timeout: float | None = None
        while True:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            full = False
            if ready:
                data = self.sock.recv(_RECV)
                if not data:
                    return False
                full = len(data) == _RECV
                for kind, payload in self.reader.messages(data):
                    if kind == _STOP:
                        writer.pump()
                        return True
                    self.handle(writer, kind, payload)
            timeout = writer.pump()
            if self.sync_token > self.synced:
                # Every sync read in this gulp: one fsync, one answer (group commit).
                writer.durable()
                self.synced = self.sync_token
                self.send(_SYNCED, _U64.pack(self.synced))
            elif ready and not full:
                time.sleep(_NAP)

    def handle(self, writer: LedgerWriter, kind: int, payload: bytes) -> None:
        if kind == _ENTRY:
            seq, ts_us = _U64.unpack_from(payload, 0)[0], _U64.unpack_from(payload, 8)[0]
            writer.append_encoded(seq, ts_us, payload[16:])
        elif kind == _ENTRY_BLOBS:
            seq, ts_us = _U64.unpack_from(payload, 0)[0], _U64.unpack_from(payload, 8)[0]
            (count,) = struct.unpack_from("!H", payload, 16)
            pos = 18 + count * _HOLE.size
            holes = []
            for i in range(count):
                blob_id, start, end = _HOLE.unpack_from(payload, 18 + i * _HOLE.size)
                holes.append((start, end, self.blobs.pop(blob_id)))
            writer.append_encoded(seq, ts_us, payload[pos:], holes)
        elif kind == _FACTORY:
            (factory_id,) = _U32.unpack_from(payload, 0)
            self.factories[factory_id] = pickle.loads(payload[4:])
        elif kind == _OPEN:
            (blob_id,) = _U64.unpack_from(payload, 0)
            (factory_id,) = _U32.unpack_from(payload, 8)
            factory = self.factories[factory_id] if factory_id else None
            self.blobs[blob_id] = writer.open_blob(factory)
        elif kind == _WRITE:
            (blob_id,) = _U64.unpack_from(payload, 0)
            self.blobs[blob_id].write(payload[8:])
        elif kind == _CLOSE:
            (blob_id,) = _U64.unpack_from(payload, 0)
            self.blobs[blob_id].close()
        elif kind == _ABORT:
            (blob_id,) = _U64.unpack_from(payload, 0)
            self.blobs.pop(blob_id).abort()
        elif kind == _PUT:
            writer.put_blob(payload)
        elif kind == _FLUSH:
            writer.flush()
            self.send(_FLUSHED, payload)
        elif kind == _SYNC:
            self.sync_token = max(self.sync_token, _U64.unpack(payload)[0])
        else:
            raise LedgerError(f"ledger channel: unknown message kind {kind}")


def child_main() -> None:
    """Entry point of the writer process (started by :meth:`RemoteLedger.open`)."""
    import signal

    # The daemon's SIGTERM/SIGINT are for the daemon, which then closes the ledger: the
    # writer must outlive them to write the final entries and checkpoint.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd = int(os.environ.pop("APPLIANCE_LEDGER_FD"))
    sock = socket.socket(fileno=fd)
    code = _Child(sock).run()
    sys.stdout.flush()
    os._exit(code)


__all__ = ["CanonicalError", "RemoteBlob", "RemoteLedger", "child_main"]
