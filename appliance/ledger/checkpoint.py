"""C2SP transparency-log checkpoints (c2sp.org/tlog-checkpoint@v1.0.0) in signed notes.

A checkpoint's note text is exactly::

    <origin>\\n<tree size, decimal, no leading zeros>\\n<base64 root hash>\\n[extension lines\\n]

It is signed as a C2SP signed note (:mod:`appliance.signing.note`). This ledger writes no
extension lines (the spec discourages them) but accepts non-empty ones when reading.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from appliance.ledger.merkle import HASH_SIZE
from appliance.signing.keys import SigningKey, VerifierKey
from appliance.signing.note import MalformedNote, open_note, sign_note

_SIZE_RE = re.compile(r"0|[1-9][0-9]*")


class MalformedCheckpoint(MalformedNote):
    """The note's text is not a tlog-checkpoint body."""


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: origin, size and root. ``note`` is the signed note it came from, if any."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()
    note: str | None = field(default=None, compare=False)

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return "\n".join([*lines, *self.extensions]) + "\n"

    def describe(self) -> str:
        return f"size {self.size}, root {base64.b64encode(self.root).decode()}"


def parse_checkpoint_text(text: str) -> Checkpoint:
    """Parse a checkpoint body; raise :class:`MalformedCheckpoint` naming the bad line."""
    if not text.endswith("\n"):
        raise MalformedCheckpoint("checkpoint text must end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedCheckpoint("checkpoint text has fewer than three lines")
    origin, size_s, root_s, *ext = lines
    if not origin:
        raise MalformedCheckpoint("checkpoint origin line is empty")
    if not _SIZE_RE.fullmatch(size_s) or len(size_s) > 20:
        raise MalformedCheckpoint(f"checkpoint size line is not a decimal number: {size_s!r}")
    try:
        root = base64.b64decode(root_s, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedCheckpoint("checkpoint root line is not base64") from None
    if len(root) != HASH_SIZE:
        raise MalformedCheckpoint(f"checkpoint root is {len(root)} bytes, not {HASH_SIZE}")
    if any(not line for line in ext):
        raise MalformedCheckpoint("checkpoint extension lines must not be empty")
    return Checkpoint(origin, int(size_s), root, tuple(ext))


def sign_checkpoint(cp: Checkpoint, key: SigningKey) -> str:
    """The signed note of ``cp``."""
    return sign_note(cp.text(), [key])


def open_checkpoint(
    note: str | bytes, verifiers: Sequence[VerifierKey], *, origin: str | None = None
) -> Checkpoint:
    """Verify a signed checkpoint and return it (with ``note`` set).

    Raises MalformedNote/MalformedCheckpoint, InvalidSignature (bad or no known signature),
    or :class:`WrongOrigin` if ``origin`` is given and differs.
    """
    text, _ = open_note(note, verifiers)
    cp = parse_checkpoint_text(text)
    if origin is not None and cp.origin != origin:
        raise WrongOrigin(f"checkpoint is for origin {cp.origin!r}, expected {origin!r}")
    note_s = note.decode() if isinstance(note, bytes) else note
    return Checkpoint(cp.origin, cp.size, cp.root, cp.extensions, note_s)


class WrongOrigin(MalformedCheckpoint):
    """The checkpoint belongs to another log."""

    exit_code = 1
