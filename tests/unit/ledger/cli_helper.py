"""Run the real CLI entry point in-process and return (exit code, stdout + stderr)."""

from __future__ import annotations

import sys

import pytest

from appliance.cli.main import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code, out, err = run_cli_split(capsys, *args)
    return code, out + err


def run_cli_split(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Like :func:`run_cli`, with stdout and stderr apart (JSON output is on stdout)."""
    capsys.readouterr()
    old = sys.argv
    sys.argv = ["appliance", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err
