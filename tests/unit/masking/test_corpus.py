"""The labelled corpus: recall on real values, false positives on look-alikes, per detector.

The corpus (tests/data/masking/corpus.jsonl) is made by generate_corpus.py beside it, with a
fixed seed. Every detector is on here, ipv4/ipv6 included. The table of precision and
recall is printed on every run.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from appliance.masking import DETECTOR_NAMES, MaskCounts
from tests.unit.masking.helpers import masker

CORPUS = Path(__file__).resolve().parents[2] / "data" / "masking" / "corpus.jsonl"
MAX_FALSE_POSITIVE_RATE = 0.01


def _load() -> list[dict[str, str]]:
    with CORPUS.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_corpus_has_every_detector_and_enough_lookalikes() -> None:
    records = _load()
    valid = Counter(r["detector"] for r in records if r["set"] == "valid")
    assert set(valid) == set(DETECTOR_NAMES)
    assert min(valid.values()) >= 30
    categories = {r["category"] for r in records if r["set"] == "lookalike"}
    for needed in ("invalid_luhn", "nine_digit_business_id", "random_ids", "timestamps_ids_text"):
        assert needed in categories
    assert sum(1 for r in records if r["set"] == "lookalike") >= 2000


def test_precision_and_recall(capsys: pytest.CaptureFixture[str]) -> None:
    tm = masker()
    records = _load()
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    total: Counter[str] = Counter()
    misses: list[str] = []
    lookalikes = 0
    for r in records:
        findings = tm.detect(r["text"], results=True)
        if r["set"] == "valid":
            total[r["detector"]] += 1
            start = r["text"].index(r["value"])
            end = start + len(r["value"])
            if any(d == r["detector"] and a <= start and end <= b for d, a, b in findings):
                tp[r["detector"]] += 1
            else:
                misses.append(f"{r['detector']}/{r['category']}: {r['text'][:80]!r}")
        else:
            lookalikes += 1
            for d in {d for d, _, _ in findings}:
                fp[d] += 1
    lines = [
        f"\n{'detector':20} {'valid':>6} {'recall':>8} {'FP':>4} {'FP rate':>8} {'precision':>9}"
    ]
    for d in DETECTOR_NAMES:
        recall = tp[d] / total[d]
        precision = tp[d] / (tp[d] + fp[d]) if tp[d] + fp[d] else 1.0
        lines.append(
            f"{d:20} {total[d]:6} {recall:8.2%} {fp[d]:4} {fp[d] / lookalikes:8.3%} {precision:9.2%}"
        )
    lines.append(f"{lookalikes} look-alikes, {sum(total.values())} valid values")
    with capsys.disabled():
        print("\n".join(lines))
    assert not misses, "false negatives:\n" + "\n".join(misses)
    for d in DETECTOR_NAMES:
        assert fp[d] / lookalikes < MAX_FALSE_POSITIVE_RATE, (d, fp[d])


def test_masking_the_corpus_leaves_no_valid_value() -> None:
    """What recall means for storage: after mask_text, the value is gone from the text."""
    tm = masker()
    for r in _load():
        if r["set"] == "valid":
            masked = tm.mask_text(r["text"], MaskCounts())
            assert r["value"] not in masked, (r["detector"], r["category"])
