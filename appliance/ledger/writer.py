"""The one writer of a ledger directory, used by the asyncio proxy.

``append`` runs in the caller's thread and only does CPU work: it checks the entry has a
canonical form, assigns ``seq`` and ``ts`` in call order, and hands the encoded entry to a
bounded queue (blocking only when ``queue_limit`` items wait: backpressure). One background
thread does all disk work, in queue order:

- blob chunks: ``transform`` (e.g. masking) applied off the hot path, hashed, and either
  kept in memory and carried inline in the referencing entry (small UTF-8 results, up to
  ``inline_limit``: no file per result set) or streamed to ``blobs/tmp/`` and renamed to
  ``blobs/ab/<sha256>`` on close (content addressed, so written once);
- entries: blob references filled in, framed, appended to ``entries.log`` (buffered), leaf
  hash added to the compact range;
- (without the thread, in the writer process of :mod:`appliance.ledger.remote`, the same work
  is done in the caller's thread as entries and chunks arrive, and :meth:`LedgerWriter.pump`
  signs and syncs;)
- checkpoints, at most ``checkpoint_interval`` seconds after the oldest unsigned entry or
  every ``checkpoint_entries`` entries, or when ``flush`` asks: write out, fsync the log and
  every new blob and its directory, sign the root (C2SP checkpoint), append the note to
  ``checkpoints.log`` and fsync it, then replace ``checkpoint`` atomically. Only then does
  ``flush`` return for the entries it covers (design invariant 4);
- syncs, when :meth:`LedgerWriter.durable` asks (write-ahead of a statement that may change
  a target): write out, and make durable without signing: the log's new bytes go to the
  sync journal (:mod:`appliance.ledger.journal`, a file overwritten in place: about half
  an fsync of the growing log), or, when new blobs need an fsync or the bytes do not fit
  there, the log and new blobs are fsynced as for a checkpoint; whoever waits is released
  once everything appended before the request is on disk. A crash after that keeps the
  entries: on open the journal is replayed into the log, and recovery signs what it finds
  complete after the last checkpoint.

Any I/O error (an fsync error above all) stops the writer for good: it is never retried,
because after a failed fsync the kernel may have dropped the dirty pages. ``append`` then
raises :class:`LedgerUnavailable` and the proxy fails closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from appliance.ledger._entry_log import add_entry, inline_ref, spliced
from appliance.ledger._framing import CHECKPOINT_MAGIC, MAX_PAYLOAD, encode_frame
from appliance.ledger.api import PendingBlob
from appliance.ledger.checkpoint import Checkpoint, sign_checkpoint
from appliance.ledger.entries import (
    KEY_PUBLISHED,
    PrefixCache,
    canonical_json,
    encode_trusted,
    format_ts_us,
    ts_to_us,
)
from appliance.ledger.errors import CanonicalError, LedgerError, LedgerUnavailable
from appliance.ledger.journal import JOURNAL, Journal, replay
from appliance.ledger.recovery import LastEntry, RecoveryReport, recover
from appliance.ledger.store import (
    BLOB_TMP,
    BLOBS,
    CHECKPOINT,
    ENTRIES,
    HISTORY,
    LOCK,
    atomic_write,
    fsync_dir,
    write_all,
)
from appliance.signing.keys import SigningKey

_ENTRY, _BLOB_WRITE, _BLOB_CLOSE, _BLOB_ABORT, _BLOB_PUT, _ENTRY_BLOB = range(6)
_WRITE_BUFFER = 1 << 20
# A blob whose (transformed) content stays within this many bytes and is UTF-8 text is
# carried inline in the entry that references it (``{"sha256", "size", "inline"}``): no
# file to create, rename and fsync per small result set, and in the fleet no object to put
# per result set. Larger blobs go to the store. 64 KiB (8 KiB until session 14): a result
# of a hundred rows (sysbench's range queries, a page of a listing) was a file of its own,
# and creating those files took a fifth of the writer's time under sysbench.
INLINE_LIMIT = 64 * 1024
# The writer thread takes the queue in batches: when _BATCH items wait, or when the oldest
# has waited _BATCH_WAIT seconds (appends are durable only at the next checkpoint anyway).
_BATCH = 1024
_BATCH_WAIT = 0.01


class TransformFactory(Protocol):
    """Makes a fresh blob transform (and its annotation) per blob, in the writer's thread or
    process. Picklable, so that :class:`~appliance.ledger.remote.RemoteLedger` can ship it
    to its writer process once and name it afterwards."""

    def new(self) -> tuple[Callable[[bytes], bytes], Callable[[], Mapping[str, Any]] | None]: ...


class BlobSink:
    """A blob being streamed into the store; see :meth:`LedgerWriter.open_blob`.

    ``write`` and ``close`` only enqueue; the writer thread does the work. After the entry that
    references it is written, ``ref`` is ``{"sha256": hex, "size": int}``.

    ``annotate``, if set, is called in the writer thread when an entry referencing the blob is
    encoded (after every chunk went through ``transform``); the mapping it returns is added to
    the reference, e.g. ``{"masking": {"pan": 3}}`` counted by the transform. It must not
    replace ``sha256`` or ``size``; if it fails, the reference carries ``annotation_error``.
    """

    def __init__(self, writer: LedgerWriter, transform: Callable[[bytes], bytes] | None) -> None:
        self._writer = writer
        self._transform = transform
        self._state = "open"  # open -> closed | aborted (caller side)
        # writer-thread side
        self._fd: int | None = None
        self._tmp: Path | None = None
        self._hash: Any = None  # hashlib's SHA-256, from the first chunk added
        self._size = 0
        self.ref: dict[str, Any] | None = None
        self.error: str | None = None
        # writer-thread side: content kept in memory while it may still be inlined
        self._mem: bytearray | None = bytearray() if writer._inline_limit > 0 else None
        # Called in the writer thread when an entry referencing the blob is encoded; what it
        # returns joins the reference (e.g. the masking counts a transform gathered).
        self.annotate: Callable[[], Mapping[str, Any]] | None = None

    @property
    def closed(self) -> bool:
        return self._state != "open"

    def write(self, chunk: bytes) -> None:
        """Enqueue ``chunk``; raises LedgerError if the sink is closed."""
        if self._state != "open":
            raise LedgerError(f"write to a {self._state} blob sink")
        self._writer._enqueue((_BLOB_WRITE, self, bytes(chunk)))

    def close(self) -> None:
        """Finish the blob (idempotent)."""
        if self._state == "open":
            self._state = "closed"
            self._writer._enqueue((_BLOB_CLOSE, self))

    def abort(self) -> None:
        """Discard the blob (idempotent; no effect after close)."""
        if self._state == "open":
            self._state = "aborted"
            self._writer._enqueue((_BLOB_ABORT, self))


class LedgerWriter:
    """Single writer of one ledger directory. Create with :meth:`open`."""

    def __init__(
        self,
        directory: Path,
        *,
        origin: str,
        key: SigningKey,
        checkpoint_interval: float,
        checkpoint_entries: int,
        clock: Callable[[], float],
        queue_limit: int,
        report: RecoveryReport,
        lock_fd: int,
        fsync: Callable[[int], None],
        datasync: Callable[[int], None],
        inline_limit: int = 0,
        on_signed: Callable[[int], None] | None = None,
        threaded: bool = True,
    ) -> None:
        self.directory = directory
        self._on_signed = on_signed
        self._prefixes = PrefixCache(origin)
        self._threaded = threaded
        self.origin = origin
        self.recovery = report
        self._key = key
        self._interval = checkpoint_interval
        self._every = checkpoint_entries
        self._clock = clock
        self._limit = queue_limit
        self._lock_fd = lock_fd
        self._fsync = fsync
        self._inline_limit = inline_limit

        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._next_seq = report.entries  # caller side, under _cond
        self._last_ts_us = ts_to_us(report.last_ts) if report.last_ts else 0
        # (not "_signed" nor "_thread": mypyc names C struct fields after attributes)
        self._signed_size = report.signed_size  # under _cond
        self._flush_requested = report.entries > report.signed_size
        self._sync_requested = False
        self._durable = report.entries  # fsynced (signed or not), under _cond
        self._stopping = False
        # True while the writer thread waits with nothing queued and no timeout: only then
        # does an append wake it (see _collect).
        self._idle = False
        self._failed: BaseException | None = None
        self._closed = False

        # writer-thread state
        self._compact = report.compact
        self._written = report.entries
        self._history_seq = report.checkpoints
        self._buf = bytearray()
        self._pending_fds: list[int] = []
        self._pending_dirs: set[Path] = set()
        self._deadline: float | None = None
        self._nonce = os.urandom(8).hex()  # in the blob markers (see _marker)
        blobs = directory / BLOBS
        self._blob_tmp = blobs / BLOB_TMP
        self._log_fd = os.open(directory / ENTRIES, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        # The sync journal (see _sync): the log's size, its size at its last fsync (recovery
        # may leave bytes it did not fsync: fsynced here once), and its bytes written since
        # the last sync or fsync (_tail; None once more than the journal holds).
        fsync(self._log_fd)
        self._log_size = self._log_synced = os.fstat(self._log_fd).st_size
        self._journal = Journal(directory / JOURNAL, datasync, fsync)
        self._tail: bytearray | None = bytearray()
        self._hist_fd = os.open(directory / HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._worker = threading.Thread(target=self._run, name="ledger-writer", daemon=True)

    # -- opening ---------------------------------------------------------------------------

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
        queue_limit: int = 100_000,
        fsync: Callable[[int], None] = os.fsync,
        datasync: Callable[[int], None] | None = None,
        inline_limit: int = INLINE_LIMIT,
        on_signed: Callable[[int], None] | None = None,
        lock_wait: float = 0.0,
        threaded: bool = True,
    ) -> LedgerWriter:
        """Lock ``directory`` (created if needed), recover it, start the writer thread.

        ``inline_limit``: blobs up to this size (after their transform) that are UTF-8 text
        are carried inline in the referencing entry instead of the blob store (0: never).

        Appends a ``key.published`` entry if ``key`` is new to this log. Raises TamperError
        on damage inside signed history, LedgerError if another writer holds the directory or
        the ledger belongs to another origin. ``fsync`` is replaceable for fault injection;
        ``datasync`` syncs the sync journal (None: ``os.fdatasync``, or ``fsync`` where
        that was replaced, so that injected faults reach the journal too).
        ``on_signed(size)`` is called in the writer thread after each checkpoint.
        ``lock_wait``: how long to wait for another writer to let go of the directory (a
        writer process finishing its last checkpoint after its proxy was killed).
        ``threaded=False``: no writer thread (the writer process of :mod:`appliance.ledger.
        remote` has nothing else to do): entries and blob chunks that arrive through
        :meth:`append_encoded` and the blob sinks are written at once, in the caller's thread
        (no queue, no lock); what :meth:`append` queued waits for the next of those or for
        :meth:`pump`, which the owner calls to write it and to sign checkpoints and sync.
        """
        if checkpoint_interval <= 0 or checkpoint_entries < 1 or queue_limit < 1:
            raise LedgerError("checkpoint interval, checkpoint entries and queue limit must be > 0")
        directory = Path(directory)
        try:
            directory.mkdir(mode=0o750, parents=True, exist_ok=True)
            (directory / BLOBS / BLOB_TMP).mkdir(mode=0o750, parents=True, exist_ok=True)
            lock_fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise LedgerError(f"cannot open ledger directory {directory}: {exc}") from None
        deadline = time.monotonic() + lock_wait
        while True:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(lock_fd)
                    raise LedgerError(f"another writer holds {directory}") from None
                time.sleep(0.05)
        try:
            for stale in (directory / BLOBS / BLOB_TMP).iterdir():
                stale.unlink()  # unfinished blobs; no entry can reference them
            restored = replay(directory, fsync)
            report = recover(directory, trusted=[key.verifier()], origin=origin)
            if restored:
                report.actions.append(
                    f"restored {restored} bytes of {ENTRIES} from {JOURNAL} (made durable by"
                    " write-ahead syncs before the machine stopped)"
                )
            writer = cls(
                directory,
                origin=origin,
                key=key,
                checkpoint_interval=checkpoint_interval,
                checkpoint_entries=checkpoint_entries,
                clock=clock,
                queue_limit=queue_limit,
                report=report,
                lock_fd=lock_fd,
                fsync=fsync,
                datasync=datasync or (os.fdatasync if fsync is os.fsync else fsync),
                inline_limit=inline_limit,
                on_signed=on_signed,
                threaded=threaded,
            )
        except BaseException:
            os.close(lock_fd)
            raise
        if threaded:
            writer._worker.start()
        vkey = key.verifier().to_vkey()
        if vkey not in report.published:
            writer.append(KEY_PUBLISHED, data={"vkey": vkey})
        return writer

    # -- caller side -------------------------------------------------------------------------

    @property
    def signed_size(self) -> int:
        """How many entries are fsynced and covered by the latest signed checkpoint."""
        return self._signed_size

    @property
    def last_at_open(self) -> LastEntry | None:
        """The last entry the ledger held when opened (None: it was empty)."""
        return self.recovery.last

    @property
    def failed(self) -> BaseException | None:
        """The error that stopped the writer thread, if any."""
        return self._failed

    def _enqueue(self, item: tuple[Any, ...]) -> None:
        if not self._threaded:
            self._now(item)
            return
        with self._cond:
            self._wait_for_room()
            self._queue.append(item)
            n = len(self._queue)
            if (n == 1 and self._idle) or n >= _BATCH:
                self._cond.notify_all()

    def _wait_for_room(self) -> None:
        while True:
            if self._failed is not None:
                raise LedgerUnavailable(f"ledger writer has stopped: {self._failed}")
            if self._stopping:
                raise LedgerUnavailable("ledger writer is closed")
            if len(self._queue) < self._limit or not self._threaded:
                return
            self._cond.wait()

    def _now(self, *items: tuple[Any, ...]) -> None:
        """Without a writer thread: do the work of ``items`` at once, in the caller's thread,
        after anything still queued (no queue, no lock, no hand-over per item). A failure
        stops the writer for good, as it does in :meth:`pump`: LedgerUnavailable."""
        if self._failed is not None:
            raise LedgerUnavailable(f"ledger writer has stopped: {self._failed}")
        if self._stopping:
            raise LedgerUnavailable("ledger writer is closed")
        try:
            if self._queue:
                batch, self._queue = self._queue, collections.deque()
                for queued in batch:
                    self._process(queued)
            for item in items:
                self._process(item)
        except BaseException as exc:
            raise self._stop(exc) from exc

    def _stop(self, exc: BaseException) -> LedgerUnavailable:
        """Stop the writer for good after ``exc``; the error its caller raises."""
        self._failed = exc
        return LedgerUnavailable(f"ledger writer has stopped: {exc}")

    def pump(self, *, flush: bool = False) -> float | None:
        """Without a writer thread: do the queued work (if any), and sign a checkpoint when one is due
        (or ``flush``). Returns how many seconds until the next checkpoint is due (None:
        none pending), for the owner's next call. Raises LedgerUnavailable once failed."""
        assert not self._threaded, "pump() is for a writer opened with threaded=False"
        if self._failed is not None:
            raise LedgerUnavailable(f"ledger writer has stopped: {self._failed}")
        flush = flush or self._flush_requested  # e.g. unsigned entries found on open
        self._flush_requested = False
        sync, self._sync_requested = self._sync_requested, False
        try:
            batch, self._queue = self._queue, collections.deque()
            for item in batch:
                self._process(item)
            due = self._deadline is not None and time.monotonic() >= self._deadline
            if sync and not flush:
                # The write-ahead (durable()) waits for the fsync only: a checkpoint due now
                # is signed at the owner's next call, after it has answered (issue 19: the
                # signature and three more fsyncs were on a statement's path once a second).
                if self._written > self._durable:
                    self._sync()
            elif self._written > self._signed_size and (flush or due):
                self._checkpoint()
            elif flush:
                self._publish_signed(self._written)
        except BaseException as exc:
            raise self._stop(exc) from exc
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def append(
        self,
        type: str,
        *,
        session: str | None = None,
        identity: Mapping[str, Any] | None = None,
        account: str | None = None,
        target: str | None = None,
        data: Mapping[str, Any],
        blobs: Mapping[str, BlobSink | PendingBlob] | None = None,
        trusted: bool = False,
    ) -> None:
        """Record one entry; see the module docstring. Thread-safe.

        Raises CanonicalError (nothing recorded) if the entry has no canonical form, and
        LedgerUnavailable if the writer has stopped. ``trusted``: the caller builds ``data``
        and ``identity`` only from str, int, bool, None, lists and dicts (the proxy's typed
        per-statement records, whose identity was checked once per session), so the
        recursive type check is skipped on this hot path; encoding errors still raise.
        """
        opened: list[BlobSink] = []
        sinks: dict[str, BlobSink] = {}
        if blobs:
            data = dict(data)
            for k, given in blobs.items():
                if isinstance(given, PendingBlob):
                    sink = self.open_blob(given.transform)
                    sink.write(given.data)
                    opened.append(sink)
                else:
                    sink = given
                if sink._writer is not self:
                    raise LedgerError("blob sink belongs to another writer")
                sinks[k] = sink
                data[k] = None  # placeholder, replaced by the reference in the writer thread
        try:
            with self._cond:
                self._wait_for_room()
                ts_us = max(round(self._clock() * 1_000_000), self._last_ts_us)
                # Raises CanonicalError before anything is consumed.
                prefix = self._prefixes.get(session, identity, account, target)
                raw = prefix.encode(
                    self._next_seq, format_ts_us(ts_us), type, data, trusted=trusted
                )
                if len(raw) > MAX_PAYLOAD:
                    raise CanonicalError(f"entry of {len(raw)} bytes is too large; use a blob")
                if sinks:
                    for sink in sinks.values():
                        if not sink.closed:
                            sink._state = "closed"
                            self._queue.append((_BLOB_CLOSE, sink))
                    # the writer thread splices the references into the holes
                    marked = dict(data)
                    marked.update((k, self._marker(k)) for k in sinks)
                    raw = prefix.encode(
                        self._next_seq, format_ts_us(ts_us), type, marked, trusted=True
                    )
                    self._queue.append((_ENTRY, raw, self._holes(raw, sinks)))
                else:
                    self._queue.append((_ENTRY, raw, None))
                self._next_seq += 1
                self._last_ts_us = ts_us
                n = len(self._queue)
                if (n == 1 and self._idle) or n >= _BATCH:
                    self._cond.notify_all()
        except BaseException:
            for made in opened:  # nothing was recorded: drop what was opened for it
                with contextlib.suppress(LedgerError):
                    made.abort()
            raise

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next entry gets."""
        return self._next_seq

    @property
    def last_ts_us(self) -> int:
        """The latest entry timestamp, in microseconds (entries never go back in time)."""
        return self._last_ts_us

    def append_encoded(
        self,
        seq: int,
        ts_us: int,
        entry: bytes,
        holes: Sequence[tuple[int, int, BlobSink]] | None = None,
    ) -> None:
        """Record an entry another process built (see :mod:`appliance.ledger.remote`):
        ``entry`` is its canonical bytes; ``holes`` are ``(start, end, sink)``: where the
        reference to a blob goes, in place of a marker (:meth:`_marker`). ``seq`` must be the
        next one: entries arrive in order or not at all."""
        if not self._threaded:  # the writer process: the work at once (as _now does it)
            if seq != self._next_seq:
                raise LedgerError(f"entry {seq} arrived where entry {self._next_seq} was due")
            if holes:
                closing = [(_BLOB_CLOSE, sink) for _, _, sink in holes if not sink.closed]
                for _, sink in closing:
                    sink._state = "closed"
                self._now(*closing, (_ENTRY, entry, list(holes)))
            elif self._queue or self._failed is not None or self._stopping:
                self._now((_ENTRY, entry, None))
            else:  # the writer process's commonest work, without _now's layers
                try:
                    self._write_entry(entry)
                except BaseException as exc:
                    raise self._stop(exc) from exc
            self._next_seq = seq + 1
            self._last_ts_us = max(ts_us, self._last_ts_us)
            return
        if holes:
            unclosed = [sink for _, _, sink in holes if not sink.closed]
            self._enqueue_entry(seq, ts_us, unclosed, (_ENTRY, entry, list(holes)))
        else:
            self._enqueue_entry(seq, ts_us, (), (_ENTRY, entry, None))

    def append_encoded_blob(
        self,
        seq: int,
        ts_us: int,
        entry: bytes,
        hole: tuple[int, int],
        transform: Callable[[bytes], bytes] | TransformFactory | None,
        blob: bytes,
    ) -> None:
        """:meth:`append_encoded` of an entry with one blob that came whole with it (a small
        result, :class:`~appliance.ledger.api.PendingBlob`): ``blob`` goes through
        ``transform`` (as in :meth:`open_blob`) and its reference into ``hole`` (start, end),
        in one step: as an open, a write, a close and an entry with that hole would."""
        sink = self.open_blob(transform)
        sink._state = "closed"
        if not self._threaded:  # the writer process: the work at once (as _now does it)
            if seq != self._next_seq:
                raise LedgerError(f"entry {seq} arrived where entry {self._next_seq} was due")
            if self._queue or self._failed is not None or self._stopping:
                self._now((_ENTRY_BLOB, entry, hole[0], hole[1], sink, blob))
            else:
                try:
                    self._entry_blob(entry, hole[0], hole[1], sink, blob)
                except BaseException as exc:
                    raise self._stop(exc) from exc
            self._next_seq = seq + 1
            self._last_ts_us = max(ts_us, self._last_ts_us)
            return
        self._enqueue_entry(seq, ts_us, (), (_ENTRY_BLOB, entry, hole[0], hole[1], sink, blob))

    def _enqueue_entry(
        self, seq: int, ts_us: int, closing: Sequence[BlobSink], item: tuple[Any, ...]
    ) -> None:
        """With the writer thread: queue the close of each of ``closing``, then ``item`` (an
        entry another process built) if ``seq`` is the next one."""
        with self._cond:
            self._wait_for_room()
            if seq != self._next_seq:
                raise LedgerError(f"entry {seq} arrived where entry {self._next_seq} was due")
            for sink in closing:
                sink._state = "closed"
                self._queue.append((_BLOB_CLOSE, sink))
            self._queue.append(item)
            self._next_seq = seq + 1
            self._last_ts_us = max(ts_us, self._last_ts_us)
            n = len(self._queue)
            if (n == 1 and self._idle) or n >= _BATCH:
                self._cond.notify_all()

    def _marker(self, name: str) -> str:
        """What stands in an entry for the reference to its blob ``name`` until the blob is
        written: a string no value from a peer can hold (NUL never reaches a PostgreSQL or
        MySQL string, and this writer's random nonce is nowhere else)."""
        return f"\x00blob {self._nonce} {name}"

    def _holes(self, raw: bytes, blobs: Mapping[str, BlobSink]) -> list[tuple[int, int, BlobSink]]:
        """Where the markers of ``blobs`` are in ``raw``: ``(start, end, sink)``."""
        out = []
        for name, sink in blobs.items():
            marker = encode_trusted(self._marker(name))
            start = raw.find(marker)
            if start < 0:  # pragma: no cover - the marker was just encoded into raw
                raise LedgerError(f"blob marker of {name!r} missing from its entry")
            out.append((start, start + len(marker), sink))
        return out

    def open_blob(
        self, transform: Callable[[bytes], bytes] | TransformFactory | None = None
    ) -> BlobSink:
        """A new blob sink; ``transform`` is applied to each chunk in the writer thread. A
        :class:`TransformFactory` makes the transform and sets the sink's ``annotate``."""
        if self._failed is not None or self._stopping:
            raise LedgerUnavailable("ledger writer has stopped")
        if transform is not None and hasattr(transform, "new"):
            fn, annotate = transform.new()
            sink = BlobSink(self, fn)
            sink.annotate = annotate
            return sink
        return BlobSink(self, transform)

    def put_blob(self, data: bytes) -> str:
        """Store ``data`` as a blob (written by the writer thread); return its SHA-256 hex."""
        data = bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        self._enqueue((_BLOB_PUT, sha, data))
        return sha

    def flush(self, timeout: float | None = None) -> None:
        """Return once everything appended so far is fsynced and covered by a checkpoint.

        Raises LedgerUnavailable if the writer stops first, LedgerError on timeout.
        """
        if not self._threaded:
            if not self._closed:
                self.pump(flush=True)
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._next_seq
            if self._signed_size >= target or self._closed:
                if self._failed is not None:
                    raise LedgerUnavailable(f"ledger writer has stopped: {self._failed}")
                return
            self._flush_requested = True
            self._cond.notify_all()
            while self._signed_size < target:
                if self._failed is not None:
                    raise LedgerUnavailable(f"ledger writer has stopped: {self._failed}")
                if not self._worker.is_alive():
                    raise LedgerUnavailable("ledger writer thread is not running")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise LedgerError(f"ledger flush timed out after {timeout} s")
                self._cond.wait(remaining)

    def durable(self, timeout: float | None = None) -> None:
        """Return once everything appended so far is written and fsynced (not necessarily
        signed yet): the write-ahead of a statement that may change a target.

        Raises LedgerUnavailable if the writer stops first, LedgerError on timeout."""
        if not self._threaded:
            if not self._closed:
                self._sync_requested = True
                self.pump()
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._next_seq
            while self._durable < target:
                if self._failed is not None:
                    raise LedgerUnavailable(f"ledger writer has stopped: {self._failed}")
                if self._closed or self._stopping:
                    raise LedgerUnavailable("ledger writer is closed")
                if not self._worker.is_alive():
                    raise LedgerUnavailable("ledger writer thread is not running")
                self._sync_requested = True
                self._cond.notify_all()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise LedgerError(f"ledger sync timed out after {timeout} s")
                self._cond.wait(remaining)
            if self._failed is not None:
                raise LedgerUnavailable(f"ledger writer has stopped: {self._failed}")

    async def sync(self) -> None:
        """:meth:`durable`, awaited from the event loop (in a worker thread)."""
        await asyncio.to_thread(self.durable)

    def hurry(self) -> None:
        """Nothing to hurry: entries reach this writer as they are appended."""

    def close(self) -> None:
        """Flush, sign a final checkpoint, stop the thread and release the directory.

        Raises LedgerUnavailable if the writer had failed (some entries were not recorded).
        """
        if self._closed:
            return
        try:
            if self._failed is None:
                self.flush()
        finally:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            if self._threaded:
                self._worker.join()
            self._closed = True
            for fd in (self._log_fd, self._hist_fd, *self._pending_fds):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._pending_fds.clear()
            self._journal.close()
            os.close(self._lock_fd)
        if self._failed is not None:
            raise LedgerUnavailable(f"ledger writer had stopped: {self._failed}")

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    self._collect()
                    batch, self._queue = self._queue, collections.deque()
                    stopping = self._stopping
                    flush = self._flush_requested
                    self._flush_requested = False
                    sync, self._sync_requested = self._sync_requested, False
                    self._cond.notify_all()  # room for producers blocked on the limit
                for item in batch:
                    self._process(item)
                due = self._deadline is not None and time.monotonic() >= self._deadline
                if self._written > self._signed_size and (flush or stopping or due):
                    self._checkpoint()
                elif flush:
                    self._publish_signed(self._written)
                elif sync and self._written > self._durable:
                    self._sync()
                if stopping and not self._queue:
                    return
        except BaseException as exc:  # any failure stops the writer for good
            with self._cond:
                self._failed = exc
                self._cond.notify_all()

    def _collect(self) -> None:
        """Wait (holding the condition) until there is a batch to process: _BATCH items, or
        items that waited _BATCH_WAIT, or a flush, a stop, or a checkpoint deadline.

        Under load the writer wakes on its own, every _BATCH_WAIT, and producers never wake
        it (a wake-up per append would hand the GIL to this thread once per statement).
        Only after a quiet _BATCH_WAIT with nothing queued and no checkpoint due does it
        sleep without a timeout (``_idle``), and then the next append wakes it.
        """
        first: float | None = None
        quiet_since = time.monotonic()
        while not self._stopping and not self._flush_requested and not self._sync_requested:
            n = len(self._queue)
            if n >= _BATCH:
                return
            now = time.monotonic()
            if n:
                first = now if first is None else first
                wait = first + _BATCH_WAIT - now
                if self._deadline is not None:
                    wait = min(wait, self._deadline - now)
            elif self._deadline is None:
                wait = quiet_since + _BATCH_WAIT - now
                if wait <= 0:
                    self._idle = True
                    try:
                        self._cond.wait()
                    finally:
                        self._idle = False
                    quiet_since = time.monotonic()
                    continue
            else:  # a checkpoint is due: look at the queue every _BATCH_WAIT until then
                wait = min(self._deadline - now, _BATCH_WAIT)
                if wait <= 0:
                    return
                self._cond.wait(wait)
                continue
            if wait <= 0:
                return
            self._cond.wait(wait)

    def _process(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == _ENTRY:
            _, payload, holes = item
            if holes:
                payload = self._splice(payload, holes)
            self._write_entry(payload)
        elif kind == _ENTRY_BLOB:
            self._entry_blob(*item[1:])
        elif kind == _BLOB_WRITE:
            self._blob_write(item[1], item[2])
        elif kind == _BLOB_CLOSE:
            self._blob_close(item[1])
        elif kind == _BLOB_ABORT:
            self._blob_discard(item[1])
        elif kind == _BLOB_PUT:
            self._blob_put(item[1], item[2])

    def _entry_blob(self, raw: bytes, start: int, end: int, sink: BlobSink, blob: bytes) -> None:
        """An entry and the one blob it came with (see :meth:`append_encoded_blob`)."""
        self._blob_whole(sink, blob)
        self._write_entry(spliced(raw, start, end, self._ref(sink)))

    def _write_entry(self, raw: bytes) -> None:
        seq = self._written
        buffered = add_entry(self._buf, self._compact, seq, raw)
        self._written = seq + 1
        if self._deadline is None:
            self._deadline = time.monotonic() + self._interval
        if buffered >= _WRITE_BUFFER:
            self._write_out()
        if self._written - self._signed_size >= self._every:
            self._checkpoint()

    def _splice(self, raw: bytes, holes: list[tuple[int, int, BlobSink]]) -> bytes:
        """``raw`` with each blob's reference in its hole. Canonical JSON puts a key where
        its name sorts, whatever its value: the result is the canonical entry with the
        references as values (the rest was checked when appended; the references are str
        and int, their annotations are checked in :meth:`_ref`)."""
        if len(holes) == 1:
            start, end, sink = holes[0]
            return spliced(raw, start, end, self._ref(sink))
        parts = []
        pos = 0
        for start, end, sink in sorted(holes, key=lambda h: h[0]):
            parts.append(raw[pos:start])
            parts.append(encode_trusted(self._ref(sink)))
            pos = end
        parts.append(raw[pos:])
        return b"".join(parts)

    def _ref(self, sink: BlobSink) -> dict[str, Any]:
        """The reference to a written blob, annotated by its producer."""
        if sink.ref is None:
            return {"error": sink.error or "blob was aborted"}
        ref = dict(sink.ref)
        if sink.annotate is not None:
            try:  # the producer's callback: its failure must not stop the writer
                extra = sink.annotate()
                if type(extra) is dict and not extra:  # nearly always: nothing was masked
                    return ref
                extra = dict(extra)
                if extra:
                    canonical_json(extra)
                ref.update(
                    (n, v) for n, v in extra.items() if n not in ("sha256", "size", "inline")
                )
            except Exception as exc:
                ref["annotation_error"] = f"{type(exc).__name__}: {exc}"
        return ref

    def _write_out(self) -> None:
        buf = self._buf
        tail = self._tail
        if tail is not None:
            if len(tail) + len(buf) <= self._journal.capacity:
                tail.extend(buf)
            else:
                self._tail = None  # more than the journal holds: the next sync fsyncs the log
        write_all(self._log_fd, buf)
        self._log_size += len(buf)
        buf.clear()

    # blobs

    def _blob_file(self, sink: BlobSink) -> int:
        if sink._fd is None:
            sink._tmp = self._blob_tmp / f"{id(sink):x}.{os.getpid()}.{self._written}"
            sink._fd = os.open(sink._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        return sink._fd

    def _transformed(self, sink: BlobSink, chunk: bytes) -> bytes | None:
        """``chunk`` through the sink's transform; None if that failed (the blob is dropped
        and its reference says why)."""
        if sink._transform is None:
            return chunk
        try:
            chunk = sink._transform(chunk)
            if not isinstance(chunk, bytes):
                raise TypeError(f"transform returned {type(chunk).__name__}, not bytes")
        except Exception as exc:  # the producer's transform failed: drop the blob
            sink.error = f"blob transform failed: {type(exc).__name__}: {exc}"
            self._blob_discard(sink)
            return None
        return chunk

    def _blob_whole(self, sink: BlobSink, blob: bytes) -> None:
        """A blob's one write and its close: a small UTF-8 result is inlined at once (the
        reference :meth:`_blob_close` would give it), anything else takes the usual way."""
        chunk = self._transformed(sink, blob)
        if chunk is None:
            return
        if sink._mem is not None and len(chunk) <= self._inline_limit:
            ref = inline_ref(chunk)
            if ref is not None:
                sink._mem = None
                sink.ref = ref
                return
        self._blob_add(sink, chunk)
        self._blob_close(sink)

    def _blob_write(self, sink: BlobSink, chunk: bytes) -> None:
        if sink.error is not None or sink.ref is not None:
            return
        transformed = self._transformed(sink, chunk)
        if transformed is not None:
            self._blob_add(sink, transformed)

    def _blob_add(self, sink: BlobSink, chunk: bytes) -> None:
        """A transformed chunk into the blob (kept in memory while it may be inlined)."""
        if sink._hash is None:
            sink._hash = hashlib.sha256()
        sink._hash.update(chunk)
        sink._size += len(chunk)
        mem = sink._mem
        if mem is not None:
            if sink._size <= self._inline_limit:
                mem += chunk
                return
            sink._mem = None  # too large to inline: spill what was kept, then stream
            chunk = bytes(mem) + chunk
        fd = self._blob_file(sink)
        write_all(fd, chunk)

    def _blob_close(self, sink: BlobSink) -> None:
        if sink.error is not None or sink.ref is not None:
            return
        sha = (sink._hash or hashlib.sha256()).hexdigest()
        mem = sink._mem
        if mem is not None:
            sink._mem = None
            try:
                text = mem.decode("utf-8")
            except UnicodeDecodeError:
                fd = self._blob_file(sink)
                write_all(fd, bytes(mem))
            else:
                sink.ref = {"sha256": sha, "size": sink._size, "inline": text}
                return
        fd = self._blob_file(sink)
        final = self.directory / BLOBS / sha[:2] / sha
        assert sink._tmp is not None
        if final.exists():
            os.close(fd)
            sink._tmp.unlink()
        else:
            final.parent.mkdir(mode=0o750, exist_ok=True)
            os.rename(sink._tmp, final)
            self._pending_fds.append(fd)
            self._pending_dirs.add(final.parent)
        sink._fd = None
        sink.ref = {"sha256": sha, "size": sink._size}

    def _blob_discard(self, sink: BlobSink) -> None:
        sink._mem = None
        if sink._fd is not None:
            os.close(sink._fd)
            sink._fd = None
        if sink._tmp is not None:
            sink._tmp.unlink(missing_ok=True)
            sink._tmp = None

    def _blob_put(self, sha: str, data: bytes) -> None:
        final = self.directory / BLOBS / sha[:2] / sha
        if final.exists():
            return
        tmp = self._blob_tmp / f"put.{sha}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        write_all(fd, data)
        final.parent.mkdir(mode=0o750, exist_ok=True)
        os.rename(tmp, final)
        self._pending_fds.append(fd)
        self._pending_dirs.add(final.parent)

    # checkpoints

    def _sync(self, *, full: bool = False) -> None:
        """Make everything written durable: the log's bytes since the last sync go to the
        sync journal, unless ``full`` (a checkpoint), new blobs need an fsync, or they do not
        fit; then the log, new blobs and their directories are fsynced (and the journal
        starts over)."""
        self._write_out()
        tail = self._tail
        if (
            not full
            and tail is not None
            and not self._pending_fds
            and not self._pending_dirs
            and self._journal.fits(len(tail))
        ):
            if tail:
                self._journal.append(self._log_synced, self._log_size - len(tail), tail)
                tail.clear()
            with self._cond:
                self._durable = max(self._durable, self._written)
                self._cond.notify_all()
            return
        self._fsync(self._log_fd)
        self._log_synced = self._log_size
        self._journal.reset()
        self._tail = bytearray()
        for fd in self._pending_fds:
            self._fsync(fd)
        for fd in self._pending_fds:
            os.close(fd)
        self._pending_fds.clear()
        for d in self._pending_dirs:
            fsync_dir(d, self._fsync)
        self._pending_dirs.clear()
        with self._cond:
            self._durable = max(self._durable, self._written)
            self._cond.notify_all()

    def _checkpoint(self) -> None:
        """Make everything written durable, then sign and publish a checkpoint of it."""
        self._sync(full=True)
        size = self._written
        note = sign_checkpoint(Checkpoint(self.origin, size, self._compact.root()), self._key)
        frame = encode_frame(CHECKPOINT_MAGIC, self._history_seq, note.encode())
        write_all(self._hist_fd, frame)
        self._fsync(self._hist_fd)
        self._history_seq += 1
        atomic_write(self.directory / CHECKPOINT, note.encode(), fsync=self._fsync)
        self._deadline = None
        self._publish_signed(size)

    def _publish_signed(self, size: int) -> None:
        with self._cond:
            self._signed_size = max(self._signed_size, size)
            self._cond.notify_all()
        if self._on_signed is not None:
            self._on_signed(size)


__all__ = ["BlobSink", "LedgerWriter", "TransformFactory"]
