"""Charts: the same data gives the same SVG bytes in another process; text stays text and
is escaped (kinds and outcomes come from the ledger)."""

from __future__ import annotations

import subprocess
import sys

from appliance.report import _charts

DAYS = {"2026-12-01": {"sessions": 3, "statements": 10}, "2026-12-02": {"sessions": 1}}
CODE = (
    "from appliance.report import _charts as c; import sys; "
    "sys.stdout.write(c.per_day({days!r}, ('sessions', 'statements'), 'Per day') + "
    "c.bars({{'card': 4, 'ssn': 2}}, 'Masked'))"
)


def test_same_bytes_in_another_process() -> None:
    here = _charts.per_day(DAYS, ("sessions", "statements"), "Per day") + _charts.bars(
        {"card": 4, "ssn": 2}, "Masked"
    )
    there = subprocess.run(
        [sys.executable, "-c", CODE.format(days=DAYS)], capture_output=True, text=True, check=True
    ).stdout
    assert here == there
    assert here.startswith("<svg") and "<text" in here and ">card<" in here


def test_text_from_the_ledger_is_escaped() -> None:
    svg = _charts.bars({"<script>alert(1)</script>": 1}, "Holds by outcome")
    assert "<script" not in svg and "&lt;script&gt;" in svg
