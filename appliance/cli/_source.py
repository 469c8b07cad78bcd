"""Where ledger commands read from: a local ``--ledger DIR`` or the fleet's bucket.

``--source s3://BUCKET/PREFIX`` (with ``--endpoint-url``, ``--region``, ``--ca``; credentials
from the AWS SDK's own chain: ``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID``..., ``~/.aws``) pulls
every log under the prefix (or those whose origin matches ``--origin GLOB``) into a local
cache, incrementally (``--cache DIR``, default ``$XDG_CACHE_HOME/appliance/s3/BUCKET/PREFIX``),
with progress on stderr, and hands the commands one ordinary ledger directory per log.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from appliance.bucket import Bucket, BucketSettings, check_endpoint_url, parse_bucket_url
from appliance.ledger.errors import LedgerError

F = TypeVar("F", bound=Callable[..., Any])


class Progress:
    """Progress on stderr: a live line on a terminal, a line per 10% otherwise. ``done`` and
    ``total`` are bytes (shown in MB) or, with ``in_bytes=False``, items. ``enabled`` None:
    on for totals of 16 MB and more."""

    def __init__(
        self, enabled: bool | None, label: str = "verifying", *, in_bytes: bool = True
    ) -> None:
        self.enabled = enabled
        self.label = label
        self.in_bytes = in_bytes
        self.tty = sys.stderr.isatty()
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        on = self.enabled if self.enabled is not None else total >= 16 << 20
        if not on or total == 0:
            return
        pct = done * 100 // total
        of = f"{total / 1e6:.1f} MB" if self.in_bytes else str(total)
        if self.tty:
            click.echo(f"\r{self.label}: {pct:3d}% of {of}", nl=False, err=True)
            if done >= total:
                click.echo("", err=True)
        elif pct // 10 != self.last // 10 or done >= total:
            click.echo(f"{self.label}: {pct}% of {of}", err=True)
        self.last = pct


def bucket_options(url_option: str, help: str) -> Callable[[F], F]:
    """``url_option`` (an s3:// URL) and the connection options, passed on as ``bucket``
    (a :class:`BucketOptions`, None when the URL is not given)."""

    def decorate(f: F) -> F:
        options = [
            click.option(url_option, "bucket_url", metavar="s3://BUCKET[/PREFIX]", help=help),
            click.option(
                "--endpoint-url",
                envvar="APPLIANCE_S3_ENDPOINT",
                help="S3 endpoint (radosgw, MinIO...); default AWS. Or $APPLIANCE_S3_ENDPOINT.",
            ),
            click.option("--region", default="us-east-1", show_default=True),
            click.option(
                "--ca",
                type=click.Path(dir_okay=False, path_type=Path),
                help="CA bundle for an https endpoint with a private CA.",
            ),
        ]
        for option in reversed(options):
            f = option(f)

        @functools.wraps(f)  # carries the options click attached to f
        def wrapper(**kwargs: Any) -> Any:
            url = kwargs.pop("bucket_url")
            endpoint, region, ca = (
                kwargs.pop("endpoint_url"),
                kwargs.pop("region"),
                kwargs.pop("ca"),
            )
            kwargs["bucket"] = BucketOptions(url, endpoint, region, ca) if url else None
            return f(**kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


@dataclass(frozen=True)
class BucketOptions:
    url: str
    endpoint_url: str | None
    region: str
    ca: Path | None

    def open(self) -> Bucket:
        """The bucket (credentials from the AWS SDK's chain). Raises BucketURLError."""
        settings = BucketSettings(
            url=parse_bucket_url(self.url),
            endpoint_url=check_endpoint_url(self.endpoint_url) if self.endpoint_url else None,
            region=self.region,
            ca=self.ca,
        )
        return Bucket(settings)

    def default_cache(self) -> Path:
        url = parse_bucket_url(self.url)
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "appliance" / "s3" / url.bucket / (url.prefix or "_")


def pull_source(
    bucket: BucketOptions,
    cache: Path | None,
    origin: str | None,
    *,
    progress: bool | None = None,
    offline: bool = False,
) -> list[Path]:
    """Pull the logs under ``bucket`` (matching ``origin``) into the cache; their
    directories, in origin order (``offline``: the cache as it is, the bucket unread).
    Raises LedgerError if there is none."""
    from appliance.ledger.fleet import cached_logs, list_logs, pull_logs, take_inventory

    root = cache or bucket.default_cache()
    if offline:
        cached = [r.directory for r in cached_logs(root, origin)]
        if not cached:
            raise LedgerError(f"no logs in the cache {root}: pull them first (without --offline)")
        return cached
    b = bucket.open()
    logs = list_logs(b, origin)
    if not logs:
        what = f" with origin {origin!r}" if origin else ""
        raise LedgerError(f"no logs{what} under {b.url}/logs/")
    results = pull_logs(
        b,
        [take_inventory(b, log) for log in logs],
        root,
        progress=Progress(progress, "pulling"),
    )
    for r in results:
        for problem in [*r.gaps, *r.bad_objects]:
            click.echo(f"warning: {r.log.origin}: {problem}", err=True)
    return [r.directory for r in results if (r.directory / "entries.log").exists()]


LEDGER_OPTION = click.option(
    "--ledger",
    "directory",
    required=True,
    envvar="APPLIANCE_LEDGER",
    type=click.Path(file_okay=False, path_type=Path),
    help="Ledger directory (or $APPLIANCE_LEDGER).",
)


@dataclass(frozen=True)
class LedgerSource:
    """Where a ledger command reads: ``--ledger DIR``, or ``--source`` (with ``--cache``,
    ``--origin``, ``--offline``)."""

    directory: Path | None
    bucket: BucketOptions | None
    cache: Path | None = None
    origin: str | None = None
    offline: bool = False

    def directories(self) -> list[Path]:
        """The ledger directories to read: ``--ledger``, or the pulled logs of ``--source``.
        Raises LedgerError."""
        from appliance.ledger.store import require_ledger

        if (self.directory is None) == (self.bucket is None):
            raise LedgerError("give --ledger DIR or --source s3://BUCKET[/PREFIX]")
        if self.directory is not None:
            return [require_ledger(self.directory)]
        assert self.bucket is not None
        return pull_source(self.bucket, self.cache, self.origin, offline=self.offline)


def ledger_or_source(f: F) -> F:
    """``--ledger DIR`` or ``--source s3://...`` with the bucket options, ``--cache``,
    ``--origin`` and ``--offline``, passed on as ``source`` (a :class:`LedgerSource`)."""

    @functools.wraps(f)  # carries the options click attached to f
    def wrapper(**kwargs: Any) -> Any:
        kwargs["source"] = LedgerSource(
            kwargs.pop("directory"),
            kwargs.pop("bucket"),
            kwargs.pop("cache"),
            kwargs.pop("origin"),
            kwargs.pop("offline"),
        )
        return f(**kwargs)

    options = [
        click.option(
            "--ledger",
            "directory",
            envvar="APPLIANCE_LEDGER",
            type=click.Path(file_okay=False, path_type=Path),
            help="Ledger directory (or $APPLIANCE_LEDGER).",
        ),
        bucket_options("--source", "Read every log under this bucket URL instead."),
        CACHE_OPTION,
        ORIGIN_OPTION,
        OFFLINE_OPTION,
    ]
    decorated: Any = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]


CACHE_OPTION = click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Local cache of the pulled logs (default: $XDG_CACHE_HOME/appliance/s3/BUCKET/PREFIX).",
)
ORIGIN_OPTION = click.option("--origin", help="Only logs whose origin matches this glob.")
OFFLINE_OPTION = click.option(
    "--offline",
    is_flag=True,
    help="With --source: read the cache as the last pull left it (no request to the bucket).",
)
