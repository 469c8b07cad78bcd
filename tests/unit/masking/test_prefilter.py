"""The multi-pattern pre-filter: both engines give the same answers, it pickles, and it is
safe to use from two threads at once (the event loop and a writer thread)."""

from __future__ import annotations

import os
import pickle
import threading

import pytest

from appliance.masking import _prefilter
from appliance.masking._detectors import DETECTORS
from appliance.masking._prefilter import ENGINE, ENV, Prefilter, prefilter

PATTERNS = tuple((i, p) for i, d in enumerate(DETECTORS) for p in d.prefilter)
TEXTS = [
    b"",
    b"nothing to see here",
    b"card 4111 1111 1111 1111 and mail bob@example.com",
    b"id\t4111111111111111\tAlice\nid2\tnobody\tcall (415) 555-2671\n",
    b"password = 'hunter22' and SSN: 536904399",
    "caf\u00e9 \u2014 r\u00e9sum\u00e9 bob@example.com".encode(),
]


def _names(indexes: list[int]) -> list[str]:
    return [DETECTORS[i].name for i in indexes]


def test_hyperscan_is_the_engine_here() -> None:
    """The project installs hyperscan on x86-64 (pyproject.toml): it imports and runs here,
    and is the engine unless the environment asks for re (``make unit-pure`` does)."""
    assert _prefilter._hs is not None
    assert ("re" if os.environ.get(ENV) == "re" else "hyperscan") == ENGINE


@pytest.mark.parametrize("data", TEXTS)
def test_engines_agree(data: bytes) -> None:
    hs, rx = prefilter(PATTERNS, "hyperscan"), prefilter(PATTERNS, "re")
    assert hs.which(data) == rx.which(data)
    # Both locate every detector they let through (the spans differ: Hyperscan reports
    # each match end, re each leftmost match).
    assert {i for _, _, i in hs.where(data)} == set(hs.which(data))
    assert {i for _, _, i in rx.where(data)} == set(rx.which(data))


def test_which_and_where() -> None:
    pf = prefilter(PATTERNS)
    data = b"x 4111111111111111 y bob@example.com"
    assert _names(pf.which(data)) == ["card", "email"]
    card = data.index(b"4111")
    ends = sorted(e for _, e, i in pf.where(data) if DETECTORS[i].name == "card")
    # The card's pattern is 13 to 19 digits and the non-digit after them: one end, past the
    # space after the 16th digit (Hyperscan); re takes "no digit after" as a look-ahead:
    # the match ends after the 16th digit.
    assert ends == ([card + 17] if pf.engine == "hyperscan" else [card + 16])
    assert pf.which(b"no findings at all") == []
    assert Prefilter(()).which(data) == [] and Prefilter(()).where(data) == []


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="not available"):
        Prefilter(PATTERNS, engine="pcre")


def test_pickles_as_its_patterns() -> None:
    pf = prefilter(PATTERNS)
    copy = pickle.loads(pickle.dumps(pf))
    assert copy.patterns == pf.patterns and copy.engine == pf.engine
    for data in TEXTS:
        assert copy.which(data) == pf.which(data)


def test_two_threads_scan_at_once() -> None:
    """Hyperscan's scratch space is per thread: concurrent scans do not collide."""
    pf = prefilter(PATTERNS, "hyperscan")
    data = b"card 4111 1111 1111 1111 and mail bob@example.com " * 2000
    expected = pf.which(data)
    errors: list[BaseException] = []

    def scan() -> None:
        try:
            for _ in range(50):
                assert pf.which(data) == expected
                assert pf.where(data)
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=scan) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
