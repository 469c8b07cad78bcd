"""One SFTP channel through :class:`appliance.proxy.ssh.sftp.SftpRelay`: the home directory
asked once, paths made absolute, each operation decided, refusals answered in SFTP's terms,
holds released by an approval, handles and transfers followed."""

from __future__ import annotations

import hashlib

import pytest

from appliance.policy import Classification
from appliance.protocols.ssh import sftp as fx
from appliance.proxy.ssh.decisions import SshVerdict
from appliance.proxy.ssh.sftp import HOME_ID, SftpRelay
from appliance.proxy.ssh.transfers import Transfer

from .helpers import packet, s, u32, u64

HOME = "/home/deploy"


class Relay:
    """A relay whose decisions follow ``verdicts`` (path -> action; allow otherwise)."""

    def __init__(self, verdicts: dict[str, str] | None = None) -> None:
        self.verdicts = verdicts or {}
        self.decided: list[tuple[str, tuple[str, ...], frozenset[str]]] = []
        self.asked: list[tuple[int, str]] = []
        self.outcomes: list[tuple[int, int, str]] = []
        self.transfers: list[tuple[Transfer, bool]] = []
        self.relay = SftpRelay(
            decide=self._decide,
            ask=lambda n, v, text, exact: self.asked.append((n, text)),
            outcome=lambda n, st, msg: self.outcomes.append((n, st, msg)),
            finished=lambda t, ok: self.transfers.append((t, ok)),
            content_cap=16,
        )

    def _decide(self, c: Classification, req: fx.Request) -> tuple[int, SshVerdict]:
        stmt = c.statements[0]
        paths = getattr(stmt, "paths", ())
        self.decided.append((req.name, paths, stmt.classes))
        action = next((a for p, a in self.verdicts.items() if p in paths), "allow")
        return len(self.decided), SshVerdict(
            action, True, {"decision": action}, f"rule says {action}"
        )

    def job(self, *packets: bytes) -> tuple[list[fx.Reply], list[bytes]]:
        self.relay.from_job(b"".join(packets))
        return self._take()

    def server(self, *packets: bytes) -> tuple[list[fx.Reply], list[bytes]]:
        self.relay.from_upstream(b"".join(packets))
        return self._take()

    def _take(self) -> tuple[list[fx.Reply], list[bytes]]:
        to_job, to_up = self.relay.take()
        return [fx.parse_reply(p) for p in fx.Framer().feed(to_job)], fx.Framer().feed(to_up)

    def open(self) -> None:
        _, up = self.job(packet(fx.INIT, u32(3)))
        assert up == [packet(fx.INIT, u32(3))]
        replies, up = self.server(
            packet(fx.VERSION, u32(3) + s("posix-rename@openssh.com") + s("1"))
        )
        assert [r.type for r in replies] == [fx.VERSION]
        assert up == [fx.realpath(HOME_ID, ".")]  # asked once, while the job waits
        assert self.relay.held
        replies, up = self.server(name(HOME_ID, HOME))
        assert replies == [] and self.relay.home == HOME and not self.relay.held


def name(rid: int, path: str) -> bytes:
    return packet(fx.NAME, u32(rid) + u32(1) + s(path) + s(path) + u32(0))


def status(rid: int, code: int = fx.OK) -> bytes:
    return packet(fx.STATUS, u32(rid) + u32(code) + s("") + s(""))


def test_requests_sent_before_the_home_is_known_wait_for_it() -> None:
    r = Relay()
    r.job(packet(fx.INIT, u32(3)))
    r.server(packet(fx.VERSION, u32(3)))
    stat = packet(fx.STAT, u32(1) + s("notes.txt"))
    _, up = r.job(stat)
    assert up == []  # waiting
    _, up = r.server(name(HOME_ID, HOME))
    assert up == [stat]
    assert r.decided == [("stat", (f"{HOME}/notes.txt",), frozenset({"file_list"}))]


@pytest.mark.parametrize(
    ("path", "absolute"),
    [
        ("a.txt", f"{HOME}/a.txt"),
        ("../../etc/passwd", "/etc/passwd"),
        ("/etc/../etc//shadow", "/etc/shadow"),
        ("//etc/passwd", "/etc/passwd"),
        ("", HOME),
    ],
)
def test_paths_are_absolute_and_normalized(path: str, absolute: str) -> None:
    r = Relay()
    r.open()
    r.job(packet(fx.LSTAT, u32(1) + s(path)))
    assert r.decided[-1][1] == (absolute,)


def test_a_denied_operation_is_answered_permission_denied_and_never_forwarded() -> None:
    r = Relay({"/etc/passwd": "deny"})
    r.open()
    replies, up = r.job(packet(fx.OPEN, u32(7) + s("../../etc/passwd") + u32(fx.FXF_READ) + u32(0)))
    assert up == []
    assert [(x.id, x.status) for x in replies] == [(7, fx.PERMISSION_DENIED)]
    assert "rule says deny" in replies[0].message
    # The session goes on.
    _, up = r.job(packet(fx.STAT, u32(8) + s("ok")))
    assert len(up) == 1


def test_a_held_operation_waits_for_its_approval_with_what_came_after_it() -> None:
    r = Relay({f"{HOME}/deploy.tar": "review"})
    r.open()
    put = packet(fx.OPEN, u32(1) + s("deploy.tar") + u32(fx.FXF_WRITE | fx.FXF_CREAT) + u32(0))
    after = packet(fx.STAT, u32(2) + s("x"))
    _, up = r.job(put, after)
    assert up == [] and r.relay.held
    assert r.asked == [(1, f"sftp open {HOME}/deploy.tar")]
    r.relay.answered(True, "")
    _, up = r._take()
    assert up == [put, after]
    # Denied instead: the job is told, the next request still runs.
    r2 = Relay({f"{HOME}/deploy.tar": "review"})
    r2.open()
    r2.job(put, after)
    r2.relay.answered(False, "approval 1 denied by alice: not now")
    replies, up = r2._take()
    assert [(x.id, x.status) for x in replies] == [(1, fx.PERMISSION_DENIED)]
    assert "denied by alice" in replies[0].message
    assert up == [after]


def test_an_upload_is_recorded_with_its_hash_when_closed() -> None:
    r = Relay()
    r.open()
    r.job(
        packet(
            fx.OPEN, u32(1) + s("up.txt") + u32(fx.FXF_WRITE | fx.FXF_CREAT | fx.FXF_TRUNC) + u32(0)
        )
    )
    r.server(packet(fx.HANDLE, u32(1) + s(b"H")))
    content = b"line one\nline two\n" * 3
    for i in range(0, len(content), 10):
        r.job(packet(fx.WRITE, u32(10 + i) + s(b"H") + u64(i) + s(content[i : i + 10])))
    r.job(packet(fx.CLOSE, u32(99) + s(b"H")))
    assert r.transfers == []  # recorded when the server confirms the close
    r.server(status(99))
    ((transfer, ok),) = r.transfers
    record = transfer.record(complete=ok)
    assert record["direction"] == "upload" and record["path"] == f"{HOME}/up.txt"
    assert (
        record["size"] == len(content) and record["sha256"] == hashlib.sha256(content).hexdigest()
    )
    assert transfer.content() == content[:16] and transfer.truncated


def test_a_download_is_hashed_from_the_read_replies() -> None:
    r = Relay()
    r.open()
    r.job(packet(fx.OPEN, u32(1) + s("/srv/data.bin") + u32(fx.FXF_READ) + u32(0)))
    r.server(packet(fx.HANDLE, u32(1) + s(b"R")))
    data = bytes(range(256)) * 4
    r.job(
        packet(fx.READ, u32(2) + s(b"R") + u64(0) + u32(512)),
        packet(fx.READ, u32(3) + s(b"R") + u64(512) + u32(512)),
    )
    r.server(packet(fx.DATA, u32(2) + s(data[:512])), packet(fx.DATA, u32(3) + s(data[512:])))
    r.job(packet(fx.CLOSE, u32(4) + s(b"R")))
    r.server(status(4))
    ((transfer, ok),) = r.transfers
    assert ok and transfer.direction == "download"
    assert transfer.record(complete=True)["sha256"] == hashlib.sha256(data).hexdigest()
    assert transfer.content() is None  # binary: never stored


def test_handles_must_be_issued_and_writes_need_a_writable_one() -> None:
    r = Relay()
    r.open()
    replies, up = r.job(packet(fx.READ, u32(1) + s(b"guess") + u64(0) + u32(10)))
    assert up == [] and replies[0].status == fx.FAILURE
    r.job(packet(fx.OPEN, u32(2) + s("ro.txt") + u32(fx.FXF_READ) + u32(0)))
    r.server(packet(fx.HANDLE, u32(2) + s(b"RO")))
    replies, up = r.job(packet(fx.WRITE, u32(3) + s(b"RO") + u64(0) + s(b"x")))
    assert up == [] and replies[0].status == fx.PERMISSION_DENIED
    # fsetstat on a read-only handle is decided as a write of its path
    r.job(packet(fx.FSETSTAT, u32(4) + s(b"RO") + u32(0)))
    assert r.decided[-1] == ("fsetstat", (f"{HOME}/ro.txt",), frozenset({"file_write"}))


def test_unknown_requests_and_extensions_are_refused() -> None:
    r = Relay()
    r.open()
    replies, up = r.job(packet(fx.EXTENDED, u32(1) + s("evil@example.com")), packet(77, u32(2)))
    assert up == []
    assert [(x.id, x.status) for x in replies] == [(1, fx.OP_UNSUPPORTED), (2, fx.OP_UNSUPPORTED)]
    replies, up = r.job(packet(fx.STAT, u32(HOME_ID) + s("x")))
    assert up == [] and replies[0].status == fx.FAILURE


def test_classes_of_operations() -> None:
    r = Relay()
    r.open()
    r.job(
        packet(fx.MKDIR, u32(1) + s("d") + u32(0)),
        packet(fx.REMOVE, u32(2) + s("d/f")),
        packet(fx.EXTENDED, u32(3) + s("posix-rename@openssh.com") + s("a") + s("b")),
        packet(fx.OPEN, u32(4) + s("rw") + u32(fx.FXF_READ | fx.FXF_WRITE) + u32(0)),
        packet(fx.SYMLINK, u32(5) + s("t") + s("l")),
    )
    assert [(n, sorted(c)) for n, _, c in r.decided] == [
        ("mkdir", ["file_write"]),
        ("remove", ["file_remove"]),
        ("posix-rename@openssh.com", ["file_rename"]),
        ("open", ["file_read", "file_write"]),
        ("symlink", ["file_write"]),
    ]
    assert r.decided[2][1] == (f"{HOME}/a", f"{HOME}/b")


def test_failed_operations_and_changes_are_recorded_with_their_status() -> None:
    r = Relay()
    r.open()
    r.job(
        packet(fx.REMOVE, u32(1) + s("gone")),
        packet(fx.STAT, u32(2) + s("x")),
        packet(fx.STAT, u32(3) + s("y")),
    )
    r.server(status(1), status(2, fx.NO_SUCH_FILE), name(3, "/y"))
    assert [(n, st) for n, st, _ in r.outcomes] == [(1, fx.OK), (2, fx.NO_SUCH_FILE)]


def test_protocol_errors() -> None:
    r = Relay()
    with pytest.raises(fx.SftpProtocolError):
        r.job(packet(fx.STAT, u32(1) + s("x")))  # before init
    r = Relay()
    r.open()
    with pytest.raises(fx.SftpProtocolError):
        r.job(packet(fx.INIT, u32(3)))
    with pytest.raises(fx.SftpProtocolError):
        r.server(packet(fx.VERSION, u32(3)))


def test_open_transfers_are_recorded_incomplete_when_the_channel_ends() -> None:
    r = Relay()
    r.open()
    r.job(packet(fx.OPEN, u32(1) + s("partial") + u32(fx.FXF_WRITE) + u32(0)))
    r.server(packet(fx.HANDLE, u32(1) + s(b"W")))
    r.job(packet(fx.WRITE, u32(2) + s(b"W") + u64(0) + s(b"abc")))
    r.relay.close()
    ((transfer, ok),) = r.transfers
    assert not ok and transfer.record(complete=False)["bytes"] == 3
