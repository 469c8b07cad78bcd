"""What sessions wait for outside themselves (:mod:`appliance.proxy.waits`), on loopback."""

from __future__ import annotations

import asyncio
import socket

import pytest

from appliance.proxy.commands import AskApproval
from appliance.proxy.shell import ShellServices
from appliance.proxy.waits import Unreachable, ask_approval, connect_marked


def test_a_marked_connection_and_the_systems_words_when_refused() -> None:
    async def main() -> None:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = server.getsockname()
        sock = await connect_marked(ShellServices(), address, 5)
        assert sock.getpeername() == address and not sock.getblocking()
        sock.close()
        server.close()
        with pytest.raises(Unreachable) as err:
            await connect_marked(ShellServices(), address, 5)
        assert err.value.why == "Connection refused" and not err.value.timed_out

    asyncio.run(main())


def test_a_socket_that_cannot_be_made_is_unreachable_too() -> None:
    def broken(family: int, mark: int) -> socket.socket:
        raise OSError(24, "Too many open files")

    async def main() -> None:
        with pytest.raises(Unreachable, match="Too many open files"):
            await connect_marked(ShellServices(upstream_socket=broken), ("127.0.0.1", 9), 5)

    asyncio.run(main())


def test_approvals_without_a_broker_are_answered_with_an_error() -> None:
    answer = asyncio.run(ask_approval(None, AskApproval(3, {})))
    assert answer.key == 3 and answer.error == "approvals are not configured"
