"""HTTP/2 toward the job (:mod:`appliance.protocols.http.h2conn`): a real h2 client's
conversation, flow control bounding what waits, and fuzzing after the preface."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.protocols.http import Body, End, H2Server, PeerError, RequestHead, ResponseHead

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _client() -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    return c


def test_a_request_with_a_body_and_its_response() -> None:
    server, client = H2Server(), _client()
    client.receive_data(server.data_to_send())
    client.send_headers(
        1,
        [
            (":method", "POST"),
            (":path", "/p?q=1"),
            (":scheme", "https"),
            (":authority", "a.test"),
            ("content-length", "2"),
        ],
    )
    client.send_data(1, b"hi", end_stream=True)
    events = server.receive_data(client.data_to_send())
    head = next(e for e in events if isinstance(e, RequestHead))
    assert (head.method, head.target, head.authority, head.content_length) == (
        "POST",
        "/p?q=1",
        "a.test",
        2,
    )
    body = [e for e in events if isinstance(e, Body)]
    assert b"".join(b.data for b in body) == b"hi" and any(isinstance(e, End) for e in events)
    server.ack(1, sum(b.flow for b in body))
    out = (
        server.respond(ResponseHead(1, 200, (("content-type", "text/plain"),)))
        + server.body(1, b"ok")
        + server.end(1)
    )
    got = client.receive_data(out)
    assert any(isinstance(e, h2.events.StreamEnded) for e in got)


def test_a_closed_window_holds_the_response_and_reports_it() -> None:
    server, client = H2Server(), _client()
    client.receive_data(server.data_to_send())
    client.send_headers(
        1,
        [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "a")],
        end_stream=True,
    )
    server.receive_data(client.data_to_send())
    server.respond(ResponseHead(1, 200, ()))
    server.body(1, b"x" * 200_000)
    assert server.buffered == 200_000 - 65535  # the client's initial window went out
    client.receive_data(server.data_to_send())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=800), st.booleans())
def test_fuzz_after_the_preface(data: bytes, bytewise: bool) -> None:
    server = H2Server()
    pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    try:
        server.receive_data(PREFACE)
        for piece in pieces:
            server.receive_data(piece)
    except PeerError:
        pass
    assert server.buffered == 0
