"""Mask styles and counts: exact renderings, and what a second pass must recognise."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.masking import MaskCounts, Masker, MaskingKeyError, Style
from appliance.masking._config import DetectorSetting
from appliance.masking._styles import keyed_hash, label_for, looks_masked, partial, redact
from tests.unit.masking.helpers import KEY, all_on


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("4111-1111-1111-1111", "****-****-****-1111"),
        ("4111111111111111", "************1111"),
        ("536-90-4399", "***-**-4399"),
        ("alice@example.com", "*****@******e.com"),
        ("hunter2", "****er2"),  # seven letters and digits: keep three, not four
        ("ab", "*b"),
        ("a", "*"),
        ("!!!!", "****"),  # nothing alphanumeric: nothing kept
    ],
)
def test_partial(value: str, expected: str) -> None:
    assert partial(value) == expected
    assert looks_masked(partial(value))


def test_keyed_hash_is_hmac_sha256_truncated() -> None:
    digest = hmac.new(KEY, b"4111111111111111", hashlib.sha256).hexdigest()
    assert keyed_hash(KEY, b"4111111111111111") == f"[HMAC:{digest[:16]}]"
    assert keyed_hash(b"other key 16 byt", b"4111111111111111") != keyed_hash(
        KEY, b"4111111111111111"
    )


@settings(max_examples=300, deadline=None)
@given(
    key=st.one_of(st.binary(max_size=200), st.sampled_from([b"", b"k" * 63, b"k" * 64, b"k" * 65])),
    value=st.binary(max_size=300),
)
def test_keyed_hash_is_hmac_for_any_key_and_value(key: bytes, value: bytes) -> None:
    """The padded key blocks hashed once per key give HMAC-SHA256 itself: keys shorter than
    a block, of a block, longer (hashed first), and the same key again (its cached pads not
    worn by an earlier value)."""
    digest = hmac.new(key, value, hashlib.sha256).hexdigest()
    assert keyed_hash(key, value) == f"[HMAC:{digest[:16]}]"
    assert keyed_hash(key, value) == f"[HMAC:{digest[:16]}]"
    assert keyed_hash(key, b"") == f"[HMAC:{hmac.new(key, b'', hashlib.sha256).hexdigest()[:16]}]"


def test_redact_labels() -> None:
    assert redact(label_for("card")) == "[REDACTED:CARD]"
    assert label_for("Card Number!") == "CARD_NUMBER"
    assert label_for("") == "COLUMN"
    assert looks_masked("[REDACTED:CARD]") and looks_masked("[HMAC:0123456789abcdef]")
    assert not looks_masked("hunter2")
    assert looks_masked("****")


def test_hash_style_keeps_equal_values_joinable_across_formats() -> None:
    tm = Masker(all_on(Style.HASH), hmac_key=KEY).for_target("t")
    a = tm.mask_text("card 4111-1111-1111-1111", MaskCounts())
    b = tm.mask_text("card 4111111111111111", MaskCounts())
    assert a == b == "card " + keyed_hash(KEY, b"4111111111111111")
    # E-mail addresses are compared without case, IBANs without spaces.
    assert tm.mask_text("BOB@Example.com", MaskCounts()) == keyed_hash(KEY, b"bob@example.com")
    assert tm.mask_text("GB82 WEST 1234 5698 7654 32", MaskCounts()) == keyed_hash(
        KEY, b"GB82WEST12345698765432"
    )


def test_style_per_detector() -> None:
    config = all_on(card=DetectorSetting(Style.PARTIAL), email=DetectorSetting(None))
    tm = Masker(config, hmac_key=b"").for_target("t")
    counts = MaskCounts()
    out = tm.mask_text("4111 1111 1111 1111 to bob@example.com, ssn 536-90-4399", counts)
    assert out == "**** **** **** 1111 to bob@example.com, ssn [REDACTED:SSN]"
    assert counts.as_dict() == {"detectors": {"card": 1, "ssn": 1}, "columns": {}}


def test_counts() -> None:
    counts = MaskCounts()
    assert not counts
    counts.add("card", "customers.card")
    counts.add("card", "customers.card", 2)
    counts.add("email")
    counts.add("ssn", n=0)
    other = MaskCounts()
    other.add("card", "orders.card")
    counts.update(other)
    assert counts
    assert counts.total() == 5
    assert counts.as_dict() == {
        "detectors": {"card": 4, "email": 1},
        "columns": {"customers.card": 3, "orders.card": 1},
    }
    with pytest.raises(ValueError):
        counts.add("card", n=-1)


def test_hash_style_needs_a_key() -> None:
    with pytest.raises(MaskingKeyError, match="at least 16 bytes"):
        Masker(all_on(Style.HASH), hmac_key=b"short")
    Masker(all_on(Style.REDACT), hmac_key=b"")  # no hash style: no key needed


def test_scope_results_keeps_statement_text_readable() -> None:
    config = all_on(email=DetectorSetting(Style.REDACT, scope="results"))
    tm = Masker(config, hmac_key=b"").for_target("t")
    sql = "SELECT * FROM users WHERE email = 'bob@example.com'"
    assert tm.mask_text(sql, MaskCounts()) is sql
    plan = tm.column_plan("users", ["email"])
    assert tm.mask_values(plan, [b"bob@example.com"], MaskCounts()) == [b"[REDACTED:EMAIL]"]
