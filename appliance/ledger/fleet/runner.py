"""The daemon's shipping loop: rounds of :class:`~.ship.Shipper`, retries, status, backlog.

Where it sits: :mod:`appliance.daemon` starts :meth:`ShipRunner.run` in its task group when
``ledger.ship`` is configured, wraps the sessions' ledger in :class:`BacklogGuard` when the
config says ``on_backlog: refuse``, and calls :meth:`ShipRunner.final` after the ledger's
last checkpoint on stop, so that everything recorded is in the bucket before the process
exits (the systemd unit gives it the time, and orders the stop before the network's).

- A round runs in a worker thread (boto3 blocks) every ``interval`` seconds; the writer's
  new checkpoints are picked up from the ledger directory, which is the local spool: nothing
  is copied or dropped while the bucket is unreachable.
- A failed round is retried after a backoff that doubles from 1 s up to ``max_backoff``. The
  first failure after a success is recorded (``ledger.ship_stalled``, with the error and the
  backlog), and so is the first success after (``ledger.ship_resumed``, with how long it was
  stalled); a :class:`~.ship.ShipConflict` once (``ledger.ship_conflict``); gaps found in
  the bucket's copy once (``ledger.ship_gap``).
- The backlog is the number of entries signed locally but not yet in the bucket. Above
  ``backlog_limit`` with ``on_backlog: refuse``, new protected sessions are refused (fail
  closed) until it drains; both changes are recorded (``ledger.ship_backlog``).
- The status (``ship.json`` in the ledger directory, replaced atomically after each change)
  is what ``appliance status`` shows: state, sizes, backlog, lag, last error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.bucket import BucketError, BucketUnavailable
from appliance.config import ShipConfig
from appliance.ledger.api import Blob, Ledger
from appliance.ledger.entries import (
    SESSION_START,
    SHIP_BACKLOG,
    SHIP_CONFLICT,
    SHIP_GAP,
    SHIP_RESUMED,
    SHIP_STALLED,
)
from appliance.ledger.errors import LedgerError, LedgerUnavailable
from appliance.ledger.fleet.ship import ShipConflict, Shipper

log = logging.getLogger("appliance.ledger.ship")

STATUS_FILE = "ship.json"
RecordFn = Callable[[str, dict[str, Any]], None]


@dataclass
class ShipStatus:
    """What ``ship.json`` holds (times are UNIX seconds)."""

    to: str
    state: str = "starting"  # starting | ok | retrying | conflict | stopped
    local_checkpoints: int = 0
    local_size: int = 0
    shipped_checkpoints: int = 0
    shipped_size: int = 0
    backlog: int = 0
    backlog_limit: int = 0
    on_backlog: str = "serve"
    refusing: bool = False
    caught_up_at: float | None = None  # the last time the bucket held everything signed
    last_error: str | None = None
    updated: float = 0.0

    def lag(self, now: float) -> float | None:
        """Seconds the bucket has been behind (None if it is not)."""
        if self.backlog == 0:
            return None
        return now - self.caught_up_at if self.caught_up_at is not None else None


def read_status(directory: Path) -> ShipStatus | None:
    """The status the daemon wrote for the ledger in ``directory``, or None. Raises
    LedgerError if the file is unreadable."""
    path = Path(directory) / STATUS_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return ShipStatus(**raw)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise LedgerError(f"cannot read {path}: {exc}") from None


class ShipRunner:
    """Runs a :class:`Shipper` for the daemon; see the module docstring."""

    def __init__(
        self,
        shipper: Shipper,
        config: ShipConfig,
        *,
        record: RecordFn,
        clock: Callable[[], float] = time.time,
        interval: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.shipper = shipper
        self.config = config
        self.record = record
        self.clock = clock
        self.interval = interval
        self.max_backoff = max_backoff
        self.status = ShipStatus(
            to=str(config.bucket.url),
            backlog_limit=config.backlog_limit,
            on_backlog=config.on_backlog,
        )
        self._stalled_since: float | None = None
        self._backoff = 0.0
        self._conflict_recorded = False
        self._gaps_recorded = False
        self._written: dict[str, Any] | None = None
        self._pending: list[tuple[str, dict[str, Any]]] = []
        # One round at a time: a round's worker thread outlives the cancelled task that
        # awaited it, and the final ship must not run beside it (a put made twice is a
        # second version on radosgw).
        self._one = threading.Lock()

    @property
    def refusing(self) -> bool:
        """True while new protected sessions must be refused (backlog over the limit with
        ``on_backlog: refuse``)."""
        return self.status.refusing

    # -- the loop ------------------------------------------------------------------------------

    def starting(self) -> None:
        """Write the status before the first round (``starting``), from the daemon before it
        says ready: ``appliance status`` then shows this run's shipping at once, where it
        found no file, or an earlier run's, until the first round ended (a round may wait on
        the bucket for seconds)."""
        self._write_status(self.clock())

    async def run(self) -> None:
        """Ship until cancelled."""
        while True:
            delay = await asyncio.to_thread(self.round)
            self.flush_records()
            await asyncio.sleep(delay)

    def flush_records(self) -> None:
        """Hand the records the last rounds made to ``record`` (in the caller's thread: the
        daemon's event loop, where its ledger is used)."""
        pending, self._pending = self._pending, []
        for type, data in pending:
            try:
                self.record(type, data)
            except LedgerError as exc:
                log.error("cannot record %s: %s", type, exc)

    def round(self) -> float:
        """One round with its bookkeeping (any thread); returns the seconds until the next
        one. What it records waits for :meth:`flush_records`."""
        with self._one:
            return self._round()

    def _round(self) -> float:
        now = self.clock()
        try:
            self.shipper.ship()
        except ShipConflict as exc:
            self._failed("conflict", exc, now)
            if not self._conflict_recorded:
                self._conflict_recorded = True
                self._record(SHIP_CONFLICT, {"to": self.status.to, "error": str(exc)})
            self.shipper.progress = None  # look at the bucket again next time
            delay = self.max_backoff
        except (BucketError, LedgerError) as exc:
            self._failed("retrying", exc, now)
            self._backoff = min(self.max_backoff, self._backoff * 2 or 1.0)
            if not isinstance(exc, BucketUnavailable):
                self.shipper.progress = None  # denied, misconfigured...: start afresh
            delay = self._backoff
        else:
            self._succeeded(now)
            delay = self.interval
        self._update_backlog(now)
        self._write_status(now)
        return delay

    def final(self, timeout: float) -> bool:
        """Ship everything (the ledger is closed: nothing more will be signed), retrying
        until ``timeout`` seconds have passed. True if the bucket holds it all. Nothing is
        recorded any more (the log and the journal say what happened)."""
        deadline = time.monotonic() + timeout
        if not self._one.acquire(timeout=timeout):
            return False
        try:
            return self._final(deadline)
        finally:
            self._one.release()

    def _final(self, deadline: float) -> bool:
        pause = 0.2
        while True:
            now = self.clock()
            try:
                self.shipper.ship()
                if self.shipper.backlog() == 0:
                    self._succeeded(now)
                    self.status.state = "stopped"
                    self._update_backlog(now)
                    self._write_status(now)
                    self._pending.clear()
                    return True
            except ShipConflict as exc:
                self._failed("conflict", exc, now)
                self._update_backlog(now)
                self._write_status(now)
                self._pending.clear()
                return False
            except (BucketError, LedgerError) as exc:
                self._failed("retrying", exc, now)
                self._update_backlog(now)
                self._write_status(now)
                log.warning("final ship: %s", exc)
            if time.monotonic() + pause > deadline:
                self._pending.clear()
                return False
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    # -- bookkeeping ---------------------------------------------------------------------------

    def _record(self, type: str, data: dict[str, Any]) -> None:
        self._pending.append((type, data))

    def _failed(self, state: str, exc: Exception, now: float) -> None:
        first = self.status.state not in ("retrying", "conflict")
        self.status.state = state
        self.status.last_error = str(exc)
        if first:
            self._stalled_since = now
            log.error("shipping to %s stalled: %s", self.status.to, exc)
            if state == "retrying":
                self._record(
                    SHIP_STALLED,
                    {"to": self.status.to, "error": str(exc), "backlog": self.shipper.backlog()},
                )

    def _succeeded(self, now: float) -> None:
        p = self.shipper.progress
        if p is not None and p.gaps and not self._gaps_recorded:
            self._gaps_recorded = True
            self._record(SHIP_GAP, {"to": self.status.to, "gaps": list(p.gaps)})
        if self._stalled_since is not None:
            stalled = now - self._stalled_since
            log.info("shipping to %s resumed after %.1f s", self.status.to, stalled)
            self._record(
                SHIP_RESUMED,
                {
                    "to": self.status.to,
                    "stalled_ms": round(stalled * 1000),
                    "shipped_size": p.signed_size if p else 0,
                },
            )
            self._stalled_since = None
        self.status.state = "ok"
        self.status.last_error = None
        self._backoff = 0.0

    def _update_backlog(self, now: float) -> None:
        s, p = self.status, self.shipper.progress
        s.local_checkpoints = len(self.shipper.local.notes)
        s.local_size = self.shipper.local_size
        if p is not None:
            s.shipped_checkpoints, s.shipped_size = p.checkpoints, p.signed_size
        s.backlog = self.shipper.backlog()
        if s.backlog == 0 or s.caught_up_at is None:
            s.caught_up_at = now
        refuse = self.config.on_backlog == "refuse" and s.backlog > self.config.backlog_limit
        if refuse != s.refusing:
            s.refusing = refuse
            state = "refusing" if refuse else "serving"
            (log.error if refuse else log.warning)(
                "ledger backlog %d entries (limit %d): %s new sessions",
                s.backlog,
                self.config.backlog_limit,
                state,
            )
            self._record(
                SHIP_BACKLOG,
                {"state": state, "backlog": s.backlog, "limit": self.config.backlog_limit},
            )

    def _write_status(self, now: float) -> None:
        body = asdict(self.status)
        body.pop("updated")
        if body == self._written:
            return
        self._written = body
        self.status.updated = now
        path = self.shipper.directory / STATUS_FILE
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(asdict(self.status), sort_keys=True) + "\n")
            os.replace(tmp, path)
        except OSError as exc:  # status only: shipping goes on
            log.warning("cannot write %s: %s", path, exc)


class BacklogGuard:
    """The sessions' ledger while ``on_backlog: refuse`` holds: a session's first record
    (``session.start``) is refused with :class:`LedgerUnavailable` while the runner says so,
    which ends the session before it reaches its target with the protocol's "cannot record"
    error; every other record passes (in-flight sessions finish and are recorded)."""

    def __init__(self, ledger: Ledger, runner: ShipRunner) -> None:
        self._ledger = ledger
        self._runner = runner

    def append(self, type: str, **kwargs: Any) -> None:
        if type == SESSION_START and self._runner.refusing:
            s = self._runner.status
            raise LedgerUnavailable(
                f"the ledger's backlog of {s.backlog} entries not yet in {s.to} is over the "
                f"limit of {s.backlog_limit} (ledger.ship.on_backlog: refuse)"
            )
        self._ledger.append(type, **kwargs)

    def open_blob(self, transform: Any = None) -> Blob:
        return self._ledger.open_blob(transform)

    def flush(self, timeout: float | None = None) -> None:
        self._ledger.flush(timeout)

    async def sync(self) -> None:
        await self._ledger.sync()

    def hurry(self) -> None:
        self._ledger.hurry()

    def close(self) -> None:
        self._ledger.close()

    @property
    def failed(self) -> BaseException | None:
        return self._ledger.failed


def status_summary(status: ShipStatus, now: float) -> Mapping[str, Any]:
    """The status as ``appliance status --format json`` shows it."""
    return {**asdict(status), "lag_s": status.lag(now)}
