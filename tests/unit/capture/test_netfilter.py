"""How a refused script is reported: the tool's words and the offending line."""

from __future__ import annotations

from appliance.capture._netfilter import _explain

SCRIPT = (
    "*filter\n:APPLIANCE-FORWARD - [0:0]\n-A APPLIANCE-FORWARD -p tcp -j NO-SUCH-TARGET\nCOMMIT\n"
)


def test_iptables_nft_restore_error_names_the_line() -> None:
    stderr = (
        "ip6tables-restore v1.8.9 (nf_tables): Chain 'NO-SUCH-TARGET' does not exist\n"
        "Error occurred at line: 3\nTry `ip6tables-restore -h' for more information.\n"
    )
    message = _explain("ip6tables-restore", stderr, SCRIPT)
    assert message.startswith("ip6tables-restore failed: ip6tables-restore v1.8.9 (nf_tables):")
    assert message.endswith("(script line 3: '-A APPLIANCE-FORWARD -p tcp -j NO-SUCH-TARGET')")


def test_legacy_and_nft_forms() -> None:
    assert "script line 2" in _explain(
        "iptables-restore", "iptables-restore: line 2 failed", SCRIPT
    )
    assert "script line 1" in _explain("nft", "/dev/stdin:1:1-3: Error: syntax error", SCRIPT)
    assert _explain("nft", "", None) == "nft failed: no message"
