"""Rules and decisions: given who is asking, where, as whom and what the SQL does, allow,
deny or hold for review.

Sits after the classifier in the data path: the proxy builds a :class:`RequestContext` for
every query string and asks :meth:`Policy.decide`. Deciding is pure (no clock, no
randomness, no I/O), so the same request always gets the same decision and tests are exact.

How a decision is made:

1. Each statement of the query string is decided on its own: the rules are tried in order
   and the first whose every matcher matches decides it (all matchers of a rule must match;
   a list in a matcher matches if any of its items does; a rule without ``match`` matches
   everything).
2. A statement of class ``unknown`` (unparseable, DO, CALL, SQL hidden in text, a shell
   command whose program the shell computes) is decided only by a ``deny`` rule or by a rule
   that names ``unknown`` in ``classes`` or ``only_classes``: a catch-all ``allow`` does not
   let through what nobody could read. The same holds for SSH forwards (``ssh_port_forward``
   ...): only a rule naming the class opens a tunnel.
3. A statement that no rule decides is denied, by the pseudo-rule ``(no rule matched)``:
   the policy fails closed.
4. The strictest statement decides the query string: deny over review over allow. When
   several statements need review, only approvers named by all their rules may approve,
   within the shortest timeout and window; if no approver is common to all, the string is
   denied (``(approvers conflict)``) and the job must send the statements separately.
5. An empty query string (nothing but whitespace or comments) runs nothing and is allowed
   (``(empty query)``).

In ``observe`` mode the decision is made exactly as in ``enforce`` mode and returned with
``enforced=False``: the proxy records it and lets the statement through.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from appliance.policy._classify import Classification, StatementClass
from appliance.policy._vocabulary import EXPLICIT, UNKNOWN
from appliance.signing.keys import VerifierKey

if TYPE_CHECKING:
    from appliance.policy._ssh import SshMatch

__all__ = [
    "ACTIONS",
    "CI_KEYS",
    "CONFLICT_RULE",
    "DEFAULT_APPROVAL_TIMEOUT",
    "EMPTY_RULE",
    "MODES",
    "NO_RULE",
    "Decision",
    "Glob",
    "HttpMatch",
    "HttpRequestContext",
    "KubeMatch",
    "Match",
    "Policy",
    "RequestContext",
    "Rule",
    "StatementDecision",
]

MODES = ("enforce", "observe")
ACTIONS = ("allow", "deny", "review")
# The CI fields a rule's ``identity`` may name (appliance.capture._ci.KEYS, as matched by
# rules), and what ``identity.verified`` may say.
CI_KEYS = (
    "provider",
    "repository",
    "workflow",
    "workflow_ref",
    "job",
    "run_id",
    "environment",
    "ref",
    "actor",
)
TRUST = ("verified", "unverified", "any")
DEFAULT_APPROVAL_TIMEOUT = 600.0

NO_RULE = "(no rule matched)"
EMPTY_RULE = "(empty query)"
CONFLICT_RULE = "(approvers conflict)"

_STRICTNESS = {"allow": 0, "review": 1, "deny": 2}
_OBSERVE_WARNING = (
    "policy mode is OBSERVE: nothing is blocked; every decision is recorded as what enforce "
    "mode would have done"
)


@dataclass(frozen=True)
class Glob:
    """A shell-style pattern (``*``, ``?``, ``[abc]``), matched case-sensitively against
    the whole value. ``*`` also matches ``/``: ``/ci/*`` matches ``/ci/a/b``."""

    pattern: str
    regex: re.Pattern[str] = field(repr=False, compare=False)

    @classmethod
    def compile(cls, pattern: str) -> Glob:
        """Raise ValueError if ``pattern`` is empty, has a control character or an
        unclosed ``[`` (fnmatch would silently take it literally)."""
        if not pattern:
            raise ValueError("an empty pattern matches nothing")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in pattern):
            raise ValueError(f"control character in pattern {pattern!r}")
        depth_open = pattern.find("[")
        while depth_open != -1:
            # fnmatch: "[]...]" and "[!]...]" start with a literal ']'.
            start = depth_open + 1
            if pattern[start : start + 1] == "!":
                start += 1
            if pattern[start : start + 1] == "]":
                start += 1
            close = pattern.find("]", start)
            if close == -1:
                raise ValueError(f"unclosed '[' in pattern {pattern!r}")
            depth_open = pattern.find("[", close + 1)
        return cls(pattern, re.compile(fnmatch.translate(pattern)))

    def matches(self, value: object) -> bool:
        return isinstance(value, str) and self.regex.fullmatch(value) is not None


def _any_glob(globs: tuple[Glob, ...], value: object) -> bool:
    return any(g.matches(value) for g in globs)


@dataclass(frozen=True)
class RequestContext:
    """Everything a rule can match on, for one query string.

    ``identity`` is what capture found out about the client: ``{"source": "ebpf" |
    "unattributed", "uid": int, "exe": str, "cgroup": str, "ci": {"provider": ...,
    "repository": ..., "workflow": ..., "job": ...}, "verified": [keys of ci from a
    verified token], "token": {"status": "verified" | ...}}``, any subset (see
    :mod:`appliance.identity._record`); a missing ``source`` counts as unattributed, a
    missing ``verified`` or ``token`` as nothing verified. ``target`` is the target's name, ``database`` the database the
    client asked for (None if unknown), ``account`` the service account's name.
    """

    identity: Mapping[str, Any]
    target: str
    database: str | None
    account: str
    classification: Classification

    @property
    def unattributed(self) -> bool:
        return bool(self.identity.get("source", "unattributed") == "unattributed")


@dataclass(frozen=True)
class HttpRequestContext:
    """Everything a rule can match on, for one HTTP request (see :meth:`Policy.decide_http`).

    ``host`` is the name the job asked for (TLS SNI, which must equal ``Host``) without a
    port; ``path`` is decoded of nothing (as sent); ``query`` the parsed query parameters
    (name -> values); ``headers`` lower-case names; ``kube`` the Kubernetes reading of
    the request when the target is a Kubernetes API (:func:`appliance.protocols.http.
    parse_kube`), else None.
    """

    identity: Mapping[str, Any]
    target: str
    account: str
    method: str
    host: str
    path: str
    query: Mapping[str, tuple[str, ...]]
    headers: Mapping[str, str]
    kube: Any = None

    @property
    def unattributed(self) -> bool:
        return bool(self.identity.get("source", "unattributed") == "unattributed")


@dataclass(frozen=True)
class HttpMatch:
    """Conditions on an HTTP request; None means "any". ``query`` and ``headers``: every
    named parameter or header must be present with a value matching one of its globs."""

    methods: frozenset[str] | None = None
    hosts: tuple[Glob, ...] | None = None
    paths: tuple[Glob, ...] | None = None
    query: tuple[tuple[str, tuple[Glob, ...]], ...] = ()
    headers: tuple[tuple[str, tuple[Glob, ...]], ...] = ()

    def matches(self, ctx: HttpRequestContext) -> bool:
        if self.methods is not None and ctx.method not in self.methods:
            return False
        if self.hosts is not None and not _any_glob(self.hosts, ctx.host):
            return False
        if self.paths is not None and not _any_glob(self.paths, ctx.path):
            return False
        for name, globs in self.query:
            if not any(_any_glob(globs, v) for v in ctx.query.get(name, ())):
                return False
        return all(_any_glob(globs, ctx.headers.get(name)) for name, globs in self.headers)


@dataclass(frozen=True)
class KubeMatch:
    """Conditions on a Kubernetes API request; None means "any". ``groups``: "" (or
    ``core``) is the core group. A rule with these matches only Kubernetes targets."""

    verbs: frozenset[str] | None = None
    groups: frozenset[str] | None = None
    resources: tuple[Glob, ...] | None = None
    namespaces: tuple[Glob, ...] | None = None
    names: tuple[Glob, ...] | None = None
    subresources: tuple[Glob, ...] | None = None

    def matches(self, kube: Any) -> bool:
        if kube is None:
            return False
        if self.verbs is not None and kube.verb not in self.verbs:
            return False
        if self.groups is not None and kube.group not in self.groups:
            return False
        for globs, value in (
            (self.resources, kube.resource),
            (self.namespaces, kube.namespace),
            (self.names, kube.name),
            (self.subresources, kube.subresource),
        ):
            if globs is not None and not _any_glob(globs, value):
                return False
        return True


@dataclass(frozen=True)
class Match:
    """The conditions of a rule; None (or empty ``ci``) means "any".

    ``classes`` matches a statement that has at least one of the classes (use it to
    forbid: ``classes: [drop]`` catches ``SELECT 1; DROP TABLE t``). ``only_classes``
    matches a statement all of whose classes are in the set (use it to allow: ``only_classes:
    [read]`` does not match ``WITH d AS (DELETE ...) SELECT``). Groups are expanded already.
    ``functions`` matches a statement that calls a function whose name, qualified as
    written or bare, matches a pattern. ``ssh`` matches what an SSH operation runs or
    touches (:class:`~appliance.policy._ssh.SshMatch`). ``named`` holds the classes only an
    explicit rule decides (``unknown``, the forwards: :data:`EXPLICIT`) that ``classes`` or
    ``only_classes`` name.

    ``trust`` (None: the rule has no ``identity`` matcher) says which CI values ``ci`` is
    matched against: ``verified``, the values a verified token states (the session must
    have one, and every named field must be among its verified fields); ``unverified``,
    sessions without a verified token, by the environment's claims; ``any``, the
    session's effective values, verified or claimed.
    """

    targets: frozenset[str] | None = None
    databases: tuple[Glob, ...] | None = None
    accounts: frozenset[str] | None = None
    classes: frozenset[str] | None = None
    only_classes: frozenset[str] | None = None
    functions: tuple[Glob, ...] | None = None
    unattributed: bool | None = None
    uids: frozenset[int] | None = None
    exes: tuple[Glob, ...] | None = None
    cgroups: tuple[Glob, ...] | None = None
    ci: tuple[tuple[str, tuple[Glob, ...]], ...] = ()
    trust: str | None = None
    ssh: SshMatch | None = None
    named: frozenset[str] = frozenset()
    http: HttpMatch | None = None
    kubernetes: KubeMatch | None = None

    @property
    def is_catch_all(self) -> bool:
        return self == Match()

    @property
    def statement_only(self) -> bool:
        """Conditions only a statement (SQL, or an SSH operation) can meet: such a rule
        never decides an HTTP request."""
        return (
            self.classes is not None
            or self.only_classes is not None
            or self.functions is not None
            or self.databases is not None
            or self.ssh is not None
        )

    @property
    def http_only(self) -> bool:
        """Conditions only an HTTP request can meet: such a rule never decides a statement."""
        return self.http is not None or self.kubernetes is not None

    def request_matches(self, ctx: RequestContext | HttpRequestContext) -> bool:
        """The conditions on who, where and as whom (the same for every statement)."""
        ident = ctx.identity
        if self.targets is not None and ctx.target not in self.targets:
            return False
        if (
            self.databases is not None
            and isinstance(ctx, RequestContext)
            and not _any_glob(self.databases, ctx.database)
        ):
            return False
        if self.accounts is not None and ctx.account not in self.accounts:
            return False
        if self.unattributed is not None and ctx.unattributed != self.unattributed:
            return False
        if self.uids is not None:
            uid = ident.get("uid")
            if isinstance(uid, bool) or not isinstance(uid, int) or uid not in self.uids:
                return False
        if self.exes is not None and not _any_glob(self.exes, ident.get("exe")):
            return False
        if self.cgroups is not None and not _any_glob(self.cgroups, ident.get("cgroup")):
            return False
        return self.trust is None or self._identity_matches(ident)

    def _identity_matches(self, ident: Mapping[str, Any]) -> bool:
        token = ident.get("token")
        has_token = isinstance(token, Mapping) and token.get("status") == "verified"
        if has_token != (self.trust == "verified") and self.trust != "any":
            return False
        ci = ident.get("ci")
        if self.ci and not isinstance(ci, Mapping):
            return False
        verified = ident.get("verified")
        for key, globs in self.ci:
            if self.trust == "verified" and not (isinstance(verified, list) and key in verified):
                return False  # the token does not state it: a claim is not enough
            assert isinstance(ci, Mapping)
            if not _any_glob(globs, ci.get(key)):
                return False
        return True

    def statement_matches(self, stmt: StatementClass) -> bool:
        """The conditions on what one statement does."""
        if self.http_only:
            return False
        if self.classes is not None and not (self.classes & stmt.classes):
            return False
        if self.only_classes is not None and not (stmt.classes <= self.only_classes):
            return False
        if self.functions is not None:
            names = [*stmt.functions, *(f.rsplit(".", 1)[-1] for f in stmt.functions)]
            if not any(_any_glob(self.functions, n) for n in names):
                return False
        return self.ssh is None or self.ssh.matches(stmt)


@dataclass(frozen=True)
class Rule:
    """One rule of the policy. ``approvers``, ``timeout`` and ``window`` are for ``review``
    (``timeout`` None: the policy's default); ``message`` is told to the client on deny
    and to the approver on review. ``where`` says where the rule was written (for
    records and error messages)."""

    name: str
    action: str
    match: Match = Match()
    message: str | None = None
    approvers: tuple[str, ...] = ()
    timeout: float | None = None
    window: float = 0.0
    where: str = ""

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"rule action must be one of {ACTIONS}, got {self.action!r}")
        if self.action == "review" and not self.approvers:
            raise ValueError(f"review rule {self.name!r} has no approvers")


@dataclass(frozen=True)
class StatementDecision:
    """How one statement of the query string was decided."""

    index: int
    action: str
    rule: str

    def to_record(self) -> dict[str, Any]:
        return {"index": self.index, "action": self.action, "rule": self.rule}


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


@dataclass(frozen=True)
class Decision:
    """What the policy decided for a query string.

    ``action`` is what enforce mode does: ``allow``, ``deny`` or ``review`` (hold until an
    approver in ``approvers`` approves, for at most ``timeout`` seconds; an approval is
    valid for ``window`` seconds for the same statement, 0 meaning once). ``rule`` and
    ``statement_index`` say which rule and which statement decided; ``statements`` how each
    statement was decided. ``message`` is set on deny (the rule's message, or one naming
    the rule) and on review when the rule has one. ``classes`` is the union of the classes
    of all statements. ``enforced`` is False in observe mode: then the proxy lets the
    statement through whatever ``action`` says (see :attr:`lets_through`).
    """

    action: str
    rule: str
    message: str | None
    approvers: tuple[str, ...]
    timeout: float
    window: float
    statement_index: int | None
    classes: frozenset[str]
    enforced: bool
    statements: tuple[StatementDecision, ...] = ()

    @property
    def lets_through(self) -> bool:
        """True if the statement goes upstream now, without approval."""
        return self.action == "allow" or not self.enforced

    def to_record(self) -> dict[str, Any]:
        """A JSON-safe record for the ledger: no floats, durations in milliseconds."""
        record: dict[str, Any] = {
            "action": self.action,
            "rule": self.rule,
            "enforced": self.enforced,
            "statement": self.statement_index,
            "classes": sorted(self.classes),
            "statements": [s.to_record() for s in self.statements],
        }
        if self.message is not None:
            record["message"] = self.message
        if self.action == "review":
            record["approvers"] = list(self.approvers)
            record["timeout_ms"] = _ms(self.timeout)
            record["window_ms"] = _ms(self.window)
        return record


@dataclass(frozen=True)
class Policy:
    """The parsed ``policy`` section: mode, ordered rules, approver keys."""

    mode: str
    rules: tuple[Rule, ...]
    approvers: Mapping[str, VerifierKey] = field(default_factory=dict)
    approval_timeout: float = DEFAULT_APPROVAL_TIMEOUT

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"policy mode must be one of {MODES}, got {self.mode!r}")
        if not self.rules:
            raise ValueError("a policy needs at least one rule (an empty policy is not 'allow')")
        for rule in self.rules:
            unknown = [a for a in rule.approvers if a not in self.approvers]
            if unknown:
                raise ValueError(f"rule {rule.name!r} names unknown approvers {unknown}")

    @property
    def enforced(self) -> bool:
        return self.mode == "enforce"

    @property
    def warning(self) -> str | None:
        """The loud line to log at start and record in every session start entry when the
        policy does not enforce; None in enforce mode."""
        return None if self.enforced else _OBSERVE_WARNING

    def start_record(self) -> dict[str, Any]:
        """What a session start entry records about the policy."""
        record: dict[str, Any] = {
            "mode": self.mode,
            "enforced": self.enforced,
            "rules": [r.name for r in self.rules],
        }
        if self.warning is not None:
            record["warning"] = self.warning
        return record

    def decide(self, ctx: RequestContext) -> Decision:
        """Decide the query string of ``ctx``; see the module docstring. Pure."""
        statements = ctx.classification.statements
        classes = ctx.classification.classes
        if not statements:
            return self._decision("allow", EMPTY_RULE, None, classes=classes)
        rules = [r for r in self.rules if r.match.request_matches(ctx)]
        decided = [(s, self._first_rule(rules, s)) for s in statements]
        per = tuple(
            StatementDecision(s.index, r.action if r else "deny", r.name if r else NO_RULE)
            for s, r in decided
        )
        worst = max(_STRICTNESS[d.action] for d in per)
        if worst == _STRICTNESS["deny"]:
            stmt, rule = next((s, r) for s, r in decided if r is None or r.action == "deny")
            if rule is None:
                message = _no_rule_message(stmt, ctx.classification)
                return self._decision("deny", NO_RULE, message, stmt.index, classes, per)
            message = rule.message or f"denied by policy rule {rule.name!r}"
            return self._decision("deny", rule.name, message, stmt.index, classes, per)
        if worst == _STRICTNESS["review"]:
            return self._review(
                [(s, r) for s, r in decided if r and r.action == "review"], classes, per
            )
        stmt, rule = decided[0]
        assert rule is not None  # every statement was allowed by a rule
        return self._decision("allow", rule.name, None, stmt.index, classes, per)

    def decide_http(self, ctx: HttpRequestContext) -> Decision:
        """Decide one HTTP request: the first rule whose conditions on who, where and what
        request all hold (rules with SQL conditions are skipped); none: deny. Pure."""
        for rule in self.rules:
            match = rule.match
            if match.statement_only or not match.request_matches(ctx):
                continue
            if match.http is not None and not match.http.matches(ctx):
                continue
            if match.kubernetes is not None and not match.kubernetes.matches(ctx.kube):
                continue
            if rule.action == "deny":
                message = rule.message or f"denied by policy rule {rule.name!r}"
                return self._decision("deny", rule.name, message, 0)
            if rule.action == "review":
                return Decision(
                    action="review",
                    rule=rule.name,
                    message=rule.message,
                    approvers=rule.approvers,
                    timeout=rule.timeout if rule.timeout is not None else self.approval_timeout,
                    window=rule.window,
                    statement_index=0,
                    classes=frozenset(),
                    enforced=self.enforced,
                )
            return self._decision("allow", rule.name, None, 0)
        what = f"{ctx.method} {ctx.path}"
        if ctx.kube is not None and ctx.kube.resource_request:
            what = f"Kubernetes {ctx.kube.verb} of {ctx.kube.resource}"
        return self._decision("deny", NO_RULE, f"no policy rule matches this request ({what})", 0)

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _first_rule(rules: list[Rule], stmt: StatementClass) -> Rule | None:
        explicit = stmt.classes & EXPLICIT
        for rule in rules:
            if not rule.match.statement_matches(stmt):
                continue
            if explicit and rule.action != "deny" and not explicit <= rule.match.named:
                # Only a rule naming them lets through an unclassifiable statement or a
                # forward (rule 2 of the module docstring).
                continue
            return rule
        return None

    def _review(
        self,
        reviews: list[tuple[StatementClass, Rule]],
        classes: frozenset[str],
        per: tuple[StatementDecision, ...],
    ) -> Decision:
        first_stmt, first = reviews[0]
        approvers = [a for a in first.approvers if all(a in r.approvers for _, r in reviews)]
        if not approvers:
            names = "; ".join(f"rule {r.name!r}: {', '.join(r.approvers)}" for _, r in reviews)
            message = (
                f"the statements need approval from different approvers ({names}); "
                "send them separately"
            )
            return self._decision("deny", CONFLICT_RULE, message, first_stmt.index, classes, per)
        timeout = min(
            r.timeout if r.timeout is not None else self.approval_timeout for _, r in reviews
        )
        window = min(r.window for _, r in reviews)
        return Decision(
            action="review",
            rule=first.name,
            message=first.message,
            approvers=tuple(approvers),
            timeout=timeout,
            window=window,
            statement_index=first_stmt.index,
            classes=classes,
            enforced=self.enforced,
            statements=per,
        )

    def _decision(
        self,
        action: str,
        rule: str,
        message: str | None,
        index: int | None = None,
        classes: frozenset[str] = frozenset(),
        per: tuple[StatementDecision, ...] = (),
    ) -> Decision:
        return Decision(action, rule, message, (), 0.0, 0.0, index, classes, self.enforced, per)


def _no_rule_message(stmt: StatementClass, classification: Classification) -> str:
    forwards = sorted(stmt.classes & EXPLICIT - {UNKNOWN})
    if forwards:
        return (
            f"{stmt.text} is allowed only by a rule that names class "
            f"{' or '.join(repr(c) for c in forwards)}"
        )
    if UNKNOWN in stmt.classes:
        why = classification.parse_error or "its effect cannot be known from its text"
        return (
            f"statement {stmt.index + 1} cannot be classified ({why}); only a rule naming "
            "class 'unknown' can allow or review it"
        )
    return (
        f"no policy rule matches statement {stmt.index + 1} "
        f"(classes: {', '.join(sorted(stmt.classes)) or 'none'})"
    )
