"""Type bytes and SQLSTATEs have one home each, and agree with the messages and the framer."""

from __future__ import annotations

import re

from appliance.protocols.postgres import codes, sqlstate
from appliance.protocols.postgres._framing import BACKEND_TYPES, FRONTEND_TYPES
from appliance.protocols.postgres.messages import CommandComplete, Query, decode_backend


def test_type_bytes_are_the_message_classes_own() -> None:
    assert codes.F_QUERY == Query.TYPE[0] == ord("Q")
    assert CommandComplete.TYPE[0] == codes.B_COMPLETE
    frame = CommandComplete("SELECT 1").encode()
    assert frame[0] == codes.B_COMPLETE
    assert isinstance(decode_backend(codes.B_COMPLETE, frame[5:]), CommandComplete)


def test_every_named_type_is_framed_in_its_direction() -> None:
    frontend = {v for k, v in vars(codes).items() if k.startswith("F_") and k != "F_PASSWORD"}
    backend = {
        v
        for k, v in vars(codes).items()
        if k.startswith("B_") and k not in ("B_AUTHENTICATION", "B_KEY", "B_NEGOTIATE")
    }
    assert frontend == set(FRONTEND_TYPES)
    assert backend == set(BACKEND_TYPES)


def test_sqlstates_are_five_characters_of_errcodes_classes() -> None:
    named = {k: v for k, v in vars(sqlstate).items() if k.isupper()}
    assert named["INSUFFICIENT_PRIVILEGE"] == "42501" and named["SYNTAX_ERROR"] == "42601"
    for name, code in named.items():
        assert re.fullmatch(r"[0-9A-Z]{5}", code), name
    assert len(set(named.values())) == len(named)  # one name per code
