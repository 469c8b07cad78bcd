"""Proxy worker processes (``proxy.workers`` > 1): several processes serve the listeners,
one ledger writer records them all (issue 19: throughput that grows with cores).

Where this sits: the daemon (:mod:`appliance.daemon`) keeps the control plane (the ledger's
own connection, shipping, status, signals) and, instead of serving, starts N workers with a
:class:`WorkerPool`. Each worker is ``python -P -c 'from appliance.proxy.workers import
worker_main; worker_main()'`` and gets, by inheritance:

- its own connection to the ledger writer process
  (:meth:`appliance.ledger.remote.RemoteLedger.attach`): the writer gives every entry of
  every process its ``seq`` in arrival order, so the ledger keeps one gap-free order;
  write-ahead syncs from all workers are group-committed by the writer as before;
- a control socket (``SOCK_SEQPACKET``), over which it is sent its setup (the config, the
  masking key: every worker masks and hashes alike), answers "ready", and then receives
  connections: the daemon accepts on the listeners and hands each connection over
  (``SCM_RIGHTS``) to the workers in turn. Measured first: workers sharing one listening
  socket took bursts unevenly (a worker that has just accepted accepts the next too: 26/10
  sessions of 8-client pgbench runs), which round-robin from one acceptor does not; the
  cost is one ``sendmsg`` per connection, not per statement. The control socket's end means
  the daemon is gone: the worker stops.

A worker records ``proxy.worker.ready`` and, at its end, ``proxy.worker.stopped`` with its pid
and how many sessions it served. Fail closed: a worker whose ledger fails (the writer died)
stops serving at once and exits with an error; a worker that exits unexpectedly makes the
daemon stop the others and exit with an error. SIGTERM to the daemon: each worker is sent
SIGTERM, finishes its in-flight statements (the usual grace), flushes its entries to the
writer and exits; only then does the daemon record ``appliance.stop`` and close the ledger
(final checkpoint, final ship).

Approvals: a statement held in a worker is held by the daemon's broker (:class:`BrokerLink`
asks over the control socket, after a ledger sync so that the statement's entries come
first), so the approvals socket, the CLI, webhooks and the fleet hub see it as usual; the
daemon syncs the approval's entries before it answers.

Not supported yet with several workers (refused by ``config check`` or at start, naming the
reason): http and ssh targets, ``--capture``, ``ship.on_backlog: refuse``. Not routed
yet, and said at start (:data:`LIMITS`: logged, and in ``appliance.start``): a PostgreSQL
CancelRequest or a MySQL ``KILL`` reaches its session only when its connection is handed to
the worker that serves that session (cancel keys and connection ids are per process);
otherwise it is refused and recorded as a cancel with an unknown key.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import functools
import itertools
import logging
import os
import pickle
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from appliance import collector
from appliance.approvals import ApprovalsUnavailable, Broker
from appliance.approvals.broker import Outcome
from appliance.config import Config
from appliance.errors import ApplianceError

log = logging.getLogger("appliance.workers")

_LISTENER = struct.Struct("!H")  # a handed-over connection: which listener accepted it
# Control messages after the setup, one per SEQPACKET message, by their first byte:
# daemon -> worker: a connection (with its descriptor), an approval's answer;
# worker -> daemon: "ready", an approval asked, an approval withdrawn (the session ended).
_CONN, _ANSWER, _ASK, _WITHDRAW = b"C", b"A", b"Q", b"W"
_READY = b"ready"
_SETUP_MAX = 16 << 20  # the largest control message (the setup: the config)
_START_TIMEOUT = 60.0  # seconds for a worker to import, parse the config and start serving
_EXIT_MARGIN = 30.0  # seconds past the grace period before a worker that hangs is killed
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


LIMITS = (
    "proxy.workers > 1: a PostgreSQL cancel request or a MySQL KILL reaches its session only "
    "when it lands on the worker serving that session (cancel keys are per worker; not routed "
    "yet); otherwise it is refused and recorded"
)


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker is sent at start (pickled over its control socket)."""

    index: int
    config: Config
    mask_key: bytes
    grace: float
    ledger: int  # inherited fd: its connection to the writer process
    log_level: str


def _control_pair() -> tuple[socket.socket, socket.socket]:
    """The daemon's and a worker's ends of a control socket: one message per ``send``."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (ours, theirs):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SETUP_MAX)
    return ours, theirs


class _Inbox:
    """Messages from one control socket into a buffer allocated once (a connection handed
    over costs no 16 MB allocation), with the descriptors they carry."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray(_SETUP_MAX)

    def receive(self) -> tuple[bytes, list[int]]:
        """The next message and its descriptors; (b"", []) at the end of the stream.
        Raises BlockingIOError when none is waiting, ApplianceError for one cut short."""
        fds = array.array("i")
        n, ancillary, flags, _ = self.sock.recvmsg_into([self.buf], socket.CMSG_SPACE(16 * 4))
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            raise ApplianceError("a control message was cut short")
        return bytes(self.buf[:n]), list(fds)


class WorkerPool:
    """The daemon's side: start, watch and stop the workers (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        listeners: list[socket.socket],
        ledgers: list[socket.socket],
        mask_key: bytes,
        grace: float,
        on_exit: Callable[[], None],
        broker: Broker | None = None,
        durable: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if len(ledgers) != config.proxy.workers:
            raise ApplianceError(
                f"{len(ledgers)} ledger connections for {config.proxy.workers} workers"
            )
        self.config = config
        self.listeners = listeners
        self.ledgers = ledgers
        self.mask_key = mask_key
        self.grace = grace
        self.on_exit = on_exit  # a worker ended unexpectedly: the daemon stops
        self.broker = broker  # approvals asked in workers are held here
        self.durable = durable  # the daemon's ledger sync
        self._asked: dict[tuple[int, int], asyncio.Task[None]] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.controls: list[socket.socket] = []
        self.inboxes: list[_Inbox] = []
        self.failed: str | None = None
        self.handed = [0] * config.proxy.workers  # connections handed to each worker
        self._turn = itertools.cycle(range(config.proxy.workers))
        self._accepts: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def start(self) -> None:
        """Start every worker and return once each serves; raises ApplianceError (after
        stopping those started) if one cannot start."""
        level = logging.getLevelName(logging.getLogger().level).lower()
        try:
            for index, ledger in enumerate(self.ledgers):
                ours, theirs = _control_pair()
                fds = (theirs.fileno(), ledger.fileno())
                proc = subprocess.Popen(
                    # -P as for the ledger writer: no package from the working directory
                    [
                        sys.executable,
                        "-P",
                        "-c",
                        "from appliance.proxy.workers import worker_main; worker_main()",
                    ],
                    pass_fds=fds,
                    env=dict(os.environ, APPLIANCE_WORKER_FD=str(theirs.fileno())),
                    stdin=subprocess.DEVNULL,
                )
                setup = WorkerSetup(
                    index=index,
                    config=self.config,
                    mask_key=self.mask_key,
                    grace=self.grace,
                    ledger=ledger.fileno(),  # pass_fds keeps the numbers
                    log_level=level,
                )
                theirs.close()
                ledger.close()  # the worker's now: the writer sees its end when it exits
                self.procs.append(proc)
                self.controls.append(ours)
                self.inboxes.append(_Inbox(ours))
                ours.sendall(pickle.dumps(setup))
            for index, control in enumerate(self.controls):
                got = await asyncio.wait_for(
                    asyncio.to_thread(control.recv, 64), timeout=_START_TIMEOUT
                )
                if got != _READY:
                    code = self.procs[index].poll()
                    raise ApplianceError(
                        f"proxy worker {index} did not start (exit status {code}; see its log)"
                    )
        except BaseException:
            self.stop()
            await asyncio.to_thread(self._reap, 10.0)
            raise
        loop = asyncio.get_running_loop()
        for index, control in enumerate(self.controls):
            control.setblocking(False)
            loop.add_reader(control.fileno(), self._from_worker, index)

    async def serve(self) -> None:
        """Wait until every worker has exited; one that exits before :meth:`stop` makes the
        daemon stop (``on_exit``) and is reported in :attr:`failed`."""
        loop = asyncio.get_running_loop()
        if not self._stopping:
            self._accepts = [
                asyncio.create_task(self._accept(i, sock)) for i, sock in enumerate(self.listeners)
            ]
        waits = {loop.run_in_executor(None, p.wait): i for i, p in enumerate(self.procs)}
        pending = set(waits)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                index, code = waits[fut], fut.result()
                if not self._stopping or code != 0:
                    why = f"proxy worker {index} (pid {self.procs[index].pid}) exited with {code}"
                    log.error(why)
                    self.failed = self.failed or why
                    self.on_exit()
        self._close_listeners()
        for task in list(self._asked.values()):
            task.cancel()
        for control in self.controls:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(control.fileno())
            control.close()

    def _from_worker(self, index: int) -> None:
        """A worker's messages: approvals asked and withdrawn (its end: the wait reports)."""
        control = self.controls[index]
        while True:
            try:
                data, fds = self.inboxes[index].receive()
            except (BlockingIOError, InterruptedError):
                return
            except (OSError, ApplianceError):
                data, fds = b"", []
            for fd in fds:  # a worker sends none
                os.close(fd)
            if not data:
                asyncio.get_running_loop().remove_reader(control.fileno())
                return
            tag, body = data[:1], data[1:]
            if tag == _ASK:
                token, fields = pickle.loads(body)
                key = (index, token)
                self._asked[key] = asyncio.create_task(self._ask(index, token, fields))
                self._asked[key].add_done_callback(functools.partial(self._done, key))
            elif tag == _WITHDRAW:
                asked = self._asked.get((index, pickle.loads(body)))
                if asked is not None:
                    asked.cancel()  # the broker records the withdrawal
            else:
                log.error("proxy worker %d sent an unknown control message %r", index, tag)

    def _done(self, key: tuple[int, int], _task: asyncio.Task[None]) -> None:
        self._asked.pop(key, None)

    async def _ask(self, index: int, token: int, fields: dict[str, Any]) -> None:
        """Hold a worker's statement with the daemon's broker (the approvals socket, the
        webhooks and the hub all see it, as a statement of the daemon's own) and answer."""
        reply: tuple[str, Any]
        try:
            if self.broker is None:
                raise ApprovalsUnavailable("approvals are not configured")
            outcome = await self.broker.request(self.broker.new_request(**fields))
            if self.durable is not None:
                # the approval's entries reach the writer before the statement goes on
                await self.durable()
            reply = ("outcome", outcome)
        except ApplianceError as exc:
            reply = ("error", str(exc))
        with contextlib.suppress(OSError):
            self.controls[index].send(_ANSWER + pickle.dumps((token, *reply)))

    async def _accept(self, index: int, sock: socket.socket) -> None:
        """Accept on listener ``index`` and hand each connection to the next worker alive."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                log.warning("accept on listener %d failed: %s", index, exc)
                await asyncio.sleep(0.1)
                continue
            try:
                self._hand_over(index, conn)
            finally:
                conn.close()  # the worker holds its own descriptor now

    def _hand_over(self, listener: int, conn: socket.socket) -> None:
        """To the workers in turn, skipping one that has exited or cannot take it (then the
        connection is closed: the client sees a refusal, never an unrecorded session)."""
        for _ in range(len(self.procs)):
            k = next(self._turn)
            if self.procs[k].poll() is not None:
                continue
            try:
                message = _CONN + _LISTENER.pack(listener)
                socket.send_fds(self.controls[k], [message], [conn.fileno()])
            except OSError as exc:
                log.warning("proxy worker %d did not take a connection: %s", k, exc)
                continue
            self.handed[k] += 1
            return
        log.error("no proxy worker took a connection on listener %d: closed", listener)

    def _close_listeners(self) -> None:
        for task in self._accepts:
            task.cancel()
        self._accepts = []
        for sock in self.listeners:
            sock.close()

    def stop(self) -> None:
        """SIGTERM to every worker still running: they finish their in-flight statements
        within the grace period and exit; a worker that outlives grace plus a margin is
        killed (:meth:`serve` then reports it)."""
        if self._stopping:
            return
        self._stopping = True
        self._close_listeners()  # new clients are refused from now on
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_later(self.grace + _EXIT_MARGIN, self._kill)

    def _kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                log.error("proxy worker pid %d outlived its grace period: killed", proc.pid)
                proc.kill()

    def _reap(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- the worker process -----------------------------------------------------------------------


class RelayedRequest:
    """A worker's approval request before the daemon's broker has made it (its id then)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields
        self.id = ""


class BrokerLink:
    """A worker's approvals: each request is held by the daemon's broker (see
    :meth:`WorkerPool._ask`), as the session shell's ``broker``."""

    def __init__(self, control: socket.socket, durable: Callable[[], Awaitable[None]]) -> None:
        self.control = control
        self.durable = durable
        self._tokens = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[tuple[str, Any]]] = {}

    def new_request(self, **fields: Any) -> RelayedRequest:
        return RelayedRequest(dict(fields))

    async def request(self, req: RelayedRequest) -> Outcome:
        """The outcome from the daemon's broker; raises ApprovalsUnavailable if it cannot
        be asked. Cancelled (the session ended): the daemon withdraws the request."""
        # The statement's own entries reach the writer before the approval's.
        await self.durable()
        token = next(self._tokens)
        future: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        try:
            try:
                self.control.send(_ASK + pickle.dumps((token, req.fields)))
            except OSError as exc:
                raise ApprovalsUnavailable(f"the daemon cannot be asked: {exc}") from None
            try:
                kind, value = await future
            except asyncio.CancelledError:
                with contextlib.suppress(OSError):
                    self.control.send(_WITHDRAW + pickle.dumps(token))
                raise
        finally:
            self._waiting.pop(token, None)
        if kind != "outcome":
            raise ApprovalsUnavailable(str(value))
        outcome: Outcome = value
        req.id = outcome.request.id
        return outcome

    def answered(self, body: bytes) -> None:
        token, kind, value = pickle.loads(body)
        future = self._waiting.get(token)
        if future is not None and not future.done():
            future.set_result((kind, value))

    def gone(self) -> None:
        """The daemon is gone: every waiting request ends unanswered."""
        for future in self._waiting.values():
            if not future.done():
                future.set_result(("error", "the daemon is gone"))


class Worker:
    """One worker process's proxy: serve until SIGTERM, the daemon's end, or a ledger failure."""

    def __init__(self, setup: WorkerSetup, control: socket.socket) -> None:
        self.setup = setup
        self.control = control
        self.sessions = itertools.count()
        self.served = 0
        self.stopping = False
        self.server: Any = None
        self.broker: BrokerLink | None = None
        self.inbox = _Inbox(control)

    async def run(self) -> int:
        # Imported here: the daemon module imports this one.
        from appliance.config.sections import parse_sections
        from appliance.daemon import build_proxy
        from appliance.ledger.remote import RemoteLedger
        from appliance.masking import Masker
        from appliance.prefilter_cache import PrefilterCache
        from appliance.proxy.flows import FlowResolverImpl

        setup, cfg = self.setup, self.setup.config
        sections = parse_sections(cfg)
        masker = Masker(
            sections.masking,
            hmac_key=setup.mask_key,
            prefilter_cache=PrefilterCache.from_environment(os.environ),
        )
        ledger = RemoteLedger.attach(
            socket.socket(fileno=setup.ledger), directory=cfg.ledger.dir, origin=cfg.ledger.origin
        )
        me = {"worker": setup.index, "pid": os.getpid()}
        try:
            if sections.policy is not None and sections.policy.approvers:
                self.broker = BrokerLink(self.control, ledger.sync)
            server, refusals = build_proxy(
                cfg,
                sections,
                ledger,
                masker,
                credentials_dir=os.environ.get("CREDENTIALS_DIRECTORY"),
                broker=self.broker,
                capture=False,
                resolver=FlowResolverImpl(cfg),
                durable=ledger.sync,
                new_session_id=self._new_session_id,
            )
            self.server = server
            server.take_handed_over()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_reader(self.control.fileno(), self._control_readable)
            async with asyncio.TaskGroup() as tg:
                serving = tg.create_task(server.serve())
                watch = tg.create_task(self._watch(ledger))
                await asyncio.sleep(0)  # the server's task group exists: hand-overs may come
                with collector.serving():  # frozen before "ready" (see the daemon)
                    ledger.append("proxy.worker.ready", data=me)
                    self.control.send(_READY)
                    log.info("proxy worker ready", extra={"fields": me})
                    await serving
                watch.cancel()
            loop.remove_reader(self.control.fileno())
            with contextlib.suppress(ApplianceError):
                refusals.flush()
            with contextlib.suppress(ApplianceError):
                ledger.append("proxy.worker.stopped", data={**me, "sessions": self.served})
        finally:
            failed = ledger.failed
            try:
                # Everything this worker appended reaches the writer before it exits: the
                # daemon's appliance.stop comes after it.
                await asyncio.to_thread(ledger.close)
            except ApplianceError as exc:
                failed = failed or exc
        if failed is not None:
            log.error("proxy worker %d: the ledger cannot record (%s)", setup.index, failed)
            return 1
        log.info("proxy worker stopped", extra={"fields": {**me, "sessions": self.served}})
        return 0

    def _new_session_id(self) -> str:
        # Random as in the single process (64 bits): unique across workers as within one.
        self.served = next(self.sessions) + 1
        return secrets.token_bytes(8).hex()

    def _control_readable(self) -> None:
        """Connections handed over by the daemon, and approvals' answers; the end of the
        control socket means the daemon is gone: stop."""
        while True:
            try:
                data, fds = self.inbox.receive()
            except (BlockingIOError, InterruptedError):
                return
            except (OSError, ApplianceError):
                data, fds = b"", []
            if not data and not fds:
                asyncio.get_running_loop().remove_reader(self.control.fileno())
                log.error("proxy worker %d: the daemon is gone; stopping", self.setup.index)
                if self.broker is not None:
                    self.broker.gone()
                self.stop()
                return
            conns = [socket.socket(fileno=fd) for fd in fds]
            if data[:1] == _CONN and len(conns) == 1 and self.server is not None:
                listener = _LISTENER.unpack(data[1 : 1 + _LISTENER.size])[0]
                self.server.hand_over(conns[0], listener)
                continue
            for conn in conns:  # pragma: no cover - one descriptor, with _CONN, per message
                conn.close()
            if data[:1] == _ANSWER and self.broker is not None:
                self.broker.answered(data[1:])

    async def _watch(self, ledger: Any) -> None:
        """A ledger that cannot record stops this worker at once (its sessions fail with
        it: every append raises); the daemon sees the exit and stops the rest."""
        while not self.stopping:
            await asyncio.sleep(0.05)
            if ledger.failed is not None:
                log.error(
                    "proxy worker %d: the ledger cannot record (%s): stopping",
                    self.setup.index,
                    ledger.failed,
                )
                self.stop(grace=0.0)
                return

    def stop(self, grace: float | None = None) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self.server is not None:
            self.server.stop(self.setup.grace if grace is None else grace)


def worker_main() -> None:
    """Entry point of a worker process (started by :class:`WorkerPool`)."""
    from appliance.daemon import setup_logging

    # Ctrl-C in a terminal reaches the whole process group: the daemon decides, and sends
    # SIGTERM. If the daemon dies, so does this worker (its listeners close with it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    control = socket.socket(fileno=int(os.environ.pop("APPLIANCE_WORKER_FD")))
    got = control.recv(_SETUP_MAX)
    if not got:
        os._exit(1)
    setup: WorkerSetup = pickle.loads(got)
    setup_logging(setup.log_level)
    control.setblocking(False)
    worker = Worker(setup, control)
    try:
        import uvloop

        code = uvloop.run(worker.run())
    except ImportError:  # pragma: no cover - uvloop is a dependency
        code = asyncio.run(worker.run())
    except ApplianceError as exc:
        log.error("proxy worker %d: %s", setup.index, exc)
        code = 1
    sys.stderr.flush()
    os._exit(code)


__all__ = ["LIMITS", "BrokerLink", "WorkerPool", "WorkerSetup", "worker_main"]
