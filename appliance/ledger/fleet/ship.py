"""Shipping a ledger directory to the fleet's bucket (:mod:`.layout`), checkpoint by checkpoint.

Where it sits: the daemon runs :class:`Shipper` rounds in a worker thread while the writer
appends (:mod:`appliance.ledger.fleet.runner` schedules them, retries and reports), and
``appliance ledger ship`` runs one round by hand. Only what a signed checkpoint covers is
shipped, so the bucket never holds an entry the ledger could still lose in a crash.

A round: read the checkpoint notes the writer added since the last round; for the entries up
to the newest one, in bundles (:func:`~.layout.bundle_plan`): first the blobs the bundle's
entries reference, then the bundle, then every checkpoint the shipped entries now cover.
Everything is written once (:meth:`appliance.bucket.Bucket.put_once`, with the configured
Object Lock retention). Which objects the bucket already holds is learnt once, from a
listing, when the shipper starts (:meth:`Shipper.reconcile`), and kept in memory after that:
radosgw does not refuse a second put of a key on a versioned bucket, so the shipper must
not make one. A put whose outcome is unknown (the connection broke) is looked up before it
is tried again.

The bucket already holding a different log under this origin (another checkpoint #n, another
key, more checkpoints than this ledger has) is a :class:`ShipConflict`: nothing is
overwritten and shipping stops until someone looks. Gaps in what was shipped (an object
removed from the bucket) are reported, never repaired: they are evidence.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from appliance.bucket import Bucket, BucketUnavailable, ObjectExists, ObjectLock
from appliance.ledger._framing import CHECKPOINT_MAGIC, ENTRY_MAGIC, FrameScanner, MappedFile
from appliance.ledger.entries import KEY_PUBLISHED, blob_refs, may_have_blob_refs
from appliance.ledger.errors import LedgerError
from appliance.ledger.fleet import layout
from appliance.ledger.store import ENTRIES, HISTORY, blob_path, unverified_checkpoint
from appliance.signing.note import MalformedNote

log = logging.getLogger("appliance.ledger.ship")


class ShipConflict(LedgerError):
    """The bucket holds another log under this origin (or this ledger was rolled back):
    shipping would overwrite evidence, so it stops."""


@dataclass
class Progress:
    """What the bucket holds of this log, as far as this shipper knows."""

    checkpoints: int = 0  # checkpoints #0..#checkpoints-1 are in the bucket
    entries: int = 0  # entries 0..entries-1 are in the bucket
    signed_size: int = 0  # the size of the newest checkpoint in the bucket
    vkey: bool = False
    blobs: set[str] = field(default_factory=set)
    gaps: list[str] = field(default_factory=list)  # objects missing below what was shipped


@dataclass(frozen=True)
class Round:
    """What one :meth:`Shipper.ship` round put into the bucket."""

    checkpoints: int
    entries: int
    blobs: int
    bytes: int

    @property
    def empty(self) -> bool:
        return self.checkpoints == 0 and self.entries == 0 and self.blobs == 0


class _LocalLog:
    """The signed part of a ledger directory, read incrementally while a writer appends."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.notes: list[str] = []
        self.sizes: list[int] = []
        self._hist_offset = 0
        self._next_seq = 0  # the entry at _entry_offset
        self._entry_offset = 0

    def refresh(self) -> None:
        """Read checkpoint notes appended since the last call (a record cut short at the
        end is a writer mid-append: read next time)."""
        with MappedFile(self.directory / HISTORY) as mf:
            scanner = FrameScanner(mf.data, CHECKPOINT_MAGIC, self._hist_offset)
            for frame in scanner:
                note = frame.payload.decode("utf-8", "replace")
                try:
                    size = unverified_checkpoint(note).size
                except MalformedNote as exc:
                    raise LedgerError(
                        f"checkpoint #{len(self.notes)} is malformed: {exc}"
                    ) from None
                self.notes.append(note)
                self.sizes.append(size)
                self._hist_offset = frame.end
            if scanner.damage is not None and not scanner.damage.at_eof:
                raise LedgerError(f"{HISTORY}: {scanner.damage.reason}; run `ledger verify`")

    def entries(self, start: int, stop: int) -> list[bytes]:
        """The stored bytes of entries ``start..stop-1`` (all must be complete)."""
        if start < self._next_seq:
            self._next_seq, self._entry_offset = 0, 0  # seek back: scan from the beginning
        out: list[bytes] = []
        with MappedFile(self.directory / ENTRIES) as mf:
            for frame in FrameScanner(mf.data, ENTRY_MAGIC, self._entry_offset):
                if frame.seq != self._next_seq:
                    raise LedgerError(f"{ENTRIES}: record {self._next_seq} says seq {frame.seq}")
                if frame.seq >= stop:
                    break
                if frame.seq >= start:
                    out.append(bytes(frame.payload))
                self._next_seq = frame.seq + 1
                self._entry_offset = frame.end
        if len(out) != stop - start:
            raise LedgerError(
                f"{ENTRIES} holds entries up to {start + len(out)}, a checkpoint covers {stop}"
            )
        return out

    def first_vkey(self) -> str | None:
        """The verifier key the log published first (``key.published``), if any."""
        with MappedFile(self.directory / ENTRIES) as mf:
            for frame in FrameScanner(mf.data, ENTRY_MAGIC):
                if b'"type":"' + KEY_PUBLISHED.encode() + b'"' in frame.payload:
                    vkey = orjson.loads(frame.payload).get("data", {}).get("vkey")
                    if isinstance(vkey, str):
                        return vkey
        return None


class Shipper:
    """Ships one ledger directory to ``bucket`` (the fleet's URL; the log's prefix is derived
    from its origin). ``lock``: Object Lock retention for every object (None: the bucket's
    default). ``clock`` gives the time retention counts from. Not thread-safe: one round at
    a time."""

    def __init__(
        self,
        directory: Path,
        bucket: Bucket,
        *,
        lock: ObjectLock | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.fleet = bucket
        self.lock = lock
        self.clock = clock
        self.local = _LocalLog(self.directory)
        self.progress: Progress | None = None
        self.origin: str | None = None
        self._log: Bucket | None = None
        self._uncertain: set[str] = set()  # keys whose last put ended without an answer
        self.put_bytes = 0

    # -- state ---------------------------------------------------------------------------------

    @property
    def local_size(self) -> int:
        """The size of the newest local checkpoint read so far."""
        return self.local.sizes[-1] if self.local.sizes else 0

    @property
    def log_url(self) -> str:
        """Where this log goes (known after :meth:`reconcile`)."""
        return str(self._log.url) if self._log is not None else str(self.fleet.url)

    def backlog(self) -> int:
        """Entries signed locally but not yet in the bucket (after the last refresh)."""
        shipped = self.progress.signed_size if self.progress is not None else 0
        return max(0, self.local_size - shipped)

    def reconcile(self) -> Progress:
        """Learn what the bucket holds of this log (one listing). Raises ShipConflict if it
        holds another log under this origin, BucketError if it cannot be listed."""
        self.local.refresh()
        if not self.local.notes:
            raise LedgerError(f"{self.directory} has no signed checkpoint to ship yet")
        origin = unverified_checkpoint(self.local.notes[0]).origin
        self.origin = origin
        self._log = self.fleet.child(layout.log_prefix(origin).rstrip("/"))
        p = Progress()
        checkpoints: set[int] = set()
        bundles: list[tuple[int, int]] = []
        for rel, _etag, _size in self._log.list_keys():
            key = layout.parse_key(rel)
            if key is None:
                continue
            if key.kind == "vkey":
                p.vkey = True
            elif key.kind == "checkpoint":
                checkpoints.add(key.n)
            elif key.kind == "bundle":
                bundles.append((key.first, key.end))
            elif key.kind == "blob":
                p.blobs.add(key.sha256)
        p.checkpoints = max(checkpoints) + 1 if checkpoints else 0
        p.entries = max((end for _, end in bundles), default=0)
        missing = sorted(set(range(p.checkpoints)) - checkpoints)
        if missing:
            p.gaps.append(f"checkpoints {_ranges(missing)} are missing from the bucket")
        covered = 0
        for first, end in sorted(bundles):
            if first > covered:
                p.gaps.append(f"entries {covered}..{first - 1} are missing from the bucket")
            covered = max(covered, end)
        if p.checkpoints > len(self.local.notes):
            raise ShipConflict(
                f"the bucket holds {p.checkpoints} checkpoints of origin {origin!r}, this "
                f"ledger only {len(self.local.notes)}: another log with the same origin, or "
                "this ledger was rolled back"
            )
        if p.checkpoints:
            n = p.checkpoints - 1
            if n in checkpoints:
                theirs = self._log.get(layout.checkpoint_key(n)).decode("utf-8", "replace")
                if theirs != self.local.notes[n]:
                    raise ShipConflict(
                        f"checkpoint #{n} in the bucket differs from this ledger's: another "
                        f"log with origin {origin!r} ships to {self._log.url}"
                    )
            p.signed_size = self.local.sizes[n]
        if p.vkey:
            mine = self.local.first_vkey()
            theirs = self._log.get(layout.VKEY).decode("utf-8", "replace").strip()
            if mine is not None and theirs != mine:
                raise ShipConflict(
                    f"{self._log.url}/{layout.VKEY} holds key {theirs[:80]!r}, this ledger's is "
                    f"{mine!r}"
                )
        self.progress = p
        for gap in p.gaps:
            log.warning("bucket copy of %s: %s", origin, gap)
        return p

    # -- a round -------------------------------------------------------------------------------

    def ship(self) -> Round:
        """Ship every checkpoint signed since the last round, with what it covers.

        Raises BucketUnavailable (try again later: nothing is lost, the next round resumes
        where this one stopped), BucketDenied/BucketError, ShipConflict, LedgerError."""
        if self.progress is None:
            self.local.refresh()
            if not self.local.notes:
                return Round(0, 0, 0, 0)  # nothing signed yet: nothing to ship
            self.reconcile()
        p, log_bucket = self.progress, self._log
        assert p is not None and log_bucket is not None
        self.local.refresh()
        notes, sizes = self.local.notes, self.local.sizes
        if p.checkpoints >= len(notes):
            return Round(0, 0, 0, 0)
        shipped_cps, shipped_entries, shipped_blobs, start_bytes = (
            p.checkpoints,
            p.entries,
            len(p.blobs),
            self.put_bytes,
        )
        if not p.vkey:
            vkey = self.local.first_vkey()
            if vkey is not None:
                self._put(layout.VKEY, (vkey + "\n").encode(), "text/plain")
            p.vkey = True
        target = sizes[-1]
        if target > p.entries:
            raws = self.local.entries(p.entries, target)
            plan = layout.bundle_plan(p.entries, target, [len(r) for r in raws])
            base = p.entries
            for first, end in plan:
                chunk = raws[first - base : end - base]
                self._ship_blobs(chunk)
                self._put(
                    layout.bundle_key(first, end),
                    layout.encode_bundle(chunk),
                    "application/x-ndjson",
                )
                p.entries = end
                self._ship_checkpoints()
        self._ship_checkpoints()
        return Round(
            p.checkpoints - shipped_cps,
            p.entries - shipped_entries,
            len(p.blobs) - shipped_blobs,
            self.put_bytes - start_bytes,
        )

    def _ship_checkpoints(self) -> None:
        p = self.progress
        assert p is not None
        notes, sizes = self.local.notes, self.local.sizes
        while p.checkpoints < len(notes) and sizes[p.checkpoints] <= p.entries:
            n = p.checkpoints
            self._put(layout.checkpoint_key(n), notes[n].encode(), "text/plain; charset=utf-8")
            p.checkpoints = n + 1
            p.signed_size = max(p.signed_size, sizes[n])

    def _ship_blobs(self, raws: list[bytes]) -> None:
        p = self.progress
        assert p is not None
        for raw in raws:
            if not may_have_blob_refs(raw):
                continue
            for ref in blob_refs(orjson.loads(raw).get("data")):
                if ref.inline is not None or ref.sha256 in p.blobs:
                    continue
                path = blob_path(self.directory, ref.sha256)
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    # The local ledger lost it: verification reports it wherever it runs.
                    log.error("blob %s is missing from %s: not shipped", ref.sha256, path)
                    p.blobs.add(ref.sha256)
                    continue
                self._put(layout.blob_key(ref.sha256), data, "application/octet-stream")
                p.blobs.add(ref.sha256)

    def _put(self, key: str, data: bytes, content_type: str) -> None:
        log_bucket = self._log
        assert log_bucket is not None
        # The last put's answer was lost: it may have landed. A second put would be a second
        # version on radosgw, i.e. an "overwrite" for verification: look first.
        if key in self._uncertain and log_bucket.head(key) is not None:
            self._check_same(key, data)
            self._uncertain.discard(key)
            return
        now = datetime.datetime.fromtimestamp(self.clock(), datetime.UTC)
        try:
            log_bucket.put_once(key, data, lock=self.lock, now=now, content_type=content_type)
        except ObjectExists:
            self._check_same(key, data)
        except BucketUnavailable:
            self._uncertain.add(key)
            raise
        self._uncertain.discard(key)
        self.put_bytes += len(data)

    def _check_same(self, key: str, data: bytes) -> None:
        assert self._log is not None
        theirs = self._log.get(key)
        if hashlib.sha256(theirs).digest() != hashlib.sha256(data).digest():
            raise ShipConflict(f"{self._log.url}/{key} already holds other content")


def _ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``#1..#3, #7``."""
    out: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(f"#{start}" if start == prev else f"#{start}..#{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(out)
