"""Masking benchmarks (not tests): text scanning MB/s on the mixed corpus, and result rows per
second through TargetMasker.mask_values.

Text scanning (:func:`test_text_scanning_mixed_corpus`): ``mask_text`` with every detector on
over three sets of texts -- the labelled corpus (tests/data/masking/corpus.jsonl: every value
and look-alike, one short text each: the worst case, something to check in every text), prose
(:func:`prose`: support notes, log lines and SQL with dates, amounts, ids, versions, URLs and
words such as "password" or "token", but nothing to mask), and the mix of both (each corpus
text after a paragraph of prose; about one byte in seventeen from the corpus). Each set is measured
in a fresh process (tests/bench/scan_rate.py, CPU time, best of three), this checkout against
``MASKING_BASELINE`` (the directory of another checkout holding ``appliance/``, e.g.
``git archive main appliance | tar -x -C DIR``) when set, in alternation, ``MASKING_ROUNDS``
times (default 3); the medians are printed with the speed-up.


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

import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from stdnum import luhn

from appliance.masking import ColumnPlan, MaskCounts, Masker, MaskingConfig, TargetMasker
from appliance.masking._config import ColumnRule
from appliance.masking._styles import Style
from tests.bench import goals
from tests.unit.masking.test_corpus import CORPUS

ROOT = Path(__file__).resolve().parents[2]
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
    """Make the pre-filter let every detector through (reaches into the scanner on purpose)."""
    scanner = tm._m._values
    saved = scanner.candidates_bytes
    every = list(range(len(scanner.detectors)))
    scanner.candidates_bytes = lambda data: every  # type: ignore[method-assign]

    def restore() -> None:
        scanner.candidates_bytes = saved  # type: ignore[method-assign]

    return restore


SENTENCES = [
    "Order {n} shipped on {d} at {t}; the customer asked about the delivery window.",
    "Invoice total was {a} after the discount, adjusted by the support team on {d}.",
    "{d}T{t}:00Z worker[{q}] INFO job {n} finished in {ms} ms (retries: {q}).",
    "Please reset the password from the account page; the reset token expires in {q} hours.",
    "Deployed version {v} to production at {t}, see https://example.com/releases/{n} for notes.",
    "SELECT id, total FROM orders WHERE customer_id = {n} AND created_at > '{d}' LIMIT {q};",
    "The API key rotation is scheduled for {d}; owners were told by the on-call lead.",
    "Ticket {n}: refund of {a} approved, warehouse WH-{q}{q} confirmed the return.",
    "Latency p99 rose to {ms} ms between {t} and {t2}, then went back under {q}0 ms.",
    "Meeting notes: the key point is that batch {n} must finish before {t} on {d}.",
]


def prose(rng: random.Random, size: int) -> str:
    """A paragraph of about ``size`` characters with nothing a detector should find."""
    out: list[str] = []
    while sum(map(len, out)) < size:
        out.append(
            rng.choice(SENTENCES).format(
                n=rng.randint(1000, 9_999_999),
                d=f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                t=f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
                t2=f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
                a=f"${rng.randint(1, 4000)}.{rng.randint(0, 99):02d}",
                q=rng.randint(1, 9),
                ms=rng.randint(5, 900),
                v=f"{rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}",
            )
        )
    return " ".join(out)


def mixed_corpus(seed: int = 19) -> dict[str, list[str]]:
    """The three sets of texts of the text-scanning benchmark (see the module docstring)."""
    rng = random.Random(seed)
    with CORPUS.open(encoding="utf-8") as f:
        corpus = [json.loads(line)["text"] for line in f]
    paragraphs = [prose(rng, rng.randint(400, 1200)) for _ in corpus]
    mixed = [t for pair in zip(paragraphs, corpus, strict=True) for t in pair]
    return {"corpus": corpus, "prose": paragraphs, "mixed": mixed}


def _scan_rates(path: Path, baseline: str | None) -> dict[str, float]:
    env = dict(os.environ)
    if baseline:
        env["PYTHONPATH"] = os.pathsep.join([baseline, str(ROOT)])
    else:
        env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "bench" / "scan_rate.py"), str(path), "3"],
        env=env, capture_output=True, text=True, timeout=3600, check=True,
    )  # fmt: skip
    return {k: v["mb_s"] for k, v in json.loads(r.stdout).items()}


@pytest.mark.bench
@pytest.mark.timeout(3 * 3600)
def test_text_scanning_mixed_corpus(tmp_path: Path) -> None:
    sets = mixed_corpus()
    path = tmp_path / "texts.json"
    path.write_text(json.dumps(sets))
    baseline = os.environ.get("MASKING_BASELINE")
    builds = {"this": None} | ({"baseline": baseline} if baseline else {})
    rates: dict[str, dict[str, list[float]]] = {}
    for r in range(int(os.environ.get("MASKING_ROUNDS", "3"))):
        for build, where in builds.items():
            for name, mb_s in _scan_rates(path, where).items():
                rates.setdefault(name, {}).setdefault(build, []).append(mb_s)
            print(f"round {r + 1} {build}: " + ", ".join(
                f"{n} {v[build][-1]:.2f} MB/s" for n, v in rates.items()
            ), flush=True)  # fmt: skip
    print("\ntext scanning, mask_text, every detector on (MB/s of CPU time, median):")
    for name, texts in sets.items():
        size = sum(len(t.encode()) for t in texts) / 1e6
        line = f"{name:8} {len(texts):6} texts {size:6.2f} MB"
        this = statistics.median(rates[name]["this"])
        line += f"   this {this:8.2f} MB/s"
        if name == "mixed":
            goals.at_least(
                "text masking, mixed corpus", this, 50, "MB/s", "mask_text, CPU time, median"
            )
        if baseline:
            base = statistics.median(rates[name]["baseline"])
            line += f"   baseline {base:8.2f} MB/s   speed-up {this / base:6.1f}x"
        print(line)
    if not baseline:
        print("(set MASKING_BASELINE to another checkout's directory to compare)")


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
