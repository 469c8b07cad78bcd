"""Result rows on their way from a session's recorder to a blob, whatever the protocol.

Where this sits: a protocol's recorder (:mod:`appliance.proxy.pg.recording`,
:mod:`appliance.proxy.mysql.recording`) gathers the raw result frames of a statement in a
:class:`RowsSink` on the event loop, without decoding them; the sink hands them to the
ledger (:class:`~appliance.ledger.api.Ledger`) in few writes, and the ledger writer runs the
protocol's :class:`PartsTransform` on them (in its own process by default): it decodes,
masks and writes the result-blob format of :mod:`appliance.ledger.results`.

Between the two, a chunk is *parts* back to back: a kind byte, a 4-byte big-endian length,
the body. Kinds: :data:`HEADER` (a result set's JSON header), :data:`ROWS` (a run of the
protocol's row frames), :data:`COPY` (a run of COPY data frames) and :data:`COPY_END` (the
end of a COPY, empty). The body of a run is the protocol's own: each protocol frames its
rows so that its transform can split them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson
from mypy_extensions import mypyc_attr

from appliance.ledger.api import Blob, Ledger, PendingBlob

__all__ = [
    "COPY",
    "COPY_END",
    "HEADER",
    "ROWS",
    "PartsTransform",
    "RowsSink",
    "Transforms",
    "parts",
    "transforms",
]

HEADER, ROWS, COPY, COPY_END = b"H", b"D", b"d", b"e"
CHUNK = 256 * 1024  # bytes gathered before the blob is written to
_LEN = struct.Struct("!I")


def parts(chunk: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The ``(kind, body)`` parts of a chunk a :class:`RowsSink` wrote."""
    pos, end = 0, len(chunk)
    while pos + 5 <= end:
        (n,) = _LEN.unpack_from(chunk, pos + 1)
        yield chunk[pos : pos + 1], chunk[pos + 5 : pos + 5 + n]
        pos += 5 + n


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled, and subclassed by protocols
class PartsTransform:
    """The base of a protocol's blob transform (it runs in the ledger writer): a chunk of
    parts in, the blob's JSON lines out. Subclasses implement :meth:`part` and may add to
    the blob's reference with :meth:`annotation` (the masking counts). Made per blob
    from the target's masker (None: nothing is masked)."""

    def __init__(self, masker: Any) -> None:
        self.masker = masker

    def __call__(self, chunk: bytes) -> bytes:
        return b"".join(self.part(kind, body) for kind, body in parts(chunk))

    def part(self, kind: bytes, body: bytes) -> bytes:
        raise NotImplementedError

    def annotation(self) -> Mapping[str, Any]:
        return {}


class Transforms:
    """The :class:`~appliance.ledger.TransformFactory` of one target's result blobs: a new
    ``make(masker)`` per blob, whose :meth:`PartsTransform.annotation` joins the blob's
    reference. Picklable (a class and a masker), so a writer in another process can run it."""

    def __init__(self, make: type[PartsTransform], masker: Any) -> None:
        self.make = make
        self.masker = masker

    def __reduce__(self) -> tuple[Any, ...]:
        # Spelled out: a class compiled by mypyc is pickled only this way.
        return (Transforms, (self.make, self.masker))

    def new(self) -> tuple[Callable[[bytes], bytes], Callable[[], Mapping[str, Any]]]:
        transform = self.make(self.masker)
        return transform, transform.annotation


_FACTORIES: dict[tuple[type[PartsTransform], Any], Transforms] = {}


def transforms(make: type[PartsTransform], masker: Any) -> Transforms:
    """One factory per protocol and target masker (maskers are made once per target), so
    that a writer in another process receives each factory once."""
    key = (make, masker)
    factory = _FACTORIES.get(key)
    if factory is None:
        if len(_FACTORIES) >= 512:  # maskers of configs no longer in use
            _FACTORIES.clear()
        factory = _FACTORIES[key] = Transforms(make, masker)
    return factory


def _framed(kind: bytes, body: bytes) -> bytes:
    """A part of the blob: its kind, its length, its body."""
    return kind + _LEN.pack(len(body)) + body


def header_part(header: Mapping[str, Any]) -> bytes:
    """The blob part that starts a result set (or COPY data) with ``header``."""
    return _framed(HEADER, orjson.dumps(header, option=orjson.OPT_SORT_KEYS))


class RowsSink:
    """A statement's result rows on their way to one blob; bounded by ``limit`` bytes.

    Everything (result headers, row runs, COPY data) is gathered here and handed to the
    ledger in few writes, every :data:`CHUNK` bytes: the blob is opened only then. A result
    that stays smaller (nearly all) never opens one: :meth:`finish` leaves it as a
    :class:`~appliance.ledger.api.PendingBlob` that travels with the response entry, one
    hand-over instead of an open, a write and a close.
    """

    def __init__(self, ledger: Ledger, transform: object, limit: int) -> None:
        self.ledger = ledger
        self.transform = transform
        self.limit = limit
        self.size = 0
        self.truncated = False
        self.blob: Blob | None = None  # once opened
        self.pending: PendingBlob | None = None  # after finish, if never opened
        self._pending = bytearray()  # parts ready for the blob
        self._run = bytearray()  # frames of the current run, not yet a part
        self._kind = ROWS
        self.closed = False

    def header(self, header: Mapping[str, Any], *, copy: bool = False) -> None:
        """Start a result set (or COPY data) in the blob."""
        self.start(header_part(header), copy)

    def start(self, part: bytes, copy: bool = False) -> None:
        """:meth:`header` with the header's part already made by :func:`header_part` (a
        recorder keeps those of the result shapes that come back)."""
        self._end_run()
        self._kind = COPY if copy else ROWS
        self._pending += part

    def add(self, frames: bytes) -> None:
        """Row (or COPY) frames of the current result set, back to back."""
        if self.truncated or self.closed:
            return
        if self.size + len(frames) > self.limit:
            self.truncated = True
            return
        self.size += len(frames)
        self._run += frames
        if len(self._run) + len(self._pending) >= CHUNK:
            self._flush()

    def _part(self, kind: bytes, body: bytes) -> None:
        self._pending += _framed(kind, body)

    def _end_run(self) -> None:
        if self._run:
            self._part(self._kind, bytes(self._run))
            self._run.clear()

    def _flush(self) -> None:
        self._end_run()
        if self._pending:
            if self.blob is None:
                self.blob = self.ledger.open_blob(self.transform)
            self.blob.write(bytes(self._pending))
            self._pending.clear()

    def close(self) -> None:
        """End of one result set (the blob stays open for the statement's next one)."""
        if self.closed:
            return
        self._end_run()
        if self._kind == COPY and not self.truncated:
            self._part(COPY_END, b"")  # the last line may have no newline
            self._kind = ROWS

    def finish(self) -> Blob | PendingBlob:
        """The blob to reference from the response entry."""
        if not self.closed:
            self.closed = True
            if self.blob is None:
                self._end_run()
                self.pending = PendingBlob(self.transform, bytes(self._pending))
                self._pending.clear()
            else:
                self._flush()
                self.blob.close()
        if self.blob is not None:
            return self.blob
        assert self.pending is not None
        return self.pending

    def abort(self) -> None:
        """Nothing will reference these rows (the session ended mid-statement)."""
        self.closed = True
        if self.blob is not None:
            self.blob.abort()
        self._pending.clear()
