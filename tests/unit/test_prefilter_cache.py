"""The pre-filter's database cache on disk: a hit loads, a miss compiles and saves, and any
file that is damaged, not this host's, not the appliance user's or writable by others is
compiled over, never trusted."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from appliance import prefilter_cache
from appliance.masking import MaskCounts, Masker, MaskingConfig, _prefilter
from appliance.masking._detectors import DETECTORS
from appliance.masking._prefilter import Prefilter, database_key
from appliance.prefilter_cache import MAGIC, PrefilterCache
from tests.unit.masking.helpers import count_compiles

# Without the phone patterns: a tenth of a second to compile.
PATTERNS = tuple((i, p) for i, d in enumerate(DETECTORS) if d.name != "phone" for p in d.prefilter)
KEY = database_key(PATTERNS)
TEXT = b"card 4111 1111 1111 1111 and mail bob@example.com, AKIAIOSFODNN7EXAMPLE"


@pytest.fixture
def cache(tmp_path: Path) -> PrefilterCache:
    return PrefilterCache(tmp_path / "cache")


def _file(cache: PrefilterCache, key: str = KEY) -> Path:
    return cache.directory / f"prefilter-{key}.hsdb"


def _make(cache: PrefilterCache) -> Prefilter:
    return Prefilter(PATTERNS, engine="hyperscan", store=cache)


def test_miss_compiles_and_saves_then_a_hit_loads(
    cache: PrefilterCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiles = count_compiles(monkeypatch)
    first = _make(cache)
    assert first.loaded is False and len(compiles) == 2
    # The directory is made private; the file is the user's, mode 0600, written whole.
    assert stat.S_IMODE(cache.directory.stat().st_mode) == 0o700
    st = _file(cache).stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert [p.name for p in cache.directory.iterdir()] == [_file(cache).name]
    second = _make(cache)
    assert second.loaded is True and len(compiles) == 2
    assert second.which(TEXT) == first.which(TEXT) != []
    assert sorted(second.where(TEXT)) == sorted(first.where(TEXT))


def test_another_pattern_set_is_another_file(cache: PrefilterCache) -> None:
    _make(cache)
    other = Prefilter(PATTERNS[:-1], engine="hyperscan", store=cache)
    assert other.loaded is False
    assert len(list(cache.directory.glob("prefilter-*.hsdb"))) == 2


def test_a_damaged_file_is_compiled_over(
    cache: PrefilterCache, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _make(cache)
    raw = bytearray(_file(cache).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    _file(cache).write_bytes(bytes(raw))
    compiles = count_compiles(monkeypatch)
    assert _make(cache).loaded is False and len(compiles) == 2
    assert "damaged" in caplog.text
    assert _make(cache).loaded is True  # replaced by a good one
    # Torn (cut short), or empty.
    for data in (bytes(raw[:1000]), b""):
        _file(cache).write_bytes(data)
        assert _make(cache).loaded is False
        assert _make(cache).loaded is True


def test_a_sound_file_of_other_databases_is_compiled_over(
    cache: PrefilterCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checksum holds but what it holds is not this key's databases (another key's
    file under this name, or bytes Hyperscan cannot load): compiled and replaced."""
    other = Prefilter(PATTERNS[:-1], engine="hyperscan").serialized()
    assert other is not None
    for data in (other, b"not a database"):
        cache.save(KEY, data)
        assert _make(cache).loaded is False
        assert _make(cache).loaded is True


def test_a_database_of_another_target_is_another_key(
    cache: PrefilterCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Baked on a host whose Hyperscan targets other CPU features: not loaded here."""
    _make(cache)
    monkeypatch.setattr(_prefilter, "_TARGET", b"Version: 5.4.12 Features: AVX2 Mode: BLOCK")
    assert _make(cache).loaded is False


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_file_others_may_write_is_refused(
    cache: PrefilterCache, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    _make(cache)
    _file(cache).chmod(mode)
    assert cache.load(KEY) is None
    assert "writable by others" in caplog.text
    assert _make(cache).loaded is False
    assert stat.S_IMODE(_file(cache).stat().st_mode) == 0o600  # replaced
    assert _make(cache).loaded is True


def test_a_file_of_another_user_is_refused(
    cache: PrefilterCache, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _make(cache)
    me = os.geteuid()
    # As the appliance's user were another uid than the file's owner (chown needs root).
    monkeypatch.setattr(prefilter_cache.os, "geteuid", lambda: me + 1)
    assert PrefilterCache(cache.directory).load(KEY) is None
    assert f"owned by uid {me}, not {me + 1}" in caplog.text


def test_links_and_odd_files_are_refused(
    cache: PrefilterCache, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _make(cache)
    good = tmp_path / "elsewhere.hsdb"
    _file(cache).rename(good)
    _file(cache).symlink_to(good)
    assert cache.load(KEY) is None and "refused" in caplog.text
    _file(cache).unlink()
    os.link(good, _file(cache))  # a second name for it
    assert cache.load(KEY) is None and "2 links" in caplog.text
    _file(cache).unlink()
    _file(cache).mkdir()
    assert cache.load(KEY) is None and "not a regular file" in caplog.text
    os.rmdir(_file(cache))
    os.mkfifo(_file(cache))
    assert cache.load(KEY) is None  # not read (it would block)


def test_a_directory_others_may_write_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o777)
    cache = PrefilterCache(directory)
    assert _make(cache).loaded is False
    assert list(directory.iterdir()) == []  # nothing saved there
    assert "directory" in caplog.text and "writable by others" in caplog.text
    assert cache.load(KEY) is None


def test_a_directory_that_cannot_be_written_costs_a_compile(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = PrefilterCache(tmp_path / "missing" / "cache")  # its parent does not exist
    assert _make(cache).loaded is False
    assert "refused" in caplog.text


def test_a_failed_write_leaves_nothing_behind(
    cache: PrefilterCache, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prefilter_cache.os, "replace", fail)
    assert _make(cache).loaded is False
    assert "cannot write" in caplog.text
    assert list(cache.directory.iterdir()) == []


def test_file_format(cache: PrefilterCache) -> None:
    cache.save(KEY, b"payload")
    raw = _file(cache).read_bytes()
    assert raw.startswith(MAGIC) and raw.endswith(b"payload") and len(raw) == 8 + 32 + 7
    assert cache.load(KEY) == b"payload"
    with pytest.raises(ValueError):
        cache.load("../" + KEY[3:])


def test_old_pattern_sets_are_pruned(cache: PrefilterCache) -> None:
    keys = [f"{n:064x}" for n in range(prefilter_cache.KEEP + 3)]
    for n, key in enumerate(keys):
        cache.save(key, b"x")
        os.utime(_file(cache, key), (n, n))
    kept = sorted(p.name for p in cache.directory.iterdir())
    assert kept == sorted(_file(cache, k).name for k in keys[-prefilter_cache.KEEP :])


def test_from_environment(tmp_path: Path) -> None:
    assert PrefilterCache.from_environment({}) is None
    assert PrefilterCache.from_environment({"CACHE_DIRECTORY": ""}) is None
    got = PrefilterCache.from_environment({"CACHE_DIRECTORY": f"{tmp_path}/a:{tmp_path}/b"})
    assert got is not None and got.directory == tmp_path / "a"


def test_a_masker_loads_from_the_cache(
    cache: PrefilterCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's Masker with the cache: compiled at the first start, loaded after (with
    the re engine, ``make unit-pure``: nothing to keep)."""
    monkeypatch.setattr(_prefilter, "_MADE", {})
    first = Masker(MaskingConfig(), hmac_key=b"k" * 32, prefilter_cache=cache)
    monkeypatch.setattr(_prefilter, "_MADE", {})  # the next start: a new process
    compiles = count_compiles(monkeypatch)
    again = Masker(MaskingConfig(), hmac_key=b"k" * 32, prefilter_cache=cache)
    if _prefilter.ENGINE == "re":
        assert first.prefilter_loaded is again.prefilter_loaded is None
        assert not cache.directory.exists()
    else:
        assert first.prefilter_loaded is False
        assert again.prefilter_loaded is True and compiles == []
    text = "card 4111 1111 1111 1111, call +1 415 555 2671"
    masked = again.for_target("t").mask_text(text, MaskCounts())
    assert masked == first.for_target("t").mask_text(text, MaskCounts()) != text
