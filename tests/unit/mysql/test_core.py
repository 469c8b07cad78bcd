"""The MySQL session core driven without sockets: a scripted server, a job's login with no
password, the settings probe, a query relayed, a denial, and damaged input from either
side ending only that session with an ERR (fuzzed, whole and byte by byte), and a whole
session's transcript relayed, then mutated (no crash, no hang, bounded memory)."""

from __future__ import annotations

import itertools
import tracemalloc
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import Account, Address, SecretRef, Target, UpstreamTLS
from appliance.protocols.mysql import Framer, auth, packet
from appliance.protocols.mysql.constants import Cap, Status, Type
from appliance.protocols.mysql.messages import (
    ColumnDef,
    Err,
    Handshake,
    HandshakeResponse,
    Ok,
    encode_text_row,
)
from appliance.proxy.commands import (
    AwaitDurable,
    ConnectionInfo,
    Durable,
    End,
    OpenUpstream,
    PauseReading,
    UpstreamOpened,
)
from appliance.proxy.mysql.core import MySQLSession, State, shared
from appliance.proxy.services import SessionServices
from tests.unit.policy.helpers import rules
from tests.unit.proxy.test_pg_core import FakeLedger

UPSTREAM = ("10.0.0.5", 3306)
SECRET = "s3cret"
SERVER_CAPS = int(
    Cap.LONG_PASSWORD | Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH | Cap.PLUGIN_AUTH_LENENC_DATA
    | Cap.CONNECT_WITH_DB | Cap.CONNECT_ATTRS | Cap.MULTI_STATEMENTS | Cap.MULTI_RESULTS | Cap.PS_MULTI_RESULTS
    | Cap.TRANSACTIONS | Cap.DEPRECATE_EOF | Cap.SESSION_TRACK
)  # fmt: skip
SCRAMBLE = bytes(range(1, 21))


def _target() -> Target:
    return Target(
        "db",
        "mysql",
        (Address("ip", *UPSTREAM),),
        (Account("ci", "app", SecretRef(file=Path("/x"))),),
        tls=UpstreamTLS("disable"),
    )


def _policy() -> Any:
    return rules(
        "- {name: no-drop, action: deny, match: {classes: [drop]}}\n"
        "- {name: rest, action: allow, match: {classes: [select, set]}}\n"
    )


class Drive:
    def __init__(self, *, policy: Any = None, write_ahead: bool = False) -> None:
        counter = itertools.count(1)
        clock = itertools.count()
        self.ledger = FakeLedger()
        services = SessionServices(
            ledger=self.ledger,  # type: ignore[arg-type]
            policy=policy or _policy(),
            record_rows=False,
            write_ahead=write_ahead,
            clock=lambda: 1_700_000_000.0,
            monotonic=lambda: float(next(clock)),
            random_bytes=lambda n: next(counter).to_bytes(n, "big"),
            read_secret=lambda ref: SECRET,
        )
        info = ConnectionInfo("s1", ("127.0.0.1", 40000), ("127.0.0.1", 13306), UPSTREAM)
        self.core = MySQLSession(services, shared(lambda n: b"\x07" * n), _target(), info)
        self.to_job = b""
        self.to_up = b""
        self.commands: list[Any] = []

    def out(self, commands: Any) -> None:
        j, u = self.core.take_output()
        self.to_job += j
        self.to_up += u
        self.commands += list(commands)

    def login(self) -> None:
        self.out(self.core.start())
        assert any(isinstance(c, OpenUpstream) for c in self.commands)
        self.out(self.core.handle(UpstreamOpened(("10.0.0.9", 50000))))
        hs = Handshake(
            "10.11.19-MariaDB", 77, SCRAMBLE, SERVER_CAPS, 45, 2, "mysql_native_password"
        )
        self.out(self.core.receive("upstream", packet(0, hs.encode())))
        ((_seq, greeting),) = Framer("server").feed(self.to_job)
        job_hs = Handshake.decode(greeting)
        assert job_hs.connection_id != 77 and not job_hs.capabilities & Cap.COMPRESS
        self.to_job = b""
        hello = HandshakeResponse(
            job_hs.capabilities,
            1 << 24,
            45,
            "anyone",
            b"no-password",
            "app",
            "mysql_native_password",
        )
        self.out(self.core.receive("job", packet(1, hello.encode())))
        ((_, response),) = Framer("client").feed(self.to_up)
        up = HandshakeResponse.decode(response)
        assert up.user == "app" and up.auth_response == auth.native_password(SECRET, SCRAMBLE)
        self.to_up = b""
        self.out(
            self.core.receive(
                "upstream", packet(2, Ok(status=Status.AUTOCOMMIT).encode(SERVER_CAPS))
            )
        )
        assert self.to_up.endswith(b"SELECT @@SESSION.sql_mode, @@SESSION.character_set_client")
        self.to_up = b""
        self.out(
            self.core.receive(
                "upstream", self.result(["sql_mode", "cs"], [[b"STRICT_TRANS_TABLES", b"utf8mb4"]])
            )
        )
        assert self.core.state is State.RELAY
        ((_, ok),) = Framer("server").feed(self.to_job)
        assert ok[0] == 0
        self.to_job = b""

    @staticmethod
    def result(names: list[str], rows: list[list[bytes | None]]) -> bytes:
        seq = 1
        out = [packet(seq, bytes((len(names),)))]
        for name in names:
            seq += 1
            out.append(
                packet(
                    seq,
                    ColumnDef("app", "t", "t", name, name, 45, 100, Type.VAR_STRING, 0, 0).encode(),
                )
            )
        for row in rows:
            seq += 1
            out.append(packet(seq, encode_text_row(row)))
        seq += 1
        out.append(packet(seq, b"\xfe" + Ok(status=Status.AUTOCOMMIT).encode(SERVER_CAPS)[1:]))
        return b"".join(out)


def _ended_with_an_err_if_at_all(d: Drive) -> None:
    """A session that ended did so once, recorded, the job told why with an ERR."""
    if d.core.state is State.ENDED:
        assert any(isinstance(c, End) for c in d.commands)
        assert d.ledger.types()[-1] == "session.end"
        if "protocol.error" in d.ledger.types():
            packets = Framer("server").feed(d.to_job)
            assert packets and packets[-1][1][0] == 0xFF


def test_login_query_and_denial() -> None:
    d = Drive()
    d.login()
    d.out(d.core.receive("job", packet(0, b"\x03SELECT name FROM t")))
    assert d.to_up == packet(0, b"\x03SELECT name FROM t")
    answer = d.result(["name"], [[b"Ann"]])
    d.out(d.core.receive("upstream", answer))
    assert d.to_job == answer
    d.to_job = b""
    d.out(d.core.receive("job", packet(0, b"\x03DROP TABLE t")))
    ((seq, err),) = Framer("server").feed(d.to_job)
    assert seq == 1 and Err.decode(err).code == 1142
    assert "policy.decision" in d.ledger.types()


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=120), st.booleans(), st.booleans())
def test_damaged_input_ends_only_this_session_with_an_err(
    data: bytes, from_job: bool, bytewise: bool
) -> None:
    d = Drive()
    d.login()
    side = "job" if from_job else "upstream"
    if not from_job:
        d.out(d.core.receive("job", packet(0, b"\x03SELECT 1")))
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks:
        d.out(d.core.receive(side, chunk))  # type: ignore[arg-type]
        if d.core.state is State.ENDED:
            break
    _ended_with_an_err_if_at_all(d)


def _column(name: str, type_: int) -> bytes:
    return ColumnDef("app", "t", "t", name, name, 45, 100, type_, 0, 0).encode()


def _transcript() -> list[tuple[str, bytes]]:
    """A session after login, as (side, bytes) in the order they travel: a text query and
    its rows, a prepared statement, its binary rows, its close, a ping."""
    end = b"\xfe" + Ok(status=Status.AUTOCOMMIT).encode(SERVER_CAPS)[1:]
    prepare_ok = b"\x00" + (5).to_bytes(4, "little") + b"\x02\x00\x01\x00\x00\x00\x00"
    execute = (
        b"\x17" + (5).to_bytes(4, "little") + b"\x00" + (1).to_bytes(4, "little")
        + b"\x00\x01" + bytes((Type.LONGLONG, 0)) + (7).to_bytes(8, "little")
    )  # fmt: skip
    binary = b"\x00" + b"\x00" + encode_text_row([b"4111111111111111"]) + (7).to_bytes(4, "little")
    return [
        ("job", packet(0, b"\x03SELECT name, card FROM t")),
        ("upstream", Drive.result(["name", "card"], [[b"Ann", b"4111111111111111"], [None, b""]])),
        ("job", packet(0, b"\x16SELECT card, id FROM t WHERE id = ?")),
        (
            "upstream",
            packet(1, prepare_ok)
            + packet(2, _column("?", Type.LONGLONG))
            + packet(3, _column("card", Type.VAR_STRING))
            + packet(4, _column("id", Type.LONG)),
        ),
        ("job", packet(0, execute)),
        (
            "upstream",
            packet(1, b"\x02")
            + packet(2, _column("card", Type.VAR_STRING))
            + packet(3, _column("id", Type.LONG))
            + packet(4, binary)
            + packet(5, end),
        ),
        ("job", packet(0, b"\x19" + (5).to_bytes(4, "little"))),
        ("job", packet(0, b"\x0e")),
        ("upstream", packet(1, Ok(status=Status.AUTOCOMMIT).encode(SERVER_CAPS))),
    ]


def _replay(d: Drive, steps: list[tuple[str, bytes]], bytewise: bool) -> None:
    for side, data in steps:
        chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
        for chunk in chunks:
            d.out(d.core.receive(side, chunk))  # type: ignore[arg-type]
            if d.core.state is State.ENDED:
                return


def test_the_transcript_is_relayed_whole_and_byte_by_byte() -> None:
    for bytewise in (False, True):
        d = Drive()
        d.login()
        _replay(d, _transcript(), bytewise)
        assert d.core.state is State.RELAY
        assert d.to_up.endswith(packet(0, b"\x0e"))
        assert d.to_job.endswith(packet(1, Ok(status=Status.AUTOCOMMIT).encode(SERVER_CAPS)))


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=8),
    st.integers(min_value=0),
    st.sampled_from(["flip", "insert", "delete", "truncate", "length"]),
    st.integers(min_value=0, max_value=255),
    st.booleans(),
)
def test_mutated_transcripts_end_only_this_session_with_bounded_memory(
    which: int, where: int, how: str, byte: int, bytewise: bool
) -> None:
    """One step of a real session's transcript mutated (a byte flipped, inserted, removed,
    the step cut short, a packet length enlarged up to the 16 MiB a header can claim): the
    session relays on, or ends with ``session.end`` and an ERR to the job; nothing else
    escapes, and what it buffers stays bounded (a claimed length is not allocated)."""
    steps = _transcript()
    side, data = steps[which]
    at = where % len(data)
    if how == "flip":
        data = data[:at] + bytes((data[at] ^ (byte or 1),)) + data[at + 1 :]
    elif how == "insert":
        data = data[:at] + bytes((byte,)) + data[at:]
    elif how == "delete":
        data = data[:at] + data[at + 1 :]
    elif how == "truncate":
        data = data[:at]
    else:  # the first packet's length claims up to 16 MiB - 1
        data = bytes((byte, 0xFF, 0xFF)) + data[3:]
    steps[which] = (side, data)
    d = Drive()
    d.login()
    tracemalloc.start()
    try:
        _replay(d, steps, bytewise)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20
    _ended_with_an_err_if_at_all(d)


def test_an_execute_direct_waits_for_its_prepare_to_be_answered() -> None:
    """MariaDB's execute-direct (Connector/C, Connector/Python cursors): PREPARE and an
    EXECUTE of "the statement just prepared" (id 0xFFFFFFFF) in one write. The EXECUTE goes
    upstream only once the server has said which statement it is, and is checked and
    recorded as that statement's, with its parameters."""
    d = Drive()
    d.login()
    steps = _transcript()
    prepare, prepare_ok = steps[2][1], steps[3][1]
    direct = packet(0, b"\x17\xff\xff\xff\xff" + steps[4][1][9:])  # the same execution, id -1
    d.out(d.core.receive("job", prepare + direct))
    assert d.to_up == prepare  # the EXECUTE waits
    d.to_up = b""
    d.out(d.core.receive("upstream", prepare_ok))
    assert d.to_up == direct
    execute = d.ledger.last("statement")
    assert execute["protocol"] == "execute" and execute["params"] == ["7"]
    assert execute["text"] == "SELECT card, id FROM t WHERE id = ?"


def _ok() -> bytes:
    return packet(1, Ok(affected_rows=1, status=Status.AUTOCOMMIT).encode(SERVER_CAPS))


def test_a_change_waits_for_its_entry_to_be_durable() -> None:
    """ledger.durability write-ahead: an INSERT goes upstream only once the ledger says its
    entry is on disk; what the job sends meanwhile waits behind it, in order; a read is
    not written ahead."""
    d = Drive(policy=rules("- {name: all, action: allow}"), write_ahead=True)
    d.login()
    d.out(d.core.receive("job", packet(0, b"\x03SELECT name FROM t")))
    assert d.to_up == packet(0, b"\x03SELECT name FROM t")
    assert not any(isinstance(c, AwaitDurable) for c in d.commands)
    d.out(d.core.receive("upstream", d.result(["name"], [[b"Ann"]])))
    d.to_up = b""
    d.out(d.core.receive("job", packet(0, b"\x03INSERT INTO t VALUES (1)")))
    assert d.to_up == b""
    (wait,) = [c for c in d.commands if isinstance(c, AwaitDurable)]
    assert PauseReading("job", "hold", True) in d.commands
    assert d.ledger.last("statement")["text"] == "INSERT INTO t VALUES (1)"
    d.out(d.core.receive("job", packet(0, b"\x03SELECT 2")))
    assert d.to_up == b""
    d.out(d.core.handle(Durable(wait.key, True)))
    assert d.to_up == packet(0, b"\x03INSERT INTO t VALUES (1)") + packet(0, b"\x03SELECT 2")
    assert PauseReading("job", "hold", False) in d.commands


def test_a_change_the_ledger_cannot_make_durable_is_never_sent() -> None:
    d = Drive(policy=rules("- {name: all, action: allow}"), write_ahead=True)
    d.login()
    d.out(d.core.receive("job", packet(0, b"\x03DELETE FROM t WHERE id = 1")))
    (wait,) = [c for c in d.commands if isinstance(c, AwaitDurable)]
    d.out(d.core.handle(Durable(wait.key, False, "disk full")))
    assert b"DELETE" not in d.to_up  # at most a COM_QUIT
    assert d.core.state is State.ENDED
    ((_, err),) = Framer("server").feed(d.to_job)
    assert Err.decode(err).sqlstate == "08S01"
    _ended_with_an_err_if_at_all(d)


def test_each_execution_of_a_prepared_change_is_written_ahead() -> None:
    d = Drive(policy=rules("- {name: all, action: allow}"), write_ahead=True)
    d.login()
    prepare = packet(0, b"\x16UPDATE t SET n = ? WHERE id = 1")
    prepare_ok = b"\x00" + (9).to_bytes(4, "little") + b"\x00\x00\x01\x00\x00\x00\x00"
    execute = packet(
        0,
        b"\x17" + (9).to_bytes(4, "little") + b"\x00" + (1).to_bytes(4, "little")
        + b"\x00\x01" + bytes((Type.LONGLONG, 0)) + (7).to_bytes(8, "little"),
    )  # fmt: skip
    d.out(d.core.receive("job", prepare))
    assert d.to_up == prepare  # preparing changes nothing
    assert not any(isinstance(c, AwaitDurable) for c in d.commands)
    d.out(
        d.core.receive("upstream", packet(1, prepare_ok) + packet(2, _column("?", Type.LONGLONG)))
    )
    d.to_up = b""
    for n in range(2):
        d.out(d.core.receive("job", execute))
        assert d.to_up == b""
        wait = [c for c in d.commands if isinstance(c, AwaitDurable)][-1]
        assert wait.key == n + 1
        assert d.ledger.last("statement")["params"] == ["7"]
        d.out(d.core.handle(Durable(wait.key, True)))
        assert d.to_up == execute
        d.to_up = b""
        d.out(d.core.receive("upstream", _ok()))


def test_texts_that_differ_only_in_integers_share_one_remembered_allow() -> None:
    """sysbench (and ORMs) in the text protocol: statements that differ only in integer
    literals are classified once, under their shape, and each is still recorded as sent;
    where a number decides the classes (``WHERE 1 = 1`` changes every row, ``WHERE 1 = 2``
    none), and where a digit may be something else (strings, quoted names, user variables,
    comments), the allow is remembered by the exact text."""
    d = Drive(
        policy=rules(
            "- name: bounded\n"
            "  action: deny\n"
            "  match: {classes: [update_without_where, delete_without_where]}\n"
            "- {name: rest, action: allow}\n"
        )
    )
    d.login()
    ok = packet(1, Ok(status=Status.AUTOCOMMIT).encode(SERVER_CAPS))
    assert d.core.policy is not None
    allowed = d.core.policy.statements._allowed

    def query(text: str, answer: bytes | None = None) -> bool:
        """Send ``text``; True if it went upstream (then answered with ``answer``)."""
        d.to_up = d.to_job = b""
        d.out(d.core.receive("job", packet(0, b"\x03" + text.encode())))
        sent = d.to_up == packet(0, b"\x03" + text.encode())
        if sent:
            d.out(d.core.receive("upstream", answer or d.result(["c"], [[b"x"]])))
        return sent

    for i in (5000, 17, 123456789):
        assert query(f"SELECT c FROM sbtest1 WHERE id={i}")
        assert query(f"UPDATE sbtest1 SET k=k+1 WHERE id={i}", ok)
    assert set(allowed) == {
        ("SELECT c FROM sbtest1 WHERE id=0", True, "app", True),
        ("UPDATE sbtest1 SET k=k+0 WHERE id=0", True, "app", True),
    }
    # a number decides: by the exact text (1 = 2 allowed, then 1 = 1 still denied)
    assert query("UPDATE t SET a=1 WHERE 1=2", ok)
    assert ("UPDATE t SET a=1 WHERE 1=2", True, "app", False) in allowed
    assert not query("UPDATE t SET a=1 WHERE 1=1")
    assert Err.decode(Framer("server").feed(d.to_job)[0][1]).code == 1142
    assert query("DELETE FROM t WHERE 0", ok)  # of the same shape as WHERE 5
    assert not query("DELETE FROM t WHERE 5")
    # digits that may be something else: never reshaped
    for text in ("SELECT `1` FROM t", "SELECT @1", "SELECT 1 # 2", "SELECT '1'", "SELECT 1 -- 2"):
        assert query(text)
        assert (text, True, "app", False) in allowed
    # each statement recorded as it was sent
    texts = [data.get("text") for type_, _, data in d.ledger.entries if type_ == "statement"]
    assert "SELECT c FROM sbtest1 WHERE id=123456789" in texts
    assert "UPDATE sbtest1 SET k=k+1 WHERE id=17" in texts
