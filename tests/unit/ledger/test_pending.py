"""PendingBlob: the whole small blob that travels with its entry."""

from __future__ import annotations

from appliance.ledger import api
from appliance.ledger.pending import PendingBlob


def test_api_names_the_same_class() -> None:
    assert api.PendingBlob is PendingBlob


def test_holds_its_transform_and_data() -> None:
    factory = object()
    blob = PendingBlob(factory, b"rows")
    assert blob.transform is factory
    assert blob.data == b"rows"


def test_repr_shows_the_size_not_the_rows() -> None:
    # The rows are not masked yet (the writer masks them): a log line or a traceback that
    # shows the blob must not show them.
    text = repr(PendingBlob(None, b"4111111111111111"))
    assert "4111" not in text
    assert "16 bytes" in text
