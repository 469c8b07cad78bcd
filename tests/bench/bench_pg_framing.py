"""PostgreSQL framing benchmark (not a test): messages/s through the hot path.

Streams are built from real recorded traffic (``tests/unit/postgres/data``): the result of
psql's 2000-row query (DataRow-heavy, ~90 bytes per row) and an OLTP-like backend stream
(RowDescription, one DataRow, CommandComplete, ReadyForQuery per statement). They are fed
in 64 KiB reads, as the shell reads sockets. Measured:

- ``Framer.feed`` alone (what relaying untouched messages costs);
- ``ServerConnection.receive_data`` in READY (the same plus one event per read);
- ``datarow_values`` on every DataRow (what inspecting each row costs);
- ``ClientConnection.receive_data`` on a frontend stream (extended-query messages).

Run with ``pytest tests/bench/bench_pg_framing.py -m bench -s`` (PG_BENCH_MESSAGES sets
the stream size). Prints the rates; asserts only correctness, never speed.
"""

from __future__ import annotations

import os
import time

import pytest

from appliance.protocols.postgres import (
    BACKEND_TYPES,
    ClientConnection,
    Framer,
    Limits,
    Messages,
    ServerConnection,
    StartupReceived,
    datarow_values,
)
from appliance.protocols.postgres.messages import (
    AuthenticationOk,
    BackendKeyData,
    StartupMessage,
)
from tests.unit.postgres.transcripts import load, reference_split, startup_length

N = int(os.environ.get("PG_BENCH_MESSAGES", "1000000"))
READ = 65536


def build(frames: list[bytes], n: int) -> tuple[bytes, int]:
    unit = b"".join(frames)
    reps = max(1, n // len(frames))
    return unit * reps, len(frames) * reps


def result_set_stream(n: int) -> tuple[bytes, int]:
    frames = [f for t, f in reference_split(load("psql_trust").stream("s")[1:]) if t == ord("D")]
    return build(frames, n)


def oltp_stream(n: int) -> tuple[bytes, int]:
    server = load("psycopg_trust").stream("s")
    frames = [f for _, f in reference_split(server)]
    i = [f[:1] for f in frames].index(b"T")
    return build(frames[i : i + 4], n)  # T D C Z


def reads(stream: bytes) -> list[bytes]:
    return [stream[i : i + READ] for i in range(0, len(stream), READ)]


def timed(label: str, n: int, nbytes: int, fn: object) -> float:
    t0 = time.perf_counter()  # one run: the streams are large enough to amortize warm-up
    fn()  # type: ignore[operator]
    dt = time.perf_counter() - t0
    print(
        f"  {label:<44} {n / dt / 1e6:6.2f} M msg/s  {dt / n * 1e6:6.3f} µs/msg  "
        f"{nbytes / dt / 1e6:7.1f} MB/s"
    )
    return dt


def bench_backend(name: str, stream: bytes, n: int) -> None:
    caps = Limits().caps(BACKEND_TYPES, frontend=False)
    chunks = reads(stream)
    print(f"{name}: {n} messages, {len(stream)} bytes, {len(chunks)} reads of {READ}")
    Framer(caps, side="server").feed(chunks[0])  # warm up allocator and caches
    count = 0

    def framer_only() -> None:
        nonlocal count
        framer = Framer(caps, side="server")
        for data in chunks:
            count += len(framer.feed(data)[1])

    timed("Framer.feed", n, len(stream), framer_only)
    assert count == n

    conn = ServerConnection(user="u", database="d", password="p", random_bytes=bytes,
                            tls="disable")  # fmt: skip
    conn.initiate()
    conn.receive_data(
        AuthenticationOk().encode() + BackendKeyData(1, b"abcd").encode() + b"Z\0\0\0\x05I"
    )
    seen = 0

    def server_connection() -> None:
        nonlocal seen
        for data in chunks:
            for ev in conn.receive_data(data):
                assert isinstance(ev, Messages)
                seen += len(ev.frames)

    timed("ServerConnection.receive_data (READY)", n, len(stream), server_connection)
    assert seen == n

    framer = Framer(caps, side="server")
    batches = [framer.feed(data) for data in chunks]
    rows = 0

    def decode_rows() -> None:
        nonlocal rows
        for chunk, frames in batches:
            for t, s, e in frames:
                if t == 68:
                    datarow_values(chunk, s + 5, e)
                    rows += 1

    timed("datarow_values on every DataRow (no framing)", n, len(stream), decode_rows)
    assert rows > 0


@pytest.mark.bench
def test_framing_rates() -> None:
    print()
    bench_backend("DataRow result set", *result_set_stream(N))
    bench_backend("OLTP (T D C Z)", *oltp_stream(N))


@pytest.mark.bench
def test_frontend_rate() -> None:
    client = load("psycopg_trust").stream("c")
    frames = [f for t, f in reference_split(client[startup_length(client) :]) if t != ord("X")]
    stream, n = build(frames, N // 4)
    chunks = reads(stream)
    conn = ClientConnection()
    [ev] = conn.receive_data(StartupMessage(3, 0, {"user": "u"}).encode())
    assert isinstance(ev, StartupReceived)
    conn.complete_startup([], BackendKeyData(1, b"abcd"))
    print(f"\nfrontend extended-query stream: {n} messages, {len(stream)} bytes")
    seen = 0

    def run() -> None:
        nonlocal seen
        for data in chunks:
            for msgs in conn.receive_data(data):
                assert isinstance(msgs, Messages)
                seen += len(msgs.frames)

    timed("ClientConnection.receive_data (READY)", n, len(stream), run)
    assert seen == n
