"""The approvals broker: holds requests, checks signed decisions, enforces timeouts.

On the data path the proxy calls :meth:`Broker.request` when policy says ``review``; the
coroutine returns an :class:`Outcome` once a valid decision arrives or the timeout passes.
Decisions come in as signed notes through :meth:`Broker.submit` (from the local socket,
:mod:`appliance.approvals.server`). The broker does no I/O of its own: time comes from a
:class:`~appliance.approvals.clock.Clock`, ids from an ``rng``, keys from the policy, and
every event leaves through the ``record`` callback (the ledger) and ``notify`` (webhooks).

State machine of one request (each arrow recorded under the type shown)::

    (new) --approval.requested--> PENDING --approval.granted--> GRANTED
                                          --approval.denied---> DENIED
                                          --approval.timeout--> TIMED_OUT
                                          --approval.withdrawn-> WITHDRAWN (client left)
    (new) --approval.granted (window_of)--> GRANTED     (covered by an earlier grant)

A decision that does not pass every check changes nothing and is recorded as
``approval.rejected`` with a :class:`RejectReason`. The ledger entry is written before the
waiting statement is released, so nothing is granted without a record (if ``record``
raises, the request stays pending and the error reaches the caller).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from appliance.approvals.clock import Clock, format_time
from appliance.approvals.decision import SignedDecision, parse_decision
from appliance.approvals.errors import ApprovalsUsageError, DecisionFormatError
from appliance.approvals.request import UNATTRIBUTED, ApprovalRequest, RequestState, RequestStatus
from appliance.signing.keys import InvalidSignature, VerifierKey
from appliance.signing.note import MalformedNote, NoteError, UnverifiedNote, open_note

__all__ = [
    "DEFAULT_TIMEOUT",
    "Broker",
    "NotifyFn",
    "Outcome",
    "RecordFn",
    "RejectReason",
    "Resolution",
    "Rng",
    "SubmitResult",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=10)
# A note longer than this is not a decision; it is rejected and recorded by digest only.
MAX_NOTE_CHARS = 8192
_ID_BYTES = 10

RecordFn = Callable[[str, dict[str, object]], None]
NotifyFn = Callable[[ApprovalRequest], None]
Rng = Callable[[int], bytes]


class Resolution(enum.Enum):
    GRANTED = "granted"
    DENIED = "denied"
    TIMED_OUT = "timeout"


@dataclass(frozen=True)
class Outcome:
    """How a held statement ended. ``note`` is the signed decision (None on timeout);
    ``window_of`` is the id of the earlier request whose grant covered this one."""

    verdict: Resolution
    request: ApprovalRequest
    approver: str | None = None
    reason: str = ""
    note: str | None = None
    window_of: str | None = None

    @property
    def granted(self) -> bool:
        return self.verdict is Resolution.GRANTED

    def message(self) -> str:
        """One line for the client: who decided and why, or that nobody did in time."""
        req = self.request
        why = f": {self.reason}" if self.reason else " (no reason given)"
        if self.verdict is Resolution.GRANTED:
            via = f" (window of request {self.window_of})" if self.window_of else ""
            return f"approval {req.id} granted by {self.approver}{via}{why}"
        if self.verdict is Resolution.DENIED:
            return f"approval {req.id} denied by {self.approver}{why}"
        waited = int((req.expires - req.created).total_seconds())
        return (
            f"approval {req.id} timed out: no decision by {', '.join(req.approvers)} "
            f"within {waited}s (rule {req.rule})"
        )


class RejectReason(enum.Enum):
    """Why a submitted decision was refused (the ``reason`` of ``approval.rejected``)."""

    MALFORMED_NOTE = "malformed-note"  # not a C2SP signed note, or too long
    BAD_SIGNATURE = "bad-signature"  # signed by a known key, but the signature is wrong
    UNKNOWN_KEY = "unknown-key"  # signed by no approver key the policy knows
    MALFORMED_DECISION = "malformed-decision"  # note verifies, body is not a decision
    APPROVER_MISMATCH = "approver-mismatch"  # body names an approver who did not sign it
    UNKNOWN_REQUEST = "unknown-request"  # no such request id
    APPROVER_NOT_NAMED = "approver-not-named"  # signer is not an approver of this rule
    STATEMENT_MISMATCH = "statement-mismatch"  # hash differs from the held statement's
    EXPIRED = "expired"  # the request timed out before the decision arrived
    WITHDRAWN = "withdrawn"  # the client went away; nothing is held any more
    REPLAY = "replay"  # this very note was already accepted
    ALREADY_DECIDED = "already-decided"  # another decision already closed the request


@dataclass(frozen=True)
class SubmitResult:
    """What :meth:`Broker.submit` did with a note: accepted, or rejected and why."""

    accepted: bool
    detail: str
    reason: RejectReason | None = None
    request_id: str | None = None
    decision: str | None = None
    approver: str | None = None


@dataclass
class _Pending:
    request: ApprovalRequest
    future: asyncio.Future[Outcome]


@dataclass(frozen=True)
class _Closed:
    status: RequestStatus
    note: str | None = None


@dataclass(frozen=True)
class _WindowGrant:
    until: datetime
    request_id: str
    approver: str
    reason: str
    note: str


class Broker:
    """Pending approval requests and the checks a decision must pass.

    ``approver_keys`` maps each approver name in the policy to its verifier key. A rule
    names its approvers; a request copies those names. ``rng(n)`` returns n random bytes
    (``os.urandom``). ``timeout`` is the default time a statement is held (a rule may pass
    its own to :meth:`new_request`). ``history`` bounds how many closed requests are
    remembered to tell replays and late decisions apart. Not thread-safe: use it from the
    event loop that runs the proxy and the socket server.
    """

    def __init__(
        self,
        *,
        approver_keys: Mapping[str, VerifierKey],
        clock: Clock,
        rng: Rng,
        record: RecordFn,
        notify: NotifyFn | None = None,
        timeout: timedelta = DEFAULT_TIMEOUT,
        history: int = 10_000,
    ) -> None:
        if timeout <= timedelta(0):
            raise ApprovalsUsageError("the approval timeout must be positive")
        self.approver_keys = approver_keys
        self.clock = clock
        self.rng = rng
        self.record = record
        self.notify = notify
        self.timeout = timeout
        self.history = history
        self._pending: dict[str, _Pending] = {}
        self._closed: OrderedDict[str, _Closed] = OrderedDict()
        self._windows: dict[tuple[str, ...], _WindowGrant] = {}

    # -- the proxy's side ------------------------------------------------------------------

    def new_request(
        self,
        *,
        session: str,
        identity: str,
        target: str,
        account: str,
        rule: str,
        approvers: Sequence[str],
        statement: str,
        statement_sha256: str,
        window: timedelta = timedelta(0),
        timeout: timedelta | None = None,
    ) -> ApprovalRequest:
        """A new request with a fresh id, created now, expiring after the timeout.

        ``statement`` must already be masked; ``statement_sha256`` is
        :func:`~appliance.approvals.request.statement_digest` of the exact statement bytes.
        Raises ApprovalsUsageError if the rule names no approver or one without a key.
        """
        if not approvers:
            raise ApprovalsUsageError(f"rule {rule!r} holds statements but names no approver")
        unknown = [a for a in approvers if a not in self.approver_keys]
        if unknown:
            raise ApprovalsUsageError(f"rule {rule!r} names approvers without a key: {unknown}")
        wait = self.timeout if timeout is None else timeout
        if wait <= timedelta(0) or window < timedelta(0):
            raise ApprovalsUsageError("timeout must be positive and window not negative")
        now = self.clock.now()
        request_id = self.rng(_ID_BYTES).hex()
        while request_id in self._pending or request_id in self._closed:
            request_id = self.rng(_ID_BYTES).hex()
        return ApprovalRequest(
            id=request_id,
            session=session,
            identity=identity,
            target=target,
            account=account,
            rule=rule,
            approvers=tuple(approvers),
            statement=statement,
            statement_sha256=statement_sha256,
            created=now,
            expires=now + wait,
            window=window,
        )

    async def request(self, req: ApprovalRequest) -> Outcome:
        """Hold ``req`` until it is granted, denied or times out; return the outcome.

        If an earlier grant's window covers it, return at once. If the awaiting task is
        cancelled (the client disconnected), the request is withdrawn and recorded, and the
        cancellation propagates. Raises ApprovalsUsageError for an id already used.
        """
        if req.id in self._pending or req.id in self._closed:
            raise ApprovalsUsageError(f"approval request id {req.id} is already in use")
        covered = self._window_outcome(req)
        if covered is not None:
            return covered
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.record("approval.requested", req.to_dict())
        self._pending[req.id] = _Pending(req, future)
        log.info("approval %s requested (rule %s, target %s)", req.id, req.rule, req.target)
        if self.notify is not None:
            self.notify(req)
        timer = self.clock.call_at(req.expires, lambda: self._time_out(req.id))
        try:
            return await future
        except asyncio.CancelledError:
            if req.id in self._pending:
                self._withdraw(req.id)
            raise
        finally:
            timer.cancel()

    # -- the approvers' side ---------------------------------------------------------------

    def pending(self) -> list[RequestStatus]:
        """The pending requests, oldest first."""
        return [RequestStatus(p.request, RequestState.PENDING) for p in self._pending.values()]

    def status(self, request_id: str) -> RequestStatus | None:
        """A pending or remembered closed request, or None."""
        if request_id in self._pending:
            return RequestStatus(self._pending[request_id].request, RequestState.PENDING)
        closed = self._closed.get(request_id)
        return closed.status if closed is not None else None

    def submit(self, note: str) -> SubmitResult:
        """Check a signed decision and, if it passes every check, act on it.

        Checks, in order: the note is a well-formed C2SP signed note verified by a key of an
        approver in the policy; its body is a canonical decision; the body's approver signed
        it; the request is pending (else: replay, already decided, expired or withdrawn);
        the approver is named by the request's rule; the statement hash matches; the request
        has not expired. Every outcome is recorded; nothing here raises for a bad note.
        """
        if len(note) > MAX_NOTE_CHARS:
            return self._reject(
                RejectReason.MALFORMED_NOTE, f"note longer than {MAX_NOTE_CHARS} characters", note
            )
        try:
            body, verified = open_note(note, list(self.approver_keys.values()))
        except MalformedNote as exc:
            return self._reject(RejectReason.MALFORMED_NOTE, str(exc), note)
        except UnverifiedNote as exc:  # before InvalidSignature: it is a subclass
            return self._reject(RejectReason.UNKNOWN_KEY, str(exc), note)
        except InvalidSignature as exc:
            return self._reject(RejectReason.BAD_SIGNATURE, str(exc), note)
        except NoteError as exc:  # e.g. two approvers' keys share a name and key id
            return self._reject(RejectReason.MALFORMED_NOTE, str(exc), note)
        try:
            d = parse_decision(body)
        except DecisionFormatError as exc:
            return self._reject(RejectReason.MALFORMED_DECISION, str(exc), note)
        signers = sorted(n for n, k in self.approver_keys.items() if k in verified)
        if d.approver not in signers:
            detail = f"note names approver {d.approver!r} but is signed by {signers}"
            return self._reject(RejectReason.APPROVER_MISMATCH, detail, note, d)
        pending = self._pending.get(d.request_id)
        if pending is None:
            return self._reject_closed(d, note)
        req = pending.request
        if d.approver not in req.approvers:
            detail = f"{d.approver} is not an approver for rule {req.rule} ({list(req.approvers)})"
            return self._reject(RejectReason.APPROVER_NOT_NAMED, detail, note, d)
        if d.statement_sha256 != req.statement_sha256:
            detail = (
                f"decision is for statement {d.statement_sha256}, held is {req.statement_sha256}"
            )
            return self._reject(RejectReason.STATEMENT_MISMATCH, detail, note, d)
        if self.clock.now() >= req.expires:
            self._time_out(req.id)  # the timer has not run yet; close the request first
            return self._reject_closed(d, note)
        if pending.future.done():  # cancelled: the client left, its task has not run yet
            self._withdraw(req.id)
            return self._reject_closed(d, note)
        return self._accept(pending, d, note)

    # -- transitions -------------------------------------------------------------------------

    def _accept(self, pending: _Pending, d: SignedDecision, note: str) -> SubmitResult:
        req = pending.request
        granted = d.decision == "approve"
        data = self._decision_data(req, d, note)
        until = req.created + req.window
        if granted and req.window > timedelta(0):
            data["window_until"] = format_time(until)
        self.record("approval.granted" if granted else "approval.denied", data)
        del self._pending[req.id]
        state = RequestState.GRANTED if granted else RequestState.DENIED
        self._remember(req, state, d.approver, note)
        verdict = Resolution.GRANTED if granted else Resolution.DENIED
        pending.future.set_result(Outcome(verdict, req, d.approver, d.reason, note))
        log.info("approval %s %s by %s", req.id, state.value, d.approver)
        if granted and req.window > timedelta(0):
            key = _window_key(req)
            self._windows[key] = _WindowGrant(until, req.id, d.approver, d.reason, note)
            for other in [p for p in self._pending.values() if _window_key(p.request) == key]:
                if not other.future.done():
                    outcome = self._window_outcome(other.request)
                    if outcome is not None:
                        del self._pending[other.request.id]
                        other.future.set_result(outcome)
        return SubmitResult(
            True,
            f"request {req.id} {state.value} by {d.approver}",
            request_id=req.id,
            decision=d.decision,
            approver=d.approver,
        )

    def _window_outcome(self, req: ApprovalRequest) -> Outcome | None:
        """Grant ``req`` under an earlier grant's window if one covers it now (recorded)."""
        key = _window_key(req)
        grant = self._windows.get(key)
        if grant is None:
            return None
        now = self.clock.now()
        if now >= grant.until:
            del self._windows[key]
            return None
        data = req.to_dict()
        data.update(
            decision="approve",
            approver=grant.approver,
            reason=grant.reason,
            note=grant.note,
            window_of=grant.request_id,
            window_until=format_time(grant.until),
        )
        self.record("approval.granted", data)
        self._remember(req, RequestState.GRANTED, grant.approver, None)
        log.info("approval %s granted by the window of %s", req.id, grant.request_id)
        return Outcome(
            Resolution.GRANTED, req, grant.approver, grant.reason, grant.note, grant.request_id
        )

    def _time_out(self, request_id: str) -> None:
        pending = self._pending.get(request_id)
        if pending is None:
            return
        req = pending.request
        if pending.future.done():
            self._withdraw(request_id)
            return
        data: dict[str, object] = {
            "id": req.id,
            "session": req.session,
            "identity": req.identity,
            "target": req.target,
            "account": req.account,
            "rule": req.rule,
            "approvers": list(req.approvers),
            "statement_sha256": req.statement_sha256,
            "created": format_time(req.created),
            "expires": format_time(req.expires),
        }
        try:
            self.record("approval.timeout", data)
        except Exception as exc:
            # Called from a timer, nobody else would see this: end the held statement with
            # the recording error (fail closed) rather than leave it pending for ever.
            del self._pending[request_id]
            pending.future.set_exception(exc)
            raise
        del self._pending[request_id]
        self._remember(req, RequestState.TIMED_OUT, None, None)
        pending.future.set_result(Outcome(Resolution.TIMED_OUT, req))
        log.info("approval %s timed out", req.id)

    def _withdraw(self, request_id: str) -> None:
        req = self._pending[request_id].request
        data: dict[str, object] = {
            "id": req.id,
            "session": req.session,
            "identity": req.identity,
            "rule": req.rule,
            "statement_sha256": req.statement_sha256,
            "time": format_time(self.clock.now()),
        }
        self.record("approval.withdrawn", data)
        del self._pending[request_id]
        self._remember(req, RequestState.WITHDRAWN, None, None)
        log.info("approval %s withdrawn: the client went away", req.id)

    def _remember(
        self, req: ApprovalRequest, state: RequestState, approver: str | None, note: str | None
    ) -> None:
        self._closed[req.id] = _Closed(RequestStatus(req, state, approver), note)
        while len(self._closed) > self.history:
            self._closed.popitem(last=False)

    # -- rejections --------------------------------------------------------------------------

    def _reject_closed(self, d: SignedDecision, note: str) -> SubmitResult:
        closed = self._closed.get(d.request_id)
        if closed is None:
            detail = f"no approval request {d.request_id} is pending"
            return self._reject(RejectReason.UNKNOWN_REQUEST, detail, note, d)
        state = closed.status.state
        if closed.note == note:
            detail = f"this decision was already accepted for request {d.request_id}"
            return self._reject(RejectReason.REPLAY, detail, note, d)
        if state is RequestState.TIMED_OUT:
            expired = format_time(closed.status.request.expires)
            detail = f"request {d.request_id} timed out at {expired}"
            return self._reject(RejectReason.EXPIRED, detail, note, d)
        if state is RequestState.WITHDRAWN:
            detail = f"request {d.request_id} was withdrawn: the client disconnected"
            return self._reject(RejectReason.WITHDRAWN, detail, note, d)
        by = f" by {closed.status.approver}" if closed.status.approver else ""
        detail = f"request {d.request_id} was already {state.value}{by}"
        return self._reject(RejectReason.ALREADY_DECIDED, detail, note, d)

    def _reject(
        self, reason: RejectReason, detail: str, note: str, d: SignedDecision | None = None
    ) -> SubmitResult:
        data: dict[str, object] = {"reason": reason.value, "detail": detail}
        if len(note) <= MAX_NOTE_CHARS:
            data["note"] = note
        else:
            digest = hashlib.sha256(note.encode("utf-8", "surrogatepass")).hexdigest()
            data.update(note_sha256=digest, note_chars=len(note))
        if d is not None:
            data.update(id=d.request_id, decision=d.decision, approver=d.approver)
        self.record("approval.rejected", data)
        log.warning("approval decision rejected (%s): %s", reason.value, detail)
        return SubmitResult(
            False,
            detail,
            reason=reason,
            request_id=d.request_id if d else None,
            decision=d.decision if d else None,
            approver=d.approver if d else None,
        )

    @staticmethod
    def _decision_data(req: ApprovalRequest, d: SignedDecision, note: str) -> dict[str, object]:
        return {
            "id": req.id,
            "session": req.session,
            "identity": req.identity,
            "target": req.target,
            "account": req.account,
            "rule": req.rule,
            "statement_sha256": req.statement_sha256,
            "decision": d.decision,
            "approver": d.approver,
            "reason": d.reason,
            "decided": format_time(d.time),
            "note": note,
        }


def _window_key(req: ApprovalRequest) -> tuple[str, ...]:
    """What a windowed grant covers: the same statement under the same rule, target and
    account, by the same identity (CI job) -- or, for unattributed flows, the same session."""
    who = f"session:{req.session}" if req.identity == UNATTRIBUTED else f"id:{req.identity}"
    return (who, req.target, req.account, req.rule, req.statement_sha256)
