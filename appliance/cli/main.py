"""Entry point of the ``appliance`` command: registers the command groups and is the one
place that turns an :class:`~appliance.errors.ApplianceError` into a message and exit code.
"""

from __future__ import annotations

import importlib
import sys

import click

from appliance import __version__
from appliance.errors import ApplianceError

# Each entry: (module under appliance.cli, attribute holding the click command or group).
_COMMANDS: list[tuple[str, str]] = [
    ("config", "config_group"),
    ("run", "run_command"),
    ("approvals", "approvals"),
    ("keys", "keys_group"),
    ("ledger", "ledger_group"),
    ("capture", "capture_group"),
    ("status", "status_command"),
    ("bucket", "bucket_policy_command"),
    ("report", "report_command"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="appliance")
def cli() -> None:
    """Capture, decide, mask and record what CI jobs do to protected targets.

    Every privileged operation a job performs against a protected target is attributed to
    the job, checked against policy, masked, and recorded in a signed append-only ledger.
    """


for _module, _attr in _COMMANDS:
    cli.add_command(getattr(importlib.import_module(f"appliance.cli.{_module}"), _attr))


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
