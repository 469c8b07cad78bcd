"""parse_policy: the example file, the accepted shapes, and every config error with the key
and line it names."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import ConfigError, load_config, parse_config
from appliance.policy import GROUPS, parse_policy
from appliance.signing.keys import SigningKey, VerifierKey

from .helpers import ALICE, BOB, EXAMPLE, TARGETS, config_text, ctx, load_policy


def test_the_example_file_parses_and_decides() -> None:
    config = load_config(EXAMPLE)
    policy = parse_policy(config.policy, targets=config.targets, verifiable=True)
    assert policy.mode == "enforce" and policy.enforced
    assert policy.approvers == {
        "alice": VerifierKey.from_vkey(ALICE),
        "bob": VerifierKey.from_vkey(BOB),
    }
    assert policy.approval_timeout == 600.0
    assert [r.name for r in policy.rules][:3] == ["no-drops", "no-shell-or-files", "review-risky"]
    review = policy.rules[2]
    assert (review.approvers, review.timeout, review.window) == (("alice", "bob"), 300.0, 0.0)
    assert review.match.classes == GROUPS["risky"]
    assert review.where.startswith(f"{EXAMPLE}:")
    assert policy.decide(ctx("SELECT 1; TRUNCATE t")).rule == "no-drops"
    assert policy.decide(ctx("DELETE FROM orders")).rule == "review-risky"
    assert policy.decide(ctx("SELECT * FROM orders")).rule == "reads"


def test_defaults() -> None:
    policy = load_policy("  rules: [{name: all, action: allow}]\n", approvals=False)
    assert policy.mode == "enforce" and policy.approvers == {}
    assert policy.approval_timeout == 600.0


def test_approvals_short_form_key_file_and_timeout(tmp_path: Path) -> None:
    carol = SigningKey.generate("carol", seed=b"c" * 32).verifier()
    (tmp_path / "carol.vkey").write_text(carol.to_vkey() + "\n")
    body = (
        "  mode: observe\n"
        "  approvals:\n"
        "    timeout: 90s\n"
        f'    approvers: {{alice: "{ALICE}", carol: {{file: {tmp_path / "carol.vkey"}}}}}\n'
        "    socket: /run/appliance/approvals.sock\n"
        "    webhooks: [https://hooks.example.com/x]\n"
        "  rules: [{name: r, action: review, approvers: [carol]}]\n"
    )
    policy = load_policy(body, approvals=False)
    assert policy.mode == "observe" and not policy.enforced
    assert policy.approvers == {"alice": VerifierKey.from_vkey(ALICE), "carol": carol}
    assert policy.approval_timeout == 90.0
    assert policy.decide(ctx("SELECT 1")).timeout == 90.0


def test_approvals_transport_keys_are_the_ones_approvals_parses() -> None:
    from appliance.approvals.config import TRANSPORT_KEYS
    from appliance.policy._config import _APPROVALS_TRANSPORT_KEYS

    assert tuple(_APPROVALS_TRANSPORT_KEYS) == tuple(TRANSPORT_KEYS)


def test_no_policy_section_is_an_error() -> None:
    config = parse_config(TARGETS, source="test.yaml")
    with pytest.raises(ConfigError, match="no 'policy' section"):
        parse_policy(config.policy, targets=config.targets)


# Each case: the policy body (under `policy:`, approvers alice and bob configured first);
# the line marked `# <-` is where the error must be reported, with this text in it.
ERRORS = [
    ("empty rules", "  rules: []  # <-\n", "the rule list is empty"),
    ("no rules key", "  mode: enforce\n", "missing required key 'rules'"),
    ("null section", None, "expected a mapping, got nothing (null)"),
    ("bad mode", "  mode: strict  # <-\n  rules: [{name: r, action: allow}]\n",
     "expected one of enforce, observe; got 'strict'"),
    ("unknown section key",
     "  rules: [{name: r, action: allow}]\n  default: allow  # <-\n", "unknown key 'default'"),
    ("unknown target",
     "  rules:\n    - name: r\n      match: {targets: [nope]}  # <-\n      action: allow\n",
     "unknown target 'nope' (known: orders-db, app-db)"),
    ("unknown approver",
     "  rules:\n    - name: r\n      action: review\n      approvers: [alice, carol]  # <-\n",
     "unknown approver 'carol' (known: alice, bob)"),
    ("unknown class",
     "  rules:\n    - name: r\n      match: {classes: [dropp]}  # <-\n      action: deny\n",
     "unknown statement class 'dropp' (did you mean drop"),
    ("unknown class in only_classes",
     "  rules:\n    - name: r\n      match: {only_classes: [reads]}  # <-\n      action: allow\n",
     "unknown statement class 'reads' (did you mean read"),
    ("review without approvers",
     "  rules:\n    - name: r  # <-\n      action: review\n", "a review rule needs 'approvers'"),
    ("approvers on an allow rule",
     "  rules:\n    - name: r\n      action: allow\n      approvers: [alice]  # <-\n",
     "'approvers' is only for review rules"),
    ("window on a deny rule",
     "  rules:\n    - name: r\n      action: deny\n      window: 1m  # <-\n",
     "'window' is only for review rules"),
    ("message on an allow rule",
     "  rules:\n    - name: r\n      action: allow\n      message: hi  # <-\n",
     "only deny and review rules have a message"),
    ("bad action",
     "  rules:\n    - name: r\n      action: permit  # <-\n",
     "expected one of allow, deny, review"),
    ("bad glob",
     "  rules:\n    - name: r\n      match: {databases: ['app[']}  # <-\n      action: allow\n",
     "bad pattern: unclosed '['"),
    ("unknown rule key",
     "  rules:\n    - name: r\n      matches: {}  # <-\n      action: allow\n",
     "unknown key 'matches'"),
    ("unknown match key",
     "  rules:\n    - name: r\n      match: {repo: x}  # <-\n      action: allow\n",
     "unknown key 'repo'"),
    ("unknown identity key",
     "  rules:\n    - name: r\n      match: {identity: {repo: x}}  # <-\n      action: allow\n",
     "unknown key 'repo' (expected one of: actor, environment, job, provider, ref, "
     "repository, run_id, verified, workflow, workflow_ref)"),
    ("verified identity without an issuer",
     "  rules:\n    - name: r\n      match: {identity: {repository: x}}  # <-\n      action: allow\n",
     "no token issuer is configured"),
    ("verified neither true, false nor any",
     "  rules:\n    - name: r\n      match: {identity: {verified: yes please}}  # <-\n"
     "      action: allow\n", "expected true, false or any"),
    ("verified: any alone",
     "  rules:\n    - name: r\n      match: {identity: {verified: any}}  # <-\n      action: allow\n",
     "matches every session"),
    ("empty identity",
     "  rules:\n    - name: r\n      match: {identity: {}}  # <-\n      action: allow\n",
     "give at least one of"),
    ("empty list",
     "  rules:\n    - name: r\n      match: {classes: []}  # <-\n      action: deny\n",
     "an empty list matches nothing"),
    ("duplicate rule name",
     "  rules:\n    - {name: r, action: deny, match: {classes: [drop]}}\n"
     "    - {name: r, action: allow}  # <-\n", "duplicate rule name 'r'"),
    ("rule name that YAML reads as a boolean",
     "  rules:\n    - {name: no, action: allow}  # <-\n", "expected a string, got 'no'"),
    ("unreachable after a catch-all deny",
     "  rules:\n    - {name: all, action: deny}\n"
     "    - {name: later, action: deny, match: {classes: [drop]}}  # <-\n",
     "rule 'later' can never match: rule 'all' before it matches every statement"),
    ("unreachable allow after a catch-all allow",
     "  rules:\n    - {name: all, action: allow}\n"
     "    - {name: later, action: allow, match: {classes: [select]}}  # <-\n",
     "rule 'later' can never match"),
    ("unattributed with a uid",
     "  rules:\n    - name: r\n      match:\n        unattributed: true\n"
     "        uid: [1000]  # <-\n      action: allow\n",
     "an unattributed flow has no uid: this rule can never match"),
    ("negative uid",
     "  rules:\n    - name: r\n      match: {uid: [-1]}  # <-\n      action: allow\n",
     "must be at least 0"),
    ("uid not a number",
     "  rules:\n    - name: r\n      match: {uid: [root]}  # <-\n      action: allow\n",
     "expected an integer, got 'root'"),
    ("unknown account",
     "  rules:\n    - name: r\n      match: {accounts: [admin]}  # <-\n      action: allow\n",
     "unknown service account 'admin'"),
    ("account of another target",
     "  rules:\n    - name: r\n      match:\n        targets: [app-db]\n"
     "        accounts: [ci-writer]  # <-\n      action: allow\n",
     "unknown service account 'ci-writer' (accounts of the matched targets: app-ci)"),
    ("zero timeout",
     "  rules:\n    - name: r\n      action: review\n      approvers: [alice]\n"
     "      timeout: 0s  # <-\n", "must be longer than 0"),
    ("bad duration",
     "  rules:\n    - name: r\n      action: review\n      approvers: [alice]\n"
     "      window: soon  # <-\n", "expected a duration"),
]  # fmt: skip

APPROVER_ERRORS = [
    ("key name differs",
     f'    approvers: [{{name: alice, key: "{BOB}"}}]  # <-\n', "this key is named 'bob', not 'alice'"),
    ("bad key text",
     '    approvers: [{name: alice, key: "alice+00000000+AAAA"}]  # <-\n', "bad approver key"),
    ("missing key file",
     "    approvers: [{name: alice, key: {file: /nonexistent/alice.vkey}}]  # <-\n",
     "cannot read verifier key /nonexistent/alice.vkey"),
    ("duplicate approver",
     f'    approvers:\n      - {{name: alice, key: "{ALICE}"}}\n'
     f'      - {{name: alice, key: "{ALICE}"}}  # <-\n', "duplicate approver 'alice'"),
    ("one key for two approvers (short form)",
     f'    approvers:\n      alice: "{ALICE}"\n      alias: "{ALICE}"  # <-\n',
     "this key is named 'alice', not 'alias'"),
    ("missing key",
     "    approvers: [{name: alice}]  # <-\n", "missing required key 'key'"),
    ("unknown approvals key",
     "    approvers: []\n    notify: x  # <-\n", "unknown key 'notify'"),
    ("zero approvals timeout", "    timeout: 0  # <-\n", "must be longer than 0"),
]  # fmt: skip


def _expect_error(text: str, message: str) -> None:
    marked = [i + 1 for i, line in enumerate(text.splitlines()) if "# <-" in line]
    with pytest.raises(ConfigError) as info:
        config = parse_config(text, source="test.yaml")
        parse_policy(config.policy, targets=config.targets)
    assert message in str(info.value)
    if marked:
        assert str(info.value).startswith(f"test.yaml:{marked[0]}: "), str(info.value)


@pytest.mark.parametrize(("name", "body", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_config_errors_name_the_key_and_line(name: str, body: str | None, message: str) -> None:
    text = TARGETS + "policy:\n" if body is None else config_text(body)
    _expect_error(text, message)


@pytest.mark.parametrize(
    ("name", "approvals", "message"), APPROVER_ERRORS, ids=[e[0] for e in APPROVER_ERRORS]
)
def test_approver_errors_name_the_key_and_line(name: str, approvals: str, message: str) -> None:
    text = TARGETS + "policy:\n  approvals:\n" + approvals + "  rules: [{name: r, action: allow}]\n"
    _expect_error(text, message)


def test_rules_after_a_catch_all_allow_that_can_still_decide() -> None:
    policy = load_policy(
        "  rules:\n"
        "    - {name: all, action: allow}\n"
        "    - {name: opaque, action: review, approvers: [bob], match: {classes: [unknown]}}\n"
        "    - {name: last, action: deny}\n"
    )
    assert policy.decide(ctx("DO $$ $$")).rule == "opaque"
    assert policy.decide(ctx("SELECT 1")).rule == "all"
