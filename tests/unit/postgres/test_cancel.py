"""Cancel keys: the job gets the appliance's key, a CancelRequest maps back to the real one."""

from __future__ import annotations

import itertools

import pytest

from appliance.protocols.postgres import CancelKeys
from appliance.protocols.postgres.messages import BackendKeyData, CancelRequest


def counter_bytes() -> object:
    counter = itertools.count(1)

    def random_bytes(n: int) -> bytes:
        return next(counter).to_bytes(n, "big")

    return random_bytes


REAL = BackendKeyData(31337, b"\xde\xad\xbe\xef")


def test_issue_and_resolve() -> None:
    keys: CancelKeys[str] = CancelKeys(random_bytes=counter_bytes())  # type: ignore[arg-type]
    issued = keys.issue(REAL, "db1:5432")
    assert issued == BackendKeyData(1, b"\0\0\0\x02")
    assert issued.key != REAL.key and issued.pid != REAL.pid
    assert keys.resolve(CancelRequest(issued.pid, issued.key)) == (REAL, "db1:5432")
    # the real key given back is what goes upstream
    assert CancelRequest(REAL.pid, REAL.key).encode()[8:] == b"\0\0\x7a\x69\xde\xad\xbe\xef"


def test_wrong_key_or_pid_resolves_to_nothing() -> None:
    keys: CancelKeys[str] = CancelKeys(random_bytes=counter_bytes())  # type: ignore[arg-type]
    issued = keys.issue(REAL, "r")
    assert keys.resolve(CancelRequest(issued.pid, b"\0\0\0\x03")) is None
    assert keys.resolve(CancelRequest(issued.pid + 100, issued.key)) is None
    assert keys.resolve(CancelRequest(REAL.pid, REAL.key)) is None  # the real key is not ours


def test_release_forgets() -> None:
    keys: CancelKeys[str] = CancelKeys(random_bytes=counter_bytes())  # type: ignore[arg-type]
    issued = keys.issue(REAL, "r")
    keys.release(BackendKeyData(issued.pid, b"\xff\xff\xff\xff"))  # not the same key: kept
    assert len(keys) == 1
    keys.release(issued)
    assert len(keys) == 0 and keys.resolve(CancelRequest(issued.pid, issued.key)) is None


def test_pids_never_collide_or_are_zero() -> None:
    values = iter([bytes(4), (5).to_bytes(4, "big"), b"k1k1", (5).to_bytes(4, "big"),
                   (0x80000006).to_bytes(4, "big"), b"k2k2"])  # fmt: skip
    keys: CancelKeys[int] = CancelKeys(random_bytes=lambda n: next(values))
    first = keys.issue(REAL, 1)
    second = keys.issue(REAL, 2)
    assert (first.pid, second.pid) == (5, 6)  # 0 skipped, 5 taken, sign bit masked


def test_protocol_32_long_keys() -> None:
    keys: CancelKeys[str] = CancelKeys(random_bytes=lambda n: bytes(range(n)))
    issued = keys.issue(REAL, "r", key_length=32)
    assert len(issued.key) == 32
    with pytest.raises(ValueError):
        keys.issue(REAL, "r", key_length=3)
