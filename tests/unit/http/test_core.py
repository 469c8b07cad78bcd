"""Transcript tests of the HTTP session core (:mod:`appliance.proxy.http.core`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from appliance.approvals.broker import Outcome, Resolution
from appliance.approvals.request import ApprovalRequest
from appliance.proxy.commands import (
    ApprovalAnswered,
    AskApproval,
    End,
    Eof,
    OpenUpstream,
    PauseReading,
    StartTLS,
    TimerFired,
    TLSEstablished,
)
from tests.unit.http.harness import (
    TOKEN,
    Drive,
    parse_requests,
    parse_responses,
    request,
    response,
)


def _outcome(verdict: Resolution) -> Outcome:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    request = ApprovalRequest(
        "r1", "s1", "unattributed", "api", "ci", "review-posts", ("alice",), "POST", "00",
        now, now + timedelta(minutes=5),
    )  # fmt: skip
    return Outcome(verdict, request, approver="alice", reason="ok")


REVIEW = """\
policy:
  approvals:
    approvers:
      - {name: alice, key: "alice+82e4fd33+AdZw9y79lHW2InX653PrX16x/qTyoIgObSGYMnO/laCv"}
  rules:
    - name: no-kube-delete
      match: {targets: [k8s], kubernetes: {verbs: [delete]}}
      action: deny
      message: "deleting from CI is not allowed"
    - name: review-posts
      match: {http: {methods: [POST], paths: ["/deploy/*"]}}
      action: review
      approvers: [alice]
    - name: no-admin
      match: {http: {paths: ["/admin/*"]}}
      action: deny
    - {name: all, action: allow}
"""


def test_the_job_is_asked_for_tls_then_upstream_is_opened_with_its_name() -> None:
    d = Drive()
    (_, tls) = d.start()
    assert isinstance(tls, StartTLS) and tls.side == "job"
    commands = d.event(TLSEstablished("job", None, "http/1.1", "api.lab.test"))
    assert any(isinstance(c, OpenUpstream) and c.address == ("198.18.0.2", 443) for c in commands)
    (up_tls,) = d.event(
        __import__("appliance.proxy.commands", fromlist=["UpstreamOpened"]).UpstreamOpened(
            ("1.1.1.1", 1)
        )
    )
    assert isinstance(up_tls, StartTLS) and up_tls.server_hostname == "api.lab.test"
    assert d.ledger.all("session.start")[0]["sni"] == "api.lab.test"


@pytest.mark.parametrize("bytewise", [False, True])
def test_an_allowed_request_goes_up_with_the_targets_token_and_comes_back(bytewise: bool) -> None:
    d = Drive()
    d.open()
    d.job(
        request(
            "GET",
            "/v1/orders?card=4111111111111111&token=abc",
            "api.lab.test",
            [("authorization", "Bearer job-placeholder")],
        ),
        bytewise=bytewise,
    )
    ((req, _),) = parse_requests(d.take_up())
    headers = dict(req.headers)
    assert headers[b"authorization"] == f"Bearer {TOKEN}".encode()
    assert b"job-placeholder" not in b"".join(v for _, v in req.headers)
    body = json.dumps({"ssn": "123-45-6789", "ok": True}).encode()
    d.up(response(200, body, [("content-type", "application/json")]), bytewise=bytewise)
    ((resp, got),) = parse_responses(d.take_job())
    assert resp.status_code == 200 and got == body  # the job gets the response unmasked
    (rq,) = d.ledger.all("http.request")
    assert "4111111111111111" not in rq["url"] and "abc" not in rq["url"]
    assert ["authorization", "[REDACTED]"] in rq["headers"]
    (rs,) = d.ledger.all("http.response")
    assert rs["status"] == 200 and rs["body"]["length"] == len(body)
    assert rs["credential"] == {"removed": ["authorization"], "added": "bearer"}
    (blobs,) = d.ledger.blobs("http.response")
    assert b"123-45-6789" in blobs["body_blob"].data  # masked in the writer (BodyTransform)
    everything = repr(d.ledger.entries)
    assert TOKEN not in everything and "job-placeholder" not in everything


def test_the_body_transform_masks_what_the_writer_stores() -> None:
    d = Drive()
    d.open()
    d.job(
        request(
            "POST",
            "/v1/pay",
            "api.lab.test",
            [("content-type", "application/json")],
            b'{"card":"4111 1111 1111 1111"}',
        )
    )
    d.up(response(201, b'{"id":1}', [("content-type", "application/json")]))
    (blobs,) = d.ledger.blobs("http.response")
    pending = blobs["request_body_blob"]
    transform, annotate = pending.transform.new()
    assert transform(pending.data) == b'{"card":"[REDACTED:CARD]"}'
    assert annotate()["masking"]["detectors"] == {"card": 1}


def test_pipelined_requests_are_answered_in_order() -> None:
    d = Drive()
    d.open()
    d.job(request("GET", "/a", "api.lab.test") + request("GET", "/b", "api.lab.test"))
    first = parse_requests(d.take_up())
    assert [r.target for r, _ in first] == [b"/a"]  # one at a time upstream
    d.up(response(200, b"A"))
    assert [r.target for r, _ in parse_requests(d.take_up())] == [b"/b"]
    d.up(response(200, b"B"))
    assert [b for _, b in parse_responses(d.take_job(), 2)] == [b"A", b"B"]


def test_another_name_on_the_same_connection_is_misdirected() -> None:
    d = Drive()
    d.open()
    d.job(request("GET", "/", "other.lab.test"))
    ((resp, _body),) = parse_responses(d.take_job())
    assert resp.status_code == 421
    assert d.take_up() == b""
    assert d.ledger.all("policy.decision")[0]["rule"] == "(built-in) host-is-sni"


def test_a_kubernetes_delete_is_denied_with_a_status_object() -> None:
    d = Drive("k8s", policy=REVIEW)
    d.open(sni="kube.lab.test")
    d.job(
        request(
            "DELETE",
            "/api/v1/namespaces/default/pods/web",
            "kube.lab.test",
            [("content-type", "application/json")],
            b'{"kind":"DeleteOptions"}',
        )
    )
    ((resp, body),) = parse_responses(d.take_job())
    status = json.loads(body)
    assert resp.status_code == 403
    assert status["kind"] == "Status" and status["reason"] == "Forbidden"
    assert "deleting from CI is not allowed" in status["message"]
    assert status["details"] == {"kind": "pods", "name": "web"}
    assert d.take_up() == b""
    (rq,) = d.ledger.all("http.request")
    assert rq["kube"] == {
        "verb": "delete",
        "group": "",
        "version": "v1",
        "resource": "pods",
        "namespace": "default",
        "name": "web",
    }
    assert rq["decision"]["decision"] == "deny"


def test_a_held_request_waits_for_the_signed_approval_then_runs() -> None:
    d = Drive(policy=REVIEW)
    d.open()
    commands = d.job(request("POST", "/deploy/prod", "api.lab.test", body=b"go"))
    ask = next(c for c in commands if isinstance(c, AskApproval))
    assert PauseReading("job", "hold", True) in commands
    assert ask.fields["statement"].startswith("POST https://api.lab.test/deploy/prod")
    assert d.take_up() == b""
    outcome = _outcome(Resolution.GRANTED)
    commands = d.event(ApprovalAnswered(ask.key, outcome, "req-1"))
    assert PauseReading("job", "hold", False) in commands
    ((req, body),) = parse_requests(d.take_up())
    assert req.target == b"/deploy/prod" and body == b"go"
    d.up(response(200, b"done"))
    (rs,) = d.ledger.all("http.response")
    assert rs["approval"] == {"request": "req-1", "outcome": "granted", "approver": "alice"}


def test_a_denied_approval_answers_403_and_forwards_nothing() -> None:
    d = Drive(policy=REVIEW)
    d.open()
    ask = next(
        c
        for c in d.job(request("POST", "/deploy/prod", "api.lab.test"))
        if isinstance(c, AskApproval)
    )
    d.event(ApprovalAnswered(ask.key, _outcome(Resolution.DENIED), "req-2"))
    ((resp, _),) = parse_responses(d.take_job())
    assert resp.status_code == 403 and d.take_up() == b""


@pytest.mark.parametrize(
    "raw",
    [
        b"POST / HTTP/1.1\r\nHost: api.lab.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: api.lab.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: api.lab.test\r\nTransfer-Encoding: chunked \r\nTransfer-Encoding: identity\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: api.lab.test\r\nTransfer-Encoding: xchunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: api.lab.test\r\nContent-Length: 40\r\n\r\nGET /admin/x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: api.lab.test\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\nHost: api.lab.test\n\n",
        b"GET / HTTP/1.1\r\nHost : api.lab.test\r\n\r\n",
    ],
)
def test_smuggling_is_refused_with_400_closed_and_recorded(raw: bytes) -> None:
    d = Drive()
    d.open()
    commands = d.job(raw)
    assert any(isinstance(c, End) for c in commands)
    assert d.take_up() == b""
    out = d.take_job()
    assert out.startswith((b"HTTP/1.1 400", b"HTTP/1.1 501")), out
    assert d.ledger.types()[-2:] == ["protocol.error", "session.end"]


def test_a_slow_head_times_out_with_408() -> None:
    d = Drive()
    d.open()
    d.job(b"GET / HTTP/1.1\r\nHost: api.lab.test\r\n")
    assert any(getattr(c, "name", None) == "head" for c in d.commands)
    commands = d.event(TimerFired("head"))
    assert any(isinstance(c, End) for c in commands)
    assert d.take_job().startswith(b"HTTP/1.1 408")


def test_a_huge_head_is_refused_with_431() -> None:
    d = Drive()
    d.open()
    d.job(b"GET / HTTP/1.1\r\nHost: api.lab.test\r\nX: " + b"a" * 70000)
    assert d.take_job().startswith(b"HTTP/1.1 431")
    assert d.ended is not None


def test_the_upstream_closing_between_requests_reconnects() -> None:
    d = Drive()
    d.open()
    d.job(request("GET", "/a", "api.lab.test"))
    d.up(response(200, b"A", [("connection", "close")]))
    d.take_up()
    d.event(Eof("upstream"))
    commands = d.job(request("GET", "/b", "api.lab.test"))
    assert any(isinstance(c, OpenUpstream) for c in commands)


def test_sigv4_is_signed_again_with_the_targets_keys() -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    d = Drive("s3")
    d.open(sni="bucket.s3.lab.test")
    fake = "AWS4-HMAC-SHA256 Credential=AKIDUMMY/20260102/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"
    d.job(
        request(
            "PUT",
            "/key%20one?x-id=PutObject",
            "bucket.s3.lab.test",
            [
                ("authorization", fake),
                ("x-amz-date", "20200101T000000Z"),
                ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
            ],
            b"hello",
        )
    )
    ((req, body),) = parse_requests(d.take_up())
    headers = {k.decode(): v.decode() for k, v in req.headers}
    assert body == b"hello"
    assert headers["authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIDREALKEY0000/20260102/us-east-1/s3/"
    )
    assert headers["x-amz-date"] == "20260102T030405Z"
    # The server's check: the same canonical request signed with the real secret.
    signed = [
        h for h in headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    ]
    check = AWSRequest(
        method="PUT",
        url="https://bucket.s3.lab.test/key%20one?x-id=PutObject",
        headers={k: headers[k] for k in signed},
    )

    class S3Path(SigV4Auth):
        def _normalize_url_path(self, path: str) -> str:
            return path

    auth = S3Path(Credentials("AKIDREALKEY0000", "REALSECRET/abc"), "s3", "us-east-1")
    check.context["timestamp"] = "20260102T030405Z"
    sts = auth.string_to_sign(check, auth.canonical_request(check))
    assert headers["authorization"].endswith("Signature=" + auth.signature(sts, check))


def test_aws_chunked_signatures_are_chained_again() -> None:
    from appliance.proxy.http.credentials import ChunkResigner

    r = ChunkResigner(
        signing_key=b"k" * 32,
        scope="20260102/us-east-1/s3/aws4_request",
        timestamp="20260102T030405Z",
        seed="a" * 64,
    )
    body = (
        b"5;chunk-signature="
        + b"0" * 64
        + b"\r\nhello\r\n0;chunk-signature="
        + b"0" * 64
        + b"\r\n\r\n"
    )
    out = b"".join(r.feed(body[i : i + 7]) for i in range(0, len(body), 7))
    assert len(out) == len(body)
    assert out.startswith(b"5;chunk-signature=") and b"0" * 64 not in out
    assert out.endswith(b"\r\n\r\n")


def test_a_presigned_url_is_refused() -> None:
    d = Drive("s3")
    d.open(sni="s3.lab.test")
    d.job(request("GET", "/b/k?X-Amz-Signature=abc&X-Amz-Credential=x", "s3.lab.test"))
    ((resp, body),) = parse_responses(d.take_job())
    assert resp.status_code == 400 and b"<Code>InvalidRequest</Code>" in body


def test_http2_streams_are_served_one_after_another() -> None:
    import h2.config
    import h2.connection
    import h2.events

    d = Drive()
    d.open(alpn="h2")
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.receive_data(d.take_job())
    for sid, path in ((1, "/a"), (3, "/b")):
        client.send_headers(
            sid,
            [
                (":method", "GET"),
                (":path", path),
                (":scheme", "https"),
                (":authority", "api.lab.test"),
            ],
            end_stream=True,
        )
    d.job(client.data_to_send())
    assert [r.target for r, _ in parse_requests(d.take_up())] == [b"/a"]
    d.up(response(200, b"A"))
    assert [r.target for r, _ in parse_requests(d.take_up())] == [b"/b"]
    d.up(response(200, b"B"))
    events = client.receive_data(d.take_job())
    data: dict[int, bytes] = {}
    for e in events:
        if isinstance(e, h2.events.DataReceived):
            data[e.stream_id] = data.get(e.stream_id, b"") + e.data
    assert data == {1: b"A", 3: b"B"}


def test_http2_coalescing_to_another_name_is_misdirected() -> None:
    import h2.config
    import h2.connection
    import h2.events

    d = Drive()
    d.open(alpn="h2")
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.receive_data(d.take_job())
    client.send_headers(
        1,
        [
            (":method", "GET"),
            (":path", "/"),
            (":scheme", "https"),
            (":authority", "other.lab.test"),
        ],
        end_stream=True,
    )
    d.job(client.data_to_send())
    events = client.receive_data(d.take_job())
    (resp,) = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert dict(resp.headers)[b":status"] == b"421"
    assert d.take_up() == b""


def test_http2_rapid_reset_is_cut_off() -> None:
    import h2.config
    import h2.connection

    d = Drive()
    d.open(alpn="h2")
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.receive_data(d.take_job())
    for i in range(150):
        sid = 1 + 2 * i
        client.send_headers(
            sid,
            [
                (":method", "POST"),
                (":path", "/x"),
                (":scheme", "https"),
                (":authority", "api.lab.test"),
            ],
        )
        client.reset_stream(sid)
    d.job(client.data_to_send())
    assert d.ended is not None
    assert "rapid reset" in d.ledger.all("protocol.error")[0]["message"]


def test_http2_continuation_flood_is_bounded() -> None:
    import struct

    d = Drive()
    d.open(alpn="h2")
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    headers = b"\x00\x00\x00\x01\x00\x00\x00\x00\x01"  # HEADERS, no END_HEADERS, empty
    flood = b"".join(
        struct.pack(">I", 16000)[1:] + b"\x09\x00\x00\x00\x00\x01" + b"\x00" * 16000
        for _ in range(200)
    )
    d.job(preface + headers + flood)
    assert d.ended is not None
    assert d.ledger.types()[-2:] == ["protocol.error", "session.end"]


def test_a_websocket_upgrade_relays_and_records_kubernetes_channels() -> None:
    from wsproto.frame_protocol import FrameProtocol, Opcode

    d = Drive("k8s")
    d.open(sni="kube.lab.test")
    d.job(
        request(
            "GET",
            "/api/v1/namespaces/default/pods/web/exec?command=sh&stdin=true&stdout=true",
            "kube.lab.test",
            [
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-version", "13"),
                ("sec-websocket-protocol", "v5.channel.k8s.io"),
                ("sec-websocket-extensions", "permessage-deflate"),
            ],
        )
    )
    ((req, _),) = parse_requests(d.take_up())
    assert b"sec-websocket-extensions" not in dict(req.headers)
    d.up(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
    )
    assert d.take_job().startswith(b"HTTP/1.1 101")
    client = FrameProtocol(client=True, extensions=[])
    server = FrameProtocol(client=False, extensions=[])
    d.job(client.send_data(b"\x00echo 4111111111111111\n", fin=True))
    d.up(server.send_data(b"\x01hello\n", fin=True))
    messages = d.ledger.all("websocket.message")
    assert [(m["direction"], m["stream"]) for m in messages] == [
        ("c2s", "stdin"),
        ("s2c", "stdout"),
    ]
    assert "4111111111111111" not in messages[0]["text"]
    assert messages[1]["text"] == "hello\n"
    assert Opcode.BINARY is not None


def test_responses_are_masked_toward_the_job_when_policy_asks() -> None:
    d = Drive(mask_responses=True)
    d.open()
    d.job(request("GET", "/customers", "api.lab.test"))
    body = json.dumps({"card": "4111 1111 1111 1111", "name": "Ada"}).encode()
    d.up(response(200, body, [("content-type", "application/json"), ("etag", '"abc"')]))
    ((resp, got),) = parse_responses(d.take_job())
    assert json.loads(got) == {"card": "[REDACTED:CARD]", "name": "Ada"}
    assert dict(resp.headers)[b"content-length"] == str(len(got)).encode()
    assert b"etag" not in dict(resp.headers)
    (rs,) = d.ledger.all("http.response")
    assert rs["masked_to_job"]["detectors"] == {"card": 1}
    # Binary passes as it is.
    d.job(request("GET", "/logo.png", "api.lab.test"))
    d.up(response(200, b"\x894111111111111111", [("content-type", "image/png")]))
    ((_, got),) = parse_responses(d.take_job())
    assert got == b"\x894111111111111111"


def test_a_response_too_large_to_mask_is_not_sent() -> None:
    d = Drive(mask_responses=True, max_result_bytes=1000)
    d.open()
    d.job(request("GET", "/big", "api.lab.test"))
    d.up(response(200, b"x" * 5000, [("content-type", "text/plain")]))
    ((resp, _),) = parse_responses(d.take_job())
    assert resp.status_code == 502 and d.ended is not None
