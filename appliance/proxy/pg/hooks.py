"""The relay's hooks for one session: policy decisions, approvals, recording, masking.

Where this sits: :class:`~appliance.proxy.pg.relay.Relay` calls these synchronously while it
walks the messages; they classify and decide (policy), build the job's error messages,
queue approval requests (the session core, :mod:`appliance.proxy.pg.core`, asks for them
with a command and brings the answer back through :meth:`SessionHooks.approval_answered`),
and forward everything worth keeping to the
:class:`~appliance.proxy.pg.recording.SessionRecorder` (:class:`Recorder`). Sans-IO: no await anywhere.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Protocol

from appliance.approvals.request import identity_key
from appliance.masking import MaskCounts
from appliance.masking.postgres import ResponseMasker
from appliance.policy import (
    Classification,
    Decision,
    GrammarError,
    Policy,
    RequestContext,
    classify,
    classify_function_call,
)
from appliance.protocols.postgres.messages import (
    ErrorResponse,
    NoticeResponse,
    NotificationResponse,
    RowDescription,
    error_response,
)
from appliance.protocols.postgres.sqlstate import INSUFFICIENT_PRIVILEGE, SYNTAX_ERROR
from appliance.proxy.commands import ApprovalAnswered
from appliance.proxy.pg.relay import ALLOW, ResultSink, RowMasker, Statement, Verdict

# Distinct statement texts whose allow is remembered per session (then forgotten at once):
# a prepared or repeated statement hits it; texts with literals (pgbench -S in simple mode)
# never repeat, and 200 sessions must not keep thousands each (issue 13: memory).
_ALLOWED_CACHE = 64
# Classes of statements that may change session settings, directly or through code.
_MAY_CHANGE_SETTINGS = frozenset({"set", "function_call", "unknown", "prepare"})
# Classes that change nothing on the target (reads, session settings, transaction control,
# locks, notifications): everything else is written ahead (durable before it is sent).
_CHANGES_NOTHING = frozenset(
    {"select", "copy_to", "explain", "set", "transaction", "listen_notify", "lock"}
)


class Recorder(Protocol):
    """What the hooks hand over to be recorded: :class:`~appliance.proxy.pg.recording.
    SessionRecorder` (a protocol, not that class: the compiled build checks a class-typed
    argument's type at run time, and tests record with their own)."""

    session: str

    def mask(self, text: str, counts: MaskCounts | None = None) -> str: ...

    def statement(self, stmt: Statement) -> None: ...

    def response(self, stmt: Statement, *, masked_to_job: MaskCounts | None = None) -> None: ...

    def result_sink(
        self, stmt: Statement, description: RowDescription | None, formats: tuple[int, ...]
    ) -> ResultSink | None: ...

    def copy_sink(self, stmt: Statement, direction: str) -> ResultSink | None: ...

    def request_error(self, request: str, text: str | None, error: ErrorResponse) -> None: ...

    def notice(self, stmt: Statement | None, notice: NoticeResponse) -> None: ...

    def notification(self, notification: NotificationResponse) -> None: ...


class SessionHooks:
    """Implements :class:`~appliance.proxy.pg.relay.RelayHooks` for one session."""

    def __init__(
        self,
        *,
        policy: Policy | None,
        recorder: Recorder,
        target: str,
        database: str,
        account: str,
        identity: Mapping[str, Any],
        new_id: Callable[[], str],
        row_masker: RowMasker | None = None,
        parameters: Mapping[str, str] | None = None,
        write_ahead: bool = False,
    ) -> None:
        self.policy = policy
        self.recorder = recorder
        self.target = target
        self.database = database
        self.account = account
        self.identity = identity
        self.new_id = new_id
        self._row_masker = row_masker
        self.parameters: dict[str, str] = dict(parameters or {})
        self._decisions: dict[int, Decision] = {}
        # Allow verdicts by (text, standard_conforming_strings). A decision is a pure
        # function of the classification and of what is fixed for the session (identity,
        # target, database, account), so a prepared statement run again is not decided
        # again. Only allows: a deny or review carries a new decision id each time.
        # The flag: the statement may change session settings (see _settings_in_flight).
        # Keys: (text, standard_conforming_strings, True if text is a shape: see _shape).
        self._allowed: dict[tuple[str, bool, bool], tuple[Verdict, bool]] = {}
        # Statements that may change how the server reads text (SET, RESET, set_config, or
        # a function, procedure or prepared statement that could call it) sent but not yet
        # followed by a ReadyForQuery (which comes after the server reported its settings):
        # until then, pipelined text that another setting would read otherwise is refused.
        self._settings_in_flight: set[int] = set()
        self._settings_done: set[int] = set()
        # Statements held for approval, not yet asked for (drained by the session core).
        self.approvals: list[Statement] = []
        # write_ahead: statements that may change the target wait for their entry to be
        # durable (ledger.durability); durable_requested: the relay asked for a sync.
        self.write_ahead = write_ahead
        self.durable_requested = False

    # -- deciding ----------------------------------------------------------------------------

    def decide(self, stmt: Statement) -> Verdict:
        if self.policy is None:
            # No policy: everything passes, and is still written ahead when it may change
            # the target.
            if not self.write_ahead:
                return ALLOW
            if stmt.function_oid is not None:
                return _ALLOW_DURABLE
            scs = self.parameters.get("standard_conforming_strings", "on") == "on"
            classes = classify(stmt.text, standard_conforming_strings=scs).classes
            return ALLOW if classes <= _CHANGES_NOTHING else _ALLOW_DURABLE
        if stmt.function_oid is not None:
            # A fast-path call has no SQL text: it is classified by the function it calls.
            classification = classify_function_call(stmt.function_oid)
            if classification.classes & _MAY_CHANGE_SETTINGS:
                self._settings_in_flight.add(stmt.n)
            return self._decide(stmt, classification)
        # With standard_conforming_strings off, backslashes escape quotes: the classifier
        # must read the text as the server will (else a quote could hide a statement).
        scs = self.parameters.get("standard_conforming_strings", "on") == "on"
        text = stmt.text
        # Read otherwise: backslashes (standard_conforming_strings off) or non-ASCII
        # characters (an ASCII-unsafe client encoding); pure ASCII text reads the same.
        unsure = bool(self._settings_in_flight) and ((scs and "\\" in text) or not text.isascii())
        shape = _shape(text)
        cached = None
        if not unsure:
            cached = self._allowed.get((text, scs, False))
            if cached is None and shape is not text:
                cached = self._allowed.get((shape, scs, True))
        if cached is not None:
            verdict, changes_settings = cached
            if changes_settings:
                self._settings_in_flight.add(stmt.n)
            return verdict
        classification = classify(stmt.text, standard_conforming_strings=scs)
        if classification.syntax_error is not None:
            return _rejected(classification.syntax_error)
        if unsure:
            # A statement in flight may have turned standard_conforming_strings off or
            # switched the client encoding: the server could read another statement than
            # the one classified here.
            return self._refuse(
                classification,
                "(built-in) settings-in-flight",
                "statement denied by the appliance: it holds a backslash or non-ASCII text "
                "and was sent before the server answered a statement that may change how "
                "text is read (SET, a function call); send it after that one completes",
            )
        if "encoding" in classification.classes:
            return self._refuse(
                classification,
                "(built-in) ascii-safe-encoding",
                "statement denied by the appliance: the client encoding may not become one "
                "the server reads otherwise than the appliance (SJIS, BIG5, GBK, UHC, GB18030, "
                "JOHAB)",
            )
        changes_settings = bool(classification.classes & _MAY_CHANGE_SETTINGS)
        if changes_settings:
            self._settings_in_flight.add(stmt.n)
        verdict = self._decide(stmt, classification)
        if verdict.action == "allow" and verdict.enforced:
            if len(self._allowed) >= _ALLOWED_CACHE:
                self._allowed.clear()
            # Under its shape only what no integer can change: a plain read. Elsewhere a
            # value decides (WHERE 3 > 2 keeps every row, WHERE 2 > 3 none; EXPLAIN
            # (ANALYZE 1) runs its statement, (ANALYZE 0) does not).
            if classification.classes == _SHAPE_SAFE and shape is not text:
                self._allowed[(shape, scs, True)] = (verdict, changes_settings)
            else:
                self._allowed[(text, scs, False)] = (verdict, changes_settings)
        return verdict

    def _decide(self, stmt: Statement, classification: Classification) -> Verdict:
        """The policy's verdict on ``stmt``, classified as ``classification``."""
        assert self.policy is not None
        decision = self.policy.decide(
            RequestContext(
                identity=self.identity,
                target=self.target,
                database=self.database,
                account=self.account,
                classification=classification,
            )
        )
        record: dict[str, Any] = dict(decision.to_record())
        record["decision"] = decision.action
        record["classes"] = sorted(classification.classes)
        if classification.writes:
            record["writes"] = sorted(classification.writes)
        if classification.reads:
            record["reads"] = sorted(classification.reads)
        action = decision.action
        durable = self.write_ahead and not classification.classes <= _CHANGES_NOTHING
        if action == "allow" and decision.enforced:
            # The common case, on every statement entry: keep it short. The per-statement
            # breakdown matters only when a string holds several statements.
            keep = ("decision", "rule", "classes", "reads", "writes")
            slim: dict[str, object] = {k: record[k] for k in keep if k in record}
            if len(classification.statements) > 1:
                slim["statements"] = record["statements"]
            return Verdict("allow", True, b"", slim, durable)
        decision_id = self.new_id()
        record["decision_id"] = decision_id
        if action == "review":
            self._decisions[stmt.n] = decision  # until its approval is answered
        error = b""
        if action == "deny":
            what = "statement"
            if stmt.function_oid is not None:
                what = f"fast-path call of function {', '.join(sorted(classification.functions))}"
            message = f"{what} denied by policy rule {decision.rule!r}"
            # The policy's own message when the rule has none repeats the line above.
            if decision.message and decision.message != f"denied by policy rule {decision.rule!r}":
                message += f": {decision.message}"
            error = error_response(
                "ERROR",
                INSUFFICIENT_PRIVILEGE,
                message,
                hint=f"appliance decision {decision_id}; classes: {', '.join(sorted(classification.classes))}",
            )
        return Verdict(action, decision.enforced, error, record, durable)

    def _refuse(self, classification: Classification, rule: str, message: str) -> Verdict:
        """A denial built into the appliance, whatever the policy (observe mode included):
        statements the server could read otherwise than the policy did."""
        decision_id = self.new_id()
        record: dict[str, Any] = {
            "decision": "deny",
            "rule": rule,
            "enforced": True,
            "decision_id": decision_id,
            "classes": sorted(classification.classes),
        }
        error = error_response(
            "ERROR", INSUFFICIENT_PRIVILEGE, message, hint=f"appliance decision {decision_id}"
        )
        return Verdict("deny", True, error, record)

    # -- approvals ---------------------------------------------------------------------------

    def request_approval(self, stmt: Statement) -> None:
        """Queue the request; the session core turns it into an ``AskApproval`` command."""
        self.approvals.append(stmt)

    def request_durable(self) -> None:
        """Note the relay's sync request; the session core makes it an ``AwaitDurable``."""
        self.durable_requested = True

    def approval_fields(self, stmt: Statement) -> dict[str, Any]:
        """The broker's ``new_request`` arguments for ``stmt`` (the text masked; the digest
        of the exact bytes the approver signs for)."""
        decision = self._decisions[stmt.n]
        return {
            "session": self.recorder.session,
            "identity": identity_key(self.identity),
            "target": self.target,
            "account": self.account,
            "rule": decision.rule,
            "approvers": decision.approvers,
            "statement": self.recorder.mask(stmt.text),
            "statement_sha256": hashlib.sha256(_statement_bytes(stmt)).hexdigest(),
            "window": timedelta(seconds=decision.window),
            "timeout": timedelta(seconds=decision.timeout),
        }

    def approval_answered(
        self, stmt: Statement, answer: ApprovalAnswered
    ) -> tuple[bool, bytes, dict[str, Any]]:
        """What the relay does with the answer: (approved, the job's error, the record)."""
        self._decisions.pop(stmt.n, None)
        decision_id = str(stmt.verdict.record.get("decision_id", ""))
        outcome = answer.outcome
        if answer.error is not None or outcome is None:
            error = error_response(
                "ERROR",
                INSUFFICIENT_PRIVILEGE,
                f"statement needs an approval, and none can be asked: {answer.error}",
                hint=f"appliance decision {decision_id}",
            )
            return False, error, {"outcome": "unavailable", "error": answer.error}
        record = {
            "request": answer.request,
            "outcome": outcome.verdict.value,
            "approver": outcome.approver,
        }
        if outcome.granted:
            return True, b"", record
        error = error_response(
            "ERROR",
            INSUFFICIENT_PRIVILEGE,
            outcome.message(),
            hint=f"appliance decision {decision_id}; approval request {answer.request}",
        )
        return False, error, record

    # -- recording ---------------------------------------------------------------------------

    def statement_started(self, stmt: Statement) -> None:
        self.recorder.statement(stmt)

    def statement_finished(self, stmt: Statement) -> None:
        if stmt.n in self._settings_in_flight:
            self._settings_done.add(stmt.n)
        masker = self._row_masker
        to_job = masker.take_counts() if isinstance(masker, ResponseMasker) else None
        self.recorder.response(stmt, masked_to_job=to_job)

    def open_result(
        self, stmt: Statement, description: RowDescription | None, formats: tuple[int, ...]
    ) -> ResultSink | None:
        return self.recorder.result_sink(stmt, description, formats)

    def open_copy(self, stmt: Statement, direction: str) -> ResultSink | None:
        return self.recorder.copy_sink(stmt, direction)

    def request_failed(self, request: str, text: str | None, error: ErrorResponse) -> None:
        self.recorder.request_error(request, text, error)

    def notice(self, stmt: Statement | None, notice: NoticeResponse) -> None:
        self.recorder.notice(stmt, notice)

    def notification(self, notification: NotificationResponse) -> None:
        self.recorder.notification(notification)

    def parameter(self, name: str, value: str) -> None:
        self.parameters[name] = value

    def ready(self) -> None:
        if self._settings_done:
            self._settings_in_flight -= self._settings_done
            self._settings_done.clear()

    def row_masker(self) -> RowMasker | None:
        return self._row_masker


_ALLOW_DURABLE = Verdict("allow", True, b"", {"decision": "allow"}, True)

# Texts in which a digit may be anything but an integer literal (strings, quoted names,
# dollar quotes, parameters, escapes, comments) are never reshaped.
_NOT_SHAPED = re.compile(r"""['"$\\]|--|/\*""")
_INTEGER = re.compile(r"(?<![\w.])[0-9]+(?![\w.])")


_SHAPE_SAFE = frozenset({"select"})


def _shape(text: str) -> str:
    """The key under which the allow of a plain read (classes exactly ``select``) is
    remembered: ``text`` with its integer literals as 0 (``... WHERE aid = 42`` and ``...
    WHERE aid = 7`` share one), for text with no quote, dollar, backslash or comment; else
    ``text`` itself. A plain read's classes, relations and functions never depend on an
    integer's value, so texts that differ only there (ORMs and pgbench in the simple
    protocol) are parsed once, not per statement. Other statements are remembered by their
    exact text: there a value can decide (``DELETE ... WHERE 3 > 2``, ``EXPLAIN (ANALYZE
    1)``). The statement's own text is what is recorded."""
    if _NOT_SHAPED.search(text):
        return text
    return _INTEGER.sub("0", text)


def _rejected(error: GrammarError) -> Verdict:
    """Text PostgreSQL's grammar rejects: the job gets the error the server would give
    (42601, the parser's message and position); it is recorded as that error, not as a
    policy decision. Never forwarded: the parser here and the server's must not disagree
    silently (fail closed)."""
    response = error_response("ERROR", SYNTAX_ERROR, error.message, position=str(error.position))
    record: dict[str, object] = {"decision": "syntax_error", "classes": ["unknown"]}
    return Verdict("reject", True, response, record)


def _statement_bytes(stmt: Statement) -> bytes:
    """The exact bytes an approval is about: the text, and for the extended protocol the
    parameters as sent (length-prefixed, so that no two statements share an encoding)."""
    parts = [stmt.text.encode()]
    for value in stmt.params:
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(len(value).to_bytes(4, "big") + value)
    return b"\x00".join(parts) if stmt.params else parts[0]


__all__ = ["SessionHooks"]
