"""Each detector: values it must find (and exactly which part), and look-alikes it must not."""

from __future__ import annotations

import re

import pytest

from appliance.masking import DETECTOR_NAMES
from appliance.masking._detectors import DETECTORS
from appliance.masking._validate import (
    card_brand,
    github_checksum,
    github_checksum_ok,
    iban_length,
    jwt_ok,
    luhn_ok,
    ssn_ok,
)
from tests.unit.masking.helpers import found, masker

TM = masker()

# A GitHub token built with the 2021 format: 30 random characters and their CRC-32 check.
_RANDOM30 = "M7H4jxUDDWHP4kZ6A4dxlQYsQIWJuq"
GHP = "ghp_" + _RANDOM30 + github_checksum(_RANDOM30)
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwi"
    "aWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oNq\n-----END EC PRIVATE KEY-----"

# (detector, text, the part of text that is the finding)
TRUE_POSITIVES = [
    ("card", "card 4111 1111 1111 1111 ok", "4111 1111 1111 1111"),
    ("card", "4111111111111111", "4111111111111111"),
    ("card", "amex 3782-822463-10005.", "3782-822463-10005"),
    ("card", "mc 5555555555554444,", "5555555555554444"),
    ("card", "mc2 2223003122003222", "2223003122003222"),
    ("card", "qty 2 4012888888881881", "4012888888881881"),
    ("card", "jcb 3530111333300000", "3530111333300000"),
    ("card", "diners 36227206271667", "36227206271667"),
    ("card", "visa13 4222222222222", "4222222222222"),
    ("ssn", "ssn 536-90-4399.", "536-90-4399"),
    ("ssn", "ssn 536 90 4399", "536 90 4399"),
    ("ssn", "SSN: 536904399", "536904399"),
    ("ssn", '{"social_security_number": "536904399"}', "536904399"),
    ("iban", "pay DE89 3704 0044 0532 0130 00 now", "DE89 3704 0044 0532 0130 00"),
    ("iban", "GB82WEST12345698765432", "GB82WEST12345698765432"),
    ("iban", "to gb82 west 1234 5698 7654 32.", "gb82 west 1234 5698 7654 32"),
    ("iban", "NO9386011117947 and more", "NO9386011117947"),
    ("email", "mail alice.smith+ci@mail.example.co.uk today", "alice.smith+ci@mail.example.co.uk"),
    ("email", "<BOB@EXAMPLE.COM>", "BOB@EXAMPLE.COM"),
    ("email", "see...carol@example.org", "carol@example.org"),
    ("phone", "call (415) 555-2671 now", "(415) 555-2671"),
    ("phone", "tel 415.555.2671", "415.555.2671"),
    ("phone", "+44 20 7946 0958", "+44 20 7946 0958"),
    ("phone", "+4915123456789", "+4915123456789"),
    ("phone", "two: 415-555-2671 212-555-0123", "415-555-2671"),
    ("ipv4", "from 192.168.10.42:5432", "192.168.10.42"),
    ("ipv6", "peer [2001:db8::1]:5432", "2001:db8::1"),
    ("ipv6", "fe80::1ff:fe23:4567:890a", "fe80::1ff:fe23:4567:890a"),
    ("aws_access_key_id", "key AKIAIOSFODNN7EXAMPLE,", "AKIAIOSFODNN7EXAMPLE"),
    (
        "aws_secret_key",
        "s wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY x",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    ("github_token", f"GITHUB_TOKEN={GHP}", GHP),
    (
        "github_token",
        "github_pat_" + "A" * 21 + "b_" + "c" * 58 + "D",
        "github_pat_" + "A" * 21 + "b_" + "c" * 58 + "D",
    ),
    ("gitlab_token", "glpat-xxxxXXXX1234yyyyZZZZ9", "glpat-xxxxXXXX1234yyyyZZZZ9"),
    (
        "slack_token",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    ),
    (
        "slack_token",
        "post to https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXX now",
        "https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXX",
    ),
    ("stripe_key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("stripe_key", "rk_test_51H8abcdefGHIJKL", "rk_test_51H8abcdefGHIJKL"),
    ("pem_private_key", f"key:\n{PEM}\ndone", PEM),
    (
        "pem_private_key",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg (truncated",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg (truncated",
    ),
    ("jwt", f"Authorization: Bearer {JWT}", JWT),
    ("jwt", f"token {JWT}.", JWT),
    ("uri_password", "postgres://app:s3cr%40t@db:5432/x", "s3cr%40t"),
    ("uri_password", "redis://:hunter2hunter2@cache", "hunter2hunter2"),
    ("uri_password", "amqp://u:p@ss@mq/vhost", "p@ss"),
    ("generic_secret", "password=hunter2 dbname=app", "hunter2"),
    ("generic_secret", "CREATE ROLE ci LOGIN PASSWORD 'It''s-Secret';", "It''s-Secret"),
    ("generic_secret", '{"client_secret": "abc def ghi"}', "abc def ghi"),
    ("generic_secret", "PGPASSWORD=topsecret psql", "topsecret"),
    ("generic_secret", "api_key: Zx8k2LqP9vTn4RwY7mB3", "Zx8k2LqP9vTn4RwY7mB3"),
    ("generic_secret", "Authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy"),
    ("generic_secret", "X-Api-Key: 9f8e7d6c5b4aQWERTY", "9f8e7d6c5b4aQWERTY"),
]

# (detector, text that it must not report)
FALSE_POSITIVES = [
    ("card", "4111 1111 1111 1112"),  # Luhn fails
    ("card", "1234567890123452"),  # Luhn passes, no issuer starts with 1
    ("card", "order 4111111111111111222"),  # 19 digits, fails; not searched inside
    ("card", "ts 1717171717171"),  # epoch milliseconds
    ("card", "id x4111111111111111"),  # glued to a letter
    ("ssn", "ein 12-3456789"),
    ("ssn", "id 536904399"),  # bare nine digits without a name
    ("ssn", "000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000"),
    ("ssn", "2024-01-15"),
    ("iban", "DE88 3704 0044 0532 0130 00"),  # check digits wrong
    ("iban", "XX89 3704 0044 0532 0130 00"),  # no such country
    ("iban", "DE89 3704 0044 0532 0130 0012"),  # too long for DE
    ("email", "user@localhost"),
    ("email", "left-pad@1.3.0"),
    ("email", "WHERE email LIKE '%@example.com'"),
    ("email", "ping @alice"),
    ("phone", "2024-01-15 10:30:00"),
    ("phone", "ein 12-3456789"),
    ("phone", "3478-607512-34553"),
    ("phone", "4155552671"),  # bare ten digits: an id
    ("phone", "192.168.1.10"),
    ("phone", "v1.2.3"),
    ("ipv4", "v1.2.3.4"),
    ("ipv4", "1.2.3.4.5"),
    ("ipv4", "256.1.1.1"),
    ("ipv6", "00:1a:2b:3c:4d:5e"),
    ("ipv6", "10:30:00"),
    ("ipv6", "std::vector a::b SELECT x::int"),
    ("aws_access_key_id", "AKIAIOSFODNN7EXAMPL"),  # 19 characters
    ("aws_secret_key", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),  # SHA-1 hex
    ("aws_secret_key", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),  # base64 SHA-256
    ("github_token", GHP[:-1] + ("A" if GHP[-1] != "A" else "B")),  # checksum fails
    ("gitlab_token", "glpat-short"),
    ("slack_token", "xoxb-not-a-token"),
    ("slack_token", "https://hooks.slack.com/apps"),
    ("stripe_key", "pk_live_4eC39HqLyjWDarjtT1zdp7dc"),  # publishable
    ("pem_private_key", "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----"),
    ("jwt", "eyJhbGciOiJIUzI1NiJ9notjson.eyJzdWIiOiIxIn0.sig"),
    ("jwt", "eyJub3RoaW5nIjoxfQ.eyJzdWIiOiIxIn0.sig"),  # header without alg
    ("uri_password", "https://example.com/path?x=1"),
    ("uri_password", "postgres://app@db/x"),
    ("generic_secret", "Enter your password to continue"),
    ("generic_secret", "WHERE password = $1 AND token = %s"),
    ("generic_secret", "password_changed_at = '2024-01-15'"),
    ("generic_secret", "token_type = 'bearer' token_count: 5"),
    ("generic_secret", "passenger = 'Alice Smith'"),
    ("generic_secret", "password: null"),
    ("generic_secret", "password=[REDACTED:GENERIC_SECRET]"),
    ("generic_secret", "password='****ter2'"),
]


@pytest.mark.parametrize(("detector", "text", "value"), TRUE_POSITIVES)
def test_true_positive(detector: str, text: str, value: str) -> None:
    assert (detector, value) in found(TM, text)


@pytest.mark.parametrize(("detector", "text"), FALSE_POSITIVES)
def test_false_positive(detector: str, text: str) -> None:
    assert detector not in [d for d, _ in found(TM, text)]


def test_every_detector_has_true_and_false_positive_cases() -> None:
    assert {d for d, _, _ in TRUE_POSITIVES} == set(DETECTOR_NAMES)
    assert {d for d, _ in FALSE_POSITIVES} == set(DETECTOR_NAMES)


def test_detector_names_are_the_fixed_list() -> None:
    assert DETECTOR_NAMES == (
        "pem_private_key",
        "jwt",
        "github_token",
        "gitlab_token",
        "slack_token",
        "stripe_key",
        "aws_access_key_id",
        "uri_password",
        "card",
        "iban",
        "ssn",
        "email",
        "phone",
        "ipv4",
        "ipv6",
        "aws_secret_key",
        "generic_secret",
    )
    assert len({d.priority for d in DETECTORS}) == len(DETECTORS)


@pytest.mark.parametrize(("detector", "text", "value"), TRUE_POSITIVES)
def test_prefilter_patterns_are_necessary_conditions(detector: str, text: str, value: str) -> None:
    """The pre-filter may only skip text in which the detector finds nothing: one of its
    patterns matches (on the UTF-8 bytes, as the pre-filter runs)."""
    d = next(d for d in DETECTORS if d.name == detector)
    data = text.encode()
    assert any(re.search(p.encode(), data, re.ASCII) for p in d.prefilter)


def test_two_findings_in_one_run() -> None:
    assert found(TM, "4111111111111111 5500000000000004") == [
        ("card", "4111111111111111"),
        ("card", "5500000000000004"),
    ]
    assert found(TM, "4111 1111 1111 1111 5500 0000 0000 0004") == [
        ("card", "4111 1111 1111 1111"),
        ("card", "5500 0000 0000 0004"),
    ]
    assert found(TM, "DE89370400440532013000 GB82WEST12345698765432") == [
        ("iban", "DE89370400440532013000"),
        ("iban", "GB82WEST12345698765432"),
    ]


def test_cards_inside_long_digit_runs_of_other_shapes() -> None:
    """A run of groups that cannot start a card (sysbench's ``c`` column: eleven-digit
    groups) is passed over quickly; a card after such groups is still found."""
    sysbench_c = "-".join(["83868641912", "28773972837", "60736120486", "75162659906"] * 3)
    assert found(TM, sysbench_c) == []
    assert found(TM, "12345678901-4111 1111 1111 1111") == [("card", "4111 1111 1111 1111")]
    assert found(TM, "12345678901 4111111111111111") == [("card", "4111111111111111")]


def test_overlaps_go_to_the_more_specific_detector() -> None:
    # The email "s3cret@db.example.com" overlaps the URI password; the password wins and the
    # host stays readable.
    assert found(TM, "postgres://app:s3cret@db.example.com/x") == [("uri_password", "s3cret")]
    assert found(TM, f"token={GHP}") == [("github_token", GHP)]
    assert found(TM, "password=4111111111111111") == [("card", "4111111111111111")]


# -- validators, against published vectors ---------------------------------------------------


def test_luhn_and_brands() -> None:
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
    assert card_brand("4111111111111111") == "visa"
    assert card_brand("378282246310005") == "amex"
    assert card_brand("2720999999999996") == "mastercard"
    assert card_brand("6011111111111117") == "discover"
    assert card_brand("3566002020360505") == "jcb"
    assert card_brand("4111111111111") == "visa"
    assert card_brand("41111111111111") is None  # Visa has no 14-digit numbers
    assert card_brand("1111111111111111") is None


def test_ssn_rules() -> None:
    assert ssn_ok("536904399")
    for bad in ("000904399", "666904399", "900904399", "536004399", "536900000", "078051120"):
        assert not ssn_ok(bad), bad


def test_iban_lengths_from_the_registry() -> None:
    assert iban_length("DE") == 22
    assert iban_length("NO") == 15
    assert iban_length("GB") == 22
    assert iban_length("XX") is None


def test_github_checksum_vectors() -> None:
    # Published test vectors of a secret scanner's checksum validator (valid, then altered).
    assert github_checksum_ok("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")
    assert github_checksum_ok("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")
    assert not github_checksum_ok("ghp_M7H4jxUDDWHP4kZ6A4dxlQYsQIWJuq11T4V3")
    assert GHP == "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"


def test_jwt_shapes() -> None:
    parts = JWT.split(".")
    assert jwt_ok(parts)
    assert not jwt_ok(parts[:2])
    assert not jwt_ok([parts[0], "", parts[2]])
    jwe = [parts[0], "", "aXY", "Y2lwaGVy", "dGFn"]
    assert jwt_ok(jwe)
