"""The report's facts: what the logs say about a period, gathered in one pass per log.

Where it sits: :mod:`appliance.report._package` verifies each log, then feeds its entries to
:meth:`Collector.feed` (which reads them through :mod:`appliance.report._adapter` only) and
finally asks :meth:`Collector.facts` for the whole: logs and their verification, sessions,
identities, targets, denials, holds and their signed decisions, refused decisions, masking
by kind, per-day series and gaps. The HTML pages and ``report.json`` are both made from
these facts, so they cannot disagree.

Period rule: an event counts if its entry's time is in ``[since, until)``; a session is in
the report if any of its entries is; a hold is in it if it was requested in the period (its
outcome is shown whenever it came). Everything is sorted so that the same logs give the same
facts in the same order.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.ledger.entries import Entry
from appliance.ledger.render import who
from appliance.policy import GROUPS
from appliance.report import _adapter as a

# Statement classes whose sessions the report lists as privileged (DDL, deletes, grants and
# the risky preset of the policy vocabulary). Other protocols add theirs here (exec on hosts,
# Kubernetes deletes) when they land.
PRIVILEGED = frozenset(GROUPS["risky"] | {"ddl", "alter", "drop", "delete", "truncate"})


def slug(text: str, *, unique: str | None = None) -> str:
    """A file-name-safe form of ``text``; with ``unique``, followed by a short hash of it."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:60] or "x"
    if unique is None:
        return base
    return f"{base}-{hashlib.sha256(unique.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Period:
    """``[since, until)`` as entry timestamps; None: open."""

    since: str | None = None
    until: str | None = None

    def __contains__(self, ts: str) -> bool:
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)


@dataclass
class LogCheck:
    """The verification of one whole log (see :func:`appliance.ledger.verify_ledger`)."""

    status: str  # verified | tampered | unverifiable
    findings: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    checkpoints: int = 0
    signed_size: int | None = None
    root: str | None = None  # base64, of the latest checkpoint
    checkpoint_note: str | None = None
    vkey: str | None = None  # the given key that verified it


@dataclass
class LogFacts:
    name: str
    slug: str
    origin: str | None
    check: LogCheck
    entries: int = 0
    in_period: int = 0
    first_ts: str | None = None
    last_ts: str | None = None
    starts: int = 0
    stops: int = 0
    read_error: str | None = None
    published: list[str] = field(default_factory=list)


@dataclass
class SessionFacts:
    log: str  # log slug
    id: str
    page: str
    origin: str | None = None
    target: str | None = None
    account: str | None = None
    identity: a.IdentityKey = field(default_factory=lambda: a.IdentityKey(a.UNATTRIBUTED))
    who: str = "unknown"
    unattributed: str | None = None
    protocol: str | None = None
    client: str | None = None
    start: str | None = None
    end: str | None = None
    end_reason: str | None = None
    in_period: bool = False
    statements: int = 0
    denied: int = 0
    would_deny: int = 0
    held: int = 0
    masked: int = 0
    masked_to_job: int = 0
    classes: set[str] = field(default_factory=set)
    first_seq: int = -1
    last_seq: int = -1

    @property
    def privileged(self) -> list[str]:
        return sorted(self.classes & PRIVILEGED)


@dataclass
class Denial:
    log: str
    seq: int
    ts: str
    session: str | None
    page: str | None
    identity: str
    target: str | None
    rule: str | None
    message: str | None
    statement: str
    classes: list[str]
    enforced: bool


@dataclass
class Hold:
    log: str
    seq: int
    ts: str
    id: str
    session: str | None
    page: str | None
    identity: str
    target: str | None
    rule: str | None
    approvers: list[str]
    statement: str
    statement_sha256: str | None
    expires: str | None
    outcome: str = "pending"
    outcome_seq: int | None = None
    outcome_ts: str | None = None
    approver: str | None = None
    reason: str | None = None
    decided: str | None = None
    note: str | None = None
    window_of: str | None = None
    proof: str | None = None  # package path of the tlog-proof of the decision entry


@dataclass
class Refusal:
    log: str
    seq: int
    ts: str
    id: str | None
    reason: str
    detail: str
    approver: str | None


@dataclass
class Gap:
    kind: str
    log: str
    ts: str | None
    session: str | None
    page: str | None
    detail: str


@dataclass
class Facts:
    period: Period
    logs: list[LogFacts]
    sessions: list[SessionFacts]
    denials: list[Denial]
    holds: list[Hold]
    refusals: list[Refusal]
    gaps: list[Gap]
    masked: dict[str, int]
    masked_to_job: dict[str, int]
    days: dict[str, dict[str, int]]

    @property
    def tampered(self) -> list[LogFacts]:
        return [lf for lf in self.logs if lf.check.status == "tampered"]

    @property
    def unverifiable(self) -> list[LogFacts]:
        return [lf for lf in self.logs if lf.check.status == "unverifiable"]

    @property
    def status(self) -> str:
        """``tampered`` if any log is, else ``unverifiable`` if any log is, else ``verified``."""
        if self.tampered:
            return "tampered"
        return "unverifiable" if self.unverifiable else "verified"

    def in_period(self) -> list[SessionFacts]:
        return [s for s in self.sessions if s.in_period]

    def group(self, key: str) -> list[dict[str, Any]]:
        """Sessions of the period grouped by ``identity`` or ``target``, with totals."""
        groups: dict[str, dict[str, Any]] = {}
        for s in self.in_period():
            name = s.identity.label if key == "identity" else (s.target or "(no target)")
            g = groups.setdefault(
                name,
                {
                    "name": name,
                    "page": f"{key}/{slug(name, unique=name)}.html",
                    "sessions": [],
                    "statements": 0,
                    "denied": 0,
                    "held": 0,
                    "masked": 0,
                    "other": set(),
                    "claimed": s.identity.claimed if key == "identity" else None,
                },
            )
            g["sessions"].append(s)
            for k in ("statements", "denied", "held", "masked"):
                g[k] += getattr(s, k)
            g["other"].add((s.target or "-") if key == "identity" else s.identity.label)
        for g in groups.values():
            g["other"] = sorted(g["other"])
        return [groups[k] for k in sorted(groups)]

    def totals(self) -> dict[str, Any]:
        sessions = self.in_period()
        outcomes = Counter(h.outcome for h in self.holds)
        return {
            "logs": len(self.logs),
            "logs_verified": sum(lf.check.status == "verified" for lf in self.logs),
            "logs_tampered": len(self.tampered),
            "logs_unverifiable": len(self.unverifiable),
            "entries": sum(lf.in_period for lf in self.logs),
            "sessions": len(sessions),
            "identities": len({s.identity.label for s in sessions}),
            "targets": len({s.target for s in sessions}),
            "statements": sum(s.statements for s in sessions),
            "denials": sum(d.enforced for d in self.denials),
            "would_deny": sum(not d.enforced for d in self.denials),
            "holds": len(self.holds),
            "holds_by_outcome": dict(sorted(outcomes.items())),
            "refused_decisions": len(self.refusals),
            "masked": sum(self.masked.values()),
            "masked_to_job": sum(self.masked_to_job.values()),
            "privileged_sessions": sum(bool(s.privileged) for s in sessions),
            "unattributed_sessions": sum(s.unattributed is not None for s in sessions),
            "gaps": len(self.gaps),
        }


DAY_SERIES = ("sessions", "statements", "denials", "holds", "masked")


class Collector:
    """Gathers :class:`Facts` from logs fed one after the other (see the module docstring)."""

    def __init__(self, period: Period) -> None:
        self.period = period
        self.logs: list[LogFacts] = []
        self.sessions: dict[tuple[str, str], SessionFacts] = {}
        self.denials: list[Denial] = []
        self.holds: dict[tuple[str, str], Hold] = {}
        self.refusals: list[Refusal] = []
        self.gaps: list[Gap] = []
        self.masked: Counter[str] = Counter()
        self.masked_to_job: Counter[str] = Counter()
        self.days: dict[str, Counter[str]] = {}

    # -- feeding -------------------------------------------------------------------------------

    def feed(self, log: LogFacts, entries: Iterable[Entry]) -> None:
        """Read one log's entries (in order). A damaged log stops where reading stops; the
        caller records why in ``log.read_error``."""
        self.logs.append(log)
        period = self.period
        running = False  # an appliance.start not yet followed by its stop
        last_start: a.Where | None = None
        try:
            for entry in entries:
                o = entry.obj
                ts = o["ts"]
                log.entries += 1
                if log.origin is None:
                    log.origin = o["origin"]
                inside = ts in period
                if inside:
                    log.in_period += 1
                    log.first_ts = log.first_ts or ts
                    log.last_ts = ts
                sid = o["session"]
                s = self._session(log, sid) if sid is not None else None
                if s is not None:
                    if s.first_seq < 0:
                        s.first_seq = entry.seq
                    s.last_seq = entry.seq
                    s.in_period = s.in_period or inside
                for ev in a.events_of(entry):
                    if isinstance(ev, a.ApplianceStarted):
                        log.starts += 1
                        if running and last_start is not None:
                            self._unclean(log, last_start, ev.at.ts)
                        running, last_start = True, ev.at
                    elif isinstance(ev, a.ApplianceStopped):
                        log.stops += 1
                        running = False
                    elif isinstance(ev, a.KeyPublished):
                        log.published.append(ev.vkey)
                    elif s is not None or not isinstance(
                        ev, a.SessionStarted | a.SessionEnded | a.Decided | a.Masked
                    ):
                        self._event(log, s, ev, inside)
        finally:
            if running and last_start is not None:
                self._unclean(log, last_start, None)

    def _session(self, log: LogFacts, sid: str) -> SessionFacts:
        key = (log.slug, sid)
        s = self.sessions.get(key)
        if s is None:
            page = f"sessions/{log.slug}/{slug(sid)}.html"
            s = self.sessions[key] = SessionFacts(log.slug, sid, page, origin=log.origin)
        return s

    def _unclean(self, log: LogFacts, start: a.Where, next_start: str | None) -> None:
        if next_start is None:
            detail = (
                f"the appliance started at {start.ts} and the log ends without its stop: "
                "killed, crashed, or the runner was destroyed before a clean shutdown"
            )
        else:
            detail = (
                f"the appliance started at {start.ts} and started again at {next_start} "
                "without a stop in between"
            )
        self.gaps.append(Gap("unclean end", log.slug, start.ts, None, None, detail))

    def _day(self, ts: str, series: str, n: int = 1) -> None:
        self.days.setdefault(ts[:10], Counter())[series] += n

    def _event(self, log: LogFacts, s: SessionFacts | None, ev: a.Event, inside: bool) -> None:
        if isinstance(ev, a.SessionStarted):
            assert s is not None
            s.target, s.account, s.start = ev.target, ev.account, ev.at.ts
            s.identity = a.identity_key(ev.identity)
            s.who = who(ev.identity, ev.account)
            s.unattributed = a.unattributed_reason(ev.identity)
            s.protocol, s.client = ev.protocol, ev.client
            if inside:
                self._day(ev.at.ts, "sessions")
        elif isinstance(ev, a.SessionEnded):
            assert s is not None
            s.end, s.end_reason = ev.at.ts, ev.reason
        elif isinstance(ev, a.Decided):
            assert s is not None
            if not inside:
                return
            s.statements += 1
            s.classes.update(ev.classes)
            self._day(ev.at.ts, "statements")
            if ev.decision == "deny":
                if ev.enforced:
                    s.denied += 1
                    self._day(ev.at.ts, "denials")
                else:
                    s.would_deny += 1
                self.denials.append(
                    Denial(
                        log.slug, ev.at.seq, ev.at.ts, s.id, s.page, s.identity.label, s.target,
                        ev.rule, ev.message, ev.text, sorted(ev.classes), ev.enforced,
                    )
                )  # fmt: skip
        elif isinstance(ev, a.Masked):
            assert s is not None
            if not inside:
                return
            n = sum(ev.kinds.values())
            if ev.to_job:
                s.masked_to_job += n
                self.masked_to_job.update(ev.kinds)
            else:
                s.masked += n
                self.masked.update(ev.kinds)
                self._day(ev.at.ts, "masked", n)
        elif isinstance(ev, a.HoldRequested):
            if not inside:
                return
            if s is not None:
                s.held += 1
            self._day(ev.at.ts, "holds")
            self.holds[(log.slug, ev.id)] = Hold(
                log.slug, ev.at.seq, ev.at.ts, ev.id, ev.at.session,
                s.page if s else None, s.identity.label if s else "?", s.target if s else None,
                ev.rule, list(ev.approvers), ev.statement, ev.statement_sha256, ev.expires,
            )  # fmt: skip
        elif isinstance(ev, a.HoldDecided):
            hold = self.holds.get((log.slug, ev.id))
            if hold is None:
                return  # requested outside the period
            hold.outcome, hold.outcome_seq, hold.outcome_ts = ev.outcome, ev.at.seq, ev.at.ts
            hold.approver, hold.reason, hold.decided = ev.approver, ev.reason, ev.decided
            hold.note, hold.window_of = ev.note, ev.window_of
        elif isinstance(ev, a.DecisionRefused):
            if inside:
                self.refusals.append(
                    Refusal(log.slug, ev.at.seq, ev.at.ts, ev.id, ev.reason, ev.detail, ev.approver)
                )
        elif isinstance(ev, a.Noted) and inside:
            page = s.page if s is not None else None
            detail = f"{ev.what} ({ev.type}{': ' + ev.detail if ev.detail else ''})"
            self.gaps.append(Gap(ev.kind, log.slug, ev.at.ts, ev.at.session, page, detail))

    # -- the whole -----------------------------------------------------------------------------

    def facts(self) -> Facts:
        """The facts of the logs with entries in the period (or that could not be read)."""
        logs = [lf for lf in self.logs if lf.in_period or lf.read_error]
        included = {lf.slug for lf in logs}
        gaps = [g for g in self.gaps if g.log in included]
        for lf in logs:
            check = lf.check
            if check.signed_size is not None and lf.entries > check.signed_size:
                gaps.append(
                    Gap(
                        "unsigned tail",
                        lf.slug,
                        lf.last_ts,
                        None,
                        None,
                        f"{lf.entries - check.signed_size} entries after the latest signed "
                        f"checkpoint (size {check.signed_size}): written but never signed or "
                        "shipped",
                    )
                )
            if lf.read_error:
                gaps.append(Gap("unreadable", lf.slug, None, None, None, lf.read_error))
        by_origin: dict[str | None, list[LogFacts]] = {}
        for lf in logs:
            by_origin.setdefault(lf.origin, []).append(lf)
        for origin, same in by_origin.items():
            if origin is not None and len(same) > 1:  # a copy counted twice, or a fork
                names = ", ".join(sorted(lf.name for lf in same))
                for lf in same:
                    detail = f"{len(same)} logs claim origin {origin}: {names}"
                    gaps.append(Gap("duplicate origin", lf.slug, lf.first_ts, None, None, detail))
        sessions = sorted(
            self.sessions.values(), key=lambda s: (s.start or "", s.log, s.id)
        )  # sessions without a start (begun before the log) sort first
        for s in sessions:
            if not s.in_period:
                continue
            if s.end is None:
                gaps.append(
                    Gap(
                        "session without end",
                        s.log,
                        s.start,
                        s.id,
                        s.page,
                        "the session has no session.end: the log stops while it was open",
                    )
                )
            if s.unattributed is not None:
                gaps.append(Gap("unattributed flow", s.log, s.start, s.id, s.page, s.unattributed))
        gaps.sort(key=lambda g: (g.ts or "", g.log, g.kind, g.session or "", g.detail))
        holds = sorted(self.holds.values(), key=lambda h: (h.ts, h.log, h.id))
        days = {d: {k: c.get(k, 0) for k in DAY_SERIES} for d, c in sorted(self.days.items())}
        return Facts(
            period=self.period,
            logs=sorted(logs, key=lambda lf: (lf.origin or "", lf.name)),
            sessions=sessions,
            denials=sorted(self.denials, key=lambda d: (d.ts, d.log, d.seq)),
            holds=holds,
            refusals=sorted(self.refusals, key=lambda r: (r.ts, r.log, r.seq)),
            gaps=gaps,
            masked=dict(sorted(self.masked.items())),
            masked_to_job=dict(sorted(self.masked_to_job.items())),
            days=days,
        )


def to_json(facts: Facts, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The facts as plain JSON values (the content of ``report.json``)."""

    def session(s: SessionFacts) -> dict[str, Any]:
        return {
            "log": s.log,
            "id": s.id,
            "page": s.page,
            "target": s.target,
            "account": s.account,
            "identity": s.identity.label,
            "identity_claimed": s.identity.claimed,
            "who": s.who,
            "unattributed": s.unattributed,
            "start": s.start,
            "end": s.end,
            "end_reason": s.end_reason,
            "statements": s.statements,
            "denied": s.denied,
            "would_deny": s.would_deny,
            "held": s.held,
            "masked": s.masked,
            "masked_to_job": s.masked_to_job,
            "classes": sorted(s.classes),
            "privileged": s.privileged,
            "first_seq": s.first_seq,
            "last_seq": s.last_seq,
        }

    def groups(key: str) -> list[dict[str, Any]]:
        return [
            {
                **{k: v for k, v in g.items() if k not in ("sessions", "other")},
                "sessions": [f"{s.log}/{s.id}" for s in g["sessions"]],
                "targets" if key == "identity" else "identities": g["other"],
            }
            for g in facts.group(key)
        ]

    return {
        **extra,
        "period": {"since": facts.period.since, "until": facts.period.until},
        "totals": facts.totals(),
        "logs": [_plain(lf) for lf in facts.logs],
        "sessions": [session(s) for s in facts.in_period()],
        "identities": groups("identity"),
        "targets": groups("target"),
        "denials": [_plain(d) for d in facts.denials],
        "holds": [_plain(h) for h in facts.holds],
        "refused_decisions": [_plain(r) for r in facts.refusals],
        "gaps": [_plain(g) for g in facts.gaps],
        "masked_by_kind": facts.masked,
        "masked_to_job_by_kind": facts.masked_to_job,
        "days": facts.days,
    }


def _plain(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _plain(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, set):
        return sorted(obj)
    return obj
