"""The ``appliance`` command's groups, each imported when it is named (``appliance/cli/
main.py``): every name resolves to its command, ``--help`` lists them all, and the daemon
(``appliance run``) does not load what only the other commands need (issue 19: the
report's pages and charts and the pcap export were 44 MB of the daemon's memory)."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from appliance.cli.main import cli

# What only `appliance report` and `appliance ledger export --pcap` need.
_NOT_IN_THE_DAEMON = ("matplotlib", "numpy", "PIL", "jinja2", "dpkt")


def test_every_command_resolves_to_the_command_of_its_name() -> None:
    ctx = click.Context(cli)
    names = cli.list_commands(ctx)
    assert {"run", "ledger", "report", "bucket-policy", "approvals"} <= set(names)
    for name in names:
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
    assert cli.get_command(ctx, "no-such-command") is None


def test_help_lists_every_command_and_an_unknown_one_is_refused() -> None:
    runner = CliRunner()
    shown = runner.invoke(cli, ["--help"])
    assert shown.exit_code == 0
    listed = shown.output.split("Commands:")[1]
    for name in cli.list_commands(click.Context(cli)):
        assert f"\n  {name} " in listed
    refused = runner.invoke(cli, ["nonsense"])
    assert refused.exit_code == 2 and "No such command 'nonsense'" in refused.output


def test_the_daemon_loads_neither_the_report_nor_the_pcap_export() -> None:
    # What `appliance run` imports before it serves: the CLI, its run command, the daemon.
    code = (
        "import sys, click\n"
        "from appliance.cli.main import cli\n"
        "assert cli.get_command(click.Context(cli), 'run') is not None\n"
        "from appliance import daemon\n"
        "print(' '.join(sorted(m for m in sys.modules if '.' not in m)))\n"
    )
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, check=True)
    loaded = set(done.stdout.decode().split())
    assert "appliance" in loaded and "click" in loaded
    assert not loaded & set(_NOT_IN_THE_DAEMON)


def test_the_daemon_without_issuers_loads_no_token_library() -> None:
    # The identity section's parser and the session records are the daemon's; what checks
    # a token (joserfc, and through it cryptography) comes only with a configured issuer.
    code = (
        "import sys\n"
        "from appliance import daemon\n"
        "from appliance.identity import parse_identity\n"
        "assert parse_identity(None) is None\n"
        "print(' '.join(sorted(m for m in sys.modules if '.' not in m)))\n"
        "from appliance.identity import Verifier, verify\n"
        "print(' '.join(sorted(m for m in sys.modules if '.' not in m)))\n"
    )
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, check=True)
    before, after = (set(line.split()) for line in done.stdout.decode().splitlines())
    assert not before & {"joserfc", "cryptography"}
    assert {"joserfc", "cryptography"} <= after


def test_version_says_which_build_of_the_hot_path_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance import __version__, _pure

    out = CliRunner().invoke(cli, ["--version"])
    assert out.exit_code == 0
    build, why = _pure.running()
    assert out.output == (
        f"appliance, version {__version__} (hot path: {build}{f': {why}' if why else ''})\n"
    )
    monkeypatch.setattr(_pure, "running", lambda: ("pure", "APPLIANCE_PURE is set"))
    out = CliRunner().invoke(cli, ["--version"])
    assert (
        out.output == f"appliance, version {__version__} (hot path: pure: APPLIANCE_PURE is set)\n"
    )
