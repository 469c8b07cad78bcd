"""Connection ids the appliance hands out to MySQL jobs, and ``KILL`` mapped through them.

Where this sits: every MySQL session is issued an id of its own (the handshake's
connection id, what ``CONNECTION_ID()``-unaware clients such as the mariadb CLI send in
``KILL QUERY n`` when Ctrl-C is pressed); :class:`ConnectionIds` (shared by all MySQL
sessions of the appliance) maps it to the upstream server's id of that session. A job's
``KILL [QUERY|CONNECTION] n`` (or COM_PROCESS_KILL) is answered by the appliance: the id
must be one it issued to a session of the *same job* (same identity) on the same upstream
server, and is then rewritten to the upstream id and sent on the killer's own upstream
connection; anything else gets the server's own "Unknown thread id" error, so one job can
neither kill nor probe another's statements.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_KILL = re.compile(
    r"\s*KILL\s+(?:(?:HARD|SOFT)\s+)?(?:(QUERY|CONNECTION)\s+)?(?:(ID)\s+)?(\d{1,20})\s*;?\s*",
    re.I,
)
_KILL_ANY = re.compile(r"\s*KILL\b", re.I)


@dataclass(frozen=True)
class Kill:
    """A parsed ``KILL`` statement: ``query`` (only the statement) or the connection."""

    query: bool
    id: int
    query_id: bool = False  # MariaDB's KILL QUERY ID n names a query id, not a connection


def parse_kill(text: str) -> Kill | bool | None:
    """``Kill`` for a plain ``KILL [QUERY|CONNECTION] n``; True for another form of KILL
    (``KILL USER``, an expression): refused; None when the text is not a KILL."""
    m = _KILL.fullmatch(text)
    if m is not None:
        return Kill((m.group(1) or "").upper() == "QUERY", int(m.group(3)), bool(m.group(2)))
    return True if _KILL_ANY.match(text) else None


@dataclass(frozen=True)
class KillRoute:
    """Where an issued id leads: the upstream server, its id there, whose it is."""

    upstream: tuple[str, int]
    upstream_id: int
    owner: str
    session: str


class ConnectionIds:
    """Issued connection ids (32-bit, never 0, unique among live sessions)."""

    def __init__(self, random_bytes: Callable[[int], bytes]) -> None:
        self.random_bytes = random_bytes
        self._routes: dict[int, KillRoute] = {}

    def issue(self, route: KillRoute) -> int:
        while True:
            n = int.from_bytes(self.random_bytes(4), "little") & 0x7FFFFFFF
            if n and n not in self._routes:
                self._routes[n] = route
                return n

    def update(self, issued: int, route: KillRoute) -> None:
        """Complete an issued id's route once the session knows whose it is."""
        if issued in self._routes:
            self._routes[issued] = route

    def resolve(self, issued: int) -> KillRoute | None:
        return self._routes.get(issued)

    def release(self, issued: int) -> None:
        self._routes.pop(issued, None)

    def __len__(self) -> int:
        return len(self._routes)
