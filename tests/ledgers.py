"""Synthetic fleet ledgers for report tests and benchmarks, written by the real LedgerWriter.

Each log is one runner boot: ``appliance.start``, sessions of a few kinds cycling (a query
with masked rows, a denied DROP, a DELETE held and approved with a real signed decision, a
TRUNCATE held until it times out, a DDL migration, an unattributed flow), and
``appliance.stop`` unless the boot ends uncleanly (then its last session has no end). The
entries follow the producers' data conventions (appliance.proxy.pg.recording,
appliance.approvals.broker); the lab test checks the report against a real appliance.
:class:`Expected` counts what was written, for tests to compare with the report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from appliance.approvals.decision import SignedDecision, sign_decision
from appliance.ledger import LedgerWriter
from appliance.ledger._framing import ENTRY_MAGIC, FrameScanner, encode_frame
from appliance.ledger.api import PendingBlob
from appliance.ledger.entries import canonical_json, format_ts, parse_entry
from appliance.signing.keys import SigningKey

T0 = 1796083200.0  # 2026-12-01T00:00:00Z
APPROVER = SigningKey.generate("alice", seed=b"\x33" * 32)
MASKED = {"detectors": {"card": 2, "ssn": 1}, "columns": {"customers.card": 2, "customers.ssn": 1}}
KINDS = ("query", "denied", "approved", "timeout", "ddl", "unattributed")


def ledger_key(origin: str) -> SigningKey:
    return SigningKey.generate(origin, seed=hashlib.sha256(origin.encode()).digest())


@dataclass
class Expected:
    """What a fleet holds, counted as it is written."""

    sessions: int = 0
    statements: int = 0
    denials: int = 0
    holds: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    masked: dict[str, int] = field(default_factory=dict)
    masked_to_job: dict[str, int] = field(default_factory=dict)
    unattributed: int = 0
    unended: int = 0
    privileged: int = 0
    entries: int = 0


class _Masking:
    """A TransformFactory like the proxy's: the writer annotates the result's reference
    with the masking counts."""

    def new(self) -> tuple[Callable[[bytes], bytes], Callable[[], Mapping[str, Any]]]:
        return (lambda chunk: chunk), (lambda: {"masking": MASKED})


def identity(n: int, *, attributed: bool = True) -> dict[str, Any]:
    if not attributed:
        return {"source": "unattributed", "how": "unattributed: no eBPF record of this connection"}
    repo, job = (("acme/shop", "migrate"), ("acme/billing", "backfill"))[n % 2]
    return {
        "source": "ebpf",
        "how": "ebpf+procfs",
        "pid": 1000 + n,
        "uid": 65534,
        "comm": "psql",
        "exe": "/usr/bin/psql",
        "ci": {"provider": "github", "repository": repo, "workflow": "deploy", "job": job,
               "run_id": str(40 + n)},
    }  # fmt: skip


class Boot:
    """One runner boot's log being written; see the module docstring."""

    def __init__(self, directory: Path, origin: str, expected: Expected, *, start: float) -> None:
        self.t = start
        self.expected = expected
        self.writer = LedgerWriter.open(
            directory, origin=origin, key=ledger_key(origin), clock=self._clock,
            checkpoint_interval=3600, checkpoint_entries=5000,
        )  # fmt: skip
        self.origin = origin
        self.writer.append("appliance.start", data={"version": "test", "pid": 1,
                                                    "policy": {"mode": "enforce"}})  # fmt: skip

    def _clock(self) -> float:
        self.t += 0.001
        return self.t

    def session(self, n: int, kind: str, *, statements: int = 1, end: bool = True) -> None:
        e = self.expected
        sid = hashlib.sha256(f"{self.origin}/{n}".encode()).hexdigest()[:16]
        ident = identity(n, attributed=kind != "unattributed")
        common = {"session": sid, "identity": ident, "account": "ci", "target": "orders-db"}
        w = self.writer

        def add(typ: str, data: dict[str, Any], **kw: Any) -> None:
            w.append(typ, **common, data=data, **kw)

        add("session.start", {"protocol": "postgres", "client": f"198.18.0.1:{40000 + n}",
                              "server": "198.18.0.2:5432", "database": "app", "user": "ci",
                              "policy_mode": "enforce"})  # fmt: skip
        e.sessions += 1
        e.unattributed += kind == "unattributed"
        for i in range(1, statements + 1):
            self._statement(add, kind, i)
        if kind in ("denied", "approved", "timeout", "ddl"):
            e.privileged += 1
        if end:
            add("session.end", {"reason": "job terminated the session", "statements": statements})
        else:
            e.unended += 1

    def _statement(self, add: Callable[..., None], kind: str, n: int) -> None:
        e = self.expected
        e.statements += 1
        allow = {"decision": "allow", "rule": "default", "classes": ["select"]}
        if kind in ("query", "unattributed"):
            add("statement", {"n": n, "protocol": "simple", "decision": allow,
                              "text": "SELECT name, card, ssn FROM customers"})  # fmt: skip
            rows = (
                b'{"columns":["name","card","ssn"]}\n["Ada","[REDACTED:CARD]","[REDACTED:SSN]"]\n'
            )
            add("response", {"n": n, "outcome": "ok", "tag": "SELECT 1", "rows": 1,
                             "masked_to_job": MASKED},
                blobs={"result": PendingBlob(_Masking(), rows)})  # fmt: skip
            add("masking.applied", {"n": n, "where": "rows sent to the job", **MASKED})
            for k, v in MASKED["detectors"].items():
                e.masked[k] = e.masked.get(k, 0) + v
                e.masked_to_job[k] = e.masked_to_job.get(k, 0) + v
        elif kind == "ddl":
            verdict = {"decision": "allow", "rule": "default", "classes": ["ddl"]}
            add("statement", {"n": n, "protocol": "simple", "decision": verdict,
                              "text": "CREATE TABLE customers_v2 (LIKE customers)"})  # fmt: skip
            add("response", {"n": n, "outcome": "ok", "tag": "CREATE TABLE", "rows": 0,
                             "result": None})  # fmt: skip
        elif kind == "denied":
            verdict = {"decision": "deny", "action": "deny", "rule": "no-drops",
                       "classes": ["drop"], "enforced": True,
                       "message": "DROP is not allowed from CI"}  # fmt: skip
            add("statement", {"n": n, "protocol": "simple", "decision": verdict,
                              "text": "DROP TABLE customers"})  # fmt: skip
            add("policy.decision", {"n": n, **verdict})
            add("response", {"n": n, "outcome": "denied", "rows": 0, "result": None})
            e.denials += 1
        else:
            self._hold(add, kind, n)

    def _hold(self, add: Callable[..., None], kind: str, n: int) -> None:
        e = self.expected
        text = "DELETE FROM customers WHERE id = 4" if kind == "approved" else "TRUNCATE audit"
        classes = ["delete"] if kind == "approved" else ["truncate"]
        verdict = {"decision": "review", "action": "review", "rule": "needs-a-human",
                   "classes": classes, "enforced": True, "approvers": ["alice"]}  # fmt: skip
        add("statement", {"n": n, "protocol": "simple", "decision": verdict, "text": text})
        add("policy.decision", {"n": n, **verdict})
        rid = hashlib.sha256(f"{self.origin}/{self.t}".encode()).hexdigest()[:20]
        sha = hashlib.sha256(text.encode()).hexdigest()
        created = format_ts(self.t)
        add("approval.requested", {"id": rid, "rule": "needs-a-human", "approvers": ["alice"],
                                   "statement": text, "statement_sha256": sha,
                                   "created": created, "expires": created})  # fmt: skip
        e.holds += 1
        if kind == "approved":
            when = datetime.fromtimestamp(int(self.t), UTC)
            d = SignedDecision(rid, sha, "approve", "alice", when, "ticket OPS-42")
            note = sign_decision(d, APPROVER)
            add("approval.granted", {"id": rid, "decision": "approve", "approver": "alice",
                                     "reason": "ticket OPS-42", "note": note,
                                     "statement_sha256": sha})  # fmt: skip
            add("response", {"n": n, "outcome": "ok", "tag": "DELETE 1", "rows": 1,
                             "approval": {"request": rid, "outcome": "granted",
                                          "approver": "alice"}})  # fmt: skip
            outcome = "granted"
        else:
            add("approval.timeout", {"id": rid, "statement_sha256": sha, "expires": created})
            add("response", {"n": n, "outcome": "timed out", "rows": 0})
            outcome = "timed out"
        e.outcomes[outcome] = e.outcomes.get(outcome, 0) + 1

    def close(self, *, clean: bool = True) -> None:
        if clean:
            self.writer.append("appliance.stop", data={"reason": "signal"})
        self.writer.close()
        self.expected.entries = 0  # recounted by the caller from the logs


def write_fleet(
    root: Path,
    *,
    boots: int = 2,
    sessions: int = 6,
    statements: int = 1,
    unclean_last: bool = True,
    start: float = T0,
) -> Expected:
    """``boots`` logs under ``root`` (runner-N/boot-1), ``sessions`` sessions each cycling
    through :data:`KINDS`, one day apart; the last boot ends uncleanly if ``unclean_last``."""
    expected = Expected()
    for b in range(boots):
        origin = f"ci.example/runner-{b}/boot-1"
        boot = Boot(root / f"runner-{b}" / "boot-1", origin, expected, start=start + b * 86400)
        last = b == boots - 1 and unclean_last
        for n in range(sessions):
            kind = KINDS[n % len(KINDS)]
            boot.session(n, kind, statements=statements, end=not (last and n == sessions - 1))
        boot.close(clean=not last)
    return expected


def read_json(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def tamper_denial(log: Path) -> None:
    """Rewrite the first denied statement as an allowed SELECT, with a valid frame: only the
    Merkle tree can tell."""
    data = (log / "entries.log").read_bytes()
    frames = list(FrameScanner(data, ENTRY_MAGIC))
    out = []
    done = False
    for f in frames:
        payload = f.payload
        obj = parse_entry(payload)
        if (
            not done
            and obj["type"] == "statement"
            and obj["data"]["decision"]["decision"] == "deny"
        ):
            obj["data"]["text"] = "SELECT 1"
            obj["data"]["decision"] = {
                "decision": "allow",
                "rule": "default",
                "classes": ["select"],
            }
            payload, done = canonical_json(obj), True
        out.append(encode_frame(ENTRY_MAGIC, f.seq, payload))
    assert done
    (log / "entries.log").write_bytes(b"".join(out))
