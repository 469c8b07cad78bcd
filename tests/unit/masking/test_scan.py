"""The scanner's per-value path (issue 19): a finding spanning the whole value ends the
search, findings are rendered and counted by compiled callables, values go in and out as
bytes."""

from __future__ import annotations

import pickle

import pytest

from appliance.masking import MaskCounts, Masker, Style
from appliance.masking._config import DetectorSetting
from appliance.masking._detectors import DETECTORS, Options
from appliance.masking._scan import Counted, Finding, Renderer, Scanner
from appliance.masking._styles import keyed_hash, partial, redact
from tests.unit.masking.helpers import KEY, all_on

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


def test_the_renderer_applies_each_detectors_style() -> None:
    styles = {"card": Style.PARTIAL, "email": Style.HASH, "phone": Style.REDACT, "ssn": None}
    render = Renderer(styles, KEY)
    card = Finding(0, 19, "card", 10, "4111111111111111")
    email = Finding(0, 13, "email", 20, "a.b@example.com")
    phone = Finding(0, 12, "phone", 21, "+14155552671")
    assert render(card, "4111-1111-1111-1111") == partial("4111-1111-1111-1111")
    assert render(email, "A.B@example.com") == keyed_hash(KEY, b"a.b@example.com")
    assert render(phone, PHONE) == redact("PHONE")
    with pytest.raises(KeyError):
        render(Finding(0, 1, "iban", 9, "x"), "x")


@pytest.mark.parametrize("style", [Style.PARTIAL, Style.HASH, Style.REDACT])
def test_a_renderer_pickles_with_its_styles_and_key(style: Style) -> None:
    # The masker reaches the ledger writer's process pickled.
    render = Renderer({"card": style}, KEY)
    again = pickle.loads(pickle.dumps(render))
    f = Finding(0, 16, "card", 10, CARD)
    assert again(f, CARD) == render(f, CARD)


def test_the_masker_renders_as_its_config_says() -> None:
    config = all_on(card=DetectorSetting(Style.PARTIAL), email=DetectorSetting(Style.HASH))
    tm = Masker(config, hmac_key=KEY).for_target("db")
    text = f"{CARD} a.b@example.com {PHONE}"
    assert tm.mask_value_text(text, MaskCounts()) == (
        f"{partial(CARD)} {keyed_hash(KEY, b'a.b@example.com')} [REDACTED:PHONE]"
    )
    again = pickle.loads(pickle.dumps(tm))
    assert again.mask_value_text(text, MaskCounts()) == tm.mask_value_text(text, MaskCounts())


def test_counted_counts_by_detector_and_where() -> None:
    counts = MaskCounts()
    Counted(counts, "customers.card")(Finding(0, 16, "card", 10, CARD))
    Counted(counts)(Finding(0, 12, "phone", 21, "+14155552671"))
    assert counts.as_dict() == {
        "detectors": {"card": 1, "phone": 1},
        "columns": {"customers.card": 1},
    }


def test_mask_value_takes_and_gives_bytes() -> None:
    render = Renderer({d.name: Style.REDACT for d in DETECTORS}, KEY)
    counts = MaskCounts()
    clean = b"nothing \xff here"
    assert SCANNER.mask_value(clean, render, counts, "t.note") is clean
    # Bytes that are not UTF-8 come back as they were, around the mask.
    value = b"\xff\xfe card " + CARD.encode() + b" \xe9"
    masked = SCANNER.mask_value(value, render, counts, "t.note")
    assert masked == b"\xff\xfe card [REDACTED:CARD] \xe9"
    only = [i for i, d in enumerate(SCANNER.detectors) if d.name == "card"]
    assert SCANNER.mask_value(CARD.encode(), render, counts, "t.card", only=only) == (
        b"[REDACTED:CARD]"
    )
    assert counts.as_dict() == {
        "detectors": {"card": 2},
        "columns": {"t.card": 1, "t.note": 1},
    }
