"""verify, fsck and the writer judge a ledger directory alike (issue 12, item 7): what a crash
can leave is a warning to verify, "recovery needed" to fsck and repaired by the writer; what
only tampering can leave is exit 1 for both and a writer that refuses to open."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.ledger._framing import CHECKPOINT_MAGIC, encode_frame
from appliance.ledger.errors import TamperError
from appliance.ledger.store import read_history
from appliance.ledger.verify import verify_ledger
from tests.unit.ledger.cli_helper import run_cli
from tests.unit.ledger.conftest import KEY, open_writer

VKEY = KEY.verifier().to_vkey()


def _append(d: Path, data: bytes) -> None:
    with (d / "checkpoints.log").open("ab") as f:
        f.write(data)


def torn_header(d: Path) -> None:
    """The history's last append cut inside its header."""
    _append(d, b"ALC1\x00\x00\x00")


def torn_record(d: Path) -> None:
    """The history's last append cut inside its note."""
    notes, _ = read_history(d)
    _append(d, encode_frame(CHECKPOINT_MAGIC, len(notes), notes[-1].encode())[:-9])


def torn_checksum(d: Path) -> None:
    """The history's last record whole but for its checksum (pages lost in a power cut)."""
    notes, _ = read_history(d)
    frame = bytearray(encode_frame(CHECKPOINT_MAGIC, len(notes), notes[-1].encode()))
    frame[-1] ^= 0xFF
    _append(d, bytes(frame))


def checkpoint_one_behind(d: Path) -> None:
    """A crash between appending to the history and replacing `checkpoint`."""
    notes, _ = read_history(d)
    (d / "checkpoint").write_text(notes[-2])


def checkpoint_missing(d: Path) -> None:
    (d / "checkpoint").unlink()


def damaged_inside_history(d: Path) -> None:
    """A byte changed in a checkpoint record that is not the last."""
    raw = bytearray((d / "checkpoints.log").read_bytes())
    raw[40] ^= 0x01
    (d / "checkpoints.log").write_bytes(bytes(raw))


def checkpoint_rolled_back(d: Path) -> None:
    """`checkpoint` several notes behind the history: no crash leaves that."""
    notes, _ = read_history(d)
    (d / "checkpoint").write_text(notes[1])


CRASHES: dict[str, Callable[[Path], None]] = {
    "torn-header": torn_header,
    "torn-record": torn_record,
    "torn-checksum": torn_checksum,
    "checkpoint-one-behind": checkpoint_one_behind,
    "checkpoint-missing": checkpoint_missing,
}
TAMPERING: dict[str, Callable[[Path], None]] = {
    "damaged-inside-history": damaged_inside_history,
    "checkpoint-rolled-back": checkpoint_rolled_back,
}


@pytest.mark.parametrize("crash", CRASHES)
def test_a_crash_leftover_is_a_warning_everywhere(
    capsys: pytest.CaptureFixture[str], ledger: Path, crash: str
) -> None:
    CRASHES[crash](ledger)
    code, out = run_cli(capsys, "ledger", "verify", "--ledger", str(ledger), "--vkey", VKEY)
    assert code == 0, out
    assert "warning:" in out and "the writer repairs it on open" in out
    code, out = run_cli(capsys, "ledger", "fsck", "--ledger", str(ledger))
    assert code == 0, out
    assert out.rstrip().endswith("recovery needed (the writer does it on open)")
    with open_writer(ledger) as w:
        w.append("x", data={})
    report = verify_ledger(ledger, [KEY.verifier()])
    assert report.ok and not report.warnings, report.warnings
    assert run_cli(capsys, "ledger", "fsck", "--ledger", str(ledger))[1].rstrip().endswith("clean")


@pytest.mark.parametrize("tamper", TAMPERING)
def test_tampering_is_tampering_everywhere(
    capsys: pytest.CaptureFixture[str], ledger: Path, tamper: str
) -> None:
    TAMPERING[tamper](ledger)
    code, out = run_cli(capsys, "ledger", "verify", "--ledger", str(ledger), "--vkey", VKEY)
    assert code == 1, out
    code, out = run_cli(capsys, "ledger", "fsck", "--ledger", str(ledger))
    assert code == 1 and "TAMPERING" in out, out
    with pytest.raises(TamperError):
        open_writer(ledger).close()
