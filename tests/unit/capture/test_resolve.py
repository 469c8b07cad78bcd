"""Host-name targets: cached answers, re-resolution, and no unprotecting on a failed lookup."""

from __future__ import annotations

from appliance.capture import HostResolver


def test_answers_are_cached_until_refreshed() -> None:
    answers = {"db": ["192.0.2.1"]}
    calls: list[str] = []

    def lookup(host: str) -> list[str]:
        calls.append(host)
        return answers.get(host, [])

    resolver = HostResolver(lookup)
    assert resolver("db") == ("192.0.2.1",)
    assert resolver("db") == ("192.0.2.1",)
    assert calls == ["db"]
    answers["db"] = ["192.0.2.7", "2001:db8::7"]
    assert resolver.refresh() == {"db": (("192.0.2.1",), ("192.0.2.7", "2001:db8::7"))}
    assert resolver("db") == ("192.0.2.7", "2001:db8::7")
    assert resolver.refresh() == {}


def test_a_failed_lookup_keeps_the_last_good_addresses() -> None:
    answers = {"db": ["192.0.2.1"]}
    resolver = HostResolver(lambda host: answers.get(host, []))
    resolver("db")
    answers.clear()
    assert resolver.refresh() == {}
    assert resolver("db") == ("192.0.2.1",)
