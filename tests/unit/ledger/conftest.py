"""Helpers for ledger tests: deterministic keys and clocks, a small realistic ledger."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.ledger import LedgerWriter
from appliance.ledger._framing import ENTRY_MAGIC, Frame, FrameScanner
from appliance.signing.keys import SigningKey

ORIGIN = "test.example/ledger"
KEY = SigningKey.generate(ORIGIN, seed=b"\x11" * 32)
OTHER_KEY = SigningKey.generate(ORIGIN, seed=b"\x22" * 32)
T0 = 1795638785.0  # 2026-11-25T20:33:05Z


def no_fsync(fd: int) -> None:
    """Tests that reopen ledgers hundreds of times skip the disk flush (not the ordering)."""


def step_clock(start: float = T0, step: float = 0.001) -> Callable[[], float]:
    state = {"t": start - step}

    def clock() -> float:
        state["t"] += step
        return state["t"]

    return clock


def open_writer(directory: Path, **kw: object) -> LedgerWriter:
    kw.setdefault("origin", ORIGIN)
    kw.setdefault("key", KEY)
    kw.setdefault("clock", step_clock())
    # Blobs go to the store (files) unless a test asks for inlining of small ones.
    kw.setdefault("inline_limit", 0)
    return LedgerWriter.open(directory, **kw)  # type: ignore[arg-type]


RESULT = b'{"columns":["id","card"]}\n["1","4111********1111"]\n["2",null]\n'


def write_session(w: LedgerWriter, session: str, *, statements: int = 2) -> None:
    """A realistic session: start, statements with decisions and result blobs, end."""
    ident = {
        "source": "ebpf",
        "pid": 4242,
        "uid": 1000,
        "comm": "psql",
        "exe": "/usr/bin/psql",
        "ci": {"provider": "github", "repository": "acme/shop", "job": "migrate", "run_id": "9"},
    }
    common = {"session": session, "account": "ci-ro", "target": "orders"}
    w.append(
        "session.start",
        identity=ident,
        data={
            "client": "10.9.0.2:40000",
            "server": "10.9.1.2:5432",
            "protocol": "postgres",
            "database": "shop",
            "user": "app",
            "policy_mode": "enforce",
        },
        **common,
    )
    for n in range(1, statements + 1):
        w.append("statement", data={"n": n, "text": f"SELECT {n}", "protocol": "simple"}, **common)
        decision = "deny" if n % 3 == 0 else "allow"
        w.append(
            "policy.decision",
            data={
                "n": n,
                "decision": decision,
                "rule": "r",
                "decision_id": f"d{n}",
                "enforced": True,
            },
            **common,
        )
        sink = w.open_blob()
        sink.write(RESULT + f'["{session}-{n}",null]\n'.encode())
        w.append(
            "response",
            data={
                "n": n,
                "tag": "SELECT 3",
                "rows": 3,
                "columns": ["id", "card"],
                "duration_us": 90,
                "error": None,
            },
            blobs={"result": sink},
            **common,
        )
    w.append(
        "session.end",
        data={"bytes_in": 10, "bytes_out": 20, "duration_us": 3000, "reason": "client closed"},
        **common,
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    """A closed ledger with two sessions, several checkpoints and blobs."""
    d = tmp_path / "ledger"
    # checkpoints at 4, 8, 9 (flush), 13, 17, 20 (close); no time-based ones
    with open_writer(d, checkpoint_entries=4, checkpoint_interval=3600) as w:
        write_session(w, "s1")
        w.flush()
        write_session(w, "s2", statements=3)
    return d


def frames(path: Path) -> list[Frame]:
    return list(FrameScanner(path.read_bytes(), ENTRY_MAGIC))
