"""Announcing approval requests by webhook: a JSON POST to each configured URL.

The broker calls :meth:`WebhookNotifier.notify` (never blocks: it only queues); the
notifier's :meth:`~WebhookNotifier.run` coroutine, started in the task group of whoever owns
the broker, delivers each request to every URL concurrently over HTTP/1.1 (h11 on asyncio
streams; https with the system trust store or a given SSL context). Each attempt has a
timeout; network errors, 5xx, 408 and 429 are retried a few times. A delivery that still
fails is logged and recorded as ``approval.notify_failed``; it never holds up the approval,
which can still be found with ``appliance approvals list``.

The payload is :meth:`ApprovalRequest.to_dict` (masked statement, no secrets) with
``"type": "approval.requested"``. Webhook URLs often carry a token (chat services put it in
the path), so logs and records name a webhook only by scheme, host and port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

import h11

from appliance import __version__
from appliance.approvals.broker import RecordFn
from appliance.approvals.request import ApprovalRequest

__all__ = ["WebhookNotifier", "WebhookTarget", "redact_url", "webhook_payload"]

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 429})
_MAX_QUEUE = 1000


@dataclass(frozen=True)
class WebhookTarget:
    """One webhook: an http(s) URL, the timeout of one attempt (seconds), retries after it."""

    url: str
    timeout: float = 5.0
    retries: int = 2


def redact_url(url: str) -> str:
    """``scheme://host:port`` of a URL: what may be logged without leaking a token."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{_port(parts)}"


def _port(parts: urllib.parse.SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def webhook_payload(req: ApprovalRequest) -> bytes:
    """The JSON body POSTed for a request."""
    payload: dict[str, object] = {"type": "approval.requested", **req.to_dict()}
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")


class _DeliveryError(Exception):
    """One attempt failed; ``retry`` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class WebhookNotifier:
    """Delivers approval requests to webhooks from inside :meth:`run`.

    ``retry_delay`` is the pause before the first retry in seconds (doubling after that).
    ``ssl_context`` defaults to :func:`ssl.create_default_context`.
    """

    def __init__(
        self,
        targets: Sequence[WebhookTarget],
        *,
        record: RecordFn,
        ssl_context: ssl.SSLContext | None = None,
        retry_delay: float = 1.0,
    ) -> None:
        self.targets = tuple(targets)
        self.record = record
        self.retry_delay = retry_delay
        self._ssl = ssl_context
        self._queue: asyncio.Queue[ApprovalRequest | None] = asyncio.Queue()
        self._closed = False

    def notify(self, req: ApprovalRequest) -> None:
        """Queue ``req`` for delivery (the broker's ``notify``). Never blocks: if the queue
        is full the announcement is dropped, logged and recorded."""
        if not self.targets:
            return
        if self._closed:
            log.error("webhook: notifier closed, request %s not announced", req.id)
            return
        if self._queue.qsize() < _MAX_QUEUE:
            self._queue.put_nowait(req)
        else:
            log.error("webhook: %d announcements queued, dropping request %s", _MAX_QUEUE, req.id)
            self.record(
                "approval.notify_failed",
                {"id": req.id, "webhook": "*", "attempts": 0, "error": "announcement queue full"},
            )

    def close(self) -> None:
        """Take no more requests; :meth:`run` returns once the queued ones are delivered."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)

    async def run(self) -> None:
        """Deliver queued requests until :meth:`close` (or cancellation)."""
        async with asyncio.TaskGroup() as tg:
            while (req := await self._queue.get()) is not None:
                for target in self.targets:
                    tg.create_task(self._deliver(target, req))

    async def _deliver(self, target: WebhookTarget, req: ApprovalRequest) -> None:
        body = webhook_payload(req)
        where = redact_url(target.url)
        attempts = 0
        delay = self.retry_delay
        while True:
            attempts += 1
            try:
                async with asyncio.timeout(target.timeout):
                    status = await self._post(target.url, body)
                if 200 <= status < 300:
                    log.info("webhook %s: request %s announced (HTTP %d)", where, req.id, status)
                    return
                retry = status >= 500 or status in _RETRY_STATUS
                error = _DeliveryError(f"HTTP {status}", retry=retry)
            except TimeoutError:
                error = _DeliveryError(f"no answer within {target.timeout:g}s")
            except _DeliveryError as exc:
                error = exc
            except (OSError, h11.ProtocolError) as exc:
                error = _DeliveryError(f"{type(exc).__name__}: {exc}")
            if not error.retry or attempts > target.retries:
                break
            log.info("webhook %s: attempt %d failed (%s), retrying", where, attempts, error)
            await asyncio.sleep(delay)
            delay *= 2
        log.warning("webhook %s: request %s not announced: %s", where, req.id, error)
        self.record(
            "approval.notify_failed",
            {"id": req.id, "webhook": where, "attempts": attempts, "error": str(error)},
        )

    async def _post(self, url: str, body: bytes) -> int:
        """POST ``body`` to ``url``; return the final status code (1xx skipped)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _DeliveryError(f"not an http(s) URL: {redact_url(url)}", retry=False)
        tls: ssl.SSLContext | None = None
        if parts.scheme == "https":
            tls = self._ssl if self._ssl is not None else ssl.create_default_context()
        host = parts.hostname
        reader, writer = await asyncio.open_connection(
            host, _port(parts), ssl=tls, server_hostname=host if tls else None
        )
        try:
            conn = h11.Connection(h11.CLIENT)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            netloc_host = f"[{host}]" if ":" in host else host
            headers = [
                ("Host", f"{netloc_host}:{parts.port}" if parts.port else netloc_host),
                ("User-Agent", f"appliance/{__version__}"),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
            ]
            for event in (
                h11.Request(method="POST", target=path, headers=headers),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                writer.write(conn.send(event) or b"")
            await writer.drain()
            while True:
                got = conn.next_event()
                if got is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(got, h11.Response):
                    return got.status_code
                elif isinstance(got, h11.ConnectionClosed):
                    raise _DeliveryError("connection closed before a response")
                # InformationalResponse (100 Continue...): read on
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
