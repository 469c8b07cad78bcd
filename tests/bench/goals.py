"""Issue 19's goals as one benchmark run measured them.

Each benchmark records its headline figures here (:func:`at_least`, :func:`at_most`) as it
prints its own tables; ``tests/bench/conftest.py`` prints them as one table at the end of
the run (``make bench``), and writes it to the file ``BENCH_SUMMARY`` names, if set. A run
of part of the benchmarks shows the goals it measured: nothing is carried over from an
earlier run, so every line of the table comes from the run above it.

The figures are what the issue asks for (README, "Throughput"): pgbench through the appliance
against PgBouncer at 8 clients, the latency added per statement and the worst transaction at
one client, CPU per transaction against PgBouncer's, RSS at 200 sessions and the start to
ready; text masking in MB/s on the mixed corpus; an export's time against direct.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass

__all__ = ["Figure", "at_least", "at_most", "clear", "figures", "table"]


@dataclass(frozen=True)
class Figure:
    """One goal and what this run measured for it."""

    goal: str  # what is measured, e.g. "select-only -M simple: tps / PgBouncer's"
    measured: float
    unit: str  # printed after the figures: "x", "us", "MB/s", "MB", "s"
    bound: float
    at_least: bool  # the goal is measured >= bound (else <=)
    note: str = ""  # how it was measured, where that differs from the goal (a smaller table)

    @property
    def met(self) -> bool:
        """Whether the figure meets the goal (a figure not measured, NaN, does not)."""
        if math.isnan(self.measured):
            return False
        return self.measured >= self.bound if self.at_least else self.measured <= self.bound


_FIGURES: list[Figure] = []


def at_least(goal: str, measured: float, bound: float, unit: str, note: str = "") -> Figure:
    """Record a goal met when ``measured >= bound``."""
    figure = Figure(goal, measured, unit, bound, True, note)
    _FIGURES.append(figure)
    return figure


def at_most(goal: str, measured: float, bound: float, unit: str, note: str = "") -> Figure:
    """Record a goal met when ``measured <= bound``."""
    figure = Figure(goal, measured, unit, bound, False, note)
    _FIGURES.append(figure)
    return figure


def figures() -> list[Figure]:
    """The figures recorded in this process, in the order they were."""
    return list(_FIGURES)


def clear() -> None:
    _FIGURES.clear()


def _number(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    return f"{value:,.{digits}f} {unit}".strip()


def table(figs: list[Figure], day: datetime.date | None = None) -> str:
    """``figs`` as a Markdown table under a dated title, with a count of the goals met."""
    day = day or datetime.date.today()
    met = sum(f.met for f in figs)
    lines = [
        f"issue 19's goals, {day.isoformat()}: {met} of {len(figs)} met in this run",
        "",
        "| goal | measured | bound | met | note |",
        "|---|---|---|---|---|",
    ]
    for f in figs:
        bound = ("≥ " if f.at_least else "≤ ") + _number(f.bound, f.unit)
        lines.append(
            f"| {f.goal} | {_number(f.measured, f.unit)} | {bound} | "
            f"{'yes' if f.met else 'no'} | {f.note} |"
        )
    return "\n".join(lines)
