"""The protocols the appliance speaks: one entry each, read by the config, the daemon and
the proxy server.

Where this sits: ``targets[].protocol`` in the config must name an entry here (``config
check`` lists them); the daemon makes each entry's shared state once; the proxy server
builds a session core for every accepted connection from the entry of the flow's target.

A protocol plugs in with one :class:`Protocol` entry (see :mod:`appliance.proxy` for the
contract its core implements). Entries name their modules by string, so reading the
config does not import the proxy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.errors import ConfigError

__all__ = ["PROTOCOLS", "Protocol", "get"]


@dataclass(frozen=True)
class Protocol:
    """One protocol.

    ``core``: ``"module:attribute"`` of the session core class, called as
    ``core(services, shared, target, info)`` and run by :class:`~appliance.proxy.shell.
    Connection`; or, for a protocol whose library owns its connections, ``runner``: a
    class called as ``runner(services, shared, target, info, shell_services)`` with the
    Connection's interface (``async run(sock)``, ``drain()``, ``abort(reason)``, ``done``);
    ``shared``: of a function
    ``shared(random_bytes)`` making what all its sessions share (or None);
    ``target_keys``: the target config keys the protocol reads beyond the common ones
    (``name``, ``protocol``, ``addresses``, ``listen``, ``connect_timeout``, ``accounts``);
    ``options``: ``"module:function"`` called with the target's checked mapping
    (``dict[str, Node]``) that returns the protocol's own settings object, kept as
    ``Target.options`` (raise through ``Node.fail`` for precise errors);
    ``requires_accounts``: a target must name at least one service account;
    ``pcap``: module that registers the protocol's pcap renderer when imported (or None);
    ``prepare``: ``"module:function"`` the daemon calls once before it listens, as
    ``prepare(config, record)`` (``record(type, data)`` appends to the ledger), for work
    on the host (the http protocol's interception CA and trust; SSH's CA and its line in
    the runner's ``ssh_known_hosts``); what it returns is the protocol's shared state
    instead of ``shared``'s;
    ``untrust``: ``"module:function"`` that ``appliance capture remove`` calls as
    ``untrust(config or None)`` to take away what ``prepare`` left on the host for the
    runner's clients, returning what it removed.
    """

    name: str
    description: str
    default_port: int
    core: str | None = None
    runner: str | None = None
    shared: str | None = None
    target_keys: tuple[str, ...] = ()
    options: str | None = None
    requires_accounts: bool = True
    pcap: str | None = None
    prepare: str | None = None
    untrust: str | None = None

    def load(self, ref: str) -> Any:
        module, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module), attr)

    def session_factory(self) -> Callable[..., Any]:
        """What the proxy server calls for each connection (see the class docstring)."""
        ref = self.core or self.runner
        if ref is None:
            raise ValueError(f"protocol {self.name!r} has neither a core nor a runner")
        factory: Callable[..., Any] = self.load(ref)
        return factory

    def make_shared(self, random_bytes: Callable[[int], bytes]) -> Any:
        return self.load(self.shared)(random_bytes) if self.shared is not None else None


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            name="postgres",
            description="PostgreSQL wire protocol 3.0/3.2 (psql, libpq, JDBC, psycopg, asyncpg...)",
            default_port=5432,
            core="appliance.proxy.pg.core:PgSession",
            shared="appliance.proxy.pg.core:shared",
            target_keys=("tls", "client_tls", "startup_parameters"),
            pcap="appliance.proxy.pg.pcap",
        ),
        Protocol(
            name="http",
            description="HTTP/1.1 and HTTP/2 over TLS (REST APIs, S3 with SigV4, the Kubernetes API)",
            default_port=443,
            core="appliance.proxy.http.core:HttpSession",
            prepare="appliance.proxy.http.setup:prepare",
            target_keys=("tls", "names", "kubernetes", "auth", "record_body", "plaintext"),
            options="appliance.proxy.http.options:parse_options",
            requires_accounts=False,
            pcap="appliance.proxy.http.exports",
        ),
        Protocol(
            name="mysql",
            description="MySQL and MariaDB client/server protocol (mariadb, mysql, PyMySQL, "
            "mysqlclient, mysql-connector...)",
            default_port=3306,
            core="appliance.proxy.mysql.core:MySQLSession",
            shared="appliance.proxy.mysql.core:shared",
            target_keys=("tls", "client_tls", "local_infile", "server_public_key"),
            options="appliance.proxy.mysql.core:options",
            pcap="appliance.proxy.mysql.pcap",
        ),
        Protocol(
            name="ssh",
            description="SSH 2 (ssh, scp, sftp, rsync, git, Ansible): exec, shell, "
            "subsystems, forwards; keys the job never holds",
            default_port=22,
            runner="appliance.proxy.ssh.runner:SshRunner",
            shared="appliance.proxy.ssh.keys:shared",
            target_keys=(
                "known_hosts",
                "login_timeout",
                "max_channels",
                "max_recording",
                "max_transfer_content",
            ),
            options="appliance.proxy.ssh.options:parse_options",
            prepare="appliance.proxy.ssh.known_hosts:prepare",
            untrust="appliance.proxy.ssh.known_hosts:untrust",
        ),
    )
}


def get(name: str) -> Protocol:
    """The entry for ``name``; raises ConfigError listing the protocols known."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ConfigError(
            f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}"
        ) from None
