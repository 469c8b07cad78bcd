"""The cyclic garbage collector while a long-running process serves (issue 19).

What: :func:`serving` collects once, freezes what the process holds at that point (its
modules, configuration, masker and pre-filter databases: ``gc.freeze``) and makes the
youngest generation wait for :data:`YOUNG` net allocations of container objects instead of
CPython's 700; on leaving it undoes both, so a process that serves again (a test running
the daemon in-process) collects as before.

Why: a collection of the oldest generation walks every tracked object. In the daemon that
was every object its imports made (about 60,000), 17 ms each time: a pause for every
session (``tests/bench/pgcore.py`` saw 3 such collections in 60,000 select-only
transactions), and with the young collections 1.4 µs of CPU per transaction in the session
core, against 0.3 µs with both settings. Frozen objects are never walked again; what the
sessions allocate is collected as before, in larger batches.

Used by the daemon (:mod:`appliance.daemon`), each proxy worker (:mod:`appliance.proxy.
workers`) and the ledger writer process (:mod:`appliance.ledger.remote`) once they start
serving.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["YOUNG", "serving"]

YOUNG = 10_000  # net container allocations between collections of the youngest generation


@contextlib.contextmanager
def serving() -> Iterator[None]:
    """While the process serves: what it holds now frozen, young collections less often."""
    gc.collect()
    gc.freeze()
    threshold = gc.get_threshold()
    gc.set_threshold(YOUNG, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
