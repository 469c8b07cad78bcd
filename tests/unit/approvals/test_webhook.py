"""Webhook delivery against a real local HTTP server (http.server in a thread, 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.approvals import WebhookNotifier, WebhookTarget
from appliance.approvals.webhook import redact_url

from .helpers import MASKED, STATEMENT, T0, Recorder, make_broker, new_request


class Hook:
    """What the test server saw, and the statuses it answers with (last one repeats)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()


@contextmanager
def hook_server(
    statuses: list[int], tls: ssl.SSLContext | None = None
) -> Iterator[tuple[str, Hook]]:
    hook = Hook(statuses)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with hook.lock:
                hook.requests.append((self.path, dict(self.headers), body))
                status = hook.statuses[min(len(hook.requests), len(hook.statuses)) - 1]
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    scheme = "https" if tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}", hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def deliver(targets: list[WebhookTarget], tls: ssl.SSLContext | None = None) -> Recorder:
    """Announce one request through a notifier run to completion; return the records."""
    broker, _, _ = make_broker()
    req = new_request(broker, window=timedelta(minutes=5))
    rec = Recorder()

    async def scenario() -> None:
        notifier = WebhookNotifier(targets, record=rec, retry_delay=0, ssl_context=tls)
        notifier.notify(req)
        notifier.close()
        await notifier.run()

    asyncio.run(scenario())
    return rec


def test_request_is_posted_as_json() -> None:
    with hook_server([200]) as (url, hook):
        rec = deliver([WebhookTarget(f"{url}/hooks/approvals?team=db")])
    assert rec.entries == []
    [(path, headers, body)] = hook.requests
    assert path == "/hooks/approvals?team=db"
    assert headers["Content-Type"] == "application/json"
    assert headers["Host"] == url.removeprefix("http://")
    payload = json.loads(body)
    assert payload["type"] == "approval.requested"
    assert payload["id"] == "00000000000000000001"
    assert payload["statement"] == MASKED and STATEMENT.decode() not in body.decode()
    assert payload["approvers"] == ["alice"] and payload["window_ms"] == 300_000
    assert set(payload) == {
        "type",
        "id",
        "session",
        "identity",
        "target",
        "account",
        "rule",
        "approvers",
        "statement",
        "statement_sha256",
        "created",
        "expires",
        "window_ms",
    }


def _self_signed(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh self-signed cert for 127.0.0.1, and a client context
    that trusts only that cert."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "approvals-hook")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(T0 - timedelta(days=3650))
        .not_valid_after(T0 + timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp / "cert.pem").write_bytes(cert_pem)
    (tmp / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


def test_https_webhook_with_a_verified_certificate(tmp_path: Path) -> None:
    server_tls, client_tls = _self_signed(tmp_path)
    with hook_server([200], tls=server_tls) as (url, hook):
        rec = deliver([WebhookTarget(url + "/h")], tls=client_tls)
    assert rec.entries == [] and len(hook.requests) == 1
    assert json.loads(hook.requests[0][2])["type"] == "approval.requested"


def test_https_webhook_with_an_untrusted_certificate_fails(tmp_path: Path) -> None:
    server_tls, _ = _self_signed(tmp_path)
    with hook_server([200], tls=server_tls) as (url, hook):
        rec = deliver([WebhookTarget(url, retries=0)])  # system trust store: not trusted
    assert hook.requests == []
    assert "CERTIFICATE_VERIFY_FAILED" in str(rec.last("approval.notify_failed")["error"])


def test_server_errors_are_retried() -> None:
    with hook_server([503, 500, 204]) as (url, hook):
        rec = deliver([WebhookTarget(url, retries=2)])
    assert len(hook.requests) == 3
    assert rec.entries == []


def test_failure_after_retries_is_recorded_without_the_url_path() -> None:
    with hook_server([500]) as (url, hook):
        rec = deliver([WebhookTarget(f"{url}/T000/B000/secret-token", retries=2)])
    assert len(hook.requests) == 3
    [(type_, data)] = rec.entries
    assert type_ == "approval.notify_failed"
    assert data == {
        "id": "00000000000000000001",
        "webhook": url,
        "attempts": 3,
        "error": "HTTP 500",
    }
    assert "secret-token" not in json.dumps(data)


def test_client_errors_are_not_retried() -> None:
    with hook_server([404]) as (url, hook):
        rec = deliver([WebhookTarget(url, retries=2)])
    assert len(hook.requests) == 1
    assert rec.last("approval.notify_failed")["attempts"] == 1


def test_unreachable_and_silent_webhooks_fail_without_blocking_others() -> None:
    refusing = socket.socket()  # bound but not listening: connections are refused
    refusing.bind(("127.0.0.1", 0))
    refused_url = f"http://127.0.0.1:{refusing.getsockname()[1]}/"
    silent = socket.socket()  # accepts connections (backlog), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
    try:
        with hook_server([200]) as (url, hook):
            rec = deliver(
                [
                    WebhookTarget(refused_url, retries=1),
                    WebhookTarget(silent_url, timeout=0.2),
                    WebhookTarget(url),
                ]
            )
    finally:
        silent.close()
        refusing.close()
    assert len(hook.requests) == 1
    failed = {d["webhook"]: d for t, d in rec.entries if t == "approval.notify_failed"}
    assert failed[redact_url(refused_url)]["attempts"] == 2
    assert "ConnectionRefusedError" in str(failed[redact_url(refused_url)]["error"])
    silent_failure = failed[redact_url(silent_url)]
    assert silent_failure["attempts"] == 3 and silent_failure["error"] == "no answer within 0.2s"


def test_notify_without_webhooks_does_nothing() -> None:
    async def scenario() -> None:
        broker, _, _ = make_broker()
        notifier = WebhookNotifier([], record=Recorder())
        notifier.notify(new_request(broker))
        notifier.close()
        await notifier.run()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("https://hooks.example.com/services/T0/B0/XYZ", "https://hooks.example.com:443"),
        ("http://10.0.0.9:8080/hook?token=abc", "http://10.0.0.9:8080"),
        ("http://[fd00::9]/h", "http://fd00::9:80"),
    ],
)
def test_redact_url_keeps_only_scheme_host_port(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
