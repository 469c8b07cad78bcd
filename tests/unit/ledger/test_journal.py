"""The sync journal: write-ahead syncs durable without an fsync of the growing log, and what
a crash of the machine leaves put back on the next open."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.ledger import LedgerUnavailable, LedgerWriter, TamperError, iter_entries
from appliance.ledger import writer as writer_module
from appliance.ledger.journal import (
    CAPACITY,
    HEADER,
    JOURNAL,
    Journal,
    _record,
    chain,
    notice,
    replay,
)
from appliance.ledger.recovery import recover
from appliance.ledger.store import ENTRIES
from appliance.ledger.verify import verify_ledger
from tests.unit.ledger.conftest import KEY, open_writer


class Disk:
    """fsync and datasync that note what each made durable: for the log, its size (what a
    crash of the machine keeps of it)."""

    def __init__(self) -> None:
        self.fsynced: list[str] = []
        self.datasynced: list[str] = []
        self.log_durable = 0

    def _name(self, fd: int) -> str:
        return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))

    def fsync(self, fd: int) -> None:
        os.fsync(fd)
        name = self._name(fd)
        self.fsynced.append(name)
        if name == ENTRIES:
            self.log_durable = os.fstat(fd).st_size

    def datasync(self, fd: int) -> None:
        os.fdatasync(fd)
        self.datasynced.append(self._name(fd))

    def writer(self, d: Path, **kw: object) -> LedgerWriter:
        """A writer of ``d`` whose syncs go through this disk (no checkpoint on its own)."""
        kw.setdefault("checkpoint_interval", 3600)
        return open_writer(d, fsync=self.fsync, datasync=self.datasync, **kw)


def crashed_copy(d: Path, disk: Disk, to: Path) -> Path:
    """``d`` as a crash of the machine now would leave it: the log cut to its size at its
    last fsync (the kernel wrote back none of the rest), everything else as it is."""
    shutil.copytree(d, to)
    with open(to / ENTRIES, "r+b") as f:
        f.truncate(disk.log_durable)
    return to


def types(d: Path) -> list[str]:
    return [e.obj["type"] for e in iter_entries(d)]


# -- the format ---------------------------------------------------------------------------------


def test_a_chain_reads_back_what_was_written() -> None:
    data = _record(100, 100, b"abc") + _record(100, 103, b"de") + bytes(64)
    assert chain(data) == [(100, b"abc"), (103, b"de")]


def test_a_chain_ends_at_a_torn_or_damaged_record() -> None:
    first, second = _record(0, 0, b"abc"), _record(0, 3, b"defgh")
    for cut in range(len(second)):
        assert chain(first + second[:cut] + bytes(8)) == [(0, b"abc")]
    damaged = bytearray(first + second)
    damaged[-1] ^= 1  # a byte of the data
    assert chain(bytes(damaged)) == [(0, b"abc")]
    damaged = bytearray(first + second)
    damaged[len(first) + 12] ^= 1  # a byte of the offset
    assert chain(bytes(damaged)) == [(0, b"abc")]


def test_records_left_from_before_the_logs_last_fsync_are_not_read() -> None:
    old = _record(0, 0, b"aaaa") + _record(0, 4, b"bbbb") + _record(0, 8, b"cccc")
    new = _record(8, 8, b"cccc")  # the log was fsynced at 8; the journal starts over
    assert chain(new + old[len(new) :]) == [(8, b"cccc")]
    assert chain(_record(0, 4, b"x")) == []  # a first record starts at its base
    assert chain(_record(0, 0, b"ab") + _record(0, 3, b"c")) == [(0, b"ab")]  # a gap


@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=8), st.integers(0, 99))
def test_any_chain_round_trips(pieces: list[bytes], base: int) -> None:
    data, offset, expected = b"", base, []
    for piece in pieces:
        data += _record(base, offset, piece)
        expected.append((offset, piece))
        offset += len(piece)
    assert chain(data + bytes(HEADER.size)) == expected


def test_the_journal_is_written_with_zeros_once_and_then_overwritten(tmp_path: Path) -> None:
    j = Journal(tmp_path / JOURNAL, capacity=1 << 16)
    assert not (tmp_path / JOURNAL).exists()  # made on first use
    j.append(0, 0, b"x" * 100)
    assert (tmp_path / JOURNAL).stat().st_size == 1 << 16
    assert j.fits((1 << 16) - 2 * HEADER.size - 100)
    assert not j.fits((1 << 16) - 2 * HEADER.size - 99)
    j.reset()
    j.append(100, 100, b"y" * 10)
    j.close()
    assert chain((tmp_path / JOURNAL).read_bytes()) == [(100, b"y" * 10)]
    assert (tmp_path / JOURNAL).stat().st_size == 1 << 16


# -- the writer ---------------------------------------------------------------------------------


def test_a_sync_goes_to_the_journal_and_a_checkpoint_fsyncs_the_log(tmp_path: Path) -> None:
    d, disk = tmp_path / "l", Disk()
    w = disk.writer(d)
    try:
        w.append("statement", data={"n": 1})
        disk.fsynced.clear()
        w.durable()
        # The journal made (written with zeros, fsynced with its directory), then synced.
        assert disk.fsynced == [JOURNAL, "l"] and disk.datasynced == [JOURNAL]
        w.append("statement", data={"n": 2})
        w.durable()
        assert disk.fsynced == [JOURNAL, "l"] and disk.datasynced == [JOURNAL, JOURNAL]
        disk.fsynced.clear()
        w.flush()  # a checkpoint: the log itself
        assert disk.fsynced[0] == ENTRIES and disk.datasynced == [JOURNAL, JOURNAL]
    finally:
        w.close()
    assert (d / JOURNAL).stat().st_size == CAPACITY


def test_what_a_sync_acknowledged_survives_a_crash_of_the_machine(tmp_path: Path) -> None:
    d, disk = tmp_path / "l", Disk()
    w = disk.writer(d)
    try:
        w.append("statement", data={"n": 1})
        w.flush()
        for n in (2, 3):
            w.append("statement", data={"n": n})
            w.durable()
        w.append("statement", data={"n": 4})  # appended, never synced: may be lost
        w.durable()
        disk_end = (d / ENTRIES).stat().st_size  # what the syncs covered
        w.append("statement", data={"n": 5})
        crashed = crashed_copy(d, disk, tmp_path / "crashed")
    finally:
        w.close()
    log = (crashed / ENTRIES).read_bytes()
    assert b'"n":2' not in log  # the log alone lost them
    said = notice(crashed)
    assert said is not None and f"holds {disk_end - len(log)} bytes" in said
    assert said in verify_ledger(crashed, [KEY.verifier()]).warnings
    assert said in recover(crashed, trusted=[KEY.verifier()], dry_run=True).actions  # fsck
    assert (crashed / ENTRIES).read_bytes() == log  # a dry run changes nothing
    with open_writer(crashed) as again:
        assert any("restored" in line and JOURNAL in line for line in again.recovery.summary())
        assert again.recovery.entries == 5  # key.published, then 1 to 4
    assert [e.obj["data"].get("n") for e in iter_entries(crashed)][1:5] == [1, 2, 3, 4]
    assert verify_ledger(crashed, [KEY.verifier()]).ok
    # Replayed once: the journal is cleared, and the next open finds nothing to restore.
    assert chain((crashed / JOURNAL).read_bytes()) == [] and notice(crashed) is None
    with open_writer(crashed) as again:
        assert not any("restored" in line for line in again.recovery.summary())


def test_a_sync_torn_by_the_crash_loses_only_what_it_had_not_acknowledged(
    tmp_path: Path,
) -> None:
    d, disk = tmp_path / "l", Disk()
    w = disk.writer(d)
    try:
        w.flush()
        w.append("statement", data={"n": 1})
        w.durable()
        w.append("statement", data={"n": 2})
        w.durable()
        crashed = crashed_copy(d, disk, tmp_path / "crashed")
    finally:
        w.close()
    records = chain((crashed / JOURNAL).read_bytes())
    assert len(records) == 2
    # The second sync's record torn: its datasync never returned, so nobody was told.
    torn_at = HEADER.size + len(records[0][1]) + HEADER.size + 5
    with open(crashed / JOURNAL, "r+b") as f:
        f.seek(torn_at)
        f.write(bytes(CAPACITY - torn_at))
    with open_writer(crashed) as again:
        assert again.recovery.entries == 2  # key.published and n=1
    assert types(crashed) == ["key.published", "statement"]
    assert verify_ledger(crashed, [KEY.verifier()]).ok


def test_a_log_shorter_than_what_it_fsynced_is_not_patched(tmp_path: Path) -> None:
    """Damage from outside (the log lost fsynced bytes): the journal is not replayed over a
    gap, and stays for whoever looks."""
    d, disk = tmp_path / "l", Disk()
    with disk.writer(d, checkpoint_interval=1.0) as w:
        w.append("statement", data={"n": 1})
        w.flush()
        w.append("statement", data={"n": 2})
        w.durable()
        base = disk.log_durable
        journal = (d / JOURNAL).read_bytes()
    with open(d / ENTRIES, "r+b") as f:
        f.truncate(base - 1)
    said = notice(d)
    assert said is not None and "lost bytes that were fsynced" in said
    with pytest.raises(TamperError):  # the cut is inside signed history: fsck says so
        recover(d, trusted=[KEY.verifier()], dry_run=True)
    assert replay(d) == 0
    assert (d / JOURNAL).read_bytes() == journal


def test_new_blobs_or_too_many_bytes_fsync_the_log_and_start_the_journal_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def small(path: Path, datasync: object, fsync: object) -> Journal:
        return Journal(path, datasync, fsync, capacity=4096)  # type: ignore[arg-type]

    monkeypatch.setattr(writer_module, "Journal", small)
    d, disk = tmp_path / "l", Disk()
    w = disk.writer(d)
    try:
        w.append("statement", data={"n": 1})
        disk.fsynced.clear()
        w.durable()
        assert (disk.fsynced, disk.datasynced) == ([JOURNAL, "l"], [JOURNAL])
        disk.fsynced.clear()
        w.append("statement", data={"text": "x" * 5000})  # more than the journal holds
        w.durable()
        assert disk.fsynced == [ENTRIES] and disk.datasynced == [JOURNAL]
        w.append("statement", data={"n": 3})
        w.durable()  # the journal again, from its start
        assert disk.fsynced == [ENTRIES] and disk.datasynced == [JOURNAL, JOURNAL]
        assert chain((d / JOURNAL).read_bytes())[0][0] == disk.log_durable
        sink = w.open_blob()
        sink.write(b"a blob of its own file")
        w.append("response", data={"n": 3}, blobs={"result": sink})
        disk.fsynced.clear()
        w.durable()  # the blob's file and directory need an fsync: the log's too
        assert disk.fsynced[0] == ENTRIES and len(disk.fsynced) >= 3
        assert disk.datasynced == [JOURNAL, JOURNAL]
    finally:
        w.close()
    assert verify_ledger(d, [KEY.verifier()]).ok


def test_a_failed_journal_sync_stops_the_writer_for_good(tmp_path: Path) -> None:
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    d = tmp_path / "l"
    w = open_writer(d, datasync=failing, checkpoint_interval=3600)
    w.append("statement", data={"n": 1})
    with pytest.raises(LedgerUnavailable, match="Input/output error"):
        w.durable()
    with pytest.raises(LedgerUnavailable):
        w.append("statement", data={"n": 2})
    with pytest.raises(LedgerUnavailable):
        w.close()
    with open_writer(d) as again:  # what was written is recovered and signed
        assert again.recovery.entries == 2
    assert verify_ledger(d, [KEY.verifier()]).ok
