"""The ledger writer in a process of its own, behind the :class:`LedgerWriter` interface.

Why: the proxy's event loop and a writer thread share one GIL. Under load the writer's
work (decoding and masking result rows, hashing, framing, the Merkle tree) is a third of
the process's time, and every hand-over of the GIL delays the loop. Here the loop thread
only builds each entry's canonical bytes, as before, and appends them to a buffer that is
sent to the writer process every few milliseconds (one ``send`` for many entries).

Who does what:

- :class:`RemoteLedger` (the proxy's side) is a
  :class:`~appliance.ledger.sender.LedgerSender`, which numbers, stamps, encodes and frames
  each entry (a :class:`CanonicalError` still reaches the caller) and its blobs' chunks
  (the transform runs in the child); it adds starting the child, syncs, flushes, closing
  and the thread that reads the child's answers;
- the child (``python -P -c 'from appliance.ledger.remote import child_main; child_main()'``)
  owns the ledger directory through an ordinary :class:`LedgerWriter` and feeds it
  (:meth:`LedgerWriter.append_encoded`); it reports each signed size, flush completions,
  and a failure, after which it exits;
- a sync (:meth:`RemoteLedger.sync`, the write-ahead of a statement that may change a
  target) is sent at once, not after the batching delay; the child answers all the syncs
  it read in one gulp with one fsync (group commit across sessions), before it signs a
  checkpoint that is due; the answer is read by the event loop that awaits the sync (its
  reader callback), not handed over from the listener thread, which reads the answers
  whenever no loop does (a flush, a close, a caller without a loop).

Failing closed: if the child reports a failure or dies, every later ``append`` raises
:class:`LedgerUnavailable`. Backpressure: when the child falls behind, its writer's queue
and then the socket fill up; from the event loop the sender then keeps what the socket
does not take and the shell stops reading the sessions that queue results in bulk (see
:mod:`appliance.ledger.sender`); a flush, a close, or a caller without a loop blocks.

The channel's wire format and message kinds are in :mod:`appliance.ledger.sender`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import pickle
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from appliance import collector
from appliance.ledger.entries import format_ts_us, number_entry
from appliance.ledger.errors import CanonicalError, LedgerError, LedgerUnavailable
from appliance.ledger.recovery import LastEntry
from appliance.ledger.sender import (
    ABORT,
    CLOSE,
    ENTRY,
    ENTRY_BLOB,
    ENTRY_BLOB_HEAD,
    ENTRY_BLOBS,
    ENTRY_HEAD,
    FACTORY,
    FLUSH,
    HEAD,
    HOLE,
    HOLES_COUNT,
    OPEN,
    OPEN_HEAD,
    PUT,
    STOP,
    SYNC,
    U32,
    U64,
    UNNUMBERED,
    UNNUMBERED_BLOB,
    UNNUMBERED_BLOB_HEAD,
    UNNUMBERED_BLOBS,
    WRITE,
    LedgerSender,
    RemoteBlob,
    frame,
    running_loop,
    split,
    stop_watching,
)
from appliance.ledger.writer import INLINE_LIMIT, BlobSink, LedgerWriter, TransformFactory
from appliance.signing.keys import SigningKey

# writer -> proxy
_READY, _SIGNED, _FLUSHED, _FAILED, _SYNCED = range(5)
_SETUP = 100
_SOCKBUF = 4 * 1024 * 1024
_MAX_MESSAGE = 80 * 1024 * 1024
_RECV = 1 << 20
# How often the listener thread, while a loop reads the answers, looks whether that loop
# still runs (a loop closed without a flush or close leaves the reading to the thread).
_PARK = 0.5
# glibc's malloc in the writer process (unless the environment sets them): a blob transform
# makes and frees megabytes per 256 KiB chunk (lines, their text, their JSON); with the
# default dynamic thresholds the heap is trimmed and refaulted page by page each chunk (a
# COPY of 16 MB: 120,000 page faults, a third of the writer's CPU time). Up to 32 MiB of
# free heap is kept, and blocks under 4 MiB come from it.
_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(32 << 20), "MALLOC_MMAP_THRESHOLD_": str(4 << 20)}


class _Reader:
    """Whole messages from a stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()  # the start of a message not complete yet
        self.ready: collections.deque[tuple[int, bytes]] = collections.deque()
        # recv into one buffer kept for the purpose: ``recv(1 MiB)`` would allocate (mmap)
        # and shrink a fresh megabyte per call, ~15 µs each, paid per sync and per gulp.
        self._space = bytearray(_RECV)
        self._view = memoryview(self._space)

    def recv(self) -> bytes:
        """What the socket has (up to ``_RECV`` bytes; empty at the end of the stream)."""
        n = self.sock.recv_into(self._space)
        return self._view[:n].tobytes()

    def messages(self, data: bytes) -> list[tuple[int, bytes]]:
        """The messages completed by ``data`` (the rest waits in the buffer)."""
        if self.buf:
            self.buf += data
            if len(self.buf) < HEAD.size:
                return []
            (length,) = U32.unpack_from(self.buf, 0)
            if length <= _MAX_MESSAGE and len(self.buf) - HEAD.size < length:
                return []  # the first message is still incomplete: nothing to copy yet
            data = bytes(self.buf)
            self.buf.clear()
        out: list[tuple[int, bytes]] = []
        pos = split(data, _MAX_MESSAGE, out)
        if pos < len(data):
            self.buf += memoryview(data)[pos:]
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
            try:
                data = self.recv()
            except TimeoutError:  # the proxy's end is in timeout mode (LedgerSender)
                continue
            if not data:
                return None
            self.ready.extend(self.messages(data))
        return self.ready.popleft()


class RemoteLedger(LedgerSender):
    """A ledger directory written by a child process; create with :meth:`open`."""

    def __init__(
        self,
        sock: socket.socket,
        proc: subprocess.Popen[bytes] | None,
        *,
        directory: Path,
        origin: str,
        ready: Mapping[str, Any],
        clock: Callable[[], float],
        numbered_by_writer: bool = False,
        reader: _Reader | None = None,
    ) -> None:
        """``reader``: the channel's reader, if one has read from it already (:meth:`open`
        reads the ready message, and may have read past it)."""
        self.directory = directory
        self.origin = origin
        self.recovery_summary = str(ready.get("recovery", ""))
        last = ready.get("last")
        self.last_at_open = (
            LastEntry(int(last["seq"]), last.get("type"), last.get("ts"))
            if isinstance(last, dict)
            else None
        )
        # proxy.workers > 1: several processes append; the writer gives each entry its seq
        # (and keeps ts from going back) in the order the entries reach it.
        super().__init__(
            sock,
            origin=origin,
            clock=clock,
            next_seq=int(ready["next_seq"]),
            last_ts_us=int(ready["last_ts_us"]),
            unnumbered=numbered_by_writer,
            nonce=os.urandom(8).hex(),
        )
        self._proc: subprocess.Popen[bytes] | None = proc
        self.worker_sockets: list[socket.socket] = []
        self._stop_sent = False  # the child was told to stop: its exit is no failure
        self._flush_tokens = itertools.count(1)
        self._sync_tokens = itertools.count(1)
        self._sync_waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        # The listener thread waits on this one (same lock) while a loop reads: the
        # notify_all of every answer must not wake it (a GIL hand-over per sync).
        self._park = threading.Condition(lock)
        self._signed_size = int(ready["signed"])
        self._flushed = 0
        self._synced = 0
        self._reader = reader if reader is not None else _Reader(sock)
        # The answers are read through a handle of their own, never blocking (whoever reads
        # waited for readiness), closed after the listener thread has ended (the sender's
        # handle is closed before).
        self._rd = sock.dup()
        self._rd.setblocking(False)
        self._reader.sock = self._rd
        # Who reads the writer's answers (see _read_on): the listener thread (None), or the
        # event loop named here. Reading (and its dispatch) holds _read_lock, then _cond;
        # this is changed holding both.
        self._reading: asyncio.AbstractEventLoop | None = None
        self._read_lock = threading.Lock()
        self._registered: asyncio.AbstractEventLoop | None = None  # has our reader callback
        self._ended = False  # the channel ended (or broke): nothing more to read
        self._kick_r, self._kick_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
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
        workers: int = 0,
    ) -> RemoteLedger:
        """Start the writer process on ``directory`` (it locks and recovers it, as
        :meth:`LedgerWriter.open` does) and return once it is ready. Raises LedgerError
        (TamperError included) with the child's message if it cannot open the ledger.
        ``lock_wait``: how long the child waits for the directory's lock (the writer process
        of a proxy that was just killed may still be signing its last checkpoint).

        ``workers``: that many more connections to the writer, for proxy worker processes
        (:attr:`worker_sockets`, each to be given to :meth:`attach`); then the writer numbers
        every entry, this connection's included, in the order they reach it."""
        parent, child = _pair()
        extra = [_pair() for _ in range(workers)]
        env = dict(
            _MALLOC,
            **os.environ,
            APPLIANCE_LEDGER_FD=str(child.fileno()),
            APPLIANCE_LEDGER_WORKER_FDS=",".join(str(c.fileno()) for _, c in extra),
        )
        proc = subprocess.Popen(
            # -P: the working directory is not put on sys.path, so a directory that holds
            # another ``appliance`` package (another checkout) never shadows this one
            [
                sys.executable,
                "-P",
                "-c",
                "from appliance.ledger.remote import child_main; child_main()",
            ],
            pass_fds=(child.fileno(), *(c.fileno() for _, c in extra)),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        child.close()
        for _, c in extra:
            c.close()
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
            parent.sendall(frame(_SETUP, pickle.dumps(setup)))
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
            for p, _ in extra:
                p.close()
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
            numbered_by_writer=workers > 0,
            reader=reader,
        )
        ledger.worker_sockets = [p for p, _ in extra]
        ledger._worker.start()
        return ledger

    @classmethod
    def attach(
        cls,
        sock: socket.socket,
        *,
        directory: Path,
        origin: str,
        clock: Callable[[], float] = time.time,
    ) -> RemoteLedger:
        """A proxy worker's connection to the writer process another process started (one of
        its :attr:`worker_sockets`): the writer numbers its entries. Closing it flushes and
        hangs up; the writer goes on for the other connections."""
        ready = {"next_seq": 0, "last_ts_us": 0, "signed": 0}
        ledger = cls(
            sock,
            None,
            directory=Path(directory),
            origin=origin,
            ready=ready,
            clock=clock,
            numbered_by_writer=True,
        )
        ledger._worker.start()
        return ledger

    # -- the proxy's side ------------------------------------------------------------------------

    @property
    def signed_size(self) -> int:
        return self._signed_size

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
            self._buffer(SYNC, U64.pack(token))
            self._send_out()
        if self._reading is not loop:
            self._read_on(loop)
        await future

    def hurry(self) -> None:
        """:meth:`LedgerSender.hurry`, unless a sync is on its way already: the writer is
        busy with it, and the next SYNC carries what is queued (under load a send per
        statement cost more than the writer's head start saved)."""
        if not self._sync_waiters:
            super().hurry()

    def _read_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """From now on read the writer's answers on ``loop`` (its reader callback), not in
        the listener thread, which waits meanwhile.

        Why (issue 19): a sync's answer read by the thread reaches the loop through
        ``call_soon_threadsafe`` (the thread wakes, takes the GIL, writes the loop's wake-up
        pipe, the loop wakes and takes the GIL back): two wake-ups and a GIL hand-over per
        write-ahead sync, and under load the thread waits for the GIL behind the loop (up to
        the switch interval). Read on the loop, the answer wakes the loop once and settles
        the future there. The thread reads again once the loop is closed or stopped (it
        looks every :data:`_PARK` s), and at :meth:`flush` and :meth:`close`, which may block
        the loop's own thread."""
        fd = self._rd.fileno()
        with self._read_lock, self._cond:
            if self._ended or self._closed or fd < 0:
                return  # nothing more to read: the waiters were (or are being) settled
            self._reading = loop
            if self._registered is not loop:
                loop.add_reader(fd, self._readable, loop)
                self._registered = loop
        with contextlib.suppress(OSError):
            os.write(self._kick_w, b"k")  # the thread leaves its select and waits

    def _read_back(self) -> None:
        """The listener thread reads the answers again (a caller is about to block for
        one, perhaps on the loop's own thread)."""
        with self._read_lock, self._cond:
            self._reading = None
            self._park.notify_all()

    def _readable(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop's reader callback: the writer's answers, read and settled here."""
        with self._read_lock:
            if self._reading is not loop or self._ended:
                _unwatch_reader(loop, self._rd.fileno())
                self._registered = None
                return
            try:
                if self._read_some():
                    return
                error: BaseException | None = None
            except Exception as exc:
                error = exc
            _unwatch_reader(loop, self._rd.fileno())
            self._registered = None
            self._channel_ended(error)

    def _read_some(self) -> bool:
        """Holding ``_read_lock``: read what the socket has (it was readable) and handle the
        messages; False at the end of the stream."""
        while True:
            try:
                data = self._reader.recv()
            except (BlockingIOError, InterruptedError):
                return True
            if not data:
                return False
            self._dispatch(self._reader.messages(data))
            if len(data) < _RECV:
                return True

    def _dispatch(self, messages: list[tuple[int, bytes]]) -> None:
        """The writer's messages: signed sizes, flush and sync completions, a failure."""
        with self._cond:
            for kind, payload in messages:
                if kind == _SIGNED:
                    self._signed_size = max(self._signed_size, U64.unpack(payload)[0])
                elif kind == _FLUSHED:
                    self._flushed = max(self._flushed, U64.unpack(payload)[0])
                elif kind == _SYNCED:
                    self._synced = max(self._synced, U64.unpack(payload)[0])
                elif kind == _FAILED:
                    error = pickle.loads(payload)
                    self._failed = (
                        error if isinstance(error, BaseException) else LedgerUnavailable(str(error))
                    )
            self._resolve_syncs()
            self._cond.notify_all()

    def _channel_ended(self, error: BaseException | None) -> None:
        """Holding ``_read_lock``: the channel ended (``error``: it broke). Unless this is
        the close, the writer is gone: fail closed."""
        with self._cond:
            self._ended = True
            if error is not None:
                self._failed = self._failed or LedgerUnavailable(f"ledger channel: {error}")
            elif not self._closed and not self._stop_sent and self._failed is None:
                self._failed = LedgerUnavailable("the ledger writer process exited")
            self._resolve_syncs(final=True)
            self._cond.notify_all()
            self._park.notify_all()

    def _resolve_syncs(self, *, final: bool = False) -> None:
        """Settle the sync waiters the writer has answered, or all of them once it failed or
        its channel ended (``final``); holding ``_cond``, from whoever reads the answers
        (the listener thread, or the loop of :meth:`_read_on`)."""
        keep = []
        for token, loop, future in self._sync_waiters:
            if self._failed is not None or (final and token > self._synced):
                why = self._failed or "the ledger writer is closed"
                _settle_on(loop, future, LedgerUnavailable(f"ledger writer has stopped: {why}"))
            elif token <= self._synced:
                _settle_on(loop, future, None)
            else:
                keep.append((token, loop, future))
        self._sync_waiters = keep

    def flush(self, timeout: float | None = None) -> None:
        """Return once everything appended so far is fsynced and under a signed checkpoint."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._read_back()
        with self._lock:
            self._check()
            token = next(self._flush_tokens)
            self._buffer(FLUSH, U64.pack(token))
            self._deliver()  # this thread waits for the writer anyway
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
        if self._proc is None:
            self._hang_up()
            return
        try:
            with self._lock:
                if self._failed is None:
                    self._stop_sent = True
                    self._buffer(STOP, b"")
                    self._deliver()  # everything queued, from a loop too
                self._closed = True
        except LedgerUnavailable:
            pass
        finally:
            self._closed = True
            self._read_back()
            try:
                code = self._proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                code = self._proc.wait()
            self._worker.join(timeout=10)
            self._stop_reading()
            self._release()
            self._sock.close()
        if self._failed is not None:
            raise LedgerUnavailable(f"ledger writer had stopped: {self._failed}")
        if code != 0:
            raise LedgerUnavailable(f"the ledger writer process exited with {code}")

    def _hang_up(self, timeout: float = 60.0) -> None:
        """A worker's close: everything it appended reaches the writer (a flush), then the
        connection ends; the writer process is not ours to stop. Raises LedgerUnavailable if
        the writer had failed."""
        try:
            if self._failed is None:
                self.flush(timeout)
        finally:
            self._closed = True
            self._read_back()
            self._release()
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._worker.join(timeout=10)
            self._stop_reading()
            self._sock.close()
        if self._failed is not None:
            raise LedgerUnavailable(f"ledger writer had stopped: {self._failed}")

    def __enter__(self) -> RemoteLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stop_reading(self) -> None:
        """Before the socket is closed: no loop watches it for reading any more (from
        another thread than the loop's, the loop is asked and waited for); the listener
        thread's wake-up pipe is closed."""
        with self._read_lock:
            loop = self._registered
            self._registered = None
            self._reading = None
        stop_watching(loop, self._rd.fileno(), _unwatch_reader)
        self._rd.close()
        for fd in (self._kick_r, self._kick_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._kick_r = self._kick_w = -1

    def _listen(self) -> None:
        """The listener thread: reads the writer's answers whenever no loop does (see
        :meth:`_read_on`), until the channel ends."""
        try:
            with self._read_lock:
                if self._reader.ready:  # read past the ready message at the start
                    self._dispatch(list(self._reader.ready))
                    self._reader.ready.clear()
            while True:
                with self._cond:
                    while not self._ended and self._reading is not None:
                        loop = self._reading
                        if loop.is_closed() or not loop.is_running():
                            break
                        self._park.wait(_PARK)
                    if self._ended:
                        return
                    owner = self._reading
                if owner is not None:  # its loop has stopped: read here again
                    with self._read_lock, self._cond:
                        if self._reading is owner:
                            self._reading = None
                    continue
                ready, _, _ = select.select([self._rd.fileno(), self._kick_r], [], [])
                if self._kick_r in ready:
                    with contextlib.suppress(OSError):
                        os.read(self._kick_r, 4096)
                with self._read_lock:
                    if self._reading is not None or self._ended:
                        continue
                    if not self._read_some():
                        self._channel_ended(None)
                        return
        except Exception as exc:
            with self._read_lock:
                self._channel_ended(exc)


def _pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair with large buffers (one side per process)."""
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s in pair:
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            s.setsockopt(socket.SOL_SOCKET, opt, _SOCKBUF)
    return pair


def _settle_on(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], error: BaseException | None
) -> None:
    """Settle a sync waiter: at once on its own loop's thread, else through the loop."""
    if running_loop() is loop:
        _settle(future, error)
    else:
        with contextlib.suppress(RuntimeError):  # its loop is closed: nobody awaits it
            loop.call_soon_threadsafe(_settle, future, error)


def _unwatch_reader(loop: Any, fd: int) -> None:
    """``loop.remove_reader(fd)`` (through Any: uvloop's returns None)."""
    with contextlib.suppress(Exception):
        loop.remove_reader(fd)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    """Resolve a sync waiter on its own loop (it may have been cancelled meanwhile)."""
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


# -- the writer process --------------------------------------------------------------------------


class _Conn:
    """One proxy process's connection to the writer: its own blob ids, transform factories,
    and sync tokens (connection 0 is the daemon's; the others are proxy workers')."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = _Reader(sock)
        self.send_lock = threading.Lock()
        self.factories: dict[int, TransformFactory] = {}
        self.blobs: dict[int, BlobSink] = {}
        self.sync_token = 0  # the latest sync asked for
        self.synced = 0  # the latest answered
        self.open = True

    def send(self, kind: int, payload: bytes) -> None:
        with self.send_lock:
            self.sock.sendall(frame(kind, payload))


class _Child:
    def __init__(self, sock: socket.socket, workers: list[socket.socket] | None = None) -> None:
        self.main = _Conn(sock)
        self.conns = [self.main, *(_Conn(w) for w in workers or ())]
        self.writer: LedgerWriter | None = None

    def send(self, kind: int, payload: bytes) -> None:
        self.main.send(kind, payload)

    def broadcast(self, kind: int, payload: bytes) -> None:
        """To every connection still open (a worker that has gone away is no error)."""
        for conn in self.conns:
            if conn is self.main:
                conn.send(kind, payload)
            elif conn.open:
                with contextlib.suppress(OSError):
                    conn.send(kind, payload)

    def fail(self, exc: BaseException) -> None:
        try:
            payload = pickle.dumps(exc)
        except Exception:
            payload = pickle.dumps(LedgerUnavailable(f"{type(exc).__name__}: {exc}"))
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(_FAILED, payload)

    def run(self) -> int:
        got = self.main.reader.next()
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
                on_signed=lambda size: self.broadcast(_SIGNED, U64.pack(size)),
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
            with collector.serving():
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
        """Feed the writer until told to stop (True) or the daemon's connection ends
        (False); a worker's connection that ends is dropped (its open blobs aborted).

        No nap after a short read (issue 19): the sender already batches (one ``send`` per
        few ms, per 256 KiB, or per sync), a child that falls behind reads full buffers,
        and a nap held a SYNC that arrived during it for up to its 2 ms (a 1-client
        transaction whose batch timer fired inside it waited for the rest of the nap)."""
        timeout: float | None = None
        while True:
            socks = [c.sock for c in self.conns if c.open]
            ready, _, _ = select.select(socks, [], [], timeout)
            for conn in self.conns:
                if not conn.open or conn.sock not in ready:
                    continue
                data = conn.reader.recv()
                if not data:
                    if conn is self.main:
                        return False
                    self.drop(conn)
                    continue
                if self.feed(writer, conn, data):
                    self.drain_workers(writer)
                    writer.pump()
                    return True
            if any(c.sync_token > c.synced for c in self.conns):
                # Every sync read in this gulp: one fsync, one answer each (group commit),
                # before a checkpoint that is due is signed (the pump below).
                writer.durable()
                for conn in self.conns:
                    if conn.sync_token > conn.synced:
                        conn.synced = conn.sync_token
                        with contextlib.suppress(OSError):
                            conn.send(_SYNCED, U64.pack(conn.synced))
            timeout = writer.pump()

    def feed(self, writer: LedgerWriter, conn: _Conn, data: bytes) -> bool:
        """Handle the messages ``data`` completes; True at the daemon's stop."""
        for kind, payload in conn.reader.messages(data):
            if kind == STOP and conn is self.main:
                return True
            self.handle(writer, conn, kind, payload)
        return False

    def drop(self, conn: _Conn) -> None:
        conn.open = False
        for sink in conn.blobs.values():
            sink.abort()
        conn.blobs.clear()
        conn.sock.close()

    def drain_workers(self, writer: LedgerWriter) -> None:
        """At the daemon's stop, what workers sent and is not read yet (each flushed before
        it exited, so this is a safeguard; nothing waits for a worker still running)."""
        for conn in self.conns:
            if conn is self.main or not conn.open:
                continue
            conn.sock.setblocking(False)
            while True:
                try:
                    data = conn.reader.recv()
                except (BlockingIOError, InterruptedError):
                    break
                if not data:
                    self.drop(conn)
                    break
                self.feed(writer, conn, data)

    def handle(self, writer: LedgerWriter, conn: _Conn, kind: int, payload: bytes) -> None:
        # (the kinds in order of frequency)
        if kind == ENTRY:
            seq, ts_us = ENTRY_HEAD.unpack_from(payload, 0)
            writer.append_encoded(seq, ts_us, payload[ENTRY_HEAD.size :])
        elif kind == ENTRY_BLOB:
            seq, ts_us, factory_id, start, end, size = ENTRY_BLOB_HEAD.unpack_from(payload, 0)
            at = ENTRY_BLOB_HEAD.size
            writer.append_encoded_blob(
                seq,
                ts_us,
                payload[at + size :],
                (start, end),
                conn.factories[factory_id] if factory_id else None,
                payload[at : at + size],
            )
        elif kind == ENTRY_BLOBS:
            seq, ts_us = ENTRY_HEAD.unpack_from(payload, 0)
            found, pos = self._holes(conn, payload, ENTRY_HEAD.size)
            writer.append_encoded(seq, ts_us, payload[pos:], found)
        elif kind == OPEN:
            (blob_id,) = U64.unpack_from(payload, 0)
            (factory_id,) = U32.unpack_from(payload, 8)
            factory = conn.factories[factory_id] if factory_id else None
            conn.blobs[blob_id] = writer.open_blob(factory)
        elif kind == WRITE:
            (blob_id,) = U64.unpack_from(payload, 0)
            conn.blobs[blob_id].write(payload[8:])
        elif kind == UNNUMBERED or kind == UNNUMBERED_BLOBS:
            ts_us, seq_at, ts_at = OPEN_HEAD.unpack_from(payload, 0)
            holes: list[tuple[int, int, BlobSink]] | None = None
            pos = OPEN_HEAD.size
            if kind == UNNUMBERED_BLOBS:
                holes, pos = self._holes(conn, payload, OPEN_HEAD.size)
            seq, ts_us, raw = _number(writer, payload[pos:], ts_us, seq_at, ts_at)
            writer.append_encoded(seq, ts_us, raw, holes)
        elif kind == UNNUMBERED_BLOB:
            ts_us, seq_at, ts_at, factory_id, start, end, size = UNNUMBERED_BLOB_HEAD.unpack_from(
                payload, 0
            )
            at = UNNUMBERED_BLOB_HEAD.size
            seq, ts_us, raw = _number(writer, payload[at + size :], ts_us, seq_at, ts_at)
            writer.append_encoded_blob(
                seq,
                ts_us,
                raw,
                (start, end),
                conn.factories[factory_id] if factory_id else None,
                payload[at : at + size],
            )
        elif kind == FACTORY:
            (factory_id,) = U32.unpack_from(payload, 0)
            conn.factories[factory_id] = pickle.loads(payload[4:])
        elif kind == CLOSE:
            (blob_id,) = U64.unpack_from(payload, 0)
            conn.blobs[blob_id].close()
        elif kind == ABORT:
            (blob_id,) = U64.unpack_from(payload, 0)
            conn.blobs.pop(blob_id).abort()
        elif kind == PUT:
            writer.put_blob(payload)
        elif kind == FLUSH:
            writer.flush()
            conn.send(_FLUSHED, payload)
        elif kind == SYNC:
            conn.sync_token = max(conn.sync_token, U64.unpack(payload)[0])
        else:
            raise LedgerError(f"ledger channel: unknown message kind {kind}")

    @staticmethod
    def _holes(conn: _Conn, payload: bytes, at: int) -> tuple[list[tuple[int, int, BlobSink]], int]:
        """The blob holes of an entry message from offset ``at``, and where its bytes start."""
        (count,) = HOLES_COUNT.unpack_from(payload, at)
        pos = at + 2 + count * HOLE.size
        blobs = conn.blobs
        holes = [
            (start, end, blobs.pop(blob_id))
            for blob_id, start, end in HOLE.iter_unpack(payload[at + 2 : pos])
        ]
        return holes, pos


def _number(
    writer: LedgerWriter, raw: bytes, ts_us: int, seq_at: int, ts_at: int
) -> tuple[int, int, bytes]:
    """An unnumbered entry's seq, ts and bytes: one order for every process, the seq is the
    writer's next, and ts never goes back (a worker's clock read a few ms before another's
    entry arrived)."""
    late = ts_us < writer.last_ts_us
    ts_us = max(ts_us, writer.last_ts_us)
    seq = writer.next_seq
    return seq, ts_us, number_entry(raw, seq_at, ts_at, seq, format_ts_us(ts_us) if late else None)


def child_main() -> None:
    """Entry point of the writer process (started by :meth:`RemoteLedger.open`)."""
    import signal

    # The daemon's SIGTERM/SIGINT are for the daemon, which then closes the ledger: the
    # writer must outlive them to write the final entries and checkpoint.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd = int(os.environ.pop("APPLIANCE_LEDGER_FD"))
    extra = os.environ.pop("APPLIANCE_LEDGER_WORKER_FDS", "")
    workers = [socket.socket(fileno=int(f)) for f in extra.split(",") if f]
    code = _Child(socket.socket(fileno=fd), workers).run()
    sys.stdout.flush()
    os._exit(code)


__all__ = ["CanonicalError", "RemoteBlob", "RemoteLedger", "child_main"]
