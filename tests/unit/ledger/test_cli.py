"""`appliance keys` and `appliance ledger` commands, end to end on a small ledger."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from appliance.cli.ledger import replay
from appliance.ledger.index import Index, Query
from appliance.ledger.render import transcript
from appliance.ledger.store import BlobReader, read_history
from appliance.signing.keys import load_signing_key, load_verifier_key
from tests.unit.ledger.cli_helper import run_cli, run_cli_split
from tests.unit.ledger.conftest import KEY, OTHER_KEY, open_writer, write_session

VKEY = KEY.verifier().to_vkey()


def test_keys_generate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = tmp_path / "ledger"
    code, out = run_cli(
        capsys, "keys", "generate", "--name", "ci.example/runner-1", "--out", str(prefix)
    )
    assert code == 0, out
    key = load_signing_key(tmp_path / "ledger.key")
    assert stat.S_IMODE(os.stat(tmp_path / "ledger.key").st_mode) == 0o600
    assert load_verifier_key(tmp_path / "ledger.vkey") == key.verifier()
    assert key.name == "ci.example/runner-1"
    code, out = run_cli(capsys, "keys", "generate", "--name", "x", "--out", str(prefix))
    assert code == 2 and "refusing to overwrite" in out
    monkeypatch.chdir(tmp_path)
    code, out = run_cli(capsys, "keys", "generate", "--approver", "alice@example.com")
    assert code == 0 and (tmp_path / "alice@example.com.key").exists()
    code, out = run_cli(capsys, "keys", "generate")
    assert code == 2 and "exactly one of" in out


def test_query_filters(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    def q(*args: str) -> list[dict[str, object]]:
        code, out = run_cli(
            capsys, "ledger", "query", "--ledger", str(ledger), "--format", "json", *args
        )
        assert code == 0, out
        return [json.loads(line) for line in out.splitlines()]

    assert len(q()) == 20
    assert {e["session"] for e in q("--session", "s2")} == {"s2"}
    assert [e["data"]["n"] for e in q("--decision", "deny")] == [3]
    assert len(q("--type", "policy.*")) == 5
    assert len(q("--type", "session.start", "--type", "session.end")) == 4
    assert len(q("--identity", "ci.repository=acme/*", "--type", "session.start")) == 2
    # entries without an identity of their own match through their session's
    assert len(q("--identity", "ci.repository=acme/*")) == 19
    assert len(q("--identity", "ci.repository=acme/*", "--decision", "allow")) == 4
    assert q("--identity", "pid=4242", "--session", "s1")[0]["type"] == "session.start"
    assert q("--identity", "ci.repository=other/*") == []
    assert len(q("--target", "ord*", "--session", "s1")) == 8
    all_ts = [e["ts"] for e in q()]
    assert [e["ts"] for e in q("--since", all_ts[5][:-1], "--until", all_ts[8][:-1])] == all_ts[5:8]
    assert len(q("--limit", "3")) == 3
    code, out = run_cli(capsys, "ledger", "query", "--ledger", str(ledger), "--identity", "nokey")
    assert code == 2 and "KEY=VALUE" in out
    code, out = run_cli(capsys, "ledger", "query", "--ledger", str(ledger), "--since", "yesterday")
    assert code == 2 and "ISO 8601" in out
    code, out = run_cli(capsys, "ledger", "query", "--ledger", str(ledger), "--decision", "deny")
    assert code == 0 and "#3 deny by rule r" in out and out.startswith("    SEQ")


def test_index_is_incremental_and_rebuilt_when_the_log_changes(ledger: Path) -> None:
    with Index.open(ledger) as index:
        assert len(list(index.query(Query()))) == 20
    with open_writer(ledger) as w:
        w.append("statement", session="s3", data={"n": 1, "text": "SELECT 3"})
    with Index.open(ledger) as index:
        assert [e.obj["session"] for e in index.query(Query(session="s3"))] == ["s3"]
        assert index.update() == 0
    # a different log under the same index: detected and rebuilt
    other = ledger.parent / "other"
    with open_writer(other) as w:
        for i in range(30):
            w.append("x", session="z", data={"i": i})
    (ledger / "entries.log").write_bytes((other / "entries.log").read_bytes())
    with Index.open(ledger) as index:
        assert len(list(index.query(Query(session="z")))) == 30


def test_show_and_replay(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    code, out = run_cli(capsys, "ledger", "show", "--ledger", str(ledger), "s1")
    assert code == 0, out
    assert (
        "account:  ci-ro" in out
        and "github acme/shop migrate run 9 [claimed], pid 4242 psql" in out
    )
    assert "#2 SELECT 3: 3 rows, 0.1 ms, result" in out
    code, out = run_cli(capsys, "ledger", "replay", "--ledger", str(ledger), "s1")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].endswith("session s1 to orders")
    assert "#1 SQL> SELECT 1" in out and "policy: #1 allow by rule r" in out
    assert "4111********1111" in out and "s1-2" in out and "NULL" in out
    code, out = run_cli(capsys, "ledger", "replay", "--ledger", str(ledger), "nope")
    assert code == 2 and "no entries for session" in out


def test_a_session_can_be_named_by_its_beginning(
    capsys: pytest.CaptureFixture[str], ledger: Path, tmp_path: Path
) -> None:
    code, out = run_cli(capsys, "ledger", "show", "--ledger", str(ledger), "s")
    assert code == 2 and "'s' is the beginning of several sessions (s1, s2)" in out
    d = tmp_path / "ids"
    with open_writer(d) as w:
        write_session(w, "7f3a9c01d2")
        write_session(w, "7f4b00aa11")
    code, out = run_cli(capsys, "ledger", "show", "--ledger", str(d), "7f3")
    assert code == 0, out
    assert out.startswith("session 7f3a9c01d2\n")
    code, out = run_cli(capsys, "ledger", "replay", "--ledger", str(d), "7f4b")
    assert code == 0 and "session 7f4b00aa11" in out.splitlines()[0]
    bundle = tmp_path / "b.jsonl"
    code, out = run_cli(
        capsys, "ledger", "export", "--ledger", str(d), "--session", "7f3a", "--out", str(bundle)
    )
    assert code == 0 and "session 7f3a9c01d2" in out
    code, out = run_cli(capsys, "ledger", "show", "--ledger", str(d), "7f")
    assert code == 2 and "several sessions (7f3a9c01d2, 7f4b00aa11)" in out


def test_replay_speed_waits_the_recorded_gaps(ledger: Path) -> None:
    with Index.open(ledger) as index:
        found = list(index.query(Query(session="s1")))
    slept: list[float] = []
    steps = list(transcript(found, BlobReader(ledger).read))
    replay(steps, 2.0, slept.append)
    # step_clock advances 1 ms per entry: every gap is 1 ms, replayed at half that
    assert slept == pytest.approx([0.0005] * (len(steps) - 1))
    slept.clear()
    replay(steps, 0, slept.append)
    assert slept == []


def test_prove_and_check_proof(
    capsys: pytest.CaptureFixture[str], ledger: Path, tmp_path: Path
) -> None:
    proof = tmp_path / "e7.tlog-proof"
    code, out = run_cli(
        capsys, "ledger", "prove", "--ledger", str(ledger), "--index", "7", "--out", str(proof)
    )
    assert code == 0, out
    text = proof.read_text()
    assert text.startswith("c2sp.org/tlog-proof@v1\nextra ") and "\nindex 7\n" in text
    code, out = run_cli(capsys, "ledger", "check-proof", str(proof), "--vkey", VKEY)
    assert code == 0 and out.startswith("OK: entry 7 (response,"), out
    # the proof without the entry needs it given
    bare = tmp_path / "bare.tlog-proof"
    run_cli(
        capsys,
        "ledger",
        "prove",
        "--ledger",
        str(ledger),
        "--index",
        "7",
        "--no-entry",
        "--out",
        str(bare),
    )
    code, out = run_cli(capsys, "ledger", "check-proof", str(bare), "--vkey", VKEY)
    assert code == 2 and "carries no entry" in out
    # a different entry, a flipped hash, the wrong key
    lines = text.split("\n")
    hash_line = next(i for i, ln in enumerate(lines) if ln.startswith("index ")) + 1
    flipped = lines[hash_line]
    lines[hash_line] = ("B" if flipped[0] == "A" else "A") + flipped[1:]
    proof.write_text("\n".join(lines))
    code, out = run_cli(capsys, "ledger", "check-proof", str(proof), "--vkey", VKEY)
    assert code == 1 and "does not lead to the tree root" in out
    code, out = run_cli(
        capsys, "ledger", "check-proof", str(bare), "--vkey", OTHER_KEY.verifier().to_vkey()
    )
    assert code == 1 and "no signature by a known key" in out
    code, out = run_cli(capsys, "ledger", "prove", "--ledger", str(ledger), "--index", "99")
    assert code == 2 and "not covered" in out


def test_consistency(capsys: pytest.CaptureFixture[str], ledger: Path, tmp_path: Path) -> None:
    notes, _ = read_history(ledger)
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text(notes[1])
    new.write_text(notes[-1])
    args = ["ledger", "consistency", str(old), str(new), "--vkey", VKEY]
    code, out = run_cli(capsys, *args, "--ledger", str(ledger), "--format", "json")
    assert code == 0, out
    result = json.loads(out)
    assert result["old"] == 8 and result["new"] == 20 and result["proof"]
    proof = tmp_path / "proof"
    proof.write_text("\n".join(result["proof"]) + "\n")
    assert run_cli(capsys, *args, "--proof", str(proof))[0] == 0
    proof.write_text("\n".join(reversed(result["proof"])) + "\n")
    code, out = run_cli(capsys, *args, "--proof", str(proof))
    assert code == 1 and "consistency proof does not reproduce" in out
    code, out = run_cli(
        capsys, "ledger", "consistency", str(new), str(old), "--ledger", str(ledger)
    )
    assert code == 1 and "larger than NEW" in out


def test_fsck(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    code, out = run_cli(capsys, "ledger", "fsck", "--ledger", str(ledger))
    assert code == 0 and "20 entries, 6 checkpoints" in out and out.rstrip().endswith("clean")
    assert "5 blobs checked" in out
    with (ledger / "entries.log").open("ab") as f:
        f.write(b"ALE1\x00\x00")  # a torn record
    code, out = run_cli(capsys, "ledger", "fsck", "--ledger", str(ledger), "--format", "json")
    assert code == 0
    assert json.loads(out)["actions"] == [
        "would truncate entries.log at byte "
        f"{(ledger / 'entries.log').stat().st_size - 6}: 6 bytes of torn tail (record header cut short)"
    ]
    data = bytearray((ledger / "entries.log").read_bytes())
    data[100] ^= 0xFF
    (ledger / "entries.log").write_bytes(bytes(data))
    code, out = run_cli(capsys, "ledger", "fsck", "--ledger", str(ledger))
    assert code == 1 and "TAMPERING: entries.log: record checksum mismatch at byte 0" in out


def test_reindex(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    code, out = run_cli(capsys, "ledger", "reindex", "--ledger", str(ledger))
    assert code == 0 and out.strip() == "indexed 20 entries"


def _blob(ledger: Path) -> Path:
    return next(p for p in (ledger / "blobs").rglob("*") if p.is_file() and p.parent.name != "tmp")


@pytest.mark.parametrize("damage", ["missing", "changed"])
def test_fsck_checks_blobs(capsys: pytest.CaptureFixture[str], ledger: Path, damage: str) -> None:
    """Issue 12, item 8: a missing blob was "clean" to fsck."""
    blob = _blob(ledger)
    if damage == "missing":
        blob.unlink()
    else:
        blob.write_bytes(blob.read_bytes() + b"x")
    code, out = run_cli(capsys, "ledger", "fsck", "--ledger", str(ledger))
    assert code == 1, out
    assert f"blob {blob.name}: " in out
    assert ("missing from the blob store" if damage == "missing" else "content was changed") in out
    code, out, _ = run_cli_split(
        capsys, "ledger", "fsck", "--ledger", str(ledger), "--format", "json"
    )
    assert code == 1 and json.loads(out)["findings"]
    code, out = run_cli(capsys, "ledger", "fsck", "--ledger", str(ledger), "--no-blobs")
    assert code == 0, out
