"""The PostgreSQL session's per-statement decisions (:class:`~appliance.proxy.pg.hooks.
SessionHooks`), driven through a real relay: what policy decides, the built-in refusals
(settings in flight, client encodings, text the grammar rejects), fast-path calls, and what
an approval request carries."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.approvals.request import UNATTRIBUTED
from appliance.protocols.postgres import Framer, Limits, Messages
from appliance.protocols.postgres._framing import BACKEND_TYPES, FRONTEND_TYPES
from appliance.protocols.postgres.messages import (
    CommandComplete,
    FunctionCall,
    FunctionCallResponse,
    Query,
    ReadyForQuery,
    decode_backend,
    error_response,
)
from appliance.proxy.pg.hooks import _NOT_SHAPED, SessionHooks, _shape
from appliance.proxy.pg.relay import Relay, Statement
from appliance.proxy.statement_policy import _INTEGER
from tests.unit.policy.helpers import rules

POLICY = """
- {name: no-drop, match: {classes: [drop]}, action: deny, message: no DROP}
- {name: lo, match: {functions: ["lo_*"]}, action: allow}
- {name: no-fn, match: {classes: [function_call]}, action: deny}
- {name: hold, match: {classes: [delete]}, action: review, approvers: [alice], timeout: 90s}
- {name: rest, action: allow}
"""


class Recorder:
    session = "s1"

    def __init__(self) -> None:
        self.statements: list[Any] = []
        self.responses: list[Any] = []

    def mask(self, text: str) -> str:
        return text.replace("4111111111111111", "[REDACTED:CARD]")

    def statement(self, stmt: Any) -> None:
        self.statements.append((stmt.n, stmt.text, dict(stmt.verdict.record)))

    def response(self, stmt: Any, *, masked_to_job: Any = None) -> None:
        self.responses.append((stmt.n, stmt.outcome, stmt.error.code if stmt.error else None))

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


class Session:
    def __init__(self) -> None:
        self.recorder = Recorder()
        ids = iter(range(100))
        self.hooks = SessionHooks(
            policy=rules(POLICY),
            recorder=self.recorder,  # type: ignore[arg-type]
            target="db",
            database="app",
            account="ci",
            identity={"source": "unattributed"},
            new_id=lambda: f"d{next(ids)}",
        )
        self.relay = Relay(self.hooks, now=lambda: 0.0)
        self.client = Framer(Limits().caps(FRONTEND_TYPES, frontend=True), side="client")
        self.server = Framer(Limits().caps(BACKEND_TYPES, frontend=False), side="server")

    def job(self, data: bytes) -> tuple[bytes, bytes]:
        chunk, frames = self.client.feed(data)
        self.relay.from_client(Messages(chunk, frames))
        return self.relay.take_output()

    def server_says(self, data: bytes) -> bytes:
        chunk, frames = self.server.feed(data)
        self.relay.from_server(Messages(chunk, frames))
        return self.relay.take_output()[0]


def answered(tag: str) -> bytes:
    return CommandComplete(tag).encode() + ReadyForQuery("I").encode()


def _error(data: bytes) -> Any:
    pos = data.index(b"E\x00\x00")
    return decode_backend(
        ord("E"), data[pos + 5 : pos + 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")]
    )


def test_a_statement_after_an_answered_set_is_decided_normally() -> None:
    s = Session()
    s.job(Query("SET search_path TO public").encode())
    s.server_says(answered("SET"))
    _, to_server = s.job(Query("select 'Müller'").encode())
    assert to_server == Query("select 'Müller'").encode()


def test_text_pipelined_behind_an_unanswered_set_is_refused() -> None:
    s = Session()
    _, to_server = s.job(
        Query("SET standard_conforming_strings = off").encode() + Query("select 'a\\'").encode()
    )
    assert Query("select 'a\\'").encode() not in to_server
    assert s.recorder.statements[-1][2]["rule"] == "(built-in) settings-in-flight"


def test_syntax_errors_are_their_own_errors_not_denials() -> None:
    s = Session()
    s.job(Query("selec 1").encode())
    to_job = s.server_says(
        error_response("ERROR", "42601", "stand-in") + ReadyForQuery("I").encode()
    )
    error = _error(to_job)
    assert (error.code, error.message, error.get("position")) == (
        "42601",
        'syntax error at or near "selec"',
        "1",
    )
    assert s.recorder.statements[-1][2] == {"decision": "syntax_error", "classes": ["unknown"]}
    assert s.recorder.responses[-1] == (1, "error", "42601")


def test_fastpath_calls_are_decided_by_function_name() -> None:
    s = Session()
    lo_open = FunctionCall(952, (), (b"1", b"2"), 0).encode()
    assert s.job(lo_open)[1] == lo_open
    assert s.recorder.statements[-1][2]["rule"] == "lo"
    s.server_says(FunctionCallResponse(b"0").encode() + ReadyForQuery("I").encode())
    s.job(FunctionCall(16390, (), (), 0).encode())
    to_job = s.server_says(
        error_response("ERROR", "42601", "stand-in") + ReadyForQuery("I").encode()
    )
    assert _error(to_job).message.startswith(
        "fast-path call of function oid:16390 denied by policy rule"
    )


def test_an_approval_request_carries_the_masked_statement_and_its_digest() -> None:
    s = Session()
    s.job(Query("delete from t where card = '4111111111111111'").encode())
    ((n, fields, stmt),) = s.hooks.approvals
    assert n == stmt.n and fields == s.hooks.approval_fields(stmt)
    assert fields["statement"] == "delete from t where card = '[REDACTED:CARD]'"
    assert fields["identity"] == UNATTRIBUTED and fields["approvers"] == ("alice",)
    assert fields["timeout"].total_seconds() == 90
    assert len(fields["statement_sha256"]) == 64


def test_texts_differing_only_in_integers_share_one_remembered_allow() -> None:
    s = Session()
    for aid in (42, 7, 123456):
        s.job(Query(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};").encode())
        s.server_says(answered("SELECT 1"))
    assert len(s.hooks.statements._allowed) == 1
    # each statement is recorded as it was sent, with the policy's decision
    texts = [text for _, text, _ in s.recorder.statements]
    assert texts == [
        f"SELECT abalance FROM pgbench_accounts WHERE aid = {a};" for a in (42, 7, 123456)
    ]
    assert {r["rule"] for _, _, r in s.recorder.statements} == {"rest"}


def test_the_shape_of_a_text_replaces_only_integer_literals() -> None:
    assert (
        _shape("SELECT a FROM t1 WHERE id = 42 LIMIT 10") == "SELECT a FROM t1 WHERE id = 0 LIMIT 0"
    )
    assert _shape("UPDATE t SET v = v + -17") == "UPDATE t SET v = v + -0"
    # beyond 9 digits a literal may be numeric to the server, not an integer: kept
    assert _shape("SELECT 1234567890, 123456789") == "SELECT 1234567890, 0"
    # decimals, exponents, identifiers with digits, underscores and hex stay as they are
    assert _shape("SELECT 1.5, 1e5, x1, é1, 1_000, 0x1F") == "SELECT 1.5, 1e5, x1, é1, 1_000, 0x1F"
    # where a digit may be something else (strings, quoted names, parameters, comments)
    for text in (
        "SELECT '12'",
        'SELECT "a1" FROM t',
        "SELECT $1",
        "SELECT 1 -- 2",
        "SELECT 1 /* 2 */",
    ):
        assert _shape(text) == text


@settings(max_examples=400)
@given(st.text(alphabet="0123456789 .,_-+/*'\"$\\xe\té٣\n", max_size=40))
def test_the_ascii_shape_scan_agrees_with_the_patterns(text: str) -> None:
    """ASCII text is reshaped by a byte scan: the same result as the two patterns (which
    non-ASCII text still goes through), and the text itself when nothing changes."""
    if _NOT_SHAPED.search(text):
        expected = text
    else:
        expected = _INTEGER.sub("0", text)
    got = _shape(text)
    assert got == expected
    if _NOT_SHAPED.search(text) or not _INTEGER.search(text):
        assert got is text  # the caller tells "no shape" by identity


def test_pgbench_row_changes_share_their_remembered_allows() -> None:
    """tpcb-like in the simple protocol: UPDATEs and INSERTs that differ only in integers are
    classified once each (their WHERE compares a column with a number), and still written
    ahead and recorded as they were sent."""
    s = Session()
    s.hooks.write_ahead = True
    texts = []
    for aid, delta in ((42, 17), (7, 4999), (123456, 0)):
        for text in (
            f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};",
            f"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
            f"VALUES (3, 1, {aid}, {delta}, CURRENT_TIMESTAMP);",
        ):
            texts.append(text)
            stmt = Statement(len(texts), "simple", text)
            verdict = s.hooks.decide(stmt)
            assert verdict.action == "allow" and verdict.durable
    assert len(s.hooks.statements._allowed) == 2


MASS_DELETE_POLICY = """
- {name: no-mass-delete, match: {classes: [delete_without_where]}, action: deny}
- {name: rest, action: allow}
"""


def test_a_row_change_whose_numbers_decide_is_remembered_by_its_text() -> None:
    s = Session()
    s.hooks.policy = rules(MASS_DELETE_POLICY)
    # a column against a number: one shape for every number
    for n in (1, 2, 3):
        assert s.job(Query(f"delete from t where id = {n}").encode())[1]
        s.server_says(answered("DELETE 1"))
    s.job(Query("delete from t where 2 > 3").encode())
    s.server_says(answered("DELETE 0"))
    _, to_server = s.job(Query("delete from t where 3 > 2").encode())  # the same shape
    assert Query("delete from t where 3 > 2").encode() not in to_server
    assert s.recorder.statements[-1][2]["rule"] == "no-mass-delete"
    assert set(s.hooks.statements._allowed) == {
        ("delete from t where 2 > 3", True, False),
        ("delete from t where id = 0", True, True),
    }


def test_a_denied_shape_is_not_remembered() -> None:
    s = Session()
    s.job(Query("DROP TABLE t1").encode())
    s.job(Query("DROP TABLE t2").encode())
    assert [r["decision"] for _, _, r in s.recorder.statements] == ["deny", "deny"]
    assert not s.hooks.statements._allowed


WHERE_POLICY = """
- {name: no-mass-delete, match: {classes: [delete_without_where]}, action: deny}
- {name: no-analyze-delete, match: {classes: [delete]}, action: deny}
- {name: rest, action: allow}
"""


def test_an_allowed_statement_does_not_vouch_for_another_with_other_integers() -> None:
    """Plain reads are remembered under their shape (integers as 0); anything else by its
    exact text, since an integer can decide what it does."""
    s = Session()
    s.hooks.policy = rules(WHERE_POLICY)
    s.job(Query("select * from t where id = 1").encode())
    s.server_says(answered("SELECT 1"))
    assert s.job(Query("select * from t where id = 2").encode())[1]  # the same shape: allowed
    s.server_says(answered("SELECT 1"))
    # EXPLAIN (ANALYZE 0) only plans its DELETE; (ANALYZE 1) runs it.
    assert s.job(Query("explain (analyze 0) delete from t").encode())[1]
    s.server_says(answered("EXPLAIN"))
    _, to_server = s.job(Query("explain (analyze 1) delete from t").encode())
    assert Query("explain (analyze 1) delete from t").encode() not in to_server
    assert s.recorder.statements[-1][2]["rule"] == "no-mass-delete"  # the first rule that matches


TPCB = [
    "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 4567;",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 4567;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
    "VALUES (1, 1, 4567, -1234, CURRENT_TIMESTAMP);",
    "delete from t where id = 1",
    "copy t from stdin",
    "truncate t",
    "lock table t",
    "set local work_mem = '8MB'",
]
MAY_END_OR_ESCAPE = [
    "COMMIT",
    "END",
    "rollback",
    "prepare transaction 'x'",
    "savepoint a",
    "call p()",
    "select dblink_exec('dbname=x', 'delete from t')",
    "copy t to '/tmp/t'",
    "copy t from program 'cat /etc/passwd'",
    "select nextval('s')",
    "do $$ begin perform pg_sleep(0); end $$",
    "create table x (a int)",
    "vacuum t",
    "execute p",
]


def test_what_stays_inside_a_transaction_block() -> None:
    """Statements whose effects a ROLLBACK undoes may have their write-ahead wait for the
    end of an open block; anything that may end it or reach outside the server may not."""
    for policy in (rules("- {name: rest, action: allow}"), None):
        hooks = SessionHooks(
            policy=policy,
            recorder=Recorder(),  # type: ignore[arg-type]
            target="db",
            database="app",
            account="ci",
            identity={"source": "unattributed"},
            new_id=lambda: "d",
            write_ahead=True,
        )
        for n, text in enumerate(TPCB):
            verdict = hooks.decide(Statement(n, "simple", text))
            assert verdict.in_block, text
        assert hooks.decide(Statement(0, "simple", TPCB[0])).durable
        for n, text in enumerate(MAY_END_OR_ESCAPE):
            assert not hooks.decide(Statement(n, "simple", text)).in_block, text
