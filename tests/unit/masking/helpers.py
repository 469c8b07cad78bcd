"""Maskers for the masking tests: every detector on, or the default config."""

from __future__ import annotations

from appliance.masking import DETECTOR_NAMES, Masker, MaskingConfig, Style, TargetMasker
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
