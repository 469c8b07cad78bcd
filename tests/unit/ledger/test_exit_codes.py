"""Exit codes of every ``appliance ledger`` command, in text and JSON modes (issue 12, item 5).

0: verified / done; 1: tampering found (or a proof that does not verify); 2: could not do it.
Each command is run on an intact ledger, a tampered one and an impossible request; in JSON
mode, commands that print one JSON object print one also when they fail, with ``ok`` false.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.ledger._framing import ENTRY_MAGIC, encode_frame
from appliance.ledger.store import read_history
from tests.unit.ledger.cli_helper import run_cli, run_cli_split
from tests.unit.ledger.conftest import KEY, OTHER_KEY, frames

VKEY = KEY.verifier().to_vkey()
OTHER = OTHER_KEY.verifier().to_vkey()

Setup = Callable[[Path, Path], list[str]]


def flip_a_bit(ledger: Path) -> None:
    """Damage record 5 of entries.log (its checksum no longer matches)."""
    raw = bytearray((ledger / "entries.log").read_bytes())
    raw[frames(ledger / "entries.log")[5].offset + 40] ^= 0x01
    (ledger / "entries.log").write_bytes(bytes(raw))


def edit_an_entry(ledger: Path) -> None:
    """Change entry 5 of session s1 and fix its checksum: only the Merkle root tells."""
    out = b""
    for f in frames(ledger / "entries.log"):
        payload = f.payload.replace(b"SELECT 2", b"SELECT 7") if f.seq == 5 else f.payload
        out += encode_frame(ENTRY_MAGIC, f.seq, payload)
    (ledger / "entries.log").write_bytes(out)


def _missing(tmp: Path) -> str:
    return str(tmp / "no-such-ledger")


def _proof(ledger: Path, tmp: Path, *, flip: bool) -> str:
    from appliance.ledger.proof import load_tree, make_proof
    from appliance.ledger.store import latest_checkpoint

    cp = latest_checkpoint(ledger)
    assert cp is not None
    tree, kept = load_tree(ledger, cp.size, keep=[7])
    text = make_proof(tree, 7, cp, entry=kept[7]).text()
    if flip:
        lines = text.split("\n")
        i = next(i for i, ln in enumerate(lines) if ln.startswith("index ")) + 1
        lines[i] = ("B" if lines[i][0] == "A" else "A") + lines[i][1:]
        text = "\n".join(lines)
    path = tmp / "e7.proof"
    path.write_text(text)
    return str(path)


def _checkpoints(ledger: Path, tmp: Path) -> tuple[str, str]:
    notes, _ = read_history(ledger)
    old, new = tmp / "old", tmp / "new"
    old.write_text(notes[1])
    new.write_text(notes[-1])
    return str(old), str(new)


def _consistency(ledger: Path, tmp: Path, *, reverse: bool) -> list[str]:
    from appliance.ledger.proof import load_tree
    from appliance.ledger.store import unverified_checkpoint

    old, new = _checkpoints(ledger, tmp)
    a = unverified_checkpoint(Path(old).read_text())
    b = unverified_checkpoint(Path(new).read_text())
    tree, _ = load_tree(ledger, b.size)
    import base64

    lines = [base64.b64encode(p).decode() for p in tree.consistency_proof(a.size, b.size)]
    if reverse:
        lines.reverse()
    proof = tmp / "consistency"
    proof.write_text("\n".join(lines) + "\n")
    return ["consistency", old, new, "--vkey", VKEY, "--proof", str(proof)]


def _bundle(ledger: Path, tmp: Path, *, tamper: bool) -> str:
    from appliance.ledger.export import export_bundle

    path = tmp / "s1.jsonl"
    with path.open("wb") as f:
        export_bundle(ledger, "s1", f)
    if tamper:
        lines = path.read_bytes().splitlines()
        entry = json.loads(lines[2])
        seq = entry["seq"]
        entry["tlog_proof"] = entry["tlog_proof"].replace(
            f"\nindex {seq}\n", f"\nindex {seq + 1}\n"
        )
        assert entry["tlog_proof"] != json.loads(lines[2])["tlog_proof"]
        lines[2] = json.dumps(entry).encode()
        path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def _with(change: Callable[[Path], None], args: Callable[[Path, Path], list[str]]) -> Setup:
    def setup(ledger: Path, tmp: Path) -> list[str]:
        change(ledger)
        return args(ledger, tmp)

    return setup


def _as_is(args: Callable[[Path, Path], list[str]]) -> Setup:
    return _with(lambda _: None, args)


# command: (ok, tampered, cannot, has --format json)
CASES: dict[str, tuple[Setup, Setup, Setup, bool]] = {
    "verify": (
        _as_is(lambda d, t: ["verify", "--ledger", str(d), "--vkey", VKEY]),
        _with(edit_an_entry, lambda d, t: ["verify", "--ledger", str(d), "--vkey", VKEY]),
        _as_is(lambda d, t: ["verify", "--ledger", str(d), "--vkey", OTHER]),
        True,
    ),
    "fsck": (
        _as_is(lambda d, t: ["fsck", "--ledger", str(d)]),
        _with(flip_a_bit, lambda d, t: ["fsck", "--ledger", str(d)]),
        _as_is(lambda d, t: ["fsck", "--ledger", _missing(t)]),
        True,
    ),
    "query": (
        _as_is(lambda d, t: ["query", "--ledger", str(d)]),
        _with(flip_a_bit, lambda d, t: ["query", "--ledger", str(d)]),
        _as_is(lambda d, t: ["query", "--ledger", _missing(t)]),
        True,
    ),
    "reindex": (
        _as_is(lambda d, t: ["reindex", "--ledger", str(d)]),
        _with(flip_a_bit, lambda d, t: ["reindex", "--ledger", str(d)]),
        _as_is(lambda d, t: ["reindex", "--ledger", _missing(t)]),
        False,
    ),
    "show": (
        _as_is(lambda d, t: ["show", "--ledger", str(d), "s1"]),
        _with(flip_a_bit, lambda d, t: ["show", "--ledger", str(d), "s1"]),
        _as_is(lambda d, t: ["show", "--ledger", str(d), "nope"]),
        True,
    ),
    "replay": (
        _as_is(lambda d, t: ["replay", "--ledger", str(d), "s1"]),
        _with(flip_a_bit, lambda d, t: ["replay", "--ledger", str(d), "s1"]),
        _as_is(lambda d, t: ["replay", "--ledger", str(d), "nope"]),
        False,
    ),
    "prove": (
        _as_is(lambda d, t: ["prove", "--ledger", str(d), "--index", "3"]),
        _with(edit_an_entry, lambda d, t: ["prove", "--ledger", str(d), "--index", "3"]),
        _as_is(lambda d, t: ["prove", "--ledger", str(d), "--index", "99"]),
        False,
    ),
    "check-proof": (
        _as_is(lambda d, t: ["check-proof", _proof(d, t, flip=False), "--vkey", VKEY]),
        _as_is(lambda d, t: ["check-proof", _proof(d, t, flip=True), "--vkey", VKEY]),
        _as_is(lambda d, t: ["check-proof", str(t / "missing.proof"), "--vkey", VKEY]),
        True,
    ),
    "consistency": (
        _as_is(lambda d, t: _consistency(d, t, reverse=False)),
        _as_is(lambda d, t: _consistency(d, t, reverse=True)),
        _as_is(lambda d, t: ["consistency", str(t / "a"), str(t / "b"), "--proof", "x"]),
        True,
    ),
    "export": (
        _as_is(
            lambda d, t: ["export", "--ledger", str(d), "--session", "s1", "--out", str(t / "o")]
        ),
        _with(
            edit_an_entry,
            lambda d, t: ["export", "--ledger", str(d), "--session", "s1", "--out", str(t / "o")],
        ),
        _as_is(
            lambda d, t: ["export", "--ledger", str(d), "--session", "nope", "--out", str(t / "o")]
        ),
        False,
    ),
    "verify-bundle": (
        _as_is(lambda d, t: ["verify-bundle", _bundle(d, t, tamper=False), "--vkey", VKEY]),
        _as_is(lambda d, t: ["verify-bundle", _bundle(d, t, tamper=True), "--vkey", VKEY]),
        _as_is(lambda d, t: ["verify-bundle", _bundle(d, t, tamper=False), "--vkey", OTHER]),
        True,
    ),
}

# Commands whose JSON output is one object with "ok" (the others print JSON lines of entries).
REPORTS = {"verify", "fsck", "check-proof", "consistency", "verify-bundle"}


def _params() -> list[tuple[str, int, str]]:
    out = []
    for name, (_, _, _, json_mode) in CASES.items():
        for code in (0, 1, 2):
            for fmt in ("text", "json") if json_mode else ("text",):
                out.append((name, code, fmt))
    return out


@pytest.mark.parametrize(("command", "expected", "fmt"), _params())
def test_exit_code(
    capsys: pytest.CaptureFixture[str],
    ledger: Path,
    tmp_path: Path,
    command: str,
    expected: int,
    fmt: str,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    args = CASES[command][expected](ledger, work)
    if fmt == "json":
        args += ["--format", "json"]
    code, out, err = run_cli_split(capsys, "ledger", *args)
    assert code == expected, f"{command} {fmt}: exit {code}\n{out}\n{err}"
    if fmt == "json" and command in REPORTS:
        report = json.loads(out)
        assert report["ok"] is (expected == 0), out
        if expected == 1:
            assert report["findings"], out
        if expected == 2:
            assert report["error"], out
    elif fmt == "json" and expected == 0:
        assert all(json.loads(line) for line in out.splitlines())
    if expected:
        assert err.strip(), "a failing command says why on stderr"


def test_text_and_json_agree_on_verify(capsys: pytest.CaptureFixture[str], ledger: Path) -> None:
    """The reported defect: `verify --format json` printed ok: false and exited 0."""
    edit_an_entry(ledger)
    base = ["ledger", "verify", "--ledger", str(ledger), "--vkey", VKEY]
    text = run_cli(capsys, *base)[0]
    code, out, _ = run_cli_split(capsys, *base, "--format", "json")
    assert json.loads(out)["ok"] is False
    assert (text, code) == (1, 1)
