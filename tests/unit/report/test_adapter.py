"""The adapter reads entries as the producers write them (shapes taken from a real ledger
of `make demo`): one statement, response, approval and capture entry each, and identities."""

from __future__ import annotations

from typing import Any

from appliance.ledger.entries import Entry, encode_entry, make_entry
from appliance.report import _adapter as a

IDENT = {
    "source": "ebpf",
    "how": "ebpf+procfs",
    "pid": 4576,
    "comm": "psql",
    "exe": "/usr/lib/postgresql/15/bin/psql",
    "ci": {"provider": "github", "repository": "acme/shop", "workflow": "nightly-cleanup",
           "job": "prune-customers", "run_id": "4242"},
}  # fmt: skip
MASKS = {"columns": {"card": 4}, "detectors": {"card": 4, "email": 4}}


def entry(type_: str, data: dict[str, Any], seq: int = 7, **kw: Any) -> Entry:
    obj = make_entry(
        origin="o", seq=seq, ts="2026-12-06T00:26:25.000001Z", type=type_, data=data,
        session=kw.get("session", "3a2306de15ffd1a9"), identity=kw.get("identity", IDENT),
        account="ci", target="orders-db",
    )  # fmt: skip
    return Entry(seq, encode_entry(obj), obj)


def test_a_denied_statement() -> None:
    verdict = {"action": "deny", "classes": ["drop"], "decision": "deny", "enforced": True,
               "message": "DROP and TRUNCATE are not allowed from CI", "rule": "no-destructive-ddl"}  # fmt: skip
    [ev] = a.events_of(entry("statement", {"n": 1, "protocol": "simple", "decision": verdict,
                                           "text": "DROP TABLE customers"}))  # fmt: skip
    assert ev == a.Decided(
        a.Where(7, "2026-12-06T00:26:25.000001Z", "3a2306de15ffd1a9"), 1, "DROP TABLE customers",
        ("drop",), "deny", True, "no-destructive-ddl", "DROP and TRUNCATE are not allowed from CI",
    )  # fmt: skip


def test_observe_mode_and_no_policy() -> None:
    [ev] = a.events_of(entry("statement", {"n": 2, "text": "DROP TABLE t",
                                           "decision": {"decision": "deny", "enforced": False}}))  # fmt: skip
    assert isinstance(ev, a.Decided) and ev.decision == "deny" and not ev.enforced
    [ev] = a.events_of(entry("statement", {"n": 3, "text": "SELECT 1"}))
    assert isinstance(ev, a.Decided) and ev.decision == "allow" and ev.enforced


def test_masking_is_counted_once_per_place() -> None:
    result = {"sha256": "ab" * 32, "size": 10, "masking": MASKS}
    events = a.events_of(entry("response", {"n": 1, "outcome": "ok", "result": result,
                                            "masked_to_job": MASKS}))  # fmt: skip
    assert [(type(e), e.kinds, e.to_job) for e in events if isinstance(e, a.Masked)] == [
        (a.Masked, {"card": 4, "email": 4}, False),  # the rows as recorded
        (a.Masked, {"card": 4, "email": 4}, True),  # the rows sent back to the job
    ]
    # masking.applied repeats what the statement and response entries say
    assert (
        a.events_of(entry("masking.applied", {"n": 1, "where": "rows sent to the job", **MASKS}))
        == []
    )


def test_approval_outcomes() -> None:
    note = "appliance/approval-decision/v1\nrequest r1\n...\n\n— alice AAAA\n"
    [ev] = a.events_of(entry("approval.granted", {"id": "r1", "approver": "alice",
                                                  "reason": "ticket OPS-42", "note": note,
                                                  "decided": "2026-12-06T00:26:27Z"}))  # fmt: skip
    assert isinstance(ev, a.HoldDecided) and (ev.outcome, ev.approver, ev.note) == (
        "granted",
        "alice",
        note,
    )
    [ev] = a.events_of(entry("approval.timeout", {"id": "r2"}))
    assert isinstance(ev, a.HoldDecided) and ev.outcome == "timed out" and ev.note is None
    [ev] = a.events_of(entry("approval.rejected", {"id": "r3", "reason": "unknown-key",
                                                   "detail": "no such key", "approver": "mallory"}))  # fmt: skip
    assert isinstance(ev, a.DecisionRefused) and ev.reason == "unknown-key"


def test_capture_events_and_unknown_types() -> None:
    [ev] = a.events_of(
        entry("capture.rules_restored", {"rule": "nat"}, session=None, identity=None)
    )
    assert isinstance(ev, a.Noted) and (ev.kind, ev.detail) == ("capture", "rule=nat")
    [ev] = a.events_of(entry("identity.mismatch", {"field": "repository"}))
    assert isinstance(ev, a.Noted) and ev.kind == "identity"
    assert a.events_of(entry("session.ready", {"auth_method": "scram-sha-256"})) == []
    assert a.events_of(entry("something.new", {})) == []


def test_identity_keys() -> None:
    key = a.identity_key(IDENT)
    assert key.label == "github acme/shop · nightly-cleanup / prune-customers" and key.claimed
    unattributed = {"source": "unattributed", "how": "unattributed: eBPF attribution disabled"}
    assert a.identity_key(unattributed).label == "unattributed"
    assert a.unattributed_reason(unattributed) == "unattributed: eBPF attribution disabled"
    assert a.unattributed_reason(IDENT) is None
    verified = {**IDENT, "verified": ["job", "provider", "repository", "run_id", "workflow"]}
    assert not a.identity_key(verified).claimed
    partly = {**IDENT, "verified": ["provider", "repository"]}
    assert a.identity_key(partly).claimed
    plain = {"source": "ebpf", "exe": "/usr/bin/psql", "ci": None}
    assert a.identity_key(plain).label == "no CI identity: /usr/bin/psql"
