"""Framed records, the unit of the ledger's local files.

One record is::

    magic (4 bytes) | seq (uint64, big endian) | length (uint32, big endian) | payload | crc32

where crc32 (zlib's, big endian) covers the header and the payload. The magic says which file a
record belongs to (entries or checkpoint history); ``seq`` repeats the entry's index so that a
reordered or duplicated record is visible before any JSON is parsed; the checksum tells a torn
or bit-rotted record from a good one. The checksum is not a security measure: the Merkle tree
and the signed checkpoints are.

Compiled with mypyc (``appliance._pure.HOT_MODULES``): the ledger writer process frames every
entry here.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

ENTRY_MAGIC = b"ALE1"
CHECKPOINT_MAGIC = b"ALC1"
HEADER = struct.Struct(">4sQI")
TRAILER = struct.Struct(">I")
OVERHEAD = HEADER.size + TRAILER.size
MAX_PAYLOAD = 64 * 1024 * 1024


def encode_frame(magic: bytes, seq: int, payload: bytes) -> bytes:
    head = HEADER.pack(magic, seq, len(payload))
    return head + payload + TRAILER.pack(zlib.crc32(payload, zlib.crc32(head)))


class Frame(NamedTuple):
    offset: int
    seq: int
    payload: bytes
    end: int


@dataclass(frozen=True)
class Damage:
    """Where scanning stopped and why. ``at_eof`` is true when the bad record is the last
    thing in the file (a record cut short, or the final record's checksum failing), which is
    what an interrupted append leaves behind."""

    offset: int
    reason: str
    at_eof: bool


class FrameScanner:
    """Iterate over the good records of a buffer; afterwards ``damage`` says why it stopped
    early (None if the buffer ended cleanly on a record boundary)."""

    def __init__(
        self, buf: bytes | mmap.mmap, magic: bytes, start: int = 0, *, check_crc: bool = True
    ) -> None:
        self._check_crc = check_crc
        self._buf = buf
        self._magic = magic
        self._start = start
        self.damage: Damage | None = None
        self.end = start

    def __iter__(self) -> Iterator[Frame]:
        buf, magic = self._buf, self._magic
        size = len(buf)
        pos = self._start
        unpack = HEADER.unpack_from
        hsize = HEADER.size
        crc32 = zlib.crc32
        unpack_crc = TRAILER.unpack_from
        check_crc = self._check_crc
        while pos < size:
            if size - pos < hsize:
                self.damage = Damage(pos, "record header cut short", True)
                return
            m, seq, length = unpack(buf, pos)
            if m != magic:
                self.damage = Damage(pos, "bad record magic", False)
                return
            if length > MAX_PAYLOAD:
                self.damage = Damage(pos, f"record length {length} exceeds the maximum", False)
                return
            end = pos + hsize + length + 4
            if end > size:
                self.damage = Damage(pos, "record cut short", True)
                return
            payload = buf[pos + hsize : end - 4]
            if (
                check_crc
                and crc32(payload, crc32(buf[pos : pos + hsize])) != unpack_crc(buf, end - 4)[0]
            ):
                self.damage = Damage(pos, "record checksum mismatch", end == size)
                return
            yield Frame(pos, seq, payload, end)
            pos = end
            self.end = pos


class MappedFile:
    """A read-only view of a file as it is now (empty if it does not exist or is empty)."""

    def __init__(self, path: Path) -> None:
        self._map: mmap.mmap | None = None
        self.data: bytes | mmap.mmap = b""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            if os.fstat(fd).st_size > 0:
                self._map = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
                self.data = self._map
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        self.data = b""

    def __enter__(self) -> MappedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
