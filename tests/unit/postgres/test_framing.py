"""The framer: splits however the bytes are cut, refuses bad headers before the body
arrives, and never holds more than one capped message."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.protocols.postgres import (
    BACKEND_TYPES,
    FRONTEND_TYPES,
    Framer,
    Limits,
    Messages,
    PeerProtocolError,
)
from appliance.protocols.postgres.messages import CopyData, Query, Sync, encode_datarow
from tests.unit.postgres.transcripts import load, reference_split

SETTINGS = settings(max_examples=200, derandomize=True, database=None, deadline=None)
LIMITS = Limits(data_row=4096, copy_data=4096, backend_other=1024)

messages = st.lists(
    st.one_of(
        st.lists(st.none() | st.binary(max_size=20), max_size=5).map(encode_datarow),
        st.binary(max_size=100).map(lambda b: CopyData(b).encode()),
        st.just(b"Z\0\0\0\x05I"),
    ),
    max_size=30,
)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p % (len(data) + 1) for p in points})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@SETTINGS
@given(messages, st.lists(st.integers(0, 10_000), max_size=20))
def test_any_cut_gives_the_same_frames(frames: list[bytes], points: list[int]) -> None:
    stream = b"".join(frames)
    framer = Framer(LIMITS.caps(BACKEND_TYPES, frontend=False), side="server")
    got = []
    for piece in cut(stream, points):
        chunk, index = framer.feed(piece)
        # frames are contiguous and cover the chunk exactly
        if index:
            assert [s for _, s, _ in index] == [0, *(e for _, _, e in index[:-1])]
        assert (index[-1][2] if index else 0) == len(chunk)
        got += [chunk[s:e] for _, s, e in index]
        assert framer.buffered <= LIMITS.largest + 5
    assert got == frames
    assert framer.buffered == 0


def test_real_result_set_split() -> None:
    stream = load("psql_trust").stream("s").removeprefix(b"N")
    framer = Framer(Limits().caps(BACKEND_TYPES + b"RK", frontend=False), side="server")
    chunk, index = framer.feed(stream)
    assert [(t, chunk[s:e]) for t, s, e in index] == reference_split(stream)


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (b"D\0\0\0\x03", "invalid message length 3"),
        (b"D\0\0\x10\x01", "4097 bytes, over the cap of 4096"),
        (b"D\xff\xff\xff\xff", "over the cap"),
        (b"R\0\0\x04\x01", "1025 bytes, over the cap of 1024"),
        (b"Q\0\0\0\x04", "unexpected message type 'Q'"),
        (b"\x00\0\0\0\x04", "unexpected message type 0x00"),
    ],
)
def test_bad_headers_are_refused_before_the_body(header: bytes, problem: str) -> None:
    framer = Framer(LIMITS.caps(BACKEND_TYPES + b"R", frontend=False), side="server")
    with pytest.raises(PeerProtocolError, match=problem) as info:
        framer.feed(header)  # only the header: no body was waited for
    assert info.value.side == "server" and info.value.sqlstate == "08P01"


def test_header_check_also_applies_when_it_arrives_in_pieces() -> None:
    framer = Framer(LIMITS.caps(BACKEND_TYPES, frontend=False), side="server")
    assert framer.feed(b"D\0\0") == (b"", [])
    with pytest.raises(PeerProtocolError, match="over the cap"):
        framer.feed(b"\x20\x00")


def test_frontend_caps_per_type() -> None:
    limits = Limits(query=100, bind=200, copy_data=300, frontend_other=50)
    caps = limits.caps(FRONTEND_TYPES, frontend=True)
    assert (caps[ord("Q")], caps[ord("P")], caps[ord("B")], caps[ord("F")]) == (100, 100, 200, 200)
    assert (caps[ord("d")], caps[ord("S")], caps[ord("p")]) == (300, 50, 0)
    with pytest.raises(ValueError):
        Limits(query=4)
    with pytest.raises(ValueError):
        Framer([0] * 10, side="client")


def test_incomplete_large_message_is_not_rescanned() -> None:
    framer = Framer(Limits().caps(BACKEND_TYPES, frontend=False), side="server")
    frame = CopyData(bytes(100_000)).encode()
    for i in range(0, len(frame) - 1000, 1000):
        assert framer.feed(frame[i : i + 1000]) == (b"", [])
    chunk, index = framer.feed(frame[len(frame) - len(frame) % 1000 - 1000 :][1000:])
    assert index == [(ord("d"), 0, len(frame))] and chunk == frame


def test_messages_helpers() -> None:
    data = Query("select 1").encode() + Sync().encode()
    framer = Framer(Limits().caps(FRONTEND_TYPES, frontend=True), side="client")
    msgs = Messages(*framer.feed(data))
    assert len(msgs) == 2 and msgs.types() == b"QS"
    assert msgs.frame(0) == Query("select 1").encode()
    assert msgs.payload(0) == b"select 1\0" and msgs.payload(1) == b""


def test_take_frame_and_untyped() -> None:
    framer = Framer(Limits().caps(b"p", frontend=True), side="client")
    framer.append(b"p\0\0\0\x06a\0rest")
    assert framer.take_frame() == (ord("p"), b"a\0")
    assert framer.take_leftover() == b"rest"
    assert framer.take_frame() is None
    framer.append(b"\0\0\0\x08\0\x03")
    assert framer.take_untyped(100) is None
    framer.append(b"\0\0")
    assert framer.take_untyped(100) == b"\0\0\0\x08\0\x03\0\0"
