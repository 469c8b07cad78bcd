"""Just-in-time approvals through a real appliance with real clients (issue 6).

A `review` statement is held while psql waits; decisions arrive over the appliance's
approvals socket, signed with approver keys made by `appliance keys generate --approver`.
Held then approved (it runs), held then denied (the job gets the approver's name and
reason, the session goes on), held then timed out; and decisions that must be refused:
signed by an unknown key, by an approver the rule does not name, for another request, or
replayed. Every outcome is in the ledger, the accepted notes verbatim. All of it again with
two proxy workers (the daemon's broker holds their statements).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from appliance.approvals import ApprovalsClient, DecisionRejected
from appliance.approvals.decision import SignedDecision, sign_decision
from appliance.signing.keys import SigningKey, load_signing_key, load_verifier_key
from appliance.signing.note import open_note
from tests.lab.approvals import cli, entries_of, keygen, wait_pending
from tests.lab.lab import Lab, PgServer
from tests.lab.proxy import TargetSpec, job_env, running_appliance

PORT = 6481


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-workers"])
def setup(
    request: pytest.FixtureRequest,
    lab: Lab,
    pg: PgServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """The appliance serving from its own process, then from two proxy workers whose held
    statements the daemon's broker holds (``proxy.workers``: issue 19)."""
    work = tmp_path_factory.mktemp("approvals")
    alice_key, alice_vkey = keygen(work, "alice")
    bob_key, bob_vkey = keygen(work, "bob")
    socket_path = work / "run" / "approvals.sock"
    policy = {
        "approvals": {
            "timeout": "60s",
            "socket": str(socket_path),
            "approvers": [{"name": "alice", "key": alice_vkey}, {"name": "bob", "key": bob_vkey}],
        },
        "rules": [
            {
                "name": "quick-review",
                "match": {"classes": ["truncate"]},
                "action": "review",
                "approvers": ["alice"],
                "timeout": "2s",
            },
            {
                "name": "deletes-need-alice",
                "match": {"classes": ["delete"]},
                "action": "review",
                "approvers": ["alice"],
            },
            {"name": "default", "action": "allow"},
        ],
    }
    pg.admin_sql(
        "DROP TABLE IF EXISTS held; CREATE TABLE held (id int); INSERT INTO held SELECT generate_series(1, 10);"
        "ALTER TABLE held OWNER TO app;",
        database="app",
    )
    with running_appliance(
        lab,
        pg,
        work / "appliance",
        targets=[TargetSpec("db", PORT)],
        policy=policy,
        proxy={"workers": request.param},
    ) as app:
        yield {
            "app": app,
            "client": ApprovalsClient(socket_path, timeout=10),
            "alice": alice_key,
            "bob": bob_key,
            "socket": socket_path,
            "work": work,
            "alice_vkey": alice_vkey,
        }


def start_job(lab: Lab, sql: str, app_name: str) -> subprocess.Popen[bytes]:
    # ON_ERROR_STOP off: after a refused statement psql goes on with the next one.
    return lab.popen(
        ["psql", "-X", "-A", "-t", "-c", sql, "-c", "select 'still usable'"],
        job=True,
        env=job_env(PORT, PGAPPNAME=app_name),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes]) -> tuple[str, str]:
    out, err = proc.communicate(timeout=60)
    return out.decode(), err.decode()


def test_held_then_approved_runs_the_statement(
    lab: Lab, pg: PgServer, setup: dict[str, Any]
) -> None:
    job = start_job(lab, "DELETE FROM held WHERE id = 1", "approve-me")
    status = wait_pending(setup["client"], text="DELETE FROM held WHERE id = 1")
    assert job.poll() is None  # the job waits
    assert pg.admin_sql("select count(*) from held where id = 1", database="app").strip() == "1"
    r = cli(
        "approve",
        status.request.id,
        "--key",
        str(setup["alice"]),
        "--reason",
        "ticket 1",
        "--socket",
        str(setup["socket"]),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out, err = finish(job)
    assert "still usable" in out, (out, err)
    assert pg.admin_sql("select count(*) from held where id = 1", database="app").strip() == "0"
    granted = entries_of(setup["app"], "approval.granted", status.request.id)[0]
    # The signed decision is stored verbatim and verifies with alice's public key alone.
    text, keys = open_note(granted["data"]["note"], [load_verifier_key(setup["alice_vkey"])])
    assert f"request {status.request.id}\n" in text and "decision approve\n" in text
    assert [k.name for k in keys] == ["alice"]
    assert granted["session"] == status.request.session


def test_held_then_denied_tells_the_job_who_and_why(
    lab: Lab, pg: PgServer, setup: dict[str, Any]
) -> None:
    job = start_job(lab, "DELETE FROM held WHERE id = 2", "deny-me")
    status = wait_pending(setup["client"], text="DELETE FROM held WHERE id = 2")
    r = cli(
        "deny",
        status.request.id,
        "--key",
        str(setup["alice"]),
        "--reason",
        "change freeze",
        "--socket",
        str(setup["socket"]),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out, err = finish(job)
    assert "denied by alice" in err and "change freeze" in err, err
    assert "still usable" in out  # the session goes on
    assert pg.admin_sql("select count(*) from held where id = 2", database="app").strip() == "1"
    entries_of(setup["app"], "approval.denied", status.request.id)


def test_held_then_timed_out(lab: Lab, setup: dict[str, Any]) -> None:
    job = start_job(lab, "TRUNCATE held", "time-me-out")
    status = wait_pending(setup["client"], text="TRUNCATE held")
    out, err = finish(job)  # the rule's timeout is 2 s
    assert "timed out" in err, err
    assert "still usable" in out
    entries_of(setup["app"], "approval.timeout", status.request.id)


def test_bad_decisions_are_refused_and_recorded(
    lab: Lab, pg: PgServer, setup: dict[str, Any]
) -> None:
    client: ApprovalsClient = setup["client"]
    job = start_job(lab, "DELETE FROM held WHERE id = 3", "refusals")
    status = wait_pending(client, text="DELETE FROM held WHERE id = 3")
    other = start_job(lab, "DELETE FROM held WHERE id = 4", "refusals-other")
    other_status = wait_pending(client, text="DELETE FROM held WHERE id = 4")
    req = status.request
    alice = load_signing_key(setup["alice"])

    def decision(request_id: str, sha: str, approver: str = "alice") -> SignedDecision:
        return SignedDecision(request_id, sha, "approve", approver, datetime.now(UTC), "")

    cases = {
        # signed by a key the policy does not know
        "unknown-key": sign_decision(
            decision(req.id, req.statement_sha256, "mallory"), SigningKey.generate("mallory")
        ),
        # bob is an approver of the policy, but this rule names only alice
        "approver-not-named": sign_decision(
            decision(req.id, req.statement_sha256, "bob"), load_signing_key(setup["bob"])
        ),
        # for another request: the other request's id with this statement's hash
        "statement-mismatch": sign_decision(
            decision(other_status.request.id, req.statement_sha256), alice
        ),
    }
    for code, note in cases.items():
        with pytest.raises(DecisionRejected) as info:
            client.decide(note)
        assert info.value.reason == code, (code, info.value)
    assert job.poll() is None and other.poll() is None  # still held
    good = sign_decision(decision(req.id, req.statement_sha256), alice)
    client.decide(good)
    out, err = finish(job)
    assert "still usable" in out, err
    with pytest.raises(DecisionRejected) as info:  # the same note a second time
        client.decide(good)
    assert info.value.reason in ("replay", "already-decided")
    r = cli(
        "deny",
        other_status.request.id,
        "--key",
        str(setup["alice"]),
        "--reason",
        "no",
        "--socket",
        str(setup["socket"]),
    )
    assert r.returncode == 0
    finish(other)
    expected = {"unknown-key", "approver-not-named", "statement-mismatch"}

    def reasons(entries: list[dict[str, Any]]) -> set[str]:
        return {e["data"]["reason"] for e in entries if e["type"] == "approval.rejected"}

    def all_written(entries: list[dict[str, Any]]) -> bool:
        found = reasons(entries)
        return expected <= found and bool({"replay", "already-decided"} & found)

    setup["app"].wait_for(all_written)


def test_the_ledger_verifies(setup: dict[str, Any]) -> None:
    r = setup["app"].verify()
    assert r.returncode == 0, r.stdout + r.stderr
