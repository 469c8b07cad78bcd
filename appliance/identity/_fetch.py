"""HTTPS GET off the event loop: token requests, JWKS and OpenID discovery documents.

Where this sits: :class:`~appliance.identity.Verifier` and the key stores call
:meth:`Fetcher.get`; the request runs in a worker thread (``asyncio.to_thread`` around
urllib), so a slow issuer never blocks the proxy's event loop, and has a timeout and a size
cap. Only https is spoken, with certificate and host-name verification (the system trust
store, or the CA bundle the issuer's config names); redirects are not followed, so a token
request's bearer credential goes to the host that was checked and nowhere else.

Errors are :class:`FetchError` and name a URL by scheme, host and port only: a token
endpoint's path and query are the job's business, and its bearer token never appears.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.errors import ApplianceError

__all__ = ["FetchError", "Fetcher", "where"]

MAX_BYTES = 1024 * 1024


class FetchError(ApplianceError):
    """An HTTPS request failed (network, TLS, status, size, not JSON)."""


def where(url: str) -> str:
    """``https://host:port``: how a URL appears in logs and records."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 443}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is then an HTTPError: the credential stays with the checked host


class Fetcher:
    """GETs https URLs in a worker thread; ``timeout`` seconds per request."""

    def __init__(self, *, timeout: float, max_bytes: int = MAX_BYTES) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._contexts: dict[Path | None, ssl.SSLContext] = {}

    def _context(self, ca: Path | None) -> ssl.SSLContext:
        if ca not in self._contexts:
            try:
                self._contexts[ca] = ssl.create_default_context(
                    cafile=str(ca) if ca is not None else None
                )
            except (OSError, ssl.SSLError) as exc:
                raise FetchError(f"cannot load the CA bundle {ca}: {exc}") from None
        return self._contexts[ca]

    async def get(
        self, url: str, *, headers: Mapping[str, str] | None = None, ca: Path | None = None
    ) -> bytes:
        """The body of a 200 response to ``GET url``. Raises FetchError."""
        if urllib.parse.urlsplit(url).scheme != "https":
            raise FetchError(f"refusing a non-https URL ({where(url)})")
        context = self._context(ca)
        return await asyncio.to_thread(self._get, url, dict(headers or {}), context)

    async def get_json(
        self, url: str, *, headers: Mapping[str, str] | None = None, ca: Path | None = None
    ) -> dict[str, Any]:
        """:meth:`get`, parsed as a JSON object. Raises FetchError."""
        body = await self.get(url, headers=headers, ca=ca)
        try:
            value = json.loads(body)
        except ValueError:
            raise FetchError(f"{where(url)} did not answer with JSON") from None
        if not isinstance(value, dict):
            raise FetchError(f"{where(url)} did not answer with a JSON object")
        return value

    def _get(self, url: str, headers: dict[str, str], context: ssl.SSLContext) -> bytes:
        request = urllib.request.Request(
            url, headers={"User-Agent": f"appliance/{__version__}", **headers}
        )
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), _NoRedirect()
        )
        try:
            with opener.open(request, timeout=self.timeout) as response:
                body: bytes = response.read(self.max_bytes + 1)
        except urllib.error.HTTPError as exc:
            raise FetchError(f"{where(url)} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FetchError(f"cannot reach {where(url)}: {reason}") from None
        if len(body) > self.max_bytes:
            raise FetchError(f"{where(url)} answered more than {self.max_bytes} bytes")
        return body
