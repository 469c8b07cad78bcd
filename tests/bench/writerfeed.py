"""The ledger writer process's work per pgbench transaction, replayed in this process.

What it measures: the writer's side of the channel (:mod:`appliance.ledger.remote`'s reader
and dispatch, :class:`~appliance.ledger.writer.LedgerWriter`: blob transforms, framing, leaf
hashes, the Merkle tree), apart from the proxy and from scheduling. :mod:`tests.bench.pgcore`
plays pgbench's transactions through the session core into a real
:class:`~appliance.ledger.remote.RemoteLedger`, and the bytes it sends to its writer process
are kept; they are then fed, in gulps as the writer process reads them, to a writer of its
own (no thread, as in the writer process) on a fresh ledger directory.

``capture`` writes a channel transcript to a file, ``replay`` reads it and prints CPU µs per
transaction (repeated rounds). Under callgrind, compare the instruction counts of two replays
of different lengths (``replay FILE N``: N transactions' worth of messages) for a count per
transaction that the machine's load does not move::

    .venv/bin/python -m tests.bench.writerfeed capture select-only simple 2000 /tmp/t.bin
    .venv/bin/python -m tests.bench.writerfeed replay /tmp/t.bin
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.ledger import remote
from appliance.ledger.sender import HEAD, U64
from appliance.ledger.writer import LedgerWriter
from appliance.signing.keys import SigningKey
from tests.bench import pgcore

_GULP = 64 * 1024


class _Tap(socket.socket):
    """A handle of the proxy's end of the channel, keeping a copy of what is sent through
    it in ``sent`` (shared by the sender's two handles: their sends keep one order)."""

    sent: bytearray

    def sendall(self, data: Any, flags: int = 0) -> None:
        super().sendall(data, flags)
        self.sent += data

    def send(self, data: Any, flags: int = 0) -> int:
        n = super().send(data, flags)
        self.sent += memoryview(data)[:n]
        return n


def _tap(sock: socket.socket, sent: bytearray) -> _Tap:
    tap = _Tap(sock.family, sock.type, sock.proto, fileno=socket.dup(sock.fileno()))
    tap.settimeout(sock.gettimeout())
    tap.sent = sent
    return tap


def capture(workload: str, mode: str, transactions: int) -> dict[str, Any]:
    """pgcore's run, with what the proxy sent its writer after the warm-up's flush."""
    taps: list[_Tap] = []
    real_open = remote.RemoteLedger.open

    def tapped(*args: Any, **kwargs: Any) -> remote.RemoteLedger:
        ledger = real_open(*args, **kwargs)
        # Both handles: the blocking one (flush, close, threads) and the event loop's
        # non-blocking one, which sends most of it (appliance.ledger.sender).
        sent = bytearray()
        tap, nb = _tap(ledger._sock, sent), _tap(ledger._nb, sent)
        ledger._sock, ledger._nb = tap, nb
        taps.extend((tap, nb))
        return ledger

    real_flush = remote.RemoteLedger.flush
    marks: list[int] = []

    def flush(self: remote.RemoteLedger, timeout: float | None = None) -> None:
        real_flush(self, timeout)
        marks.append(len(taps[0].sent))

    remote.RemoteLedger.open = tapped  # type: ignore[method-assign]
    remote.RemoteLedger.flush = flush  # type: ignore[method-assign]
    try:
        asyncio.run(pgcore.run(workload, mode, transactions))
    finally:
        remote.RemoteLedger.open = real_open  # type: ignore[method-assign]
        remote.RemoteLedger.flush = real_flush  # type: ignore[method-assign]
        for tap in taps:
            tap.close()
    sent = bytes(taps[0].sent)
    # the warm-up (up to the first flush), the measured part (up to the second)
    return {
        "warmup": sent[: marks[0]],
        "measured": sent[marks[0] : marks[1]],
        "transactions": transactions,
    }


def _seq_of(payload: bytes) -> int:
    return int(U64.unpack_from(payload, 0)[0])


def replay(transcript: dict[str, Any], rounds: int = 3, limit: int | None = None) -> list[float]:
    """CPU µs per transaction of the writer's side, one figure per round."""
    out = []
    measured: bytes = transcript["measured"]
    n: int = transcript["transactions"]
    if limit is not None and limit < n:
        # cut after the message that ends the limit-th share of the stream
        cut, pos = len(measured) * limit // n, 0
        while pos < cut:
            (length, _) = HEAD.unpack_from(measured, pos)
            pos += HEAD.size + length
        measured, n = measured[:pos], limit
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            key = SigningKey.generate("bench.test/ledger")
            # entries arrive numbered from 1, after the key.published entry of seq 0
            writer = LedgerWriter.open(
                Path(tmp) / "ledger",
                origin="bench.test/ledger",
                key=key,
                threaded=False,
                checkpoint_interval=3600,
            )
            a, b = socket.socketpair()
            child = remote._Child(a)
            conn = child.main
            try:
                for kind, payload in conn.reader.messages(transcript["warmup"]):
                    child.handle(writer, conn, kind, payload)
                writer.pump(flush=True)
                c0 = time.process_time()
                for at in range(0, len(measured), _GULP):
                    for kind, payload in conn.reader.messages(measured[at : at + _GULP]):
                        child.handle(writer, conn, kind, payload)
                    writer.pump()
                writer.pump(flush=True)
                out.append((time.process_time() - c0) / n * 1e6)
            finally:
                writer.close()
                a.close()
                b.close()
    return out


def main() -> None:
    if sys.argv[1] == "capture":
        workload, mode, n, path = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
        Path(path).write_bytes(pickle.dumps(capture(workload, mode, n)))
        return
    transcript = pickle.loads(Path(sys.argv[2]).read_bytes())
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else None
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    figures = replay(transcript, rounds, limit)
    print("writer_replay_us=" + " ".join(f"{f:.2f}" for f in figures))


if __name__ == "__main__":
    main()
