"""An approval request: a held statement waiting for a signed decision, and its wire form.

The same JSON object (:meth:`ApprovalRequest.to_dict`) is the ``approval.requested`` ledger
data, the webhook payload and the local socket's answer, so what an approver is shown is
what is recorded. It never holds a secret: the statement is masked by the caller before the
request is made; ``statement_sha256`` is the digest of the exact statement bytes the client
sent (:func:`statement_digest`), which binds a decision to that one statement.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from appliance.approvals.clock import format_time, parse_time
from appliance.approvals.decision import REQUEST_ID_RE
from appliance.approvals.errors import ApprovalsProtocolError

__all__ = ["ApprovalRequest", "RequestState", "RequestStatus", "statement_digest"]


def statement_digest(statement: bytes) -> str:
    """Lowercase hex SHA-256 of the exact statement bytes, as a decision names it."""
    return hashlib.sha256(statement).hexdigest()


# The identity of a flow eBPF could not attribute (DESIGN.md); such flows never share a window.
UNATTRIBUTED = "unattributed"


def identity_key(identity: Mapping[str, Any]) -> str:
    """A stable string naming who runs a session, for approval windows and messages: the CI
    job, else the uid and executable, else :data:`UNATTRIBUTED` (never shares a window).

    A job whose CI identity a token verified (``ci-verified:``) never shares a window with
    one that only claims the same values in its environment (``ci:``): a claimed identity
    cannot reuse an approval granted to the verified one."""
    if identity.get("source") != "ebpf":
        return UNATTRIBUTED
    ci = identity.get("ci") or {}
    if ci:
        parts = [
            str(ci.get(k, "")) for k in ("provider", "repository", "workflow", "job", "run_id")
        ]
        token = identity.get("token")
        verified = isinstance(token, Mapping) and token.get("status") == "verified"
        return ("ci-verified:" if verified else "ci:") + "/".join(parts)
    return f"uid:{identity.get('uid')}:exe:{identity.get('exe')}"


@dataclass(frozen=True)
class ApprovalRequest:
    """One held statement. ``window`` is how long a grant also covers identical statements
    (0: exactly this one); see :class:`~appliance.approvals.broker.Broker`."""

    id: str
    session: str
    identity: str
    target: str
    account: str
    rule: str
    approvers: tuple[str, ...]
    statement: str
    statement_sha256: str
    created: datetime
    expires: datetime
    window: timedelta = timedelta(0)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields: strings, ints and a list of strings (no floats)."""
        return {
            "id": self.id,
            "session": self.session,
            "identity": self.identity,
            "target": self.target,
            "account": self.account,
            "rule": self.rule,
            "approvers": list(self.approvers),
            "statement": self.statement,
            "statement_sha256": self.statement_sha256,
            "created": format_time(self.created),
            "expires": format_time(self.expires),
            "window_ms": self.window // timedelta(milliseconds=1),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ApprovalRequest:
        """Inverse of :meth:`to_dict`; raise ApprovalsProtocolError on any malformed field."""
        try:
            approvers = data["approvers"]
            window_ms = data["window_ms"]
            if not isinstance(approvers, list) or not all(isinstance(a, str) for a in approvers):
                raise ValueError("approvers must be a list of strings")
            if isinstance(window_ms, bool) or not isinstance(window_ms, int) or window_ms < 0:
                raise ValueError("window_ms must be a non-negative integer")
            req = cls(
                id=_str(data, "id"),
                session=_str(data, "session"),
                identity=_str(data, "identity"),
                target=_str(data, "target"),
                account=_str(data, "account"),
                rule=_str(data, "rule"),
                approvers=tuple(approvers),
                statement=_str(data, "statement"),
                statement_sha256=_str(data, "statement_sha256"),
                created=parse_time(_str(data, "created")),
                expires=parse_time(_str(data, "expires")),
                window=timedelta(milliseconds=window_ms),
            )
            if not REQUEST_ID_RE.fullmatch(req.id):
                raise ValueError(f"malformed request id {req.id[:70]!r}")
        except (KeyError, ValueError) as exc:
            raise ApprovalsProtocolError(f"malformed approval request: {exc}") from None
        return req


def _str(data: Mapping[str, object], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


class RequestState(enum.Enum):
    """Where a request is in its life: pending, then exactly one of the final states."""

    PENDING = "pending"
    GRANTED = "granted"
    DENIED = "denied"
    TIMED_OUT = "timeout"
    WITHDRAWN = "withdrawn"


@dataclass(frozen=True)
class RequestStatus:
    """A request with its state, and who decided it once it is granted or denied."""

    request: ApprovalRequest
    state: RequestState
    approver: str | None = None

    def to_dict(self) -> dict[str, object]:
        out = self.request.to_dict()
        out["state"] = self.state.value
        if self.approver is not None:
            out["approver"] = self.approver
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> RequestStatus:
        """Inverse of :meth:`to_dict`; raise ApprovalsProtocolError when malformed."""
        request = ApprovalRequest.from_dict(data)
        state, approver = data.get("state"), data.get("approver")
        try:
            parsed = RequestState(state)
        except ValueError:
            raise ApprovalsProtocolError(f"unknown request state {state!r}") from None
        if approver is not None and not isinstance(approver, str):
            raise ApprovalsProtocolError("approver must be a string")
        return cls(request, parsed, approver)
