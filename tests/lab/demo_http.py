"""`make demo`, part two: HTTPS APIs and the Kubernetes API through the appliance.

A second lab: nginx (Debian, its own lab CA) on target 0, the lab's small Kubernetes API
server (NOT kube-apiserver, see :mod:`tests.lab.kube_server`) on target 1, Ceph radosgw's
S3 (the fleet issue's :mod:`tests.lab.ceph`). The appliance captures the job's HTTPS with
its per-boot CA, which it put into the job's trust. Shown:

1. an API call (an upload) held until alice signs, then run with the API's token injected;
2. ``kubectl delete pod`` denied with a Kubernetes ``Status``;
3. the AWS CLI with dummy keys uploading to S3: every request signed again with the
   target's keys;
4. the sessions exported as HAR 1.2 for a browser's developer tools.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.lab.demo import BOLD, DIM, GREEN, RED, RESET, YELLOW, appliance, show, step
from tests.lab.http_lab import CI_ENV, HttpAppliance, KubeServer, Nginx
from tests.lab.lab import Lab

API_TOKEN = "demo-api-token-never-seen-by-the-job"
KUBE_TOKEN = "demo-kube-sa-token"


def run(out: Path, vkey_alice: str, alice_key: Path) -> dict[str, Any]:
    """The HTTPS part of the demo; its ledger goes to ``out``. Returns what it saw."""
    from tests.lab.ceph import CephS3

    seen: dict[str, Any] = {}
    step("12. HTTPS APIs: nginx, a Kubernetes API (the lab's small server) and Ceph's S3")
    with Lab(n_targets=2) as lab, CephS3(tls=True) as s3:
        nginx = Nginx(lab, lab.targets[0], token=API_TOKEN)
        nginx.start()
        kube = KubeServer(lab, lab.targets[1], token=KUBE_TOKEN)
        kube.start()
        endpoint = s3.https(s3.link(lab.runner.name))
        s3_address = endpoint.split("//")[1]
        s3.admin().create_bucket(Bucket="artifacts")
        secrets = lab.dir / "secrets"
        for name, value in (("api", API_TOKEN), ("kube", KUBE_TOKEN), ("s3", s3.root.secret_key)):
            (secrets / name).write_text(value + "\n")
            (secrets / name).chmod(0o600)
        t0 = lab.targets[0]
        targets = [
            {
                "name": "api",
                "protocol": "http",
                "addresses": [f"{t0.ipv4}:443", f"[{t0.ipv6}]:443"],
                "names": ["api.lab.test"],
                "tls": {"mode": "verify-full", "ca": str(nginx.ca_file)},
                "auth": {"type": "bearer"},
                "accounts": [{"name": "ci", "user": "-", "secret": {"file": str(secrets / "api")}}],
            },
            kube.kube_target(secrets / "kube"),
            {
                "name": "s3",
                "protocol": "http",
                "addresses": [s3_address],
                "names": ["s3.lab.test"],
                "tls": {"mode": "verify-full", "ca": str(s3.ca_file)},
                "auth": {"type": "aws_sigv4", "region": "us-east-1", "service": "s3"},
                "accounts": [
                    {
                        "name": "ci",
                        "user": s3.root.access_key,
                        "secret": {"file": str(secrets / "s3")},
                    }
                ],
            },
        ]
        socket_path = out / "approvals.sock"
        policy = {
            "approvals": {
                "timeout": "2m",
                "socket": str(socket_path),
                "approvers": [{"name": "alice", "key": vkey_alice}],
            },
            "rules": [
                {
                    "name": "no-pod-deletes",
                    "match": {
                        "targets": ["k8s"],
                        "kubernetes": {"verbs": ["delete"], "resources": ["pods"]},
                    },
                    "action": "deny",
                    "message": "CI may not delete pods",
                },
                {
                    "name": "uploads-need-a-human",
                    "match": {
                        "targets": ["api"],
                        "http": {"methods": ["PUT"], "paths": ["/upload/*"]},
                    },
                    "action": "review",
                    "approvers": ["alice"],
                },
                {"name": "default", "action": "allow"},
            ],
        }
        app = HttpAppliance(lab, out, targets=targets, policy=policy)
        app.set_hosts(
            {
                "api.lab.test": t0.ipv4,
                "kube.lab.test": lab.targets[1].ipv4,
                "s3.lab.test": s3_address.split(":")[0],
            }
        )
        app.start()
        try:
            ca = next(e for e in app.entries() if e["type"] == "interception.ca")["data"]
            print(
                f"   the appliance made its CA at start (key in memory only), constrained to: {', '.join(ca['names'])}"
            )
            trust_vars = ", ".join(sorted(app.job_env().keys() - CI_ENV.keys()))
            print(
                f"   installed with update-ca-certificates; the job's environment file sets: {trust_vars}"
            )

            print(
                f"\n   {DIM}job$ curl -T release-notes.txt https://api.lab.test/upload/release-notes.txt{RESET}"
            )
            notes = lab.dir / "notes.txt"
            notes.write_text("release 1.2: card 4111 1111 1111 1111 was a test value\n")
            notes.chmod(0o644)
            job = app.lab.popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 f"mount --bind {app.hosts} /etc/hosts && mount --bind {app.bundle} /etc/ssl/certs/ca-certificates.crt && "
                 f"exec setpriv --reuid=65534 --regid=65534 --clear-groups -- curl -sS -w '%{{http_code}}\\n' -T {notes} https://api.lab.test/upload/release-notes.txt"],
                job=True, uid=0, env={**app.job_env(), "HOME": "/tmp"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            request = None
            for _ in range(200):
                pending = json.loads(
                    appliance(
                        "approvals", "list", "--socket", str(socket_path), "--format", "json"
                    ).stdout
                )
                if pending:
                    request = pending[0]
                    break
                time.sleep(0.1)
            if request is None:
                job.kill()
                stdout, stderr = job.communicate()
                raise RuntimeError(
                    f"no approval request appeared for the upload: {stdout!r} {stderr!r}\n"
                    + app.log.read_text()[-2000:]
                )
            print(f"   {YELLOW}held{RESET}: {request.get('statement', '')}")
            print(
                f"   {DIM}alice$ appliance approvals approve {request['id']} --key alice.key --reason 'release 1.2'{RESET}"
            )
            appliance(
                "approvals",
                "approve",
                request["id"],
                "--key",
                str(alice_key),
                "--reason",
                "release 1.2",
                "--socket",
                str(socket_path),
            )
            stdout, stderr = job.communicate(timeout=60)
            status = stdout.decode().strip()
            print(
                f"   {GREEN}approved and run{RESET}: nginx answered {status}; it saw the API's token, the job never had it"
            )
            seen["upload_status"] = status

            print(
                f"\n   {DIM}job$ kubectl delete pod web{RESET}   (kubeconfig: the real server, no secret)"
            )
            config = kube.kubeconfig(lab.dir / "kubeconfig")
            r = app.job(
                [
                    "kubectl",
                    "--kubeconfig",
                    str(config),
                    "--cache-dir",
                    "/tmp/kubectl-demo-cache",
                    "delete",
                    "pod",
                    "web",
                    "--wait=false",
                ]
            )
            show(r.stderr)
            print(
                f"   {RED}denied{RESET} with a Kubernetes Status (403 Forbidden); the pod is still there"
            )
            seen["kube_delete"] = r.stderr

            print(
                f"\n   {DIM}job$ aws --endpoint-url https://s3.lab.test:7443 s3 cp build.tar s3://artifacts/   (dummy keys){RESET}"
            )
            build = lab.dir / "build.tar"
            build.write_bytes(b"\0" * (12 << 20))
            build.chmod(0o644)
            aws_config = lab.dir / "aws-config"
            aws_config.write_text(
                "[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n"
            )
            aws_config.chmod(0o644)
            env = {
                "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
                "AWS_SECRET_ACCESS_KEY": "dummy",
                "AWS_CONFIG_FILE": str(aws_config),
            }
            r = app.job(
                [
                    "/usr/bin/aws",
                    "--endpoint-url",
                    "https://s3.lab.test:7443",
                    "s3",
                    "cp",
                    str(build),
                    "s3://artifacts/build.tar",
                ],
                env=env,
                timeout=300,
            )
            show(r.stdout.replace("\r", "\n").splitlines()[-1] if r.stdout.strip() else r.stderr)
            size = s3.admin().head_object(Bucket="artifacts", Key="build.tar")["ContentLength"]
            print(
                f"   {GREEN}uploaded{RESET} ({size} bytes in S3): radosgw checked signatures made with the target's keys"
            )
            seen["s3_size"] = size
        finally:
            app.stop()
            kube.stop()
            nginx.stop()
    entries = app.entries()
    sessions = [
        e["session"] for e in entries if e["type"] == "http.request" and e["target"] == "api"
    ]
    har = out / "upload.har"
    appliance(
        "ledger",
        "export",
        "--ledger",
        str(app.ledger),
        "--session",
        sessions[0],
        "--format",
        "har",
        "--out",
        str(har),
    )
    requests = sum(1 for e in entries if e["type"] == "http.request")
    print(
        f"\n   {requests} requests recorded (masked, signed); the upload's session as HAR 1.2: {har}"
    )
    verify = appliance(
        "ledger", "verify", "--ledger", str(app.ledger), "--vkey", str(out / "ledger.vkey")
    )
    show(verify.stdout)
    print(
        f"   {BOLD}no secret reached the ledger{RESET}: "
        + (
            "yes"
            if not app.files_containing(API_TOKEN.encode())
            and not app.files_containing(b"4111 1111 1111 1111")
            else "NO"
        )
    )
    seen["har"] = har
    return seen
