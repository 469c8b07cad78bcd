"""Transcript tests of the sans-IO PostgreSQL session core (:mod:`appliance.proxy.pg.core`).

No sockets, no event loop: a :class:`Drive` plays the job and the target byte by byte (or in
the recorded chunks), hands the core the events the shell would, and keeps what comes out:
bytes each way, the commands, the ledger entries. The recorded real conversations (psql,
psycopg, asyncpg against PostgreSQL 15, ``tests/unit/postgres/data``) go through the
startup core and the relay unchanged; then each refusal is one conversation with its
SQLSTATE, its ledger record, and the End.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from appliance.approvals.broker import Outcome, Resolution
from appliance.approvals.request import ApprovalRequest
from appliance.config import Account, Address, SecretRef, Target, UpstreamTLS
from appliance.errors import ApplianceError
from appliance.ledger.errors import LedgerUnavailable
from appliance.protocols.postgres import CancelKeys
from appliance.protocols.postgres.messages import (
    BackendKeyData,
    CancelRequest,
    ErrorResponse,
    ParameterStatus,
    Query,
    ReadyForQuery,
    SSLRequest,
    StartupMessage,
    Terminate,
    decode_backend,
    error_response,
)
from appliance.proxy.commands import (
    Abort,
    ApprovalAnswered,
    AskApproval,
    AwaitDurable,
    ClearTimer,
    Command,
    ConnectionInfo,
    Drain,
    Durable,
    End,
    Eof,
    Event,
    OpenUpstream,
    PauseReading,
    SendOnce,
    SentOnce,
    SetTimer,
    StartTLS,
    TimerFired,
    TLSEstablished,
    UpstreamFailed,
    UpstreamOpened,
)
from appliance.proxy.pg.core import CancelRoute, PgSession, PgShared, State
from appliance.proxy.services import SessionServices
from tests.unit.policy.helpers import rules
from tests.unit.postgres.transcripts import NAMES, load, startup_length

SECRET = "s3cret-never-seen"
UPSTREAM = ("10.0.0.5", 5432)


class FakeLedger:
    """Keeps entries as (type, session, data); can be made to fail."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str | None, dict[str, Any]]] = []
        self.fail: BaseException | None = None
        self.break_once: str | None = None  # an entry type whose next append raises (a bug)
        self.hurried = 0  # hurry() calls: a write-ahead sync is coming

    def append(
        self, type: str, *, session: str | None = None, data: Mapping[str, Any], **_: Any
    ) -> None:
        if self.fail is not None:
            raise self.fail
        if type == self.break_once:
            self.break_once = None
            raise RuntimeError("bug")
        self.entries.append((type, session, dict(data)))

    def open_blob(self, transform: Any = None) -> Any:
        raise AssertionError("rows are not recorded in these tests")

    def flush(self, timeout: float | None = None) -> None:
        pass

    def hurry(self) -> None:
        self.hurried += 1

    def close(self) -> None:
        pass

    @property
    def failed(self) -> BaseException | None:
        return self.fail

    def types(self, session: str | None = None) -> list[str]:
        return [t for t, s, _ in self.entries if session is None or s == session]

    def last(self, type: str) -> dict[str, Any]:
        return next(d for t, _, d in reversed(self.entries) if t == type)


def target(*, tls: str = "disable", startup_parameters: tuple[str, ...] = ()) -> Target:
    return Target(
        "db",
        "postgres",
        (Address("ip", UPSTREAM[0], UPSTREAM[1]),),
        (Account("ci", "app", SecretRef(file=Path("/secrets/app"))),),
        tls=UpstreamTLS(tls),
        startup_parameters=startup_parameters,
    )


def _counter_bytes() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


class Drive:
    """One core, and everything that came out of it."""

    def __init__(
        self,
        *,
        tgt: Target | None = None,
        shared: PgShared | None = None,
        read_secret: Callable[[SecretRef], str] | None = None,
        policy_rules: str | None = None,
        client_tls: Any = None,
        session_id: str = "s1",
        ledger: FakeLedger | None = None,
        settle: bool = True,
    ) -> None:
        self.settle = settle
        clock = itertools.count()
        self.ledger = ledger or FakeLedger()
        self.services = SessionServices(
            ledger=self.ledger,
            policy=rules(policy_rules) if policy_rules else None,
            record_rows=False,
            clock=lambda: 1_700_000_000.0,
            monotonic=lambda: float(next(clock)),
            random_bytes=_counter_bytes(),
            read_secret=read_secret or (lambda ref: SECRET),
            upstream_tls=lambda tls: "upstream-context",  # type: ignore[arg-type,return-value]
            client_tls={"db": client_tls} if client_tls is not None else {},
        )
        self.shared = shared or PgShared(CancelKeys[CancelRoute](random_bytes=_counter_bytes()))
        info = ConnectionInfo(session_id, ("10.9.0.1", 40000), ("127.0.0.1", 6432), UPSTREAM)
        self.core = PgSession(self.services, self.shared, tgt or target(), info)
        self.to_job = b""
        self.to_up = b""
        self.commands: list[Command] = []

    def _out(self, commands: Any) -> list[Command]:
        to_job, to_up = self.core.take_output()
        self.to_job += to_job
        self.to_up += to_up
        if self.settle:
            self.core.settle()  # as the shell does once the bytes are written
        self.commands += list(commands)
        return list(commands)

    def start(self) -> list[Command]:
        return self._out(self.core.start())

    def job(self, data: bytes, *, bytewise: bool = False) -> list[Command]:
        pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
        out: list[Command] = []
        for piece in pieces:
            out += self._out(self.core.receive("job", piece))
        return out

    def up(self, data: bytes, *, bytewise: bool = False) -> list[Command]:
        pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
        out: list[Command] = []
        for piece in pieces:
            out += self._out(self.core.receive("upstream", piece))
        return out

    def event(self, event: Event) -> list[Command]:
        return self._out(self.core.handle(event))

    def take_job(self) -> bytes:
        out, self.to_job = self.to_job, b""
        return out

    def take_up(self) -> bytes:
        out, self.to_up = self.to_up, b""
        return out

    @property
    def ended(self) -> End | None:
        return next((c for c in self.commands if isinstance(c, End)), None)

    def fatal(self) -> dict[str, str]:
        """The one ErrorResponse the job got last: its fields by long name."""
        data = self.to_job
        pos = data.rindex(b"E\x00\x00")
        error = decode_backend(ord("E"), data[pos + 5 :])
        assert isinstance(error, ErrorResponse)
        names = ("severity", "code", "message", "detail", "hint")
        return {n: v for n in names if (v := error.get(n)) is not None}


def startup(user: str = "ci", **parameters: str) -> bytes:
    return StartupMessage(3, 0, {"user": user, "database": "app", **parameters}).encode()


def server_ready(**parameters: str) -> bytes:
    params = {"server_version": "15.18", "client_encoding": "UTF8", **parameters}
    out = b"R\x00\x00\x00\x08\x00\x00\x00\x00"  # AuthenticationOk (trust)
    out += b"".join(ParameterStatus(k, v).encode() for k, v in params.items())
    out += BackendKeyData(4242, b"\x0a\x0b\x0c\x0d").encode()
    return out + ReadyForQuery("I").encode()


def connect(d: Drive, *, job_startup: bytes | None = None) -> None:
    """Take a fresh core through startup to the relay."""
    assert d.start() == [SetTimer("startup", 60.0)]
    assert d.job(job_startup or startup()) == [OpenUpstream(UPSTREAM, 10.0)]
    assert d.event(UpstreamOpened(("10.0.0.1", 50000))) == []
    sent = d.take_up()
    assert sent.startswith(StartupMessage(3, 0, {}).encode()[:4]) or sent  # the appliance's own
    assert b"user\x00app\x00" in sent and SECRET.encode() not in sent
    commands = d.up(server_ready())
    assert ClearTimer("startup") in commands
    assert d.core.state is State.RELAY


# -- the recorded conversations go through unchanged ----------------------------------------


@pytest.mark.parametrize("name", ["psql_trust", "psycopg_trust", "asyncpg_trust"])
@pytest.mark.parametrize("bytewise", [False, True], ids=["chunks", "bytewise"])
def test_real_conversations_go_through_the_core_unchanged(name: str, bytewise: bool) -> None:
    transcript = load(name)
    assert name in NAMES
    client = transcript.stream("c")
    head = startup_length(client)
    d = Drive()
    d.start()
    # The job's startup phase, chunk by chunk as it was sent (psql asks for TLS first and
    # waits for the answer: bytes after an SSLRequest in the same write are refused).
    commands = []
    fed = 0
    for piece in transcript.pieces("c"):
        if fed >= head:
            break
        commands += d.job(piece, bytewise=bytewise)
        fed += len(piece)
    assert commands == [OpenUpstream(UPSTREAM, 10.0)]
    if client[:8] == SSLRequest().encode():
        assert d.take_job() == b"N"
    d.event(UpstreamOpened(("10.0.0.1", 50000)))
    d.take_up()  # the appliance's own startup, as the service account
    server_chunks = transcript.pieces("s")
    first = next(i for i, c in enumerate(server_chunks) if c != b"N")
    d.up(server_chunks[first], bytewise=bytewise)
    greeting = d.take_job()
    # The job sees the server's parameters and ReadyForQuery, with a key the appliance issued.
    assert greeting.endswith(ReadyForQuery("I").encode())
    assert b"server_version\x00" in greeting
    real_key = BackendKeyData(*_key_of(server_chunks[first]))
    assert real_key.encode() not in greeting
    # The rest: every byte each way exactly as recorded.
    rest = _after_startup(transcript.chunks, head, first)
    for direction, chunk in rest:
        if direction == "c":
            d.job(chunk, bytewise=bytewise)
        else:
            d.up(chunk, bytewise=bytewise)
    assert d.take_up() == b"".join(c for d_, c in rest if d_ == "c")
    assert d.take_job() == b"".join(c for d_, c in rest if d_ == "s")
    assert d.ended is None or d.ended.reason == "job terminated the session"
    assert "session.ready" in d.ledger.types()


def _key_of(greeting: bytes) -> tuple[int, bytes]:
    pos = greeting.index(b"K\x00\x00\x00\x0c")
    return int.from_bytes(greeting[pos + 5 : pos + 9], "big"), greeting[pos + 9 : pos + 13]


def _after_startup(
    chunks: tuple[tuple[str, bytes], ...], head: int, first_server: int
) -> list[tuple[str, bytes]]:
    """The chunks after the job's startup and the server's greeting."""
    out = []
    seen_client = 0
    seen_server = 0
    for direction, chunk in chunks:
        if direction == "c" and seen_client < head:
            seen_client += len(chunk)
            continue
        if direction == "s" and seen_server <= first_server:
            seen_server += 1
            continue
        out.append((direction, chunk))
    return out


# -- refusals: one conversation each ------------------------------------------------------------


def test_a_forbidden_startup_parameter_refuses_the_session() -> None:
    d = Drive()
    d.start()
    commands = d.job(startup(options="-c role=admin"))
    assert isinstance(commands[-1], End) and not any(isinstance(c, OpenUpstream) for c in commands)
    fields = d.fatal()
    assert (fields["severity"], fields["code"]) == ("FATAL", "42501")
    assert "role" in fields["message"]
    assert d.ledger.types() == ["session.start", "session.end"]
    assert d.ledger.last("session.end")["reason"].startswith("startup refused")


def test_an_ascii_unsafe_client_encoding_is_refused_at_startup() -> None:
    d = Drive()
    d.start()
    d.job(startup(client_encoding="SJIS"))
    assert d.fatal()["code"] == "42501" and "SJIS" in d.fatal()["message"]
    assert d.ended is not None


def test_an_ascii_unsafe_encoding_the_server_reports_is_refused() -> None:
    d = Drive()
    d.start()
    d.job(startup())
    d.event(UpstreamOpened(("10.0.0.1", 50000)))
    d.up(server_ready(client_encoding="SJIS"))
    assert d.fatal()["code"] == "42501" and d.ended is not None
    assert b"Z\x00\x00\x00\x05" not in d.to_job  # the job was never let in


def test_an_unavailable_secret_refuses_the_session_without_connecting() -> None:
    def missing(ref: SecretRef) -> str:
        raise ApplianceError("no such file")

    d = Drive(read_secret=missing)
    d.start()
    commands = d.job(startup())
    assert not any(isinstance(c, OpenUpstream) for c in commands)
    assert d.fatal()["code"] == "08004"
    assert "no usable secret" in d.fatal()["message"]


def test_an_unreachable_target_is_08006() -> None:
    d = Drive()
    d.start()
    d.job(startup())
    d.event(UpstreamFailed("Connection refused"))
    assert d.fatal()["code"] == "08006" and "Connection refused" in d.fatal()["message"]


def test_a_wrong_service_account_password_is_08004_with_the_server_s_reason() -> None:
    d = Drive()
    d.start()
    d.job(startup())
    d.event(UpstreamOpened(("10.0.0.1", 50000)))
    d.up(b"R\x00\x00\x00\x08\x00\x00\x00\x03")  # AuthenticationCleartextPassword
    assert SECRET.encode() in d.take_up()  # to the server, and only there
    d.up(error_response("FATAL", "28P01", 'password authentication failed for user "app"'))
    fields = d.fatal()
    assert fields["code"] == "08004"
    assert "authentication as the service account failed" in fields["message"]
    assert fields["detail"].startswith("28P01")
    assert SECRET not in repr(d.ledger.entries) and SECRET.encode() not in d.to_job


def test_tls_required_and_refused_by_the_server_ends_the_session() -> None:
    d = Drive(tgt=target(tls="require"))
    d.start()
    d.job(startup())
    d.event(UpstreamOpened(("10.0.0.1", 50000)))
    assert d.take_up() == SSLRequest().encode()
    d.up(b"N")
    fields = d.fatal()
    assert fields["code"] == "08004" and "does not support TLS" in fields["detail"]


def test_upstream_tls_is_a_command_and_its_certificate_goes_to_the_connection() -> None:
    d = Drive(tgt=target(tls="require"))
    d.start()
    d.job(startup())
    d.event(UpstreamOpened(("10.0.0.1", 50000)))
    d.take_up()
    assert d.up(b"S") == [StartTLS("upstream", "upstream-context", UPSTREAM[0])]  # type: ignore[arg-type]
    assert d.core.state is State.UPSTREAM_TLS
    d.event(TLSEstablished("upstream", None))
    assert b"user\x00app\x00" in d.take_up()  # the startup, now inside TLS


def test_job_tls_is_answered_s_then_a_command() -> None:
    context = object()
    d = Drive(client_tls=context)
    d.start()
    assert d.job(SSLRequest().encode()) == [StartTLS("job", context)]  # type: ignore[arg-type]
    assert d.take_job() == b"S"
    d.event(TLSEstablished("job"))
    assert d.job(startup()) == [OpenUpstream(UPSTREAM, 10.0)]
    assert d.ledger.last("session.start")["client_tls"] is True


def test_the_startup_timeout_is_an_event() -> None:
    d = Drive()
    assert d.start() == [SetTimer("startup", 60.0)]
    d.job(startup()[:10])
    d.event(TimerFired("startup"))
    assert d.fatal()["code"] == "08006" and d.fatal()["message"] == "startup timed out"


def test_garbage_from_the_job_is_its_own_protocol_violation_and_recorded() -> None:
    d = Drive()
    d.start()
    d.job(b"\x00\x00\x00\x08\x12\x34\x56\x78")  # a startup code no one speaks
    assert d.fatal()["severity"] == "FATAL"
    assert d.ended is not None and "protocol violation by the job during startup" in d.ended.reason
    refused = d.ledger.last("connection.refused")
    assert refused["reason"] == "protocol violation by the job during startup"
    assert "detail" in refused and d.ledger.types() == ["connection.refused"]


# -- cancel ------------------------------------------------------------------------------------------


def test_cancel_is_forwarded_with_the_real_key_and_filed_under_its_session() -> None:
    ledger = FakeLedger()
    first = Drive(session_id="victim", ledger=ledger)
    connect(first)
    issued = BackendKeyData(*_key_of(first.to_job))
    second = Drive(shared=first.shared, session_id="canceller", ledger=ledger)
    second.start()
    commands = second.job(CancelRequest(issued.pid, issued.key).encode())
    assert commands == [SendOnce(UPSTREAM, CancelRequest(4242, b"\x0a\x0b\x0c\x0d").encode())]
    second.event(SentOnce(True))
    assert second.ended is not None
    (cancel,) = [(s, d) for t, s, d in ledger.entries if t == "cancel.requested"]
    assert cancel[0] == "victim"
    assert cancel[1] == {
        "client": "10.9.0.1:40000",
        "connection": "canceller",
        "outcome": "forwarded",
    }


def test_a_cancel_with_an_unknown_key_is_recorded_and_dropped() -> None:
    d = Drive()
    d.start()
    assert not any(isinstance(c, SendOnce) for c in d.job(CancelRequest(7, b"1234").encode()))
    # Guessing keys costs the guesser nothing: recorded as a refusal (aggregated by the
    # daemon's RefusalLog), once.
    assert d.ledger.entries == [
        (
            "connection.refused",
            None,
            {
                "source": "10.9.0.1",
                "reason": "cancel request with an unknown key",
                "protocol": "postgres",
                "client": "10.9.0.1:40000",
                "listener": "127.0.0.1:6432",
                "connection": "s1",
            },
        )
    ]


# -- relay-time commands ----------------------------------------------------------------------------

REVIEW = """
- {name: hold-deletes, match: {classes: [delete]}, action: review, approvers: [alice]}
- {name: rest, action: allow}
"""


def _outcome(verdict: Resolution) -> Outcome:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    request = ApprovalRequest(
        "r1", "s1", "unattributed", "db", "ci", "hold-deletes", ("alice",), "delete", "00",
        now, now + timedelta(minutes=5),
    )  # fmt: skip
    return Outcome(verdict, request, approver="alice", reason="ok")


def test_a_held_statement_is_an_approval_command_and_a_pause() -> None:
    d = Drive(policy_rules=REVIEW)
    connect(d)
    commands = d.job(Query("delete from t where id = 1").encode() + Query("select 1").encode())
    ask = next(c for c in commands if isinstance(c, AskApproval))
    assert ask.fields["rule"] == "hold-deletes" and ask.fields["approvers"] == ("alice",)
    assert ask.fields["statement"] == "delete from t where id = 1"
    assert PauseReading("job", "hold", True) in commands
    assert d.take_up() == b""  # nothing forwarded while held
    commands = d.event(ApprovalAnswered(ask.key, _outcome(Resolution.GRANTED), "r1"))
    assert PauseReading("job", "hold", False) in commands
    assert d.take_up() == Query("delete from t where id = 1").encode() + Query("select 1").encode()


def test_a_refused_approval_answers_the_job_with_the_outcome() -> None:
    d = Drive(policy_rules=REVIEW)
    connect(d)
    d.take_job()
    ask = next(c for c in d.job(Query("delete from t").encode()) if isinstance(c, AskApproval))
    d.event(ApprovalAnswered(ask.key, _outcome(Resolution.DENIED), "r1"))
    d.up(error_response("ERROR", "42601", "stand-in") + ReadyForQuery("I").encode())
    assert b"approval r1 denied by alice" in d.take_job()


def test_approvals_that_cannot_be_asked_refuse_the_statement() -> None:
    d = Drive(policy_rules=REVIEW)
    connect(d)
    d.take_job()
    ask = next(c for c in d.job(Query("delete from t").encode()) if isinstance(c, AskApproval))
    d.event(ApprovalAnswered(ask.key, error="approvals are not configured"))
    d.up(error_response("ERROR", "42601", "stand-in") + ReadyForQuery("I").encode())
    assert b"approvals are not configured" in d.take_job()


def test_drain_ends_an_idle_session_with_57p01_and_waits_for_one_in_flight() -> None:
    d = Drive()
    connect(d)
    d.job(Query("select pg_sleep(1)").encode())
    commands = d.event(Drain())
    assert PauseReading("job", "drain", True) in commands and d.ended is None
    d.up(b"C\x00\x00\x00\x0dSELECT 1\x00" + ReadyForQuery("I").encode())
    assert d.ended is not None and d.fatal()["code"] == "57P01"
    assert d.take_up().endswith(b"X\x00\x00\x00\x04")  # Terminate to the server


def test_abort_and_eof_end_once_with_one_record() -> None:
    d = Drive()
    connect(d)
    d.event(Abort("grace period over"))
    d.event(Eof("job"))
    assert d.ledger.types().count("session.end") == 1
    assert d.ledger.last("session.end")["reason"] == "grace period over"


def test_a_server_that_vanishes_is_explained_to_the_job() -> None:
    d = Drive()
    connect(d)
    d.event(Eof("upstream"))
    assert d.fatal()["code"] == "08006" and "the upstream server closed it" in d.fatal()["message"]


def test_a_ledger_that_cannot_record_ends_the_session_with_08006() -> None:
    d = Drive()
    connect(d)
    d.ledger.fail = LedgerUnavailable("writer process died")
    commands = d.core.crashed(LedgerUnavailable("writer process died"))
    d._out(commands)
    assert d.fatal()["code"] == "08006" and d.ended is not None


def test_a_bug_in_the_core_ends_the_session_with_xx000() -> None:
    d = Drive()
    connect(d)
    d._out(d.core.crashed(RuntimeError("boom")))
    assert d.fatal()["code"] == "XX000"
    assert d.ledger.last("session.end")["reason"] == "appliance error: RuntimeError: boom"


# -- write-ahead ------------------------------------------------------------------------------------


def test_a_write_is_sent_only_once_its_entry_is_durable() -> None:
    d = Drive(policy_rules="- {name: rest, action: allow}")
    d.services.write_ahead = True
    connect(d)
    commands = d.job(Query("update t set x = 1").encode())
    (wait,) = [c for c in commands if isinstance(c, AwaitDurable)]
    assert PauseReading("job", "hold", True) in commands
    assert d.take_up() == b""
    assert "statement" in d.ledger.types()  # recorded before the wait
    commands = d.event(Durable(wait.key, True))
    assert d.take_up() == Query("update t set x = 1").encode()
    assert PauseReading("job", "hold", False) in commands
    # A read is not held.
    d.up(b"C\x00\x00\x00\x0dUPDATE 1\x00" + ReadyForQuery("I").encode())
    assert not any(isinstance(c, AwaitDurable) for c in d.job(Query("select 1").encode()))
    assert d.take_up() == Query("select 1").encode()


def test_the_entries_of_a_block_that_changed_something_are_hurried_to_the_writer() -> None:
    """Inside a transaction block a write is not synced on its own: the block's sync comes
    before the statement that may end it. Meanwhile each settle hurries the entries to the
    writer (not with the next batch), so that it has them before that sync; reads, and a
    block that changed nothing, are left to the batch."""
    d = Drive(policy_rules="- {name: rest, action: allow}")
    d.services.write_ahead = True
    connect(d)
    ok = ReadyForQuery("T").encode()

    def step(sql: str, tag: bytes) -> list[Command]:
        commands = d.job(Query(sql).encode())
        d.up(b"C" + (4 + len(tag) + 1).to_bytes(4, "big") + tag + b"\x00" + ok)
        return commands

    step("select 1", b"SELECT 1")
    step("begin", b"BEGIN")
    step("select 2", b"SELECT 1")
    assert d.ledger.hurried == 0  # nothing changed yet: no sync is coming
    commands = step("update t set x = 1", b"UPDATE 1")
    assert not any(isinstance(c, AwaitDurable) for c in commands)  # owed to the block's end
    assert d.ledger.hurried == 2  # its statement's settle, its response's
    commands = d.job(Query("commit").encode())
    (wait,) = [c for c in commands if isinstance(c, AwaitDurable)]
    d.event(Durable(wait.key, True))
    d.up(b"C\x00\x00\x00\x0bCOMMIT\x00" + ReadyForQuery("I").encode())
    hurried = d.ledger.hurried
    step("select 3", b"SELECT 1")
    assert d.ledger.hurried == hurried  # the block is over


def test_a_write_that_cannot_be_made_durable_is_refused_and_never_sent() -> None:
    d = Drive(policy_rules="- {name: rest, action: allow}")
    d.services.write_ahead = True
    connect(d)
    (wait,) = [c for c in d.job(Query("delete from t").encode()) if isinstance(c, AwaitDurable)]
    d.event(Durable(wait.key, False, "writer process died"))
    assert d.take_up() == Terminate().encode()  # the delete never reached the server
    assert d.fatal()["code"] == "08006" and "was not sent" in d.fatal()["message"]
    assert d.ledger.last("session.end")["reason"] == "ledger cannot record: writer process died"


# -- recording once the bytes are on their way (settle) ---------------------------------------


def _replay(name: str, *, settle: bool, bytewise: bool = False) -> Drive:
    """Transcript ``name`` through a core, with or without the shell's settle() calls."""
    transcript = load(name)
    client = transcript.stream("c")
    head = startup_length(client)
    d = Drive(settle=settle)
    d.start()
    fed = 0
    for piece in transcript.pieces("c"):
        if fed >= head:
            break
        d.job(piece, bytewise=bytewise)
        fed += len(piece)
    d.event(UpstreamOpened(("10.0.0.1", 50000)))
    server_chunks = transcript.pieces("s")
    first = next(i for i, c in enumerate(server_chunks) if c != b"N")
    d.up(server_chunks[first], bytewise=bytewise)
    for direction, chunk in _after_startup(transcript.chunks, head, first):
        (d.job if direction == "c" else d.up)(chunk, bytewise=bytewise)
    d.event(Eof("job", None))
    return d


@pytest.mark.parametrize("name", ["psql_trust", "psycopg_trust", "asyncpg_trust"])
@pytest.mark.parametrize("bytewise", [False, True], ids=["chunks", "bytewise"])
def test_settling_late_or_never_records_the_same_entries_in_the_same_order(
    name: str, bytewise: bool
) -> None:
    """The statements and responses a step defers are recorded by settle(), or else by the
    core's next call: a shell that settles after every write and one that never does leave
    the same ledger, entry for entry."""
    settled = _replay(name, settle=True, bytewise=bytewise)
    unsettled = _replay(name, settle=False, bytewise=bytewise)
    assert settled.to_job == unsettled.to_job and settled.to_up == unsettled.to_up
    assert settled.ledger.entries == unsettled.ledger.entries
    types = settled.ledger.types()
    assert types.count("statement") == types.count("response") > 0
    assert types[-1] == "session.end"


def test_a_statement_is_forwarded_before_its_entry_is_made() -> None:
    """Masking and encoding a statement's entries wait until its bytes are written: the
    step's output is taken first, then settle() records it."""
    d = Drive(settle=False)
    connect(d)
    before = len(d.ledger.entries)
    d.job(Query("select 1").encode())
    assert d.take_up() == Query("select 1").encode()
    assert d.ledger.types()[before:] == []
    d.core.settle()
    assert d.ledger.types()[before:] == ["statement"]
    d.up(b"C\x00\x00\x00\x0dSELECT 1\x00" + ReadyForQuery("I").encode())
    assert d.ledger.types()[before:] == ["statement"]
    d.core.settle()
    assert d.ledger.types()[before:] == ["statement", "response"]
    d.core.settle()  # nothing left: settling again records nothing
    assert d.ledger.types()[before:] == ["statement", "response"]


def test_a_write_ahead_sync_covers_the_entries_deferred_before_it() -> None:
    """A statement written ahead asks for its sync once its entry -- and every entry the
    session deferred before it -- is appended, even before the shell settles."""
    d = Drive(policy_rules="- {name: rest, action: allow}", settle=False)
    d.services.write_ahead = True
    connect(d)
    d.job(Query("select 1").encode())
    d.up(b"C\x00\x00\x00\x0dSELECT 1\x00" + ReadyForQuery("I").encode())
    commands = d.job(Query("update t set x = 1").encode())
    assert any(isinstance(c, AwaitDurable) for c in commands)
    recorded = [(t, e.get("n")) for t, _, e in d.ledger.entries if t in ("statement", "response")]
    assert recorded == [("statement", 1), ("response", 1), ("statement", 2)]
    assert d.take_up() == Query("select 1").encode()  # the update waits for the sync


def test_once_the_ledger_has_failed_a_statement_is_not_forwarded() -> None:
    """Deferring stops when the ledger has failed: the statement's entry is appended at
    once, its failure ends the session, and the statement never reaches the server."""
    d = Drive()
    connect(d)
    d.take_up()
    d.ledger.fail = LedgerUnavailable("writer process died")
    with pytest.raises(LedgerUnavailable):
        d.core.receive("job", Query("select 1").encode())
    d._out(d.core.crashed(LedgerUnavailable("writer process died")))
    assert d.take_up() == Terminate().encode()
    assert d.fatal()["code"] == "08006"


def test_a_deferred_entry_that_fails_leaves_the_rest_for_the_end() -> None:
    """If recording one deferred entry raises (a bug), the session ends, and the entries
    deferred after it are still recorded before ``session.end``."""
    d = Drive(settle=False)
    connect(d)
    d.job(Query("select 1").encode() + Query("select 2").encode())
    d.ledger.break_once = "statement"
    with pytest.raises(RuntimeError):
        d.core.settle()
    d._out(d.core.crashed(RuntimeError("bug")))
    recorded = [(t, e.get("n")) for t, _, e in d.ledger.entries if t in ("statement", "response")]
    assert ("statement", 2) in recorded
    assert d.ledger.types()[-1] == "session.end"
