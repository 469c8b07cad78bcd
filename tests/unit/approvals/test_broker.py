"""The broker as transcripts: a held statement, what arrives, what is released and recorded.

Time is a ManualClock, ids come from a counter, keys are fixed: every run is identical.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import pytest

from appliance.approvals import (
    UNATTRIBUTED,
    ApprovalRequest,
    ApprovalsUsageError,
    Broker,
    ManualClock,
    Outcome,
    RejectReason,
    RequestState,
    Resolution,
)
from appliance.approvals.broker import MAX_NOTE_CHARS
from appliance.approvals.clock import Timer
from appliance.signing.keys import SigningKey
from appliance.signing.note import open_note

from .helpers import (
    ALICE,
    BOB,
    IDENTITY,
    MALLORY,
    MASKED,
    STATEMENT,
    T0,
    Recorder,
    decision_note,
    make_broker,
    new_request,
)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


async def hold(broker: Broker, req: ApprovalRequest) -> asyncio.Task[Outcome]:
    """Start holding ``req`` and let the task reach its wait."""
    task = asyncio.create_task(broker.request(req))
    await asyncio.sleep(0)
    assert broker.status(req.id) is not None
    return task


# -- the three endings ---------------------------------------------------------------------


def test_held_then_approved() -> None:
    async def scenario() -> None:
        broker, rec, _ = make_broker()
        req = new_request(broker)
        assert req.id == "00000000000000000001"
        assert req.created == T0 and req.expires == T0 + timedelta(minutes=10)
        task = await hold(broker, req)
        assert [s.request.id for s in broker.pending()] == [req.id]
        assert not task.done()

        note = decision_note(req, ALICE, "approve", reason="migration ticket OPS-12")
        result = broker.submit(note)

        assert result.accepted and result.request_id == req.id and result.approver == "alice"
        outcome = await task
        assert outcome.verdict is Resolution.GRANTED and outcome.granted
        assert outcome.approver == "alice" and outcome.reason == "migration ticket OPS-12"
        assert outcome.note == note
        assert rec.types() == ["approval.requested", "approval.granted"]
        requested = rec.last("approval.requested")
        assert requested["statement"] == MASKED
        assert requested["statement_sha256"] == req.statement_sha256
        assert requested["approvers"] == ["alice"] and requested["rule"] == "prod-deletes"
        granted = rec.last("approval.granted")
        assert granted["note"] == note  # stored verbatim ...
        text, signers = open_note(str(granted["note"]), [ALICE.verifier()])  # ... and verifiable
        assert signers == [ALICE.verifier()] and f"request {req.id}\n" in text
        assert broker.pending() == []
        status = broker.status(req.id)
        assert status is not None and status.state is RequestState.GRANTED

    run(scenario)


def test_held_then_denied() -> None:
    async def scenario() -> None:
        broker, rec, _ = make_broker()
        req = new_request(broker, approvers=("alice", "bob"))
        task = await hold(broker, req)

        result = broker.submit(decision_note(req, BOB, "deny", reason="change freeze"))

        assert result.accepted and result.decision == "deny"
        outcome = await task
        assert outcome.verdict is Resolution.DENIED and not outcome.granted
        assert outcome.message() == f"approval {req.id} denied by bob: change freeze"
        assert rec.types() == ["approval.requested", "approval.denied"]
        assert rec.last("approval.denied")["approver"] == "bob"

    run(scenario)


def test_held_then_timed_out() -> None:
    async def scenario() -> None:
        broker, rec, clock = make_broker(timeout=timedelta(minutes=5))
        req = new_request(broker, approvers=("alice", "bob"))
        task = await hold(broker, req)

        clock.advance(299)
        await asyncio.sleep(0)
        assert not task.done()
        clock.advance(1)
        outcome = await task

        assert outcome.verdict is Resolution.TIMED_OUT and outcome.approver is None
        assert outcome.message() == (
            f"approval {req.id} timed out: no decision by alice, bob within 300s "
            "(rule prod-deletes)"
        )
        assert rec.types() == ["approval.requested", "approval.timeout"]
        assert rec.last("approval.timeout")["expires"] == "2026-11-25T12:05:00Z"

        late = broker.submit(decision_note(req))
        assert late.reason is RejectReason.EXPIRED
        assert rec.types()[-1] == "approval.rejected"

    run(scenario)


def test_rule_timeout_overrides_default() -> None:
    broker, _, _ = make_broker()
    req = broker.new_request(
        session="s",
        identity=IDENTITY,
        target="t",
        account="a",
        rule="r",
        approvers=["alice"],
        statement="x",
        statement_sha256="0" * 64,
        timeout=timedelta(seconds=30),
    )
    assert req.expires - req.created == timedelta(seconds=30)


# -- decisions that must be refused (and recorded) ------------------------------------------


def _refused(
    make_note: Callable[[ApprovalRequest, ApprovalRequest], str],
    reason: RejectReason,
    approvers: tuple[str, ...] = ("alice",),
) -> Recorder:
    """Hold two requests, submit ``make_note(first, second)``; check it is refused for
    ``reason``, recorded with the note verbatim, and that both requests are still held."""

    async def scenario() -> None:
        broker, rec, _ = make_broker()
        first = new_request(broker, approvers=approvers)
        second = new_request(broker, statement=b"DROP TABLE audit", approvers=approvers)
        t1, t2 = await hold(broker, first), await hold(broker, second)
        note = make_note(first, second)

        result = broker.submit(note)

        assert not result.accepted and result.reason is reason, result
        assert rec.types()[-1] == "approval.rejected"
        rejected = rec.last("approval.rejected")
        assert rejected["reason"] == reason.value
        if len(note) <= MAX_NOTE_CHARS:
            assert rejected["note"] == note
        else:  # an oversized note is recorded by its digest, not verbatim
            assert rejected["note_sha256"] == hashlib.sha256(note.encode()).hexdigest()
            assert rejected["note_chars"] == len(note) and "note" not in rejected
        assert rejected["detail"] == result.detail
        await asyncio.sleep(0)
        assert not t1.done() and not t2.done()
        assert len(broker.pending()) == 2
        t1.cancel()
        t2.cancel()
        await asyncio.gather(t1, t2, return_exceptions=True)
        state.append(rec)

    state: list[Recorder] = []
    run(scenario)
    return state[0]


def test_unknown_key_is_rejected() -> None:
    _refused(lambda r, _: decision_note(r, MALLORY), RejectReason.UNKNOWN_KEY)


def test_same_name_other_key_is_rejected() -> None:
    impostor = SigningKey.generate("alice", seed=bytes([9]) * 32)  # same name, other key
    _refused(lambda r, _: decision_note(r, impostor), RejectReason.UNKNOWN_KEY)


def test_approver_not_named_for_the_rule_is_rejected() -> None:
    rec = _refused(lambda r, _: decision_note(r, BOB), RejectReason.APPROVER_NOT_NAMED)
    assert "bob is not an approver for rule prod-deletes" in str(rec.last("approval.rejected"))


def test_decision_for_another_request_does_not_release_this_one() -> None:
    # First's id with second's statement hash: refers to another request's statement.
    _refused(
        lambda r, other: decision_note(r, statement_sha256=other.statement_sha256),
        RejectReason.STATEMENT_MISMATCH,
    )


def test_decision_for_an_unknown_request_is_rejected() -> None:
    _refused(
        lambda r, _: decision_note(r, request_id="ffffffffffffffffffff"),
        RejectReason.UNKNOWN_REQUEST,
    )


def test_body_naming_another_approver_than_the_signer_is_rejected() -> None:
    _refused(
        lambda r, _: decision_note(r, ALICE, approver="bob"),
        RejectReason.APPROVER_MISMATCH,
        approvers=("alice", "bob"),
    )


def test_tampered_decision_is_rejected() -> None:
    def tamper(r: ApprovalRequest, _: ApprovalRequest) -> str:
        return decision_note(r, ALICE, "deny").replace("decision deny", "decision approve")

    _refused(tamper, RejectReason.BAD_SIGNATURE)


@pytest.mark.parametrize(
    "note",
    [
        "",
        "approve please\n",
        "appliance/approval-decision/v1\nrequest 1\n\n— alice AAAA\n",
        "\x01garbage\n\n— alice AAAAAAAA\n",
        "x" * 10_000,
    ],
)
def test_malformed_note_is_rejected(note: str) -> None:
    _refused(lambda _r, _o: note, RejectReason.MALFORMED_NOTE)


def test_signed_but_malformed_decision_is_rejected() -> None:
    from appliance.signing.note import sign_note

    _refused(
        lambda r, _: sign_note(f"please approve {r.id}\n", [ALICE]),
        RejectReason.MALFORMED_DECISION,
    )


def test_replay_of_an_accepted_decision_is_rejected_and_recorded() -> None:
    async def scenario() -> None:
        broker, rec, _ = make_broker()
        req = new_request(broker, approvers=("alice", "bob"))
        task = await hold(broker, req)
        note = decision_note(req)
        assert broker.submit(note).accepted
        await task

        again = broker.submit(note)
        other = broker.submit(decision_note(req, BOB, "deny"))

        assert again.reason is RejectReason.REPLAY
        assert other.reason is RejectReason.ALREADY_DECIDED
        assert "already granted by alice" in other.detail
        assert rec.types() == [
            "approval.requested",
            "approval.granted",
            "approval.rejected",
            "approval.rejected",
        ]
        assert rec.entries[2][1]["note"] == note and rec.entries[2][1]["id"] == req.id

    run(scenario)


def test_replay_for_a_later_identical_statement_does_not_release_it() -> None:
    """An old approval of the same statement does not approve a new request for it."""

    async def scenario() -> None:
        broker, _, _ = make_broker()
        first = new_request(broker)
        t1 = await hold(broker, first)
        note = decision_note(first)
        assert broker.submit(note).accepted
        await t1
        second = new_request(broker)  # same statement, same job, window 0
        t2 = await hold(broker, second)
        assert broker.submit(note).reason is RejectReason.REPLAY
        await asyncio.sleep(0)
        assert not t2.done()
        t2.cancel()
        await asyncio.gather(t2, return_exceptions=True)

    run(scenario)


class _LateTimers(ManualClock):
    """A clock whose timers are late: time moves, callbacks wait for ``fire``."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.due: list[Callable[[], None]] = []

    def call_at(self, when: datetime, callback: Callable[[], None]) -> Timer:
        self.due.append(callback)
        return super().call_at(when + timedelta(days=365), lambda: None)


def test_decision_after_expiry_is_rejected_even_before_the_timer_runs() -> None:
    async def scenario() -> None:
        clock = _LateTimers(T0)
        broker, rec, _ = make_broker(clock)
        req = new_request(broker)
        task = await hold(broker, req)
        clock.advance(600)

        result = broker.submit(decision_note(req))

        assert result.reason is RejectReason.EXPIRED
        outcome = await task
        assert outcome.verdict is Resolution.TIMED_OUT
        assert rec.types() == ["approval.requested", "approval.timeout", "approval.rejected"]
        clock.due[0]()  # the late timer finds nothing left to do
        assert len(rec.entries) == 3

    run(scenario)


# -- the client goes away ---------------------------------------------------------------------


def test_client_disconnect_withdraws_the_request() -> None:
    async def scenario() -> None:
        broker, rec, clock = make_broker()
        req = new_request(broker)
        task = await hold(broker, req)

        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert rec.types() == ["approval.requested", "approval.withdrawn"]
        assert broker.pending() == []
        late = broker.submit(decision_note(req))
        assert late.reason is RejectReason.WITHDRAWN
        clock.advance(3600)  # the timer was cancelled: no timeout entry
        assert rec.types()[-1] == "approval.rejected"

    run(scenario)


def test_decision_arriving_between_cancel_and_the_task_running_is_refused() -> None:
    async def scenario() -> None:
        broker, rec, _ = make_broker()
        req = new_request(broker)
        task = await hold(broker, req)
        task.cancel()  # the task has not run its handler yet

        result = broker.submit(decision_note(req))

        assert result.reason is RejectReason.WITHDRAWN
        with pytest.raises(asyncio.CancelledError):
            await task
        assert rec.types() == ["approval.requested", "approval.withdrawn", "approval.rejected"]

    run(scenario)


# -- windows ----------------------------------------------------------------------------------


def test_window_covers_identical_statements_of_the_same_job_until_it_ends() -> None:
    async def scenario() -> None:
        broker, rec, clock = make_broker(timeout=timedelta(hours=1))
        window = timedelta(minutes=15)
        first = new_request(broker, window=window, session="sess-1")
        t1 = await hold(broker, first)
        note = decision_note(first)
        assert broker.submit(note).accepted
        await t1
        assert rec.last("approval.granted")["window_until"] == "2026-11-25T12:15:00Z"

        clock.advance(60)  # the job reconnects and runs the same statement again
        again = await broker.request(new_request(broker, window=window, session="sess-2"))
        assert again.granted and again.window_of == first.id and again.note == note
        entry = rec.last("approval.granted")
        assert entry["window_of"] == first.id and entry["session"] == "sess-2"

        other_job = new_request(broker, window=window, identity="github:acme/shop run 4712")
        other_statement = new_request(broker, window=window, statement=b"DELETE FROM orders")
        t_job, t_stmt = await hold(broker, other_job), await hold(broker, other_statement)

        clock.advance(14 * 60)  # now exactly created + window: over
        late = new_request(broker, window=window)
        t_late = await hold(broker, late)
        assert {s.request.id for s in broker.pending()} == {
            other_job.id,
            other_statement.id,
            late.id,
        }
        for t in (t_job, t_stmt, t_late):
            t.cancel()
        await asyncio.gather(t_job, t_stmt, t_late, return_exceptions=True)

    run(scenario)


def test_without_a_window_an_approval_is_good_once() -> None:
    async def scenario() -> None:
        broker, _, _ = make_broker()
        first = new_request(broker)
        t1 = await hold(broker, first)
        broker.submit(decision_note(first))
        await t1
        second = new_request(broker)
        t2 = await hold(broker, second)
        assert not t2.done() and broker.status(second.id) is not None
        t2.cancel()
        await asyncio.gather(t2, return_exceptions=True)

    run(scenario)


def test_window_grant_releases_identical_statements_already_waiting() -> None:
    async def scenario() -> None:
        broker, rec, _ = make_broker()
        window = timedelta(minutes=5)
        first = new_request(broker, window=window, session="a")
        second = new_request(broker, window=window, session="b")
        t1, t2 = await hold(broker, first), await hold(broker, second)
        broker.submit(decision_note(first))
        assert (await t1).window_of is None
        assert (await t2).window_of == first.id
        assert rec.types() == [
            "approval.requested",
            "approval.requested",
            "approval.granted",
            "approval.granted",
        ]

    run(scenario)


def test_unattributed_flows_share_a_window_only_within_a_session() -> None:
    async def scenario() -> None:
        broker, _, _ = make_broker()
        window = timedelta(minutes=5)
        first = new_request(broker, window=window, identity=UNATTRIBUTED, session="a")
        t1 = await hold(broker, first)
        broker.submit(decision_note(first))
        await t1
        same = await broker.request(
            new_request(broker, window=window, identity=UNATTRIBUTED, session="a")
        )
        assert same.window_of == first.id
        elsewhere = new_request(broker, window=window, identity=UNATTRIBUTED, session="b")
        t3 = await hold(broker, elsewhere)
        assert not t3.done()
        t3.cancel()
        await asyncio.gather(t3, return_exceptions=True)

    run(scenario)


def test_a_denial_does_not_carry_over() -> None:
    async def scenario() -> None:
        broker, _, _ = make_broker()
        window = timedelta(minutes=5)
        first = new_request(broker, window=window)
        t1 = await hold(broker, first)
        broker.submit(decision_note(first, verb="deny"))
        assert (await t1).verdict is Resolution.DENIED
        second = new_request(broker, window=window)
        t2 = await hold(broker, second)
        assert not t2.done()
        t2.cancel()
        await asyncio.gather(t2, return_exceptions=True)

    run(scenario)


# -- failing closed ---------------------------------------------------------------------------


def test_nothing_is_granted_if_the_ledger_cannot_record_it() -> None:
    async def scenario() -> None:
        broker, rec, _ = make_broker()
        req = new_request(broker)
        task = await hold(broker, req)
        rec.fail_on = "approval.granted"
        with pytest.raises(OSError):
            broker.submit(decision_note(req))
        await asyncio.sleep(0)
        assert not task.done() and broker.status(req.id) is not None
        rec.fail_on = None
        assert broker.submit(decision_note(req)).accepted
        assert (await task).granted

    run(scenario)


def test_a_timeout_the_ledger_cannot_record_ends_the_statement_with_that_error() -> None:
    async def scenario() -> None:
        broker, rec, clock = make_broker()
        req = new_request(broker)
        task = await hold(broker, req)
        rec.fail_on = "approval.timeout"
        with pytest.raises(OSError):
            clock.advance(600)
        with pytest.raises(OSError):
            await task
        assert broker.pending() == []

    run(scenario)


@pytest.mark.parametrize(
    ("approvers", "message"),
    [((), "names no approver"), (("alice", "carol"), "without a key: ['carol']")],
)
def test_a_rule_must_name_approvers_with_keys(approvers: tuple[str, ...], message: str) -> None:
    broker, _, _ = make_broker()
    with pytest.raises(ApprovalsUsageError, match=re.escape(message)):
        new_request(broker, approvers=approvers)


def test_an_id_is_used_once() -> None:
    async def scenario() -> None:
        broker, _, _ = make_broker()
        req = new_request(broker)
        task = await hold(broker, req)
        with pytest.raises(ApprovalsUsageError):
            await broker.request(req)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    run(scenario)


def test_ids_are_fresh_and_from_the_rng() -> None:
    broker, _, _ = make_broker()
    ids = [new_request(broker).id for _ in range(3)]
    assert ids == [f"{i:020x}" for i in (1, 2, 3)]
    assert STATEMENT  # the statement bytes never reach the broker; only their digest
