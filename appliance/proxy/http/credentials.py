"""The upstream credential of an HTTP target: what the job sent is removed, the target's added.

Where this sits: the session core calls :meth:`Injector.apply` on every request head it
forwards (after policy allowed it), and, for an AWS ``aws-chunked`` upload signed chunk by
chunk, runs the body through :class:`ChunkResigner`. Sans-IO: the secret and the time are
passed in.

- Always removed from the job's request: ``Authorization``, ``Proxy-Authorization``,
  ``X-Amz-Security-Token`` and the target's own credential header; the job holds no secret
  (or a placeholder), and a secret it found elsewhere does not pass either.
- ``bearer`` / ``basic`` / ``header``: the header is set from the account.
- ``aws_sigv4``: the request is signed again with the target's keys by botocore's SigV4
  signer (its canonical request, string to sign and signature; the time passed in), over
  the headers that are forwarded and the payload hash the job declared
  (``X-Amz-Content-SHA256``: a hash, ``UNSIGNED-PAYLOAD``, or a ``STREAMING-*`` value; the
  server checks a declared hash against the body it receives). For
  ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD`` every chunk signature is computed again, chained
  from the new seed signature (same length: the body's length does not change). Presigned
  query authentication (``X-Amz-Signature`` in the query) is refused: it would carry the
  job's signature, not the target's.
- ``client_cert``: nothing in the head; the upstream TLS context carries the certificate.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ApplianceError
from appliance.protocols.http import Headers, RequestHead, header
from appliance.proxy.http.options import Auth

STRIPPED = frozenset({"authorization", "proxy-authorization", "x-amz-security-token"})
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class CredentialRefused(ApplianceError):
    """The request cannot carry the target's credential (the job is told why, 400)."""


@dataclass(frozen=True)
class Credential:
    """An account's credential: ``user`` (basic user, AWS access key id) and ``secret``."""

    user: str
    secret: str = field(repr=False)


@dataclass
class Applied:
    """The forwarded headers, what was removed (names only), and for a chunk-signed upload
    the :class:`ChunkResigner` its body goes through."""

    headers: Headers
    removed: tuple[str, ...]
    resigner: ChunkResigner | None = None
    injected: str | None = None  # the header that carries the credential (never recorded)


class Injector:
    """Applies one target's ``auth`` with one account's credential."""

    def __init__(self, auth: Auth, credential: Credential | None) -> None:
        if auth.type not in ("none", "client_cert") and credential is None:
            raise ApplianceError(f"auth type {auth.type} needs a credential")
        self.auth = auth
        self.credential = credential

    @property
    def header_name(self) -> str | None:
        if self.auth.type in ("bearer", "basic", "aws_sigv4"):
            return "authorization"
        if self.auth.type == "header":
            return self.auth.header
        return None

    def apply(self, head: RequestHead, *, now: datetime.datetime) -> Applied:
        """The headers to forward for ``head``; raises CredentialRefused."""
        strip = set(STRIPPED)
        if self.auth.header:
            strip.add(self.auth.header)
        kept = tuple((k, v) for k, v in head.headers if k not in strip)
        removed = tuple(sorted({k for k, _ in head.headers if k in strip}))
        kind = self.auth.type
        cred = self.credential
        if kind in ("none", "client_cert"):
            return Applied(kept, removed)
        assert cred is not None
        if kind == "bearer":
            return Applied(
                (*kept, ("authorization", f"Bearer {cred.secret}")),
                removed,
                injected="authorization",
            )
        if kind == "basic":
            token = base64.b64encode(f"{cred.user}:{cred.secret}".encode()).decode()
            return Applied(
                (*kept, ("authorization", f"Basic {token}")), removed, injected="authorization"
            )
        if kind == "header":
            assert self.auth.header is not None
            return Applied(
                (*kept, (self.auth.header, cred.secret)), removed, injected=self.auth.header
            )
        return self._sigv4(head, kept, removed, now)

    def _sigv4(
        self, head: RequestHead, kept: Headers, removed: tuple[str, ...], now: datetime.datetime
    ) -> Applied:
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        assert self.credential is not None and self.auth.region and self.auth.service
        if "x-amz-signature=" in head.query.lower():
            raise CredentialRefused(
                "presigned URLs carry the job's own signature; the appliance signs requests "
                "with the target's keys: send the request unsigned or signed with any key"
            )
        payload = header(kept, "x-amz-content-sha256")
        if payload is None:
            if head.body:
                raise CredentialRefused(
                    "an AWS request with a body needs X-Amz-Content-SHA256 (the appliance "
                    "does not read the whole body before forwarding it)"
                )
            payload = _EMPTY_SHA256
            kept = (*kept, ("x-amz-content-sha256", payload))
        kept = tuple((k, v) for k, v in kept if k != "x-amz-date")
        s3 = self.auth.service == "s3"
        signer = _Signer(
            Credentials(self.credential.user, self.credential.secret),
            self.auth.service,
            self.auth.region,
            s3=s3,
        )
        request = AWSRequest(
            method=head.method,
            url=f"https://{head.authority}{head.target}",
            headers={"host": head.authority, **{k: v for k, v in kept if k != "content-length"}},
        )
        signature = signer.sign(request, now)
        out = tuple((k.lower(), v) for k, v in request.headers.items() if k.lower() != "host")
        resigner = None
        if payload == STREAMING_SIGNED:
            resigner = ChunkResigner(
                signing_key=signer.key(request),
                scope=signer.scope(request),
                timestamp=request.context["timestamp"],
                seed=signature,
            )
        return Applied(out, removed, resigner, injected="authorization")


class _Signer:
    """botocore's SigV4 signer with the time passed in (``add_auth`` reads the clock)."""

    def __init__(self, credentials: Any, service: str, region: str, *, s3: bool) -> None:
        from botocore.auth import SigV4Auth

        class Auth(SigV4Auth):  # type: ignore[misc]
            def _normalize_url_path(self, path: str) -> str:
                # S3 signs the path as sent (encoded once); other services as botocore does.
                return path if s3 else str(super()._normalize_url_path(path))

        self.auth = Auth(credentials, service, region)

    def sign(self, request: Any, now: datetime.datetime) -> str:
        auth = self.auth
        request.context["timestamp"] = now.strftime("%Y%m%dT%H%M%SZ")
        auth._modify_request_before_signing(request)
        canonical = auth.canonical_request(request)
        string_to_sign = auth.string_to_sign(request, canonical)
        signature: str = auth.signature(string_to_sign, request)
        auth._inject_signature_to_request(request, signature)
        return signature

    def scope(self, request: Any) -> str:
        return str(self.auth.credential_scope(request))

    def key(self, request: Any) -> bytes:
        auth = self.auth
        secret = auth.credentials.secret_key
        k = hmac.new(
            f"AWS4{secret}".encode(), request.context["timestamp"][:8].encode(), hashlib.sha256
        ).digest()
        for part in (auth._region_name, auth._service_name, "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        return k


class ChunkResigner:
    """Re-signs an ``aws-chunked`` body chunk by chunk (sans-IO, streaming).

    Each chunk is ``hex-size;chunk-signature=<64 hex>\\r\\n<data>\\r\\n``; its signature is
    HMAC(signing key, ``AWS4-HMAC-SHA256-PAYLOAD\\n<timestamp>\\n<scope>\\n<previous
    signature>\\n<sha256("")>\\n<sha256(data)>``), the first chained from the seed (the
    header signature). Only a chunk's header line waits here; data passes as it comes
    (its hash is updated on the way), but a chunk's *signature* precedes its data, so a
    chunk is held until complete: the client's chunk size (64 KiB for the AWS SDKs) bounds
    what waits. Trailing headers after the last chunk pass unchanged.
    """

    MAX_CHUNK = 16 * 1024 * 1024

    def __init__(self, *, signing_key: bytes, scope: str, timestamp: str, seed: str) -> None:
        self.key = signing_key
        self.prefix = f"AWS4-HMAC-SHA256-PAYLOAD\n{timestamp}\n{scope}\n"
        self.previous = seed
        self._buf = bytearray()
        self._done = False

    def feed(self, data: bytes) -> bytes:
        """Body bytes from the job -> body bytes for the server. Raises CredentialRefused
        for a body that is not aws-chunked."""
        if self._done:
            return data
        self._buf += data
        out = bytearray()
        while True:
            line_end = self._buf.find(b"\r\n")
            if line_end < 0:
                if len(self._buf) > 4096:
                    raise CredentialRefused("an aws-chunked chunk header is too long")
                break
            size_text, _, ext = bytes(self._buf[:line_end]).partition(b";")
            try:
                size = int(size_text, 16)
            except ValueError:
                raise CredentialRefused("a malformed aws-chunked chunk header") from None
            if size > self.MAX_CHUNK or not ext.startswith(b"chunk-signature="):
                raise CredentialRefused("a malformed aws-chunked chunk header")
            total = line_end + 2 + size + 2
            if len(self._buf) < total:
                break
            chunk = bytes(self._buf[line_end + 2 : line_end + 2 + size])
            if self._buf[total - 2 : total] != b"\r\n":
                raise CredentialRefused("an aws-chunked chunk does not end in CRLF")
            string = f"{self.prefix}{self.previous}\n{_EMPTY_SHA256}\n{hashlib.sha256(chunk).hexdigest()}"
            self.previous = hmac.new(self.key, string.encode(), hashlib.sha256).hexdigest()
            out += b"%x;chunk-signature=%s\r\n" % (size, self.previous.encode()) + chunk + b"\r\n"
            del self._buf[:total]
            if size == 0:
                self._done = True
                out += self._buf
                self._buf.clear()
                break
        return bytes(out)


__all__ = [
    "STRIPPED",
    "Applied",
    "ChunkResigner",
    "Credential",
    "CredentialRefused",
    "Injector",
]
