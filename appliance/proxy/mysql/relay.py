"""The MySQL command phase: every command the job sends and every response packet the
server sends, followed by an explicit state machine per command in flight (sans-IO).

Where this sits: the session core (:mod:`.core`) hands the relay the job's and the
server's bytes once the login is done; the relay forwards, answers or holds each command
as the policy (:mod:`.hooks`) says, follows each response (OK / ERR / result sets with or
without EOF under CLIENT_DEPRECATE_EOF, multiple result sets, text and binary rows,
prepared statements and cursors, LOCAL INFILE), records statements and rows
(:mod:`.recording`) and masks rows toward the job where policy asks
(:class:`~appliance.masking.mysql.ResponseMasker`: the same decisions as the ledger's).

Commands in flight are a queue (:class:`_Pending`): the server answers in order; an
answer of the appliance's own (a denial) waits in the queue until the responses before it
have gone out, so the job sees answers in the order it asked. A command held for approval
stops the reading of later commands until it is answered.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.masking import ColumnPlan
from appliance.masking.mysql import ResponseMasker, ResultColumns
from appliance.protocols.mysql import PeerProtocolError
from appliance.protocols.mysql._wire import Reader, chunks_of, packet
from appliance.protocols.mysql.constants import (
    CURSOR_TYPE_READ_ONLY,
    Cap,
    Com,
    Status,
    python_codec,
)
from appliance.protocols.mysql.messages import (
    ColumnDef,
    Eof,
    Err,
    Execute,
    Ok,
    PrepareOk,
    Query,
    binary_to_text,
    command_name,
    is_eof,
    text_row,
)
from appliance.proxy.mysql.hooks import PROBE, SessionPolicy, Verdict, denied
from appliance.proxy.mysql.kill import ConnectionIds, Kill, parse_kill
from appliance.proxy.mysql.recording import MySQLRecorder, ResultRecorder

ER_UNKNOWN_COM_ERROR = 1047
ER_NO_SUCH_THREAD = 1094
ER_NOT_SUPPORTED_YET = 1235
ER_QUERY_INTERRUPTED = 1317
_ALWAYS_REFUSED_TEXT = "the appliance does not relay this command"


class Kind(enum.Enum):
    RESULT = "result sets"  # COM_QUERY, COM_STMT_EXECUTE
    PREPARE = "prepare"
    FETCH = "fetch"
    ONE = "one packet"
    FIELDS = "field list"
    LOCAL = "the appliance's own answer"
    PROBE = "settings probe"


class Phase(enum.Enum):
    FIRST = "first packet"
    COLUMNS = "column definitions"
    COLUMNS_EOF = "EOF after column definitions"
    ROWS = "rows"
    PARAMS = "parameter definitions"
    PARAMS_EOF = "EOF after parameter definitions"
    INFILE = "LOCAL INFILE data from the job"


@dataclass
class Prepared:
    """A statement the server prepared (by its id): its text, the PREPARE's verdict, how
    many parameters it takes, the types last bound, its result columns."""

    id: int
    text: str
    verdict: Verdict
    n_params: int
    param_types: tuple[tuple[int, bool], ...] | None = None
    columns: list[ColumnDef] = field(default_factory=list)
    long_data: set[int] = field(default_factory=set)


@dataclass
class Stmt:
    n: int
    protocol: str
    text: str
    started: float
    verdict: Verdict
    params: list[bytes | None] | None = None
    prepared: int | None = None
    rows: int = 0
    affected: int = 0
    results: int = 0
    columns: list[str] = field(default_factory=list)
    error: Err | None = None
    outcome: str = "ok"
    approval: dict[str, Any] | None = None


@dataclass
class _Pending:
    kind: Kind
    seq: int = 0  # the command's sequence id (responses follow it)
    stmt: Stmt | None = None
    phase: Phase = Phase.FIRST
    remaining: int = 0
    columns: list[ColumnDef] = field(default_factory=list)
    binary: bool = False
    prep: Prepared | None = None
    local: bytes = b""
    result: ResultRecorder | None = None
    probe_rows: list[list[bytes | None]] = field(default_factory=list)
    prepare_ok: PrepareOk | None = None
    cursor: bool = False
    seq_shift: int = 0
    infile: bool = False
    command: str = ""
    probe: int = 0  # a settings probe's key
    masked: tuple[ResultColumns, ColumnPlan] | None = None  # rows masked toward the job


class SessionFailed(Exception):
    """The session cannot go on (an unsafe character set read back): ends it with ``err``."""

    def __init__(self, reason: str, err: Err) -> None:
        super().__init__(reason)
        self.reason = reason
        self.err = err


class Relay:
    """See the module docstring."""

    def __init__(
        self,
        *,
        policy: SessionPolicy,
        recorder: MySQLRecorder,
        capabilities: int,
        now: Callable[[], float],
        ids: ConnectionIds,
        upstream: tuple[str, int],
        local_infile: bool = False,
        row_masker: ResponseMasker | None = None,
    ) -> None:
        self.policy = policy
        self.recorder = recorder
        self.caps = capabilities
        self.deprecate_eof = bool(capabilities & Cap.DEPRECATE_EOF)
        self.now = now
        self.ids = ids
        self.upstream = upstream
        self.local_infile = local_infile
        self.row_masker = row_masker
        self.pending: deque[_Pending] = deque()
        self.prepared: dict[int, Prepared] = {}
        self._last_prepared: Prepared | None = None
        # MariaDB's execute-direct: an EXECUTE of "the statement just prepared" sent before
        # the server answered that PREPARE waits (with the commands after it) for the answer.
        self._awaiting_prepare: _Pending | None = None
        self.backlog: deque[tuple[int, bytes]] = deque()
        self.held: _Pending | None = None
        # Write-ahead: an allowed command that may change the target waits here for its
        # entry to be durable (durable_requested: the session core asks the ledger).
        self.withheld: _Pending | None = None
        self.durable_requested = False
        self.held_params: tuple[str, list[bytes | None] | None] | None = None
        # Statements held for approval, not yet asked for: (n, the request's fields, the
        # statement), drained by the session core (statement_policy.Holds).
        self.approvals: list[tuple[int, dict[str, Any], Stmt]] = []
        self.statements = 0
        self.bytes_from_job = 0
        self.bytes_from_server = 0
        self.terminated = False
        self._to_job: list[bytes] = []
        self._to_up: list[bytes] = []
        self._infile_from: _Pending | None = None

    # -- output -----------------------------------------------------------------------------------

    def take_output(self) -> tuple[bytes, bytes]:
        j, u = self._to_job, self._to_up
        to_job = b"".join(j) if j else b""
        to_up = b"".join(u) if u else b""
        j.clear()
        u.clear()
        return to_job, to_up

    @property
    def idle(self) -> bool:
        return not self.pending and self.held is None and self.withheld is None and not self.backlog

    def probe(self) -> None:
        """Ask the server for the settings that change how text is read (see hooks)."""
        key = self.policy.probe_sent()
        self._to_up.append(packet(0, bytes((Com.QUERY,)) + _attr_prefix(self.caps) + PROBE))
        self.pending.append(_Pending(Kind.PROBE, 0, probe=key))

    # -- from the job -------------------------------------------------------------------------------

    def from_job(self, packets: list[tuple[int, bytes]], size: int) -> None:
        self.bytes_from_job += size
        for seq, payload in packets:
            infile = self._infile_from
            if infile is not None:
                self._to_up.append(packet(seq, payload))
                if not payload:
                    self._infile_from = None
                    infile.phase = Phase.FIRST
                continue
            if self.held is not None or self.withheld is not None or self.backlog:
                self.backlog.append((seq, payload))
                continue
            self._command(seq, payload)

    def _resume(self) -> None:
        while (
            self.backlog
            and self.held is None
            and self.withheld is None
            and self._awaiting_prepare is None
        ):
            seq, payload = self.backlog.popleft()
            self._command(seq, payload)

    def _command(self, seq: int, payload: bytes) -> None:
        if not payload:
            raise PeerProtocolError("an empty command packet", side="client")
        com = payload[0]
        if com == Com.QUERY:
            self._query(seq, payload)
        elif com == Com.STMT_EXECUTE:
            self._execute(seq, payload)
        elif com == Com.STMT_PREPARE:
            self._prepare(seq, payload)
        elif com == Com.STMT_CLOSE:
            sid = Reader(payload, "client", "COM_STMT_CLOSE", 1).u32()
            self.prepared.pop(sid, None)
            self._to_up.append(packet(seq, payload))
        elif com == Com.STMT_SEND_LONG_DATA:
            r = Reader(payload, "client", "COM_STMT_SEND_LONG_DATA", 1)
            prep = self.prepared.get(r.u32())
            if prep is not None:
                prep.long_data.add(r.u16())
            self._to_up.append(packet(seq, payload))
        elif com == Com.STMT_FETCH:
            self._fetch(seq, payload)
        elif com == Com.STMT_RESET:
            sid = Reader(payload, "client", "COM_STMT_RESET", 1).u32()
            prep = self.prepared.get(sid)
            if prep is not None:
                prep.long_data.clear()
            self._forward(seq, payload, _Pending(Kind.ONE, seq, command="COM_STMT_RESET"))
        elif com in (Com.PING, Com.STATISTICS):
            self._forward(seq, payload, _Pending(Kind.ONE, seq))
        elif com == Com.INIT_DB:
            self._init_db(seq, payload)
        elif com == Com.SET_OPTION:
            option = Reader(payload, "client", "COM_SET_OPTION", 1).u16()
            self.recorder.request("COM_SET_OPTION", {"multi_statements": option == 0})
            self._forward(seq, payload, _Pending(Kind.ONE, seq, command="COM_SET_OPTION"))
        elif com == Com.RESET_CONNECTION:
            self.recorder.request("COM_RESET_CONNECTION", {})
            self.prepared.clear()
            self._forward(seq, payload, _Pending(Kind.ONE, seq, command="COM_RESET_CONNECTION"))
            self.probe()
        elif com == Com.FIELD_LIST:
            table = payload[1:].split(b"\0", 1)[0].decode("utf-8", "replace")
            self.recorder.request("COM_FIELD_LIST", {"table": table})
            self._forward(seq, payload, _Pending(Kind.FIELDS, seq))
        elif com == Com.PROCESS_KILL:
            ident = Reader(payload, "client", "COM_PROCESS_KILL", 1).u32()
            self._kill(seq, Kill(False, ident), f"COM_PROCESS_KILL {ident}")
        elif com == Com.QUIT:
            self.terminated = True
            self._to_up.append(packet(seq, payload))
        elif com == Com.CHANGE_USER:
            self.recorder.request("COM_CHANGE_USER", {"outcome": "refused"})
            self._answer(
                seq,
                Err(
                    ER_NOT_SUPPORTED_YET,
                    "42000",
                    "COM_CHANGE_USER is refused by the appliance: the session keeps its service "
                    "account; open a new connection instead",
                ),
            )
        else:
            name = command_name(com)
            self.recorder.request(name, {"outcome": "refused"})
            self._answer(seq, Err(ER_UNKNOWN_COM_ERROR, "08S01", f"{name}: {_ALWAYS_REFUSED_TEXT}"))

    def _text(self, raw: bytes) -> str:
        return raw.decode(python_codec(self.policy.charset), "surrogateescape")

    def _new_stmt(self, protocol: str, text: str, verdict: Verdict, **kw: Any) -> Stmt:
        self.statements += 1
        return Stmt(self.statements, protocol, text, self.now(), verdict, **kw)

    def _query(self, seq: int, payload: bytes) -> None:
        query = Query.decode(payload, self.caps)
        text = self._text(query.text)
        kill = parse_kill(text) if text[:10].lstrip()[:4].upper() == "KILL" else None
        if kill is not None:
            if isinstance(kill, Kill):
                self._kill(seq, kill, text)
            else:
                self.recorder.request(
                    "KILL", {"text": self.recorder.mask(text), "outcome": "refused"}
                )
                self._answer(
                    seq,
                    denied(
                        "only KILL [QUERY|CONNECTION] <id> of the job's own sessions passes the appliance"
                    ),
                )
            return
        verdict = self.policy.decide(text)
        stmt = self._new_stmt("query", text, verdict)
        if query.attributes:
            stmt.params = [v for _k, v in query.attributes]
        self.recorder.statement(stmt.n, "query", text, verdict.record, params=stmt.params)
        pend = _Pending(Kind.RESULT, seq, stmt)
        self._dispatch(seq, payload, pend, verdict, verdict.durable)

    def _prepare(self, seq: int, payload: bytes) -> None:
        text = self._text(payload[1:])
        verdict = self.policy.decide(text)
        stmt = self._new_stmt("prepare", text, verdict)
        self.recorder.statement(stmt.n, "prepare", text, verdict.record)
        pend = _Pending(Kind.PREPARE, seq, stmt)
        if verdict.blocks and verdict.action == "review":
            # Prepared now; each execution is held for approval instead.
            self._forward(seq, payload, pend)
            return
        self._dispatch(seq, payload, pend, verdict, False)  # its executions are written ahead

    def _dispatch(
        self, seq: int, payload: bytes, pend: _Pending, verdict: Verdict, durable: bool
    ) -> None:
        stmt = pend.stmt
        assert stmt is not None
        if not verdict.blocks:
            self._send(seq, payload, pend, durable)
            return
        if verdict.action == "review":
            pend.local = payload
            self.held = pend
            self.approvals.append(
                (stmt.n, self.policy.approval_fields(verdict, stmt.text, stmt.params), stmt)
            )
            return
        stmt.outcome = "denied"
        assert verdict.error is not None
        stmt.error = verdict.error
        self._answer(seq, verdict.error, stmt)

    def _execute(self, seq: int, payload: bytes) -> None:
        sid = Reader(payload, "client", "COM_STMT_EXECUTE", 1).u32()
        prep = self.prepared.get(sid)
        if prep is None and sid == 0xFFFFFFFF:
            unanswered = next(
                (p for p in reversed(self.pending) if p.kind is Kind.PREPARE and p.prep is None),
                None,
            )
            if unanswered is not None:
                # Which statement, its parameters and its verdict are known only once the
                # server answers that PREPARE (else the execution would be checked and
                # recorded as the previous statement's, or not at all).
                self.backlog.appendleft((seq, payload))
                self._awaiting_prepare = unanswered
                return
            prep = self._last_prepared  # MariaDB: "the statement just prepared"
        if prep is None:
            # The server has no such statement either (every PREPARE passes here): it will
            # answer with its own error.
            self._forward(seq, payload, _Pending(Kind.RESULT, seq, binary=True))
            return
        ex = Execute.decode(
            payload, prep.n_params, prep.param_types, self.caps, frozenset(prep.long_data)
        )
        if ex.types:
            prep.param_types = ex.types
        params = [
            None if v is None else _param_text(v, t)
            for v, t in zip(ex.values, ex.types, strict=False)
        ]
        stmt = self._new_stmt("execute", prep.text, prep.verdict, params=params, prepared=prep.id)
        self.recorder.statement(
            stmt.n, "execute", prep.text, prep.verdict.record, params=params, prepared=prep.id
        )
        pend = _Pending(
            Kind.RESULT,
            seq,
            stmt,
            binary=True,
            prep=prep,
            cursor=bool(ex.flags & CURSOR_TYPE_READ_ONLY),
        )
        verdict = prep.verdict
        if verdict.blocks and verdict.action == "review":
            # Every execution of a statement prepared under review is held on its own, with
            # its parameters in the digest the approver signs.
            pend.local = payload
            self.held = pend
            fields = self.policy.approval_fields(verdict, stmt.text, params)
            self.approvals.append((stmt.n, fields, stmt))
            return
        self._send(seq, payload, pend, verdict.durable)

    def _fetch(self, seq: int, payload: bytes) -> None:
        r = Reader(payload, "client", "COM_STMT_FETCH", 1)
        sid = r.u32()
        count = r.u32()
        prep = self.prepared.get(sid)
        text = prep.text if prep is not None else ""
        stmt = self._new_stmt(
            "fetch",
            text,
            Verdict("allow", record={"decision": "allow", "rows_asked": count}),
            prepared=sid,
        )
        self.recorder.statement(stmt.n, "fetch", text, stmt.verdict.record, prepared=sid)
        pend = _Pending(Kind.FETCH, seq, stmt, phase=Phase.ROWS, binary=True, prep=prep)
        pend.columns = list(prep.columns) if prep is not None else []
        self._forward(seq, payload, pend)
        if pend.columns:
            self._open_result(pend)
            self._mask_plan(pend)

    def _init_db(self, seq: int, payload: bytes) -> None:
        name = self._text(payload[1:])
        text = f"USE `{name.replace('`', '``')}`"
        verdict = self.policy.decide(text)
        stmt = self._new_stmt("init_db", text, verdict)
        self.recorder.statement(stmt.n, "init_db", text, verdict.record)
        pend = _Pending(Kind.ONE, seq, stmt, command="COM_INIT_DB")
        pend.local = name.encode("utf-8", "surrogateescape")
        if verdict.blocks:
            stmt.outcome = "denied"
            stmt.error = verdict.error or denied("denied")
            self._answer(seq, stmt.error, stmt)
            return
        self._forward(seq, payload, pend)

    def _kill(self, seq: int, kill: Kill, text: str) -> None:
        route = None if kill.query_id else self.ids.resolve(kill.id)
        outcome = "unknown id"
        if route is not None and route.owner != self.policy.owner:
            route = None
            outcome = "another job's session"
        elif route is not None and route.upstream != self.upstream:
            route = None
            outcome = "another upstream server"
        self.recorder.request(
            "KILL",
            {
                "text": self.recorder.mask(text),
                "query": kill.query,
                "outcome": "forwarded" if route else outcome,
                **({"session_killed": route.session} if route else {}),
            },
        )
        if route is None:
            self._answer(seq, Err(ER_NO_SUCH_THREAD, "HY000", f"Unknown thread id: {kill.id}"))
            return
        rewritten = f"KILL {'QUERY' if kill.query else 'CONNECTION'} {route.upstream_id}"
        self._forward(
            seq,
            bytes((Com.QUERY,)) + _attr_prefix(self.caps) + rewritten.encode(),
            _Pending(Kind.ONE, seq, command="KILL"),
        )

    def _send(self, seq: int, payload: bytes, pend: _Pending, durable: bool) -> None:
        """Forward an allowed command (then probe the settings it may change), or, when it
        must be written ahead, withhold it until :meth:`durable_result`."""
        if durable:
            pend.local = payload
            self.withheld = pend
            self.durable_requested = True
            return
        self._forward(seq, payload, pend)
        stmt = pend.stmt
        if stmt is not None and stmt.verdict.changes_settings:
            self.probe()
        if pend.prep is not None:
            pend.prep.long_data.clear()

    def durable_result(self) -> None:
        """The entries recorded before the command withheld are on disk: send it and go on
        with what the job sent meanwhile. (When they cannot be, the session core ends the
        session and nothing withheld is sent.)"""
        pend = self.withheld
        if pend is None:
            return
        self.withheld = None
        payload, pend.local = pend.local, b""
        self._send(pend.seq, payload, pend, False)
        self._resume()

    def _forward(self, seq: int, payload: bytes, pend: _Pending) -> None:
        self._to_up.append(packet(seq, payload))
        self.pending.append(pend)

    def _answer(self, seq: int, err: Err, stmt: Stmt | None = None) -> None:
        """The appliance's own ERR for the command of ``seq``, in its turn."""
        data = packet(seq + 1, err.encode())
        if stmt is not None:
            stmt.error = err
            if stmt.outcome == "ok":
                stmt.outcome = "error"
        if not self.pending:
            self._to_job.append(data)
            if stmt is not None:
                self._finished(stmt)
            return
        self.pending.append(_Pending(Kind.LOCAL, seq, stmt, local=data))

    # -- approvals ------------------------------------------------------------------------------

    def approval_result(self, approved: bool, error: Err | None, record: dict[str, Any]) -> None:
        pend = self.held
        assert pend is not None and pend.stmt is not None
        self.held = None
        pend.stmt.approval = record
        payload = pend.local
        pend.local = b""
        if approved:
            self._send(pend.seq, payload, pend, pend.stmt.verdict.durable)
        else:
            pend.stmt.outcome = "denied"
            self._answer(pend.seq, error or denied("not approved"), pend.stmt)
        self._resume()

    # -- from the server ----------------------------------------------------------------------------

    def from_server(self, packets: list[tuple[int, bytes]], size: int) -> None:
        self.bytes_from_server += size
        for seq, payload in packets:
            if not self.pending:
                raise PeerProtocolError(
                    "the server sent a packet no command asked for", side="server"
                )
            pend = self.pending[0]
            if pend.phase is Phase.ROWS and pend.kind is not Kind.FETCH:
                self._row(pend, seq, payload)  # the hot path
            else:
                self._response(pend, seq, payload)

    def _emit(self, pend: _Pending, seq: int, payload: bytes) -> None:
        if pend.kind is not Kind.PROBE:
            self._to_job.append(packet(seq - pend.seq_shift, payload))

    def _row(self, pend: _Pending, seq: int, payload: bytes) -> None:
        head = payload[0] if payload else -1
        if head == 0xFE and len(payload) < 0xFFFFFF:
            self._emit(pend, seq, payload)
            self._result_end(pend, payload)
            return
        if head == 0xFF:
            self._emit(pend, seq, payload)
            self._error(pend, payload)
            return
        if pend.kind is Kind.PROBE:
            pend.probe_rows.append(text_row(payload, len(pend.columns)))
            return
        stmt = pend.stmt
        if stmt is not None:
            stmt.rows += 1
        if pend.result is not None:
            pend.result.row(payload)
        masked = pend.masked
        if masked is not None:
            assert self.row_masker is not None
            payload = self.row_masker.mask_row(masked[1], masked[0], payload)
        self._to_job.append(packet(seq - pend.seq_shift, payload))

    def _response(self, pend: _Pending, seq: int, payload: bytes) -> None:
        if not payload:
            raise PeerProtocolError("an empty response packet", side="server")
        kind, phase, head = pend.kind, pend.phase, payload[0]
        if kind is Kind.LOCAL:
            raise PeerProtocolError(
                "the server answered a command it was never sent", side="server"
            )
        if kind is Kind.FETCH:
            if head == 0xFF:
                self._emit(pend, seq, payload)
                self._error(pend, payload)
            elif head == 0xFE and len(payload) < 0xFFFFFF:
                self._emit(pend, seq, payload)
                self._done(pend)
            else:
                if pend.stmt is not None:
                    pend.stmt.rows += 1
                if pend.result is not None:
                    pend.result.row(payload)
                masked = pend.masked
                if masked is not None:
                    assert self.row_masker is not None
                    payload = self.row_masker.mask_row(masked[1], masked[0], payload)
                self._emit(pend, seq, payload)
            return
        if kind is Kind.ONE:
            self._emit(pend, seq, payload)
            if head == 0xFF:
                self._error(pend, payload)
                return
            if head == 0x00 and pend.stmt is not None and pend.command == "COM_INIT_DB":
                self.policy.database = pend.local.decode("utf-8", "surrogateescape")
            if head == 0x00 and len(payload) >= 7:
                self._session_track(Ok.decode(payload, self.caps))
            self._done(pend)
            return
        if kind is Kind.FIELDS:
            self._emit(pend, seq, payload)
            if head == 0xFF:
                self._error(pend, payload)
            elif head == 0xFE and len(payload) < 0xFFFFFF:
                self._done(pend)
            return
        if kind is Kind.PREPARE:
            self._prepare_response(pend, seq, payload)
            if self._awaiting_prepare is pend and (pend.prep is not None or head == 0xFF):
                self._awaiting_prepare = None
                self._resume()
            return
        # RESULT and PROBE
        if phase is Phase.FIRST:
            if head != 0xFB:
                self._emit(pend, seq, payload)
            if head == 0x00:
                ok = Ok.decode(payload, self.caps)
                if pend.stmt is not None:
                    pend.stmt.affected += ok.affected_rows
                    pend.stmt.results += 1
                self._session_track(ok)
                if ok.status & Status.MORE_RESULTS_EXISTS:
                    return
                self._done(pend)
            elif head == 0xFF:
                self._error(pend, payload)
            elif head == 0xFB:
                self._local_infile(pend, seq, payload)
            else:
                r = Reader(payload, "server", "column count")
                pend.remaining = r.lenenc_int()
                if pend.remaining == 0 or pend.remaining > 4096:
                    raise PeerProtocolError(
                        f"a result set of {pend.remaining} columns", side="server"
                    )
                pend.columns = []
                pend.phase = Phase.COLUMNS
            return
        if phase is Phase.COLUMNS:
            self._emit(pend, seq, payload)
            pend.columns.append(ColumnDef.decode(payload))
            pend.remaining -= 1
            if pend.remaining == 0:
                if self.deprecate_eof:
                    self._columns_done(pend)
                else:
                    pend.phase = Phase.COLUMNS_EOF
            return
        if phase is Phase.COLUMNS_EOF:
            self._emit(pend, seq, payload)
            if not is_eof(payload):
                raise PeerProtocolError("no EOF after the column definitions", side="server")
            status = Eof.decode(payload).status
            self._columns_done(pend)
            if status & Status.CURSOR_EXISTS and not status & Status.MORE_RESULTS_EXISTS:
                self._result_end(pend, payload)
            return
        if phase is Phase.INFILE:
            raise PeerProtocolError(
                "the server answered before the LOCAL INFILE data ended", side="server"
            )
        raise PeerProtocolError(f"unexpected packet in phase {phase.name}", side="server")

    def _columns_done(self, pend: _Pending) -> None:
        pend.phase = Phase.ROWS
        if pend.prep is not None and pend.kind is Kind.RESULT:
            pend.prep.columns = list(pend.columns)
        stmt = pend.stmt
        if stmt is not None:
            stmt.columns = [c.name for c in pend.columns]
            self._open_result(pend)
        self._mask_plan(pend)

    def _mask_plan(self, pend: _Pending) -> None:
        """Plan the masking of this result set's rows toward the job (once per result set)."""
        if self.row_masker is not None and pend.kind is not Kind.PROBE:
            columns = ResultColumns.of(pend.columns, pend.binary)
            pend.masked = (columns, self.row_masker.plan(columns))

    def _open_result(self, pend: _Pending) -> None:
        assert pend.stmt is not None
        if pend.result is None:
            pend.result = self.recorder.result(pend.stmt.n)
        if pend.result is not None:
            pend.result.header(pend.columns, pend.binary)

    def _result_end(self, pend: _Pending, payload: bytes) -> None:
        status = 0
        if is_eof(payload):
            status = Eof.decode(payload).status
        else:
            ok = Ok.decode(payload, self.caps)
            status = ok.status
            self._session_track(ok)
        if pend.kind is Kind.PROBE:
            self._probe_answer(pend)
        if pend.stmt is not None:
            pend.stmt.results += 1
        if pend.result is not None:
            pend.result.close()
        if status & Status.MORE_RESULTS_EXISTS and pend.kind is not Kind.FETCH:
            pend.phase = Phase.FIRST
            pend.columns = []
            pend.masked = None
            return
        self._done(pend)

    def _probe_answer(self, pend: _Pending) -> None:
        if len(pend.probe_rows) != 1 or len(pend.probe_rows[0]) != 2:
            raise PeerProtocolError("the settings probe got an unexpected answer", side="server")
        mode, charset = (v.decode("utf-8", "replace") if v else "" for v in pend.probe_rows[0])
        self.policy.settings_read(mode, charset, pend.probe)
        if charset.lower() in ("big5", "cp932", "gbk", "sjis", "gb18030"):
            raise SessionFailed(
                f"the session's character set became {charset}",
                Err(
                    ER_NOT_SUPPORTED_YET,
                    "42000",
                    f"the appliance ends this session: its client character set became {charset!r}, "
                    "which the server reads otherwise than the appliance",
                ),
            )

    def _error(self, pend: _Pending, payload: bytes) -> None:
        err = Err.decode(payload)
        if pend.kind is Kind.PROBE:
            raise PeerProtocolError(
                f"the settings probe failed: {err.code} {err.message[:80]}", side="server"
            )
        if pend.stmt is not None:
            pend.stmt.error = err
            pend.stmt.outcome = "error"
        self._done(pend)

    def _done(self, pend: _Pending) -> None:
        popped = self.pending.popleft()
        assert popped is pend
        if pend.stmt is not None:
            self._finished(pend.stmt)
        while self.pending and self.pending[0].kind is Kind.LOCAL:
            local = self.pending.popleft()
            self._to_job.append(local.local)
            if local.stmt is not None:
                self._finished(local.stmt)

    def _finished(self, stmt: Stmt) -> None:
        counts = self.row_masker.take_counts() if self.row_masker is not None else None
        self.recorder.response(
            stmt.n,
            outcome=stmt.outcome,
            started=stmt.started,
            finished=self.now(),
            rows=stmt.rows,
            affected=stmt.affected,
            columns=stmt.columns,
            results=stmt.results,
            error=stmt.error,
            approval=stmt.approval,
            masked_to_job=counts,
        )

    def _session_track(self, ok: Ok) -> None:
        if not ok.session:
            return
        schema = ok.schema()
        if schema is not None:
            self.policy.database = schema
        charset = ok.system_variables().get("character_set_client")
        if charset is not None:
            self.policy.charset = charset.lower()

    def _prepare_response(self, pend: _Pending, seq: int, payload: bytes) -> None:
        self._emit(pend, seq, payload)
        head = payload[0]
        if pend.phase is Phase.FIRST:
            if head == 0xFF:
                self._error(pend, payload)
                return
            ok = pend.prepare_ok = PrepareOk.decode(payload)
            stmt = pend.stmt
            assert stmt is not None
            prep = Prepared(ok.statement_id, stmt.text, stmt.verdict, ok.params)
            self.prepared[ok.statement_id] = prep
            self._last_prepared = prep
            pend.prep = prep
            pend.remaining = ok.params
            pend.phase = Phase.PARAMS
            if ok.params == 0:
                self._prepare_columns(pend)
            return
        if pend.phase is Phase.PARAMS:
            pend.remaining -= 1
            if pend.remaining == 0:
                if self.deprecate_eof:
                    self._prepare_columns(pend)
                else:
                    pend.phase = Phase.PARAMS_EOF
            return
        if pend.phase is Phase.PARAMS_EOF:
            self._prepare_columns(pend)
            return
        if pend.phase is Phase.COLUMNS:
            assert pend.prep is not None
            pend.prep.columns.append(ColumnDef.decode(payload))
            pend.remaining -= 1
            if pend.remaining == 0:
                if self.deprecate_eof:
                    self._done(pend)
                else:
                    pend.phase = Phase.COLUMNS_EOF
            return
        if pend.phase is Phase.COLUMNS_EOF:
            self._done(pend)
            return
        raise PeerProtocolError("unexpected packet after COM_STMT_PREPARE", side="server")

    def _prepare_columns(self, pend: _Pending) -> None:
        assert pend.prepare_ok is not None
        pend.remaining = pend.prepare_ok.columns
        pend.phase = Phase.COLUMNS
        if pend.remaining == 0:
            self._done(pend)

    def _local_infile(self, pend: _Pending, seq: int, payload: bytes) -> None:
        """The server asks the job for a file (LOAD DATA LOCAL INFILE)."""
        name = payload[1:].decode("utf-8", "replace")
        allowed = self.local_infile and pend.kind is Kind.RESULT and pend.stmt is not None
        self.recorder.request(
            "LOCAL INFILE",
            {
                "n": pend.stmt.n if pend.stmt else None,
                "file": self.recorder.mask(name),
                "outcome": "relayed" if allowed else "refused",
            },
        )
        if allowed:
            self._to_job.append(packet(seq, payload))
            pend.phase = Phase.INFILE
            self._infile_from = pend
            return
        # Refused: the server is sent an empty file (the end of the data) and the job never
        # sees the request; the server's answer is renumbered to follow the job's command.
        self._to_up.append(packet(seq + 1, b""))
        pend.seq_shift += 2


def _attr_prefix(caps: int) -> bytes:
    """COM_QUERY's query-attribute counts when CLIENT_QUERY_ATTRIBUTES is on (none sent)."""
    return b"\x00\x01" if caps & Cap.QUERY_ATTRIBUTES else b""


def _param_text(value: bytes, type_: tuple[int, bool]) -> bytes:
    text = binary_to_text(value, type_[0], type_[1])
    return text if text is not None else b"?"


__all__ = ["Kind", "Prepared", "Relay", "SessionFailed", "Stmt", "chunks_of"]
