"""A real ``appliance run`` with MySQL targets (the lab's MariaDB), for lab tests with real
clients: the config, and the environment of a job that uses the appliance's listener.

The appliance is :class:`tests.lab.proxy.Appliance` (start, stop, ledger entries,
verify); only the config differs from PostgreSQL's.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.lab.lab import Lab, MariaServer
from tests.lab.proxy import APPLIANCE, HOST, ORIGIN, Appliance


@dataclass
class MySQLTarget:
    name: str
    port: int  # the appliance's listener on 127.0.0.1
    accounts: Sequence[tuple[str, str]] = (("ci", "app"), ("ed", "app_ed"), ("tls", "app_tls"))
    tls: Mapping[str, Any] = field(default_factory=lambda: {"mode": "prefer"})
    extra: Mapping[str, Any] = field(default_factory=dict)


def config(
    server: MariaServer,
    targets: Sequence[MySQLTarget],
    *,
    ledger: Path,
    key: Path,
    policy: Mapping[str, Any] | None = None,
    masking: Mapping[str, Any] | None = None,
    ledger_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "targets": [
            {
                "name": t.name,
                "protocol": "mysql",
                "addresses": [f"{server.ipv4}:{server.port}"],
                "listen": f"{HOST}:{t.port}",
                "tls": dict(t.tls),
                "connect_timeout": "5s",
                "accounts": [
                    {"name": n, "user": u, "secret": {"file": str(server.password_file(u))}}
                    for n, u in t.accounts
                ],
                **t.extra,
            }
            for t in targets
        ],
        "ledger": {
            "dir": str(ledger),
            "origin": ORIGIN,
            "key": {"file": str(key)},
            "checkpoint_interval": "200ms",
            **(ledger_options or {}),
        },
    }
    if policy is not None:
        doc["policy"] = dict(policy)
    if masking is not None:
        doc["masking"] = dict(masking)
    return doc


@contextlib.contextmanager
def running_appliance(
    lab: Lab,
    server: MariaServer,
    workdir: Path,
    *,
    targets: Sequence[MySQLTarget],
    policy: Mapping[str, Any] | None = None,
    masking: Mapping[str, Any] | None = None,
    ledger_options: Mapping[str, Any] | None = None,
    executable: str = APPLIANCE,
) -> Iterator[Appliance]:
    """Configure, start and (always) stop an appliance with MySQL targets (``executable``:
    this checkout's by default, another build's for benchmarks)."""
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [APPLIANCE, "keys", "generate", "--name", ORIGIN, "--out", str(workdir / "ledger")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    app = Appliance(
        lab=lab,
        dir=workdir,
        config=workdir / "config.yaml",
        ledger=workdir / "ledger.d",
        log=workdir / "appliance.log",
        vkey=workdir / "ledger.vkey",
        ready=workdir / "ready",
        targets={t.name: t.port for t in targets},
        executable=executable,
    )
    doc = config(
        server,
        targets,
        ledger=app.ledger,
        key=workdir / "ledger.key",
        policy=policy,
        masking=masking,
        ledger_options=ledger_options,
    )
    app.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        app.start()
        yield app
    finally:
        app.stop()


def mariadb(port: int, *args: str, user: str = "ci", database: str = "app") -> list[str]:
    """The mariadb CLI as a job: the appliance's listener, no password, no TLS, no defaults."""
    return [
        "mariadb", "--no-defaults", "-h", HOST, "-P", str(port), "-u", user,
        "--skip-ssl", "--connect-timeout=10", database, *args,
    ]  # fmt: skip
