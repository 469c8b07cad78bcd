"""The phone detector's pre-filter patterns per region (appliance.masking._phone_prefilter):
libphonenumber's patterns rewritten to allow separators, and the narrowed patterns still
let through every number the validator accepts while dates, amounts, versions and long
digit groups (sysbench's rows) no longer match."""

from __future__ import annotations

import re

import pytest

from appliance.masking import _phone_prefilter as pp
from appliance.masking._detectors import DETECTORS, Options
from appliance.masking._validate import phone_e164


def _matches(patterns: tuple[str, ...], text: str) -> bool:
    return any(re.search(p.encode(), text.encode(), re.ASCII) for p in patterns)


@pytest.mark.parametrize(
    ("pattern", "text", "width"),
    [
        ("011", "0 1-1", 3),
        (r"310\d{4}", "310 12.34", 7),
        (r"00(?:1\d)?", "00 13", 4),
        (r"[2-9]\d{2}", "41-5) ", 3),
    ],
)
def test_spaced_pattern_matches_the_digits_with_separators(
    pattern: str, text: str, width: int
) -> None:
    spaced = pp.spaced(pattern)
    assert spaced is not None
    assert re.fullmatch(spaced[0], text)
    assert spaced[1] == width
    assert re.fullmatch(spaced[0], "".join(c for c in text if c.isdigit()))


def test_unknown_syntax_is_not_rewritten() -> None:
    assert pp.spaced(r"\w+") is None
    assert pp.spaced("(12") is None


NUMBERS = {
    "US": ["415-555-2671", "(415) 555-2671", "1 415 555 2671", "+1 415 555 2671",
           "011 44 20 7946 0958"],
    "DE": ["030 901820", "+49 30 901820", "0049 30 901820"],
    "GB": ["020 7946 0958", "+44 20 7946 0958"],
    "IN": ["98765 43210", "+91 98765 43210"],
}  # fmt: skip


@pytest.mark.parametrize(("region", "text"), [(r, t) for r, ts in NUMBERS.items() for t in ts])
def test_numbers_the_validator_accepts_match(region: str, text: str) -> None:
    assert phone_e164(text, (region,)) is not None
    for regions in ((region,), (region, "US"), ("US", region)):
        assert _matches(pp.patterns(regions), f"call {text} now")


SYSBENCH_C = "68487932199-96439406143-93774651418-41631865787-96406072701-"
SYSBENCH_C += "20604855487-25459966574-28203206787-41238978918-19503783441"


@pytest.mark.parametrize(
    "text",
    ["on 2024-03-12. 2024-05-04T18:54", "total $1234.56 after 12.5%", "version 1.22.333",
     "order 1234567 shipped", SYSBENCH_C, "4111111111111111"],
)  # fmt: skip
def test_what_no_us_number_can_be_does_not_match(text: str) -> None:
    assert not _matches(pp.patterns(("US",)), text)


def test_the_generic_patterns_are_the_detectors_own() -> None:
    phone = next(d for d in DETECTORS if d.name == "phone")
    assert phone.prefilter == pp.GENERIC
    assert phone.prefilter_for(Options(("US",))) == pp.patterns(("US",))
    assert not _matches(pp.GENERIC, SYSBENCH_C)
    # A region whose numbers libphonenumber rewrites (Argentina): the generic patterns.
    assert pp.patterns(("AR",)) == pp.GENERIC
