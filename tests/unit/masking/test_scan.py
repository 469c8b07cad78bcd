"""The scanner's per-value path (issue 19): a finding spanning the whole value ends the
search, findings are rendered and counted by compiled callables, values go in and out as
bytes."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.masking import MaskCounts, Masker, Style, _prefilter
from appliance.masking._config import DetectorSetting
from appliance.masking._detectors import DETECTORS, Options
from appliance.masking._scan import Counted, Finding, Renderer, Scanner, spans_by_value
from appliance.masking._styles import keyed_hash, partial, redact
from tests.unit.masking.helpers import KEY, all_on

SCANNER = Scanner(DETECTORS, Options())
# The pre-filter by re: its spans are whole matches (Hyperscan's, a match's last byte).
SCANNER_RE = Scanner(DETECTORS, Options(), engine="re")
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


# Pieces of values: findings of several detectors, near-misses, separators that a pattern may
# run across when values are joined (digits, dashes, spaces).
_PIECES = [
    CARD,
    "4111-1111-1111-1111",
    PHONE,
    "(415) 555-2671",
    "bob@example.com",
    "2024-05-12",
    "123456789",
    "-",
    " ",
    "x",
    "",
    "é",
]
_VALUE = st.one_of(
    st.none(), st.lists(st.sampled_from(_PIECES), max_size=4).map(lambda p: "".join(p).encode())
)


@pytest.mark.parametrize("scanner", [SCANNER, SCANNER_RE], ids=["hyperscan", "re"])
@pytest.mark.parametrize("split", [False, True], ids=["one-scan", "split"])
@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.lists(_VALUE, min_size=1, max_size=4), max_size=8))
def test_candidates_of_rows_hold_each_values_own(
    scanner: Scanner, split: bool, rows: list[list[bytes | None]]
) -> None:
    # One pass over all the rows gives, per value, every detector a pass over the value
    # alone gives (the scanner runs those, and finds nothing with any other); a row left
    # out has none in any value.
    with pytest.MonkeyPatch.context() as patch:
        if split:  # the joined rows scanned in two halves at once, however short
            patch.setattr(_prefilter, "SPLIT_FROM", 1)
        found = scanner.candidates_rows(rows)
    assert set(found) <= set(range(len(rows)))
    for r, row in enumerate(rows):
        alone = [[] if v is None else scanner.candidates_bytes(v) for v in row]
        if r not in found:
            assert not any(alone), (r, row)
            continue
        assert len(found[r]) == len(row)
        for c, detectors in enumerate(found[r]):
            assert list(detectors) == sorted(set(detectors))
            assert set(alone[c]) <= set(detectors), (r, c, row)
            if row[c] is None:
                assert not detectors


def test_candidates_of_rows_by_row_and_column() -> None:
    index = {d.name: i for i, d in enumerate(SCANNER.detectors)}
    rows: list[list[bytes | None]] = [
        [b"1", None, b"clean"],
        [b"2", b"bob@example.com", None, CARD.encode()],
        [None, b"nothing"],
        [b"call " + PHONE.encode(), b"x"],
    ]
    found = SCANNER.candidates_rows(rows)
    assert sorted(found) == [1, 3]
    assert not found[1][0] and not found[1][2]
    assert found[1][1] == [index["email"]]
    assert index["card"] in found[1][3]
    assert index["phone"] in found[3][0] and not found[3][1]
    assert SCANNER.candidates_rows([]) == {} == SCANNER.candidates_rows([[None], [None, None]])


def test_spans_are_given_to_the_values_they_overlap() -> None:
    # Joined: b"ab\0" (row 0: None, b"ab", None), b"cde\0" b"\0" (row 1: b"cde", b""),
    # then row 2 (all NULL), then b"fg\0" (row 3).
    rows: list[list[bytes | None]] = [[None, b"ab", None], [b"cde", b""], [None], [b"fg"]]
    ends = [3, 8, 8, 11]
    assert spans_by_value(rows, ends, []) == {}
    # The first byte of a value after a NULL; the NUL after a value; a value's last byte.
    assert spans_by_value(rows, ends, [(0, 1, 5)]) == {0: [(), [5], ()]}
    assert spans_by_value(rows, ends, [(2, 3, 5)]) == {0: [(), [5], ()]}
    assert spans_by_value(rows, ends, [(5, 6, 7), (7, 8, 5), (5, 6, 5)]) == {1: [[5, 7], [5]]}
    # Across values and rows (spans of the re engine are whole matches), past a NULL row.
    assert spans_by_value(rows, ends, [(1, 5, 2)]) == {0: [(), [2], ()], 1: [[2], ()]}
    assert spans_by_value(rows, ends, [(6, 9, 3)]) == {1: [[3], [3]], 3: [[3]]}
    assert spans_by_value(rows, ends, [(10, 11, 1)]) == {3: [[1]]}
