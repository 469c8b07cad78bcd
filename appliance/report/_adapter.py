"""Ledger entries as the report's events: the one place that knows entry types and fields.

Where it sits: :mod:`appliance.report._facts` walks every entry of every log and hands each
one to :func:`events_of`, which returns what the entry says in the report's own terms
(a session started, a statement was decided, values were masked, a hold was decided ...).
Nothing else in :mod:`appliance.report` reads an entry's ``type`` or ``data``; when the
proxy renames or merges entry types (one entry per completed statement, say), only this
module changes.

The conventions read here are the producers' (see :mod:`appliance.proxy.pg.recording`,
:mod:`appliance.approvals.broker`, :mod:`appliance.daemon`): a statement entry carries its
policy verdict in ``data.decision``; masking counts (``{"detectors": {kind: n}, ...}``) are
in ``statement.data.masking`` (statement text), ``response.data.masking`` (error fields),
``response.data.result.masking`` (the result rows as recorded) and
``response.data.masked_to_job`` (rows sent back to the job); ``masking.applied`` entries
repeat the first, second and fourth and are not counted again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.ledger import entries as t
from appliance.ledger.entries import Entry

UNATTRIBUTED = "unattributed"
APPROVAL_WITHDRAWN = "approval.withdrawn"

# Entries an auditor must see as gaps in what was captured, attributed or verified:
# type -> (the gap's kind in the report, what it means).
GAP_TYPES = {
    t.CAPTURE_RULES_RESTORED: (
        "capture",
        "capture rules had been removed or changed and were restored",
    ),
    t.CAPTURE_BPF_FAILED: ("capture", "eBPF attribution failed to load: flows ran unattributed"),
    t.CAPTURE_EVENTS_LOST: ("capture", "attribution events were lost"),
    t.CAPTURE_REFUSED: ("capture", "capture refused a flow"),
    t.CAPTURE_REFUSED_SUMMARY: ("capture", "more flows refused by capture (counted)"),
    t.CAPTURE_JOB_PRIVILEGED: (
        "capture",
        "a job process was root, held a dangerous capability or could reach the appliance's secrets",
    ),
    t.CONNECTION_REFUSED: ("refused connection", "a connection ended before its session started"),
    t.CONNECTION_REFUSED_SUMMARY: ("refused connection", "more such connections (counted)"),
    t.IDENTITY_KEYS_UNAVAILABLE: ("identity", "a CI issuer's keys could not be loaded"),
    t.IDENTITY_REJECTED: ("identity", "a job's CI token was rejected"),
    t.IDENTITY_UNAVAILABLE: ("identity", "a job's CI token could not be checked"),
    t.IDENTITY_MISMATCH: (
        "identity",
        "the job's environment claimed other CI fields than its verified token",
    ),
    t.PROTOCOL_ERROR: ("protocol error", "a peer broke the protocol; the session was closed"),
}


@dataclass(frozen=True, slots=True)
class Where:
    """Where an event was recorded: the log (its origin), the entry's seq and time."""

    seq: int
    ts: str
    session: str | None


@dataclass(frozen=True, slots=True)
class SessionStarted:
    at: Where
    target: str | None
    account: str | None
    identity: Mapping[str, Any] | None
    protocol: str
    client: str
    server: str
    database: str | None
    mode: str | None


@dataclass(frozen=True, slots=True)
class SessionEnded:
    at: Where
    reason: str


@dataclass(frozen=True, slots=True)
class Decided:
    """A statement (or request) and the policy's verdict on it."""

    at: Where
    n: int | None
    text: str
    classes: tuple[str, ...]
    decision: str  # allow | deny | review
    enforced: bool
    rule: str | None
    message: str | None


@dataclass(frozen=True, slots=True)
class Masked:
    """Values masked, by detector kind. ``to_job``: in rows sent back to the job (the
    recorded copy is counted separately, as ``to_job=False``)."""

    at: Where
    kinds: Mapping[str, int]
    to_job: bool


@dataclass(frozen=True, slots=True)
class HoldRequested:
    at: Where
    id: str
    rule: str | None
    approvers: tuple[str, ...]
    statement: str
    statement_sha256: str | None
    expires: str | None


@dataclass(frozen=True, slots=True)
class HoldDecided:
    """The end of a hold: granted, denied (both with a signed decision), timeout, withdrawn."""

    at: Where
    id: str
    outcome: str
    approver: str | None = None
    reason: str | None = None
    decided: str | None = None
    note: str | None = None  # the approver's signed decision (C2SP signed note), verbatim
    window_of: str | None = None


@dataclass(frozen=True, slots=True)
class DecisionRefused:
    """A decision the appliance refused (unknown key, wrong approver, replay ...)."""

    at: Where
    id: str | None
    reason: str
    detail: str
    approver: str | None


@dataclass(frozen=True, slots=True)
class ApplianceStarted:
    at: Where
    version: str | None
    mode: str | None


@dataclass(frozen=True, slots=True)
class ApplianceStopped:
    at: Where
    reason: str


@dataclass(frozen=True, slots=True)
class Noted:
    """An entry listed as a gap (see :data:`GAP_TYPES`): its gap kind, entry type, meaning."""

    at: Where
    kind: str
    type: str
    what: str
    detail: str


@dataclass(frozen=True, slots=True)
class KeyPublished:
    at: Where
    vkey: str


Event = (
    SessionStarted
    | SessionEnded
    | Decided
    | Masked
    | HoldRequested
    | HoldDecided
    | DecisionRefused
    | ApplianceStarted
    | ApplianceStopped
    | Noted
    | KeyPublished
)


@dataclass(frozen=True, slots=True)
class IdentityKey:
    """Who, as the report groups it: a CI job (provider, repository, workflow, job), a
    process without CI variables, or ``unattributed``. ``claimed``: some of these CI fields
    come from the job's own environment, not from a verified CI token."""

    kind: str  # ci | process | unattributed
    fields: tuple[str, ...] = field(default=())
    claimed: bool = True

    @property
    def label(self) -> str:
        if self.kind == UNATTRIBUTED:
            return "unattributed"
        if self.kind == "ci":
            provider, repo, workflow, job = self.fields
            return f"{provider} {repo} · {workflow or '-'} / {job or '-'}"
        return "no CI identity: " + " ".join(f for f in self.fields if f)


def identity_key(identity: Mapping[str, Any] | None) -> IdentityKey:
    """The grouping key of a session's identity (see :class:`IdentityKey`)."""
    ident = identity or {}
    if ident.get("source", UNATTRIBUTED) == UNATTRIBUTED:
        return IdentityKey(UNATTRIBUTED)
    ci = ident.get("ci")
    if isinstance(ci, Mapping) and ci.get("repository"):
        keys = ("provider", "repository", "workflow", "job")
        # appliance.identity: "verified" lists the ci keys a verified CI token stated
        verified = ident.get("verified")
        verified = set(verified) if isinstance(verified, list) else set()
        return IdentityKey(
            "ci",
            tuple(str(ci.get(k) or "") for k in keys),
            claimed=not {k for k in keys if ci.get(k)} <= verified,
        )
    return IdentityKey("process", (str(ident.get("exe") or ident.get("comm") or "?"),))


def unattributed_reason(identity: Mapping[str, Any] | None) -> str | None:
    """Why a session is unattributed (None if it is attributed)."""
    ident = identity or {}
    if ident.get("source", UNATTRIBUTED) != UNATTRIBUTED:
        return None
    how = ident.get("how")
    return str(how) if how else "no identity recorded"


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _kinds(counts: object) -> dict[str, int]:
    """``{"detectors": {kind: n}}`` (a MaskCounts dict) as {kind: n}."""
    if not isinstance(counts, Mapping):
        return {}
    detectors = counts.get("detectors")
    if not isinstance(detectors, Mapping):
        return {}
    return {str(k): v for k, v in detectors.items() if type(v) is int and v > 0}


def events_of(entry: Entry) -> list[Event]:
    """What one entry says, as report events (often one, sometimes none or several)."""
    o = entry.obj
    d: dict[str, Any] = o["data"]
    typ = o["type"]
    at = Where(entry.seq, o["ts"], o["session"])
    if typ == t.STATEMENT:
        out: list[Event] = []
        verdict = d.get("decision")
        if not isinstance(verdict, Mapping):
            verdict = {}  # no policy: every statement allowed
        classes = verdict.get("classes")
        out.append(
            Decided(
                at,
                d["n"] if type(d.get("n")) is int else None,
                str(d.get("text", "")),
                tuple(str(c) for c in classes) if isinstance(classes, list) else (),
                str(verdict.get("decision", "allow")),
                verdict.get("enforced", True) is not False,
                _str(verdict.get("rule")),
                _str(verdict.get("message")),
            )
        )
        if kinds := _kinds(d.get("masking")):
            out.append(Masked(at, kinds, to_job=False))
        return out
    if typ == t.RESPONSE:
        out = []
        recorded = _kinds(d.get("masking"))
        result = d.get("result")  # the blob reference, annotated with the rows' masking
        if isinstance(result, Mapping):
            for k, v in _kinds(result.get("masking")).items():
                recorded[k] = recorded.get(k, 0) + v
        if recorded:
            out.append(Masked(at, recorded, to_job=False))
        if kinds := _kinds(d.get("masked_to_job")):
            out.append(Masked(at, kinds, to_job=True))
        return out
    if typ == t.SESSION_START:
        return [
            SessionStarted(
                at,
                o["target"],
                o["account"],
                o["identity"],
                str(d.get("protocol", "?")),
                str(d.get("client", "?")),
                str(d.get("server", "?")),
                _str(d.get("database")),
                _str(d.get("policy_mode")),
            )
        ]
    if typ == t.SESSION_END:
        return [SessionEnded(at, str(d.get("reason", "closed")))]
    if typ == t.APPROVAL_REQUESTED:
        return [
            HoldRequested(
                at,
                str(d.get("id", "?")),
                _str(d.get("rule")),
                tuple(str(a) for a in d.get("approvers") or ()),
                str(d.get("statement", "")),
                _str(d.get("statement_sha256")),
                _str(d.get("expires")),
            )
        ]
    if typ in (t.APPROVAL_GRANTED, t.APPROVAL_DENIED):
        return [
            HoldDecided(
                at,
                str(d.get("id", "?")),
                "granted" if typ == t.APPROVAL_GRANTED else "denied",
                _str(d.get("approver")),
                _str(d.get("reason")),
                _str(d.get("decided")),
                _str(d.get("note")),
                _str(d.get("window_of")),
            )
        ]
    if typ in (t.APPROVAL_TIMEOUT, APPROVAL_WITHDRAWN):
        outcome = "timed out" if typ == t.APPROVAL_TIMEOUT else "withdrawn"
        return [HoldDecided(at, str(d.get("id", "?")), outcome)]
    if typ == t.APPROVAL_REJECTED:
        return [
            DecisionRefused(
                at,
                _str(d.get("id")),
                str(d.get("reason", "?")),
                str(d.get("detail", "")),
                _str(d.get("approver")),
            )
        ]
    if typ == t.APPLIANCE_START:
        policy = d.get("policy")
        mode = _str(policy.get("mode")) if isinstance(policy, Mapping) else None
        return [ApplianceStarted(at, _str(d.get("version")), mode)]
    if typ == t.APPLIANCE_STOP:
        return [ApplianceStopped(at, str(d.get("reason", "?")))]
    if typ in GAP_TYPES:
        kind, what = GAP_TYPES[typ]
        detail = ", ".join(f"{k}={d[k]}" for k in sorted(d) if isinstance(d[k], str | int))
        return [Noted(at, kind, typ, what, detail)]
    if typ == t.KEY_PUBLISHED and isinstance(d.get("vkey"), str):
        return [KeyPublished(at, d["vkey"])]
    return []
