"""Verifying the fleet's logs straight from the bucket (``appliance ledger verify --source``).

Where it sits: on an auditor's or the security team's machine. For each log under the URL:

1. the *inventory* (every object version, :func:`~.pull.take_inventory`) is checked against
   the layout's write-once rules (:func:`bucket_findings`): a delete marker, a key with
   several versions of different content (an overwrite), a missing checkpoint number, entries
   in no bundle or in two, a missing ``vkey``, a ``vkey`` that is not one of the given keys;
2. the log is pulled into the cache (the first version of every key, :func:`~.pull.pull_log`)
   and verified there by :func:`appliance.ledger.verify.verify_ledger`, exactly as a local
   ledger: signatures, one line of growth, the tree rebuilt from the entries, blob hashes.
   Checkpoints that are not in the pulled history are handed to it as well, so that they
   are checked against the entries: other versions of a checkpoint key, checkpoints after a
   gap, and the checkpoint ``--state`` pinned (:mod:`.state`);
3. with ``--state``, a log whose newest checkpoint is smaller than the pinned one, or that
   is gone, is a rollback; a log that verified is pinned at its newest checkpoint.

Nothing in the bucket is trusted but through the verifier keys given.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from appliance.bucket import Bucket
from appliance.ledger.checkpoint import Checkpoint
from appliance.ledger.errors import LedgerError
from appliance.ledger.fleet import layout
from appliance.ledger.fleet.pull import (
    Inventory,
    LogRef,
    PullResult,
    list_logs,
    pull_logs,
    take_inventory,
)
from appliance.ledger.fleet.state import StateDir
from appliance.ledger.store import read_history, unverified_checkpoint
from appliance.ledger.verify import VerifyReport, verify_ledger
from appliance.signing.keys import VerifierKey


@dataclass
class LogVerdict:
    """The verification of one log of the bucket. ``ok`` if there are no findings."""

    log: LogRef
    findings: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    report: VerifyReport | None = None
    pull: PullResult | None = None
    pinned: Checkpoint | None = None  # what --state had before this run
    latest: Checkpoint | None = None

    @property
    def ok(self) -> bool:
        return not self.findings


def bucket_findings(inv: Inventory) -> tuple[list[str], list[str]]:
    """Findings and warnings about the objects of one log, from its inventory alone."""
    findings: list[str] = []
    warnings: list[str] = []
    for key, versions in sorted(inv.versions.items()):
        markers = [v for v in versions if v.delete_marker]
        objects = [v for v in versions if not v.delete_marker]
        if markers:
            when = max(m.last_modified for m in markers).isoformat(timespec="seconds")
            still = "its first version is still readable" if objects else "no version is left"
            findings.append(
                f"{key} was deleted ({len(markers)} delete marker(s), last {when}); {still}"
            )
        if len({v.etag for v in objects}) > 1:
            findings.append(
                f"{key} was overwritten: {len(objects)} versions with different content "
                "(the first one written is verified)"
            )
        elif len(objects) > 1:
            warnings.append(f"{key} was written {len(objects)} times with the same content")
    for key in inv.unexpected:
        warnings.append(f"{key} is not part of the layout (ignored)")
    if inv.vkey is None:
        findings.append(f"{layout.VKEY} is missing: the log's key was never shipped, or removed")
    if inv.checkpoints:
        missing = sorted(set(range(max(inv.checkpoints) + 1)) - set(inv.checkpoints))
        if missing:
            shown = ", ".join(f"#{n}" for n in missing[:10]) + (" ..." if missing[10:] else "")
            findings.append(f"checkpoints {shown} are missing (removed from the bucket)")
    covered = 0
    for first, end, key in inv.bundles:
        if first > covered:
            findings.append(
                f"entries {covered}..{first - 1} are in no bundle (removed from the bucket)"
            )
        elif first < covered:
            findings.append(f"{key} overlaps entries already in another bundle")
        covered = max(covered, end)
    return findings, warnings


def verify_log(
    bucket: Bucket,
    inv: Inventory,
    pulled: PullResult,
    verifiers: Sequence[VerifierKey],
    *,
    pinned: tuple[str, Checkpoint] | None = None,
    progress: Callable[[int, int], None] | None = None,
    check_blobs: bool = True,
) -> LogVerdict:
    """Verify one pulled log (see the module docstring). Raises BucketError if the bucket
    cannot be read."""
    verdict = LogVerdict(inv.log, pull=pulled, pinned=pinned[1] if pinned else None)
    findings, warnings = bucket_findings(inv)
    verdict.findings += findings
    verdict.warnings += warnings
    verdict.findings += pulled.bad_objects
    src = bucket.child(inv.log.prefix)
    given = {v.to_vkey() for v in verifiers}
    if inv.vkey is not None and (first := inv.first(inv.vkey)) is not None:
        named = src.get(inv.vkey, version_id=first.version_id).decode("utf-8", "replace").strip()
        if named not in given:
            verdict.findings.append(
                f"{layout.VKEY} names the key {named[:100]!r}, which is none of the given keys"
            )
    extra: list[tuple[str, str]] = []
    for n, key in sorted(inv.checkpoints.items()):
        versions = [v for v in inv.versions[key] if not v.delete_marker]
        first = inv.first(key)
        for v in versions:
            if n < pulled.checkpoints and v is first:
                continue  # in the pulled history
            note = src.get(key, version_id=v.version_id).decode("utf-8", "replace")
            what = "after a gap" if v is first else f"version {v.version_id}"
            extra.append((f"bucket checkpoint #{n} ({what})", note))
    if pinned is not None:
        extra.append(("the checkpoint --state pinned", pinned[0]))
    if pulled.checkpoints == 0 and not extra:
        verdict.warnings.append("no checkpoint in the bucket yet: nothing signed to verify")
        return verdict
    try:
        report = verify_ledger(
            pulled.directory,
            verifiers,
            progress=progress,
            check_blobs=check_blobs,
            trusted_checkpoints=extra,
        )
    except LedgerError as exc:
        verdict.findings.append(f"cannot verify: {exc}")
        return verdict
    verdict.report = report
    verdict.latest = report.latest
    verdict.findings += report.findings
    verdict.warnings += report.warnings
    if pinned is not None and (report.latest is None or report.latest.size < pinned[1].size):
        newest = report.latest.size if report.latest else 0
        verdict.findings.append(
            f"rolled back: the bucket's newest checkpoint has size {newest}, but --state "
            f"verified size {pinned[1].size} before"
        )
    return verdict


def verify_source(
    bucket: Bucket,
    verifiers: Sequence[VerifierKey],
    cache_root: Path,
    *,
    pattern: str | None = None,
    state: StateDir | None = None,
    progress: Callable[[int, int], None] | None = None,
    check_blobs: bool = True,
) -> list[LogVerdict]:
    """Verify every log under the bucket URL (origins matching ``pattern``); with ``state``,
    check and then move its pins. Raises BucketError, LedgerError (e.g. no logs at all)."""
    if not verifiers:
        raise LedgerError("verification needs at least one verifier key")
    logs = list_logs(bucket, pattern)
    inventories = [take_inventory(bucket, log) for log in logs]
    pulls = pull_logs(bucket, inventories, cache_root, progress=progress)
    verdicts: list[LogVerdict] = []
    for inv, pulled in zip(inventories, pulls, strict=True):
        pinned = state.pinned(inv.log.origin) if state is not None else None
        verdicts.append(
            verify_log(bucket, inv, pulled, verifiers, pinned=pinned, check_blobs=check_blobs)
        )
    if state is not None:
        present = {log.origin for log in logs}
        for origin in state.origins():
            if origin in present or (
                pattern is not None and not fnmatch.fnmatchcase(origin, pattern)
            ):
                continue
            pin = state.pinned(origin)
            assert pin is not None
            verdicts.append(
                LogVerdict(
                    LogRef(origin, layout.log_name(origin)),
                    findings=[
                        f"the log is gone from the bucket; --state verified it up to size "
                        f"{pin[1].size} before"
                    ],
                    pinned=pin[1],
                )
            )
        for v in verdicts:
            if v.ok and v.report is not None and v.report.latest is not None:
                newest = v.report.latest
                if v.pinned is None or newest.size > v.pinned.size:
                    note = _note_of(v.pull, newest)
                    if note is not None:
                        state.pin(v.log.origin, note)
    if not logs and (state is None or not state.origins()):
        raise LedgerError(f"no logs under {bucket.url}/{layout.LOGS}/")
    return verdicts


def _note_of(pulled: PullResult | None, cp: Checkpoint) -> str | None:
    """The signed note of ``cp`` from the pulled history (the report keeps only the text)."""
    if pulled is None:
        return None
    notes, _ = read_history(pulled.directory)
    for note in reversed(notes):
        c = unverified_checkpoint(note)
        if c.size == cp.size and c.root == cp.root:
            return note
    return None


__all__ = ["LogVerdict", "bucket_findings", "verify_log", "verify_source"]
