"""The legacy SCP source stream (:mod:`appliance.protocols.ssh.scp`)."""

from __future__ import annotations

import pytest

from appliance.protocols.ssh.scp import MAX_LINE, ScpProtocolError, ScpSource

STREAM = (
    b"T1700000000 0 1700000000 0\n"
    b"C0644 5 a.txt\nhello\x00"
    b"D0755 0 sub\n"
    b"C0600 0 empty\n\x00"
    b"C0644 3 b.bin\n\x01\x02\x03\x00"
    b"E\n"
    b"\x01warning: something\n"
)


def summary(
    source: ScpSource, chunks: list[bytes]
) -> list[tuple[str, str, tuple[str, ...], int, bytes]]:
    out = []
    for chunk in chunks:
        for ev in source.feed(chunk):
            out.append((ev.kind, ev.name, ev.dirs, ev.size, ev.data))
    merged: list[tuple[str, str, tuple[str, ...], int, bytes]] = []
    for ev in out:  # content cut by chunking is one piece here
        if ev[0] == "data" and merged and merged[-1][0] == "data":
            merged[-1] = ("data", "", (), 0, merged[-1][4] + ev[4])
        else:
            merged.append(ev)
    return merged


EXPECTED = [
    ("file", "a.txt", (), 5, b""),
    ("data", "", (), 0, b"hello"),
    ("end", "", (), 0, b""),
    ("dir", "sub", (), 0, b""),
    ("file", "empty", ("sub",), 0, b""),
    ("end", "", (), 0, b""),
    ("file", "b.bin", ("sub",), 3, b""),
    ("data", "", (), 0, b"\x01\x02\x03"),
    ("end", "", (), 0, b""),
    ("leave", "", (), 0, b""),
    ("message", "warning: something", (), 0, b""),
]


def test_a_stream_whole_and_byte_by_byte() -> None:
    assert summary(ScpSource(), [STREAM]) == EXPECTED
    assert summary(ScpSource(), [STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


@pytest.mark.parametrize(
    "bad",
    [
        b"X0644 1 a\n",
        b"C0644 1 ../etc/passwd\n",
        b"C0644 1 .\n",
        b"T1 2\n",
        b"C" + b"9" * MAX_LINE + b"\n",
    ],
)
def test_bad_header_lines(bad: bytes) -> None:
    with pytest.raises(ScpProtocolError):
        ScpSource().feed(bad)


def test_a_header_line_without_end_is_capped() -> None:
    with pytest.raises(ScpProtocolError):
        ScpSource().feed(b"C0644 1 " + b"a" * (MAX_LINE + 10))
