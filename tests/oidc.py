"""A local OIDC token issuer for tests: it stands in for GitHub's and GitLab's.

:class:`TestIssuer` holds RSA signing keys (joserfc) and mints tokens with whatever claims,
key, algorithm and times a test asks for, including the bad ones (expired, wrong audience,
another issuer, signed by a key that is not the issuer's). Unit tests use it in process.

``python -m tests.oidc DIR`` serves it over HTTPS (a real server: the lab runs it in a
network namespace, and the appliance fetches from it with certificate verification), from
the state a test wrote into ``DIR`` with :meth:`TestIssuer.save`:

- ``GET /.well-known/openid-configuration``: ``issuer`` and ``jwks_uri`` (OpenID Connect
  Discovery 1.0);
- ``GET /.well-known/jwks``: the public keys (re-read from ``DIR`` on every request, so a
  test rotates keys by saving again);
- ``GET /token?audience=AUD`` with ``Authorization: bearer R``: GitHub Actions' token
  request. ``R`` names a job in ``DIR/jobs.json`` (``{R: {"claims": {...}, "make":
  "valid" | "expired" | "wrong-audience" | "wrong-issuer" | "forged" | "unknown-key"}}``);
  the answer is ``{"value": <JWT>}`` with the job's claims, the requested audience (or,
  per ``make``, a spoiled token). Every token request is appended to ``DIR/requests.log``
  (the job name and the audience) so tests can count them, and every token it hands out
  to ``DIR/tokens.log``, so tests can show that none of them reached a ledger or a log.
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

MAKES = ("valid", "expired", "wrong-audience", "wrong-issuer", "forged", "unknown-key")


class TestIssuer:
    """Signing keys and a token mint for the issuer ``url``."""

    __test__ = False  # not a pytest class

    def __init__(self, url: str, *, keys: list[RSAKey] | None = None) -> None:
        self.url = url
        self.keys = keys or [RSAKey.generate_key(2048, parameters={"kid": "lab-1"}, private=True)]
        self.attacker = RSAKey.generate_key(2048, parameters={"kid": "lab-1"}, private=True)

    def rotate(self, kid: str) -> RSAKey:
        """Add a new signing key (published next to the old ones); mint with it from now."""
        key = RSAKey.generate_key(2048, parameters={"kid": kid}, private=True)
        self.keys.append(key)
        return key

    def jwks(self) -> dict[str, Any]:
        return dict(KeySet(list(self.keys)).as_dict(private=False))

    def mint(
        self,
        claims: Mapping[str, Any],
        *,
        audience: str,
        make: str = "valid",
        now: float | None = None,
        lifetime: int = 300,
    ) -> str:
        """A token for ``claims`` and ``audience``, spoiled as ``make`` says (one of
        :data:`MAKES`)."""
        assert make in MAKES, make
        t = int(time.time() if now is None else now)
        body: dict[str, Any] = {
            "iss": self.url,
            "aud": audience,
            "iat": t,
            "nbf": t,
            "exp": t + lifetime,
            "jti": f"jti-{t}-{id(claims)}",
            **claims,
        }
        key = self.keys[-1]
        if make == "expired":
            body.update(iat=t - 3600, nbf=t - 3600, exp=t - 1800)
        elif make == "wrong-audience":
            body["aud"] = "someone-else"
        elif make == "wrong-issuer":
            body["iss"] = self.url.rstrip("/") + "/other"
        elif make == "forged":
            key = self.attacker  # same key id as ours, another key: a forgery
        elif make == "unknown-key":
            key = RSAKey.generate_key(2048, parameters={"kid": "not-published"}, private=True)
        return jwt.encode({"alg": "RS256", "kid": key.kid}, body, key)

    def save(self, directory: Path, jobs: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Write what ``python -m tests.oidc DIR`` serves."""
        private = KeySet(list(self.keys)).as_dict(private=True)
        attacker = self.attacker.as_dict(private=True)
        state = {"url": self.url, "keys": private, "attacker": attacker}
        _write(directory / "issuer.json", state)
        if jobs is not None:
            _write(directory / "jobs.json", dict(jobs))

    @classmethod
    def load(cls, directory: Path) -> TestIssuer:
        state = json.loads((directory / "issuer.json").read_text())
        keys = [RSAKey.import_key(k) for k in state["keys"]["keys"]]
        issuer = cls(state["url"], keys=keys)  # type: ignore[arg-type]
        issuer.attacker = RSAKey.import_key(state["attacker"])
        return issuer


def _write(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def requests_logged(directory: Path) -> list[tuple[str, str]]:
    """(job, audience) of every token request the server answered, in order."""
    log = directory / "requests.log"
    if not log.exists():
        return []
    return [tuple(line.split(" ", 1)) for line in log.read_text().splitlines()]  # type: ignore[misc]


def _handler(directory: Path) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _json(self, status: int, value: Any) -> None:
            body = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            issuer = TestIssuer.load(directory)
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/.well-known/openid-configuration":
                base = issuer.url.rstrip("/")
                return self._json(
                    200, {"issuer": issuer.url, "jwks_uri": f"{base}/.well-known/jwks"}
                )
            if url.path == "/.well-known/jwks":
                return self._json(200, issuer.jwks())
            if url.path != "/token":
                return self._json(404, {"error": "not found"})
            auth = self.headers.get("Authorization", "")
            job_name = auth.removeprefix("bearer ").removeprefix("Bearer ")
            jobs = json.loads((directory / "jobs.json").read_text())
            audience = urllib.parse.parse_qs(url.query).get("audience", [""])[0]
            job = jobs.get(job_name)
            if job is None:
                return self._json(401, {"error": "bad request token"})
            with lock, (directory / "requests.log").open("a") as log:
                log.write(f"{job_name} {audience}\n")
            token = issuer.mint(job["claims"], audience=audience, make=job.get("make", "valid"))
            with lock, (directory / "tokens.log").open("a") as log:
                log.write(token + "\n")
            return self._json(200, {"count": 1, "value": token})

    return Handler


def serve(directory: Path, host: str, port: int, cert: Path, key: Path) -> None:
    """Serve ``directory``'s issuer over HTTPS until killed."""
    server = ThreadingHTTPServer((host, port), _handler(directory))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    (directory / "ready").write_text("ready\n")
    server.serve_forever()


if __name__ == "__main__":  # python -m tests.oidc DIR HOST PORT CERT KEY
    d, h, p, c, k = sys.argv[1:6]
    serve(Path(d), h, int(p), Path(c), Path(k))
