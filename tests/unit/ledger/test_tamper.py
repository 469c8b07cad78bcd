"""The tamper suite: every kind of tampering is found by `ledger verify` (exit 1) with a
message that names the entry or checkpoint and says why; impossible verifications exit 2."""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

import orjson
import pytest

import appliance.ledger.verify as v
from appliance.ledger._framing import CHECKPOINT_MAGIC, ENTRY_MAGIC, encode_frame
from appliance.ledger.checkpoint import Checkpoint, sign_checkpoint
from appliance.ledger.entries import canonical_json
from appliance.ledger.errors import TamperError
from appliance.ledger.recovery import recover
from appliance.ledger.store import read_history, unverified_checkpoint
from tests.unit.ledger.cli_helper import run_cli
from tests.unit.ledger.conftest import KEY, ORIGIN, OTHER_KEY, frames

VKEY = KEY.verifier().to_vkey()


def verify(capsys: pytest.CaptureFixture[str], d: Path, vkey: str = VKEY) -> tuple[int, str]:
    return run_cli(capsys, "ledger", "verify", "--ledger", str(d), "--vkey", vkey)


def rewrite_entries(d: Path, payloads: list[tuple[int, bytes]]) -> None:
    (d / "entries.log").write_bytes(b"".join(encode_frame(ENTRY_MAGIC, s, p) for s, p in payloads))


def entries_of(d: Path) -> list[tuple[int, bytes]]:
    return [(f.seq, f.payload) for f in frames(d / "entries.log")]


def append_history(d: Path, note: str) -> None:
    notes, _ = read_history(d)
    with (d / "checkpoints.log").open("ab") as f:
        f.write(encode_frame(CHECKPOINT_MAGIC, len(notes), note.encode()))


def latest(d: Path) -> Checkpoint:
    return unverified_checkpoint((d / "checkpoint").read_text())


def test_intact_ledger_verifies(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    code, out = verify(capsys, ledger)
    assert code == 0, out
    assert "VERIFIED" in out and "20 entries, 6 checkpoints" in out


def test_edited_entry_bit_flip(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    raw = bytearray((ledger / "entries.log").read_bytes())
    f = frames(ledger / "entries.log")[5]
    raw[f.offset + 40] ^= 0x01
    (ledger / "entries.log").write_bytes(bytes(raw))
    code, out = verify(capsys, ledger)
    assert code == 1
    assert f"record checksum mismatch at byte {f.offset} (entry 5), inside signed history" in out


def test_edited_entry_with_fixed_checksum(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    es = entries_of(ledger)
    es[5] = (5, es[5][1].replace(b"SELECT 2", b"SELECT 7"))
    rewrite_entries(ledger, es)
    code, out = verify(capsys, ledger)
    assert code == 1
    assert "(size 8): the entries do not hash to its root; an entry in 4..7 was changed" in out


def test_deleted_entry(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    es = entries_of(ledger)
    del es[6]
    rewrite_entries(ledger, es)
    code, out = verify(capsys, ledger)
    assert code == 1
    assert "entry 6: record says seq 7 (entries missing or reordered)" in out


def test_reordered_entries(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    es = entries_of(ledger)
    es[3], es[4] = es[4], es[3]
    rewrite_entries(ledger, es)
    code, out = verify(capsys, ledger)
    assert code == 1
    assert "entry 3: record says seq 4 (entries missing or reordered)" in out
    assert "entry 4: record says seq 3 (entries duplicated or reordered)" in out


def test_duplicated_entry(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    es = entries_of(ledger)
    es.insert(8, es[7])
    rewrite_entries(ledger, es)
    code, out = verify(capsys, ledger)
    assert code == 1
    assert "entry 8: record says seq 7 (entries duplicated or reordered)" in out


def test_inserted_entry_renumbered(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    """A forger inserts a well-formed entry and renumbers everything after it."""
    es = entries_of(ledger)
    objs = [orjson.loads(p) for _, p in es]
    forged = dict(objs[9], data={"n": 99, "text": "SELECT harmless", "protocol": "simple"})
    objs.insert(10, forged)
    for i, o in enumerate(objs):
        o["seq"] = i
    rewrite_entries(ledger, [(i, canonical_json(o)) for i, o in enumerate(objs)])
    code, out = verify(capsys, ledger)
    assert code == 1
    assert "(size 13): the entries do not hash to its root; an entry in 9..12" in out


def test_truncated_log(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    f = frames(ledger / "entries.log")[12]
    with (ledger / "entries.log").open("r+b") as fh:
        fh.truncate(f.offset + 30)
    code, out = verify(capsys, ledger)
    assert code == 1
    assert f"record cut short at byte {f.offset} (entry 12), inside signed history" in out
    assert "claims 20 entries but entries.log holds only 12 readable entries" in out


def test_truncated_on_record_boundary(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    f = frames(ledger / "entries.log")[15]
    with (ledger / "entries.log").open("r+b") as fh:
        fh.truncate(f.offset)
    code, out = verify(capsys, ledger)
    assert code == 1
    assert "checkpoint #5 claims 20 entries but entries.log holds only 15 readable entries" in out


def _a_blob(d: Path) -> Path:
    return next(p for p in (d / "blobs").rglob("*") if p.is_file())


def test_edited_blob(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    blob = _a_blob(ledger)
    blob.write_bytes(blob.read_bytes().replace(b"****", b"1234"))
    code, out = verify(capsys, ledger)
    assert code == 1
    assert f"data.result blob {blob.name}: content was changed" in out


def test_removed_blob(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    blob = _a_blob(ledger)
    blob.unlink()
    code, out = verify(capsys, ledger)
    assert code == 1
    assert f"data.result blob {blob.name}: missing from the blob store" in out


def _replace_latest(d: Path, note: str) -> None:
    """Swap the newest checkpoint (history record and checkpoint file) for ``note``."""
    notes, _ = read_history(d)
    notes[-1] = note
    (d / "checkpoints.log").write_bytes(
        b"".join(encode_frame(CHECKPOINT_MAGIC, i, n.encode()) for i, n in enumerate(notes))
    )
    (d / "checkpoint").write_text(note)


def test_checkpoint_resigned_with_another_key(
    capsys: pytest.CaptureFixture[str], ledger: Path
) -> None:
    cp = latest(ledger)
    _replace_latest(ledger, sign_checkpoint(cp, OTHER_KEY))
    code, out = verify(capsys, ledger)
    assert code == 1
    assert "checkpoint #5 (size 20) is not signed by the given key" in out
    assert f"signed by {ORIGIN}+{OTHER_KEY.key_id.hex()}): re-signed or forged" in out


def test_checkpoint_from_another_origin(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    cp = latest(ledger)
    _replace_latest(ledger, sign_checkpoint(Checkpoint("other.example/log", cp.size, cp.root), KEY))
    code, out = verify(capsys, ledger)
    assert code == 1
    assert "checkpoint #5 (size 20) is for origin 'other.example/log', but this ledger's" in out


def test_rolled_back_checkpoint_file(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    notes, _ = read_history(ledger)
    (ledger / "checkpoint").write_text(notes[2])
    code, out = verify(capsys, ledger)
    assert code == 1
    assert "checkpoint file holds the checkpoint of size 9 but the history reached size 20" in out


def test_rolled_back_history(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    notes, _ = read_history(ledger)
    append_history(ledger, notes[1])
    (ledger / "checkpoint").write_text(notes[1])
    code, out = verify(capsys, ledger)
    assert code == 1
    assert "checkpoint #6 (size 8) rolls back checkpoint #5 (size 20)" in out


def test_fork(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    cp = latest(ledger)
    forged = Checkpoint(ORIGIN, cp.size, hashlib.sha256(b"other history").digest())
    note = sign_checkpoint(forged, KEY)
    append_history(ledger, note)
    (ledger / "checkpoint").write_text(note)
    code, out = verify(capsys, ledger)
    assert code == 1
    assert "fork: checkpoint #5, checkpoint #6 sign different roots for tree size 20" in out


def test_checkpoint_beyond_the_entries(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 25, hashlib.sha256(b"x").digest()), KEY)
    append_history(ledger, note)
    (ledger / "checkpoint").write_text(note)
    code, out = verify(capsys, ledger)
    assert code == 1
    assert "checkpoint #6 claims 25 entries but entries.log holds only 20 readable entries" in out


def test_unsigned_tail_is_a_warning_not_tampering(
    capsys: pytest.CaptureFixture[str], ledger: Path
) -> None:
    es = entries_of(ledger)
    with (ledger / "entries.log").open("ab") as f:
        f.write(encode_frame(ENTRY_MAGIC, 20, es[19][1].replace(b'"seq":19', b'"seq":20')))
    code, out = verify(capsys, ledger)
    assert code == 0, out
    assert "1 entries after the latest checkpoint are not signed yet" in out


def test_tampering_makes_the_writer_refuse_to_open(ledger: Path) -> None:
    es = entries_of(ledger)
    del es[3]
    rewrite_entries(ledger, es)
    with pytest.raises(TamperError, match="inside signed history"):
        recover(ledger, trusted=[KEY.verifier()])


# -- cannot verify (exit 2) -------------------------------------------------------------------


def test_wrong_key(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    code, out = verify(capsys, ledger, OTHER_KEY.verifier().to_vkey())
    assert code == 2
    assert "none of the checkpoints is signed by the given key" in out and "wrong --vkey?" in out


def test_missing_ledger(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = verify(capsys, tmp_path / "nothing")
    assert code == 2 and "no ledger" in out


def test_no_checkpoint(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    (ledger / "checkpoint").unlink()
    (ledger / "checkpoints.log").unlink()
    code, out = verify(capsys, ledger)
    assert code == 2 and "no signed checkpoint" in out


def test_bad_vkey_argument(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    code, _ = verify(capsys, ledger, "not+a+key")
    assert code == 2


def test_verify_copy_elsewhere(
    capsys: pytest.CaptureFixture[str], ledger: Path, tmp_path: Path
) -> None:
    """An auditor's copy (no lock file, no index) verifies the same."""
    copy = tmp_path / "copy"
    shutil.copytree(ledger, copy, ignore=shutil.ignore_patterns("lock", "index.sqlite"))
    assert verify(capsys, copy)[0] == 0


def test_worker_processes_find_the_same(ledger: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The multi-process path (used on large logs) checks the same, chunk by chunk."""
    monkeypatch.setattr(v, "CHUNK", 3)
    assert threading.active_count() == 1  # else verify would not fork a worker
    assert v.verify_ledger(ledger, [KEY.verifier()], workers=1).ok
    es = entries_of(ledger)
    obj = orjson.loads(es[10][1])
    obj["origin"] = "elsewhere"
    es[10] = (10, canonical_json(obj))
    obj = orjson.loads(es[16][1])
    obj["ts"] = "2000-01-01T00:00:00.000000Z"
    es[16] = (16, canonical_json(obj))
    rewrite_entries(ledger, es)
    report = v.verify_ledger(ledger, [KEY.verifier()], workers=1)
    assert "entry 10: origin 'elsewhere', ledger is 'test.example/ledger'" in report.findings
    assert "entry 16: timestamp 2000-01-01T00:00:00.000000Z is earlier than" in "\n".join(
        report.findings
    )
    assert report.findings == v.verify_ledger(ledger, [KEY.verifier()], workers=0).findings


def test_whole_directory_rolled_back_behind_a_held_checkpoint(
    capsys: pytest.CaptureFixture[str], ledger: Path, tmp_path: Path
) -> None:
    """Truncating log and history consistently is invisible locally; a checkpoint the
    auditor holds from WORM storage exposes it."""
    held = tmp_path / "held-checkpoint"
    held.write_text((ledger / "checkpoint").read_text())
    notes, _ = read_history(ledger)
    cut = frames(ledger / "entries.log")[13].offset
    with (ledger / "entries.log").open("r+b") as f:
        f.truncate(cut)
    (ledger / "checkpoints.log").write_bytes(
        b"".join(encode_frame(CHECKPOINT_MAGIC, i, n.encode()) for i, n in enumerate(notes[:4]))
    )
    (ledger / "checkpoint").write_text(notes[3])
    assert verify(capsys, ledger)[0] == 0  # self-consistent
    code, out = run_cli(
        capsys,
        "ledger",
        "verify",
        "--ledger",
        str(ledger),
        "--vkey",
        VKEY,
        "--checkpoint",
        str(held),
    )
    assert code == 1
    assert f"checkpoint {held} claims 20 entries but entries.log holds only 13" in out


def test_edited_inline_blob(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from tests.unit.ledger.conftest import open_writer

    d = tmp_path / "inline"
    with open_writer(d, inline_limit=1024) as w:
        sink = w.open_blob()
        sink.write(b'{"columns":["card"]}\n["[REDACTED:CARD]"]\n')
        w.append("response", data={"n": 1}, blobs={"result": sink})
    code, out = verify(capsys, d)
    assert code == 0, out
    # Put a value back in the inline content (re-sign nothing: the entry hash changes too,
    # so rebuild the log as a forger would, and check the blob check itself fires).
    payloads = entries_of(d)
    seq, raw = payloads[1]
    obj = orjson.loads(raw)
    obj["data"]["result"]["inline"] = '{"columns":["card"]}\n["4111111111111111"]\n'
    rewrite_entries(d, [*payloads[:1], (seq, canonical_json(obj)), *payloads[2:]])
    code, out = verify(capsys, d)
    assert code == 1
    assert "inline blob data.result does not match its sha256/size" in out
