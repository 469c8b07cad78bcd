"""Masking benchmark (not a test): result rows per second through TargetMasker.mask_values.

1M rows (MASKING_BENCH_N changes it) of five text columns -- id, name, email, card, free
text -- in four runs:

- clean: no value holds anything a detector finds (e-mail and card columns hold other data);
- clean, pre-filter off: the same rows with every value sent through all detectors, which is
  what the pre-filter saves;
- findings: every row has an e-mail and a card number, one in ten notes a phone number;
- findings, card column under a partial rule: whole-value masks instead of detection.

Run with ``make bench`` or ``pytest tests/bench/bench_masking.py -m bench -s``. Prints the
rates; asserts only that the masking happened, never a speed.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable

import pytest
from stdnum import luhn

from appliance.masking import ColumnPlan, MaskCounts, Masker, MaskingConfig, TargetMasker
from appliance.masking._config import ColumnRule
from appliance.masking._styles import Style

N = int(os.environ.get("MASKING_BENCH_N", "1000000"))
POOL = 10_000  # distinct rows, cycled: masking keeps no cache, so repeats cost the same
COLUMNS = ["id", "name", "email", "card", "note"]

FIRST = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy"]
LAST = ["Smith", "Jones", "Garcia", "Nguyen", "Kowalski", "Rossi", "Tanaka", "Ali"]
WORDS = [
    "order",
    "shipped",
    "customer",
    "asked",
    "about",
    "the",
    "delivery",
    "window",
    "and",
    "the",
    "invoice",
    "total",
    "for",
    "last",
    "month",
    "was",
    "adjusted",
    "after",
    "review",
    "by",
    "support",
    "team",
    "lead",
]

Row = list[bytes | None]


def _card(rng: random.Random) -> str:
    body = "4" + "".join(rng.choice("0123456789") for _ in range(14))
    return body + luhn.calc_check_digit(body)


def _note(rng: random.Random, phone: bool) -> str:
    words = rng.sample(WORDS, 12)
    if phone:
        words.insert(
            6, f"call ({rng.randint(201, 989)}) {rng.randint(200, 999)}-{rng.randint(1000, 9999)}"
        )
    return " ".join(words)


def make_rows(findings: bool, seed: int = 7) -> list[Row]:
    rng = random.Random(seed)
    rows: list[Row] = []
    for i in range(POOL):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        if findings:
            email = f"{first.lower()}.{last.lower()}{i}@example.com"
            card = _card(rng)
        else:
            email = f"{first.lower()} at example"
            card = f"tier-{rng.randint(1, 5)}"
        rows.append(
            [
                str(100000 + i).encode(),
                f"{first} {last}".encode(),
                email.encode(),
                card.encode(),
                _note(rng, findings and i % 10 == 0).encode(),
            ]
        )
    return rows


def run(tm: TargetMasker, plan: ColumnPlan, rows: list[Row]) -> tuple[float, MaskCounts]:
    counts = MaskCounts()
    mask = tm.mask_values
    t0 = time.perf_counter()
    for i in range(N):
        mask(plan, rows[i % POOL], counts)
    return N / (time.perf_counter() - t0), counts


def report(label: str, rate: float, counts: MaskCounts) -> None:
    print(f"{label:44} {rate:>10,.0f} rows/s  ({counts.total():,} masks)")


def _without_prefilter(tm: TargetMasker) -> Callable[[], None]:
    """Make the pre-filter say "maybe" to everything (reaches into the scanner on purpose)."""
    scanner = tm._m._values
    saved = scanner._pre_b
    scanner._pre_b = re.compile(b"")

    def restore() -> None:
        scanner._pre_b = saved

    return restore


@pytest.mark.bench
def test_masking_throughput() -> None:
    tm = Masker(MaskingConfig(), hmac_key=b"").for_target("bench")
    plan = tm.column_plan("public.customers", COLUMNS)
    clean, dirty = make_rows(False), make_rows(True)
    print(f"\nmasking {N:,} rows of {len(COLUMNS)} text columns ({', '.join(COLUMNS)})")

    rate, counts = run(tm, plan, clean)
    assert not counts
    report("clean rows", rate, counts)

    restore = _without_prefilter(tm)
    try:
        slow, counts = run(tm, plan, clean)
    finally:
        restore()
    assert not counts
    report("clean rows, pre-filter off", slow, counts)
    print(f"{'pre-filter speed-up on clean rows':44} {rate / slow:>10.1f} x")

    rate, counts = run(tm, plan, dirty)
    assert counts.as_dict()["detectors"]["card"] == N
    assert counts.as_dict()["detectors"]["email"] == N
    report("rows with findings (email, card, 10% phone)", rate, counts)

    config = MaskingConfig(columns=(ColumnRule("card", Style.PARTIAL),))
    ruled = Masker(config, hmac_key=b"").for_target("bench")
    rate, counts = run(ruled, ruled.column_plan("public.customers", COLUMNS), dirty)
    assert counts.as_dict()["detectors"]["column_rule"] == N
    report("rows with findings, card column under a rule", rate, counts)
