"""The sans-IO heart of a PostgreSQL session after startup: relay, track, decide, record.

Where this sits: the asyncio shell (:mod:`appliance.proxy.pg.session`) feeds the job's and
the server's :class:`~appliance.protocols.postgres.Messages` to :meth:`Relay.from_client`
and :meth:`Relay.from_server`, writes :meth:`Relay.take_output` to the two sockets, and
carries out what the relay asks of its :class:`RelayHooks` (decide a statement, record it,
ask for an approval). No sockets, no clock (``now`` is passed in), no asyncio.

What it does, per message:

- **Relays in runs.** Consecutive messages that need nothing are forwarded as one slice of
  the chunk they arrived in; DataRows are counted, and copied once per run into the
  statement's result sink when rows are recorded. No object is built per row.
- **Tracks what each response answers.** Every forwarded frontend message that the server
  answers (Query, Parse, Bind, Describe, Execute, Close, Sync, FunctionCall) pushes an
  expectation on a FIFO; server messages complete them in order (protocol-flow.html:
  "the backend ... processes messages in order"; after an error in the extended protocol
  it skips to the next Sync). That is how a response, its rows, its duration and its error
  are attributed to the right statement, also with pipelining. An error answering Parse,
  Bind or Describe is the error of the Execute that follows in its batch (else it is
  recorded on its own); a Describe's columns are read when the rows of the portal arrive
  (in a pipeline the answer comes after the Execute was sent).
- **Enforces verdicts.** A simple Query, an Execute or a FunctionCall is decided by the
  hooks (policy). ``deny``: the message is not forwarded. In its place the server gets a
  stand-in that cannot run anything and that it must refuse (a Query, or in the extended
  protocol a Parse, of text that does not parse), so the denial has exactly the effect a
  server-side error would have: the transaction block is aborted, an implicit transaction
  (a pipeline up to Sync, a multi-statement Query) is rolled back, and in the extended
  protocol the server skips to Sync. The server's error for the stand-in is swapped for
  the appliance's denial at that very place in the response stream; in the extended
  protocol the job's messages are discarded until Sync, which is forwarded so that
  ReadyForQuery carries the server's real transaction status. ``review``: the message and
  everything after it are held (the shell stops reading the job) until
  :meth:`Relay.approval_result`.
- **Response masking**, when the hooks give a row masker: DataRow values and COPY OUT rows
  are rewritten (lengths recomputed; the CopyData frames of one read are masked together,
  one pre-filter pass over their rows); a column that must be masked but arrives in binary
  format (or a binary COPY OUT) fails closed: the job gets an ErrorResponse naming the
  column, the rest of that result is suppressed up to ReadyForQuery.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from appliance.masking.postgres import MaskingRefused
from appliance.policy import Decision
from appliance.protocols.postgres import Messages, PeerProtocolError, fastpath
from appliance.protocols.postgres.codes import (
    B_BIND_OK,
    B_CLOSE_OK,
    B_COMPLETE,
    B_COPY_BOTH,
    B_COPY_DATA,
    B_COPY_IN,
    B_COPY_OUT,
    B_DATAROW,
    B_EMPTY,
    B_ERROR,
    B_NODATA,
    B_NOTICE,
    B_NOTIFY,
    B_PARAMDESC,
    B_PARAMETER,
    B_PARSE_OK,
    B_READY,
    B_ROWDESC,
    B_SUSPENDED,
    F_BIND,
    F_CLOSE,
    F_COPY_DATA,
    F_COPY_DONE,
    F_COPY_FAIL,
    F_DESCRIBE,
    F_EXECUTE,
    F_FUNCTION,
    F_PARSE,
    F_QUERY,
    F_SYNC,
    F_TERMINATE,
)
from appliance.protocols.postgres.encodings import ascii_safe
from appliance.protocols.postgres.messages import (
    Bind,
    Close,
    ErrorResponse,
    FunctionCall,
    NoticeResponse,
    NotificationResponse,
    ParameterStatus,
    Parse,
    RowDescription,
    complete_tag,
    decode_backend,
    decode_frontend,
    describe_target,
    execute_portal,
    query_sql,
    split_tag,
)
from appliance.protocols.postgres.sqlstate import INSUFFICIENT_PRIVILEGE

# Stand-ins for a denied statement: text that cannot parse, so the server refuses it before
# anything runs, whatever the session's state (a name the job already used for a prepared
# statement fails too, with 42P05). Their errors never reach the job.
_STAND_IN_SQL = b"appliance: statement denied by policy\0"
_STAND_IN_QUERY = b"Q" + (4 + len(_STAND_IN_SQL)).to_bytes(4, "big") + _STAND_IN_SQL
_STAND_IN_NAME = b"appliance.denied\0"
_STAND_IN_PARSE = (
    b"P"
    + (4 + len(_STAND_IN_NAME) + len(_STAND_IN_SQL) + 2).to_bytes(4, "big")
    + _STAND_IN_NAME
    + _STAND_IN_SQL
    + b"\0\0"
)

_TX_STATUS = frozenset(b"ITE")  # ReadyForQuery: idle, in a transaction, in a failed one
_IDLE = ord("I")


# -- what the relay asks of the shell -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """A policy decision for one statement, as the relay needs it.

    ``action``: allow, deny, review, or reject (the statement is an error of its own, such
    as text PostgreSQL's grammar rejects: it is answered like a denial, with ``error``, and
    recorded as that error). ``enforced``: False in observe mode (the statement runs
    whatever the action). ``error``: for deny and reject, the encoded ErrorResponse for the job.
    ``record``: what the ledger keeps about the decision (JSON-safe). ``decision``: for
    review, the policy's decision the approval request is made from.
    """

    action: str
    enforced: bool = True
    error: bytes = b""
    record: dict[str, object] = field(default_factory=dict)
    # The statement may change the target: its entry must be on disk before it is sent
    # (write-ahead; see Relay.durable_result).
    durable: bool = False
    decision: Decision | None = None
    # Whatever it does stays inside an open transaction block (rows and locks a ROLLBACK
    # undoes; it cannot end the block): sent inside one, its write-ahead may wait for the
    # statement that ends the block (Relay._write_ahead_of).
    in_block: bool = False

    @property
    def blocks(self) -> bool:
        return self.enforced and self.action != "allow"


ALLOW = Verdict("allow", record={"decision": "allow"})


class ResultSink(Protocol):
    """Where a statement's result rows go (the ledger's blob store, masked off the hot path)."""

    def add(self, frames: bytes) -> None:
        """Whole DataRow (or CopyData) frames, back to back."""

    def close(self) -> None: ...


class RowMasker(Protocol):
    """Rewrites DataRow values and COPY OUT rows for the job when policy asks for response
    masking."""

    def plan(self, row_description: RowDescription | None, formats: tuple[int, ...]) -> object: ...

    def mask_row_run(
        self, plan: object, chunk: bytes, frames: list[tuple[int, int]]
    ) -> list[bytes | None]:
        """The DataRow frames ``chunk[s:e]`` (back to back in one read), each rewritten or
        None if no value in it changed: masked together (one pre-filter pass), as each
        alone. Raises MaskingRefused (fail closed)."""
        ...

    def copy_plan(self, statement: str, binary: bool) -> object:
        """How to mask the CopyData of a COPY OUT started by ``statement``."""
        ...

    def mask_copy_run(
        self, plan: object, chunk: bytes, frames: list[tuple[int, int]]
    ) -> list[bytes | None]:
        """The CopyData frames ``chunk[s:e]`` (back to back in one read), each rewritten or
        None if no value in it changed: masked together (one pre-filter pass), as each
        alone. Raises MaskingRefused (binary COPY)."""
        ...


class RelayHooks(Protocol):
    def decide(self, stmt: Statement) -> Verdict:
        """Classify and decide ``stmt`` (text, protocol); pure and fast."""

    def statement_started(self, stmt: Statement) -> None:
        """Record a statement that will run (or was blocked: ``stmt.verdict`` says)."""

    def statement_finished(self, stmt: Statement) -> None:
        """Record the response summary of a statement (``stmt.results``, ``stmt.error``)."""

    def request_approval(self, stmt: Statement) -> None:
        """Start an approval for ``stmt``; answer later with :meth:`Relay.approval_result`."""

    def request_durable(self) -> None:
        """Make every entry recorded so far durable; answer with :meth:`Relay.durable_result`."""

    def open_result(
        self, stmt: Statement, description: RowDescription | None, formats: tuple[int, ...]
    ) -> ResultSink | None:
        """A sink for this result set's rows, or None when rows are not recorded."""

    def open_copy(self, stmt: Statement, direction: str) -> ResultSink | None:
        """A sink for COPY data (``direction`` "in" from the job, "out" to the job)."""

    def request_failed(self, request: str, text: str | None, error: ErrorResponse) -> None:
        """The server refused a request that is no statement of its own (Parse, Bind,
        Describe, Close, Sync) and no Execute follows it in its batch; ``text`` is the SQL
        of a Parse or of the statement a Bind binds."""

    def notice(self, stmt: Statement | None, notice: NoticeResponse) -> None: ...

    def notification(self, notification: NotificationResponse) -> None: ...

    def parameter(self, name: str, value: str) -> None:
        """The server reported a new value of a run-time parameter (ParameterStatus)."""

    def ready(self) -> None:
        """ReadyForQuery: the server has reported every setting changed before it."""

    def row_masker(self) -> RowMasker | None:
        """The response masker for this session, or None (no masking toward the job)."""


# -- statements and expectations ---------------------------------------------------------------


# The per-statement objects below write their __init__ (init=False): compiled, a dataclass's
# generated one runs as Python (see scripts/compile.py).


@dataclass(slots=True, init=False)
class Result:
    """One result set of a statement (a simple Query may produce several)."""

    tag: str | None
    rows: int
    columns: tuple[str, ...] | None
    sink: ResultSink | None

    def __init__(
        self,
        tag: str | None = None,
        rows: int = 0,
        columns: tuple[str, ...] | None = None,
        sink: ResultSink | None = None,
    ) -> None:
        self.tag = tag
        self.rows = rows
        self.columns = columns
        self.sink = sink


@dataclass(slots=True, init=False)
class Statement:
    """A statement the job ran (or tried to): what, how it was decided, what came back."""

    n: int
    protocol: str  # "simple" | "extended" | "function"
    text: str
    params: tuple[bytes | None, ...]
    param_formats: tuple[int, ...]
    portal: str | None
    statement_name: str | None
    verdict: Verdict
    started: float
    finished: float | None
    results: list[Result]
    error: ErrorResponse | None
    outcome: str  # pending | ok | error | denied | skipped | suspended | cancelled
    approval: dict[str, object] | None
    notices: int
    function_oid: int | None  # a fast-path FunctionCall's function

    def __init__(
        self,
        n: int,
        protocol: str,
        text: str,
        *,
        params: tuple[bytes | None, ...] = (),
        param_formats: tuple[int, ...] = (),
        portal: str | None = None,
        statement_name: str | None = None,
        verdict: Verdict = ALLOW,
        started: float = 0.0,
    ) -> None:
        self.n = n
        self.protocol = protocol
        self.text = text
        self.params = params
        self.param_formats = param_formats
        self.portal = portal
        self.statement_name = statement_name
        self.verdict = verdict
        self.started = started
        self.finished = None
        self.results = []
        self.error = None
        self.outcome = "pending"
        self.approval = None
        self.notices = 0
        self.function_oid = None

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.results)


@dataclass(slots=True, init=False)
class _Prepared:
    text: str
    description: RowDescription | None

    def __init__(self, text: str) -> None:
        self.text = text
        self.description = None


@dataclass(slots=True, init=False)
class _Portal:
    prepared: _Prepared | None
    bind: Bind
    described: RowDescription | None  # the answer to a Describe of this portal

    def __init__(self, prepared: _Prepared | None, bind: Bind) -> None:
        self.prepared = prepared
        self.bind = bind
        self.described = None

    @property
    def description(self) -> RowDescription | None:
        """The portal's columns: from a Describe of the portal, else of its statement. Read
        when its rows arrive: in a pipeline the Describe is answered after the Execute is
        sent."""
        if self.described is not None:
            return self.described
        return self.prepared.description if self.prepared is not None else None


class X(enum.Enum):
    """What an expectation waits for."""

    QUERY = "Query"
    PARSE = "Parse"
    BIND = "Bind"
    DESCRIBE = "Describe"
    EXECUTE = "Execute"
    CLOSE = "Close"
    SYNC = "Sync"
    FUNCTION = "FunctionCall"
    DENIED = "(denied)"  # the stand-in for a denied statement; its error becomes the denial


_CYCLE_ENDS = frozenset({X.QUERY, X.SYNC, X.FUNCTION})  # answered by a ReadyForQuery


@dataclass(slots=True, init=False)
class _Expect:
    kind: X
    stmt: Statement | None
    # What a Describe describes, and the portal an Execute runs: the objects as they were
    # when the job sent the message (a later Parse or Bind may reuse the name).
    target: _Prepared | _Portal | None
    portal: _Portal | None
    denial: bytes  # the ErrorResponse the job gets instead of the stand-in's
    simple: bool  # a Query stand-in (its ReadyForQuery ends the cycle)
    text: str | None  # the SQL a Parse carried (for an error with no statement)

    def __init__(
        self,
        kind: X,
        stmt: Statement | None = None,
        *,
        target: _Prepared | _Portal | None = None,
        portal: _Portal | None = None,
        denial: bytes = b"",
        simple: bool = False,
        text: str | None = None,
    ) -> None:
        self.kind = kind
        self.stmt = stmt
        self.target = target
        self.portal = portal
        self.denial = denial
        self.simple = simple
        self.text = text


class SessionRefused(Exception):
    """The session cannot go on under the appliance (e.g. the client encoding became one the
    policy cannot read); the shell ends it with ``message`` to the job."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(reason)


# How many RowDescriptions a session keeps decoded (bytes -> message).
_DESCRIPTIONS_KEPT = 32


class Relay:
    """One session's relay state machine; see the module docstring."""

    def __init__(self, hooks: RelayHooks, *, now: Callable[[], float]) -> None:
        self.hooks = hooks
        self.now = now
        self.tx_status = ord("I")  # ReadyForQuery's status: idle
        self.statements = 0
        self.bytes_from_client = 0
        self.bytes_from_server = 0
        self._to_client: list[bytes] = []
        self._to_server: list[bytes] = []
        self._expect: deque[_Expect] = deque()
        self._prepared: dict[str, _Prepared] = {}
        self._portals: dict[str, _Portal] = {}
        self._discard_until_sync = False
        self._suppress_until_ready = False
        self._held: tuple[Messages, int, Statement, _Expect] | None = None
        self._queued: deque[Messages] = deque()
        # Write-ahead: a statement that may change the target was admitted in this step
        # (_needs_sync); what this step would send waits for its entry to be durable
        # (_withheld, None when nothing waits).
        self._needs_sync = False
        self._withheld: list[bytes] | None = None
        # Inside an explicit transaction block that no statement sent since could have left
        # (_block), statements that stay in it are not synced one by one: their entries are
        # owed (_owed) and made durable before the next statement that may end the block
        # (COMMIT included) is sent. Until then nothing they did can outlive the session:
        # if the appliance or its ledger fails, the connection ends and the server rolls
        # the block back.
        self._block = False
        self._owed = False
        self._copy_in: tuple[Statement, ResultSink | None] | None = None
        self._copy_in_done: Statement | None = None
        self._copy_out: Statement | None = None
        self._result: Result | None = None
        self._result_plan: object | None = None
        # RowDescriptions decoded, by their bytes: the simple protocol gets one per statement,
        # the same for every statement of a shape (a RowDescription is immutable).
        self._descriptions: dict[bytes, RowDescription] = {}
        self._masker = hooks.row_masker()
        self.terminated = False
        self.server_fatal = False  # the server sent a FATAL error: it is ending the session

    # -- output ----------------------------------------------------------------------------

    def take_output(self) -> tuple[bytes, bytes]:
        """Bytes for the job and for the server since the last call."""
        c, s = self._to_client, self._to_server
        to_client = c[0] if len(c) == 1 else b"".join(c)
        to_server = s[0] if len(s) == 1 else b"".join(s)
        c.clear()
        s.clear()
        return to_client, to_server

    @property
    def held(self) -> bool:
        """True while a statement waits for approval or for its entry to be durable (the
        shell stops reading the job)."""
        return self._held is not None or self._withheld is not None

    @property
    def owes_sync(self) -> bool:
        """True inside a transaction block that changed something: its entries are made
        durable before the statement that may end it is sent (write-ahead)."""
        return self._owed

    @property
    def idle(self) -> bool:
        """Nothing in flight: no expectation pending, nothing held or queued."""
        return (
            not self._expect and self._held is None and not self._queued and self._withheld is None
        )

    # -- from the job ------------------------------------------------------------------------

    def from_client(self, msgs: Messages) -> None:
        """Messages from the job. Raises PeerProtocolError for malformed payloads."""
        self.bytes_from_client += len(msgs.chunk)
        if self._held is not None or self._queued or self._withheld is not None:
            self._queued.append(msgs)
            return
        self._client_messages(msgs, 0)
        self._write_ahead()

    def _write_ahead(self) -> None:
        """After a step that admitted a statement which may change the target: withhold
        everything the step would send the server until the entries are durable (one sync
        for the whole step: a pipeline waits once)."""
        if self._needs_sync:
            self._needs_sync = False
            self._withheld = self._to_server[:]
            self._to_server.clear()
            self.hooks.request_durable()

    def _write_ahead_of(self, verdict: Verdict) -> None:
        """Note what an admitted statement needs from the write-ahead: a sync in this step
        (_needs_sync), or, inside a transaction block, none until the block may end."""
        if verdict.in_block and self._block:
            self._owed = self._owed or verdict.durable
            return
        if not verdict.in_block:
            self._block = False  # the block may end here: unknown until ReadyForQuery
        if verdict.durable or self._owed:
            self._needs_sync = True
            self._owed = False

    def durable_result(self, durable: bool) -> None:
        """The entries recorded before the sync are on disk (``durable``): send what was
        withheld and go on with what the job sent meanwhile. If they could not be made
        durable nothing withheld is ever sent: the caller ends the session."""
        withheld, self._withheld = self._withheld, None
        if withheld is None or not durable:
            return
        self._to_server[:0] = withheld
        self._drain_queue()

    def _drain_queue(self) -> None:
        while self._queued and self._held is None and self._withheld is None:
            self._client_messages(self._queued.popleft(), 0)
            self._write_ahead()

    def _client_messages(self, msgs: Messages, start: int) -> None:
        chunk = msgs.chunk
        frames = msgs.frames
        run = frames[start][1] if start < len(frames) else len(chunk)
        out = self._to_server
        expect = self._expect.append
        for i in range(start, len(frames)):
            t, s, e = frames[i]
            if self._discard_until_sync and t != F_SYNC:
                # After a denial in the extended protocol: the server would skip these too.
                if run < s:
                    out.append(chunk[run:s])
                run = e
                continue
            if t == F_BIND:
                bind = decode_frontend(t, chunk[s + 5 : e])
                assert isinstance(bind, Bind)
                prepared = self._prepared.get(bind.statement)
                self._portals[bind.portal] = _Portal(prepared, bind)
                expect(_Expect(X.BIND, text=prepared.text if prepared else None))
            elif t == F_EXECUTE:
                stmt = self._execute_statement(chunk[s + 5 : e])
                exp = _Expect(X.EXECUTE, stmt, portal=self._portals.get(stmt.portal or ""))
                if not self._admit(exp, msgs, i, run, s):
                    if self._held is not None:
                        return
                    run = e
                    continue
                expect(exp)
            elif t == F_PARSE:
                parse = decode_frontend(t, chunk[s + 5 : e])
                assert isinstance(parse, Parse)
                self._prepared[parse.statement] = _Prepared(parse.sql)
                expect(_Expect(X.PARSE, text=parse.sql))
            elif t == F_SYNC:
                self._discard_until_sync = False
                expect(_Expect(X.SYNC))
            elif t == F_DESCRIBE:
                kind, name = describe_target(chunk[s + 5 : e])
                named = self._prepared if kind == "S" else self._portals
                expect(_Expect(X.DESCRIBE, target=named.get(name)))
            elif t == F_QUERY:
                sql = query_sql(chunk[s + 5 : e])
                exp = _Expect(X.QUERY, self._new_statement("simple", sql))
                if not self._admit(exp, msgs, i, run, s):
                    if self._held is not None:
                        return
                    run = e
                    continue
                expect(exp)
            elif t == F_CLOSE:
                close = decode_frontend(t, chunk[s + 5 : e])
                assert isinstance(close, Close)
                (self._prepared if close.kind == "S" else self._portals).pop(close.name, None)
                expect(_Expect(X.CLOSE))
            elif t == F_COPY_DATA:
                copy_in = self._copy_in or self._early_copy_in()
                if copy_in is not None and copy_in[1] is not None:
                    copy_in[1].add(chunk[s:e])
            elif t == F_COPY_DONE or t == F_COPY_FAIL:
                copy_in = self._copy_in or self._early_copy_in()
                if copy_in is not None:
                    if copy_in[1] is not None:
                        copy_in[1].close()
                    self._copy_in = None
                    self._copy_in_done = copy_in[0]
            elif t == F_FUNCTION:
                call = decode_frontend(t, chunk[s + 5 : e])
                assert isinstance(call, FunctionCall)
                stmt = self._new_statement("function", fastpath.statement_text(call.function_oid))
                stmt.function_oid = call.function_oid
                exp = _Expect(X.FUNCTION, stmt)
                if not self._admit(exp, msgs, i, run, s):
                    if self._held is not None:
                        return
                    run = e
                    continue
                expect(exp)
            elif t == F_TERMINATE:
                self.terminated = True
            # F_FLUSH and anything else: relayed as is, nothing expected back.
        if run < len(chunk):
            out.append(chunk[run:] if run else chunk)

    def _early_copy_in(self) -> tuple[Statement, ResultSink | None] | None:
        """COPY data from the job before the server's CopyInResponse arrived (asyncpg does
        not wait for it): it belongs to the last statement sent, still running."""
        for exp in reversed(self._expect):
            if exp.kind in (X.QUERY, X.EXECUTE) and exp.stmt is not None:
                if exp.stmt.finished is not None or exp.stmt is self._copy_in_done:
                    return None
                self._copy_in = (exp.stmt, self.hooks.open_copy(exp.stmt, "in"))
                return self._copy_in
        return None

    def _new_statement(self, protocol: str, text: str) -> Statement:
        self.statements += 1
        return Statement(self.statements, protocol, text, started=self.now())

    def _execute_statement(self, payload: bytes) -> Statement:
        name = execute_portal(payload)
        portal = self._portals.get(name)
        if portal is None:
            # A portal the job did not bind through the protocol (an SQL cursor): the
            # statement text is not known here.
            stmt = self._new_statement("extended", f"(portal {name!r})")
        else:
            text = (
                portal.prepared.text
                if portal.prepared
                else f"(unknown statement {portal.bind.statement!r})"
            )
            stmt = self._new_statement("extended", text)
            stmt.params = portal.bind.params
            stmt.param_formats = portal.bind.param_formats
            stmt.statement_name = portal.bind.statement
        stmt.portal = name
        return stmt

    def _admit(self, exp: _Expect, msgs: Messages, i: int, run: int, start: int) -> bool:
        """Decide the statement of ``exp``; return True if its message is forwarded. For a
        hold, flush what precedes it and save where to resume."""
        stmt = exp.stmt
        assert stmt is not None
        verdict = self.hooks.decide(stmt)
        stmt.verdict = verdict
        if not verdict.blocks:
            self.hooks.statement_started(stmt)
            self._write_ahead_of(verdict)
            return True
        chunk = msgs.chunk
        if run < start:
            self._to_server.append(chunk[run:start])
        if verdict.action == "review":
            self.hooks.statement_started(stmt)
            self._held = (msgs, i, stmt, exp)
            self.hooks.request_approval(stmt)
            return False
        self._deny(stmt, verdict.error, rejected=verdict.action == "reject")
        return False

    def _deny(
        self, stmt: Statement, error: bytes, *, recorded: bool = False, rejected: bool = False
    ) -> None:
        """Answer ``stmt`` with ``error`` in place of the server (see the module docstring).
        ``rejected``: the statement is an error of its own (text the grammar rejects), not a
        denial: it ends as ``error``, with that error, as the server would have ended it."""
        if rejected:
            stmt.outcome = "error"
            refusal = decode_backend(B_ERROR, error[5:])
            assert isinstance(refusal, ErrorResponse)
            stmt.error = refusal
        else:
            stmt.outcome = "denied"
        stmt.finished = self.now()
        if not recorded:
            self.hooks.statement_started(stmt)
        self.hooks.statement_finished(stmt)
        simple = stmt.protocol != "extended"
        self._expect.append(_Expect(X.DENIED, stmt, denial=error, simple=simple))
        if simple:
            self._to_server.append(_STAND_IN_QUERY)
            self._expect.append(_Expect(X.QUERY))  # the stand-in's ReadyForQuery
        else:
            self._to_server.append(_STAND_IN_PARSE)
            self._discard_until_sync = True

    def approval_result(
        self, approved: bool, *, error: bytes = b"", record: dict[str, object] | None = None
    ) -> None:
        """The outcome of the held statement's approval: run it, or deny it with ``error``."""
        if self._held is None:
            return
        msgs, i, stmt, exp = self._held
        self._held = None
        stmt.approval = record
        chunk = msgs.chunk
        _, s, e = msgs.frames[i]
        if approved:
            stmt.started = self.now()
            self._expect.append(exp)
            self._to_server.append(chunk[s:e])
            self._write_ahead_of(stmt.verdict)
        else:
            self._deny(stmt, error, recorded=True)
        if i + 1 < len(msgs.frames):
            self._client_messages(msgs, i + 1)
        self._write_ahead()
        self._drain_queue()

    # -- from the server ---------------------------------------------------------------------

    def from_server(self, msgs: Messages) -> None:
        """Messages from the server. Raises PeerProtocolError for a server that answers
        what was not asked."""
        self.bytes_from_server += len(msgs.chunk)
        chunk = msgs.chunk
        out = self._to_client
        run = 0  # start of the bytes not yet forwarded
        d_start = -1  # start of a run of rows being recorded
        # DataRow (or CopyData) frames back to back, to mask for the job together
        pending: list[tuple[int, int]] = []
        pending_kind = 0
        for t, s, e in msgs.frames:
            if pending and t != pending_kind:
                run = self._mask_run(pending_kind, chunk, pending, run)
                pending = []
            if t == B_DATAROW or t == B_COPY_DATA:
                result = self._result or self._begin_rows()
                result.rows += 1
                if result.sink is not None and d_start < 0:
                    d_start = s  # recorded (masked in the ledger) even when withheld below
                if self._suppress_until_ready:
                    if run < s:
                        out.append(chunk[run:s])
                    run = e
                    continue
                if self._masker is not None:
                    pending.append((s, e))
                    pending_kind = t
                continue
            if d_start >= 0:
                assert self._result is not None and self._result.sink is not None
                self._result.sink.add(chunk[d_start:s])
                d_start = -1
            if t == B_ERROR and self._expect and self._expect[0].kind is X.DENIED:
                if run < s:
                    out.append(chunk[run:s])
                run = e
                self._denied(self._expect.popleft())
                continue
            forward = not self._suppress_until_ready or t == B_READY
            if not forward:
                if run < s:
                    out.append(chunk[run:s])
                run = e
            if t == B_READY:
                self._suppress_until_ready = False
                self._server_ready(chunk[s + 5 : e])
            elif t in _RESPONSES:
                self._server_response(t, chunk[s + 5 : e])
            elif t == B_NOTICE:
                notice = decode_backend(t, chunk[s + 5 : e])
                assert isinstance(notice, NoticeResponse)
                head = self._expect[0].stmt if self._expect else None
                if head is not None:
                    head.notices += 1
                self.hooks.notice(head, notice)
            elif t == B_NOTIFY:
                notification = decode_backend(t, chunk[s + 5 : e])
                assert isinstance(notification, NotificationResponse)
                self.hooks.notification(notification)
            elif t == B_PARAMETER:
                status = decode_backend(t, chunk[s + 5 : e])
                assert isinstance(status, ParameterStatus)
                if status.name == "client_encoding" and not ascii_safe(status.value):
                    # SET client_encoding (or set_config): what the job sends next would
                    # be read by the server in an encoding the policy does not parse.
                    raise SessionRefused(
                        f"client_encoding changed to {status.value}",
                        f"the appliance refuses client encoding {status.value!r}: "
                        "the server would read statements otherwise than the appliance; "
                        "the session is closed",
                    )
                self.hooks.parameter(status.name, status.value)
            # CopyDone, FunctionCallResponse...: relayed as they are.
        if pending:
            run = self._mask_run(pending_kind, chunk, pending, run)
        if d_start >= 0:
            assert self._result is not None and self._result.sink is not None
            self._result.sink.add(chunk[d_start:])
        if run < len(chunk):
            out.append(chunk[run:] if run else chunk)

    def _mask_run(self, kind: int, chunk: bytes, frames: list[tuple[int, int]], run: int) -> int:
        """DataRow or CopyData (``kind``) ``frames`` of ``chunk`` (back to back) masked for
        the job: what is before each rewritten one is forwarded, then it; returns the start
        of what is not yet forwarded. A refusal (binary COPY) withholds them all, as the
        first frame's would."""
        masker = self._masker
        assert masker is not None
        out = self._to_client
        try:
            if kind == B_COPY_DATA:
                masked = masker.mask_copy_run(self._result_plan, chunk, frames)
            else:
                masked = masker.mask_row_run(self._result_plan, chunk, frames)
        except MaskingRefused as exc:
            if run < frames[0][0]:
                out.append(chunk[run : frames[0][0]])  # what came before, then the error
            self._refuse_result(str(exc))
            return frames[-1][1]
        for (s, e), frame in zip(frames, masked, strict=True):
            if frame is not None:
                if run < s:
                    out.append(chunk[run:s])
                out.append(frame)
                run = e
        return run

    def _head(self, *kinds: X) -> _Expect:
        if not self._expect or self._expect[0].kind not in kinds:
            got = self._expect[0].kind.value if self._expect else "nothing"
            raise PeerProtocolError(
                f"server response does not match the request pending ({got})", side="server"
            )
        return self._expect[0]

    def _begin_result(self, description: RowDescription | None, formats: tuple[int, ...]) -> Result:
        """A new result set for the statement at the head of the queue."""
        stmt = self._expect[0].stmt if self._expect else None
        if stmt is None:
            raise PeerProtocolError("a result arrived for no statement", side="server")
        if stmt.results and stmt.results[-1].tag is None and not stmt.results[-1].rows:
            result = stmt.results[-1]  # an unused placeholder
        else:
            result = Result()
            stmt.results.append(result)
        if description is not None:
            result.columns = tuple(f.name for f in description.fields)
        if self._copy_out is stmt:
            result.sink = self.hooks.open_copy(stmt, "out")
        else:
            result.sink = self.hooks.open_result(stmt, description, formats)
        if self._masker is not None:
            self._result_plan = self._masker.plan(description, formats)
        self._result = result
        return result

    def _begin_rows(self) -> Result:
        """Rows with no RowDescription just before: an Execute, described earlier by a
        Describe of its statement or portal, with the formats its Bind asked for."""
        head = self._expect[0] if self._expect else None
        if head is None or head.kind is not X.EXECUTE:
            raise PeerProtocolError("rows arrived for no statement", side="server")
        portal = head.portal
        if portal is None:
            return self._begin_result(None, ())
        description = portal.description
        formats = portal.bind.result_formats
        if description is None:
            # Never described: the column count is unknown; Bind's codes are passed as
            # sent (none: all text, one: all columns).
            return self._begin_result(None, formats)
        return self._begin_result(description, column_formats(formats, len(description.fields)))

    def _end_result(self) -> None:
        if self._result is not None and self._result.sink is not None:
            self._result.sink.close()
        self._result = None
        self._result_plan = None

    def _refuse_result(self, reason: str) -> None:
        """Fail closed: withhold the rest of this result from the job, with an error."""
        from appliance.protocols.postgres.messages import error_response

        self._to_client.append(
            error_response(
                "ERROR", INSUFFICIENT_PRIVILEGE, "result withheld by the appliance: " + reason
            )
        )
        head = self._expect[0].stmt if self._expect else None
        if head is not None:
            head.outcome = "withheld"
        self._suppress_until_ready = True

    def _server_response(self, t: int, payload: bytes) -> None:
        expect = self._expect
        if t == B_ROWDESC:
            desc = self._descriptions.get(payload)
            if desc is None:
                decoded = decode_backend(t, payload)
                assert isinstance(decoded, RowDescription)
                desc = decoded
                if len(self._descriptions) >= _DESCRIPTIONS_KEPT:
                    self._descriptions.clear()
                self._descriptions[payload] = desc
            head = self._head(X.QUERY, X.DESCRIBE, X.EXECUTE)
            if head.kind is X.DESCRIBE:
                target = head.target
                if isinstance(target, _Prepared):
                    target.description = desc
                elif target is not None:
                    target.described = desc
                expect.popleft()
            else:
                self._end_result()
                self._begin_result(desc, tuple(f.format for f in desc.fields))
        elif t == B_COMPLETE or t == B_EMPTY or t == B_SUSPENDED:
            head = self._head(X.QUERY, X.EXECUTE)
            stmt = head.stmt
            assert stmt is not None
            result = self._result
            if result is None:  # a command without rows: a result of its own
                result = Result()
                stmt.results.append(result)
            if t == B_COMPLETE:
                result.tag = complete_tag(payload)
                rows = split_tag(result.tag)[1]
                if rows is not None and not result.rows:
                    result.rows = rows
            elif t == B_EMPTY:
                result.tag = ""
            self._end_result()
            self._copy_out = None
            if head.kind is X.EXECUTE:
                if stmt.outcome == "pending":  # not "withheld"
                    stmt.outcome = "suspended" if t == B_SUSPENDED else "ok"
                self._finish(expect.popleft())
        elif t == B_ERROR:
            error = decode_backend(t, payload)
            assert isinstance(error, ErrorResponse)
            if error.is_fatal:
                self.server_fatal = True
            self._end_result()
            self._copy_out = None
            if self._copy_in is not None:
                if self._copy_in[1] is not None:
                    self._copy_in[1].close()
                self._copy_in = None
            if not expect:
                return  # an error outside any request (e.g. FATAL on shutdown): relayed
            head = expect[0]
            if head.kind in (X.QUERY, X.FUNCTION, X.EXECUTE):
                if head.stmt is not None:  # None: a denied statement's stand-in
                    head.stmt.error = error
                    head.stmt.outcome = "error"
                if head.kind is not X.EXECUTE:
                    return  # ReadyForQuery ends the cycle
            else:
                self._request_error(head, error)
            self._skip_to_sync()
        elif t == B_PARSE_OK:
            self._head(X.PARSE)
            expect.popleft()
        elif t == B_BIND_OK:
            self._head(X.BIND)
            expect.popleft()
        elif t == B_CLOSE_OK:
            self._head(X.CLOSE)
            expect.popleft()
        elif t == B_NODATA:
            self._head(X.DESCRIBE)
            expect.popleft()
        elif t == B_PARAMDESC:
            self._head(X.DESCRIBE)
        elif t == B_COPY_IN:
            head = self._head(X.QUERY, X.EXECUTE)
            assert head.stmt is not None
            if self._copy_in_done is head.stmt:
                self._copy_in_done = None  # the job sent all its data before this answer
            elif self._copy_in is None or self._copy_in[0] is not head.stmt:
                self._copy_in = (head.stmt, self.hooks.open_copy(head.stmt, "in"))
        elif t == B_COPY_OUT or t == B_COPY_BOTH:
            head = self._head(X.QUERY, X.EXECUTE)
            assert head.stmt is not None
            self._end_result()
            self._copy_out = head.stmt
            self._begin_result(None, ())
            if self._masker is not None:
                # Overall format: 0 text (or CSV), 1 binary.
                binary = payload[:1] != b"\x00"
                self._result_plan = self._masker.copy_plan(head.stmt.text, binary)

    def _request_error(self, head: _Expect, error: ErrorResponse) -> None:
        """An error answering Parse, Bind, Describe, Close or Sync (a statement that does not
        parse, parameters that do not convert, a plan that fails, a deferred constraint at
        the implicit commit). It is the error of the Execute that was to run next in this
        batch, if there is one; else it is recorded on its own."""
        for exp in self._expect:
            if exp.kind is X.SYNC:
                break
            if exp.kind is X.EXECUTE and exp.stmt is not None:
                exp.stmt.error = error
                exp.stmt.outcome = "error"
                return
        self.hooks.request_failed(head.kind.value, head.text, error)

    def _server_ready(self, payload: bytes) -> None:
        if len(payload) != 1 or payload[0] not in _TX_STATUS:
            raise PeerProtocolError("malformed ReadyForQuery", side="server")
        self.tx_status = payload[0]
        self._end_result()
        self._copy_out = None
        expect = self._expect
        head = self._head(X.QUERY, X.SYNC, X.FUNCTION)
        expect.popleft()
        if self.tx_status == _IDLE:
            self._block = False
        elif not self._block and not any(e.kind in _CYCLE_ENDS for e in expect):
            # Nothing else in flight: no statement sent since can have left the block.
            self._block = True
        if head.kind is not X.SYNC and head.stmt is not None:
            if head.stmt.outcome == "pending":
                head.stmt.outcome = "ok"
            self._finish(head)
        # After the statement this answers is finished: what it may have changed is settled
        # now, not at the next ReadyForQuery (issue 12: a SET refused the next statement).
        self.hooks.ready()

    def _finish(self, exp: _Expect) -> None:
        stmt = exp.stmt
        assert stmt is not None
        stmt.finished = self.now()
        self.hooks.statement_finished(stmt)

    def _denied(self, exp: _Expect) -> None:
        """The server refused a denied statement's stand-in: the job gets the denial in place
        of that error. (If an earlier error in the batch made the server skip the stand-in,
        it was dropped with the rest of the batch: the job expects that one error only.)"""
        if not self._suppress_until_ready:
            self._to_client.append(exp.denial)
        if not exp.simple:
            self._skip_to_sync()

    def _skip_to_sync(self) -> None:
        """After an error in the extended protocol the server skips to the next Sync: the
        Executes it skips end as ``skipped``."""
        expect = self._expect
        while expect and expect[0].kind is not X.SYNC:
            skipped = expect.popleft()
            if skipped.kind is X.EXECUTE and skipped.stmt is not None:
                if skipped.stmt.outcome == "pending":
                    skipped.stmt.outcome = "skipped"
                self._finish(skipped)

    # -- end -------------------------------------------------------------------------------

    def abort(self, outcome: str = "cancelled") -> list[Statement]:
        """The session is ending with work in flight: finish those statements as
        ``outcome`` and close their sinks. Returns them."""
        self._end_result()
        if self._copy_in is not None and self._copy_in[1] is not None:
            self._copy_in[1].close()
        self._copy_in = None
        self._withheld = None  # never sent: its statements end as ``outcome`` below
        done = []
        if self._held is not None:
            stmt = self._held[2]
            stmt.outcome = outcome
            stmt.finished = self.now()
            self.hooks.statement_finished(stmt)
            done.append(stmt)
            self._held = None
        for exp in self._expect:
            if exp.kind is not X.DENIED and exp.stmt is not None and exp.stmt.finished is None:
                exp.stmt.outcome = outcome
                exp.stmt.finished = self.now()
                self.hooks.statement_finished(exp.stmt)
                done.append(exp.stmt)
        self._expect.clear()
        return done


_RESPONSES = frozenset(
    (
        B_ROWDESC,
        B_COMPLETE,
        B_EMPTY,
        B_SUSPENDED,
        B_ERROR,
        B_PARSE_OK,
        B_BIND_OK,
        B_CLOSE_OK,
        B_NODATA,
        B_PARAMDESC,
        B_COPY_IN,
        B_COPY_OUT,
        B_COPY_BOTH,
    )
)


def column_formats(formats: tuple[int, ...], n: int) -> tuple[int, ...]:
    """Bind's result format codes expanded to one per column (none: all text; one: all)."""
    if not formats:
        return (0,) * n
    if len(formats) == 1:
        return formats * n
    return formats
