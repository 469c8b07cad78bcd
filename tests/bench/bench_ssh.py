"""SSH through the appliance, compared with direct (benchmark, not a test; needs root: it
builds a lab).

In one lab (Debian's sshd on target 1, OpenSSH's clients in the runner namespace), the same
work runs twice, side by side in one run:

- ``direct``: the client logs in to sshd itself, with the service account's key and the
  target's real host key;
- ``appliance``: ``appliance run`` (everything on: policy per command and per SFTP
  operation, write-ahead of each statement, recording, masking of recorded output and
  transfer content) on an explicit listener; the client has no key, trusts the appliance's
  per-run CA, and the appliance logs in upstream with the account's key.

Work: ``scp`` of a 1 GiB file to the target (OpenSSH 9's scp speaks SFTP: every 32 KiB
write is decided and hashed by the appliance) and ``$SSH_BENCH_N`` (default 1000) short
``ssh host true`` one after the other (each a full key exchange and login on both sides).
Ratios to direct are printed; nothing is asserted about speed. The machine is shared: the
figures move between runs (say so when quoting them). Run with ``make bench`` or
``pytest tests/bench/bench_ssh.py -m bench -s``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.lab.lab import Lab
from tests.lab.sshd import SshServer, job_etc_ssh

APPLIANCE = str(Path(sys.executable).with_name("appliance"))
PORT = 2222
N = int(os.environ.get("SSH_BENCH_N", "1000"))
SIZE = 1 << 30


def _timed(lab: Lab, argv: list[str]) -> float:
    t0 = time.perf_counter()
    proc = lab.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=3600)
    if proc.returncode != 0:
        raise AssertionError(f"{argv} failed: {err.decode(errors='replace')[-500:]}")
    return time.perf_counter() - t0


@pytest.mark.bench
@pytest.mark.timeout(3600)
def test_ssh_through_the_appliance_against_direct(tmp_path: Path) -> None:
    big = tmp_path / "one-gib"
    with big.open("wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(SIZE >> 20):
            f.write(block)
    with Lab(n_targets=2) as lab:
        sshd = SshServer(lab, lab.targets[1])
        lab._servers.append(sshd)  # stopped with the lab
        sshd.start()
        work = tmp_path / "appliance"
        work.mkdir()
        subprocess.run(
            [APPLIANCE, "keys", "generate", "--name", "bench/ssh", "--out", str(work / "ledger")],
            check=True,
            capture_output=True,
        )
        ca_file = job_etc_ssh(lab) / "ssh_known_hosts"
        config = {
            "targets": [
                {
                    "name": "web",
                    "protocol": "ssh",
                    "addresses": [f"{sshd.ipv4}:22"],
                    "listen": f"127.0.0.1:{PORT}",
                    "known_hosts": str(sshd.known_hosts),
                    "accounts": [
                        {
                            "name": "deploy",
                            "user": "deploy",
                            "secret": {"file": str(sshd.account_key)},
                        }
                    ],
                }
            ],
            "ledger": {
                "dir": str(work / "ledger.d"),
                "origin": "bench/ssh",
                "key": {"file": str(work / "ledger.key")},
            },
            "capture": {"ssh_known_hosts": str(ca_file)},
            "policy": {"rules": [{"name": "all", "action": "allow"}]},
        }
        (work / "config.yaml").write_text(yaml.safe_dump(config))
        log = (work / "appliance.log").open("wb")
        daemon = lab.popen(
            [
                APPLIANCE,
                "run",
                "--config",
                str(work / "config.yaml"),
                "--no-capture",
                "--ready-file",
                str(work / "ready"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        try:
            deadline = time.monotonic() + 60
            while not (work / "ready").exists():
                assert daemon.poll() is None and time.monotonic() < deadline, "no appliance"
                time.sleep(0.05)
            common = [
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
            ]
            direct = [
                *common,
                "-i",
                str(sshd.account_key),
                "-o",
                f"UserKnownHostsFile={sshd.known_hosts}",
            ]
            through = [
                *common,
                "-o",
                f"UserKnownHostsFile={ca_file}",
                "-o",
                "PubkeyAuthentication=no",
            ]
            setups = {
                "direct": (direct, [], f"deploy@{sshd.ipv4}"),
                "appliance": (through, ["-P", str(PORT)], "deploy@127.0.0.1"),
            }
            results: dict[str, dict[str, float]] = {}
            for name, (opts, scp_port, dest) in setups.items():
                secs = _timed(lab, ["scp", "-q", *opts, *scp_port, str(big), f"{dest}:/dev/null"])
                ssh_port = ["-p", scp_port[1]] if scp_port else []
                t0 = time.perf_counter()
                for _ in range(N):
                    _timed(lab, ["ssh", *opts, *ssh_port, dest, "true"])
                each = (time.perf_counter() - t0) / N
                results[name] = {"scp_mb_s": SIZE / secs / 1e6, "ssh_ms": each * 1000}
                print(
                    f"{name:>10}: scp 1 GiB {SIZE / secs / 1e6:7.1f} MB/s; ssh true {each * 1000:6.1f} ms each",
                    flush=True,
                )
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
        ledger_mb = sum(p.stat().st_size for p in (work / "ledger.d").rglob("*") if p.is_file())
    d, a = results["direct"], results["appliance"]
    print(f"\nSSH, {N} x ssh true and scp of 1 GiB (appliance / direct, one run, shared machine):")
    print(
        f"  scp throughput  {a['scp_mb_s']:7.1f} MB/s vs {d['scp_mb_s']:7.1f} MB/s  = {a['scp_mb_s'] / d['scp_mb_s']:.2f}x"
    )
    print(
        f"  ssh host true   {a['ssh_ms']:7.1f} ms   vs {d['ssh_ms']:7.1f} ms    = {a['ssh_ms'] / d['ssh_ms']:.2f}x the time"
    )
    print(f"  ledger: {ledger_mb / 1e6:.1f} MB")
