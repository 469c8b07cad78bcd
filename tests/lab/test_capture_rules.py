"""Transparent capture in the lab: the rules, failing closed, redirection and its holes.

A module-scoped lab of its own (a pristine runner namespace: these tests install rules),
a real PostgreSQL on target 0 (198.18.0.2, fd00:a9e:0::2) and a plain TCP server on target
1. A small Python listener stands in for the proxy: it accepts on the capture port, asks
``original_dst`` and answers the job with it. Every rule is installed inside the runner
namespace (the ``appliance capture`` CLI started there, or the API in a runner thread) and
removed in ``finally``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.capture import (
    CaptureError,
    HostResolver,
    Reconciler,
    install,
    normalise_ip,
    original_dst,
    remove,
    render_rules,
    status,
    target_for,
)
from appliance.capture._cgroup import lookup_cgroup_id
from appliance.capture._rules import Chain, Family, FamilyRules, RuleSet, own_cgroup_match
from appliance.config import Config, load_config
from tests.lab.lab import Host, Lab, PgServer, in_netns

APPLIANCE = Path(sys.executable).with_name("appliance")
LISTEN_PORT = 15001
MARK = 0x4150

CONFIG = """\
targets:
  - name: pg
    protocol: postgres
    addresses: [198.18.0.2:5432, "[fd00:a9e:0::2]:5432"]
    accounts: [{{name: ci, user: app, secret: {{file: {secret}}}}}]
capture: {{listen_port: {port}, mark: {mark:#x}, appliance_cgroup: {cgroup}}}
"""

# The job's client: connect, print what the listener answered or how the connect failed
# (and how long it took: a refusal must come at once, not after SYN retries).
CLIENT = """\
import socket, sys, time
t = time.monotonic()
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
except OSError as exc:
    print(f"error {type(exc).__name__} {time.monotonic() - t:.3f}")
    sys.exit(0)
s.settimeout(10)
print("reply " + s.recv(200).decode().strip())
"""

SERVER = """\
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall((sys.argv[3] + "\\n").encode())
    c.close()
"""


# A client whose socket carries the appliance's mark: it sends PostgreSQL's SSLRequest and
# prints the one-byte answer, or how setting the mark or connecting failed.
MARKED = """\
import socket, struct, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family)
try:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(sys.argv[3], 0))
except OSError as exc:
    print(f"mark {type(exc).__name__}")
    sys.exit(0)
s.settimeout(10)
t = time.monotonic()
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError as exc:
    print(f"error {type(exc).__name__} {time.monotonic() - t:.3f}")
    sys.exit(0)
s.sendall(struct.pack("!ii", 8, 80877103))
print("reply " + s.recv(1).decode())
"""


# -- helpers (also used by test_capture_bpf.py) ------------------------------------------------


def write_config(lab: Lab, port: int = LISTEN_PORT) -> Path:
    path = lab.dir / "capture.yaml"
    path.write_text(
        CONFIG.format(
            secret=lab.dir / "secrets" / "none",
            port=port,
            mark=MARK,
            cgroup=lab.appliance_cgroup_path,
        )
    )
    return path


def sh(lab: Lab, command: str, host: Host | None = None) -> str:
    """Run a shell command as root in a lab namespace (the runner by default)."""
    proc = lab.popen(
        ["sh", "-c", command], host=host, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"{command}: {err.decode()}"
    return out.decode()


def cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """``appliance capture ARGS`` started in the runner namespace."""
    proc = lab.popen(
        [str(APPLIANCE), "capture", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(list(args), proc.returncode, out.decode(), err.decode())


def client(
    lab: Lab,
    ip: str,
    port: int = 5432,
    *,
    host: Host | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Connect as the job (runner namespace, job cgroup, uid nobody); its one-line report."""
    r = lab.job([sys.executable, "-I", "-c", CLIENT, ip, str(port)], host=host, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def marked_client(lab: Lab, ip: str, port: int = 5432, *, who: str) -> str:
    """Connect with the appliance's mark as ``who``: ``appliance`` (root in the appliance's
    cgroup), ``root-job`` (root in the job cgroup) or ``job`` (the job: nobody, no
    capabilities). Returns the client's one-line report."""
    argv = [sys.executable, "-I", "-c", MARKED, ip, str(port), hex(MARK)]
    if who == "appliance":
        proc = lab.popen(argv, cgroup=lab.appliance_cgroup, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)  # fmt: skip
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
        return out.decode().strip()
    r = lab.job(argv, uid=0 if who == "root-job" else None, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def marked_root_job(lab: Lab, ip: str, port: int = 5432) -> tuple[int, str]:
    """The MARKED client run as a root job (root, job cgroup): its pid and its report."""
    script = 'echo "pid=$$"; exec "$PYTHON" -I -c "$MARKED" "$ADDRESS" "$PORT" "$MARK"'
    env = {"PYTHON": sys.executable, "MARKED": MARKED, "ADDRESS": ip, "PORT": str(port),
           "MARK": hex(MARK)}  # fmt: skip
    r = lab.job(["sh", "-c", script], env=env, uid=0, timeout=30)
    assert r.returncode == 0, r.stderr
    pid, report = r.stdout.split("\n", 1)
    return int(pid.removeprefix("pid=")), report.strip()


def reject_packets(lab: Lab, tool: str = "iptables-save") -> int:
    """Packets the filter OUTPUT chain of ours refused (REJECT) so far."""
    return sum(
        int(line[1:].split(":")[0])
        for line in sh(lab, f"{tool} -c -t filter").splitlines()
        if "-A APPLIANCE-OUTPUT" in line and "REJECT" in line
    )


@contextlib.contextmanager
def installed(lab: Lab, config: Path) -> Iterator[None]:
    r = cli(lab, "install", "--config", str(config))
    assert r.returncode == 0, r.stderr
    try:
        yield
    finally:
        r = cli(lab, "remove")
        assert r.returncode == 0, r.stderr


@contextlib.contextmanager
def server(lab: Lab, host: Host, ip: str, port: int, answer: str) -> Iterator[None]:
    """A plain TCP server in a lab namespace that answers ``answer`` and closes."""
    proc = lab.popen([sys.executable, "-I", "-c", SERVER, ip, str(port), answer], host=host,
                     stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield
    finally:
        proc.kill()
        proc.wait()


@dataclass
class Accepted:
    peer: tuple[str, int]
    dst: tuple[str, int] | None
    error: str | None
    owner: object = None


class Listener:
    """Stands in for the proxy: accepts on [::]:PORT (dual stack) in the runner namespace,
    asks ``original_dst``, calls ``on_accept(peer_ip, peer_port)`` (attribution), answers
    ``"<ip> <port>"`` and closes, or keeps the connection open with ``keep_open``."""

    def __init__(
        self,
        lab: Lab,
        *,
        port: int = LISTEN_PORT,
        on_accept: Callable[[str, int], object] | None = None,
        keep_open: bool = False,
    ) -> None:
        self.sock: socket.socket = lab.run_in_runner(self._open, port)
        self.on_accept = on_accept
        self.keep_open = keep_open
        self.accepted: queue.Queue[Accepted] = queue.Queue()
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name="capture-listener")
        self._thread.start()

    @staticmethod
    def _open(port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
        s.listen(64)
        return s

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return  # closed
            try:
                dst: tuple[str, int] | None = original_dst(conn)
                error = None
            except CaptureError as exc:
                dst, error = None, str(exc)
            owner = self.on_accept(peer[0], peer[1]) if self.on_accept else None
            self.accepted.put(Accepted((peer[0], peer[1]), dst, error, owner))
            with contextlib.suppress(OSError):
                conn.sendall(f"{dst[0]} {dst[1]}\n".encode() if dst else b"no-dst\n")
            if self.keep_open:
                self.held.append(conn)
            else:
                conn.close()

    def next(self, timeout: float = 10) -> Accepted:
        return self.accepted.get(timeout=timeout)

    def release(self) -> None:
        for conn in self.held:
            conn.close()
        self.held.clear()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self._thread.join(timeout=10)
        self.release()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ssl_request(sock: socket.socket) -> bytes:
    """PostgreSQL's SSLRequest; a real server answers b"S" or b"N"."""
    sock.sendall(struct.pack("!ii", 8, 80877103))
    return sock.recv(1)


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root: run them through `make test`")
    with Lab(n_targets=2) as built:
        yield built


@pytest.fixture(scope="module")
def cpg(clab: Lab) -> PgServer:
    return clab.start_postgres(0, tls=True)


@pytest.fixture(scope="module")
def config_path(clab: Lab) -> Path:
    return write_config(clab)


@pytest.fixture(scope="module")
def config(config_path: Path) -> Config:
    return load_config(config_path)


def psql(lab: Lab, pg: PgServer, host: str) -> subprocess.CompletedProcess[str]:
    return lab.job(
        ["psql", "-X", "-A", "-t", "-h", host, "-U", "app", "-d", "app", "-c", "select 1"],
        env={"PGPASSWORD": pg.passwords["app"], "PGCONNECT_TIMEOUT": "10"},
    )


# -- the rules ---------------------------------------------------------------------------------------


def test_install_status_remove_with_the_cli(clab: Lab, cpg: PgServer, config_path: Path) -> None:
    foreign = "iptables -A OUTPUT -j ACCEPT; iptables -t nat -A OUTPUT -p udp -j RETURN; ip6tables -A FORWARD -j ACCEPT"
    sh(clab, foreign)
    try:
        r = cli(clab, "install", "--config", str(config_path))
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("capture rules installed"), r.stdout
        again = cli(clab, "install", "--config", str(config_path))
        assert again.returncode == 0 and "already in place" in again.stdout
        st = cli(clab, "status", "--config", str(config_path))
        assert st.returncode == 0 and st.stdout.rstrip().endswith("rules in place"), st.stdout
        report = json.loads(
            cli(clab, "status", "--config", str(config_path), "--format", "json").stdout
        )
        assert report["ok"] and all(r["present"] and r["in_place"] for r in report["rules"])
        assert {r["kind"] for r in report["rules"]} == {"jump", "rule", "egress", "device"}
        for tool in ("iptables-save", "ip6tables-save"):
            dump = sh(clab, tool)
            for table, parent, ours in [
                ("nat", "OUTPUT", "APPLIANCE-OUTPUT"), ("nat", "PREROUTING", "APPLIANCE-PREROUTING"),
                ("filter", "OUTPUT", "APPLIANCE-OUTPUT"), ("filter", "FORWARD", "APPLIANCE-FORWARD"),
                ("filter", "INPUT", "APPLIANCE-INPUT"),
            ]:  # fmt: skip
                section = dump[dump.index(f"*{table}") :]
                first = next(
                    line for line in section.splitlines() if line.startswith(f"-A {parent} ")
                )
                assert first == f"-A {parent} -j {ours}", (tool, table, first)
        guard = sh(clab, "nft list table netdev appliance")
        assert f"ap{clab.lab_id}r0" in guard and "ip daddr 198.18.0.2 tcp dport 5432" in guard
    finally:
        gone = cli(clab, "remove")
    assert gone.returncode == 0, gone.stderr
    assert "removed ipv4 nat APPLIANCE-OUTPUT" in gone.stdout
    assert "removed netdev appliance" in gone.stdout
    st = cli(clab, "status", "--config", str(config_path))
    assert st.returncode == 1 and "MISSING" in st.stdout
    assert "APPLIANCE" not in sh(clab, "iptables-save; ip6tables-save")
    assert "appliance" not in sh(clab, "nft list tables")
    assert "-A OUTPUT -j ACCEPT" in sh(clab, "iptables-save -t filter")  # others' rules stay
    sh(
        clab,
        "iptables -D OUTPUT -j ACCEPT; iptables -t nat -D OUTPUT -p udp -j RETURN; ip6tables -D FORWARD -j ACCEPT",
    )
    assert cli(clab, "remove").stdout.strip() == "no capture rules were installed"


def _with_bad_rule(config: Config, family: Family) -> RuleSet:
    """The config's rules with one rule iptables refuses in ``family``'s filter table."""
    rules = render_rules(config)
    fam = rules.family(family)
    chains = tuple(
        Chain(c.table, c.parent, c.name, (*c.rules, "-p tcp -j NO-SUCH-TARGET"))
        if (c.table, c.parent) == ("filter", "FORWARD") else c
        for c in fam.chains
    )  # fmt: skip
    return dataclasses.replace(rules, **{family: FamilyRules(fam.family, chains)})


def _uncommented(dump: str) -> list[str]:
    return [line for line in dump.splitlines() if not line.startswith("#")]


def test_a_bad_rule_leaves_nothing_half_installed(clab: Lab, config: Config) -> None:
    def ours() -> str:
        return sh(clab, "iptables-save; ip6tables-save; nft list tables")

    def attempt(rules: RuleSet) -> str:
        with pytest.raises(CaptureError) as caught:
            install(config, rules=rules)
        return str(caught.value)

    try:
        # Nothing installed before: a bad IPv6 rule (the second commit) leaves nothing at all.
        message = clab.run_in_runner(attempt, _with_bad_rule(config, "ipv6"))
        assert "ip6tables-restore failed" in message and "NO-SUCH-TARGET" in message
        assert "APPLIANCE" not in ours() and "appliance" not in ours()
        message = clab.run_in_runner(attempt, _with_bad_rule(config, "ipv4"))
        assert "iptables-restore failed" in message
        assert "APPLIANCE" not in ours()
        # Installed before: a bad update leaves the previous rules, in both families, in place.
        clab.run_in_runner(install, config)
        before = sh(clab, "iptables-save -t nat; ip6tables-save -t filter")
        clab.run_in_runner(attempt, _with_bad_rule(config, "ipv6"))
        assert clab.run_in_runner(status, config).ok
        after = sh(clab, "iptables-save -t nat; ip6tables-save -t filter")
        assert _uncommented(after) == _uncommented(before)
        # A bad egress statement (the third commit) rolls both iptables families back.
        clab.run_in_runner(remove)
        broken = dataclasses.replace(render_rules(config), egress=("no such nft statement",))
        assert "nft failed" in clab.run_in_runner(attempt, broken)
        assert "APPLIANCE" not in ours() and "appliance" not in ours()
    finally:
        clab.run_in_runner(remove)


# -- failing closed -------------------------------------------------------------------------------------


def test_fail_closed_when_the_appliance_is_not_listening(
    clab: Lab, cpg: PgServer, config_path: Path
) -> None:
    assert psql(clab, cpg, "198.18.0.2").stdout.strip() == "1"  # without capture: direct
    with installed(clab, config_path):
        for address in ("198.18.0.2", "fd00:a9e:0::2"):
            r = psql(clab, cpg, address)
            assert r.returncode != 0 and "Connection refused" in r.stderr, r.stderr
            kind, error, seconds = client(clab, address).split()
            assert (kind, error) == ("error", "ConnectionRefusedError")
            assert float(seconds) < 1.0  # refused at once: a reset, not a timeout
        # The nat table flushed (redirects gone) while the appliance is down: still refused.
        sh(clab, "iptables -t nat -F; ip6tables -t nat -F")
        for address in ("198.18.0.2", "fd00:a9e:0::2", "::ffff:198.18.0.2"):
            assert client(clab, address).startswith("error ConnectionRefusedError"), address
            r = psql(clab, cpg, address)
            assert "Connection refused" in r.stderr, (address, r.stderr)


def test_a_killed_listener_leaves_connections_refused(clab: Lab, config_path: Path) -> None:
    code = (
        "import socket,time; s=socket.socket(socket.AF_INET6); "
        "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); "
        f"s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('::', {LISTEN_PORT})); "
        "s.listen(); print('ready', flush=True); c, _ = s.accept(); c.sendall(b'captured\\n'); time.sleep(60)"
    )
    with installed(clab, config_path):
        proc = clab.popen([sys.executable, "-I", "-c", code], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        assert client(clab, "198.18.0.2") == "reply captured"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert client(clab, "198.18.0.2").startswith("error ConnectionRefusedError")
        assert client(clab, "fd00:a9e:0::2").startswith("error ConnectionRefusedError")


# -- reconcile -------------------------------------------------------------------------------------------


def test_reconcile_restores_removed_and_moved_rules(
    clab: Lab, config_path: Path, config: Config
) -> None:
    with installed(clab, config_path):
        reconciler = Reconciler(config)
        assert clab.run_in_runner(reconciler.check_and_repair) == []
        sh(clab, "iptables -t nat -D OUTPUT -j APPLIANCE-OUTPUT")  # a deleted jump
        sh(clab, "iptables -I FORWARD 1 -j ACCEPT")  # our FORWARD jump is no longer first
        sh(clab, "ip6tables -F APPLIANCE-OUTPUT")  # our v6 filter chain emptied
        new_if = f"ap{clab.lab_id}n0"
        sh(clab, f"ip link add {new_if} type veth peer name ap{clab.lab_id}n1")  # a new interface
        try:
            changes = clab.run_in_runner(reconciler.check_and_repair)
            found = {(c.family, c.table, c.chain, c.rule, c.problem) for c in changes}
            assert ("ipv4", "nat", "OUTPUT", "-j APPLIANCE-OUTPUT", "missing") in found
            assert ("ipv4", "filter", "FORWARD", "-j APPLIANCE-FORWARD", "moved") in found
            own = own_cgroup_match(
                config.capture.appliance_cgroup, lookup_cgroup_id(config.capture.appliance_cgroup)
            )
            assert ("ipv6", "filter", "APPLIANCE-OUTPUT", f"-m mark --mark 0x4150 {own} -j RETURN",
                    "missing") in found  # fmt: skip
            assert ("netdev", "appliance", "egress", new_if, "not covered") in found
            assert all(c.repaired for c in changes)
            assert all(isinstance(c.to_dict()["rule"], str) for c in changes)
            assert clab.run_in_runner(status, config).ok
            assert clab.run_in_runner(reconciler.check_and_repair) == []
            filt = sh(clab, "iptables-save -t filter")
            assert filt.index("-A FORWARD -j APPLIANCE-FORWARD") < filt.index(
                "-A FORWARD -j ACCEPT"
            )
        finally:
            sh(clab, f"iptables -D FORWARD -j ACCEPT; ip link del {new_if}")


def test_a_new_interface_rewrites_the_egress_guard_alone(
    clab: Lab, cpg: PgServer, config_path: Path, config: Config
) -> None:
    t0 = clab.targets[0]
    with installed(clab, config_path):
        assert marked_client(clab, t0.ipv4, who="root-job").startswith("error")
        rejected = reject_packets(clab)
        assert rejected >= 1
        new_if = f"ap{clab.lab_id}e0"
        sh(clab, f"ip link add {new_if} type veth peer name ap{clab.lab_id}e1")
        try:
            changes = clab.run_in_runner(Reconciler(config).check_and_repair)
            assert {(c.table, c.problem) for c in changes} == {("appliance", "not covered")}
            assert new_if in sh(clab, "nft list table netdev appliance")
            assert reject_packets(clab) == rejected  # iptables untouched: counters kept
        finally:
            sh(clab, f"ip link del {new_if}")


def test_a_cgroup_made_anew_is_noticed_and_the_rules_follow_it(
    clab: Lab, cpg: PgServer, config_path: Path, config: Config
) -> None:
    """systemd removes a unit's cgroup when it stops and makes a new one at its next start:
    the cgroup match still names the old one, so the appliance's own traffic would be
    refused. The reconcile (and the daemon's install at start) see the new id and put the
    rules back."""
    t0 = clab.targets[0]
    with installed(clab, config_path):
        assert marked_client(clab, t0.ipv4, who="appliance") == "reply S"
        old = lookup_cgroup_id(config.capture.appliance_cgroup)
        clab.appliance_cgroup.rmdir()
        clab.appliance_cgroup.mkdir()
        assert lookup_cgroup_id(config.capture.appliance_cgroup) != old
        assert marked_client(clab, t0.ipv4, who="appliance").startswith(
            "error ConnectionRefusedError"
        )  # the rule still matches the cgroup that is gone
        changes = clab.run_in_runner(Reconciler(config).check_and_repair)
        assert ("filter", "missing") in {(c.table, c.problem) for c in changes}
        assert marked_client(clab, t0.ipv4, who="appliance") == "reply S"
        assert marked_client(clab, t0.ipv6, who="appliance") == "reply S"


def test_reconcile_follows_a_host_name_target_to_its_new_address(clab: Lab) -> None:
    path = clab.dir / "capture-host.yaml"
    path.write_text(
        "targets:\n  - {name: db, protocol: postgres, addresses: [db.lab.test:5432],\n"
        "     accounts: [{name: ci, user: app, secret: {file: /none}}]}\n"
    )
    config = load_config(path)
    dns = {"db.lab.test": ["198.18.0.2"]}
    resolver = HostResolver(lambda host: dns.get(host, []))
    reconciler = Reconciler(config, resolver=resolver)
    try:
        clab.run_in_runner(lambda: install(config, resolver=resolver))
        assert "-d 198.18.0.2/32" in sh(clab, "iptables-save -t nat")
        dns["db.lab.test"] = ["198.18.1.2", "fd00:a9e:1::2"]  # the database moved
        changes = clab.run_in_runner(reconciler.check_and_repair)
        problems = {(c.family, c.problem, c.rule) for c in changes}
        assert (
            "dns",
            "resolved",
            "db.lab.test: 198.18.0.2 -> 198.18.1.2, fd00:a9e:1::2",
        ) in problems
        assert (
            "ipv4",
            "unexpected",
            "-d 198.18.0.2/32 -p tcp -m tcp --dport 5432 -j REDIRECT --to-ports 15001",
        ) in problems
        assert ("ipv6", "missing",
                "-d fd00:a9e:1::2/128 -p tcp -m tcp --dport 5432 -j REDIRECT --to-ports 15001") in problems  # fmt: skip
        nat = sh(clab, "iptables-save -t nat")
        assert "-d 198.18.1.2/32" in nat and "198.18.0.2" not in nat
        dns.clear()  # DNS down: the last good addresses stay protected
        assert clab.run_in_runner(reconciler.check_and_repair) == []
        assert "-d 198.18.1.2/32" in sh(clab, "iptables-save -t nat")
    finally:
        clab.run_in_runner(remove)


# -- redirection ------------------------------------------------------------------------------------------


def test_redirected_flows_carry_their_original_destination(
    clab: Lab, config_path: Path, config: Config
) -> None:
    with installed(clab, config_path), Listener(clab) as listener:
        for address, expected in [
            ("198.18.0.2", ("198.18.0.2", 5432)),
            ("fd00:a9e:0::2", ("fd00:a9e::2", 5432)),
            ("::ffff:198.18.0.2", ("198.18.0.2", 5432)),  # an AF_INET6 socket, IPv4 on the wire
        ]:
            assert client(clab, address) == f"reply {expected[0]} {expected[1]}", address
            got = listener.next()
            assert got.dst == expected and got.error is None
            target = target_for(config, *got.dst)
            assert target is not None and target.name == "pg"
            runner = {
                normalise_ip(clab.targets[0].runner_ipv4),
                normalise_ip(clab.targets[0].runner_ipv6),
            }
            assert normalise_ip(got.peer[0]) in runner

        # A direct connection to the listener (not redirected) has no protected destination.
        def direct() -> str:
            with socket.create_connection(("127.0.0.1", LISTEN_PORT), timeout=5) as s:
                return s.recv(100).decode()

        clab.run_in_runner(direct)
        got = listener.next()
        assert got.dst is not None and target_for(config, *got.dst) is None


def test_unprotected_traffic_is_untouched_and_the_marked_socket_is_not_looped(
    clab: Lab, cpg: PgServer, config_path: Path
) -> None:
    t0, t1 = clab.targets
    with (
        installed(clab, config_path),
        Listener(clab) as listener,
        server(clab, t1, "0.0.0.0", 5432, "target-1"),
        server(clab, t0, "0.0.0.0", 5433, "target-0-port-5433"),
    ):
        assert client(clab, t1.ipv4, 5432) == "reply target-1"  # unprotected address
        assert client(clab, t0.ipv4, 5433) == "reply target-0-port-5433"  # unprotected port
        assert listener.accepted.empty()

        def connect() -> bytes:
            with socket.socket(socket.AF_INET) as s:
                s.settimeout(5)
                s.connect((t0.ipv4, 5432))
                return ssl_request(s)

        # Marked, from the appliance's cgroup: the real PostgreSQL answers (not looped back).
        for address in (t0.ipv4, t0.ipv6):
            assert marked_client(clab, address, who="appliance") == "reply S", address
        assert listener.accepted.empty()
        assert clab.run_in_runner(connect) == b"1"  # unmarked: "198.18.0.2 5432\n"
        assert listener.next().dst == (t0.ipv4, 5432)


def test_the_mark_alone_opens_nothing(clab: Lab, cpg: PgServer, config_path: Path) -> None:
    """Issue 13: a root job (or anything with CAP_NET_RAW) can set the appliance's mark.
    Marked traffic passes only from the appliance's cgroup; from the job's it meets the
    REJECT (not the redirect: marked traffic never goes back to the appliance), IPv4 and
    IPv6. Netfilter alone here: no BPF is attached in this module."""
    t0 = clab.targets[0]
    with installed(clab, config_path), Listener(clab) as listener:
        for address, tool in ((t0.ipv4, "iptables-save"), (t0.ipv6, "ip6tables-save")):
            rejected = reject_packets(clab, tool)
            kind, error, seconds = marked_client(clab, address, who="root-job").split()
            assert (kind, error) == ("error", "ConnectionRefusedError"), address
            assert float(seconds) < 1.0  # a reset at once
            assert reject_packets(clab, tool) == rejected + 1
            assert marked_client(clab, address, who="appliance") == "reply S"
            assert reject_packets(clab, tool) == rejected + 1
            # The job, unprivileged, cannot even set the mark.
            assert marked_client(clab, address, who="job") == "mark PermissionError"
        assert listener.accepted.empty()
        # Nothing of the appliance's flows (their closing included: the kernel answers for a
        # closed socket from its own control socket, outside any cgroup) was refused.
        guard = sh(clab, "nft list table netdev appliance")
        assert "daddr 198.18.0.2 tcp dport 5432 counter packets 0 " in guard, guard
        assert "daddr fd00:a9e::2 tcp dport 5432 counter packets 0 " in guard, guard
        # Only the appliance's own flow went to its conntrack zone.
        raw = sh(clab, "iptables-save -c -t raw")
        assert re.search(r"\[[1-9]\d*:\d+\] -A APPLIANCE-OUTPUT -m mark .* --zone-orig 16720", raw)


def test_container_traffic_is_captured_through_prerouting(
    clab: Lab, cpg: PgServer, config_path: Path
) -> None:
    container = clab.add_container("c0", bridge="docker0", subnet="172.30.0.0/24")
    t0 = clab.targets[0]

    def from_container(ip: str, port: int = 5432) -> str:
        return client(clab, ip, port, host=container)

    # Without capture a container reaches PostgreSQL directly (the bypass to be closed).
    probe = (
        "import socket, struct; s = socket.create_connection(('198.18.0.2', 5432), timeout=5); "
        "s.sendall(struct.pack('!ii', 8, 80877103)); print(s.recv(1))"
    )
    r = clab.job([sys.executable, "-I", "-c", probe], host=container)
    assert r.stdout.strip() == "b'S'", r.stderr
    with installed(clab, config_path):
        with Listener(clab) as listener:
            assert from_container(t0.ipv4) == f"reply {t0.ipv4} 5432"
            got = listener.next()
            assert got.peer[0].removeprefix("::ffff:") == "172.30.0.2"
            assert got.dst == (t0.ipv4, 5432)
            # Straight to the listener port (not redirected) from the bridge: refused.
            assert from_container("172.30.0.1", LISTEN_PORT).startswith(
                "error ConnectionRefusedError"
            )
        assert from_container(t0.ipv4).startswith("error ConnectionRefusedError")
        sh(clab, "iptables -t nat -F")
        assert from_container(t0.ipv4).startswith("error ConnectionRefusedError")  # FORWARD rejects


# -- packet sockets ----------------------------------------------------------------------------------------

SCAPY = """\
import json, sys
from scapy.all import IP, TCP, conf, sr1
from scapy.supersocket import L3RawSocket
conf.verb = 0
if sys.argv[3] == "raw":
    conf.L3socket = L3RawSocket
syn = IP(dst=sys.argv[1]) / TCP(sport=int(sys.argv[2]), dport=5432, flags="S", seq=12345)
answer = sr1(syn, timeout=float(sys.argv[4]))
print(json.dumps({
    "socket": conf.L3socket.__name__,
    "flags": str(answer[TCP].flags) if answer is not None and TCP in answer else None,
    "from": answer[IP].src if answer is not None else None,
}))
"""


class Sniffer:
    """Counts TCP SYNs with a given source port arriving in a target namespace (AF_PACKET)."""

    def __init__(self, host: Host, sport: int) -> None:
        self.sport = sport
        self.syns = 0
        self._stop = threading.Event()
        with in_netns(host.path):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, name="sniffer")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.sock.recv(2048)
            except TimeoutError:
                continue
            if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
                continue
            tcp = frame[14 + (frame[14] & 0x0F) * 4 :]
            sport, dport = struct.unpack("!HH", tcp[:4])
            if sport == self.sport and dport == 5432 and tcp[13] & 0x02:
                self.syns += 1

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.syns


def _scapy(lab: Lab, sport: int, mode: str, timeout: float) -> dict[str, object]:
    proc = lab.popen([sys.executable, "-c", SCAPY, lab.targets[0].ipv4, str(sport), mode, str(timeout)],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)  # type: ignore[no-any-return]


def test_a_packet_socket_syn_gets_no_handshake_with_the_target(
    clab: Lab, cpg: PgServer, config_path: Path
) -> None:
    t0 = clab.targets[0]
    # Control: without capture, scapy's SYN (a PF_PACKET socket) reaches PostgreSQL: SYN-ACK.
    sniffer = Sniffer(t0, 40001)
    before = _scapy(clab, 40001, "packet", 3)
    assert sniffer.stop() == 1
    assert before == {"socket": "L3PacketSocket", "flags": "SA", "from": t0.ipv4}
    with installed(clab, config_path):
        # The packet socket skips iptables; the netdev egress guard drops the frame.
        sniffer = Sniffer(t0, 40002)
        after = _scapy(clab, 40002, "packet", 1)
        assert sniffer.stop() == 0
        assert after["flags"] is None
        guard = sh(clab, "nft list table netdev appliance")
        assert "ip daddr 198.18.0.2 tcp dport 5432 counter packets 0 " not in guard
        # A raw IP socket goes through iptables: redirected to the (absent) listener, the
        # local kernel resets it; the target never sees a SYN.
        sniffer = Sniffer(t0, 40003)
        raw = _scapy(clab, 40003, "raw", 1)
        assert sniffer.stop() == 0
        assert raw["flags"] != "SA"


# A TCP SYN to the target sent from a packet socket that carries the appliance's mark, as a
# process with CAP_NET_RAW alone may do (Linux 5.17+ lets it set SO_MARK).
PACKET = """\
import socket, struct, sys
dev, src_mac, dst_mac, src, dst, sport, mark = sys.argv[1:8]
def csum(b):
    b += b"\\0" * (len(b) % 2)
    total = sum(struct.unpack(f"!{len(b) // 2}H", b))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF
s4, d4 = socket.inet_aton(src), socket.inet_aton(dst)
tcp = struct.pack("!HHIIBBHHH", int(sport), 5432, 1, 0, 5 << 4, 2, 65535, 0, 0)
tcp = tcp[:16] + struct.pack("!H", csum(s4 + d4 + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, s4, d4)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(mark, 0))
s.bind((dev, 0))
eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
try:
    s.send(eth + b"\\x08\\x00" + ip + tcp)
    print("sent")
except OSError as exc:
    print(f"dropped {exc.strerror}")
"""


def _mac(host: Host, dev: str) -> str:
    return str(json.loads(host.ip("-j", "link", "show", "dev", dev))[0]["address"])


def _marked_packet(lab: Lab, sport: int) -> str:
    """Send PACKET as uid nobody with CAP_NET_RAW only, in the job's cgroup."""
    t0 = lab.targets[0]
    r_if, t_if = f"ap{lab.lab_id}r0", f"ap{lab.lab_id}t0"
    argv = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
            "--inh-caps", "+net_raw", "--ambient-caps", "+net_raw",
            sys.executable, "-I", "-c", PACKET, r_if, _mac(lab.runner, r_if), _mac(t0, t_if),
            t0.runner_ipv4, t0.ipv4, str(sport), hex(MARK)]  # fmt: skip
    proc = lab.popen(argv, cgroup=lab.job_cgroup, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


def test_a_marked_packet_socket_without_root_does_not_pass_the_egress_guard(
    clab: Lab, cpg: PgServer, config_path: Path
) -> None:
    t0 = clab.targets[0]
    # Control: without capture the marked frame reaches the target.
    sniffer = Sniffer(t0, 40011)
    assert _marked_packet(clab, 40011) == "sent"
    assert _eventually_count(sniffer) == 1
    with installed(clab, config_path):
        sniffer = Sniffer(t0, 40012)
        assert _marked_packet(clab, 40012) == "dropped No buffer space available"
        assert sniffer.stop() == 0
        guard = sh(clab, "nft list table netdev appliance")
        assert "meta mark 0x00004150 meta skuid != 0 counter packets 1 " in guard


def _eventually_count(sniffer: Sniffer) -> int:
    """Stop ``sniffer`` once it has seen a SYN (or after 3 s) and return its count."""
    deadline = 30
    while sniffer.syns == 0 and deadline:
        threading.Event().wait(0.1)
        deadline -= 1
    return sniffer.stop()
