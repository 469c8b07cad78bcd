"""HTTPS through the appliance with real clients: curl (HTTP/1.1 and HTTP/2), Python
requests and git against a real nginx, with transparent capture, the per-boot CA in the
job's trust, the target's token injected, policy per request, and a ledger that holds
nothing raw.

One lab for this module (capture installs rules in its runner namespace).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.http_lab import HttpAppliance, Nginx, nginx_and_appliance
from tests.lab.lab import Lab

TOKEN = "lab-token-3f9a1c77e0d24b8c"
POLICY = {
    "rules": [
        {
            "name": "no-admin",
            "match": {"targets": ["api"], "http": {"paths": ["/admin/*"]}},
            "action": "deny",
            "message": "no admin API from CI",
        },
        {"name": "all", "action": "allow"},
    ]
}
CURL = ["curl", "-sS", "--max-time", "20"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Nginx, HttpAppliance]]:
    with (
        Lab(n_targets=1) as lab,
        nginx_and_appliance(lab, lab.dir / "appliance", token=TOKEN, policy=POLICY) as (nginx, app),
    ):
        yield lab, nginx, app


def _session_with(app: HttpAppliance, url: str) -> list[dict]:
    """The entries of the one session that requested ``url`` (a path unique to the test),
    once it has ended: found by content, not by order (sessions end and reach the ledger
    in their own time)."""

    def found(entries: list[dict]) -> list[dict]:
        ids = {
            e["session"]
            for e in entries
            if e["type"] == "http.request" and e["data"]["url"].startswith(url)
        }
        ended = {e["session"] for e in entries if e["type"] == "session.end"}
        if len(ids) != 1 or not ids <= ended:
            return []
        return [e for e in entries if e["session"] in ids]

    return found(app.wait_for(lambda es: bool(found(es))))


def test_curl_http11_gets_the_targets_token_and_never_holds_it(
    env: tuple[Lab, Nginx, HttpAppliance],
) -> None:
    _, _, app = env
    # The header comes through a config on stdin: a command line is recorded (identity).
    r = app.job(
        [*CURL, "--http1.1", "-K", "-", "https://api.lab.test/whoami?t=11"],
        input=b'header = "Authorization: Bearer job-has-no-secret"\n',
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"authorization=Bearer {TOKEN}"
    session = _session_with(app, "/whoami?t=11")
    start = session[0]["data"]
    assert start["sni"] == "api.lab.test" and start["alpn"] == "http/1.1"
    assert session[0]["identity"]["ci"]["repository"] == "acme/shop"
    (req,) = [e["data"] for e in session if e["type"] == "http.request"]
    assert ["authorization", "[REDACTED]"] in req["headers"]
    (resp,) = [e["data"] for e in session if e["type"] == "http.response"]
    assert resp["status"] == 200 and resp["credential"] == {
        "removed": ["authorization"],
        "added": "bearer",
    }
    app.wait_for(lambda es: True)
    assert app.files_containing(TOKEN.encode()) == []
    assert app.files_containing(b"job-has-no-secret") == []


def test_curl_http2_and_the_system_store_alone(env: tuple[Lab, Nginx, HttpAppliance]) -> None:
    """No trust variables: curl reads /etc/ssl/certs/ca-certificates.crt, which
    update-ca-certificates rebuilt with the appliance's CA."""
    _, _, app = env
    r = app.job([*CURL, "--http2", "https://api.lab.test/orders.json?t=h2"], trust_env=False)
    assert r.returncode == 0, r.stderr
    assert (
        json.loads(r.stdout)["orders"][0]["card"] == "4111 1111 1111 1111"
    )  # the job's data, untouched
    session = _session_with(app, "/orders.json?t=h2")
    assert session[0]["data"]["alpn"] == "h2"
    (resp,) = [e["data"] for e in session if e["type"] == "http.response"]
    blob = resp["body_blob"]
    assert "4111" not in json.dumps(blob) and "536-22-8119" not in json.dumps(blob)
    assert blob["masking"]["detectors"]["card"] == 2
    assert app.files_containing(b"4111 1111 1111 1111") == []
    assert app.files_containing(b"536-22-8119") == []


def test_python_requests(env: tuple[Lab, Nginx, HttpAppliance]) -> None:
    _, _, app = env
    code = "import requests; r = requests.get('https://api.lab.test/protected/x', timeout=20); print(r.status_code, r.text)"
    r = app.job(["/usr/bin/python3", "-c", code])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '200 {"secret_ok": true}'


def test_git_clone_over_https(env: tuple[Lab, Nginx, HttpAppliance]) -> None:
    _, _, app = env
    r = app.job(
        ["git", "clone", "-q", "https://api.lab.test/git/repo.git", "/tmp/clone-lab"], timeout=120
    )
    try:
        assert r.returncode == 0, r.stderr
        assert (Path("/tmp/clone-lab") / "README.md").read_text().startswith("a repository")
    finally:
        import shutil

        shutil.rmtree("/tmp/clone-lab", ignore_errors=True)
    app.wait_for(
        lambda es: any(
            e["type"] == "http.request" and "git-upload-pack" in e["data"]["url"] for e in es
        )
    )


def test_a_denied_request_gets_the_apis_error_and_never_reaches_nginx(
    env: tuple[Lab, Nginx, HttpAppliance],
) -> None:
    _, nginx, app = env
    r = app.job([*CURL, "-w", "\n%{http_code}", "https://api.lab.test/admin/users"])
    body, code = r.stdout.rsplit("\n", 1)
    assert code == "403"
    error = json.loads(body)["error"]
    assert "no admin API from CI" in error["message"] and error["decision"]
    assert "/admin/users" not in (nginx.dir / "access.log").read_text()


def test_another_name_on_the_same_address_is_refused(env: tuple[Lab, Nginx, HttpAppliance]) -> None:
    """other.lab.test is served by the same nginx at the same address, but is not a name
    of the target: the TLS handshake for it fails."""
    _, _, app = env
    r = app.job([*CURL, "https://other.lab.test/hello.txt"])
    assert r.returncode != 0
    assert (
        "alert" in r.stderr.lower()
        or "unrecognized" in r.stderr.lower()
        or "ssl" in r.stderr.lower()
    )


def test_a_host_header_for_another_name_is_misdirected(
    env: tuple[Lab, Nginx, HttpAppliance],
) -> None:
    _, _, app = env
    r = app.job(
        [
            *CURL,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: other.lab.test",
            "https://api.lab.test/hello.txt",
        ]
    )
    assert r.stdout == "421"


def test_plain_http_on_80_is_captured_and_refused(env: tuple[Lab, Nginx, HttpAppliance]) -> None:
    _, _, app = env
    r = app.job([*CURL, "-o", "/dev/null", "-w", "%{http_code}", "http://api.lab.test/hello.txt"])
    assert r.stdout == "403"


def test_ipv6_is_captured_too(env: tuple[Lab, Nginx, HttpAppliance]) -> None:
    lab, _, app = env
    t = lab.targets[0]
    r = app.job(
        [
            *CURL,
            "--connect-to",
            f"api.lab.test:443:[{t.ipv6}]:443",
            "https://api.lab.test/whoami?t=v6",
        ]
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"authorization=Bearer {TOKEN}"
    session = _session_with(app, "/whoami?t=v6")
    assert session[0]["data"]["server"] == "[fd00:a9e::2]:443"


def test_upload_and_download_stream_through(env: tuple[Lab, Nginx, HttpAppliance]) -> None:
    _, nginx, app = env
    nginx.big_file("64m.bin", 64 << 20)
    r = app.job(["sh", "-c", "curl -sS --max-time 60 https://api.lab.test/big/64m.bin | sha256sum"])
    assert r.returncode == 0, r.stderr
    import hashlib

    assert r.stdout.split()[0] == hashlib.sha256(bytes(64 << 20)).hexdigest()
    r = app.job(
        [
            "sh",
            "-c",
            "head -c 33554432 /dev/zero | curl -sS --max-time 60 -T - https://api.lab.test/upload/z.bin -w '%{http_code}'",
        ]
    )
    assert r.stdout.strip() in ("201", "204"), r.stderr
    assert (nginx.www / "upload" / "z.bin").stat().st_size == 32 << 20


def test_the_ledger_verifies(env: tuple[Lab, Nginx, HttpAppliance]) -> None:
    import subprocess

    from tests.lab.http_lab import APPLIANCE

    _, _, app = env
    app.wait_for(lambda es: True)
    r = subprocess.run(
        [
            APPLIANCE,
            "ledger",
            "verify",
            "--ledger",
            str(app.ledger),
            "--vkey",
            str(app.work / "ledger.vkey"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


SMUGGLE = r"""
import socket, ssl, sys
ctx = ssl.create_default_context()
raw = sys.stdin.buffer.read()
with socket.create_connection(("api.lab.test", 443), timeout=20) as s:
    with ctx.wrap_socket(s, server_hostname="api.lab.test") as t:
        t.sendall(raw)
        out = b""
        while chunk := t.recv(65536):
            out += chunk
print(out.split(b"\r\n", 1)[0].decode())
"""


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /hello.txt HTTP/1.1\r\nHost: api.lab.test\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /hello.txt HTTP/1.1\r\nHost: api.lab.test\r\nContent-Length: 44\r\n\r\nGET /admin/smuggled HTTP/1.1\r\nHost: api.lab.test\r\n\r\n",
        b"POST /hello.txt HTTP/1.1\r\nHost: api.lab.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\nGET /admin/smuggled HTTP/1.1\r\n\r\n",
    ],
    ids=["cl-and-te", "body-on-get", "two-te"],
)
def test_smuggling_is_refused_before_nginx_sees_it(
    env: tuple[Lab, Nginx, HttpAppliance], raw: bytes
) -> None:
    _, nginx, app = env
    r = app.job(["/usr/bin/python3", "-c", SMUGGLE], input=raw)
    assert r.stdout.strip() in ("HTTP/1.1 400 Bad Request", "HTTP/1.1 501 Not Implemented"), (
        r.stdout + r.stderr
    )
    assert "smuggled" not in (nginx.dir / "access.log").read_text()
    app.wait_for(lambda es: any(e["type"] == "protocol.error" for e in es))


def test_nothing_raw_reaches_the_ledger(env: tuple[Lab, Nginx, HttpAppliance]) -> None:
    """Cards, SSNs and tokens in a request body, a query string and headers, and in the
    response body, are masked before anything is written; the export as HAR holds the same."""
    import subprocess

    from tests.lab.http_lab import APPLIANCE

    _, _, app = env
    body = json.dumps(
        {
            "customer": {
                "card": "5500 0000 0000 0004",
                "ssn": "401-62-7853",
                "note": "password=hunter2-very-secret",
            }
        }
    )
    # Everything in a curl config on stdin: a command line is recorded as the job's identity.
    lab = env[0]
    payload = lab.dir / "customer.json"
    payload.write_text(body)
    payload.chmod(0o644)
    config = (
        'url = "https://api.lab.test/upload/customer.json?ssn=401-62-7853&card=5500000000000004"\n'
        'header = "X-Customer-Card: 5500 0000 0000 0004"\n'
        'header = "Cookie: session=s3cr3t-cookie-value"\n'
        'header = "Content-Type: application/json"\n'
        f'upload-file = "{payload}"\n'
    )
    r = app.job([*CURL, "-o", "/dev/null", "-w", "%{http_code}", "-K", "-"], input=config.encode())
    assert r.stdout in ("201", "204"), r.stderr
    session = _session_with(app, "/upload/customer.json")
    app.wait_for(lambda es: True)
    for needle in (
        b"5500 0000 0000 0004",
        b"5500000000000004",
        b"401-62-7853",
        b"s3cr3t-cookie-value",
        b"hunter2-very-secret",
    ):
        assert app.files_containing(needle) == [], needle
    har = app.work / "customer.har"
    done = subprocess.run(
        [APPLIANCE, "ledger", "export", "--ledger", str(app.ledger), "--session", session[0]["session"], "--format", "har", "--out", str(har)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(har.read_text())
    (entry,) = doc["log"]["entries"]
    assert (
        entry["request"]["method"] == "PUT"
        and "[REDACTED:CARD]" in entry["request"]["postData"]["text"]
    )
    assert "401-62-7853" not in har.read_text()
