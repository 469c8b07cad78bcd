"""Loading the recorded conversations in ``data/`` (made by ``capture.py``) and helpers
that replay them: a reference splitter (slow, obviously correct) to compare the framer
with, and ways to cut a byte stream into chunks."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).parent / "data"
NAMES = ["psql_trust", "psycopg_trust", "asyncpg_trust", "psql_scram", "psql_md5", "psql_clear"]


@dataclass(frozen=True)
class Transcript:
    name: str
    user: str
    password: str
    chunks: tuple[tuple[str, bytes], ...]

    def stream(self, direction: str) -> bytes:
        return b"".join(data for d, data in self.chunks if d == direction)

    def pieces(self, direction: str) -> list[bytes]:
        return [data for d, data in self.chunks if d == direction]


def load(name: str) -> Transcript:
    doc = json.loads((DATA / f"{name}.json").read_text())
    chunks = tuple((d, base64.b64decode(b)) for d, b in doc["chunks"])
    return Transcript(doc["name"], doc["user"], doc["password"], chunks)


def startup_length(stream: bytes) -> int:
    """Bytes of untyped startup-phase packets at the head of a client stream."""
    pos = 0
    while True:
        length = int.from_bytes(stream[pos : pos + 4], "big")
        code = int.from_bytes(stream[pos + 4 : pos + 8], "big")
        pos += length
        if code >> 16 == 3:
            return pos


def reference_split(stream: bytes) -> list[tuple[int, bytes]]:
    """Typed messages of a stream as (type, whole frame): the slow, obvious way."""
    out = []
    pos = 0
    while pos < len(stream):
        length = int.from_bytes(stream[pos + 1 : pos + 5], "big")
        out.append((stream[pos], stream[pos : pos + 1 + length]))
        pos += 1 + length
    assert pos == len(stream)
    return out


def bytewise(pieces: list[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        for i in range(len(piece)):
            yield piece[i : i + 1]


def resplit(pieces: list[bytes], size: int) -> Iterator[bytes]:
    data = b"".join(pieces)
    for i in range(0, len(data), size):
        yield data[i : i + size]
