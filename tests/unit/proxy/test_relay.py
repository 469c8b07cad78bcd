"""Transcript tests of the sans-IO :class:`~appliance.proxy.pg.relay.Relay`.

Each test is a conversation: what the job sends, what the server answers, and exactly which
bytes the relay passes on each way, with what it asked of its hooks (decide, record, open a
result sink, ask for an approval). Every conversation is played twice, fed whole and one
byte at a time through the real framers; the bytes out and the hooks' log must be the same.
Then the recorded real conversations (``tests/unit/postgres/data``) go through unchanged,
and hypothesis mutates them: nothing but PeerProtocolError may come out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.masking import ColumnRule, Masker, MaskingConfig, Style
from appliance.masking.postgres import ResponseMasker
from appliance.protocols.postgres import (
    BACKEND_TYPES,
    FRONTEND_TYPES,
    Framer,
    Limits,
    Messages,
    PeerProtocolError,
    datarow_values,
    error_response,
)
from appliance.protocols.postgres.messages import (
    Bind,
    BindComplete,
    CommandComplete,
    CopyData,
    CopyDone,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RowDescription,
    Sync,
    notice_response,
)
from appliance.proxy.pg.relay import ALLOW, Relay, RowMasker, SessionRefused, Statement, Verdict
from tests.unit.postgres.transcripts import load

# -- messages ----------------------------------------------------------------------------------


def q(sql: str) -> bytes:
    return Query(sql).encode()


def parse(sql: str, name: str = "") -> bytes:
    return Parse(name, sql).encode()


def bind(*params: bytes | None, statement: str = "", portal: str = "", fmt: int = 0) -> bytes:
    return Bind(portal, statement, (), params, (fmt,) if fmt else ()).encode()


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return Execute(portal, max_rows).encode()


SYNC = Sync().encode()
PARSE_OK = ParseComplete().encode()
BIND_OK = BindComplete().encode()
NO_DATA = NoData().encode()
SUSPENDED = PortalSuspended().encode()


def ready(status: str = "I") -> bytes:
    return ReadyForQuery(status).encode()  # type: ignore[arg-type]


def desc(*names: str, fmt: int = 0) -> bytes:
    return RowDescription(tuple(FieldDescription(n, format=fmt) for n in names)).encode()


def row(*values: str | None) -> bytes:
    return DataRow(tuple(None if v is None else v.encode() for v in values)).encode()


def done(tag: str) -> bytes:
    return CommandComplete(tag).encode()


def error(code: str = "22012", message: str = "division by zero") -> bytes:
    return error_response("ERROR", code, message)


DENIED = error_response("ERROR", "42501", "statement denied by policy rule 'no'")
# What the server gets instead of a denied statement, and what it answers.
STAND_IN_Q = q("appliance: statement denied by policy")
STAND_IN_P = parse("appliance: statement denied by policy", "appliance.denied")
SYNTAX = error("42601", 'syntax error at or near "appliance"')
REFUSED = error_response("ERROR", "42501", "approval refused")


# -- the hooks ---------------------------------------------------------------------------------


class ListSink:
    def __init__(self) -> None:
        self.adds: list[bytes] = []
        self.closes = 0

    def add(self, frames: bytes) -> None:
        self.adds.append(frames)

    def close(self) -> None:
        self.closes += 1

    @property
    def data(self) -> bytes:
        return b"".join(self.adds)


class Hooks:
    """Records every call; decides by statement text (``verdicts``), else allows."""

    def __init__(
        self, verdicts: dict[str, Verdict] | None = None, masker: RowMasker | None = None
    ) -> None:
        self.verdicts = verdicts or {}
        self.masker = masker
        self.log: list[tuple[Any, ...]] = []
        self.sinks: list[tuple[int, str, ListSink]] = []
        self.readies = 0

    def decide(self, stmt: Statement) -> Verdict:
        return self.verdicts.get(stmt.text, ALLOW)

    def statement_started(self, stmt: Statement) -> None:
        self.log.append(
            ("start", stmt.n, stmt.protocol, stmt.text, stmt.params, stmt.verdict.action)
        )

    def statement_finished(self, stmt: Statement) -> None:
        code = stmt.error.code if stmt.error else None
        tags = tuple(r.tag for r in stmt.results)
        self.log.append(("finish", stmt.n, stmt.outcome, tags, stmt.rows, code))

    def request_approval(self, stmt: Statement) -> None:
        self.log.append(("approval", stmt.n))

    def open_result(
        self, stmt: Statement, description: RowDescription | None, formats: tuple[int, ...]
    ) -> ListSink:
        sink = ListSink()
        columns = tuple(f.name for f in description.fields) if description else None
        self.sinks.append((stmt.n, f"rows {columns} {formats}", sink))
        return sink

    def open_copy(self, stmt: Statement, direction: str) -> ListSink:
        sink = ListSink()
        self.sinks.append((stmt.n, f"copy {direction}", sink))
        return sink

    def ready(self) -> None:
        self.readies += 1

    def request_failed(self, request: str, text: str | None, error: ErrorResponse) -> None:
        self.log.append(("request failed", request, text, error.code))

    def notice(self, stmt: Statement | None, notice: NoticeResponse) -> None:
        self.log.append(("notice", stmt.n if stmt else None, notice.message))

    def notification(self, notification: NotificationResponse) -> None:
        self.log.append(("notification", notification.channel, notification.payload))

    def parameter(self, name: str, value: str) -> None:
        self.log.append(("parameter", name, value))

    def row_masker(self) -> RowMasker | None:
        return self.masker


# -- playing a conversation --------------------------------------------------------------------

Step = tuple[Any, ...]  # ("c", bytes) | ("s", bytes) | ("approve", bool)
LIMITS = Limits()


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@pytest.fixture(params=[whole, bytewise], ids=["whole", "bytewise"])
def split(request: pytest.FixtureRequest) -> Callable[[bytes], list[bytes]]:
    return request.param  # type: ignore[no-any-return]


class Player:
    """Feeds steps through real framers into a relay; collects what comes out per step."""

    def __init__(self, hooks: Hooks, split: Callable[[bytes], list[bytes]]) -> None:
        self.hooks = hooks
        self.split = split
        clock = iter(range(10**9))
        self.relay = Relay(hooks, now=lambda: float(next(clock)))
        self.client = Framer(LIMITS.caps(FRONTEND_TYPES, frontend=True), side="client")
        self.server = Framer(LIMITS.caps(BACKEND_TYPES, frontend=False), side="server")

    def client_sends(self, data: bytes) -> tuple[bytes, bytes]:
        for piece in self.split(data):
            chunk, frames = self.client.feed(piece)
            if frames:
                self.relay.from_client(Messages(chunk, frames))
        return self.relay.take_output()

    def server_sends(self, data: bytes) -> tuple[bytes, bytes]:
        for piece in self.split(data):
            chunk, frames = self.server.feed(piece)
            if frames:
                self.relay.from_server(Messages(chunk, frames))
        return self.relay.take_output()

    def approve(self, approved: bool) -> tuple[bytes, bytes]:
        self.relay.approval_result(approved, error=b"" if approved else REFUSED, record={})
        return self.relay.take_output()

    def to_server(self, data: bytes) -> bytes:
        """The job sends ``data``; return what reaches the server (nothing for the job)."""
        to_client, to_server = self.client_sends(data)
        assert to_client == b""
        return to_server

    def to_client(self, data: bytes) -> bytes:
        """The server sends ``data``; return what reaches the job (nothing for the server)."""
        to_client, to_server = self.server_sends(data)
        assert to_server == b""
        return to_client


def log_of(hooks: Hooks, kind: str) -> list[tuple[Any, ...]]:
    return [entry for entry in hooks.log if entry[0] == kind]


# -- simple protocol ---------------------------------------------------------------------------


def test_simple_query(split: Callable[[bytes], list[bytes]]) -> None:
    hooks = Hooks()
    p = Player(hooks, split)
    assert p.to_server(q("select 1")) == q("select 1")
    answer = desc("one") + row("1") + done("SELECT 1") + ready()
    assert p.to_client(answer) == answer
    assert hooks.log == [
        ("start", 1, "simple", "select 1", (), "allow"),
        ("finish", 1, "ok", ("SELECT 1",), 1, None),
    ]
    ((n, what, sink),) = hooks.sinks
    assert (n, what, sink.data, sink.closes) == (1, "rows ('one',) (0,)", row("1"), 1)
    assert p.relay.idle and p.relay.tx_status == ord("I")


def test_multi_statement_query_has_one_statement_with_several_results(
    split: Callable[[bytes], list[bytes]],
) -> None:
    hooks = Hooks()
    p = Player(hooks, split)
    p.to_server(q("select 1; insert into t values (1); select 2, 3"))
    answer = (
        desc("a") + row("1") + done("SELECT 1")
        + done("INSERT 0 1")
        + desc("b", "c") + row("2", "3") + row(None, "x") + done("SELECT 2")
        + ready()
    )  # fmt: skip
    assert p.to_client(answer) == answer
    assert log_of(hooks, "finish") == [
        ("finish", 1, "ok", ("SELECT 1", "INSERT 0 1", "SELECT 2"), 4, None)
    ]
    assert [(w, s.data) for _, w, s in hooks.sinks] == [
        ("rows ('a',) (0,)", row("1")),
        ("rows ('b', 'c') (0, 0)", row("2", "3") + row(None, "x")),
    ]


def test_error_and_empty_query_and_notices(split: Callable[[bytes], list[bytes]]) -> None:
    hooks = Hooks()
    p = Player(hooks, split)
    p.to_server(q("select 1/0") + q("") + q("do $$ $$"))
    notice = notice_response("NOTICE", "00000", "hello")
    status = ParameterStatus("application_name", "changed").encode()
    answer = (
        error() + ready()
        + EmptyQueryResponse().encode() + ready()
        + notice + done("DO") + status + ready()
        + NotificationResponse(7, "chan", "payload").encode()
    )  # fmt: skip
    assert p.to_client(answer) == answer
    assert log_of(hooks, "finish") == [
        ("finish", 1, "error", (), 0, "22012"),
        ("finish", 2, "ok", ("",), 0, None),
        ("finish", 3, "ok", ("DO",), 0, None),
    ]
    assert ("notice", 3, "hello") in hooks.log
    assert ("parameter", "application_name", "changed") in hooks.log
    assert hooks.log[-1] == ("notification", "chan", "payload")


# -- extended protocol -------------------------------------------------------------------------


def extended(sql: str, *params: str, name: str = "") -> bytes:
    return (
        parse(sql, name)
        + bind(*(p.encode() for p in params), statement=name)
        + Describe("P", "").encode()
        + execute()
    )


def test_extended_protocol_with_pipelining(split: Callable[[bytes], list[bytes]]) -> None:
    hooks = Hooks()
    p = Player(hooks, split)
    batch = (
        extended("select $1", "a")
        + extended("insert into t values ($1)", "b")
        + extended("select $1, $2", "c", "d")
        + SYNC
    )
    assert p.to_server(batch) == batch
    assert [e[1:5] for e in log_of(hooks, "start")] == [
        (1, "extended", "select $1", (b"a",)),
        (2, "extended", "insert into t values ($1)", (b"b",)),
        (3, "extended", "select $1, $2", (b"c", b"d")),
    ]
    answer = (
        PARSE_OK + BIND_OK + desc("x") + row("a") + done("SELECT 1")
        + PARSE_OK + BIND_OK + NO_DATA + done("INSERT 0 1")
        + PARSE_OK + BIND_OK + desc("x", "y") + row("c", "d") + done("SELECT 1")
        + ready()
    )  # fmt: skip
    assert p.to_client(answer) == answer
    assert log_of(hooks, "finish") == [
        ("finish", 1, "ok", ("SELECT 1",), 1, None),
        ("finish", 2, "ok", ("INSERT 0 1",), 1, None),
        ("finish", 3, "ok", ("SELECT 1",), 1, None),
    ]
    assert [s.data for _, _, s in hooks.sinks] == [row("a"), row("c", "d")]
    assert p.relay.idle


def test_prepared_statement_described_once_then_executed_with_a_row_limit(
    split: Callable[[bytes], list[bytes]],
) -> None:
    hooks = Hooks()
    p = Player(hooks, split)
    prepare = parse("select g from s", "st") + Describe("S", "st").encode() + SYNC
    assert p.to_server(prepare) == prepare
    answer = PARSE_OK + ParameterDescription(()).encode() + desc("g", fmt=0) + ready()
    assert p.to_client(answer) == answer
    assert hooks.log == []  # preparing is no statement
    run = bind(statement="st", portal="c", fmt=1) + execute("c", 2) + execute("c", 2) + SYNC
    p.to_server(run)
    answer = (
        BIND_OK + row("1") + row("2") + SUSPENDED + row("3") + done("SELECT 1") + ready()
    )  # fmt: skip
    assert p.to_client(answer) == answer
    assert log_of(hooks, "finish") == [
        ("finish", 1, "suspended", (None,), 2, None),
        ("finish", 2, "ok", ("SELECT 1",), 1, None),
    ]
    # The rows carry the formats the Bind asked for, with the Describe'd columns.
    assert [w for _, w, _ in hooks.sinks] == ["rows ('g',) (1,)", "rows ('g',) (1,)"]
    assert log_of(hooks, "start")[0][2:4] == ("extended", "select g from s")


def test_error_in_a_pipeline_skips_to_sync(split: Callable[[bytes], list[bytes]]) -> None:
    hooks = Hooks()
    p = Player(hooks, split)
    batch = extended("select 1") + extended("select 1/0") + extended("select 3") + SYNC
    assert p.to_server(batch) == batch
    answer = (
        PARSE_OK + BIND_OK + desc("a") + row("1") + done("SELECT 1")
        + PARSE_OK + BIND_OK + desc("a") + error()
        + ready()
    )  # fmt: skip
    assert p.to_client(answer) == answer
    assert log_of(hooks, "finish") == [
        ("finish", 1, "ok", ("SELECT 1",), 1, None),
        ("finish", 2, "error", (), 0, "22012"),
        ("finish", 3, "skipped", (), 0, None),
    ]
    assert hooks.readies == 1
    # The next batch is tracked from a clean state.
    p.to_server(extended("select 4") + SYNC)
    p.to_client(PARSE_OK + BIND_OK + desc("a") + row("4") + done("SELECT 1") + ready())
    assert log_of(hooks, "finish")[-1] == ("finish", 4, "ok", ("SELECT 1",), 1, None)


def test_an_error_answering_bind_is_the_error_of_its_execute(
    split: Callable[[bytes], list[bytes]],
) -> None:
    # 'select 1/0' fails when planned, at Bind: the statement that fails is the Execute's.
    hooks = Hooks()
    p = Player(hooks, split)
    p.to_server(parse("select 1/0") + bind() + execute() + SYNC)
    p.to_client(PARSE_OK + error() + ready())
    assert log_of(hooks, "finish") == [("finish", 1, "error", (), 0, "22012")]
    assert log_of(hooks, "request failed") == []


def test_a_parse_error_with_no_execute_is_recorded_on_its_own(
    split: Callable[[bytes], list[bytes]],
) -> None:
    hooks = Hooks()
    p = Player(hooks, split)
    p.to_server(parse("selec 1", "s1") + Describe("S", "s1").encode() + SYNC)
    p.to_client(error("42601", "syntax error") + ready())
    assert hooks.log == [("request failed", "Parse", "selec 1", "42601")]
    # An error answering Sync (a deferred constraint checked at the implicit commit).
    p.to_server(extended("insert into t values (1)") + SYNC)
    p.to_client(PARSE_OK + BIND_OK + NO_DATA + done("INSERT 0 1") + error("23503") + ready())
    assert hooks.log[-2:] == [
        ("finish", 1, "ok", ("INSERT 0 1",), 1, None),
        ("request failed", "Sync", None, "23503"),
    ]


def test_unexpected_server_messages_are_the_server_s_fault() -> None:
    for answer in (row("x"), done("SELECT 1"), PARSE_OK, ready(), b"Z\0\0\0\x05X"):
        p = Player(Hooks(), whole)
        with pytest.raises(PeerProtocolError) as caught:
            p.server_sends(answer)
        assert caught.value.side == "server"


def test_an_ascii_unsafe_client_encoding_ends_the_session() -> None:
    """client_encoding SJIS (set by a function the policy cannot see into): the server
    would read the job's next statements otherwise than the appliance; its ParameterStatus
    ends the session. LATIN1 reads alike and goes on."""
    hooks = Hooks()
    p = Player(hooks, whole)
    p.to_server(q("set client_encoding = 'LATIN1'"))
    same = ParameterStatus("client_encoding", "LATIN1").encode() + done("SET") + ready()
    assert p.to_client(same) == same
    p.to_server(q("set client_encoding = 'SJIS'"))
    with pytest.raises(SessionRefused, match="SJIS") as refused:
        p.server_sends(ParameterStatus("client_encoding", "SJIS").encode() + done("SET") + ready())
    assert "read statements otherwise" in refused.value.message


# -- denial ------------------------------------------------------------------------------------


def test_deny_in_simple_protocol_fails_the_transaction_as_a_server_error_would(
    split: Callable[[bytes], list[bytes]],
) -> None:
    deny = Verdict("deny", error=DENIED, record={"decision": "deny"})
    hooks = Hooks({"drop table t": deny})
    p = Player(hooks, split)
    p.to_server(q("begin"))
    p.to_client(done("BEGIN") + ready("T"))
    # The server gets a stand-in it refuses; its error is swapped for the denial, and its
    # ReadyForQuery says the transaction failed, as after any error.
    to_client, to_server = p.client_sends(q("drop table t"))
    assert (to_client, to_server) == (b"", STAND_IN_Q)
    assert p.to_client(SYNTAX + ready("E")) == DENIED + ready("E")
    assert log_of(hooks, "finish")[-1] == ("finish", 2, "denied", (), 0, None)
    assert ("start", 2, "simple", "drop table t", (), "deny") in hooks.log
    assert log_of(hooks, "request failed") == []  # the stand-in's error is nobody's
    # The session goes on; COMMIT of the failed transaction rolls back, as PostgreSQL does.
    assert p.to_server(q("commit")) == q("commit")
    assert p.to_client(done("ROLLBACK") + ready()) == done("ROLLBACK") + ready()


def test_a_rejected_statement_ends_as_its_own_error_not_as_a_denial(
    split: Callable[[bytes], list[bytes]],
) -> None:
    """Text the grammar rejects: the job gets that error where the server would have put
    it, the transaction fails as after any error, and it is recorded as an error."""
    grammar = error_response("ERROR", "42601", 'syntax error at or near "selec"', position="1")
    hooks = Hooks(
        {"selec 1": Verdict("reject", error=grammar, record={"decision": "syntax_error"})}
    )
    p = Player(hooks, split)
    p.to_server(q("begin"))
    p.to_client(done("BEGIN") + ready("T"))
    assert p.client_sends(q("selec 1")) == (b"", STAND_IN_Q)
    assert p.to_client(SYNTAX + ready("E")) == grammar + ready("E")
    assert log_of(hooks, "finish")[-1] == ("finish", 2, "error", (), 0, "42601")


def test_ready_comes_after_the_statement_it_answers_is_finished() -> None:
    """The hooks learn that a statement is finished before they hear the ReadyForQuery
    that answers it: what it may have changed is settled at that ReadyForQuery."""
    hooks = Hooks()
    p = Player(hooks, whole)
    events: list[str] = []
    finished, ready_ = hooks.statement_finished, hooks.ready
    hooks.statement_finished = lambda stmt: (events.append(f"finish {stmt.n}"), finished(stmt))[1]  # type: ignore[method-assign]
    hooks.ready = lambda: (events.append("ready"), ready_())[1]  # type: ignore[method-assign]
    p.to_server(q("set search_path to public"))
    p.to_client(done("SET") + ready())
    assert events == ["finish 1", "ready"]


def test_a_fastpath_call_is_a_statement_of_the_function_it_calls(
    split: Callable[[bytes], list[bytes]],
) -> None:
    from appliance.protocols.postgres.messages import FunctionCall, FunctionCallResponse

    hooks = Hooks()
    p = Player(hooks, split)
    call = FunctionCall(952, (0, 0), (b"16384", b"131072"), 0).encode()
    assert p.to_server(call) == call
    reply = FunctionCallResponse(b"0").encode() + ready("T")
    assert p.to_client(reply) == reply
    assert (
        "start",
        1,
        "function",
        "-- fast-path function call: lo_open (oid 952)",
        (),
        "allow",
    ) in hooks.log
    assert log_of(hooks, "finish") == [("finish", 1, "ok", (), 0, None)]


def test_deny_behind_pipelined_queries_is_answered_in_order(
    split: Callable[[bytes], list[bytes]],
) -> None:
    hooks = Hooks({"drop table t": Verdict("deny", error=DENIED)})
    p = Player(hooks, split)
    to_client, to_server = p.client_sends(q("select 1") + q("drop table t") + q("select 3"))
    assert (to_client, to_server) == (b"", q("select 1") + STAND_IN_Q + q("select 3"))
    first = desc("a") + row("1") + done("SELECT 1") + ready()
    third = desc("a") + row("3") + done("SELECT 1") + ready()
    # The denial is the answer to the second query: after the first one's, before the third.
    assert p.to_client(first + SYNTAX + ready() + third) == first + DENIED + ready() + third
    # A denial is recorded when it is decided; the other statements when they end.
    assert sorted(e[1:3] for e in log_of(hooks, "finish")) == [(1, "ok"), (2, "denied"), (3, "ok")]


def test_deny_in_extended_protocol_fails_the_batch_and_discards_until_sync(
    split: Callable[[bytes], list[bytes]],
) -> None:
    hooks = Hooks({"delete from t": Verdict("deny", error=DENIED)})
    p = Player(hooks, split)
    one, two, three = (
        parse("insert into t values (1)") + bind() + execute(),
        parse("delete from t") + bind() + execute(),
        parse("select 3") + bind() + execute(),
    )
    to_server = p.to_server(one + two + three + SYNC)
    # The denied Execute and everything after it up to Sync never reach the server; the
    # stand-in makes the server fail the batch, so the insert before it is rolled back
    # with the implicit transaction, as if the server itself had refused the delete.
    assert to_server == one + parse("delete from t") + bind() + STAND_IN_P + SYNC
    answer = PARSE_OK + BIND_OK + done("INSERT 0 1") + PARSE_OK + BIND_OK + SYNTAX + ready()
    expected = PARSE_OK + BIND_OK + done("INSERT 0 1") + PARSE_OK + BIND_OK + DENIED + ready()
    assert p.to_client(answer) == expected
    assert sorted(e[1:3] for e in log_of(hooks, "finish")) == [(1, "ok"), (2, "denied")]
    assert [e[3] for e in log_of(hooks, "start")] == ["insert into t values (1)", "delete from t"]
    # After Sync, the next batch runs.
    assert p.to_server(three + SYNC) == three + SYNC
    p.to_client(PARSE_OK + BIND_OK + desc("a") + row("3") + done("SELECT 1") + ready())
    assert log_of(hooks, "finish")[-1][1:3] == (3, "ok")


def test_deny_after_a_server_error_in_the_same_batch_sends_one_error(
    split: Callable[[bytes], list[bytes]],
) -> None:
    hooks = Hooks({"delete from t": Verdict("deny", error=DENIED)})
    p = Player(hooks, split)
    to_server = p.to_server(
        extended("select 1/0") + parse("delete from t") + bind() + execute() + SYNC
    )
    assert to_server == extended("select 1/0") + parse("delete from t") + bind() + STAND_IN_P + SYNC
    answer = PARSE_OK + BIND_OK + desc("a") + error() + ready("I")
    # The server skipped to Sync, the stand-in too: the job expects that one error only.
    assert p.to_client(answer) == answer
    assert sorted(e[1:3] for e in log_of(hooks, "finish")) == [(1, "error"), (2, "denied")]
    assert p.relay.idle


def test_observe_mode_lets_a_denied_statement_run(split: Callable[[bytes], list[bytes]]) -> None:
    hooks = Hooks({"drop table t": Verdict("deny", enforced=False, error=DENIED)})
    p = Player(hooks, split)
    assert p.to_server(q("drop table t")) == q("drop table t")
    assert p.to_client(done("DROP TABLE") + ready()) == done("DROP TABLE") + ready()
    assert log_of(hooks, "finish") == [("finish", 1, "ok", ("DROP TABLE",), 0, None)]


# -- approval holds ----------------------------------------------------------------------------


def test_review_holds_the_statement_and_what_follows_until_approved(
    split: Callable[[bytes], list[bytes]],
) -> None:
    hooks = Hooks({"delete from t": Verdict("review")})
    p = Player(hooks, split)
    assert p.to_server(q("select 1") + q("delete from t") + q("select 2")) == q("select 1")
    assert p.relay.held and hooks.log[-1] == ("approval", 2)
    assert p.to_server(q("select 3")) == b""  # queued behind the hold
    assert p.to_client(done("SELECT 0") + ready()) == done("SELECT 0") + ready()
    assert p.approve(True) == (b"", q("delete from t") + q("select 2") + q("select 3"))
    assert not p.relay.held
    answer = (done("DELETE 5") + ready()) + (done("SELECT 0") + ready()) * 2
    assert p.to_client(answer) == answer
    assert [e[1:4] for e in log_of(hooks, "finish")] == [
        (1, "ok", ("SELECT 0",)),
        (2, "ok", ("DELETE 5",)),
        (3, "ok", ("SELECT 0",)),
        (4, "ok", ("SELECT 0",)),
    ]


def test_review_refused_answers_with_the_error_and_goes_on(
    split: Callable[[bytes], list[bytes]],
) -> None:
    hooks = Hooks({"delete from t": Verdict("review")})
    p = Player(hooks, split)
    assert p.to_server(q("delete from t") + q("select 2")) == b""
    assert p.approve(False) == (b"", STAND_IN_Q + q("select 2"))
    second = done("SELECT 0") + ready()
    assert p.to_client(SYNTAX + ready() + second) == REFUSED + ready() + second
    assert log_of(hooks, "finish")[0] == ("finish", 1, "denied", (), 0, None)


def test_review_in_extended_protocol_refused_discards_until_sync(
    split: Callable[[bytes], list[bytes]],
) -> None:
    hooks = Hooks({"delete from t": Verdict("review")})
    p = Player(hooks, split)
    head = parse("delete from t") + bind()
    assert p.to_server(head + execute() + extended("select 2") + SYNC) == head
    assert p.approve(False) == (b"", STAND_IN_P + SYNC)
    answer = PARSE_OK + BIND_OK + SYNTAX + ready()
    assert p.to_client(answer) == PARSE_OK + BIND_OK + REFUSED + ready()
    assert [e[1:3] for e in log_of(hooks, "finish")] == [(1, "denied")]


# -- COPY ---------------------------------------------------------------------------------------


def test_copy_out_and_in_are_recorded(split: Callable[[bytes], list[bytes]]) -> None:
    hooks = Hooks()
    p = Player(hooks, split)
    p.to_server(q("copy t to stdout"))
    data = CopyData(b"1\talice\n").encode() + CopyData(b"2\tbob\n").encode()
    answer = CopyOutResponse(0, (0, 0)).encode() + data + CopyDone().encode()
    assert p.to_client(answer + done("COPY 2") + ready()) == answer + done("COPY 2") + ready()
    p.to_server(q("copy t from stdin"))
    assert p.to_client(CopyInResponse(0, (0, 0)).encode()) == CopyInResponse(0, (0, 0)).encode()
    sent = CopyData(b"3\tcarol\n").encode() + CopyData(b"4\tdave\n").encode() + CopyDone().encode()
    assert p.to_server(sent) == sent
    p.to_client(done("COPY 2") + ready())
    assert [(n, w, s.data) for n, w, s in hooks.sinks] == [
        (1, "copy out", data),
        (2, "copy in", sent[: -len(CopyDone().encode())]),
    ]
    assert log_of(hooks, "finish") == [
        ("finish", 1, "ok", ("COPY 2",), 2, None),
        ("finish", 2, "ok", ("COPY 2",), 2, None),
    ]


def test_copy_data_sent_before_the_copy_in_response_is_recorded(
    split: Callable[[bytes], list[bytes]],
) -> None:
    # asyncpg sends its COPY data without waiting for CopyInResponse.
    hooks = Hooks()
    p = Player(hooks, split)
    data = CopyData(b"1\tx\n").encode()
    assert p.to_server(q("copy t from stdin") + data + CopyDone().encode()) == (
        q("copy t from stdin") + data + CopyDone().encode()
    )
    p.to_client(CopyInResponse(0, (0, 0)).encode() + done("COPY 1") + ready())
    assert [(w, s.data, s.closes) for _, w, s in hooks.sinks] == [("copy in", data, 1)]


def test_datarows_are_copied_to_the_sink_once_per_run(
    split: Callable[[bytes], list[bytes]],
) -> None:
    hooks = Hooks()
    p = Player(hooks, split)
    p.to_server(q("select g from generate_series(1, 500) g"))
    rows = b"".join(row(str(i)) for i in range(500))
    answer = desc("g") + rows + done("SELECT 500") + ready()
    assert p.to_client(answer) == answer
    ((_, _, sink),) = hooks.sinks
    assert sink.data == rows
    if split is whole:
        assert len(sink.adds) == 1  # one copy for the whole run, no object per row
    assert log_of(hooks, "finish") == [("finish", 1, "ok", ("SELECT 500",), 500, None)]


def test_rows_of_portals_described_in_the_same_pipeline_get_their_columns(
    split: Callable[[bytes], list[bytes]],
) -> None:
    # libpq and psycopg send Bind, Describe(portal), Execute, Sync at once, and reuse the
    # unnamed portal: each result must get the columns of its own Describe.
    hooks = Hooks()
    p = Player(hooks, split)
    batch = extended("select 1 as a") + extended("select 2 as b, 3 as c") + SYNC
    p.to_server(batch)
    p.to_client(
        PARSE_OK + BIND_OK + desc("a") + row("1") + done("SELECT 1")
        + PARSE_OK + BIND_OK + desc("b", "c") + row("2", "3") + done("SELECT 1") + ready()
    )  # fmt: skip
    assert [w for _, w, _ in hooks.sinks] == ["rows ('a',) (0,)", "rows ('b', 'c') (0, 0)"]


def test_rows_of_a_portal_never_described_keep_the_bind_formats(
    split: Callable[[bytes], list[bytes]],
) -> None:
    hooks = Hooks()
    p = Player(hooks, split)
    p.to_server(parse("select 1, 2") + bind(fmt=1) + execute() + SYNC)
    p.to_client(PARSE_OK + BIND_OK + row("\0\0\0\1", "\0\0\0\2") + done("SELECT 1") + ready())
    assert [w for _, w, _ in hooks.sinks] == ["rows None (1,)"]


# -- response masking --------------------------------------------------------------------------

CARD = "4111111111111111"


def masker(*rules: ColumnRule) -> ResponseMasker:
    config = MaskingConfig(columns=rules)
    return ResponseMasker(Masker(config, hmac_key=b"k" * 32).for_target("db"))


def test_response_masking_rewrites_rows_for_the_job(split: Callable[[bytes], list[bytes]]) -> None:
    hooks = Hooks(masker=masker())
    p = Player(hooks, split)
    p.to_server(q("select id, card from customers"))
    raw = desc("id", "card") + row("1", CARD) + row("2", "none") + done("SELECT 2") + ready()
    got = p.to_client(raw)
    assert CARD.encode() not in got
    frames = Framer(LIMITS.caps(BACKEND_TYPES, frontend=False), side="server").feed(got)
    chunk, parts = frames
    values = [datarow_values(chunk, s + 5, e) for t, s, e in parts if t == ord("D")]
    assert values[0][0] == b"1" and b"REDACTED" in (values[0][1] or b"")
    assert values[1] == [b"2", b"none"]
    assert got.endswith(done("SELECT 2") + ready())
    # The ledger's copy is the server's (it is masked in the writer thread).
    assert hooks.sinks[0][2].data == row("1", CARD) + row("2", "none")


def test_response_masking_of_copy_out(split: Callable[[bytes], list[bytes]]) -> None:
    hooks = Hooks(masker=masker())
    p = Player(hooks, split)
    p.to_server(q("copy customers to stdout"))
    head = CopyOutResponse(0, (0, 0)).encode()
    got = p.to_client(
        head + CopyData(f"1\t{CARD}\n".encode()).encode() + CopyDone().encode()
        + done("COPY 1") + ready()
    )  # fmt: skip
    assert CARD.encode() not in got and b"REDACTED" in got
    assert got.startswith(head) and got.endswith(CopyDone().encode() + done("COPY 1") + ready())


def test_response_masking_of_many_copy_rows_in_one_read(
    split: Callable[[bytes], list[bytes]],
) -> None:
    """CopyData frames of one read are masked together: each comes out as masking it alone
    gives it, every other byte as the server sent it, in order."""
    rows = [f"{i}\t{CARD if i % 3 == 0 else 'none'}\tx{i}@example.com\n" for i in range(12)]
    rows[5] = "5\tplain\tnothing\n"
    frames = [CopyData(r.encode()).encode() for r in rows]
    alone = masker()
    plan = alone.copy_plan("copy customers to stdout", binary=False)
    expected = [alone.mask_copy(plan, f) or f for f in frames]
    hooks = Hooks(masker=masker())
    p = Player(hooks, split)
    p.to_server(q("copy customers to stdout"))
    head = CopyOutResponse(0, (0, 0)).encode()
    tail = CopyDone().encode() + done("COPY 12") + ready()
    got = p.to_client(head + b"".join(frames) + tail)
    assert got == head + b"".join(expected) + tail
    assert CARD.encode() not in got and expected[5] == frames[5]


def test_response_masking_rewrites_a_binary_text_column(
    split: Callable[[bytes], list[bytes]],
) -> None:
    """A text column in binary format is its text: the mask is written back in binary."""
    hooks = Hooks(masker=masker(ColumnRule("card", Style.REDACT)))
    p = Player(hooks, split)
    p.to_server(
        parse("select id, card from customers") + bind(fmt=1) + Describe("P", "").encode()
        + execute() + extended("select 2") + SYNC
    )  # fmt: skip
    head = PARSE_OK + BIND_OK + desc("id", "card", fmt=1)
    rest = PARSE_OK + BIND_OK + desc("a") + row("2") + done("SELECT 1") + ready()
    got = p.to_client(head + row("\0\0\0\1", CARD) + done("SELECT 1") + rest)
    assert got == head + row("\0\0\0\1", "[REDACTED:CARD]") + done("SELECT 1") + rest
    assert [e[1:3] for e in log_of(hooks, "finish")] == [(1, "ok"), (2, "ok")]


def test_response_masking_nulls_binary_values_of_unknown_columns(
    split: Callable[[bytes], list[bytes]],
) -> None:
    # Never described: the card column may be any of them, and their types are unknown, so
    # a masked value cannot be written back in binary: it becomes NULL.
    hooks = Hooks(masker=masker(ColumnRule("card", Style.REDACT)))
    p = Player(hooks, split)
    p.to_server(parse("select id, card from customers") + bind(fmt=1) + execute() + SYNC)
    got = p.to_client(PARSE_OK + BIND_OK + row("\0\0\0\1", CARD) + done("SELECT 1") + ready())
    assert got == PARSE_OK + BIND_OK + row(None, None) + done("SELECT 1") + ready()


def test_binary_copy_out_is_refused_when_responses_are_masked(
    split: Callable[[bytes], list[bytes]],
) -> None:
    hooks = Hooks(masker=masker())
    p = Player(hooks, split)
    p.to_server(q("copy t to stdout (format binary)"))
    head = CopyOutResponse(1, (1,)).encode()
    got = p.to_client(
        head + CopyData(b"PGCOPY\n\xff\r\n\0" + CARD.encode()).encode() + CopyDone().encode()
        + done("COPY 1") + ready()
    )  # fmt: skip
    assert got.startswith(head + b"E") and got.endswith(ready())
    assert b"binary format cannot be masked" in got and CARD.encode() not in got


def _split_messages(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        out.append(data[pos : pos + 1 + length])
        pos += 1 + length
    return out


# -- real conversations ------------------------------------------------------------------------

REAL = ["psql_trust", "psycopg_trust", "asyncpg_trust"]


def after_startup(name: str) -> list[tuple[str, bytes]]:
    """The recorded chunks of a conversation from the first ReadyForQuery on."""
    t = load(name)
    client, server = t.stream("c"), t.stream("s")
    c_cut = 0
    while True:  # untyped startup packets: SSLRequest, then the StartupMessage
        length = int.from_bytes(client[c_cut : c_cut + 4], "big")
        code = int.from_bytes(client[c_cut + 4 : c_cut + 8], "big")
        c_cut += length
        if code >> 16 == 3:
            break
    s_cut = 1 if server[:1] == b"N" else 0
    while server[s_cut] != ord("Z"):
        s_cut += 1 + int.from_bytes(server[s_cut + 1 : s_cut + 5], "big")
    s_cut += 6
    out, seen = [], {"c": 0, "s": 0}
    for direction, data in t.chunks:
        cut = c_cut if direction == "c" else s_cut
        start = max(0, cut - seen[direction])
        seen[direction] += len(data)
        if start < len(data):
            out.append((direction, data[start:]))
    return out


def replay(
    chunks: list[tuple[str, bytes]], hooks: Hooks, split: Callable[[bytes], list[bytes]]
) -> tuple[bytes, bytes]:
    p = Player(hooks, split)
    to_client, to_server = bytearray(), bytearray()
    for direction, data in chunks:
        c, s = p.client_sends(data) if direction == "c" else p.server_sends(data)
        to_client += c
        to_server += s
    return bytes(to_client), bytes(to_server)


@pytest.mark.parametrize("name", REAL)
def test_real_conversations_pass_through_unchanged(
    name: str, split: Callable[[bytes], list[bytes]]
) -> None:
    chunks = after_startup(name)
    hooks = Hooks()
    to_client, to_server = replay(chunks, hooks, split)
    assert to_server == b"".join(d for w, d in chunks if w == "c")
    assert to_client == b"".join(d for w, d in chunks if w == "s")
    frames = _split_messages(b"".join(d for w, d in chunks if w == "c"))
    ran = sum(1 for m in frames if m[:1] in (b"Q", b"E", b"F"))
    assert len(log_of(hooks, "start")) == ran
    finished = log_of(hooks, "finish")
    assert len(finished) == ran
    assert [e[1] for e in finished] == list(range(1, ran + 1))
    assert {e[2] for e in finished} <= {"ok", "error", "suspended"}


def test_real_conversations_are_recorded_alike_whole_and_bytewise() -> None:
    for name in REAL:
        chunks = after_startup(name)
        a, b = Hooks(), Hooks()
        assert replay(chunks, a, whole) == replay(chunks, b, bytewise)
        assert a.log == b.log
        assert [(n, w, s.data) for n, w, s in a.sinks] == [(n, w, s.data) for n, w, s in b.sinks]


def test_psql_transcript_statements(split: Callable[[bytes], list[bytes]]) -> None:
    hooks = Hooks()
    replay(after_startup("psql_trust"), hooks, split)
    finished = {e[1]: e for e in log_of(hooks, "finish")}
    started = {e[1]: e[3] for e in log_of(hooks, "start")}
    by_text = {text: finished[n] for n, text in started.items()}
    assert by_text["select 1/0;"][2:] == ("error", (), 0, "22012")
    three = by_text[
        "select 1 as one ; select 'two' as two, null::text as three ; select * from t order by id;"
    ]
    assert three[3] == ("SELECT 1", "SELECT 1", "SELECT 2")
    assert by_text["copy t to stdout;"][2:5] == ("ok", ("COPY 2",), 2)
    assert ("notification", "chan", "payload") in hooks.log


# -- fuzzing -----------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=250,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CONVERSATIONS = {name: after_startup(name) for name in REAL}


@st.composite
def mutated(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    chunks = list(CONVERSATIONS[draw(st.sampled_from(REAL))])
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(chunks) - 1))
        direction, data = chunks[i]
        buf = bytearray(data)
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        op = draw(
            st.sampled_from(["flip", "delete", "insert", "length", "truncate", "drop", "dup"])
        )
        if op == "flip" and buf:
            buf[pos] = draw(st.integers(0, 255))
        elif op == "delete":
            del buf[pos : pos + draw(st.integers(1, 8))]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "length":
            buf[pos : pos + 4] = draw(
                st.sampled_from([b"\xff\xff\xff\xff", b"\0\0\0\0", b"\0\0\0\x05", b"\0\0\0\x03"])
            )
        elif op == "truncate":
            del buf[pos:]
        elif op == "drop":
            del chunks[i]
            continue
        else:
            chunks.insert(i, (direction, data))
        chunks[i] = (direction, bytes(buf))
    return chunks


class FuzzHooks(Hooks):
    """Denies every third statement, holds every fifth for review."""

    def decide(self, stmt: Statement) -> Verdict:
        if stmt.n % 3 == 0:
            return Verdict("deny", error=DENIED)
        if stmt.n % 5 == 0:
            return Verdict("review")
        return ALLOW


def play_fuzzed(chunks: list[tuple[str, bytes]], hooks: Hooks, size: int) -> None:
    relay = Relay(hooks, now=lambda: 0.0)
    framers = {
        "c": Framer(LIMITS.caps(FRONTEND_TYPES, frontend=True), side="client"),
        "s": Framer(LIMITS.caps(BACKEND_TYPES, frontend=False), side="server"),
    }
    taken_in = {"c": 0, "s": 0}
    out = {"c": 0, "s": 0}
    approve = True
    try:
        for direction, data in chunks:
            for i in range(0, len(data), size):
                piece = data[i : i + size]
                taken_in[direction] += len(piece)
                chunk, frames = framers[direction].feed(piece)
                if frames:
                    msgs = Messages(chunk, frames)
                    relay.from_client(msgs) if direction == "c" else relay.from_server(msgs)
                while relay.held:
                    relay.approval_result(approve, error=REFUSED, record={})
                    approve = not approve
                to_client, to_server = relay.take_output()
                out["s"] += len(to_server)
                out["c"] += len(to_client)
                # Nothing is amplified: the job's bytes at most are forwarded, and a stand-in
                # per denial; the job gets the server's bytes plus the appliance's errors.
                denials = sum(1 for e in hooks.log if e[0] == "finish" and e[2] == "denied")
                assert out["s"] <= taken_in["c"] + denials * len(STAND_IN_P)
                if hooks.masker is None:
                    assert out["c"] <= taken_in["s"] + denials * len(DENIED)
                assert framers[direction].buffered <= LIMITS.largest + 5
    except PeerProtocolError:
        pass  # the session ends; that is the only way out allowed
    relay.abort()


@FUZZ
@given(mutated(), st.sampled_from([1, 7, 4096, 1 << 20]))
def test_fuzzed_real_conversations_raise_only_peer_errors(
    chunks: list[tuple[str, bytes]], size: int
) -> None:
    play_fuzzed(chunks, Hooks(), size)


@FUZZ
@given(mutated(), st.sampled_from([3, 1 << 20]))
def test_fuzzed_conversations_with_denials_holds_and_masking(
    chunks: list[tuple[str, bytes]], size: int
) -> None:
    play_fuzzed(chunks, FuzzHooks(masker=masker(ColumnRule("card", Style.REDACT))), size)
    play_fuzzed(chunks, FuzzHooks(), size)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from("cs"), st.binary(max_size=64)), max_size=20))
def test_random_bytes_raise_only_peer_errors(chunks: list[tuple[str, bytes]]) -> None:
    play_fuzzed(chunks, FuzzHooks(masker=masker()), 1 << 20)


# -- write-ahead ----------------------------------------------------------------------------------

WRITE = Verdict("allow", record={"decision": "allow"}, durable=True)


class SyncHooks(Hooks):
    def __init__(self, verdicts: dict[str, Verdict]) -> None:
        super().__init__(verdicts)
        self.syncs = 0

    def request_durable(self) -> None:
        self.syncs += 1


def test_a_write_waits_for_its_entry_to_be_durable(split: Callable[[bytes], list[bytes]]) -> None:
    hooks = SyncHooks({"insert into t values (1)": WRITE})
    p = Player(hooks, split)
    assert p.to_server(q("select 1")) == q("select 1")  # a read goes at once
    p.to_client(desc("a") + row("1") + done("SELECT 1") + ready())
    to_client, to_server = p.client_sends(q("insert into t values (1)"))
    assert (to_client, to_server) == (b"", b"")  # recorded, not sent
    assert hooks.syncs == 1 and p.relay.held
    assert ("start", 2, "simple", "insert into t values (1)", (), "allow") in hooks.log
    # What the job sends meanwhile waits behind it, in order.
    assert p.client_sends(q("select 2")) == (b"", b"")
    p.relay.durable_result(True)
    assert p.relay.take_output() == (b"", q("insert into t values (1)") + q("select 2"))
    assert not p.relay.held


def test_a_pipeline_of_writes_waits_once() -> None:
    hooks = SyncHooks({"insert into t values (1)": WRITE})
    p = Player(hooks, whole)
    batch = (
        parse("insert into t values (1)") + bind() + execute()
        + bind() + execute() + bind() + execute() + SYNC
    )  # fmt: skip
    assert p.to_server(batch) == b""
    assert hooks.syncs == 1
    p.relay.durable_result(True)
    assert p.relay.take_output() == (b"", batch)


def test_what_could_not_be_made_durable_is_never_sent() -> None:
    hooks = SyncHooks({"insert into t values (1)": WRITE})
    p = Player(hooks, whole)
    p.to_server(q("insert into t values (1)"))
    p.relay.durable_result(False)
    assert p.relay.take_output() == (b"", b"")
    assert [s.outcome for s in p.relay.abort()] == ["cancelled"]
    assert p.relay.take_output() == (b"", b"")


# -- write-ahead inside a transaction block ---------------------------------------------------------

WRITE_IN_BLOCK = Verdict("allow", record={"decision": "allow"}, durable=True, in_block=True)
READ_IN_BLOCK = Verdict("allow", record={"decision": "allow"}, in_block=True)
TPCB = {
    "update t set n = n + 1": WRITE_IN_BLOCK,
    "insert into h values (1)": WRITE_IN_BLOCK,
    "select n from t": READ_IN_BLOCK,
}  # BEGIN and COMMIT: the default verdict (allow; may end a block)


def in_block(hooks: SyncHooks) -> Player:
    p = Player(hooks, whole)
    assert p.to_server(q("begin")) == q("begin")
    p.to_client(done("BEGIN") + ready("T"))
    return p


def test_inside_a_block_writes_go_at_once_and_commit_waits_for_them() -> None:
    hooks = SyncHooks(TPCB)
    p = in_block(hooks)
    for text, tag in (
        ("update t set n = n + 1", "UPDATE 1"),
        ("select n from t", "SELECT 0"),
        ("insert into h values (1)", "INSERT 0 1"),
    ):
        assert p.to_server(q(text)) == q(text)
        p.to_client(done(tag) + ready("T"))
    assert hooks.syncs == 0
    # The statement that ends the block is sent once every entry before it is durable.
    assert p.client_sends(q("commit")) == (b"", b"")
    assert hooks.syncs == 1 and p.relay.held
    p.relay.durable_result(True)
    assert p.relay.take_output() == (b"", q("commit"))
    p.to_client(done("COMMIT") + ready("I"))
    # Outside a block, a write waits for its own entry again.
    assert p.client_sends(q("update t set n = n + 1")) == (b"", b"")
    assert hooks.syncs == 2


def test_a_block_of_reads_commits_without_a_sync() -> None:
    hooks = SyncHooks(TPCB)
    p = in_block(hooks)
    assert p.to_server(q("select n from t")) == q("select n from t")
    p.to_client(done("SELECT 0") + ready("T"))
    assert p.to_server(q("commit")) == q("commit")
    assert hooks.syncs == 0


def test_a_write_sent_behind_a_commit_in_flight_is_written_ahead() -> None:
    """The COMMIT's ReadyForQuery has not come back: the block may have ended, and the
    write would then commit by itself."""
    hooks = SyncHooks(TPCB)
    p = in_block(hooks)
    assert p.to_server(q("commit")) == q("commit")
    assert p.client_sends(q("update t set n = n + 1")) == (b"", b"")
    assert hooks.syncs == 1


def test_an_earlier_ready_in_a_block_does_not_reopen_it_behind_a_commit() -> None:
    hooks = SyncHooks(TPCB)
    p = in_block(hooks)
    assert p.to_server(q("select n from t") + q("commit")) == q("select n from t") + q("commit")
    p.to_client(done("SELECT 0") + ready("T"))  # the select's; the commit's is still to come
    assert p.client_sends(q("update t set n = n + 1")) == (b"", b"")
    assert hooks.syncs == 1


def test_a_statement_that_may_reach_outside_the_block_is_written_ahead_inside_it() -> None:
    hooks = SyncHooks({**TPCB, "select dblink_exec('x')": WRITE})
    p = in_block(hooks)
    assert p.to_server(q("update t set n = n + 1")) == q("update t set n = n + 1")
    p.to_client(done("UPDATE 1") + ready("T"))
    assert p.client_sends(q("select dblink_exec('x')")) == (b"", b"")
    assert hooks.syncs == 1  # and it covers the update before it
    p.relay.durable_result(True)
    assert p.relay.take_output() == (b"", q("select dblink_exec('x')"))
    p.to_client(done("SELECT 1") + ready("T"))
    assert p.to_server(q("commit")) == q("commit")  # nothing owed any more
    assert hooks.syncs == 1


def test_a_pipelined_block_in_the_extended_protocol_waits_once_at_its_commit() -> None:
    hooks = SyncHooks(TPCB)
    p = in_block(hooks)
    writes = parse("update t set n = n + 1") + bind() + execute() + SYNC
    assert p.to_server(writes) == writes
    p.to_client(PARSE_OK + BIND_OK + done("UPDATE 1") + ready("T"))
    batch = parse("insert into h values (1)") + bind() + execute() + parse("commit") + bind()
    batch += execute() + SYNC
    assert p.to_server(batch) == b""
    assert hooks.syncs == 1
    p.relay.durable_result(True)
    assert p.relay.take_output() == (b"", batch)
