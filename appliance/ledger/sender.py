"""The proxy's half of the channel to the ledger writer process: entries numbered, stamped,
encoded and framed into one send buffer.

Where it sits: every statement a session records passes here twice (its statement and its
response entry), from :class:`~appliance.proxy.records.SessionRecords` on the event loop
through the session's :class:`SessionEntries` (one native call per entry), so this module
is compiled with mypyc (``appliance._pure.HOT_MODULES``).
:class:`~appliance.ledger.remote.RemoteLedger` is a :class:`LedgerSender`: it adds starting
the writer process, syncs, flushes, closing, and the thread that reads the writer's answers;
the writer's side of the channel is in :mod:`appliance.ledger.remote` too.

What a sender does with an entry: assigns ``seq`` and ``ts`` in call order under one lock
(the order of seq is the order on the wire), encodes it (a :class:`CanonicalError` reaches
the caller), frames it, and appends it to the buffer, which goes to the writer in one
``send`` :data:`SEND_DELAY` seconds after its first entry (from a running event loop), at
the end of the loop's turn once :meth:`LedgerSender.hurry` is asked (a write-ahead sync is
coming: a transaction block changed something), at once past :data:`SEND_AT` bytes, or at
once without a loop. A blob's transform runs in the writer process: the sender names each
:class:`~appliance.ledger.writer.TransformFactory` once (pickled across) and sends the
blob's chunks raw.

Never blocking the event loop (issue 19): from a running loop a send takes what the socket
has room for (a non-blocking ``send`` on a second handle of the socket); the rest stays
queued, ahead of everything appended later, and goes out from a writer callback
(``loop.add_writer``) whenever the socket has room: the bytes on the wire keep the order of
the appends. Without a loop (a thread, a command), and for :meth:`RemoteLedger.flush
<appliance.ledger.remote.RemoteLedger.flush>` and ``close``, which wait for the writer
anyway, the sender blocks until the socket has taken everything queued, in order. What is
queued and not yet taken is the *backlog*: over :data:`HIGH_WATER` bytes the channel is
congested, and the shell stops reading the side of a session whose read queued
:data:`BULK` bytes or more (a result being exported) until the backlog is down to
:data:`LOW_WATER` (:meth:`LedgerSender.holds_back`, :meth:`LedgerSender.drained`); over
:data:`LIMIT` it stops reading any side whose read queued anything. So the backlog stays
under :data:`LIMIT` plus what one read of each session queues (a read is at most 256 KiB of
the job's or the server's bytes, and queues about that much at most), sessions that only
add entries go on until :data:`LIMIT`, and nothing is dropped. If the writer is gone
(the socket refuses a send), the queued bytes are dropped with the failure kept: every
later append raises :class:`LedgerUnavailable`, as before.

Wire format, both ways: 4-byte big-endian payload length, 1 kind byte, payload. Integers
are big-endian; ``u64``/``u32``/``u16`` are their widths. Proxy to writer:

- ``ENTRY``: seq u64, ts (µs) u64, the entry's canonical bytes;
- ``ENTRY_BLOB``: seq u64, ts u64, transform factory u32 (0: none), hole start u32, hole end
  u32, blob length u32, the blob's bytes, the entry's bytes. An entry whose one blob is a
  :class:`~appliance.ledger.api.PendingBlob` (a small result, whole when its entry goes
  out): the writer runs the blob through the factory's transform and puts its reference
  in place of the marker at ``[start, end)`` of the entry, in one step;
- ``ENTRY_BLOBS``: seq u64, ts u64, hole count u16, holes (blob id u64, start u32, end u32),
  the entry's bytes: an entry referencing blobs opened before (``OPEN``) or several blobs;
  each hole's blob is closed if it is not yet and is done with;
- ``UNNUMBERED``, ``UNNUMBERED_BLOB``, ``UNNUMBERED_BLOBS``: as the three above, with ts
  u64, where the seq digits go u32 and where the ts goes u32 (:data:`OPEN_HEAD`) in place of
  seq and ts; the entry's bytes lack the seq digits (``unnumbered``, below);
- ``FACTORY``: factory id u32, the pickled :class:`~appliance.ledger.writer.
  TransformFactory` (sent once per factory, named by its id afterwards);
- ``OPEN``: blob id u64, factory id u32; ``WRITE``: blob id u64, a chunk; ``CLOSE``,
  ``ABORT``: blob id u64; ``PUT``: a whole blob (stored as it is, no reference);
- ``FLUSH``, ``SYNC``: a token u64, answered once done; ``STOP``: empty.

Writer to proxy: the kinds in :mod:`appliance.ledger.remote` (ready, signed size, flushed,
synced, failed).
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final, final

from mypy_extensions import mypyc_attr

from appliance.ledger.entries import EntryPrefix, PrefixCache, TsFormat, encode_trusted
from appliance.ledger.errors import LedgerError, LedgerUnavailable
from appliance.ledger.pending import PendingBlob

HEAD = struct.Struct("!IB")
U64 = struct.Struct("!Q")
U32 = struct.Struct("!I")
HOLE = struct.Struct("!QII")  # blob id, where its reference goes in the entry: start, end
OPEN_HEAD = struct.Struct("!QII")  # an unnumbered entry: ts (µs), where seq and ts go
HOLES_COUNT = struct.Struct("!H")
ENTRY_HEAD = struct.Struct("!QQ")  # seq, ts (µs)
_BLOB = "IIII"  # transform factory, hole start, hole end, blob length
ENTRY_BLOB_HEAD = struct.Struct("!QQ" + _BLOB)
UNNUMBERED_BLOB_HEAD = struct.Struct("!QII" + _BLOB)
# HEAD and an entry kind's head in one (a message per entry: one pack, no concatenation).
# Bound methods held as Finals: compiled, a C variable each, no lookup of the module's dict
# or of the method per entry.
_FRAMED_ENTRY: Final = struct.Struct("!IBQQ").pack
_FRAMED_UNNUMBERED: Final = struct.Struct("!IBQII").pack
_FRAMED_ENTRY_BLOB: Final = struct.Struct("!IBQQ" + _BLOB).pack
_FRAMED_UNNUMBERED_BLOB: Final = struct.Struct("!IBQII" + _BLOB).pack
_HEAD_SIZE: Final = HEAD.size
_UNPACK_HEAD: Final = HEAD.unpack_from
_ENTRY_HEAD_SIZE: Final = ENTRY_HEAD.size
_OPEN_HEAD_SIZE: Final = OPEN_HEAD.size
_ENTRY_BLOB_HEAD_SIZE: Final = ENTRY_BLOB_HEAD.size
_UNNUMBERED_BLOB_HEAD_SIZE: Final = UNNUMBERED_BLOB_HEAD.size
# proxy -> writer
ENTRY: Final = 0
ENTRY_BLOBS: Final = 1
FACTORY: Final = 2
OPEN: Final = 3
WRITE: Final = 4
CLOSE: Final = 5
ABORT: Final = 6
PUT: Final = 7
FLUSH: Final = 8
STOP: Final = 9
SYNC: Final = 10
UNNUMBERED: Final = 11
UNNUMBERED_BLOBS: Final = 12
ENTRY_BLOB: Final = 13
UNNUMBERED_BLOB: Final = 14
# From the event loop, the buffer is sent SEND_DELAY seconds after its first entry (one
# send for many entries: durability comes with the next checkpoint anyway), or at once
# beyond SEND_AT bytes.
SEND_DELAY: Final = 0.005
SEND_AT: Final = 256 * 1024
# The backlog (bytes appended, not yet taken by the socket; see the module docstring). The
# socket's own buffers hold 2 x 4 MiB more (remote._SOCKBUF), the writer's queue more again.
HIGH_WATER: Final = 1024 * 1024  # congested: a session's bulk read stops its reading
LOW_WATER: Final = SEND_AT  # drained: reading resumes (never under SEND_AT, see _queued)
BULK: Final = 64 * 1024  # what one read queues for it to count as bulk (a result's chunk)
LIMIT: Final = 16 * 1024 * 1024  # every read that queues anything stops its reading
# A socket in timeout mode (the proxy's end of the channel, see LedgerSender.__init__):
# blocking calls wait in poll() for at most this long (under poll's int of milliseconds).
_FOREVER: Final = 20 * 86400.0


def frame(kind: int, payload: bytes = b"") -> bytes:
    return HEAD.pack(len(payload), kind) + payload


def split(data: bytes, limit: int, out: list[tuple[int, bytes]]) -> int:
    """The whole messages at the start of ``data`` (the reverse of :func:`frame`), appended
    to ``out`` as ``(kind, payload)``; returns where the first incomplete one starts (the
    rest waits for more data). Raises LedgerError at a message longer than ``limit``.
    Compiled: the writer process reads two messages per statement."""
    pos, n = 0, len(data)
    while n - pos >= _HEAD_SIZE:
        length, kind = _UNPACK_HEAD(data, pos)
        if length > limit:
            raise LedgerError(f"ledger channel: message of {length} bytes")
        start = pos + _HEAD_SIZE
        end = start + length
        if end > n:
            break
        out.append((kind, data[start:end]))
        pos = end
    return pos


@mypyc_attr(allow_interpreted_subclasses=True)
class LedgerSender:
    """Entries into the channel ``sock`` to a writer process; see the module docstring.

    ``unnumbered``: the writer gives each entry its seq (and keeps ts from going back) in the
    order entries reach it from several proxy processes (``proxy.workers`` > 1); entries
    travel without their seq digits, with where those and the timestamp go.

    ``sock`` is put in timeout mode (``settimeout``): its blocking calls (this sender's
    blocking sends, the reads of RemoteLedger's listener thread) then wait in ``poll()``, so
    they work whatever the non-blocking flag of the socket, which it shares with the second
    handle the event loop sends through (uvloop's ``add_writer`` sets that flag)."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        origin: str,
        clock: Callable[[], float],
        next_seq: int,
        last_ts_us: int,
        unnumbered: bool,
        nonce: str,
    ) -> None:
        sock.settimeout(_FOREVER)
        self._sock = sock
        self._nb = sock.dup()  # the event loop's handle: never blocks
        self._nb.setblocking(False)
        self._clock = clock
        self._unnumbered = unnumbered
        self._lock = threading.Lock()
        self._next_seq = next_seq
        self._last_ts_us = last_ts_us
        self._out: list[bytes] = []  # framed messages not sent yet
        self._out_size = 0
        # The unsent end of a buffer the socket took in part, before everything in _out.
        self._rest = b""
        self._rest_at = 0
        # The loop whose writer callback sends _rest and _out when the socket has room.
        self._writing: Any = None
        self._added = 0  # bytes queued since the start (see holds_back)
        self._drain_waiters: list[asyncio.Future[None]] = []
        # The loop on which a batch send (_send_scheduled) or a send at the end of the turn
        # (hurry) is pending, if any: a loop that closed before running it does not count.
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        self._hurried_on: asyncio.AbstractEventLoop | None = None
        self._failed: BaseException | None = None
        self._closed = False
        self._next_blob_id = 1
        self._factories: dict[int, tuple[int, object]] = {}
        self._prefixes = PrefixCache(origin)
        self._ts = TsFormat()
        self._nonce = nonce
        # per blob name (a few, named by the recorders' code): its marker, and encoded
        self._markers: dict[str, tuple[str, bytes]] = {}

    @property
    def failed(self) -> BaseException | None:
        return self._failed

    # The helpers below are module functions, called directly by the compiled methods: a
    # method call on self would go through Python (RemoteLedger is an interpreted subclass).
    def _check(self) -> None:
        _check(self)

    def _send(self, kind: int, payload: bytes) -> None:
        with self._lock:
            _check(self)
            _buffer(self, kind, payload)

    def _buffer(self, kind: int, payload: bytes) -> None:
        _buffer(self, kind, payload)

    def _send_scheduled(self) -> None:
        with self._lock:
            self._scheduled_on = None
            _send_queued(self)

    def hurry(self) -> None:
        """What is queued goes to the writer process at the end of this turn of the event
        loop, not :data:`SEND_DELAY` after it was queued: a write-ahead sync is coming (a
        transaction block changed something), and the writer handles these entries while
        the block goes on, not after the SYNC arrives (issue 19: the writer's work on a
        tpcb-like block's entries was a quarter of the sync's time at one client)."""
        with self._lock:
            if not self._out or self._writing is not None:
                return
            pending = self._hurried_on
            if pending is not None and not pending.is_closed():
                return  # once per turn
            loop = running_loop()
            if loop is None:
                return
            self._hurried_on = loop
        loop.call_soon(self._send_hurried)

    def _send_hurried(self) -> None:
        with self._lock:
            self._hurried_on = None
            _send_queued(self)

    def _send_out(self) -> None:
        _send_out(self)

    def _deliver(self) -> None:
        _deliver(self)

    def _writable(self) -> None:
        """The socket has room (the loop's writer callback)."""
        with self._lock:
            _writable(self)

    def _release(self) -> None:
        _release(self)

    # -- backpressure (see the module docstring) ---------------------------------------------

    @property
    def backlog(self) -> int:
        """Bytes appended and not yet taken by the socket."""
        return self._out_size + len(self._rest) - self._rest_at

    @property
    def added(self) -> int:
        """Bytes queued since the start (a shell reads it before handing a read to a core)."""
        return self._added

    def holds_back(self, before: int) -> bool:
        """Whether the side whose read queued everything since :attr:`added` was ``before``
        must stop being read until :meth:`drained`: the channel is congested and the read was
        bulk, or the backlog is over :data:`LIMIT` and the read queued anything."""
        backlog = self._out_size + len(self._rest) - self._rest_at
        if backlog < HIGH_WATER:
            return False
        added = self._added - before
        return added >= BULK or (backlog >= LIMIT and added > 0)

    def drained(self) -> asyncio.Future[None]:
        """A future of the running loop, done once the backlog is at most :data:`LOW_WATER`
        (at once if it is), or once the sender failed (the next append raises)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._failed is not None or _backlog(self) <= LOW_WATER:
                future.set_result(None)
            else:
                self._drain_waiters.append(future)
        return future

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
            marked = dict(data)
            for k in blobs:
                marked[k] = _marker(self, k)[0]
            data = marked
        pending = _only_pending(blobs)
        if not blobs or pending is not None:
            with self._lock:
                _check(self)
                prefix = self._prefixes.get(session, identity, account, target)
                if pending is None:
                    _append_locked(self, prefix, type, data, trusted, None, None)
                else:
                    _append_locked(self, prefix, type, data, trusted, pending[0], pending[1])
            return
        assert blobs is not None
        with self._lock:
            _check(self)
            prefix = self._prefixes.get(session, identity, account, target)
            seq, ts_us, raw, seq_at, ts_at = _stamped(self, prefix, type, data, trusted)
            refs = []
            for k, sink in blobs.items():
                if isinstance(sink, PendingBlob):
                    # open, write and close in one go: no sink object for a small result
                    blob_id = self._next_blob_id
                    self._next_blob_id = blob_id + 1
                    factory_id = _factory_id(self, sink.transform)
                    _buffer(self, OPEN, U64.pack(blob_id) + U32.pack(factory_id))
                    _buffer(self, WRITE, U64.pack(blob_id) + sink.data)
                else:
                    assert isinstance(sink, RemoteBlob)
                    blob_id = sink.id
                    if not sink.closed:
                        sink._state = "closed"
                marker = _marker(self, k)[1]
                start = raw.find(marker)
                refs.append(HOLE.pack(blob_id, start, start + len(marker)))
            body = HOLES_COUNT.pack(len(refs)) + b"".join(refs) + raw
            if self._unnumbered:
                _buffer(self, UNNUMBERED_BLOBS, OPEN_HEAD.pack(ts_us, seq_at, ts_at) + body)
            else:
                _buffer(self, ENTRY_BLOBS, ENTRY_HEAD.pack(seq, ts_us) + body)
            _stamp_done(self, seq, ts_us)

    def session_entries(
        self,
        session: str | None,
        identity: Mapping[str, Any] | None,
        account: str | None,
        target: str | None,
    ) -> SessionEntries:
        """What appends the entries of one session; see :class:`SessionEntries`."""
        with self._lock:
            return SessionEntries(self, self._prefixes.get(session, identity, account, target))

    def open_blob(self, transform: Any = None) -> RemoteBlob:
        """A blob written by the child; ``transform`` must be a picklable
        :class:`TransformFactory` (a plain function cannot cross into the child)."""
        if transform is not None and not hasattr(transform, "new"):
            raise LedgerError("a remote ledger takes transform factories, not functions")
        with self._lock:
            _check(self)
            factory_id = _factory_id(self, transform)
            blob_id = self._next_blob_id
            self._next_blob_id = blob_id + 1
            sink = RemoteBlob(self, blob_id)
            _buffer(self, OPEN, U64.pack(blob_id) + U32.pack(factory_id))
            return sink

    def put_blob(self, data: bytes) -> str:
        data = bytes(data)
        self._send(PUT, data)
        return hashlib.sha256(data).hexdigest()


def _check(sender: LedgerSender) -> None:
    if sender._failed is not None:
        raise LedgerUnavailable(f"ledger writer has stopped: {sender._failed}")
    if sender._closed:
        raise LedgerUnavailable("ledger writer is closed")


@final
class SessionEntries:
    """Appends the entries of one session (the same session, identity, account and target
    each time) through ``sender``, as :meth:`LedgerSender.append` with ``trusted=True``
    would: a session's recorder appends two or more entries per statement, and here each
    costs a native call, the encoding of its data, and the framing (its shared parts were
    encoded once, in ``prefix``)."""

    def __init__(self, sender: LedgerSender, prefix: EntryPrefix) -> None:
        self.sender = sender
        self.prefix = prefix

    def append(
        self,
        type: str,
        data: dict[str, Any],
        blob_name: str | None = None,
        blob: PendingBlob | None = None,
    ) -> None:
        """Append an entry whose ``data`` holds only canonical types (``trusted``). With a
        ``blob``, ``data[blob_name]`` is set to where the blob's reference goes: the caller
        hands ``data`` over."""
        sender = self.sender
        if blob_name is not None:
            data[blob_name] = _marker(sender, blob_name)[0]
        with sender._lock:
            _check(sender)
            _append_locked(sender, self.prefix, type, data, True, blob_name, blob)


def _stamped(
    sender: LedgerSender, prefix: EntryPrefix, type: str, data: Mapping[str, Any], trusted: bool
) -> tuple[int, int, bytes, int, int]:
    """Holding ``_lock``: the next entry's seq, its ts (µs, never going back), its bytes, and
    (unnumbered) where its seq digits and its ts go in them."""
    ts_us = round(sender._clock() * 1_000_000)
    if ts_us < sender._last_ts_us:
        ts_us = sender._last_ts_us
    seq = sender._next_seq
    ts = sender._ts.format(ts_us)
    if sender._unnumbered:
        raw, seq_at, ts_at = prefix.encode_unnumbered(ts, type, data, trusted=trusted)
        return seq, ts_us, raw, seq_at, ts_at
    return seq, ts_us, prefix.encode(seq, ts, type, data, trusted=trusted), 0, 0


def _stamp_done(sender: LedgerSender, seq: int, ts_us: int) -> None:
    """The entry stamped ``seq`` and ``ts_us`` is queued (holding ``_lock``)."""
    sender._next_seq = seq + 1
    sender._last_ts_us = ts_us


def _append_locked(
    sender: LedgerSender,
    prefix: EntryPrefix,
    type: str,
    data: Mapping[str, Any],
    trusted: bool,
    blob_name: str | None,
    blob: PendingBlob | None,
) -> None:
    """Holding ``_lock``: stamp, encode and queue an entry with no blob, or with one pending
    blob (``data[blob_name]`` is its marker) that travels inside it."""
    seq, ts_us, raw, seq_at, ts_at = _stamped(sender, prefix, type, data, trusted)
    if blob is None or blob_name is None:
        out = sender._out
        if sender._unnumbered:
            size = _OPEN_HEAD_SIZE + len(raw)
            out.append(_FRAMED_UNNUMBERED(size, UNNUMBERED, ts_us, seq_at, ts_at))
        else:
            size = _ENTRY_HEAD_SIZE + len(raw)
            out.append(_FRAMED_ENTRY(size, ENTRY, seq, ts_us))
        out.append(raw)
    else:
        # The common case (a small result): the blob travels inside its entry.
        # (before taking _out: sending a new factory may send what is queued, a new list)
        factory_id = _factory_id(sender, blob.transform)
        out = sender._out
        # Where the writer puts the blob's reference (see LedgerWriter._splice).
        marker = _marker(sender, blob_name)[1]
        start = raw.find(marker)
        end, data_size = start + len(marker), len(blob.data)
        if sender._unnumbered:
            size = _UNNUMBERED_BLOB_HEAD_SIZE + data_size + len(raw)
            out.append(
                _FRAMED_UNNUMBERED_BLOB(
                    size, UNNUMBERED_BLOB, ts_us, seq_at, ts_at, factory_id, start, end, data_size
                )
            )
        else:
            size = _ENTRY_BLOB_HEAD_SIZE + data_size + len(raw)
            out.append(
                _FRAMED_ENTRY_BLOB(size, ENTRY_BLOB, seq, ts_us, factory_id, start, end, data_size)
            )
        out.append(blob.data)
        out.append(raw)
    sender._out_size += size + _HEAD_SIZE
    sender._added += size + _HEAD_SIZE
    _stamp_done(sender, seq, ts_us)
    _queued(sender)


def _buffer(sender: LedgerSender, kind: int, payload: bytes) -> None:
    """Queue a message (holding ``_lock``); send now, or shortly from the running event
    loop, so that one ``send`` carries many entries."""
    out = sender._out
    out.append(HEAD.pack(len(payload), kind))
    out.append(payload)
    sender._out_size += len(payload) + HEAD.size
    sender._added += len(payload) + HEAD.size
    _queued(sender)


def _queued(sender: LedgerSender) -> None:
    """After a message was queued: send now, or make sure a send is scheduled."""
    if sender._writing is not None:
        return  # the socket is full: the writer callback sends this too, in order
    if sender._out_size >= SEND_AT:
        _send_out(sender)
        return
    pending = sender._scheduled_on
    if pending is not None and not pending.is_closed():
        return  # the send scheduled carries this too (from its loop or from another thread)
    # (Asked only now: in Python 3.11 each get_running_loop() is a getpid system call.)
    loop = running_loop()
    if loop is None:
        _deliver(sender)
        return
    sender._scheduled_on = loop
    loop.call_later(SEND_DELAY, sender._send_scheduled)


def _backlog(sender: LedgerSender) -> int:
    return sender._out_size + len(sender._rest) - sender._rest_at


def _gone(sender: LedgerSender, exc: OSError) -> LedgerUnavailable:
    """The socket refused a send: the writer is gone. Keep the failure, drop what is queued
    (it can never be delivered), and return the error for the caller to raise."""
    if sender._failed is None:
        sender._failed = LedgerUnavailable(f"the ledger writer process is gone ({exc})")
    sender._out = []
    sender._out_size = 0
    sender._rest = b""
    sender._rest_at = 0
    return LedgerUnavailable(f"ledger writer has stopped: {sender._failed}")


def _send_queued(sender: LedgerSender) -> None:
    """Holding ``_lock``, from the loop (a scheduled or hurried send): what is queued goes
    out, unless the sender has failed. A failure is kept in ``_failed``: the next append
    raises it to its caller."""
    if sender._failed is None and sender._out:
        try:
            _send_out(sender)
        except LedgerUnavailable:
            pass


def _send_out(sender: LedgerSender) -> None:
    """Holding ``_lock``: hand what is queued to the socket. From a running event loop
    without blocking: what the socket does not take now waits for room, with everything
    queued after it (the writer callback); without a loop, blocking. Raises
    LedgerUnavailable (the failure kept) if the writer is gone."""
    if sender._writing is not None:
        return  # bytes ahead of these wait for room: these go after them
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        _deliver(sender)
        return
    if not sender._out:
        return
    data = b"".join(sender._out)
    sender._out = []
    sender._out_size = 0
    try:
        sent = sender._nb.send(data)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        raise _gone(sender, exc) from None
    if sent < len(data):
        sender._rest = data
        sender._rest_at = sent
        loop.add_writer(sender._nb.fileno(), sender._writable)
        sender._writing = loop


def _writable(sender: LedgerSender) -> None:
    """Holding ``_lock``, on the loop: the socket has room. Send the rest of the partly
    sent buffer, then what was queued after it, until the socket is full again or all is
    sent (then stop watching); wake the :meth:`~LedgerSender.drained` waiters once the
    backlog is down to :data:`LOW_WATER`."""
    loop = sender._writing
    if loop is None:
        return
    try:
        if sender._failed is not None:
            raise _gone(sender, OSError("failed"))
        while True:
            if sender._rest_at >= len(sender._rest):
                if not sender._out:
                    break
                sender._rest = b"".join(sender._out)
                sender._rest_at = 0
                sender._out = []
                sender._out_size = 0
            rest = memoryview(sender._rest)[sender._rest_at :]
            try:
                sent = sender._nb.send(rest)
            except BlockingIOError:
                sent = 0
            sender._rest_at += sent
            if sent < len(rest):
                break  # full again
    except OSError as exc:
        _gone(sender, exc)
    except LedgerUnavailable:
        pass
    if sender._rest_at >= len(sender._rest) and not sender._out:
        sender._rest = b""
        sender._rest_at = 0
        _unwatch(loop, sender._nb.fileno())
        sender._writing = None
    if sender._failed is not None or _backlog(sender) <= LOW_WATER:
        _wake(sender)


def _wake(sender: LedgerSender) -> None:
    """On the loop: settle the drained waiters (a cancelled one is skipped)."""
    waiters = sender._drain_waiters
    sender._drain_waiters = []
    for future in waiters:
        if not future.done():
            future.set_result(None)


def _deliver(sender: LedgerSender) -> None:
    """Holding ``_lock``: everything queued (a partly sent buffer first) into the socket,
    blocking until it has taken it all. Raises LedgerUnavailable if the writer is gone.

    (Called from a thread while the loop's writer callback is armed, it leaves the callback
    armed: the callback finds nothing left, stops watching and wakes the waiters.)"""
    rest = memoryview(sender._rest)[sender._rest_at :]
    data = b"".join(sender._out)
    sender._out = []
    sender._out_size = 0
    sender._rest = b""
    sender._rest_at = 0
    try:
        if len(rest):
            sender._sock.sendall(rest)
        if data:
            sender._sock.sendall(data)
    except OSError as exc:
        raise _gone(sender, exc) from None
    loop = sender._writing
    if loop is not None and running_loop() is loop:
        _unwatch(loop, sender._nb.fileno())
        sender._writing = None
        _wake(sender)


def _unwatch(loop: Any, fd: int) -> None:
    """``loop.remove_writer(fd)``, through Any: typed as returning bool, and compiled that
    would be checked, but uvloop's returns None."""
    loop.remove_writer(fd)


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _release(sender: LedgerSender) -> None:
    """Before the socket is closed (everything delivered): the loop stops watching it, and
    the loop's handle is closed. From another thread than the loop's, the loop is asked and
    waited for (the fd must not be closed while the loop polls it)."""
    with sender._lock:
        loop = sender._writing
        sender._writing = None
        nb = sender._nb
        fd = nb.fileno()
    stop_watching(loop, fd, _unwatch)
    nb.close()


def stop_watching(
    loop: asyncio.AbstractEventLoop | None, fd: int, unwatch: Callable[[Any, int], None]
) -> None:
    """``unwatch(loop, fd)`` (a remove_writer or remove_reader) before ``fd`` is closed: at
    once on the loop's own thread or when it does not run; from another thread, the loop is
    asked and waited for (the fd must not be closed while the loop polls it)."""
    if loop is None or fd < 0 or loop.is_closed():
        return
    if running_loop() is loop or not loop.is_running():
        unwatch(loop, fd)
        return
    done = threading.Event()

    def stop() -> None:
        unwatch(loop, fd)
        done.set()

    try:
        loop.call_soon_threadsafe(stop)
    except RuntimeError:  # closed meanwhile
        return
    done.wait(10)


def _only_pending(blobs: Mapping[str, Any] | None) -> tuple[str, PendingBlob] | None:
    """The name and blob of ``blobs`` if it holds one blob only, a pending one."""
    if blobs is None or len(blobs) != 1:
        return None
    for name, blob in blobs.items():
        if isinstance(blob, PendingBlob):
            return name, blob
    return None


def _marker(sender: LedgerSender, name: str) -> tuple[str, bytes]:
    """What stands for blob ``name``'s reference in an entry until the writer process
    puts it there (as :meth:`LedgerWriter._marker`), and its encoding in the entry."""
    known = sender._markers.get(name)
    if known is None:
        marker = f"\x00blob {sender._nonce} {name}"
        known = sender._markers[name] = (marker, encode_trusted(marker))
    return known


def _factory_id(sender: LedgerSender, transform: object) -> int:
    """The number naming ``transform`` in the child (sent there the first time; holding
    ``_lock``); 0 for none."""
    if transform is None:
        return 0
    known = sender._factories.get(id(transform))
    if known is not None:
        return known[0]
    if not hasattr(transform, "new"):
        raise LedgerError("a remote ledger takes transform factories, not functions")
    factory_id = len(sender._factories) + 1
    try:
        blob = pickle.dumps(transform)
    except Exception as exc:
        raise LedgerError(f"transform factory cannot be sent: {exc}") from None
    # Keep the factory alive: its id() names it.
    sender._factories[id(transform)] = (factory_id, transform)
    _buffer(sender, FACTORY, U32.pack(factory_id) + blob)
    return factory_id


class RemoteBlob:
    """A blob written by the writer process (see :class:`~appliance.ledger.BlobSink`)."""

    def __init__(self, ledger: LedgerSender, blob_id: int) -> None:
        self._ledger = ledger
        self.id = blob_id
        self._state = "open"

    @property
    def closed(self) -> bool:
        return self._state != "open"

    def write(self, chunk: bytes) -> None:
        if self._state != "open":
            raise LedgerError(f"write to a {self._state} blob sink")
        self._ledger._send(WRITE, U64.pack(self.id) + bytes(chunk))

    def close(self) -> None:
        if self._state == "open":
            self._state = "closed"
            self._ledger._send(CLOSE, U64.pack(self.id))

    def abort(self) -> None:
        if self._state == "open":
            self._state = "aborted"
            self._ledger._send(ABORT, U64.pack(self.id))
