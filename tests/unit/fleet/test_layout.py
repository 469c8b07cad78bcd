"""The bucket layout: names round-trip, bundles are exactly the stored bytes, plans split."""

from __future__ import annotations

import pytest

from appliance.ledger.fleet import layout


@pytest.mark.parametrize(
    ("origin", "name"),
    [
        ("ci-runners.example/r7", "ci-runners.example%2Fr7"),
        ("appliance/runner 1", "appliance%2Frunner%201"),
        ("a~b_c.d-e", "a~b_c.d-e"),
        ("ünï/cödé", "%C3%BCn%C3%AF%2Fc%C3%B6d%C3%A9"),
        ("50%/x", "50%25%2Fx"),
    ],
)
def test_log_names_round_trip(origin: str, name: str) -> None:
    assert layout.log_name(origin) == name
    assert layout.origin_of(name) == origin
    assert layout.log_prefix(origin) == f"logs/{name}/"


@pytest.mark.parametrize("name", ["a/b", "a%2fb", "%zz", "", "a%2Gb"])
def test_names_that_no_origin_encodes_to_are_refused(name: str) -> None:
    with pytest.raises(layout.LayoutError):
        layout.origin_of(name)


def test_keys_parse() -> None:
    assert layout.parse_key(layout.checkpoint_key(41)) == layout.Key("checkpoint", n=41)
    assert layout.checkpoint_key(41) == "checkpoints/00000000000000000041"
    key = layout.bundle_key(0, 137)
    assert key == "entries/00000000000000000000-00000000000000000137.jsonl"
    assert layout.parse_key(key) == layout.Key("bundle", first=0, end=137)
    sha = "ab" * 32
    assert layout.parse_key(layout.blob_key(sha)) == layout.Key("blob", sha256=sha)
    assert layout.parse_key("vkey") == layout.Key("vkey")
    for other in [
        "checkpoints/41",
        "entries/00000000000000000005-00000000000000000005.jsonl",
        "entries/00000000000000000000-00000000000000000001.json",
        "blobs/" + "AB" * 32,
        "notes.txt",
    ]:
        assert layout.parse_key(other) is None, other
    with pytest.raises(ValueError):
        layout.bundle_key(3, 3)


def test_bundles_hold_the_stored_bytes_one_a_line() -> None:
    entries = [b'{"a":1}', b'{"b":"\\n"}', '{"c":"ü"}'.encode()]
    data = layout.encode_bundle(entries)
    assert data == b'{"a":1}\n{"b":"\\n"}\n{"c":"\xc3\xbc"}\n'
    assert layout.decode_bundle(data, 10, 13) == entries
    with pytest.raises(layout.LayoutError, match="newline byte"):
        layout.encode_bundle([b'{"a":\n1}'])
    with pytest.raises(layout.LayoutError, match="holds 3 entries, its name says 2"):
        layout.decode_bundle(data, 0, 2)
    with pytest.raises(layout.LayoutError, match="end with a newline"):
        layout.decode_bundle(data[:-1], 10, 13)
    with pytest.raises(layout.LayoutError, match="empty line"):
        layout.decode_bundle(b'{"a":1}\n\n', 0, 2)


def test_bundle_plan_splits_by_count_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "MAX_BUNDLE_ENTRIES", 3)
    monkeypatch.setattr(layout, "MAX_BUNDLE_BYTES", 100)
    assert layout.bundle_plan(5, 5, []) == []
    assert layout.bundle_plan(5, 12, [10] * 7) == [(5, 8), (8, 11), (11, 12)]
    # bytes: 40+1 and 40+1 fit in 100, a third does not; a single 500-byte entry goes alone
    assert layout.bundle_plan(0, 4, [40, 40, 40, 500]) == [(0, 2), (2, 3), (3, 4)]
