"""S3 buckets: the one store a CI fleet shares (ledger shipping, fleet reading, approvals hub).

Where it sits: the ledger's shipper (:mod:`appliance.ledger.fleet`) writes each log's objects
through a :class:`Bucket`; ``appliance ledger verify|pull|query --source s3://...`` read them
back; the approvals hub (:mod:`appliance.approvals.hub`) posts requests and reads decisions.
Nothing here knows what the objects mean: keys, write-once puts with checksums and Object
Lock retention, reads of a given version, listings of keys and of every object version.

- :class:`BucketURL` / :func:`parse_bucket_url`: ``s3://BUCKET[/PREFIX]``;
- :class:`BucketSettings`: URL, endpoint, region, CA, where the credentials come from;
- :func:`open_bucket`: a :class:`Bucket` for settings, reading the credentials secret;
- errors: :class:`BucketError` and its kinds (unavailable, denied, exists, missing).
"""

from __future__ import annotations

from appliance.bucket._client import (
    Bucket,
    BucketDenied,
    BucketError,
    BucketUnavailable,
    Credentials,
    ObjectExists,
    ObjectLock,
    ObjectMissing,
    ObjectVersion,
    parse_credentials,
)
from appliance.bucket._url import (
    BucketSettings,
    BucketURL,
    BucketURLError,
    check_endpoint_url,
    parse_bucket_url,
)

__all__ = [
    "Bucket",
    "BucketDenied",
    "BucketError",
    "BucketSettings",
    "BucketURL",
    "BucketURLError",
    "BucketUnavailable",
    "Credentials",
    "ObjectExists",
    "ObjectLock",
    "ObjectMissing",
    "ObjectVersion",
    "check_endpoint_url",
    "open_bucket",
    "parse_bucket_url",
    "parse_credentials",
]


def open_bucket(settings: BucketSettings, *, credentials_dir: str | None = None) -> Bucket:
    """A :class:`Bucket` for ``settings``; the credentials secret (if configured) is read
    now. Raises SecretError or BucketError."""
    from appliance.credentials import read_secret

    creds = None
    if settings.credentials is not None:
        text = read_secret(settings.credentials, credentials_dir=credentials_dir)
        creds = parse_credentials(text, where=f"S3 credentials ({settings.credentials.describe()})")
    return Bucket(settings, credentials=creds)
