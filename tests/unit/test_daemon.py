"""The daemon's pure helpers: how the previous run ended (appliance.start) and the entries
of refused uses of the appliance's mark (capture.bypass_attempt). The daemon itself runs in
the lab (tests/lab/test_appliance_capture.py)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from appliance import _pure
from appliance.capture import FlowOwner
from appliance.config import parse_config
from appliance.daemon import bypass_entries, hot_path, previous_run
from appliance.ledger.recovery import LastEntry

CONFIG = parse_config("""\
targets:
  - name: db
    protocol: postgres
    addresses: [198.18.0.2:5432, "[fd00:a9e:0::2]:5432"]
    accounts: [{name: ci, user: app, secret: {file: /x}}]
""")


def owner(pid: int, dst: tuple[str, int] = ("198.18.0.2", 5432)) -> FlowOwner:
    return FlowOwner(
        tgid=pid, pid=pid, uid=0, gid=0, comm="python3", cgroup_id=7, netns_cookie=1,
        boot_ns=1, family=2, dst=dst, cookie=pid,
    )  # fmt: skip


def test_a_new_ledger_has_no_previous_run() -> None:
    assert previous_run(None) is None


def test_the_previous_run_stopped_cleanly_only_if_its_last_entry_is_its_stop() -> None:
    clean = previous_run(LastEntry(41, "appliance.stop", "2026-01-02T03:04:05.000006Z"))
    assert clean == {
        "last_seq": 41,
        "last_type": "appliance.stop",
        "last_ts": "2026-01-02T03:04:05.000006Z",
        "stopped_cleanly": True,
    }
    killed = previous_run(LastEntry(99, "statement", "2026-01-02T03:04:06.000000Z"))
    assert killed is not None and killed["stopped_cleanly"] is False
    assert killed["last_seq"] == 99 and killed["last_type"] == "statement"


def identify(o: FlowOwner) -> dict[str, Any]:
    return {"source": "ebpf", "pid": o.tgid}


def test_each_bypass_attempt_is_an_entry_with_who_and_where() -> None:
    entries = bypass_entries(
        [owner(10), owner(11, ("fd00:a9e::2", 5432)), owner(12, ("192.0.2.1", 443))],
        CONFIG,
        identify=identify,
    )
    assert [(d["dst"], d["target"], i) for d, i in entries] == [
        ("198.18.0.2:5432", "db", {"source": "ebpf", "pid": 10}),
        ("[fd00:a9e::2]:5432", "db", {"source": "ebpf", "pid": 11}),
        ("192.0.2.1:443", None, {"source": "ebpf", "pid": 12}),  # not a target: still refused
    ]
    assert all(d["mark"] == "0x4150" and "EPERM" in d["refused"] for d, _ in entries)


def test_a_flood_of_attempts_is_counted_past_the_first_ones() -> None:
    attempts = [owner(100 + n % 3) for n in range(500)]
    entries = bypass_entries(attempts, CONFIG, identify=identify)
    assert len(entries) == 17  # 16 in full, then one that counts the rest
    more, identity = entries[-1]
    assert identity is None
    assert more == {"more": 484, "pids": [100, 101, 102], "dsts": ["198.18.0.2:5432"]}


def test_the_start_says_which_build_of_the_hot_path_serves(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``appliance.start``'s ``hot_path``: a pure-Python build nobody asked for is a warning
    (a runner image that did not compile it serves at about half the throughput)."""
    caplog.set_level(logging.INFO, logger="appliance")
    monkeypatch.setattr(_pure, "running", lambda: ("compiled", ""))
    assert hot_path() == {"build": "compiled"}
    assert caplog.records[-1].levelno == logging.INFO
    assert caplog.records[-1].getMessage() == "hot path: compiled (mypyc)"
    asked = ("pure", "APPLIANCE_PURE is set")
    monkeypatch.setattr(_pure, "running", lambda: asked)
    assert hot_path() == {"build": "pure", "why": "APPLIANCE_PURE is set"}
    assert caplog.records[-1].levelno == logging.INFO
    why = "the hot path is not compiled here (scripts/compile.py has not run)"
    monkeypatch.setattr(_pure, "running", lambda: ("pure", why))
    assert hot_path() == {"build": "pure", "why": why}
    assert caplog.records[-1].levelno == logging.WARNING
    assert caplog.records[-1].getMessage().startswith(f"hot path: pure Python: {why};")
