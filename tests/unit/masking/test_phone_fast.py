"""The phone fast path (appliance/masking/_phone.py) against libphonenumber itself.

Each fast function answers E.164, None, or DECLINE; whatever it answers but DECLINE must be
libphonenumber's answer (the matcher iterated over the text, or parse + is_valid_number +
format_number for "+" numbers), and phone_e164 over a list of regions must answer as the
reference does region by region. Inputs: libphonenumber's own example numbers of several
regions and types, written as it formats them (national, international, E.164) or with other
separators, parentheses, a country code or dialling prefix in front, and then mutated a
character at a time (near-valid numbers), plus digit groups and garbage.
"""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.masking import _phone
from appliance.masking._validate import (
    _international_by_library,
    _matched_whole_by_library,
    _matched_whole_by_matcher,
    phone_e164,
)

SETTINGS = settings(derandomize=True, deadline=None, database=None, max_examples=1500)

# Several regions share a country code (US/CA, GB/GG/JE/IM, RU/KZ, FI/AX, NO/SJ): which
# one a number is of comes from leading digits or number types.
_REGIONS = ("US", "CA", "GB", "DE", "FR", "IN", "BR", "CH", "AR", "JP", "IT", "AU", "MX", "NL",
            "AT", "GG", "JE", "IM", "RU", "KZ", "FI", "AX", "NO", "SJ")  # fmt: skip
_TYPES = (
    phonenumbers.PhoneNumberType.FIXED_LINE,
    phonenumbers.PhoneNumberType.MOBILE,
    phonenumbers.PhoneNumberType.TOLL_FREE,
    phonenumbers.PhoneNumberType.PREMIUM_RATE,
    phonenumbers.PhoneNumberType.VOIP,
)
# National numbers twice: the fast path's main case.
_FORMATS = (
    phonenumbers.PhoneNumberFormat.NATIONAL,
    phonenumbers.PhoneNumberFormat.NATIONAL,
    phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    phonenumbers.PhoneNumberFormat.E164,
)


def _examples() -> list[tuple[str, str]]:
    out = []
    for region in _REGIONS:
        for t in _TYPES:
            n = phonenumbers.example_number_for_type(region, t)
            if n is not None:
                out.extend((phonenumbers.format_number(n, f), region) for f in _FORMATS)
    return out


EXAMPLES = _examples()
_SEPARATORS = [" ", "-", ".", "", "(", ")", ") ", " (", "  ", "/", "x"]
_CHARS = "0123456789 .-()+"


@st.composite
def _written(draw: st.DrawFn) -> tuple[str, str]:
    """An example number and its region (or another), its separators maybe rewritten,
    maybe led by a country code, a national prefix or a dialling prefix, then mutated a
    few characters at a time."""
    text, region = draw(st.sampled_from(EXAMPLES))
    if draw(st.integers(0, 3)) == 0:
        region = draw(st.sampled_from(_REGIONS))
    if draw(st.booleans()):
        sep = draw(st.sampled_from(_SEPARATORS))
        text = "".join(c if c.isdigit() or c == "+" else sep for c in text)
    if draw(st.integers(0, 3)) == 0:
        head = draw(
            st.sampled_from(["", "1 ", "1-", "44 ", "49 ", "0", "00", "011 ", "0044 ", "("])
        )
        text = head + text.lstrip("+")
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        c = draw(st.sampled_from(_CHARS))
        if op == "replace":
            text = text[:i] + c + text[i + 1 :]
        elif op == "insert":
            text = text[:i] + c + text[i:]
        else:
            text = text[:i] + text[i + 1 :]
    return text, region


def _nsn_examples() -> list[tuple[str, str, str, str]]:
    """(region, country code, national prefix, national significant number) of each example."""
    out = []
    for region in _REGIONS:
        m = phonenumbers.PhoneMetadata.metadata_for_region(region)
        assert m is not None
        for t in _TYPES:
            n = phonenumbers.example_number_for_type(region, t)
            if n is not None:
                nsn = phonenumbers.national_significant_number(n)
                out.append((region, str(n.country_code), m.national_prefix or "", nsn))
    return out


NSN_EXAMPLES = _nsn_examples()


@st.composite
def _around(draw: st.DrawFn) -> tuple[str, str]:
    """A number near an example: its leading digits kept, the rest random and of about the
    same length (mostly valid numbers, and ones a digit short or long), led by nothing, the
    national prefix, the country code (with or without "+", with the national prefix after
    it, after a dialling prefix), split into groups at random places."""
    region, cc, prefix, nsn = draw(st.sampled_from(NSN_EXAMPLES))
    keep = draw(st.integers(max(1, len(nsn) - 4), len(nsn)))
    size = max(0, len(nsn) - keep + draw(st.sampled_from([0, 0, 0, -1, 1])))
    digits = nsn[:keep] + draw(st.text("0123456789", min_size=size, max_size=size))
    lead = draw(st.sampled_from(["", "", prefix, prefix, cc, "+" + cc, "+" + cc + prefix,
                                 cc + prefix, "00" + cc, "011" + cc, "0"]))  # fmt: skip
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(digits) - 1)), max_size=4))))
    seps = draw(st.lists(st.sampled_from([" ", "-", ".", ") ", " ("]), min_size=5, max_size=5))
    parts, at = [], 0
    for cut, sep in zip(cuts, seps, strict=False):
        parts.append(digits[at:cut] + sep)
        at = cut
    parts.append(digits[at:])
    body = "".join(parts)
    if draw(st.booleans()) and lead:
        body = lead + draw(st.sampled_from([" ", "-", "", " (", "("])) + body
    elif lead:
        body = lead + body
    if draw(st.integers(0, 3)) == 0:
        region = draw(st.sampled_from(_REGIONS))
    return body, region


def _digit_groups() -> st.SearchStrategy[str]:
    return st.lists(
        st.tuples(st.text("0123456789", min_size=1, max_size=5), st.sampled_from(_SEPARATORS)),
        min_size=1,
        max_size=6,
    ).map(lambda parts: "".join(d + s for d, s in parts).strip())


_other_texts = st.one_of(
    st.tuples(st.sampled_from(["", "+", "(", "+1 ", "0"]), _digit_groups()).map("".join),
    st.text(_CHARS, max_size=20),
    st.text(max_size=12),
)
# (text, region): numbers near valid ones nine times in ten.
phone_texts = st.one_of(
    _written(),
    _written(),
    _around(),
    _around(),
    _around(),
    _around(),
    _around(),
    _around(),
    _around(),
    st.tuples(_other_texts, st.sampled_from(_REGIONS)),
)


def _reference(text: str, regions: tuple[str, ...]) -> str | None:
    """phone_e164 as libphonenumber answers it, with no fast path and no digit check."""
    if text.startswith("+"):
        return _international_by_library(text)
    for region in regions:
        e164 = _matched_whole_by_matcher(text, region)
        if e164 is not None:
            return e164
    return None


@SETTINGS
@given(phone_texts)
def test_fast_path_answers_as_libphonenumber(case: tuple[str, str]) -> None:
    text, region = case
    if text.startswith("+"):
        fast = _phone.international_e164(text)
        if fast != _phone.DECLINE:
            assert fast == _international_by_library(text)
    else:
        fast = _phone.national_e164(text, region)
        if fast != _phone.DECLINE:
            assert fast == _matched_whole_by_library(text, region)
            assert fast == _matched_whole_by_matcher(text, region)


@SETTINGS
@given(phone_texts, st.lists(st.sampled_from(_REGIONS), max_size=2, unique=True))
def test_phone_e164_answers_as_libphonenumber(case: tuple[str, str], more: list[str]) -> None:
    text, region = case
    regions = [region, *(r for r in more if r != region)]
    assert phone_e164(text, tuple(regions)) == _reference(text, tuple(regions))


@pytest.mark.parametrize(
    ("text", "region", "e164"),
    [("415-555-2671", "US", "+14155552671"), ("(415) 555-2671", "US", "+14155552671"),
     ("415.555.2671", "US", "+14155552671"), ("4155552671", "US", "+14155552671"),
     ("020 7946 0958", "GB", "+442079460958"), ("030 901820", "DE", "+4930901820"),
     ("01 42 68 53 00", "FR", "+33142685300"), ("98765 43210", "IN", "+919876543210"),
     ("415-555-267", "US", None), ("415 555-2671", "GB", None), ("650 2530000", "US", "+16502530000"),
     ("65 02 53 00 00", "US", None), ("1 415 555 2671", "US", "+14155552671"),
     ("1-415-555-2671", "US", "+14155552671"), ("1 (415) 555-2671", "US", "+14155552671"),
     ("44 20 7946 0958", "GB", "+442079460958"), ("173.169.109.79", "US", None),
     # Digits starting with the country code, as long as the longest number: no country
     # code (a planted TOO_LONG off by one read one here).
     ("430-9001234076", "AT", None)],
)  # fmt: skip
def test_fast_path_answers_the_common_shapes(text: str, region: str, e164: str | None) -> None:
    """The shapes the corpus and exports hold are answered without libphonenumber (a fast
    path that declined everything would pass the tests above)."""
    assert _phone.national_e164(text, region) == e164
    assert _matched_whole_by_matcher(text, region) == e164


@pytest.mark.parametrize(
    ("text", "e164"),
    [("+44 20 7946 0958", "+442079460958"), ("+1 415-555-2671", "+14155552671"),
     ("+49 30 901820", "+4930901820"), ("+91 98765 43210", "+919876543210"),
     ("+33 1 42 68 53 00", "+33142685300"), ("+44 20 7946 095", None)],
)  # fmt: skip
def test_fast_path_answers_international_numbers(text: str, e164: str | None) -> None:
    assert _phone.international_e164(text) == e164
    assert _international_by_library(text) == e164


def test_examples_cover_the_fast_path() -> None:
    """Most of libphonenumber's example numbers are answered (not declined) by the fast
    path, in their own region or with "+": the differential tests exercise it."""
    answered = 0
    for region in _REGIONS:
        for t in _TYPES:
            n = phonenumbers.example_number_for_type(region, t)
            if n is None:
                continue
            national = phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.NATIONAL)
            # (Some regions write national numbers with a "+" or none: those decline.)
            intl = phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
            answered += _phone.national_e164(national, region) != _phone.DECLINE
            answered += _phone.international_e164(intl) != _phone.DECLINE
    assert answered >= len(EXAMPLES) // 3


def test_format_groups_are_libphonenumbers() -> None:
    """A format's digit groups, expanded from its group references, are what
    _format_nsn_using_pattern(..., RFC3966) gives: every format (national, international,
    alternate) of the regions above, on every example number of their country codes and
    those numbers a digit short or long."""
    from phonenumbers import phonenumberutil as pu
    from phonenumbers.data import _ALT_NUMBER_FORMATS

    numbers: dict[int, set[str]] = {}
    for _region, cc, _, nsn in NSN_EXAMPLES:
        numbers.setdefault(int(cc), set()).update({nsn, nsn[:-1], nsn + "5"})
    compared = by_refs = 0
    for region in _REGIONS:
        m = phonenumbers.PhoneMetadata.metadata_for_region(region)
        assert m is not None
        formats = [*m.number_format, *m.intl_number_format]
        formats += _ALT_NUMBER_FORMATS.get(m.country_code, [])
        for f in formats:
            ours = _phone._Format(f)
            by_refs += ours.by_refs
            for nsn in numbers[m.country_code]:
                rfc = pu._format_nsn_using_pattern(nsn, f, phonenumbers.PhoneNumberFormat.RFC3966)
                assert ours.groups(nsn) == rfc.split("-"), (region, f.pattern, nsn)
                compared += 1
    assert compared > 1000
    assert by_refs > 100
