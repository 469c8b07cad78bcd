"""HTTPS fetches against a real local server: certificate checked, no redirect followed,
errors that name the host and never the path or a header."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from appliance.identity._fetch import Fetcher, FetchError, where
from tests.certs import server_cert


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "https://127.0.0.1:1/elsewhere")
            self.end_headers()
            return
        body = b'{"auth": "%s"}' % self.headers.get("Authorization", "").encode()
        self.send_response(200 if self.path.startswith("/ok") else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    d = tmp_path_factory.mktemp("https")
    tls = server_cert("fetch test CA", "127.0.0.1", ["127.0.0.1"])
    (d / "ca.pem").write_bytes(tls.ca_pem)
    (d / "c.pem").write_bytes(tls.cert_pem)
    (d / "k.pem").write_bytes(tls.key_pem)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "c.pem", d / "k.pem")
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}", d / "ca.pem"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_get_json_with_the_issuers_ca(server: tuple[str, Path]) -> None:
    url, ca = server
    got = asyncio.run(
        Fetcher(timeout=5).get_json(f"{url}/ok", headers={"Authorization": "bearer x"}, ca=ca)
    )
    assert got == {"auth": "bearer x"}


def test_failures_name_the_host_only(server: tuple[str, Path]) -> None:
    url, ca = server
    fetch = Fetcher(timeout=5)
    with pytest.raises(FetchError) as untrusted:  # the system store does not know the lab CA
        asyncio.run(fetch.get(f"{url}/ok?secret=1"))
    assert "secret" not in str(untrusted.value) and "127.0.0.1" in str(untrusted.value)
    with pytest.raises(FetchError, match="HTTP 500"):
        asyncio.run(fetch.get(f"{url}/fail/secret-path", ca=ca))
    with pytest.raises(FetchError, match="HTTP 302"):  # not followed
        asyncio.run(fetch.get(f"{url}/redirect", ca=ca))
    with pytest.raises(FetchError, match="non-https"):
        asyncio.run(fetch.get("http://127.0.0.1/x"))
    assert where("https://h.example/a/b?token=1") == "https://h.example:443"
