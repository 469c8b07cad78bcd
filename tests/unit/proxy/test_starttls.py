"""Bytes already read handed to a protocol as if read from its socket
(appliance.proxy._starttls.feed): through a buffered protocol's small buffers, in order, or
to a streaming protocol at once. start_tls itself, with asyncio and uvloop, is in
test_shell.py (a client whose TLS request and ClientHello come in one write)."""

from __future__ import annotations

import asyncio

from appliance.proxy._starttls import feed


class Buffered(asyncio.BufferedProtocol):
    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.got = b""
        self.calls = 0

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        self.got += bytes(self.buf[:nbytes])
        self.calls += 1


class Streaming(asyncio.Protocol):
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.got.append(data)


def test_a_buffered_protocol_gets_the_bytes_in_order_in_as_many_pieces_as_it_takes() -> None:
    protocol = Buffered(7)
    data = bytes(range(50))
    feed(protocol, data)
    assert protocol.got == data and protocol.calls == 8


def test_a_streaming_protocol_gets_them_at_once() -> None:
    protocol = Streaming()
    feed(protocol, b"client hello")
    assert protocol.got == [b"client hello"]
