"""A whole blob handed over with the entry that references it; its home is here, not in
:mod:`appliance.ledger.api` (which re-exports it), because one is made per recorded result
on the hot path: this module is compiled (``appliance._pure.HOT_MODULES``), so making one
costs a native allocation, where a dataclass's ``__init__`` would run as Python.
"""

from __future__ import annotations

from typing import Any, Final


class PendingBlob:
    """A whole blob handed over with the entry that references it (``append(blobs=...)``),
    for small results: no sink to open, write and close first. ``transform`` as in
    ``open_blob``. Immutable."""

    def __init__(self, transform: Any, data: bytes) -> None:
        self.transform: Final = transform
        self.data: Final = data

    def __repr__(self) -> str:
        return f"PendingBlob(transform={self.transform!r}, data=<{len(self.data)} bytes>)"
