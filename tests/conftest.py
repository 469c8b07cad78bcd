"""Shared pytest configuration: the repository root is importable as ``tests.*``; hypothesis
has no deadline; a test leaves no pre-filter helper thread behind."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hypothesis import settings  # noqa: E402

# Hypothesis's default deadline (200 ms an example) is a timed assertion: on the shared
# 2-core machine it fails tests for the machine's load, not for their code.
settings.register_profile("appliance", deadline=None)
settings.load_profile("appliance")


@pytest.fixture(autouse=True)
def _no_prefilter_helper_left() -> Iterator[None]:
    """Stop the pre-filter's helper thread a test made (a long scan in two halves): a later
    test may need the process single-threaded (``verify`` forks its workers only then)."""
    yield
    prefilter = sys.modules.get("appliance.masking._prefilter")
    if prefilter is not None and prefilter._pool is not None:
        prefilter.stop_helper()
