"""The ledger writer's masking of COPY rows of ``customers``, per row, in this process.

What it measures: :class:`~appliance.proxy.pg.rows.RowsTransform` (what the ledger writer
process runs on a result blob's chunks) over the 256 KiB chunks a :class:`~appliance.ledger.
result_sink.RowsSink` would hand it for ``COPY customers TO STDOUT`` (one row per CopyData
frame, as PostgreSQL sends them), rows made as :mod:`tests.bench.bench_masking_export` makes
them (an e-mail and a card number in every row, a timestamp, an amount, a prose note: one in
ten with a phone number, one in twenty with an e-mail), masking config the appliance's
default. Apart from the channel, framing, hashing and scheduling: issue 19's export waits on
exactly this work.

``python -m tests.bench.copyrows [ROWS] [ROUNDS]`` prints CPU and wall µs per row (best of the
rounds; the pre-filter may scan on a second thread)
for this checkout and, with ``COPYROWS_BASELINE=DIR`` (a directory holding another build's
``appliance/``, compiled or not), for that one, in alternation, each in a fresh process; and
checks that both wrote the same blob bytes. Under callgrind, compare two runs of
``python -m tests.bench.copyrows worker FILE`` on files of different row counts
(``python -m tests.bench.copyrows make ROWS FILE``) for instructions per row that the
machine's load does not move. ``python -m tests.bench.copyrows split [ROWS]`` prints where
this checkout's time goes: the pre-filter, the detectors per column, the rest.
``COPYROWS_TABLE=events`` measures the export bench's other table instead (log lines, one
e-mail in fifty); ``COPYROWS_KIND=rows`` the DataRows of ``SELECT *`` instead of COPY.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_LEN = struct.Struct("!I")
CHUNK = 256 * 1024  # as RowsSink gathers them
HEADER = b'{"copy":"out","csv":false}'  # what the recorder writes for COPY customers TO STDOUT


TABLE = os.environ.get("COPYROWS_TABLE", "customers")
# "copy": CopyData frames of COPY TO STDOUT; "rows": DataRow frames of SELECT * (text format)
KIND = os.environ.get("COPYROWS_KIND", "copy")


def make_chunks(rows: int, seed: int = 11) -> list[bytes]:
    """Chunks of parts (a header, then COPY runs of CopyData frames, then the COPY's end)."""
    from tests.bench.bench_masking_export import TABLES

    _row = TABLES[TABLE][1]
    rng = random.Random(seed)
    chunks: list[bytes] = []
    run = bytearray()

    def part(kind: bytes, body: bytes) -> bytes:
        return kind + _LEN.pack(len(body)) + body

    if KIND == "rows":
        # Split at the commas between columns, not at those of a type ("numeric(12,2)").
        columns = re.split(r",(?![^()]*\))", TABLES[TABLE][0])
        names = [c.split()[0] for c in columns]
        header = {"columns": names, "types": [25] * len(names), "formats": [0] * len(names)}
        first, kind = part(b"H", json.dumps(header).encode()), b"D"
    else:
        first, kind = part(b"H", HEADER), b"d"
    for i in range(rows):
        line = _row(i, rng).encode()
        if KIND == "rows":
            values = line.rstrip(b"\n").split(b"\t")
            body = struct.pack("!H", len(values)) + b"".join(_LEN.pack(len(v)) + v for v in values)
            run += b"D" + _LEN.pack(len(body) + 4) + body
        else:
            run += b"d" + _LEN.pack(len(line) + 4) + line
        if len(run) >= CHUNK:
            chunks.append((first if not chunks else b"") + part(kind, bytes(run)))
            run.clear()
    tail = part(kind, bytes(run)) if run else b""
    chunks.append((first if not chunks else b"") + tail + part(b"e", b""))
    return chunks


def worker(path: str) -> None:
    """Run the transform over the chunks in ``path``; print rows, CPU seconds, blob digest,
    and the cards and e-mails masked. Imports only ``appliance`` (from ``PYTHONPATH``)."""
    from appliance.masking import Masker, MaskingConfig
    from appliance.proxy.pg.rows import RowsTransform

    with open(path, "rb") as f:
        rows, chunks = pickle.load(f)
    masker = Masker(MaskingConfig(), hmac_key=b"").for_target("db")
    # Warm-up (pre-filter databases, plan caches) on a transform of its own.
    RowsTransform(masker)(chunks[0])
    transform = RowsTransform(masker)
    digest = hashlib.sha256()
    t0, w0 = time.process_time(), time.perf_counter()
    for chunk in chunks:
        digest.update(transform(chunk))
    took, wall = time.process_time() - t0, time.perf_counter() - w0
    counts = transform.annotation().get("masking", {}).get("detectors", {})
    print(rows, took, digest.hexdigest(), counts.get("card", 0), counts.get("email", 0), wall)


def split(path: str) -> None:
    """Where the transform's time goes, per row (this checkout only; timers add their own
    cost, about 0.2 us a call): the pre-filter's pass over each chunk, each column's values
    through the detectors (:meth:`TargetMasker.mask_scanned`, keyed by column and the
    detectors the pre-filter let through), and the rest (splitting, spans to fields,
    writing the fields back, JSON lines)."""
    from appliance.masking import Masker, MaskingConfig, TargetMasker
    from appliance.proxy.pg.rows import RowsTransform

    with open(path, "rb") as f:
        rows, chunks = pickle.load(f)
    masker = Masker(MaskingConfig(), hmac_key=b"").for_target("db")
    RowsTransform(masker)(chunks[0])
    spent: dict[str, float] = {}
    calls: dict[str, int] = {}
    where, scanned = TargetMasker.where, TargetMasker.mask_scanned

    def timed_where(self: TargetMasker, data: bytes, cut: int = 0) -> list[tuple[int, int, int]]:
        t0 = time.process_time()
        try:
            return where(self, data, cut)
        finally:
            spent["pre-filter (where)"] = (
                spent.get("pre-filter (where)", 0) + time.process_time() - t0
            )

    def timed_scanned(self: TargetMasker, action: Any, value: bytes, counts: Any, only: Any) -> Any:
        key = f"{action.name} by {'+'.join(self._m._values.names[i] for i in only)}"
        t0 = time.process_time()
        try:
            return scanned(self, action, value, counts, only)
        finally:
            spent[key] = spent.get(key, 0) + time.process_time() - t0
            calls[key] = calls.get(key, 0) + 1

    TargetMasker.where = timed_where  # type: ignore[method-assign]
    TargetMasker.mask_scanned = timed_scanned  # type: ignore[method-assign]
    try:
        transform = RowsTransform(masker)
        t0 = time.process_time()
        for chunk in chunks:
            transform(chunk)
        took = time.process_time() - t0
    finally:
        TargetMasker.where = where  # type: ignore[method-assign]
        TargetMasker.mask_scanned = scanned  # type: ignore[method-assign]
    print(f"{rows:,} rows: {took / rows * 1e6:.1f} us/row (CPU, timers included)")
    for key, s in sorted(spent.items(), key=lambda kv: -kv[1]):
        n = calls.get(key)
        each = f"  ({n:,} values, {s / n * 1e6:.1f} us each)" if n else ""
        print(f"  {key:44} {s / rows * 1e6:6.1f} us/row{each}")
    print(f"  {'the rest':44} {(took - sum(spent.values())) / rows * 1e6:6.1f} us/row")


def _run(tree: Path, path: str) -> tuple[float, float, str, int, int]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(
        [sys.executable, __file__, "worker", path],
        env=env, check=True, capture_output=True, text=True, cwd=tree,
    ).stdout.split()  # fmt: skip
    rows, took, digest, cards, emails, wall = out
    per_row = 1e6 / int(rows)
    return float(took) * per_row, float(wall) * per_row, digest, int(cards), int(emails)


def main(argv: list[str]) -> None:
    if argv[:1] == ["worker"]:
        worker(argv[1])
        return
    if argv[:1] == ["split"]:
        rows = int(argv[1]) if len(argv) > 1 else 20_000
        with tempfile.NamedTemporaryFile(suffix=".pickle") as f:
            f.write(pickle.dumps((rows, make_chunks(rows))))
            f.flush()
            split(f.name)
        return
    if argv[:1] == ["make"]:
        rows = int(argv[1])
        Path(argv[2]).write_bytes(pickle.dumps((rows, make_chunks(rows))))
        return
    rows = int(argv[0]) if argv else 20_000
    rounds = int(argv[1]) if len(argv) > 1 else 3
    trees = {"this": ROOT}
    # customers: a card and an e-mail per row (and more in notes); events: one e-mail in 50
    expected = (rows, rows) if TABLE == "customers" else (0, (rows + 42) // 50)
    if os.environ.get("COPYROWS_BASELINE"):
        trees["baseline"] = Path(os.environ["COPYROWS_BASELINE"])
    with tempfile.NamedTemporaryFile(suffix=".pickle") as f:
        f.write(pickle.dumps((rows, make_chunks(rows))))
        f.flush()
        best: dict[str, tuple[float, float]] = {}
        digests: dict[str, str] = {}
        for _ in range(rounds):
            for name, tree in trees.items():
                us, wall, digest, cards, emails = _run(tree, f.name)
                assert cards >= expected[0] and emails >= expected[1], (name, cards, emails)
                cpu0, wall0 = best.get(name, (us, wall))
                best[name] = (min(cpu0, us), min(wall0, wall))
                digests[name] = digest
                print(f"{name:9} {us:7.1f} us/row (CPU) {wall:7.1f} (wall)", flush=True)
    print(f"{rows:,} rows of {TABLE}, best of {rounds}:")
    for name, (us, wall) in best.items():
        print(f"  {name:9} {us:7.1f} us/row CPU {wall:7.1f} wall  blob sha256 {digests[name][:16]}")
    if len(set(digests.values())) > 1:
        raise SystemExit("the builds wrote different blobs")


if __name__ == "__main__":
    main(sys.argv[1:])
