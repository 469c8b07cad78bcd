"""The query index is never believed (issue 12, item 6).

The reported defect: deleting two rows of ``index.sqlite`` hid a DROP TABLE and its denial
from query, show, replay and export, and ``verify`` still passed. Here the same rows are
deleted (and other edits made); every read must still return them, and verify must fail.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.ledger import LedgerWriter
from appliance.ledger.index import Index, IndexMismatch, Query
from tests.unit.ledger.cli_helper import run_cli, run_cli_split
from tests.unit.ledger.conftest import KEY, open_writer, write_session

VKEY = KEY.verifier().to_vkey()
DROP = "DROP TABLE customers"


def _migration(w: LedgerWriter) -> None:
    common = {"session": "mig", "account": "ci", "target": "orders"}
    w.append("session.start", identity={"pid": 7, "comm": "psql"}, data={}, **common)
    w.append("statement", data={"n": 1, "text": "SELECT 1", "decision": {}}, **common)
    w.append("response", data={"n": 1, "tag": "SELECT 1"}, **common)
    w.append("statement", data={"n": 2, "text": DROP}, **common)
    w.append(
        "policy.decision",
        data={"n": 2, "decision": "deny", "rule": "no-drop", "enforced": True},
        **common,
    )
    w.append("response", data={"n": 2, "tag": None, "error": {"code": "42501"}}, **common)
    w.append("session.end", data={"reason": "client closed"}, **common)


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    d = tmp_path / "ledger"
    with open_writer(d, checkpoint_entries=5, checkpoint_interval=3600) as w:
        write_session(w, "s1")
        _migration(w)
        write_session(w, "s2")
    with Index.open(d):
        pass  # the index exists, as after any earlier query
    return d


def _db(ledger: Path) -> sqlite3.Connection:
    return sqlite3.connect(ledger / "index.sqlite")


def _drop_seqs(ledger: Path) -> list[int]:
    with Index.open(ledger) as index:
        return [
            e.seq
            for e in index.query(Query(session="mig"))
            if DROP in json.dumps(e.obj) or e.obj["type"] == "policy.decision"
        ]


def delete_rows(ledger: Path) -> None:
    """The reported edit: the DROP statement's row and its denial's row deleted."""
    seqs = _drop_seqs(ledger)
    assert len(seqs) == 2
    with _db(ledger) as db:
        db.executemany("DELETE FROM entries WHERE seq = ?", [(s,) for s in seqs])


def delete_rows_and_renumber(ledger: Path) -> None:
    """Rows deleted, the later ones renumbered, the counts fixed: the index holds together."""
    seqs = _drop_seqs(ledger)
    with _db(ledger) as db:
        for s in sorted(seqs, reverse=True):
            length = db.execute("SELECT length FROM entries WHERE seq = ?", (s,)).fetchone()[0]
            db.execute("DELETE FROM entries WHERE seq = ?", (s,))
            db.execute("UPDATE entries SET length = length + ? WHERE seq = ?", (length, s - 1))
            db.execute("UPDATE entries SET seq = seq - 1 WHERE seq > ?", (s,))
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) - 2 WHERE key = 'size'")


def move_to_other_session(ledger: Path) -> None:
    """The rows kept, but said to belong to another session."""
    with _db(ledger) as db:
        db.executemany(
            "UPDATE entries SET session = 's2' WHERE seq = ?", [(s,) for s in _drop_seqs(ledger)]
        )


def rename_whole_session(ledger: Path) -> None:
    """Every row of the session said to belong to another one: the session vanishes."""
    with _db(ledger) as db:
        db.execute("UPDATE entries SET session = 's2' WHERE session = 'mig'")


EDITS: dict[str, Callable[[Path], None]] = {
    "deleted": delete_rows,
    "deleted-and-renumbered": delete_rows_and_renumber,
    "moved": move_to_other_session,
    "session-renamed": rename_whole_session,
}


@pytest.mark.parametrize("edit", EDITS)
def test_verify_checks_the_index(
    capsys: pytest.CaptureFixture[str], ledger: Path, edit: str
) -> None:
    code, out = run_cli(capsys, "ledger", "verify", "--ledger", str(ledger), "--vkey", VKEY)
    assert code == 0, out
    EDITS[edit](ledger)
    code, out = run_cli(capsys, "ledger", "verify", "--ledger", str(ledger), "--vkey", VKEY)
    assert code == 1, out
    assert "index.sqlite" in out and "reindex" in out


@pytest.mark.parametrize("edit", EDITS)
def test_show_replay_and_query_still_see_the_drop(
    capsys: pytest.CaptureFixture[str], ledger: Path, edit: str
) -> None:
    EDITS[edit](ledger)
    code, out, err = run_cli_split(capsys, "ledger", "show", "--ledger", str(ledger), "mig")
    assert code == 0, out + err
    assert DROP in out and "deny" in out
    assert "index.sqlite did not match entries.log" in err
    EDITS[edit](ledger)
    code, out, err = run_cli_split(capsys, "ledger", "replay", "--ledger", str(ledger), "mig")
    assert code == 0 and DROP in out and "no-drop" in out, out + err
    EDITS[edit](ledger)
    code, out, err = run_cli_split(
        capsys, "ledger", "query", "--ledger", str(ledger), "--session", "mig", "--format", "json"
    )
    if code == 0:
        types = [json.loads(line)["type"] for line in out.splitlines()]
        assert types.count("policy.decision") == 1 and types.count("statement") == 2
    else:  # found out after returning entries: refused, and the index was rebuilt
        assert code == 2 and "run the command again" in err
    code, out, err = run_cli_split(
        capsys, "ledger", "query", "--ledger", str(ledger), "--decision", "deny", "--format", "json"
    )
    assert code == 0 and any(json.loads(line)["session"] == "mig" for line in out.splitlines())


@pytest.mark.parametrize("edit", EDITS)
def test_export_holds_the_drop(
    capsys: pytest.CaptureFixture[str], ledger: Path, tmp_path: Path, edit: str
) -> None:
    EDITS[edit](ledger)
    bundle = tmp_path / "mig.jsonl"
    code, out = run_cli(
        capsys,
        "ledger",
        "export",
        "--ledger",
        str(ledger),
        "--session",
        "mig",
        "--out",
        str(bundle),
    )
    assert code == 0, out
    records = [json.loads(line) for line in bundle.read_text().splitlines()]
    entries = [r["entry"] for r in records if r["kind"] == "entry"]
    assert len(entries) == 7
    assert any(e["data"].get("text") == DROP for e in entries)
    assert any(e["type"] == "policy.decision" for e in entries)
    code, out = run_cli(capsys, "ledger", "verify-bundle", str(bundle), "--vkey", VKEY)
    assert code == 0 and "session mig: 7 entries" in out, out


def test_a_row_pointing_at_another_entry_is_not_believed(ledger: Path) -> None:
    """A query returns what the log holds at the row's offset only if it is that entry."""
    with _db(ledger) as db:
        (off, length) = db.execute("SELECT offset, length FROM entries WHERE seq = 3").fetchone()
        db.execute("UPDATE entries SET offset = ?, length = ? WHERE seq = 2", (off, length))
    with Index.open(ledger) as index:
        assert index.notes and "byte ranges" in index.notes[0]
        assert [e.seq for e in index.query(Query(session="s1"))][:3] == [1, 2, 3]


def test_a_query_that_already_returned_entries_is_refused(ledger: Path) -> None:
    """A row whose fields lie is found when its entry is read; by then the query has
    returned earlier entries, so it is refused (and the index rebuilt)."""
    with Index.open(ledger) as index:
        rows = list(index.query(Query(types=["statement"])))
        assert len(rows) == 6
        index.db.execute("UPDATE entries SET type = 'statement' WHERE seq = 3")
        index.db.commit()
        with pytest.raises(IndexMismatch, match="run the command again"):
            list(index.query(Query(types=["statement"])))
        assert len(list(index.query(Query(types=["statement"])))) == 6
