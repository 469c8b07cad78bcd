"""Refused connections are recorded in full a few at a time, and counted beyond that."""

from __future__ import annotations

from typing import Any

from appliance.proxy.refusals import RefusalLog


class Ledger:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def append(self, type: str, *, data: dict[str, Any], **_: Any) -> None:
        self.entries.append((type, data))


def test_a_flood_costs_a_few_entries_and_one_count_per_interval() -> None:
    ledger = Ledger()
    clock = iter(float(t) for t in range(1000))
    log = RefusalLog(ledger, clock=lambda: next(clock), first=3, mask=str.upper)  # type: ignore[arg-type]
    for _ in range(50):
        log.refused(source="10.0.0.9", reason="startup timed out", data={"detail": "slow"})
    log.refused(source="10.0.0.8", reason="startup timed out", data={})
    log.refused(source="10.0.0.9", reason="not protected", data={}, kind="capture.refused")
    assert [t for t, _ in ledger.entries] == ["connection.refused"] * 4 + ["capture.refused"]
    assert ledger.entries[0][1] == {
        "source": "10.0.0.9",
        "reason": "startup timed out",
        "detail": "SLOW",
    }
    log.flush()
    (summary,) = ledger.entries[5:]
    assert summary[0] == "connection.refused.summary"
    assert {k: summary[1][k] for k in ("source", "reason", "count", "recorded")} == {
        "source": "10.0.0.9",
        "reason": "startup timed out",
        "count": 50,
        "recorded": 3,
    }
    # A new interval records the first few again.
    log.refused(source="10.0.0.9", reason="startup timed out", data={})
    assert ledger.entries[-1][0] == "connection.refused"
    log.flush()
    assert ledger.entries[-1][0] == "connection.refused"  # nothing beyond the first: no summary
