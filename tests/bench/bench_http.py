"""HTTPS through the appliance, compared (benchmark, not a test; needs root: it builds a lab).

In one lab (nginx from Debian in a target namespace, the clients in the runner namespace),
the same transfers run against:

- ``direct``: nginx itself (TLS, keep-alive);
- ``appliance``: ``appliance run`` with an explicit listener (TLS terminated with its
  per-boot CA, HTTP parsed by h11/h2, policy per request, the token injected, every
  exchange recorded with its masked first 64 KiB and the digest of the whole body, uvloop);
- ``relay``: a bare TLS-terminating relay (:mod:`tests.bench.tls_relay`: TLS in, TLS out,
  bytes copied, nothing parsed; uvloop), the floor for any Python HTTPS proxy.

Measured: requests/s of small GETs (``h2load``, HTTP/1.1 keep-alive, 8 connections; and
HTTP/2 with 8 streams on one connection), and MB/s of one large download and one large
upload (``curl``; ``HTTP_BENCH_BYTES``, default 1 GiB), with the appliance's peak memory
(VmHWM of the proxy process and of its ledger writer process) after each: a multi-GB body
passes in bounded memory. Ratios to ``direct`` are printed; nothing is asserted about speed
(the machine is shared: figures move between runs). ``make bench`` or
``pytest tests/bench/bench_http.py -m bench -s``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.certs import server_cert
from tests.lab.http_lab import HttpAppliance, Nginx
from tests.lab.lab import Lab, wait_port

SIZE = int(os.environ.get("HTTP_BENCH_BYTES", str(1 << 30)))
REQUESTS = int(os.environ.get("HTTP_BENCH_REQUESTS", "20000"))
ROOT = Path(__file__).resolve().parents[2]
_H2LOAD = re.compile(r"finished in [\d.]+m?s, ([\d.]+) req/s")


def h2load(lab: Lab, url: str, *, h2: bool) -> float:
    args = ["h2load", "-n", str(REQUESTS)]
    args += ["-c", "1", "-t", "1", "-m", "8"] if h2 else ["--h1", "-c", "8", "-t", "2"]
    proc = lab.popen([*args, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=600)
    text = out.decode(errors="replace")
    m = _H2LOAD.search(text)
    assert m is not None and " 0 failed" in text.replace(",", ""), text[-1500:]
    return float(m.group(1))


def curl_speed(lab: Lab, argv: list[str]) -> float:
    """MB/s (10^6) that curl reports for a transfer."""
    proc = lab.popen(["sh", "-c", " ".join(argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=1800)
    assert proc.returncode == 0, err.decode()[-1000:]
    return float(out.decode().strip().split()[-1]) / 1e6


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.bench
@pytest.mark.timeout(3600)
def test_https_ratios(tmp_path: Path) -> None:
    with Lab(n_targets=1) as lab:
        t = lab.targets[0]
        token = "bench-token-0123456789"
        nginx = Nginx(lab, t, token=token)
        nginx.start()
        nginx.big_file("big.bin", SIZE)
        secret = lab.dir / "secrets" / "token"
        secret.write_text(token)
        secret.chmod(0o600)
        target = {
            "name": "api",
            "protocol": "http",
            "addresses": [f"{t.ipv4}:443"],
            "listen": "127.0.0.1:8443",
            "names": ["api.lab.test", "127.0.0.1"],
            "tls": {"mode": "verify-full", "ca": str(nginx.ca_file), "server_name": "api.lab.test"},
            "auth": {"type": "bearer"},
            "accounts": [{"name": "ci", "user": "-", "secret": {"file": str(secret)}}],
        }
        policy = {
            "rules": [
                {"name": "no-admin", "match": {"http": {"paths": ["/admin/*"]}}, "action": "deny"},
                {"name": "default", "action": "allow"},
            ]
        }
        app = HttpAppliance(
            lab, lab.dir / "appliance", targets=[target], policy=policy, capture=False
        )
        relay_tls = server_cert("bench relay CA", "127.0.0.1", ["127.0.0.1"])
        (lab.dir / "relay.crt").write_bytes(relay_tls.cert_pem)
        (lab.dir / "relay.key").write_bytes(relay_tls.key_pem)
        relay = lab.popen(
            [sys.executable, "-m", "tests.bench.tls_relay", str(lab.dir / "relay.crt"), str(lab.dir / "relay.key"),
             "127.0.0.1", "9443", t.ipv4, "443", str(nginx.ca_file), "api.lab.test"],
            cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        app.start()
        try:
            wait_port("127.0.0.1", 9443, netns=lab.runner.path)
            urls = {
                "direct": f"https://{t.ipv4}",
                "appliance": "https://127.0.0.1:8443",
                "relay": "https://127.0.0.1:9443",
            }
            results: dict[str, dict[str, float]] = {}
            assert app.proc is not None
            pid = app.proc.pid
            for setup, base in urls.items():
                r = results.setdefault(setup, {})
                r["req/s http1.1"] = h2load(lab, f"{base}/hello.txt", h2=False)
                if setup != "relay":  # the relay offers http/1.1 only
                    r["req/s h2"] = h2load(lab, f"{base}/hello.txt", h2=True)
                t0 = time.monotonic()
                r["MB/s down"] = curl_speed(
                    lab,
                    [
                        "curl",
                        "-sSk",
                        "-o",
                        "/dev/null",
                        "-w",
                        "'%{speed_download}'",
                        f"{base}/big/big.bin",
                    ],
                )
                if setup == "appliance":
                    r["peak MiB after down"] = peak_kib(pid) / 1024
                r["MB/s up"] = curl_speed(
                    lab,
                    [
                        "head",
                        "-c",
                        str(SIZE),
                        "/dev/zero",
                        "|",
                        "curl",
                        "-sSk",
                        "-o",
                        "/dev/null",
                        "-T",
                        "-",
                        "-w",
                        "'%{speed_upload}'",
                        f"{base}/upload/{setup}.bin",
                    ],
                )
                if setup == "appliance":
                    r["peak MiB after up"] = peak_kib(pid) / 1024
                    r["writer peak MiB"] = (
                        max((peak_kib(c) for c in children(pid)), default=0) / 1024
                    )
                r["seconds"] = time.monotonic() - t0
                print(
                    f"{setup:>10}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()), flush=True
                )
            print(
                f"\nHTTPS through the appliance ({SIZE / 2**30:.2f} GiB bodies, {REQUESTS} requests), ratio to direct:"
            )
            for key in ("req/s http1.1", "req/s h2", "MB/s down", "MB/s up"):
                direct = results["direct"][key]
                row = [f"{key:<14} direct {direct:10.1f}"]
                for setup in ("appliance", "relay"):
                    if key in results[setup]:
                        value = results[setup][key]
                        row.append(f"{setup} {value:10.1f} ({value / direct:.2f}x)")
                print("   " + "   ".join(row), flush=True)
            a = results["appliance"]
            print(
                f"   appliance memory: proxy peak {a['peak MiB after down']:.0f} MiB after the download, "
                f"{a['peak MiB after up']:.0f} MiB after the upload; ledger writer peak {a['writer peak MiB']:.0f} MiB",
                flush=True,
            )
            for setup in ("direct", "appliance", "relay"):
                assert (nginx.www / "upload" / f"{setup}.bin").stat().st_size == SIZE
        finally:
            app.stop()
            relay.kill()
            nginx.stop()
