"""The signing keys of one token issuer: pinned, or fetched and cached.

Where this sits: :class:`~appliance.identity.Verifier` asks :meth:`KeyStore.key` for the key
a token names (its ``kid``) before :func:`~appliance.identity._verify.verify` checks the
signature with it.

- Pinned (``keys: {file: ...}``, for offline images): the JWKS file is read at start and
  nothing is ever fetched; an unknown key id is a rejected token.
- Fetched: the JWKS is fetched at start (:meth:`KeyStore.load`) from ``jwks_uri``, or from
  the ``jwks_uri`` of ``{issuer}/.well-known/openid-configuration`` (OpenID Connect
  Discovery 1.0, section 4), and kept. A token naming a key id the set does not have makes
  the store fetch the set again, at most once per ``refresh_interval`` seconds (issuers
  rotate keys; a job spraying made-up key ids must not turn the appliance into a load
  generator against its issuer), and keys older than ``max_key_age`` are fetched again
  before use. Concurrent callers share one fetch.

Only keys meant for signatures are kept (``use`` absent or ``sig``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet

from appliance.errors import ApplianceError
from appliance.identity._config import Issuer
from appliance.identity._fetch import Fetcher, FetchError
from appliance.identity._verify import TokenRejected

__all__ = ["KeyStore", "KeysUnavailable", "parse_jwks"]


class KeysUnavailable(ApplianceError):
    """The issuer's keys could not be had (fetch failed, bad JWKS): tokens of this issuer
    cannot be verified now, so its jobs' fields stay claimed."""


def parse_jwks(data: Any, *, source: str) -> dict[str, Key]:
    """The signing keys of a JWKS document by key id. Raises KeysUnavailable."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeysUnavailable(f"{source}: not a JWKS (no 'keys' list)")
    wanted = [k for k in data["keys"] if isinstance(k, dict) and k.get("use") in (None, "sig")]
    try:
        keyset = KeySet.import_key_set({"keys": wanted})
    except (JoseError, ValueError, TypeError) as exc:
        raise KeysUnavailable(f"{source}: bad JWKS: {exc}") from None
    keys = {key.kid: key for key in keyset if key.kid}
    if not keys:
        raise KeysUnavailable(f"{source}: no signing key with a key id")
    return keys


class KeyStore:
    """See the module docstring. ``clock`` returns monotonic seconds."""

    def __init__(
        self,
        issuer: Issuer,
        fetcher: Fetcher,
        *,
        clock: Callable[[], float],
        refresh_interval: float,
        max_key_age: float,
    ) -> None:
        self.issuer = issuer
        self.fetcher = fetcher
        self.clock = clock
        self.refresh_interval = refresh_interval
        self.max_key_age = max_key_age
        self.keys: dict[str, Key] = {}
        self.fetches = 0
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    @property
    def pinned(self) -> bool:
        return self.issuer.keys_file is not None

    async def load(self) -> None:
        """Read the pinned keys or fetch the JWKS now. Raises KeysUnavailable."""
        if self.pinned:
            self.keys = self._read_pinned()
            return
        async with self._lock:
            await self._fetch()

    async def key(self, kid: str | None) -> Key:
        """The key with id ``kid``.

        Raises TokenRejected("unknown-key") if the issuer has no such key (after one fetch,
        when allowed), KeysUnavailable if the keys cannot be had at all.
        """
        if kid is None:
            raise TokenRejected("unknown-key", "the token names no key id (kid)")
        if not self.pinned:
            async with self._lock:
                now = self.clock()
                stale = self._fetched_at is None or now - self._fetched_at > self.max_key_age
                may_refresh = (
                    self._fetched_at is None or now - self._fetched_at >= self.refresh_interval
                )
                if stale or (kid not in self.keys and may_refresh):
                    try:
                        await self._fetch()
                    except KeysUnavailable:
                        if not self.keys:
                            raise
                        # Keep the keys we have: a fetch failing is no reason to forget them.
                if not self.keys:
                    raise KeysUnavailable(
                        "no keys yet: the last fetch failed, the next is tried "
                        f"{self.refresh_interval:g}s after it"
                    )
        found = self.keys.get(kid)
        if found is None:
            raise TokenRejected("unknown-key", f"issuer {self.issuer.issuer} has no key {kid!r}")
        return found

    def _read_pinned(self) -> dict[str, Key]:
        path = self.issuer.keys_file
        assert path is not None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise KeysUnavailable(f"cannot read pinned keys {path}: {exc}") from None
        return parse_jwks(data, source=str(path))

    async def _fetch(self) -> None:
        self._fetched_at = self.clock()  # also on failure: retries are rate-limited too
        self.fetches += 1
        issuer = self.issuer
        try:
            uri = issuer.jwks_uri
            if uri is None:
                discovery = issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
                doc = await self.fetcher.get_json(discovery, ca=issuer.ca)
                found = doc.get("jwks_uri")
                if not isinstance(found, str) or not found.startswith("https://"):
                    raise KeysUnavailable(
                        f"{discovery}: no https jwks_uri in the discovery document"
                    )
                if doc.get("issuer") != issuer.issuer:
                    raise KeysUnavailable(
                        f"{discovery}: the discovery document names issuer "
                        f"{doc.get('issuer')!r}, not {issuer.issuer!r}"
                    )
                uri = found
            data = await self.fetcher.get_json(uri, ca=issuer.ca)
        except FetchError as exc:
            raise KeysUnavailable(str(exc)) from None
        self.keys = parse_jwks(data, source=uri)
