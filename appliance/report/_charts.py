"""Small charts for the report's summary page, drawn by matplotlib as inline SVG.

Where it sits: :mod:`appliance.report._pages` puts the SVG text straight into the HTML (no
script, no external file). Deterministic bytes for the same data: the SVG backend's ids come
from ``svg.hashsalt`` (fixed here) instead of random numbers, the date is left out of the
metadata, and text stays text (``svg.fonttype: none``), so that the page's DOM holds the
labels and the bytes do not depend on the fonts installed. Only the object-oriented API is
used (no pyplot and its global figure state).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("svg")

from matplotlib.figure import Figure  # after choosing the backend
from matplotlib.ticker import MaxNLocator

_RC: Any = {  # matplotlib types rc keys as literals
    "svg.hashsalt": "appliance-report",
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.size": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_COLORS = ("#3465a4", "#cc0000", "#f57900", "#4e9a06", "#75507b")


def _svg(fig: Figure, title: str) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Title": title})
    text = buf.getvalue()
    return text[text.index("<svg") :]  # inline: no XML declaration or doctype


def _ticks(labels: Sequence[str], most: int = 12) -> tuple[list[int], list[str]]:
    step = max(1, -(-len(labels) // most))
    idx = list(range(0, len(labels), step))
    return idx, [labels[i][5:] if len(labels[i]) == 10 else labels[i] for i in idx]


def per_day(days: Mapping[str, Mapping[str, int]], series: Sequence[str], title: str) -> str:
    """Grouped bars, one group per day (``YYYY-MM-DD`` keys, in order), one bar per series."""
    labels = list(days)
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(6.4, 2.2))
        ax = fig.subplots()
        width = 0.8 / max(1, len(series))
        for i, name in enumerate(series):
            xs = [x + i * width - 0.4 + width / 2 for x in range(len(labels))]
            ys = [days[d].get(name, 0) for d in labels]
            ax.bar(xs, ys, width, label=name, color=_COLORS[i % len(_COLORS)])
        idx, shown = _ticks(labels)
        ax.set_xticks(idx, shown)
        ax.set_title(title, loc="left")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if len(series) > 1:
            ax.legend(frameon=False, ncols=len(series), loc="lower right", bbox_to_anchor=(1, 1))
        fig.tight_layout()
        return _svg(fig, title)


def bars(counts: Mapping[str, int], title: str, color: int = 0) -> str:
    """Horizontal bars, one per key (in the given order)."""
    names = list(counts) or ["(none)"]
    values = [counts.get(n, 0) for n in names]
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(6.4, 0.6 + 0.25 * len(names)))
        ax = fig.subplots()
        ax.barh(range(len(names)), values, color=_COLORS[color % len(_COLORS)])
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_title(title, loc="left")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for y, v in enumerate(values):
            ax.annotate(str(v), (v, y), xytext=(3, 0), textcoords="offset points", va="center")
        fig.tight_layout()
        return _svg(fig, title)
