"""The appliance's configuration: one YAML file, checked with ``appliance config check``.

Top-level sections: ``targets`` (what is protected and how to reach it), ``ledger`` (where
and how the record is kept), ``capture`` (transparent redirection and attribution),
``identity`` (trusted CI token issuers), ``policy`` and ``masking``. Errors name the key, what was expected and the line.
Secrets never appear in the file: an account's secret is a reference to a file or to a
systemd credential (``$CREDENTIALS_DIRECTORY``), see :mod:`appliance.credentials`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from appliance.config._node import Node, load_document
from appliance.errors import ConfigError
from appliance.proxy import registry

if TYPE_CHECKING:  # appliance.bucket imports this module (SecretRef): no cycle at run time
    from appliance.bucket import BucketSettings, ObjectLock

__all__ = [
    "BUCKET_KEYS",
    "Account",
    "Address",
    "CaptureConfig",
    "ClientTLS",
    "Config",
    "ConfigError",
    "LedgerConfig",
    "Node",
    "ProxyConfig",
    "SecretRef",
    "ShipConfig",
    "Target",
    "UpstreamTLS",
    "format_endpoint",
    "load_config",
    "parse_bucket_settings",
    "parse_config",
]

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"


@dataclass(frozen=True)
class SecretRef:
    """Where a secret comes from: a file path, or the name of a systemd credential."""

    file: Path | None = None
    credential: str | None = None

    def describe(self) -> str:
        return f"file {self.file}" if self.file else f"credential {self.credential!r}"


def format_endpoint(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (``[fd00::5]:5432``): how the config,
    the logs and the ledger write an endpoint."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Address:
    """One protected address: an IP, a network (CIDR) or a host name, with a port."""

    kind: str  # "ip" | "cidr" | "host"
    value: str  # normalised IP, network or host name
    port: int

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        if self.kind == "host":
            return None
        return ipaddress.ip_network(self.value, strict=False)

    def __str__(self) -> str:
        return format_endpoint(self.value, self.port)


@dataclass(frozen=True)
class UpstreamTLS:
    """TLS from the appliance to the target. ``mode`` follows libpq's sslmode names."""

    mode: str = "prefer"  # disable | prefer | require | verify-ca | verify-full
    ca: Path | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class ClientTLS:
    """TLS between the job and the appliance, terminated with the appliance's own CA."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Account:
    """A service account: the upstream identity the appliance authenticates as."""

    name: str
    user: str
    secret: SecretRef
    database: str | None = None


@dataclass(frozen=True)
class Target:
    name: str
    protocol: str
    addresses: tuple[Address, ...]
    accounts: tuple[Account, ...]
    listen: tuple[str, int] | None = None
    tls: UpstreamTLS = field(default_factory=UpstreamTLS)
    client_tls: ClientTLS | None = None
    connect_timeout: float = 10.0
    # Startup settings forwarded from the job beyond the safe defaults
    # (appliance.proxy.pg.parameters.SAFE), e.g. ("work_mem",).
    startup_parameters: tuple[str, ...] = ()
    # The protocol's own settings (appliance.proxy.registry: Protocol.options), or None.
    options: Any = None

    def account_for(self, claimed_user: str | None) -> Account:
        """The account whose name equals the user the job claimed, else the first one."""
        for account in self.accounts:
            if account.name == claimed_user:
                return account
        return self.accounts[0]


@dataclass(frozen=True)
class ShipConfig:
    """``ledger.ship``: where the ledger is shipped, with what retention, and what a backlog
    (entries signed locally but not yet in the bucket) beyond ``backlog_limit`` means:
    ``serve`` (keep serving, report it) or ``refuse`` (refuse new protected sessions until
    it drains: fail closed)."""

    bucket: BucketSettings
    object_lock: ObjectLock | None = None
    backlog_limit: int = 100_000  # entries
    on_backlog: str = "serve"


_BACKLOG_LIMIT = ShipConfig.backlog_limit


@dataclass(frozen=True)
class LedgerConfig:
    dir: Path = Path("/var/lib/appliance/ledger")
    origin: str = "appliance/" + socket.gethostname()
    key: SecretRef = SecretRef(credential="ledger-signing-key")
    checkpoint_interval: float = 1.0
    checkpoint_entries: int = 10000
    record_rows: bool = True
    max_result_bytes: int = 16 * 1024 * 1024
    # "process": the writer runs in a child process (no GIL shared with the proxy's event
    # loop); "thread": in a thread of the daemon.
    writer: str = "process"
    # "write-ahead": a statement that may change a target (every class but reads, settings,
    # transaction control) is on disk before it is sent, or refused (PostgreSQL, inside a
    # transaction block: before the statement that may end the block); "checkpoint": entries
    # become durable at the next checkpoint (faster, and a crash can lose up to one
    # interval of acknowledged changes).
    durability: str = "write-ahead"
    ship: ShipConfig | None = None


@dataclass(frozen=True)
class CaptureConfig:
    listen_port: int = 15001
    mark: int = 0x4150
    bridges: tuple[str, ...] = ("docker0", "br-*")
    cgroup: Path | None = None  # where eBPF attribution attaches; None: the cgroup v2 root
    bpf: bool = True
    reconcile_interval: float = 2.0
    # The appliance's own cgroup (a path in the cgroup v2 hierarchy): marked traffic to a
    # protected target is let out only from it (issue 13). systemd gives the unit this one.
    appliance_cgroup: str = "/system.slice/appliance.service"
    # The conntrack zone of the appliance's own upstream flows: kept apart from the jobs'
    # redirected flows, so that neither can be taken for the other (issue 13).
    conntrack_zone: int = 0x4150
    # Where the CI jobs run (a cgroup directory; a glob may match several): their
    # processes are checked for root, dangerous capabilities and access to the appliance's
    # secrets (appliance.capture._privileges). None: ``cgroup`` when it is set.
    jobs_cgroup: str | None = None
    # Where the runner's SSH clients find the appliance's CA (appliance.proxy.ssh).
    ssh_known_hosts: Path = Path("/etc/ssh/ssh_known_hosts")


@dataclass(frozen=True)
class ProxyConfig:
    """``proxy``: how the proxy runs. ``workers``: how many processes accept and serve
    connections on the same listeners, all feeding the one ledger writer process (issue 19;
    :mod:`appliance.proxy.workers`); 1 serves from the daemon's own process, as before.
    ``auto`` is the number of CPUs the daemon may run on."""

    workers: int = 1


# What proxy.workers > 1 does not do yet, and why (config check says so, by name).
WORKERS_UNSUPPORTED_PROTOCOLS = ("http", "ssh")


@dataclass(frozen=True)
class Config:
    source: str
    targets: dict[str, Target]
    ledger: LedgerConfig
    capture: CaptureConfig
    proxy: ProxyConfig = ProxyConfig()
    # Parsed by appliance.policy / appliance.masking / appliance.identity; kept as nodes
    # until they are loaded.
    policy: Node | None = None
    masking: Node | None = None
    identity: Node | None = None
    # The per-boot CA of HTTPS targets (appliance.proxy.http.options.parse_interception).
    interception: Node | None = None


def load_config(path: str | Path) -> Config:
    """Read and check the config file at ``path``.

    Raises ConfigError naming the key and line of the first problem found.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from None
    return parse_config(text, source=str(p))


def parse_config(text: str, *, source: str = "<config>") -> Config:
    """Parse config text; see :func:`load_config`."""
    root = load_document(text, source)
    top = root.keys(
        required=("targets",),
        optional=(
            "ledger",
            "capture",
            "identity",
            "policy",
            "masking",
            "interception",
            "proxy",
        ),
    )
    targets = _parse_targets(top["targets"])
    ledger = _parse_ledger(top["ledger"]) if "ledger" in top else LedgerConfig()
    capture = _parse_capture(top["capture"]) if "capture" in top else CaptureConfig()
    proxy = _parse_proxy(top["proxy"], targets, ledger) if "proxy" in top else ProxyConfig()
    return Config(
        source=source,
        targets=targets,
        ledger=ledger,
        capture=capture,
        proxy=proxy,
        policy=top.get("policy"),
        masking=top.get("masking"),
        identity=top.get("identity"),
        interception=top.get("interception"),
    )


# -- sections -----------------------------------------------------------------------------


def _parse_targets(node: Node) -> dict[str, Target]:
    items = node.items()
    if not items:
        node.fail("at least one target is required")
    targets: dict[str, Target] = {}
    listens: dict[tuple[str, int], str] = {}
    for item in items:
        target = _parse_target(item)
        if target.name in targets:
            item.mapping()["name"].fail(f"duplicate target name {target.name!r}")
        if target.listen is not None:
            if target.listen in listens:
                item.mapping()["listen"].fail(
                    f"listener already used by target {listens[target.listen]!r}"
                )
            listens[target.listen] = target.name
        targets[target.name] = target
    return targets


def _parse_target(node: Node) -> Target:
    # The protocol says which keys a target may have beyond the common ones.
    raw = node.mapping()
    if "protocol" not in raw:
        node.fail("missing required key 'protocol'")
    protocol = raw["protocol"].string(choices=tuple(registry.PROTOCOLS))
    spec = registry.PROTOCOLS[protocol]
    m = node.keys(
        required=(
            "name",
            "protocol",
            "addresses",
            *(("accounts",) if spec.requires_accounts else ()),
        ),
        optional=("listen", "connect_timeout", "accounts", *spec.target_keys),
    )
    name = m["name"].string(pattern=_NAME)
    addresses = tuple(parse_address(a) for a in m["addresses"].items_or_one())
    if not addresses:
        m["addresses"].fail("at least one address is required")
    accounts: tuple[Account, ...] = ()
    if "accounts" in m:
        accounts_node = m["accounts"]
        accounts = tuple(_parse_account(a) for a in accounts_node.items())
        if not accounts and spec.requires_accounts:
            accounts_node.fail("at least one service account is required")
        seen: set[str] = set()
        for a_node, account in zip(accounts_node.items(), accounts, strict=True):
            if account.name in seen:
                a_node.fail(f"duplicate account name {account.name!r}")
            seen.add(account.name)
    listen = parse_listen(m["listen"]) if "listen" in m else None
    tls = _parse_upstream_tls(m["tls"]) if "tls" in m else UpstreamTLS()
    client_tls = _parse_client_tls(m["client_tls"]) if "client_tls" in m else None
    timeout = m["connect_timeout"].duration() if "connect_timeout" in m else 10.0
    startup_parameters: tuple[str, ...] = ()
    if "startup_parameters" in m:
        names = []
        for item in m["startup_parameters"].items():
            setting = item.string(pattern=r"[A-Za-z_][A-Za-z0-9_.]*")
            if setting.lower() in ("replication", "user", "database", "options"):
                item.fail(f"{setting!r} is not a setting the appliance can forward")
            names.append(setting)
        startup_parameters = tuple(names)
    options = spec.load(spec.options)(m) if spec.options is not None else None
    return Target(
        name,
        protocol,
        addresses,
        accounts,
        listen,
        tls,
        client_tls,
        timeout,
        startup_parameters,
        options,
    )


def parse_address(node: Node) -> Address:
    """``10.0.0.5:5432``, ``10.0.0.0/24:5432``, ``[fd00::5]:5432``, ``db.example:5432``."""
    text = node.string()
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not m:
        node.fail(f"expected host:port, ip:port, cidr:port or [ipv6]:port, got {text!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        node.fail(f"port out of range in {text!r}")
    if "/" in host:
        try:
            net = ipaddress.ip_network(host, strict=False)
        except ValueError:
            node.fail(f"invalid network {host!r}")
        return Address("cidr", str(net), port)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(
            r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*",
            host,
        ):
            node.fail(f"invalid host name {host!r}")
        return Address("host", host.lower(), port)
    return Address("ip", str(ip), port)


def parse_listen(node: Node) -> tuple[str, int]:
    address = parse_address(node)
    if address.kind != "ip":
        node.fail("a listener needs an IP address and a port")
    return address.value, address.port


def parse_secret(node: Node) -> SecretRef:
    """A secret reference: ``{file: PATH}`` or ``{credential: NAME}``; never the secret."""
    if not node.is_mapping:
        node.fail(
            "secrets are never written in the config: use {file: /path} or "
            "{credential: NAME} (a systemd credential under $CREDENTIALS_DIRECTORY)"
        )
    m = node.keys(optional=("file", "credential"))
    if len(m) != 1:
        node.fail("give exactly one of 'file' or 'credential'")
    if "file" in m:
        return SecretRef(file=Path(m["file"].string()))
    return SecretRef(credential=m["credential"].string(pattern=_NAME))


def _parse_account(node: Node) -> Account:
    m = node.keys(required=("name", "user", "secret"), optional=("database",))
    return Account(
        name=m["name"].string(pattern=_NAME),
        user=m["user"].string(),
        secret=parse_secret(m["secret"]),
        database=m["database"].string() if "database" in m else None,
    )


def _parse_upstream_tls(node: Node) -> UpstreamTLS:
    m = node.keys(optional=("mode", "ca", "server_name"))
    mode = (
        m["mode"].string(choices=("disable", "prefer", "require", "verify-ca", "verify-full"))
        if "mode" in m
        else "prefer"
    )
    ca = Path(m["ca"].string()) if "ca" in m else None
    if mode in ("verify-ca", "verify-full") and ca is None:
        node.fail(f"tls mode {mode} needs 'ca' (the CA certificate file that signs the server)")
    return UpstreamTLS(mode, ca, m["server_name"].string() if "server_name" in m else None)


def _parse_client_tls(node: Node) -> ClientTLS:
    m = node.keys(required=("cert", "key"))
    return ClientTLS(Path(m["cert"].string()), Path(m["key"].string()))


def _parse_ledger(node: Node) -> LedgerConfig:
    m = node.keys(
        optional=(
            "dir",
            "origin",
            "key",
            "checkpoint_interval",
            "checkpoint_entries",
            "record_rows",
            "max_result_bytes",
            "writer",
            "durability",
            "ship",
        )
    )
    d = LedgerConfig()
    return LedgerConfig(
        dir=Path(m["dir"].string()) if "dir" in m else d.dir,
        origin=_parse_origin(m["origin"]) if "origin" in m else d.origin,
        key=parse_secret(m["key"]) if "key" in m else d.key,
        checkpoint_interval=m["checkpoint_interval"].duration()
        if "checkpoint_interval" in m
        else d.checkpoint_interval,
        checkpoint_entries=m["checkpoint_entries"].integer(minimum=1)
        if "checkpoint_entries" in m
        else d.checkpoint_entries,
        record_rows=m["record_rows"].boolean() if "record_rows" in m else d.record_rows,
        max_result_bytes=m["max_result_bytes"].size()
        if "max_result_bytes" in m
        else d.max_result_bytes,
        writer=m["writer"].string(choices=("process", "thread")) if "writer" in m else d.writer,
        durability=m["durability"].string(choices=("write-ahead", "checkpoint"))
        if "durability" in m
        else d.durability,
        ship=_parse_ship(m["ship"]) if "ship" in m else None,
    )


def _parse_proxy(node: Node, targets: dict[str, Target], ledger: LedgerConfig) -> ProxyConfig:
    """``proxy: {workers: N | auto}``; several workers are refused, naming the reason, where
    they are not supported yet."""
    m = node.keys(optional=("workers",))
    workers = 1
    if "workers" in m:
        w = m["workers"]
        if isinstance(w.raw, yaml.ScalarNode) and w.raw.value == "auto":
            workers = max(1, len(os.sched_getaffinity(0)))
        else:
            workers = w.integer(minimum=1, maximum=64)
    if workers > 1:
        where = m["workers"]
        if ledger.writer != "process":
            where.fail(
                "proxy.workers > 1 needs ledger.writer: process (the workers share the one "
                "writer process)"
            )
        for t in targets.values():
            if t.protocol in WORKERS_UNSUPPORTED_PROTOCOLS:
                where.fail(
                    f"proxy.workers > 1 does not serve {t.protocol} targets yet (target "
                    f"{t.name!r}): its per-run CA and host keys are made by one process and "
                    "not shared with workers; use proxy.workers: 1"
                )
        if ledger.ship is not None and ledger.ship.on_backlog == "refuse":
            where.fail(
                "proxy.workers > 1 does not support ledger.ship.on_backlog: refuse yet (the "
                "shipping backlog is known to the daemon's process only)"
            )
    return ProxyConfig(workers=workers)


def _parse_origin(node: Node) -> str:
    """The log's origin; ``{hostname}`` and ``{boot_id}`` are replaced, so that one image
    gives each runner (or each boot) a log of its own in the fleet's bucket."""
    text = node.string(pattern=r"[^\s+][^\s]*")
    for name in re.findall(r"\{([^{}]*)\}", text):
        if name not in ("hostname", "boot_id"):
            node.fail(
                f"unknown placeholder {{{name}}} in the origin (use {{hostname}} or {{boot_id}})"
            )
    if "{hostname}" in text:
        text = text.replace("{hostname}", socket.gethostname())
    if "{boot_id}" in text:
        try:
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError as exc:
            node.fail(f"cannot read the boot id for {{boot_id}}: {exc}")
        text = text.replace("{boot_id}", boot)
    return text


def parse_bucket_settings(m: dict[str, Node], url_key: str) -> BucketSettings:
    """The bucket connection keys of a section: ``url_key`` (``s3://BUCKET[/PREFIX]``),
    ``endpoint_url``, ``region``, ``ca``, ``credentials`` (a secret reference to an AWS
    shared-credentials file; without it the AWS SDK's own chain, e.g. the instance role)."""
    from appliance.bucket import BucketSettings, BucketURLError, check_endpoint_url
    from appliance.bucket import parse_bucket_url as parse_url

    try:
        url = parse_url(m[url_key].string())
    except BucketURLError as exc:
        m[url_key].fail(str(exc))
    endpoint = None
    if "endpoint_url" in m:
        try:
            endpoint = check_endpoint_url(m["endpoint_url"].string())
        except BucketURLError as exc:
            m["endpoint_url"].fail(str(exc))
    return BucketSettings(
        url=url,
        endpoint_url=endpoint,
        region=m["region"].string(pattern=r"[a-z0-9-]{2,32}") if "region" in m else "us-east-1",
        ca=Path(m["ca"].string()) if "ca" in m else None,
        credentials=parse_secret(m["credentials"]) if "credentials" in m else None,
    )


BUCKET_KEYS = ("endpoint_url", "region", "ca", "credentials")


def _parse_ship(node: Node) -> ShipConfig:
    from appliance.bucket import ObjectLock

    m = node.keys(
        required=("to",), optional=(*BUCKET_KEYS, "object_lock", "backlog_limit", "on_backlog")
    )
    lock = None
    if "object_lock" in m:
        lm = m["object_lock"].keys(required=("mode", "retain_days"))
        lock = ObjectLock(
            lm["mode"].string(choices=("COMPLIANCE", "GOVERNANCE")),
            lm["retain_days"].integer(minimum=1, maximum=36500),
        )
    return ShipConfig(
        bucket=parse_bucket_settings(m, "to"),
        object_lock=lock,
        backlog_limit=m["backlog_limit"].integer(minimum=1)
        if "backlog_limit" in m
        else _BACKLOG_LIMIT,
        on_backlog=m["on_backlog"].string(choices=("serve", "refuse"))
        if "on_backlog" in m
        else "serve",
    )


def _parse_capture(node: Node) -> CaptureConfig:
    m = node.keys(
        optional=(
            "listen_port",
            "mark",
            "bridges",
            "cgroup",
            "bpf",
            "reconcile_interval",
            "appliance_cgroup",
            "conntrack_zone",
            "jobs_cgroup",
            "ssh_known_hosts",
        )
    )
    d = CaptureConfig()
    return CaptureConfig(
        listen_port=m["listen_port"].integer(minimum=1, maximum=65535)
        if "listen_port" in m
        else d.listen_port,
        mark=m["mark"].integer(minimum=1, maximum=0xFFFFFFFF) if "mark" in m else d.mark,
        bridges=tuple(b.string() for b in m["bridges"].items()) if "bridges" in m else d.bridges,
        cgroup=Path(m["cgroup"].string()) if "cgroup" in m else d.cgroup,
        bpf=m["bpf"].boolean() if "bpf" in m else d.bpf,
        reconcile_interval=m["reconcile_interval"].duration()
        if "reconcile_interval" in m
        else d.reconcile_interval,
        appliance_cgroup=_appliance_cgroup(m["appliance_cgroup"])
        if "appliance_cgroup" in m
        else d.appliance_cgroup,
        conntrack_zone=m["conntrack_zone"].integer(minimum=1, maximum=0xFFFF)
        if "conntrack_zone" in m
        else d.conntrack_zone,
        jobs_cgroup=m["jobs_cgroup"].string(pattern=r"/.*") if "jobs_cgroup" in m else None,
        ssh_known_hosts=Path(m["ssh_known_hosts"].string())
        if "ssh_known_hosts" in m
        else d.ssh_known_hosts,
    )


def _appliance_cgroup(node: Node) -> str:
    """A cgroup below the root, as /proc/self/cgroup and iptables' cgroup match write it.
    Not the root itself: it holds every process, so the mark alone would open the door."""
    value = node.string()
    if value.startswith("/sys/fs/cgroup"):
        node.fail(
            f"write the cgroup's path in the hierarchy, as /proc/self/cgroup shows it "
            f"(/system.slice/appliance.service), not its directory; got {value!r}"
        )
    if not re.fullmatch(r"(/[A-Za-z0-9_.@:+-]+)+", value):
        node.fail(
            f"expected a cgroup path below the root, like /system.slice/appliance.service; "
            f"got {value!r}"
        )
    return value
