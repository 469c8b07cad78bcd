"""The writer bench (tests/bench/writerfeed.py) keeps everything the proxy sent its writer.

Not a timing: the bench's capture is a tap on the sender's socket handles, and when the
sender came to send from the event loop through a second, non-blocking handle, a tap on the
first one alone kept only the flushes -- the replay then failed on a transform it had never
seen, and nothing said so until someone ran it.
"""

from __future__ import annotations

from appliance.ledger.sender import ENTRY, ENTRY_BLOB, ENTRY_BLOBS, FACTORY, split
from tests.bench import writerfeed


def test_the_capture_holds_every_transaction_and_replays() -> None:
    transactions = 12
    transcript = writerfeed.capture("select-only", "simple", transactions)
    messages: list[tuple[int, bytes]] = []
    stream = transcript["warmup"] + transcript["measured"]
    assert split(stream, len(stream), messages) == len(stream)  # whole messages only
    kinds = [kind for kind, _ in messages]
    # a statement and a response entry per transaction, and the rows' transform once
    entries = sum(kinds.count(k) for k in (ENTRY, ENTRY_BLOB, ENTRY_BLOBS))
    assert entries >= 2 * transactions
    assert FACTORY in kinds
    (figure,) = writerfeed.replay(transcript, rounds=1)
    assert figure > 0
