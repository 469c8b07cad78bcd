"""The garbage collector's settings while a process serves (appliance/collector.py)."""

from __future__ import annotations

import gc
import weakref

import pytest

from appliance import collector


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_serving_freezes_what_exists_and_collects_the_young_less_often() -> None:
    before = gc.get_threshold()
    with collector.serving():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (collector.YOUNG, *before[1:])
        # What the process allocates while it serves is still collected.
        node = _Node()
        gone = weakref.ref(node)
        del node
        gc.collect()
        assert gone() is None
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_cycle_made_garbage_while_frozen_is_collected_after_serving() -> None:
    node = _Node()
    gone = weakref.ref(node)
    with collector.serving():
        del node  # frozen with the rest: the collector does not look at it now
        gc.collect()
        assert gone() is not None
    gc.collect()
    assert gone() is None


def test_the_settings_are_undone_when_serving_ends_with_an_error() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), collector.serving():
        raise RuntimeError("stopped")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
