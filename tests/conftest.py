"""Shared pytest configuration: the repository root is importable as ``tests.*``; hypothesis
has no deadline."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hypothesis import settings  # noqa: E402

# Hypothesis's default deadline (200 ms an example) is a timed assertion: on the shared
# 2-core machine it fails tests for the machine's load, not for their code.
settings.register_profile("appliance", deadline=None)
settings.load_profile("appliance")
