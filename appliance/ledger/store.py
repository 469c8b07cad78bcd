"""The ledger directory: its layout, and reading what is in it.

Layout (all of it append-only or written once, except ``checkpoint``, which is replaced
atomically, ``entries.journal``, overwritten in place, and ``index.sqlite``, which is
derived)::

    DIR/entries.log       framed entries (see _framing), record i holds entry seq i
    DIR/checkpoints.log   framed history of every signed checkpoint note, oldest first, so a
                          rollback or a fork (two roots for one size) leaves evidence
    DIR/checkpoint        the latest signed checkpoint note (temp file, fsync, rename, fsync dir)
    DIR/blobs/ab/ab12...  content-addressed blobs, named by SHA-256 of their content
    DIR/blobs/tmp/        blobs being written (removed on open)
    DIR/recovered/        torn tails copied aside by recovery before truncation
    DIR/entries.journal   the sync journal: entries.log's bytes made durable by write-ahead
                          syncs since its last fsync, overwritten in place (ledger.journal;
                          made on first use, put back into entries.log by the writer on open)
    DIR/index.sqlite      query index, rebuilt from entries.log at any time
    DIR/lock              held (flock) by the one writer

This mirrors C2SP tlog-tiles in spirit (immutable data, one mutable checkpoint) while staying a
single-writer local file format; shipping to WORM storage copies the same objects.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from appliance.ledger._framing import CHECKPOINT_MAGIC, ENTRY_MAGIC, FrameScanner, MappedFile
from appliance.ledger.checkpoint import Checkpoint, open_checkpoint, parse_checkpoint_text
from appliance.ledger.entries import Entry, MalformedEntry, parse_entry
from appliance.ledger.errors import LedgerError, TamperError
from appliance.signing.keys import VerifierKey
from appliance.signing.note import MalformedNote, parse_note

ENTRIES = "entries.log"
HISTORY = "checkpoints.log"
CHECKPOINT = "checkpoint"
BLOBS = "blobs"
BLOB_TMP = "tmp"
RECOVERED = "recovered"
INDEX = "index.sqlite"
LOCK = "lock"


def require_ledger(directory: Path) -> Path:
    """``directory`` if it holds a ledger; else raise LedgerError (exit 2)."""
    if not (directory / ENTRIES).is_file():
        raise LedgerError(f"no ledger in {directory} ({ENTRIES} not found)")
    return directory


def blob_path(directory: Path, sha256: str) -> Path:
    return directory / BLOBS / sha256[:2] / sha256


class BlobReader:
    """Read access to the blob store of one ledger."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, sha256: str) -> Path:
        return blob_path(self.directory, sha256)

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def get(self, sha256: str) -> bytes | None:
        """The blob's bytes, or None if it is not in the store."""
        return self.read(sha256) if self.exists(sha256) else None

    def read(self, sha256: str) -> bytes:
        """The blob's bytes; raise LedgerError if it is missing."""
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            raise LedgerError(f"blob {sha256} is missing") from None


def iter_frames_of_entries(directory: Path) -> Iterator[tuple[int, bytes]]:
    """(seq, payload) of every complete, checksummed record of ``entries.log`` in file order.

    Stops silently at a record cut short at the end of the file (a writer may be appending);
    raises TamperError for damage anywhere else.
    """
    with MappedFile(directory / ENTRIES) as mf:
        scanner = FrameScanner(mf.data, ENTRY_MAGIC)
        for frame in scanner:
            yield frame.seq, frame.payload
        if scanner.damage and not scanner.damage.at_eof:
            raise TamperError(
                f"{directory / ENTRIES}: {scanner.damage.reason} at byte {scanner.damage.offset}"
                " (run `appliance ledger verify`)"
            )


def iter_entries(directory: Path, *, start: int = 0) -> Iterator[Entry]:
    """Every entry from ``start`` on, parsed. Raises TamperError on damage (see above)."""
    expected = 0
    for seq, payload in iter_frames_of_entries(directory):
        if seq != expected:
            raise TamperError(f"record {expected} of {ENTRIES} says seq {seq}")
        expected += 1
        if seq < start:
            continue
        try:
            obj = parse_entry(payload)
        except MalformedEntry as exc:
            raise TamperError(f"entry {seq} is malformed: {exc.reason}") from None
        yield Entry(seq, payload, obj)


def read_history(directory: Path) -> tuple[list[str], FrameScanner]:
    """The notes of ``checkpoints.log`` in order, and the scanner (for its ``damage``)."""
    notes: list[str] = []
    with MappedFile(directory / HISTORY) as mf:
        scanner = FrameScanner(mf.data, CHECKPOINT_MAGIC)
        for frame in scanner:
            try:
                notes.append(frame.payload.decode("utf-8"))
            except UnicodeDecodeError:
                notes.append(frame.payload.decode("utf-8", "replace"))
    return notes, scanner


def unverified_checkpoint(note: str) -> Checkpoint:
    """Parse a checkpoint note without checking its signatures (for messages and layout)."""
    text, _ = parse_note(note)
    cp = parse_checkpoint_text(text)
    return Checkpoint(cp.origin, cp.size, cp.root, cp.extensions, note)


def latest_checkpoint(
    directory: Path, verifiers: Sequence[VerifierKey] | None = None
) -> Checkpoint | None:
    """The checkpoint in ``DIR/checkpoint``, or None if there is none yet.

    With ``verifiers`` its signature is checked (raises InvalidSignature / MalformedNote);
    without, it is only parsed: use that for display, never for trust.
    """
    try:
        note = (directory / CHECKPOINT).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerError(f"cannot read {directory / CHECKPOINT}: {exc}") from None
    if verifiers is not None:
        return open_checkpoint(note, verifiers)
    try:
        return unverified_checkpoint(note)
    except MalformedNote as exc:
        raise LedgerError(f"{directory / CHECKPOINT} is malformed: {exc}") from None


def check_blob(directory: Path, sha256: str) -> tuple[str | None, int]:
    """(None if the blob is present and hashes to its name, else what is wrong; bytes read)."""
    h = hashlib.sha256()
    read = 0
    try:
        with blob_path(directory, sha256).open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                read += len(chunk)
    except FileNotFoundError:
        return "missing from the blob store", read
    except OSError as exc:
        return f"cannot be read: {exc}", read
    if h.hexdigest() != sha256:
        return f"content was changed (it hashes to {h.hexdigest()})", read
    return None, read


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may take part of it). Not compiled on
    purpose: mypyc's build of the memoryview loop below wrote a whole buffer twice."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    finally:
        view.release()


def fsync_dir(path: Path, fsync: Callable[[int], None] = os.fsync) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, fsync: Callable[[int], None] = os.fsync) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent, fsync)
