"""The writer's per-entry steps (ledger._entry_log, compiled in the compiled build) give
exactly what the steps they string together give one by one: the record framing, the
Merkle leaf and tree, the inline reference, the splice of a reference into its entry."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.ledger._entry_log import add_entry, inline_ref, spliced
from appliance.ledger._framing import ENTRY_MAGIC, encode_frame
from appliance.ledger.entries import canonical_json
from appliance.ledger.merkle import CompactRange, MerkleTree, leaf_hash

_ENTRIES = st.lists(st.binary(max_size=300), max_size=40)


@settings(max_examples=200)
@given(_ENTRIES, st.integers(min_value=0, max_value=2**40))
def test_add_entry_frames_and_hashes_as_the_steps_do(entries: list[bytes], first: int) -> None:
    buf, compact = bytearray(b"before"), CompactRange()
    sizes = [add_entry(buf, compact, first + i, raw) for i, raw in enumerate(entries)]
    frames = [encode_frame(ENTRY_MAGIC, first + i, raw) for i, raw in enumerate(entries)]
    assert bytes(buf) == b"before" + b"".join(frames)
    assert sizes == [len(b"before") + sum(map(len, frames[: i + 1])) for i in range(len(frames))]
    assert compact.size == len(entries)
    assert compact.root() == MerkleTree(leaf_hash(raw) for raw in entries).root()


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=100).map(str.encode)))
def test_inline_ref_is_the_content_its_hash_and_size(content: bytes) -> None:
    ref = inline_ref(content)
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        assert ref is None
        return
    assert ref == {
        "sha256": hashlib.sha256(content).hexdigest(),
        "size": len(content),
        "inline": text,
    }


@given(st.binary(max_size=100), st.data())
def test_spliced_puts_the_canonical_reference_in_place(raw: bytes, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(raw)))
    end = data.draw(st.integers(start, len(raw)))
    ref = {"sha256": "ab" * 32, "size": 3, "inline": 'é\x00"', "masking": {"b": {"z": 1, "a": 2}}}
    assert spliced(raw, start, end, ref) == raw[:start] + canonical_json(ref) + raw[end:]
