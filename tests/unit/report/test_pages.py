"""Page helpers: the status headline, and the commands the verify page gives (run for real
in test_package)."""

from __future__ import annotations

from appliance.report._facts import Collector, LogCheck, LogFacts, Period
from appliance.report._pages import jq_commands, openssl_commands, status_of


def facts_with(*statuses: str) -> Collector:
    c = Collector(Period())
    for i, status in enumerate(statuses):
        lf = LogFacts(f"l{i}", f"l{i}", f"o{i}", LogCheck(status), read_error="forced in")
        c.feed(lf, [])
    return c


def test_status_headline_puts_tampering_first() -> None:
    assert status_of(facts_with("verified", "verified").facts()).headline.startswith(
        "VERIFIED: all 2"
    )
    bad = status_of(facts_with("verified", "unverifiable", "tampered").facts())
    assert bad.cls == "bad" and bad.headline.startswith("TAMPERING DETECTED: 1 of 3 log(s)")
    warn = status_of(facts_with("unverifiable", "verified").facts())
    assert warn.cls == "warn" and warn.headline.startswith("NOT VERIFIED: 1 of 2")


def test_commands_name_the_period_and_the_log() -> None:
    c = Collector(Period("2026-12-01T00:00:00.000000Z", None))
    jq = jq_commands(c.facts())
    assert 'select(.ts >= "2026-12-01T00:00:00.000000Z") | ' in jq and ".ts <" not in jq
    assert "L='logs/a b'" in openssl_commands("a b")
