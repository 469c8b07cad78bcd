"""TLS started on a connected socket, with the bytes already read from it that belong to
the TLS stream (:class:`~appliance.proxy.commands.StartTLS` ``early``).

Where this sits: the shell (:mod:`appliance.proxy.shell`) starts TLS on either side with
:func:`start_tls`. A MySQL client sends its ClientHello right behind its SSL request,
without waiting for an answer, so both may arrive in one read: the session core gives the
ClientHello's bytes back as ``early``, and they must reach TLS before anything read after
them.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

__all__ = ["feed", "start_tls"]


async def start_tls(
    transport: asyncio.Transport,
    protocol: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    *,
    server_side: bool,
    server_hostname: str | None,
    early: bytes = b"",
) -> asyncio.Transport | None:
    """``loop.start_tls`` on ``transport`` (whose protocol is ``protocol``), ``early`` handed
    to TLS first. Returns the TLS transport (None if the connection closed during the
    handshake); raises what ``start_tls`` raises."""
    starting = asyncio.get_running_loop().start_tls(
        transport, protocol, context, server_side=server_side, server_hostname=server_hostname
    )
    if not early:
        return await starting
    handshake = asyncio.ensure_future(starting)
    try:
        await _hand_over(transport, protocol, handshake, early)
        return await handshake
    finally:
        handshake.cancel()  # if this task was cancelled meanwhile


async def _hand_over(
    transport: asyncio.BaseTransport,
    plain: asyncio.BaseProtocol,
    handshake: asyncio.Future[Any],
    early: bytes,
) -> None:
    """Give ``early`` to the TLS protocol ``start_tls`` puts on ``transport``, ahead of
    anything read from the socket after them.

    ``start_tls`` (asyncio's and uvloop's alike) swaps the transport's protocol for its TLS
    protocol in its first step, and queues that protocol's ``connection_made`` and the
    transport's ``resume_reading`` with ``call_soon``; a callback queued right after that
    step runs after both and before the socket is read again (the loop polls only between
    batches of callbacks).
    """
    while transport.get_protocol() is plain:
        if handshake.done():
            return  # it failed before it began: the caller hears why
        await asyncio.sleep(0)
    asyncio.get_running_loop().call_soon(feed, transport.get_protocol(), early)


def feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """``data`` delivered to ``protocol`` as if read from its socket: through the
    :class:`asyncio.BufferedProtocol` interface (``get_buffer``/``buffer_updated``, as the TLS
    protocols of asyncio and uvloop are), in as many pieces as its buffers take, or
    ``data_received``."""
    get_buffer = getattr(protocol, "get_buffer", None)
    if get_buffer is None:  # a streaming protocol
        protocol.data_received(data)  # type: ignore[attr-defined]
        return
    view = memoryview(data)
    while view:
        buf = get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        protocol.buffer_updated(n)  # type: ignore[attr-defined]
        view = view[n:]
