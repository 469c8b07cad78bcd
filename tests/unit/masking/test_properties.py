"""Properties of mask_text over generated text (hypothesis, derandomized: same cases every run).

- nothing a detector found in the input is left in the output, and nothing can be found in it;
- masking is idempotent, in every style;
- clean text comes back unchanged (the same object);
- the pre-filter is sound: it never rules out text in which some detector finds something,
  and it says the same on str and on UTF-8 bytes.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.masking import MaskCounts, Masker, Style
from appliance.masking._detectors import DETECTORS, Options
from appliance.masking._scan import Finding, Scanner, _select
from appliance.masking._styles import TOKEN_RE
from tests.unit.masking.helpers import KEY, all_on, masker
from tests.unit.masking.test_detectors import TRUE_POSITIVES

SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=300)

SNIPPETS = sorted(
    {value for _, _, value in TRUE_POSITIVES} | {text for _, text, _ in TRUE_POSITIVES}
)
NOISE = [
    " ",
    "=",
    ": ",
    "'",
    '"',
    "@",
    "-",
    ".",
    "/",
    "(",
    ")",
    "\n",
    "1234",
    "2024-01-15",
    "password=",
    "token: ",
    "ssn ",
    "://u:",
    "@host",
    "+1 ",
    "eyJ",
    "ghp_",
    "[HMAC:",
    "]",
]

texts = st.lists(
    st.one_of(
        st.sampled_from(SNIPPETS),
        st.sampled_from(NOISE),
        st.text(max_size=10),
        st.text(alphabet="0123456789 -.", max_size=24),
    ),
    max_size=8,
).map("".join)

STYLES = [Style.REDACT, Style.PARTIAL, Style.HASH]
MASKERS = {style: Masker(all_on(style), hmac_key=KEY).for_target("t") for style in STYLES}
ALL = Scanner(DETECTORS, Options())


def _outside_tokens(text: str) -> str:
    return TOKEN_RE.sub("\x00", text)


def _stands_alone(raw: str, text: str) -> bool:
    head = r"(?<![A-Za-z0-9])" if raw[:1].isalnum() else ""
    tail = r"(?![A-Za-z0-9])" if raw[-1:].isalnum() else ""
    return re.search(head + re.escape(raw) + tail, text) is not None


@SETTINGS
@given(texts, st.sampled_from(STYLES))
def test_no_detected_value_survives(text: str, style: Style) -> None:
    tm = MASKERS[style]
    masked = tm.mask_text(text, MaskCounts())
    assert tm.detect(masked) == []
    rest = _outside_tokens(masked)
    for _, start, end in tm.detect(text):
        assert not _stands_alone(text[start:end], rest), (text[start:end], masked)


@SETTINGS
@given(texts, st.sampled_from(STYLES))
def test_masking_is_idempotent(text: str, style: Style) -> None:
    tm = MASKERS[style]
    once = tm.mask_text(text, MaskCounts())
    counts = MaskCounts()
    assert tm.mask_text(once, counts) == once
    assert not counts


@SETTINGS
@given(texts)
def test_clean_text_is_returned_unchanged(text: str) -> None:
    tm = MASKERS[Style.REDACT]
    counts = MaskCounts()
    masked = tm.mask_text(text, counts)
    if not tm.detect(text):
        assert masked is text
        assert not counts
    else:
        assert masked != text
        assert counts.total() >= len(tm.detect(text))


def _reference_find(text: str) -> list[tuple[str, int, int]]:
    """Every detector's pattern and validator on the whole text: no gate, no triggers."""
    candidates = [
        Finding(start, end, d.name, d.priority, value)
        for d in DETECTORS
        for m in d.pattern.finditer(text)
        for start, end, value in d.validate(m, Options())
        if end > start
    ]
    tokens = [t.span() for t in TOKEN_RE.finditer(text)]
    kept = [f for f in candidates if not any(a <= f.start and f.end <= b for a, b in tokens)]
    return [(f.detector, f.start, f.end) for f in _select(kept)] if kept else []


@SETTINGS
@given(texts)
def test_prefilter_is_sound(text: str) -> None:
    """The gate and the triggers only ever skip work: the findings are the same without them."""
    reference = _reference_find(text)
    assert [(f.detector, f.start, f.end) for f in ALL.find(text)] == reference
    for d in DETECTORS:
        if any(span for m in d.pattern.finditer(text) for span in d.validate(m, Options())):
            assert ALL.might_match(text), d.name
            assert re.search(d.trigger, text, re.ASCII), d.name
    assert ALL.might_match(text) == ALL.might_match_bytes(text.encode("utf-8", "surrogatepass"))


@SETTINGS
@given(st.text(max_size=40))
def test_arbitrary_unicode_does_not_break_masking(text: str) -> None:
    tm = masker()
    masked = tm.mask_text(text, MaskCounts())
    assert tm.mask_text(masked, MaskCounts()) == masked
