"""The collector on hand-made logs: the period rule, unclean ends, sessions without end,
holds and their outcomes, unsigned tails, and logs outside the period left out."""

from __future__ import annotations

from typing import Any

from appliance.ledger.entries import Entry, encode_entry, make_entry
from appliance.report._facts import Collector, LogCheck, LogFacts, Period

CI = {"source": "ebpf", "ci": {"provider": "github", "repository": "acme/shop", "job": "j"}}


class Log:
    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def add(self, ts: str, type_: str, data: dict[str, Any], session: str | None = None) -> None:
        seq = len(self.entries)
        obj = make_entry(
            origin="o", seq=seq, ts=f"2026-12-{ts}.000000Z", type=type_, data=data,
            session=session, identity=CI if type_ == "session.start" else None,
            account="ci", target="db",
        )  # fmt: skip
        self.entries.append(Entry(seq, encode_entry(obj), obj))


def statement(text: str, decision: str) -> dict[str, Any]:
    return {"n": 1, "text": text, "decision": {"decision": decision, "classes": ["x"]}}


def feed(log: Log, period: Period, *, signed: int | None = None, name: str = "a") -> Collector:
    c = Collector(period)
    c.feed(LogFacts(name, name, None, LogCheck("verified", signed_size=signed)), log.entries)
    return c


def test_period_unclean_end_and_holds() -> None:
    log = Log()
    log.add("01T10:00:00", "appliance.start", {})
    log.add("01T10:00:01", "session.start", {}, "s1")  # starts before the period
    log.add("02T00:00:01", "statement", statement("DROP TABLE t", "deny"), "s1")
    log.add("02T00:00:02", "approval.requested", {"id": "r1", "statement": "DELETE"}, "s1")
    log.add("02T00:00:03", "approval.granted", {"id": "r1", "approver": "alice", "note": "n"}, "s1")
    log.add("02T00:00:04", "session.end", {"reason": "closed"}, "s1")
    log.add("02T00:00:05", "appliance.start", {})  # again, without a stop: a crash
    log.add("02T00:00:06", "session.start", {}, "s2")  # never ends
    log.add("03T00:00:00", "statement", statement("SELECT 1", "allow"), "s2")  # after the period
    facts = feed(
        log, Period("2026-12-02T00:00:00.000000Z", "2026-12-03T00:00:00.000000Z"), signed=7
    ).facts()
    t = facts.totals()
    assert (t["sessions"], t["statements"], t["denials"], t["holds"]) == (2, 1, 1, 1)
    assert facts.holds[0].outcome == "granted" and facts.holds[0].approver == "alice"
    assert [s.id for s in facts.in_period()] == ["s1", "s2"]
    kinds = sorted(g.kind for g in facts.gaps)
    assert kinds == ["session without end", "unclean end", "unclean end", "unsigned tail"]
    [tail] = [g for g in facts.gaps if g.kind == "unsigned tail"]
    assert tail.detail.startswith("2 entries after the latest signed checkpoint (size 7)")
    assert facts.days == {
        "2026-12-02": {"sessions": 1, "statements": 1, "denials": 1, "holds": 1, "masked": 0}
    }


def test_a_log_outside_the_period_is_left_out() -> None:
    log = Log()
    log.add("01T10:00:00", "appliance.start", {})
    log.add("01T10:00:01", "session.start", {}, "s1")
    facts = feed(log, Period("2026-12-05T00:00:00.000000Z", None)).facts()
    assert facts.logs == [] and facts.gaps == [] and facts.in_period() == []


def test_capture_events_are_gaps() -> None:
    log = Log()
    log.add("01T10:00:00", "appliance.start", {})
    log.add("01T10:00:01", "capture.bpf_failed", {"reason": "no BTF"})
    log.add("01T10:00:02", "capture.rules_restored", {"table": "nat"})
    log.add("01T10:00:03", "appliance.stop", {"reason": "signal"})
    facts = feed(log, Period()).facts()
    assert [(g.kind, g.detail) for g in facts.gaps] == [
        ("capture", "eBPF attribution failed to load: flows ran unattributed "
                    "(capture.bpf_failed: reason=no BTF)"),
        ("capture", "capture rules had been removed or changed and were restored "
                    "(capture.rules_restored: table=nat)"),
    ]  # fmt: skip


def test_two_logs_of_one_origin_are_a_gap() -> None:
    log = Log()
    log.add("01T10:00:00", "appliance.start", {})
    log.add("01T10:00:01", "appliance.stop", {})
    c = Collector(Period())
    for name in ("copy-1", "copy-2"):
        c.feed(LogFacts(name, name, None, LogCheck("verified", signed_size=2)), log.entries)
    gaps = c.facts().gaps
    assert [g.kind for g in gaps] == ["duplicate origin", "duplicate origin"]
    assert gaps[0].detail == "2 logs claim origin o: copy-1, copy-2"
