"""Cancel keys issued by the appliance, mapped to the upstream servers' real keys.

Where this sits: the job must never hold the upstream server's real cancel key (it is a
capability on the server, like a credential). When an upstream session is ready, the proxy
issues the job its own key with :meth:`CancelKeys.issue` and gives it to the job in
BackendKeyData. A CancelRequest arrives later on a *new* job connection; the proxy looks
it up with :meth:`CancelKeys.resolve` and, on a match, opens a connection to the recorded
target and sends the real key (``CancelRequest(real.pid, real.key).encode()``). A request
that matches nothing is dropped silently, as PostgreSQL does, so guessing learns nothing.

Randomness is passed in. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from appliance.protocols.postgres.messages import (
    MAX_CANCEL_KEY_LENGTH,
    BackendKeyData,
    CancelRequest,
)

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class _Entry(Generic[R]):
    issued: BackendKeyData
    real: BackendKeyData
    route: R


class CancelKeys(Generic[R]):
    """The table of issued keys for one appliance process.

    ``route`` is whatever the proxy needs to reach the upstream server again (the target
    and address); it is returned by :meth:`resolve` unchanged.
    """

    def __init__(self, *, random_bytes: Callable[[int], bytes]) -> None:
        self._random_bytes = random_bytes
        self._by_pid: dict[int, _Entry[R]] = {}

    def __len__(self) -> int:
        return len(self._by_pid)

    def issue(self, real: BackendKeyData, route: R, *, key_length: int = 4) -> BackendKeyData:
        """A fresh key for the job: a pid unused by any live entry (1..2**31-1) and
        ``key_length`` random bytes (4 for protocol 3.0; up to 256 for 3.2, where 32 is a
        good choice)."""
        if not 4 <= key_length <= MAX_CANCEL_KEY_LENGTH:
            raise ValueError(f"key_length must be 4..{MAX_CANCEL_KEY_LENGTH}")
        while True:
            pid = int.from_bytes(self._random_bytes(4), "big") & 0x7FFFFFFF
            if pid and pid not in self._by_pid:
                break
        issued = BackendKeyData(pid, self._random_bytes(key_length))
        if len(issued.key) != key_length:
            raise ValueError("random_bytes returned the wrong number of bytes")
        self._by_pid[pid] = _Entry(issued, real, route)
        return issued

    def resolve(self, request: CancelRequest) -> tuple[BackendKeyData, R] | None:
        """The real key and route for a job's CancelRequest, or None if it matches no live
        issued key (wrong pid or wrong key)."""
        entry = self._by_pid.get(request.pid)
        if entry is None or not hmac.compare_digest(entry.issued.key, request.key):
            return None
        return entry.real, entry.route

    def release(self, issued: BackendKeyData) -> None:
        """Forget a key when its session ends (later requests with it are dropped)."""
        entry = self._by_pid.get(issued.pid)
        if entry is not None and entry.issued.key == issued.key:
            del self._by_pid[issued.pid]
