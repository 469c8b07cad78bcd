"""The writer: ordering, timestamps, blobs, checkpoints, failure and reopening."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path

import pytest

from appliance.ledger import (
    CanonicalError,
    LedgerError,
    LedgerUnavailable,
    iter_entries,
    latest_checkpoint,
)
from appliance.ledger.checkpoint import open_checkpoint
from appliance.ledger.merkle import leaf_hash, root_of
from appliance.ledger.store import read_history
from appliance.ledger.verify import verify_ledger
from appliance.ledger.writer import INLINE_LIMIT
from tests.unit.ledger.conftest import KEY, ORIGIN, OTHER_KEY, T0, open_writer, step_clock


def test_entries_are_numbered_timestamped_and_signed(tmp_path: Path) -> None:
    d = tmp_path / "l"
    with open_writer(d, clock=step_clock(T0, 0.25)) as w:
        w.append("statement", session="s", data={"n": 1, "text": "SELECT 1"})
        w.append("future.type", data={"anything": [1, "x", None, True]})
    es = list(iter_entries(d))
    assert [e.obj["type"] for e in es] == ["key.published", "statement", "future.type"]
    assert [e.seq for e in es] == [e.obj["seq"] for e in es] == [0, 1, 2]
    assert [e.obj["ts"] for e in es] == [
        "2026-11-25T20:33:05.000000Z",
        "2026-11-25T20:33:05.250000Z",
        "2026-11-25T20:33:05.500000Z",
    ]
    assert es[0].obj["data"] == {"vkey": KEY.verifier().to_vkey()}
    cp = open_checkpoint((d / "checkpoint").read_text(), [KEY.verifier()], origin=ORIGIN)
    assert cp.size == 3 and cp.root == root_of([leaf_hash(e.raw) for e in es])


def test_clock_going_backwards_keeps_time_order(tmp_path: Path) -> None:
    times = iter([T0 + 5, T0 + 1, T0 + 7])
    with open_writer(tmp_path / "l", clock=lambda: next(times)) as w:
        w.append("a", data={})
        w.append("b", data={})
    ts = [e.obj["ts"] for e in iter_entries(tmp_path / "l")]
    assert ts == sorted(ts) and ts[0] == ts[1]  # "a" (T0+1) is clamped to T0+5


def test_non_canonical_data_is_refused_and_consumes_nothing(tmp_path: Path) -> None:
    with open_writer(tmp_path / "l") as w:
        with pytest.raises(CanonicalError, match=r"\$\.data\.x: floats"):
            w.append("statement", data={"x": 1.5})
        with pytest.raises(CanonicalError, match="not a string"):
            w.append("statement", data={1: "x"})
        w.append("statement", data={"x": 1})
    assert [e.seq for e in iter_entries(tmp_path / "l")] == [0, 1]


def test_flush_waits_for_a_covering_checkpoint(tmp_path: Path) -> None:
    with open_writer(tmp_path / "l", checkpoint_interval=3600, checkpoint_entries=10**6) as w:
        for i in range(50):
            w.append("statement", data={"n": i})
        w.flush()
        cp = latest_checkpoint(tmp_path / "l", [KEY.verifier()])
        assert cp is not None and cp.size == 51
        w.flush()  # nothing new: no new checkpoint
        assert len(read_history(tmp_path / "l")[0]) == 1


def test_checkpoint_every_m_entries(tmp_path: Path) -> None:
    with open_writer(tmp_path / "l", checkpoint_interval=3600, checkpoint_entries=10) as w:
        for i in range(34):
            w.append("statement", data={"n": i})
    notes, _ = read_history(tmp_path / "l")
    sizes = [int(n.split("\n")[1]) for n in notes]
    assert sizes == [10, 20, 30, 35]


def test_blobs(tmp_path: Path) -> None:
    d = tmp_path / "l"
    with open_writer(d) as w:
        sink = w.open_blob(transform=lambda b: b.replace(b"secret", b"******"))
        sink.write(b"a secret ")
        sink.write(b"and another secret")
        w.append("response", data={"n": 1}, blobs={"result": sink})  # closes the sink
        same = w.open_blob()
        same.write(b"a ****** and another ******")
        same.close()
        w.append("response", data={"n": 2}, blobs={"result": same})
        gone = w.open_blob()
        gone.write(b"never stored")
        gone.abort()
        w.append("response", data={"n": 3}, blobs={"result": gone})
        put = w.put_blob(b"direct")
        w.append("x", data={"ref": {"sha256": put, "size": 6}})
        failing = w.open_blob(transform=lambda b: 1 / 0)  # type: ignore[arg-type,return-value]
        failing.write(b"x")
        w.append("response", data={"n": 4}, blobs={"result": failing})
    es = [e.obj for e in iter_entries(d)]
    want = hashlib.sha256(b"a ****** and another ******").hexdigest()
    assert es[1]["data"]["result"] == {"sha256": want, "size": 27}
    assert es[2]["data"]["result"] == es[1]["data"]["result"]
    assert es[3]["data"]["result"] == {"error": "blob was aborted"}
    assert es[5]["data"]["result"]["error"].startswith("blob transform failed: ZeroDivisionError")
    assert (d / "blobs" / want[:2] / want).read_bytes() == b"a ****** and another ******"
    stored = sorted(p.name for p in (d / "blobs").rglob("*") if p.is_file())
    assert stored == sorted([want, put])
    assert not list((d / "blobs" / "tmp").iterdir())
    with pytest.raises(LedgerError, match="closed blob sink"):
        sink.write(b"late")
    assert verify_ledger(d, [KEY.verifier()]).ok


def test_concurrent_appends_keep_one_order(tmp_path: Path) -> None:
    d = tmp_path / "l"
    with open_writer(d, queue_limit=8) as w:

        def produce(name: str) -> None:
            for i in range(200):
                w.append("statement", session=name, data={"n": i})

        threads = [threading.Thread(target=produce, args=(f"s{k}",)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    es = list(iter_entries(d))
    assert len(es) == 801 and [e.seq for e in es] == list(range(801))
    for k in range(4):
        ns = [e.obj["data"]["n"] for e in es if e.obj["session"] == f"s{k}"]
        assert ns == list(range(200))
    assert verify_ledger(d, [KEY.verifier()]).ok


def test_key_is_published_once_and_rotation_keeps_history_valid(tmp_path: Path) -> None:
    d = tmp_path / "l"
    with open_writer(d) as w:
        w.append("a", data={})
    with open_writer(d) as w:
        w.append("b", data={})
    types = [e.obj["type"] for e in iter_entries(d)]
    assert types == ["key.published", "a", "b"]
    with open_writer(d, key=OTHER_KEY) as w:  # key rotation: old checkpoints stay trusted
        w.append("c", data={})
    types = [e.obj["type"] for e in iter_entries(d)]
    assert types == ["key.published", "a", "b", "key.published", "c"]
    assert verify_ledger(d, [KEY.verifier(), OTHER_KEY.verifier()]).ok


def test_one_writer_per_directory_and_origin_is_fixed(tmp_path: Path) -> None:
    d = tmp_path / "l"
    with open_writer(d), pytest.raises(LedgerError, match="another writer holds"):
        open_writer(d)
    with pytest.raises(LedgerError, match=r"ledger of origin .test\.example/ledger."):
        open_writer(d, origin="other.example/log")


class FailingFsync:
    """fsync that fails (EIO) from the ``n``-th call on, like a dying disk."""

    def __init__(self, n: int) -> None:
        self.calls = 0
        self.n = n

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.calls >= self.n:
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)


def test_fsync_error_stops_the_writer_for_good(tmp_path: Path) -> None:
    d = tmp_path / "l"
    fsync = FailingFsync(10**9)
    w = open_writer(d, fsync=fsync, checkpoint_interval=3600)
    w.append("a", data={})
    w.flush()
    signed = latest_checkpoint(d)
    fsync.n = fsync.calls + 1  # the next fsync fails
    w.append("b", data={})
    with pytest.raises(LedgerUnavailable, match="Input/output error"):
        w.flush()
    assert isinstance(w.failed, OSError)
    calls = fsync.calls
    with pytest.raises(LedgerUnavailable):
        w.append("c", data={})
    with pytest.raises(LedgerUnavailable):
        w.close()
    assert fsync.calls == calls  # never retried
    assert latest_checkpoint(d) == signed  # nothing signed after the failure
    # the next writer recovers: the unsigned entry 'b' is kept and signed
    with open_writer(d) as w2:
        assert w2.recovery.entries == 3 and w2.recovery.signed_size == 2
    assert verify_ledger(d, [KEY.verifier()]).ok


def test_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(LedgerError):
        open_writer(tmp_path / "l", checkpoint_entries=0)


def test_a_transform_returning_text_drops_the_blob_not_the_writer(tmp_path: Path) -> None:
    d = tmp_path / "l"
    with open_writer(d) as w:
        sink = w.open_blob(transform=lambda b: b.decode())  # type: ignore[arg-type,return-value]
        sink.write(b"x")
        w.append("response", data={"n": 1}, blobs={"result": sink})
        w.append("after", data={})
    es = [e.obj for e in iter_entries(d)]
    assert es[1]["data"]["result"]["error"].startswith("blob transform failed: TypeError")
    assert es[2]["type"] == "after"


def test_unsigned_entries_of_another_origin_are_refused(tmp_path: Path) -> None:
    d = tmp_path / "l"
    with open_writer(d, fsync=lambda fd: None) as w:
        w.append("a", data={})
    (d / "checkpoint").unlink()
    (d / "checkpoints.log").unlink()
    with pytest.raises(LedgerError, match="holds entries of origin"):
        open_writer(d, origin="other.example/log")


def test_blob_annotations_join_the_reference(tmp_path: Path) -> None:
    d = tmp_path / "l"
    counts = {"pan": 0}

    def mask(chunk: bytes) -> bytes:
        counts["pan"] += chunk.count(b"4111")
        return chunk.replace(b"4111", b"****")

    with open_writer(d) as w:
        sink = w.open_blob(mask)
        sink.annotate = lambda: {"masking": dict(counts), "size": -1}
        sink.write(b"4111 and 4111\n")
        sink.write(b"4111\n")
        w.append("response", data={"n": 1}, blobs={"result": sink})
        bad = w.open_blob()
        bad.annotate = lambda: {"x": 0.5}
        bad.write(b"y")
        w.append("response", data={"n": 2}, blobs={"result": bad})
    es = [e.obj for e in iter_entries(d)]
    ref = es[1]["data"]["result"]
    assert ref["masking"] == {"pan": 3} and ref["size"] == len(b"**** and ****\n****\n")
    assert es[2]["data"]["result"]["annotation_error"].startswith("CanonicalError")
    blob = d / "blobs" / ref["sha256"][:2] / ref["sha256"]
    blob.write_bytes(b"tampered")
    report = verify_ledger(d, [KEY.verifier()])
    assert any("data.result blob" in f and "content was changed" in f for f in report.findings)


def test_small_blobs_are_inlined_large_ones_stored(tmp_path: Path) -> None:
    d = tmp_path / "l"
    with open_writer(d, inline_limit=64) as w:
        small = w.open_blob(transform=lambda b: b.upper())
        small.write(b"rows of a small ")
        small.write(b"result")
        w.append("response", data={"n": 1}, blobs={"result": small})
        large = w.open_blob()
        for _ in range(10):
            large.write(b"0123456789")  # 100 bytes: spills to the store after 60
        w.append("response", data={"n": 2}, blobs={"result": large})
        binary = w.open_blob()
        binary.write(b"\xff\xfe not utf-8")
        w.append("response", data={"n": 3}, blobs={"result": binary})
    es = [e.obj for e in iter_entries(d)]
    text = b"ROWS OF A SMALL RESULT"
    assert es[1]["data"]["result"] == {
        "sha256": hashlib.sha256(text).hexdigest(),
        "size": len(text),
        "inline": text.decode(),
    }
    big = b"0123456789" * 10
    want = hashlib.sha256(big).hexdigest()
    assert es[2]["data"]["result"] == {"sha256": want, "size": 100}
    assert (d / "blobs" / want[:2] / want).read_bytes() == big
    raw = b"\xff\xfe not utf-8"
    assert "inline" not in es[3]["data"]["result"]  # not text: stored as a file
    stored = sorted(p.name for p in (d / "blobs").rglob("*") if p.is_file())
    assert stored == sorted([want, hashlib.sha256(raw).hexdigest()])


@pytest.mark.parametrize("inline_limit", [0, INLINE_LIMIT])
def test_an_empty_blob_is_referenced_by_the_hash_of_nothing(
    tmp_path: Path, inline_limit: int
) -> None:
    """A blob closed without a write (a result with no rows and no header), stored or
    inlined: its reference names SHA-256 of the empty string, size 0."""
    d = tmp_path / "l"
    with open_writer(d, inline_limit=inline_limit) as w:
        sink = w.open_blob()
        sink.close()
        w.append("response", data={}, blobs={"result": sink})
    (ref,) = [e.obj["data"]["result"] for e in iter_entries(d) if e.obj["type"] == "response"]
    assert ref["sha256"] == hashlib.sha256(b"").hexdigest() and ref["size"] == 0
    assert ("inline" in ref) == (inline_limit > 0)
    assert verify_ledger(d, [KEY.verifier()]).ok
