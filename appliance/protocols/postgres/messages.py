"""Typed PostgreSQL messages (protocol 3.0 and 3.2): decoders for what the proxy inspects,
encoders for what the appliance sends.

Where this sits: the framer (:mod:`._framing`) splits streams into ``(type, frame)``
without decoding; the session layer decodes on demand the messages it inspects
(Query, Parse, Bind, RowDescription, DataRow, CommandComplete, ErrorResponse...) with
:func:`decode_frontend` / :func:`decode_backend` or the fast DataRow helpers, and builds
what the appliance sends itself with each message's :meth:`encode` or with
:func:`error_response`.

Format reference: PostgreSQL documentation, "Frontend/Backend Protocol", section "Message
Formats". Conventions here:

- decoders take the *payload* (the bytes after the type byte and length word); a payload
  that is short, has trailing bytes, an unterminated string or an impossible count raises
  :class:`PeerProtocolError` blaming the sender (frontend: ``client``, backend: ``server``);
- text fields are decoded as UTF-8 with ``surrogateescape``: bytes that are not UTF-8 (a
  job with a non-UTF8 client_encoding) survive a decode/encode round trip unchanged and
  show up as lone surrogates, which no SQL keyword matches;
- DataRow has no per-message object on the hot path: :func:`datarow_values` returns the
  column values, :func:`encode_datarow` rebuilds a frame from new values.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from appliance.protocols.postgres import codes as c
from appliance.protocols.postgres._errors import LocalProtocolError, PeerProtocolError, Side

# Special "protocol versions" of untyped startup-phase packets.
CANCEL_REQUEST_CODE = (1234 << 16) | 5678
SSL_REQUEST_CODE = (1234 << 16) | 5679
GSSENC_REQUEST_CODE = (1234 << 16) | 5680
MAX_CANCEL_KEY_LENGTH = 256  # protocol 3.2

_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_HEADER = struct.Struct("!BI")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _cstr(text: str) -> bytes:
    raw = _raw(text)
    if b"\0" in raw:
        raise LocalProtocolError("a protocol string cannot contain a NUL byte")
    return raw + b"\0"


def frame(type_byte: int, payload: bytes = b"") -> bytes:
    """A typed frame: type byte, length word (counting itself), payload."""
    return _HEADER.pack(type_byte, len(payload) + 4) + payload


def _untyped(payload: bytes) -> bytes:
    return _U32.pack(len(payload) + 4) + payload


class _Reader:
    """A cursor over one payload that raises PeerProtocolError on any malformation."""

    __slots__ = ("data", "pos", "side", "what")

    def __init__(self, data: bytes, side: Side, what: str) -> None:
        self.data = data
        self.pos = 0
        self.side: Side = side
        self.what = what

    def fail(self, problem: str) -> PeerProtocolError:
        return PeerProtocolError(f"malformed {self.what}: {problem}", side=self.side)

    def _need(self, n: int) -> int:
        pos = self.pos
        if pos + n > len(self.data):
            raise self.fail(f"truncated (needs {n} more bytes at offset {pos})")
        self.pos = pos + n
        return pos

    def byte(self) -> int:
        return self.data[self._need(1)]

    def int16(self) -> int:
        return int(_I16.unpack_from(self.data, self._need(2))[0])

    def uint16(self) -> int:
        return int(_U16.unpack_from(self.data, self._need(2))[0])

    def int32(self) -> int:
        return int(_I32.unpack_from(self.data, self._need(4))[0])

    def uint32(self) -> int:
        return int(_U32.unpack_from(self.data, self._need(4))[0])

    def take(self, n: int) -> bytes:
        if n < 0:
            raise self.fail(f"negative length {n}")
        start = self._need(n)
        return self.data[start : start + n]

    def cstring(self) -> str:
        start = self.pos
        end = self.data.find(b"\0", start)
        if end < 0:
            raise self.fail("unterminated string")
        self.pos = end + 1
        return _text(self.data[start:end])

    def value(self) -> bytes | None:
        """An Int32 length (-1: NULL) followed by that many bytes."""
        n = self.int32()
        if n == -1:
            return None
        if n < 0:
            raise self.fail(f"invalid value length {n}")
        return self.take(n)

    def rest(self) -> bytes:
        data = self.data[self.pos :]
        self.pos = len(self.data)
        return data

    def done(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} unexpected trailing bytes")

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


def _values(values: Iterable[bytes | None]) -> bytes:
    parts = []
    for v in values:
        if v is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(_I32.pack(len(v)))
            parts.append(v)
    return b"".join(parts)


def _int16s(values: Sequence[int]) -> bytes:
    return _U16.pack(len(values)) + b"".join(_I16.pack(v) for v in values)


def _check_count(n: int, limit: int = 0xFFFF) -> None:
    if not 0 <= n <= limit:
        raise LocalProtocolError(f"count {n} does not fit the protocol's Int16")


# -- untyped startup-phase packets (frontend) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The first packet of a session: protocol version and parameters (``user``,
    ``database``, ``application_name``, ``options``, ``replication``, GUCs and reserved
    ``_pq_.*`` protocol options), in the order sent."""

    major: int
    minor: int
    parameters: dict[str, str] = field(default_factory=dict)

    @property
    def protocol_options(self) -> dict[str, str]:
        """The ``_pq_.*`` options (protocol extensions), none of which the appliance knows."""
        return {k: v for k, v in self.parameters.items() if k.startswith("_pq_.")}

    def encode(self) -> bytes:
        _check_count(self.major)
        _check_count(self.minor)
        body = b"".join(_cstr(k) + _cstr(v) for k, v in self.parameters.items())
        return _untyped(_U16.pack(self.major) + _U16.pack(self.minor) + body + b"\0")


@dataclass(frozen=True, slots=True)
class SSLRequest:
    def encode(self) -> bytes:
        return _untyped(_U32.pack(SSL_REQUEST_CODE))


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    def encode(self) -> bytes:
        return _untyped(_U32.pack(GSSENC_REQUEST_CODE))


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Sent on a new connection: cancel what backend ``pid`` (holding ``key``) runs.
    ``key`` is 4 bytes in protocol 3.0, up to 256 bytes in 3.2."""

    pid: int
    key: bytes

    def encode(self) -> bytes:
        if not 4 <= len(self.key) <= MAX_CANCEL_KEY_LENGTH:
            raise LocalProtocolError(f"cancel key of {len(self.key)} bytes (allowed 4..256)")
        return _untyped(_U32.pack(CANCEL_REQUEST_CODE) + _I32.pack(self.pid) + self.key)


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def decode_startup(packet: bytes) -> StartupPacket:
    """Decode an untyped startup-phase packet (``packet`` includes its length word).

    Parameters are parsed for protocol major version 3 only; for any other major version
    the StartupMessage has no parameters (the caller rejects the version). Raises
    PeerProtocolError (client) for a malformed packet.
    """
    r = _Reader(packet, "client", "startup packet")
    length = r.uint32()
    if length != len(packet):
        raise r.fail(f"length word {length} does not match packet size {len(packet)}")
    code = r.uint32()
    if code == SSL_REQUEST_CODE:
        r.done()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        r.done()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        r.what = "CancelRequest"
        pid = r.int32()
        key = r.rest()
        if not 4 <= len(key) <= MAX_CANCEL_KEY_LENGTH:
            raise r.fail(f"cancel key of {len(key)} bytes (allowed 4..256)")
        return CancelRequest(pid, key)
    major, minor = code >> 16, code & 0xFFFF
    r.what = "StartupMessage"
    params: dict[str, str] = {}
    if major == 3:
        while True:
            name = r.cstring()
            if not name:
                break
            if name in params:
                raise r.fail(f"parameter {name!r} given twice")
            params[name] = r.cstring()
        r.done()
    return StartupMessage(major, minor, params)


# -- frontend messages (typed) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    sql: str

    def encode(self) -> bytes:
        return frame(c.F_QUERY, _cstr(self.sql))


@dataclass(frozen=True, slots=True)
class Parse:
    statement: str
    sql: str
    param_types: tuple[int, ...] = ()

    def encode(self) -> bytes:
        _check_count(len(self.param_types))
        oids = b"".join(_U32.pack(o) for o in self.param_types)
        return frame(
            c.F_PARSE,
            _cstr(self.statement) + _cstr(self.sql) + _U16.pack(len(self.param_types)) + oids,
        )


@dataclass(slots=True, init=False)
class Bind:
    """Bind ``statement`` to ``portal``. ``param_formats`` has 0 entries (all text), 1
    (applies to all) or one per parameter; :meth:`param_format` resolves that.

    Not frozen, unlike the other messages (treat it as immutable all the same): one is made
    per execution of a prepared statement, and a frozen dataclass's ``__init__`` runs as
    Python even when compiled (scripts/compile.py)."""

    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]

    def __init__(
        self,
        portal: str,
        statement: str,
        param_formats: tuple[int, ...] = (),
        params: tuple[bytes | None, ...] = (),
        result_formats: tuple[int, ...] = (),
    ) -> None:
        self.portal = portal
        self.statement = statement
        self.param_formats = param_formats
        self.params = params
        self.result_formats = result_formats

    def param_format(self, i: int) -> int:
        """0 (text) or 1 (binary) for parameter ``i``."""
        if not self.param_formats:
            return 0
        if len(self.param_formats) == 1:
            return self.param_formats[0]
        return self.param_formats[i]

    def encode(self) -> bytes:
        _check_count(len(self.params))
        _check_count(len(self.param_formats))
        _check_count(len(self.result_formats))
        return frame(
            c.F_BIND,
            _cstr(self.portal)
            + _cstr(self.statement)
            + _int16s(self.param_formats)
            + _U16.pack(len(self.params))
            + _values(self.params)
            + _int16s(self.result_formats),
        )


@dataclass(frozen=True, slots=True)
class Describe:
    """Describe a prepared statement (``kind`` 'S') or portal ('P')."""

    kind: Literal["S", "P"]
    name: str

    def encode(self) -> bytes:
        return frame(c.F_DESCRIBE, _raw(self.kind) + _cstr(self.name))


@dataclass(frozen=True, slots=True)
class Execute:
    """Execute ``portal``; ``max_rows`` 0 means no limit."""

    portal: str
    max_rows: int = 0

    def encode(self) -> bytes:
        return frame(c.F_EXECUTE, _cstr(self.portal) + _I32.pack(self.max_rows))


@dataclass(frozen=True, slots=True)
class Close:
    """Close a prepared statement (``kind`` 'S') or portal ('P')."""

    kind: Literal["S", "P"]
    name: str

    def encode(self) -> bytes:
        return frame(c.F_CLOSE, _raw(self.kind) + _cstr(self.name))


@dataclass(frozen=True, slots=True)
class Sync:
    def encode(self) -> bytes:
        return frame(c.F_SYNC)


@dataclass(frozen=True, slots=True)
class Flush:
    def encode(self) -> bytes:
        return frame(c.F_FLUSH)


@dataclass(frozen=True, slots=True)
class CopyData:
    """COPY data, either direction."""

    data: bytes

    def encode(self) -> bytes:
        return frame(c.F_COPY_DATA, self.data)


@dataclass(frozen=True, slots=True)
class CopyDone:
    def encode(self) -> bytes:
        return frame(c.F_COPY_DONE)


@dataclass(frozen=True, slots=True)
class CopyFail:
    message: str

    def encode(self) -> bytes:
        return frame(c.F_COPY_FAIL, _cstr(self.message))


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """The legacy fast-path function call ('F')."""

    function_oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0

    def encode(self) -> bytes:
        _check_count(len(self.args))
        _check_count(len(self.arg_formats))
        return frame(
            c.F_FUNCTION,
            _U32.pack(self.function_oid)
            + _int16s(self.arg_formats)
            + _U16.pack(len(self.args))
            + _values(self.args)
            + _I16.pack(self.result_format),
        )


@dataclass(frozen=True, slots=True)
class Terminate:
    def encode(self) -> bytes:
        return frame(c.F_TERMINATE)


@dataclass(frozen=True, slots=True)
class AuthenticationResponse:
    """A 'p' message whose meaning depends on the authentication request it answers
    (password, SASL initial response, SASL response, GSS): decode it with
    :func:`decode_password`, :func:`decode_sasl_initial_response` or take ``data``."""

    data: bytes

    def encode(self) -> bytes:
        return frame(c.F_PASSWORD, self.data)


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """A cleartext password or an md5 response (``"md5" + 32 hex digits``)."""

    password: str

    def encode(self) -> bytes:
        return frame(c.F_PASSWORD, _cstr(self.password))

    def __repr__(self) -> str:  # never show a password in a log line or traceback
        return "PasswordMessage(password=<hidden>)"


@dataclass(frozen=True, slots=True)
class SASLInitialResponse:
    mechanism: str
    data: bytes | None

    def encode(self) -> bytes:
        return frame(c.F_PASSWORD, _cstr(self.mechanism) + _values([self.data]))


@dataclass(frozen=True, slots=True)
class SASLResponse:
    data: bytes

    def encode(self) -> bytes:
        return frame(c.F_PASSWORD, self.data)


def decode_password(payload: bytes) -> PasswordMessage:
    """A 'p' payload answering AuthenticationCleartextPassword or AuthenticationMD5Password."""
    r = _Reader(payload, "client", "PasswordMessage")
    password = r.cstring()
    r.done()
    return PasswordMessage(password)


def decode_sasl_initial_response(payload: bytes) -> SASLInitialResponse:
    r = _Reader(payload, "client", "SASLInitialResponse")
    mechanism = r.cstring()
    data = r.value()
    r.done()
    return SASLInitialResponse(mechanism, data)


def _decode_query(r: _Reader) -> Query:
    return Query(r.cstring())


def query_sql(payload: bytes) -> str:
    """``decode_frontend(F_QUERY, payload).sql`` without the message object, for the relay's
    hot path (a frozen dataclass's ``__init__`` runs as Python even when compiled: see
    scripts/compile.py). Anything malformed goes to the decoder, which says what is wrong."""
    if payload and payload.find(b"\0") == len(payload) - 1:
        return _text(payload[:-1])
    query = decode_frontend(c.F_QUERY, payload)
    assert isinstance(query, Query)
    return query.sql


def describe_target(payload: bytes) -> tuple[str, str]:
    """``(kind, name)`` of ``decode_frontend(F_DESCRIBE, payload)``: as :func:`query_sql`."""
    if len(payload) >= 2 and payload.find(b"\0", 1) == len(payload) - 1:
        kind = payload[0]
        if kind == 0x53:
            return "S", _text(payload[1:-1])
        if kind == 0x50:
            return "P", _text(payload[1:-1])
    describe = decode_frontend(c.F_DESCRIBE, payload)
    assert isinstance(describe, Describe)
    return describe.kind, describe.name


def execute_portal(payload: bytes) -> str:
    """``decode_frontend(F_EXECUTE, payload).portal``: as :func:`query_sql`."""
    end = payload.find(b"\0")
    if end >= 0 and end + 5 == len(payload):
        return _text(payload[:end])
    execute = decode_frontend(c.F_EXECUTE, payload)
    assert isinstance(execute, Execute)
    return execute.portal


def _decode_parse(r: _Reader) -> Parse:
    statement, sql = r.cstring(), r.cstring()
    n = r.uint16()
    return Parse(statement, sql, tuple(r.uint32() for _ in range(n)))


def _formats(r: _Reader) -> tuple[int, ...]:
    n = r.uint16()
    if n * 2 > r.remaining:
        raise r.fail(f"{n} format codes do not fit in the message")
    return tuple(r.int16() for _ in range(n))


def _value_list(r: _Reader) -> tuple[bytes | None, ...]:
    n = r.uint16()
    if n * 4 > r.remaining:
        raise r.fail(f"{n} values do not fit in the message")
    return tuple(r.value() for _ in range(n))


def _decode_bind(r: _Reader) -> Bind:
    """Bind runs once per statement of every extended-protocol client: a well-formed one is
    read in one pass over the bytes; anything unusual takes the step-by-step reader, which
    says precisely what is wrong (the results are equal: a property test checks it)."""
    fast = _bind_fast(r.data)
    if fast is not None:
        r.pos = len(r.data)
        return fast
    return _decode_bind_checked(r)


def _bind_fast(data: bytes) -> Bind | None:
    # Words are read with native arithmetic (_u16_at, _i32_at): compiled, a struct call
    # costs hundreds of instructions.
    n = len(data)
    e1 = data.find(0)
    e2 = data.find(0, e1 + 1) if e1 >= 0 else -1
    if e2 < 0 or e2 + 3 > n:
        return None
    pos = e2 + 1
    nf = _u16_at(data, pos)
    pos += 2
    param_formats = _int16s_at(data, pos, nf)
    if param_formats is None:
        return None
    pos += 2 * nf
    if pos + 2 > n:
        return None
    nv = _u16_at(data, pos)
    pos += 2
    if nf not in (0, 1, nv):
        return None
    values: list[bytes | None] = []
    for _ in range(nv):
        if pos + 4 > n:
            return None
        length = _i32_at(data, pos)
        pos += 4
        if length == -1:
            values.append(None)
            continue
        if length < 0 or pos + length > n:
            return None
        values.append(data[pos : pos + length])
        pos += length
    if pos + 2 > n:
        return None
    nr = _u16_at(data, pos)
    pos += 2
    result_formats = _int16s_at(data, pos, nr)
    if result_formats is None or pos + 2 * nr != n:
        return None
    return Bind(
        _text(data[:e1]), _text(data[e1 + 1 : e2]), param_formats, tuple(values), result_formats
    )


def _u16_at(data: bytes, pos: int) -> int:
    return (data[pos] << 8) | data[pos + 1]


def _i32_at(data: bytes, pos: int) -> int:
    v = (data[pos] << 24) | (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]
    return v - (1 << 32) if v & 0x80000000 else v


def _int16s_at(data: bytes, pos: int, count: int) -> tuple[int, ...] | None:
    """``count`` Int16 format codes at ``pos``, or None if they do not fit (or are many)."""
    if pos + 2 * count > len(data):
        return None
    if count == 0:
        return ()
    if count == 1:
        v = _u16_at(data, pos)
        return (v - 0x10000 if v & 0x8000 else v,)
    codes = _I16S.get(count)
    return codes.unpack_from(data, pos) if codes is not None else None


# Format-code arrays of the usual sizes, read in one call.
_I16S = {n: struct.Struct(f"!{n}h") for n in range(0, 65)}


def _decode_bind_checked(r: _Reader) -> Bind:
    portal, statement = r.cstring(), r.cstring()
    param_formats = _formats(r)
    params = _value_list(r)
    if len(param_formats) not in (0, 1, len(params)):
        raise r.fail(f"{len(param_formats)} parameter formats for {len(params)} parameters")
    return Bind(portal, statement, param_formats, params, _formats(r))


def _kind(r: _Reader) -> Literal["S", "P"]:
    k = r.byte()
    if k == 0x53:
        return "S"
    if k == 0x50:
        return "P"
    raise r.fail(f"kind must be 'S' or 'P', got 0x{k:02x}")


def _decode_describe(r: _Reader) -> Describe:
    kind = _kind(r)
    return Describe(kind, r.cstring())


def _decode_close(r: _Reader) -> Close:
    kind = _kind(r)
    return Close(kind, r.cstring())


def _decode_execute(r: _Reader) -> Execute:
    portal = r.cstring()
    return Execute(portal, r.int32())


def _decode_function_call(r: _Reader) -> FunctionCall:
    oid = r.uint32()
    formats = _formats(r)
    args = _value_list(r)
    if len(formats) not in (0, 1, len(args)):
        raise r.fail(f"{len(formats)} argument formats for {len(args)} arguments")
    return FunctionCall(oid, formats, args, r.int16())


FrontendMessage = (
    Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Close
    | Sync
    | Flush
    | CopyData
    | CopyDone
    | CopyFail
    | FunctionCall
    | Terminate
    | AuthenticationResponse
)

_FRONTEND: dict[int, tuple[str, Callable[[_Reader], FrontendMessage]]] = {
    c.F_QUERY: ("Query", _decode_query),
    c.F_PARSE: ("Parse", _decode_parse),
    c.F_BIND: ("Bind", _decode_bind),
    c.F_DESCRIBE: ("Describe", _decode_describe),
    c.F_EXECUTE: ("Execute", _decode_execute),
    c.F_CLOSE: ("Close", _decode_close),
    c.F_SYNC: ("Sync", lambda r: Sync()),
    c.F_FLUSH: ("Flush", lambda r: Flush()),
    c.F_COPY_DATA: ("CopyData", lambda r: CopyData(r.rest())),
    c.F_COPY_DONE: ("CopyDone", lambda r: CopyDone()),
    c.F_COPY_FAIL: ("CopyFail", lambda r: CopyFail(r.cstring())),
    c.F_FUNCTION: ("FunctionCall", _decode_function_call),
    c.F_TERMINATE: ("Terminate", lambda r: Terminate()),
    c.F_PASSWORD: ("authentication response", lambda r: AuthenticationResponse(r.rest())),
}


def decode_frontend(type_byte: int, payload: bytes) -> FrontendMessage:
    """Decode a typed frontend message. Raises PeerProtocolError (client)."""
    try:
        name, decode = _FRONTEND[type_byte]
    except KeyError:
        raise PeerProtocolError(
            f"invalid frontend message type 0x{type_byte:02x}", side="client"
        ) from None
    r = _Reader(payload, "client", name)
    msg = decode(r)
    r.done()
    return msg


# -- backend messages ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthenticationOk:
    def encode(self) -> bytes:
        return frame(c.B_AUTHENTICATION, _I32.pack(0))


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword:
    def encode(self) -> bytes:
        return frame(c.B_AUTHENTICATION, _I32.pack(3))


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password:
    salt: bytes

    def encode(self) -> bytes:
        if len(self.salt) != 4:
            raise LocalProtocolError("an md5 salt is 4 bytes")
        return frame(c.B_AUTHENTICATION, _I32.pack(5) + self.salt)


@dataclass(frozen=True, slots=True)
class AuthenticationSASL:
    mechanisms: tuple[str, ...]

    def encode(self) -> bytes:
        names = b"".join(_cstr(m) for m in self.mechanisms)
        return frame(c.B_AUTHENTICATION, _I32.pack(10) + names + b"\0")


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue:
    data: bytes

    def encode(self) -> bytes:
        return frame(c.B_AUTHENTICATION, _I32.pack(11) + self.data)


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal:
    data: bytes

    def encode(self) -> bytes:
        return frame(c.B_AUTHENTICATION, _I32.pack(12) + self.data)


AUTH_METHOD_NAMES = {2: "Kerberos V5", 7: "GSSAPI", 8: "GSSAPI continue", 9: "SSPI"}


@dataclass(frozen=True, slots=True)
class AuthenticationOther:
    """An authentication request the appliance does not implement (GSSAPI, SSPI...)."""

    code: int
    data: bytes = b""

    @property
    def method(self) -> str:
        return AUTH_METHOD_NAMES.get(self.code, f"unknown method {self.code}")

    def encode(self) -> bytes:
        return frame(c.B_AUTHENTICATION, _I32.pack(self.code) + self.data)


Authentication = (
    AuthenticationOk
    | AuthenticationCleartextPassword
    | AuthenticationMD5Password
    | AuthenticationSASL
    | AuthenticationSASLContinue
    | AuthenticationSASLFinal
    | AuthenticationOther
)


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    name: str
    value: str

    def encode(self) -> bytes:
        return frame(c.B_PARAMETER, _cstr(self.name) + _cstr(self.value))


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    """The process id and secret key a client needs to cancel a query. ``key`` is 4 bytes
    in protocol 3.0 and 4 to 256 bytes in 3.2."""

    pid: int
    key: bytes

    def encode(self) -> bytes:
        if not 4 <= len(self.key) <= MAX_CANCEL_KEY_LENGTH:
            raise LocalProtocolError(f"cancel key of {len(self.key)} bytes (allowed 4..256)")
        return frame(c.B_KEY, _I32.pack(self.pid) + self.key)

    def __repr__(self) -> str:  # the key is a capability: keep it out of logs
        return f"BackendKeyData(pid={self.pid}, key=<{len(self.key)} bytes>)"


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    """``status``: 'I' idle, 'T' in a transaction block, 'E' in a failed transaction."""

    status: Literal["I", "T", "E"] = "I"

    def encode(self) -> bytes:
        return frame(c.B_READY, _raw(self.status))


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One column of a RowDescription."""

    name: str
    table_oid: int = 0
    column_attnum: int = 0
    type_oid: int = 25  # text
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0

    def encode(self) -> bytes:
        return _cstr(self.name) + struct.pack(
            "!IhIhih",
            self.table_oid,
            self.column_attnum,
            self.type_oid,
            self.type_size,
            self.type_modifier,
            self.format,
        )


_FIELD = struct.Struct("!IhIhih")


@dataclass(frozen=True, slots=True)
class RowDescription:
    fields: tuple[FieldDescription, ...]

    def encode(self) -> bytes:
        _check_count(len(self.fields))
        return frame(
            c.B_ROWDESC, _U16.pack(len(self.fields)) + b"".join(f.encode() for f in self.fields)
        )


@dataclass(frozen=True, slots=True)
class DataRow:
    """A decoded row, for cold paths and tests. The hot path uses :func:`datarow_values`
    and :func:`encode_datarow` and builds no object per row."""

    values: tuple[bytes | None, ...]

    def encode(self) -> bytes:
        return encode_datarow(self.values)


_ROWS_COMMANDS = frozenset({"SELECT", "UPDATE", "DELETE", "MERGE", "FETCH", "MOVE", "COPY"})


@dataclass(frozen=True, slots=True)
class CommandComplete:
    """``tag`` as sent ("INSERT 0 3", "SELECT 5", "CREATE TABLE"); :attr:`command` and
    :attr:`rows` split it."""

    tag: str

    @property
    def command(self) -> str:
        """The command word(s): "INSERT", "SELECT", "CREATE TABLE"..."""
        return self._split()[0]

    @property
    def rows(self) -> int | None:
        """The row count for commands that report one, else None."""
        return self._split()[1]

    def _split(self) -> tuple[str, int | None]:
        return split_tag(self.tag)

    def encode(self) -> bytes:
        return frame(c.B_COMPLETE, _cstr(self.tag))


def split_tag(tag: str) -> tuple[str, int | None]:
    """A CommandComplete tag's command word(s) and row count (None for commands that report
    none)."""
    parts = tag.split(" ")
    if parts[0] == "INSERT" and len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return "INSERT", int(parts[2])
    if len(parts) == 2 and parts[0] in _ROWS_COMMANDS and parts[1].isdigit():
        return parts[0], int(parts[1])
    return tag, None


def complete_tag(payload: bytes) -> str:
    """``decode_backend(B_COMPLETE, payload).tag``: as :func:`query_sql`."""
    if payload and payload.find(b"\0") == len(payload) - 1:
        return _text(payload[:-1])
    complete = decode_backend(c.B_COMPLETE, payload)
    assert isinstance(complete, CommandComplete)
    return complete.tag


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse:
    def encode(self) -> bytes:
        return frame(c.B_EMPTY)


# ErrorResponse / NoticeResponse field codes (protocol-error-fields.html).
FIELD_NAMES: dict[str, str] = {
    "severity": "S",
    "severity_nonlocalized": "V",
    "code": "C",
    "message": "M",
    "detail": "D",
    "hint": "H",
    "position": "P",
    "internal_position": "p",
    "internal_query": "q",
    "where": "W",
    "schema_name": "s",
    "table_name": "t",
    "column_name": "c",
    "data_type_name": "d",
    "constraint_name": "n",
    "file": "F",
    "line": "L",
    "routine": "R",
}


@dataclass(frozen=True, slots=True)
class _Fields:
    """Fields of an ErrorResponse or NoticeResponse, keyed by their code letter."""

    fields: dict[str, str]

    def get(self, name: str) -> str | None:
        """A field by long name ("detail") or code letter ("D")."""
        return self.fields.get(FIELD_NAMES.get(name, name))

    @property
    def severity(self) -> str:
        """The non-localized severity (ERROR, FATAL, PANIC, WARNING, NOTICE...)."""
        return self.fields.get("V") or self.fields.get("S", "")

    @property
    def code(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @property
    def detail(self) -> str | None:
        return self.fields.get("D")

    @property
    def hint(self) -> str | None:
        return self.fields.get("H")

    def _encode(self, type_byte: int) -> bytes:
        parts = []
        for code, value in self.fields.items():
            raw = _raw(code)
            if len(raw) != 1 or raw == b"\0":
                raise LocalProtocolError(f"error field code must be one byte, got {code!r}")
            parts.append(raw + _cstr(value))
        return frame(type_byte, b"".join(parts) + b"\0")


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Fields):
    @property
    def is_fatal(self) -> bool:
        return self.severity in ("FATAL", "PANIC")

    def encode(self) -> bytes:
        return self._encode(c.B_ERROR)


@dataclass(frozen=True, slots=True)
class NoticeResponse(_Fields):
    def encode(self) -> bytes:
        return self._encode(c.B_NOTICE)


def _fields(
    severity: str,
    code: str,
    message: str,
    detail: str | None,
    hint: str | None,
    more: Mapping[str, str],
) -> dict[str, str]:
    fields = {"S": severity, "V": severity, "C": code, "M": message}
    if detail is not None:
        fields["D"] = detail
    if hint is not None:
        fields["H"] = hint
    for name, value in more.items():
        letter = FIELD_NAMES.get(name)
        if letter is None:
            raise LocalProtocolError(f"unknown error field {name!r}")
        fields[letter] = value
    return fields


def error_response(
    severity: str,
    code: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
    **more: str,
) -> bytes:
    """An encoded ErrorResponse. ``severity`` is ERROR, FATAL or PANIC; ``code`` a SQLSTATE;
    ``more`` takes the other fields by long name (``position=``, ``table_name=``...)."""
    if len(code) != 5:
        raise LocalProtocolError(f"SQLSTATE must be 5 characters, got {code!r}")
    return ErrorResponse(_fields(severity, code, message, detail, hint, more)).encode()


def notice_response(
    severity: str,
    code: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
    **more: str,
) -> bytes:
    """An encoded NoticeResponse (``severity`` WARNING, NOTICE, INFO, LOG, DEBUG)."""
    if len(code) != 5:
        raise LocalProtocolError(f"SQLSTATE must be 5 characters, got {code!r}")
    return NoticeResponse(_fields(severity, code, message, detail, hint, more)).encode()


@dataclass(frozen=True, slots=True)
class _CopyResponse:
    """``format``: 0 text, 1 binary; ``column_formats``: one per column."""

    format: int
    column_formats: tuple[int, ...]

    def _encode(self, type_byte: int) -> bytes:
        _check_count(len(self.column_formats))
        return frame(type_byte, bytes((self.format,)) + _int16s(self.column_formats))


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    def encode(self) -> bytes:
        return self._encode(c.B_COPY_IN)


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    def encode(self) -> bytes:
        return self._encode(c.B_COPY_OUT)


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    def encode(self) -> bytes:
        return self._encode(c.B_COPY_BOTH)


@dataclass(frozen=True, slots=True)
class ParseComplete:
    def encode(self) -> bytes:
        return frame(c.B_PARSE_OK)


@dataclass(frozen=True, slots=True)
class BindComplete:
    def encode(self) -> bytes:
        return frame(c.B_BIND_OK)


@dataclass(frozen=True, slots=True)
class CloseComplete:
    def encode(self) -> bytes:
        return frame(c.B_CLOSE_OK)


@dataclass(frozen=True, slots=True)
class NoData:
    def encode(self) -> bytes:
        return frame(c.B_NODATA)


@dataclass(frozen=True, slots=True)
class PortalSuspended:
    def encode(self) -> bytes:
        return frame(c.B_SUSPENDED)


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    type_oids: tuple[int, ...]

    def encode(self) -> bytes:
        _check_count(len(self.type_oids))
        return frame(
            c.B_PARAMDESC,
            _U16.pack(len(self.type_oids)) + b"".join(_U32.pack(o) for o in self.type_oids),
        )


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    pid: int
    channel: str
    payload: str

    def encode(self) -> bytes:
        return frame(c.B_NOTIFY, _I32.pack(self.pid) + _cstr(self.channel) + _cstr(self.payload))


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    """The server speaks at most ``major.minor`` and did not recognise ``unrecognized``
    ``_pq_.*`` options."""

    major: int
    minor: int
    unrecognized: tuple[str, ...] = ()

    def encode(self) -> bytes:
        return frame(
            c.B_NEGOTIATE,
            _U16.pack(self.major)
            + _U16.pack(self.minor)
            + _U32.pack(len(self.unrecognized))
            + b"".join(_cstr(o) for o in self.unrecognized),
        )


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    result: bytes | None

    def encode(self) -> bytes:
        return frame(c.B_FUNCTION_RESULT, _values([self.result]))


def _decode_auth(r: _Reader) -> Authentication:
    code = r.int32()
    if code == 0:
        return AuthenticationOk()
    if code == 3:
        return AuthenticationCleartextPassword()
    if code == 5:
        return AuthenticationMD5Password(r.take(4))
    if code == 10:
        mechanisms = []
        while True:
            name = r.cstring()
            if not name:
                break
            mechanisms.append(name)
        return AuthenticationSASL(tuple(mechanisms))
    if code == 11:
        return AuthenticationSASLContinue(r.rest())
    if code == 12:
        return AuthenticationSASLFinal(r.rest())
    return AuthenticationOther(code, r.rest())


def _decode_fields(r: _Reader) -> dict[str, str]:
    fields: dict[str, str] = {}
    while True:
        code = r.byte()
        if code == 0:
            return fields
        fields[chr(code)] = r.cstring()


def _decode_row_description(r: _Reader) -> RowDescription:
    n = r.uint16()
    out = []
    data = r.data
    for _ in range(n):
        name = r.cstring()
        values = _FIELD.unpack_from(data, r._need(_FIELD.size))
        out.append(FieldDescription(name, *values))
    return RowDescription(tuple(out))


def _decode_copy_response(r: _Reader) -> tuple[int, tuple[int, ...]]:
    fmt = r.byte()
    return fmt, _formats(r)


def _decode_parameter_description(r: _Reader) -> ParameterDescription:
    n = r.uint16()
    return ParameterDescription(tuple(r.uint32() for _ in range(n)))


def _decode_negotiate(r: _Reader) -> NegotiateProtocolVersion:
    major, minor = r.uint16(), r.uint16()
    n = r.uint32()
    if n > r.remaining:
        raise r.fail(f"{n} option names do not fit in the message")
    return NegotiateProtocolVersion(major, minor, tuple(r.cstring() for _ in range(n)))


def _decode_ready(r: _Reader) -> ReadyForQuery:
    status = r.byte()
    if status == 0x49:
        return ReadyForQuery("I")
    if status == 0x54:
        return ReadyForQuery("T")
    if status == 0x45:
        return ReadyForQuery("E")
    raise r.fail(f"transaction status must be I, T or E, got 0x{status:02x}")


def _decode_datarow(r: _Reader) -> DataRow:
    return DataRow(_value_list(r))


def _decode_backend_key(r: _Reader) -> BackendKeyData:
    pid = r.int32()
    key = r.rest()
    if not 4 <= len(key) <= MAX_CANCEL_KEY_LENGTH:
        raise r.fail(f"cancel key of {len(key)} bytes (allowed 4..256)")
    return BackendKeyData(pid, key)


def _decode_notification(r: _Reader) -> NotificationResponse:
    pid = r.int32()
    channel = r.cstring()
    return NotificationResponse(pid, channel, r.cstring())


BackendMessage = (
    Authentication
    | ParameterStatus
    | BackendKeyData
    | ReadyForQuery
    | RowDescription
    | DataRow
    | CommandComplete
    | EmptyQueryResponse
    | ErrorResponse
    | NoticeResponse
    | CopyInResponse
    | CopyOutResponse
    | CopyBothResponse
    | CopyData
    | CopyDone
    | ParseComplete
    | BindComplete
    | CloseComplete
    | NoData
    | PortalSuspended
    | ParameterDescription
    | NotificationResponse
    | NegotiateProtocolVersion
    | FunctionCallResponse
)

_BACKEND: dict[int, tuple[str, Callable[[_Reader], BackendMessage]]] = {
    c.B_AUTHENTICATION: ("Authentication", _decode_auth),
    c.B_PARAMETER: ("ParameterStatus", lambda r: ParameterStatus(r.cstring(), r.cstring())),
    c.B_KEY: ("BackendKeyData", _decode_backend_key),
    c.B_READY: ("ReadyForQuery", _decode_ready),
    c.B_ROWDESC: ("RowDescription", _decode_row_description),
    c.B_DATAROW: ("DataRow", _decode_datarow),
    c.B_COMPLETE: ("CommandComplete", lambda r: CommandComplete(r.cstring())),
    c.B_EMPTY: ("EmptyQueryResponse", lambda r: EmptyQueryResponse()),
    c.B_ERROR: ("ErrorResponse", lambda r: ErrorResponse(_decode_fields(r))),
    c.B_NOTICE: ("NoticeResponse", lambda r: NoticeResponse(_decode_fields(r))),
    c.B_COPY_IN: ("CopyInResponse", lambda r: CopyInResponse(*_decode_copy_response(r))),
    c.B_COPY_OUT: ("CopyOutResponse", lambda r: CopyOutResponse(*_decode_copy_response(r))),
    c.B_COPY_BOTH: ("CopyBothResponse", lambda r: CopyBothResponse(*_decode_copy_response(r))),
    c.B_COPY_DATA: ("CopyData", lambda r: CopyData(r.rest())),
    c.B_COPY_DONE: ("CopyDone", lambda r: CopyDone()),
    c.B_PARSE_OK: ("ParseComplete", lambda r: ParseComplete()),
    c.B_BIND_OK: ("BindComplete", lambda r: BindComplete()),
    c.B_CLOSE_OK: ("CloseComplete", lambda r: CloseComplete()),
    c.B_NODATA: ("NoData", lambda r: NoData()),
    c.B_SUSPENDED: ("PortalSuspended", lambda r: PortalSuspended()),
    c.B_PARAMDESC: ("ParameterDescription", _decode_parameter_description),
    c.B_NOTIFY: ("NotificationResponse", _decode_notification),
    c.B_NEGOTIATE: ("NegotiateProtocolVersion", _decode_negotiate),
    c.B_FUNCTION_RESULT: ("FunctionCallResponse", lambda r: FunctionCallResponse(r.value())),
}


def decode_backend(type_byte: int, payload: bytes) -> BackendMessage:
    """Decode a backend message. Raises PeerProtocolError (server)."""
    try:
        name, decode = _BACKEND[type_byte]
    except KeyError:
        raise PeerProtocolError(
            f"invalid backend message type 0x{type_byte:02x}", side="server"
        ) from None
    r = _Reader(payload, "server", name)
    msg = decode(r)
    r.done()
    return msg


# -- DataRow hot path ----------------------------------------------------------------------

_unpack_i32 = _I32.unpack_from
_unpack_u16 = _U16.unpack_from


def datarow_values(data: bytes, start: int = 0, end: int | None = None) -> list[bytes | None]:
    """The column values of the DataRow whose *payload* is ``data[start:end]`` (for a fed
    chunk and frame ``(t, s, e)``: ``datarow_values(chunk, s + 5, e)``). None is SQL NULL.

    Raises PeerProtocolError (server) if the lengths do not add up to the payload.
    """
    if end is None:
        end = len(data)
    if end - start < 2:
        raise PeerProtocolError("malformed DataRow: truncated column count", side="server")
    (n,) = _unpack_u16(data, start)
    pos = start + 2
    out: list[bytes | None] = []
    append = out.append
    try:
        for _ in range(n):
            if pos + 4 > end:
                break
            (length,) = _unpack_i32(data, pos)
            pos += 4
            if length < 0:
                if length != -1:
                    raise PeerProtocolError(
                        f"malformed DataRow: invalid value length {length}", side="server"
                    )
                append(None)
                continue
            stop = pos + length
            if stop > end:
                break
            append(data[pos:stop])
            pos = stop
        else:
            if pos == end:
                return out
    except struct.error:
        pass
    raise PeerProtocolError("malformed DataRow: lengths do not match the message", side="server")


def encode_datarow(values: Sequence[bytes | None]) -> bytes:
    """A whole DataRow frame for ``values`` (None is SQL NULL), lengths recomputed."""
    _check_count(len(values))
    body = _values(values)
    return _HEADER.pack(c.B_DATAROW, len(body) + 6) + _U16.pack(len(values)) + body
