"""The masking key: which key made the ``hash`` style's tokens, said without saying the key.

Where it sits: the daemon reads the key named by ``masking.key`` (a file or a systemd
credential, shared by every runner of a fleet) and records :func:`key_record` in the
ledger's ``appliance.start`` entry. Two sessions' ``[HMAC:...]`` tokens are comparable
exactly when their runs record the same key id: an auditor sees from the ledger alone that
two runners' sessions touched the same (masked) card. ``key: ephemeral`` (a random key per
run) is a choice the config must spell out, recorded and logged as such.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

__all__ = ["EPHEMERAL", "key_id", "key_record"]

# The config's spelling of "a random key for this run only".
EPHEMERAL = "ephemeral"

# Domain separation: the id is an HMAC of a fixed label, never of a value the key masks.
_ID_LABEL = b"appliance masking key id v1"


def key_id(key: bytes) -> str:
    """16 hex digits naming ``key`` (the first 64 bits of HMAC-SHA256(key, a fixed label))."""
    return hmac.new(key, _ID_LABEL, hashlib.sha256).hexdigest()[:16]


def key_record(key: bytes, source: str, *, ephemeral: bool, used: bool) -> dict[str, Any]:
    """What ``appliance.start`` says about the masking key.

    ``source``: where it came from (``credential 'masking-key'``, ``file ...``);
    ``used``: whether any style is ``hash`` (else the key masks nothing)."""
    record: dict[str, Any] = {"source": source, "id": key_id(key), "used": used}
    if ephemeral:
        record["warning"] = (
            "ephemeral masking key: hash tokens compare only within this run of this runner"
        )
    return record
