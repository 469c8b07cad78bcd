"""Install, inspect, reconcile and remove the capture rules in the current network namespace.

Where this sits: ``appliance capture install|status|remove`` and the daemon's reconcile loop
call this module; it reads the kernel's state (``iptables-save -c``, ``ip6tables-save -c``,
``nft list table netdev appliance``), asks :mod:`._rules` / :mod:`._egress` for scripts and
applies them with ``iptables-restore --noflush`` / ``ip6tables-restore --noflush`` /
``nft -f``.

iptables-restore commits table by table (the nat table of a script is in force even if its
filter table is then refused), and IPv4, IPv6 and nft are separate commits anyway. So
:func:`install` takes a snapshot, applies one (family, table) at a time, then the egress
guard, and if any step fails puts the earlier ones back as they were: a bad rule leaves
nothing half installed. Nothing here removes rules except :func:`remove` (DESIGN.md, invariant 1: a
crash or a stop never opens the path to a target).

Every call is blocking (a few subprocesses, milliseconds each); the daemon runs the
reconcile loop in a worker thread. Everything acts on the namespace of the calling thread.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from appliance.capture._cgroup import cgroup_dir
from appliance.capture._egress import FAMILY as EGRESS_FAMILY
from appliance.capture._egress import TABLE as EGRESS_TABLE
from appliance.capture._egress import (
    EgressState,
    compare_egress,
    delete_script,
    egress_script,
    parse_egress,
)
from appliance.capture._errors import CaptureError
from appliance.capture._resolve import HostResolver
from appliance.capture._rules import (
    FAMILIES,
    Family,
    RuleSet,
    RuleState,
    SavedRules,
    compare,
    family_rules_from_saved,
    install_script,
    parse_save,
    remove_script,
    render_rules,
    script_tables,
)
from appliance.config import Config

_TOOLS: dict[Family, tuple[str, str]] = {
    "ipv4": ("iptables-save", "iptables-restore"),
    "ipv6": ("ip6tables-save", "ip6tables-restore"),
}
_PACKAGES = {"iptables-save": "iptables", "iptables-restore": "iptables",
             "ip6tables-save": "iptables", "ip6tables-restore": "iptables", "nft": "nftables"}  # fmt: skip
_ATTEMPTS = 3  # a concurrent change (an interface going away) can make one attempt fail

Interfaces = Callable[[], Sequence[str]]


def namespace_interfaces() -> list[str]:
    """Every interface of the calling thread's network namespace (netlink, not /sys, so that
    a thread moved with setns sees its own namespace)."""
    return sorted(name for _, name in socket.if_nameindex())


# -- running the tools ------------------------------------------------------------------------


def _run(argv: list[str], *, script: str | None = None) -> str:
    exe = shutil.which(argv[0])
    if exe is None:
        raise CaptureError(f"{argv[0]} not found: install the {_PACKAGES[argv[0]]} package")
    try:
        proc = subprocess.run(
            [exe, *argv[1:]], input=script, capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        raise CaptureError(f"{argv[0]} did not finish within 30 s") from None
    if proc.returncode != 0:
        raise CaptureError(_explain(argv[0], proc.stderr, script))
    return proc.stdout


def _explain(tool: str, stderr: str, script: str | None) -> str:
    """The tool's complaint, plus the script line it names (iptables-restore: "line N
    failed"; nft: "<stdin>:N:...")."""
    message = f"{tool} failed: {' '.join(stderr.split()) or 'no message'}"
    m = re.search(
        r"line (\d+) failed|occurred at line: (\d+)|<cmdline>:(\d+):|/dev/stdin:(\d+):|-:(\d+):",
        stderr,
    )
    if script is not None and m:
        number = int(next(g for g in m.groups() if g))
        lines = script.splitlines()
        if 0 < number <= len(lines):
            message += f" (script line {number}: {lines[number - 1].strip()!r})"
    return message


def read_saved(family: Family) -> SavedRules:
    """The family's rules with counters. Raises CaptureError if the tool fails."""
    text = _run([_TOOLS[family][0], "-c"])
    try:
        return parse_save(text, family)
    except ValueError as exc:
        raise CaptureError(f"{_TOOLS[family][0]}: {exc}") from None


def _restore(family: Family, script: str) -> None:
    if script:
        _run([_TOOLS[family][1], "-w", "5", "--noflush"], script=script)


def read_egress() -> EgressState:
    """The egress guard as it is (an empty state if the table does not exist)."""
    exe = shutil.which("nft")
    if exe is None:
        raise CaptureError("nft not found: install the nftables package")
    proc = subprocess.run(
        [exe, "list", "table", EGRESS_FAMILY, EGRESS_TABLE],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return EgressState()
        raise CaptureError(_explain("nft", proc.stderr, None))
    return parse_egress(proc.stdout)


def _apply_egress(statements: Sequence[str], interfaces: Interfaces) -> list[str]:
    last: CaptureError | None = None
    for _ in range(_ATTEMPTS):
        devices = list(interfaces())
        try:
            _run(["nft", "-f", "-"], script=egress_script(statements, devices))
            return devices
        except CaptureError as exc:  # an interface may have gone between listing and commit
            last = exc
    assert last is not None
    raise last


# -- reports ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstallReport:
    """What :func:`install` did. ``changed`` is False when everything was already in place."""

    changed: bool
    rules: int
    devices: tuple[str, ...]
    protected: tuple[str, ...]
    unresolved: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "changed": self.changed,
            "rules": self.rules,
            "devices": list(self.devices),
            "protected": list(self.protected),
            "unresolved": list(self.unresolved),
        }


@dataclass(frozen=True)
class RemoveReport:
    """What :func:`remove` deleted: ``"<family> <table> <chain>"`` per chain of ours."""

    removed: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"removed": list(self.removed)}


@dataclass(frozen=True)
class StatusReport:
    """Every rule of the capture and whether it is in place, with counters."""

    states: tuple[RuleState, ...]
    protected: tuple[str, ...]
    unresolved: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.states)

    @property
    def installed(self) -> bool:
        """Whether any rule of ours is present at all."""
        return any(s.present and s.kind != "device" for s in self.states)

    def problems(self) -> list[RuleState]:
        return [s for s in self.states if not s.ok]

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "protected": list(self.protected),
            "unresolved": list(self.unresolved),
            "rules": [s.to_dict() for s in self.states],
        }


@dataclass(frozen=True)
class RuleChange:
    """One thing the reconcile loop found wrong, for the ledger. ``problem``: ``missing``,
    ``moved``, ``unexpected``, ``not covered`` (an interface without the egress guard) or
    ``resolved`` (a host-name target now has other addresses)."""

    family: str
    table: str
    chain: str
    rule: str
    problem: str
    repaired: bool = True

    @classmethod
    def from_state(cls, state: RuleState) -> RuleChange:
        if state.kind == "unexpected":
            problem = "unexpected"
        elif state.kind == "device":
            problem = "not covered"
        elif not state.present:
            problem = "missing"
        else:
            problem = "moved"
        return cls(state.family, state.table, state.chain, state.rule, problem)

    def to_dict(self) -> dict[str, object]:
        return {
            "family": self.family,
            "table": self.table,
            "chain": self.chain,
            "rule": self.rule,
            "problem": self.problem,
            "repaired": self.repaired,
        }


# -- the operations -------------------------------------------------------------------------------


def _status_of(
    rules: RuleSet,
    saved: dict[Family, SavedRules],
    egress: EgressState,
    devices: Sequence[str],
) -> StatusReport:
    states: list[RuleState] = []
    for family in FAMILIES:
        states += compare(rules.family(family), saved[family])
    states += compare_egress(rules.egress, devices, egress)
    return StatusReport(
        tuple(states),
        tuple(f"{p.network.with_prefixlen} tcp/{p.port} ({p.target})" for p in rules.protected),
        rules.unresolved,
    )


def status(
    config: Config,
    *,
    resolver: HostResolver | None = None,
    interfaces: Interfaces = namespace_interfaces,
) -> StatusReport:
    """Each rule the config asks for: present, in place (jumps first in their parent
    chains, rules in order), counters; plus anything of ours that should not be there."""
    rules = render_rules(config, resolver=resolver or HostResolver())
    saved = {f: read_saved(f) for f in FAMILIES}
    return _status_of(rules, saved, read_egress(), list(interfaces()))


def install(
    config: Config,
    *,
    rules: RuleSet | None = None,
    resolver: HostResolver | None = None,
    interfaces: Interfaces = namespace_interfaces,
) -> InstallReport:
    """Put the capture rules in place, atomically and idempotently.

    ``rules`` overrides rendering (the reconcile loop passes what it rendered; tests pass a
    deliberately broken set). Does nothing when everything is already in place. If any of
    the commits fails, the ones already made are put back as they were and the
    failure is raised: CaptureError quoting the tool and the offending line.
    """
    ensure_cgroup(config.capture.appliance_cgroup)
    rules = rules or render_rules(config, resolver=resolver or HostResolver())
    saved = {f: read_saved(f) for f in FAMILIES}
    egress = read_egress()
    devices = list(interfaces())

    def report(changed: bool, devices: Sequence[str]) -> InstallReport:
        return InstallReport(
            changed=changed,
            rules=sum(len(c.rules) + 1 for f in FAMILIES for c in rules.family(f).chains),
            devices=tuple(devices),
            protected=tuple(f"{p.network.with_prefixlen} tcp/{p.port}" for p in rules.protected),
            unresolved=rules.unresolved,
        )

    now = _status_of(rules, saved, egress, devices)
    if now.ok:
        return report(False, egress.devices)
    # Only what is not in place is written again: an interface that appears rewrites the
    # egress guard alone (quickly, and without resetting the REJECT counters of iptables).
    wrong = {(s.family, s.table) for s in now.problems()}
    # iptables-restore commits table by table: one call per (family, table), so that a
    # failure can be undone exactly.
    applied: list[tuple[Family, str]] = []
    try:
        for family in FAMILIES:
            wanted = rules.family(family)
            for table in script_tables(wanted, saved[family]):
                if (family, table) in wrong:
                    _restore(family, install_script(wanted, saved[family], only=table))
                    applied.append((family, table))
        if (EGRESS_FAMILY, EGRESS_TABLE) in wrong:
            devices = _apply_egress(rules.egress, interfaces)
        else:
            devices = egress.devices
    except CaptureError as failed:
        try:
            _roll_back(applied, saved)
        except CaptureError as undo:
            raise CaptureError(
                f"{failed}; putting the earlier rules back failed too: {undo}"
            ) from None
        raise
    return report(True, devices)


def ensure_cgroup(path: str) -> None:
    """Make the appliance's cgroup if it is not there yet: the cgroup match names an
    existing cgroup (systemd makes the unit's at start; ``capture install`` run before the
    service has made it may make it first, and systemd then uses it).

    Raises CaptureError if there is no cgroup v2 hierarchy or the directory cannot be made.
    """
    directory = cgroup_dir(path)
    if directory is None:
        raise CaptureError(
            "no cgroup v2 hierarchy is mounted: the rules cannot tell the appliance's own "
            "connections from anyone else's"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CaptureError(
            f"cannot make the appliance's cgroup {directory}: {exc.strerror}"
        ) from None


def _roll_back(applied: list[tuple[Family, str]], before: dict[Family, SavedRules]) -> None:
    """Put each (family, table) in ``applied`` back to its chains of ``before``."""
    for family, table in reversed(applied):
        now = read_saved(family)
        old = family_rules_from_saved(before[family])
        if old is not None and table in old.tables():
            _restore(family, install_script(old, now, only=table))
        else:
            _restore(family, remove_script(now, only=table))


def remove(config: Config | None = None) -> RemoveReport:
    """Delete every chain of ours (``APPLIANCE-*``), every jump to one, and the egress guard.

    The only function that removes rules; ``config`` is not needed (whatever is ours goes).
    """
    del config  # everything named ours is removed, whatever the config says now
    removed: list[str] = []
    for family in FAMILIES:
        saved = read_saved(family)
        removed += [f"{family} {t.name} {c}" for t in saved.tables.values() for c in t.ours()]
        _restore(family, remove_script(saved))
    if read_egress().present:
        _run(["nft", "-f", "-"], script=delete_script())
        removed.append(f"{EGRESS_FAMILY} {EGRESS_TABLE}")
    return RemoveReport(tuple(removed))


@dataclass
class Reconciler:
    """The daemon's reconcile loop body: re-resolve host names, compare, repair.

    ``check_and_repair()`` returns what was wrong (empty when all was in place); each change
    goes to the ledger. It never removes the capture, only restores it.
    """

    config: Config
    resolver: HostResolver = field(default_factory=HostResolver)
    interfaces: Interfaces = namespace_interfaces

    def check_and_repair(self) -> list[RuleChange]:
        """Raises CaptureError if the rules cannot be read or restored."""
        moved = self.resolver.refresh()
        rules = render_rules(self.config, resolver=self.resolver)
        saved = {f: read_saved(f) for f in FAMILIES}
        report = _status_of(rules, saved, read_egress(), list(self.interfaces()))
        changes = [
            RuleChange("dns", "-", "-", f"{host}: {', '.join(old) or '-'} -> {', '.join(new)}",
                       "resolved")
            for host, (old, new) in moved.items()
        ]  # fmt: skip
        changes += [RuleChange.from_state(s) for s in report.problems()]
        if report.ok:
            return changes
        install(self.config, rules=rules, interfaces=self.interfaces)
        return changes
