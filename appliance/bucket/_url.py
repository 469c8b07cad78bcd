"""``s3://BUCKET[/PREFIX]`` URLs and the connection settings of a bucket (pure, no I/O)."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from appliance.config import SecretRef
from appliance.errors import ApplianceError

# S3 bucket naming rules (DNS-compatible names; the strict set AWS enforces for new buckets).
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class BucketURLError(ApplianceError):
    """A bucket URL or setting is malformed (exit 2)."""


@dataclass(frozen=True)
class BucketURL:
    """A bucket and a key prefix inside it (no leading or trailing slash; may be empty)."""

    bucket: str
    prefix: str = ""

    def key(self, *parts: str) -> str:
        """The full key of ``parts`` under the prefix, joined with '/'."""
        return "/".join(p for p in (self.prefix, *parts) if p)

    def relative(self, key: str) -> str:
        """``key`` without the prefix (raises BucketURLError if it is not under it)."""
        if not self.prefix:
            return key
        if not key.startswith(self.prefix + "/"):
            raise BucketURLError(f"key {key!r} is not under prefix {self.prefix!r}")
        return key[len(self.prefix) + 1 :]

    def child(self, *parts: str) -> BucketURL:
        return BucketURL(self.bucket, self.key(*parts))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_bucket_url(text: str) -> BucketURL:
    """Parse ``s3://BUCKET`` or ``s3://BUCKET/PREFIX`` (a trailing slash is dropped).

    Raises BucketURLError naming what is wrong."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "s3":
        raise BucketURLError(f"expected s3://BUCKET[/PREFIX], got {text!r}")
    if parts.query or parts.fragment or parts.username or parts.password or parts.port:
        raise BucketURLError(f"an s3:// URL has only a bucket and a prefix: {text!r}")
    bucket = parts.netloc
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise BucketURLError(f"invalid bucket name {bucket!r} in {text!r}")
    prefix = parts.path.strip("/")
    if "//" in prefix or any(seg in (".", "..") for seg in prefix.split("/")):
        raise BucketURLError(f"invalid key prefix {prefix!r} in {text!r}")
    return BucketURL(bucket, prefix)


def check_endpoint_url(text: str) -> str:
    """An ``http(s)://host[:port]`` endpoint (radosgw, MinIO, a VPC endpoint); returned as
    given. Raises BucketURLError."""
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as exc:
        raise BucketURLError(f"invalid endpoint URL {text!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BucketURLError(f"an endpoint URL is http(s)://host[:port], got {text!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise BucketURLError(f"an endpoint URL has no credentials, query or fragment: {text!r}")
    if parts.path not in ("", "/"):
        raise BucketURLError(f"an endpoint URL has no path: {text!r}")
    return text


@dataclass(frozen=True)
class BucketSettings:
    """How to reach a bucket: its URL and the connection settings.

    ``endpoint_url`` None means AWS itself; ``credentials`` None means the AWS SDK's own
    chain (environment, shared files, the instance's role), else a secret (a file or a
    systemd credential) in the AWS shared-credentials format; ``ca`` a CA bundle file for
    an https endpoint with a private CA.
    """

    url: BucketURL
    endpoint_url: str | None = None
    region: str = "us-east-1"
    ca: Path | None = None
    credentials: SecretRef | None = None
