"""From an accepted connection to a :class:`~appliance.proxy.server.Flow`: target, upstream
address and identity.

Where this sits: the server calls :meth:`FlowResolverImpl.resolve` once per connection.

- Explicit listener: the target is the listener's; upstream is the target's first address
  (a host name is resolved now, so a DNS change is followed by the next session).
- Transparent listener: the original destination (SO_ORIGINAL_DST, read by
  ``original_dst``) names the target through ``target_for``; an address that is not
  protected is :class:`~appliance.proxy.server.Refused`. Upstream is that original
  destination itself (IPv4-mapped IPv6 folded to IPv4).
- Identity: ``await identify(peer, local)`` (eBPF attribution and /proc, see
  :mod:`appliance.capture`; the job's CI token verified, see :mod:`appliance.identity`,
  which may wait on the network: hence a coroutine), or ``unattributed`` with the reason.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from appliance.capture import normalise_ip, unattributed
from appliance.config import Config, Target
from appliance.proxy.server import Flow, Listener, Refused

Identify = Callable[[tuple[str, int], tuple[str, int]], Awaitable[Mapping[str, Any]]]


class FlowResolverImpl:
    """Resolves flows for explicit and transparent listeners; see the module docstring."""

    def __init__(
        self,
        config: Config,
        *,
        identify: Identify | None = None,
        original_dst: Callable[[socket.socket], tuple[str, int]] | None = None,
        target_for: Callable[[Config, str, int], Target | None] | None = None,
    ) -> None:
        self.config = config
        self.identify = identify
        self.original_dst = original_dst
        self.target_for = target_for

    async def resolve(self, conn: socket.socket, listener: Listener) -> Flow:
        peer = conn.getpeername()
        local = conn.getsockname()
        peer2 = (normalise_ip(peer[0]), int(peer[1]))
        if listener.transparent:
            if self.original_dst is None or self.target_for is None:
                raise Refused("transparent listener without capture")
            try:
                ip, port = self.original_dst(conn)
            except OSError as exc:
                raise Refused(f"no original destination: {exc}") from None
            ip = normalise_ip(ip)
            target = self.target_for(self.config, ip, port)
            if target is None:
                raise Refused(
                    "destination is not a protected target", {"destination": f"{ip}:{port}"}
                )
            upstream = (ip, port)
        else:
            assert listener.target is not None
            target = self.config.targets[listener.target]
            upstream = await upstream_address(target)
        identity: Mapping[str, Any]
        if self.identify is not None:
            identity = await self.identify(peer2, (normalise_ip(local[0]), int(local[1])))
        else:
            identity = unattributed("no attribution configured")
        return Flow(target, upstream, identity)


async def upstream_address(target: Target) -> tuple[str, int]:
    """Where to connect for an explicit listener: the first IP address of the target, or
    its first host name resolved now. Raises Refused if the target has only networks."""
    for address in target.addresses:
        if address.kind == "ip":
            return address.value, address.port
    for address in target.addresses:
        if address.kind == "host":
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(address.value, address.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise Refused(f"cannot resolve {address.value}: {exc}") from None
            return str(infos[0][4][0]), address.port
    raise Refused(
        f"target {target.name!r} has only network addresses: an explicit listener needs an IP or host name"
    )
