"""The detectors: for each kind of sensitive value, pre-filter patterns, a candidate pattern and
a validation step.

Each :class:`Detector` has

- ``prefilter``: patterns of which every finding contains a match (a necessary condition:
  ``4111...`` holds thirteen digits in a row, an e-mail ``x@y.z``). The patterns of the
  enabled detectors are compiled together (:mod:`appliance.masking._prefilter`, Hyperscan);
  a detector none of whose patterns match in a text is not run on it, and text no pattern
  matches is clean after that one scan. They are ASCII, without look-arounds or
  back-references (what Hyperscan compiles), and run over UTF-8 bytes.
- ``pattern``: finds candidates; ``validate`` keeps those that pass the checks of
  :mod:`appliance.masking._validate` and says which part of the match is the value (a URI's
  password, not the whole URI).
- ``priority``: where findings overlap, the lower number wins (a GitHub token inside
  ``token=...`` is reported as ``github_token``, not ``generic_secret``).

All patterns are ASCII (``re.ASCII``): a digit is ``0-9``.

Detector names are fixed: they appear in the config and in the ledger.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from appliance.masking import _phone_prefilter
from appliance.masking import _validate as v
from appliance.masking._styles import looks_masked

__all__ = ["DETECTORS", "DETECTOR_NAMES", "Detector", "Options", "Span"]

# start, end (in the text), normalised value (what the keyed hash is computed over)
Span = tuple[int, int, str]


@dataclass(frozen=True)
class Options:
    """Settings detectors need beyond the text."""

    phone_regions: tuple[str, ...] = ("US",)

    def __reduce__(self) -> tuple[Any, ...]:
        # Spelled out: compiled (mypyc), a frozen dataclass cannot be unpickled field by
        # field ("cannot assign to field"); it is made again from its fields.
        return (Options, (self.phone_regions,))


Validator = Callable[[re.Match[str], Options], Iterator[Span]]


@dataclass(frozen=True)
class Detector:
    name: str
    priority: int
    prefilter: tuple[str, ...]
    pattern: re.Pattern[str]
    validate: Validator
    description: str
    # The characters every match of ``pattern`` consists of, where that is a small set (the
    # pre-filter patterns' matches too): long texts are then searched only in the runs of
    # these characters around pre-filter matches (appliance.masking._scan).
    runs: frozenset[str] | None = None
    # Narrower pre-filter patterns for the given options (still a necessary condition),
    # where what the validator accepts depends on them (phone numbers: the regions).
    narrow: Callable[[Options], tuple[str, ...]] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # As Options'.
        fields = (self.name, self.priority, self.prefilter, self.pattern, self.validate)
        return (Detector, (*fields, self.description, self.runs, self.narrow))

    def prefilter_for(self, options: Options) -> tuple[str, ...]:
        """The pre-filter patterns to use under ``options``."""
        return self.prefilter if self.narrow is None else self.narrow(options)


def _c(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, re.ASCII | flags)


# -- pem_private_key --------------------------------------------------------------------------

# A key without its END line (a truncated log line) is masked to the end of the text.
_PEM = _c(
    r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----.*?"
    r"(?:-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.DOTALL,
)


def _pem(m: re.Match[str], _: Options) -> Iterator[Span]:
    yield m.start(), m.end(), m.group()


# -- jwt --------------------------------------------------------------------------------------

_JWT = _c(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){2,4}")


def _jwt(m: re.Match[str], _: Options) -> Iterator[Span]:
    parts = m.group().split(".")
    # The pattern is greedy: "x.y.z." at the end of a sentence has a fourth, empty part.
    for n in (5, 3):
        if len(parts) >= n and v.jwt_ok(parts[:n]):
            token = ".".join(parts[:n])
            yield m.start(), m.start() + len(token), token
            return


# -- github_token -----------------------------------------------------------------------------

_GITHUB = _c(
    r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})"
    r"(?![A-Za-z0-9_])"
)


def _github(m: re.Match[str], _: Options) -> Iterator[Span]:
    token = m.group()
    # Fine-grained tokens (github_pat_) have no published checksum: the format is the check.
    if token.startswith("github_pat_") or v.github_checksum_ok(token):
        yield m.start(), m.end(), token


# -- gitlab_token -----------------------------------------------------------------------------

_GITLAB_PREFIXES = r"glpat|gldt|glrt|glcbt|glptt|glft|glimt|glagent|gloas|glsoat|glffct|glwt"
_GITLAB = _c(
    rf"(?<![A-Za-z0-9_-])(?:(?:{_GITLAB_PREFIXES})-|GR1348941)"
    r"[A-Za-z0-9_-]{20,}(?:\.[A-Za-z0-9_-]+)*"
)


def _plain(m: re.Match[str], _: Options) -> Iterator[Span]:
    yield m.start(), m.end(), m.group()


# -- slack_token ------------------------------------------------------------------------------

_SLACK = _c(
    r"(?<![A-Za-z0-9_-])(?:"
    r"(?:xoxe\.)?xox[abposre]-[0-9]+-[0-9A-Za-z-]{8,}"
    r"|xapp-[0-9]-[A-Z0-9]+-[0-9]+-[A-Za-z0-9]+"
    r"|https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]{8,}"
    r")"
)

# -- stripe_key -------------------------------------------------------------------------------

# Publishable keys (pk_live_) are public by design and are not masked.
_STRIPE = _c(
    r"(?<![A-Za-z0-9_])(?:[sr]k_(?:live|test)_[0-9A-Za-z]{10,247}|whsec_[A-Za-z0-9]{32,})"
    r"(?![0-9A-Za-z])"
)

# -- aws_access_key_id ------------------------------------------------------------------------

_AWS_ID = _c(r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])")

# -- uri_password -----------------------------------------------------------------------------

# scheme://user:password@host -- only the password is masked. The password runs to the last
# '@' before the path, so a sloppy "p@ss" password is masked whole.
_URI = _c(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s:/?#@\[\]]*:([^\s/?#]+)@")


def _uri(m: re.Match[str], _: Options) -> Iterator[Span]:
    password = m.group(1)
    if not looks_masked(password):
        yield m.start(1), m.end(1), password


# -- card -------------------------------------------------------------------------------------

# Thirteen or more digits with single spaces or dashes between them, not glued to letters
# ("ME69 7209 ..." is an IBAN look-alike, not a card starting with 69).
_CARD = _c(r"(?<![0-9A-Za-z+])[0-9](?:[ -]?[0-9]){12,}(?![0-9A-Za-z])")
# "MN84 4583 5725 0223 2288": the digits continue an IBAN-shaped token (the iban detector,
# which runs first, takes it if its check digits are right).
_IBAN_HEAD = _c(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2} \Z")
_GROUP = _c(r"[0-9]+")
# Group sizes cards are printed in: 4-4-4-4(-1..3), 4-6-5 (Amex), 4-6-4 (Diners).
_LAYOUT = _c(r"4(?:,4){2,3}(?:,[1-4])?|4,6,[45]")


def _card(m: re.Match[str], _: Options) -> Iterator[Span]:
    """The whole run, if it is a card; else cards inside it.

    Inside a run, a card is a single group of 13-19 digits ("qty 2 4111111111111111"), or --
    when the run is too long to be one card -- groups in a card layout ("4111 1111 1111 1111
    5500 0000 0000 0004"). A run of card length that fails is not searched: ten percent of
    its sub-runs would pass Luhn by chance.
    """
    text = m.group()
    if _IBAN_HEAD.search(m.string, max(0, m.start() - 5), m.start()):
        return
    digits = text.replace(" ", "").replace("-", "")
    if v.card_brand(digits) and v.luhn_ok(digits):
        yield m.start(), m.end(), digits
        return
    groups = [(g.start(), g.end()) for g in _GROUP.finditer(text)]
    if len(groups) == 1:
        return
    sizes = [str(b - a) for a, b in groups]
    layouts = len(digits) > 19
    i = 0
    while i < len(groups):
        size = groups[i][1] - groups[i][0]
        if not (13 <= size <= 19 or (layouts and size == 4)):
            # No card starts at this group: alone it needs 13-19 digits, and every layout
            # starts with a group of four (long digit runs of other shapes cost nothing).
            i += 1
            continue
        hit = None
        for j in range(min(len(groups), i + 5), i, -1):
            if j - i > 1 and not layouts:
                continue
            if j - i > 1 and not _LAYOUT.fullmatch(",".join(sizes[i:j])):
                continue
            window = "".join(text[a:b] for a, b in groups[i:j])
            if v.card_brand(window) and v.luhn_ok(window):
                hit = (groups[i][0], groups[j - 1][1], window, j)
                break
        if hit is None:
            i += 1
            continue
        start, end, window, i = hit
        yield m.start() + start, m.start() + end, window


# -- iban -------------------------------------------------------------------------------------

# The pattern only finds where IBANs may start; the walk below takes exactly as many letters
# and digits as the country's IBAN has (single spaces allowed between them), so an IBAN that
# is followed by more words, or by a second IBAN, is cut at the right place.
_IBAN = _c(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]){11,30}")
_IBAN_START = _c(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}")


def _iban(m: re.Match[str], _: Options) -> Iterator[Span]:
    whole = m.string
    pos = m.start()
    while pos < m.end():
        # Not bounded by m.end(): an IBAN may start in this match and run past its end.
        start = _IBAN_START.search(whole, pos)
        if start is None or start.start() >= m.end():
            return
        span = _iban_at(whole, start.start())
        if span is None:
            pos = start.start() + 1
        else:
            yield span
            pos = span[1]


def _iban_at(text: str, start: int) -> Span | None:
    """The IBAN starting at ``start``: as many letters and digits as its country's IBAN
    has, single spaces allowed between them, and no letter or digit right after."""
    length = v.iban_length(text[start : start + 2].upper())
    if length is None:
        return None
    m = _iban_walk(length).match(text, start)
    if m is None:
        return None
    compact = m.group().replace(" ", "").upper()
    return (start, m.end(), compact) if v.iban_ok(compact) else None


@functools.cache
def _iban_walk(length: int) -> re.Pattern[str]:
    return _c(rf"[A-Za-z0-9](?: ?[A-Za-z0-9]){{{length - 1}}}(?![A-Za-z0-9])")


# -- ssn --------------------------------------------------------------------------------------

# Dashed or spaced (123-45-6789), or nine bare digits right after a name that says SSN. Nine
# bare digits alone are far more often something else (tax ids, routing numbers, order ids).
_SSN = _c(
    r"(?<![0-9-])([0-9]{3})([- ])([0-9]{2})\2([0-9]{4})(?![0-9-])"
    r"|(?i:(?<![A-Za-z0-9])(?:ssn|social[_ -]?security(?:[_ -]?(?:number|no|num))?)"
    r"[\"']?\s*[:=#]?\s*[\"']?)([0-9]{9})(?![0-9])"
)


def _ssn(m: re.Match[str], _: Options) -> Iterator[Span]:
    if m.group(5) is not None:
        digits = m.group(5)
        if v.ssn_ok(digits):
            yield m.start(5), m.end(5), digits
        return
    digits = m.group(1) + m.group(3) + m.group(4)
    if v.ssn_ok(digits):
        yield m.start(), m.end(), digits


# -- email ------------------------------------------------------------------------------------

_EMAIL = _c(
    r"(?<![A-Za-z0-9._%+-])([A-Za-z0-9._%+-]{1,64})@"
    r"((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})(?![A-Za-z0-9-])"
)


def _email(m: re.Match[str], _: Options) -> Iterator[Span]:
    local = m.group(1)
    start = m.start(1)
    # "see...alice@example.com": the address starts after the dots.
    stripped = local.lstrip(".")
    if ".." in stripped:
        stripped = stripped.rsplit("..", 1)[1]
    start += len(local) - len(stripped)
    # A LIKE pattern ('%@example.com') is not an address: the local part needs a letter or digit.
    if stripped.endswith(".") or not any(c.isalnum() for c in stripped):
        return
    value = m.string[start : m.end()]
    yield start, m.end(), value.lower()


# -- phone ------------------------------------------------------------------------------------

# Groups of digits joined by one of space . - or by parentheses, optionally led by +CC.
# The look-ahead wants the seven digits a number has (the validator's minimum) before the
# groups are taken apart in Python: "2024-05" or "12" is not even a candidate.
_PHONE = _c(
    r"(?<![A-Za-z0-9_+.-])(?=(?:[ .()+-]*[0-9]){7})(?:\+?[0-9]{1,15}|\([0-9]{1,5}\))"
    r"(?:(?:[ .-]|(?<=\))|(?=\())(?:[0-9]{1,15}|\([0-9]{1,5}\)))*(?![A-Za-z0-9_])"
)
_PHONE_TOKEN = _c(r"\+?[0-9]+|\([0-9]+\)")

Token = tuple[int, int, str]


def _phone(m: re.Match[str], options: Options) -> Iterator[Span]:
    """The whole run if it is a number; else each piece of the run that uses one separator.

    "415-555-2671 212-555-0123" is two numbers; "3478-607512-34553" is no number, and no
    ten digits cut out of it are one either.
    """
    text = m.group()
    tokens = [(t.start(), t.end(), t.group()) for t in _PHONE_TOKEN.finditer(text)]
    pieces = _pieces(text, tokens)
    candidates = [tokens] if len(pieces) == 1 or tokens[0][2].startswith("+") else []
    for window in candidates + (pieces if len(pieces) > 1 else []):
        digits = sum(len(tok) - tok.startswith("+") - 2 * tok.startswith("(") for *_, tok in window)
        if not 7 <= digits <= 15:
            continue
        # A bare run of digits is an id far more often than a phone number.
        if len(window) < 2 and not window[0][2].startswith("+"):
            continue
        start, end = window[0][0], window[-1][1]
        e164 = v.phone_e164(text[start:end], options.phone_regions)
        if e164 is not None:
            yield m.start() + start, m.start() + end, e164
            if window is tokens:
                return


def _pieces(text: str, tokens: list[Token]) -> list[list[Token]]:
    """Split at a change of separator; the one after +CC or around (area) does not count."""
    pieces = [[tokens[0]]]
    current: str | None = None
    for prev, tok in itertools.pairwise(tokens):
        sep = text[prev[1] : tok[0]]
        exempt = prev[2].startswith(("+", "(")) or tok[2].startswith("(")
        if exempt or current is None or sep == current:
            if not exempt and current is None:
                current = sep
            pieces[-1].append(tok)
        else:
            pieces.append([tok])
            current = None
    return pieces


# -- ipv4 / ipv6 ------------------------------------------------------------------------------

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
# Not after a letter or digit-dot ("v1.2.3.4", "1.2.3.4.5" are versions).
_IPV4 = _c(rf"(?<![A-Za-z0-9.])(?:{_OCTET}\.){{3}}{_OCTET}(?![0-9]|\.[0-9])")

_IPV6 = _c(
    r"(?<![A-Za-z0-9:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:[0-9A-Fa-f]{1,4}|(?:[0-9]{1,3}\.){3}[0-9]{1,3})?"
    r"(?![A-Za-z0-9:]|\.[0-9])"
)


def _ipv6(m: re.Match[str], _: Options) -> Iterator[Span]:
    text = m.group()
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return
    # "::1", "a::b" and "Foo::Bar" are C++ scopes, SQL casts or loopback, not worth hiding.
    groups = sum(1 for g in text.split(":") if g)
    if groups < 2 or (groups == 2 and not any(c.isdigit() for c in text)):
        return
    yield m.start(), m.end(), address.compressed


# -- aws_secret_key ---------------------------------------------------------------------------

_AWS_SECRET = _c(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")


def _aws_secret(m: re.Match[str], _: Options) -> Iterator[Span]:
    value = m.group()
    # 30 random bytes in base 64: all of upper, lower and digits, high entropy; a hex digest
    # (lower or upper only) or a path fails.
    if (
        any(c.isupper() for c in value)
        and any(c.islower() for c in value)
        and any(c.isdigit() for c in value)
        and value.count("/") <= 4
        and v.shannon_entropy(value) >= 4.0
    ):
        yield m.start(), m.end(), value


# -- generic_secret ---------------------------------------------------------------------------

# Names whose value is a secret whatever it looks like ...
_STRONG = r"password|passwd|passphrase|secret|credentials?|private[_.-]?key"
# ... names whose value is masked if it looks random (token_type=bearer is not a secret) ...
_TOKENISH = (
    r"token|api[_.-]?key|apikey|access[_.-]?key|auth[_.-]?key|signing[_.-]?key"
    r"|encryption[_.-]?key|authorization|bearer"
)
# ... and short names that count only as a whole segment of a name (db_pass, not passenger).
_SEGMENT = r"pass|pwd|pw|key|auth|session[_.-]?id|sessionid|cookie"
_SUFFIX = r"hash|digest|value|enc|encrypted|plain|b64|base64|hex|id|str|string"
# Any identifier followed by a separator and a value is a candidate; the validator keeps those
# whose identifier is a key-like name. (Searching for the names inside the pattern is several
# times slower: the engine tries every name at every character.)
_KEY_NAME = _c(
    rf"(?:[A-Za-z0-9_.-]*?(?:{_STRONG}|{_TOKENISH})|(?:[A-Za-z0-9]+[_.-])*(?:{_SEGMENT}))"
    rf"(?:[_.-]?(?:{_SUFFIX}))?",
    re.IGNORECASE,
)
_GENERIC = _c(
    r"(?<![A-Za-z0-9_.-])(?P<name>[A-Za-z0-9_.-]+)[\"']?"
    r"(?:\s*(?::=|=>|==?|:)\s*(?:(?:bearer|basic|token|digest)\s+)?|\s+(?=E?['\"]))"
    r"(?:E?'(?P<sq>(?:[^'\\]|''|\\.)*)'|\"(?P<dq>(?:[^\"\\]|\\.)*)\""
    r"|(?P<bare>[^\s'\",;&(){}<>\[\]]+))",
    re.IGNORECASE,
)
_STRONG_NAME = _c(rf"(?:{_STRONG})|(?:^|[_.-])(?:pass|pwd|pw)(?:$|[_.-])", re.IGNORECASE)
_PLACEHOLDER = _c(
    r"\$[0-9]+|\?|%s|%\([A-Za-z0-9_]+\)s|:[A-Za-z_][A-Za-z0-9_]*|@[A-Za-z_][A-Za-z0-9_]*"
    r"|\$\{[^}]*\}|\{\{.*\}\}|<[^>]*>|null|none|nil|true|false|undefined|default",
    re.IGNORECASE,
)


def _generic(m: re.Match[str], options: Options) -> Iterator[Span]:
    for group in ("sq", "dq", "bare"):
        if m.group(group) is not None:
            value = m.group(group)
            start, end = m.span(group)
            break
    else:  # pragma: no cover - the pattern always sets one of the three
        return
    if not _KEY_NAME.fullmatch(m.group("name")):
        # note="password=x": not a key-like name, but its value may hold one.
        for inner in _GENERIC.finditer(m.string, start, end):
            yield from _generic(inner, options)
        return
    if not value or _PLACEHOLDER.fullmatch(value) or looks_masked(value):
        return
    if _STRONG_NAME.search(m.group("name")):
        if len(value) < 4:
            return
    elif len(value) < 12 or v.shannon_entropy(value) < 3.0 or v.char_classes(value) < 2:
        return
    yield start, end, value


_KEYWORDS = (
    rf"(?i:(?:{_STRONG}|{_TOKENISH}|{_SEGMENT})(?:[_.-]?(?:{_SUFFIX}))?"
    r"[\"']?\s*(?:[:=\"']|E'))"
)

# -- the table --------------------------------------------------------------------------------

# The pre-filter patterns: each is what the detector's pattern needs, without its look-arounds
# (and, for phone numbers, what the validator needs too: appliance.masking._phone_prefilter).
# The unit tests check, over the corpus and generated text, that no finding is ever lost to
# them.


def _phone_narrow(options: Options) -> tuple[str, ...]:
    return _phone_prefilter.patterns(options.phone_regions)


# name, priority, pre-filter, pattern, validator, what
DETECTORS: tuple[Detector, ...] = (
    Detector(
        "pem_private_key",
        0,
        (r"-----BEGIN[ A-Z0-9]*PRIVATE KEY",),
        _PEM,
        _pem,
        "PEM private key blocks (RSA, EC, OpenSSH, PKCS#8 ...)",
    ),
    Detector(
        "jwt",
        1,
        (r"eyJ[A-Za-z0-9_\-]{4}[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*\.",),
        _JWT,
        _jwt,
        "JSON Web Tokens (JWS and JWE, header checked)",
    ),
    Detector(
        "github_token",
        2,
        (r"gh[pousr]_[A-Za-z0-9]{36}", r"github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}"),
        _GITHUB,
        _github,
        "GitHub tokens (ghp_, gho_, ghu_, ghs_, ghr_ with CRC-32 check; github_pat_)",
    ),
    Detector(
        "gitlab_token",
        3,
        (rf"(?:{_GITLAB_PREFIXES})-[A-Za-z0-9_\-]{{20}}", r"GR1348941[A-Za-z0-9_\-]{20}"),
        _GITLAB,
        _plain,
        "GitLab tokens (glpat-, gldt-, glrt-, runner registration ...)",
    ),
    Detector(
        "slack_token",
        4,
        (
            r"xox[abposre]-[0-9]+-[0-9A-Za-z\-]{8}",
            r"xapp-[0-9]-[A-Z0-9]+-[0-9]+-[A-Za-z0-9]",
            r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]{8}",
        ),
        _SLACK,
        _plain,
        "Slack tokens (xoxb-, xoxp-, xapp-) and webhook URLs",
    ),
    Detector(
        "stripe_key",
        5,
        (r"[sr]k_(?:live|test)_[0-9A-Za-z]{10}", r"whsec_[A-Za-z0-9]{32}"),
        _STRIPE,
        _plain,
        "Stripe secret and restricted keys, webhook secrets",
    ),
    Detector(
        "aws_access_key_id",
        6,
        (r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}",),
        _AWS_ID,
        _plain,
        "AWS access key ids (AKIA..., ASIA...)",
    ),
    Detector(
        "uri_password",
        7,
        (r"://[^\s:/?#@\[\]]*:[^\s/?#]+@",),
        _URI,
        _uri,
        "the password in scheme://user:pass@host",
    ),
    Detector(
        "card",
        10,
        # 13 to 19 digits, no digit right before or after them: the whole run, one group or
        # groups in a card layout (_card). Long runs of other groups (sysbench's) never match.
        (r"(?:^|[^0-9])[0-9](?:[ \-]?[0-9]){12,18}(?:[^0-9]|$)",),
        _CARD,
        _card,
        "payment card numbers (issuer prefix and length, Luhn)",
        frozenset("0123456789 -"),
    ),
    Detector(
        "iban",
        9,
        (r"[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]){11}",),
        _IBAN,
        _iban,
        "IBANs (registry length and structure, mod 97)",
    ),
    Detector(
        "ssn",
        12,
        (
            r"[0-9]{3}[ \-][0-9]{2}[ \-][0-9]{4}",
            r"(?i)(?:ssn|social[_ \-]?security(?:[_ \-]?(?:number|no|num))?)"
            r"[\"']?\s*[:=#]?\s*[\"']?[0-9]{9}",
        ),
        _SSN,
        _ssn,
        "US social security numbers (dashed, or nine digits after a name that says SSN)",
    ),
    Detector(
        "email",
        20,
        (r"[A-Za-z0-9._%+\-]@[A-Za-z0-9][A-Za-z0-9\-]*\.[A-Za-z0-9]",),
        _EMAIL,
        _email,
        "e-mail addresses",
        frozenset(string.ascii_letters + string.digits + "._%+-@"),
    ),
    Detector(
        "phone",
        21,
        _phone_prefilter.GENERIC,
        _PHONE,
        _phone,
        "phone numbers (valid per libphonenumber; separators or a leading +)",
        frozenset("0123456789 .()+-"),
        _phone_narrow,
    ),
    Detector(
        "ipv4",
        22,
        (r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]",),
        _IPV4,
        _plain,
        "IPv4 addresses",
    ),
    Detector(
        "ipv6",
        23,
        # An address holds "::" or eight groups (six before an IPv4 tail).
        (r"::", r"(?:[0-9A-Fa-f]{1,4}:){6}"),
        _IPV6,
        _ipv6,
        "IPv6 addresses",
    ),
    Detector(
        "aws_secret_key",
        30,
        (r"[A-Za-z0-9/+]{40}",),
        _AWS_SECRET,
        _aws_secret,
        "AWS secret access keys (40 random base-64 characters)",
    ),
    Detector(
        "generic_secret",
        31,
        (_KEYWORDS,),
        _GENERIC,
        _generic,
        "values next to key-like names (password=, api_key:, Authorization: ...)",
    ),
)

DETECTOR_NAMES: tuple[str, ...] = tuple(d.name for d in DETECTORS)
