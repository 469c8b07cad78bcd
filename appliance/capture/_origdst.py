"""Where a redirected connection was going, which target that is, and the upstream socket.

Where this sits: the daemon accepts on the capture listener, asks :func:`original_dst` for
the address the job connected to (netfilter's REDIRECT rewrote it to the listener; the
conntrack entry keeps the original), maps it with :func:`target_for`, and connects upstream
from a socket made by :func:`upstream_socket`: it carries the appliance's mark, which the
capture rules let through from the appliance's own cgroup (and put in the appliance's own
conntrack zone, see :mod:`._rules`). Every upstream socket of the proxy (sessions and
cancel requests) comes from here.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Callable, Sequence

from appliance.capture._errors import CaptureError, OriginalDstUnavailable
from appliance.config import Config, Target

SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv4.h>
IP6T_SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv6/ip6_tables.h>
SO_MARK = getattr(socket, "SO_MARK", 36)
SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)  # = IPPROTO_IPV6; typeshed lacks the alias


def normalise_ip(ip: str) -> str:
    """An IP address in canonical form; an IPv4-mapped IPv6 address as the IPv4 address it
    carries (on the wire it *is* IPv4). Raises ValueError if ``ip`` is not an address."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """The destination the peer of an accepted, redirected socket connected to.

    IPv4 flows (also those accepted on a dual-stack ``::`` listener, whose local address is
    IPv4-mapped) are asked with ``SO_ORIGINAL_DST``, IPv6 flows with
    ``IP6T_SO_ORIGINAL_DST``. Returns ``(ip, port)``, the IP in canonical form.
    Raises OriginalDstUnavailable when the kernel has no NAT record of the flow.
    """
    local = sock.getsockname()[0]
    v4 = sock.family == socket.AF_INET or ipaddress.ip_address(normalise_ip(local)).version == 4
    try:
        if v4:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, packed = struct.unpack_from("!2xH4s", raw)
            return socket.inet_ntop(socket.AF_INET, packed), port
        raw = sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28)
        port, packed = struct.unpack_from("!2xH4x16s", raw)
        return normalise_ip(socket.inet_ntop(socket.AF_INET6, packed)), port
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOPROTOOPT, errno.EINVAL):
            raise OriginalDstUnavailable(
                f"no original destination for the connection to {local}: not redirected by "
                f"netfilter ({exc.strerror})"
            ) from None
        raise CaptureError(f"SO_ORIGINAL_DST failed: {exc}") from None


def target_for(
    config: Config,
    ip: str,
    port: int,
    *,
    resolver: Callable[[str], Sequence[str]] | None = None,
) -> Target | None:
    """The configured target protecting ``ip:port``, or None (the flow must be refused).

    ``ip`` may be IPv4-mapped IPv6. Host-name addresses are resolved with ``resolver``
    (pass the reconcile loop's :class:`HostResolver`, so that the listener and the rules
    agree); without one, host names are not matched (no blocking lookup on the accept path).
    """
    try:
        addr = ipaddress.ip_address(normalise_ip(ip))
    except ValueError:
        return None
    for target in config.targets.values():
        for address in target.addresses:
            if address.port != port:
                continue
            if address.kind == "host":
                ips = resolver(address.value) if resolver is not None else ()
                if any(normalise_ip(x) == str(addr) for x in ips):
                    return target
                continue
            network = address.network
            assert network is not None
            if address.kind == "ip":
                if str(addr) == normalise_ip(address.value):
                    return target
            elif addr.version == network.version and addr in network:
                return target
    return None


def mark_socket(sock: socket.socket, mark: int) -> None:
    """Set the appliance's mark on ``sock`` before it connects upstream.

    Raises CaptureError if the kernel refuses (SO_MARK needs CAP_NET_ADMIN or CAP_NET_RAW).
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    except PermissionError:
        raise CaptureError(
            "cannot mark the upstream socket (SO_MARK needs CAP_NET_ADMIN); without the "
            "mark the capture rules would refuse the appliance's own connection"
        ) from None


def upstream_socket(family: int, mark: int) -> socket.socket:
    """A new non-blocking TCP socket for a connection to a target: marked with ``mark``
    (0: not marked, the appliance runs without capture), Nagle off (the proxy writes whole
    messages).

    Raises OSError if no socket can be made, CaptureError if the mark cannot be set (the
    socket is closed then).
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if mark:
            mark_socket(sock, mark)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock
