"""Independent verification of a whole ledger directory (``appliance ledger verify``).

Trusts nothing in the directory but the verifier keys it is given. It:

1. opens every checkpoint of ``checkpoints.log`` and the ``checkpoint`` file as C2SP signed
   notes with the given keys, and checks their origin against the entries' origin;
2. checks the checkpoints form one line of growth: sizes never go down (rollback), one root
   per size (fork), the ``checkpoint`` file is the newest one recorded;
3. reads every record of ``entries.log``: checksum, ``seq`` equal to its position, a
   well-formed entry whose bytes are canonical, the ledger's origin, timestamps in order;
4. rebuilds the RFC 6962 tree from the stored bytes and compares its root at every
   checkpoint's size (equal roots at both ends is what makes successive checkpoints
   consistent: the later tree contains the earlier one);
5. hashes every blob an entry references and compares size and SHA-256;
6. compares every row of the query index ``index.sqlite``, if there is one, with its entry
   (see :mod:`appliance.ledger.index`: what queries, show, replay and export read).

Findings (tampering or inconsistency, exit 1) name the entry or checkpoint and say why.
:class:`~appliance.ledger.errors.LedgerError` (exit 2) means it could not verify at all: no
ledger, nothing signed, or a key that signed none of it.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from appliance.ledger import history, index, journal
from appliance.ledger._framing import ENTRY_MAGIC, FrameScanner, MappedFile
from appliance.ledger.checkpoint import Checkpoint, MalformedCheckpoint, parse_checkpoint_text
from appliance.ledger.entries import (
    KEY_PUBLISHED,
    MalformedEntry,
    blob_refs,
    may_have_blob_refs,
    parse_entry,
)
from appliance.ledger.errors import LedgerError, TamperError
from appliance.ledger.merkle import CompactRange
from appliance.ledger.store import CHECKPOINT, ENTRIES, INDEX, check_blob, read_history
from appliance.signing.keys import InvalidSignature, VerifierKey
from appliance.signing.note import MalformedNote, NoteError, UnverifiedNote, open_note

_MAX_SAME_KIND = 5
Progress = Callable[[int, int], None]


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_ledger`. ``ok`` if there are no findings."""

    directory: Path
    origin: str | None = None
    entries: int = 0
    checkpoints: int = 0
    latest: Checkpoint | None = None
    blobs: int = 0
    blob_bytes: int = 0
    findings: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    _kinds: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    def find(self, kind: str, message: str) -> None:
        """Record a finding; after a few of one kind, only count them."""
        n = self._kinds.get(kind, 0) + 1
        self._kinds[kind] = n
        if n <= _MAX_SAME_KIND:
            self.findings.append(message)

    def finish(self) -> None:
        for kind, n in self._kinds.items():
            if n > _MAX_SAME_KIND:
                self.findings.append(f"... and {n - _MAX_SAME_KIND} more findings of kind {kind}")
        self._kinds = {}

    def raise_for_findings(self) -> None:
        if self.findings:
            raise TamperError(self.findings[0], self.findings)


@dataclass
class _Cp:
    label: str
    note: str
    in_history: bool = False
    cp: Checkpoint | None = None
    verified: bool = False
    unverified_signers: str | None = None


def verify_ledger(
    directory: Path,
    verifiers: Sequence[VerifierKey],
    *,
    progress: Progress | None = None,
    check_blobs: bool = True,
    workers: int | None = None,
    trusted_checkpoints: Sequence[tuple[str, str]] = (),
) -> VerifyReport:
    """Verify ``directory``; see the module docstring. Returns the report (never raises
    TamperError itself); raises LedgerError if verification is impossible.

    ``trusted_checkpoints`` are ``(label, note)`` pairs obtained out of band (e.g. shipped to
    WORM storage): the ledger must contain their entries with the same roots, which exposes a
    rollback of the whole directory to an older, self-consistent state.
    """
    directory = Path(directory)
    if not (directory / ENTRIES).is_file():
        raise LedgerError(f"no ledger in {directory}: {ENTRIES} not found")
    if not verifiers:
        raise LedgerError("verification needs at least one verifier key")
    report = VerifyReport(directory)

    # 1. checkpoints ----------------------------------------------------------------------
    notes, hscan = read_history(directory)
    cps = [_Cp(f"checkpoint #{i}", n, in_history=True) for i, n in enumerate(notes)]
    if hscan.damage is not None:
        _judge(report, history.history_damage(hscan.damage))
    try:
        current = (directory / CHECKPOINT).read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerError(f"cannot read {directory / CHECKPOINT}: {exc}") from None
    if current is not None and current not in notes:
        cps.append(_Cp(f"{CHECKPOINT} file", current))
    cps.extend(_Cp(label, note) for label, note in trusted_checkpoints)
    if not cps:
        raise LedgerError(f"{directory} has no signed checkpoint: nothing to verify against")
    for c in cps:
        _open(c, verifiers, report)
    report.checkpoints = len(notes)

    # 3-5. entries, tree, blobs -----------------------------------------------------------
    by_size: dict[int, list[_Cp]] = {}
    for c in cps:
        if c.cp is not None:
            by_size.setdefault(c.cp.size, []).append(c)
    if workers is None:  # a worker process pays off only on large logs with a spare core
        big = (directory / ENTRIES).stat().st_size > 64 * 1024 * 1024
        workers = 2 if big and (os.cpu_count() or 1) > 1 else 0
    published = _scan_entries(directory, report, by_size, progress, check_blobs, workers)

    # wrong key, or checkpoints signed by someone else?
    given = {v.to_vkey() for v in verifiers}
    if not any(c.verified for c in cps) and not given & published:
        signers = sorted({c.unverified_signers or "?" for c in cps})
        raise LedgerError(
            "none of the checkpoints is signed by the given key(s) "
            f"{', '.join(sorted(given))}; they are signed by {'; '.join(signers)} and the "
            "ledger never published the given key: wrong --vkey?"
        )
    for c in cps:
        if c.cp is not None and not c.verified:
            report.find(
                "signature",
                f"{c.label} (size {c.cp.size}) is not signed by the given key"
                f" (signed by {c.unverified_signers}): re-signed or forged",
            )
    if not given & published:
        report.warnings.append("the given key is not published (key.published) in this ledger")

    # 1-2. origin and growth (the rules: appliance.ledger.history) --------------------------
    valid = [(c.label, c.cp) for c in cps if c.cp is not None]
    in_history = [(c.label, c.cp) for c in cps if c.cp is not None and c.in_history]
    for label, cp in valid:
        _judge(report, history.origin_mismatch(label, cp, report.origin))
    for finding in history.growth(in_history):
        _judge(report, finding)
    groups: dict[int, list[tuple[str, Checkpoint]]] = {}
    for label, cp in valid:
        groups.setdefault(cp.size, []).append((label, cp))
    for finding in history.forks(groups):
        _judge(report, finding)
    sizes_of_notes = [c.cp.size if c.cp is not None else None for c in cps if c.in_history]
    _judge(report, history.checkpoint_file(current, notes, sizes_of_notes))
    for label, cp in valid:
        _judge(report, history.entries_short(report.entries, label, cp.size))
    sizes = [cp.size for _, cp in in_history]
    if sizes:
        report.latest = max((cp for _, cp in in_history), key=lambda x: x.size)
        if report.entries > max(sizes):
            report.warnings.append(
                f"{report.entries - max(sizes)} entries after the latest checkpoint are not "
                "signed yet"
            )
    held = journal.notice(directory)
    if held is not None:
        report.warnings.append(held)
    report.finish()
    return report


def _judge(report: VerifyReport, verdict: history.Finding | history.Leftover | None) -> None:
    if isinstance(verdict, history.Finding):
        report.find(verdict.kind, verdict.message)
    elif isinstance(verdict, history.Leftover):
        report.warnings.append(f"{verdict.message} (the writer repairs it on open)")


def _open(c: _Cp, verifiers: Sequence[VerifierKey], report: VerifyReport) -> None:
    try:
        text, _ = open_note(c.note, verifiers)
        c.verified = True
    except UnverifiedNote as exc:
        text = _text_of(c.note)
        c.unverified_signers = ", ".join(f"{n}+{k.hex()}" for n, k in exc.signers)
    except InvalidSignature as exc:
        report.find("signature", f"{c.label}: {exc}")
        text = _text_of(c.note)
    except (MalformedNote, NoteError) as exc:
        report.find("malformed", f"{c.label} is not a valid signed note: {exc}")
        return
    try:
        c.cp = parse_checkpoint_text(text)
    except MalformedCheckpoint as exc:
        report.find("malformed", f"{c.label} is not a valid checkpoint: {exc}")


def _text_of(note: str) -> str:
    return note[: note.rfind("\n\n") + 1]


CHUNK = 65536


@dataclass
class _Chunk:
    """What checking one run of records found (picklable: it may come from a worker)."""

    first_seq: int
    count: int = 0
    first_ts: str | None = None
    last_ts: str | None = None
    origin: str | None = None
    findings: list[tuple[str, str]] = field(default_factory=list)
    published: list[str] = field(default_factory=list)
    blobs: dict[str, tuple[int, str]] = field(default_factory=dict)
    identities: dict[str, tuple[int, str]] = field(default_factory=dict)


_INDEX_HINT = (
    "(the query index does not match the log: it was edited or damaged; "
    "`appliance ledger reindex` rebuilds it)"
)


def _check_chunk(
    path: str, start: int, end: int, first_seq: int, check_blobs: bool, check_index: bool
) -> _Chunk:
    """Entry-level checks of the records in ``[start, end)`` of ``path`` (already checksummed
    and in sequence): well-formed, canonical, seq field, origin, time order, blob references,
    and (``check_index``) the query index's rows for them.

    Runs in a worker process for large ledgers, so that parsing JSON overlaps with hashing.
    """
    out = _Chunk(first_seq)
    rows: list[index.Row] = []
    find = out.findings.append
    dumps, sort = orjson.dumps, orjson.OPT_SORT_KEYS
    prev_ts = ""
    origin: str | None = None
    i = first_seq
    with MappedFile(Path(path)) as mf:
        for frame in FrameScanner(mf.data[start:end], ENTRY_MAGIC, check_crc=False):
            raw = frame.payload
            try:
                obj = parse_entry(raw)
            except MalformedEntry as exc:
                find(("entry", f"entry {i}: malformed: {exc.reason}"))
                i += 1
                continue
            if obj["seq"] != i:
                find(("seq", f"entry {i}: its seq field says {obj['seq']}"))
            if check_index:
                rows.append(index.derive_row(i, start + frame.offset, start + frame.end, raw, obj))
            if origin is None:
                origin = out.origin = obj["origin"]
            elif obj["origin"] != origin:
                find(("origin", f"entry {i}: origin {obj['origin']!r}, ledger is {origin!r}"))
            ts = obj["ts"]
            if ts < prev_ts:
                find(("ts", f"entry {i}: timestamp {ts} is earlier than {prev_ts}"))
            if out.first_ts is None:
                out.first_ts = ts
            prev_ts = ts
            if dumps(obj, option=sort) != raw:
                find(("entry", f"entry {i}: stored bytes are not canonical JSON"))
            if obj["type"] == KEY_PUBLISHED and isinstance(obj["data"].get("vkey"), str):
                out.published.append(obj["data"]["vkey"])
            if check_blobs and may_have_blob_refs(raw):
                for ref in blob_refs(obj["data"]):
                    if ref.inline is not None:
                        if not ref.inline_ok():
                            find(
                                (
                                    "blob",
                                    f"entry {i}: inline blob {ref.path} does not match its sha256/size",
                                )
                            )
                        continue
                    out.blobs.setdefault(ref.sha256, (i, ref.path))
            i += 1
    out.last_ts = prev_ts or None
    out.count = i - first_seq
    db = index.open_for_check(Path(path).parent) if check_index else None
    if db is not None:
        try:
            for problem in index.check_rows(db, rows):
                find(("index", f"{INDEX}: {problem} {_INDEX_HINT}"))
        finally:
            db.close()
        out.identities = index.first_identities(rows)
    return out


def _scan_entries(
    directory: Path,
    report: VerifyReport,
    by_size: dict[int, list[_Cp]],
    progress: Progress | None,
    check_blobs: bool,
    workers: int,
) -> set[str]:
    """Steps 3-5 over ``entries.log``; returns the vkeys the log published.

    This process checksums the records and rebuilds the tree; entry-level checks run per
    chunk of records, in ``workers`` other processes if > 0 (so both overlap on two cores).
    """
    path = str(directory / ENTRIES)
    cr = CompactRange()
    sha256 = hashlib.sha256
    signed_sizes = sorted(by_size)
    max_signed = signed_sizes[-1] if signed_sizes else 0
    pending: list[Future[_Chunk]] = []
    results: list[_Chunk] = []
    # fork: the worker needs nothing re-imported; only when this process has no other
    # threads (forking a threaded process can copy a held lock)
    if workers > 0 and threading.active_count() == 1:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    else:
        pool = None

    db = index.open_for_check(directory)
    check_index = db is not None

    def check(start: int, end: int, first: int) -> None:
        args = (path, start, end, first, check_blobs, check_index)
        if pool is None:
            results.append(_check_chunk(*args))
        else:
            pending.append(pool.submit(_check_chunk, *args))

    try:
        with MappedFile(directory / ENTRIES) as mf:
            total = len(mf.data)
            scanner = FrameScanner(mf.data, ENTRY_MAGIC)
            i = 0
            chunk_start, chunk_first, pos = 0, 0, 0
            for frame in scanner:
                cr.append(sha256(b"\x00" + frame.payload).digest())
                if frame.seq != i:
                    how = "duplicated or reordered" if frame.seq < i else "missing or reordered"
                    report.find("seq", f"entry {i}: record says seq {frame.seq} (entries {how})")
                i += 1
                pos = frame.end
                if i in by_size:
                    root = cr.root()
                    for c in by_size[i]:
                        assert c.cp is not None
                        if c.cp.root != root:
                            prev = max((s for s in signed_sizes if s < i), default=0)
                            _judge(report, history.root_mismatch(c.label, i, prev))
                if i - chunk_first == CHUNK:
                    check(chunk_start, pos, chunk_first)
                    chunk_start, chunk_first = pos, i
                    if progress is not None:
                        progress(pos, total)
            if i > chunk_first:
                check(chunk_start, pos, chunk_first)
            if scanner.damage is not None:
                _judge(report, history.entries_damage(scanner.damage, i, max_signed))
        results.extend(f.result() for f in pending)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if progress is not None:
        progress(total, total)

    published: set[str] = set()
    blobs: dict[str, tuple[int, str]] = {}
    identities: dict[str, tuple[int, str]] = {}
    origin = results[0].origin if results else None
    prev_ts: str | None = None
    for r in results:
        for kind, msg in r.findings:
            report.find(kind, msg)
        if r.origin is not None and r.origin != origin:
            report.find("origin", f"entry {r.first_seq}: origin {r.origin!r}, ledger is {origin!r}")
        if prev_ts is not None and r.first_ts is not None and r.first_ts < prev_ts:
            report.find(
                "ts", f"entry {r.first_seq}: timestamp {r.first_ts} is earlier than {prev_ts}"
            )
        prev_ts = r.last_ts or prev_ts
        published.update(r.published)
        for sha, where in r.blobs.items():
            blobs.setdefault(sha, where)
        for session, first in r.identities.items():
            identities.setdefault(session, first)
    if db is not None:
        try:
            for mismatch in index.check_tables(db, i, identities):
                report.find("index", f"{INDEX}: {mismatch} {_INDEX_HINT}")
        finally:
            db.close()
    for sha, (seq, ref_path) in sorted(blobs.items(), key=lambda kv: kv[1]):
        problem, read = check_blob(directory, sha)
        report.blob_bytes += read
        if problem:
            _judge(report, history.blob(seq, f"{ref_path} blob {sha}", problem))
    report.entries = i
    report.origin = origin
    report.blobs = len(blobs)
    return published
