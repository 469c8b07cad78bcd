"""Time stamps at each step of a write-ahead sync, in the proxy and in the ledger writer
process, for :mod:`tests.bench.syncpath` (measurement only: nothing in the appliance is
changed; each stamp costs the instrumentation's own few µs).

Every stamp is ``(kind, CLOCK_MONOTONIC ns, ...)``, one clock for both processes, and names
the sync's token (:meth:`RemoteLedger.sync <appliance.ledger.remote.RemoteLedger.sync>`
numbers its SYNC messages), so that syncs of several sessions at once are told apart:

- the proxy's (:func:`instrument_proxy`): ``call`` (``sync()`` called), ``sent`` (its SYNC
  handed to the socket), ``listener`` (the writer's answer read, the waiter settled),
  ``settle`` (its future settled on the loop), ``resumed`` (the coroutine that awaited
  ``sync()`` runs again);
- the writer's (:func:`instrument_writer`): ``recv`` (a read of the channel: time, bytes),
  ``sync`` (a SYNC handled: its token), ``fsync`` (start, end, the file), ``synced`` (an
  answer sent: every token up to it is durable).

:func:`install` is what a ``sitecustomize`` module calls (:func:`sitecustomize` writes one):
in a ledger writer process (``APPLIANCE_LEDGER_FD`` set) it instruments the writer when
``APPLIANCE_SYNCTRACE`` names the file to write its stamps to at its end; in any other
process it instruments the proxy when ``APPLIANCE_SYNCTRACE_PROXY`` names a file prefix,
and writes the stamps to ``PREFIX.PID`` at exit (a daemon stopped by SIGTERM exits so).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import os
import pickle
import time
from pathlib import Path
from typing import Any

Events = list[tuple[Any, ...]]

WRITER_ENV = "APPLIANCE_SYNCTRACE"
PROXY_ENV = "APPLIANCE_SYNCTRACE_PROXY"

# The token of the sync the running task awaits (set inside RemoteLedger.sync, which runs in
# the awaiting task's context until it suspends).
_TOKEN: contextvars.ContextVar[int] = contextvars.ContextVar("sync_token", default=0)


def instrument_proxy(events: Events) -> None:
    """Stamp ``call``, ``sent``, ``listener``, ``settle`` and ``resumed`` of every sync of
    this process's :class:`~appliance.ledger.remote.RemoteLedger` into ``events``."""
    from appliance.ledger import remote
    from appliance.ledger.sender import SYNC, U64

    now = time.monotonic_ns
    real_sync = remote.RemoteLedger.sync
    real_buffer = remote.RemoteLedger._buffer
    real_send_out = remote.RemoteLedger._send_out
    real_resolve = remote.RemoteLedger._resolve_syncs
    real_settle = remote._settle
    pending: list[int] = []  # a SYNC buffered, not yet handed to the socket
    futures: dict[int, int] = {}  # id(future) -> token, from the answer to the settling

    async def sync(self: remote.RemoteLedger) -> None:
        t = now()
        await real_sync(self)
        token = _TOKEN.get()
        events.append(("call", t, token))
        events.append(("resumed", now(), token))

    def buffer(self: remote.RemoteLedger, kind: int, payload: bytes) -> None:
        real_buffer(self, kind, payload)
        if kind == SYNC:
            (token,) = U64.unpack(payload)
            _TOKEN.set(token)
            pending.append(token)

    def send_out(self: remote.RemoteLedger) -> None:
        real_send_out(self)
        t = now()
        for token in pending:
            events.append(("sent", t, token))
        pending.clear()

    def resolve(self: remote.RemoteLedger, *, final: bool = False) -> None:
        t = now()
        for token, _, future in self._sync_waiters:
            if token <= self._synced:
                events.append(("listener", t, token))
                futures[id(future)] = token
        real_resolve(self, final=final)

    def settle(future: asyncio.Future[None], error: BaseException | None) -> None:
        events.append(("settle", now(), futures.pop(id(future), 0)))
        real_settle(future, error)

    remote.RemoteLedger.sync = sync  # type: ignore[method-assign]
    remote.RemoteLedger._buffer = buffer  # type: ignore[method-assign,assignment]
    remote.RemoteLedger._send_out = send_out  # type: ignore[method-assign,assignment]
    remote.RemoteLedger._resolve_syncs = resolve  # type: ignore[method-assign]
    remote._settle = settle


def instrument_writer(events: Events) -> None:
    """Stamp ``recv``, ``sync``, ``fsync`` and ``synced`` in this ledger writer process (before
    the ledger is imported: ``os.fsync`` and ``os.fdatasync`` are wrapped)."""
    now = time.monotonic_ns

    def timed(real: Any) -> Any:
        def sync(fd: int) -> None:
            t0 = now()
            real(fd)
            t1 = now()
            try:
                name = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                name = "?"
            events.append(("fsync", t0, t1, name))

        return sync

    os.fsync = timed(os.fsync)
    os.fdatasync = timed(os.fdatasync)
    from appliance.ledger import remote
    from appliance.ledger.sender import SYNC, U64

    real_recv = remote._Reader.recv
    real_handle = remote._Child.handle
    real_send = remote._Conn.send

    def recv(self: Any) -> bytes:
        data: bytes = real_recv(self)
        events.append(("recv", now(), len(data)))
        return data

    def handle(self: Any, writer: Any, conn: Any, kind: int, payload: bytes) -> None:
        if kind == SYNC:
            events.append(("sync", now(), U64.unpack(payload)[0]))
        real_handle(self, writer, conn, kind, payload)

    def send(self: Any, kind: int, payload: bytes) -> None:
        if kind == remote._SYNCED:
            events.append(("synced", now(), U64.unpack(payload)[0]))
        real_send(self, kind, payload)

    remote._Reader.recv = recv  # type: ignore[method-assign]
    remote._Child.handle = handle  # type: ignore[method-assign]
    remote._Conn.send = send  # type: ignore[method-assign]


def install() -> None:
    """Instrument this process as its environment says (see the module docstring)."""
    if "APPLIANCE_LEDGER_FD" in os.environ:
        out = os.environ.get(WRITER_ENV)
        if out:
            _install_writer(out)
        return
    prefix = os.environ.get(PROXY_ENV)
    if prefix:
        events: Events = []
        instrument_proxy(events)
        atexit.register(_dump, events, f"{prefix}.{os.getpid()}")


def _install_writer(out: str) -> None:
    """The writer process ends with ``os._exit`` (no atexit): its stamps are written when
    its run returns."""
    events: Events = []
    instrument_writer(events)
    from appliance.ledger import remote

    real_run = remote._Child.run

    def run(self: Any) -> int:
        try:
            code: int = real_run(self)
            return code
        finally:
            _dump(events, out)

    remote._Child.run = run  # type: ignore[method-assign]


def _dump(events: Events, out: str) -> None:
    Path(out).write_bytes(pickle.dumps(events))


def sitecustomize(directory: Path) -> Path:
    """Write a ``sitecustomize.py`` into ``directory`` that calls :func:`install` (for a
    process with ``directory`` on its ``PYTHONPATH``), and return ``directory``."""
    root = Path(__file__).resolve().parents[2]
    (directory / "sitecustomize.py").write_text(
        "import sys\n"
        f"sys.path.append({str(root)!r})\n"
        "from tests.bench import synctrace\n"
        "synctrace.install()\n"
    )
    return directory


def proxy_events(prefix: Path) -> Events:
    """The stamps the proxy processes wrote under ``prefix`` (the daemon's; another process
    that ran with the same environment, such as a transform helper, has no sync)."""
    out: Events = []
    for path in sorted(prefix.parent.glob(prefix.name + ".*")):
        out.extend(pickle.loads(path.read_bytes()))
    return out
