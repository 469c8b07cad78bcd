"""The phone detector's pre-filter patterns for the configured regions (issue 19).

Where it sits: :class:`~appliance.masking._scan.Scanner` asks each detector for its
pre-filter patterns under the scan's :class:`~appliance.masking._detectors.Options`; the
phone detector's come from here. What the phone detector hands libphonenumber is a piece of
a run of digit groups: 7 to 15 digits, two groups or more unless led by ``+``, with no digit
right before or after it (pieces start and end where groups do). The generic patterns
(:data:`GENERIC`) say just that and hold for any region. Prose is full of seven digits with
gaps (dates ``2024-03-12``, amounts, versions) and sysbench-like rows of long digit groups;
each used to reach the validator to be ruled out in Python -- most of the text scanning
time. The patterns made here are narrower and still a necessary condition, because they
follow what :func:`appliance.masking._validate.phone_e164` accepts:

- a number led by ``+`` holds ``+`` and seven digits (:data:`PLUS`);
- a number without ``+`` is one that some configured region may take as valid
  (``_may_be_valid``): its digits start with the region's international dialling prefix,
  or a tail of them of a length ``n`` the region's numbers have matches the region's
  pattern for that length. Here: the dialling prefix after a non-digit (or at the start)
  and followed by enough digits for seven; ten to fifteen digits for the lengths from ten
  on; the pattern itself, separators allowed after each digit and no digit after it, for
  the lengths seven to nine; the generic patterns for a length under seven or a region
  whose numbers cannot be bounded so (``_may_be_valid`` lets them all through).

For the default region (US) a date, an amount or a version number no longer matches: only
ten to fifteen digits, ``011`` after a non-digit, or Canada's ``310`` numbers do.

Patterns that say "no digit before/after" take that character into the match
(``(?:^|[^0-9])``: Hyperscan has no look-behind), so a match may start or end one
character outside the number (see :meth:`~appliance.masking._prefilter.Prefilter.where`).

libphonenumber's patterns use only digits, ``\\d``, digit classes, groups, alternation and
the quantifiers ``?`` and ``{m,n}`` (checked: a pattern with anything else falls back to
the generic ones); :func:`spaced` rewrites them so that each digit may be followed by
separators, as in a written number.
"""

from __future__ import annotations

import functools
import re

from appliance.masking import _validate as v

__all__ = ["GENERIC", "PLUS", "patterns", "spaced"]

# What stands between two digits of a candidate (the phone detector's pattern): the end of
# a parenthesised group, one of space . -, the start of a parenthesised group, each at most
# once and in this order ("(415) 555": ") "; "1) (2"). Two dots or ". " never do: a date
# that ends a sentence and the number after it are two runs.
_GAP = r"\)?[ .\-]?\(?"
_PAREN = r"\)[ .\-]?\(?|[ .\-]?\("
_DIGIT = rf"[0-9]{_GAP}"
# A number is a whole stretch of digits and gaps: no digit right before or after it.
_BEFORE = r"(?:^|[^0-9])"
_AFTER = r"(?:[^0-9]|$)"


def _bounded(low: int, high: int) -> tuple[str, ...]:
    """A stretch of ``low`` to ``high`` digits with a gap between two of them somewhere and
    no digit right before or after it, whose gaps are one separator (space, dot or dash)
    except next to parentheses (as ``_pieces`` cuts runs: "2024-05-12 10" is two pieces):
    one pattern per separator and place of the first gap."""
    out = []
    for sep in (" ", r"\.", r"\-"):
        some = f"(?:{sep}|{_PAREN})"
        for k in range(1, high):
            least, most = max(0, low - k - 1), high - k - 1
            rest = rf"(?:{some}?[0-9]){{{least},{most}}}" if most else ""  # Hyperscan: no {0,0}
            out.append(rf"{_BEFORE}[0-9]{{{k}}}{some}[0-9]{rest}{_AFTER}")
    return tuple(out)


PLUS = rf"\+[0-9](?:{_GAP}[0-9]){{6}}"
# Seven to fifteen digits in two groups or more, or "+" and seven digits: what the phone
# detector hands libphonenumber (a piece of a run starts and ends where its digits do).
GENERIC = (PLUS, *_bounded(7, 15))
# From this many digits on, a number of any region is matched by its count of digits.
LONG = 10


def patterns(regions: tuple[str, ...]) -> tuple[str, ...]:
    """The phone detector's pre-filter patterns for numbers dialled in ``regions``: every
    number :func:`~appliance.masking._validate.phone_e164` accepts (as the phone detector
    calls it: seven to fifteen digits, at least two groups unless led by ``+``) holds a
    match of one of them."""
    return _patterns(tuple(regions))


@functools.cache
def _patterns(regions: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = [PLUS, *_bounded(LONG, 15)]
    for region in regions:
        shapes = v.phone_shapes(region)
        if shapes is None:
            return GENERIC
        idd, by_length = shapes.idd, shapes.by_length
        if idd is not None:
            rewritten = spaced(idd.pattern)
            if rewritten is None:
                return GENERIC
            pattern, width = rewritten
            # The prefix starts the number: the character before it is no digit.
            out.append(rf"{_BEFORE}(?:{pattern}){_DIGIT * max(0, 7 - width)}")
        for length, national in sorted(by_length.items()):
            if length >= LONG:
                continue
            if length < 7:
                return GENERIC
            rewritten = spaced(national.pattern)
            if rewritten is None:
                return GENERIC
            # The tail of the digits: the number ends where it does.
            out.append(f"(?:{rewritten[0]}){_AFTER}")
    return tuple(dict.fromkeys(out))


# One token of a libphonenumber pattern: an atom that matches one digit, or syntax.
_TOKEN = re.compile(r"\\d|[0-9]|\[\^?[0-9\-]+\]|\(\?:|[()|?]|\{[0-9]+(?:,[0-9]+)?\}")
_BOUNDS = re.compile(r"\{([0-9]+)(?:,([0-9]+))?\}")


def spaced(pattern: str) -> tuple[str, int] | None:
    """``pattern`` (over digits only) rewritten to match the same digits with separators
    after each, and the most digits it matches; None if it uses syntax not handled here.

    Each digit atom ``a`` becomes ``(?:a GAP)``; groups, alternation and quantifiers
    are kept, so the rewritten pattern matches a text exactly when its digits, separators
    taken out, match ``pattern``.
    """
    tokens: list[str] = []
    pos = 0
    while pos < len(pattern):
        m = _TOKEN.match(pattern, pos)
        if m is None:
            return None
        tokens.append(m.group())
        pos = m.end()
    out: list[str] = []
    # Per open group: the widest alternative so far, and the width of the current one.
    stack: list[tuple[int, int]] = []
    best, width, last = 0, 0, 0  # last: the width of the last atom or group
    for tok in tokens:
        if tok in ("(?:", "("):
            stack.append((best, width))
            best, width = 0, 0
            out.append("(?:")
        elif tok == "|":
            best, width = max(best, width), 0
            out.append("|")
        elif tok == ")":
            if not stack:
                return None
            inner = max(best, width)
            best, width = stack.pop()
            width += inner
            last = inner
            out.append(")")
        elif tok == "?":
            out.append("?")
        elif tok.startswith("{"):
            bounds = _BOUNDS.fullmatch(tok)
            assert bounds is not None
            high = int(bounds.group(2) or bounds.group(1))
            width += last * (high - 1)
            out.append(tok)
        else:
            atom = "[0-9]" if tok == r"\d" else tok
            out.append(f"(?:{atom}{_GAP})")
            width += 1
            last = 1
    if stack:
        return None
    return "".join(out), max(best, width)
