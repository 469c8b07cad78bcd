"""Child process for the kill -9 crash test: append forever, print each flushed size.

Usage: python -m tests.unit.ledger.crash_child DIR RUN. Each line printed is the number of
entries the writer has fsynced and covered by a signed checkpoint (``flush`` returned).
"""

from __future__ import annotations

import sys
from pathlib import Path

from appliance.ledger import LedgerWriter
from appliance.signing.keys import SigningKey

ORIGIN = "test.example/ledger"
KEY = SigningKey.generate(ORIGIN, seed=b"\x11" * 32)


def main() -> None:
    directory, run = Path(sys.argv[1]), sys.argv[2]
    w = LedgerWriter.open(
        directory, origin=ORIGIN, key=KEY, checkpoint_interval=0.01, checkpoint_entries=37
    )
    i = 0
    while True:
        blobs = None
        if i % 7 == 0:
            sink = w.open_blob()
            sink.write(f"result {run} {i}\n".encode() * (i % 50 + 1))
            blobs = {"result": sink}
        w.append(
            "statement", session=f"run-{run}", data={"i": i, "text": "x" * (i % 301)}, blobs=blobs
        )
        i += 1
        if i % 20 == 0:
            w.flush()
            print(w.signed_size, flush=True)


if __name__ == "__main__":
    main()
