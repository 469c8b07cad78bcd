"""SignedDecision bodies: the exact text an approver signs, and everything the parser refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.approvals import (
    DecisionFormatError,
    SignedDecision,
    format_decision,
    parse_decision,
    sign_decision,
)
from appliance.approvals.decision import MAX_REASON_CHARS
from appliance.signing.note import open_note

from .helpers import ALICE, BOB

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
WHEN = datetime(2026, 11, 25, 12, 0, 30, tzinfo=UTC)
DECISION = SignedDecision("3f1c0a9b2d4e6f708192", SHA, "approve", "alice", WHEN, 'ok "for" 14:00')
BODY = (
    "appliance/approval-decision/v1\n"
    "request 3f1c0a9b2d4e6f708192\n"
    f"statement-sha256 {SHA}\n"
    "decision approve\n"
    "approver alice\n"
    "time 2026-11-25T12:00:30Z\n"
    'reason "ok \\"for\\" 14:00"\n'
)


def test_body_is_exactly_the_documented_format() -> None:
    assert format_decision(DECISION) == BODY
    assert parse_decision(BODY) == DECISION


def test_signed_decision_is_a_c2sp_note_by_the_approver() -> None:
    note = sign_decision(DECISION, ALICE)
    body, signature = note.split("\n\n")
    assert body + "\n" == BODY
    assert signature.startswith("— alice ") and signature.endswith("\n")
    text, keys = open_note(note, [ALICE.verifier(), BOB.verifier()])
    assert text == BODY and keys == [ALICE.verifier()]
    assert sign_decision(DECISION, ALICE) == note  # Ed25519 is deterministic


def test_reason_cannot_inject_lines() -> None:
    evil = SignedDecision(
        DECISION.request_id, SHA, "deny", "bob", WHEN, "x\napprover mallory\n\n— mallory AAAA"
    )
    body = format_decision(evil)
    assert body.count("\n") == 7
    assert parse_decision(body) == evil


@given(st.text(max_size=MAX_REASON_CHARS))
def test_any_reason_round_trips(reason: str) -> None:
    d = SignedDecision(DECISION.request_id, SHA, "deny", "bob", WHEN, reason)
    body = format_decision(d)
    assert body.isascii() and body.count("\n") == 7
    assert parse_decision(body) == d


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (BODY[:-1], "end with a newline"),
        (BODY.replace("/v1", "/v2"), "must start with"),
        (BODY + "extra line\n", "8 lines"),
        (BODY.replace("approver alice\n", ""), "6 lines"),
        (BODY.replace("decision approve", "decision maybe"), "approve or deny"),
        (BODY.replace("decision approve", "decision  approve"), "approve or deny"),
        (BODY.replace("approver alice", "approver: alice"), "expected the 'approver' line"),
        (BODY.replace("T12:00:30Z", "T12:00:30+00:00"), "bad reason or time"),
        (BODY.replace('"ok \\"for\\" 14:00"', "ok for 14:00"), "bad reason or time"),
        (BODY.replace('"ok \\"for\\" 14:00"', "42"), "must be a JSON string"),
        (BODY.replace('"ok \\"for\\" 14:00"', '"caf\u00e9"'), "canonical"),
        (BODY.replace(SHA, SHA.upper()), "statement-sha256"),
        (BODY.replace(SHA, SHA[:-2]), "statement-sha256"),
        (BODY.replace("3f1c0a9b2d4e6f708192", "3F1C"), "request id"),
        (BODY.replace("approver alice", "approver al ice"), "approver name"),
        (
            BODY.replace("request 3f1c0a9b2d4e6f708192\n", "").replace(
                "decision approve\n", "decision approve\nrequest 3f1c0a9b2d4e6f708192\n"
            ),
            "expected the 'request' line",
        ),
    ],
)
def test_parser_refuses_anything_but_the_canonical_body(body: str, message: str) -> None:
    with pytest.raises(DecisionFormatError, match=message):
        parse_decision(body)


def test_formatter_refuses_bad_fields() -> None:
    with pytest.raises(DecisionFormatError, match="reason longer"):
        format_decision(
            SignedDecision(
                DECISION.request_id, SHA, "deny", "bob", WHEN, "x" * (MAX_REASON_CHARS + 1)
            )
        )
    with pytest.raises(DecisionFormatError, match="timezone-aware"):
        format_decision(
            SignedDecision(DECISION.request_id, SHA, "deny", "bob", datetime(2026, 1, 1), "")
        )


def test_reason_is_json_with_ascii_escapes() -> None:
    body = format_decision(
        SignedDecision(DECISION.request_id, SHA, "deny", "bob", WHEN, "naïve\t✓")
    )
    reason_line = body.splitlines()[-1]
    assert reason_line == 'reason "na\\u00efve\\t\\u2713"'
    assert json.loads(reason_line.split(" ", 1)[1]) == "naïve\t✓"
