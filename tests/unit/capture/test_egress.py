"""The nftables egress guard: the script it sends and how it reads ``nft list`` back."""

from __future__ import annotations

from appliance.capture._egress import (
    DEVICES_PER_CHAIN,
    compare_egress,
    delete_script,
    egress_script,
    parse_egress,
)

STATEMENTS = (
    "meta mark 0x00004150 accept",
    "ip daddr 198.18.0.2 tcp dport 5432 counter drop",
    "ip6 daddr fd00:a9e::2 tcp dport 5432 counter drop",
)

# What nft 1.0.6 printed for the guard in the lab (two devices; one chain).
LISTED = """\
table netdev appliance {
	chain egress-0 {
		type filter hook egress devices = { ap7f4351r0, lo } priority -500; policy accept;
		meta mark 0x00004150 accept
		ip daddr 198.18.0.2 tcp dport 5432 counter packets 3 bytes 180 drop
		ip6 daddr fd00:a9e::2 tcp dport 5432 counter packets 0 bytes 0 drop
	}
}
"""


def test_script_replaces_the_table_in_one_transaction() -> None:
    script = egress_script(STATEMENTS, ["lo", 'we"ird'])
    assert script.splitlines()[:5] == [
        "table netdev appliance",
        "delete table netdev appliance",
        "table netdev appliance {",
        "  chain egress-0 {",
        '    type filter hook egress devices = { "lo", "we\\"ird" } priority -500; policy accept;',
    ]
    assert "    ip daddr 198.18.0.2 tcp dport 5432 counter drop" in script.splitlines()
    assert delete_script() == "table netdev appliance\ndelete table netdev appliance\n"


def test_many_devices_are_split_over_chains() -> None:
    devices = [f"veth{i}" for i in range(DEVICES_PER_CHAIN * 2 + 1)]
    script = egress_script(STATEMENTS, devices)
    assert script.count("type filter hook egress") == 3
    assert script.count("meta mark 0x00004150 accept") == 3


def test_parse_reads_devices_rules_and_counters() -> None:
    state = parse_egress(LISTED)
    assert state.present and state.devices == ["ap7f4351r0", "lo"]
    assert state.chains[0].rules[1] == ("ip daddr 198.18.0.2 tcp dport 5432 counter drop", 3, 180)
    single = parse_egress(LISTED.replace("devices = { ap7f4351r0, lo }", 'device "eth0"'))
    assert single.devices == ["eth0"]
    assert not parse_egress("").present


def test_compare_in_place_counters_and_uncovered_devices() -> None:
    states = compare_egress(STATEMENTS, ["ap7f4351r0", "lo", "docker0"], parse_egress(LISTED))
    by_rule = {s.rule: s for s in states}
    assert by_rule["ip daddr 198.18.0.2 tcp dport 5432 counter drop"].packets == 3
    assert by_rule["meta mark 0x00004150 accept"].packets is None  # no counter on it
    assert [s.rule for s in states if not s.ok] == ["docker0"]
    assert by_rule["docker0"].kind == "device"


def test_compare_when_missing_reordered_or_extra() -> None:
    assert not any(s.present for s in compare_egress(STATEMENTS, ["lo"], parse_egress("")))
    swapped = LISTED.replace("		meta mark 0x00004150 accept\n", "").replace(
        "	}\n}", "		meta mark 0x00004150 accept\n		tcp dport 22 drop\n	}\n}"
    )
    bad = {(s.rule, s.kind, s.present, s.in_place)
           for s in compare_egress(STATEMENTS, ["lo"], parse_egress(swapped)) if not s.ok}  # fmt: skip
    assert bad == {
        ("meta mark 0x00004150 accept", "egress", True, False),
        ("ip daddr 198.18.0.2 tcp dport 5432 counter drop", "egress", True, False),
        ("ip6 daddr fd00:a9e::2 tcp dport 5432 counter drop", "egress", True, False),
        ("tcp dport 22 drop", "unexpected", True, False),
    }
