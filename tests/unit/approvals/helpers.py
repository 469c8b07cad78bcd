"""Shared fixtures-as-functions for the approvals tests: fixed keys, clock, ids and a recorder."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from appliance.approvals import (
    ApprovalRequest,
    Broker,
    ManualClock,
    SignedDecision,
    sign_decision,
    statement_digest,
)
from appliance.ledger.entries import canonical_json
from appliance.signing.keys import SigningKey

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
ALICE = SigningKey.generate("alice", seed=bytes([1]) * 32)
BOB = SigningKey.generate("bob", seed=bytes([2]) * 32)
MALLORY = SigningKey.generate("mallory", seed=bytes([3]) * 32)  # not in the policy
APPROVER_KEYS = {"alice": ALICE.verifier(), "bob": BOB.verifier()}

STATEMENT = b"DELETE FROM customers WHERE email = 'jane@example.com'"
MASKED = "DELETE FROM customers WHERE email = '***'"
IDENTITY = "github:acme/shop run 4711 job migrate"


class Recorder:
    """The ledger stand-in: keeps (type, data) and checks each data is canonical JSON."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, object]]] = []
        self.fail_on: str | None = None

    def __call__(self, type_: str, data: dict[str, object]) -> None:
        canonical_json(data)  # raises for floats and other non-canonical values
        if type_ == self.fail_on:
            raise OSError("ledger disk full")
        self.entries.append((type_, data))

    def types(self) -> list[str]:
        return [t for t, _ in self.entries]

    def last(self, type_: str) -> dict[str, object]:
        return [d for t, d in self.entries if t == type_][-1]


def counter_rng() -> Callable[[int], bytes]:
    """Deterministic 'random' bytes: 1, 2, 3... big-endian."""
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def make_broker(
    clock: ManualClock | None = None, **kwargs: object
) -> tuple[Broker, Recorder, ManualClock]:
    clock = clock or ManualClock(T0)
    recorder = Recorder()
    broker = Broker(
        approver_keys=APPROVER_KEYS,
        clock=clock,
        rng=counter_rng(),
        record=recorder,
        **kwargs,  # type: ignore[arg-type]
    )
    return broker, recorder, clock


def new_request(
    broker: Broker,
    *,
    statement: bytes = STATEMENT,
    masked: str = MASKED,
    rule: str = "prod-deletes",
    approvers: tuple[str, ...] = ("alice",),
    identity: str = IDENTITY,
    session: str = "sess-1",
    window: timedelta = timedelta(0),
) -> ApprovalRequest:
    return broker.new_request(
        session=session,
        identity=identity,
        target="orders-db",
        account="ci-writer",
        rule=rule,
        approvers=approvers,
        statement=masked,
        statement_sha256=statement_digest(statement),
        window=window,
    )


def decision_note(
    req: ApprovalRequest,
    key: SigningKey = ALICE,
    verb: str = "approve",
    *,
    approver: str | None = None,
    reason: str = "",
    request_id: str | None = None,
    statement_sha256: str | None = None,
) -> str:
    return sign_decision(
        SignedDecision(
            request_id=request_id or req.id,
            statement_sha256=statement_sha256 or req.statement_sha256,
            decision="approve" if verb == "approve" else "deny",
            approver=approver or key.name,
            time=T0 + timedelta(seconds=30),
            reason=reason,
        ),
        key,
    )
