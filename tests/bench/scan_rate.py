"""Run by bench_masking.py in a fresh process: mask_text over the texts of a JSON file, every
detector on, and print the MB/s (best of ``rounds``). Uses only the public masking API, so
an older checkout's ``appliance`` (PYTHONPATH) runs it as well."""

from __future__ import annotations

import json
import sys
import time

from appliance.masking import DETECTOR_NAMES, MaskCounts, Masker, MaskingConfig
from appliance.masking._config import DetectorSetting
from appliance.masking._styles import Style


def main() -> None:
    path, rounds = sys.argv[1], int(sys.argv[2])
    with open(path, encoding="utf-8") as f:
        sets: dict[str, list[str]] = json.load(f)
    config = MaskingConfig(detectors={n: DetectorSetting(Style.REDACT) for n in DETECTOR_NAMES})
    tm = Masker(config, hmac_key=b"k" * 32).for_target("bench")
    out = {}
    for name, texts in sets.items():
        size = sum(len(t.encode()) for t in texts)
        best = float("inf")
        masks = 0
        for _ in range(rounds):
            counts = MaskCounts()
            t0 = time.process_time()
            for text in texts:
                tm.mask_text(text, counts)
            best = min(best, time.process_time() - t0)
            masks = counts.total()
        out[name] = {"mb_s": size / best / 1e6, "bytes": size, "masks": masks}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
