"""The relay's hooks for one session: policy decisions, approvals, recording, masking.

Where this sits: :class:`~appliance.proxy.pg.relay.Relay` calls these synchronously while it
walks the messages; they classify (pglast) and decide through the
:class:`~appliance.proxy.statement_policy.StatementPolicy` every SQL protocol shares, build
the job's error messages (the shared denial's words in an ErrorResponse, its detail as
HINT), queue approval requests (the session core, :mod:`appliance.proxy.pg.core`, asks for
them with a command and brings the answer back through :meth:`SessionHooks.
approval_answered`), and forward everything worth keeping to the
:class:`~appliance.proxy.pg.recording.SessionRecorder` (:class:`Recorder`). Sans-IO: no
await anywhere.

The entries of a statement that starts or finishes wait, in order, until the shell has
written the step's bytes (:meth:`SessionHooks.settle`, through the core's ``settle``): masking
and encoding them is then off the path of the statement and of its answer. A sync for the
write-ahead, an approval request, any other entry of the session, and a ledger that has
failed record what waits first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from appliance.masking import MaskCounts
from appliance.masking.postgres import ResponseMasker
from appliance.policy import (
    Classification,
    GrammarError,
    Policy,
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
from appliance.proxy.statement_policy import (
    CHANGES_NOTHING,
    ENCODING_RULE,
    SETTINGS_IN_FLIGHT_RULE,
    STAYS_IN_BLOCK,
    Decided,
    Denial,
    SettingsInFlight,
    StatementPolicy,
    integer_shape,
    read_otherwise,
    settings_in_flight_message,
    shape_safe,
)

# Classes of statements that may change session settings, directly or through code.
_MAY_CHANGE_SETTINGS = frozenset({"set", "function_call", "unknown", "prepare"})


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
        can_defer: Callable[[], bool] | None = None,
    ) -> None:
        self.recorder = recorder
        # Allow verdicts by (text, standard_conforming_strings, True if text is a shape: see
        # _shape), with whether the statement may change session settings (see _in_flight).
        self.statements: StatementPolicy[tuple[str, bool, bool], tuple[Verdict, bool]] = (
            StatementPolicy(
                policy,
                session=recorder.session,
                target=target,
                database=database,
                account=account,
                identity=identity,
                new_id=new_id,
                mask=recorder.mask,
            )
        )
        self._row_masker = row_masker
        self.parameters: dict[str, str] = dict(parameters or {})
        # Statements that may change how the server reads text (SET, RESET, set_config, or
        # a function, procedure or prepared statement that could call it) sent but not yet
        # followed by a ReadyForQuery (which comes after the server reported its settings):
        # until then, pipelined text that another setting would read otherwise is refused.
        self._in_flight = SettingsInFlight()
        # Statements held for approval, not yet asked for: (n, the request's fields, the
        # statement), drained by the session core (statement_policy.Holds).
        self.approvals: list[tuple[int, dict[str, Any], Statement]] = []
        # write_ahead: statements that may change the target wait for their entry to be
        # durable (ledger.durability); durable_requested: the relay asked for a sync.
        self.write_ahead = write_ahead
        self.durable_requested = False
        # can_defer (None: never): whether the recording of a started or finished statement
        # may wait for settle() -- the shell calls it once the step's bytes are written, so
        # masking and encoding the entries no longer delay the statement or its answer.
        # It answers False once the ledger has failed: then the entry is appended at once,
        # and its failure stops the statement before it is forwarded (fail closed).
        self._can_defer = can_defer
        self._deferred: list[tuple[Statement, MaskCounts | None, bool]] = []

    @property
    def policy(self) -> Policy | None:
        """The policy deciding this session's statements (one home: the shared
        :class:`~appliance.proxy.statement_policy.StatementPolicy`)."""
        return self.statements.policy

    @policy.setter
    def policy(self, policy: Policy | None) -> None:
        self.statements.policy = policy

    # -- deciding ----------------------------------------------------------------------------

    def decide(self, stmt: Statement) -> Verdict:
        if self.statements.policy is None:
            # No policy: everything passes, and is still written ahead when it may change
            # the target.
            if not self.write_ahead:
                return ALLOW
            if stmt.function_oid is not None:
                return _ALLOW_DURABLE
            scs = self.parameters.get("standard_conforming_strings", "on") == "on"
            classes = classify(stmt.text, standard_conforming_strings=scs).classes
            if classes <= CHANGES_NOTHING:
                return _ALLOW_IN_BLOCK if classes <= STAYS_IN_BLOCK else ALLOW
            return _ALLOW_DURABLE_IN_BLOCK if classes <= STAYS_IN_BLOCK else _ALLOW_DURABLE
        if stmt.function_oid is not None:
            # A fast-path call has no SQL text: it is classified by the function it calls.
            classification = classify_function_call(stmt.function_oid)
            if classification.classes & _MAY_CHANGE_SETTINGS:
                self._in_flight.sent(stmt.n)
            what = f"fast-path call of function {', '.join(sorted(classification.functions))}"
            return self._verdict(self.statements.decide(classification, what=what), classification)
        # With standard_conforming_strings off, backslashes escape quotes: the classifier
        # must read the text as the server will (else a quote could hide a statement).
        scs = self.parameters.get("standard_conforming_strings", "on") == "on"
        text = stmt.text
        # Read otherwise: backslashes (standard_conforming_strings off) or non-ASCII
        # characters (an ASCII-unsafe client encoding); pure ASCII text reads the same.
        unsure = bool(self._in_flight) and read_otherwise(text, backslashes=scs)
        shape = _shape(text)
        cached = None
        if not unsure:
            cached = self.statements.cached((text, scs, False))
            if cached is None and shape is not text:
                cached = self.statements.cached((shape, scs, True))
        if cached is not None:
            verdict, changes_settings = cached
            if changes_settings:
                self._in_flight.sent(stmt.n)
            return verdict
        classification = classify(text, standard_conforming_strings=scs)
        if classification.syntax_error is not None:
            return _rejected(classification.syntax_error)
        if unsure:
            # A statement in flight may have turned standard_conforming_strings off or
            # switched the client encoding: the server could read another statement than
            # the one classified here.
            return self._refuse(
                classification,
                SETTINGS_IN_FLIGHT_RULE,
                settings_in_flight_message("SET, a function call"),
            )
        if "encoding" in classification.classes:
            return self._refuse(
                classification,
                ENCODING_RULE,
                "statement denied by the appliance: the client encoding may not become one "
                "the server reads otherwise than the appliance (SJIS, BIG5, GBK, UHC, GB18030, "
                "JOHAB)",
            )
        changes_settings = bool(classification.classes & _MAY_CHANGE_SETTINGS)
        if changes_settings:
            self._in_flight.sent(stmt.n)
        verdict = self._verdict(self.statements.decide(classification), classification)
        if verdict.action == "allow" and verdict.enforced:
            # Under its shape only what no integer can change (see shape_safe).
            if shape is not text and shape_safe(classification):
                self.statements.remember((shape, scs, True), (verdict, changes_settings))
            else:
                self.statements.remember((text, scs, False), (verdict, changes_settings))
        return verdict

    def _verdict(self, decided: Decided, classification: Classification) -> Verdict:
        """The shared decision as PostgreSQL's verdict; written ahead (``durable``) when
        the statement may change the target."""
        error = _error(decided.denial) if decided.denial is not None else b""
        classes = classification.classes
        durable = self.write_ahead and not classes <= CHANGES_NOTHING
        in_block = classes <= STAYS_IN_BLOCK
        return Verdict(
            decided.action, decided.enforced, error, decided.record, durable, decided.decision,
            in_block,
        )  # fmt: skip

    def _refuse(self, classification: Classification, rule: str, message: str) -> Verdict:
        """A denial built into the appliance, whatever the policy (observe mode included):
        statements the server could read otherwise than the policy did."""
        decided = self.statements.refuse(classification, rule, message)
        assert decided.denial is not None
        return Verdict("deny", True, _error(decided.denial), decided.record)

    # -- approvals ---------------------------------------------------------------------------

    def request_approval(self, stmt: Statement) -> None:
        """Queue the request; the session core turns it into an ``AskApproval`` command."""
        self.settle()
        self.approvals.append((stmt.n, self.approval_fields(stmt), stmt))

    def request_durable(self) -> None:
        """Note the relay's sync request; the session core makes it an ``AwaitDurable``.
        The entries deferred so far are appended first: the sync must cover them."""
        self.settle()
        self.durable_requested = True

    def approval_fields(self, stmt: Statement) -> dict[str, Any]:
        """The broker's ``new_request`` arguments for ``stmt`` (the text masked; the digest
        of the exact bytes the approver signs for: the text, and for the extended protocol
        the parameters as sent)."""
        decision = stmt.verdict.decision
        assert decision is not None
        return self.statements.approval_fields(decision, stmt.text, stmt.params)

    def approval_answered(
        self, stmt: Statement, answer: ApprovalAnswered
    ) -> tuple[bool, bytes, dict[str, Any]]:
        """What the relay does with the answer: (approved, the job's error, the record)."""
        decision_id = str(stmt.verdict.record.get("decision_id", ""))
        result = self.statements.approval_answered(decision_id, answer)
        error = _error(result.denial) if result.denial is not None else b""
        return result.approved, error, result.record

    # -- recording ---------------------------------------------------------------------------

    def statement_started(self, stmt: Statement) -> None:
        can_defer = self._can_defer
        if can_defer is not None and can_defer():
            self._deferred.append((stmt, None, False))
            return
        self.settle()
        self.recorder.statement(stmt)

    def statement_finished(self, stmt: Statement) -> None:
        self._in_flight.answered(stmt.n)
        masker = self._row_masker
        to_job = masker.take_counts() if isinstance(masker, ResponseMasker) else None
        can_defer = self._can_defer
        if can_defer is not None and can_defer():
            self._deferred.append((stmt, to_job, True))
            return
        self.settle()
        self.recorder.response(stmt, masked_to_job=to_job)

    def settle(self) -> None:
        """Record the deferred statements and responses, in the order they came. Every other
        entry of the session goes through here first, so the ledger's order is the
        session's. (A statement's fields are settled by the time it started or finished:
        what its entries hold is what they would have held at once.)"""
        deferred = self._deferred
        if not deferred:
            return
        self._deferred = []
        recorder = self.recorder
        for i, (stmt, to_job, finished) in enumerate(deferred):
            try:
                if finished:
                    recorder.response(stmt, masked_to_job=to_job)
                else:
                    recorder.statement(stmt)
            except BaseException:
                # The rest stays deferred: the session's end records it, if it can.
                self._deferred = deferred[i + 1 :] + self._deferred
                raise

    def open_result(
        self, stmt: Statement, description: RowDescription | None, formats: tuple[int, ...]
    ) -> ResultSink | None:
        return self.recorder.result_sink(stmt, description, formats)

    def open_copy(self, stmt: Statement, direction: str) -> ResultSink | None:
        return self.recorder.copy_sink(stmt, direction)

    def request_failed(self, request: str, text: str | None, error: ErrorResponse) -> None:
        self.settle()
        self.recorder.request_error(request, text, error)

    def notice(self, stmt: Statement | None, notice: NoticeResponse) -> None:
        self.settle()
        self.recorder.notice(stmt, notice)

    def notification(self, notification: NotificationResponse) -> None:
        self.settle()
        self.recorder.notification(notification)

    def parameter(self, name: str, value: str) -> None:
        self.parameters[name] = value

    def ready(self) -> None:
        self._in_flight.settle()

    def row_masker(self) -> RowMasker | None:
        return self._row_masker


def _error(denial: Denial) -> bytes:
    """A denial as the job sees it: SQLSTATE 42501, the words, the detail as HINT."""
    return error_response("ERROR", INSUFFICIENT_PRIVILEGE, denial.message, hint=denial.detail)


_ALLOW_DURABLE = Verdict("allow", True, b"", {"decision": "allow"}, True)
_ALLOW_IN_BLOCK = Verdict("allow", True, b"", {"decision": "allow"}, in_block=True)
_ALLOW_DURABLE_IN_BLOCK = Verdict("allow", True, b"", {"decision": "allow"}, True, in_block=True)

# Texts in which a digit may be anything but an integer literal (strings, quoted names,
# dollar quotes, parameters, escapes, comments) are never reshaped (integer_shape).
_UNSHAPED = ("'", '"', "$", "\\", "--", "/*")
# The same, as one pattern (the tests hold the shape to it).
_NOT_SHAPED = re.compile(r"""['"$\\]|--|/\*""")


def _shape(text: str) -> str:
    """The key under which the allow of a statement :func:`shape_safe` accepts is
    remembered: ``text`` with its integer literals (up to 9 digits) as 0 (``... WHERE aid =
    42`` and ``... WHERE aid = 7`` share one), for text with no quote, dollar, backslash or
    comment; else ``text`` itself. Texts of one shape differ only in the values of integer
    tokens, so their parse trees differ only in those constants; where the classifier reads
    none of them, their classes, relations and functions are the same, and texts that differ
    only there (ORMs and pgbench in the simple protocol: its UPDATEs and INSERT too) are
    parsed once, not per statement. Other statements are remembered by their exact text:
    there a value can decide (``DELETE ... WHERE 3 > 2``, ``EXPLAIN (ANALYZE 1)``). The
    statement's own text is what is recorded."""
    return integer_shape(text, _UNSHAPED)


def _rejected(error: GrammarError) -> Verdict:
    """Text PostgreSQL's grammar rejects: the job gets the error the server would give
    (42601, the parser's message and position); it is recorded as that error, not as a
    policy decision. Never forwarded: the parser here and the server's must not disagree
    silently (fail closed)."""
    response = error_response("ERROR", SYNTAX_ERROR, error.message, position=str(error.position))
    record: dict[str, object] = {"decision": "syntax_error", "classes": ["unknown"]}
    return Verdict("reject", True, response, record)


__all__ = ["SessionHooks"]
