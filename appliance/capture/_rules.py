"""The netfilter rules of transparent capture, rendered and compared as text (pure, no I/O).

Where this sits: :mod:`appliance.capture._netfilter` reads the kernel's rules with
``iptables-save``, asks this module for an ``iptables-restore --noflush`` script and applies
it; the same scripts are used for IPv4 (``iptables``) and IPv6 (``ip6tables``).

The layout, identical for both families (each chain of ours is jumped to from the first
rule of its parent chain)::

    raw     OUTPUT     -> APPLIANCE-OUTPUT      marked: CT --zone-orig Z (a conntrack zone of
                                                the appliance's flows)
    nat     OUTPUT     -> APPLIANCE-OUTPUT      marked: RETURN (never redirected back to the
                                                appliance); to a protected address:port:
                                                REDIRECT to the appliance listener
    nat     PREROUTING -> APPLIANCE-PREROUTING  in from a container bridge (docker0, br-*) to
                                                a protected address:port: REDIRECT likewise
    filter  OUTPUT     -> APPLIANCE-OUTPUT      marked and from the appliance's cgroup: RETURN;
                                                marked and ESTABLISHED: RETURN; to a protected
                                                address:port: REJECT with a TCP reset
    filter  FORWARD    -> APPLIANCE-FORWARD     to a protected address:port: REJECT (a
                                                forwarded packet never carries our mark: the
                                                kernel clears it when it crosses namespaces)
    filter  INPUT      -> APPLIANCE-INPUT       to the listener port, not redirected, not on
                                                lo: REJECT (nobody reaches the proxy directly
                                                from the network)

Fail closed (DESIGN.md, invariant 1): the filter rules alone refuse every unmarked
connection to a protected target, so a stopped appliance (nothing listens on the redirect
port: the kernel answers with a reset) or a flushed nat table gives "connection refused"
at once, never a path around the proxy. Redirected flows pass the filter because nat OUTPUT
runs first and has already rewritten their destination to the listener.

The mark alone opens nothing (issue 13): anyone with CAP_NET_RAW or CAP_NET_ADMIN can set
``SO_MARK``, so the filter lets marked traffic out only from the appliance's own cgroup
(``capture.appliance_cgroup``; netfilter's cgroup match, which looks at the socket's
cgroup). A marked connection from any other cgroup is not redirected either: it is refused.
Once a connection is up, its later packets pass as ESTABLISHED: the kernel answers for a
socket the appliance has closed (the ACK of the server's FIN in TIME_WAIT, a reset) from its
own control socket, which carries the socket's mark but no cgroup of the appliance; refused
at first, they left the server retransmitting its FIN. Only a connection whose first packet
passed the cgroup match is ESTABLISHED in the zone of marked flows.
The cgroup match resolves its path once, when the rule is added; a cgroup removed and made
again (systemd does so at every restart of the unit) is another cgroup. So the rule carries
the cgroup's id in a comment: when the id changes, the rule no longer compares equal and is
put back, resolving the path anew.

Two kinds of flow leave the runner for a target from the same address: the appliance's
upstream connections and, before nat rewrites them, the jobs' own. Under reconnect churn a
new flow of one kind can reuse the source port of a closed flow of the other whose
connection-tracking entry still lingers; the kernel then takes the new SYN for a packet of
the old entry, so that a job's connection skips the redirect and meets the REJECT, or the
appliance's own connection is redirected to its own listener (issue 13: 106 of 200
``pgbench -C`` clients refused in 60 s). The raw rule puts marked flows in a conntrack zone
of their own (``capture.conntrack_zone``, original direction only: replies still find them
in the default zone), so that neither kind ever finds an entry of the other.

Rules are written exactly as ``iptables-save`` prints them, so that "is this rule in
place" is a string comparison.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from appliance.capture._cgroup import lookup_cgroup_id
from appliance.capture._resolve import system_lookup
from appliance.config import Config
from appliance.errors import ConfigError

Family = Literal["ipv4", "ipv6"]
FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")
PREFIX = "APPLIANCE-"
"""Every chain of ours starts with this; ``capture remove`` removes every such chain."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], Sequence[str]]
CgroupIds = Callable[[str], int | None]

_IFNAME = re.compile(r"[A-Za-z0-9_.@:-]{1,15}")
APPLIANCE_UID = 0  # the appliance runs as root (systemd/appliance.service)


@dataclass(frozen=True)
class Protected:
    """One protected destination: a network (a single address is a /32 or /128) and a port."""

    network: Network
    port: int
    target: str

    @property
    def family(self) -> Family:
        return "ipv4" if self.network.version == 4 else "ipv6"


@dataclass(frozen=True)
class Chain:
    """A chain of ours: its table, the built-in chain that jumps to it first, its rules."""

    table: str
    parent: str
    name: str
    rules: tuple[str, ...]  # rule specs as iptables-save prints them, after "-A <name> "

    @property
    def jump(self) -> str:
        return f"-j {self.name}"


@dataclass(frozen=True)
class FamilyRules:
    """The chains of one address family, in the order they are written."""

    family: Family
    chains: tuple[Chain, ...]

    def tables(self) -> list[str]:
        return list(dict.fromkeys(c.table for c in self.chains))

    def restore_text(self) -> str:
        """The ``iptables-restore --noflush`` script that installs these chains on a host
        that has none of ours (what ``install`` sends when nothing is there yet)."""
        return install_script(self, None)


@dataclass(frozen=True)
class RuleSet:
    """Everything ``capture install`` puts in place, for both families and the egress guard.

    ``unresolved`` lists host-name targets that resolved to no address (they are not
    protected until they resolve; the reconcile loop retries).
    """

    ipv4: FamilyRules
    ipv6: FamilyRules
    egress: tuple[str, ...]  # nft statements, see appliance.capture._egress
    mark: int
    protected: tuple[Protected, ...]
    unresolved: tuple[str, ...] = ()
    appliance_cgroup: str = ""
    appliance_cgroup_id: int | None = None  # None: the cgroup does not exist (now)

    def family(self, family: Family) -> FamilyRules:
        return self.ipv4 if family == "ipv4" else self.ipv6

    def text(self, family: Family) -> str:
        """The clean-install ``iptables-restore --noflush`` script of ``family``."""
        return self.family(family).restore_text()


# -- rendering ----------------------------------------------------------------------------


def protected_destinations(
    config: Config, resolver: Resolver
) -> tuple[tuple[Protected, ...], tuple[str, ...]]:
    """Every protected (network, port) of the config, in config order, without repeats, and
    the host names that resolved to nothing. IPv4-mapped IPv6 addresses count as IPv4:
    that is what goes on the wire."""
    seen: set[tuple[Network, int]] = set()
    out: list[Protected] = []
    unresolved: list[str] = []

    def add(network: Network, port: int, target: str) -> None:
        if (network, port) not in seen:
            seen.add((network, port))
            out.append(Protected(network, port, target))

    for target in config.targets.values():
        for address in target.addresses:
            if address.kind == "host":
                ips = list(resolver(address.value))
                if not ips:
                    unresolved.append(address.value)
                for ip in ips:
                    add(_host_network(ip), address.port, target.name)
            elif address.kind == "ip":
                add(_host_network(address.value), address.port, target.name)
            else:
                add(ipaddress.ip_network(address.value, strict=False), address.port, target.name)
    return tuple(out), tuple(dict.fromkeys(unresolved))


def _host_network(ip: str) -> Network:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return ipaddress.ip_network(addr)


def bridge_pattern(name: str) -> str:
    """A configured bridge name as iptables writes it: a trailing ``*`` becomes ``+``.

    Raises ConfigError for a name iptables cannot match (a ``*`` elsewhere, bad characters).
    """
    stem = name[:-1] if name.endswith("*") else name
    if stem and not _IFNAME.fullmatch(stem):
        raise ConfigError(
            f"capture.bridges: {name!r} is not an interface name (letters, digits, '_.@:-', "
            "at most 15 characters, optionally ending in '*')"
        )
    if not stem:
        raise ConfigError("capture.bridges: '*' alone would match every interface")
    return stem + "+" if name.endswith("*") else stem


def render_rules(
    config: Config, *, resolver: Resolver = system_lookup, cgroup_ids: CgroupIds = lookup_cgroup_id
) -> RuleSet:
    """The rules ``config`` asks for. Pure but for ``resolver``, which answers host names
    (tests pass a dict's lookup; the reconcile loop its :class:`HostResolver`), and
    ``cgroup_ids``, which gives the id of the appliance's cgroup (None: it does not exist).

    Raises ConfigError for a bridge name iptables cannot match.
    """
    capture = config.capture
    protected, unresolved = protected_destinations(config, resolver)
    bridges = [bridge_pattern(b) for b in capture.bridges]
    own_id = cgroup_ids(capture.appliance_cgroup)
    own = own_cgroup_match(capture.appliance_cgroup, own_id)
    families = {f: _family_rules(f, protected, bridges, capture.listen_port, capture.mark, own,
                                 capture.conntrack_zone)
                for f in FAMILIES}  # fmt: skip
    return RuleSet(
        ipv4=families["ipv4"],
        ipv6=families["ipv6"],
        egress=egress_statements(protected, capture.mark),
        mark=capture.mark,
        protected=protected,
        unresolved=unresolved,
        appliance_cgroup=capture.appliance_cgroup,
        appliance_cgroup_id=own_id,
    )


def own_cgroup_match(path: str, ident: int | None) -> str:
    """The match of the appliance's cgroup, as iptables-save prints it: the path, and its id
    in a comment (see the module docstring: a cgroup made anew is another cgroup)."""
    if '"' in path or any(c.isspace() for c in path):
        raise ConfigError(f"capture.appliance_cgroup: {path!r} cannot be written in a rule")
    known = f"id {ident}" if ident is not None else "not found"
    return f'-m cgroup --path "{path}" -m comment --comment "appliance cgroup {known}"'


def _family_rules(
    family: Family,
    protected: Iterable[Protected],
    bridges: Sequence[str],
    listen_port: int,
    mark: int,
    own: str,
    zone: int,
) -> FamilyRules:
    mine = [p for p in protected if p.family == family]
    marked = f"-m mark --mark {mark:#x}"
    established = "-m conntrack --ctstate ESTABLISHED"
    redirect = f"-j REDIRECT --to-ports {listen_port}"
    reject = "-j REJECT --reject-with tcp-reset"

    def dest(p: Protected, iface: str = "") -> str:
        via = f" -i {iface}" if iface else ""
        return f"-d {p.network.with_prefixlen}{via} -p tcp -m tcp --dport {p.port}"

    return FamilyRules(
        family,
        (
            Chain("raw", "OUTPUT", PREFIX + "OUTPUT",
                  (f"{marked} -j CT --zone-orig {zone}",)),
            Chain("nat", "OUTPUT", PREFIX + "OUTPUT",
                  (f"{marked} -j RETURN", *(f"{dest(p)} {redirect}" for p in mine))),
            Chain("nat", "PREROUTING", PREFIX + "PREROUTING",
                  tuple(f"{dest(p, b)} {redirect}" for b in bridges for p in mine)),
            Chain("filter", "OUTPUT", PREFIX + "OUTPUT",
                  (f"{marked} {own} -j RETURN", f"{marked} {established} -j RETURN",
                   *(f"{dest(p)} {reject}" for p in mine))),
            Chain("filter", "FORWARD", PREFIX + "FORWARD",
                  tuple(f"{dest(p)} {reject}" for p in mine)),
            Chain("filter", "INPUT", PREFIX + "INPUT",
                  (f"! -i lo -p tcp -m tcp --dport {listen_port} "
                   f"-m conntrack ! --ctstate DNAT {reject}",)),
        ),
    )  # fmt: skip


def egress_statements(protected: Iterable[Protected], mark: int) -> tuple[str, ...]:
    """The nft statements of the egress guard, as ``nft list`` prints them (counters aside).

    Packet sockets (scapy's default, any AF_PACKET sender) skip iptables entirely; the
    netfilter egress hook sees them (for qdisc-bypass sockets too, since Linux 5.16).
    The hook cannot see a socket's cgroup, and CAP_NET_RAW alone lets a process mark a packet
    socket (Linux 5.17+): so the mark on a socket of any user but the appliance's (root:
    systemd/appliance.service) is dropped first. The mark then passes: the appliance's own
    packets, and the kernel's answers for its closed sockets (TIME_WAIT ACKs and resets
    carry the socket's mark but come from no socket of a user, so the uid test does not
    apply to them). A root job is beyond what a same-host control holds (DESIGN.md, threat
    model); its IP sockets meet the cgroup match, its packet sockets pass here.
    """
    lines = [
        f"meta mark {mark:#010x} meta skuid != {APPLIANCE_UID} counter drop",
        f"meta mark {mark:#010x} accept",
    ]
    for p in protected:
        proto = "ip" if p.family == "ipv4" else "ip6"
        net = str(p.network.network_address) if _is_host(p.network) else p.network.with_prefixlen
        lines.append(f"{proto} daddr {net} tcp dport {p.port} counter drop")
    return tuple(lines)


def _is_host(network: Network) -> bool:
    return network.prefixlen == network.max_prefixlen


# -- what iptables-save says ----------------------------------------------------------------


@dataclass(frozen=True)
class SavedRule:
    chain: str
    spec: str
    packets: int = 0
    bytes: int = 0

    @property
    def target(self) -> str | None:
        """The chain this rule jumps or goes to (``-j``/``-g``), if any."""
        words = self.spec.split()
        for i, word in enumerate(words[:-1]):
            if word in ("-j", "-g", "--jump", "--goto"):
                return words[i + 1]
        return None


@dataclass
class SavedTable:
    name: str
    chains: list[str] = field(default_factory=list)
    rules: list[SavedRule] = field(default_factory=list)

    def rules_of(self, chain: str) -> list[SavedRule]:
        return [r for r in self.rules if r.chain == chain]

    def ours(self) -> list[str]:
        return [c for c in self.chains if c.startswith(PREFIX)]


@dataclass
class SavedRules:
    """The tables of one family as ``iptables-save -c`` printed them."""

    family: Family
    tables: dict[str, SavedTable] = field(default_factory=dict)

    def table(self, name: str) -> SavedTable:
        return self.tables.get(name) or SavedTable(name)

    def has_ours(self) -> bool:
        return any(t.ours() for t in self.tables.values())


_COUNTED = re.compile(r"\[(\d+):(\d+)\] (-A \S+ .*)")


def parse_save(text: str, family: Family) -> SavedRules:
    """Parse ``iptables-save [-c]`` output. Raises ValueError on a line it does not know
    (a sign that the tool's format is not what this code was written against)."""
    saved = SavedRules(family)
    table: SavedTable | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        packets = nbytes = 0
        counted = _COUNTED.fullmatch(line)
        if counted:
            packets, nbytes, line = int(counted[1]), int(counted[2]), counted[3]
        if line.startswith("*"):
            table = saved.tables.setdefault(line[1:], SavedTable(line[1:]))
        elif line == "COMMIT":
            table = None
        elif table is not None and line.startswith(":"):
            table.chains.append(line[1:].split()[0])
        elif table is not None and line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            table.rules.append(SavedRule(chain, rest[0] if rest else "", packets, nbytes))
        else:
            raise ValueError(f"iptables-save output line {number} not understood: {raw!r}")
    return saved


def family_rules_from_saved(saved: SavedRules) -> FamilyRules | None:
    """Our chains as they are now (to put them back if a later step fails); None if none."""
    chains: list[Chain] = []
    for table in saved.tables.values():
        for name in table.ours():
            parent = next(
                (
                    r.chain
                    for r in table.rules
                    if r.target == name and not r.chain.startswith(PREFIX)
                ),
                None,
            )
            if parent is None:
                continue  # an orphan chain of ours: install/remove deletes it
            rules = tuple(r.spec for r in table.rules_of(name))
            chains.append(Chain(table.name, parent, name, rules))
    return FamilyRules(saved.family, tuple(chains)) if chains else None


# -- scripts --------------------------------------------------------------------------------


def script_tables(rules: FamilyRules, current: SavedRules | None) -> list[str]:
    """The tables an install script touches: those of ``rules``, then any other table that
    still has a chain of ours."""
    tables = rules.tables()
    if current is not None:
        tables += [t for t, st in current.tables.items() if st.ours() and t not in tables]
    return tables


def install_script(
    rules: FamilyRules, current: SavedRules | None, *, only: str | None = None
) -> str:
    """An ``iptables-restore --noflush`` script that makes our chains exactly ``rules``
    (in table ``only``, or in every table of :func:`script_tables`).

    Declaring a chain of ours flushes it; every jump to it from its parent is deleted and
    one is inserted as the parent's first rule; a chain of ours that ``rules`` does not
    have (an older layout) is removed. iptables-restore commits each table at its COMMIT
    line, all of the table or nothing: callers that need several tables to change together
    apply one table per call and undo the earlier ones on failure.
    """
    lines: list[str] = []
    tables = [only] if only is not None else script_tables(rules, current)
    for table in tables:
        chains = [c for c in rules.chains if c.table == table]
        wanted = {c.name for c in chains}
        saved = current.table(table) if current is not None else SavedTable(table)
        obsolete = [name for name in saved.ours() if name not in wanted]
        lines.append(f"*{table}")
        lines += [f":{c.name} - [0:0]" for c in chains]
        lines += [f"-D {r.chain} {r.spec}" for r in saved.rules
                  if r.target in obsolete and r.chain not in obsolete]  # fmt: skip
        lines += [f"-F {name}" for name in obsolete]
        lines += [f"-X {name}" for name in obsolete]
        for c in chains:
            lines += [f"-D {c.parent} {r.spec}" for r in saved.rules_of(c.parent)
                      if r.target == c.name]  # fmt: skip
            lines.append(f"-I {c.parent} 1 {c.jump}")
        for c in chains:
            lines += [f"-A {c.name} {spec}" for spec in c.rules]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def remove_script(current: SavedRules, *, only: str | None = None) -> str:
    """An ``iptables-restore --noflush`` script that deletes every chain of ours and every
    rule that jumps to one (in table ``only``, or in all); ``""`` when there is nothing."""
    lines: list[str] = []
    for table in current.tables.values():
        if only is not None and table.name != only:
            continue
        ours = table.ours()
        if not ours:
            continue
        lines.append(f"*{table.name}")
        lines += [f"-D {r.chain} {r.spec}" for r in table.rules
                  if r.target in ours and r.chain not in ours]  # fmt: skip
        lines += [f"-F {name}" for name in ours]
        lines += [f"-X {name}" for name in ours]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n" if lines else ""


# -- comparing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleState:
    """One rule and whether it is in place. ``kind``: ``jump`` (the first rule of a parent
    chain), ``rule`` (a rule of our chain), ``unexpected`` (in our chain or a parent but not
    asked for: an extra jump, a stale address), ``egress`` (an nft egress statement) or
    ``device`` (an interface the egress guard must cover)."""

    family: str
    table: str
    chain: str
    rule: str
    kind: str
    present: bool
    in_place: bool
    packets: int | None = None
    bytes: int | None = None

    @property
    def ok(self) -> bool:
        return self.present and self.in_place and self.kind != "unexpected"

    def to_dict(self) -> dict[str, object]:
        return {
            "family": self.family,
            "table": self.table,
            "chain": self.chain,
            "rule": self.rule,
            "kind": self.kind,
            "present": self.present,
            "in_place": self.in_place,
            "packets": self.packets,
            "bytes": self.bytes,
        }


def compare(rules: FamilyRules, saved: SavedRules) -> list[RuleState]:
    """Each rule of ``rules`` and whether ``saved`` has it in place, then what is extra."""
    states: list[RuleState] = []
    for c in rules.chains:
        table = saved.table(c.table)
        parent = table.rules_of(c.parent)
        jumps = [i for i, r in enumerate(parent) if r.target == c.name]
        first = parent[jumps[0]] if jumps else None
        states.append(
            RuleState(
                rules.family, c.table, c.parent, c.jump, "jump",
                present=bool(jumps), in_place=jumps[:1] == [0],
                packets=first.packets if first else None, bytes=first.bytes if first else None,
            )
        )  # fmt: skip
        states += [
            RuleState(rules.family, c.table, c.parent, parent[i].spec, "unexpected", True, False,
                      parent[i].packets, parent[i].bytes)
            for i in jumps[1:]
        ]  # fmt: skip
        have = table.rules_of(c.name)
        used: set[int] = set()
        for i, spec in enumerate(c.rules):
            j = next((k for k, r in enumerate(have) if r.spec == spec and k not in used), None)
            if j is not None:
                used.add(j)
            found = have[j] if j is not None else None
            states.append(
                RuleState(
                    rules.family, c.table, c.name, spec, "rule",
                    present=found is not None, in_place=j == i,
                    packets=found.packets if found else None,
                    bytes=found.bytes if found else None,
                )
            )  # fmt: skip
        states += [
            RuleState(rules.family, c.table, c.name, r.spec, "unexpected", True, False,
                      r.packets, r.bytes)
            for k, r in enumerate(have) if k not in used
        ]  # fmt: skip
    wanted = {(c.table, c.name) for c in rules.chains}
    for table in saved.tables.values():
        states += [
            RuleState(rules.family, table.name, name, f"-N {name}", "unexpected", True, False)
            for name in table.ours() if (table.name, name) not in wanted
        ]  # fmt: skip
    return states
