"""SSH recordings in the ledger (:mod:`appliance.ledger.recordings`): read back, replayed
as the terminal showed them, exported as asciicast v2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.ledger.api import PendingBlob
from appliance.ledger.errors import LedgerError
from appliance.ledger.recordings import event_line, header_line, read_recording
from tests.unit.ledger.cli_helper import run_cli
from tests.unit.ledger.conftest import KEY, open_writer

RECORDING = (
    header_line({"pty": True, "term": "xterm", "cols": 100, "rows": 30, "request": "shell"})
    + event_line(1000, "o", "$ ")
    + event_line(2_000_000, "o", "cat invoice\r\ncard [REDACTED:CARD]\r\n")
    + event_line(1_500_000, "i", "cat invoice\r")
    + event_line(2_500_000, "r", "120x40")
    + event_line(3_000_000, "e", "bye\r\n")
)


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    d = tmp_path / "ledger"
    with open_writer(d, inline_limit=1 << 16) as w:
        common = {"session": "ssh1", "account": "deploy", "target": "web"}
        w.append(
            "session.start",
            data={"protocol": "ssh", "client": "10.9.0.2:4000", "server": "10.0.0.7:22"},
            **common,
        )
        w.append(
            "statement",
            data={
                "n": 1,
                "protocol": "ssh",
                "request": "shell",
                "text": "shell",
                "decision": {"decision": "allow"},
            },
            **common,
        )
        w.append(
            "response",
            data={
                "n": 1,
                "protocol": "ssh",
                "exit_status": 0,
                "duration_us": 3_500_000,
                "bytes_in": 12,
                "bytes_out": 40,
            },
            blobs={"output": PendingBlob(None, RECORDING)},
            **common,
        )
        w.append("session.end", data={"reason": "job disconnected"}, **common)
    return d


def test_a_recording_reads_back() -> None:
    rec = read_recording(RECORDING)
    assert rec.header["cols"] == 100
    assert rec.events[1] == (2_000_000, "o", "cat invoice\r\ncard [REDACTED:CARD]\r\n")
    with pytest.raises(LedgerError):
        read_recording(b"not json\n")


def test_replay_writes_what_the_terminal_showed(
    capsys: pytest.CaptureFixture[str], ledger: Path
) -> None:
    code, out = run_cli(capsys, "ledger", "replay", "--ledger", str(ledger), "ssh1")
    assert code == 0, out
    assert "#1 shell: shell" in out
    assert "$ cat invoice\r\ncard [REDACTED:CARD]\r\nbye\r\n" in out  # output, as written
    assert "exit 0; 12 B in, 40 B out" in out


def test_export_asciicast(capsys: pytest.CaptureFixture[str], ledger: Path, tmp_path: Path) -> None:
    cast = tmp_path / "s.cast"
    code, out = run_cli(
        capsys,
        "ledger",
        "export",
        "--ledger",
        str(ledger),
        "--session",
        "ssh1",
        "--format",
        "asciicast",
        "--out",
        str(cast),
    )
    assert code == 0, out
    lines = cast.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2 and (header["width"], header["height"]) == (100, 30)
    assert header["env"]["TERM"] == "xterm"
    events = [json.loads(line) for line in lines[1:]]
    assert events == [
        [0.001, "o", "$ "],
        [1.5, "i", "cat invoice\r"],
        [2.0, "o", "cat invoice\r\ncard [REDACTED:CARD]\r\n"],
        [2.5, "r", "120x40"],
        [3.0, "o", "bye\r\n"],
    ]
    code, out = run_cli(
        capsys,
        "ledger",
        "export",
        "--ledger",
        str(ledger),
        "--session",
        "ssh1",
        "--format",
        "asciicast",
        "--request",
        "9",
        "--out",
        str(tmp_path / "x.cast"),
    )
    assert code == 2 and "no recording of request 9" in out


def test_the_report_carries_the_terminal_recording(
    capsys: pytest.CaptureFixture[str], ledger: Path, tmp_path: Path
) -> None:
    export = tmp_path / "s.cast"
    args = ["--session", "ssh1", "--format", "asciicast", "--out", str(export)]
    assert run_cli(capsys, "ledger", "export", "--ledger", str(ledger), *args)[0] == 0
    out = tmp_path / "report"
    vkey = KEY.verifier().to_vkey()
    code, text = run_cli(
        capsys,
        "report",
        "--source",
        str(ledger),
        "--out",
        str(out),
        "--vkey",
        vkey,
        "--no-progress",
    )
    assert code == 0, text
    casts = list(out.glob("sessions/*/*.cast"))
    assert [c.name for c in casts] == [casts[0].name] and casts[0].name.endswith(".1.cast")
    assert casts[0].read_bytes().splitlines()[1:] == export.read_bytes().splitlines()[1:]
    page = casts[0].with_name(casts[0].name.removesuffix(".1.cast") + ".html").read_text()
    assert "Terminal recordings" in page and f'href="{casts[0].name}"' in page
    assert "5 events" in page
