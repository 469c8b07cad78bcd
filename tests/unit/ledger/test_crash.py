"""The crash suite: a torn last record at every byte offset, and kill -9 of a live writer.

What must hold: no entry covered by a checkpoint is ever lost; a torn tail after the last
checkpoint is copied to recovered/ and cut off; a cut inside signed history is tampering.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.ledger import TamperError, iter_entries
from appliance.ledger._framing import ENTRY_MAGIC, encode_frame
from appliance.ledger.entries import canonical_json, make_entry
from appliance.ledger.recovery import recover
from appliance.ledger.store import read_history
from appliance.ledger.verify import verify_ledger
from tests.unit.ledger.conftest import KEY, ORIGIN, frames, no_fsync, open_writer, write_session

ROOT = Path(__file__).resolve().parents[3]


def _unsigned_record(seq: int) -> bytes:
    obj = make_entry(
        origin=ORIGIN,
        seq=seq,
        ts="2026-11-25T21:00:00.000000Z",
        type="statement",
        session="late",
        data={"n": 1, "text": "SELECT 'written but never checkpointed'"},
    )
    return encode_frame(ENTRY_MAGIC, seq, canonical_json(obj))


def test_torn_last_record_at_every_byte(tmp_path: Path) -> None:
    d = tmp_path / "l"
    with open_writer(d, fsync=no_fsync) as w:
        write_session(w, "s1")
    signed = len(frames(d / "entries.log"))
    log = d / "entries.log"
    base = log.read_bytes()
    record = _unsigned_record(signed)
    full = base + record
    for cut in range(len(base), len(full) + 1):
        log.write_bytes(full[:cut])
        for p in (d / "recovered").glob("*"):
            p.unlink()
        report = recover(d, trusted=[KEY.verifier()])
        assert report.signed_size == signed
        if cut == len(full):  # the whole record survived: kept, to be signed by the writer
            assert report.entries == signed + 1 and not report.torn
            assert log.read_bytes() == full
        elif cut == len(base):  # nothing of it reached the disk
            assert report.entries == signed and not report.torn
        else:
            assert report.entries == signed
            (torn,) = report.torn
            assert torn.offset == len(base) and torn.length == cut - len(base)
            assert torn.saved_to is not None and torn.saved_to.read_bytes() == full[len(base) : cut]
            assert log.read_bytes() == base  # truncated to the last whole record
    # A few cuts through the real writer: it recovers, goes on, and the result verifies.
    log.write_bytes(base)
    for cut in (len(base) + 1, len(base) + 20, len(full) - 1):
        c = tmp_path / f"cut{cut}"
        shutil.copytree(d, c)
        (c / "entries.log").write_bytes(full[:cut])
        with open_writer(c, fsync=no_fsync) as w:
            assert w.recovery.entries == signed
            w.append("statement", data={"n": 2})
        assert verify_ledger(c, [KEY.verifier()]).ok
        assert len(list(iter_entries(c))) == signed + 1


def test_cut_inside_signed_history_is_tampering(tmp_path: Path) -> None:
    d = tmp_path / "l"
    with open_writer(d, fsync=no_fsync) as w:
        write_session(w, "s1")
    log = d / "entries.log"
    full = log.read_bytes()
    last = frames(log)[-1]
    for cut in range(last.offset, last.end):
        log.write_bytes(full[:cut])
        with pytest.raises(TamperError) as info:
            recover(d, trusted=[KEY.verifier()], dry_run=True)
        assert "signed" in info.value.findings[0] or "claims 9 entries" in info.value.findings[0]
    assert log.read_bytes() == full[: last.end - 1]  # dry run changed nothing


def _leaves(d: Path) -> list[bytes]:
    return [f.payload for f in frames(d / "entries.log")]


def test_kill_9_in_a_loop(tmp_path: Path) -> None:
    d = tmp_path / "l"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    kept: list[bytes] = []
    for run in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.unit.ledger.crash_child", str(d), str(run)],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            text=True,
        )
        assert proc.stdout is not None
        acked = 0
        for _ in range(run % 3 + 1):  # let it acknowledge a few flushes, then kill it
            line = proc.stdout.readline()
            assert line, "child writer died on its own"
            acked = int(line)
        time.sleep(0.003 * run)  # kill at varied points of the write/fsync/sign cycle
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        report = recover(d, trusted=[KEY.verifier()], dry_run=True)
        assert report.signed_size >= acked, "a flushed entry is not covered after the crash"
        assert report.entries >= acked
        leaves = _leaves(d)
        assert leaves[: len(kept)] == kept, "signed history changed across a crash"
        kept = leaves[:acked]
        # the next writer recovers the directory (torn tail aside) and signs what is intact
        with open_writer(d, fsync=no_fsync) as w:
            assert w.recovery.entries >= acked
        assert verify_ledger(d, [KEY.verifier()]).ok


def test_torn_history_and_stale_checkpoint_file(tmp_path: Path) -> None:
    """A crash while appending to checkpoints.log, or between it and the rename of
    `checkpoint`: the torn history record is cut, the checkpoint file rewritten."""
    d = tmp_path / "l"
    with open_writer(d, fsync=no_fsync, checkpoint_interval=3600, checkpoint_entries=3) as w:
        write_session(w, "s1")
    history = d / "checkpoints.log"
    notes_before = history.read_bytes()
    stale = (d / "checkpoint").read_text()
    with history.open("ab") as f:
        f.write(b"ALC1\x00\x00\x00")  # a torn record
    report = recover(d, trusted=[KEY.verifier()], dry_run=True)
    assert report.actions == [
        f"would truncate checkpoints.log at byte {len(notes_before)}: 7 bytes of torn tail "
        "(record header cut short)"
    ]
    # the previous checkpoint file left behind by a crash before the rename
    notes, _ = read_history(d)
    (d / "checkpoint").write_text(notes[-2])
    report = recover(d, trusted=[KEY.verifier()])
    assert history.read_bytes() == notes_before
    assert (d / "checkpoint").read_text() == stale
    assert any("rewrite checkpoint" in a for a in report.actions)
    assert verify_ledger(d, [KEY.verifier()]).ok
    (d / "checkpoint").unlink()
    recover(d, trusted=[KEY.verifier()])
    assert (d / "checkpoint").read_text() == stale
