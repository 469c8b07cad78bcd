"""``appliance status``: the state of a runner's ledger and of its shipping to the bucket.

Reads what the daemon leaves on disk (the ledger's latest checkpoint and ``ship.json``,
:mod:`appliance.ledger.fleet.runner`); needs no daemon to answer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from appliance.config import load_config
from appliance.ledger.fleet.runner import read_status, status_summary
from appliance.ledger.store import latest_checkpoint


@click.command("status")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The appliance's YAML config.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def status_command(config_path: Path, fmt: str) -> None:
    """The ledger's latest signed checkpoint and, with ledger.ship, what the bucket holds:
    state, backlog (entries signed here but not yet in the bucket), lag, last error, and
    whether new sessions are refused for the backlog."""
    cfg = load_config(config_path)
    directory = cfg.ledger.dir
    cp = latest_checkpoint(directory) if (directory / "checkpoint").exists() else None
    ship = read_status(directory) if cfg.ledger.ship is not None else None
    now = time.time()
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "ledger": {
                        "dir": str(directory),
                        "origin": cp.origin if cp else cfg.ledger.origin,
                        "signed_size": cp.size if cp else 0,
                    },
                    "ship": status_summary(ship, now) if ship is not None else None,
                },
                sort_keys=True,
            )
        )
        return
    click.echo(
        f"ledger {directory}: origin {cp.origin if cp else cfg.ledger.origin}, "
        f"signed size {cp.size if cp else 0}"
    )
    if cfg.ledger.ship is None:
        click.echo("shipping: not configured (ledger.ship)")
        return
    if ship is None:
        click.echo(
            f"shipping to {cfg.ledger.ship.bucket.url}: no status yet (is the daemon running?)"
        )
        return
    lag = ship.lag(now)
    click.echo(f"shipping to {ship.to}: {ship.state}")
    click.echo(
        f"  bucket holds {ship.shipped_checkpoints} checkpoints up to size {ship.shipped_size}; "
        f"local {ship.local_checkpoints} up to size {ship.local_size}"
    )
    behind = f", behind for {lag:.0f} s" if lag is not None else ""
    click.echo(
        f"  backlog {ship.backlog} entries (limit {ship.backlog_limit}, "
        f"on_backlog {ship.on_backlog}){behind}"
    )
    if ship.refusing:
        click.echo("  REFUSING new protected sessions until the backlog drains")
    if ship.last_error:
        click.echo(f"  last error: {ship.last_error}")
    click.echo(f"  updated {now - ship.updated:.0f} s ago")
