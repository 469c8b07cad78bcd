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


def _one(app: HttpAppliance, before: int) -> list[dict]:
    (session,) = app.sessions_after(before)
    return session


def test_curl_http11_gets_the_targets_token_and_never_holds_it(
    env: tuple[Lab, Nginx, HttpAppliance],
) -> None:
    _, _, app = env
    before = app.session_count()
    # The header comes through a config on stdin: a command line is recorded (identity).
    r = app.job(
        [*CURL, "--http1.1", "-K", "-", "https://api.lab.test/whoami"],
        input=b'header = "Authorization: Bearer job-has-no-secret"\n',
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"authorization=Bearer {TOKEN}"
    session = _one(app, before)
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
    before = app.session_count()
    r = app.job([*CURL, "--http2", "https://api.lab.test/orders.json"], trust_env=False)
    assert r.returncode == 0, r.stderr
    assert (
        json.loads(r.stdout)["orders"][0]["card"] == "4111 1111 1111 1111"
    )  # the job's data, untouched
    session = _one(app, before)
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
    before = app.session_count()
    r = app.job(
        ["git", "clone", "-q", "https://api.lab.test/git/repo.git", "/tmp/clone-lab"], timeout=120
    )
    try:
        assert r.returncode == 0, r.stderr
        assert (Path("/tmp/clone-lab") / "README.md").read_text().startswith("a repository")
    finally:
        import shutil

        shutil.rmtree("/tmp/clone-lab", ignore_errors=True)
    sessions = app.sessions_after(before)
    urls = [e["data"]["url"] for s in sessions for e in s if e["type"] == "http.request"]
    assert any("git-upload-pack" in u for u in urls)


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
    before = app.session_count()
    r = app.job(
        [*CURL, "--connect-to", f"api.lab.test:443:[{t.ipv6}]:443", "https://api.lab.test/whoami"]
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"authorization=Bearer {TOKEN}"
    session = _one(app, before)
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
