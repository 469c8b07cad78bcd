"""HTTP/1.1 codecs (:mod:`appliance.protocols.http.h1`): conversations whole and byte by
byte, the refusals of :mod:`._head`, and hypothesis fuzzing (no crash but PeerError, no
hang, bounded buffers)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.protocols.http import (
    Body,
    End,
    H1Client,
    H1Server,
    PeerError,
    RequestHead,
    ResponseHead,
    Switched,
    check_request_head,
    parse_kube,
)
from appliance.protocols.http._errors import LocalProtocolError
from appliance.protocols.http._events import header
from appliance.protocols.http._head import HOP_BY_HOP

CONVERSATION = (
    b"POST /a?x=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    b"PUT /b HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nok"
    b"GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
)


def _events(data: bytes, bytewise: bool) -> list[object]:
    server = H1Server()
    pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    out: list[object] = []
    for piece in pieces:
        out += server.receive_data(piece)
    return out


@pytest.mark.parametrize("bytewise", [False, True])
def test_pipelined_requests_whole_and_byte_by_byte(bytewise: bool) -> None:
    events = _events(CONVERSATION, bytewise)
    heads = [e for e in events if isinstance(e, RequestHead)]
    assert [(h.method, h.target, h.body, h.content_length) for h in heads] == [
        ("POST", "/a?x=1", True, None),
        ("PUT", "/b", True, 2),
        ("GET", "/c", False, None),
    ]
    assert b"".join(e.data for e in events if isinstance(e, Body)) == b"abcok"
    assert [e.stream for e in events if isinstance(e, End)] == [1, 2, 3]
    assert header(heads[1].headers, "expect") == "100-continue"
    assert all(
        k not in ("host", "transfer-encoding", "connection") for h in heads for k, _ in h.headers
    )


def test_responses_go_out_in_order_and_close_when_asked() -> None:
    server = H1Server()
    server.receive_data(CONVERSATION)
    with pytest.raises(LocalProtocolError):
        server.respond(ResponseHead(2, 200, ()))
    for stream in (1, 2, 3):
        out = (
            server.respond(ResponseHead(stream, 200, (("content-length", "1"),)))
            + server.body(stream, b"x")
            + server.end(stream)
        )
        assert out.startswith(b"HTTP/1.1 200")
    assert not server.keep_alive  # the third request said Connection: close


def test_client_reframes_and_reads_responses_byte_by_byte() -> None:
    client = H1Client()
    head = RequestHead(
        1, "POST", "/x", "h", (("content-length", "3"), ("x-a", "1")), "1.1", True, 3
    )
    wire = client.request(head, head.headers) + client.body(b"abc") + client.end()
    assert wire.count(b"content-length") == 1 and b"transfer-encoding" not in wire
    events: list[object] = []
    response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    for i in range(len(response)):
        events += client.receive_data(response[i : i + 1])
    statuses = [e.status for e in events if isinstance(e, ResponseHead)]
    assert statuses == [100, 200]
    assert isinstance(events[-1], End) and not client.busy


def test_a_101_hands_over_what_follows() -> None:
    client = H1Client()
    head = RequestHead(1, "GET", "/ws", "h", (), "1.1", False, upgrade="websocket")
    client.request(head, ())
    client.end()
    events = client.receive_data(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi"
    )
    assert isinstance(events[0], ResponseHead) and events[0].status == 101
    assert events[-1] == Switched(b"\x81\x02hi")


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\tX: folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
    ],
)
def test_ambiguous_heads_are_refused(head: bytes) -> None:
    with pytest.raises(PeerError) as info:
        check_request_head(head)
    assert info.value.status in (400, 501)


def test_too_many_fields_is_431() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"X%d: y\r\n" % i for i in range(101)) + b"\r\n"
    with pytest.raises(PeerError) as info:
        H1Server().receive_data(head)
    assert info.value.status == 431


def test_proxy_form_targets_are_refused() -> None:
    with pytest.raises(PeerError):
        H1Server().receive_data(b"GET http://evil.test/ HTTP/1.1\r\nHost: a\r\n\r\n")


def test_kube_reading() -> None:
    assert parse_kube("GET", "/api/v1/namespaces/ns/pods").verb == "list"
    assert (
        parse_kube("DELETE", "/apis/apps/v1/namespaces/ns/deployments").verb == "deletecollection"
    )
    k = parse_kube("POST", "/api/v1/namespaces/ns/pods/p/exec?command=ls")
    assert (k.verb, k.resource, k.name, k.subresource) == ("exec", "pods", "p", "exec")
    assert parse_kube("GET", "/api/v1/namespaces/ns").resource == "namespaces"
    assert parse_kube("GET", "/api/v1/watch/pods").verb == "watch"
    assert not parse_kube("GET", "/healthz").resource_request
    assert "transfer-encoding" in HOP_BY_HOP


# -- fuzz ---------------------------------------------------------------------------------------

_TOKENS = st.sampled_from(
    [
        b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.1\r\n", b"Host: a\r\n", b"Content-Length: 3\r\n",
        b"Transfer-Encoding: chunked\r\n", b"\r\n", b"3\r\nabc\r\n", b"0\r\n\r\n", b"abc",
        b"Connection: upgrade\r\nUpgrade: websocket\r\n", b" folded\r\n", b"\n", b"\r", b"\x00",
        b"Content-Length: 99999999999\r\n", b"ffffffff\r\n",
    ]
)  # fmt: skip


def _fuzz_server(data: bytes, bytewise: bool) -> None:
    server = H1Server(max_head=4096)
    pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    try:
        for piece in pieces:
            for ev in server.receive_data(piece):
                if isinstance(ev, RequestHead):
                    assert ev.target.startswith("/")
            assert len(server._buffer) <= 4096 + len(piece) + 4
    except PeerError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(_TOKENS, max_size=20).map(b"".join), st.booleans())
def test_fuzz_the_server_side_with_http_pieces(data: bytes, bytewise: bool) -> None:
    _fuzz_server(data, bytewise)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_fuzz_the_server_side_with_bytes(data: bytes, bytewise: bool) -> None:
    _fuzz_server(b"GET / HTTP/1.1\r\nHost: a\r\n" + data, bytewise)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_fuzz_the_client_side(data: bytes, bytewise: bool) -> None:
    client = H1Client(max_head=4096)
    client.request(RequestHead(1, "GET", "/", "h", (), "1.1", False), ())
    client.end()
    pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    try:
        for piece in [b"HTTP/1.1 200 OK\r\n", *pieces, b""]:
            client.receive_data(piece)
            if not client.busy:
                break
    except PeerError:
        pass
