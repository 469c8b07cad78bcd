"""Host-name targets become IP addresses here, for the rules and for :func:`target_for`.

Netfilter matches addresses, not names: a target given as ``db.example:5432`` is protected
at the addresses the name resolves to when the rules are rendered, and the reconcile loop
re-resolves it (:meth:`HostResolver.refresh`) so that a moved database stays protected.

Fail closed: a lookup that fails keeps the addresses of the last good answer, so a DNS
outage never unprotects an address; an answer that changes replaces them.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence

Lookup = Callable[[str], Sequence[str]]
"""A function from a host name to its IP addresses (strings); empty when it has none."""


def system_lookup(host: str) -> tuple[str, ...]:
    """The host's IPv4 and IPv6 addresses from the system resolver, sorted; ``()`` on failure."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return ()
    found = {str(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])) for info in infos}
    return tuple(sorted(found, key=lambda a: (":" in a, a)))


class HostResolver:
    """A caching resolver: ``resolver(host)`` answers from the last good lookup.

    ``lookup`` is passed in (tests give a dict's ``get``); the default asks the system.
    """

    def __init__(self, lookup: Lookup = system_lookup) -> None:
        self._lookup = lookup
        self._known: dict[str, tuple[str, ...]] = {}

    def __call__(self, host: str) -> tuple[str, ...]:
        if host not in self._known:
            self._known[host] = tuple(self._lookup(host))
        return self._known[host]

    def refresh(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        """Look every known name up again. Returns ``{host: (old, new)}`` for names whose
        addresses changed; a name that now fails to resolve keeps its old addresses."""
        changed: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        for host, old in list(self._known.items()):
            new = tuple(self._lookup(host))
            if new and new != old:
                self._known[host] = new
                changed[host] = (old, new)
        return changed
