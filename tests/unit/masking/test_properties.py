"""Properties of mask_text over generated text (hypothesis, derandomized: same cases every run).

- nothing a detector found in the input is left in the output, and nothing can be found in it;
- masking is idempotent, in every style;
- clean text comes back unchanged (the same object);
- the pre-filter is sound: it never rules out text in which some detector finds something,
  and it says the same on str and on UTF-8 bytes, with Hyperscan and with re;
- the phone numbers' digit-shape check never changes libphonenumber's answer, nor does
  asking its matcher about the whole text only;
- the card issuers looked up by first digit answer as the whole table;
- the IBAN and Luhn checks answer as stdnum's, and the IBAN walk takes what it took
  character by character;
- mask_text's clean fast path answers as the full search does.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum import iban as stdnum_iban
from stdnum import luhn as stdnum_luhn

from appliance.masking import MaskCounts, Masker, Style
from appliance.masking._detectors import DETECTORS, Options, _iban_at
from appliance.masking._scan import Finding, Scanner, _select
from appliance.masking._styles import TOKEN_RE
from appliance.masking._validate import (
    _ISSUERS,
    _matched_whole,
    _matched_whole_by_matcher,
    card_brand,
    iban_length,
    iban_ok,
    luhn_ok,
    phone_e164,
)
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
ALL_RE = Scanner(DETECTORS, Options(), engine="re")
# Every text searched as a long one: detectors with runs search only around pre-filter matches.
ALL_RUNS = Scanner(DETECTORS, Options(), window_from=0)
ALL_RUNS_RE = Scanner(DETECTORS, Options(), engine="re", window_from=0)


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
    """Every detector's pattern and validator on the whole text: no pre-filter."""
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
    """The pre-filter only ever skips work: the findings are the same without it, with
    either engine (Hyperscan, or the same patterns one by one with re)."""
    reference = _reference_find(text)
    assert [(f.detector, f.start, f.end) for f in ALL.find(text)] == reference
    assert [(f.detector, f.start, f.end) for f in ALL_RE.find(text)] == reference
    assert [(f.detector, f.start, f.end) for f in ALL_RUNS.find(text)] == reference
    assert [(f.detector, f.start, f.end) for f in ALL_RUNS_RE.find(text)] == reference
    data = text.encode("utf-8", "surrogatepass")
    for i, d in enumerate(ALL.detectors):
        if any(span for m in d.pattern.finditer(text) for span in d.validate(m, Options())):
            assert ALL.might_match(text), d.name
            assert i in ALL.candidates_bytes(data), d.name
            assert any(j == i for _, _, j in ALL.prefilter.where(data)), d.name
    assert ALL.might_match(text) == ALL.might_match_bytes(data)
    assert ALL.candidates_bytes(data) == ALL_RE.candidates_bytes(data)


# Statements as pgbench and ORMs send them, with literals drawn below: the hot path's texts.
STATEMENTS = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
    "UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {};",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({}, {}, {}, {}, now());",
    "SELECT * FROM users WHERE email = '{}' AND note = '{}'",
]
statements = st.tuples(
    st.sampled_from(STATEMENTS),
    st.lists(st.one_of(st.integers(-(10**16), 10**16).map(str), texts), min_size=4, max_size=4),
).map(lambda sv: sv[0].format(*sv[1]))


# Long texts (over Scanner.window_from when ASCII): the scanner locates the pre-filter's
# matches itself.
long_texts = st.lists(st.one_of(texts, statements), min_size=6, max_size=16).map("\n".join)


@SETTINGS
@given(st.one_of(texts, statements, long_texts))
def test_the_clean_fast_path_answers_as_the_full_search(text: str) -> None:
    """mask_text answers a text the pre-filter rules out in one scan, without the scanner,
    and hands the scanner what the scan found otherwise; what it returns, and counts, is
    what every detector run on the whole text (no pre-filter at all) gives: the text itself
    when nothing is found, the same masks else."""
    tm = MASKERS[Style.REDACT]
    counts, reference_counts = MaskCounts(), MaskCounts()
    fast = tm.mask_text(text, counts)
    scanner = tm._m._text
    every = list(range(len(scanner.detectors)))
    full = scanner.mask(text, tm._m.render, lambda f: reference_counts.add(f.detector), only=every)
    assert fast == full
    assert counts.as_dict() == reference_counts.as_dict()
    if full == text:
        assert fast is text


@SETTINGS
@given(st.text(max_size=40))
def test_arbitrary_unicode_does_not_break_masking(text: str) -> None:
    tm = masker()
    masked = tm.mask_text(text, MaskCounts())
    assert tm.mask_text(masked, MaskCounts()) == masked


_PHONE_REGIONS = ("US", "CA", "GB", "DE", "FR", "IN", "CH", "AR", "BR", "JP")


def _digit_groups(longest: int, fewest: int, most: int) -> st.SearchStrategy[str]:
    """Groups of up to ``longest`` digits joined by what phone numbers are written with."""
    return st.lists(
        st.tuples(
            st.text("0123456789", min_size=1, max_size=longest),
            st.sampled_from([" ", "-", ".", "(", ")", ") ", " (", ""]),
        ),
        min_size=fewest,
        max_size=most,
    ).map(lambda parts: "".join(d + s for d, s in parts).strip())


phone_like = _digit_groups(5, 1, 6)


@SETTINGS
@given(phone_like, st.sampled_from(_PHONE_REGIONS))
def test_phone_precheck_only_skips_what_libphonenumber_rejects(text: str, region: str) -> None:
    """The digit-shape check before libphonenumber's matcher never changes its answer."""
    assert phone_e164(text, (region,)) == _matched_whole_by_matcher(text, region)


# What reaches the matcher: digit groups with what numbers are written with, led by "+", a
# country code or a dialling prefix, and what else the corpus hands it (addresses, dates).
_matcher_input = st.tuples(
    st.sampled_from(["", "+", "+1 ", "1 ", "011 ", "(", "0"]),
    _digit_groups(5, 1, 6),
    st.sampled_from(["", "/", ":00", " ext 12", "."]),
).map("".join)


@SETTINGS
@given(_matcher_input, st.sampled_from(_PHONE_REGIONS))
def test_whole_text_match_answers_as_iterating_the_matcher(text: str, region: str) -> None:
    """_matched_whole asks libphonenumber's matcher about the candidate spanning the text
    only: the same answer as iterating all its matches."""
    assert _matched_whole(text, region) == _matched_whole_by_matcher(text, region)


@pytest.mark.parametrize(
    "text",
    ["173.169.109.79", "192.168.100.200", "2024-05-01 10", "1/2/2024", "415-555-2671",
     "(415) 555-2671", "+1 415 555 2671", "+44 20 7946 0958", "020 7946 0958 / 0959",
     "415-555-2671 212-555-0123", "4111 1111 1111 1111", "030 901820", "98765 43210",
     "415-555-2671.", "415-555-2671 abc", "415-555-2671 / x12", "06/10/2015"],
)  # fmt: skip
@pytest.mark.parametrize("region", _PHONE_REGIONS)
def test_whole_text_match_on_known_texts(text: str, region: str) -> None:
    assert _matched_whole(text, region) == _matched_whole_by_matcher(text, region)


@pytest.mark.parametrize(
    "text",
    ["415-555-2671", "(415) 555-2671", "2024-05-01", "12345.67", "34567.89", "030 901820",
     "020 7946 0958", "01 23 45 67 89", "98765 43210", "011 44 20 7946 0958"],
)  # fmt: skip
@pytest.mark.parametrize("region", _PHONE_REGIONS)
def test_phone_precheck_on_known_numbers(text: str, region: str) -> None:
    assert phone_e164(text, (region,)) == _matched_whole_by_matcher(text, region)


def test_long_texts_of_the_corpus_find_what_the_whole_search_finds() -> None:
    """The corpus's texts run together into long ones (ASCII ones searched around the
    pre-filter's matches): the findings are those of every detector on the whole text."""
    from tests.unit.masking.test_corpus import _load

    records = [r["text"] for r in _load()]
    for i in range(0, len(records), 25):
        text = " ; ".join(records[i : i + 25])
        reference = _reference_find(text)
        assert [(f.detector, f.start, f.end) for f in ALL.find(text)] == reference
        assert [(f.detector, f.start, f.end) for f in ALL_RUNS_RE.find(text)] == reference


long_phone_like = _digit_groups(6, 2, 5)


@SETTINGS
@given(
    st.sampled_from(["", "1", "1 ", "0", "00", "011 ", "44 ", "49 0", "91 0", "1-800-"]),
    long_phone_like,
    st.sampled_from(_PHONE_REGIONS),
)
def test_phone_precheck_with_country_codes_and_prefixes(head: str, text: str, region: str) -> None:
    """Numbers led by a country code, a national prefix or a dialling prefix, and long runs
    (card look-alikes): the digit-shape check still never changes libphonenumber's answer."""
    text = head + text
    assert phone_e164(text, (region,)) == _matched_whole_by_matcher(text, region)


@pytest.mark.parametrize(
    "text",
    ["1 415 555 2671", "1-415-555-2671", "1 (415) 555-2671", "0044 20 7946 0958",
     "49 30 901820", "0049 30 901820", "91 98765 43210", "0 98765 43210", "1-800-555-0199",
     "3478-607512-34553", "4111 1111 1111 1111", "6759 7028 4554 4", "44 (0) 20 7946 0958",
     "33 1 42 68 53 00", "0033 1 42 68 53 00", "41 44 668 18 00", "55 11 2345-6789"],
)  # fmt: skip
@pytest.mark.parametrize("region", _PHONE_REGIONS)
def test_phone_precheck_on_numbers_with_country_codes(text: str, region: str) -> None:
    assert phone_e164(text, (region,)) == _matched_whole_by_matcher(text, region)


_IBAN_COUNTRIES = ["DE", "GB", "FR", "NO", "MT", "BR", "LC", "SC", "QA", "XK", "ZZ", "US"]
_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@st.composite
def _iban_like(draw: st.DrawFn) -> str:
    """Upper-case letters and digits as the iban detector hands them over: a country, two
    check digits (right ones half the time), a BBAN of the registry's length or not, of
    digits only or of any characters."""
    country = draw(st.sampled_from(_IBAN_COUNTRIES))
    length = iban_length(country) or 22
    n = draw(st.sampled_from([length - 4, length - 4, length - 5, 1]))
    bban = draw(
        st.text(alphabet=draw(st.sampled_from(["0123456789", _ALNUM])), min_size=n, max_size=n)
    )
    check = draw(st.text(alphabet="0123456789", min_size=2, max_size=2))
    if draw(st.booleans()):
        check = stdnum_iban.calc_check_digits(country + "00" + bban)
    return country + check + bban


@SETTINGS
@given(_iban_like())
def test_iban_check_is_stdnums(compact: str) -> None:
    """iban_ok answers as stdnum's IBAN validation (without the national checks) does."""
    assert iban_ok(compact) == stdnum_iban.is_valid(compact, check_country=False)


def _iban_at_by_walk(text: str, start: int) -> tuple[int, int, str] | None:
    """The iban detector's walk as it was written first, character by character (the
    reference for _iban_at's regular expression)."""
    length = iban_length(text[start : start + 2].upper())
    if length is None:
        return None
    chars: list[str] = []
    i = start
    while len(chars) < length and i < len(text):
        c = text[i]
        if c.isascii() and c.isalnum():
            chars.append(c)
        elif not (c == " " and i + 1 < len(text) and text[i + 1] != " " and chars):
            return None
        i += 1
    if len(chars) != length or (i < len(text) and text[i].isascii() and text[i].isalnum()):
        return None
    compact = "".join(chars).upper()
    return (start, i, compact) if iban_ok(compact) else None


@st.composite
def _iban_written(draw: st.DrawFn) -> str:
    """An IBAN-like value as text holds it: spaces (one or two) between some characters,
    lower case or not, and what follows it."""
    compact = draw(_iban_like())
    gaps = draw(st.sampled_from([[""], ["", "", "", " "], ["", "", "", " ", "  "]]))
    out = []
    for c in compact:
        out.append(c)
        out.append(draw(st.sampled_from(gaps)))
    text = "".join(out).strip()
    if draw(st.booleans()):
        text = text.lower()
    return text + draw(st.sampled_from(["", " ", "x", "1", " 1234", "\u00e9", "-", " -"]))


@SETTINGS
@given(_iban_written())
def test_iban_walk_takes_what_the_character_walk_took(text: str) -> None:
    assert _iban_at(text, 0) == _iban_at_by_walk(text, 0)


@pytest.mark.parametrize(
    "text",
    [f"{iban}{tail}" for iban in ("DE89 3704 0044 0532 0130 00", "DE89370400440532013000",
                                  "de89 3704 0044 0532 0130 00", "GB82 WEST 1234 5698 7654 32")
     for tail in ("", " ", "x", "1", " 1", "-", "\u00e9", " x")]
    + ["DE89-3704-0044-0532-0130-00", "DE89  3704 0044 0532 0130 00", "DE89 3704 0044 0532 0130 0",
       "DE89 3704 0044 0532 0130 0 0", "DE89 3704 0044 0532 0130 0 "],
)  # fmt: skip
def test_iban_walk_on_known_texts(text: str) -> None:
    assert _iban_at(text, 0) == _iban_at_by_walk(text, 0)


def _card_brand_by_table(digits: str) -> str | None:
    """card_brand as first written: the whole issuer table in order (the reference)."""
    n = len(digits)
    if not 13 <= n <= 19:
        return None
    for low, high, lengths, brand in _ISSUERS:
        if n in lengths and low <= digits[: len(low)] <= high:
            return brand
    return None


@SETTINGS
@given(
    st.one_of(
        st.text(alphabet="0123456789", min_size=12, max_size=20),
        st.sampled_from(
            ["4", "5", "34", "37", "2221", "2720", "6011", "622126", "3095", "9792"]
        ).flatmap(
            lambda p: st.text(alphabet="0123456789", min_size=11, max_size=17).map(p.__add__)
        ),
        st.text(max_size=20),
    )
)
def test_card_brand_answers_as_the_whole_table(digits: str) -> None:
    assert card_brand(digits) == _card_brand_by_table(digits)


@SETTINGS
@given(st.one_of(st.text(alphabet="0123456789", max_size=20), st.text(max_size=20)))
def test_luhn_check_is_stdnums(digits: str) -> None:
    assert luhn_ok(digits) == stdnum_luhn.is_valid(digits)


def test_finding_repr_hides_the_value() -> None:
    """A finding that reaches a log, a traceback or an assertion message shows where it is
    and what found it, never the value it would mask."""
    card = "4111 1111 1111 1111"
    (finding,) = ALL.find(f"paid with {card} today")
    assert finding.value in card.replace(" ", "") or finding.value == card
    for shown in (repr(finding), str(finding), f"{finding}", repr([finding])):
        assert "4111" not in shown
        assert f"start={finding.start}" in shown and finding.detector in shown
