"""Validation of candidate values: the checks that turn a pattern match into a finding.

Pure functions over strings, offline, no I/O. Check digits come from python-stdnum (ISO
7064 mod 97-10 and the IBAN registry, US SSN rules; the Luhn check is a loop held to
stdnum's) and phone numbers from phonenumbers (Google's libphonenumber metadata); the rest (issuer prefixes, the GitHub token checksum,
entropy) is written here because it is a few lines each.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
from collections import Counter
from typing import Any, NamedTuple

import phonenumbers
from stdnum import iban as _iban
from stdnum import numdb
from stdnum.iso7064 import mod_97_10 as _mod_97_10
from stdnum.us import ssn as _ssn

from appliance.masking import _phone

__all__ = [
    "card_brand",
    "github_checksum_ok",
    "iban_length",
    "iban_ok",
    "jwt_ok",
    "luhn_ok",
    "phone_e164",
    "phone_shapes",
    "shannon_entropy",
    "ssn_ok",
]

# -- payment cards ---------------------------------------------------------------------------

_ANY = frozenset(range(13, 20))
# (lowest prefix, highest prefix, lengths). Prefixes are compared on as many leading digits as
# the bound has. Sources: ISO/IEC 7812 issuer identification numbers as published by the
# networks (Visa, Mastercard incl. the 2-series, Amex, Discover, Diners, JCB, UnionPay, Maestro,
# Mir, RuPay, Troy). UATP (prefix 1) is left out: any 15-digit number starting with 1 would
# need only a Luhn digit to pass.
_ISSUERS: tuple[tuple[str, str, frozenset[int], str], ...] = (
    ("4", "4", frozenset({13, 16, 19}), "visa"),
    ("51", "55", frozenset({16}), "mastercard"),
    ("2221", "2720", frozenset({16}), "mastercard"),
    ("34", "34", frozenset({15}), "amex"),
    ("37", "37", frozenset({15}), "amex"),
    ("6011", "6011", frozenset(range(16, 20)), "discover"),
    ("644", "649", frozenset(range(16, 20)), "discover"),
    ("65", "65", frozenset(range(16, 20)), "discover"),
    ("622126", "622925", frozenset(range(16, 20)), "discover"),
    ("300", "305", frozenset(range(14, 20)), "diners"),
    ("3095", "3095", frozenset(range(14, 20)), "diners"),
    ("36", "36", frozenset(range(14, 20)), "diners"),
    ("38", "39", frozenset(range(14, 20)), "diners"),
    ("3528", "3589", frozenset(range(16, 20)), "jcb"),
    ("62", "62", frozenset(range(16, 20)), "unionpay"),
    ("81", "81", frozenset(range(16, 20)), "unionpay"),
    ("2200", "2204", frozenset(range(16, 20)), "mir"),
    ("60", "60", frozenset(range(16, 20)), "rupay"),
    ("82", "82", frozenset(range(16, 20)), "rupay"),
    ("508", "508", frozenset(range(16, 20)), "rupay"),
    ("9792", "9792", frozenset({16}), "troy"),
    ("50", "50", _ANY, "maestro"),
    ("56", "69", _ANY, "maestro"),
)


# The issuers by the first digit of their prefixes, in the table's order.
_BY_FIRST_DIGIT: dict[str, tuple[tuple[str, str, frozenset[int], str], ...]] = {
    d: tuple(i for i in _ISSUERS if i[0][0] <= d <= i[1][0]) for d in "0123456789"
}


def card_brand(digits: str) -> str | None:
    """The card network whose prefix and length ``digits`` has, or None. No Luhn check."""
    n = len(digits)
    if not 13 <= n <= 19:
        return None
    for low, high, lengths, brand in _BY_FIRST_DIGIT.get(digits[0], ()):
        if n in lengths and low <= digits[: len(low)] <= high:
            return brand
    return None


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check digit of ``digits`` is right: what stdnum's ``luhn.is_valid``
    answers (a property test holds it to that), as a plain loop. stdnum's checksum builds a
    tuple through a generator and sums two slices of it: 2 of a card validation's 2.7 µs,
    on every card of an export's rows (issue 19); compiled, this loop takes a tenth."""
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    double = False
    for i in range(len(digits) - 1, -1, -1):
        d = ord(digits[i]) - 48
        if double:
            d += d
            if d > 9:
                d -= 9
        total += d
        double = not double
    return total % 10 == 0


# -- US social security numbers ---------------------------------------------------------------


def ssn_ok(digits: str) -> bool:
    """Nine digits that the SSA could have issued.

    Excludes area 000, 666 and 900-999, group 00, serial 0000 and the numbers published in
    advertising (078-05-1120 ...), as python-stdnum's ``us.ssn`` does.
    """
    return len(digits) == 9 and bool(_ssn.is_valid(digits))


# -- IBAN -------------------------------------------------------------------------------------

_IBAN_DB = numdb.get("iban")
_BBAN_PART = re.compile(r"([1-9][0-9]*)!([nac])")


@functools.cache
def iban_length(country: str) -> int | None:
    """The length of an IBAN of ``country`` (two capitals) per the SWIFT registry, or None."""
    info = _IBAN_DB.info(country)
    if not info or not info[0][1]:
        return None
    structure = str(info[0][1].get("bban", ""))
    parts = _BBAN_PART.findall(structure)
    if not parts:
        return None
    return 4 + sum(int(count) for count, _ in parts)


def iban_ok(compact: str) -> bool:
    """Mod 97-10 check digits right and the BBAN shaped as the country's registry entry says.

    National check digits inside the BBAN are not checked: a value that passes the two
    international checks is masked even if its bank would reject it.

    ``compact``: ASCII letters and digits, upper case (the iban detector's walk makes it so).
    The two checks are stdnum's (``iban.validate(..., check_country=False)``: its mod 97-10
    checksum, its registry and its reading of the registry's BBAN structure), without what
    that call repeats on every value (cleaning the text, looking the country up again and
    compiling its structure's expression: two thirds of its time; issue 19).
    """
    shape = _bban_shape(compact[:2])
    if shape is None or shape.match(compact[4:]) is None:
        return False
    return bool(_mod_97_10.checksum(compact[4:] + compact[:4]) == 1)


@functools.cache
def _bban_shape(country: str) -> re.Pattern[str] | None:
    """The BBAN of ``country``'s IBANs as stdnum checks it, or None (no registry entry)."""
    info = _IBAN_DB.info(country)
    if not info or not info[0][1]:
        return None
    return _iban._struct_to_re(str(info[0][1].get("bban", "")))


# -- phone numbers ----------------------------------------------------------------------------


def phone_e164(text: str, regions: tuple[str, ...]) -> str | None:
    """``text`` as an E.164 number if libphonenumber says it is one, else None.

    With a leading ``+`` the number carries its country and must be valid. Without, it is
    tried in ``regions`` order and must also be grouped as that region writes its numbers
    (libphonenumber's STRICT_GROUPING): ``415-555-2671`` is a US number, ``3478-607512`` and
    ``173.169.109.79`` are not.
    """
    if text.startswith("+"):
        # The common shape without libphonenumber's overheads (issue 19).
        fast = _phone.international_e164(text)
        if fast != _phone.DECLINE:
            return fast
        return _international_by_library(text)
    digits = _plain_digits(text)
    for region in regions:
        # libphonenumber's matcher costs tens of microseconds a call; most candidates (dates,
        # amounts, ids with separators) are ruled out by their digits alone.
        if digits is not None and not _may_be_valid(digits, region):
            continue
        e164 = _matched_whole(text, region)
        if e164 is not None:
            return e164
    return None


def _international_by_library(text: str) -> str | None:
    """``text`` (led by "+") as E.164 if libphonenumber parses it and finds it valid."""
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.is_valid_number(number):
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None


def _matched_whole(text: str, region: str) -> str | None:
    """``text`` as E.164 if libphonenumber's matcher (STRICT_GROUPING) finds a number
    spanning all of it.

    What iterating ``PhoneNumberMatcher(text, region)`` would say, without its search for
    numbers that cannot span the text (most of the matcher's time on what fails: an
    address ``173.169.109.79``, a date): its matches come in order of start, and each
    starts at a candidate (a match of its pattern, cut before a second number's start)
    or inside one. A number spanning ``text`` is then the first candidate, which starts at
    0 and spans ``text``, parsed and verified whole -- what the matcher tries first with
    it; the "inner matches" it tries next are pieces of the candidate shorter than it (or
    the candidate again, which fails again). Held to the matcher's own answer by
    ``tests/unit/masking/test_properties.py``.
    """
    if _pm is None:  # pragma: no cover (an older phonenumbers without these names)
        return _matched_whole_by_matcher(text, region)
    # The common shape (digits and separators) without libphonenumber's overheads (issue 19).
    fast = _phone.national_e164(text, region)
    if fast != _phone.DECLINE:
        return fast
    return _matched_whole_by_library(text, region)


def _matched_whole_by_library(text: str, region: str) -> str | None:
    """:func:`_matched_whole` asking libphonenumber itself."""
    if _pm is None:  # pragma: no cover
        return _matched_whole_by_matcher(text, region)
    m = _pm._PATTERN.search(text)
    if m is None or m.start() != 0:
        return None
    candidate = text[: m.end()]
    cut = _pm._SECOND_NUMBER_START_PATTERN.search(candidate)
    if cut is not None:
        candidate = candidate[: cut.start()]
    if len(candidate) != len(text) or _pm._SLASH_SEPARATED_DATES.search(candidate):
        return None
    # (The matcher skips a time stamp followed by ":mm": nothing follows the candidate.)
    matcher = phonenumbers.PhoneNumberMatcher(
        text, region, leniency=phonenumbers.Leniency.STRICT_GROUPING
    )
    match = matcher._parse_and_verify(candidate, 0)
    if match is None:
        return None
    return phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164)


def _matched_whole_by_matcher(text: str, region: str) -> str | None:
    """:func:`_matched_whole` by iterating libphonenumber's matcher (the reference)."""
    matcher = phonenumbers.PhoneNumberMatcher(
        text, region, leniency=phonenumbers.Leniency.STRICT_GROUPING
    )
    for match in matcher:
        if match.start == 0 and match.end == len(text):
            return phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164)
    return None


def _matcher_internals() -> Any:
    """phonenumbers' matcher module if it has what :func:`_matched_whole` uses, else None."""
    from phonenumbers import phonenumbermatcher as pm

    names = (
        "_PATTERN",
        "_SECOND_NUMBER_START_PATTERN",
        "_SLASH_SEPARATED_DATES",
        "_TIME_STAMPS",
        "_TIME_STAMPS_SUFFIX",
    )
    if all(hasattr(pm, n) for n in names) and hasattr(pm.PhoneNumberMatcher, "_parse_and_verify"):
        return pm
    return None  # pragma: no cover


_pm = _matcher_internals()


# Text made only of digits and the separators a phone candidate has (no "+", no letters).
_PLAIN_PHONE = re.compile(r"[0-9 .()\-]+", re.ASCII)
_NOT_DIGIT = re.compile(r"[^0-9]", re.ASCII)


def _plain_digits(text: str) -> str | None:
    return _NOT_DIGIT.sub("", text) if _PLAIN_PHONE.fullmatch(text) else None


class PhoneShapes(NamedTuple):
    """What a valid number dialled in a region without "+" can look like (see
    :func:`phone_shapes`)."""

    idd: re.Pattern[str] | None  # the region's international dialling prefix
    by_length: dict[int, re.Pattern[str]]  # national number patterns per length
    country_code: str
    # The national prefixes for parsing (regular expressions, matched at the start) of the
    # region and of the main region of its country code.
    national_prefixes: tuple[re.Pattern[str], ...]


@functools.cache
def phone_shapes(region: str) -> PhoneShapes | None:
    """What a valid number dialled in ``region`` without "+" can look like, for
    :func:`_may_be_valid`: the region's international dialling prefix, per length the
    patterns of the number types (fixed line, mobile, toll free ...) of that length of the
    regions that share its country code, and what libphonenumber may cut from the front of
    the digits. None where the region rewrites numbers when it strips its national prefix
    (then the national number is not a tail of the digits) or has no metadata."""
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if metadata is None or metadata.national_prefix_transform_rule or not metadata.country_code:
        return None
    idd = re.compile(metadata.international_prefix) if metadata.international_prefix else None
    main = phonenumbers.PhoneMetadata.metadata_for_region(
        phonenumbers.region_code_for_country_code(metadata.country_code)
    )
    prefixes = []
    for m in (metadata, main):
        if m is not None and m.national_prefix_transform_rule:
            return None
        if m is not None and m.national_prefix_for_parsing:
            prefixes.append(re.compile(m.national_prefix_for_parsing))
    by_length: dict[int, list[str]] = {}
    for code in phonenumbers.region_codes_for_country_code(metadata.country_code):
        other = phonenumbers.PhoneMetadata.metadata_for_region(code)
        general = other.general_desc if other is not None else None
        if general is None or not general.possible_length:
            return None
        for name in _phone.NUMBER_TYPES:  # a valid number matches one of them
            desc = getattr(other, name, None)
            if desc is None or desc.national_number_pattern is None:
                continue
            # A type without lengths of its own has the general description's.
            for length in desc.possible_length or general.possible_length:
                if length in general.possible_length:
                    by_length.setdefault(length, []).append(desc.national_number_pattern)
    return PhoneShapes(
        idd,
        {n: re.compile("|".join(f"(?:{p})" for p in ps)) for n, ps in by_length.items()},
        str(metadata.country_code),
        tuple(prefixes),
    )


def _may_be_valid(digits: str, region: str) -> bool:
    """False only if no text with these digits (and only the separators above) can be a
    valid number of ``region`` for libphonenumber.

    Why this holds (phonenumberutil.py, ``parse``, ``_maybe_extract_country_code``,
    ``_maybe_strip_national_prefix_carrier_code`` and ``is_valid_number``): without "+" or
    the region's international prefix, the country code is the region's, and the national
    significant number is what is left of the digits once the country code (if they start
    with it) and then a national prefix (a match at the start of the region's pattern for
    parsing, or of its country code's main region: once in ``_maybe_extract_country_code``,
    once in ``parse``) are cut from their front -- a tail of the digits from one of those
    offsets, unless the region rewrites numbers (excluded above). A valid number's national
    significant number has one of the possible lengths of its region's general description,
    and one of its number types (fixed line, mobile ...: ``_number_type_helper``) has that
    length and a pattern it matches.
    """
    shapes = phone_shapes(region)
    if shapes is None:
        return True
    if shapes.idd is not None and shapes.idd.match(digits):
        return True
    offsets = {0}
    if digits.startswith(shapes.country_code):
        offsets.add(len(shapes.country_code))
    for _ in range(2):
        for start in list(offsets):
            for prefix in shapes.national_prefixes:
                m = prefix.match(digits[start:])
                if m is not None:
                    offsets.add(start + m.end())
    n = len(digits)
    by_length = shapes.by_length
    for start in offsets:
        p = by_length.get(n - start)
        if p is not None and p.fullmatch(digits[start:]):
            return True
    return False


def phone_region_known(region: str) -> bool:
    """``region`` is a region code libphonenumber has metadata for (``US``, ``DE`` ...)."""
    return region in phonenumbers.SUPPORTED_REGIONS


# -- tokens -----------------------------------------------------------------------------------

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _base62(n: int, width: int) -> str:
    out = ""
    while n:
        n, r = divmod(n, 62)
        out = _BASE62[r] + out
    return out.rjust(width, "0")


def github_checksum_ok(token: str) -> bool:
    """The checksum of a GitHub token in the 2021 format (``ghp_`` + 30 random + 6 check).

    The check is the CRC-32 of the 30 random characters, in base 62, left-padded to six
    characters ("Behind GitHub's new authentication token formats", GitHub blog, 2021-04-05).
    """
    body = token[4:]
    if len(body) != 36:
        return False
    crc = binascii.crc32(body[:30].encode("ascii"))
    return _base62(crc, 6) == body[30:]


def github_checksum(random30: str) -> str:
    """The six checksum characters for 30 random characters (used to build test vectors)."""
    return _base62(binascii.crc32(random30.encode("ascii")), 6)


def _b64url_json(part: str) -> object:
    raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    return json.loads(raw)


def jwt_ok(parts: list[str]) -> bool:
    """A JWS (3 parts) or JWE (5 parts) whose header is a JSON object naming its algorithm."""
    if len(parts) not in (3, 5) or not parts[1 if len(parts) == 3 else 2]:
        return False
    try:
        header = _b64url_json(parts[0])
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and isinstance(header.get("alg", header.get("enc")), str)


def shannon_entropy(value: str) -> float:
    """Shannon entropy of the characters of ``value``, in bits per character."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def char_classes(value: str) -> int:
    """How many of lower case, upper case, digits and other characters ``value`` uses."""
    return (
        any(c.islower() for c in value)
        + any(c.isupper() for c in value)
        + any(c.isdigit() for c in value)
        + any(not c.isalnum() for c in value)
    )
