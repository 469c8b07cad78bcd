"""Errors of the approvals package; all are :class:`~appliance.errors.ApplianceError`.

Whose fault: :class:`DecisionFormatError` and :class:`DecisionRejected` blame the approver's
decision; :class:`ApprovalsUnavailable` the environment (no appliance listening, no access);
:class:`ApprovalsSocketError` the host (the socket path cannot be made safe);
:class:`ApprovalsProtocolError` the other end of the local socket; :class:`RequestNotPending`
and :class:`RequestNotFound` the id the user gave; :class:`ApprovalsUsageError` the caller of
the broker (a bug or a configuration the policy loader should have refused).
"""

from __future__ import annotations

from appliance.errors import ApplianceError

__all__ = [
    "ApprovalsError",
    "ApprovalsProtocolError",
    "ApprovalsSocketError",
    "ApprovalsUnavailable",
    "ApprovalsUsageError",
    "DecisionFormatError",
    "DecisionRejected",
    "RequestNotFound",
    "RequestNotPending",
]


class ApprovalsError(ApplianceError):
    """Base of the approvals errors."""


class DecisionFormatError(ApprovalsError):
    """A decision body is not exactly in the ``appliance/approval-decision/v1`` format."""


class ApprovalsUsageError(ApprovalsError):
    """The broker was asked something that cannot be right (duplicate id, no approvers...)."""


class ApprovalsUnavailable(ApprovalsError):
    """The approvals socket cannot be reached (not running, no permission, timed out)."""


class ApprovalsSocketError(ApprovalsError):
    """The approvals socket cannot be set up safely (path in use, wrong owner, not a socket)."""


class ApprovalsProtocolError(ApprovalsError):
    """The other end of the approvals socket sent something that breaks the protocol."""


class RequestNotFound(ApprovalsError):
    """No approval request has that id (never existed, or long forgotten)."""


class RequestNotPending(ApprovalsError):
    """The approval request exists but is no longer waiting for a decision."""

    exit_code = 1


class DecisionRejected(ApprovalsError):
    """The appliance refused a signed decision; ``reason`` is the RejectReason value."""

    exit_code = 1

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"decision rejected ({reason}): {detail}")
