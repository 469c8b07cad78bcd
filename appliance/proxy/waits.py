"""What a session waits for outside itself, for the shell and for a protocol's own runner
(SSH's asyncssh glue) alike: a marked upstream connection, an approval, the ledger's sync.

Where this sits: :class:`~appliance.proxy.shell.Connection` carries out ``OpenUpstream``,
``SendOnce``, ``AskApproval`` and ``AwaitDurable`` with these;
:class:`~appliance.proxy.ssh.runner.SshRunner` connects its upstream SSH client, asks its
approvals and waits for its write-ahead with the same ones, so that every upstream socket
carries the appliance's mark, every approval goes through one broker and every sync is the
ledger's group commit.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from appliance.approvals.broker import Outcome
from appliance.capture import upstream_socket
from appliance.errors import ApplianceError
from appliance.proxy import commands as c

if TYPE_CHECKING:
    from appliance.proxy.shell import ShellServices


class ApprovalBroker(Protocol):
    """What a session asks approvals of: the :class:`~appliance.approvals.Broker` of the
    daemon's process, or a proxy worker's link to it (:mod:`appliance.proxy.workers`)."""

    @property
    def new_request(self) -> Callable[..., Any]: ...

    async def request(self, req: Any) -> Outcome: ...


class LedgerBacklog(Protocol):
    """The ledger channel's queue as the shell sees it: a
    :class:`~appliance.ledger.sender.LedgerSender` (its module docstring has the marks)."""

    @property
    def added(self) -> int: ...

    def holds_back(self, before: int) -> bool: ...

    def drained(self) -> Awaitable[None]: ...


def why(exc: OSError) -> str:
    """The system's words for a socket error ("Connection refused"), whichever loop raised it."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


class Unreachable(Exception):
    """The upstream could not be reached: ``why`` in the system's words."""

    def __init__(self, why: str, *, timed_out: bool = False) -> None:
        super().__init__(why)
        self.why = why
        self.timed_out = timed_out


async def connect_marked(
    services: ShellServices, address: tuple[str, int], timeout: float
) -> socket.socket:
    """A marked socket connected to ``address`` (every protocol's upstream, the SSH glue's
    included); raises :class:`Unreachable` saying why."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    make = services.upstream_socket or upstream_socket
    try:
        sock = make(family, services.mark)
    except OSError as exc:
        raise Unreachable(why(exc)) from None
    except ApplianceError as exc:  # the mark cannot be set
        raise Unreachable(str(exc)) from None
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, address), timeout)
    except TimeoutError:
        sock.close()
        raise Unreachable("timed out", timed_out=True) from None
    except OSError as exc:
        sock.close()
        raise Unreachable(why(exc)) from None
    except BaseException:
        sock.close()
        raise
    return sock


async def ask_approval(broker: ApprovalBroker | None, command: c.AskApproval) -> c.ApprovalAnswered:
    """Carry out an ``AskApproval``: the request made, its outcome awaited (a signed
    decision or the timeout); the answer for the core (every protocol's)."""
    if broker is None:
        return c.ApprovalAnswered(command.key, error="approvals are not configured")
    try:
        request = broker.new_request(**command.fields)
    except ApplianceError as exc:
        return c.ApprovalAnswered(command.key, error=str(exc))
    try:
        outcome = await broker.request(request)
    except ApplianceError as exc:  # a worker's link to the broker is gone
        return c.ApprovalAnswered(command.key, error=str(exc))
    return c.ApprovalAnswered(command.key, outcome, request.id)


async def await_durable(
    sync: Callable[[], Awaitable[None]] | None, command: c.AwaitDurable
) -> c.Durable:
    """Carry out an ``AwaitDurable``: every entry appended so far fsynced (``sync``, the
    ledger's), or why not."""
    if sync is None:
        return c.Durable(command.key, False, "the ledger cannot sync")
    try:
        await sync()
    except ApplianceError as exc:
        return c.Durable(command.key, False, str(exc))
    return c.Durable(command.key, True)


__all__ = [
    "ApprovalBroker",
    "LedgerBacklog",
    "Unreachable",
    "ask_approval",
    "await_durable",
    "connect_marked",
    "why",
]
