"""kubectl through the appliance, against the lab's small Kubernetes API server.

No real kube-apiserver can run here: :mod:`tests.lab.kube_server` (NOT kube-apiserver)
speaks discovery, get/list/create/delete of pods and exec over ``v5.channel.k8s.io``. The
client is the machine's real kubectl (1.30 or later: exec over WebSockets), as the job,
with a kubeconfig that names the real server and holds no secret: the appliance injects
the cluster's token, reads each request as a Kubernetes verb on a resource, denies a delete
with a ``Status``, holds nothing back it should not, and records exec streams that
``ledger export --format asciicast`` replays.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.lab.http_lab import APPLIANCE, HttpAppliance, KubeServer
from tests.lab.lab import Lab

TOKEN = "kube-sa-token-51c0ffee9a7d"
POLICY = {
    "rules": [
        {
            "name": "no-pod-deletes",
            "match": {
                "targets": ["k8s"],
                "kubernetes": {"verbs": ["delete", "deletecollection"], "resources": ["pods"]},
            },
            "action": "deny",
            "message": "CI may not delete pods",
        },
        {"name": "all", "action": "allow"},
    ]
}


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Lab, KubeServer, HttpAppliance]]:
    with Lab(n_targets=1) as lab:
        kube = KubeServer(lab, lab.targets[0], token=TOKEN)
        kube.start()
        token_file = lab.dir / "secrets" / "kube-token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        app = HttpAppliance(
            lab, lab.dir / "appliance", targets=[kube.kube_target(token_file)], policy=POLICY
        )
        app.set_hosts({"kube.lab.test": lab.targets[0].ipv4})
        try:
            app.start()
            yield lab, kube, app
        finally:
            app.stop()
            kube.stop()


def kubectl(
    app: HttpAppliance, kube: KubeServer, *args: str, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    config = kube.kubeconfig(app.work / "kubeconfig")
    return app.job(
        ["kubectl", "--kubeconfig", str(config), "--cache-dir", "/tmp/kubectl-lab-cache", *args],
        input=input,
        timeout=60,
    )


def test_kubectl_get_lists_pods_with_the_injected_token(
    env: tuple[Lab, KubeServer, HttpAppliance],
) -> None:
    _, kube, app = env
    r = kubectl(app, kube, "get", "pods", "-o", "name")
    assert r.returncode == 0, r.stderr
    assert "pod/web" in r.stdout.split()
    entries = app.wait_for(
        lambda es: any(
            e["type"] == "http.request" and e["data"].get("kube", {}).get("verb") == "list"
            for e in es
        )
    )
    (req,) = [
        e["data"]
        for e in entries
        if e["type"] == "http.request" and e["data"].get("kube", {}).get("verb") == "list"
    ][:1]
    assert req["kube"]["resource"] == "pods" and req["kube"]["namespace"] == "default"
    assert app.files_containing(TOKEN.encode()) == []


def test_kubectl_delete_is_denied_with_a_status(env: tuple[Lab, KubeServer, HttpAppliance]) -> None:
    _, kube, app = env
    r = kubectl(app, kube, "delete", "pod", "web", "--wait=false")
    assert r.returncode != 0
    assert "CI may not delete pods" in r.stderr and "Forbidden" in r.stderr, r.stderr
    r = kubectl(app, kube, "get", "pod", "web", "-o", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["metadata"]["name"] == "web"


def test_kubectl_create_then_get(env: tuple[Lab, KubeServer, HttpAppliance]) -> None:
    _, kube, app = env
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "job-pod"},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "x",
                    "env": [{"name": "CARD", "value": "4111 1111 1111 1111"}],
                }
            ]
        },
    }
    r = kubectl(app, kube, "create", "--validate=false", "-f", "-", input=json.dumps(pod).encode())
    assert r.returncode == 0, r.stderr
    assert "job-pod created" in r.stdout
    app.wait_for(lambda es: True)
    assert app.files_containing(b"4111 1111 1111 1111") == []


def test_kubectl_exec_streams_are_recorded_and_replayable(
    env: tuple[Lab, KubeServer, HttpAppliance],
) -> None:
    _, kube, app = env
    r = kubectl(
        app, kube, "exec", "web", "--", "sh", "-c", "echo hello from the pod; echo oops >&2"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello from the pod\n" and "oops" in r.stderr

    def exec_session(entries: list[dict]) -> list[dict]:
        ids = [
            e["session"]
            for e in entries
            if e["type"] == "websocket.message" and e["data"].get("text") == "hello from the pod\n"
        ]
        ended = {e["session"] for e in entries if e["type"] == "session.end"}
        return [e for e in entries if ids and e["session"] == ids[0] and ids[0] in ended]

    session = exec_session(app.wait_for(lambda es: bool(exec_session(es))))
    streams = {
        e["data"].get("stream"): e["data"].get("text")
        for e in session
        if e["type"] == "websocket.message" and e["data"].get("stream") in ("stdout", "stderr")
    }
    assert streams == {"stdout": "hello from the pod\n", "stderr": "oops\n"}
    out = app.work / "exec.cast"
    done = subprocess.run(
        [APPLIANCE, "ledger", "export", "--ledger", str(app.ledger), "--session", session[0]["session"], "--format", "asciicast", "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = out.read_text().splitlines()
    assert json.loads(lines[0])["version"] == 2
    assert any(json.loads(line)[2] == "hello from the pod\n" for line in lines[1:])


def test_kubectl_exec_stdin_is_masked_in_the_ledger(
    env: tuple[Lab, KubeServer, HttpAppliance],
) -> None:
    _, kube, app = env
    r = kubectl(app, kube, "exec", "-i", "web", "--", "cat", input=b"card 4111 1111 1111 1111\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "card 4111 1111 1111 1111\n"
    app.wait_for(lambda es: True)
    assert app.files_containing(b"4111 1111 1111 1111") == []
