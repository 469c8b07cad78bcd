"""Maskers for the masking tests: every detector on, or the default config."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.masking import DETECTOR_NAMES, Masker, MaskingConfig, Style, TargetMasker, _prefilter
from appliance.masking._config import DetectorSetting

KEY = b"k" * 32


def all_on(style: Style = Style.REDACT, **overrides: DetectorSetting) -> MaskingConfig:
    """Every detector on (ipv4/ipv6 included) in ``style``, overrides per detector."""
    detectors = {name: DetectorSetting(style) for name in DETECTOR_NAMES}
    detectors.update(overrides)
    return MaskingConfig(detectors=detectors, key=None)


def masker(config: MaskingConfig | None = None, target: str = "orders-db") -> TargetMasker:
    return Masker(config or all_on(), hmac_key=KEY).for_target(target)


def found(tm: TargetMasker, text: str) -> list[tuple[str, str]]:
    """(detector, matched text) for each finding, result-value detectors."""
    return [(d, text[a:b]) for d, a, b in tm.detect(text, results=True)]


class _CountedHyperscan:
    """The hyperscan module, with every database made (one per compile) counted, or refused."""

    def __init__(self, real: Any, calls: list[object], refuse: bool) -> None:
        self._real, self._calls, self._refuse = real, calls, refuse

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def Database(self, *args: Any, **kwargs: Any) -> Any:
        if self._refuse:
            raise AssertionError("a pre-filter database was compiled")
        self._calls.append(kwargs)
        return self._real.Database(*args, **kwargs)


def count_compiles(monkeypatch: pytest.MonkeyPatch, *, refuse: bool = False) -> list[object]:
    """The pre-filter databases compiled from now on (two per pre-filter), or with
    ``refuse`` an AssertionError at the first. The module's hyperscan is replaced, not its
    ``_compile``: the compiled build (mypyc) calls its own functions directly, but reads
    module globals at each use."""
    calls: list[object] = []
    monkeypatch.setattr(_prefilter, "_hs", _CountedHyperscan(_prefilter._hs, calls, refuse))
    return calls
