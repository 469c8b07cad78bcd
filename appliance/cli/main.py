"""Entry point of the ``appliance`` command: registers the command groups and is the one
place that turns an :class:`~appliance.errors.ApplianceError` into a message and exit code.
"""

from __future__ import annotations

import importlib
import sys

import click

from appliance import __version__, _pure
from appliance.errors import ApplianceError

# Each command: (module under appliance.cli, attribute holding the click command or group).
_COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("config", "config_group"),
    "run": ("run", "run_command"),
    "approvals": ("approvals", "approvals"),
    "keys": ("keys", "keys_group"),
    "ledger": ("ledger", "ledger_group"),
    "capture": ("capture", "capture_group"),
    "status": ("status", "status_command"),
    "bucket-policy": ("bucket", "bucket_policy_command"),
    "report": ("report", "report_command"),
}


class _Commands(click.Group):
    """The commands, each imported when it is named. The daemon is ``appliance run``: it
    then loads neither the report's pages and charts (jinja2, matplotlib, numpy, PIL) nor
    the pcap export (dpkt), which were 44 MB of its memory and a quarter of a second of
    its start (issue 19). ``--help`` names them all, and so imports them all."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = _COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module, attr = spec
        command = getattr(importlib.import_module(f"appliance.cli.{module}"), attr)
        assert isinstance(command, click.Command) and command.name == cmd_name
        return command


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, _param, value: _version(ctx, value),
    help="Show the version and which build of the hot path runs (compiled or pure Python), "
    "then exit.",
)
def cli() -> None:
    """Capture, decide, mask and record what CI jobs do to protected targets.

    Every privileged operation a job performs against a protected target is attributed to
    the job, checked against policy, masked, and recorded in a signed append-only ledger.
    """


def _version(ctx: click.Context, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    build, why = _pure.running()
    click.echo(f"appliance, version {__version__} (hot path: {build}{f': {why}' if why else ''})")
    ctx.exit()


def main() -> None:
    """Run the CLI; map appliance errors to their exit codes, never print a traceback.

    With ``standalone_mode=False`` click *returns* the code a command exits with
    (``ctx.exit(1)``) instead of exiting: it is passed on here, or a command that reports
    tampering through ``ctx.exit`` would end with 0 (issue 12).
    """
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ApplianceError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    # A command returns None; click returns an int only for ctx.exit(code).
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
