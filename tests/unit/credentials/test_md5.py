"""md5 responses: the formula, and the response libpq actually sent in a recorded
conversation with PostgreSQL 15."""

from __future__ import annotations

import hashlib

import pytest

from appliance.credentials.md5 import md5_response, md5_verifier
from tests.unit.postgres.transcripts import load, reference_split, startup_length


def test_formula() -> None:
    inner = hashlib.md5(b"pwuser").hexdigest()
    expected = "md5" + hashlib.md5(inner.encode() + b"salt").hexdigest()
    assert md5_response("pw", "user", b"salt") == expected
    assert md5_verifier("pw", "user") == "md5" + inner
    with pytest.raises(ValueError):
        md5_response("pw", "user", b"abc")


def test_libpq_sent_the_same_response() -> None:
    t = load("psql_md5")
    server = reference_split(t.stream("s"))
    salt = server[0][1][9:13]  # AuthenticationMD5Password: code 5 then the salt
    client = t.stream("c")
    password_frame = reference_split(client[startup_length(client) :])[0][1]
    assert password_frame[5:-1].decode() == md5_response(t.password, t.user, salt)
