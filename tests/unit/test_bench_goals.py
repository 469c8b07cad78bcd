"""The summary ``make bench`` ends with (tests/bench/goals.py, tests/bench/conftest.py): each
goal says met only when its figure is on the right side of its bound, a figure not measured
is not met, and the table reaches the terminal and the ``BENCH_SUMMARY`` file."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bench import conftest, goals


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    goals.clear()
    yield
    goals.clear()


def test_a_goal_is_met_on_its_side_of_the_bound_only() -> None:
    assert goals.at_least("tps / PgBouncer's", 1.0, 1.0, "x").met
    assert not goals.at_least("tps / PgBouncer's", 0.61, 1.0, "x").met
    assert goals.at_most("added per statement", 44, 100, "us").met
    assert not goals.at_most("added per statement", 108, 100, "us").met
    assert not goals.at_most("no PgBouncer in this run", float("nan"), 2.0, "x").met
    assert not goals.at_least("no PgBouncer in this run", float("nan"), 1.0, "x").met


def test_the_table_has_a_line_per_goal_in_order_and_counts_those_met() -> None:
    goals.at_least("text masking, mixed corpus", 55.1, 50, "MB/s", "CPU time")
    goals.at_most("export events, COPY: the job's time / direct's", 4.47, 2.0, "x", "1024 MB")
    goals.at_most("start to ready", float("nan"), 3.0, "s")
    text = goals.table(goals.figures(), datetime.date(2026, 12, 7))
    lines = text.splitlines()
    assert lines[0] == "issue 19's goals, 2026-12-07: 1 of 3 met in this run"
    assert lines[4:] == [
        "| text masking, mixed corpus | 55.1 MB/s | ≥ 50.0 MB/s | yes | CPU time |",
        "| export events, COPY: the job's time / direct's | 4.47 x | ≤ 2.00 x | no | 1024 MB |",
        "| start to ready | - | ≤ 3.00 s | no |  |",
    ]


class _Terminal:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write_sep(self, sep: str, title: str) -> None:
        self.lines.append(title)

    def write_line(self, line: str) -> None:
        self.lines.append(line)


def test_the_run_ends_with_the_table_and_writes_it_where_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = _Terminal()
    conftest.pytest_terminal_summary(terminal)  # type: ignore[arg-type]
    assert terminal.lines == []  # no benchmark recorded a goal: no table
    out = tmp_path / "summary.md"
    monkeypatch.setenv("BENCH_SUMMARY", str(out))
    goals.at_most("RSS at 200 sessions (daemon + writer)", 189.0, 200, "MB")
    conftest.pytest_terminal_summary(terminal)  # type: ignore[arg-type]
    assert terminal.lines[0] == "issue 19's goals"
    assert (
        "| RSS at 200 sessions (daemon + writer) | 189 MB | ≤ 200 MB | yes |  |"
        in (terminal.lines[1])
    )
    assert out.read_text() == terminal.lines[1] + "\n"
