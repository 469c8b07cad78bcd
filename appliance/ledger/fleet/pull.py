"""Reading the fleet's logs from the bucket into a local cache, incrementally.

Where it sits: ``appliance ledger pull|verify|query|show|replay|export --source s3://...``
(and ``appliance report``) call :func:`list_logs`, :func:`take_inventory` and
:func:`pull_log`; what they get is an ordinary ledger directory per log, which every local
command reads as it is (index, verification, rendering, export).

The cache, ``CACHE/<log>/`` per log (``<log>`` as in :mod:`.layout`)::

    entries.log, checkpoints.log, checkpoint, blobs/   rebuilt from the bucket's objects
    pull.json                                          what was pulled: byte lengths of the two
                                                       logs and the version id of every object

A pull reads the *oldest* version of every key, i.e. the one written first: the shipper
writes each key once, so a later version is an overwrite (which :mod:`.verify` reports) and a
delete marker hides nothing from it. Entries come from bundles in order, from where the last
pull stopped, up to the first gap or bad bundle; checkpoints likewise up to the first missing
one; blobs all. If an object that was pulled before now has another oldest version (versions
were removed from an unlocked bucket), the log's cache is rebuilt from scratch. Nothing in
the cache is trusted: verify it (``ledger verify --source``) before relying on it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from appliance.bucket import Bucket, ObjectVersion
from appliance.ledger._framing import CHECKPOINT_MAGIC, ENTRY_MAGIC, encode_frame
from appliance.ledger.errors import LedgerError
from appliance.ledger.fleet import layout
from appliance.ledger.store import BLOBS, CHECKPOINT, ENTRIES, HISTORY

MANIFEST = "pull.json"
_FORMAT = 1
Progress = Callable[[int, int], None]  # (bytes done, bytes to do) over a whole pull


@dataclass(frozen=True)
class LogRef:
    """One log in the bucket: its origin and its ``<log>`` path segment."""

    origin: str
    name: str

    @property
    def prefix(self) -> str:
        return f"{layout.LOGS}/{self.name}"


def list_logs(bucket: Bucket, pattern: str | None = None) -> list[LogRef]:
    """The logs under the bucket URL (origins matching the glob ``pattern``, if given), in
    origin order. Prefixes that are not an encoded origin are skipped."""
    out: list[LogRef] = []
    for rel in bucket.list_prefixes(layout.LOGS):
        name = rel[len(layout.LOGS) + 1 :].rstrip("/")
        try:
            origin = layout.origin_of(name)
        except LedgerError:
            continue
        if pattern is None or fnmatch.fnmatchcase(origin, pattern):
            out.append(LogRef(origin, name))
    return sorted(out, key=lambda r: r.origin)


@dataclass
class Inventory:
    """Every object version of one log, by key (relative to the log's prefix)."""

    log: LogRef
    versions: dict[str, list[ObjectVersion]]  # newest first, as S3 lists them
    checkpoints: dict[int, str] = field(default_factory=dict)  # n -> key
    bundles: list[tuple[int, int, str]] = field(default_factory=list)  # sorted
    blobs: dict[str, str] = field(default_factory=dict)  # sha256 -> key
    vkey: str | None = None
    unexpected: list[str] = field(default_factory=list)

    def first(self, key: str) -> ObjectVersion | None:
        """The oldest version of ``key`` that is an object (not a delete marker)."""
        for v in reversed(self.versions.get(key, [])):
            if not v.delete_marker:
                return v
        return None


def take_inventory(bucket: Bucket, log: LogRef) -> Inventory:
    """List every version of every object of ``log`` (needs s3:ListBucketVersions)."""
    versions: dict[str, list[ObjectVersion]] = {}
    for v in bucket.child(log.prefix).list_versions(""):
        versions.setdefault(v.key, []).append(v)
    # S3 lists the versions of a key newest first (delete markers among them, by time);
    # timestamps have a one-second grain on some servers, so the listing order is kept.
    inv = Inventory(log, versions)
    for key in sorted(versions):
        parsed = layout.parse_key(key)
        if parsed is None:
            inv.unexpected.append(key)
        elif parsed.kind == "vkey":
            inv.vkey = key
        elif parsed.kind == "checkpoint":
            inv.checkpoints[parsed.n] = key
        elif parsed.kind == "bundle":
            inv.bundles.append((parsed.first, parsed.end, key))
        else:
            inv.blobs[parsed.sha256] = key
    inv.bundles.sort()
    return inv


@dataclass
class PullResult:
    """The cache of one log after a pull, and what the pull added."""

    log: LogRef
    directory: Path
    entries: int = 0
    checkpoints: int = 0
    added_entries: int = 0
    added_checkpoints: int = 0
    added_blobs: int = 0
    rebuilt: bool = False
    # Why entries or checkpoints stop early: a gap (also seen in the inventory), or an
    # object whose content breaks the layout (seen only by reading it).
    gaps: list[str] = field(default_factory=list)
    bad_objects: list[str] = field(default_factory=list)


@dataclass
class _Manifest:
    origin: str
    entries: int = 0
    entries_bytes: int = 0
    checkpoints: int = 0
    history_bytes: int = 0
    objects: dict[str, str] = field(default_factory=dict)  # key -> version id

    @classmethod
    def load(cls, path: Path, origin: str) -> _Manifest | None:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("format") != _FORMAT or raw.get("origin") != origin:
                return None
            return cls(
                origin,
                int(raw["entries"]),
                int(raw["entries_bytes"]),
                int(raw["checkpoints"]),
                int(raw["history_bytes"]),
                {str(k): str(v) for k, v in raw["objects"].items()},
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        body = {
            "format": _FORMAT,
            "origin": self.origin,
            "entries": self.entries,
            "entries_bytes": self.entries_bytes,
            "checkpoints": self.checkpoints,
            "history_bytes": self.history_bytes,
            "objects": self.objects,
        }
        tmp.write_text(json.dumps(body, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)


def pending_bytes(inv: Inventory, cache_root: Path) -> int:
    """How many bytes a pull of ``inv`` into ``cache_root`` would fetch (for progress)."""
    m = _Manifest.load(cache_root / inv.log.name / MANIFEST, inv.log.origin)
    have = m.objects if m is not None else {}
    total = 0
    for key in [*inv.checkpoints.values(), *(k for _, _, k in inv.bundles), *inv.blobs.values()]:
        first = inv.first(key)
        if first is not None and have.get(key) != first.version_id:
            total += first.size
    return total


def pull_log(
    bucket: Bucket,
    inv: Inventory,
    cache_root: Path,
    *,
    on_bytes: Callable[[int], None] | None = None,
) -> PullResult:
    """Bring ``CACHE/<log>/`` up to date with the bucket (see the module docstring).

    Raises BucketError if the bucket cannot be read; problems with the objects themselves
    (gaps, bad bundles) stop the pull there and are listed in the result."""
    log = inv.log
    directory = cache_root / log.name
    result = PullResult(log, directory)
    manifest = _Manifest.load(directory / MANIFEST, log.origin)
    if manifest is not None:
        for key, version in manifest.objects.items():
            oldest = inv.first(key)
            if oldest is None or oldest.version_id != version:
                result.rebuilt = True
                manifest = None
                break
    if manifest is not None and not (
        _cut_to(directory / ENTRIES, manifest.entries_bytes)
        and _cut_to(directory / HISTORY, manifest.history_bytes)
    ):
        result.rebuilt, manifest = True, None  # the cache lost bytes it had pulled
    if manifest is None:
        shutil.rmtree(directory, ignore_errors=True)
        manifest = _Manifest(log.origin)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / BLOBS).mkdir(exist_ok=True)
    (directory / ENTRIES).touch()
    (directory / HISTORY).touch()
    src = bucket.child(log.prefix)

    def fetch(key: str) -> bytes:
        oldest = inv.first(key)
        assert oldest is not None
        data = src.get(key, version_id=oldest.version_id)
        manifest.objects[key] = oldest.version_id
        if on_bytes is not None:
            on_bytes(len(data))
        return data

    # entries, from bundles in order
    with (directory / ENTRIES).open("ab") as out:
        for first, end, key in inv.bundles:
            if end <= manifest.entries:
                continue
            if inv.first(key) is None:
                continue  # only delete markers: as if removed
            if first != manifest.entries:
                result.gaps.append(
                    f"entries {manifest.entries}..{first - 1} are in no bundle (next: {key})"
                )
                break
            try:
                lines = layout.decode_bundle(fetch(key), first, end)
            except layout.LayoutError as exc:
                result.bad_objects.append(f"{key}: {exc}")
                break
            frames = b"".join(
                encode_frame(ENTRY_MAGIC, first + i, raw) for i, raw in enumerate(lines)
            )
            out.write(frames)
            manifest.entries = end
            manifest.entries_bytes += len(frames)
            result.added_entries += end - first
        last = max((e for _, e, _ in inv.bundles), default=0)
        if manifest.entries < last and not (result.gaps or result.bad_objects):
            result.gaps.append(f"entries {manifest.entries}..{last - 1} are in no readable bundle")

    # checkpoints, in order, up to the first missing one
    last_note: bytes | None = None
    with (directory / HISTORY).open("ab") as out:
        while manifest.checkpoints in inv.checkpoints:
            key = inv.checkpoints[manifest.checkpoints]
            if inv.first(key) is None:
                break
            note = fetch(key)
            frame = encode_frame(CHECKPOINT_MAGIC, manifest.checkpoints, note)
            out.write(frame)
            manifest.history_bytes += len(frame)
            manifest.checkpoints += 1
            result.added_checkpoints += 1
            last_note = note
    if last_note is not None:
        _write(directory / CHECKPOINT, last_note)
    if inv.checkpoints and manifest.checkpoints < max(inv.checkpoints) + 1:
        result.gaps.append(
            f"checkpoint #{manifest.checkpoints} is missing; later ones are not in the history"
        )

    # blobs
    for sha, key in inv.blobs.items():
        if key in manifest.objects or inv.first(key) is None:
            continue
        path = directory / BLOBS / sha[:2] / sha
        path.parent.mkdir(exist_ok=True)
        _write(path, fetch(key))
        result.added_blobs += 1

    manifest.save(directory / MANIFEST)
    result.entries, result.checkpoints = manifest.entries, manifest.checkpoints
    return result


def cached_logs(cache_root: Path, pattern: str | None = None) -> list[PullResult]:
    """The logs a cache holds from earlier pulls (origins matching ``pattern``), as they
    are: no bucket is read. In origin order."""
    out: list[PullResult] = []
    for manifest in sorted(Path(cache_root).glob(f"*/{MANIFEST}")):
        directory = manifest.parent
        try:
            origin = layout.origin_of(directory.name)
        except LedgerError:
            continue
        m = _Manifest.load(manifest, origin)
        if m is None or (pattern is not None and not fnmatch.fnmatchcase(origin, pattern)):
            continue
        out.append(PullResult(LogRef(origin, directory.name), directory, m.entries, m.checkpoints))
    return sorted(out, key=lambda r: r.log.origin)


def pull_logs(
    bucket: Bucket,
    inventories: Iterable[Inventory],
    cache_root: Path,
    *,
    progress: Progress | None = None,
    workers: int = 8,
) -> list[PullResult]:
    """:func:`pull_log` for each inventory, ``workers`` logs at a time; ``progress(done,
    total)`` in bytes. Results in the inventories' order. Raises BucketError."""
    invs = list(inventories)
    total = sum(pending_bytes(inv, cache_root) for inv in invs)
    done = 0
    lock = threading.Lock()

    def count(n: int) -> None:
        nonlocal done
        with lock:
            done += n
            if progress is not None:
                progress(done, total)

    cache_root.mkdir(parents=True, exist_ok=True)
    if workers <= 1 or len(invs) <= 1:
        results = [pull_log(bucket, inv, cache_root, on_bytes=count) for inv in invs]
    else:
        with ThreadPoolExecutor(min(workers, len(invs))) as pool:
            results = list(
                pool.map(lambda i: pull_log(bucket, i, cache_root, on_bytes=count), invs)
            )
    if progress is not None:
        progress(total, total)
    return results


def _cut_to(path: Path, length: int) -> bool:
    """Cut ``path`` to ``length`` bytes (what the manifest says was pulled: a pull that
    stopped half way wrote more). False if it holds less."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return length == 0
    if size > length:
        os.truncate(path, length)
    return size >= length


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


__all__ = [
    "Inventory",
    "LogRef",
    "PullResult",
    "cached_logs",
    "list_logs",
    "pending_bytes",
    "pull_log",
    "pull_logs",
    "take_inventory",
]
