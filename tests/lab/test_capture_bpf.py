"""eBPF attribution and identity in the lab: who opened a captured connection.

A lab of its own with the capture rules installed in its runner namespace for the whole
module, the attribution programs attached to the lab's job cgroup (never the root cgroup),
and the stand-in listener of test_capture_rules.py doing what the daemon does on accept:
``original_dst``, ``Attribution.lookup(peer)``, ``resolve_identity``. The jobs are
unmodified clients (psql, python) run as uid nobody in the job cgroup, connecting to the
target's real address.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.capture import (
    Attribution,
    AttributionUnavailable,
    FlowOwner,
    IdentityCache,
    _libbpf,
    install,
    remove,
    resolve_identity,
)
from appliance.capture._attribution import ATTACH_TYPE_NAMES
from appliance.capture._ci import KEYS
from appliance.config import Config, load_config
from tests.lab.lab import Lab, cgroup2_root
from tests.lab.test_capture_rules import (
    CLIENT,
    MARK,
    Listener,
    client,
    marked_client,
    marked_root_job,
    server,
    write_config,
)

PYTHON_COMM = Path(sys.executable).name[:15]  # the kernel's comm of our interpreter
UNIT = Path(__file__).resolve().parents[2] / "systemd" / "appliance.service"
GITHUB = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REPOSITORY": "acme/shop",
    "GITHUB_WORKFLOW": "migrate",
    "GITHUB_JOB": "db",
    "GITHUB_RUN_ID": "4242",
    "GITHUB_RUN_ATTEMPT": "3",
    "RUNNER_NAME": "lab-runner",
    "GITHUB_TOKEN": "ghs_must_not_be_recorded",
}


def apl_programs(cgroup: Path) -> dict[int, str]:
    """The ``apl_*`` programs attached to ``cgroup``: id -> name."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        found = {}
        for attach_type in ATTACH_TYPE_NAMES:
            for prog_id in _libbpf.attached_programs(fd, attach_type):
                name = _libbpf.program_name(prog_id)
                if name.startswith("apl_"):
                    found[prog_id] = name
        return found
    finally:
        os.close(fd)


def sibling_cgroup(lab: Lab, name: str) -> Path:
    """A cgroup next to the job's, inside the lab's own subtree (removed with the lab)."""
    path = lab.job_cgroup.parent / name
    path.mkdir(exist_ok=True)
    return path


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root: run them through `make test`")
    with Lab(n_targets=1) as built:
        yield built


@pytest.fixture(scope="module")
def bconfig(blab: Lab) -> Iterator[Config]:
    config = load_config(write_config(blab))
    blab.run_in_runner(install, config)
    try:
        yield config
    finally:
        blab.run_in_runner(remove)


@pytest.fixture(scope="module")
def attribution(blab: Lab, bconfig: Config) -> Iterator[Attribution]:
    started = Attribution.start(
        blab.job_cgroup, ports={5432}, mark=MARK, own_cgroup=blab.appliance_cgroup
    )
    try:
        yield started
    finally:
        started.close()
    assert apl_programs(blab.job_cgroup) == {}


@pytest.fixture
def cache() -> IdentityCache:
    return IdentityCache()


def rel_cgroup(path: Path) -> str:
    return "/" + str(path.relative_to(cgroup2_root()))


# -- attribution and identity ------------------------------------------------------------------


def test_psql_as_the_job_is_attributed_with_pid_exe_cgroup_and_ci(
    blab: Lab, attribution: Attribution, cache: IdentityCache
) -> None:
    def identify(ip: str, port: int) -> object:
        owner = attribution.lookup(ip, port)
        return owner, resolve_identity(owner, cache=cache)

    with Listener(blab, on_accept=identify) as listener:
        proc = blab.popen(
            ["psql", "-X", "-h", "198.18.0.2", "-U", "app", "-d", "app", "-c", "select 1"],
            job=True,
            env={**GITHUB, "PGCONNECT_TIMEOUT": "10"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        proc.communicate(timeout=30)
        got = listener.next()
    owner, identity = got.owner  # type: ignore[misc]
    assert isinstance(owner, FlowOwner)
    assert (owner.tgid, owner.uid, owner.gid, owner.comm) == (proc.pid, 65534, 65534, "psql")
    assert owner.cgroup_id == os.stat(blab.job_cgroup).st_ino
    assert owner.dst == ("198.18.0.2", 5432) == got.dst
    assert identity["source"] == "ebpf" and identity["how"] == "ebpf+procfs"
    assert identity["pid"] == proc.pid and identity["comm"] == "psql"
    assert str(identity["exe"]).endswith("/bin/psql")
    assert identity["cmdline"][-4:] == ["-d", "app", "-c", "select 1"]  # type: ignore[index]
    assert identity["cgroup"] == rel_cgroup(blab.job_cgroup)
    assert identity["ci"] == {
        "provider": "github",
        **dict.fromkeys(KEYS),
        "repository": "acme/shop",
        "workflow": "migrate",
        "job": "db",
        "run_id": "4242",
        "run_attempt": "3",
        "runner": "lab-runner",
        "vars": {k: v for k, v in GITHUB.items() if k != "GITHUB_TOKEN"},
    }
    assert (identity["ci_source"], identity["ci_source_pid"]) == ("process", proc.pid)
    assert "ghs_must_not_be_recorded" not in json.dumps(identity)


def test_ci_variables_come_from_the_shell_that_started_the_client(
    blab: Lab, attribution: Attribution, cache: IdentityCache
) -> None:
    def identify(ip: str, port: int) -> object:
        return resolve_identity(attribution.lookup(ip, port), cache=cache)

    script = f'env -i {sys.executable} -I -c "$CLIENT" 198.18.0.2 5432; true'
    with Listener(blab, on_accept=identify) as listener:
        shell = blab.popen(["sh", "-c", script], job=True, env={**GITHUB, "CLIENT": CLIENT},
                           stdout=subprocess.PIPE)  # fmt: skip
        out, _ = shell.communicate(timeout=30)
        identity = listener.next().owner
    assert out.decode().strip() == "reply 198.18.0.2 5432"
    assert isinstance(identity, dict)
    assert identity["comm"] == PYTHON_COMM and identity["pid"] != shell.pid
    assert (identity["ci_source"], identity["ci_source_pid"]) == ("ancestor", shell.pid)
    assert identity["ci"]["repository"] == "acme/shop"  # type: ignore[index]


FORKER = """\
import os, socket, sys, time
s = socket.create_connection(("198.18.0.2", 5432), timeout=10)
child = os.fork()
if child == 0:          # the child keeps the connection; the parent, which opened it, exits
    os.close(1)
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
"""


def test_an_exited_process_still_has_what_bpf_captured(
    blab: Lab, attribution: Attribution, cache: IdentityCache
) -> None:
    parent_gone = threading.Event()

    def identify(ip: str, port: int) -> object:
        assert parent_gone.wait(30)
        owner = attribution.lookup(ip, port)
        return owner, resolve_identity(owner, cache=cache)

    with Listener(blab, on_accept=identify) as listener:
        parent = blab.popen([sys.executable, "-I", "-c", FORKER], job=True, env=GITHUB,
                            stdout=subprocess.PIPE)  # fmt: skip
        out, _ = parent.communicate(timeout=30)
        child = int(out)
        parent_gone.set()
        try:
            owner, identity = listener.next().owner  # type: ignore[misc]
        finally:
            os.kill(child, signal.SIGKILL)
    assert owner is not None and owner.tgid == parent.pid
    assert identity["how"] == "ebpf (process exited)"
    assert (identity["pid"], identity["uid"], identity["comm"]) == (parent.pid, 65534, PYTHON_COMM)
    assert identity["exe"] is None and identity["cmdline"] is None
    assert identity["cgroup"] == rel_cgroup(blab.job_cgroup)  # from the cgroup id
    assert identity["ci_source"] == "cgroup" and identity["ci_source_pid"] == child
    assert identity["ci"]["run_id"] == "4242"  # type: ignore[index]


HOLDER = """\
import socket, sys
s = socket.create_connection(("198.18.0.2", 5432), timeout=10)
print(s.recv(100).decode().strip(), flush=True)
sys.stdin.readline()
s.close()
"""


def test_entries_are_removed_when_the_connection_closes(
    blab: Lab, attribution: Attribution
) -> None:
    peers: list[tuple[str, int]] = []

    def remember(ip: str, port: int) -> object:
        peers.append((ip, port))
        return attribution.lookup(ip, port)

    closed_before = attribution.stats()["closed"]
    with Listener(blab, on_accept=remember, keep_open=True) as listener:
        job = blab.popen([sys.executable, "-I", "-c", HOLDER], job=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        assert job.stdout is not None and job.stdout.readline() == b"198.18.0.2 5432\n"
        assert isinstance(listener.next().owner, FlowOwner)
        assert attribution.lookup(*peers[0]) is not None  # open: the entries are there
        assert _eventually(lambda: attribution.entries() == (1, 1))  # earlier flows gone
        job.communicate(b"close\n", timeout=30)  # the job closes its end, then the proxy
        # (with only the job's FIN, Linux may keep the orphaned socket in FIN_WAIT2 for
        # tcp_fin_timeout, 60 s, when the peer's ACK meets the socket still locked by close)
        listener.release()
        assert _eventually(lambda: attribution.lookup(*peers[0]) is None)
    # >=: a connection of an earlier test (a killed child's) may finish closing meanwhile.
    assert attribution.stats()["closed"] >= closed_before + 1
    assert _eventually(lambda: attribution.entries() == (0, 0))


def _eventually(check: Callable[[], bool], attempts: int = 200) -> bool:
    """Poll ``check`` until true (at most ``attempts`` times 25 ms); the outcome is asserted,
    never the time it took."""
    stop = threading.Event()
    for _ in range(attempts):
        if check():
            return True
        stop.wait(0.025)
    return False


def test_unprotected_ports_and_the_appliances_own_socket_are_not_recorded(
    blab: Lab, attribution: Attribution
) -> None:
    recorded = attribution.stats()["recorded"]
    r = blab.job([sys.executable, "-I", "-c", CLIENT, "198.18.0.2", "5433"])  # refused, unrecorded
    assert r.stdout.startswith("error ConnectionRefusedError")
    assert attribution.stats()["recorded"] == recorded
    assert attribution.lost_events() == 0


# -- the appliance's mark used by another -------------------------------------------------------


def test_a_root_job_using_the_appliances_mark_is_refused_at_connect_and_reported(
    blab: Lab, bconfig: Config, attribution: Attribution
) -> None:
    """Issue 13: BPF sees the socket's mark at connect(); outside the appliance's cgroup the
    connect fails with EPERM (before any packet) and the attempt is reported, with who."""
    attribution.bypass_attempts()
    refused = attribution.stats()["bypass_refused"]
    for address in ("198.18.0.2", "fd00:a9e:0::2"):
        pid, outcome = marked_root_job(blab, address)
        assert outcome.split()[:2] == ["error", "PermissionError"]
        (attempt,) = attribution.bypass_attempts()
        assert attempt.tgid == pid
        assert (attempt.uid, attempt.comm) == (0, PYTHON_COMM)
        assert attempt.dst == (address.replace(":0::", "::"), 5432)
        assert attempt.cgroup_id == os.stat(blab.job_cgroup).st_ino
    assert attribution.stats()["bypass_refused"] == refused + 2
    # The job itself cannot set the mark at all.
    assert marked_client(blab, "198.18.0.2", who="job") == "mark PermissionError"
    assert attribution.bypass_attempts() == []
    assert attribution.lost_events() == 0


def test_the_appliances_own_cgroup_may_use_the_mark(blab: Lab, bconfig: Config) -> None:
    """Attached above both the job's and the appliance's cgroups (as on a runner, where the
    programs sit on the root cgroup): the appliance connects, the root job is refused."""
    with (
        server(blab, blab.targets[0], "::", 5432, "S"),
        Attribution.start(
            blab.job_cgroup.parent, ports={5432}, mark=MARK, own_cgroup=blab.appliance_cgroup
        ) as wide,
    ):
        assert marked_client(blab, "198.18.0.2", who="appliance") == "reply S"
        assert marked_client(blab, "fd00:a9e:0::2", who="appliance") == "reply S"
        assert wide.bypass_attempts() == []
        assert marked_client(blab, "198.18.0.2", who="root-job").startswith("error PermissionError")
        assert [a.dst for a in wide.bypass_attempts()] == [("198.18.0.2", 5432)]
        assert wide.stats()["recorded"] == 0  # marked connections are never recorded as flows


# -- start, stale programs, failures ---------------------------------------------------------------

STARTER = """\
import sys, time
from pathlib import Path
from appliance.capture import Attribution
a = Attribution.start(Path(sys.argv[1]), ports={5432})
print("ready", flush=True)
time.sleep(120)
"""


def test_programs_left_by_a_killed_run_are_detached_at_start(blab: Lab) -> None:
    cgroup = sibling_cgroup(blab, "stale")
    proc = blab.popen([sys.executable, "-c", STARTER, str(cgroup)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    os.kill(proc.pid, signal.SIGKILL)  # no close(): the programs stay attached
    proc.wait()
    stale = apl_programs(cgroup)
    assert sorted(stale.values()) == ["apl_connect4", "apl_connect6", "apl_sockops"]
    with Attribution.start(cgroup, ports={5432}) as fresh:
        assert {p.id: p.name for p in fresh.stale_detached} == stale
        assert {p.attach_type for p in fresh.stale_detached} == set(ATTACH_TYPE_NAMES.values())
        now = apl_programs(cgroup)
        assert len(now) == 3 and not set(now) & set(stale)
    assert apl_programs(cgroup) == {}


BROKEN_C = "int apl_connect4(struct bpf_sock_addr *ctx) { return undeclared_thing; }\n"


def test_bpf_failures_say_why_and_capture_goes_on_unattributed(
    blab: Lab, bconfig: Config, attribution: Attribution, tmp_path: Path
) -> None:
    attached = apl_programs(blab.job_cgroup)
    reasons = []
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "attribution.c").write_text(BROKEN_C)
    for kwargs in (
        {"program_dir": tmp_path / "empty"},
        {"program_dir": broken},
        {"cgroup": tmp_path},
        {"max_flows": 0},
    ):
        args = {"cgroup": blab.job_cgroup, **kwargs}
        with pytest.raises(AttributionUnavailable) as caught:
            Attribution.start(**args)  # type: ignore[arg-type]
        reasons.append(caught.value.reason)
    assert re.search(r"BPF program .*/empty/attribution.c not found", reasons[0])
    assert reasons[1].startswith("compiling") and "attribution.c failed" in reasons[1]
    assert "is not a cgroup directory" in reasons[2]
    assert "APL_MAX_FLOWS must be an integer" in reasons[3]
    assert apl_programs(blab.job_cgroup) == attached  # nothing attached, nothing detached

    # The daemon runs on without attribution: the flow is captured all the same.
    with Listener(
        blab, on_accept=lambda ip, port: resolve_identity(None, reason=reasons[1])
    ) as listener:
        assert client(blab, "198.18.0.2") == "reply 198.18.0.2 5432"
        identity = listener.next().owner
    assert isinstance(identity, dict) and identity["source"] == "unattributed"
    assert identity["how"] == f"unattributed: {reasons[1]}"


def test_lost_attributions_are_counted(blab: Lab, attribution: Attribution) -> None:
    # 1. An owner record gone between connect and lookup (as LRU eviction would do it).
    peers: list[tuple[str, int]] = []
    with Listener(blab, on_accept=lambda ip, port: peers.append((ip, port)), keep_open=True):
        job = blab.popen([sys.executable, "-I", "-c", HOLDER], job=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        assert job.stdout is not None and job.stdout.readline() == b"198.18.0.2 5432\n"
        owner = attribution.lookup(*peers[0])
        assert owner is not None
        lost = attribution.lost_events()
        del attribution._bpf[b"apl_owners"][ctypes.c_uint64(owner.cookie)]
        assert attribution.lookup(*peers[0]) is None
        assert attribution.lost_events() == lost + 1
        job.communicate(b"close\n", timeout=30)
    # 2. A connection that reaches sock_ops with no owner record: connect4 detached by hand.
    cgroup = sibling_cgroup(blab, "lost")
    with Attribution.start(cgroup, ports={5432}) as lossy:
        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for prog_id, name in apl_programs(cgroup).items():
                if name == "apl_connect4":
                    _libbpf.detach_program(prog_id, fd, 10)  # BPF_CGROUP_INET4_CONNECT
        finally:
            os.close(fd)
        with Listener(blab):
            move = f'echo $$ > {cgroup}/cgroup.procs && exec {sys.executable} -I -c "$CLIENT" 198.18.0.2 5432'
            proc = blab.popen(["sh", "-c", move], env={"CLIENT": CLIENT}, stdout=subprocess.PIPE)
            out, _ = proc.communicate(timeout=30)
        assert out.decode().strip() == "reply 198.18.0.2 5432"
        assert lossy.stats()["owner_missing"] == 1
        assert lossy.lost_events() == 1


# -- the unit's capabilities ------------------------------------------------------------------------

UNDER_CAPS = """\
import json, sys
from pathlib import Path
from appliance.capture import Attribution, install, remove, status
from appliance.config import load_config
result = {}
try:
    with Attribution.start(Path(sys.argv[1]), ports={5432}) as a:
        result["bpf"] = "ok"
except Exception as exc:
    result["bpf"] = str(exc)
config = load_config(sys.argv[2])
try:
    install(config)
    result["rules"] = "ok" if status(config).ok else "not in place"
    remove(config)
except Exception as exc:
    result["rules"] = str(exc)
try:
    Path(f"/proc/{sys.argv[3]}/environ").read_bytes()
    Path(f"/proc/{sys.argv[3]}/exe").readlink()
    result["environ"] = "ok"
except OSError as exc:
    result["environ"] = exc.strerror
print(json.dumps(result))
"""


def _unit_caps() -> list[str]:
    line = next(x for x in UNIT.read_text().splitlines() if x.startswith("CapabilityBoundingSet="))
    return [c.removeprefix("CAP_").lower() for c in line.partition("=")[2].split()]


def test_the_units_capabilities_are_enough_and_sys_admin_is_not_needed(
    blab: Lab, bconfig: Config
) -> None:
    """Runs capture and attribution as root limited to the unit's CapabilityBoundingSet
    (CAP_SYS_ADMIN absent), in a runner namespace without our rules, then without
    CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH to show why the unit keeps them. (This sandbox's
    own bounding set lacks CAP_SYS_RESOURCE, so it is shown unneeded on this kernel too.)"""
    assert "sys_admin" not in _unit_caps()
    cgroup = sibling_cgroup(blab, "caps")
    other = Lab(n_targets=1)
    with other:
        config = write_config(other)
        job = other.popen(["sleep", "60"], job=True)

        def run(caps: list[str]) -> dict[str, str]:
            argv = ["setpriv", "--bounding-set", ",".join(["-all", *(f"+{c}" for c in caps)]),
                    sys.executable, "-c", UNDER_CAPS, str(cgroup), str(config), str(job.pid)]  # fmt: skip
            proc = other.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
            return json.loads(out)  # type: ignore[no-any-return]

        assert run(_unit_caps()) == {"bpf": "ok", "rules": "ok", "environ": "ok"}
        for needed in ("sys_ptrace", "dac_read_search"):
            without = run([c for c in _unit_caps() if c != needed])
            assert without == {"bpf": "ok", "rules": "ok", "environ": "Permission denied"}
        job.kill()
    assert apl_programs(cgroup) == {}
