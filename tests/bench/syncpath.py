"""Where the time of one write-ahead sync goes, per sync, across both processes.

What it measures: pgbench's transactions played through the session core at one client (as
:mod:`tests.bench.pgcore` does, with a real :class:`~appliance.ledger.remote.RemoteLedger`
and its writer process), with time stamps (``CLOCK_MONOTONIC``, one clock for both
processes) at each step of every :meth:`RemoteLedger.sync`:

- ``send``: ``sync()`` called until its SYNC message is handed to the socket;
- ``to_child``: until the writer process has read it (the ``recv`` that brought it);
- ``to_fsync``: until the writer starts its first fsync (handling the gulp, writing);
- ``fsync``: the fsyncs and fdatasyncs (how many per sync, of which files: the sync
  journal's, or the log's), until the last one ends;
- ``answer``: until SYNCED is sent;
- ``to_listener``: until the proxy's side has read the answer and settles the waiter;
- ``to_loop``: until the settling callback runs on the event loop;
- ``resume``: until the coroutine that awaited ``sync()`` runs again.

The writer process is instrumented through a ``sitecustomize`` module on its
``PYTHONPATH`` (it wraps ``os.fsync`` before the ledger is imported, and a few methods of
:mod:`appliance.ledger.remote`); nothing in the appliance is changed. Timings include the
instrumentation's own few µs per stamp. Run by hand::

    .venv/bin/python -m tests.bench.syncpath tpcb-like simple 2000 [uvloop|asyncio [SERVER_US]]

``SERVER_US``: the server's answer to each statement comes that many µs later (the loop
runs meanwhile, so the sender's batching timer may fire inside a transaction, as in a lab).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.ledger import remote
from appliance.proxy.commands import AwaitDurable, Durable
from tests.bench import pgcore

# Run in the writer process (APPLIANCE_SYNCTRACE names the file it writes its stamps to).
_SITECUSTOMIZE = r"""
import os, time
_out = os.environ.get("APPLIANCE_SYNCTRACE")
if _out and "APPLIANCE_LEDGER_FD" in os.environ:
    _now = time.monotonic_ns
    _events = []

    def _timed(real):
        def sync(fd):
            t0 = _now()
            real(fd)
            t1 = _now()
            try:
                name = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                name = "?"
            _events.append(("fsync", t0, t1, name))
        return sync

    os.fsync = _timed(os.fsync)
    os.fdatasync = _timed(os.fdatasync)
    from appliance.ledger import remote as _r

    _recv = _r._Reader.recv
    def recv(self):
        data = _recv(self)
        _events.append(("recv", _now(), len(data)))
        return data
    _r._Reader.recv = recv

    _handle = _r._Child.handle
    def handle(self, writer, conn, kind, payload):
        if kind == _r.SYNC:
            _events.append(("sync", _now()))
        return _handle(self, writer, conn, kind, payload)
    _r._Child.handle = handle

    _send = _r._Conn.send
    def send(self, kind, payload):
        if kind == _r._SYNCED:
            _events.append(("synced", _now()))
        return _send(self, kind, payload)
    _r._Conn.send = send

    _run = _r._Child.run
    def run(self):
        try:
            return _run(self)
        finally:
            import pickle
            with open(_out, "wb") as f:
                pickle.dump(_events, f)
    _r._Child.run = run
"""


def _instrument_proxy(events: list[tuple[Any, ...]]) -> None:
    """Stamps on the proxy's side: sync called, sent, listener settling, loop running it,
    coroutine resumed."""
    now = time.monotonic_ns
    real_sync = remote.RemoteLedger.sync
    real_resolve = remote.RemoteLedger._resolve_syncs
    real_settle = remote._settle

    async def sync(self: remote.RemoteLedger) -> None:
        events.append(("call", now()))
        await real_sync(self)
        events.append(("resumed", now()))

    def resolve(self: remote.RemoteLedger, *, final: bool = False) -> None:
        if any(token <= self._synced for token, _, _ in self._sync_waiters):
            events.append(("listener", now()))
        real_resolve(self, final=final)

    def settle(future: asyncio.Future[None], error: BaseException | None) -> None:
        events.append(("settle", now()))
        real_settle(future, error)

    real_send_out = remote.RemoteLedger._send_out

    def send_out(self: remote.RemoteLedger) -> None:
        real_send_out(self)
        events.append(("sent", now()))

    remote.RemoteLedger.sync = sync  # type: ignore[method-assign]
    remote.RemoteLedger._resolve_syncs = resolve  # type: ignore[method-assign]
    remote._settle = settle
    remote.RemoteLedger._send_out = send_out  # type: ignore[method-assign,assignment]


def _slow_server(seconds: float) -> None:
    """The server takes ``seconds`` to answer each statement (the loop runs meanwhile, as in
    a lab: the sender's batching timer may fire inside a transaction)."""
    real_step = pgcore.Conversation.step

    async def step(self: pgcore.Conversation, client: bytes, server: bytes) -> None:
        real_receive = self.core.receive
        commands = real_receive("job", client)
        self._out()
        for command in commands:
            if isinstance(command, AwaitDurable):
                await self.ledger.sync()
                self.core.handle(Durable(command.key, True))
                self._out()
        await asyncio.sleep(seconds)
        real_receive("upstream", server)
        self._out()

    del real_step
    pgcore.Conversation.step = step  # type: ignore[method-assign]


def _after(events: list[tuple[Any, ...]], kind: str, t: int) -> tuple[Any, ...] | None:
    for e in events:
        if e[0] == kind and e[1] >= t:
            return e
    return None


def breakdown(proxy: list[tuple[Any, ...]], child: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Per-sync step durations (µs) matched by time (one client: syncs do not overlap)."""
    steps: dict[str, list[float]] = {
        k: []
        for k in (
            "send",
            "to_child",
            "to_fsync",
            "fsync",
            "answer",
            "to_listener",
            "to_loop",
            "resume",
            "total",
        )
    }
    fsyncs: list[int] = []
    slow: list[str] = []
    names: dict[str, int] = {}
    calls = [e[1] for e in proxy if e[0] == "call"]
    for t_call in calls:
        sent = _after(proxy, "sent", t_call)
        got = _after(child, "sync", t_call)
        synced = _after(child, "synced", t_call)
        listener = _after(proxy, "listener", t_call)
        settle = _after(proxy, "settle", t_call)
        resumed = _after(proxy, "resumed", t_call)
        if None in (sent, got, synced, listener, settle, resumed):
            continue
        assert sent and got and synced and listener and settle and resumed
        # the recv that brought the SYNC: the last one before it was handled
        recvs = [e for e in child if e[0] == "recv" and t_call <= e[1] <= got[1]]
        t_recv = recvs[-1][1] if recvs else got[1]
        these = [e for e in child if e[0] == "fsync" and got[1] <= e[1] <= synced[1]]
        fsyncs.append(len(these))
        for e in these:
            names[e[3]] = names.get(e[3], 0) + 1
        first = these[0][1] if these else synced[1]
        last = these[-1][2] if these else synced[1]
        us = 1e-3
        steps["send"].append((sent[1] - t_call) * us)
        steps["to_child"].append((t_recv - sent[1]) * us)
        steps["to_fsync"].append((first - t_recv) * us)
        steps["fsync"].append((last - first) * us)
        steps["answer"].append((synced[1] - last) * us)
        steps["to_listener"].append((listener[1] - synced[1]) * us)
        steps["to_loop"].append((settle[1] - listener[1]) * us)
        steps["resume"].append((resumed[1] - settle[1]) * us)
        steps["total"].append((resumed[1] - t_call) * us)
        if (resumed[1] - t_call) * us > 1000:
            slow.append(
                f"slow sync: total {(resumed[1] - t_call) * us:.0f} µs, "
                + ", ".join(f"{k} {v[-1]:.0f}" for k, v in steps.items() if k != "total")
                + f"; fsyncs {[e[3].rsplit('/', 1)[-1] for e in these]}"
            )
    out: dict[str, Any] = {"syncs": len(steps["total"])}
    for k, v in steps.items():
        if v:
            v.sort()
            out[k] = (statistics.median(v), v[int(len(v) * 0.99)], statistics.mean(v))
    out["fsyncs_per_sync"] = statistics.mean(fsyncs) if fsyncs else 0
    late = steps["to_child"]
    out["late"] = sum(1 for v in late if v > 500) / len(late) if late else 0.0
    out["fsynced"] = names
    out["slow"] = slow
    return out


def main() -> None:
    workload, mode = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    loop = sys.argv[4] if len(sys.argv) > 4 else "uvloop"
    server_us = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        trace = Path(tmp) / "child.pickle"
        os.environ["APPLIANCE_SYNCTRACE"] = str(trace)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        proxy: list[tuple[Any, ...]] = []
        _instrument_proxy(proxy)
        if server_us:
            _slow_server(server_us / 1e6)
        coro = pgcore.run(workload, mode, n, clients=1)
        if loop == "uvloop":  # as the daemon runs
            import uvloop

            result = uvloop.run(coro)
        else:
            result = asyncio.run(coro)
        import pickle

        child = pickle.loads(trace.read_bytes())
    calls = sum(1 for e in proxy if e[0] == "call")
    print(f"{workload} {mode} ({loop}): {n} transactions (+1 warm-up), {calls} syncs")
    print(" ".join(f"{k}={v:.1f}" for k, v in result.items()))
    out = breakdown(proxy, child)
    print(f"syncs matched: {out.pop('syncs')}; fsyncs per sync: {out.pop('fsyncs_per_sync'):.2f}")
    print("fsynced:", out.pop("fsynced"))
    print(f"syncs read by the writer over 500 µs after they were sent: {out.pop('late'):.1%}")
    for line in out.pop("slow")[:20]:
        print(line)
    print(f"{'step':<12} {'p50 µs':>8} {'p99 µs':>8} {'mean µs':>8}")
    for k, (p50, p99, mean) in out.items():
        print(f"{k:<12} {p50:8.1f} {p99:8.1f} {mean:8.1f}")


if __name__ == "__main__":
    main()
