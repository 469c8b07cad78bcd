"""Crash recovery of a ledger directory, run by the writer on open and by ``ledger fsck``.

Invariant 4 of the design: a signed checkpoint covers entries only after they were fsynced, so
after any crash every entry below the latest checkpoint's size must be present and hash to
its root. What a crash may leave and what is tampering is decided by the rules of
:mod:`appliance.ledger.history` (shared with ``ledger verify``). Recovery:

1. reads the checkpoint history (a torn last record is a crash's leftover);
2. checks the history is a single line of growth: one origin, sizes never decreasing, never
   two roots for one size; and the ``checkpoint`` file against it;
3. rebuilds the Merkle tree from ``entries.log``: every record below the latest signed size
   must be intact, in sequence, and every checkpoint's root must match; the first damaged
   record at or after that size starts the torn tail;
4. checks each checkpoint's signature with the trusted keys (the writer's own key and keys the
   log itself published);
5. with ``check_blobs`` (``ledger fsck``): hashes every blob an entry references;
6. only if no tampering was found: copies each torn tail to ``recovered/`` and truncates it,
   and rewrites ``checkpoint`` if a crash left it missing or behind the history.

Tampering raises :class:`~appliance.ledger.errors.TamperError` listing every finding, and
nothing is modified. With ``dry_run`` nothing is ever modified; the report says what would be.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from appliance.ledger import history, journal
from appliance.ledger._framing import ENTRY_MAGIC, Damage, FrameScanner, MappedFile
from appliance.ledger.checkpoint import Checkpoint, open_checkpoint
from appliance.ledger.entries import (
    KEY_PUBLISHED,
    MalformedEntry,
    blob_refs,
    may_have_blob_refs,
    parse_entry,
)
from appliance.ledger.errors import LedgerError, TamperError
from appliance.ledger.merkle import CompactRange
from appliance.ledger.store import (
    CHECKPOINT,
    ENTRIES,
    HISTORY,
    RECOVERED,
    atomic_write,
    check_blob,
    fsync_dir,
    read_history,
    unverified_checkpoint,
)
from appliance.signing.keys import InvalidSignature, KeyFormatError, VerifierKey
from appliance.signing.note import MalformedNote

_KEY_PUBLISHED_MARK = b'"type":"' + KEY_PUBLISHED.encode() + b'"'


@dataclass(frozen=True)
class TornTail:
    """Bytes at the end of a file that no checkpoint covers and that are not a whole record."""

    file: str
    offset: int
    length: int
    reason: str
    saved_to: Path | None


@dataclass(frozen=True)
class LastEntry:
    """The last intact entry of a ledger when it was opened: how the previous run ended
    (``appliance.stop`` if it stopped cleanly; anything else if it was killed or crashed)."""

    seq: int
    type: str | None
    ts: str | None

    def to_dict(self) -> dict[str, object]:
        return {"seq": self.seq, "type": self.type, "ts": self.ts}


@dataclass
class RecoveryReport:
    """What recovery found (and, unless ``dry_run``, did)."""

    directory: Path
    dry_run: bool
    origin: str | None = None
    entries: int = 0
    checkpoints: int = 0
    latest: Checkpoint | None = None
    compact: CompactRange = field(default_factory=CompactRange)
    last_ts: str | None = None
    last_type: str | None = None
    published: list[str] = field(default_factory=list)
    blobs: int = 0  # blobs checked (check_blobs only)
    torn: list[TornTail] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    @property
    def signed_size(self) -> int:
        return self.latest.size if self.latest else 0

    @property
    def last(self) -> LastEntry | None:
        """The last intact entry (after any torn tail was cut), None for an empty ledger."""
        if self.entries == 0:
            return None
        return LastEntry(self.entries - 1, self.last_type, self.last_ts)

    def summary(self) -> list[str]:
        lines = [
            f"{self.entries} entries, {self.checkpoints} checkpoints, "
            f"latest signed size {self.signed_size}, {self.blobs} blobs checked",
        ]
        if self.entries > self.signed_size:
            lines.append(
                f"{self.entries - self.signed_size} intact entries after the latest checkpoint "
                "(the writer signs them on open)"
            )
        lines.extend(self.actions)
        return lines


def recover(
    directory: Path,
    *,
    trusted: Sequence[VerifierKey] = (),
    origin: str | None = None,
    dry_run: bool = False,
    check_blobs: bool = False,
) -> RecoveryReport:
    """Check ``directory`` and repair a torn tail; see the module docstring.

    ``origin``, if given, is the origin the caller will write as: a ledger of another origin
    raises LedgerError. Raises TamperError on damage inside signed history (and, with
    ``check_blobs``, on a missing or changed blob).
    """
    report = RecoveryReport(directory, dry_run)
    findings: list[str] = []
    would = "would " if dry_run else ""
    held = journal.notice(directory)  # the writer replays what it can before it recovers
    if held is not None:
        report.actions.append(held)

    # 1-2. checkpoint history ------------------------------------------------------------
    notes, hscan = read_history(directory)
    history_tail = None
    if hscan.damage is not None:
        verdict = history.history_damage(hscan.damage)
        if isinstance(verdict, history.Finding):
            findings.append(verdict.message)
        else:
            history_tail = hscan.damage
    labelled: list[tuple[str, Checkpoint]] = []
    sizes: list[int | None] = []
    for i, note in enumerate(notes):
        try:
            labelled.append((f"checkpoint #{i}", unverified_checkpoint(note)))
            sizes.append(labelled[-1][1].size)
        except MalformedNote as exc:
            findings.append(f"checkpoint #{i} in {HISTORY} is malformed: {exc}")
            sizes.append(None)
    cps = [cp for _, cp in labelled]
    by_size: dict[int, list[tuple[str, Checkpoint]]] = {}
    for label, cp in labelled:
        by_size.setdefault(cp.size, []).append((label, cp))
    findings += [f.message for f in history.growth(labelled) + history.forks(by_size)]
    if cps:
        report.latest = max(cps, key=lambda c: c.size)
        report.origin = cps[-1].origin
        if origin is not None and report.origin != origin:
            raise LedgerError(
                f"{directory} is the ledger of origin {report.origin!r}, not {origin!r}"
            )
    report.checkpoints = len(cps)

    # the `checkpoint` file must be one of the history's notes
    cp_path = directory / CHECKPOINT
    current: str | None
    try:
        current = cp_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    except (OSError, UnicodeDecodeError) as exc:
        current = None
        findings.append(f"{CHECKPOINT} cannot be read: {exc}")
    rewrite_checkpoint = False
    file_verdict = history.checkpoint_file(current, notes, sizes)
    if isinstance(file_verdict, history.Finding):
        findings.append(file_verdict.message)
    elif file_verdict is not None:
        rewrite_checkpoint = True
        report.actions.append(f"{would}rewrite {CHECKPOINT} from the latest history record")

    # 3. rebuild the tree from the entries ---------------------------------------------------
    signed = report.signed_size
    cr = report.compact
    published: list[str] = []
    last_payload: bytes | None = None
    first_payload: bytes | None = None
    entries_tail: Damage | None = None
    blobs: dict[str, tuple[int, str]] = {}
    with MappedFile(directory / ENTRIES) as mf:
        scanner = FrameScanner(mf.data, ENTRY_MAGIC)
        n = 0
        previous = 0
        sha256 = hashlib.sha256
        for frame in scanner:
            if frame.seq != n:
                entries_tail = Damage(frame.offset, f"record {n} says seq {frame.seq}", False)
                break
            payload = frame.payload
            cr.append(sha256(b"\x00" + payload).digest())
            if check_blobs and may_have_blob_refs(payload):
                findings += _blob_refs(n, payload, blobs)
            n += 1
            if n in by_size:
                root = cr.root()
                for label, cp in by_size[n]:
                    if cp.root != root:
                        findings.append(history.root_mismatch(label, n, previous).message)
                previous = n
            if _KEY_PUBLISHED_MARK in payload:
                vkey = _published_vkey(payload)
                if vkey and vkey not in published:
                    published.append(vkey)
            last_payload = payload
            if first_payload is None:
                first_payload = payload
        else:
            entries_tail = scanner.damage
        report.entries = n
        if entries_tail is not None:
            verdict = history.entries_damage(entries_tail, n, signed)
            if isinstance(verdict, history.Finding):
                findings.append(verdict.message)
        elif (short := history.entries_short(n, "the latest checkpoint", signed)) is not None:
            findings.append(short.message)
        tail_bytes = b""
        if entries_tail is not None and n >= signed:
            tail_bytes = bytes(mf.data[entries_tail.offset :])
    report.published = published
    if report.origin is None and first_payload is not None:  # entries, but nothing signed yet
        try:
            report.origin = orjson.loads(first_payload).get("origin")
        except (orjson.JSONDecodeError, AttributeError):
            report.origin = None
        if origin is not None and report.origin is not None and report.origin != origin:
            raise LedgerError(
                f"{directory} holds entries of origin {report.origin!r}, not {origin!r}"
            )
    if last_payload is not None:
        try:
            last = orjson.loads(last_payload)
            report.last_ts, report.last_type = last.get("ts"), last.get("type")
        except (orjson.JSONDecodeError, AttributeError):
            report.last_ts = report.last_type = None

    # 4. signatures ------------------------------------------------------------------------
    verifiers = list(trusted)
    for vkey in published:
        try:
            verifiers.append(VerifierKey.from_vkey(vkey))
        except KeyFormatError:
            continue
    for i, note in enumerate(notes):
        try:
            open_checkpoint(note, verifiers)
        except (InvalidSignature, MalformedNote) as exc:
            findings.append(f"checkpoint #{i} is not validly signed by a trusted key: {exc}")

    # 5. blobs -----------------------------------------------------------------------------
    for sha, (seq, what) in sorted(blobs.items(), key=lambda kv: kv[1]):
        problem, _ = check_blob(directory, sha)
        if problem is not None:
            findings.append(history.blob(seq, f"{what} blob {sha}", problem).message)
    report.blobs = len(blobs)

    if findings:
        raise TamperError(
            f"{directory}: {findings[0]}"
            + (f" (+{len(findings) - 1} more)" if findings[1:] else ""),
            findings,
        )

    # 6. repair ----------------------------------------------------------------------------
    if history_tail is not None:
        with MappedFile(directory / HISTORY) as mf:
            data = bytes(mf.data[history_tail.offset :])
        report.torn.append(
            _cut(directory, HISTORY, history_tail.offset, data, history_tail.reason, dry_run)
        )
    if entries_tail is not None:
        report.torn.append(
            _cut(directory, ENTRIES, entries_tail.offset, tail_bytes, entries_tail.reason, dry_run)
        )
    for t in report.torn:
        where = f", copied to {t.saved_to}" if t.saved_to else ""
        report.actions.append(
            f"{would}truncate {t.file} at byte {t.offset}: {t.length} bytes of torn tail "
            f"({t.reason}){where}"
        )
    if rewrite_checkpoint and not dry_run:
        atomic_write(cp_path, notes[-1].encode())
    return report


def _blob_refs(seq: int, payload: bytes, blobs: dict[str, tuple[int, str]]) -> list[str]:
    """Note the stored blobs entry ``seq`` references in ``blobs``; return findings about
    its inline ones (checked here, they have no file)."""
    try:
        obj = parse_entry(payload)
    except MalformedEntry:
        return []  # not for the blob check to say: verify reports malformed entries
    out = []
    for ref in blob_refs(obj["data"]):
        if ref.inline is None:
            blobs.setdefault(ref.sha256, (seq, ref.path))
        elif not ref.inline_ok():
            out.append(f"entry {seq}: inline blob {ref.path} does not match its sha256/size")
    return out


def _published_vkey(payload: bytes) -> str | None:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict or obj.get("type") != KEY_PUBLISHED:
        return None
    data = obj.get("data")
    vkey = data.get("vkey") if type(data) is dict else None
    return vkey if isinstance(vkey, str) else None


def _cut(
    directory: Path, name: str, offset: int, tail: bytes, reason: str, dry_run: bool
) -> TornTail:
    """Copy ``tail`` (the bytes of ``name`` from ``offset``) aside, then truncate the file."""
    if dry_run:
        return TornTail(name, offset, len(tail), reason, None)
    rec = directory / RECOVERED
    rec.mkdir(mode=0o750, exist_ok=True)
    digest = hashlib.sha256(tail).hexdigest()[:16]
    saved = rec / f"{name}.at-{offset}.{digest}.torn"
    fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(tail)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(rec)
    fd = os.open(directory / name, os.O_WRONLY)
    try:
        os.ftruncate(fd, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return TornTail(name, offset, len(tail), reason, saved)
