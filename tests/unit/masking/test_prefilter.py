"""The multi-pattern pre-filter: both engines give the same answers, it pickles, and it is
safe to use from two threads at once (the event loop and a writer thread)."""

from __future__ import annotations

import os
import pickle
import threading

import pytest

from appliance.masking import _prefilter
from appliance.masking._detectors import DETECTORS, Options
from appliance.masking._prefilter import ENGINE, ENV, Prefilter, database_key, prefilter
from appliance.masking._scan import Scanner
from tests.unit.masking.helpers import count_compiles

PATTERNS = tuple((i, p) for i, d in enumerate(DETECTORS) for p in d.prefilter)
# Without the phone detector's dozens of patterns: compiled in a tenth of a second, for the
# tests that compile again and again.
SMALL = tuple((i, p) for i, p in PATTERNS if DETECTORS[i].name != "phone")
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


def test_pickle_carries_the_compiled_databases(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger writer's process loads the databases the daemon compiled: unpickled in a
    process that has not made this pre-filter yet, it is loaded, not compiled."""
    pf = Prefilter(SMALL, engine="hyperscan")
    assert pf.loaded is False
    blob = pickle.dumps(pf)
    monkeypatch.setattr(_prefilter, "_MADE", {})  # as in a fresh process
    count_compiles(monkeypatch, refuse=True)
    copy = pickle.loads(blob)
    assert copy is not pf and copy.loaded is True
    for data in TEXTS:
        assert copy.which(data) == pf.which(data)
        assert sorted(copy.where(data)) == sorted(pf.where(data))
    # Made once per process: a second one is the same object.
    assert pickle.loads(blob) is copy


def test_a_scanner_pickles_with_its_prefilter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scanner (detectors, options, pre-filter) crosses to the ledger writer's process
    pickled: there it is made again with the databases it carried (compiled by mypyc, a
    class is made again by its constructor, and a frozen dataclass cannot be filled in
    field by field), and finds what it found here."""
    scanner = Scanner(DETECTORS, Options(("US", "GB")), window_from=64)
    blob = pickle.dumps(scanner)
    monkeypatch.setattr(_prefilter, "_MADE", {})  # as in a fresh process
    count_compiles(monkeypatch, refuse=scanner.prefilter.engine == "hyperscan")
    copy = pickle.loads(blob)
    assert copy is not scanner and copy.window_from == 64
    assert copy.options == Options(("US", "GB")) and copy.names == scanner.names
    assert copy.prefilter.patterns == scanner.prefilter.patterns
    assert [pickle.loads(pickle.dumps(d)) for d in DETECTORS] == list(DETECTORS)
    text = "call +44 20 7946 0958 or 415-555-2671, card 4111 1111 1111 1111, " * 3
    assert copy.find(text) == scanner.find(text) and len(scanner.find(text)) == 9


def test_databases_that_do_not_load_are_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Damaged bytes, bytes of other patterns, or databases Hyperscan here did not compile
    for (another version or CPU): compiled again, never an error or a weaker filter."""
    pf = Prefilter(SMALL, engine="hyperscan")
    good = pf.serialized()
    assert good is not None
    other = Prefilter(SMALL[:-1], engine="hyperscan").serialized()
    assert other is not None
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    for data in (b"", b"garbage", good[:-1], good + b"x", other, bytes(damaged)):
        made = Prefilter(SMALL, engine="hyperscan", compiled=data)
        assert made.loaded is False
        assert made.which(TEXTS[2]) == pf.which(TEXTS[2])
    assert Prefilter(SMALL, engine="hyperscan", compiled=good).loaded is True
    # Compiled for other CPU features (as the database says): not this host's.
    monkeypatch.setattr(_prefilter, "_TARGET", b"Version: 5.4.12 Features: AVX2 Mode: BLOCK")
    assert Prefilter(SMALL, engine="hyperscan", compiled=good).loaded is False


def test_the_key_covers_patterns_flags_version_and_target(monkeypatch: pytest.MonkeyPatch) -> None:
    key = database_key(SMALL)
    assert len(key) == 64 and key == database_key(list(SMALL))
    assert database_key(SMALL[:-1]) != key
    assert database_key(((1, SMALL[0][1]), *SMALL[1:])) != key  # another detector id
    monkeypatch.setattr(_prefilter, "_TARGET", b"Version: 5.4.12 Features: AVX2 Mode: BLOCK")
    assert database_key(SMALL) != key
    monkeypatch.undo()
    monkeypatch.setattr(_prefilter._hs, "__version__", "0.0.0")
    assert database_key(SMALL) != key
    monkeypatch.undo()
    monkeypatch.setattr(_prefilter._hs, "HS_FLAG_SINGLEMATCH", 0)
    assert database_key(SMALL) != key


class _Store:
    """A DatabaseStore in memory that counts its calls."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.loads = 0

    def load(self, key: str) -> bytes | None:
        self.loads += 1
        return self.data.get(key)

    def save(self, key: str, data: bytes) -> None:
        self.data[key] = data


def test_a_store_is_read_then_filled(monkeypatch: pytest.MonkeyPatch) -> None:
    store = _Store()
    first = Prefilter(SMALL, engine="hyperscan", store=store)
    assert first.loaded is False and list(store.data) == [database_key(SMALL)]
    count_compiles(monkeypatch, refuse=True)
    second = Prefilter(SMALL, engine="hyperscan", store=store)
    assert second.loaded is True and store.loads == 2
    for data in TEXTS:
        assert second.which(data) == first.which(data)
    # The re engine has nothing to keep.
    assert Prefilter(SMALL, engine="re", store=store).loaded is None and store.loads == 2


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


@pytest.mark.parametrize("engine", ["hyperscan", "re"])
def test_where_split_scans_two_halves_at_once_with_the_spans_of_one_scan(engine: str) -> None:
    """A long chunk of rows is scanned in two halves at once, cut where a row starts (the
    second on a helper thread): each row gets the spans one scan gives it, in offsets of
    the whole chunk; short data, or a cut at either end, is one scan."""
    pf = prefilter(PATTERNS, engine)
    rows = [line + b"\n" for text in TEXTS for line in text.split(b"\n") if line] * 800
    data = b"".join(rows)
    cut = data.index(b"\nid\t4111", len(data) // 2) + 1  # a row with a card starts here
    assert len(data) >= _prefilter.SPLIT_FROM
    whole = sorted(pf.where(data))
    _prefilter.stop_helper()  # as in a fresh process
    for short, at in ((data[:1000], 500), (data, 0), (data, len(data))):
        assert sorted(pf.where_split(short, at)) == sorted(pf.where(short))
    assert _prefilter._pool is None  # one scan each: no helper thread was needed
    assert sorted(pf.where_split(data, cut)) == whole
    pool = _prefilter._pool  # the second half went to the helper thread (two cores)
    assert (pool is not None) == (len(os.sched_getaffinity(0)) > 1)
    assert pool is None or len(pool._threads) == 1
