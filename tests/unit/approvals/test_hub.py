"""Approvals through the bucket (moto): a runner posts a signed request, an approver finds it
and posts a signed decision, the runner hands it to the broker and answers with a receipt.
Forged decisions and forged or overwritten requests are refused; the broker's checks are the
ones the socket gets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from appliance.approvals import Resolution, SignedDecision, sign_decision
from appliance.approvals.hub import ForgedRequest, HubClient, HubRunner, open_request, request_note
from appliance.approvals.request import RequestState
from appliance.bucket import Bucket, BucketSettings, parse_bucket_url
from appliance.signing.keys import SigningKey
from tests.unit.approvals.helpers import ALICE, MALLORY, T0, make_broker, new_request

RUNNER = SigningKey.generate("ci.example/ledger", seed=b"\x05" * 32)
INTRUDER = SigningKey.generate("ci.example/ledger", seed=b"\x06" * 32)
ORIGIN = "ci.example/runner-7"


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    for k, v in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t"}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(
            Bucket="evidence", ObjectLockEnabledForBucket=True
        )
        yield Bucket(BucketSettings(parse_bucket_url("s3://evidence/fleet")))


def decide(found: Any, verb: str = "approve", key: SigningKey = ALICE, name: str = "alice") -> str:
    r = found.status.request
    d = SignedDecision(r.id, r.statement_sha256, verb, name, T0, "ok from the hub")  # type: ignore[arg-type]
    return sign_decision(d, key)


async def one_round(hub: HubRunner) -> None:
    await hub._flush()
    await hub._poll()
    await hub._flush()


def test_request_notes_are_signed_and_bound_to_the_runner_key() -> None:
    broker, _, _ = make_broker()
    req = new_request(broker)
    note = request_note(req, ORIGIN, RUNNER)
    assert note.startswith("appliance/approval-request/v1\n{")
    assert open_request(note, [RUNNER.verifier()]) == (ORIGIN, req)
    with pytest.raises(ForgedRequest):
        open_request(request_note(req, ORIGIN, INTRUDER), [RUNNER.verifier()])


def test_approved_through_the_bucket(bucket: Bucket) -> None:
    async def scenario() -> None:
        broker, recorder, _ = make_broker()
        hub = HubRunner(bucket, broker, RUNNER, ORIGIN, record=recorder)
        req = new_request(broker)
        broker.notify = hub.notify
        held = asyncio.create_task(broker.request(req))
        await asyncio.sleep(0)
        await one_round(hub)
        client = HubClient(bucket, [RUNNER.verifier()], clock=lambda: T0)
        (found,) = client.requests()
        assert found.problem is None and found.origin == ORIGIN
        assert found.status is not None and found.status.state is RequestState.PENDING
        # a forged decision first: signed by a key the policy does not know
        name = client.post_decision(found, decide(found, key=MALLORY, name="alice"))
        await one_round(hub)
        receipt = client.receipt(found, name)
        assert receipt is not None and not receipt.accepted and receipt.reason == "unknown-key"
        assert recorder.types()[-1] == "approval.rejected"
        assert not held.done()
        name = client.post_decision(found, decide(found))
        await one_round(hub)
        outcome = await asyncio.wait_for(held, 1)
        assert outcome.verdict is Resolution.GRANTED and outcome.approver == "alice"
        receipt = client.receipt(found, name)
        assert receipt is not None and receipt.accepted
        hub.observe("approval.granted", recorder.last("approval.granted"))
        await one_round(hub)
        (closed,) = client.requests()
        assert closed.status is not None and closed.status.state is RequestState.GRANTED
        assert closed.status.approver == "alice"

    asyncio.run(scenario())


def test_a_forged_or_overwritten_request_is_refused(bucket: Bucket) -> None:
    async def scenario() -> None:
        broker, recorder, _ = make_broker()
        hub = HubRunner(bucket, broker, RUNNER, ORIGIN, record=recorder)
        broker.notify = hub.notify
        req = new_request(broker)
        held = asyncio.create_task(broker.request(req))
        await asyncio.sleep(0)
        await one_round(hub)
        # whoever can write to the bucket posts a request of their own...
        fake = new_request(broker, masked="SELECT 1 -- harmless")
        bucket.put_once(
            f"approvals/2026-11-25/{fake.id}/request",
            request_note(fake, ORIGIN, INTRUDER).encode(),
        )
        # ...and overwrites the real one with a harmless-looking statement
        looks_fine = new_request(broker, masked="SELECT 1")
        d = f"approvals/2026-11-25/{req.id}/"
        bucket._s3.put_object(
            Bucket="evidence",
            Key="fleet/" + d + "request",
            Body=request_note(looks_fine, ORIGIN, INTRUDER).encode(),
        )
        client = HubClient(bucket, [RUNNER.verifier()], clock=lambda: T0)
        found = {f.id: f for f in client.requests()}
        assert "not signed by a fleet ledger key" in (found[fake.id].problem or "")
        assert "overwritten" in (found[req.id].problem or "")
        await one_round(hub)
        assert recorder.types()[-1] == "approval.hub_tampered"
        assert recorder.last("approval.hub_tampered")["id"] == req.id
        held.cancel()

    asyncio.run(scenario())
