"""Rendering, parsing and comparing the capture's netfilter rules (pure: no netfilter here).

The expected texts are what iptables-save prints for these rules (the lab test
``test_install_status_remove_with_the_cli`` checks the round trip on a real kernel).
"""

from __future__ import annotations

import pytest

from appliance.capture import RuleSet, render_rules
from appliance.capture._rules import (
    compare,
    family_rules_from_saved,
    install_script,
    parse_save,
    remove_script,
)
from appliance.config import ConfigError, parse_config

CONFIG = """\
targets:
  - name: db
    protocol: postgres
    addresses:
      - 198.18.0.2:5432
      - "[fd00:a9e:0::2]:5432"
      - "[::ffff:198.18.0.2]:5432"
      - 10.9.0.0/16:6432
      - db.lab.test:5432
    accounts: [{name: ci, user: app, secret: {file: /x}}]
  - name: again
    protocol: postgres
    addresses: [198.18.0.2:5432]
    accounts: [{name: ci, user: app, secret: {file: /x}}]
capture: {listen_port: 15001, mark: 0x4150, bridges: [docker0, br-*]}
"""
DNS = {"db.lab.test": ["198.18.1.2", "fd00:a9e:1::2"]}

OWN = '-m cgroup --path "/system.slice/appliance.service" -m comment --comment "appliance cgroup id 4242"'
IPV4 = f"""\
*raw
:APPLIANCE-OUTPUT - [0:0]
-I OUTPUT 1 -j APPLIANCE-OUTPUT
-A APPLIANCE-OUTPUT -m mark --mark 0x4150 -j CT --zone-orig 16720
COMMIT
*nat
:APPLIANCE-OUTPUT - [0:0]
:APPLIANCE-PREROUTING - [0:0]
-I OUTPUT 1 -j APPLIANCE-OUTPUT
-I PREROUTING 1 -j APPLIANCE-PREROUTING
-A APPLIANCE-OUTPUT -m mark --mark 0x4150 -j RETURN
-A APPLIANCE-OUTPUT -d 198.18.0.2/32 -p tcp -m tcp --dport 5432 -j REDIRECT --to-ports 15001
-A APPLIANCE-OUTPUT -d 10.9.0.0/16 -p tcp -m tcp --dport 6432 -j REDIRECT --to-ports 15001
-A APPLIANCE-OUTPUT -d 198.18.1.2/32 -p tcp -m tcp --dport 5432 -j REDIRECT --to-ports 15001
-A APPLIANCE-PREROUTING -d 198.18.0.2/32 -i docker0 -p tcp -m tcp --dport 5432 -j REDIRECT --to-ports 15001
-A APPLIANCE-PREROUTING -d 10.9.0.0/16 -i docker0 -p tcp -m tcp --dport 6432 -j REDIRECT --to-ports 15001
-A APPLIANCE-PREROUTING -d 198.18.1.2/32 -i docker0 -p tcp -m tcp --dport 5432 -j REDIRECT --to-ports 15001
-A APPLIANCE-PREROUTING -d 198.18.0.2/32 -i br-+ -p tcp -m tcp --dport 5432 -j REDIRECT --to-ports 15001
-A APPLIANCE-PREROUTING -d 10.9.0.0/16 -i br-+ -p tcp -m tcp --dport 6432 -j REDIRECT --to-ports 15001
-A APPLIANCE-PREROUTING -d 198.18.1.2/32 -i br-+ -p tcp -m tcp --dport 5432 -j REDIRECT --to-ports 15001
COMMIT
*filter
:APPLIANCE-OUTPUT - [0:0]
:APPLIANCE-FORWARD - [0:0]
:APPLIANCE-INPUT - [0:0]
-I OUTPUT 1 -j APPLIANCE-OUTPUT
-I FORWARD 1 -j APPLIANCE-FORWARD
-I INPUT 1 -j APPLIANCE-INPUT
-A APPLIANCE-OUTPUT -m mark --mark 0x4150 {OWN} -j RETURN
-A APPLIANCE-OUTPUT -m mark --mark 0x4150 -m conntrack --ctstate ESTABLISHED -j RETURN
-A APPLIANCE-OUTPUT -d 198.18.0.2/32 -p tcp -m tcp --dport 5432 -j REJECT --reject-with tcp-reset
-A APPLIANCE-OUTPUT -d 10.9.0.0/16 -p tcp -m tcp --dport 6432 -j REJECT --reject-with tcp-reset
-A APPLIANCE-OUTPUT -d 198.18.1.2/32 -p tcp -m tcp --dport 5432 -j REJECT --reject-with tcp-reset
-A APPLIANCE-FORWARD -d 198.18.0.2/32 -p tcp -m tcp --dport 5432 -j REJECT --reject-with tcp-reset
-A APPLIANCE-FORWARD -d 10.9.0.0/16 -p tcp -m tcp --dport 6432 -j REJECT --reject-with tcp-reset
-A APPLIANCE-FORWARD -d 198.18.1.2/32 -p tcp -m tcp --dport 5432 -j REJECT --reject-with tcp-reset
-A APPLIANCE-INPUT ! -i lo -p tcp -m tcp --dport 15001 -m conntrack ! --ctstate DNAT -j REJECT --reject-with tcp-reset
COMMIT
"""


def rules(cgroup_id: int | None = 4242) -> RuleSet:
    return render_rules(
        parse_config(CONFIG),
        resolver=lambda host: DNS.get(host, []),
        cgroup_ids={"/system.slice/appliance.service": cgroup_id}.get,
    )


def test_ipv4_script_is_exactly_the_documented_layout() -> None:
    assert rules().text("ipv4") == IPV4


def test_ipv6_script_has_the_v6_addresses_and_the_same_chains() -> None:
    text = rules().text("ipv6")
    assert "-d fd00:a9e::2/128 -p tcp -m tcp --dport 5432 -j REDIRECT --to-ports 15001" in text
    assert "-A APPLIANCE-PREROUTING -d fd00:a9e:1::2/128 -i br-+ -p tcp" in text
    assert "198.18" not in text
    v4_skeleton = [line for line in IPV4.splitlines() if not line.startswith("-A APPLIANCE-")]
    v6_skeleton = [line for line in text.splitlines() if not line.startswith("-A APPLIANCE-")]
    assert v6_skeleton == v4_skeleton


def test_ipv4_mapped_and_repeated_addresses_become_one_ipv4_rule() -> None:
    r = rules()
    assert [str(p.network) for p in r.protected].count("198.18.0.2/32") == 1
    assert "::ffff" not in r.text("ipv6")


def test_an_unresolvable_host_is_reported_not_silently_dropped() -> None:
    r = render_rules(parse_config(CONFIG), resolver=lambda host: [])
    assert r.unresolved == ("db.lab.test",)
    assert "198.18.1.2" not in r.text("ipv4")


def test_marked_traffic_passes_only_from_the_appliances_cgroup_in_its_own_conntrack_zone() -> None:
    for family in ("ipv4", "ipv6"):
        chains = {(c.table, c.name): c.rules for c in rules().family(family).chains}
        # Marked: not redirected, whatever the cgroup (never back to the appliance itself) ...
        assert chains["nat", "APPLIANCE-OUTPUT"][0] == "-m mark --mark 0x4150 -j RETURN"
        # ... let out only from the appliance's cgroup (then, once ESTABLISHED, the kernel's
        # answers for its closed sockets too): from any other, the REJECTs below.
        assert chains["filter", "APPLIANCE-OUTPUT"][:2] == (
            f"-m mark --mark 0x4150 {OWN} -j RETURN",
            "-m mark --mark 0x4150 -m conntrack --ctstate ESTABLISHED -j RETURN",
        )
        assert all("REJECT" in r for r in chains["filter", "APPLIANCE-OUTPUT"][2:])
        # Marked flows in a conntrack zone of their own.
        assert chains["raw", "APPLIANCE-OUTPUT"] == (
            "-m mark --mark 0x4150 -j CT --zone-orig 16720",
        )


def test_a_cgroup_made_anew_or_missing_is_another_rule() -> None:
    # The cgroup match holds the cgroup it resolved when added: a new cgroup of the same
    # path (systemd makes one at every start of the unit) must make the rule be put back.
    now, again, gone = rules(4242), rules(4343), rules(None)
    for other in (again, gone):
        assert other.text("ipv4") != now.text("ipv4")
        assert other.family("ipv4").chains[3].rules[1:] == now.family("ipv4").chains[3].rules[1:]
    assert 'appliance cgroup id 4343"' in again.text("ipv6")
    assert 'appliance cgroup not found"' in gone.text("ipv4")


def test_zone_and_cgroup_come_from_the_config() -> None:
    cfg = parse_config(
        CONFIG.replace(
            "bridges: [docker0, br-*]", "bridges: [], appliance_cgroup: /lab/a, conntrack_zone: 7"
        )
    )
    text = render_rules(cfg, resolver=lambda host: [], cgroup_ids=lambda path: 9).text("ipv4")
    assert "-A APPLIANCE-OUTPUT -m mark --mark 0x4150 -j CT --zone-orig 7\n" in text
    assert (
        '-m mark --mark 0x4150 -m cgroup --path "/lab/a" -m comment --comment "appliance cgroup '
        'id 9" -j RETURN' in text
    )


def test_egress_statements_are_written_as_nft_prints_them() -> None:
    assert rules().egress == (
        "meta mark 0x00004150 meta skuid != 0 counter drop",
        "meta mark 0x00004150 accept",
        "ip daddr 198.18.0.2 tcp dport 5432 counter drop",
        "ip6 daddr fd00:a9e::2 tcp dport 5432 counter drop",
        "ip daddr 10.9.0.0/16 tcp dport 6432 counter drop",
        "ip daddr 198.18.1.2 tcp dport 5432 counter drop",
        "ip6 daddr fd00:a9e:1::2 tcp dport 5432 counter drop",
    )


@pytest.mark.parametrize("bridge", ["*", "br-*-x", "a name", "x" * 16 + "*"])
def test_bridge_names_iptables_cannot_match_are_config_errors(bridge: str) -> None:
    cfg = parse_config(CONFIG.replace("[docker0, br-*]", f"['{bridge}']"))
    with pytest.raises(ConfigError, match=r"capture\.bridges"):
        render_rules(cfg, resolver=lambda host: [])


SAVED = """\
# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [10:600]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:APPLIANCE-OUTPUT - [0:0]
:APPLIANCE-OLD - [0:0]
[5:300] -A OUTPUT -j ACCEPT
[7:420] -A OUTPUT -j APPLIANCE-OUTPUT
[0:0] -A OUTPUT -p tcp -j APPLIANCE-OUTPUT
[1:60] -A FORWARD -j APPLIANCE-OLD
[3:180] -A APPLIANCE-OUTPUT -m mark --mark 0x4150 -j RETURN
[2:120] -A APPLIANCE-OUTPUT -d 192.0.2.9/32 -p tcp -m tcp --dport 5432 -j REJECT --reject-with tcp-reset
COMMIT
# Completed
"""


def test_parse_save_keeps_chains_rules_and_counters() -> None:
    saved = parse_save(SAVED, "ipv4")
    table = saved.table("filter")
    assert table.ours() == ["APPLIANCE-OUTPUT", "APPLIANCE-OLD"]
    first = table.rules_of("OUTPUT")[1]
    assert (first.spec, first.packets, first.bytes, first.target) == (
        "-j APPLIANCE-OUTPUT",
        7,
        420,
        "APPLIANCE-OUTPUT",
    )
    assert saved.table("nat").rules == []


def test_parse_save_refuses_a_line_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_save("*filter\n-Z OUTPUT\nCOMMIT\n", "ipv4")


def test_install_script_replaces_every_jump_and_removes_old_chains() -> None:
    script = install_script(rules().ipv4, parse_save(SAVED, "ipv4"))
    filter_part = script[script.index("*filter") :].splitlines()
    assert filter_part[:12] == [
        "*filter",
        ":APPLIANCE-OUTPUT - [0:0]",
        ":APPLIANCE-FORWARD - [0:0]",
        ":APPLIANCE-INPUT - [0:0]",
        "-D FORWARD -j APPLIANCE-OLD",
        "-F APPLIANCE-OLD",
        "-X APPLIANCE-OLD",
        "-D OUTPUT -j APPLIANCE-OUTPUT",
        "-D OUTPUT -p tcp -j APPLIANCE-OUTPUT",
        "-I OUTPUT 1 -j APPLIANCE-OUTPUT",
        "-I FORWARD 1 -j APPLIANCE-FORWARD",
        "-I INPUT 1 -j APPLIANCE-INPUT",
    ]
    assert "-D OUTPUT -j ACCEPT" not in script  # other people's rules are left alone


def test_remove_script_deletes_jumps_then_flushes_then_deletes_chains() -> None:
    assert remove_script(parse_save(SAVED, "ipv4")).splitlines() == [
        "*filter",
        "-D OUTPUT -j APPLIANCE-OUTPUT",
        "-D OUTPUT -p tcp -j APPLIANCE-OUTPUT",
        "-D FORWARD -j APPLIANCE-OLD",
        "-F APPLIANCE-OUTPUT",
        "-F APPLIANCE-OLD",
        "-X APPLIANCE-OUTPUT",
        "-X APPLIANCE-OLD",
        "COMMIT",
    ]
    assert remove_script(parse_save("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", "ipv4")) == ""


def _as_saved(script: str) -> str:
    """What iptables-save would print after ``script`` ran on an empty host."""
    out: list[str] = []
    for line in script.splitlines():
        if line.startswith("-I "):
            _, parent, _, *rest = line.split()
            out.append(f"-A {parent} {' '.join(rest)}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def test_compare_finds_everything_in_place_after_a_clean_install() -> None:
    r = rules()
    states = compare(r.ipv4, parse_save(_as_saved(r.text("ipv4")), "ipv4"))
    assert states and all(s.ok for s in states)
    assert {s.kind for s in states} == {"jump", "rule"}


def test_compare_reports_missing_moved_and_unexpected() -> None:
    r = rules()
    text = _as_saved(r.text("ipv4"))
    text = text.replace("-A OUTPUT -j APPLIANCE-OUTPUT\n", "", 1)  # raw jump deleted
    text = text.replace(
        "-A FORWARD -j APPLIANCE-FORWARD\n",
        "-A FORWARD -j ACCEPT\n-A FORWARD -j APPLIANCE-FORWARD\n",
    )  # someone inserted a rule before ours
    text = text.replace(
        "-A APPLIANCE-INPUT ",
        "-A APPLIANCE-INPUT -s 192.0.2.1/32 -j ACCEPT\n-A APPLIANCE-INPUT ",
        1,
    )
    bad = {(s.table, s.chain, s.rule, s.kind, s.present, s.in_place)
           for s in compare(r.ipv4, parse_save(text, "ipv4")) if not s.ok}  # fmt: skip
    assert bad == {
        ("raw", "OUTPUT", "-j APPLIANCE-OUTPUT", "jump", False, False),
        ("filter", "FORWARD", "-j APPLIANCE-FORWARD", "jump", True, False),
        ("filter", "APPLIANCE-INPUT", "-s 192.0.2.1/32 -j ACCEPT", "unexpected", True, False),
        (
            "filter",
            "APPLIANCE-INPUT",
            "! -i lo -p tcp -m tcp --dport 15001 -m conntrack ! --ctstate DNAT "
            "-j REJECT --reject-with tcp-reset",
            "rule",
            True,
            False,
        ),
    }


def test_compare_reports_a_chain_of_ours_that_is_not_wanted() -> None:
    r = rules()
    text = _as_saved(r.text("ipv4")).replace(
        ":APPLIANCE-INPUT - [0:0]\n", ":APPLIANCE-INPUT - [0:0]\n:APPLIANCE-OLD - [0:0]\n"
    )
    bad = [s for s in compare(r.ipv4, parse_save(text, "ipv4")) if not s.ok]
    assert [(s.chain, s.kind) for s in bad] == [("APPLIANCE-OLD", "unexpected")]


def test_family_rules_from_saved_gives_back_what_is_installed() -> None:
    r = rules()
    back = family_rules_from_saved(parse_save(_as_saved(r.text("ipv4")), "ipv4"))
    assert back is not None
    assert sorted(back.chains, key=lambda c: (c.table, c.name)) == sorted(
        r.ipv4.chains, key=lambda c: (c.table, c.name)
    )
    assert family_rules_from_saved(parse_save("*nat\nCOMMIT\n", "ipv4")) is None
