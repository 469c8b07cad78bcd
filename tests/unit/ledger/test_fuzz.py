"""Parsers of untrusted input fail only with their own errors, whatever they are fed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.errors import ApplianceError
from appliance.ledger._framing import ENTRY_MAGIC, FrameScanner, encode_frame
from appliance.ledger.checkpoint import Checkpoint, parse_checkpoint_text, sign_checkpoint
from appliance.ledger.entries import MalformedEntry, parse_entry
from appliance.ledger.proof import parse_proof
from appliance.signing.note import open_note
from tests.unit.ledger.conftest import KEY

NOTE = sign_checkpoint(Checkpoint("o", 3, b"\x01" * 32), KEY)


def _mutations() -> st.SearchStrategy[str]:
    """Arbitrary text, and a real note with a slice replaced by arbitrary text."""
    return st.text() | st.builds(
        lambda i, j, s: NOTE[:i] + s + NOTE[j:],
        st.integers(0, len(NOTE)),
        st.integers(0, len(NOTE)),
        st.text(max_size=8),
    )


@settings(max_examples=300)
@given(_mutations())
def test_notes(text: str) -> None:
    try:
        open_note(text, [KEY.verifier()])
    except ApplianceError:
        pass
    try:
        parse_checkpoint_text(text)
    except ApplianceError:
        pass
    try:
        parse_proof("c2sp.org/tlog-proof@v1\nindex 0\n" + text)
    except ApplianceError:
        pass


@settings(max_examples=300)
@given(st.binary(max_size=300), st.integers(0, 200))
def test_frames(junk: bytes, cut: int) -> None:
    good = encode_frame(ENTRY_MAGIC, 0, b'{"a":1}') + encode_frame(ENTRY_MAGIC, 1, b"{}")
    data = good[:cut] + junk
    scanner = FrameScanner(data, ENTRY_MAGIC)
    frames = list(scanner)
    assert scanner.end == (frames[-1].end if frames else 0)
    assert scanner.damage is not None or scanner.end == len(data)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_entries(raw: bytes) -> None:
    try:
        parse_entry(raw)
    except MalformedEntry:
        pass
