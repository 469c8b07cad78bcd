"""What a verifier remembers between runs: the largest verified checkpoint of each log.

``appliance ledger verify --source s3://... --state DIR`` keeps one file per log,
``DIR/<log>.checkpoint`` (``<log>`` as in :mod:`.layout`), holding the signed note of the
largest checkpoint it verified. The next run must find that checkpoint's tree inside the log
(same root at that size), so a log rolled back to an older, self-consistent state, or forked,
is refused although every signature in the bucket checks out: nothing in the bucket can
vouch for what the bucket no longer holds. The files are plain signed notes an auditor can
read and keep.
"""

from __future__ import annotations

import os
from pathlib import Path

from appliance.ledger.checkpoint import Checkpoint
from appliance.ledger.errors import LedgerError
from appliance.ledger.fleet import layout
from appliance.ledger.store import unverified_checkpoint
from appliance.signing.note import MalformedNote

_SUFFIX = ".checkpoint"


class StateDir:
    """The pins of one verifier (see the module docstring). Created 0700 if missing."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot use state directory {self.path}: {exc}") from None

    def pinned(self, origin: str) -> tuple[str, Checkpoint] | None:
        """The pinned note of ``origin`` and its (unverified) checkpoint, or None. Raises
        LedgerError if the file is unreadable or malformed (it is the verifier's own)."""
        path = self.path / (layout.log_name(origin) + _SUFFIX)
        try:
            note = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerError(f"cannot read {path}: {exc}") from None
        try:
            return note, unverified_checkpoint(note)
        except MalformedNote as exc:
            raise LedgerError(f"{path} is not a checkpoint note: {exc}") from None

    def pin(self, origin: str, note: str) -> None:
        """Remember ``note`` as the largest verified checkpoint of ``origin``."""
        path = self.path / (layout.log_name(origin) + _SUFFIX)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(note)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def origins(self) -> list[str]:
        """Every origin with a pin."""
        out = []
        for p in sorted(self.path.glob("*" + _SUFFIX)):
            try:
                out.append(layout.origin_of(p.name[: -len(_SUFFIX)]))
            except LedgerError:
                continue
        return out
