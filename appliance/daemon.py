"""``appliance run``: the daemon that wires capture, policy, masking, approvals, the proxy and
the ledger together.

Start-up, in order (any failure stops the start with a clear error; nothing is served
half-configured):

1. config (already checked), policy, masking and identity sections parsed;
2. the ledger opened (recovery; a tampered history stops the start) and ``appliance.start``
   recorded, with a loud warning when policy runs in observe mode, and how the previous run
   ended (its last seq, and whether that was its ``appliance.stop``: a kill -9 or a crash
   leaves none);
3. capture (``--capture``): the daemon must run in ``capture.appliance_cgroup`` (the rules
   let marked traffic out from there only), netfilter rules installed/reconciled, eBPF
   attribution loaded (a failure is recorded as ``capture.bpf_failed`` and sessions run
   ``unattributed``); refused uses of the appliance's mark are recorded as
   ``capture.bypass_attempt``; with an ``identity`` section, the token issuers' keys loaded
   (``identity.keys_loaded``, or ``identity.keys_unavailable``: that issuer's jobs stay
   unverified until a fetch succeeds);
4. the approvals socket and webhooks, when the policy names approvers;
5. listeners bound, then "ready" (a log line, ``READY=1`` to systemd, and an optional
   ready file).

SIGTERM/SIGINT: stop accepting, finish in-flight statements, end sessions with 57P01,
record ``appliance.stop``, sign a final checkpoint and, with ``ledger.ship``, ship it all to
the fleet's bucket (:mod:`appliance.ledger.fleet.runner`; shipping also runs all along,
checkpoint by checkpoint). Capture rules stay in place (fail closed): only
``appliance capture remove`` removes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from appliance import __version__, _pure, capture, collector
from appliance.approvals import (
    ApprovalServer,
    Broker,
    SystemClock,
    WebhookNotifier,
    parse_approvals_transport,
)
from appliance.approvals.hub import HubRunner
from appliance.approvals.request import ApprovalRequest
from appliance.bucket import open_bucket
from appliance.config import Config, format_endpoint
from appliance.config.sections import Sections, parse_sections
from appliance.credentials import read_secret
from appliance.errors import ApplianceError
from appliance.identity import Outcome, annotate, boot_id
from appliance.ledger import LedgerWriter
from appliance.ledger.api import Ledger
from appliance.ledger.fleet.runner import BacklogGuard, ShipRunner
from appliance.ledger.fleet.ship import Shipper
from appliance.ledger.recovery import LastEntry
from appliance.ledger.remote import RemoteLedger
from appliance.ledger.sender import LedgerSender
from appliance.masking import EPHEMERAL, MaskCounts, Masker, MaskingConfig, key_record
from appliance.prefilter_cache import PrefilterCache
from appliance.proxy import registry
from appliance.proxy.flows import FlowResolverImpl, Identify
from appliance.proxy.refusals import RefusalLog
from appliance.proxy.server import ProxyServer
from appliance.proxy.services import SessionServices
from appliance.proxy.shell import ShellServices
from appliance.proxy.tls import upstream_context
from appliance.proxy.waits import ApprovalBroker
from appliance.proxy.workers import LIMITS, WorkerPool
from appliance.signing.keys import SigningKey

if TYPE_CHECKING:
    from appliance.identity import Verifier

log = logging.getLogger("appliance")
_LEDGER_WATCH = 0.5  # seconds between looks at the ledger writer's health
_REFUSALS_INTERVAL = 60.0  # seconds over which refused connections are counted
_LINK_SETTLE = 0.05  # seconds to let a burst of interface events pass before reconciling
_BYPASS_WATCH = 0.25  # seconds between reads of refused uses of the appliance's mark
_BYPASS_IN_FULL = 16  # bypass attempts recorded one by one per read; the rest are counted
_RTMGRP_LINK = 1  # rtnetlink multicast group of interface events (linux/rtnetlink.h)
# On stop, how long the last ship may take (systemd/appliance.service: TimeoutStopSec covers
# the sessions' grace period plus this).
FINAL_SHIP_TIMEOUT = 20.0


def _link_events(changed: asyncio.Event) -> socket.socket | None:
    """A netlink socket of interface events in this network namespace that sets
    ``changed``; None if it cannot be opened (the periodic reconcile remains)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        sock.bind((0, _RTMGRP_LINK))
        sock.setblocking(False)
    except OSError as exc:
        log.warning("no interface events (%s): reconciling every interval only", exc)
        return None

    def drain() -> None:
        try:
            while sock.recv(65536):
                changed.set()
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # ENOBUFS: events were dropped, so something changed
            changed.set()

    asyncio.get_running_loop().add_reader(sock.fileno(), drain)
    return sock


class JsonFormatter(logging.Formatter):
    """One JSON object per line: structured logs for journald and log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info and record.exc_info[1] is not None:
            out["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return json.dumps(out, default=str)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # sqlglot warns about MySQL syntax it reads loosely; the MySQL classifier checks the
    # statement kinds itself (appliance.policy._mysql), so those warnings are noise here.
    logging.getLogger("sqlglot").setLevel(logging.ERROR)


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.send(message.encode())


def hot_path() -> dict[str, str]:
    """Which build of the hot path serves (``appliance.start``'s ``hot_path``), said in the
    log too: the pure-Python build spends about twice the CPU per statement, so a runner
    image that did not compile it (or whose extensions are older than their sources, or
    incomplete) serves at about half the throughput, and should not do so unnoticed."""
    build, why = _pure.running()
    if build == "compiled":
        log.info("hot path: compiled (mypyc)")
        return {"build": build}
    if why == _pure.ASKED:
        log.info("hot path: pure Python (%s)", why)
    else:
        log.warning(
            "hot path: pure Python: %s; it spends about twice the CPU per statement "
            "(scripts/compile.py compiles it: make setup, packer/provision.sh)",
            why,
        )
    return {"build": build, "why": why}


def load_masking_key(
    config: MaskingConfig,
    credentials_dir: str | None,
    random_bytes: Callable[[int], bytes] = secrets.token_bytes,
) -> tuple[bytes, dict[str, Any]]:
    """The HMAC key for the hash style, and what ``appliance.start`` records about it (its
    source and id, see :mod:`appliance.masking._key`).

    The configured secret (a file or a systemd credential, one for the whole fleet), else a
    random key for this run: with ``key: ephemeral`` (recorded and logged as such), or when no
    style is ``hash`` and the key masks nothing. Raises SecretError if the secret cannot be
    read."""
    if config.key is not None:
        key = read_secret(config.key, credentials_dir=credentials_dir).encode()
        return key, key_record(key, config.key.describe(), ephemeral=False, used=config.uses_hash)
    key = random_bytes(32)
    if config.ephemeral_key:
        record = key_record(key, EPHEMERAL, ephemeral=True, used=config.uses_hash)
        log.warning(record["warning"])
        return key, record
    return key, key_record(key, "none configured (no style is hash)", ephemeral=False, used=False)


class Daemon:
    """The running appliance; see the module docstring."""

    def __init__(
        self,
        config: Config,
        *,
        capture: bool = False,
        ready_file: Path | None = None,
        approvals_socket: Path | None = None,
        grace: float = 30.0,
    ) -> None:
        self.config = config
        self.capture = capture
        self.ready_file = ready_file
        self.approvals_socket = approvals_socket
        self.grace = grace
        self.credentials_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        self.server: ProxyServer | None = None
        self.workers: WorkerPool | None = None  # proxy.workers > 1
        self.ledger: Ledger | None = None
        self._stopping = False

    async def run(self) -> None:
        started = time.monotonic()
        sections = parse_sections(self.config)
        cfg = self.config
        key_text = read_secret(cfg.ledger.key, credentials_dir=self.credentials_dir)
        key = SigningKey.from_skey(key_text)
        self._key = key  # also signs approval requests posted to the hub
        opener = RemoteLedger.open if cfg.ledger.writer == "process" else LedgerWriter.open
        if cfg.proxy.workers > 1 and self.capture:
            # Attribution (eBPF maps, the CI token verifier) lives in one process.
            raise ApplianceError(
                "appliance run --capture with proxy.workers > 1 is not supported yet "
                "(attribution runs in one process); use proxy.workers: 1"
            )
        more: dict[str, Any] = {}
        if cfg.proxy.workers > 1:
            more["workers"] = cfg.proxy.workers
        opened: RemoteLedger | LedgerWriter = opener(
            cfg.ledger.dir,
            origin=cfg.ledger.origin,
            key=key,
            checkpoint_interval=cfg.ledger.checkpoint_interval,
            checkpoint_entries=cfg.ledger.checkpoint_entries,
            **more,
        )
        previous = opened.last_at_open
        self.ledger = ledger = opened
        shipping: ShipRunner | None = None
        try:
            shipping = self._ship_runner(ledger)
            await self._serve(ledger, sections, started, previous, shipping)
        finally:
            # The handlers _serve installed stay while the last checkpoint is signed and
            # shipped: a second SIGTERM (an impatient supervisor, `kill` twice) is logged,
            # not obeyed; the service manager's SIGKILL after TimeoutStopSec stays the
            # backstop.
            try:
                await self._finish(ledger, shipping)
            finally:
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    async def _finish(self, ledger: Ledger, shipping: ShipRunner | None) -> None:
        """Record the stop, sign the last checkpoint, ship everything (``ledger.ship``)."""
        cfg = self.config
        try:
            with contextlib.suppress(ApplianceError):
                stop: dict[str, Any] = {"reason": "signal" if self._stopping else "error"}
                if self.workers is not None and self.workers.failed is not None:
                    stop = {"reason": "error", "error": self.workers.failed}
                ledger.append("appliance.stop", data=stop)
        finally:
            ledger.close()
            log.info("stopped; ledger closed with a final checkpoint")
            if shipping is not None:
                # Everything recorded goes to the bucket before the process exits (the unit
                # gives this the time: TimeoutStopSec, and stops before the network).
                shipped = await asyncio.to_thread(shipping.final, FINAL_SHIP_TIMEOUT)
                s = shipping.status
                if shipped:
                    log.info(
                        "final ship: the bucket holds the ledger up to size %d", s.shipped_size
                    )
                else:
                    log.error(
                        "final ship incomplete: %d entries not in %s (%s); they stay in %s",
                        s.backlog,
                        s.to,
                        s.last_error,
                        cfg.ledger.dir,
                    )

    def _ship_runner(self, ledger: Ledger) -> ShipRunner | None:
        """The shipping loop, if ``ledger.ship`` is configured (its credentials are read
        now: a missing secret stops the start)."""
        ship = self.config.ledger.ship
        if ship is None:
            return None
        bucket = open_bucket(ship.bucket, credentials_dir=self.credentials_dir)
        shipper = Shipper(self.config.ledger.dir, bucket, lock=ship.object_lock)
        return ShipRunner(shipper, ship, record=lambda t, d: ledger.append(t, data=d))

    async def _serve(
        self,
        ledger: Ledger,
        sections: Sections,
        started: float,
        previous: LastEntry | None,
        shipping: ShipRunner | None = None,
    ) -> None:
        cfg = self.config
        policy, masking = sections.policy, sections.masking
        mask_key, key_source = load_masking_key(masking, self.credentials_dir)
        t0 = time.monotonic()
        masker = Masker(
            masking,
            hmac_key=mask_key,
            prefilter_cache=PrefilterCache.from_environment(os.environ),
        )
        log.info(
            "masking pre-filter %s in %.2f s",
            {True: "loaded", False: "compiled", None: "made (re)"}[masker.prefilter_loaded],
            time.monotonic() - t0,
        )
        start: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "config": cfg.source,
            "targets": sorted(cfg.targets),
            "capture": self.capture,
            "masking_key": key_source,
            "durability": cfg.ledger.durability,
            **(
                {"workers": {"count": cfg.proxy.workers, "limits": LIMITS}}
                if cfg.proxy.workers > 1
                else {}
            ),
            "policy": policy.start_record() if policy is not None else None,
        }
        if policy is None:
            log.warning("no policy section: every statement is allowed (and recorded)")
            start["warning"] = "no policy configured: every statement is allowed and recorded"
        elif policy.warning:
            log.warning(policy.warning)
            start["warning"] = policy.warning
        if cfg.proxy.workers > 1:
            log.warning(LIMITS)
        start["hot_path"] = hot_path()
        start["previous_run"] = ended = previous_run(previous)
        if previous is not None and ended is not None and not ended["stopped_cleanly"]:
            log.warning(
                "the previous run did not stop cleanly: its last entry is #%d (%s, %s), "
                "not appliance.stop (killed or crashed)",
                previous.seq,
                previous.type,
                previous.ts,
            )
        ledger.append("appliance.start", data=start)

        identify: Identify | None = None
        original_dst = target_for = None
        reconcile: Callable[[], None] | None = None
        attribution: CaptureRuntime | None = None
        if self.capture:
            identity = sections.identity
            verifier = None
            if identity is not None:
                from appliance.identity import Verifier  # joserfc: only with issuers

                verifier = Verifier(
                    identity, boot_id=boot_id(), record=lambda t, d: ledger.append(t, data=d)
                )
                await verifier.start()
            attribution = CaptureRuntime(
                cfg,
                record=lambda t, d, identity=None: ledger.append(t, data=d, identity=identity),
                verifier=verifier,
                mask=lambda text: masker.for_target("").mask_text(text, MaskCounts()),
            )
            identify = attribution.identify
            original_dst = capture.original_dst
            # The reconcile loop's resolver: listener and rules agree on host-name targets.
            target_for = functools.partial(
                capture.target_for, resolver=attribution.reconciler.resolver
            )
            reconcile = attribution.reconcile

        broker: Broker | None = None
        hub: HubRunner | None = None
        approvals_server: ApprovalServer | None = None
        notifier: WebhookNotifier | None = None
        if policy is not None and policy.approvers:
            transport = sections.approvals or parse_approvals_transport(None)
            notifier = WebhookNotifier(
                transport.webhooks, record=lambda t, d: ledger.append(t, data=d)
            )
            from datetime import timedelta

            hubs: list[HubRunner] = []  # the hub needs the broker, the broker its hooks

            def record_approval(type: str, data: dict[str, Any]) -> None:
                _record_approval(ledger, type, data)
                for h in hubs:
                    h.observe(type, data)

            def notify(req: ApprovalRequest) -> None:
                notifier.notify(req)
                for h in hubs:
                    h.notify(req)

            broker = Broker(
                approver_keys=policy.approvers,
                clock=SystemClock(),
                rng=os.urandom,
                record=record_approval,
                notify=notify,
                timeout=timedelta(seconds=policy.approval_timeout),
            )
            approvals_server = ApprovalServer(broker, self.approvals_socket or transport.socket)
            approvals_server.bind()
            if transport.hub is not None:
                hub = HubRunner(
                    open_bucket(transport.hub.bucket, credentials_dir=self.credentials_dir),
                    broker,
                    self._key,
                    cfg.ledger.origin,
                    record=lambda t, d: ledger.append(t, data=d),
                    poll_interval=transport.hub.poll_interval,
                )
                hubs.append(hub)

        sessions_ledger: Ledger = ledger
        if shipping is not None and shipping.config.on_backlog == "refuse":
            sessions_ledger = BacklogGuard(ledger, shipping)
        server, refusals = build_proxy(
            cfg,
            sections,
            sessions_ledger,
            masker,
            credentials_dir=self.credentials_dir,
            broker=broker,
            capture=self.capture,
            resolver=FlowResolverImpl(
                cfg, identify=identify, original_dst=original_dst, target_for=target_for
            ),
            durable=ledger.sync,
            records=ledger,
        )
        self.server = server
        bound = server.bind()
        if cfg.proxy.workers > 1:
            if not isinstance(ledger, RemoteLedger):  # config check refuses writer: thread
                raise ApplianceError("proxy.workers > 1 needs ledger.writer: process")
            self.workers = WorkerPool(
                cfg,
                listeners=server.sockets,
                ledgers=ledger.worker_sockets,
                mask_key=mask_key,
                grace=self.grace,
                on_exit=self.stop,
                broker=broker,
                durable=ledger.sync,
            )

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        try:
            if self.workers is not None:
                # Outside the task group: a worker that cannot start stops the start with
                # the ApplianceError itself, not inside an exception group.
                await self.workers.start()
            async with asyncio.TaskGroup() as tg:
                if self.workers is not None:
                    # The daemon accepts on the listeners and hands each connection to a
                    # worker; they close when it stops or a worker fails (fail closed).
                    serving = tg.create_task(self.workers.serve())
                else:
                    serving = tg.create_task(server.serve())
                helpers: list[asyncio.Task[None]] = []
                if notifier is not None:
                    tg.create_task(notifier.run())
                if approvals_server is not None:
                    helpers.append(tg.create_task(approvals_server.serve()))
                if reconcile is not None:
                    helpers.append(tg.create_task(self._reconcile_loop(reconcile)))
                if attribution is not None and attribution.attribution is not None:
                    helpers.append(tg.create_task(self._bypass_loop(attribution)))
                helpers.append(tg.create_task(self._watch_ledger(ledger)))
                helpers.append(tg.create_task(self._flush_refusals(refusals)))
                if hub is not None:
                    helpers.append(tg.create_task(hub.run()))
                # Frozen before "ready": the one full collection is part of the start.
                with collector.serving():
                    elapsed = time.monotonic() - started
                    listening = [format_endpoint(h, p) for h, p in bound]
                    ledger.append(
                        "appliance.ready",
                        data={"listening": listening, "startup_ms": round(elapsed * 1000)},
                    )
                    # Ready means the start of this run is on disk under a signed checkpoint.
                    await asyncio.to_thread(ledger.flush, 30)
                    if shipping is not None:
                        # Shipping starts from there: its first round has that checkpoint
                        # to ship (started beside the flush, it could find none, call the
                        # bucket caught up and wait a whole interval before its first try).
                        shipping.starting()
                        helpers.append(tg.create_task(shipping.run()))
                    log.info(
                        "ready",
                        extra={
                            "fields": {"listening": listening, "startup_ms": round(elapsed * 1000)}
                        },
                    )
                    sd_notify("READY=1")
                    if self.ready_file is not None:
                        self.ready_file.write_text(
                            json.dumps({"pid": os.getpid(), "listening": listening}) + "\n"
                        )
                    await serving
                for task in helpers:
                    task.cancel()
                if notifier is not None:
                    notifier.close()
        finally:
            # The signal handlers stay until run() has finished the ledger (see there).
            if attribution is not None:
                attribution.close()
        if self.workers is not None and self.workers.failed is not None:
            raise ApplianceError(self.workers.failed)

    async def _watch_ledger(self, ledger: Ledger) -> None:
        """A ledger that cannot record (an fsync error, a writer process gone) fails every
        session; the daemon then stops, and exits with the error, so that the service
        manager starts it again with a writer that recovers the ledger. Meanwhile the
        capture rules stay: protected targets refuse connections."""
        while not self._stopping:
            await asyncio.sleep(_LEDGER_WATCH)
            if ledger.failed is not None:
                log.error(
                    "the ledger cannot record (%s): stopping; sessions are refused until the "
                    "appliance is restarted",
                    ledger.failed,
                )
                self.stop()
                return

    async def _flush_refusals(self, refusals: RefusalLog) -> None:
        """Record the counts of refused connections every interval (and once at stop)."""
        try:
            while True:
                await asyncio.sleep(_REFUSALS_INTERVAL)
                with contextlib.suppress(ApplianceError):
                    refusals.flush()
        finally:
            with contextlib.suppress(ApplianceError):
                refusals.flush()

    async def _reconcile_loop(self, reconcile: Callable[[], None]) -> None:
        """Reconcile every ``reconcile_interval``, and at once when a network interface
        appears or changes (a container's veth gets the egress guard in milliseconds,
        not at the next tick)."""
        changed = asyncio.Event()
        links = _link_events(changed)
        try:
            while not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), self.config.capture.reconcile_interval)
                if changed.is_set():
                    await asyncio.sleep(_LINK_SETTLE)  # one reconcile for a burst of events
                    changed.clear()
                try:
                    await asyncio.to_thread(reconcile)
                except ApplianceError as exc:
                    log.error("capture reconcile failed: %s", exc)
        finally:
            if links is not None:
                asyncio.get_running_loop().remove_reader(links.fileno())
                links.close()

    async def _bypass_loop(self, runtime: CaptureRuntime) -> None:
        """Record refused uses of the appliance's mark soon after they happen (the process
        that tried is then still there to be named)."""
        while not self._stopping:
            await asyncio.sleep(_BYPASS_WATCH)
            runtime.record_bypass_attempts()

    def stop(self) -> None:
        if self._stopping:
            log.warning("already stopping: finishing the sessions, the ledger and its ship")
            return
        self._stopping = True
        sd_notify("STOPPING=1")
        log.info("stopping: finishing in-flight statements")
        if self.workers is not None:
            self.workers.stop()
        elif self.server is not None:
            self.server.stop(self.grace)


def build_proxy(
    cfg: Config,
    sections: Sections,
    ledger: Ledger,
    masker: Masker,
    *,
    credentials_dir: str | None,
    broker: ApprovalBroker | None,
    capture: bool,
    resolver: FlowResolverImpl,
    durable: Callable[[], Awaitable[None]],
    new_session_id: Callable[[], str] | None = None,
    records: Ledger | None = None,
) -> tuple[ProxyServer, RefusalLog]:
    """The proxy server and its refusal counts, as the daemon's process or a proxy worker
    (:mod:`appliance.proxy.workers`) runs them: client TLS contexts, each protocol's
    ``prepare``, the session services. ``ledger`` is what sessions append to (a
    :class:`BacklogGuard` may refuse them); ``records`` what the prepare hooks and the
    refusal counts append to (default: ``ledger``); ``durable`` the write-ahead sync."""
    records = records if records is not None else ledger
    policy, masking = sections.policy, sections.masking
    client_tls: dict[str, ssl.SSLContext] = {}
    for target in cfg.targets.values():
        if target.client_tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(target.client_tls.cert), str(target.client_tls.key))
            client_tls[target.name] = context

    shared: dict[str, Any] = {}
    for name in sorted({t.protocol for t in cfg.targets.values()}):
        spec = registry.get(name)
        if spec.prepare is not None:
            shared[name] = spec.load(spec.prepare)(cfg, lambda t, d: records.append(t, data=d))

    any_target = masker.for_target("")  # detectors only: refusals name no column
    refusals = RefusalLog(
        records, clock=time.time, mask=lambda text: any_target.mask_text(text, MaskCounts())
    )
    services = SessionServices(
        ledger=ledger,
        policy=policy,
        masker=masker,
        approvals=broker is not None,
        record_rows=cfg.ledger.record_rows,
        max_result_bytes=cfg.ledger.max_result_bytes,
        clock=time.time,
        monotonic=time.monotonic,
        random_bytes=secrets.token_bytes,
        read_secret=functools.partial(read_secret, credentials_dir=credentials_dir),
        upstream_tls=upstream_context,
        client_tls=client_tls,
        response_masking=masking.response_masking if masking.response else None,
        shared=shared,
        write_ahead=cfg.ledger.durability == "write-ahead",
        refusals=refusals,
    )
    shell = ShellServices(
        mark=cfg.capture.mark if capture else 0,
        broker=broker,
        durable=durable,
        # a writer process's channel (a thread writer has none): issue 19's backpressure
        backlog=records if isinstance(records, LedgerSender) else None,
    )
    server = ProxyServer(
        cfg, services, resolver, shell=shell, transparent=capture, new_session_id=new_session_id
    )
    return server, refusals


class Record(Protocol):
    def __call__(
        self, type: str, data: dict[str, Any], identity: Mapping[str, Any] | None = None
    ) -> None: ...


class CaptureRuntime:
    """Capture while the daemon runs: rules installed at start and reconciled, eBPF
    attribution loaded (or recorded as failed), identities resolved per session (and the
    job's CI token verified when ``verifier`` is given), refused uses of the appliance's mark
    recorded.

    Raises CaptureError if the daemon does not run in ``capture.appliance_cgroup``.
    """

    def __init__(
        self,
        config: Config,
        *,
        record: Record,
        verifier: Verifier | None = None,
        mask: Callable[[str], str] | None = None,
    ) -> None:
        self.config = config
        self.record = record
        self.verifier = verifier
        own = capture.require_own_cgroup(config.capture.appliance_cgroup)
        report = capture.install(config)
        record(
            "capture.rules_installed",
            {
                **report.to_dict(),
                "appliance_cgroup": config.capture.appliance_cgroup,
                "running_in": own,
                "conntrack_zone": config.capture.conntrack_zone,
            },
        )
        self.reconciler = capture.Reconciler(config)
        self.cache = capture.IdentityCache(mask=mask)
        self.attribution: capture.Attribution | None = None
        self.unattributed_reason = "eBPF attribution disabled in the config"
        self._lost = 0
        self._secrets = capture.appliance_secrets(config)
        self._privileged: dict[tuple[int, str, str], None] = {}
        if config.capture.bpf:
            try:
                self.attribution = capture.Attribution.from_config(config)
            except capture.AttributionUnavailable as exc:
                self.unattributed_reason = f"eBPF attribution failed to load: {exc}"
                log.error(self.unattributed_reason)
                record("capture.bpf_failed", {"reason": str(exc)})
            else:
                record(
                    "capture.bpf_attached",
                    {"cgroup": str(config.capture.cgroup or "(cgroup v2 root)")},
                )
        self.check_jobs()

    async def identify(self, peer: tuple[str, int], local: tuple[str, int]) -> Mapping[str, Any]:
        owner = self.attribution.lookup(peer[0], peer[1]) if self.attribution else None
        if self.attribution is None:
            reason = self.unattributed_reason
        else:
            reason = "no eBPF record of this connection (opened outside the attributed cgroup?)"
        found = capture.resolve_identity(owner, cache=self.cache, reason=reason)
        if self.verifier is None:
            return annotate(found, None)
        if owner is None:
            why = {"status": "absent", "reason": "unattributed: no process to read a token from"}
            return annotate(found, Outcome("absent", why))
        _pid, environ = capture.job_environ(owner, self.verifier.variables, cache=self.cache)
        return await self.verifier.identify(found, environ)

    def record_bypass_attempts(self) -> None:
        """Record each connect() that eBPF refused for carrying the appliance's mark from
        outside its cgroup (see :func:`bypass_entries`)."""
        if self.attribution is None:
            return
        attempts = self.attribution.bypass_attempts()
        for owner in attempts[:_BYPASS_IN_FULL]:
            log.warning(
                "bypass attempt refused: pid %d (%s, uid %d) connected to %s with the "
                "appliance's mark",
                owner.tgid,
                owner.comm,
                owner.uid,
                format_endpoint(*owner.dst),
            )
        for data, identity in bypass_entries(
            attempts,
            self.config,
            identify=lambda owner: capture.resolve_identity(owner, cache=self.cache),
            resolver=self.reconciler.resolver,
        ):
            self.record("capture.bypass_attempt", data, identity)

    def reconcile(self) -> None:
        """Runs in a worker thread: restore rules, count lost attribution events, and record
        each job process newly found privileged (root, a dangerous capability, access to
        the appliance's secrets: see :mod:`appliance.capture._privileges`)."""
        for change in self.reconciler.check_and_repair():
            log.warning("capture rule restored: %s", change.to_dict())
            self.record("capture.rules_restored", change.to_dict())
        self.check_jobs()
        if self.attribution is not None:
            lost = self.attribution.lost_events()
            if lost > self._lost:
                self.record("capture.events_lost", {"lost": lost - self._lost, "total": lost})
                self._lost = lost

    def check_jobs(self) -> None:
        jobs = capture.check_jobs(
            capture.jobs_cgroup(self.config),
            secrets=self._secrets,
            ledger=self.config.ledger.dir,
            exclude=(os.getpid(),),
        )
        for finding in jobs.findings:
            seen = (finding.pid, finding.problem, finding.detail)
            if seen in self._privileged:
                continue
            self._privileged[seen] = None
            while len(self._privileged) > 4096:
                self._privileged.pop(next(iter(self._privileged)))
            log.warning("privileged job process: %s", finding.to_dict())
            self.record("capture.job_privileged", {**finding.to_dict(), "cgroups": jobs.cgroups})

    def close(self) -> None:
        if self.attribution is not None:
            self.attribution.close()
            self.attribution = None


def bypass_entries(
    attempts: Sequence[capture.FlowOwner],
    config: Config,
    *,
    identify: Callable[[capture.FlowOwner], Mapping[str, Any]],
    resolver: Callable[[str], Sequence[str]] | None = None,
) -> list[tuple[dict[str, Any], Mapping[str, Any] | None]]:
    """The ``capture.bypass_attempt`` entries (data, identity) for refused uses of the
    appliance's mark: one per attempt, who (``identify``) and where to; past
    ``_BYPASS_IN_FULL`` in one read, a single entry counts the rest (a loop of attempts must
    not flood the ledger)."""
    out: list[tuple[dict[str, Any], Mapping[str, Any] | None]] = []
    for owner in attempts[:_BYPASS_IN_FULL]:
        target = capture.target_for(config, *owner.dst, resolver=resolver)
        data = {
            "dst": format_endpoint(*owner.dst),
            "target": target.name if target is not None else None,
            "mark": f"{config.capture.mark:#x}",
            "refused": "connect() refused by eBPF (EPERM): the appliance's mark from outside "
            "the appliance's cgroup",
        }
        out.append((data, identify(owner)))
    rest = attempts[_BYPASS_IN_FULL:]
    if rest:
        more = {
            "more": len(rest),
            "pids": sorted({o.tgid for o in rest})[:32],
            "dsts": sorted({format_endpoint(*o.dst) for o in rest})[:32],
        }
        out.append((more, None))
    return out


def previous_run(last: LastEntry | None) -> dict[str, Any] | None:
    """How the previous run ended, for ``appliance.start``: the seq, type and time of the
    ledger's last entry, and whether that was an ``appliance.stop`` (a run killed with
    SIGKILL, or crashed, leaves none). None for a new ledger."""
    if last is None:
        return None
    return {
        "last_seq": last.seq,
        "last_type": last.type,
        "last_ts": last.ts,
        "stopped_cleanly": last.type == "appliance.stop",
    }


def _record_approval(ledger: Ledger, type: str, data: dict[str, Any]) -> None:
    """Approval records belong to the session that holds the statement: file them there,
    so that `ledger show/replay SESSION` tell the whole story."""
    session = data.get("session")
    ledger.append(
        type,
        session=session if isinstance(session, str) else None,
        target=data.get("target") if isinstance(data.get("target"), str) else None,
        account=data.get("account") if isinstance(data.get("account"), str) else None,
        data=data,
    )


def run(config: Config, **kwargs: Any) -> None:
    """Run the daemon until a signal; raises ApplianceError when it cannot start."""
    daemon = Daemon(config, **kwargs)
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    runner(daemon.run())


__all__ = [
    "Daemon",
    "JsonFormatter",
    "build_proxy",
    "bypass_entries",
    "previous_run",
    "run",
    "sd_notify",
    "setup_logging",
]
