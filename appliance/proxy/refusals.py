"""Connections that end before their session starts, recorded without letting a flood flood
the ledger (sans-IO).

Where this sits: a session core that ends before its ``session.start`` (garbage bytes, an
oversized or invalid startup packet, no user, a slowloris that times out, TLS that fails,
a peer that connects and goes) and the proxy server refusing a flow to a destination that
is not protected both call :meth:`RefusalLog.refused`. Per source address and reason, the
first ``first`` refusals of each interval are recorded in full (``connection.refused``);
the rest are only counted, and :meth:`RefusalLog.flush` (the daemon calls it every
``interval`` and at stop) records one ``connection.refused.summary`` per source and reason
with the count. So a flood costs at most ``first`` entries per source and reason per
interval, plus one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from appliance.ledger.api import Ledger
from appliance.proxy.commands import ConnectionInfo

__all__ = ["RefusalLog", "connection_refused"]

REFUSED = "connection.refused"
SUMMARY = ".summary"  # appended to the type of the refusals it counts
MAX_KEYS = 10_000  # distinct (source, reason) pairs counted per interval; more are merged


@dataclass
class _Count:
    total: int = 0
    first_ts: float = 0.0
    last_ts: float = 0.0


class RefusalLog:
    """See the module docstring. ``clock`` is wall time (seconds)."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        clock: Callable[[], float],
        first: int = 5,
        mask: Callable[[str], str] | None = None,
    ) -> None:
        self.ledger = ledger
        self.clock = clock
        self.first = first
        self.mask = mask or (lambda text: text)
        self._counts: dict[tuple[str, str, str], _Count] = {}

    def refused(
        self,
        *,
        source: str,
        reason: str,
        data: Mapping[str, Any],
        target: str | None = None,
        identity: Mapping[str, Any] | None = None,
        kind: str = REFUSED,
    ) -> None:
        """One refused connection from ``source`` (an IP address) for ``reason`` (a short,
        stable phrase: the key of the count); ``data`` goes into the full entry (its
        ``detail``, if any, masked) of type ``kind`` (``capture.refused`` for a flow to a
        destination that is not protected)."""
        key = (kind, source, reason)
        count = self._counts.get(key)
        if count is None:
            if len(self._counts) >= MAX_KEYS:
                key = (kind, "*", "(too many distinct sources and reasons)")
                count = self._counts.setdefault(key, _Count())
            else:
                count = self._counts[key] = _Count()
        now = self.clock()
        if not count.total:
            count.first_ts = now
        count.total += 1
        count.last_ts = now
        if count.total > self.first:
            return
        entry = {"source": source, "reason": reason, **data}
        if isinstance(entry.get("detail"), str):
            entry["detail"] = self.mask(entry["detail"])
        self.ledger.append(kind, identity=identity, target=target, data=entry)

    def flush(self) -> None:
        """Record the counts beyond the first few of this interval, and start a new one."""
        counts, self._counts = self._counts, {}
        for (kind, source, reason), count in sorted(counts.items()):
            if count.total <= self.first:
                continue
            self.ledger.append(
                kind + SUMMARY,
                data={
                    "source": source,
                    "reason": reason,
                    "count": count.total,
                    "recorded": self.first,
                    "first_us": round(count.first_ts * 1_000_000),
                    "last_us": round(count.last_ts * 1_000_000),
                },
            )


def connection_refused(
    refusals: RefusalLog | None,
    ledger: Ledger,
    info: ConnectionInfo,
    *,
    protocol: str,
    target: str,
    reason: str,
    detail: str | None = None,
) -> None:
    """Record a connection of ``protocol`` that ended before its session started: through
    ``refusals`` (aggregated), or in full when there is none (a core driven alone)."""
    client, listener = info.client, info.listener
    data: dict[str, Any] = {
        "protocol": protocol,
        "client": f"[{client[0]}]:{client[1]}" if ":" in client[0] else f"{client[0]}:{client[1]}",
        "listener": f"[{listener[0]}]:{listener[1]}"
        if ":" in listener[0]
        else f"{listener[0]}:{listener[1]}",
        "connection": info.session_id,
    }
    if detail is not None:
        data["detail"] = detail
    if refusals is None:
        ledger.append(
            REFUSED,
            identity=info.identity,
            target=target,
            data={"source": client[0], "reason": reason, **data},
        )
        return
    refusals.refused(
        source=client[0], reason=reason, data=data, target=target, identity=info.identity
    )
