"""The transform factories the proxies send to the ledger writer process, pickled there and
used there, as the proxy sends them: after their masker has served the job (its caches hold
COPY formats and column plans, and pickle with it).

Why: a factory is pickled once per writer (:func:`appliance.ledger.sender._factory_id`) and
unpickled in the writer process. A masking class compiled with mypyc that cannot be
unpickled (a compiled frozen dataclass: "cannot assign to field") stops the writer there,
and every later append fails closed. The unit suite runs in both builds (``make unit``), and
the writer process inherits the build, so this runs the compiled classes in the compiled
run and the sources in the pure one. Each blob the writer process writes must be the bytes
the same factory gives in this process.
"""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.ledger import iter_entries, verify_ledger
from appliance.ledger.api import PendingBlob
from appliance.ledger.remote import RemoteLedger
from appliance.ledger.result_sink import COPY, COPY_END, HEADER, ROWS, _framed, transforms
from appliance.masking import ColumnRule, MaskCounts, Masker, MaskingConfig, Style, TargetMasker
from appliance.masking.postgres import CopyPlan, ResponseMasker
from appliance.protocols.postgres.messages import DataRow, FieldDescription, RowDescription
from appliance.proxy.http.recording import body_transforms
from appliance.proxy.mysql.recording import RowsTransform as MySQLRows
from appliance.proxy.pg.rows import RowsTransform as PgRows
from appliance.proxy.ssh.terminal import StreamTransforms, frame
from appliance.proxy.ssh.transfers import MaskedText
from tests.unit.ledger.conftest import KEY, ORIGIN

CARD = "4111 1111 1111 1111"


def _served_masker() -> TargetMasker:
    """A target's masker after it masked rows and COPY data (text and CSV) for the job, as
    the relay's ResponseMasker does before the first result reaches the ledger."""
    config = MaskingConfig(columns=(ColumnRule("ssn", Style.HASH),))
    tm = Masker(config, hmac_key=b"k" * 32).for_target("db")
    job = ResponseMasker(tm)
    for statement, sep in (("COPY people TO STDOUT", "\t"), ("COPY people TO STDOUT CSV", ",")):
        plan = job.copy_plan(statement, binary=False)
        assert isinstance(plan, CopyPlan)
        data = sep.join(["1", CARD, "x"]).encode() + b"\n"
        assert job.mask_copy(plan, b"d" + struct.pack("!I", len(data) + 4) + data) is not None
    described = RowDescription((FieldDescription("card"), FieldDescription("ssn")))
    masked = job.mask_frame(job.plan(described, ()), DataRow((CARD.encode(), b"123")).encode())
    assert masked is not None
    assert tm._copy_formats and tm._plans  # what the pickled factory carries
    return tm


def _pg_chunk() -> bytes:
    header = orjson.dumps(
        {"columns": ["card", "ssn"], "types": [25, 25], "formats": [0]},
        option=orjson.OPT_SORT_KEYS,
    )
    rows = b"".join(DataRow((CARD.encode(), b"123-45-6789")).encode() for _ in range(3))
    copy_text = b"".join(
        b"d" + struct.pack("!I", len(line) + 4) + line
        for line in (f"1\t{CARD}\n".encode(), b"2\tnothing\n")
    )
    copy_csv = b"d" + struct.pack("!I", 4 + 22) + f'"{CARD}",1\n'.encode()
    return b"".join(
        (
            _framed(HEADER, header),
            _framed(ROWS, rows),
            _framed(HEADER, orjson.dumps({"copy": "out", "csv": False})),
            _framed(COPY, copy_text),
            _framed(COPY_END, b""),
            _framed(HEADER, orjson.dumps({"copy": "out", "csv": True})),
            _framed(COPY, copy_csv),
            _framed(COPY_END, b""),
        )
    )


def _mysql_chunk() -> bytes:
    header = {
        "columns": ["card"],
        "types": [253],
        "unsigned": [False],
        "bytes": [False],
        "tables": ["shop.people"],
        "binary": False,
    }
    row = bytes([len(CARD)]) + CARD.encode()
    return _framed(HEADER, orjson.dumps(header)) + _framed(ROWS, struct.pack("!I", len(row)) + row)


def _factories(tm: TargetMasker) -> list[tuple[str, Any, bytes]]:
    """(name, factory, a blob) for each kind of factory a proxy sends its writer."""
    body = orjson.dumps({"content_type": "text/plain", "content_encoding": None, "complete": True})
    ssh = frame(b"h", 0, orjson.dumps({"pty": False})) + frame(b"o", 1, f"{CARD}\n".encode())
    return [
        ("pg rows", transforms(PgRows, tm), _pg_chunk()),
        ("mysql rows", transforms(MySQLRows, tm), _mysql_chunk()),
        ("http body", body_transforms(tm, ()), body + b"\n" + f"card {CARD}".encode()),
        ("ssh terminal", StreamTransforms(tm), ssh),
        ("ssh transfer", MaskedText(tm), f"card {CARD}\n".encode()),
    ]


def _in_process(factory: Any, blob: bytes) -> tuple[bytes, dict[str, Any]]:
    transform, annotate = factory.new()
    return transform(blob), dict(annotate())


def test_the_factories_a_proxy_sends_run_in_the_writer_process(tmp_path: Path) -> None:
    tm = _served_masker()
    made = _factories(tm)
    expected = [_in_process(factory, blob) for _, factory, blob in made]
    for (name, _, _), (out, _) in zip(made, expected, strict=True):
        assert CARD.encode() not in out and b"REDACTED" in out, name  # masked, not vacuous
    d = tmp_path / "l"
    with RemoteLedger.open(d, origin=ORIGIN, key=KEY) as ledger:
        for name, factory, blob in made:
            # twice: the factory is pickled and sent with the first, named by the second
            for n in range(2):
                ledger.append(
                    "response",
                    session="s",
                    data={"name": name, "n": n},
                    blobs={"result": PendingBlob(factory, blob)},
                )
        ledger.flush(30)
    results = [e.obj["data"] for e in iter_entries(d) if e.obj["type"] == "response"]
    assert len(results) == 2 * len(made)
    for i, ((name, _, _), (out, note)) in enumerate(zip(made, expected, strict=True)):
        for data in results[2 * i : 2 * i + 2]:
            assert isinstance(data, dict) and data["name"] == name
            ref = data["result"]
            assert "error" not in ref and "annotation_error" not in ref, (name, ref)
            assert ref["inline"].encode() == out, name
            assert {k: v for k, v in ref.items() if k not in ("sha256", "size", "inline")} == note
    assert verify_ledger(d, [KEY.verifier()]).ok


@pytest.mark.parametrize("csv", [False, True])
def test_a_masker_that_served_copy_pickles_with_its_formats(csv: bool) -> None:
    """In this process too (the same bytes as the writer process would unpickle): the COPY
    formats and plans a served masker keeps come back equal, and mask the same."""
    import pickle

    tm = _served_masker()
    copy = pickle.loads(pickle.dumps(tm))
    assert copy._copy_formats == tm._copy_formats and copy._plans == tm._plans
    plan = tm.column_plan(None, ["a", "b"], formats=[0])
    line = (f"1,{CARD}\n" if csv else f"1\t{CARD}\n").encode()
    delimiter = "," if csv else "\t"
    got = copy.mask_copy_line(plan, line, MaskCounts(), csv=csv, delimiter=delimiter)
    assert got == tm.mask_copy_line(plan, line, MaskCounts(), csv=csv, delimiter=delimiter)
    assert CARD.encode() not in got


# What the writer process must not import to run the SQL protocols' factories: the session
# core's side (relay, policy, the SQL parser) and cryptography (upstream authentication).
# They were 14 MB of its memory, counted in issue 19's RSS goal at 200 sessions.
_NOT_IN_THE_WRITER = ("pglast", "cryptography", "appliance.policy", "appliance.proxy.pg.relay")


def test_the_writer_process_runs_the_sql_factories_without_the_session_cores_imports() -> None:
    tm = _served_masker()
    sent = pickle.dumps((transforms(PgRows, tm), transforms(MySQLRows, tm), _pg_chunk()))
    # As the writer process starts (remote.py's child), then unpickles what the proxy sent
    # and runs it on a chunk; in the build this run tests (APPLIANCE_PURE is inherited).
    code = (
        "import pickle, sys\n"
        "from appliance.ledger.remote import child_main\n"
        "pg, mysql, chunk = pickle.loads(sys.stdin.buffer.read())\n"
        "transform, _ = pg.new()\n"
        "assert transform(chunk)\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-P", "-c", code],
        input=sent,
        capture_output=True,
        check=True,
    )
    modules = set(done.stdout.decode().split())
    assert "appliance.proxy.pg.rows" in modules and "appliance.proxy.mysql.recording" in modules
    assert not modules & set(_NOT_IN_THE_WRITER)
