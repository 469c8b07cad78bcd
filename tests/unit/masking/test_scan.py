"""The scanner's per-value path (issue 19): a finding spanning the whole value ends the
search."""

from __future__ import annotations

import pytest

from appliance.masking._detectors import DETECTORS, Options
from appliance.masking._scan import Scanner

SCANNER = Scanner(DETECTORS, Options())
CARD = "4111111111111111"
PHONE = "415-555-2671"


def _found(text: str) -> list[tuple[str, str]]:
    return [(f.detector, text[f.start : f.end]) for f in SCANNER.find(text)]


def test_a_card_spanning_the_value_is_its_only_finding() -> None:
    assert _found(CARD) == [("card", CARD)]
    assert _found("4111-1111-1111-1111") == [("card", "4111-1111-1111-1111")]


@pytest.mark.parametrize(
    "text",
    [
        f"{CARD} or {PHONE}",  # the card starts the text, does not end it
        f"{PHONE} or {CARD}",  # the card ends the text, does not start it
    ],
)
def test_a_finding_short_of_the_whole_value_does_not_stop_the_search(text: str) -> None:
    # The detectors after the card's (phone) still run: only a finding spanning the whole
    # text leaves them nothing to find.
    assert sorted(_found(text)) == [("card", CARD), ("phone", PHONE)]
