"""The approvals socket for real: a Unix socket in a temp dir, the blocking client in a thread.

The server and the broker run in the test's event loop; the client runs in a worker thread
(``asyncio.to_thread``), as the CLI would in its own process.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from appliance.approvals import (
    ApprovalsClient,
    ApprovalServer,
    ApprovalsProtocolError,
    ApprovalsSocketError,
    ApprovalsUnavailable,
    Broker,
    DecisionRejected,
    RequestNotFound,
    RequestState,
    Resolution,
)
from appliance.approvals.server import MAX_LINE

from .helpers import ALICE, MALLORY, decision_note, make_broker, new_request

ME = os.geteuid()


@asynccontextmanager
async def serving(
    path: Path, broker: Broker, allowed: frozenset[int] = frozenset({ME})
) -> AsyncIterator[ApprovalServer]:
    server = ApprovalServer(broker, path, allowed_uids=allowed)
    server.bind()
    task = asyncio.create_task(server.serve())
    try:
        yield server
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def raw_exchange(path: Path, *lines: bytes) -> list[dict[str, object]]:
    """Send raw lines on one connection; return the decoded answer lines."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        for line in lines:
            s.sendall(line)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return [json.loads(x) for x in data.splitlines()]


def test_list_get_decide_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run" / "approvals.sock"

    async def scenario() -> None:
        broker, rec, _ = make_broker()
        async with serving(path, broker):
            client = ApprovalsClient(path, timeout=10)
            assert await asyncio.to_thread(client.list_requests) == []
            req = new_request(broker)
            task = asyncio.create_task(broker.request(req))
            await asyncio.sleep(0)

            listed = await asyncio.to_thread(client.list_requests)
            got = await asyncio.to_thread(client.get, req.id)
            accepted = await asyncio.to_thread(client.decide, decision_note(req, reason="ok"))
            outcome = await task
            after = await asyncio.to_thread(client.get, req.id)

        assert [s.request for s in listed] == [req]
        assert got.request == req and got.state is RequestState.PENDING
        assert (accepted.request_id, accepted.decision, accepted.approver) == (
            req.id,
            "approve",
            "alice",
        )
        assert outcome.verdict is Resolution.GRANTED
        assert after.state is RequestState.GRANTED and after.approver == "alice"
        assert rec.types() == ["approval.requested", "approval.granted"]
        assert not path.exists()  # removed on shutdown

    run(scenario)


def test_socket_is_private(tmp_path: Path) -> None:
    path = tmp_path / "run" / "approvals.sock"
    path.parent.mkdir(mode=0o755)

    async def scenario() -> None:
        broker, _, _ = make_broker()
        async with serving(path, broker):
            st_sock = os.lstat(path)
            st_dir = os.lstat(path.parent)
            assert stat.S_ISSOCK(st_sock.st_mode) and stat.S_IMODE(st_sock.st_mode) == 0o600
            assert stat.S_IMODE(st_dir.st_mode) == 0o700  # tightened from 0755
            assert st_sock.st_uid == ME and st_dir.st_uid == ME

    run(scenario)


def test_rejected_decision_and_errors_over_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "approvals.sock"

    async def scenario() -> None:
        broker, rec, _ = make_broker()
        async with serving(path, broker):
            client = ApprovalsClient(path, timeout=10)
            req = new_request(broker)
            task = asyncio.create_task(broker.request(req))
            await asyncio.sleep(0)
            with pytest.raises(DecisionRejected) as rejected:
                await asyncio.to_thread(client.decide, decision_note(req, MALLORY))
            with pytest.raises(RequestNotFound):
                await asyncio.to_thread(client.get, "ffffffffffffffffffff")
            answers = await asyncio.to_thread(
                raw_exchange,
                path,
                b"not json\n",
                b"[1, 2]\n",
                b'{"op": "shred"}\n',
                b'{"op": "get"}\n',
                b'{"op": "decide", "note": 7}\n',
                b'{"op": "list"}\n',
            )
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        assert rejected.value.reason == "unknown-key" and rejected.value.exit_code == 1
        assert rec.types() == ["approval.requested", "approval.rejected", "approval.withdrawn"]
        codes = [a.get("code") for a in answers]
        assert codes == ["bad-request"] * 5 + [None]
        assert answers[-1]["ok"] is True and len(answers[-1]["requests"]) == 1  # type: ignore[arg-type]

    run(scenario)


def test_peer_credentials_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "approvals.sock"

    async def scenario() -> None:
        broker, _, _ = make_broker()
        async with serving(path, broker, allowed=frozenset({ME + 1})):
            answers = await asyncio.to_thread(raw_exchange, path, b'{"op": "list"}\n')
            with pytest.raises(ApprovalsUnavailable, match="refused this connection"):
                await asyncio.to_thread(ApprovalsClient(path, timeout=10).list_requests)
        assert answers == [
            {"ok": False, "code": "forbidden", "error": f"uid {ME} may not use approvals"}
        ]

    run(scenario)


def test_default_allows_only_root(tmp_path: Path) -> None:
    broker, _, _ = make_broker()
    assert ApprovalServer(broker, tmp_path / "s").allowed_uids == frozenset({0})


def test_overlong_line_is_refused_and_the_server_keeps_serving(tmp_path: Path) -> None:
    path = tmp_path / "approvals.sock"

    async def scenario() -> None:
        broker, _, _ = make_broker()
        async with serving(path, broker):
            answers = await asyncio.to_thread(raw_exchange, path, b"x" * (MAX_LINE + 10) + b"\n")
            after = await asyncio.to_thread(ApprovalsClient(path, timeout=10).list_requests)
        assert answers[0]["code"] == "too-long"
        assert after == []

    run(scenario)


def test_stale_socket_is_replaced_but_a_live_one_or_a_file_is_not(tmp_path: Path) -> None:
    path = tmp_path / "approvals.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # bound, never listening: what a crash leaves behind

    async def scenario() -> None:
        broker, _, _ = make_broker()
        async with serving(path, broker):
            with pytest.raises(ApprovalsSocketError, match="in use"):
                ApprovalServer(broker, path).bind()
            assert await asyncio.to_thread(ApprovalsClient(path, timeout=10).list_requests) == []

    run(scenario)
    path.write_text("not a socket")
    with pytest.raises(ApprovalsSocketError, match="not a socket"):
        ApprovalServer(make_broker()[0], path).bind()


def test_client_errors_when_nothing_listens(tmp_path: Path) -> None:
    with pytest.raises(ApprovalsUnavailable, match="is the appliance running"):
        ApprovalsClient(tmp_path / "none.sock").list_requests()


def test_client_refuses_a_garbled_answer(tmp_path: Path) -> None:
    path = tmp_path / "fake.sock"

    async def scenario() -> None:
        async def garble(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.readline()
            w.write(b'{"no": "ok field"}\n')
            await w.drain()
            w.close()

        server = await asyncio.start_unix_server(garble, path=str(path))
        async with server:
            with pytest.raises(ApprovalsProtocolError):
                await asyncio.to_thread(ApprovalsClient(path, timeout=10).list_requests)

    run(scenario)


def test_recorder_failure_is_an_internal_error_and_nothing_changes(tmp_path: Path) -> None:
    path = tmp_path / "approvals.sock"

    async def scenario() -> None:
        broker, rec, _ = make_broker()
        async with serving(path, broker):
            req = new_request(broker)
            task = asyncio.create_task(broker.request(req))
            await asyncio.sleep(0)
            rec.fail_on = "approval.granted"
            answers = await asyncio.to_thread(
                raw_exchange,
                path,
                json.dumps({"op": "decide", "note": decision_note(req, ALICE)}).encode() + b"\n",
            )
            assert broker.status(req.id).state is RequestState.PENDING  # type: ignore[union-attr]
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert answers[0]["code"] == "internal"
        assert "ledger disk full" in str(answers[0]["error"])
        assert "approval.granted" not in rec.types()

    run(scenario)
