"""One socket of a proxied connection, as an asyncio protocol: it hands bytes, ends and
flow-control signals to its connection (:class:`appliance.proxy.shell.Connection`)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from appliance.proxy.commands import Side

HIGH_WATER = 1 << 20  # bytes buffered for a socket before the other side stops being read
# The most bytes of one side handed to its core in one turn of the event loop (issue 19):
# a bigger read is handed over in pieces, one per turn, and a read of this size or more
# ends the side's turn (see shell.Connection.on_data).
TURN = 16 * 1024
OTHER: dict[Side, Side] = {"job": "upstream", "upstream": "job"}


class Owner(Protocol):
    def on_data(self, side: Side, data: bytes) -> None: ...

    def on_eof(self, side: Side, lost: str | None) -> None: ...

    def pause(self, side: Side, why: str, paused: bool) -> None: ...


class Endpoint(asyncio.Protocol):
    """One socket of a connection; passes bytes and flow-control signals on. A side whose
    write buffer is over :data:`HIGH_WATER` stops the reading of the other side."""

    def __init__(self, conn: Owner, side: Side) -> None:
        self.conn = conn
        self.side = side
        self.transport: asyncio.Transport | None = None
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        assert self.transport is not None
        self.transport.set_write_buffer_limits(high=HIGH_WATER)
        # The core has started already (Connection.started runs before the socket is
        # read: its first commands may pause reading or ask for TLS from the first byte).

    def data_received(self, data: bytes) -> None:
        self.conn.on_data(self.side, data)

    def eof_received(self) -> bool:
        self.conn.on_eof(self.side, None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.on_eof(self.side, str(exc) if exc is not None else None)

    def pause_writing(self) -> None:
        self.conn.pause(OTHER[self.side], "backpressure", True)

    def resume_writing(self) -> None:
        self.conn.pause(OTHER[self.side], "backpressure", False)
