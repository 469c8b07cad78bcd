"""SFTP version 3 framing and decoding (:mod:`appliance.protocols.ssh.sftp`): whole packets
out of any chunking, every request and reply OpenSSH sends, caps, damage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.protocols.ssh import sftp as fx

from .helpers import packet, s, u32, u64

ATTRS_NONE = u32(0)
ATTRS_FULL = (
    u32(1 | 2 | 4 | 8 | 0x80000000)
    + u64(5)
    + u32(1)
    + u32(2)
    + u32(0o644)
    + u32(1)
    + u32(2)
    + u32(1)
    + s("k")
    + s("v")
)

REQUESTS = [
    (packet(fx.INIT, u32(3)), ("init", (), None)),
    (
        packet(fx.OPEN, u32(1) + s("a.txt") + u32(fx.FXF_READ) + ATTRS_FULL),
        ("open", ("a.txt",), None),
    ),
    (packet(fx.CLOSE, u32(2) + s(b"h1")), ("close", (), b"h1")),
    (packet(fx.READ, u32(3) + s(b"h1") + u64(4096) + u32(32768)), ("read", (), b"h1")),
    (packet(fx.WRITE, u32(4) + s(b"h1") + u64(0) + s(b"data")), ("write", (), b"h1")),
    (packet(fx.LSTAT, u32(5) + s("/x")), ("lstat", ("/x",), None)),
    (packet(fx.FSETSTAT, u32(6) + s(b"h1") + ATTRS_NONE), ("fsetstat", (), b"h1")),
    (packet(fx.SETSTAT, u32(7) + s("/x") + ATTRS_NONE), ("setstat", ("/x",), None)),
    (packet(fx.OPENDIR, u32(8) + s(".")), ("opendir", (".",), None)),
    (packet(fx.READDIR, u32(9) + s(b"d1")), ("readdir", (), b"d1")),
    (packet(fx.REMOVE, u32(10) + s("f")), ("remove", ("f",), None)),
    (packet(fx.MKDIR, u32(11) + s("d") + ATTRS_NONE), ("mkdir", ("d",), None)),
    (packet(fx.RMDIR, u32(12) + s("d")), ("rmdir", ("d",), None)),
    (packet(fx.REALPATH, u32(13) + s(".")), ("realpath", (".",), None)),
    (packet(fx.STAT, u32(14) + s("/")), ("stat", ("/",), None)),
    (packet(fx.RENAME, u32(15) + s("a") + s("b")), ("rename", ("a", "b"), None)),
    (packet(fx.READLINK, u32(16) + s("l")), ("readlink", ("l",), None)),
    (packet(fx.SYMLINK, u32(17) + s("t") + s("l")), ("symlink", ("t", "l"), None)),
    (
        packet(fx.EXTENDED, u32(18) + s("posix-rename@openssh.com") + s("a") + s("b")),
        ("posix-rename@openssh.com", ("a", "b"), None),
    ),
    (
        packet(fx.EXTENDED, u32(19) + s("statvfs@openssh.com") + s("/")),
        ("statvfs@openssh.com", ("/",), None),
    ),
    (
        packet(fx.EXTENDED, u32(20) + s("fsync@openssh.com") + s(b"h1")),
        ("fsync@openssh.com", (), b"h1"),
    ),
    (packet(fx.EXTENDED, u32(21) + s("limits@openssh.com")), ("limits@openssh.com", (), None)),
    (
        packet(fx.EXTENDED, u32(22) + s("home-directory") + s("bob")),
        ("home-directory", ("~bob",), None),
    ),
    (packet(fx.EXTENDED, u32(23) + s("evil@example.com") + s("x")), ("evil@example.com", (), None)),
    (packet(99, u32(24)), ("type 99", (), None)),
]


@pytest.mark.parametrize(("raw", "expected"), REQUESTS, ids=[e[1][0] for e in REQUESTS])
def test_requests(raw: bytes, expected: tuple[str, tuple[str, ...], bytes | None]) -> None:
    req = fx.parse_request(raw)
    assert (req.name, req.paths, req.handle) == expected
    assert req.raw == raw


def test_write_and_read_fields() -> None:
    w = fx.parse_request(packet(fx.WRITE, u32(4) + s(b"h") + u64(1 << 33) + s(b"abc")))
    assert (w.offset, w.length, w.data) == (1 << 33, 3, b"abc")
    r = fx.parse_request(packet(fx.READ, u32(3) + s(b"h") + u64(7) + u32(100)))
    assert (r.offset, r.length) == (7, 100)
    c = fx.parse_request(
        packet(fx.EXTENDED, u32(9) + s("copy-data") + s(b"a") + u64(0) + u64(0) + s(b"b") + u64(0))
    )
    assert c.handles == (b"a", b"b")


def test_replies() -> None:
    assert fx.parse_reply(packet(fx.VERSION, u32(3) + s("ext") + s("1"))).type == fx.VERSION
    st_ = fx.parse_reply(
        packet(fx.STATUS, u32(5) + u32(fx.NO_SUCH_FILE) + s("No such file") + s(""))
    )
    assert (st_.id, st_.status, st_.message) == (5, fx.NO_SUCH_FILE, "No such file")
    assert fx.parse_reply(packet(fx.STATUS, u32(5) + u32(0))).message == ""  # v3 may omit it
    assert fx.parse_reply(packet(fx.HANDLE, u32(1) + s(b"hh"))).handle == b"hh"
    assert fx.parse_reply(packet(fx.DATA, u32(1) + s(b"xyz"))).data == b"xyz"
    name = fx.parse_reply(
        packet(
            fx.NAME,
            u32(2)
            + u32(2)
            + s("/a")
            + s("long a")
            + ATTRS_FULL
            + s("/b")
            + s("long b")
            + ATTRS_NONE,
        )
    )
    assert name.names == ("/a", "/b")


def test_status_encodes_what_openssh_sends() -> None:
    raw = fx.status(7, fx.PERMISSION_DENIED, "no")
    reply = fx.parse_reply(raw)
    assert (reply.id, reply.status, reply.message) == (7, fx.PERMISSION_DENIED, "no")
    assert raw.endswith(s(""))  # the empty language tag


def test_framing_is_independent_of_chunking() -> None:
    stream = b"".join(raw for raw, _ in REQUESTS)
    whole = fx.Framer().feed(stream)
    framer = fx.Framer()
    bytewise = [p for i in range(len(stream)) for p in framer.feed(stream[i : i + 1])]
    assert whole == bytewise == [raw for raw, _ in REQUESTS]
    assert framer.buffered == 0


@pytest.mark.parametrize("length", [0, fx.MAX_PACKET + 1, 0xFFFFFFFF])
def test_empty_and_oversized_packets(length: int) -> None:
    with pytest.raises(fx.SftpProtocolError):
        fx.Framer().feed(u32(length) + b"\x03")


@pytest.mark.parametrize(
    "raw",
    [
        packet(fx.OPEN, u32(1) + s("a")),  # no pflags
        packet(fx.OPEN, u32(1) + u32(99) + b"ab"),  # string longer than the packet
        packet(fx.RENAME, u32(1) + s(b"\xff\xfe") + s("b")),  # not UTF-8
        packet(fx.READ, u32(1)),
    ],
)
def test_malformed_requests(raw: bytes) -> None:
    with pytest.raises(fx.SftpProtocolError):
        fx.parse_request(raw)


def test_a_name_reply_cannot_claim_more_names_than_it_holds() -> None:
    with pytest.raises(fx.SftpProtocolError):
        fx.parse_reply(packet(fx.NAME, u32(1) + u32(1_000_000) + s("/a")))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_damage_is_a_protocol_error_never_a_crash(body: bytes) -> None:
    for kind in (fx.OPEN, fx.WRITE, fx.RENAME, fx.EXTENDED, fx.NAME, fx.STATUS):
        raw = packet(kind, body)
        for parse in (fx.parse_request, fx.parse_reply):
            try:
                parse(raw)
            except fx.SftpProtocolError:
                pass
