"""The fleet's copy of every runner's ledger, in one S3 bucket (issue 15).

Where it sits: on a runner, the daemon ships its ledger directory checkpoint by checkpoint
(:class:`Shipper`, scheduled by :class:`ShipRunner`); on the security team's and auditors'
machines, ``appliance ledger ... --source s3://...`` lists the logs, pulls them into a local
cache and verifies, queries or exports them as local ledgers.

- :mod:`.layout`: the key names and the bundle format (the one home of the layout);
- :mod:`.ship`: :class:`Shipper`, one round = everything signed since the last one;
- :mod:`.runner`: :class:`ShipRunner`, the daemon's loop: rounds, backoff, status, backlog;
- :mod:`.pull`: :func:`list_logs`, :func:`take_inventory`, :func:`pull_log` (incremental),
  :func:`cached_logs` (what a cache holds, without the bucket);
- :mod:`.verify`: :func:`verify_source`, findings from object versions plus the ledger's own
  verification of the pulled copy;
- :mod:`.state`: :class:`StateDir`, the verifier's memory of the largest checkpoint per log.
"""

from appliance.ledger.fleet.layout import log_name, log_prefix, origin_of
from appliance.ledger.fleet.pull import (
    Inventory,
    LogRef,
    PullResult,
    cached_logs,
    list_logs,
    pull_log,
    pull_logs,
    take_inventory,
)
from appliance.ledger.fleet.ship import Round, ShipConflict, Shipper
from appliance.ledger.fleet.state import StateDir
from appliance.ledger.fleet.verify import LogVerdict, verify_source

__all__ = [
    "Inventory",
    "LogRef",
    "LogVerdict",
    "PullResult",
    "Round",
    "ShipConflict",
    "Shipper",
    "StateDir",
    "cached_logs",
    "list_logs",
    "log_name",
    "log_prefix",
    "origin_of",
    "pull_log",
    "pull_logs",
    "take_inventory",
    "verify_source",
]
