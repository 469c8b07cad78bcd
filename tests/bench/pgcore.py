"""pgbench's conversations played through the PostgreSQL session core, without sockets.

What it measures: the appliance's own work per transaction on the hot path (the session
core, policy, masking of statements and parameters, entry encoding, the hand-over to the
ledger writer process), apart from the kernel's socket work and from the noise of the other
processes that a lab run shares two cores with. The conversations are those of pgbench
(select-only and tpcb-like, ``-M simple`` and ``-M prepared``: libpq sends Bind, Describe,
Execute, Sync for a prepared statement), each transaction with values of its own (so the
per-session cache of masked statement texts misses, as in a lab run), the server's answers
built with the codec's encoders. The ledger is a real :class:`~appliance.ledger.remote.RemoteLedger` (its writer
process writes and signs a real ledger in a temporary directory), driven from an asyncio
loop as in the daemon, so entries are batched as they are in production; statements that
change the target wait for :meth:`RemoteLedger.sync` (write-ahead) as the shell makes them.

It prints µs of CPU per transaction of this process (``proxy_us``) and of the writer process
(``writer_us``, ``writer_user_us`` its user part), both counted from after the warm-up and a
flush: the writer's start-up (unpickling the masker, compiling the detectors) is not in them.

Run by hand, alone or under ``valgrind --tool=callgrind`` (instruction counts, repeatable on
a busy machine; ``--collect-atstart=no --toggle-collect=CPyPy_pg___core___PgSession___receive
--toggle-collect=CPyPy_pg___core___PgSession___settle`` counts the session core only, without the
start-up: ``settle`` records what a step deferred until its bytes were written)::

    .venv/bin/python -m tests.bench.pgcore select-only prepared 2000
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from appliance.config import Account, Address, SecretRef, Target, UpstreamTLS
from appliance.ledger.remote import RemoteLedger
from appliance.masking import Masker, MaskingConfig
from appliance.protocols.postgres import CancelKeys
from appliance.protocols.postgres.messages import (
    AuthenticationOk,
    BackendKeyData,
    Bind,
    BindComplete,
    CommandComplete,
    DataRow,
    Describe,
    Execute,
    FieldDescription,
    NoData,
    ParameterStatus,
    Parse,
    ParseComplete,
    Query,
    ReadyForQuery,
    RowDescription,
    StartupMessage,
    Sync,
)
from appliance.proxy.commands import AwaitDurable, ConnectionInfo, Durable, UpstreamOpened
from appliance.proxy.pg.core import CancelRoute, PgSession, PgShared
from appliance.proxy.services import SessionServices
from appliance.signing.keys import SigningKey
from tests.unit.policy.helpers import load_policy

POLICY = """
  mode: enforce
  rules:
    - name: no-drop
      match: {classes: [drop]}
      action: deny
    - name: default
      action: allow
"""

# pgbench's scripts (src/bin/pgbench/pgbench.c), with the values of one transaction.
SELECT_ONLY = ["SELECT abalance FROM pgbench_accounts WHERE aid = $1;"]
TPCB_LIKE = [
    "BEGIN;",
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
    "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;",
    "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
    "VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
    "END;",
]
WORKLOADS = {"select-only": SELECT_ONLY, "tpcb-like": TPCB_LIKE}
_ABALANCE = RowDescription((FieldDescription("abalance", 16400, 3, 23, 4, -1, 0),))
_TAGS = {"BEGIN": "BEGIN", "UPDATE": "UPDATE 1", "SELECT": "SELECT 1", "INSERT": "INSERT 0 1"}


def _params(sql: str, rng: Callable[[int], int]) -> list[bytes]:
    n = sql.count("$")
    return [str(rng(100000 * 10)).encode() for _ in range(n)]


def _literal(sql: str, params: list[bytes]) -> str:
    for i in range(len(params), 0, -1):
        sql = sql.replace(f"${i}", params[i - 1].decode())
    return sql


def _answer(sql: str, *, prepared: bool, status: str) -> bytes:
    """The server's answer to one statement, through its ReadyForQuery."""
    word = sql.split()[0].rstrip(";")
    out = BindComplete().encode() if prepared else b""
    if word == "SELECT":
        out += (b"" if prepared else _ABALANCE.encode()) + DataRow((b"-2917",)).encode()
    out += CommandComplete(_TAGS.get(word, "COMMIT")).encode()
    return out + ReadyForQuery(status).encode()


class Conversation:
    """One pgbench client's session through a :class:`PgSession`, driven by hand."""

    def __init__(self, services: SessionServices, shared: PgShared, n: int) -> None:
        target = Target(
            "db",
            "postgres",
            (Address("ip", "10.0.0.5", 5432),),
            (Account("app", "app", SecretRef(file=Path("/secrets/app"))),),
            tls=UpstreamTLS("disable"),
        )
        info = ConnectionInfo(
            f"s{n}", ("10.9.0.1", 40000 + n), ("127.0.0.1", 6432), ("10.0.0.5", 5432)
        )
        self.core = PgSession(services, shared, target, info)
        self.ledger = services.ledger
        self.prepared: set[str] = set()
        self.to_job = 0
        self.to_up = 0

    def _out(self) -> None:
        to_job, to_up = self.core.take_output()
        self.to_job += len(to_job)
        self.to_up += len(to_up)
        self.core.settle()  # as the shell: once the bytes are written

    def start(self) -> None:
        core = self.core
        core.start()
        core.receive("job", StartupMessage(3, 0, {"user": "app", "database": "app"}).encode())
        self._out()
        core.handle(UpstreamOpened(("10.0.0.2", 50000)))
        self._out()
        server = AuthenticationOk().encode()
        for name, value in (
            ("client_encoding", "UTF8"),
            ("server_version", "15.0"),
            ("standard_conforming_strings", "on"),
        ):
            server += ParameterStatus(name, value).encode()
        server += BackendKeyData(1234, b"\0\0\0\x01").encode() + ReadyForQuery("I").encode()
        core.receive("upstream", server)
        self._out()

    async def step(self, client: bytes, server: bytes) -> None:
        commands = self.core.receive("job", client)
        self._out()
        for command in commands:
            if isinstance(command, AwaitDurable):
                await self.ledger.sync()
                self.core.handle(Durable(command.key, True))
                self._out()
        self.core.receive("upstream", server)
        self._out()

    def script(
        self, script: list[str], mode: str, rng: Callable[[int], int]
    ) -> list[tuple[bytes, bytes]]:
        """One transaction's steps: (what the job sends, what the server answers)."""
        steps = []
        for i, sql in enumerate(script):
            params = _params(sql, rng)
            status = "I" if script is SELECT_ONLY or sql == "END;" else "T"
            if mode == "simple":
                text = _literal(sql, params)
                steps.append((Query(text).encode(), _answer(sql, prepared=False, status=status)))
                continue
            name = f"P_{i}"
            client = b""
            server = b""
            if name not in self.prepared:
                self.prepared.add(name)
                client += Parse(name, sql, ()).encode()
                server += ParseComplete().encode()
            client += (
                Bind("", name, (), tuple(params), ()).encode()
                + Describe("P", "").encode()
                + Execute("", 0).encode()
                + Sync().encode()
            )
            # libpq's Describe of the portal is answered before the rows
            answer = _answer(sql, prepared=True, status=status)
            described = _ABALANCE if sql.startswith("SELECT") else NoData()
            steps.append((client, server + answer[:5] + described.encode() + answer[5:]))
        return steps

    async def play(self, steps: list[tuple[bytes, bytes]]) -> None:
        for client, server in steps:
            await self.step(client, server)


async def run(workload: str, mode: str, transactions: int, clients: int = 8) -> dict[str, float]:
    """Play ``transactions`` transactions over ``clients`` sessions (round robin); return
    CPU µs per transaction of this process and of the ledger writer process."""
    with tempfile.TemporaryDirectory() as tmp:
        key = SigningKey.generate("bench.test/ledger")
        ledger = RemoteLedger.open(Path(tmp) / "ledger", origin="bench.test/ledger", key=key)
        try:
            clock = time.monotonic
            services = SessionServices(
                ledger=ledger,
                policy=load_policy(POLICY),
                masker=Masker(MaskingConfig(), hmac_key=b"k" * 32),
                record_rows=True,
                clock=time.time,
                monotonic=clock,
                read_secret=lambda ref: "secret",
                # PGCORE_DURABILITY=checkpoint: no write-ahead waits (what they cost)
                write_ahead=os.environ.get("PGCORE_DURABILITY", "write-ahead") == "write-ahead",
            )
            counter = itertools.count(1)
            shared = PgShared(
                CancelKeys[CancelRoute](random_bytes=lambda n: next(counter).to_bytes(n, "big"))
            )
            sessions = [Conversation(services, shared, i) for i in range(clients)]
            for s in sessions:
                s.start()
            script = WORKLOADS[workload]
            seed = itertools.count(7919, 104729)
            rng = lambda top: next(seed) % top + 1  # noqa: E731
            for s in sessions:  # warm up: prepare, fill the caches
                await s.play(s.script(script, mode, rng))
            # Every transaction, encoded before the clock starts, with values of its own as
            # pgbench's (the per-session caches of masked statement texts miss, as in a lab).
            plays = [
                (sessions[i % clients], sessions[i % clients].script(script, mode, rng))
                for i in range(transactions)
            ]
            # The writer has done its start-up (unpickling the masker, compiling the
            # detectors) and the warm-up's work: only its steady state is measured.
            ledger.flush(60)
            assert ledger._proc is not None
            child = ledger._proc.pid
            c0, (wu0, ws0) = time.process_time(), _cpu(child)
            t0 = time.perf_counter()
            for session, steps in plays:
                await session.play(steps)
            wall = time.perf_counter() - t0
            ledger.flush(60)
            c1, (wu1, ws1) = time.process_time(), _cpu(child)
        finally:
            ledger.close()
    return {
        "proxy_us": (c1 - c0) / transactions * 1e6,
        "writer_us": (wu1 + ws1 - wu0 - ws0) / transactions * 1e6,
        "writer_user_us": (wu1 - wu0) / transactions * 1e6,
        "wall_us": wall / transactions * 1e6,
    }


def _cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user, system) of process ``pid``, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def main() -> None:
    workload, mode = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    result = asyncio.run(run(workload, mode, n))
    print(" ".join(f"{k}={v:.1f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
