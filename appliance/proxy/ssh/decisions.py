"""Policy for one SSH session: what each operation the job asks for gets (allow, deny,
review), what the job is told, and what an approver is asked.

Where this sits: the SSH session core (:mod:`.core`) and its SFTP relay (:mod:`.sftp`)
classify an operation (:mod:`appliance.policy._ssh`) and call :meth:`SshDecider.decide`; a
``review`` becomes an ``AskApproval`` command whose fields :meth:`SshDecider.approval_fields`
makes, and whose answer :meth:`SshDecider.answered` turns into (approved, message, record).
The same signed notes as SQL: the approver signs the digest of the exact request bytes.
Sans-IO.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from appliance.approvals.request import identity_key
from appliance.policy import Classification, Decision, Policy, RequestContext
from appliance.proxy.commands import ApprovalAnswered

__all__ = ["ALLOWED", "SshDecider", "SshVerdict"]


@dataclass(frozen=True)
class SshVerdict:
    """What happens to one operation. ``message``: what the job is told when it is not let
    through; ``record``: the decision as the ledger keeps it (``decision``, ``rule``,
    ``decision_id`` when not a plain allow)."""

    action: str  # allow | deny | review
    enforced: bool = True
    record: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""
    decision: Decision | None = None

    @property
    def lets_through(self) -> bool:
        return self.action == "allow" or not self.enforced


ALLOWED = SshVerdict("allow", True, {"decision": "allow", "rule": "(no policy)"})


class SshDecider:
    """Decides the operations of one session (policy None: everything is allowed, and
    recorded as such)."""

    def __init__(
        self,
        policy: Policy | None,
        *,
        identity: Mapping[str, Any],
        target: str,
        account: str,
        new_id: Callable[[], str],
    ) -> None:
        self.policy = policy
        self.identity = identity
        self.target = target
        self.account = account
        self.new_id = new_id

    def decide(self, classification: Classification) -> SshVerdict:
        if self.policy is None:
            return ALLOWED
        decision = self.policy.decide(
            RequestContext(
                identity=self.identity,
                target=self.target,
                database=None,
                account=self.account,
                classification=classification,
            )
        )
        record: dict[str, Any] = dict(decision.to_record())
        record["decision"] = decision.action
        record["operations"] = [s.to_record() for s in classification.statements]
        if decision.action == "allow" and decision.enforced:
            keep = ("decision", "rule", "classes", "operations")
            return SshVerdict(
                "allow", True, {k: record[k] for k in keep if k in record}, "", decision
            )
        record["decision_id"] = self.new_id()
        message = ""
        if decision.action == "deny":
            message = f"denied by policy rule {decision.rule!r}"
            if decision.message and decision.message != message:
                message += f": {decision.message}"
            message += f" (appliance decision {record['decision_id']})"
        return SshVerdict(decision.action, decision.enforced, record, message, decision)

    def approval_fields(
        self, *, session: str, verdict: SshVerdict, text: str, exact: bytes
    ) -> dict[str, Any]:
        """The broker's ``new_request`` arguments: ``text`` (masked) is what the approver
        reads, ``exact`` the bytes the approval is for (their digest is signed)."""
        decision = verdict.decision
        assert decision is not None
        return {
            "session": session,
            "identity": identity_key(self.identity),
            "target": self.target,
            "account": self.account,
            "rule": decision.rule,
            "approvers": decision.approvers,
            "statement": text,
            "statement_sha256": hashlib.sha256(exact).hexdigest(),
            "window": timedelta(seconds=decision.window),
            "timeout": timedelta(seconds=decision.timeout),
        }

    @staticmethod
    def answered(verdict: SshVerdict, answer: ApprovalAnswered) -> tuple[bool, str, dict[str, Any]]:
        """(approved, the job's message when not, the record) for an approval's answer."""
        decision_id = verdict.record.get("decision_id", "")
        outcome = answer.outcome
        if answer.error is not None or outcome is None:
            message = (
                f"needs an approval, and none can be asked: {answer.error} "
                f"(appliance decision {decision_id})"
            )
            return False, message, {"outcome": "unavailable", "error": answer.error}
        record = {
            "request": answer.request,
            "outcome": outcome.verdict.value,
            "approver": outcome.approver,
        }
        if outcome.granted:
            return True, "", record
        return False, f"{outcome.message()} (appliance decision {decision_id})", record
