"""Per session: obtain the job's CI token, verify it, say which identity fields it verifies.

Where this sits: for each accepted connection the daemon resolves the identity from eBPF and
``/proc`` (:mod:`appliance.capture`), reads the token variables of the job's environment
(:func:`appliance.capture.job_environ` with :attr:`Verifier.variables`) and awaits
:meth:`Verifier.identify`, which returns the identity annotated by
:func:`~appliance.identity._record.annotate`. Everything that waits on the network (the
token request, a JWKS fetch) runs in a worker thread (:mod:`._fetch`) and is awaited, so
the event loop keeps serving other sessions.

Outcomes are cached per job: the key is a hash of the secret material (the request URL and
bearer token, or the token itself), never of the claimed CI variables, which any job can
copy. A verified outcome is reused until the token expires; a rejected one for a minute; an
unavailable one (network, issuer down) for a few seconds. Concurrent sessions of one job
share one request. Each new outcome is recorded once in the ledger (``identity.verified``
with the token's claims, ``identity.rejected`` with the reason, ``identity.unavailable``),
and so is each new disagreement between a job's environment and its token
(``identity.mismatch``); sessions carry the outcome in their identity.

The token and the request bearer token never reach the ledger or a log: records and log
lines name a token by its SHA-256.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from appliance.identity._claims import extra_claims, fields_from_claims
from appliance.identity._config import REQUEST_TOKEN, REQUEST_URL, IdentityConfig, Issuer
from appliance.identity._fetch import Fetcher, FetchError, where
from appliance.identity._keys import KeyStore, KeysUnavailable
from appliance.identity._record import Outcome, annotate
from appliance.identity._verify import TokenRejected, inspect, token_sha256, verify

__all__ = ["Verifier", "json_safe"]

log = logging.getLogger("appliance.identity")

Record = Callable[[str, dict[str, Any]], None]

_REJECTED_TTL = 60.0
_UNAVAILABLE_TTL = 5.0
_CACHE_SIZE = 1024


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` with what canonical ledger JSON refuses dropped (floats, big integers,
    other types), strings bounded: for claims, which the issuer chose."""
    if isinstance(value, str):
        return value[:1024]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else None
    if depth < 4 and isinstance(value, list):
        return [json_safe(v, depth + 1) for v in value[:32]]
    if depth < 4 and isinstance(value, dict):
        return {str(k)[:128]: json_safe(v, depth + 1) for k, v in list(value.items())[:64]}
    return None


@dataclass
class _Cached:
    outcome: Outcome
    until: float  # wall-clock seconds (verified: the token's exp) or monotonic (others)
    wall: bool


class Verifier:
    """See the module docstring. ``wall`` gives Unix time (token times), ``monotonic`` the
    cache and refresh clock; ``boot_id`` is this boot's id (the requested audience)."""

    def __init__(
        self,
        config: IdentityConfig,
        *,
        boot_id: str,
        record: Record,
        fetcher: Fetcher | None = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.boot_id = boot_id
        self.record = record
        self.fetcher = fetcher or Fetcher(timeout=config.timeout)
        self.wall = wall
        self.monotonic = monotonic
        self.stores = {
            issuer.name: KeyStore(
                issuer,
                self.fetcher,
                clock=monotonic,
                refresh_interval=config.refresh_interval,
                max_key_age=config.max_key_age,
            )
            for issuer in config.issuers
        }
        self.variables: frozenset[str] = frozenset().union(
            *(i.token.variables for i in config.issuers)
        )
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Outcome]] = {}
        self._mismatches: OrderedDict[tuple[str, ...], None] = OrderedDict()

    async def start(self) -> None:
        """Load every issuer's keys (pinned) or fetch them. A failure is logged and recorded
        (``identity.keys_unavailable``), not fatal: that issuer's tokens stay unverified
        until a fetch succeeds, and policy that needs verified fields does not match."""
        for name, store in self.stores.items():
            try:
                await store.load()
            except KeysUnavailable as exc:
                log.error("identity issuer %s: keys unavailable: %s", name, exc)
                self.record("identity.keys_unavailable", {"issuer": name, "reason": str(exc)})
            else:
                self.record(
                    "identity.keys_loaded",
                    {
                        "issuer": name,
                        "pinned": store.pinned,
                        "kids": sorted(store.keys),
                    },
                )

    async def identify(
        self, identity: Mapping[str, Any], environ: Mapping[str, str]
    ) -> dict[str, Any]:
        """``identity`` annotated with the outcome of the job's token; ``environ`` holds the
        token variables of the job's environment (:attr:`variables`). Never raises for
        anything the job or the issuer did."""
        outcome = await self.outcome(environ)
        annotated = annotate(identity, outcome)
        if annotated["mismatch"]:
            self._report_mismatch(annotated)
        return annotated

    async def outcome(self, environ: Mapping[str, str]) -> Outcome:
        """The outcome for a job whose token variables are ``environ`` (cached)."""
        for issuer in self.config.issuers:
            if all(environ.get(v) for v in issuer.token.variables):
                break
        else:
            names = ", ".join(sorted(self.variables))
            return Outcome("absent", {"status": "absent", "reason": f"none of {names} is set"})
        material = "\0".join(environ[v] for v in sorted(issuer.token.variables))
        key = hashlib.sha256(f"{issuer.name}\0{material}".encode()).hexdigest()
        cached = self._cache.get(key)
        if cached is not None and (self.wall() if cached.wall else self.monotonic()) < cached.until:
            self._cache.move_to_end(key)
            return cached.outcome
        pending = self._inflight.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except _LeaderGone:  # the session that was asking was cancelled: ask ourselves
                return await self.outcome(environ)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            outcome, entry = await self._obtain(issuer, environ)
        except BaseException:
            future.set_exception(_LeaderGone())
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            del self._inflight[key]
        future.set_result(outcome)
        self._cache[key] = entry
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return outcome

    # -- one job's token -----------------------------------------------------------------

    async def _obtain(self, issuer: Issuer, environ: Mapping[str, str]) -> tuple[Outcome, _Cached]:
        try:
            token = (
                await self._request(issuer, environ[REQUEST_URL], environ[REQUEST_TOKEN])
                if issuer.token.kind == "request"
                else environ[issuer.token.variable or ""]
            )
        except (FetchError, _Refused) as exc:
            return self._unavailable(issuer, str(exc))
        try:
            claims, record = await self._check(issuer, token)
        except TokenRejected as exc:
            record = {"status": "rejected", "issuer": issuer.name, "reason": exc.reason}
            record["detail"] = exc.detail
            try:
                record.update(inspect(token).record())
            except TokenRejected:
                record["sha256"] = token_sha256(token)
            log.warning(
                "identity token rejected (%s): %s; sha256 %s",
                issuer.name,
                exc,
                record["sha256"],
            )
            self.record("identity.rejected", dict(record))
            outcome = Outcome("rejected", record)
            return outcome, _Cached(outcome, self.monotonic() + _REJECTED_TTL, wall=False)
        except KeysUnavailable as exc:
            return self._unavailable(issuer, f"the issuer's keys are unavailable: {exc}")
        fields = fields_from_claims(issuer.provider, claims)
        log.info(
            "identity token verified (%s): %s; sha256 %s",
            issuer.name,
            fields.get("repository") or claims.get("sub"),
            record["sha256"],
        )
        self.record("identity.verified", {**record, "claims": json_safe(claims)})
        outcome = Outcome("verified", record, fields)
        return outcome, _Cached(outcome, float(record["exp"]), wall=True)

    async def _check(self, issuer: Issuer, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        seen = inspect(token)
        if seen.issuer != issuer.issuer:
            # Checked before any key is looked up: another issuer's key ids must not make
            # us fetch this issuer's keys again.
            raise TokenRejected("wrong-issuer", f"issuer {seen.issuer!r} is not {issuer.issuer!r}")
        key = await self.stores[issuer.name].key(seen.kid)
        claims = verify(
            token,
            key,
            issuer=issuer.issuer,
            audience=issuer.audience_for(self.boot_id),
            algorithms=issuer.algorithms,
            now=int(self.wall()),
            leeway=issuer.leeway,
        )
        record: dict[str, Any] = {
            "status": "verified",
            "issuer": issuer.name,
            "provider": issuer.provider,
            "iss": issuer.issuer,
            "kid": seen.kid,
            "alg": seen.alg,
            "sha256": seen.sha256,
            "aud": issuer.audience_for(self.boot_id),
            "exp": json_safe(claims.get("exp")),
            "iat": json_safe(claims.get("iat")),
            **extra_claims(claims),
        }
        return claims, record

    async def _request(self, issuer: Issuer, url: str, bearer: str) -> str:
        """GitHub Actions: ``GET <ACTIONS_ID_TOKEN_REQUEST_URL>&audience=<aud>`` with the
        job's bearer token; the answer is ``{"value": "<JWT>"}``."""
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme != "https" or not any(
            fnmatch.fnmatchcase(host, h.lower()) for h in issuer.token.hosts
        ):
            raise _Refused(f"the job's token URL {where(url)} is not an allowed https host")
        sep = "&" if parts.query else "?"
        query = urllib.parse.urlencode({"audience": issuer.audience_for(self.boot_id)})
        answer = await self.fetcher.get_json(
            f"{url}{sep}{query}", headers={"Authorization": f"bearer {bearer}"}, ca=issuer.ca
        )
        value = answer.get("value")
        if not isinstance(value, str) or not value:
            raise _Refused(f"{where(url)} answered without a token")
        return value

    def _unavailable(self, issuer: Issuer, reason: str) -> tuple[Outcome, _Cached]:
        log.warning("identity token unavailable (%s): %s", issuer.name, reason)
        record = {"status": "unavailable", "issuer": issuer.name, "reason": reason}
        self.record("identity.unavailable", dict(record))
        outcome = Outcome("unavailable", record)
        return outcome, _Cached(outcome, self.monotonic() + _UNAVAILABLE_TTL, wall=False)

    def _report_mismatch(self, identity: Mapping[str, Any]) -> None:
        token = identity["token"]
        mismatch = identity["mismatch"]
        seen = (str(token.get("sha256")), *(f"{m['field']}={m['claimed']}" for m in mismatch))
        if seen in self._mismatches:
            return
        self._mismatches[seen] = None
        while len(self._mismatches) > _CACHE_SIZE:
            self._mismatches.popitem(last=False)
        log.warning(
            "identity mismatch: the job's environment claims %s; its verified token says %s",
            {m["field"]: m["claimed"] for m in mismatch},
            {m["field"]: m["verified"] for m in mismatch},
        )
        self.record(
            "identity.mismatch",
            {
                "issuer": token.get("issuer"),
                "sha256": token.get("sha256"),
                "mismatch": list(mismatch),
                "pid": identity.get("pid"),
                "cgroup": identity.get("cgroup"),
            },
        )


class _LeaderGone(Exception):
    """The session whose request the others were waiting on was cancelled."""


class _Refused(Exception):
    """The job's token material cannot be used (a URL we may not call, no token in the
    answer)."""
