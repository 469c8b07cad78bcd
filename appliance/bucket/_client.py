"""A bucket through boto3: write-once puts, reads, listings of keys and of object versions.

Every call blocks (boto3); the daemon runs them in worker threads. Keys given to and
returned by :class:`Bucket` are relative to the URL's prefix. Errors say whose fault:
:class:`BucketUnavailable` (the network or the server, worth retrying),
:class:`ObjectExists` (a conditional put found the key taken), :class:`ObjectMissing`,
:class:`BucketDenied` (the credentials may not do this) and :class:`BucketError` for the rest.

Designed for the three ways radosgw differs from AWS (issue 15): ``If-None-Match: *`` is
sent on every put but a versioned radosgw bucket ignores it (a second put is a second
version, which verification reports), so writers track what they wrote; the SHA-256
checksum header is sent for AWS, and ``Content-MD5`` too, which radosgw checks; checksums
are computed only when an operation requires them (``request_checksum_calculation=
"when_required"``: boto3's default streaming checksums get 411 from radosgw over HTTPS).
"""

from __future__ import annotations

import base64
import configparser
import datetime
import hashlib
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from appliance.bucket._url import BucketSettings, BucketURL
from appliance.errors import ApplianceError


class BucketError(ApplianceError):
    """A bucket operation failed (exit 2)."""


class BucketUnavailable(BucketError):
    """The bucket cannot be reached now (connection, timeout, 5xx, throttling): retry later."""


class BucketDenied(BucketError):
    """The credentials are not allowed to do this (403)."""


class ObjectExists(BucketError):
    """A write-once put found the key already written (412 Precondition Failed)."""


class ObjectMissing(BucketError):
    """No such key (or version)."""


@dataclass(frozen=True)
class ObjectLock:
    """Object Lock retention given to every object written: mode and days from now."""

    mode: str  # "COMPLIANCE" | "GOVERNANCE"
    retain_days: int

    def until(self, now: datetime.datetime) -> datetime.datetime:
        return now + datetime.timedelta(days=self.retain_days)


@dataclass(frozen=True)
class ObjectVersion:
    """One version of a key, or a delete marker (``delete_marker``; no etag or size)."""

    key: str
    version_id: str
    etag: str
    size: int
    last_modified: datetime.datetime
    latest: bool
    delete_marker: bool = False


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None


def parse_credentials(text: str, *, where: str = "credentials") -> Credentials:
    """An AWS shared-credentials file: its ``[default]`` profile, or its only profile.

    Raises BucketError naming the problem (never a byte of the secret)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error:
        raise BucketError(
            f"{where} is not an AWS shared-credentials file ([default] with "
            "aws_access_key_id and aws_secret_access_key)"
        ) from None
    sections = parser.sections()
    name = "default" if "default" in sections else (sections[0] if len(sections) == 1 else None)
    if name is None:
        raise BucketError(f"{where}: give a [default] profile (it has {len(sections)} profiles)")
    profile = parser[name]
    access, secret = profile.get("aws_access_key_id"), profile.get("aws_secret_access_key")
    if not access or not secret:
        raise BucketError(
            f"{where}: profile [{name}] needs aws_access_key_id and aws_secret_access_key"
        )
    return Credentials(access.strip(), secret.strip(), (profile.get("aws_session_token") or None))


_UNAVAILABLE_CODES = frozenset(
    ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling")
)


def _translate(exc: Exception, what: str) -> BucketError:
    """The BucketError for a boto3/botocore exception raised while doing ``what``."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = f"{what}: {code or status} {err.get('Message') or ''}".rstrip()
        if code == "PreconditionFailed" or status == 412:
            return ObjectExists(message)
        if code in ("NoSuchKey", "NoSuchVersion", "404") or status == 404:
            if code == "NoSuchBucket":
                return BucketError(message)
            return ObjectMissing(message)
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
            return BucketDenied(message)
        if code in _UNAVAILABLE_CODES or status >= 500 or status == 429:
            return BucketUnavailable(message)
        return BucketError(message)
    if isinstance(exc, bx.NoCredentialsError):
        return BucketError(f"{what}: no S3 credentials (configure them, or AWS_* variables)")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionError | bx.HTTPClientError):
        return BucketUnavailable(f"{what}: {exc}")
    if isinstance(exc, bx.BotoCoreError):
        return BucketError(f"{what}: {exc}")
    raise exc


class Bucket:
    """One bucket URL with a boto3 client. Thread-safe (boto3 clients are).

    ``credentials`` None: the SDK's chain. ``client`` replaces the boto3 client (tests).
    """

    def __init__(
        self,
        settings: BucketSettings,
        *,
        credentials: Credentials | None = None,
        client: Any = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        attempts: int = 3,
    ) -> None:
        self.settings = settings
        self.url: BucketURL = settings.url
        self._s3 = (
            client
            if client is not None
            else _make_client(settings, credentials, connect_timeout, read_timeout, attempts)
        )

    def child(self, *parts: str) -> Bucket:
        """The same bucket and client with ``parts`` added to the prefix."""
        other = Bucket.__new__(Bucket)
        other.settings = self.settings
        other.url = self.url.child(*parts)
        other._s3 = self._s3
        return other

    def _full(self, prefix: str) -> str:
        """The full key prefix of a relative one ("" is everything under the URL)."""
        if prefix:
            return self.url.key(prefix)
        return self.url.prefix + "/" if self.url.prefix else ""

    def _call(self, what: str, fn: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._s3, fn)(Bucket=self.url.bucket, **kwargs)
        except Exception as exc:
            raise _translate(exc, what) from None

    # -- writes ------------------------------------------------------------------------------

    def put_once(
        self,
        key: str,
        data: bytes,
        *,
        lock: ObjectLock | None = None,
        now: datetime.datetime | None = None,
        content_type: str = "application/octet-stream",
    ) -> str | None:
        """Write ``key`` once: ``If-None-Match: *``, SHA-256 and MD5 checksums, and the
        Object Lock retention if given (``now`` is when it counts from). Returns the version
        id (None on an unversioned bucket). Raises ObjectExists where the server refuses to
        overwrite, BucketUnavailable, BucketDenied or BucketError."""
        full = self.url.key(key)
        kwargs: dict[str, Any] = {
            "Key": full,
            "Body": data,
            "IfNoneMatch": "*",
            "ChecksumSHA256": base64.b64encode(hashlib.sha256(data).digest()).decode(),
            "ContentMD5": base64.b64encode(hashlib.md5(data).digest()).decode(),
            "ContentType": content_type,
        }
        if lock is not None:
            when = now or datetime.datetime.now(datetime.UTC)
            kwargs.update(ObjectLockMode=lock.mode, ObjectLockRetainUntilDate=lock.until(when))
        answer = self._call(f"put {full}", "put_object", **kwargs)
        version = answer.get("VersionId")
        return str(version) if version else None

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: str, *, version_id: str | None = None) -> bytes:
        """The object's bytes (a given version, or the latest). Raises ObjectMissing."""
        full = self.url.key(key)
        kwargs: dict[str, Any] = {"Key": full}
        if version_id is not None:
            kwargs["VersionId"] = version_id
        answer = self._call(f"get {full}", "get_object", **kwargs)
        try:
            return bytes(answer["Body"].read())
        except Exception as exc:
            raise _translate(exc, f"get {full}") from None

    def head(self, key: str) -> tuple[str, int] | None:
        """(etag without quotes, size) of the latest version, or None if there is none."""
        full = self.url.key(key)
        try:
            answer = self._call(f"head {full}", "head_object", Key=full)
        except ObjectMissing:
            return None
        return str(answer.get("ETag", "")).strip('"'), int(answer.get("ContentLength", 0))

    def list_keys(
        self, prefix: str = "", *, start_after: str | None = None
    ) -> Iterator[tuple[str, str, int]]:
        """(key, etag, size) of the latest version of every key under ``prefix`` (relative
        to the URL), in key order, from after ``start_after`` (a relative key) on."""
        full = self._full(prefix)
        kwargs: dict[str, Any] = {"Prefix": full}
        if start_after is not None:
            kwargs["StartAfter"] = self.url.key(start_after)
        while True:
            page = self._call(f"list {full}", "list_objects_v2", **kwargs)
            for item in page.get("Contents", []):
                yield (
                    self.url.relative(item["Key"]),
                    str(item.get("ETag", "")).strip('"'),
                    int(item.get("Size", 0)),
                )
            if not page.get("IsTruncated"):
                return
            kwargs = {"Prefix": full, "ContinuationToken": page["NextContinuationToken"]}

    def list_prefixes(self, prefix: str) -> list[str]:
        """The "directories" right under ``prefix`` (relative, ending in '/')."""
        full = self._full(prefix)
        full = full if full.endswith("/") or not full else full + "/"
        out: list[str] = []
        kwargs: dict[str, Any] = {"Prefix": full, "Delimiter": "/"}
        while True:
            page = self._call(f"list {full}", "list_objects_v2", **kwargs)
            out += [self.url.relative(p["Prefix"]) for p in page.get("CommonPrefixes", [])]
            if not page.get("IsTruncated"):
                return out
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def list_versions(self, prefix: str) -> list[ObjectVersion]:
        """Every version and delete marker under ``prefix`` (relative), newest first per
        key. Needs s3:ListBucketVersions."""
        full = self._full(prefix)
        kwargs: dict[str, Any] = {"Prefix": full}
        out: list[ObjectVersion] = []
        while True:
            page = self._call(f"list versions {full}", "list_object_versions", **kwargs)
            for v in page.get("Versions", []):
                out.append(
                    ObjectVersion(
                        self.url.relative(v["Key"]),
                        str(v.get("VersionId") or "null"),
                        str(v.get("ETag", "")).strip('"'),
                        int(v.get("Size", 0)),
                        v["LastModified"],
                        bool(v.get("IsLatest")),
                    )
                )
            for m in page.get("DeleteMarkers", []):
                out.append(
                    ObjectVersion(
                        self.url.relative(m["Key"]),
                        str(m.get("VersionId") or "null"),
                        "",
                        0,
                        m["LastModified"],
                        bool(m.get("IsLatest")),
                        delete_marker=True,
                    )
                )
            if not page.get("IsTruncated"):
                return out
            kwargs = {
                "Prefix": full,
                "KeyMarker": page["NextKeyMarker"],
                "VersionIdMarker": page["NextVersionIdMarker"],
            }


_LOADER: Any = None
_LOADER_LOCK = threading.Lock()


def _loader() -> Any:
    """One botocore data loader per process: it caches the S3 service model, which every
    new session would otherwise load and parse again (a quarter of a second each)."""
    global _LOADER
    with _LOADER_LOCK:
        if _LOADER is None:
            import botocore.loaders

            _LOADER = botocore.loaders.create_loader()
        return _LOADER


def _make_client(
    settings: BucketSettings,
    credentials: Credentials | None,
    connect_timeout: float,
    read_timeout: float,
    attempts: int,
) -> Any:
    with warnings.catch_warnings():
        # Debian's pyOpenSSL, seen by urllib3 through --system-site-packages, warns on import.
        warnings.filterwarnings("ignore", message="DSA is deprecated")
        import boto3
        import botocore.httpsession  # imports urllib3 and its pyOpenSSL support here
        import botocore.session
        from botocore.config import Config

    config = Config(
        region_name=settings.region,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "max_attempts": attempts},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # A radosgw or MinIO endpoint is addressed by path (no per-bucket DNS names).
        s3={"addressing_style": "path" if settings.endpoint_url else "auto"},
    )
    core = botocore.session.get_session()
    core.register_component("data_loader", _loader())
    session = boto3.session.Session(
        botocore_session=core,
        aws_access_key_id=credentials.access_key if credentials else None,
        aws_secret_access_key=credentials.secret_key if credentials else None,
        aws_session_token=credentials.session_token if credentials else None,
    )
    return session.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        verify=str(settings.ca) if settings.ca is not None else True,
        config=config,
    )
