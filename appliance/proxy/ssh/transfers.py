"""File transfers over SSH (SFTP, legacy SCP), as they pass: path, size, SHA-256, and the
start of the content for a masked copy.

Where this sits: the SFTP relay (:mod:`.sftp`) and the SCP watcher (:mod:`.core`) feed a
:class:`Transfer` each piece of a file as it is forwarded; when the file is closed the
session records ``ssh.transfer`` with :meth:`Transfer.record` and, when the start of the
file is text, a blob of it masked by the ledger writer (:class:`MaskedText`). The hash
covers the content in order from offset 0; a transfer written or read out of order (or
from the middle) has no hash and says so (``in_order: false``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from appliance.masking import MaskCounts, TargetMasker

__all__ = ["DEFAULT_CONTENT_CAP", "MaskedText", "Transfer"]

DEFAULT_CONTENT_CAP = 64 * 1024


class Transfer:
    """One file moving one way (``direction``: ``upload`` to the target, ``download`` to
    the job)."""

    def __init__(self, protocol: str, direction: str, path: str, *, cap: int, n: int) -> None:
        self.protocol = protocol
        self.direction = direction
        self.path = path
        self.cap = cap
        self.n = n  # the statement (operation) that opened it
        self.size = 0
        self.moved = 0
        self.in_order = True
        self._next = 0
        self._hash = hashlib.sha256()
        self._head = bytearray()

    def add(self, offset: int, data: bytes) -> None:
        """``data`` at ``offset`` of the file passed."""
        if not data:
            return
        self.moved += len(data)
        self.size = max(self.size, offset + len(data))
        if self.in_order and offset == self._next:
            self._hash.update(data)
            self._next += len(data)
            room = self.cap - len(self._head)
            if room > 0:
                self._head += data[:room]
        else:
            self.in_order = False

    def record(self, *, complete: bool) -> dict[str, Any]:
        """The ``ssh.transfer`` entry's data (without the content blob)."""
        record: dict[str, Any] = {
            "n": self.n,
            "protocol": self.protocol,
            "direction": self.direction,
            "path": self.path,
            "size": self.size,
            "bytes": self.moved,
            "in_order": self.in_order,
            "complete": complete,
        }
        if self.in_order:
            record["sha256"] = self._hash.hexdigest()
        return record

    def content(self) -> bytes | None:
        """The first ``cap`` bytes when they are text (UTF-8, a character cut at the cap
        allowed), else None: binary content is never stored."""
        head = bytes(self._head)
        if not head or b"\0" in head:
            return None
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 3:
                return None
        return head

    @property
    def truncated(self) -> bool:
        return self.size > len(self._head)


class MaskText:
    """Masks one blob of text (a transfer's content) in the ledger writer."""

    def __init__(self, masker: TargetMasker | None, counts: MaskCounts) -> None:
        self.masker = masker
        self.counts = counts

    def __call__(self, chunk: bytes) -> bytes:
        text = chunk.decode("utf-8", "replace")
        if self.masker is not None:
            text = self.masker.mask_text(text, self.counts)
        return text.encode()


class MaskedText:
    """The :class:`~appliance.ledger.writer.TransformFactory` of transfer content blobs
    (picklable: a masker and nothing else)."""

    def __init__(self, masker: TargetMasker | None) -> None:
        self.masker = masker

    def new(self) -> tuple[Callable[[bytes], bytes], Callable[[], Mapping[str, Any]]]:
        counts = MaskCounts()
        return MaskText(
            self.masker, counts
        ), lambda: {"masking": counts.as_dict()} if counts else {}
