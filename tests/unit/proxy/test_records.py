"""What every protocol's recorder shares (appliance.proxy.records): which entries go with a
statement and a response, masked text, a response's result blob or ``"result": null``, the
blob transform's masking counts, and blobs aborted when a session ends mid-statement."""

from __future__ import annotations

from typing import Any

from appliance.ledger.api import PendingBlob
from appliance.masking import MaskCounts, Masker, MaskingConfig, TargetMasker
from appliance.proxy.records import MaskingTransform, SessionRecords

CARD = "4111111111111111"


class Upper(MaskingTransform):
    """Each part's body upper-cased and masked as text."""

    def part(self, kind: bytes, body: bytes) -> bytes:
        assert isinstance(self.masker, TargetMasker)
        return self.masker.mask_text(body.decode(), self.counts).upper().encode() + b"\n"


class Recorder(SessionRecords):
    transform = Upper


class Ledger:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any], Any]] = []
        self.aborted = 0

    def append(self, type: str, *, data: Any, blobs: Any = None, **_: Any) -> None:
        self.entries.append((type, dict(data), blobs))

    def open_blob(self, transform: Any = None) -> Any:
        raise AssertionError("small results travel with their entry")


def _recorder(record_rows: bool = True) -> tuple[Recorder, Ledger]:
    ledger = Ledger()
    masker = Masker(MaskingConfig(), hmac_key=b"k" * 32).for_target("db")
    rec = Recorder(
        ledger,  # type: ignore[arg-type]
        session="s1",
        target="db",
        account="ci",
        identity={"source": "unattributed"},
        masker=masker,
        record_rows=record_rows,
        max_result_bytes=1 << 20,
        clock=lambda: 0.0,
    )
    return rec, ledger


def test_a_decided_statement_brings_its_decision_and_masking_entries() -> None:
    rec, ledger = _recorder()
    counts = MaskCounts()
    text = rec.mask_statement(f"delete from t where card = '{CARD}'", counts)
    assert CARD not in text
    assert rec.mask_statement(f"delete from t where card = '{CARD}'", counts) == text  # cached
    rec.statement_entries(1, {"n": 1, "text": text}, {"decision": "review", "rule": "hold"}, counts)
    assert [t for t, _, _ in ledger.entries] == ["statement", "policy.decision", "masking.applied"]
    assert ledger.entries[0][1]["masking"]["detectors"] == {"card": 2}
    ledger.entries.clear()
    rec.statement_entries(2, {"n": 2, "text": "select 1"}, {"decision": "allow"}, MaskCounts())
    rec.statement_entries(3, {"n": 3, "text": "x"}, {"decision": "syntax_error"}, MaskCounts())
    rec.statement_entries(4, {"n": 4}, {"decision": "allow", "enforced": False}, MaskCounts())
    assert [t for t, _, _ in ledger.entries] == ["statement"] * 3 + ["policy.decision"]


def test_a_response_carries_its_masked_rows_or_none() -> None:
    rec, ledger = _recorder()
    sink = rec.sink(1)
    assert sink is not None and rec.sink(1) is sink  # one blob for all its result sets
    sink.header({"columns": ["card"]})
    sink.add(CARD.encode())
    sink.close()
    to_job = MaskCounts()
    to_job.add("card", "card")
    rec.response_entries(1, {"n": 1}, MaskCounts(), to_job)
    rec.response_entries(2, {"n": 2}, MaskCounts())
    (t1, d1, b1), (t2, _, _), (t3, d3, b3) = ledger.entries
    assert (t1, t2, t3) == ("response", "masking.applied", "response")
    assert isinstance(b1["result"], PendingBlob) and d1["masked_to_job"]["detectors"] == {"card": 1}
    transform, annotate = b1["result"].transform.new()
    out = transform(b1["result"].data)
    assert CARD.encode() not in out and b"[REDACTED:CARD]" in out
    assert annotate() == {"masking": {"detectors": {"card": 1}, "columns": {}}}
    assert d3["result"] is None and b3 is None


def test_rows_not_recorded_and_blobs_of_an_ended_session() -> None:
    rec, _ = _recorder(record_rows=False)
    assert rec.sink(1) is None
    rec, _ = _recorder()
    sink = rec.sink(1)
    assert sink is not None
    rec.discard()
    assert sink.closed and rec.sink(1) is not sink
