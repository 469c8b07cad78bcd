"""``appliance ledger ship|pull`` and ``verify --source``: the ledger and the fleet's bucket.

Thin commands over :mod:`appliance.ledger.fleet`; registered in ``appliance ledger`` by
:mod:`appliance.cli.ledger`. Exit codes as for local ledgers: 0 done / verified, 1 tampering
found, 2 could not do it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import click

from appliance.bucket import ObjectLock
from appliance.cli._source import (
    CACHE_OPTION,
    LEDGER_OPTION,
    ORIGIN_OPTION,
    BucketOptions,
    Progress,
    bucket_options,
    pull_source,
)
from appliance.ledger.errors import LedgerError, TamperError
from appliance.ledger.fleet import LogVerdict, Shipper, StateDir, verify_source
from appliance.ledger.store import require_ledger
from appliance.signing.keys import VerifierKey


@click.command("ship")
@LEDGER_OPTION
@bucket_options("--to", "The fleet's bucket URL (the log goes under logs/<origin>/).")
@click.option(
    "--lock-mode",
    type=click.Choice(["COMPLIANCE", "GOVERNANCE"]),
    help="Object Lock retention for every object written (default: the bucket's).",
)
@click.option("--retain-days", type=click.IntRange(min=1), help="With --lock-mode.")
def ship_cmd(
    directory: Path, bucket: BucketOptions | None, lock_mode: str | None, retain_days: int | None
) -> None:
    """Ship everything signed in the ledger that the bucket does not hold yet, as the
    daemon does continuously: blobs, entry bundles, then every checkpoint, each written
    once. Safe to run while the daemon writes (only signed checkpoints are shipped)."""
    if bucket is None:
        raise click.UsageError("--to s3://BUCKET[/PREFIX] is required")
    if (lock_mode is None) != (retain_days is None):
        raise click.UsageError("give --lock-mode and --retain-days together")
    require_ledger(directory)
    lock = ObjectLock(lock_mode, retain_days) if lock_mode and retain_days else None
    shipper = Shipper(directory, bucket.open(), lock=lock)
    t0 = time.monotonic()
    progress = shipper.reconcile()
    for gap in progress.gaps:
        click.echo(f"warning: the bucket's copy: {gap}", err=True)
    done = shipper.ship()
    click.echo(
        f"shipped {done.checkpoints} checkpoints, {done.entries} entries, {done.blobs} blobs "
        f"({done.bytes} B) in {time.monotonic() - t0:.2f} s; {shipper.log_url} holds "
        f"{progress.checkpoints} checkpoints up to size {progress.signed_size}"
    )


@click.command("pull")
@bucket_options("--source", "The fleet's bucket URL.")
@click.option(
    "--to",
    "cache",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of the copies: one ledger directory per log, updated incrementally.",
)
@ORIGIN_OPTION
@click.option("--progress/--no-progress", default=None, help="Default: on for pulls > 16 MB.")
def pull_cmd(
    bucket: BucketOptions | None, cache: Path, origin: str | None, progress: bool | None
) -> None:
    """Copy the logs under the bucket URL for offline work (first version of every object;
    what a pull added before is kept). Verify the copies with `ledger verify --ledger`."""
    if bucket is None:
        raise click.UsageError("--source s3://BUCKET[/PREFIX] is required")
    t0 = time.monotonic()
    dirs = pull_source(bucket, cache, origin, progress=progress)
    click.echo(f"pulled {len(dirs)} logs into {cache} in {time.monotonic() - t0:.2f} s")
    for d in dirs:
        click.echo(f"  {d}")


def verify_from_bucket(
    ctx: click.Context,
    bucket: BucketOptions,
    cache: Path | None,
    origin: str | None,
    state: Path | None,
    verifiers: Sequence[VerifierKey],
    fmt: str,
    progress: bool | None,
    check_blobs: bool,
) -> None:
    """``ledger verify --source``: print one verdict per log; exit 1 if any has findings."""
    b = bucket.open()
    t0 = time.monotonic()
    verdicts = verify_source(
        b,
        verifiers,
        cache or bucket.default_cache(),
        pattern=origin,
        state=StateDir(state) if state is not None else None,
        progress=Progress(progress, "pulling"),
        check_blobs=check_blobs,
    )
    elapsed = time.monotonic() - t0
    bad = [v for v in verdicts if not v.ok]
    if fmt == "json":
        click.echo(json.dumps([_verdict_json(v) for v in verdicts], sort_keys=True))
        if bad:
            ctx.exit(1)
        return
    click.echo(f"{b.url}: {len(verdicts)} logs, checked in {elapsed:.2f} s")
    for v in verdicts:
        _print_verdict(v)
    click.echo("VERIFIED" if not bad else f"NOT VERIFIED: {len(bad)} of {len(verdicts)} logs")
    if bad:
        first = bad[0]
        raise TamperError(f"{first.log.origin}: {first.findings[0]}", first.findings)


def _print_verdict(v: LogVerdict) -> None:
    r = v.report
    size = f"size {v.latest.size}" if v.latest else "nothing signed"
    if r is not None:
        what = f"{r.entries} entries, {r.checkpoints} checkpoints, {r.blobs} blobs, {size}"
    else:
        what = size
    click.echo(f"  log {v.log.origin}: {what}{'' if v.ok else '  NOT VERIFIED'}")
    if v.pinned is not None:
        click.echo(f"    --state had verified it up to size {v.pinned.size}")
    for w in v.warnings:
        click.echo(f"    warning: {w}")
    for f in v.findings:
        click.echo(f"    TAMPERING: {f}")


def _verdict_json(v: LogVerdict) -> dict[str, object]:
    r = v.report
    return {
        "origin": v.log.origin,
        "ok": v.ok,
        "entries": r.entries if r else 0,
        "checkpoints": r.checkpoints if r else 0,
        "blobs": r.blobs if r else 0,
        "latest": {"size": v.latest.size, "root": v.latest.root.hex()} if v.latest else None,
        "pinned": v.pinned.size if v.pinned else None,
        "directory": str(v.pull.directory) if v.pull else None,
        "findings": v.findings,
        "warnings": v.warnings,
    }


def session_directory(directories: Sequence[Path], session: str) -> Path:
    """The one ledger among ``directories`` that holds SESSION (given whole or by a
    beginning that names one session only); a single directory is returned as it is (the
    command resolves the session there). Raises LedgerError."""
    from appliance.ledger.index import Index

    if len(directories) == 1:
        return directories[0]
    found: list[tuple[Path, str]] = []
    for d in directories:
        with Index.open(d) as index:
            try:
                found.append((d, index.resolve_session(session)))
            except LedgerError as exc:
                if "no entries for session" not in str(exc):
                    raise LedgerError(f"{d.name}: {exc}") from None
    exact = [f for f in found if f[1] == session]
    if len(exact) == 1 or len(found) == 1:
        return (exact or found)[0][0]
    if len(exact) > 1:
        raise LedgerError(f"session {session!r} is in several logs: {[str(d) for d, _ in exact]}")
    if found:
        shown = ", ".join(s for _, s in found[:5])
        raise LedgerError(
            f"{session!r} is the beginning of several sessions ({shown}); give more of it"
        )
    raise LedgerError(f"no entries for session {session!r} in {len(directories)} logs")


__all__ = [
    "CACHE_OPTION",
    "ORIGIN_OPTION",
    "pull_cmd",
    "session_directory",
    "ship_cmd",
    "verify_from_bucket",
]
