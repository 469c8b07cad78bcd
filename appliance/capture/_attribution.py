"""eBPF attribution: load ``bpf/attribution.c`` with bcc, attach it to a cgroup, answer
"who opened the connection whose local end is ip:port?".

Where this sits: the daemon starts one :class:`Attribution` at start-up
(:meth:`Attribution.start`); for every accepted connection it calls :meth:`lookup` with the
accepted socket's *peer* address (the job socket's local end, which netfilter's REDIRECT
leaves untouched) and hands the :class:`FlowOwner` to :func:`resolve_identity`.

Netfilter enforces, eBPF observes (DESIGN.md, invariant 2): if anything here fails,
:class:`AttributionUnavailable` says why, and capture goes on with sessions
``unattributed``. The programs refuse one kind of connection only: one whose socket carries
the appliance's mark, opened from outside the appliance's own cgroup (issue 13; netfilter
refuses it too, on its own). :meth:`Attribution.bypass_attempts` says who tried, for the
daemon to record.

The programs are attached with ``BPF_PROG_ATTACH`` and ``BPF_F_ALLOW_MULTI`` (they coexist
with systemd's and Docker's programs). Such attachments outlive a killed daemon, so
:meth:`Attribution.start` first detaches every ``apl_*`` program it finds on the cgroup and
reports them in :attr:`Attribution.stale_detached`.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.capture import _libbpf
from appliance.capture._cgroup import cgroup2_root, cgroup_dir, cgroup_id
from appliance.capture._errors import AttributionUnavailable
from appliance.capture._origdst import normalise_ip
from appliance.config import Config

DEFAULT_PROGRAM_DIR = Path(__file__).resolve().parents[2] / "bpf"
PROGRAM_FILE = "attribution.c"
PROGRAM_PREFIX = "apl_"

# BPF program and attach types (<linux/bpf.h>); the numbers bcc's constants also carry.
_PROG_CGROUP_SOCK_ADDR = 18
_PROG_SOCK_OPS = 13
_ATTACH_CGROUP_SOCK_OPS = 3
_ATTACH_CGROUP_INET4_CONNECT = 10
_ATTACH_CGROUP_INET6_CONNECT = 11
_BPF_F_ALLOW_MULTI = 2

_PROGRAMS = (
    ("apl_connect4", _PROG_CGROUP_SOCK_ADDR, _ATTACH_CGROUP_INET4_CONNECT),
    ("apl_connect6", _PROG_CGROUP_SOCK_ADDR, _ATTACH_CGROUP_INET6_CONNECT),
    ("apl_sockops", _PROG_SOCK_OPS, _ATTACH_CGROUP_SOCK_OPS),
)
ATTACH_TYPE_NAMES = {
    _ATTACH_CGROUP_INET4_CONNECT: "cgroup_inet4_connect",
    _ATTACH_CGROUP_INET6_CONNECT: "cgroup_inet6_connect",
    _ATTACH_CGROUP_SOCK_OPS: "cgroup_sock_ops",
}

# Indexes of apl_stats (bpf/attribution.c, APL_STAT_*).
STATS = (
    "recorded",
    "owner_update_failed",
    "flow_update_failed",
    "owner_missing",
    "closed",
    "bypass_refused",
    "bypass_lost",
)
_LOST = ("owner_update_failed", "flow_update_failed", "owner_missing", "bypass_lost")

DEFAULT_MAX_FLOWS = 16384
_AF_INET6 = 10


@dataclass(frozen=True)
class FlowOwner:
    """Who opened a connection, as BPF saw it at ``connect()``.

    ``tgid`` is the process id (what ``ps`` shows), ``pid`` the kernel's thread id.
    ``dst`` is the original destination, ``boot_ns`` CLOCK_BOOTTIME at connect (to tell a
    reused pid from the process that connected).
    """

    tgid: int
    pid: int
    uid: int
    gid: int
    comm: str
    cgroup_id: int
    netns_cookie: int
    boot_ns: int
    family: int
    dst: tuple[str, int]
    cookie: int


@dataclass(frozen=True)
class StaleProgram:
    """A program of a previous run found attached at start and detached."""

    id: int
    name: str
    attach_type: str

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "attach_type": self.attach_type}


def _mapped16(ip: str) -> bytes:
    """16 bytes of ``ip``, IPv4 as IPv4-mapped IPv6: the form the BPF maps use."""
    addr = ipaddress.ip_address(normalise_ip(ip))
    if addr.version == 4:
        return bytes(10) + b"\xff\xff" + addr.packed
    return addr.packed


def _from16(raw: bytes) -> str:
    return normalise_ip(str(ipaddress.IPv6Address(raw)))


def _owner(o: Any) -> FlowOwner:
    """A FlowOwner from the C struct ``apl_owner_t``."""
    return FlowOwner(
        tgid=o.tgid,
        pid=o.pid,
        uid=o.uid,
        gid=o.gid,
        comm=bytes(o.comm).split(b"\0", 1)[0].decode(errors="replace"),
        cgroup_id=o.cgroup_id,
        netns_cookie=o.netns_cookie,
        boot_ns=o.boot_ns,
        family=o.family,
        dst=(_from16(bytes(o.daddr)), o.dport),
        cookie=o.cookie,
    )


def _int_flag(name: str, value: int, low: int, high: int) -> str:
    """A ``-D`` flag for bcc, after checking that ``value`` is an int within range (never a
    string pasted into C: STYLE.md, 8)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AttributionUnavailable(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return f"-D{name}={value}"


class Attribution:
    """The loaded and attached attribution programs. Build with :meth:`start`."""

    def __init__(
        self,
        bpf: Any,
        functions: list[tuple[Any, int]],
        cgroup: Path,
        cgroup_fd: int,
        stale: tuple[StaleProgram, ...],
    ) -> None:
        self._bpf = bpf
        self._functions = functions
        self._cgroup_fd = cgroup_fd
        self._owners = bpf[b"apl_owners"]
        self._flows = bpf[b"apl_flows"]
        self._stats = bpf[b"apl_stats"]
        self._misses = 0
        self._bypass: list[FlowOwner] = []
        owner_type = ctypes.POINTER(self._owners.Leaf)

        def on_bypass(_ctx: object, data: int, _size: int) -> int:
            self._bypass.append(_owner(ctypes.cast(data, owner_type).contents))
            return 0

        self._on_bypass = on_bypass  # bcc keeps only a C wrapper: hold the function too
        try:
            bpf[b"apl_bypass"].open_ring_buffer(on_bypass)
        except Exception as exc:  # start() releases the programs and says why
            raise AttributionUnavailable(
                f"opening the ring buffer apl_bypass failed: {exc}"
            ) from None
        self.cgroup = cgroup
        self.stale_detached = stale

    # -- start / close ----------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Config, *, program_dir: Path = DEFAULT_PROGRAM_DIR) -> Attribution:
        """Start for ``config``: its cgroup, its mark, recording only the protected ports,
        the mark allowed from the appliance's cgroup only."""
        ports = {a.port for t in config.targets.values() for a in t.addresses}
        return cls.start(
            config.capture.cgroup,
            program_dir=program_dir,
            ports=ports,
            mark=config.capture.mark,
            own_cgroup=cgroup_dir(config.capture.appliance_cgroup),
        )

    @classmethod
    def start(
        cls,
        cgroup: Path | None,
        *,
        program_dir: Path = DEFAULT_PROGRAM_DIR,
        ports: Iterable[int] | None = None,
        mark: int = 0x4150,
        max_flows: int = DEFAULT_MAX_FLOWS,
        own_cgroup: Path | None = None,
    ) -> Attribution:
        """Compile, load and attach the programs to ``cgroup`` (None: the cgroup v2 root).

        ``ports``: record only connections to these ports (None: every TCP connection).
        Sockets carrying ``mark`` are never recorded: those of tasks in ``own_cgroup`` (the
        appliance's cgroup directory, or below it) connect; any other's connect is refused
        and reported (:meth:`bypass_attempts`). ``own_cgroup`` None: every marked connect is.
        Raises AttributionUnavailable with the reason; nothing stays attached then.
        """
        try:
            from bcc import BPF  # Debian's python3-bpfcc, only for /usr/bin/python3
        except Exception as exc:  # ImportError, or bcc failing to find libbcc
            raise AttributionUnavailable(f"bcc (python3-bpfcc) cannot be imported: {exc}") from None
        source = Path(program_dir) / PROGRAM_FILE
        if not source.is_file():
            raise AttributionUnavailable(f"BPF program {source} not found")
        own_id, own_level = cls._own_cgroup(own_cgroup)
        flags = [
            _int_flag("APL_MAX_FLOWS", max_flows, 1, 1 << 20),
            _int_flag("APL_MARK", mark, 0, 0xFFFFFFFF),
            _int_flag("APL_FILTER_PORTS", 0 if ports is None else 1, 0, 1),
            _int_flag("APL_OWN_CGROUP", own_id, 0, (1 << 63) - 1),
            _int_flag("APL_OWN_LEVEL", own_level, 0, 1 << 16),
        ]
        wanted = sorted(set(ports)) if ports is not None else []
        for port in wanted:
            _int_flag("port", port, 1, 65535)
        path = cls._cgroup_path(cgroup)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise AttributionUnavailable(f"cannot open cgroup {path}: {exc.strerror}") from None
        bpf: Any = None
        attached: list[tuple[Any, int]] = []
        try:
            # Compile and load first: if that fails, whatever is attached stays untouched.
            try:
                bpf = BPF(src_file=str(source).encode(), cflags=flags)
            except Exception as exc:
                raise AttributionUnavailable(f"compiling {source} failed: {exc}") from None
            table = bpf[b"apl_ports"]
            for port in wanted:
                table[ctypes.c_uint16(port)] = ctypes.c_uint8(1)
            loaded = []
            for name, prog_type, attach_type in _PROGRAMS:
                try:
                    fn = bpf.load_func(name.encode(), prog_type, attach_type=attach_type)
                except Exception as exc:
                    raise AttributionUnavailable(f"loading {name} failed: {exc}") from None
                loaded.append((name, fn, attach_type))
            stale = cls._detach_stale(fd)
            for name, fn, attach_type in loaded:
                try:
                    BPF.attach_func(fn, fd, attach_type, _BPF_F_ALLOW_MULTI)
                except Exception as exc:
                    raise AttributionUnavailable(
                        f"attaching {name} to {path} failed: {exc}"
                    ) from None
                attached.append((fn, attach_type))
            return cls(bpf, attached, path, fd, stale)
        except BaseException:
            cls._release(bpf, attached, fd)
            raise

    @staticmethod
    def _cgroup_path(cgroup: Path | None) -> Path:
        root = cgroup2_root()
        if root is None:
            raise AttributionUnavailable("no cgroup v2 hierarchy is mounted")
        path = Path(cgroup) if cgroup is not None else root
        if not (path / "cgroup.procs").is_file():
            raise AttributionUnavailable(f"{path} is not a cgroup directory")
        if not path.resolve().is_relative_to(root.resolve()):
            raise AttributionUnavailable(f"{path} is not in the cgroup v2 hierarchy at {root}")
        return path

    @classmethod
    def _own_cgroup(cls, own: Path | None) -> tuple[int, int]:
        """The id and depth of the appliance's cgroup; (0, 0) for none."""
        if own is None:
            return 0, 0
        path = cls._cgroup_path(own)
        root = cgroup2_root()
        assert root is not None  # _cgroup_path checked it
        try:
            return cgroup_id(path), len(path.resolve().relative_to(root.resolve()).parts)
        except OSError as exc:
            raise AttributionUnavailable(f"cannot read cgroup {path}: {exc.strerror}") from None

    @staticmethod
    def _detach_stale(fd: int) -> tuple[StaleProgram, ...]:
        found: list[StaleProgram] = []
        try:
            for _name, _prog_type, attach_type in _PROGRAMS:
                for prog_id in _libbpf.attached_programs(fd, attach_type):
                    name = _libbpf.program_name(prog_id)
                    if name.startswith(PROGRAM_PREFIX):
                        _libbpf.detach_program(prog_id, fd, attach_type)
                        found.append(StaleProgram(prog_id, name, ATTACH_TYPE_NAMES[attach_type]))
        except OSError as exc:
            raise AttributionUnavailable(f"cannot list or detach old programs: {exc}") from None
        return tuple(found)

    @staticmethod
    def _release(bpf: Any, attached: list[tuple[Any, int]], fd: int) -> None:
        from bcc import BPF

        for fn, attach_type in attached:
            try:
                BPF.detach_func(fn, fd, attach_type)
            except Exception:
                pass  # the cgroup may be gone: nothing is attached then
        if bpf is not None:
            bpf.cleanup()
        os.close(fd)

    def close(self) -> None:
        """Detach and unload the programs. Idempotent."""
        if self._cgroup_fd < 0:
            return
        fd, self._cgroup_fd = self._cgroup_fd, -1
        self._release(self._bpf, self._functions, fd)

    def __enter__(self) -> Attribution:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries ------------------------------------------------------------------------------

    def lookup(self, peer_ip: str, peer_port: int) -> FlowOwner | None:
        """The owner of the connection whose job-side end is ``peer_ip:peer_port`` (the
        accepted socket's peer), or None if BPF has no record of it."""
        key = self._flows.Key()
        ctypes.memmove(ctypes.addressof(key), _mapped16(peer_ip), 16)
        key.port = peer_port
        try:
            cookie = self._flows[key]
        except KeyError:
            return None
        try:
            o = self._owners[cookie]
        except KeyError:
            self._misses += 1  # the owner record was evicted between connect and lookup
            return None
        return _owner(o)

    def bypass_attempts(self) -> list[FlowOwner]:
        """Who connected with the appliance's mark from outside its cgroup (each refused with
        EPERM) since the last call, oldest first. Reports that did not fit in the ring
        buffer are counted in :meth:`lost_events`."""
        self._bpf.ring_buffer_consume()
        found, self._bypass = self._bypass, []
        return found

    def stats(self) -> dict[str, int]:
        """The programs' counters (summed over CPUs) and ``lookup_misses`` (flows whose owner
        record was gone when looked up)."""
        values = {name: int(sum(self._stats[ctypes.c_int(i)])) for i, name in enumerate(STATS)}
        values["lookup_misses"] = self._misses
        return values

    def lost_events(self) -> int:
        """How many connections could not be attributed for lack of room or a failed map
        update: failed updates, connections that reached the SYN with their owner record
        already evicted, and lookups whose owner record was gone; plus refused bypass
        attempts whose report found the ring buffer full (the refusal itself is never lost).
        """
        s = self.stats()
        return sum(s[name] for name in _LOST) + s["lookup_misses"]

    def entries(self) -> tuple[int, int]:
        """How many (owner, flow) entries the maps hold now."""
        return len(self._owners.items()), len(self._flows.items())
