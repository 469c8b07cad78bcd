"""Policy for one MySQL session: statements classified (sqlglot's MySQL dialect) and decided
through the :class:`~appliance.proxy.statement_policy.StatementPolicy` every SQL protocol
shares (denials answered with MySQL's ERR 1142, the shared detail in parentheses),
approvals, and the settings that change how the server reads text.

Where this sits: :class:`~appliance.proxy.mysql.relay.Relay` asks :meth:`SessionPolicy.
decide` for every COM_QUERY and COM_STMT_PREPARE text (a prepared statement's executions
carry the verdict of its PREPARE; one held for review is asked about at each execution).
Sans-IO.

Settings in flight (MySQL's versions of PostgreSQL's hazards): the server reads a
statement with the session's ``sql_mode`` (NO_BACKSLASH_ESCAPES makes ``'\\'`` a whole
string; ANSI_QUOTES makes ``"`` quote identifiers, in which a backslash escapes nothing)
and ``character_set_client`` (SJIS, GBK, BIG5, CP932, GB18030 hide a backslash inside a
character). The appliance reads both from the server at the start of the session and
again after every statement that may change them (``set``, ``prepare`` and ``unknown``
classes, COM_RESET_CONNECTION), with a query of its own sent right behind that
statement (the *probe*; its answer never reaches the job). Until the probe answers, text
with a backslash or a non-ASCII character is refused; a constant switch to an unsafe
character set is refused always (``encoding``); an unsafe character set read back ends
the session.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.policy import Classification, Decision, Policy
from appliance.policy._mysql import classify_mysql
from appliance.protocols.mysql.messages import Err
from appliance.proxy.commands import ApprovalAnswered
from appliance.proxy.mysql.recording import MySQLRecorder
from appliance.proxy.statement_policy import (
    CHANGES_NOTHING,
    ENCODING_RULE,
    SETTINGS_IN_FLIGHT_RULE,
    Decided,
    Denial,
    SettingsInFlight,
    StatementPolicy,
    integer_shape,
    read_otherwise,
    settings_in_flight_message,
    shape_safe,
)

ER_TABLEACCESS_DENIED = 1142  # "<command> command denied to user ..." (SQLSTATE 42000)
ER_SPECIFIC_ACCESS_DENIED = 1227
_MAY_CHANGE_SETTINGS = frozenset({"set", "prepare", "unknown"})
PROBE = b"SELECT @@SESSION.sql_mode, @@SESSION.character_set_client"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision as the relay needs it: ``action`` (allow, deny, review), ``enforced``
    (False in observe mode), ``error`` (the ERR for the job on deny), ``record`` (for the
    ledger), whether the statement may change how text is read (``changes_settings``),
    for review, the policy's ``decision`` the approval request is made from (the same for
    every execution of a prepared statement), and whether it may change the target, so that
    with ``ledger.durability: write-ahead`` its entry is on disk before it (or each of its
    executions) is sent (``durable``)."""

    action: str
    enforced: bool = True
    error: Err | None = None
    record: dict[str, Any] = field(default_factory=dict)
    changes_settings: bool = False
    decision: Decision | None = None
    durable: bool = False

    @property
    def blocks(self) -> bool:
        return self.enforced and self.action != "allow"


ALLOW = Verdict("allow", record={"decision": "allow"})


def denied(message: str) -> Err:
    """The ERR a denial is answered with: MySQL's own access-denied error (1142, 42000)."""
    return Err(ER_TABLEACCESS_DENIED, "42000", message)


def _err(denial: Denial) -> Err:
    return denied(f"{denial.message} ({denial.detail})")


def _verdict(decided: Decided, changes_settings: bool = False, durable: bool = False) -> Verdict:
    error = _err(decided.denial) if decided.denial is not None else None
    return Verdict(
        decided.action,
        decided.enforced,
        error,
        decided.record,
        changes_settings,
        decided.decision,
        durable,
    )


class SessionPolicy:
    """See the module docstring."""

    def __init__(
        self,
        *,
        policy: Policy | None,
        recorder: MySQLRecorder,
        target: str,
        database: str | None,
        account: str,
        identity: Mapping[str, Any],
        new_id: Callable[[], str],
        write_ahead: bool = False,
    ) -> None:
        self.recorder = recorder
        self.write_ahead = write_ahead  # ledger.durability: see Verdict.durable
        # Allow verdicts by (text or its shape, backslash escapes, database, whether it is a
        # shape): USE changes the database.
        self.statements: StatementPolicy[tuple[str, bool, str | None, bool], Verdict] = (
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
        self.owner = self.statements.owner
        self.sql_mode = ""
        self.charset = "utf8mb4"
        self.in_flight = SettingsInFlight()  # settings probes sent, not yet answered
        self._probes = 0

    @property
    def policy(self) -> Policy | None:
        return self.statements.policy

    @property
    def database(self) -> str | None:
        return self.statements.database

    @database.setter
    def database(self, name: str | None) -> None:
        self.statements.database = name

    # -- settings -----------------------------------------------------------------------------

    @property
    def backslash_escapes(self) -> bool:
        return "NO_BACKSLASH_ESCAPES" not in self.sql_mode.upper()

    def probe_sent(self) -> int:
        """A settings probe goes upstream; returns its key for :meth:`settings_read`."""
        self._probes += 1
        self.in_flight.sent(self._probes)
        return self._probes

    def settings_read(self, sql_mode: str, charset: str, probe: int | None = None) -> None:
        """The probe's answer (or the startup's)."""
        self.sql_mode = sql_mode
        self.charset = charset.lower()
        if probe is not None:
            self.in_flight.done(probe)

    # -- deciding -------------------------------------------------------------------------------

    def decide(self, text: str) -> Verdict:
        """The verdict on the statement ``text``."""
        if self.in_flight and read_otherwise(text, backslashes=True):
            return _verdict(
                self.statements.refuse(
                    None,
                    SETTINGS_IN_FLIGHT_RULE,
                    settings_in_flight_message("SET, PREPARE/EXECUTE"),
                )
            )
        if "\\" in text and "ANSI_QUOTES" in self.sql_mode.upper():
            return _verdict(
                self.statements.refuse(
                    None,
                    "(built-in) ansi-quotes-backslash",
                    "statement denied by the appliance: with sql_mode ANSI_QUOTES a backslash "
                    "may be read otherwise by the server than by the policy",
                )
            )
        if self.policy is None:
            classification = classify_mysql(text, backslash_escapes=self.backslash_escapes)
            return Verdict(
                "allow",
                record={"decision": "allow"},
                changes_settings=bool(classification.classes & _MAY_CHANGE_SETTINGS),
                durable=self._durable(classification),
            )
        key = (text, self.backslash_escapes, self.database, False)
        cached = self.statements.cached(key)
        if cached is not None:
            return cached
        shape = integer_shape(text, _UNSHAPED)
        if shape is not text:
            cached = self.statements.cached((shape, self.backslash_escapes, self.database, True))
            if cached is not None:
                return cached
        classification = classify_mysql(text, backslash_escapes=self.backslash_escapes)
        if "encoding" in classification.classes:
            return _verdict(
                self.statements.refuse(
                    classification,
                    ENCODING_RULE,
                    "statement denied by the appliance: the client character set may not become "
                    "one the server reads otherwise than the appliance (sjis, cp932, gbk, big5, "
                    "gb18030)",
                )
            )
        verdict = self._decide(classification)
        if verdict.action == "allow" and verdict.enforced:
            # Under its shape only what no integer can change (see shape_safe).
            if shape is not text and shape_safe(classification):
                key = (shape, self.backslash_escapes, self.database, True)
            self.statements.remember(key, verdict)
        return verdict

    def _decide(self, classification: Classification) -> Verdict:
        changes = bool(classification.classes & _MAY_CHANGE_SETTINGS)
        durable = self._durable(classification)
        return _verdict(self.statements.decide(classification), changes, durable)

    def _durable(self, classification: Classification) -> bool:
        return self.write_ahead and not classification.classes <= CHANGES_NOTHING

    # -- approvals --------------------------------------------------------------------------------

    def approval_fields(
        self, verdict: Verdict, text: str, params: list[bytes | None] | None
    ) -> dict[str, Any]:
        """The broker's ``new_request`` arguments for a statement held by ``verdict``."""
        assert verdict.decision is not None
        return self.statements.approval_fields(verdict.decision, text, params)

    def approval_answered(
        self, verdict: Verdict, answer: ApprovalAnswered
    ) -> tuple[bool, Err | None, dict[str, Any]]:
        """What the relay does with the answer: (approved, the job's ERR, the record)."""
        decision_id = str(verdict.record.get("decision_id", ""))
        result = self.statements.approval_answered(decision_id, answer)
        error = _err(result.denial) if result.denial is not None else None
        return result.approved, error, result.record


# Texts in which a digit may be anything but an integer literal (strings, quoted names,
# user variables, escapes, comments, executable comments) are never reshaped
# (integer_shape): their allow is remembered by their exact text.
_UNSHAPED = ("'", '"', "`", "$", "@", "\\", "--", "/*", "#")
