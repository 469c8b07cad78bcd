"""``appliance run``: the daemon (see :mod:`appliance.daemon`)."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.config import load_config


@click.command("run")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The appliance's YAML config.",
)
@click.option(
    "--capture/--no-capture",
    default=True,
    show_default=True,
    help="Install/reconcile the netfilter capture and load eBPF attribution. --no-capture serves only the targets' explicit listeners.",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write this file (JSON: pid, listeners) once ready.",
)
@click.option(
    "--approvals-socket",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Override the approvals socket path.",
)
@click.option(
    "--grace",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to let in-flight statements finish on stop.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def run_command(
    config_path: Path,
    capture: bool,
    ready_file: Path | None,
    approvals_socket: Path | None,
    grace: float,
    log_level: str,
) -> None:
    """Run the appliance: capture, decide, mask, record, until SIGTERM.

    Logs are JSON lines on stderr. On SIGTERM in-flight statements finish, sessions end
    with 57P01 and a final checkpoint is signed. Capture rules are never removed on stop
    (fail closed): use `appliance capture remove`.
    """
    from appliance import daemon

    daemon.setup_logging(log_level)
    config = load_config(config_path)
    daemon.run(
        config,
        capture=capture,
        ready_file=ready_file,
        approvals_socket=approvals_socket,
        grace=grace,
    )
