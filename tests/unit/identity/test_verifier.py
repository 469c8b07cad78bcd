"""The verifier as the daemon uses it: per-job cache, key refresh, records, no token anywhere.

The issuer's HTTPS endpoints are answered in memory here (the lab test
``tests/lab/test_identity_oidc.py`` runs the same issuer as a real HTTPS server); time is
passed in.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from appliance.config import parse_config
from appliance.identity import Fetcher, FetchError, Verifier, parse_identity
from appliance.identity._config import REQUEST_TOKEN, REQUEST_URL
from tests.oidc import TestIssuer

ISS = "https://token.lab.test"
GITLAB = "https://gitlab.lab.test"
BOOT = "b00t"
T0 = 1_800_000_000.0
CONFIG = f"""
targets: [{{name: db, protocol: postgres, addresses: ["198.18.0.2:5432"],
            accounts: [{{name: ci, user: app, secret: {{file: /x}}}}]}}]
identity:
  refresh_interval: 30s
  issuers:
    - {{name: github, provider: github, issuer: "{ISS}", audience: "appliance:{{boot_id}}",
       token: {{request: github, hosts: ["*.lab.test"]}}}}
    - {{name: gitlab, provider: gitlab, issuer: "{GITLAB}", audience: "https://appliance.lab",
       token: {{env: APPLIANCE_ID_TOKEN}}}}
"""


class MemoryIssuers(Fetcher):
    """Answers the issuers' URLs from TestIssuer objects; counts requests."""

    def __init__(self, issuers: Mapping[str, TestIssuer], jobs: dict[str, dict[str, Any]]) -> None:
        super().__init__(timeout=1)
        self.issuers = issuers
        self.jobs = jobs
        self.token_issuer = issuers[ISS]
        self.calls: list[str] = []
        self.now = T0
        self.delay = 0.0

    async def get(
        self, url: str, *, headers: Mapping[str, str] | None = None, ca: Path | None = None
    ) -> bytes:
        await asyncio.sleep(self.delay)  # a real suspension point, as a thread hop would be
        parts = urllib.parse.urlsplit(url)
        self.calls.append(f"{parts.netloc}{parts.path}")
        base = f"{parts.scheme}://{parts.netloc}"
        if parts.path == "/token":
            job = self.jobs[(headers or {})["Authorization"].removeprefix("bearer ")]
            aud = urllib.parse.parse_qs(parts.query)["audience"][0]
            issuer = self.token_issuer
            return json.dumps(
                {
                    "value": issuer.mint(
                        job["claims"], audience=aud, make=job.get("make", "valid"), now=self.now
                    )
                }
            ).encode()
        issuer = self.issuers.get(base)
        if issuer is None:
            raise FetchError(f"cannot reach {base}")
        if parts.path.endswith("openid-configuration"):
            return json.dumps({"issuer": base, "jwks_uri": f"{base}/.well-known/jwks"}).encode()
        return json.dumps(issuer.jwks()).encode()


class World:
    def __init__(self) -> None:
        self.github = TestIssuer(ISS)
        self.gitlab = TestIssuer(GITLAB)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.fetch = MemoryIssuers({ISS: self.github, GITLAB: self.gitlab}, self.jobs)
        self.records: list[tuple[str, dict[str, Any]]] = []
        self.mono = 100.0
        config = parse_identity(parse_config(CONFIG).identity)
        assert config is not None
        self.verifier = Verifier(
            config,
            boot_id=BOOT,
            record=lambda t, d: self.records.append((t, d)),
            fetcher=self.fetch,
            wall=lambda: self.fetch.now,
            monotonic=lambda: self.mono,
        )

    def job(self, name: str, make: str = "valid", **claims: str) -> dict[str, str]:
        self.jobs[name] = {
            "claims": {"repository": "acme/prod", "run_id": "7", **claims},
            "make": make,
        }
        return {REQUEST_URL: "https://run.lab.test/token?api-version=2.0", REQUEST_TOKEN: name}

    def types(self) -> list[str]:
        return [t for t, _ in self.records]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


CLAIMED = {
    "source": "ebpf",
    "pid": 7,
    "ci": {"provider": "github", "repository": "acme/prod", "run_id": "7", "vars": {}},
}


def test_a_requested_token_verifies_and_is_reused_until_it_expires() -> None:
    w = World()

    async def go() -> None:
        await w.verifier.start()
        env = w.job("j1")
        first = await w.verifier.identify(CLAIMED, env)
        assert first["token"]["status"] == "verified"
        assert first["verified"] == ["provider", "repository", "run_id"]
        assert first["token"]["aud"] == f"appliance:{BOOT}"
        assert first["mismatch"] == []
        await w.verifier.identify(CLAIMED, env)
        assert w.fetch.calls.count("run.lab.test/token") == 1  # cached per job
        w.fetch.now = T0 + 400  # past exp: a new token is requested
        again = await w.verifier.identify(CLAIMED, env)
        assert again["token"]["status"] == "verified"
        assert w.fetch.calls.count("run.lab.test/token") == 2

    run(go())
    assert w.types().count("identity.verified") == 2
    assert "identity.keys_loaded" in w.types()


def test_concurrent_sessions_of_one_job_share_one_request() -> None:
    w = World()

    async def go() -> list[dict[str, Any]]:
        await w.verifier.start()
        env = w.job("j1")
        return await asyncio.gather(*(w.verifier.identify(CLAIMED, env) for _ in range(5)))

    results = run(go())
    assert {r["token"]["status"] for r in results} == {"verified"}
    assert w.fetch.calls.count("run.lab.test/token") == 1


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        ("expired", "expired"),
        ("wrong-audience", "wrong-audience"),
        ("wrong-issuer", "wrong-issuer"),
        ("forged", "bad-signature"),
        ("unknown-key", "unknown-key"),
    ],
)
def test_bad_tokens_are_recorded_as_such_and_verify_nothing(make: str, reason: str) -> None:
    w = World()

    async def go() -> dict[str, Any]:
        await w.verifier.start()
        return await w.verifier.identify(CLAIMED, w.job("bad", make=make))

    ident = run(go())
    assert ident["token"]["status"] == "rejected" and ident["token"]["reason"] == reason
    assert ident["verified"] == [] and ident["ci"] == CLAIMED["ci"]
    assert len(ident["token"]["sha256"]) == 64
    (rejected,) = [d for t, d in w.records if t == "identity.rejected"]
    assert rejected["reason"] == reason


def test_an_unknown_key_id_refreshes_the_keys_at_most_once_per_interval() -> None:
    w = World()

    async def go() -> None:
        await w.verifier.start()
        jwks_before = w.fetch.calls.count("token.lab.test/.well-known/jwks")
        w.github.rotate("lab-2")  # the issuer rotates: tokens now name lab-2
        w.mono += 31
        ok = await w.verifier.identify(CLAIMED, w.job("j2"))
        assert ok["token"]["status"] == "verified" and ok["token"]["kid"] == "lab-2"
        assert w.fetch.calls.count("token.lab.test/.well-known/jwks") == jwks_before + 1
        # Made-up key ids in quick succession: no new fetch within the interval.
        for n in range(3):
            bad = await w.verifier.identify(CLAIMED, w.job(f"spray{n}", make="unknown-key"))
            assert bad["token"]["reason"] == "unknown-key"
        assert w.fetch.calls.count("token.lab.test/.well-known/jwks") == jwks_before + 1

    run(go())


def test_environment_says_prod_token_says_fork() -> None:
    w = World()

    async def go() -> dict[str, Any]:
        await w.verifier.start()
        env = w.job("fork", repository="acme/fork")
        ident = await w.verifier.identify(CLAIMED, env)
        await w.verifier.identify(CLAIMED, env)  # the mismatch is recorded once
        return ident

    ident = run(go())
    assert ident["ci"]["repository"] == "acme/fork"
    assert ident["mismatch"] == [
        {"field": "repository", "claimed": "acme/prod", "verified": "acme/fork"}
    ]
    assert w.types().count("identity.mismatch") == 1


def test_a_token_from_the_environment_gitlab() -> None:
    w = World()
    claims = {"project_path": "acme/shop", "pipeline_id": "5", "job_id": "9", "ref": "main"}
    token = w.gitlab.mint(claims, audience="https://appliance.lab", now=T0)

    async def go() -> dict[str, Any]:
        await w.verifier.start()
        claimed = {"source": "ebpf", "ci": {"provider": "gitlab", "repository": "acme/shop"}}
        return await w.verifier.identify(claimed, {"APPLIANCE_ID_TOKEN": token})

    ident = run(go())
    assert ident["token"]["status"] == "verified" and ident["token"]["issuer"] == "gitlab"
    assert ident["ci"]["run_id"] == "5" and ident["ci"]["job_id"] == "9"
    assert "job_id" in ident["verified"]
    assert token not in json.dumps(w.records) and token not in json.dumps(ident)


def test_no_token_variables_and_hosts_that_may_not_be_called() -> None:
    w = World()

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        await w.verifier.start()
        absent = await w.verifier.identify(CLAIMED, {})
        env = {REQUEST_URL: "https://169.254.169.254/latest/meta-data", REQUEST_TOKEN: "x"}
        refused = await w.verifier.identify(CLAIMED, env)
        return absent, refused

    absent, refused = run(go())
    assert absent["token"]["status"] == "absent" and absent["verified"] == []
    assert refused["token"]["status"] == "unavailable"
    assert "169.254.169.254" in refused["token"]["reason"]
    assert "/latest/meta-data" not in refused["token"]["reason"]
    assert not [c for c in w.fetch.calls if "169.254" in c]  # never called


def test_keys_unavailable_at_start_is_recorded_not_fatal() -> None:
    w = World()
    w.fetch.issuers = {}

    async def go() -> dict[str, Any]:
        await w.verifier.start()
        return await w.verifier.identify(CLAIMED, w.job("j1"))

    ident = run(go())
    assert w.types().count("identity.keys_unavailable") == 2
    assert ident["token"]["status"] == "unavailable" and ident["verified"] == []


def test_pinned_keys_are_never_fetched(tmp_path: Path) -> None:
    w = World()
    (tmp_path / "gitlab.jwks").write_text(json.dumps(w.gitlab.jwks()))
    text = CONFIG.replace(
        "token: {env: APPLIANCE_ID_TOKEN}}",
        f"token: {{env: APPLIANCE_ID_TOKEN}}, keys: {{file: {tmp_path / 'gitlab.jwks'}}}}}",
    )
    config = parse_identity(parse_config(text).identity)
    assert config is not None and config.issuers[1].keys_file is not None
    verifier = Verifier(
        config, boot_id=BOOT, record=lambda t, d: None, fetcher=w.fetch, wall=lambda: T0
    )
    token = w.gitlab.mint({"project_path": "a/b"}, audience="https://appliance.lab", now=T0)

    async def go() -> dict[str, Any]:
        await verifier.start()
        return await verifier.identify({"source": "ebpf"}, {"APPLIANCE_ID_TOKEN": token})

    assert run(go())["token"]["status"] == "verified"
    assert not [c for c in w.fetch.calls if c.startswith("gitlab.lab.test")]
    assert [c for c in w.fetch.calls if c.startswith("token.lab.test")]  # github's: fetched


def test_a_cancelled_session_does_not_take_the_others_with_it() -> None:
    w = World()

    async def go() -> dict[str, Any]:
        await w.verifier.start()
        env = w.job("j1")
        w.fetch.delay = 0.2
        first = asyncio.create_task(w.verifier.identify(CLAIMED, env))
        await asyncio.sleep(0.05)  # first is now waiting on the token request
        second = asyncio.create_task(w.verifier.identify(CLAIMED, env))
        await asyncio.sleep(0.05)  # and second waits for first's answer
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await second

    assert run(go())["token"]["status"] == "verified"
