"""What an HTTP session leaves in the ledger, masked before anything is appended.

Where this sits: the HTTP session core (:mod:`.core`) calls :class:`HttpRecorder` for each
exchange and WebSocket message; entries are built here and appended through
:class:`~appliance.ledger.api.Ledger`. Entries (``data``):

- ``http.request``: ``n`` (the exchange's number in the session), ``method``, ``url``
  (path and query masked), ``http_version``, ``headers`` (masked; credentials never: see
  :data:`SECRET_HEADERS`), ``kube`` (verb, group, resource, namespace, name, subresource),
  ``decision``, ``credential`` (what was removed, what kind was added: never a value);
- ``policy.decision`` for every request not simply allowed (as for SQL);
- ``http.response``: ``n``, ``status``, ``headers``, ``duration_us`` (to the head,
  ``wait_us``, and to the end), ``request_body`` and ``body``: each ``{"length", "digest": "sha256:...",
  "truncated"}`` of the *whole* body; ``request_body_blob`` and ``body_blob``, the masked first ``record_body`` bytes
  (masked in the ledger writer, :class:`BodyTransforms`; a body that is not text has no
  blob); ``approval`` when the request was held; ``error`` when it never got a response;
- ``websocket.message``: ``n``, ``direction`` (``c2s``/``s2c``), ``opcode``, ``text``
  (masked) or ``binary`` (length); for the Kubernetes streaming protocols the
  ``channel`` (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize) and the masked ``text``.
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from appliance.ledger.api import Ledger, PendingBlob
from appliance.ledger.entries import canonical_json
from appliance.masking import MaskCounts, TargetMasker
from appliance.masking._bodies import mask_body, mask_header, mask_query
from appliance.masking._jsonpath import JsonPath
from appliance.protocols.http import Headers, header

SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-amz-security-token",
        "x-api-key",
        "x-auth-token",
        "private-token",
    }
)
"""Headers whose values are credentials: recorded as ``[REDACTED]``, whatever they hold."""
REDACTED = "[REDACTED]"
REDACTED_CREDENTIAL = b"[REDACTED:CREDENTIAL]"
_MAX_INFLATED = 4 * 1024 * 1024
_HEADER_CACHE = 1024


def _us(seconds: float) -> int:
    return max(0, round(seconds * 1_000_000))


class BodyCapture:
    """One message body on its way: SHA-256 and length of all of it, its first ``cap``
    bytes kept for the blob (bounded memory, whatever the body's size)."""

    __slots__ = ("cap", "content_encoding", "content_type", "hash", "kept", "size")

    def __init__(self, cap: int, headers: Headers) -> None:
        self.cap = cap
        self.hash = hashlib.sha256()
        self.size = 0
        self.kept = bytearray()
        self.content_type = header(headers, "content-type")
        self.content_encoding = (header(headers, "content-encoding") or "").lower()

    def add(self, data: bytes) -> None:
        self.hash.update(data)
        self.size += len(data)
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += data[:room]

    def summary(self) -> dict[str, Any]:
        """Length and digest of the whole body (not ``size``/``sha256``: those two keys
        together mean a blob reference in an entry, see ``ledger.entries.is_blob_ref``)."""
        return {
            "length": self.size,
            "digest": "sha256:" + self.hash.hexdigest(),
            "truncated": self.size > len(self.kept),
        }

    def pending(
        self, transforms: BodyTransforms, secrets: tuple[bytes, ...] = ()
    ) -> PendingBlob | None:
        """The blob of the kept bytes (masked by the writer), or None (empty, or not kept).
        ``secrets`` (the injected credential) are cut out here, before the bytes leave."""
        if not self.kept:
            return None
        for secret in secrets:
            if secret in self.kept:
                self.kept = bytearray(bytes(self.kept).replace(secret, REDACTED_CREDENTIAL))
        head = orjson.dumps(
            {
                "content_type": self.content_type,
                "content_encoding": self.content_encoding or None,
                "complete": self.size == len(self.kept),
            }
        )
        return PendingBlob(transforms, head + b"\n" + bytes(self.kept))


class BodyTransform:
    """Runs in the ledger writer: a kept body (header line + bytes) -> its masked text."""

    def __init__(
        self, masker: TargetMasker | None, paths: tuple[JsonPath, ...], counts: MaskCounts
    ) -> None:
        self.masker = masker
        self.paths = paths
        self.counts = counts
        self.buffer = bytearray()
        self.note: dict[str, Any] = {}

    def __call__(self, chunk: bytes) -> bytes:
        # A pending blob arrives whole, in one write.
        head, _, body = chunk.partition(b"\n")
        meta = orjson.loads(head)
        complete = bool(meta.get("complete"))
        encoding = meta.get("content_encoding")
        if encoding in ("gzip", "deflate", "x-gzip"):
            try:
                body = _inflate(body, encoding, complete)
            except (OSError, zlib.error, EOFError):
                self.note = {"encoding": encoding, "decoded": False}
                return b""
        elif encoding not in (None, "", "identity"):
            self.note = {"encoding": encoding, "decoded": False}
            return b""
        if self.masker is None:
            text = body.decode("utf-8", "replace")
        else:
            masked = mask_body(
                self.masker,
                body,
                meta.get("content_type"),
                self.counts,
                paths=self.paths,
                complete=complete,
            )
            if masked is None:
                self.note = {"binary": True}
                return b""
            text = masked
        return text.encode("utf-8", "replace")


def _inflate(body: bytes, encoding: str, complete: bool) -> bytes:
    if encoding == "deflate":
        d = zlib.decompressobj()
    else:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(body, _MAX_INFLATED)
    if complete and not d.eof and not d.unconsumed_tail:
        raise EOFError("truncated compressed body")
    return out


class BodyTransforms:
    """The :class:`~appliance.ledger.TransformFactory` of one target's body blobs (picklable:
    a masker and path rules)."""

    def __init__(self, masker: TargetMasker | None, paths: tuple[JsonPath, ...]) -> None:
        self.masker = masker
        self.paths = paths

    def new(self) -> tuple[Callable[[bytes], bytes], Callable[[], Mapping[str, Any]]]:
        counts = MaskCounts()
        transform = BodyTransform(self.masker, self.paths, counts)

        def annotate() -> Mapping[str, Any]:
            out: dict[str, Any] = dict(transform.note)
            if counts:
                out["masking"] = counts.as_dict()
            return out

        return transform, annotate


@functools.lru_cache(maxsize=256)
def body_transforms(masker: TargetMasker | None, paths: tuple[JsonPath, ...]) -> BodyTransforms:
    """One factory per target (a writer in another process receives each once)."""
    return BodyTransforms(masker, paths)


class HttpRecorder:
    """Builds and appends one HTTP session's entries; see the module docstring."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        session: str,
        target: str,
        account: str | None,
        identity: Mapping[str, Any],
        masker: TargetMasker | None,
        paths: tuple[JsonPath, ...],
        record_body: int,
    ) -> None:
        self.ledger = ledger
        self.session = session
        self.target = target
        self.account = account
        self.identity = dict(identity)
        self.masker = masker
        self.record_body = record_body
        self.paths = paths
        self.transforms = body_transforms(masker, paths)
        self.secrets: tuple[bytes, ...] = ()  # the injected credential, as it may be echoed
        # Header values come back request after request (user agent, accept, content type):
        # each is masked once per session (with its counts), as statements are for SQL.
        self._headers: dict[tuple[str, str], tuple[str, MaskCounts]] = {}
        canonical_json(self.identity)

    def add_secret(self, *values: str) -> None:
        """Values never to record, wherever they show up (a response echoing the token)."""
        self.secrets = tuple({*self.secrets, *(v.encode() for v in values if len(v) >= 4)})

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            value = secret.decode()
            if value in text:
                text = text.replace(value, REDACTED_CREDENTIAL.decode())
        return text

    def append(
        self, type: str, data: Mapping[str, Any], blobs: Mapping[str, Any] | None = None
    ) -> None:
        self.ledger.append(
            type,
            session=self.session,
            identity=self.identity,
            account=self.account,
            target=self.target,
            data=data,
            blobs=blobs,
        )

    # -- masking -------------------------------------------------------------------------------

    def mask(self, text: str, counts: MaskCounts | None = None) -> str:
        text = self.scrub(text)
        if self.masker is None:
            return text
        return self.masker.mask_text(text, counts if counts is not None else MaskCounts())

    def url(self, target: str, counts: MaskCounts) -> str:
        path, sep, query = self.scrub(target).partition("?")
        if self.masker is None:
            return target
        masked_path = self.masker.mask_value_text(path, counts, "path")
        return masked_path + (sep + mask_query(self.masker, query, counts) if sep else "")

    def headers(
        self, headers: Headers, counts: MaskCounts, *, secret: str | None = None
    ) -> list[list[str]]:
        out = []
        for name, value in headers:
            if name in SECRET_HEADERS or name == secret:
                out.append([name, REDACTED])
            elif self.masker is not None:
                hit = self._headers.get((name, value))
                if hit is None:
                    found = MaskCounts()
                    hit = (mask_header(self.masker, name, self.scrub(value), found), found)
                    if len(self._headers) >= _HEADER_CACHE:
                        self._headers.clear()
                    self._headers[(name, value)] = hit
                if hit[1]:
                    counts.update(hit[1])
                out.append([name, hit[0]])
            else:
                out.append([name, self.scrub(value)])
        return out

    def capture(self, headers: Headers) -> BodyCapture:
        return BodyCapture(self.record_body, headers)

    def body(self, capture: BodyCapture | None) -> tuple[dict[str, Any] | None, PendingBlob | None]:
        if capture is None:
            return None, None
        return capture.summary(), capture.pending(self.transforms, self.secrets)
