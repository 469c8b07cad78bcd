"""Canonical JSON and entry parsing."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.ledger.entries import (
    EntryPrefix,
    MalformedEntry,
    PrefixCache,
    TsFormat,
    blob_refs,
    canonical_json,
    encode_entry,
    format_ts,
    make_entry,
    number_entry,
    parse_entry,
    ts_to_us,
)
from appliance.ledger.errors import CanonicalError, LedgerError

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"]), max_size=5), children)
    ),
    max_leaves=20,
)


@given(json_values)
def test_canonical_json_is_the_stdlib_form(value: object) -> None:
    want = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical_json(value) == want


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": 1.5}, r"\$\.a: floats"),
        ({"a": [1, float("nan")]}, r"\$\.a\[1\]: floats"),
        ({1: "x"}, "key 1 is not a string"),
        ({"a": 2**64}, "64 bits"),
        ({"a": {1, 2}}, "set has no canonical"),
        ({"a": "\ud800"}, "no canonical JSON form"),
    ],
)
def test_non_canonical_values_are_refused(value: object, where: str) -> None:
    with pytest.raises(CanonicalError, match=where):
        canonical_json(value)


def test_timestamps() -> None:
    assert format_ts(0) == "1970-01-01T00:00:00.000000Z"
    assert format_ts(1795638785.1234564) == "2026-11-25T20:33:05.123456Z"
    assert ts_to_us("2026-11-25T20:33:05.123456Z") == 1795638785123456
    with pytest.raises(ValueError):
        ts_to_us("2026-11-25T20:33:05Z")


@given(st.lists(st.integers(min_value=0, max_value=4_102_444_800_000_000), max_size=20))
def test_a_ts_format_stamps_what_strftime_says_whatever_the_order(stamps: list[int]) -> None:
    """TsFormat keeps the last second's text: stamps of one second, of another, and back
    again each get their own second (the reference is strftime on every stamp)."""
    fmt = TsFormat()
    for us in stamps:
        secs, frac = divmod(us, 1_000_000)
        reference = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:06d}Z"
        assert fmt.format(us) == reference
        assert ts_to_us(reference) == us


def _entry(**kw: object) -> bytes:
    base: dict[str, object] = {
        "origin": "o",
        "seq": 0,
        "ts": "2026-11-25T20:33:05.123456Z",
        "type": "statement",
        "data": {"n": 1},
    }
    base.update(kw)
    return encode_entry(make_entry(**base))  # type: ignore[arg-type]


def test_entry_round_trip() -> None:
    raw = _entry(session="s1", identity={"pid": 1}, account="a", target="t")
    assert raw.startswith(b'{"account":"a","data":{"n":1},"identity":{"pid":1},"origin":"o"')
    obj = parse_entry(raw)
    assert obj["session"] == "s1" and obj["v"] == 1


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"v":1}', "wrong fields"),
        (_entry().replace(b'"v":1', b'"v":2'), "format version"),
        (_entry().replace(b'"seq":0', b'"seq":-1'), "seq"),
        (_entry().replace(b".123456Z", b"Z"), "timestamp"),
        (_entry().replace(b'"data":{"n":1}', b'"data":[]'), "data is not an object"),
        (_entry(session=None).replace(b'"session":null', b'"session":1'), "session"),
    ],
)
def test_malformed_entries(raw: bytes, why: str) -> None:
    with pytest.raises(MalformedEntry, match=why):
        parse_entry(raw)


def test_blob_refs() -> None:
    ref = {"sha256": "ab" * 32, "size": 3}
    data = {"result": ref, "other": [{"x": ref}], "nope": {"sha256": "xy", "size": 1}}
    assert [(r.path, r.size) for r in blob_refs(data)] == [
        ("data.result", 3),
        ("data.other[0].x", 3),
    ]


texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
objects = st.dictionaries(texts, json_values, max_size=5)


@given(
    origin=texts,
    session=st.none() | texts,
    identity=st.none() | objects,
    account=st.none() | texts,
    target=st.none() | texts,
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    type_=texts,
    data=objects,
    trusted=st.booleans(),
)
def test_entries_built_from_a_prefix_are_the_canonical_bytes(
    origin: str,
    session: str | None,
    identity: dict[str, object] | None,
    account: str | None,
    target: str | None,
    seq: int,
    type_: str,
    data: dict[str, object],
    trusted: bool,
) -> None:
    ts = "2026-11-25T23:00:00.000001Z"
    prefix = EntryPrefix(
        origin=origin, session=session, identity=identity, account=account, target=target
    )
    expected = encode_entry(
        make_entry(
            origin=origin, seq=seq, ts=ts, type=type_, session=session, identity=identity,
            account=account, target=target, data=data,
        )
    )  # fmt: skip
    assert prefix.encode(seq, ts, type_, data, trusted=trusted) == expected
    # numbered later by the writer of several proxy workers (proxy.workers > 1): the same
    # bytes, with this ts or another of the same length
    raw, seq_at, ts_at = prefix.encode_unnumbered(ts, type_, data, trusted=trusted)
    assert number_entry(raw, seq_at, ts_at, seq, None) == expected
    later = "2026-11-25T23:00:01.000000Z"
    assert number_entry(raw, seq_at, ts_at, seq, later) == expected.replace(
        ts.encode(), later.encode()
    )


def test_the_prefix_cache_tells_identities_apart_and_refuses_bad_ones() -> None:
    cache = PrefixCache("o/x")
    a, b = {"pid": 1}, {"pid": 2}
    pa = cache.get("s1", a, "ci", "db")
    assert cache.get("s1", a, "ci", "db") is pa
    assert cache.get("s1", b, "ci", "db") is not pa
    assert cache.get("s2", a, "ci", "db") is not pa
    with pytest.raises(CanonicalError, match=r"\$\.identity\.pid: floats"):
        cache.get("s3", {"pid": 1.5}, "ci", "db")
    with pytest.raises(CanonicalError, match=r"\$\.data\.x: floats"):
        pa.encode(1, "2026-11-25T23:00:00.000001Z", "t", {"x": 0.5}, trusted=False)


def test_an_unnumbered_entry_with_offsets_out_of_range_is_refused() -> None:
    prefix = EntryPrefix(origin="o", session=None, identity=None, account=None, target=None)
    raw, seq_at, ts_at = prefix.encode_unnumbered(
        "2026-11-25T23:00:00.000001Z", "t", {}, trusted=True
    )
    for bad in ((0, ts_at), (seq_at, len(raw)), (ts_at + 1, ts_at)):
        with pytest.raises(LedgerError, match="offsets out of range"):
            number_entry(raw, *bad, 1, None)
