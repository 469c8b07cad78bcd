"""The verifier's pins (``--state``): one signed note per log, read back as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.ledger.errors import LedgerError
from appliance.ledger.fleet import StateDir
from appliance.ledger.store import read_history
from tests.unit.fleet.conftest import make_ledger


def test_pins_round_trip(tmp_path: Path) -> None:
    notes, _ = read_history(make_ledger(tmp_path / "l", sessions=1))
    state = StateDir(tmp_path / "state")
    assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"
    assert state.pinned("ci.example/r1") is None
    state.pin("ci.example/r1", notes[-1])
    state.pin("ci.example/r2", notes[0])
    note, cp = state.pinned("ci.example/r1")  # type: ignore[misc]
    assert note == notes[-1] and cp.size == 9
    assert state.origins() == ["ci.example/r1", "ci.example/r2"]
    assert (tmp_path / "state" / "ci.example%2Fr1.checkpoint").read_text() == notes[-1]
    (tmp_path / "state" / "ci.example%2Fr3.checkpoint").write_text("not a note")
    with pytest.raises(LedgerError, match="is not a checkpoint note"):
        state.pinned("ci.example/r3")
