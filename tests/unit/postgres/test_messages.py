"""Typed messages: every encoder round-trips through its decoder (hypothesis), helpers
(error_response, CommandComplete, DataRow), and refusal of malformed payloads."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.protocols.postgres import PeerProtocolError
from appliance.protocols.postgres._errors import LocalProtocolError
from appliance.protocols.postgres.messages import (
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationOther,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    Bind,
    BindComplete,
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    FunctionCall,
    FunctionCallResponse,
    GSSENCRequest,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PasswordMessage,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RowDescription,
    SASLInitialResponse,
    SSLRequest,
    StartupMessage,
    Sync,
    Terminate,
    complete_tag,
    datarow_values,
    decode_backend,
    decode_frontend,
    decode_password,
    decode_sasl_initial_response,
    decode_startup,
    describe_target,
    encode_datarow,
    error_response,
    execute_portal,
    notice_response,
    query_sql,
)

FUZZ = settings(
    max_examples=150, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip

text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40)
name = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)
i16 = st.integers(-(2**15), 2**15 - 1)
u16 = st.integers(0, 2**16 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
u32 = st.integers(0, 2**32 - 1)
value = st.none() | st.binary(max_size=30)
values = st.lists(value, max_size=8).map(tuple)
formats = st.lists(st.sampled_from([0, 1]), max_size=4).map(tuple)
fields_ = st.dictionaries(st.sampled_from("SVCMDHPpqWstcdnFLR"), text, min_size=1)

frontend = st.one_of(
    st.builds(Query, text),
    st.builds(Parse, text, text, st.lists(u32, max_size=5).map(tuple)),
    st.builds(Describe, st.sampled_from(["S", "P"]), text),
    st.builds(Execute, text, i32),
    st.builds(Close, st.sampled_from(["S", "P"]), text),
    st.builds(Sync),
    st.builds(Flush),
    st.builds(CopyData, st.binary(max_size=50)),
    st.builds(CopyDone),
    st.builds(CopyFail, text),
    st.builds(Terminate),
    values.flatmap(
        lambda vs: st.builds(
            Bind,
            text,
            text,
            st.sampled_from([(), (1,), tuple(0 for _ in vs)]),
            st.just(vs),
            formats,
        )
    ),
    values.flatmap(
        lambda vs: st.builds(
            FunctionCall, u32, st.sampled_from([(), (0,), tuple(1 for _ in vs)]), st.just(vs), i16
        )
    ),
)

backend = st.one_of(
    st.builds(AuthenticationOk),
    st.builds(AuthenticationCleartextPassword),
    st.builds(AuthenticationMD5Password, st.binary(min_size=4, max_size=4)),
    st.builds(AuthenticationSASL, st.lists(name, max_size=3).map(tuple)),
    st.builds(AuthenticationSASLContinue, st.binary(max_size=40)),
    st.builds(AuthenticationSASLFinal, st.binary(max_size=40)),
    st.builds(AuthenticationOther, st.sampled_from([2, 7, 8, 9, 99]), st.binary(max_size=8)),
    st.builds(ParameterStatus, text, text),
    st.builds(BackendKeyData, i32, st.binary(min_size=4, max_size=256)),
    st.builds(ReadyForQuery, st.sampled_from(["I", "T", "E"])),
    st.builds(
        RowDescription,
        st.lists(st.builds(FieldDescription, text, u32, i16, u32, i16, i32, i16), max_size=4).map(
            tuple
        ),
    ),
    st.builds(DataRow, values),
    st.builds(CommandComplete, text),
    st.builds(EmptyQueryResponse),
    st.builds(ErrorResponse, fields_),
    st.builds(NoticeResponse, fields_),
    st.builds(CopyInResponse, st.sampled_from([0, 1]), formats),
    st.builds(CopyOutResponse, st.sampled_from([0, 1]), formats),
    st.builds(CopyBothResponse, st.sampled_from([0, 1]), formats),
    st.builds(CopyData, st.binary(max_size=50)),
    st.builds(CopyDone),
    st.builds(ParseComplete),
    st.builds(BindComplete),
    st.builds(CloseComplete),
    st.builds(NoData),
    st.builds(PortalSuspended),
    st.builds(ParameterDescription, st.lists(u32, max_size=5).map(tuple)),
    st.builds(NotificationResponse, i32, text, text),
    st.builds(NegotiateProtocolVersion, st.just(3), u16, st.lists(name, max_size=3).map(tuple)),
    st.builds(FunctionCallResponse, value),
)


def split_one(frame: bytes) -> tuple[int, bytes]:
    assert int.from_bytes(frame[1:5], "big") == len(frame) - 1
    return frame[0], frame[5:]


@FUZZ
@given(frontend)
def test_frontend_round_trip(msg: object) -> None:
    t, payload = split_one(msg.encode())  # type: ignore[attr-defined]
    assert decode_frontend(t, payload) == msg


@FUZZ
@given(backend)
def test_backend_round_trip(msg: object) -> None:
    t, payload = split_one(msg.encode())  # type: ignore[attr-defined]
    assert decode_backend(t, payload) == msg


@FUZZ
@given(
    st.one_of(
        st.builds(
            StartupMessage,
            st.just(3),
            u16,
            st.dictionaries(st.text(st.characters(blacklist_characters="\0",
                                                  blacklist_categories=("Cs",)), min_size=1,
                                    max_size=10), text, max_size=4),
        ),
        st.builds(SSLRequest),
        st.builds(GSSENCRequest),
        st.builds(CancelRequest, i32, st.binary(min_size=4, max_size=256)),
    )
)  # fmt: skip
def test_startup_packets_round_trip(msg: object) -> None:
    assert decode_startup(msg.encode()) == msg  # type: ignore[attr-defined]


@FUZZ
@given(values)
def test_datarow_helpers(vals: tuple[bytes | None, ...]) -> None:
    frame = encode_datarow(vals)
    assert frame == DataRow(vals).encode()
    assert tuple(datarow_values(frame, 5)) == vals
    # Embedded in a larger chunk, with offsets.
    chunk = b"junk" + frame + b"more"
    assert tuple(datarow_values(chunk, 4 + 5, 4 + len(frame))) == vals


def test_authentication_responses() -> None:
    assert decode_password(PasswordMessage("pw").encode()[5:]) == PasswordMessage("pw")
    assert "pw" not in repr(PasswordMessage("pw"))
    sasl = SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert decode_sasl_initial_response(sasl.encode()[5:]) == sasl
    empty = SASLInitialResponse("X", None)
    assert decode_sasl_initial_response(empty.encode()[5:]) == empty
    with pytest.raises(PeerProtocolError, match="trailing"):
        decode_password(b"pw\0x")


def test_error_response_helper() -> None:
    frame = error_response(
        "ERROR", "42501", "permission denied", detail="policy", hint="ask", table_name="t"
    )
    err = decode_backend(frame[0], frame[5:])
    assert isinstance(err, ErrorResponse)
    assert (err.severity, err.code, err.message, err.detail, err.hint) == (
        "ERROR", "42501", "permission denied", "policy", "ask",
    )  # fmt: skip
    assert err.get("table_name") == "t" and err.get("t") == "t" and not err.is_fatal
    notice = decode_backend(ord("N"), notice_response("WARNING", "01000", "careful")[5:])
    assert isinstance(notice, NoticeResponse) and notice.severity == "WARNING"
    with pytest.raises(LocalProtocolError):
        error_response("ERROR", "4250", "short code")
    with pytest.raises(LocalProtocolError):
        error_response("ERROR", "42501", "x", nonsense="y")
    with pytest.raises(LocalProtocolError):
        error_response("ERROR", "42501", "nul\0inside")


@pytest.mark.parametrize(
    ("tag", "command", "rows"),
    [
        ("INSERT 0 5", "INSERT", 5),
        ("SELECT 3", "SELECT", 3),
        ("UPDATE 0", "UPDATE", 0),
        ("DELETE 12", "DELETE", 12),
        ("MERGE 2", "MERGE", 2),
        ("COPY 7", "COPY", 7),
        ("FETCH 1", "FETCH", 1),
        ("MOVE 4", "MOVE", 4),
        ("CREATE TABLE", "CREATE TABLE", None),
        ("BEGIN", "BEGIN", None),
        ("DROP 3", "DROP 3", None),
    ],
)
def test_command_complete(tag: str, command: str, rows: int | None) -> None:
    cc = CommandComplete(tag)
    assert (cc.command, cc.rows) == (command, rows)


@pytest.mark.parametrize(
    ("t", "payload", "problem"),
    [
        (ord("Q"), b"select 1", "unterminated"),
        (ord("Q"), b"select 1\0x", "trailing"),
        (ord("B"), b"\0\0\0\x02\0\0\0\0\0\x01\0\0\0\x01x\0\0", "2 parameter formats for 1"),
        (ord("B"), b"\0\0\xff\xff", "do not fit"),
        (ord("B"), b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0", "invalid value length -2"),
        (ord("D"), b"X", "kind must be 'S' or 'P'"),
        (ord("E"), b"\0\0\0", "truncated"),
        (ord("S"), b"x", "trailing"),
        (ord("z"), b"", "invalid frontend message type"),
    ],
)
def test_malformed_frontend_payloads(t: int, payload: bytes, problem: str) -> None:
    with pytest.raises(PeerProtocolError, match=problem) as info:
        decode_frontend(t, payload)
    assert info.value.side == "client"


@pytest.mark.parametrize(
    ("t", "payload", "problem"),
    [
        (ord("Z"), b"X", "transaction status"),
        (ord("D"), b"\0\x02\0\0\0\x01a", "do not fit"),
        (ord("D"), b"\0\x01\0\0\0\x05a", "truncated"),
        (ord("K"), b"\0\0\0\x01\0\0", "cancel key of 2 bytes"),
        (ord("T"), b"\0\x01a\0\0", "truncated"),
        (ord("v"), b"\0\x03\0\0\xff\xff\xff\xff", "do not fit"),
        (ord("E"), b"Sx", "unterminated"),
        (ord("R"), b"\0\0\0", "truncated"),
        (ord("!"), b"", "invalid backend message type"),
    ],
)
def test_malformed_backend_payloads(t: int, payload: bytes, problem: str) -> None:
    with pytest.raises(PeerProtocolError, match=problem) as info:
        decode_backend(t, payload)
    assert info.value.side == "server"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\0",
        b"\0\x01",
        b"\0\x01\0\0\0\x05ab",
        b"\0\x01\xff\xff\xff\xfe",
        b"\0\0x",
        b"\0\x01\0\0\0",
    ],
)
def test_malformed_datarows(payload: bytes) -> None:
    with pytest.raises(PeerProtocolError, match="DataRow"):
        datarow_values(payload)


def test_datarow_does_not_read_past_its_end() -> None:
    frame = encode_datarow([b"ab"])
    chunk = frame[:-1] + b"Zmore"  # the row's end is one byte short: next bytes not read
    with pytest.raises(PeerProtocolError):
        datarow_values(chunk, 5, len(frame) - 1)


def test_encoders_refuse_impossible_values() -> None:
    with pytest.raises(LocalProtocolError):
        Query("nul\0").encode()
    with pytest.raises(LocalProtocolError):
        BackendKeyData(1, b"abc").encode()
    with pytest.raises(LocalProtocolError):
        CancelRequest(1, bytes(257)).encode()
    with pytest.raises(LocalProtocolError):
        AuthenticationMD5Password(b"abc").encode()
    with pytest.raises(LocalProtocolError):
        encode_datarow([None] * 70000)
    assert "key=<4 bytes>" in repr(BackendKeyData(1, b"abcd"))


def test_non_utf8_text_survives_a_round_trip() -> None:
    payload = b"select '\xe9t\xe9'\0"  # Latin-1 bytes from a non-UTF8 client
    msg = decode_frontend(ord("Q"), payload)
    assert isinstance(msg, Query) and msg.encode()[5:] == payload


# -- Bind's one-pass reader agrees with the step-by-step one --------------------------------------

_names = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=8)
_binds = st.builds(
    Bind,
    _names,
    _names,
    st.lists(st.integers(0, 1), max_size=3).map(tuple),
    st.lists(st.none() | st.binary(max_size=12), max_size=3).map(tuple),
    st.lists(st.integers(0, 1), max_size=70).map(tuple),
).filter(lambda b: len(b.param_formats) in (0, 1, len(b.params)))


def _checked(payload: bytes) -> Bind | PeerProtocolError:
    from appliance.protocols.postgres.messages import _decode_bind_checked, _Reader

    r = _Reader(payload, "client", "Bind")
    try:
        bind = _decode_bind_checked(r)
        r.done()
    except PeerProtocolError as exc:
        return exc
    return bind


@given(_binds)
def test_bind_is_read_alike_both_ways(bind: Bind) -> None:
    payload = bind.encode()[5:]
    assert decode_frontend(ord("B"), payload) == bind == _checked(payload)


@given(_binds, st.data())
def test_a_damaged_bind_is_refused_or_read_alike_both_ways(bind: Bind, data: st.DataObject) -> None:
    payload = bytearray(bind.encode()[5:])
    for _ in range(data.draw(st.integers(1, 3))):
        if not payload:
            break
        i = data.draw(st.integers(0, len(payload) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "add"]))
        if op == "flip":
            payload[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del payload[i:]
        else:
            payload[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    expected = _checked(bytes(payload))
    try:
        got: Bind | PeerProtocolError = decode_frontend(ord("B"), bytes(payload))
    except PeerProtocolError as exc:
        got = exc
    if isinstance(expected, PeerProtocolError):
        assert isinstance(got, PeerProtocolError) and str(got) == str(expected)
    else:
        assert got == expected


def _outcome(read: Callable[[bytes], str], payload: bytes) -> str | PeerProtocolError:
    try:
        return read(payload)
    except PeerProtocolError as exc:
        return exc


def _sql(payload: bytes) -> str:
    query = decode_frontend(ord("Q"), payload)
    assert isinstance(query, Query)
    return query.sql


def _tag(payload: bytes) -> str:
    complete = decode_backend(ord("C"), payload)
    assert isinstance(complete, CommandComplete)
    return complete.tag


def _portal(payload: bytes) -> str:
    execute = decode_frontend(ord("E"), payload)
    assert isinstance(execute, Execute)
    return execute.portal


def _described(payload: bytes) -> str:
    describe = decode_frontend(ord("D"), payload)
    assert isinstance(describe, Describe)
    return describe.kind + describe.name


def _target(payload: bytes) -> str:
    kind, name = describe_target(payload)
    return kind + name


def _cstrings(draw_prefix: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    text = st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass"))
    tail = st.sampled_from([b"", b"\0\0\0\0", b"\0\0\0\x05", b"\xff"])
    return st.tuples(draw_prefix, text, st.sampled_from([b"\0", b""]), tail).map(
        lambda p: p[0] + p[1] + p[2] + p[3]
    )


@given(st.one_of(st.binary(max_size=40), _cstrings(st.sampled_from([b"", b"S", b"P", b"X"]))))
def test_hot_path_readers_match_the_decoders(payload: bytes) -> None:
    """The relay reads a Query's SQL, a CommandComplete's tag, an Execute's portal and a
    Describe's target without message objects: the same values, or the same refusal, as the
    decoders give."""
    for read, decode in (
        (query_sql, _sql),
        (complete_tag, _tag),
        (execute_portal, _portal),
        (_target, _described),
    ):
        expected = _outcome(decode, payload)
        got = _outcome(read, payload)
        if isinstance(expected, PeerProtocolError):
            assert isinstance(got, PeerProtocolError)
            assert (str(got), got.side) == (str(expected), expected.side)
        else:
            assert got == expected
