"""What the proxy needs from a ledger writer, whichever runs it.

:class:`~appliance.ledger.LedgerWriter` writes from a thread of the caller's process;
:class:`~appliance.ledger.remote.RemoteLedger` hands the same calls to a writer process (no
GIL shared with the event loop). Both satisfy :class:`Ledger`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from appliance.ledger.pending import PendingBlob


class Blob(Protocol):
    """A blob being written; referenced from an entry through ``append(blobs=...)``."""

    @property
    def closed(self) -> bool: ...

    def write(self, chunk: bytes) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class Ledger(Protocol):
    def append(
        self,
        type: str,
        *,
        session: str | None = None,
        identity: Mapping[str, Any] | None = None,
        account: str | None = None,
        target: str | None = None,
        data: Mapping[str, Any],
        blobs: Mapping[str, Any] | None = None,
        trusted: bool = False,
    ) -> None: ...

    def open_blob(self, transform: Callable[[bytes], bytes] | Any | None = None) -> Blob: ...

    def flush(self, timeout: float | None = None) -> None: ...

    async def sync(self) -> None:
        """Return once everything appended so far is fsynced (signed or not); raise
        LedgerUnavailable if it cannot be (the write-ahead of a statement)."""

    def hurry(self) -> None:
        """Hand what is queued to the writer soon, not with the next batch: a write-ahead
        sync is coming (a transaction block changed something). Nothing to do where entries
        are not batched."""

    def close(self) -> None: ...

    @property
    def failed(self) -> BaseException | None: ...


__all__ = ["Blob", "Ledger", "PendingBlob"]
