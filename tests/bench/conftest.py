"""The benchmarks' one summary: issue 19's goals as this run measured them (:mod:`goals`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.bench import goals


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    figures = goals.figures()
    if not figures:
        return
    text = goals.table(figures)
    terminalreporter.write_sep("=", "issue 19's goals")
    terminalreporter.write_line(text)
    where = os.environ.get("BENCH_SUMMARY")
    if where:
        Path(where).write_text(text + "\n")
