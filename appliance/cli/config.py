"""``appliance config``: check a configuration file before deploying it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from appliance.config import load_config


@click.group("config")
def config_group() -> None:
    """Check configuration files."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def check(file: Path, fmt: str) -> None:
    """Check FILE and summarise it; exit 2 with the key, expectation and line of the first error.

    Secrets are never printed: only where they come from.
    """
    cfg = load_config(file)
    summary = {
        "targets": {
            name: {
                "protocol": t.protocol,
                "addresses": [str(a) for a in t.addresses],
                "listen": f"{t.listen[0]}:{t.listen[1]}" if t.listen else None,
                "tls": t.tls.mode,
                "accounts": {
                    a.name: {"user": a.user, "secret": a.secret.describe()} for a in t.accounts
                },
            }
            for name, t in cfg.targets.items()
        },
        "ledger": {
            "dir": str(cfg.ledger.dir),
            "origin": cfg.ledger.origin,
            "key": cfg.ledger.key.describe(),
        },
        "capture": {
            "listen_port": cfg.capture.listen_port,
            "mark": hex(cfg.capture.mark),
            "bpf": cfg.capture.bpf,
        },
    }
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{file}: OK")
    for name, t in cfg.targets.items():
        click.echo(f"  target {name} ({t.protocol}): {', '.join(str(a) for a in t.addresses)}")
        for acc in t.accounts:
            click.echo(f"    account {acc.name}: user {acc.user}, secret from {acc.secret.describe()}")
    click.echo(f"  ledger: {cfg.ledger.dir} (origin {cfg.ledger.origin})")
