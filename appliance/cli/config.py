"""``appliance config``: check a configuration file before deploying it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from appliance.config import Config, load_config
from appliance.config.sections import parse_sections
from appliance.masking import EPHEMERAL, MaskingConfig
from appliance.proxy import registry


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
    sections = parse_sections(cfg)
    policy, masking, transport = sections.policy, sections.masking, sections.approvals
    identity = sections.identity
    summary = {
        "protocols": {
            name: registry.PROTOCOLS[name].description
            for name in sorted({t.protocol for t in cfg.targets.values()})
        },
        "targets": {
            name: {
                "protocol": t.protocol,
                "addresses": [str(a) for a in t.addresses],
                "listen": f"{t.listen[0]}:{t.listen[1]}" if t.listen else None,
                "tls": t.tls.mode,
                "accounts": {
                    a.name: {"user": a.user, "secret": a.secret.describe()} for a in t.accounts
                },
                "startup_parameters": list(t.startup_parameters),
            }
            for name, t in cfg.targets.items()
        },
        "ledger": {
            "dir": str(cfg.ledger.dir),
            "origin": cfg.ledger.origin,
            "key": cfg.ledger.key.describe(),
            "writer": cfg.ledger.writer,
            "durability": cfg.ledger.durability,
            "ship": _ship_summary(cfg),
        },
        "capture": {
            "listen_port": cfg.capture.listen_port,
            "mark": hex(cfg.capture.mark),
            "bpf": cfg.capture.bpf,
        },
        "policy": policy.start_record() if policy is not None else None,
        "masking": {
            "columns": len(masking.columns),
            "response_rules": len(masking.response),
            "key": _masking_key(masking),
        },
        "identity": (
            {
                i.name: {
                    "provider": i.provider,
                    "issuer": i.issuer,
                    "token": i.token.kind,
                    "keys": str(i.keys_file) if i.keys_file else (i.jwks_uri or "discovery"),
                }
                for i in identity.issuers
            }
            if identity is not None
            else None
        ),
        "approvals": (
            {
                "socket": str(transport.socket),
                "webhooks": len(transport.webhooks),
                "hub": str(transport.hub.bucket.url) if transport.hub else None,
            }
            if transport is not None
            else None
        ),
    }
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{file}: OK")
    for name, t in cfg.targets.items():
        click.echo(f"  target {name} ({t.protocol}): {', '.join(str(a) for a in t.addresses)}")
        click.echo(f"    protocol: {registry.PROTOCOLS[t.protocol].description}")
        for acc in t.accounts:
            click.echo(
                f"    account {acc.name}: user {acc.user}, secret from {acc.secret.describe()}"
            )
        if t.startup_parameters:
            click.echo(f"    startup settings also forwarded: {', '.join(t.startup_parameters)}")
    click.echo(
        f"  ledger: {cfg.ledger.dir} (origin {cfg.ledger.origin}, writer {cfg.ledger.writer},"
        f" durability {cfg.ledger.durability})"
    )
    ship = _ship_summary(cfg)
    if ship is not None:
        lock = ship["object_lock"] or "the bucket's default retention"
        click.echo(
            f"    shipped to {ship['to']} (endpoint {ship['endpoint_url'] or 'AWS'}, credentials "
            f"from {ship['credentials']}, lock {lock}); backlog over {ship['backlog_limit']} "
            f"entries: {ship['on_backlog']}"
        )
    if identity is None:
        click.echo("  identity: no token issuer (every CI field is claimed, none verified)")
    else:
        for i in identity.issuers:
            click.echo(
                f"  identity issuer {i.name} ({i.provider}): {i.issuer}, token {i.token.kind}"
            )
    if policy is None:
        click.echo("  policy: none (every statement is allowed and recorded)")
    else:
        click.echo(
            f"  policy: {policy.mode}, {len(policy.rules)} rules, approvers: {', '.join(sorted(policy.approvers)) or '-'}"
        )
        if transport is not None and transport.hub is not None:
            h = transport.hub.bucket
            click.echo(
                f"    approvals also through {h.url} (endpoint {h.endpoint_url or 'AWS'}, polled "
                f"every {transport.hub.poll_interval:g} s)"
            )
        if policy.warning:
            click.echo(f"  WARNING: {policy.warning}")
    click.echo(
        f"  masking: {len(masking.columns)} column rules, response masking rules: {len(masking.response)}"
    )
    if masking.ephemeral_key:
        click.echo(
            "  WARNING: masking key: ephemeral (a new key every run: hash tokens compare only "
            "within one run of one runner)"
        )
    elif masking.key is not None:
        click.echo(
            f"  masking key: {masking.key.describe()} (hash tokens compare across the runs "
            "and runners that share it)"
        )


def _masking_key(masking: MaskingConfig) -> str | None:
    if masking.ephemeral_key:
        return EPHEMERAL
    return masking.key.describe() if masking.key else None


def _ship_summary(cfg: Config) -> dict[str, object] | None:
    ship = cfg.ledger.ship
    if ship is None:
        return None
    b = ship.bucket
    lock = ship.object_lock
    return {
        "to": str(b.url),
        "endpoint_url": b.endpoint_url,
        "region": b.region,
        "ca": str(b.ca) if b.ca else None,
        "credentials": b.credentials.describe() if b.credentials else "the AWS SDK's chain",
        "object_lock": f"{lock.mode} {lock.retain_days} days" if lock else None,
        "backlog_limit": ship.backlog_limit,
        "on_backlog": ship.on_backlog,
    }
