"""The egress guard: an nftables ``netdev`` table that drops unmarked packets to protected
targets as they leave any interface (pure rendering and parsing; I/O in ``_netfilter``).

Why it exists: iptables sees packets from sockets of the IP stack. A *packet* socket
(``AF_PACKET``; scapy's default L3 socket on Linux, ``send``/``sr1``; any raw-frame tool)
hands frames straight to the device, past every iptables chain, so a process with
CAP_NET_RAW could open a TCP handshake with a protected target around the proxy. The
netfilter egress hook (Linux 5.16+) runs in ``__dev_queue_xmit`` and, for
``PACKET_QDISC_BYPASS`` sockets, in ``packet_xmit`` as well: every frame a device sends
passes it. The guard hooks every interface of the namespace (the reconcile loop adds new
ones) and drops TCP to a protected address and port unless it carries the appliance's
mark, and drops the mark itself on a socket of any user but the appliance's (the mark
alone is not enough: see :func:`appliance.capture._rules.egress_statements`). Redirected flows never reach it (their
destination is already the listener on lo) and the appliance's own upstream packets pass.

Why per interface: a netdev hook names its devices. Linux 6.17 can hook every interface,
present and future, with one device *prefix* (``NFTA_DEVICE_PREFIX``, the empty prefix
matching every name), which would close the gap between an interface appearing and the
reconcile that adds it (issue 13). Tried on this project's lab (Linux 6.18): the kernel
takes it and drops a packet-socket SYN sent on a veth made afterwards; but Debian 12's
``nft`` (1.0.6) spins at full CPU, forever, on listing any table that holds such a chain
(``nft list ruleset`` included), which would hang every nftables tool on the runner. Until
the image's nftables understands device prefixes, the guard names its devices and the
daemon adds a new interface when its rtnetlink event arrives (milliseconds).

Layout (one chain per at most :data:`DEVICES_PER_CHAIN` interfaces)::

    table netdev appliance {
        chain egress-0 {
            type filter hook egress devices = { eth0, lo } priority -500; policy accept;
            meta mark 0x00004150 meta skuid != 0 counter drop
            meta mark 0x00004150 accept
            ip daddr 10.0.0.5 tcp dport 5432 counter drop
        }
    }
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from appliance.capture._rules import RuleState

FAMILY = "netdev"
TABLE = "appliance"
CHAIN_PREFIX = "egress-"
PRIORITY = -500
DEVICES_PER_CHAIN = 200  # the kernel takes at most 256 devices per netdev hook

_COUNTER = re.compile(r" counter packets (\d+) bytes (\d+)")


def egress_script(statements: Sequence[str], devices: Sequence[str]) -> str:
    """An ``nft -f`` script that replaces the guard in one transaction (declare, delete and
    re-create the table: the idiom works whether or not the table exists)."""
    lines = [
        f"table {FAMILY} {TABLE}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
    ]
    for n, start in enumerate(range(0, len(devices), DEVICES_PER_CHAIN)):
        chunk = ", ".join(_quote(d) for d in devices[start : start + DEVICES_PER_CHAIN])
        lines.append(f"  chain {CHAIN_PREFIX}{n} {{")
        lines.append(
            f"    type filter hook egress devices = {{ {chunk} }} priority {PRIORITY}; "
            "policy accept;"
        )
        lines += [f"    {s}" for s in statements]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def delete_script() -> str:
    """An ``nft -f`` script that deletes the guard if it is there."""
    return f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"


def _quote(device: str) -> str:
    return '"' + device.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class EgressChain:
    name: str
    devices: list[str] = field(default_factory=list)
    rules: list[tuple[str, int, int]] = field(default_factory=list)  # statement, packets, bytes


@dataclass
class EgressState:
    """The guard as ``nft list table netdev appliance`` printed it (empty: not installed)."""

    chains: list[EgressChain] = field(default_factory=list)

    @property
    def present(self) -> bool:
        return bool(self.chains)

    @property
    def devices(self) -> list[str]:
        return [d for c in self.chains for d in c.devices]


_DEVICES = re.compile(r"\bdevices = \{([^}]*)\}")
_DEVICE = re.compile(r'\bdevice ("(?:[^"\\]|\\.)*"|\S+)')


def parse_egress(text: str) -> EgressState:
    """Parse ``nft list table netdev appliance`` output."""
    state = EgressState()
    chain: EgressChain | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("chain ") and line.endswith("{"):
            chain = EgressChain(line.split()[1])
            state.chains.append(chain)
        elif chain is None or not line:
            continue
        elif line == "}":
            chain = None
        elif line.startswith("type "):
            many = _DEVICES.search(line)
            one = _DEVICE.search(line)
            if many:
                chain.devices = [d.strip().strip('"') for d in many[1].split(",") if d.strip()]
            elif one:
                chain.devices = [one[1].strip('"')]
        else:
            counted = _COUNTER.search(line)
            packets, nbytes = (int(counted[1]), int(counted[2])) if counted else (0, 0)
            chain.rules.append((_COUNTER.sub(" counter", line), packets, nbytes))
    return state


def _position(chain: EgressChain, statement: str) -> int | None:
    texts = [r[0] for r in chain.rules]
    return texts.index(statement) if statement in texts else None


def compare_egress(
    statements: Sequence[str], devices: Sequence[str], state: EgressState
) -> list[RuleState]:
    """Each statement (in every chain, in order) and each device (covered by some chain),
    then statements that should not be there."""
    out: list[RuleState] = []
    covered = set(state.devices)
    for i, statement in enumerate(statements):
        where = [_position(c, statement) for c in state.chains]
        present = bool(where) and None not in where
        matching = [r for c in state.chains for r in c.rules if r[0] == statement]
        counted = present and "counter" in statement.split()
        out.append(
            RuleState(
                FAMILY, TABLE, "egress", statement, "egress",
                present=present, in_place=present and all(k == i for k in where),
                packets=sum(r[1] for r in matching) if counted else None,
                bytes=sum(r[2] for r in matching) if counted else None,
            )
        )  # fmt: skip
    out += [
        RuleState(FAMILY, TABLE, "egress", device, "device", device in covered, device in covered)
        for device in devices
    ]
    wanted = set(statements)
    out += [
        RuleState(FAMILY, TABLE, c.name, r[0], "unexpected", True, False, r[1], r[2])
        for c in state.chains
        for r in c.rules
        if r[0] not in wanted
    ]
    return out
