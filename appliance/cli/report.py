"""``appliance report``: the auditor's evidence package for a period (see appliance.report).

Exit codes: 0 every log of the period verified; 1 tampering found in a log (the package is
written and its first page says so); 2 the package could not be made, or a log could not
be verified (wrong or missing key: the package says which).
"""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli._source import (
    CACHE_OPTION,
    OFFLINE_OPTION,
    ORIGIN_OPTION,
    BucketOptions,
    Progress,
    pull_source,
)
from appliance.ledger.errors import LedgerError, TamperError
from appliance.ledger.index import parse_time
from appliance.report import Period, ReportRequest, build_report
from appliance.report.sources import LogDir
from appliance.signing.keys import load_verifier_key


class Unverified(LedgerError):
    """Some log of the period could not be verified (exit 2)."""


@click.command("report")
@click.option(
    "--source",
    "sources",
    multiple=True,
    required=True,
    help="A ledger directory, a directory holding many (one per runner boot), or the fleet's "
    "bucket (s3://BUCKET/PREFIX: every log under it, pulled into --cache); repeatable.",
)
@click.option(
    "--endpoint-url",
    envvar="APPLIANCE_S3_ENDPOINT",
    help="S3 endpoint for s3:// sources (radosgw, MinIO...); default AWS. Or $APPLIANCE_S3_ENDPOINT.",
)
@click.option("--region", default="us-east-1", show_default=True, help="Region of s3:// sources.")
@click.option(
    "--ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CA bundle for an https endpoint with a private CA.",
)
@CACHE_OPTION
@ORIGIN_OPTION
@OFFLINE_OPTION
@click.option("--since", help="ISO 8601 date/time, UTC unless an offset is given (inclusive).")
@click.option("--until", help="ISO 8601 date/time (exclusive).")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory to write the package to (must not exist or be empty).",
)
@click.option(
    "--vkey",
    "vkeys",
    multiple=True,
    required=True,
    help="Verifier key of the logs: a file or the vkey text itself (repeatable).",
)
@click.option("--rows", type=click.IntRange(min=0), default=20, show_default=True,
              help="Result rows shown per statement in the session pages.")  # fmt: skip
@click.option("--progress/--no-progress", default=True, help="Progress on stderr.")
def report_command(
    sources: tuple[str, ...],
    endpoint_url: str | None,
    region: str,
    ca: Path | None,
    cache: Path | None,
    origin: str | None,
    offline: bool,
    since: str | None,
    until: str | None,
    out: Path,
    vkeys: tuple[str, ...],
    rows: int,
    progress: bool,
) -> None:
    """Write the evidence package for [--since, --until) from the logs in --source: static
    HTML (open OUT/index.html), report.json, the signed checkpoints and entries, proofs,
    and a standalone checker (OUT/verify.html says how to use it)."""
    period = Period(parse_time(since) if since else None, parse_time(until) if until else None)
    if period.since is not None and period.until is not None and period.since >= period.until:
        raise LedgerError(f"--since {since} is not before --until {until}")
    stages: dict[str, Progress] = {}

    def show(stage: str, done: int, total: int) -> None:
        if stage not in stages:
            stages[stage] = Progress(progress, stage, in_bytes=stage.startswith("verifying"))
        stages[stage](done, total)

    def remote(url: str) -> list[LogDir]:
        """The logs under a bucket URL, pulled into the cache (named by their bucket names,
        the same on every copy)."""
        if not url.startswith("s3://"):
            raise LedgerError(f"source {url}: only s3:// URLs and local directories are read")
        bucket = BucketOptions(url, endpoint_url, region, ca)
        pulled = pull_source(bucket, cache, origin, progress=progress, offline=offline)
        return [LogDir(d, d.name) for d in pulled]

    result = build_report(
        ReportRequest(
            sources=sources,
            out=out,
            verifiers=[load_verifier_key(v) for v in vkeys],
            period=period,
            rows=rows,
            progress=show,
            remote=remote,
        )
    )
    totals = result.facts.totals()
    click.echo(
        f"wrote {result.out}: {result.files} files; {totals['logs']} logs, "
        f"{totals['sessions']} sessions, {totals['statements']} statements, "
        f"{totals['denials']} denied, {totals['holds']} held"
    )
    click.echo(f"package hash (sha256 of SHA256SUMS): {result.sums_sha256}")
    if result.facts.status == "tampered":
        bad = ", ".join(lf.origin or lf.name for lf in result.facts.tampered)
        raise TamperError(f"TAMPERING DETECTED in {bad}; see {result.out / 'index.html'}")
    if result.facts.status == "unverifiable":
        bad = ", ".join(lf.origin or lf.name for lf in result.facts.unverifiable)
        raise Unverified(f"NOT VERIFIED: {bad}; see {result.out / 'index.html'}")
    click.echo("VERIFIED: every log of the period matches its signed checkpoints")
