"""Policy.decide: every matcher, first match wins, strictest statement wins, unknown
statements, review approvers across statements, observe mode, records."""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.policy import (
    CONFLICT_RULE,
    EMPTY_RULE,
    NO_RULE,
    Glob,
    Match,
    Policy,
    RequestContext,
    Rule,
    classify,
)

from .helpers import ATTRIBUTED, VERIFIED, ctx, rules

CATCH_ALL_ALLOW = "- {name: rest, action: allow}"


def decided_by(policy: Policy, context: RequestContext) -> str:
    return policy.decide(context).rule


# -- each matcher ----------------------------------------------------------------------------


def test_targets() -> None:
    p = rules("- {name: r, match: {targets: [app-db]}, action: allow}")
    assert decided_by(p, ctx("SELECT 1", target="app-db", account="app-ci")) == "r"
    assert decided_by(p, ctx("SELECT 1", target="orders-db")) == NO_RULE


def test_databases_are_globs() -> None:
    p = rules("- {name: r, match: {databases: ['app*', reports]}, action: allow}")
    assert decided_by(p, ctx("SELECT 1", database="app_test")) == "r"
    assert decided_by(p, ctx("SELECT 1", database="reports")) == "r"
    assert decided_by(p, ctx("SELECT 1", database="reports2")) == NO_RULE
    assert decided_by(p, ctx("SELECT 1", database=None)) == NO_RULE


def test_accounts() -> None:
    p = rules("- {name: r, match: {accounts: [ci-reader]}, action: allow}")
    assert decided_by(p, ctx("SELECT 1", account="ci-reader")) == "r"
    assert decided_by(p, ctx("SELECT 1", account="ci-writer")) == NO_RULE


def test_classes_match_any_and_groups_expand() -> None:
    p = rules("- {name: r, match: {classes: [risky]}, action: deny}\n" + CATCH_ALL_ALLOW)
    assert decided_by(p, ctx("DELETE FROM t")) == "r"  # delete_without_where
    assert decided_by(p, ctx("WITH d AS (DELETE FROM t) SELECT 1")) == "r"
    assert decided_by(p, ctx("DELETE FROM t WHERE id = 1")) == "rest"
    assert decided_by(p, ctx("COPY t FROM PROGRAM 'id'")) == "r"
    assert decided_by(p, ctx("SET ROLE admin")) == "r"


def test_only_classes_match_when_everything_is_in_the_set() -> None:
    p = rules("- {name: r, match: {only_classes: [read]}, action: allow}")
    assert decided_by(p, ctx("SELECT * FROM t")) == "r"
    assert decided_by(p, ctx("EXPLAIN DELETE FROM t")) == "r"
    assert decided_by(p, ctx("COPY t TO STDOUT")) == "r"
    # A select that deletes, or explains by running a delete, is not only a read.
    assert decided_by(p, ctx("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d")) == NO_RULE
    assert decided_by(p, ctx("EXPLAIN ANALYZE DELETE FROM t")) == NO_RULE
    assert decided_by(p, ctx("SELECT nextval('s')")) == NO_RULE


def test_functions_match_qualified_or_bare_names() -> None:
    p = rules(
        "- {name: r, match: {functions: ['pg_terminate_*', my_schema.f]}, action: deny}\n"
        + CATCH_ALL_ALLOW
    )
    assert decided_by(p, ctx("SELECT pg_terminate_backend(1)")) == "r"
    assert decided_by(p, ctx("SELECT pg_catalog.pg_terminate_backend(1)")) == "r"
    assert decided_by(p, ctx("SELECT my_schema.f()")) == "r"
    assert decided_by(p, ctx("SELECT f()")) == "rest"


def test_unattributed() -> None:
    p = rules(
        "- {name: anon, match: {unattributed: true}, action: deny}\n"
        "- {name: known, match: {unattributed: false}, action: allow}"
    )
    assert decided_by(p, ctx("SELECT 1")) == "known"
    assert decided_by(p, ctx("SELECT 1", identity={"source": "unattributed"})) == "anon"
    assert decided_by(p, ctx("SELECT 1", identity={})) == "anon"  # no source: unattributed


def test_uid() -> None:
    p = rules("- {name: r, match: {uid: [0, 1000]}, action: allow}")
    assert decided_by(p, ctx("SELECT 1")) == "r"
    assert decided_by(p, ctx("SELECT 1", identity={**ATTRIBUTED, "uid": 1001})) == NO_RULE
    assert decided_by(p, ctx("SELECT 1", identity={**ATTRIBUTED, "uid": "1000"})) == NO_RULE
    assert decided_by(p, ctx("SELECT 1", identity={"source": "ebpf"})) == NO_RULE


def test_uid_zero_is_not_false() -> None:
    p = rules("- {name: r, match: {uid: 0}, action: allow}")
    assert decided_by(p, ctx("SELECT 1", identity={**ATTRIBUTED, "uid": 0})) == "r"
    assert decided_by(p, ctx("SELECT 1", identity={**ATTRIBUTED, "uid": False})) == NO_RULE


def test_exe_and_cgroup_globs() -> None:
    p = rules("- {name: r, match: {exe: ['/usr/bin/*'], cgroup: ['/ci/*']}, action: allow}")
    assert decided_by(p, ctx("SELECT 1")) == "r"  # /usr/bin/psql in /ci/job-17/step
    assert decided_by(p, ctx("SELECT 1", identity={**ATTRIBUTED, "exe": "/tmp/psql"})) == NO_RULE
    other = {**ATTRIBUTED, "cgroup": "/system.slice/x"}
    assert decided_by(p, ctx("SELECT 1", identity=other)) == NO_RULE


def test_identity_globs_on_the_ci_job() -> None:
    p = rules(
        "- name: r\n"
        "  match: {identity: {verified: any, repository: org/app, workflow: 'deploy*', job: [db, migrate]}}\n"
        "  action: allow"
    )
    assert decided_by(p, ctx("SELECT 1")) == "r"
    assert decided_by(p, ctx("SELECT 1", identity=VERIFIED)) == "r"
    ci = dict(ATTRIBUTED["ci"])
    for key, value in (("repository", "org/other"), ("workflow", "test"), ("job", "lint")):
        identity = {**ATTRIBUTED, "ci": {**ci, key: value}}
        assert decided_by(p, ctx("SELECT 1", identity=identity)) == NO_RULE, key
    assert decided_by(p, ctx("SELECT 1", identity={"source": "ebpf", "uid": 1})) == NO_RULE


def test_identity_matches_verified_fields_unless_the_rule_says_otherwise() -> None:
    p = rules("- {name: r, match: {identity: {repository: org/app}}, action: allow}")
    assert p.rules[0].match.trust == "verified"
    assert decided_by(p, ctx("SELECT 1", identity=VERIFIED)) == "r"
    # The same repository, only claimed by the environment: not enough.
    assert decided_by(p, ctx("SELECT 1")) == NO_RULE
    # A token that was rejected verifies nothing, whatever the lists say.
    rejected = {**VERIFIED, "token": {"status": "rejected", "reason": "expired"}}
    assert decided_by(p, ctx("SELECT 1", identity=rejected)) == NO_RULE
    # A field the token does not state (GitHub has no job name) is never verified.
    job = rules("- {name: r, match: {identity: {verified: true, job: db}}, action: allow}")
    assert decided_by(job, ctx("SELECT 1", identity=VERIFIED)) == NO_RULE


def test_environment_says_prod_token_says_fork() -> None:
    """The token wins: the effective value is the verified one, and a rule that needs
    verified identity sees the fork."""
    fork = {
        **VERIFIED,
        "ci": {**VERIFIED["ci"], "repository": "acme/fork"},
        "mismatch": [{"field": "repository", "claimed": "acme/prod", "verified": "acme/fork"}],
    }
    p = rules(
        "- {name: prod, match: {identity: {verified: true, repository: acme/prod}}, action: allow}\n"
        "- {name: fork, match: {identity: {repository: acme/fork}}, action: deny}"
    )
    assert decided_by(p, ctx("SELECT 1", identity=fork)) == "fork"


def test_verified_false_is_for_sessions_without_a_verified_token() -> None:
    p = rules(
        "- {name: unverified, match: {identity: {verified: false}}, action: deny}\n"
        "- {name: rest, action: allow}"
    )
    assert decided_by(p, ctx("SELECT 1")) == "unverified"
    assert decided_by(p, ctx("SELECT 1", identity={"source": "unattributed"})) == "unverified"
    assert decided_by(p, ctx("SELECT 1", identity=VERIFIED)) == "rest"
    claims = rules(
        "- {name: r, match: {identity: {verified: false, repository: org/app}}, action: allow}"
    )
    assert decided_by(claims, ctx("SELECT 1")) == "r"
    assert decided_by(claims, ctx("SELECT 1", identity=VERIFIED)) == NO_RULE


def test_all_matchers_of_a_rule_must_match() -> None:
    p = rules("- {name: r, match: {accounts: [ci-writer], classes: [select]}, action: allow}")
    assert decided_by(p, ctx("SELECT 1")) == "r"
    assert decided_by(p, ctx("SELECT 1", account="ci-reader")) == NO_RULE
    assert decided_by(p, ctx("DELETE FROM t WHERE id = 1")) == NO_RULE


# -- order and strictness --------------------------------------------------------------------


def test_first_match_wins() -> None:
    p = rules(
        "- {name: first, match: {classes: [select]}, action: allow}\n"
        "- {name: second, match: {classes: [select]}, action: deny}"
    )
    assert p.decide(ctx("SELECT 1")).action == "allow"
    assert decided_by(p, ctx("SELECT 1")) == "first"


POLICY = """
- {name: no-drop, match: {classes: [drop]}, action: deny, message: no drops}
- name: review-deletes
  match: {classes: [delete]}
  action: review
  approvers: [alice, bob]
  timeout: 2m
  window: 30s
- {name: rest, action: allow}
"""


def test_strictest_statement_wins() -> None:
    p = rules(POLICY)
    d = p.decide(ctx("SELECT 1; DROP TABLE t; DELETE FROM t WHERE id = 1"))
    assert (d.action, d.rule, d.statement_index, d.message) == ("deny", "no-drop", 1, "no drops")
    assert [(s.index, s.action, s.rule) for s in d.statements] == [
        (0, "allow", "rest"),
        (1, "deny", "no-drop"),
        (2, "review", "review-deletes"),
    ]
    d = p.decide(ctx("SELECT 1; DELETE FROM t WHERE id = 1"))
    assert (d.action, d.rule, d.statement_index) == ("review", "review-deletes", 1)
    assert (d.approvers, d.timeout, d.window) == (("alice", "bob"), 120.0, 30.0)
    d = p.decide(ctx("SELECT 1; SELECT 2"))
    assert (d.action, d.rule, d.statement_index) == ("allow", "rest", 0)


def test_reviews_across_statements_need_a_common_approver() -> None:
    p = rules(
        "- {name: a, match: {classes: [delete]}, action: review, approvers: [alice, bob],"
        " timeout: 5m, window: 1m}\n"
        "- {name: b, match: {classes: [update]}, action: review, approvers: [bob],"
        " timeout: 2m}\n"
        "- {name: c, match: {classes: [insert]}, action: review, approvers: [alice]}\n"
        + CATCH_ALL_ALLOW
    )
    d = p.decide(ctx("DELETE FROM t WHERE id = 1; UPDATE t SET a = 1 WHERE id = 2"))
    assert (d.action, d.rule, d.approvers) == ("review", "a", ("bob",))
    assert (d.timeout, d.window) == (120.0, 0.0)  # the shortest of each
    d = p.decide(ctx("UPDATE t SET a = 1 WHERE id = 2; INSERT INTO t VALUES (1)"))
    assert (d.action, d.rule, d.statement_index) == ("deny", CONFLICT_RULE, 0)
    assert d.message is not None and "send them separately" in d.message


def test_review_timeout_defaults_to_the_policy_timeout() -> None:
    p = rules("- {name: r, action: review, approvers: [alice]}")
    d = p.decide(ctx("SELECT 1"))
    assert (d.action, d.timeout, d.window) == ("review", 600.0, 0.0)


def test_no_matching_rule_denies() -> None:
    p = rules("- {name: reads, match: {only_classes: [select]}, action: allow}")
    d = p.decide(ctx("SELECT 1; VACUUM t"))
    assert (d.action, d.rule, d.statement_index) == ("deny", NO_RULE, 1)
    assert d.message == "no policy rule matches statement 2 (classes: maintenance)"


# -- unknown statements ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql", ["DO $$ BEGIN EXECUTE 'x'; END $$", "CALL p()", "SELEC 1", "SELECT 1; DO 'x'"]
)
def test_a_catch_all_allow_does_not_let_unknown_through(sql: str) -> None:
    p = rules(CATCH_ALL_ALLOW)
    d = p.decide(ctx(sql))
    assert (d.action, d.rule) == ("deny", NO_RULE)
    assert d.message is not None and "only a rule naming class 'unknown'" in d.message


def test_unparseable_text_says_why_it_was_denied() -> None:
    d = rules(CATCH_ALL_ALLOW).decide(ctx("SELEC 1"))
    assert d.message is not None and 'syntax error at or near "SELEC"' in d.message


def test_a_rule_naming_unknown_decides_it() -> None:
    p = rules(
        "- {name: review-opaque, match: {classes: [unknown]}, action: review, approvers: [bob]}\n"
        + CATCH_ALL_ALLOW
    )
    d = p.decide(ctx("DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$"))
    assert (d.action, d.rule, d.approvers) == ("review", "review-opaque", ("bob",))
    assert p.decide(ctx("SELEC 1")).rule == "review-opaque"
    assert p.decide(ctx("SELECT 1")).rule == "rest"
    p = rules("- {name: ok, match: {only_classes: [unknown, function_call]}, action: allow}")
    assert p.decide(ctx("CALL p()")).action == "allow"


def test_a_deny_rule_decides_unknown_without_naming_it() -> None:
    p = rules(
        "- {name: writer-denied, match: {accounts: [ci-writer]}, action: deny}\n" + CATCH_ALL_ALLOW
    )
    assert decided_by(p, ctx("DO $$ BEGIN END $$")) == "writer-denied"


# -- modes, empty queries, records ----------------------------------------------------------


def test_observe_mode_decides_the_same_and_enforces_nothing() -> None:
    enforce, observe = rules(POLICY), rules(POLICY, mode="observe")
    for sql in ("DROP TABLE t", "DELETE FROM t WHERE id = 1", "SELECT 1", "DO $$ $$"):
        e, o = enforce.decide(ctx(sql)), observe.decide(ctx(sql))
        assert (o.action, o.rule, o.message) == (e.action, e.rule, e.message)
        assert e.enforced and not o.enforced
        assert o.lets_through
        assert e.lets_through == (e.action == "allow")
    assert enforce.warning is None
    assert observe.warning is not None and "OBSERVE" in observe.warning
    assert observe.start_record() == {
        "mode": "observe",
        "enforced": False,
        "rules": ["no-drop", "review-deletes", "rest"],
        "warning": observe.warning,
    }
    assert "warning" not in enforce.start_record()


@pytest.mark.parametrize("sql", ["", "   ", "-- nothing", ";"])
def test_an_empty_query_runs_nothing_and_is_allowed(sql: str) -> None:
    d = rules("- {name: deny-all, action: deny}").decide(ctx(sql))
    assert (d.action, d.rule, d.statement_index, d.statements) == ("allow", EMPTY_RULE, None, ())


def _floats(value: Any) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in _floats(v)]
    if isinstance(value, list):
        return [f for v in value for f in _floats(v)]
    return []


def test_records_are_json_without_floats() -> None:
    p = rules(POLICY)
    review = p.decide(ctx("SELECT 1; DELETE FROM t WHERE id = 1")).to_record()
    assert review == {
        "action": "review",
        "rule": "review-deletes",
        "enforced": True,
        "statement": 1,
        "classes": ["delete", "select"],
        "statements": [
            {"index": 0, "action": "allow", "rule": "rest"},
            {"index": 1, "action": "review", "rule": "review-deletes"},
        ],
        "approvers": ["alice", "bob"],
        "timeout_ms": 120000,
        "window_ms": 30000,
    }
    deny = p.decide(ctx("DROP TABLE t")).to_record()
    assert deny["message"] == "no drops" and "timeout_ms" not in deny
    for record in (review, deny):
        assert _floats(record) == []
        assert json.loads(json.dumps(record)) == record


def test_deciding_is_pure() -> None:
    p = rules(POLICY)
    c = ctx("SELECT 1; DELETE FROM t WHERE id = 1")
    assert p.decide(c) == p.decide(c)


def test_a_deny_rule_without_message_names_itself() -> None:
    d = rules("- {name: nope, action: deny}").decide(ctx("SELECT 1"))
    assert d.message == "denied by policy rule 'nope'"


# -- the types themselves ---------------------------------------------------------------------


def test_policy_and_rule_refuse_what_cannot_be_right() -> None:
    rule = Rule("r", "allow")
    with pytest.raises(ValueError, match="at least one rule"):
        Policy("enforce", ())
    with pytest.raises(ValueError, match="mode"):
        Policy("audit", (rule,))
    with pytest.raises(ValueError, match="unknown approvers"):
        Policy("enforce", (Rule("r", "review", approvers=("carol",)),))
    with pytest.raises(ValueError, match="no approvers"):
        Rule("r", "review")
    with pytest.raises(ValueError, match="action"):
        Rule("r", "permit")


def test_a_policy_built_in_code_decides_like_a_parsed_one() -> None:
    p = Policy(
        "enforce",
        (
            Rule("no-write", "deny", Match(classes=frozenset({"insert"}))),
            Rule("rest", "allow"),
        ),
    )
    context = RequestContext({}, "db", None, "acct", classify("INSERT INTO t VALUES (1)"))
    assert p.decide(context).rule == "no-write"


@pytest.mark.parametrize("pattern", ["", "a[b", "[", "x\ny", "a[!"])
def test_bad_globs(pattern: str) -> None:
    with pytest.raises(ValueError):
        Glob.compile(pattern)


def test_globs() -> None:
    assert Glob.compile("/ci/*").matches("/ci/a/b")
    assert Glob.compile("a[]]b").matches("a]b")
    assert Glob.compile("a[!]]b").matches("axb")
    assert Glob.compile("x?").matches("xy") and not Glob.compile("x?").matches("x")
    assert not Glob.compile("App").matches("app")  # case-sensitive
    assert not Glob.compile("*").matches(None)
    assert not Glob.compile("*").matches(5)
