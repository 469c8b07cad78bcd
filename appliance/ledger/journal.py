"""The sync journal: write-ahead syncs made durable in a file overwritten in place (issue 19).

Where it sits: :class:`~appliance.ledger.writer.LedgerWriter` makes what it wrote durable in
two ways. A checkpoint fsyncs ``entries.log`` itself (design invariant 4: a signed checkpoint
covers only entries fsynced there). A write-ahead sync (:meth:`LedgerWriter.durable
<appliance.ledger.writer.LedgerWriter.durable>`: a statement that may change a target waits
for it) copies instead the log's bytes written since the last sync or fsync into this
journal, ``entries.journal``, and syncs that with ``fdatasync``. Why: appending to
``entries.log`` grows the file, so its fsync commits the file system's own journal (ext4's
jbd2) besides the data, 140-200 µs on the development VM and more while the other core is
busy; the journal file is written full of zeros once, on first use, and afterwards only
overwritten within that length, so its ``fdatasync`` changes no size and no block: it
writes the data and flushes the disk's cache, 85-95 µs. A sync whose bytes do not fit, or
that must cover new blob files, fsyncs the log (and the blobs) as before.

Format: records one after another from byte 0, each a header -- magic ``ALJ1``, base u64,
offset u64, length u32, CRC-32 u32 (zlib's, over base, offset, length and the bytes) --
then ``length`` bytes, the log's bytes at ``offset``. ``base`` is the log's size at its last
fsync: the records written since all carry it and follow one another (the first starts at
``base``, each next one where the one before ends). After the log's next fsync they are of
no more use, and the next record goes to byte 0 with the new base; whatever follows it in
the file from before is not read (another base, or not where the chain goes on).

What a crash of the machine leaves (a killed process loses nothing the kernel holds): the
log as last fsynced, plus any later bytes the kernel had written back, and the journal's
chain up to the last record whose ``fdatasync`` returned (a record the crash tore fails its
checksum, and the chain ends before it). :func:`replay`, run by the writer when it next opens
the directory and before recovery, writes the chain's bytes back into the log at their
offsets, fsyncs the log and clears the journal: recovery then finds every entry a sync
acknowledged. A reader that does not open the writer (``ledger verify`` of a copy) sees the
log alone, without those entries (``ledger verify`` and ``fsck`` say so,
:func:`notice`); they are after the last checkpoint (unsigned) anyway, and the daemon's
next start puts them back and signs them.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from appliance.ledger.store import ENTRIES, fsync_dir

__all__ = ["CAPACITY", "JOURNAL", "Journal", "chain", "notice", "replay"]

JOURNAL = "entries.journal"
# The journal's length, written with zeros on first use. A sync of more bytes than fit, or
# than are left after the records since the log's last fsync, fsyncs the log instead (a
# checkpoint fsyncs it at least once a second by default, and starts the journal over).
CAPACITY = 4 << 20
MAGIC = b"ALJ1"
HEADER = struct.Struct("!4sQQII")  # magic, base, offset, length, crc32


def _record(base: int, offset: int, data: bytes | bytearray) -> bytes:
    fields = HEADER.pack(MAGIC, base, offset, len(data), 0)[4:24]
    crc = zlib.crc32(data, zlib.crc32(fields))
    return b"".join((MAGIC, fields, crc.to_bytes(4, "big"), data))


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> int:
    """Write all of ``data`` at ``offset`` (``os.pwrite`` may take part of it); returns
    where it ends."""
    view = memoryview(data)
    try:
        while view:
            done = os.pwrite(fd, view, offset)
            view, offset = view[done:], offset + done
    finally:
        view.release()
    return offset


def chain(data: bytes) -> list[tuple[int, bytes]]:
    """The records of ``data`` (a journal's bytes) that replay: ``(offset, bytes)`` from byte
    0, as long as each is whole, its checksum holds, it carries the first one's base and
    starts where the one before ends (the first, at its base)."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    base = expect = -1
    while pos + HEADER.size <= len(data):
        magic, b, offset, length, crc = HEADER.unpack_from(data, pos)
        start = pos + HEADER.size
        end = start + length
        if magic != MAGIC or end > len(data) or length == 0:
            break
        payload = data[start:end]
        if zlib.crc32(payload, zlib.crc32(data[pos + 4 : pos + 24])) != crc:
            break
        if base < 0:
            if offset != b:
                break
            base = b
        elif b != base or offset != expect:
            break
        out.append((offset, payload))
        expect = offset + length
        pos = end
    return out


def notice(directory: Path) -> str | None:
    """What the journal holds that the log does not, in one sentence for ``ledger verify``
    (a warning) and ``fsck`` (an action), or None: bytes past the log's end that
    :func:`replay` would put back, or a chain it will not replay because the log ends before
    the chain's base (the log lost bytes that were fsynced: damage from outside)."""
    try:
        records = chain((directory / JOURNAL).read_bytes())
        size = (directory / ENTRIES).stat().st_size
    except FileNotFoundError:
        return None
    if not records:
        return None
    base, (offset, last) = records[0][0], records[-1]
    if size < base:
        return (
            f"{JOURNAL} holds {offset + len(last) - base} bytes of {ENTRIES} from byte {base},"
            f" but {ENTRIES} ends at byte {size}: it lost bytes that were fsynced, and the"
            " journal is not replayed over the gap"
        )
    held = offset + len(last) - size
    if held <= 0:
        return None
    return (
        f"{JOURNAL} holds {held} bytes of {ENTRIES} past its end, made durable by write-ahead"
        " syncs before the machine stopped: the writer puts them back on open"
    )


def replay(directory: Path, fsync: Callable[[int], None] = os.fsync) -> int:
    """Put the journal's chain back into ``directory``'s log (at its offsets; what is there
    already is the same bytes), fsync the log, clear the journal. Returns how many bytes of
    the log the chain covered (0: no journal, or nothing in it to replay).

    Only the writer calls this, holding the directory's lock, before recovery. A log shorter
    than the chain's base (it lost bytes that were fsynced: damage from outside) is left as
    it is, and so is the journal: recovery reports what it finds."""
    path = directory / JOURNAL
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    records = chain(data)
    if not records:
        return 0
    fd = os.open(directory / ENTRIES, os.O_WRONLY | os.O_CREAT, 0o640)
    try:
        if os.fstat(fd).st_size < records[0][0]:
            return 0
        for offset, payload in records:
            _pwrite_all(fd, payload, offset)
        fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(HEADER.size), 0)  # the chain is in the log now: never again
        fsync(fd)
    finally:
        os.close(fd)
    return sum(len(payload) for _, payload in records)


class Journal:
    """The writer's side: records appended and synced; the file made on first use.

    ``datasync`` makes a record durable (``os.fdatasync``; a test's replacement injects
    faults). Any OSError reaches the writer, which stops for good, as for a failed fsync."""

    def __init__(
        self,
        path: Path,
        datasync: Callable[[int], None] = os.fdatasync,
        fsync: Callable[[int], None] = os.fsync,
        capacity: int = CAPACITY,
    ) -> None:
        self.path = path
        self.capacity = capacity
        self._datasync = datasync
        self._fsync = fsync
        self._fd: int | None = None
        self._pos = 0

    def fits(self, length: int) -> bool:
        """Whether a record of ``length`` bytes fits after those since the last reset."""
        return self._pos + HEADER.size + length <= self.capacity

    def append(self, base: int, offset: int, data: bytes | bytearray) -> None:
        """Write the log's ``data`` at ``offset`` (``base``: the log's size at its last
        fsync) as the next record, and return once it is durable."""
        fd = self._fd if self._fd is not None else self._open()
        end = _pwrite_all(fd, _record(base, offset, data), self._pos)
        self._datasync(fd)
        self._pos = end

    def reset(self) -> None:
        """The log was fsynced: the next record starts the journal over."""
        self._pos = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        """Open the file, written with zeros to its full length (and fsynced with its
        directory) unless it already is that long: only overwritten afterwards."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            if os.fstat(fd).st_size != self.capacity:
                os.ftruncate(fd, 0)
                zeros = bytes(1 << 20)
                for at in range(0, self.capacity, len(zeros)):
                    _pwrite_all(fd, zeros[: self.capacity - at], at)
                self._fsync(fd)
                fsync_dir(self.path.parent, self._fsync)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return fd
