"""``appliance approvals`` end to end: the CLI (through the real entry point, in click's
CliRunner isolation) against a real socket server and broker running in a loop thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner

from appliance.approvals import (
    ApprovalRequest,
    ApprovalServer,
    Broker,
    ManualClock,
    Outcome,
    RequestState,
    Resolution,
)
from appliance.cli.main import main
from appliance.signing.keys import load_verifier_key, write_key_pair

from .helpers import ALICE, BOB, MALLORY, MASKED, T0, Recorder, make_broker, new_request

T = TypeVar("T")


class LoopThread:
    """An event loop in a thread, standing in for the running appliance."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def spawn(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return fn()

        return self.spawn(wrapper()).result(timeout=30)

    def stop(self) -> None:
        async def cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.spawn(cancel_all()).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


@dataclass
class Appliance:
    loop: LoopThread
    broker: Broker
    records: Recorder
    clock: ManualClock
    socket: Path
    keys: dict[str, Path]

    def hold(self, **kwargs: Any) -> tuple[ApprovalRequest, concurrent.futures.Future[Outcome]]:
        """A statement held by the broker, as the proxy would hold it."""
        req = self.loop.call(lambda: new_request(self.broker, **kwargs))
        future = self.loop.spawn(self.broker.request(req))
        self.loop.call(lambda: None)  # the request task has run up to its wait
        assert self.loop.call(lambda: self.broker.status(req.id)) is not None
        return req, future


@pytest.fixture
def appliance(tmp_path: Path) -> Iterator[Appliance]:
    broker, records, clock = make_broker()
    path = tmp_path / "run" / "approvals.sock"
    server = ApprovalServer(broker, path, allowed_uids={os.geteuid()})
    server.bind()
    loop = LoopThread()
    loop.spawn(server.serve())
    keys = {}
    for key in (ALICE, BOB, MALLORY):
        keys[key.name] = tmp_path / f"{key.name}.key"
        write_key_pair(key, keys[key.name], tmp_path / f"{key.name}.vkey")
    try:
        yield Appliance(loop, broker, records, clock, path, keys)
    finally:
        loop.stop()
        server.close()


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run ``appliance ARGS`` through the real entry point; return (exit code, out, err)."""
    runner = CliRunner()
    with runner.isolation() as (out, err, _):
        argv, sys.argv = sys.argv, ["appliance", *args]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.argv = argv
        return code, out.getvalue().decode(), err.getvalue().decode()


def test_list_empty_and_pending(appliance: Appliance) -> None:
    code, out, _ = run_cli("approvals", "list", "--socket", str(appliance.socket))
    assert (code, out) == (0, "no approval requests are pending\n")
    req, _ = appliance.hold()

    code, out, _ = run_cli("approvals", "list", "--socket", str(appliance.socket))
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["ID", "EXPIRES", "TARGET", "RULE", "IDENTITY", "STATEMENT"]
    assert row.startswith(f"{req.id}  2026-11-25T12:10:00Z  orders-db/ci-writer  prod-deletes")
    assert row.endswith(MASKED)

    code, out, _ = run_cli(
        "approvals", "list", "--socket", str(appliance.socket), "--format", "json"
    )
    assert code == 0
    [listed] = json.loads(out)
    assert listed["id"] == req.id and listed["state"] == "pending"
    assert listed["statement_sha256"] == req.statement_sha256


def test_approve(appliance: Appliance) -> None:
    req, held = appliance.hold()
    code, out, err = run_cli(
        "approvals",
        "approve",
        req.id,
        "--key",
        str(appliance.keys["alice"]),
        "--reason",
        "OPS-12 data fix",
        "--socket",
        str(appliance.socket),
    )
    assert (code, err) == (0, ""), err
    assert f"statement  {MASKED}" in out and f"sha256     {req.statement_sha256}" in out
    assert out.endswith(f"accepted: request {req.id} approved by alice\n")
    outcome = held.result(timeout=30)
    assert outcome.verdict is Resolution.GRANTED and outcome.reason == "OPS-12 data fix"
    granted = appliance.loop.call(lambda: appliance.records.last("approval.granted"))
    assert granted["note"] == outcome.note and "— alice " in str(outcome.note)


def test_approve_shows_the_window_it_grants(appliance: Appliance) -> None:
    req, held = appliance.hold(window=timedelta(minutes=15))
    code, out, _ = run_cli(
        "approvals", "approve", req.id, "--key", str(appliance.keys["alice"]),
        "--socket", str(appliance.socket),
    )  # fmt: skip
    assert code == 0
    window = "an approval also covers this statement from this job until 2026-11-25T12:15:00Z"
    assert f"window     {window}\n" in out
    assert held.result(timeout=30).granted


def test_deny(appliance: Appliance) -> None:
    req, held = appliance.hold(approvers=("alice", "bob"))
    code, out, _ = run_cli(
        "approvals",
        "deny",
        req.id,
        "--key",
        str(appliance.keys["bob"]),
        "--reason",
        "not during the freeze",
        "--socket",
        str(appliance.socket),
    )
    assert code == 0 and out.endswith(f"accepted: request {req.id} denied by bob\n")
    outcome = held.result(timeout=30)
    assert outcome.message() == f"approval {req.id} denied by bob: not during the freeze"


@pytest.mark.parametrize(
    ("signer", "reason"), [("bob", "approver-not-named"), ("mallory", "unknown-key")]
)
def test_rejected_decisions_exit_1_and_are_recorded(
    appliance: Appliance, signer: str, reason: str
) -> None:
    req, held = appliance.hold()
    code, _, err = run_cli(
        "approvals",
        "approve",
        req.id,
        "--key",
        str(appliance.keys[signer]),
        "--socket",
        str(appliance.socket),
    )
    assert code == 1
    assert err.startswith(f"error: decision rejected ({reason}): ")
    assert not held.done()
    rejected = appliance.loop.call(lambda: appliance.records.last("approval.rejected"))
    assert rejected["reason"] == reason and f"request {req.id}" in str(rejected["note"])


def test_deciding_a_closed_request_exits_1(appliance: Appliance) -> None:
    req, held = appliance.hold()
    args = ["--key", str(appliance.keys["alice"]), "--socket", str(appliance.socket)]
    assert run_cli("approvals", "approve", req.id, *args)[0] == 0
    held.result(timeout=30)

    code, _, err = run_cli("approvals", "deny", req.id, *args)

    assert code == 1 and err == f"error: request {req.id} is already granted by alice\n"


def test_deciding_a_timed_out_request_exits_1(appliance: Appliance) -> None:
    req, held = appliance.hold()
    appliance.loop.call(lambda: appliance.clock.advance(600))
    assert held.result(timeout=30).verdict is Resolution.TIMED_OUT
    status = appliance.loop.call(lambda: appliance.broker.status(req.id))
    assert status is not None and status.state is RequestState.TIMED_OUT

    code, _, err = run_cli(
        "approvals", "approve", req.id, "--key", str(appliance.keys["alice"]),
        "--socket", str(appliance.socket),
    )  # fmt: skip

    assert code == 1 and "is already timeout" in err


def test_bad_input_and_no_appliance_exit_2(appliance: Appliance, tmp_path: Path) -> None:
    sock = ["--socket", str(appliance.socket)]
    key = ["--key", str(appliance.keys["alice"])]

    unknown = run_cli("approvals", "approve", "ffffffffffffffffffff", *key, *sock)
    bad_id = run_cli("approvals", "approve", "../etc", *key, *sock)
    no_key = run_cli("approvals", "approve", "ffffffffffffffffffff", "--key", "/nope", *sock)
    no_socket = run_cli("approvals", "list", "--socket", str(tmp_path / "absent.sock"))
    long_reason = appliance.hold()[0]
    too_long = run_cli("approvals", "deny", long_reason.id, *key, *sock, "--reason", "x" * 1001)

    assert unknown[0] == 2 and "no approval request 'ffffffffffffffffffff'" in unknown[2]
    assert bad_id[0] == 2 and "not a request id" in bad_id[2]
    assert no_key[0] == 2 and "cannot read signing key /nope" in no_key[2]
    assert no_socket[0] == 2 and "is the appliance running?" in no_socket[2]
    assert too_long[0] == 2 and "reason longer than 1000" in too_long[2]


def test_approver_option_signs_under_another_policy_name(appliance: Appliance) -> None:
    # The policy calls alice's key "alice"; signing as "bob" with alice's key is refused.
    req, held = appliance.hold(approvers=("alice", "bob"))
    code, _, err = run_cli(
        "approvals", "approve", req.id, "--key", str(appliance.keys["alice"]),
        "--approver", "bob", "--socket", str(appliance.socket),
    )  # fmt: skip
    assert code == 1 and "(approver-mismatch)" in err
    assert not held.done()


def test_key_from_keys_generate_approves(tmp_path: Path) -> None:
    """The whole approver workflow: `appliance keys generate --approver`, the vkey in the
    policy, `appliance approvals approve` with the generated key."""
    prefix = tmp_path / "carol"
    code, _, err = run_cli("keys", "generate", "--approver", "carol", "--out", str(prefix))
    assert code == 0, err
    vkey = load_verifier_key(prefix.with_suffix(".vkey"))
    broker, _, _ = make_broker()
    broker.approver_keys = {**broker.approver_keys, "carol": vkey}
    path = tmp_path / "approvals.sock"
    server = ApprovalServer(broker, path, allowed_uids={os.geteuid()})
    server.bind()
    loop = LoopThread()
    try:
        loop.spawn(server.serve())
        app = Appliance(loop, broker, Recorder(), ManualClock(T0), path, {})
        req, held = app.hold(approvers=("carol",))
        code, out, err = run_cli(
            "approvals", "approve", req.id, "--key", str(prefix.with_suffix(".key")),
            "--socket", str(path),
        )  # fmt: skip
        assert code == 0, err
        assert out.endswith(f"accepted: request {req.id} approved by carol\n")
        outcome = held.result(timeout=30)
        assert outcome.granted and outcome.approver == "carol"
    finally:
        loop.stop()
        server.close()
