"""Approvals through the fleet's bucket: runners post signed requests, approvers post signed
decisions, runners poll for them (issue 15). No server of our own, no inbound connection.

Where it sits: beside the local socket and the webhooks, a transport of the
:class:`~appliance.approvals.broker.Broker`. On a runner, :class:`HubRunner` posts each
request the broker announces (``notify``), polls the bucket for decisions on the requests the
broker holds and hands each one to :meth:`Broker.submit` (which applies exactly the checks it
applies to the socket: approver key named by the rule, request pending, statement hash,
expiry), posts a receipt for each decision and an outcome when a request closes. On an
approver's machine, :class:`HubClient` lists the requests, checks that each is signed by a
fleet ledger key, and posts decisions (``appliance approvals ... --hub s3://...``).

Layout under ``s3://BUCKET/PREFIX`` (every object written once; ``DAY`` is the request's
creation date, UTC, so that listing recent requests reads a day or two, not all history)::

    approvals/DAY/ID/request              the request, signed by the runner's ledger key
    approvals/DAY/ID/decision.<h>         a decision, signed by an approver (h: 16 hex digits
                                          of the note's SHA-256)
    approvals/DAY/ID/receipt.<h>          the runner's answer to decision.<h> (signed)
    approvals/DAY/ID/outcome              how the request closed (signed by the runner)

Each runner object is a C2SP signed note whose text is a header line and one line of JSON
(ASCII): ``appliance/approval-request/v1`` (the request as :meth:`ApprovalRequest.to_dict`
plus the log's ``origin``), ``appliance/approval-receipt/v1`` (``id``, ``decision``: the
key, ``accepted``, ``reason``, ``detail``), ``appliance/approval-outcome/v1`` (``id``,
``state``, ``approver``).

The bucket is untrusted. A decision whoever can write there forged is refused by the broker
and recorded (``approval.rejected``), as on the socket. A request not signed by a ledger key
the approver trusts, or whose object was overwritten or deleted, is refused by the approver's
command (never shown as pending, never signed); a runner that finds its own request object
overwritten or deleted records it (``approval.hub_tampered``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from appliance.approvals.broker import Broker, RecordFn, SubmitResult
from appliance.approvals.errors import ApprovalsError, ApprovalsProtocolError
from appliance.approvals.request import ApprovalRequest, RequestState, RequestStatus
from appliance.bucket import Bucket, BucketError, ObjectVersion
from appliance.signing.keys import InvalidSignature, SigningKey, VerifierKey
from appliance.signing.note import MalformedNote, NoteError, open_note, sign_note

log = logging.getLogger(__name__)

APPROVALS = "approvals"
REQUEST_HEADER = "appliance/approval-request/v1"
RECEIPT_HEADER = "appliance/approval-receipt/v1"
OUTCOME_HEADER = "appliance/approval-outcome/v1"
HUB_TAMPERED = "approval.hub_tampered"
_CLOSING = {
    "approval.granted": RequestState.GRANTED,
    "approval.denied": RequestState.DENIED,
    "approval.timeout": RequestState.TIMED_OUT,
    "approval.withdrawn": RequestState.WITHDRAWN,
}


class ForgedRequest(ApprovalsError):
    """A request in the bucket is not what a fleet runner posted: refused."""

    exit_code = 1


# -- the formats (pure) -----------------------------------------------------------------------


def request_dir(request_id: str, created: datetime) -> str:
    """``approvals/DAY/ID/`` (relative to the bucket URL)."""
    return f"{APPROVALS}/{created.strftime('%Y-%m-%d')}/{request_id}/"


def decision_key(note: str) -> str:
    """The name of a decision's object inside its request's directory."""
    return "decision." + hashlib.sha256(note.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _sign(header: str, body: dict[str, object], key: SigningKey) -> str:
    line = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return sign_note(f"{header}\n{line}\n", [key])


def _open(note: str, header: str, verifiers: Sequence[VerifierKey]) -> dict[str, Any]:
    """The JSON body of a runner note; raises ForgedRequest if no given key signed it,
    ApprovalsProtocolError if it is malformed."""
    try:
        text, _ = open_note(note, list(verifiers))
    except InvalidSignature as exc:
        raise ForgedRequest(f"not signed by a fleet ledger key: {exc}") from None
    except (MalformedNote, NoteError) as exc:
        raise ApprovalsProtocolError(f"not a signed note: {exc}") from None
    first, _, rest = text.partition("\n")
    if first != header or not rest.endswith("\n") or "\n" in rest[:-1]:
        raise ApprovalsProtocolError(f"expected a {header} note")
    try:
        body = json.loads(rest)
    except ValueError:
        raise ApprovalsProtocolError(f"the {header} body is not JSON") from None
    if not isinstance(body, dict):
        raise ApprovalsProtocolError(f"the {header} body is not an object")
    return body


def request_note(req: ApprovalRequest, origin: str, key: SigningKey) -> str:
    return _sign(REQUEST_HEADER, {**req.to_dict(), "origin": origin}, key)


def open_request(note: str, verifiers: Sequence[VerifierKey]) -> tuple[str, ApprovalRequest]:
    """(origin, request) of a request note. Raises ForgedRequest, ApprovalsProtocolError."""
    body = _open(note, REQUEST_HEADER, verifiers)
    origin = body.pop("origin", None)
    if not isinstance(origin, str):
        raise ApprovalsProtocolError("the request names no origin")
    return origin, ApprovalRequest.from_dict(body)


def receipt_note(decision: str, result: SubmitResult, request_id: str, key: SigningKey) -> str:
    body: dict[str, object] = {
        "id": request_id,
        "decision": decision,
        "accepted": result.accepted,
        "reason": result.reason.value if result.reason else None,
        "detail": result.detail,
    }
    return _sign(RECEIPT_HEADER, body, key)


def outcome_note(
    request_id: str, state: RequestState, approver: str | None, key: SigningKey
) -> str:
    return _sign(
        OUTCOME_HEADER, {"id": request_id, "state": state.value, "approver": approver}, key
    )


@dataclass(frozen=True)
class Receipt:
    decision: str
    accepted: bool
    reason: str | None
    detail: str


def open_receipt(note: str, verifiers: Sequence[VerifierKey]) -> Receipt:
    b = _open(note, RECEIPT_HEADER, verifiers)
    return Receipt(
        str(b.get("decision")), b.get("accepted") is True, b.get("reason"), str(b.get("detail"))
    )


def open_outcome(note: str, verifiers: Sequence[VerifierKey]) -> tuple[RequestState, str | None]:
    b = _open(note, OUTCOME_HEADER, verifiers)
    try:
        state = RequestState(b.get("state"))
    except ValueError:
        raise ApprovalsProtocolError(f"unknown outcome state {b.get('state')!r}") from None
    approver = b.get("approver")
    return state, approver if isinstance(approver, str) else None


# -- the runner's side ------------------------------------------------------------------------


@dataclass
class _Posted:
    request: ApprovalRequest
    dir: str
    posted: bool = False
    seen: set[str] = field(default_factory=set)  # decision version ids handed to the broker
    tampered: bool = False


class HubRunner:
    """The runner's end of the hub (see the module docstring). ``notify`` and ``observe``
    are the broker's announcement and record hooks; :meth:`run` does the I/O (puts and
    listings in worker threads, the broker on the event loop). Not thread-safe."""

    def __init__(
        self,
        bucket: Bucket,
        broker: Broker,
        key: SigningKey,
        origin: str,
        *,
        record: RecordFn,
        poll_interval: float = 0.5,
    ) -> None:
        self.bucket = bucket
        self.broker = broker
        self.key = key
        self.origin = origin
        self.record = record
        self.poll_interval = poll_interval
        self._requests: dict[str, _Posted] = {}
        self._outbox: list[tuple[str, bytes]] = []  # (key, body) still to put
        self._wake = asyncio.Event()

    def notify(self, req: ApprovalRequest) -> None:
        """The broker announced ``req``: post it (from :meth:`run`)."""
        posted = _Posted(req, request_dir(req.id, req.created))
        self._requests[req.id] = posted
        self._outbox.append(
            (posted.dir + "request", request_note(req, self.origin, self.key).encode())
        )
        self._wake.set()

    def observe(self, type: str, data: dict[str, object]) -> None:
        """A broker record: a closing one posts the request's outcome."""
        state = _CLOSING.get(type)
        rid = data.get("id")
        if state is None or not isinstance(rid, str) or rid not in self._requests:
            return
        posted = self._requests.pop(rid)
        approver = data.get("approver") if isinstance(data.get("approver"), str) else None
        note = outcome_note(rid, state, approver, self.key)  # type: ignore[arg-type]
        self._outbox.append((posted.dir + "outcome", note.encode()))
        self._wake.set()

    async def run(self) -> None:
        """Post, poll and submit until cancelled."""
        while True:
            await self._flush()
            await self._poll()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _flush(self) -> None:
        while self._outbox:
            key, body = self._outbox[0]
            try:
                await asyncio.to_thread(self.bucket.put_once, key, body, content_type="text/plain")
            except BucketError as exc:
                log.warning("approvals hub: cannot post %s (will retry): %s", key, exc)
                return
            self._outbox.pop(0)
            rid = key.split("/")[2]
            if key.endswith("/request") and rid in self._requests:
                self._requests[rid].posted = True

    async def _poll(self) -> None:
        pending = {s.request.id for s in self.broker.pending()}
        for rid, posted in list(self._requests.items()):
            if rid not in pending or not posted.posted:
                continue
            try:
                versions = await asyncio.to_thread(self.bucket.list_versions, posted.dir)
            except BucketError as exc:
                log.warning("approvals hub: cannot poll %s: %s", posted.dir, exc)
                return
            self._check_request(posted, versions)
            for v in sorted(versions, key=lambda v: v.last_modified):
                name = v.key[len(posted.dir) :]
                if (
                    not name.startswith("decision.")
                    or v.delete_marker
                    or v.version_id in posted.seen
                ):
                    continue
                posted.seen.add(v.version_id)
                try:
                    raw = await asyncio.to_thread(self.bucket.get, v.key, version_id=v.version_id)
                except BucketError as exc:
                    posted.seen.discard(v.version_id)
                    log.warning("approvals hub: cannot read %s: %s", v.key, exc)
                    continue
                result = self.broker.submit(raw.decode("utf-8", "replace"))
                receipt = receipt_note(name, result, rid, self.key)
                self._outbox.append(
                    (posted.dir + "receipt." + name[len("decision.") :], receipt.encode())
                )
                self._wake.set()

    def _check_request(self, posted: _Posted, versions: list[ObjectVersion]) -> None:
        mine = [v for v in versions if v.key == posted.dir + "request"]
        if posted.tampered or (len(mine) <= 1 and not any(v.delete_marker for v in mine)):
            return
        posted.tampered = True
        what = f"{len(mine)} versions" + (", deleted" if any(v.delete_marker for v in mine) else "")
        log.error(
            "approvals hub: request %s was changed in the bucket (%s)", posted.request.id, what
        )
        self.record(
            HUB_TAMPERED,
            {
                "id": posted.request.id,
                "key": posted.dir + "request",
                "detail": f"request object has {what}",
            },
        )


# -- the approver's side ----------------------------------------------------------------------


@dataclass
class HubRequest:
    """A request found in the bucket, as an approver sees it. ``problem`` set: refused."""

    id: str
    dir: str
    status: RequestStatus | None = None
    origin: str | None = None
    problem: str | None = None
    receipts: dict[str, Receipt] = field(default_factory=dict)


class HubClient:
    """The approver's end of the hub. ``verifiers``: the fleet's ledger verifier keys (the
    keys runners sign requests with); ``clock`` gives now (UTC)."""

    def __init__(
        self, bucket: Bucket, verifiers: Sequence[VerifierKey], *, clock: Callable[[], datetime]
    ) -> None:
        if not verifiers:
            raise ApprovalsError("the hub needs the fleet's ledger verifier key(s) (--vkey)")
        self.bucket = bucket
        self.verifiers = list(verifiers)
        self.clock = clock

    def requests(self, *, days: int = 2) -> list[HubRequest]:
        """Every request of the last ``days`` days (UTC), oldest first."""
        now = self.clock()
        out: list[HubRequest] = []
        for back in range(days - 1, -1, -1):
            day = (now - timedelta(days=back)).strftime("%Y-%m-%d")
            versions = self.bucket.list_versions(f"{APPROVALS}/{day}/")
            by_id: dict[str, list[ObjectVersion]] = {}
            for v in versions:
                parts = v.key.split("/")
                if len(parts) == 4:
                    by_id.setdefault(parts[2], []).append(v)
            out += [
                self._read(rid, f"{APPROVALS}/{day}/{rid}/", vs, now) for rid, vs in by_id.items()
            ]
        out.sort(key=lambda r: (r.status.request.created if r.status else now, r.id))
        return out

    def find(self, request_id: str, *, days: int = 7) -> HubRequest:
        """The request ``request_id`` of the last ``days`` days. Raises RequestNotFound."""
        from appliance.approvals.errors import RequestNotFound

        now = self.clock()
        for back in range(days):
            day = (now - timedelta(days=back)).strftime("%Y-%m-%d")
            d = f"{APPROVALS}/{day}/{request_id}/"
            versions = self.bucket.list_versions(d)
            if versions:
                return self._read(request_id, d, versions, now)
        raise RequestNotFound(
            f"no approval request {request_id} in {self.bucket.url} (last {days} days)"
        )

    def _read(self, rid: str, d: str, versions: list[ObjectVersion], now: datetime) -> HubRequest:
        found = HubRequest(rid, d)
        req_versions = [v for v in versions if v.key == d + "request"]
        objects = [v for v in req_versions if not v.delete_marker]
        if not objects:
            found.problem = "no request object (decisions without a request, or it was deleted)"
            return found
        if len(objects) > 1 or len(objects) != len(req_versions):
            found.problem = (
                f"the request object was overwritten or deleted ({len(req_versions)} versions)"
            )
        first = objects[-1]  # S3 lists a key's versions newest first
        try:
            origin, req = open_request(self._get(first), self.verifiers)
        except (ForgedRequest, ApprovalsProtocolError) as exc:
            found.problem = found.problem or f"refused: {exc}"
            return found
        if req.id != rid:
            found.problem = f"refused: the request in {d} is for id {req.id}"
            return found
        found.origin = origin
        state, approver = RequestState.PENDING, None
        outcome = [v for v in versions if v.key == d + "outcome" and not v.delete_marker]
        if outcome:
            try:
                state, approver = open_outcome(self._get(outcome[-1]), self.verifiers)
            except (ForgedRequest, ApprovalsProtocolError) as exc:
                found.problem = found.problem or f"outcome refused: {exc}"
        elif now >= req.expires:
            state = RequestState.TIMED_OUT
        found.status = RequestStatus(req, state, approver)
        for v in versions:
            name = v.key[len(d) :]
            if name.startswith("receipt.") and not v.delete_marker:
                try:
                    receipt = open_receipt(self._get(v), self.verifiers)
                except (ForgedRequest, ApprovalsProtocolError):
                    continue
                found.receipts[receipt.decision] = receipt
        return found

    def _get(self, v: ObjectVersion) -> str:
        return self.bucket.get(v.key, version_id=v.version_id).decode("utf-8", "replace")

    def post_decision(self, found: HubRequest, note: str) -> str:
        """Put a signed decision next to the request; returns its key name."""
        name = decision_key(note)
        self.bucket.put_once(found.dir + name, note.encode(), content_type="text/plain")
        return name

    def receipt(self, found: HubRequest, name: str) -> Receipt | None:
        """The runner's receipt of decision ``name``, if it has answered."""
        key = found.dir + "receipt." + name[len("decision.") :]
        try:
            raw = self.bucket.get(key)
        except BucketError:
            return None
        try:
            return open_receipt(raw.decode("utf-8", "replace"), self.verifiers)
        except (ForgedRequest, ApprovalsProtocolError):
            return None
