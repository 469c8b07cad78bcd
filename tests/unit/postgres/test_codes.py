"""Type bytes and SQLSTATEs have one home each, and agree with the messages and the framer."""

from __future__ import annotations

import re

from appliance.protocols.postgres import codes, sqlstate
from appliance.protocols.postgres._framing import BACKEND_TYPES, FRONTEND_TYPES
from appliance.protocols.postgres.messages import (
    CommandComplete,
    CopyOutResponse,
    ErrorResponse,
    Query,
    ReadyForQuery,
    Sync,
    decode_backend,
    decode_frontend,
)


def test_messages_encode_and_decode_with_the_named_type_bytes() -> None:
    frontend = [(Query("select 1"), codes.F_QUERY), (Sync(), codes.F_SYNC)]
    backend = [
        (CommandComplete("SELECT 1"), codes.B_COMPLETE),
        (ReadyForQuery("I"), codes.B_READY),
        (ErrorResponse({"S": "ERROR", "C": "42601", "M": "x"}), codes.B_ERROR),
        (CopyOutResponse(0, (0,)), codes.B_COPY_OUT),
    ]
    for message, code in frontend:
        frame = message.encode()
        assert frame[0] == code
        assert decode_frontend(code, frame[5:]) == message
    for message, code in backend:
        frame = message.encode()
        assert frame[0] == code
        assert decode_backend(code, frame[5:]) == message
    assert ord("Q") == codes.F_QUERY and ord("C") == codes.B_COMPLETE


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
