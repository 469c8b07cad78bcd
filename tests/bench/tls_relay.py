"""A bare TLS-terminating relay: the floor for any Python HTTPS proxy (bench only).

It accepts TLS with a certificate, opens TLS to the upstream (verified), and copies bytes
both ways with asyncio's streams on uvloop: no HTTP parsing, no policy, no recording.
``python -m tests.bench.tls_relay CERT KEY LISTEN_HOST LISTEN_PORT UPSTREAM_HOST
UPSTREAM_PORT CAFILE SERVER_NAME``.
"""

from __future__ import annotations

import asyncio
import ssl
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def main(argv: list[str]) -> None:
    cert, key, host, port, up_host, up_port, cafile, name = argv
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    server_ctx.set_alpn_protocols(["http/1.1"])
    client_ctx = ssl.create_default_context(cafile=cafile)
    client_ctx.set_alpn_protocols(["http/1.1"])

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(
                up_host, int(up_port), ssl=client_ctx, server_hostname=name
            )
        except OSError:
            w.close()
            return
        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    server = await asyncio.start_server(handle, host, int(port), ssl=server_ctx)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(sys.argv[1:]))
