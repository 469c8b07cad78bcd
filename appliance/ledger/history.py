"""The history rules of a ledger directory: what a crash can leave behind, and what only
tampering can. Their one home (issue 14): the writer's recovery on open, ``ledger fsck``
(recovery that changes nothing) and ``ledger verify`` all judge with these functions, so
they cannot disagree (issue 12: a torn ``checkpoints.log`` was a crash to the writer and
fsck, tampering to verify).

Why these rules (design invariant 4): the writer fsyncs ``entries.log`` and the blobs before
it signs a checkpoint, then appends the signed note to ``checkpoints.log`` and fsyncs it,
then replaces ``checkpoint`` atomically. So an interrupted writer can leave only:

- ``entries.log``: anything after the latest signed size (records never fsynced: cut short,
  a bad checksum, garbage), a *torn tail*;
- ``checkpoints.log``: its last record cut short or failing its checksum, at the very end of
  the file (the append that was interrupted);
- ``checkpoint``: missing, or the history's one-before-last note (replaced after the append).

Anything else is a :class:`Finding` (tampering, exit 1). What a crash left is a
:class:`Leftover`: a warning, repaired by the writer when it next opens the ledger.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from appliance.ledger._framing import Damage
from appliance.ledger.checkpoint import Checkpoint
from appliance.ledger.store import CHECKPOINT, ENTRIES, HISTORY


@dataclass(frozen=True)
class Finding:
    """Tampering or corruption inside signed history. ``kind`` groups findings in reports;
    ``message`` names the record, entry or checkpoint and says why."""

    kind: str
    message: str


@dataclass(frozen=True)
class Leftover:
    """What an interrupted write left behind; the writer repairs it on open."""

    message: str


def entries_damage(damage: Damage, entry: int, signed: int) -> Finding | Leftover:
    """Damage in ``entries.log`` at record ``entry``, with ``signed`` entries under the
    latest checkpoint: a torn tail after them, tampering inside them."""
    where = f"{ENTRIES}: {damage.reason} at byte {damage.offset} (entry {entry})"
    if entry < signed:
        return Finding("record", f"{where}, inside signed history ({signed} entries signed)")
    return Leftover(f"{where}, after the latest checkpoint: a torn tail left by a crash")


def entries_short(entries: int, label: str, size: int) -> Finding | None:
    """A checkpoint (``label``) of ``size`` entries over a log of ``entries`` readable ones."""
    if size <= entries:
        return None
    return Finding(
        "size",
        f"{label} claims {size} entries but {ENTRIES} holds only {entries} readable entries "
        "(entries deleted or the log truncated)",
    )


def history_damage(damage: Damage) -> Finding | Leftover:
    """Damage in ``checkpoints.log``: its interrupted last append, or tampering."""
    where = f"{HISTORY}: {damage.reason} at byte {damage.offset}"
    if damage.at_eof:
        return Leftover(f"{where}, after the last complete checkpoint: a torn tail left by a crash")
    return Finding("history", f"{where}, inside the signed checkpoint history")


def checkpoint_file(
    current: str | None, notes: Sequence[str], sizes: Sequence[int | None]
) -> Finding | Leftover | None:
    """The ``checkpoint`` file (``current``, None if missing) against the history's
    ``notes`` (and their sizes, None where unreadable)."""
    if current is None:
        return (
            Leftover(f"{CHECKPOINT} file is missing (rewritten from the history)")
            if notes
            else None
        )
    if current not in notes:
        return Finding("history", f"{CHECKPOINT} file holds a checkpoint missing from {HISTORY}")
    if current == notes[-1]:
        return None
    if len(notes) >= 2 and current == notes[-2]:
        return Leftover(
            f"{CHECKPOINT} file holds the one-before-last checkpoint of the history "
            "(a crash before it was replaced; rewritten from the history)"
        )
    i = notes.index(current)
    return Finding(
        "rollback",
        f"{CHECKPOINT} file holds the checkpoint of size {sizes[i]} but the history reached "
        f"size {sizes[-1]}: rolled back",
    )


def growth(history: Sequence[tuple[str, Checkpoint]]) -> list[Finding]:
    """The history as one line of growth: one origin, sizes never going down."""
    out = []
    for (la, a), (lb, b) in itertools.pairwise(history):
        if b.origin != a.origin:
            out.append(Finding("origin", f"{lb} has origin {b.origin!r}, {la} {a.origin!r}"))
        if b.size < a.size:
            out.append(Finding("rollback", f"{lb} (size {b.size}) rolls back {la} (size {a.size})"))
    return out


def forks(by_size: Mapping[int, Sequence[tuple[str, Checkpoint]]]) -> list[Finding]:
    """Two roots signed for one tree size."""
    out = []
    for size, group in by_size.items():
        if len({cp.root for _, cp in group}) > 1:
            labels = ", ".join(label for label, _ in group)
            out.append(Finding("fork", f"fork: {labels} sign different roots for tree size {size}"))
    return out


def origin_mismatch(label: str, cp: Checkpoint, origin: str | None) -> Finding | None:
    """A checkpoint for another origin than the entries'."""
    if origin is None or cp.origin == origin:
        return None
    return Finding(
        "origin",
        f"{label} (size {cp.size}) is for origin {cp.origin!r}, but this ledger's entries are "
        f"of origin {origin!r}",
    )


def root_mismatch(label: str, size: int, previous: int) -> Finding:
    """The entries up to ``size`` do not hash to the root ``label`` signed."""
    return Finding(
        "root",
        f"{label} (size {size}): the entries do not hash to its root; an entry in "
        f"{previous}..{size - 1} was changed, inserted or removed, or the checkpoint was forged",
    )


def blob(seq: int, what: str, problem: str) -> Finding:
    """A blob that entry ``seq`` references is missing or changed (``problem``).

    Always a finding, even for an entry not signed yet: the writer signs the intact entries
    it finds on open, so a blob lost with them would be missing under a signature later."""
    return Finding("blob", f"entry {seq}: {what}: {problem}")
