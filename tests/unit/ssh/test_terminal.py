"""The recording transform (:mod:`appliance.proxy.ssh.terminal`): masked by whole lines,
secrets typed without echo hidden, frames cut anywhere, asciicast-shaped output."""

from __future__ import annotations

import json

from appliance.masking import MaskCounts, Masker, MaskingConfig
from appliance.proxy.ssh.terminal import (
    FLUSH_BYTES,
    FLUSH_GAP_US,
    StreamTransform,
    frame,
    header_frame,
)

MASKER = Masker(MaskingConfig(), hmac_key=b"k" * 32).for_target("web")


def run(
    frames: list[bytes], *, chunk: int | None = None
) -> tuple[dict[str, object], list[list[object]], MaskCounts]:
    counts = MaskCounts()
    t = StreamTransform(MASKER, counts)
    data = b"".join(frames)
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    out = b"".join(t(p) for p in pieces)
    lines = [json.loads(line) for line in out.splitlines()]
    return lines[0], lines[1:], counts


PTY = header_frame({"pty": True, "term": "xterm", "cols": 80, "rows": 24})
PIPE = header_frame({"pty": False})


def test_a_card_echoed_one_key_at_a_time_is_masked_as_one_value() -> None:
    keys = [frame(b"i", 1000 + i, c.encode()) for i, c in enumerate("4111111111111111\r")]
    echo = [frame(b"o", 1100 + i, c.encode()) for i, c in enumerate("4111111111111111")]
    frames = [
        PTY,
        frame(b"o", 10, b"$ "),
        *[x for pair in zip(keys, echo, strict=False) for x in pair],
        keys[-1],
        frame(b"o", 3000, b"\r\n"),
        frame(b"z", 4000, b""),
    ]
    for chunk in (None, 1, 7):
        header, events, counts = run(frames, chunk=chunk)
        text = json.dumps(events)
        assert "4111" not in text, (chunk, events)
        assert "[REDACTED:CARD]" in text
        assert header["pty"] is True
        assert counts.as_dict()["detectors"]["card"] >= 1


def test_input_typed_without_echo_is_hidden() -> None:
    frames = [
        PTY,
        frame(b"o", 10, b"[sudo] password for deploy: "),
        frame(b"i", 20, b"hunter2\r"),
        frame(b"o", 30, b"\r\n"),
        frame(b"o", 40, b"$ "),
        frame(b"i", 50, b"ls\r"),
        frame(b"o", 60, b"ls\r\n"),
        frame(b"z", 70, b""),
    ]
    _, events, counts = run(frames)
    inputs = [e[2] for e in events if e[1] == "i"]
    assert inputs == ["[NO-ECHO: 7 characters]\r", "ls\r"]
    assert "hunter2" not in json.dumps(events)
    assert counts.as_dict()["detectors"]["no_echo_input"] == 1


def test_no_echo_without_a_prompt_is_hidden_too_and_edits_are_applied() -> None:
    frames = [
        PTY,
        frame(b"o", 10, b"enter it: "),
        frame(b"i", 20, b"s3cret-value\r"),
        frame(b"o", 30, b"\r\nok\r\n"),
        frame(b"i", 40, b"ecx\x7fho hi\r"),  # a typo fixed with backspace, echoed as fixed
        frame(b"o", 50, b"ecx\b \bho hi\r\nhi\r\n"),
        frame(b"z", 60, b""),
    ]
    _, events, _ = run(frames)
    inputs = [e[2] for e in events if e[1] == "i"]
    assert inputs[0] == "[NO-ECHO: 12 characters]\r"
    assert inputs[1] == "ecx\x7fho hi\r"


def test_typed_ahead_lines_wait_for_their_echo() -> None:
    frames = [
        PTY,
        frame(b"i", 10, b"echo a\rpassword-typed-early\r"),
        frame(b"o", 20, b"echo a\r\na\r\n"),
        frame(b"o", 30, b"\r\n"),
        frame(b"z", 40, b""),
    ]
    _, events, _ = run(frames)
    inputs = [e[2] for e in events if e[1] == "i"]
    assert inputs[0] == "echo a\r"
    assert inputs[1].startswith("[NO-ECHO")


def test_piped_streams_are_masked_per_line() -> None:
    frames = [
        PIPE,
        frame(b"i", 1, b"card 4111 1111 "),
        frame(b"i", 2, b"1111 1111\n"),
        frame(b"o", 3, b"ok 5555555555554444\n"),
        frame(b"e", 4, b"warning: iban DE89370400440532013000\n"),
        frame(b"z", 5, b""),
    ]
    _, events, _ = run(frames)
    assert [e[1] for e in events] == ["i", "o", "e"]
    text = json.dumps(events)
    assert "4111" not in text and "5555" not in text and "DE89" not in text


def test_a_pause_writes_a_prompt_but_keeps_a_value_being_typed() -> None:
    frames = [
        PIPE,
        frame(b"o", 0, b"Card number: 4111 "),
        frame(b"o", FLUSH_GAP_US + 10, b"1111 1111 1111\n"),
        frame(b"z", FLUSH_GAP_US + 20, b""),
    ]
    _, events, _ = run(frames)
    assert events[0][2] == "Card number:"  # shown at the pause
    assert events[1][2] == " [REDACTED:CARD]\n"  # the value waited for the rest of its line


def test_long_lines_and_resizes() -> None:
    frames = [
        PTY,
        frame(b"o", 1, b"x" * (FLUSH_BYTES + 10)),
        frame(b"r", 2, b"100x30"),
        frame(b"z", 3, b""),
    ]
    _, events, _ = run(frames)
    assert events[0][1] == "o" and len(events[0][2]) == FLUSH_BYTES + 10
    assert events[-1] == [2, "r", "100x30"]
