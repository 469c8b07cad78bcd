"""Policy for one MySQL session: statements classified and decided, approvals, the
settings that change how the server reads text, and KILL routing.

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

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from appliance.approvals.request import identity_key
from appliance.policy import Classification, Decision, Policy, RequestContext
from appliance.policy._mysql import classify_mysql
from appliance.protocols.mysql.messages import Err
from appliance.proxy.commands import ApprovalAnswered
from appliance.proxy.mysql.recording import MySQLRecorder

ER_TABLEACCESS_DENIED = 1142  # "<command> command denied to user ..." (SQLSTATE 42000)
ER_SPECIFIC_ACCESS_DENIED = 1227
_MAY_CHANGE_SETTINGS = frozenset({"set", "prepare", "unknown"})
_ALLOWED_CACHE = 4096
PROBE = b"SELECT @@SESSION.sql_mode, @@SESSION.character_set_client"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision as the relay needs it: ``action`` (allow, deny, review), ``enforced``
    (False in observe mode), ``error`` (the ERR for the job on deny), ``record`` (for the
    ledger) and whether the statement may change how text is read (``changes_settings``)."""

    action: str
    enforced: bool = True
    error: Err | None = None
    record: dict[str, Any] = field(default_factory=dict)
    changes_settings: bool = False

    @property
    def blocks(self) -> bool:
        return self.enforced and self.action != "allow"


ALLOW = Verdict("allow", record={"decision": "allow"})


def denied(message: str) -> Err:
    """The ERR a denial is answered with: MySQL's own access-denied error (1142, 42000)."""
    return Err(ER_TABLEACCESS_DENIED, "42000", message)


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
    ) -> None:
        self.policy = policy
        self.recorder = recorder
        self.target = target
        self.database = database
        self.account = account
        self.identity = identity
        self.new_id = new_id
        self.owner = identity_key(identity)
        self.sql_mode = ""
        self.charset = "utf8mb4"
        self.settings_in_flight = 0
        self._decisions: dict[int, Decision] = {}
        self._allowed: dict[tuple[str, bool, str | None], Verdict] = {}

    # -- settings -----------------------------------------------------------------------------

    @property
    def backslash_escapes(self) -> bool:
        return "NO_BACKSLASH_ESCAPES" not in self.sql_mode.upper()

    def settings_read(self, sql_mode: str, charset: str) -> None:
        """The probe's answer (or the startup's)."""
        self.sql_mode = sql_mode
        self.charset = charset.lower()

    # -- deciding -------------------------------------------------------------------------------

    def decide(self, text: str, n: int) -> Verdict:
        """The verdict on ``text`` (the n-th statement of the session)."""
        risky_text = "\\" in text or not text.isascii()
        if self.settings_in_flight and risky_text:
            return self._refuse(
                None,
                "(built-in) settings-in-flight",
                "statement denied by the appliance: it holds a backslash or non-ASCII text and "
                "was sent before the server answered a statement that may change how text is "
                "read (SET, PREPARE/EXECUTE); send it after that one completes",
            )
        if "\\" in text and "ANSI_QUOTES" in self.sql_mode.upper():
            return self._refuse(
                None,
                "(built-in) ansi-quotes-backslash",
                "statement denied by the appliance: with sql_mode ANSI_QUOTES a backslash "
                "may be read otherwise by the server than by the policy",
            )
        if self.policy is None:
            classification = classify_mysql(text, backslash_escapes=self.backslash_escapes)
            return Verdict(
                "allow",
                record={"decision": "allow"},
                changes_settings=bool(classification.classes & _MAY_CHANGE_SETTINGS),
            )
        key = (text, self.backslash_escapes, self.database)
        cached = self._allowed.get(key)
        if cached is not None:
            return cached
        classification = classify_mysql(text, backslash_escapes=self.backslash_escapes)
        if "encoding" in classification.classes:
            return self._refuse(
                classification,
                "(built-in) ascii-safe-encoding",
                "statement denied by the appliance: the client character set may not become one "
                "the server reads otherwise than the appliance (sjis, cp932, gbk, big5, gb18030)",
            )
        verdict = self._decide(classification, n)
        if verdict.action == "allow" and verdict.enforced and len(self._allowed) < _ALLOWED_CACHE:
            self._allowed[key] = verdict
        return verdict

    def _decide(self, classification: Classification, n: int) -> Verdict:
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
        changes = bool(classification.classes & _MAY_CHANGE_SETTINGS)
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
            keep = ("decision", "rule", "classes", "reads", "writes")
            slim = {k: record[k] for k in keep if k in record}
            if len(classification.statements) > 1:
                slim["statements"] = record["statements"]
            return Verdict("allow", True, None, slim, changes)
        decision_id = self.new_id()
        record["decision_id"] = decision_id
        self._decisions[n] = decision
        error = None
        if decision.action == "deny":
            message = f"statement denied by policy rule {decision.rule!r}"
            if decision.message and decision.message != f"denied by policy rule {decision.rule!r}":
                message += f": {decision.message}"
            message += f" (appliance decision {decision_id}; classes: {', '.join(sorted(classification.classes))})"
            error = denied(message)
        return Verdict(decision.action, decision.enforced, error, record, changes)

    def _refuse(self, classification: Classification | None, rule: str, message: str) -> Verdict:
        decision_id = self.new_id()
        record: dict[str, Any] = {
            "decision": "deny",
            "rule": rule,
            "enforced": True,
            "decision_id": decision_id,
            "classes": sorted(classification.classes) if classification else [],
        }
        return Verdict(
            "deny", True, denied(f"{message} (appliance decision {decision_id})"), record
        )

    # -- approvals --------------------------------------------------------------------------------

    def approval_fields(
        self, n: int, text: str, params: list[bytes | None] | None
    ) -> dict[str, Any]:
        decision = self._decisions[n]
        exact = text.encode("utf-8", "surrogateescape")
        if params:
            exact += b"".join(
                b"\x00" + (b"\xff\xff\xff\xff" if v is None else len(v).to_bytes(4, "big") + v)
                for v in params
            )
        return {
            "session": self.recorder.session,
            "identity": self.owner,
            "target": self.target,
            "account": self.account,
            "rule": decision.rule,
            "approvers": decision.approvers,
            "statement": self.recorder.mask(text),
            "statement_sha256": hashlib.sha256(exact).hexdigest(),
            "window": timedelta(seconds=decision.window),
            "timeout": timedelta(seconds=decision.timeout),
        }

    def approval_answered(
        self, n: int, decision_id: str, answer: ApprovalAnswered
    ) -> tuple[bool, Err | None, dict[str, Any]]:
        self._decisions.pop(n, None)
        outcome = answer.outcome
        if answer.error is not None or outcome is None:
            return (
                False,
                denied(
                    f"statement needs an approval, and none can be asked: {answer.error} "
                    f"(appliance decision {decision_id})"
                ),
                {"outcome": "unavailable", "error": answer.error},
            )
        record = {
            "request": answer.request,
            "outcome": outcome.verdict.value,
            "approver": outcome.approver,
        }
        if outcome.granted:
            return True, None, record
        return (
            False,
            denied(
                f"{outcome.message()} (appliance decision {decision_id}; approval request {answer.request})"
            ),
            record,
        )
