"""What every SQL protocol's per-statement policy shares (appliance.proxy.statement_policy),
driven with PostgreSQL's and MySQL's classifiers: the same rule decides alike for both and
is worded alike; built-in refusals; the approval request and what its answer means; the
digest an approver signs; settings in flight; the core's holds."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from appliance.approvals import Outcome, Resolution
from appliance.approvals.request import UNATTRIBUTED, ApprovalRequest
from appliance.policy import classify
from appliance.policy._mysql import classify_mysql
from appliance.proxy.commands import ApprovalAnswered, AskApproval, PauseReading
from appliance.proxy.statement_policy import (
    Holds,
    SettingsInFlight,
    StatementPolicy,
    read_otherwise,
    settings_in_flight_message,
    statement_bytes,
)
from tests.unit.policy.helpers import rules

POLICY = """
- {name: no-drop, match: {classes: [drop]}, action: deny, message: no DROP from CI}
- {name: hold, match: {classes: [delete]}, action: review, approvers: [alice], timeout: 90s, window: 10m}
- {name: rest, action: allow}
"""


def _policy() -> StatementPolicy[str, int]:
    ids = iter(range(100))
    return StatementPolicy(
        rules(POLICY),
        session="s1",
        target="db",
        database="app",
        account="ci",
        identity={"source": "unattributed"},
        new_id=lambda: f"d{next(ids)}",
        mask=lambda text: text.replace("4111111111111111", "[REDACTED:CARD]"),
    )


@pytest.mark.parametrize("classify_", [classify, classify_mysql], ids=["postgres", "mysql"])
def test_one_rule_decides_and_words_alike_for_both_grammars(classify_: Any) -> None:
    policy = _policy()
    allowed = policy.decide(classify_("SELECT * FROM t"))
    assert (allowed.action, allowed.denial, allowed.decision) == ("allow", None, None)
    assert allowed.record == {
        "decision": "allow",
        "rule": "rest",
        "classes": ["select"],
        "reads": ["t"],
    }
    denied = policy.decide(classify_("DROP TABLE t"))
    assert denied.action == "deny" and denied.record["decision_id"] == "d0"
    assert denied.denial is not None
    assert denied.denial.message == "statement denied by policy rule 'no-drop': no DROP from CI"
    assert denied.denial.detail == "appliance decision d0; classes: drop"
    held = policy.decide(classify_("DELETE FROM t WHERE id = 1"))
    assert held.action == "review" and held.denial is None and held.decision is not None
    assert held.record["decision"] == "review" and held.record["writes"] == ["t"]


def test_the_approval_request_and_what_its_answers_mean() -> None:
    policy = _policy()
    held = policy.decide(classify("DELETE FROM t WHERE card = '4111111111111111'"))
    assert held.decision is not None
    fields = policy.approval_fields(
        held.decision, "DELETE FROM t WHERE card = '4111111111111111'", [b"1", None]
    )
    assert fields["statement"] == "DELETE FROM t WHERE card = '[REDACTED:CARD]'"
    assert fields["identity"] == UNATTRIBUTED and fields["approvers"] == ("alice",)
    assert fields["timeout"] == timedelta(seconds=90) and fields["window"] == timedelta(minutes=10)
    assert fields["session"] == "s1" and fields["rule"] == "hold"
    now = datetime(2026, 1, 1, tzinfo=UTC)
    request = ApprovalRequest(
        "r1",
        "s1",
        UNATTRIBUTED,
        "db",
        "ci",
        "hold",
        ("alice",),
        "DELETE",
        "0" * 64,
        now,
        now + timedelta(seconds=90),
    )
    granted = policy.approval_answered(
        "d0", ApprovalAnswered(1, Outcome(Resolution.GRANTED, request, "alice", "ok"), "r1")
    )
    assert granted.approved and granted.denial is None
    assert granted.record == {"request": "r1", "outcome": "granted", "approver": "alice"}
    refused = policy.approval_answered(
        "d0", ApprovalAnswered(1, Outcome(Resolution.DENIED, request, "alice", "freeze"), "r1")
    )
    assert not refused.approved and refused.denial is not None
    assert refused.denial.message == "approval r1 denied by alice: freeze"
    assert refused.denial.detail == "appliance decision d0; approval request r1"
    none = policy.approval_answered("d0", ApprovalAnswered(1, error="approvals are not configured"))
    assert (
        none.denial is not None
        and "none can be asked: approvals are not configured" in none.denial.message
    )
    assert none.record == {"outcome": "unavailable", "error": "approvals are not configured"}


def test_the_exact_bytes_are_the_text_or_an_unambiguous_encoding() -> None:
    assert statement_bytes("select 1") == b"select 1"  # sha256 of the text itself
    assert statement_bytes("select 1", []) == b"select 1"
    assert statement_bytes("select ?", [b"ab", None]) == (
        b"\x00\x00\x00\x00\x08select ?\x00\x00\x00\x02ab\xff\xff\xff\xff"
    )
    # MySQL's text may hold a NUL: it cannot pass for another text with parameters.
    assert statement_bytes("a", [b"b"]) != statement_bytes("a\x00\x00\x00\x00\x01b")
    assert statement_bytes("a\x00") == b"\x00\x00\x00\x00\x02a\x00"
    assert statement_bytes("a", [None]) != statement_bytes("a", [b""])
    fields = _policy().approval_fields(
        _policy().decide(classify("DELETE FROM t")).decision,  # type: ignore[arg-type]
        "DELETE FROM t",
    )
    assert fields["statement_sha256"] == hashlib.sha256(b"DELETE FROM t").hexdigest()


def test_built_in_refusals_and_the_allowed_cache() -> None:
    policy = _policy()
    refused = policy.refuse(None, "(built-in) x", settings_in_flight_message("SET"))
    assert refused.record == {
        "decision": "deny", "rule": "(built-in) x", "enforced": True, "decision_id": "d0", "classes": []
    }  # fmt: skip
    assert refused.denial is not None and "(SET); send it after" in refused.denial.message
    assert policy.cached("k") is None
    policy.remember("k", 1)
    assert policy.cached("k") == 1
    assert read_otherwise("select 'é'", backslashes=False)
    assert read_otherwise("select '\\'", backslashes=True)
    assert not read_otherwise("select '\\'", backslashes=False)


def test_settings_in_flight_until_answered_and_settled() -> None:
    flight = SettingsInFlight()
    flight.sent(1)
    flight.sent(2)
    flight.answered(1)
    assert flight and 1 in flight  # answered, not yet settled (PostgreSQL: ReadyForQuery)
    flight.settle()
    assert 1 not in flight and flight
    flight.done(2)
    assert not flight


def test_holds_ask_pause_and_answer_once() -> None:
    holds: Holds[str] = Holds()
    requests: list[tuple[int, dict[str, Any], str]] = []
    assert holds.commands(requests, False) is None  # the hot path
    requests.append((3, {"rule": "hold"}, "stmt 3"))
    assert holds.commands(requests, True) == [
        AskApproval(3, {"rule": "hold"}),
        PauseReading("job", "hold", True),
    ]
    assert requests == []
    assert holds.answered(4) is None and holds.answered(3) == "stmt 3" and holds.answered(3) is None
    assert holds.commands(requests, False) == [PauseReading("job", "hold", False)]
    assert holds.drain() == [PauseReading("job", "drain", True)]
    assert holds.commands(requests, False) == []  # draining: the core decides to end
