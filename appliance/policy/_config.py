"""The ``policy`` section of the configuration, checked and turned into a :class:`Policy`.

Shape (see ``appliance/policy/example.yaml`` for a commented example)::

    policy:
      mode: enforce                 # or observe: decide and record, block nothing
      approvals:
        timeout: 10m                # default for review rules (default 10m)
        approvers:
          - name: alice             # must be the name inside the key
            key: "alice+1234abcd+AbCd..."   # C2SP verifier key text, or {file: path}
        # or the short form: approvers: {alice: "alice+1234abcd+AbCd...", bob: {file: ...}}
        socket: ...                 # socket and webhooks: see appliance.approvals.config
      rules:                        # ordered, first match wins, at least one
        - name: no-drops
          match: {classes: [drop, truncate]}
          action: deny
          message: "DROP and TRUNCATE are not allowed from CI"
        - name: review-risky
          match: {classes: [risky], targets: [orders-db]}
          action: review
          approvers: [alice]
          timeout: 5m               # optional, review only
          window: 0                 # optional, review only: 0 = the approval is used once
        - name: default
          action: allow

Matchers (all optional; all given must match; a list matches if any item does):
``targets`` (target names), ``databases`` (globs), ``accounts`` (service account names),
``classes`` (the statement has any of these classes or groups), ``only_classes`` (every
class of the statement is among these), ``functions`` (globs on called function names),
``unattributed`` (true: flows capture could not attribute; false: attributed ones), ``uid``
(integers), ``exe`` and ``cgroup`` (globs), ``identity`` (globs on the CI job:
``provider``, ``repository``, ``workflow``, ``workflow_ref``, ``job``, ``run_id``,
``environment``, ``ref``, ``actor``; and ``verified``), ``ssh`` (globs on what an SSH
operation runs or touches: ``programs``, ``arguments``, ``sudo``, ``subsystems``, ``paths``,
``destinations``; see :mod:`appliance.policy._ssh`).

``identity`` matches *verified* values by default: the session's CI token was verified
against a configured issuer (the ``identity`` section) and states every named field
(``identity: {repository: "acme/*"}`` is ``identity: {verified: true, repository:
"acme/*"}``). The environment's CI variables are written by the job itself; a rule that
may act on them says so: ``verified: any`` matches the session's values whether verified
or only claimed, ``verified: false`` only sessions without a verified token (e.g. to deny
them). Without an ``identity`` section nothing can be verified, and a rule that needs it is
an error (it could never match).

For HTTP targets (:meth:`Policy.decide_http`): ``http`` with ``methods``, ``hosts``,
``paths`` (globs), ``query`` and ``headers`` (``{name: glob or [globs]}``), and
``kubernetes`` with ``verbs``, ``groups`` (``core`` for the core group), ``resources``,
``namespaces``, ``names``, ``subresources`` (globs). A rule with SQL conditions never
decides a request and a rule with HTTP conditions never decides a statement.

Every mistake is a :class:`~appliance.errors.ConfigError` naming the key and line: no
section or no rules, unknown keys, targets, accounts, approvers or classes, a review rule
without approvers, bad globs, a rule that can never be reached.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path

from appliance.config import Node, Target
from appliance.errors import ConfigError
from appliance.policy._rules import (
    ACTIONS,
    CI_KEYS,
    DEFAULT_APPROVAL_TIMEOUT,
    MODES,
    Glob,
    HttpMatch,
    KubeMatch,
    Match,
    Policy,
    Rule,
)
from appliance.policy._ssh import parse_ssh_match
from appliance.policy._vocabulary import CLASSES, EXPLICIT, GROUPS, expand
from appliance.signing.keys import KeyFormatError, VerifierKey, load_verifier_key

__all__ = ["parse_policy"]

_RULE_NAME = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}"
# Keys of policy.approvals that appliance.approvals.config parses (its TRANSPORT_KEYS).
_APPROVALS_TRANSPORT_KEYS = ("socket", "webhooks", "hub")
_MATCH_KEYS = (
    "targets",
    "databases",
    "accounts",
    "classes",
    "only_classes",
    "functions",
    "unattributed",
    "uid",
    "exe",
    "cgroup",
    "identity",
    "ssh",
    "http",
    "kubernetes",
)
_HTTP_KEYS = ("methods", "hosts", "paths", "query", "headers")
_KUBE_KEYS = ("verbs", "groups", "resources", "namespaces", "names", "subresources")
_KUBE_VERBS = (
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "exec",
    "attach",
    "portforward",
    "log",
    "proxy",
)


def parse_policy(
    node: Node | None, *, targets: Mapping[str, Target], verifiable: bool = False
) -> Policy:
    """Check the ``policy`` section (``node``; None if the file has none) against the
    configured ``targets`` and return the policy. ``verifiable``: the config trusts a CI
    token issuer (it has an ``identity`` section), so rules may need verified fields.

    Raises ConfigError at the first problem, naming the key and line. A missing section or
    an empty rule list is an error: no policy never means "allow everything".
    """
    if node is None:
        raise ConfigError(
            "the configuration has no 'policy' section; write one (a policy with no rules "
            "is not 'allow everything')"
        )
    m = node.keys(required=("rules",), optional=("mode", "approvals"))
    mode = m["mode"].string(choices=MODES) if "mode" in m else "enforce"
    approvers: dict[str, VerifierKey] = {}
    timeout = DEFAULT_APPROVAL_TIMEOUT
    if "approvals" in m:
        approvers, timeout = _parse_approvals(m["approvals"])
    rules_node = m["rules"]
    items = rules_node.items()
    if not items:
        rules_node.fail("the rule list is empty; a policy needs at least one rule")
    rules: list[Rule] = []
    for item in items:
        rule = _parse_rule(item, targets, approvers, verifiable)
        if any(r.name == rule.name for r in rules):
            item.mapping()["name"].fail(f"duplicate rule name {rule.name!r}")
        _check_reachable(rule, rules, item)
        rules.append(rule)
    return Policy(mode, tuple(rules), approvers, timeout)


def _parse_approvals(node: Node) -> tuple[dict[str, VerifierKey], float]:
    m = node.keys(optional=("timeout", "approvers", *_APPROVALS_TRANSPORT_KEYS))
    timeout = _positive_duration(m["timeout"]) if "timeout" in m else DEFAULT_APPROVAL_TIMEOUT
    approvers: dict[str, VerifierKey] = {}
    for name_node, key_node in _approver_entries(m["approvers"]) if "approvers" in m else []:
        name = name_node.string()
        if name in approvers:
            name_node.fail(f"duplicate approver {name!r}")
        key = _parse_key(key_node)
        if key.name != name:
            key_node.fail(f"this key is named {key.name!r}, not {name!r}")
        if key in approvers.values():
            key_node.fail("this key is already given to another approver")
        approvers[name] = key
    return approvers, timeout


def _approver_entries(node: Node) -> list[tuple[Node, Node]]:
    """``[{name: alice, key: ...}, ...]`` or the short form ``{alice: ..., bob: ...}``."""
    if node.is_mapping:
        # The mapping's keys are plain strings; their nodes carry the line for errors.
        return [(_key_node(node, name), value) for name, value in node.mapping().items()]
    entries = []
    for item in node.items():
        a = item.keys(required=("name", "key"))
        entries.append((a["name"], a["key"]))
    return entries


def _key_node(mapping: Node, name: str) -> Node:
    for key_raw, _ in mapping.raw.value:
        if key_raw.value == name:
            return Node(key_raw, f"{mapping.path}.{name}", mapping.source)
    raise AssertionError(f"{name!r} is a key of the mapping it came from")


def _parse_key(node: Node) -> VerifierKey:
    """A verifier key: vkey text, or ``{file: path}`` of a file holding it."""
    try:
        if node.is_mapping:
            return load_verifier_key(Path(node.keys(required=("file",))["file"].string()))
        return VerifierKey.from_vkey(node.string())
    except KeyFormatError as exc:
        node.fail(f"bad approver key: {exc}")


def _parse_rule(
    node: Node, targets: Mapping[str, Target], approvers: Mapping[str, object], verifiable: bool
) -> Rule:
    m = node.keys(
        required=("name", "action"),
        optional=("match", "message", "approvers", "timeout", "window"),
    )
    name = m["name"].string(pattern=_RULE_NAME)
    action = m["action"].string(choices=ACTIONS)
    match = _parse_match(m["match"], targets, verifiable) if "match" in m else Match()
    message = None
    if "message" in m:
        if action == "allow":
            m["message"].fail("only deny and review rules have a message")
        message = m["message"].string()
    for key in ("approvers", "timeout", "window"):
        if key in m and action != "review":
            m[key].fail(f"{key!r} is only for review rules")
    names: tuple[str, ...] = ()
    if action == "review":
        if "approvers" not in m:
            node.fail("a review rule needs 'approvers' (who may approve)")
        names = tuple(_strings(m["approvers"]))
        for item, approver in zip(m["approvers"].items_or_one(), names, strict=True):
            if approver not in approvers:
                known = ", ".join(sorted(approvers)) or "none are configured under approvals"
                item.fail(f"unknown approver {approver!r} (known: {known})")
    timeout = _positive_duration(m["timeout"]) if "timeout" in m else None
    window = m["window"].duration() if "window" in m else 0.0
    return Rule(name, action, match, message, names, timeout, window, where=node.where)


def _parse_match(node: Node, targets: Mapping[str, Target], verifiable: bool) -> Match:
    m = node.keys(optional=_MATCH_KEYS)
    target_names = None
    if "targets" in m:
        target_names = frozenset(_strings(m["targets"]))
        for item in m["targets"].items_or_one():
            if item.string() not in targets:
                item.fail(f"unknown target {item.string()!r} (known: {', '.join(targets)})")
    accounts = None
    if "accounts" in m:
        scope = [targets[t] for t in sorted(target_names)] if target_names else targets.values()
        known = {a.name for t in scope for a in t.accounts}
        accounts = frozenset(_strings(m["accounts"]))
        for item in m["accounts"].items_or_one():
            if item.string() not in known:
                item.fail(
                    f"unknown service account {item.string()!r} "
                    f"(accounts of the matched targets: {', '.join(sorted(known))})"
                )
    classes = _classes(m["classes"]) if "classes" in m else None
    only = _classes(m["only_classes"]) if "only_classes" in m else None
    named = frozenset((classes or frozenset()) | (only or frozenset())) & EXPLICIT
    unattributed = m["unattributed"].boolean() if "unattributed" in m else None
    if unattributed:
        for key in ("uid", "exe", "cgroup", "identity"):
            if key in m:
                m[key].fail(f"an unattributed flow has no {key}: this rule can never match")
    uids = None
    if "uid" in m:
        uids = frozenset(item.integer(minimum=0) for item in _nonempty(m["uid"]))
    ci: list[tuple[str, tuple[Glob, ...]]] = []
    trust = None
    if "identity" in m:
        ident = m["identity"].keys(optional=(*CI_KEYS, "verified"))
        if not ident:
            m["identity"].fail(f"give at least one of: {', '.join((*CI_KEYS, 'verified'))}")
        trust = _trust(ident.pop("verified")) if "verified" in ident else "verified"
        if not ident and trust == "any":
            m["identity"].fail("'verified: any' alone matches every session: leave it out")
        if trust == "verified" and not verifiable:
            m["identity"].fail(
                "this matches verified CI fields, but no token issuer is configured (the "
                "'identity' section): it can never match; write 'verified: any' to match "
                "the environment's claims"
            )
        ci = [(key, _globs(value)) for key, value in ident.items()]
    http = _parse_http_match(m["http"]) if "http" in m else None
    kubernetes = _parse_kube_match(m["kubernetes"]) if "kubernetes" in m else None
    if (http is not None or kubernetes is not None) and any(
        key in m for key in ("classes", "only_classes", "functions", "databases")
    ):
        node.fail("a rule matches either SQL statements or HTTP requests, not both")
    return Match(
        http=http,
        kubernetes=kubernetes,
        targets=target_names,
        databases=_globs(m["databases"]) if "databases" in m else None,
        accounts=accounts,
        classes=classes,
        only_classes=only,
        functions=_globs(m["functions"]) if "functions" in m else None,
        unattributed=unattributed,
        uids=uids,
        exes=_globs(m["exe"]) if "exe" in m else None,
        cgroups=_globs(m["cgroup"]) if "cgroup" in m else None,
        ci=tuple(ci),
        trust=trust,
        ssh=parse_ssh_match(m["ssh"], _globs) if "ssh" in m else None,
        named=named,
    )


def _parse_http_match(node: Node) -> HttpMatch:
    m = node.keys(optional=_HTTP_KEYS)
    methods = None
    if "methods" in m:
        methods = frozenset(
            item.string(pattern=r"[A-Z]+").upper() for item in _nonempty(m["methods"])
        )
    return HttpMatch(
        methods=methods,
        hosts=_globs(m["hosts"]) if "hosts" in m else None,
        paths=_globs(m["paths"]) if "paths" in m else None,
        query=_named_globs(m["query"]) if "query" in m else (),
        headers=tuple((k.lower(), g) for k, g in _named_globs(m["headers"]))
        if "headers" in m
        else (),
    )


def _named_globs(node: Node) -> tuple[tuple[str, tuple[Glob, ...]], ...]:
    items = node.mapping()
    if not items:
        node.fail("give at least one name")
    return tuple((name, _globs(value)) for name, value in items.items())


def _parse_kube_match(node: Node) -> KubeMatch:
    m = node.keys(optional=_KUBE_KEYS)
    verbs = None
    if "verbs" in m:
        verbs = frozenset(item.string(choices=_KUBE_VERBS) for item in _nonempty(m["verbs"]))
    groups = None
    if "groups" in m:
        groups = frozenset(
            "" if g in ("core", "") else g for g in (i.string() for i in _nonempty(m["groups"]))
        )
    return KubeMatch(
        verbs=verbs,
        groups=groups,
        resources=_globs(m["resources"]) if "resources" in m else None,
        namespaces=_globs(m["namespaces"]) if "namespaces" in m else None,
        names=_globs(m["names"]) if "names" in m else None,
        subresources=_globs(m["subresources"]) if "subresources" in m else None,
    )


def _trust(node: Node) -> str:
    """``verified: true`` -> verified, ``false`` -> unverified, ``any`` -> any."""
    if node.raw.tag.endswith(":bool"):
        return "verified" if node.boolean() else "unverified"
    if node.string() != "any":
        node.fail(f"expected true, false or any, got {node.string()!r}")
    return "any"


def _check_reachable(rule: Rule, before: list[Rule], node: Node) -> None:
    """Fail on a rule that an earlier catch-all rule hides.

    After a catch-all ``deny`` nothing is reached. After a catch-all ``allow`` or
    ``review`` only ``unknown`` statements and SSH forwards go on (rule 2 of the decision
    order), and only a ``deny`` rule or one naming their class can take them.
    """
    for earlier in before:
        if not earlier.match.is_catch_all:
            continue
        if earlier.action == "deny" or (rule.action != "deny" and not rule.match.named):
            node.fail(
                f"rule {rule.name!r} can never match: rule {earlier.name!r} before it "
                "matches every statement"
            )


def _nonempty(node: Node) -> list[Node]:
    items = node.items_or_one()
    if not items:
        node.fail("an empty list matches nothing; leave the key out to match anything")
    return items


def _strings(node: Node) -> list[str]:
    return [item.string() for item in _nonempty(node)]


def _globs(node: Node) -> tuple[Glob, ...]:
    out = []
    for item in _nonempty(node):
        try:
            out.append(Glob.compile(item.string()))
        except ValueError as exc:
            item.fail(f"bad pattern: {exc}")
    return tuple(out)


def _classes(node: Node) -> frozenset[str]:
    for item in _nonempty(node):
        name = item.string()
        if name not in CLASSES and name not in GROUPS:
            close = difflib.get_close_matches(name, [*CLASSES, *GROUPS], n=3)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            item.fail(f"unknown statement class {name!r}{hint}")
    return expand(_strings(node))


def _positive_duration(node: Node) -> float:
    seconds = node.duration()
    if seconds <= 0:
        node.fail("must be longer than 0")
    return seconds
