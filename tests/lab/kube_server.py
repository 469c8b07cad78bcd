"""A small Kubernetes API server for the lab: THIS IS NOT kube-apiserver.

No real Kubernetes API server can run on this machine (no container runtime, no etcd), so
the lab tests the appliance's Kubernetes semantics with the machine's real ``kubectl``
against this server, which speaks the real protocol for what the tests use:

- discovery: ``/version``, ``/api``, ``/apis``, ``/api/v1`` (pods, pods/exec, pods/log,
  namespaces);
- pods in namespaces, kept in memory: get, list, create (POST), delete;
- ``exec`` over WebSockets with the ``v5.channel.k8s.io`` (and ``v4``) subprotocol: the
  command really runs (as uid nobody, in the target's network namespace), stdin, stdout and
  stderr travel on channels 0, 1 and 2, the exit status as a ``Status`` on channel 3;
- bearer-token authentication: anything but the cluster's token gets 401 ``Unauthorized``.

Run as ``python -m tests.lab.kube_server CERT KEY ADDRESS PORT TOKEN_FILE`` (the lab starts
it in a target namespace). asyncio, h11 and wsproto; HTTP/1.1 only.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request

NOBODY = 65534

RESOURCES = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": "v1",
    "resources": [
        {
            "name": "pods",
            "singularName": "pod",
            "namespaced": True,
            "kind": "Pod",
            "verbs": ["create", "delete", "get", "list"],
            "shortNames": ["po"],
        },
        {
            "name": "pods/exec",
            "singularName": "",
            "namespaced": True,
            "kind": "PodExecOptions",
            "verbs": ["create", "get"],
        },
        {
            "name": "pods/log",
            "singularName": "",
            "namespaced": True,
            "kind": "Pod",
            "verbs": ["get"],
        },
        {
            "name": "namespaces",
            "singularName": "namespace",
            "namespaced": False,
            "kind": "Namespace",
            "verbs": ["get", "list"],
            "shortNames": ["ns"],
        },
    ],
}


def _pod(namespace: str, name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "spec": spec
        or {
            "containers": [
                {
                    "name": "app",
                    "image": "lab/app:1",
                    "env": [{"name": "DB_PASSWORD", "value": "hunter2-pod-secret"}],
                }
            ]
        },
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "app",
                    "ready": True,
                    "restartCount": 0,
                    "image": "lab/app:1",
                    "imageID": "",
                    "state": {"running": {}},
                }
            ],
        },
    }


class Cluster:
    def __init__(self, token: str) -> None:
        self.token = token
        self.pods: dict[tuple[str, str], dict[str, Any]] = {
            ("default", "web"): _pod("default", "web")
        }


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


async def _send(writer: asyncio.StreamWriter, conn: h11.Connection, status: int, doc: Any) -> None:
    body = json.dumps(doc).encode()
    writer.write(
        conn.send(
            h11.Response(
                status_code=status,
                headers=[("content-type", "application/json"), ("content-length", str(len(body)))],
            )
        )
        or b""
    )
    writer.write(conn.send(h11.Data(data=body)) or b"")
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()


async def handle(
    cluster: Cluster, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request: h11.Request | None = None
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    if not data and conn.their_state is h11.IDLE:
                        return
                    continue
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif (
                    isinstance(event, h11.EndOfMessage | h11.ConnectionClosed)
                    or event is h11.PAUSED
                ):
                    break
            if request is None:
                return
            headers = {k.decode().lower(): v.decode() for k, v in request.headers}
            if headers.get("authorization") != f"Bearer {cluster.token}":
                await _send(writer, conn, 401, _status(401, "Unauthorized", "Unauthorized"))
            elif "upgrade" in headers.get("connection", "").lower():
                await _exec(cluster, request, headers, reader, writer, conn)
                return
            else:
                status, doc = route(cluster, request.method.decode(), request.target.decode(), body)
                await _send(writer, conn, status, doc)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (h11.ProtocolError, ConnectionError):
        return
    finally:
        writer.close()


def route(cluster: Cluster, method: str, target: str, body: bytes) -> tuple[int, Any]:
    path = urlsplit(target).path.rstrip("/")
    parts = path.strip("/").split("/")
    if path == "/version":
        return 200, {
            "major": "1",
            "minor": "32",
            "gitVersion": "v1.32.0-lab",
            "platform": "linux/amd64",
        }
    if path == "/api":
        return 200, {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": "kube.lab.test:443"}
            ],
        }
    if path == "/apis":
        return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
    if path == "/api/v1":
        return 200, RESOURCES
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) >= 5 and parts[4] == "pods":
        ns = parts[3]
        name = parts[5] if len(parts) > 5 else None
        if name is None and method == "GET":
            items = [p for (n, _), p in sorted(cluster.pods.items()) if n == ns]
            return 200, {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "1"},
                "items": items,
            }
        if name is None and method == "POST":
            doc = json.loads(body or b"{}")
            pod_name = doc.get("metadata", {}).get("name", "")
            if (ns, pod_name) in cluster.pods:
                return 409, _status(409, "AlreadyExists", f'pods "{pod_name}" already exists')
            pod = _pod(ns, pod_name, doc.get("spec"))
            cluster.pods[(ns, pod_name)] = pod
            return 201, pod
        if name is not None and len(parts) == 6:
            pod = cluster.pods.get((ns, name))
            if pod is None:
                return 404, _status(404, "NotFound", f'pods "{name}" not found')
            if method == "GET":
                return 200, pod
            if method == "DELETE":
                del cluster.pods[(ns, name)]
                return 200, pod
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 4 and method == "GET":
        return 200, {
            "kind": "Namespace",
            "apiVersion": "v1",
            "metadata": {"name": parts[3]},
            "status": {"phase": "Active"},
        }
    return 404, _status(
        404, "NotFound", f"the server could not find the requested resource ({path})"
    )


async def _exec(
    cluster: Cluster,
    request: h11.Request,
    headers: dict[str, str],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    conn: h11.Connection,
) -> None:
    """``pods/NAME/exec`` over a WebSocket (v5.channel.k8s.io / v4.channel.k8s.io)."""
    target = request.target.decode()
    query = parse_qs(urlsplit(target).query)
    command = query.get("command", [])
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
    proto = next((p for p in ("v5.channel.k8s.io", "v4.channel.k8s.io") if p in offered), None)
    ws = WSConnection(ConnectionType.SERVER)
    raw = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
    ws.receive_data(request.method + b" " + request.target + b" HTTP/1.1\r\n" + raw + b"\r\n")
    events = list(ws.events())
    if proto is None or not command or not any(isinstance(e, Request) for e in events):
        await _send(
            writer,
            conn,
            400,
            _status(400, "BadRequest", "exec needs a command and the v5/v4 channel protocol"),
        )
        return
    writer.write(ws.send(AcceptConnection(subprotocol=proto)))
    await writer.drain()
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        user=NOBODY,
        group=NOBODY,
        cwd="/tmp",
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    async def pump(stream: asyncio.StreamReader, channel: int) -> None:
        while data := await stream.read(65536):
            writer.write(ws.send(BytesMessage(data=bytes([channel]) + data)))
            await writer.drain()

    async def from_client() -> None:
        assert proc.stdin is not None
        while data := await reader.read(65536):
            ws.receive_data(data)
            for ev in ws.events():
                if isinstance(ev, BytesMessage):
                    payload = bytes(ev.data)
                    if payload[:1] == b"\x00":
                        proc.stdin.write(payload[1:])
                        await proc.stdin.drain()
                    elif payload[:2] == b"\xff\x00":  # v5: the client closed stdin
                        proc.stdin.close()
                elif isinstance(ev, CloseConnection):
                    return

    client = asyncio.create_task(from_client())
    if "stdin" not in query or query["stdin"][0] not in ("true", "1"):
        proc.stdin.close()
    await asyncio.gather(pump(proc.stdout, 1), pump(proc.stderr, 2))
    code = await proc.wait()
    status: dict[str, Any] = {"metadata": {}, "status": "Success"}
    if code != 0:
        status = {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }
    writer.write(ws.send(BytesMessage(data=b"\x03" + json.dumps(status).encode())))
    writer.write(ws.send(CloseConnection(code=1000)))
    await writer.drain()
    client.cancel()


async def main(cert: str, key: str, address: str, port: int, token_file: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    cluster = Cluster(Path(token_file).read_text().strip())
    server = await asyncio.start_server(
        lambda r, w: handle(cluster, r, w), address, port, ssl=context
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    os.umask(0o022)
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
