"""Approval decisions: the body an approver signs, and the signed note that carries it.

The body is seven newline-terminated lines, always in this order and nothing else::

    appliance/approval-decision/v1
    request 3f1c0a9b2d4e6f708192
    statement-sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    decision approve
    approver alice
    time 2025-01-02T03:04:05Z
    reason "ok for the 14:00 migration"

``reason`` is a JSON string with ASCII escapes, so the approver's text cannot add lines or
control characters. The body is canonical: :func:`parse_decision` accepts exactly what
:func:`format_decision` produces. It is wrapped in a C2SP signed note
(https://c2sp.org/signed-note) signed with the approver's Ed25519 key, so an auditor can
check a stored decision with standard signed-note tools and the approver's vkey.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from appliance.approvals.clock import format_time, parse_time
from appliance.approvals.errors import DecisionFormatError
from appliance.signing.keys import SigningKey
from appliance.signing.note import sign_note

__all__ = [
    "DECISION_HEADER",
    "MAX_REASON_CHARS",
    "SignedDecision",
    "format_decision",
    "parse_decision",
    "sign_decision",
]

DECISION_HEADER = "appliance/approval-decision/v1"
MAX_REASON_CHARS = 1000
_FIELDS = ("request", "statement-sha256", "decision", "approver", "time", "reason")
REQUEST_ID_RE = re.compile(r"[a-z0-9]{8,64}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# The C2SP key-name alphabet (printable ASCII without space or '+'), see signing/keys.py.
_APPROVER_RE = re.compile(r"[\x21-\x2a\x2c-\x7e]{1,128}")

Verb = Literal["approve", "deny"]


@dataclass(frozen=True)
class SignedDecision:
    """What one approver decided about one approval request."""

    request_id: str
    statement_sha256: str
    decision: Verb
    approver: str
    time: datetime
    reason: str = ""


def format_decision(d: SignedDecision) -> str:
    """The canonical decision body. Raises DecisionFormatError if a field cannot be encoded."""
    _check_fields(d)
    reason = json.dumps(d.reason, ensure_ascii=True)
    return (
        f"{DECISION_HEADER}\n"
        f"request {d.request_id}\n"
        f"statement-sha256 {d.statement_sha256}\n"
        f"decision {d.decision}\n"
        f"approver {d.approver}\n"
        f"time {format_time(d.time)}\n"
        f"reason {reason}\n"
    )


def parse_decision(body: str) -> SignedDecision:
    """Parse a decision body; raise DecisionFormatError unless it is exactly canonical."""
    if not body.endswith("\n"):
        raise DecisionFormatError("decision body must end with a newline")
    lines = body[:-1].split("\n")
    if lines[0] != DECISION_HEADER:
        raise DecisionFormatError(f"decision body must start with {DECISION_HEADER!r}")
    if len(lines) != 1 + len(_FIELDS):
        raise DecisionFormatError(f"decision body has {len(lines)} lines, expected 7")
    values: dict[str, str] = {}
    for want, line in zip(_FIELDS, lines[1:], strict=True):
        key, sep, value = line.partition(" ")
        if key != want or not sep:
            raise DecisionFormatError(f"expected the {want!r} line, got {line[:40]!r}")
        values[key] = value
    verb = values["decision"]
    if verb not in ("approve", "deny"):
        raise DecisionFormatError(f"decision must be approve or deny, got {verb[:20]!r}")
    try:
        reason = json.loads(values["reason"])
        when = parse_time(values["time"])
    except ValueError as exc:
        raise DecisionFormatError(f"bad reason or time: {exc}") from None
    if not isinstance(reason, str):
        raise DecisionFormatError("reason must be a JSON string")
    d = SignedDecision(
        request_id=values["request"],
        statement_sha256=values["statement-sha256"],
        decision="approve" if verb == "approve" else "deny",
        approver=values["approver"],
        time=when,
        reason=reason,
    )
    if format_decision(d) != body:
        raise DecisionFormatError("decision body is not in canonical form")
    return d


def sign_decision(d: SignedDecision, key: SigningKey) -> str:
    """The decision as a C2SP signed note, signed with the approver's key."""
    return sign_note(format_decision(d), [key])


def _check_fields(d: SignedDecision) -> None:
    if not REQUEST_ID_RE.fullmatch(d.request_id):
        raise DecisionFormatError(f"malformed request id {d.request_id[:70]!r}")
    if not _SHA256_RE.fullmatch(d.statement_sha256):
        raise DecisionFormatError("statement-sha256 must be 64 lowercase hex digits")
    if d.decision not in ("approve", "deny"):
        raise DecisionFormatError(f"decision must be approve or deny, got {d.decision!r}")
    if not _APPROVER_RE.fullmatch(d.approver):
        raise DecisionFormatError(f"malformed approver name {d.approver[:70]!r}")
    if d.time.tzinfo is None:
        raise DecisionFormatError("decision time must be timezone-aware")
    if len(d.reason) > MAX_REASON_CHARS:
        raise DecisionFormatError(f"reason longer than {MAX_REASON_CHARS} characters")
