"""Phone number validation without libphonenumber's per-call overheads, for the common shape.

:func:`appliance.masking._validate.phone_e164` asks libphonenumber (``parse``,
``is_valid_number``, the matcher's STRICT_GROUPING verification, ``format_number``) about each
candidate that passes the digit-shape check: 25-50 µs a valid number, most of what masking
an export still cost (issue 19). Most of that is overhead around little work: every digit
normalised through ``unicodedata``, every metadata expression looked up in ``re``'s cache on
every use, the number type found twice (once to find the region, once to validate), the
number formatted whole in RFC 3966 to learn its groups, and E.164 built by ``format_number``.

Here the same steps are done over ASCII text made only of digits and the separators the
phone detector hands over (space ``.`` ``-`` ``(`` ``)``), with the region's metadata read
once into compiled expressions. Each function answers an E.164 string, None (libphonenumber
says no), or :data:`DECLINE` for any input or metadata it does not follow step by step
(a dialling prefix written without "+", a region that rewrites national
numbers, a non-geographic code, text ending in a separator ...): the caller then asks
libphonenumber itself. ``tests/unit/masking/test_phone_fast.py`` holds both answers equal.

The step each part follows is named in its comment (phonenumberutil.py / phonenumbermatcher.py
of the phonenumbers package).
"""

from __future__ import annotations

import re
from typing import Any, Final

import phonenumbers
from phonenumbers import phonenumbermatcher, phonenumberutil

# Private names of the package (its stubs do not list them): the expressions its steps use,
# so that what is checked here is what it checks.
_pm: Any = phonenumbermatcher
_pu: Any = phonenumberutil

__all__ = ["DECLINE", "NUMBER_TYPES", "international_e164", "national_e164"]

DECLINE: Final = ""

# Without one of them (another version of the package) every candidate is declined.
_AVAILABLE: Final = all(
    hasattr(_pm, n)
    for n in (
        "_PATTERN",
        "_SECOND_NUMBER_START_PATTERN",
        "_SLASH_SEPARATED_DATES",
        "_MATCHING_BRACKETS",
        "_PUB_PAGES",
        "_ALT_NUMBER_FORMATS",
    )
) and all(hasattr(_pu, n) for n in ("_SEPARATOR_PATTERN", "_FIRST_GROUP_ONLY_PREFIX_PATTERN"))
_SEPARATOR: re.Pattern[str] = getattr(_pu, "_SEPARATOR_PATTERN", re.compile("(?!)"))
_GROUP_REF = re.compile(r"\\([0-9])")
_TWO_DIGIT_REF = re.compile(r"\\[0-9][0-9]")

# Texts this module reads: digits and the separators the phone detector hands over.
_BODY = re.compile(r"[0-9 .()\-]*[0-9]", re.ASCII)
_NOT_DIGIT = re.compile(r"[^0-9]", re.ASCII)
_MAX_INPUT = 250  # parse: _MAX_INPUT_STRING_LENGTH
_MIN_NSN = 2  # _MIN_LENGTH_FOR_NSN
_MAX_NSN = 17  # _MAX_LENGTH_FOR_NSN
_MAX_CC = 3  # _MAX_LENGTH_COUNTRY_CODE

# _test_number_length results that parse keeps a number with its national prefix cut for.
_POSSIBLE = 0
_TOO_SHORT = 1
_LOCAL_ONLY = 2
_TOO_LONG = 3
_INVALID_LENGTH = 4

# The number types libphonenumber's _number_type_helper tries, in its order (_validate's
# digit-shape check reads them too).
NUMBER_TYPES: Final[tuple[str, ...]] = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
    "mobile",
)


def _compile(pattern: str | None) -> re.Pattern[str] | None:
    """The expression, or None where libphonenumber has none (an empty one matches all)."""
    return re.compile(pattern) if pattern is not None else None


class _Format:
    """A NumberFormat of the metadata, its expressions compiled."""

    def __init__(self, f: Any) -> None:
        lead = f.leading_digits_pattern or ()
        self.lead: re.Pattern[str] | None = re.compile(lead[-1]) if lead else None
        # Alternate formats look at their first (only) leading digits pattern.
        self.lead_first: re.Pattern[str] | None = re.compile(lead[0]) if lead else None
        self.pattern: re.Pattern[str] = re.compile(str(f.pattern))
        self.format: str = str(f.format)
        rule = f.national_prefix_formatting_rule
        self.np_rule: str | None = str(rule) if rule is not None else None
        self.np_optional: bool = bool(getattr(f, "national_prefix_optional_when_formatting", False))
        # _formatting_rule_has_first_group_only
        self.first_group_only: bool = rule is None or bool(
            _pu._FIRST_GROUP_ONLY_PREFIX_PATTERN.fullmatch(rule)
        )

        # The format as literals between group references ("(\\1) \\2-\\3": "(", 1, ") ",
        # 2, "-", 3, ""), or no refs where it holds anything else (then re's sub expands it).
        parts = _GROUP_REF.split(self.format)
        self.literals: list[str] = parts[0::2]
        self.refs: list[int] = [int(p) for p in parts[1::2]]
        self.by_refs: bool = (
            not any("\\" in lit for lit in self.literals)
            and all(0 < ref <= self.pattern.groups for ref in self.refs)
            and _TWO_DIGIT_REF.search(self.format) is None
        )

    def groups(self, nsn: str) -> list[str]:
        """The digit groups of ``nsn`` in this format: _format_nsn_using_pattern(...,
        RFC3966) split at its dashes."""
        m = self.pattern.match(nsn)
        if (
            self.by_refs
            and m is not None
            and m.end() == len(nsn)
            and self.pattern.match(nsn, len(nsn)) is None
        ):
            # re.sub would replace this one match, spanning nsn, and nothing after it: its
            # expansion, without re's template machinery (most of this function's time).
            formatted = self.literals[0]
            for i, ref in enumerate(self.refs):
                formatted += (m.group(ref) or "") + self.literals[i + 1]
        else:
            formatted = self.pattern.sub(self.format, nsn)
        if _SEPARATOR.match(formatted):
            formatted = _SEPARATOR.sub("", formatted, count=1)
        return _SEPARATOR.sub("-", formatted).split("-")


def _choose(formats: list[_Format], nsn: str) -> _Format | None:
    """_choose_formatting_pattern_for_number."""
    for f in formats:
        if (f.lead is None or f.lead.match(nsn)) and f.pattern.fullmatch(nsn):
            return f
    return None


class _Region:
    """One region's metadata, read once, as the steps below use it."""

    def __init__(self, code: str, m: Any) -> None:
        self.code = code
        self.cc: int = int(m.country_code)
        self.cc_str = str(self.cc)
        self.idd = _compile(m.international_prefix)
        # _maybe_strip_national_prefix_carrier_code: an empty prefix is none.
        self.npp = _compile(m.national_prefix_for_parsing or None)
        self.transform: bool = bool(m.national_prefix_transform_rule)
        general = m.general_desc
        # _match_national_number: an empty pattern matches nothing.
        self.general = _compile(
            (general.national_number_pattern or None) if general is not None else None
        )
        self.general_lengths: tuple[int, ...] = tuple(getattr(general, "possible_length", ()) or ())
        self.local_lengths: tuple[int, ...] = tuple(
            getattr(general, "possible_length_local_only", ()) or ()
        )
        self.leading = _compile(m.leading_digits)
        national = [_Format(f) for f in getattr(m, "number_format", ()) or ()]
        intl = [_Format(f) for f in getattr(m, "intl_number_format", ()) or ()]
        self.formats: list[_Format] = national
        self.rfc_formats: list[_Format] = intl if intl else national  # _format_nsn
        np = m.national_prefix
        # ndd_prefix_for_region(region, True) is not None
        self.has_ndd: bool = bool(np)
        # Where parse's steps over this region's metadata are followed here: no rewriting
        # of national numbers, lengths to test.
        self.followed: bool = not self.transform and bool(self.general_lengths)
        self._m = m
        self._valid: dict[int, re.Pattern[str] | None] = {}

    def valid_pattern(self, n: int) -> re.Pattern[str] | None:
        """For numbers of ``n`` digits: an expression that matches them whole iff one of
        the number types _number_type_helper tries does (_is_number_matching_desc), or
        None if none can."""
        if n in self._valid:
            return self._valid[n]
        alts = []
        for name in NUMBER_TYPES:
            desc = getattr(self._m, name, None)
            if desc is None or not desc.national_number_pattern:
                continue
            if desc.possible_length and n not in desc.possible_length:
                continue
            alts.append(f"(?:{desc.national_number_pattern})")
        p = re.compile("|".join(alts)) if alts else None
        self._valid[n] = p
        return p

    def is_type(self, nsn: str) -> bool:
        """_number_type_helper(nsn, metadata) != UNKNOWN."""
        if self.general is None:
            return False
        if self.general_lengths and len(nsn) not in self.general_lengths:
            return False
        if self.general.fullmatch(nsn) is None:
            return False
        p = self.valid_pattern(len(nsn))
        return p is not None and p.fullmatch(nsn) is not None

    def general_match(self, digits: str) -> bool:
        """_match_national_number(digits, general_desc, False)."""
        return self.general is not None and self.general.fullmatch(digits) is not None

    def strip_national_prefix(self, digits: str) -> tuple[str, bool]:
        """_maybe_strip_national_prefix_carrier_code (no transform rule) without the
        carrier code: the number left, and whether a prefix was cut."""
        if not digits or self.npp is None:
            return digits, False
        m = self.npp.match(digits)
        if m is None:
            return digits, False
        rest = digits[m.end() :]
        if self.general_match(digits) and not self.general_match(rest):
            return digits, False
        return rest, True

    def length_result(self, digits: str) -> int:
        """_test_number_length(digits, metadata) (type UNKNOWN: the general description)."""
        n = len(digits)
        if n in self.local_lengths:
            return _LOCAL_ONLY
        lengths = self.general_lengths
        if lengths[0] == n:
            return _POSSIBLE
        if lengths[0] > n:
            return _TOO_SHORT
        if lengths[-1] < n:
            return _TOO_LONG
        return _POSSIBLE if n in lengths[1:] else _INVALID_LENGTH


_REGIONS: dict[str, _Region | None] = {}


def _region(code: str) -> _Region | None:
    """The region's metadata, or None (not a region code libphonenumber knows)."""
    if code in _REGIONS:
        return _REGIONS[code]
    m = None
    if code in phonenumbers.SUPPORTED_REGIONS:
        m = phonenumbers.PhoneMetadata.metadata_for_region(code, None)
    r = _Region(code, m) if m is not None and m.country_code else None
    _REGIONS[code] = r
    return r


class _Country:
    """One country calling code: its regions in libphonenumber's order, the main one first."""

    def __init__(self, cc: int) -> None:
        codes = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(cc, ())
        regions = [_region(c) for c in codes]
        self.ok: bool = bool(codes) and all(r is not None for r in regions)
        self.regions: list[_Region] = [r for r in regions if r is not None]
        if self.ok and (codes[0] == "001" or any(r.cc != cc for r in self.regions)):
            self.ok = False
        # The region parse and format read this code's metadata from (when followed).
        self.main: _Region | None = None
        if self.ok and self.regions[0].followed:
            self.main = self.regions[0]
        self.alternates: list[_Format] = [
            _Format(f) for f in _pm._ALT_NUMBER_FORMATS.get(cc, ()) or ()
        ]

    def valid(self, nsn: str) -> bool:
        """is_valid_number: the region found by region_code_for_number (its leading digits,
        else a number type) then validates the number."""
        regions = self.regions
        if len(regions) == 1:
            return regions[0].is_type(nsn)
        for r in regions:
            if r.leading is not None:
                if r.leading.match(nsn):
                    return r.is_type(nsn)
            elif r.is_type(nsn):
                return True
        return False


_COUNTRIES: dict[int, _Country] = {}


def _country(cc: int) -> _Country:
    c = _COUNTRIES.get(cc)
    if c is None:
        c = _Country(cc)
        _COUNTRIES[cc] = c
    return c


def _national_number(main: _Region, digits: str) -> str | None:
    """What parse keeps of ``digits`` (after the country code) as the national significant
    number: the national prefix cut if the rest has a possible length; None where parse
    raises (too short or too long)."""
    if len(digits) < _MIN_NSN:
        return None
    rest, _ = main.strip_national_prefix(digits)
    if main.length_result(rest) in (_POSSIBLE, _TOO_LONG):
        digits = rest
    if not _MIN_NSN <= len(digits) <= _MAX_NSN:
        return None
    return digits


def international_e164(text: str) -> str | None:
    """``text`` ("+" then digits and separators) as phone_e164 answers it (parse with no
    region, is_valid_number, format_number E164), or :data:`DECLINE`."""
    if not _AVAILABLE:  # pragma: no cover
        return DECLINE
    if len(text) > _MAX_INPUT or len(text) < 2 or text[0] != "+" or text[1] == "+":
        return DECLINE
    if _BODY.fullmatch(text, 1) is None:
        return DECLINE
    digits = _NOT_DIGIT.sub("", text)
    # _is_viable_phone_number wants three digits after the plus; parse raises on two or
    # fewer digits after it (TOO_SHORT_AFTER_IDD); _extract_country_code finds none after 0.
    if len(digits) <= _MIN_NSN or digits[0] == "0":
        return DECLINE
    cc = 0
    rest = ""
    for i in range(1, min(len(digits), _MAX_CC) + 1):
        code = int(digits[:i])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            cc, rest = code, digits[i:]
            break
    if cc == 0:
        return DECLINE
    country = _country(cc)
    if country.main is None:
        return DECLINE
    nsn = _national_number(country.main, rest)
    if nsn is None:
        return None
    if nsn.strip("0") == "":
        return DECLINE
    return "+" + country.main.cc_str + nsn if country.valid(nsn) else None


def national_e164(text: str, region: str) -> str | None:
    """``text`` (digits and separators, no "+") as ``_matched_whole(text, region)``
    answers it (the matcher's candidate spanning the text, parsed in ``region``, verified
    with STRICT_GROUPING, formatted E.164), or :data:`DECLINE`."""
    if not _AVAILABLE:  # pragma: no cover
        return DECLINE
    if len(text) > _MAX_INPUT:
        return DECLINE
    m = _BODY.match(text)
    if m is None or m.end() != len(text):
        return DECLINE
    r = _region(region)
    if r is None or not r.followed:
        return DECLINE
    # _matched_whole: the matcher's candidate must span the text.
    pm = _pm._PATTERN.match(text)
    if pm is None or pm.end() != len(text):
        return DECLINE
    if _pm._SECOND_NUMBER_START_PATTERN.search(text) or _pm._SLASH_SEPARATED_DATES.search(text):
        return DECLINE
    # _parse_and_verify: brackets and publication pages.
    if _pm._MATCHING_BRACKETS.fullmatch(text) is None or _pm._PUB_PAGES.search(text):
        return None
    digits = _NOT_DIGIT.sub("", text)
    if len(digits) < 3:
        return DECLINE
    # parse -> _maybe_extract_country_code: a dialling prefix in front is not followed here.
    if r.idd is not None and r.idd.match(digits):
        return DECLINE
    country = _country(r.cc)
    main = country.main
    if main is None:
        return DECLINE
    # The region's country code in front counts as one (FROM_NUMBER_WITHOUT_PLUS_SIGN) if
    # the digits are no number of the region and what follows it (its national prefix cut)
    # is, or if the digits are too long; parse then reads the code's main region.
    with_cc = False
    rest = ""
    if digits.startswith(r.cc_str):
        rest, _ = r.strip_national_prefix(digits[len(r.cc_str) :])
        with_cc = (not r.general_match(digits) and r.general_match(rest)) or r.length_result(
            digits
        ) == _TOO_LONG
    nsn = _national_number(main, rest) if with_cc else _national_number(r, digits)
    if nsn is None:
        return None
    if nsn.strip("0") == "":
        return DECLINE
    # _verify_strict_grouping: valid; no x, no slash (none in the text); national prefix
    # present if the format asks for it (for a number read in the region); groups as
    # formatted.
    if not country.valid(nsn):
        return None
    rule = None if with_cc else _choose(main.formats, nsn)
    if (
        rule is not None
        and rule.np_rule
        and not rule.np_optional
        and not rule.first_group_only
        and not main.strip_national_prefix(digits)[1]
    ):
        return None
    # _all_number_groups_remain_grouped skips the country code where it is first written.
    start = text.find(r.cc_str) + len(r.cc_str) if with_cc else 0
    rfc = _choose(main.rfc_formats, nsn)
    groups = rfc.groups(nsn) if rfc is not None else [nsn]
    if not _groups_remain(text, start, nsn, groups, main.has_ndd):
        for alt in country.alternates:
            if alt.lead_first is not None and not alt.lead_first.match(nsn):
                continue
            if _groups_remain(text, start, nsn, alt.groups(nsn), main.has_ndd):
                break
        else:
            return None
    return "+" + r.cc_str + nsn


def _groups_remain(text: str, start: int, nsn: str, groups: list[str], has_ndd: bool) -> bool:
    """_all_number_groups_remain_grouped for a number without extension, from ``start``
    (after the country code if the text has one)."""
    at = start
    for i, group in enumerate(groups):
        at = text.find(group, at)
        if at < 0:
            return False
        at += len(group)
        if i == 0 and at < len(text) and has_ndd and text[at].isdigit():
            return text[at - len(group) :].startswith(nsn)
    return True
