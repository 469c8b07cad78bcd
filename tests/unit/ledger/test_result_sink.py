"""Result rows on their way to a blob (appliance.ledger.result_sink), whatever the protocol:
the parts a sink writes are what a transform reads; small results travel with their entry,
large ones open a blob; the limit truncates; an aborted sink leaves nothing; the factories
are made once per protocol and masker and survive pickling (a writer process runs them)."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any

from appliance.ledger.api import PendingBlob
from appliance.ledger.result_sink import (
    CHUNK,
    COPY,
    COPY_END,
    HEADER,
    ROWS,
    PartsTransform,
    RowsSink,
    parts,
    transforms,
)


class Echo(PartsTransform):
    """Writes each part as ``kind:length``; counts the parts."""

    def __init__(self, masker: Any) -> None:
        super().__init__(masker)
        self.seen = 0

    def part(self, kind: bytes, body: bytes) -> bytes:
        self.seen += 1
        return kind + b":%d\n" % len(body)

    def annotation(self) -> Mapping[str, Any]:
        return {"parts": self.seen}


class Blob:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


class Ledger:
    def __init__(self) -> None:
        self.blobs: list[tuple[object, Blob]] = []

    def open_blob(self, transform: object = None) -> Blob:
        blob = Blob()
        self.blobs.append((transform, blob))
        return blob


def test_a_small_result_travels_with_its_entry_as_parts() -> None:
    ledger = Ledger()
    factory = transforms(Echo, None)
    sink = RowsSink(ledger, factory, 1 << 20)  # type: ignore[arg-type]
    sink.header({"columns": ["a"]})
    sink.add(b"r1")
    sink.add(b"r2")
    sink.close()
    sink.header({"copy": "out"}, copy=True)
    sink.add(b"line\n")
    sink.close()
    pending = sink.finish()
    assert isinstance(pending, PendingBlob) and pending.transform is factory
    assert ledger.blobs == []
    assert [k for k, _ in parts(pending.data)] == [HEADER, ROWS, HEADER, COPY, COPY_END]
    assert [b for _, b in parts(pending.data)][:2] == [b'{"columns":["a"]}', b"r1r2"]
    transform, annotate = factory.new()
    assert transform(pending.data) == b"H:17\nD:4\nH:14\nd:5\ne:0\n"
    assert annotate() == {"parts": 5}


def test_a_large_result_opens_a_blob_and_the_limit_truncates() -> None:
    ledger = Ledger()
    sink = RowsSink(ledger, "t", CHUNK * 3)  # type: ignore[arg-type]
    sink.header({})
    row = b"x" * 1000
    for _ in range(CHUNK * 4 // len(row)):
        sink.add(row)
    assert sink.truncated and sink.size <= CHUNK * 3
    blob = sink.finish()
    ((transform, opened),) = ledger.blobs
    assert blob is opened and transform == "t" and opened.closed
    assert sum(len(b) for _, b in parts(b"".join(opened.chunks))) == sink.size + 2


def test_an_aborted_sink_writes_nothing_more() -> None:
    ledger = Ledger()
    sink = RowsSink(ledger, None, CHUNK * 4)  # type: ignore[arg-type]
    sink.header({})
    sink.add(b"y" * (CHUNK + 1))
    sink.abort()
    sink.add(b"more")
    ((_, blob),) = ledger.blobs
    assert blob.aborted and not blob.closed and len(blob.chunks) == 1


def test_factories_are_made_once_and_pickle() -> None:
    masker = ("a masker",)
    assert transforms(Echo, masker) is transforms(Echo, masker)
    assert transforms(Echo, masker) is not transforms(Echo, ("another",))
    copy = pickle.loads(pickle.dumps(transforms(Echo, masker)))
    transform, _ = copy.new()
    assert isinstance(transform, Echo) and transform.masker == masker
