"""What every SQL protocol's per-statement policy shares: the decision and its ledger record,
the denial's words, the built-in refusals, the approval request and what its answer means,
the cache of allowed texts, and the statements in flight that may change how text is read.

Where this sits: a SQL protocol's hooks (PostgreSQL's :mod:`appliance.proxy.pg.hooks`,
MySQL's :mod:`appliance.proxy.mysql.hooks`) classify a statement with their own grammar and
call :meth:`StatementPolicy.decide`; they wrap what comes back (:class:`Decided`, whose
:class:`Denial` is the protocol-neutral text of a refusal) in their own error message
(PostgreSQL's ErrorResponse with the detail as HINT, MySQL's ERR 1142 with the detail in
parentheses) and keep what differs between the protocols to themselves: which classes may
change settings, how a statement's text would be read otherwise, how the settings are
read back. Sans-IO: no await, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, Generic, TypeVar

from appliance.approvals.request import identity_key, statement_digest
from appliance.policy import Classification, Decision, Policy, RequestContext
from appliance.proxy.commands import ApprovalAnswered, AskApproval, Command, PauseReading

__all__ = [
    "ALLOWED_CACHE",
    "CHANGES_NOTHING",
    "ENCODING_RULE",
    "SETTINGS_IN_FLIGHT_RULE",
    "STAYS_IN_BLOCK",
    "Answer",
    "Decided",
    "Denial",
    "Holds",
    "SettingsInFlight",
    "StatementPolicy",
    "integer_shape",
    "read_otherwise",
    "settings_in_flight_message",
    "shape_safe",
    "statement_bytes",
]

# Distinct statement texts whose allow is remembered per session (then forgotten at once):
# a prepared or repeated statement hits it; texts with literals never repeat, and 200
# sessions must not keep thousands each (issue 13: memory).
ALLOWED_CACHE = 64
SETTINGS_IN_FLIGHT_RULE = "(built-in) settings-in-flight"
ENCODING_RULE = "(built-in) ascii-safe-encoding"
# Classes that change nothing on the target (reads, session settings, transaction control,
# locks, notifications): with ledger.durability write-ahead, a statement with any other
# class is on disk before it is sent.
CHANGES_NOTHING = frozenset(
    {"select", "copy_to", "explain", "set", "transaction", "listen_notify", "lock"}
)
# Classes whose effects stay inside an open transaction block: rows and locks a ROLLBACK
# undoes, settings, notifications sent at COMMIT. A statement with only these classes cannot
# end the block nor reach outside the server (functions with side effects, files, programs,
# and everything unknown have classes of their own), so inside a block its write-ahead may
# wait for the statement that may end the block (PostgreSQL: Relay._write_ahead_of).
STAYS_IN_BLOCK = frozenset(
    {
        "select", "copy_to", "explain", "set", "listen_notify", "lock",
        "insert", "update", "delete", "merge", "copy_from", "truncate",
        "delete_without_where", "update_without_where",
    }
)  # fmt: skip
_SLIM = ("decision", "rule", "classes", "reads", "writes")

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a statement is not run, for the protocol's own error: ``message`` (the main text)
    and ``detail`` (the appliance decision id, classes, approval request: PostgreSQL's HINT,
    in parentheses after MySQL's message)."""

    message: str
    detail: str


@dataclass(frozen=True, slots=True)
class Decided:
    """A policy decision on one statement, protocol-neutral.

    ``action``: allow, deny or review; ``enforced``: False in observe mode; ``record``: what
    the ledger keeps (JSON-safe; short for an enforced allow); ``denial``: for deny, the
    words of the job's error; ``decision``: for review, what the approval request needs.
    """

    action: str
    enforced: bool
    record: dict[str, Any]
    denial: Denial | None = None
    decision: Decision | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """What an approval's answer means for the held statement: run it (``approved``) or
    answer the job with ``denial``; ``record`` goes into the response entry."""

    approved: bool
    denial: Denial | None
    record: dict[str, Any] = field(default_factory=dict)


def statement_bytes(text: str, params: Sequence[bytes | None] | None = None) -> bytes:
    """The exact bytes an approval is about (its digest is :func:`~appliance.approvals.
    request.statement_digest` of them): the text as UTF-8 (lone surrogates kept as the bytes
    they stand for) when it has no parameters and no NUL; else a NUL, the text with its
    4-byte big-endian length, then each parameter as its length and value (``ff ff ff ff``
    for NULL). Unambiguous: no two statements, or a statement and its parameters, share an
    encoding (a text that holds a NUL, which MySQL allows, cannot pass for parameters)."""
    raw = text.encode("utf-8", "surrogateescape")
    if not params and b"\x00" not in raw:
        return raw
    out = [b"\x00", len(raw).to_bytes(4, "big"), raw]
    for value in params or ():
        out.append(b"\xff\xff\xff\xff" if value is None else len(value).to_bytes(4, "big") + value)
    return b"".join(out)


def read_otherwise(text: str, *, backslashes: bool) -> bool:
    """Whether a setting still in flight could make the server read ``text`` otherwise than
    the classifier did: non-ASCII text (an ASCII-unsafe client encoding hides a backslash or
    quote inside a character) or, when ``backslashes`` may change meaning, a backslash."""
    return (backslashes and "\\" in text) or not text.isascii()


def settings_in_flight_message(examples: str) -> str:
    """The words of the built-in refusal of text sent behind a statement that may change how
    text is read (``examples``: such statements in the protocol's terms)."""
    return (
        "statement denied by the appliance: it holds a backslash or non-ASCII text and was "
        "sent before the server answered a statement that may change how text is read "
        f"({examples}); send it after that one completes"
    )


class SettingsInFlight:
    """Statements (or probes) sent that may change how the server reads text, whose effect
    the appliance has not read back yet. ``sent(key)`` when one goes upstream;
    ``answered(key)`` when its answer arrived, effective at the next ``settle()`` (PostgreSQL:
    the ReadyForQuery after which the server has reported its settings); ``done(key)`` when
    it is over at once (MySQL: the settings probe answered)."""

    __slots__ = ("_answered", "_open")

    def __init__(self) -> None:
        self._open: set[int] = set()
        self._answered: set[int] = set()

    def __bool__(self) -> bool:
        return bool(self._open)

    def __contains__(self, key: int) -> bool:
        return key in self._open

    def sent(self, key: int) -> None:
        self._open.add(key)

    def answered(self, key: int) -> None:
        if key in self._open:
            self._answered.add(key)

    def settle(self) -> None:
        if self._answered:
            self._open -= self._answered
            self._answered.clear()

    def done(self, key: int) -> None:
        self._open.discard(key)
        self._answered.discard(key)


class StatementPolicy(Generic[K, V]):
    """The policy of one session's statements, for any SQL protocol.

    ``mask`` masks text for the approver (the recorder's :meth:`mask`); ``new_id`` makes
    decision ids; ``database`` may change during a session (MySQL's ``USE``). The allowed
    cache maps a protocol's key (the text and what changes its reading) to its verdict: a
    decision is a pure function of the classification and of what is fixed for the session,
    so a statement seen again is not classified again; only allows are kept (a deny or a
    review carries a new decision id each time).
    """

    def __init__(
        self,
        policy: Policy | None,
        *,
        session: str,
        target: str,
        database: str | None,
        account: str,
        identity: Mapping[str, Any],
        new_id: Callable[[], str],
        mask: Callable[[str], str],
    ) -> None:
        self.policy = policy
        self.session = session
        self.target = target
        self.database = database
        self.account = account
        self.identity = identity
        self.owner = identity_key(identity)
        self.new_id = new_id
        self.mask = mask
        self._allowed: dict[K, V] = {}

    # -- the allowed cache --------------------------------------------------------------------

    def cached(self, key: K) -> V | None:
        return self._allowed.get(key)

    def remember(self, key: K, value: V) -> None:
        if len(self._allowed) >= ALLOWED_CACHE:
            self._allowed.clear()
        self._allowed[key] = value

    # -- deciding -------------------------------------------------------------------------------

    def decide(self, classification: Classification, *, what: str = "statement") -> Decided:
        """The policy's decision on a statement classified as ``classification`` (``what``
        names it in a denial: "statement", "fast-path call of function f"). Needs a policy."""
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
        if classification.parse_error is not None:
            record["parse_error"] = classification.parse_error
        if decision.action == "allow" and decision.enforced:
            # The common case, on every statement entry: keep it short. The per-statement
            # breakdown matters only when a string holds several statements.
            slim = {k: record[k] for k in _SLIM if k in record}
            if len(classification.statements) > 1:
                slim["statements"] = record["statements"]
            return Decided("allow", True, slim)
        decision_id = self.new_id()
        record["decision_id"] = decision_id
        denial = None
        if decision.action == "deny":
            message = f"{what} denied by policy rule {decision.rule!r}"
            # The policy's own message when the rule has none repeats the line above.
            if decision.message and decision.message != f"denied by policy rule {decision.rule!r}":
                message += f": {decision.message}"
            classes = ", ".join(sorted(classification.classes))
            denial = Denial(message, f"appliance decision {decision_id}; classes: {classes}")
        return Decided(decision.action, decision.enforced, record, denial, decision)

    def refuse(self, classification: Classification | None, rule: str, message: str) -> Decided:
        """A denial built into the appliance, whatever the policy (observe mode included):
        statements the server could read otherwise than the policy did."""
        decision_id = self.new_id()
        record: dict[str, Any] = {
            "decision": "deny",
            "rule": rule,
            "enforced": True,
            "decision_id": decision_id,
            "classes": sorted(classification.classes) if classification is not None else [],
        }
        return Decided("deny", True, record, Denial(message, f"appliance decision {decision_id}"))

    # -- approvals ------------------------------------------------------------------------------

    def approval_fields(
        self, decision: Decision, text: str, params: Sequence[bytes | None] | None = None
    ) -> dict[str, Any]:
        """The broker's ``new_request`` arguments for a statement held by ``decision``: the
        text masked, the digest of the exact bytes the approver signs for."""
        return {
            "session": self.session,
            "identity": self.owner,
            "target": self.target,
            "account": self.account,
            "rule": decision.rule,
            "approvers": decision.approvers,
            "statement": self.mask(text),
            "statement_sha256": statement_digest(statement_bytes(text, params)),
            "window": timedelta(seconds=decision.window),
            "timeout": timedelta(seconds=decision.timeout),
        }

    def approval_answered(self, decision_id: str, answer: ApprovalAnswered) -> Answer:
        """What the answer to an approval request means for the statement held by the
        decision ``decision_id``."""
        outcome = answer.outcome
        if answer.error is not None or outcome is None:
            return Answer(
                False,
                Denial(
                    f"statement needs an approval, and none can be asked: {answer.error}",
                    f"appliance decision {decision_id}",
                ),
                {"outcome": "unavailable", "error": answer.error},
            )
        record = {
            "request": answer.request,
            "outcome": outcome.verdict.value,
            "approver": outcome.approver,
        }
        if outcome.granted:
            return Answer(True, None, record)
        return Answer(
            False,
            Denial(
                outcome.message(),
                f"appliance decision {decision_id}; approval request {answer.request}",
            ),
            record,
        )


class Holds(Generic[T]):
    """The session core's side of statements held for approval, for any SQL protocol.

    The relay (or its hooks) queues ``(key, fields, statement)`` for each statement it
    holds; :meth:`commands` turns them into :class:`~appliance.proxy.commands.AskApproval`
    commands (``fields``: the broker's arguments) and pauses the job's reading while a
    statement is held; :meth:`answered` gives back the statement an
    :class:`~appliance.proxy.commands.ApprovalAnswered` is about (None for an answer to
    nothing asked, or asked twice); :meth:`drain` marks the session as draining, to end
    once nothing is in flight or a statement is held (the core ends it).
    """

    __slots__ = ("_asked", "draining", "held")

    def __init__(self) -> None:
        self._asked: dict[int, T] = {}
        self.held = False
        self.draining = False

    def commands(
        self, requests: list[tuple[int, dict[str, Any], T]], held: bool
    ) -> list[Command] | None:
        """The commands for the requests queued (the list is emptied) and a change of the
        hold; None when there is nothing to do (the hot path)."""
        if not requests and held is self.held and not self.draining:
            return None
        out: list[Command] = []
        for key, fields, item in requests:
            self._asked[key] = item
            out.append(AskApproval(key, fields))
        requests.clear()
        if held is not self.held:
            self.held = held
            out.append(PauseReading("job", "hold", held))
        return out

    def answered(self, key: int) -> T | None:
        return self._asked.pop(key, None)

    def drain(self) -> list[Command]:
        self.draining = True
        return [PauseReading("job", "drain", True)]


# -- statement shapes ------------------------------------------------------------------------

# At most 9 digits: always an integer token to PostgreSQL's and MySQL's lexers (a literal beyond
# int4 becomes a numeric one, which some places of PostgreSQL's grammar refuse); longer ones
# stay as they are.
_INTEGER = re.compile(r"(?<![\w.])[0-9]{1,9}(?![\w.])")
# The same for ASCII text, as bytes: the bytes that \w or . match (Final: compiled, a C
# variable, not a lookup in the module's dict per byte).
_WORD_OR_DOT: Final = bytes(1 if chr(b).isalnum() or chr(b) in "_." else 0 for b in range(128))


def integer_shape(text: str, unshaped: tuple[str, ...]) -> str:
    """``text`` with its integer literals (up to 9 digits, not part of a word, a name or a
    decimal) as 0, or ``text`` itself (the same object: the caller tells "no shape" by
    identity) when it has none or holds any of ``unshaped``: the protocol's marks of text
    where a digit may be something else than an integer (strings, quoted names, parameters,
    escapes, comments). The key under which a protocol's hooks remember the allow of a
    statement whose classes no integer's value can change (:func:`shape_safe`): texts of
    one shape differ only in the values of integer tokens."""
    for mark in unshaped:
        if mark in text:
            return text
    if not text.isascii():
        return _INTEGER.sub("0", text)
    # ASCII: the same as the pattern, by hand (it runs on every statement of the simple
    # protocol; the pattern costs several times more).
    # One pass over the bytes: compiled, indexing bytes is native (no method call per run).
    data = text.encode("ascii")
    n = len(data)
    pieces: list[bytes] = []
    done = 0  # data[:done] is in pieces
    i = 0
    while i < n:
        if not 48 <= data[i] <= 57:
            i += 1
            continue
        j = i + 1
        while j < n and 48 <= data[j] <= 57:
            j += 1
        if (
            j - i <= 9
            and (i == 0 or not _WORD_OR_DOT[data[i - 1]])
            and (j == n or not _WORD_OR_DOT[data[j]])
        ):
            pieces.append(data[done:i])
            pieces.append(b"0")
            done = j
        i = j
    if not pieces:
        return text
    pieces.append(data[done:])
    return b"".join(pieces).decode("ascii")


# Classes whose texts of one shape share a remembered allow (see shape_safe).
_SHAPE_SAFE = frozenset({"select", "insert", "update", "delete"})


def shape_safe(classification: Classification) -> bool:
    """May ``classification``'s allow stand for every text of the same shape
    (:func:`integer_shape`)? Only for reads and plain row changes (classes within
    ``select``, ``insert``, ``update``, ``delete``: no EXPLAIN, whose ANALYZE 1 runs its
    statement and ANALYZE 0 does not; no COPY, SET or call) whose classes no integer's value
    can change: an UPDATE or DELETE whose WHERE compares numbers otherwise than a column
    with a constant is remembered by its exact text (``WHERE 3 > 2`` keeps every row,
    ``WHERE 2 > 3`` none, MySQL's ``WHERE 1 = 1`` against ``WHERE 1 = 2``: each protocol's
    classifier sets ``Classification.numbers_decide``)."""
    classes = classification.classes
    return bool(classes) and classes <= _SHAPE_SAFE and not classification.numbers_decide
