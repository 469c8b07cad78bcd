"""Typed decoders and encoders of the MySQL protocol's packets (payloads, without framing).

Connection phase: :class:`Handshake` (v10, server -> client), :class:`HandshakeResponse`
(client -> server, 4.1), :class:`SSLRequest`, auth switch and more-data packets. Command
phase: :class:`Ok`, :class:`Err`, :class:`Eof`, :class:`ColumnDef`, text and binary rows,
:class:`PrepareOk`, :class:`Execute` (COM_STMT_EXECUTE with its parameters) and the query
attributes of COM_QUERY. Every decoder raises :class:`PeerProtocolError` for the side
given when the payload is malformed, never anything else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from appliance.protocols.mysql._errors import PeerProtocolError, Side
from appliance.protocols.mysql._wire import (
    Reader,
    lenenc_bytes,
    lenenc_int,
    u16,
    u32,
)
from appliance.protocols.mysql.constants import (
    PARAMETER_COUNT_AVAILABLE,
    SESSION_TRACK_SCHEMA,
    SESSION_TRACK_SYSTEM_VARIABLES,
    Cap,
    Com,
    Status,
    Type,
)

OK_HEADER = 0x00
EOF_HEADER = 0xFE
ERR_HEADER = 0xFF
LOCAL_INFILE_HEADER = 0xFB
AUTH_MORE_DATA = 0x01
AUTH_SWITCH = 0xFE
UNSIGNED_FLAG = 32

# -- connection phase -----------------------------------------------------------------------


@dataclass(frozen=True)
class Handshake:
    """Protocol::HandshakeV10. ``capabilities`` includes MariaDB's extended bits (32..63)
    when the server sets them in the last four filler bytes (it then clears LONG_PASSWORD,
    bit 0, which MariaDB calls CLIENT_MYSQL)."""

    server_version: str
    connection_id: int
    scramble: bytes  # 20 bytes of auth plugin data (without the trailing NUL)
    capabilities: int
    charset: int
    status: int
    auth_plugin: str

    @classmethod
    def decode(cls, payload: bytes, side: Side = "server") -> Handshake:
        r = Reader(payload, side, "handshake")
        version = r.u8()
        if version == ERR_HEADER:
            raise PeerProtocolError("the server refused the connection", side=side)
        if version != 10:
            raise r.fail(f"protocol version {version}, not 10")
        server_version = r.nul().decode("utf-8", "replace")
        connection_id = r.u32()
        part1 = r.fixed(8)
        r.u8()  # filler
        caps = r.u16()
        charset = r.u8() if r.remaining else 0
        status = r.u16() if r.remaining else 0
        caps |= (r.u16() << 16) if r.remaining else 0
        auth_len = r.u8() if r.remaining else 0
        r.fixed(6)
        ext = r.u32()
        if not caps & Cap.LONG_PASSWORD:  # MariaDB: extended capabilities follow
            caps |= ext << 32
        part2 = b""
        if caps & Cap.SECURE_CONNECTION:
            n = max(13, auth_len - 8)
            part2 = r.fixed(n)
            if part2.endswith(b"\0"):
                part2 = part2[:-1]
        plugin = r.nul_or_rest().decode("ascii", "replace") if caps & Cap.PLUGIN_AUTH else ""
        return cls(server_version, connection_id, part1 + part2, caps, charset, status, plugin)

    def encode(self) -> bytes:
        caps = self.capabilities
        mariadb_ext = caps >> 32
        low = caps & 0xFFFFFFFF
        if mariadb_ext:
            low &= ~int(Cap.LONG_PASSWORD)
        scramble = self.scramble
        return b"".join(
            (
                b"\x0a",
                self.server_version.encode("utf-8") + b"\0",
                u32(self.connection_id),
                scramble[:8],
                b"\0",
                u16(low & 0xFFFF),
                bytes((self.charset & 0xFF,)),
                u16(self.status),
                u16(low >> 16),
                bytes((len(scramble) + 1,)),
                b"\0" * 6,
                u32(mariadb_ext),
                scramble[8:] + b"\0",
                self.auth_plugin.encode("ascii") + b"\0",
            )
        )


@dataclass(frozen=True)
class SSLRequest:
    """The 32-byte packet a client sends instead of its handshake response to start TLS."""

    capabilities: int
    max_packet: int
    charset: int

    def encode(self) -> bytes:
        low, ext = self.capabilities & 0xFFFFFFFF, self.capabilities >> 32
        return u32(low) + u32(self.max_packet) + bytes((self.charset,)) + b"\0" * 19 + u32(ext)


@dataclass(frozen=True)
class HandshakeResponse:
    """Protocol::HandshakeResponse41 (the client's answer to the handshake), or the
    :class:`SSLRequest` it starts with when it asks for TLS (``ssl_request``)."""

    capabilities: int
    max_packet: int
    charset: int
    user: str = ""
    auth_response: bytes = b""
    database: str | None = None
    auth_plugin: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    ssl_request: bool = False

    @classmethod
    def decode(cls, payload: bytes, side: Side = "client") -> HandshakeResponse:
        r = Reader(payload, side, "handshake response")
        low = r.u32()
        if not low & Cap.PROTOCOL_41:
            raise PeerProtocolError(
                "the client speaks the pre-4.1 protocol, which the appliance refuses", side=side
            )
        max_packet = r.u32()
        charset = r.u8()
        r.fixed(19)
        ext = r.u32()
        caps = low | (ext << 32 if not low & Cap.LONG_PASSWORD else 0)
        if r.remaining == 0:
            if not caps & Cap.SSL:
                raise r.fail("ends after the capabilities without asking for TLS")
            return cls(caps, max_packet, charset, ssl_request=True)
        user = r.nul().decode("utf-8", "surrogateescape")
        if caps & Cap.PLUGIN_AUTH_LENENC_DATA:
            auth = r.lenenc_bytes()
        elif caps & Cap.SECURE_CONNECTION:
            auth = r.fixed(r.u8())
        else:
            auth = r.nul()
        database = None
        if caps & Cap.CONNECT_WITH_DB and r.remaining:
            database = r.nul_or_rest().decode("utf-8", "surrogateescape")
        plugin = ""
        if caps & Cap.PLUGIN_AUTH and r.remaining:
            plugin = r.nul_or_rest().decode("ascii", "replace")
        attrs: dict[str, str] = {}
        if caps & Cap.CONNECT_ATTRS and r.remaining:
            block = Reader(r.lenenc_bytes(), side, "connection attributes")
            while block.remaining:
                key = block.lenenc_bytes().decode("utf-8", "replace")
                attrs[key] = block.lenenc_bytes().decode("utf-8", "replace")
                if len(attrs) > 256:
                    raise block.fail("more than 256 connection attributes")
        return cls(caps, max_packet, charset, user, auth, database, plugin, attrs)

    def encode(self) -> bytes:
        caps = self.capabilities
        low, ext = caps & 0xFFFFFFFF, caps >> 32
        if ext:
            low &= ~int(Cap.LONG_PASSWORD)
        parts = [u32(low), u32(self.max_packet), bytes((self.charset,)), b"\0" * 19, u32(ext)]
        parts.append(self.user.encode("utf-8", "surrogateescape") + b"\0")
        if caps & Cap.PLUGIN_AUTH_LENENC_DATA:
            parts.append(lenenc_bytes(self.auth_response))
        else:
            parts.append(bytes((len(self.auth_response),)) + self.auth_response)
        if caps & Cap.CONNECT_WITH_DB:
            parts.append((self.database or "").encode("utf-8", "surrogateescape") + b"\0")
        if caps & Cap.PLUGIN_AUTH:
            parts.append(self.auth_plugin.encode("ascii") + b"\0")
        if caps & Cap.CONNECT_ATTRS:
            block = b"".join(
                lenenc_bytes(k.encode()) + lenenc_bytes(v.encode())
                for k, v in self.attributes.items()
            )
            parts.append(lenenc_bytes(block))
        return b"".join(parts)


@dataclass(frozen=True)
class ChangeUser:
    """COM_CHANGE_USER: a new authentication on the same connection."""

    user: str
    database: str
    charset: int | None
    auth_plugin: str

    @classmethod
    def decode(cls, payload: bytes, capabilities: int) -> ChangeUser:
        r = Reader(payload, "client", "COM_CHANGE_USER", pos=1)
        user = r.nul().decode("utf-8", "surrogateescape")
        if capabilities & Cap.SECURE_CONNECTION:
            r.fixed(r.u8())
        else:
            r.nul()
        database = r.nul_or_rest().decode("utf-8", "surrogateescape")
        charset = r.u16() if r.remaining >= 2 else None
        plugin = r.nul_or_rest().decode("ascii", "replace") if r.remaining else ""
        return cls(user, database, charset, plugin)


def auth_switch(plugin: str, data: bytes) -> bytes:
    """An AuthSwitchRequest payload (the server asks for another plugin's answer)."""
    return b"\xfe" + plugin.encode("ascii") + b"\0" + data


# -- command phase: generic responses -------------------------------------------------------


@dataclass(frozen=True)
class Ok:
    """An OK packet (header 0x00, or 0xFE where it replaces an EOF under DEPRECATE_EOF).

    ``session`` holds the session state changes when the server tracked any: a list of
    ``(type, data)``; :meth:`system_variables` and :meth:`schema` read the common ones.
    """

    affected_rows: int = 0
    last_insert_id: int = 0
    status: int = 0
    warnings: int = 0
    info: bytes = b""
    session: tuple[tuple[int, bytes], ...] = ()

    @classmethod
    def decode(cls, payload: bytes, capabilities: int, side: Side = "server") -> Ok:
        r = Reader(payload, side, "OK packet", pos=1)
        affected = r.lenenc_int()
        last_id = r.lenenc_int()
        status = warnings = 0
        if capabilities & Cap.PROTOCOL_41:
            status = r.u16()
            warnings = r.u16()
        info = b""
        session: list[tuple[int, bytes]] = []
        if capabilities & Cap.SESSION_TRACK:
            if r.remaining:
                info = r.lenenc_bytes()
            if status & Status.SESSION_STATE_CHANGED and r.remaining:
                block = Reader(r.lenenc_bytes(), side, "session state")
                while block.remaining:
                    kind = block.u8()
                    session.append((kind, block.lenenc_bytes()))
        else:
            info = r.rest()
        return cls(affected, last_id, status, warnings, info, tuple(session))

    def encode(self, capabilities: int, header: int = OK_HEADER) -> bytes:
        parts = [bytes((header,)), lenenc_int(self.affected_rows), lenenc_int(self.last_insert_id)]
        status = self.status
        if self.session:
            status |= Status.SESSION_STATE_CHANGED
        if capabilities & Cap.PROTOCOL_41:
            parts += [u16(status), u16(self.warnings)]
        if capabilities & Cap.SESSION_TRACK:
            if self.info or self.session:
                parts.append(lenenc_bytes(self.info))
            if self.session:
                block = b"".join(bytes((k,)) + lenenc_bytes(d) for k, d in self.session)
                parts.append(lenenc_bytes(block))
        else:
            parts.append(self.info)
        return b"".join(parts)

    def system_variables(self) -> dict[str, str]:
        """Session variables the server reported changed (SESSION_TRACK_SYSTEM_VARIABLES)."""
        out: dict[str, str] = {}
        for kind, data in self.session:
            if kind == SESSION_TRACK_SYSTEM_VARIABLES:
                r = Reader(data, "server", "tracked system variable")
                name = r.lenenc_bytes().decode("utf-8", "replace").lower()
                out[name] = r.lenenc_bytes().decode("utf-8", "replace") if r.remaining else ""
        return out

    def schema(self) -> str | None:
        for kind, data in self.session:
            if kind == SESSION_TRACK_SCHEMA:
                r = Reader(data, "server", "tracked schema")
                return r.lenenc_bytes().decode("utf-8", "replace")
        return None


@dataclass(frozen=True)
class Err:
    """An ERR packet: ``code``, five-character ``sqlstate`` and ``message``."""

    code: int
    sqlstate: str
    message: str

    @classmethod
    def decode(cls, payload: bytes, side: Side = "server") -> Err:
        r = Reader(payload, side, "ERR packet", pos=1)
        code = r.u16()
        sqlstate = "HY000"
        if r.remaining and payload[r.pos] == 0x23:  # '#'
            r.u8()
            sqlstate = r.fixed(5).decode("ascii", "replace")
        return cls(code, sqlstate, r.rest().decode("utf-8", "replace"))

    def encode(self) -> bytes:
        return (
            b"\xff"
            + u16(self.code)
            + b"#"
            + self.sqlstate.encode("ascii")[:5].ljust(5, b"0")
            + self.message.encode("utf-8")
        )


@dataclass(frozen=True)
class Eof:
    """A 4.1 EOF packet (header 0xFE, payload under 9 bytes)."""

    warnings: int = 0
    status: int = 0

    @classmethod
    def decode(cls, payload: bytes, side: Side = "server") -> Eof:
        if len(payload) < 5:
            return cls()
        r = Reader(payload, side, "EOF packet", pos=1)
        return cls(r.u16(), r.u16())

    def encode(self) -> bytes:
        return b"\xfe" + u16(self.warnings) + u16(self.status)


def is_eof(payload: bytes) -> bool:
    """An EOF packet, as opposed to a row or OK that starts with 0xFE (length >= 9)."""
    return len(payload) < 9 and payload[:1] == b"\xfe"


def status_of_end(payload: bytes, capabilities: int) -> int:
    """The server status of the packet that ends a result set (EOF, or OK with 0xFE)."""
    if is_eof(payload):
        return Eof.decode(payload).status
    return Ok.decode(payload, capabilities).status


# -- result sets --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ColumnDef:
    """Protocol::ColumnDefinition41."""

    schema: str
    table: str
    org_table: str
    name: str
    org_name: str
    charset: int
    length: int
    type: int
    flags: int
    decimals: int

    @classmethod
    def decode(cls, payload: bytes, side: Side = "server") -> ColumnDef:
        r = Reader(payload, side, "column definition")
        r.lenenc_bytes()  # catalog, always "def"
        schema = r.lenenc_bytes().decode("utf-8", "replace")
        table = r.lenenc_bytes().decode("utf-8", "replace")
        org_table = r.lenenc_bytes().decode("utf-8", "replace")
        name = r.lenenc_bytes().decode("utf-8", "replace")
        org_name = r.lenenc_bytes().decode("utf-8", "replace")
        r.lenenc_int()  # length of the fixed fields, 0x0c
        charset = r.u16()
        length = r.u32()
        type_ = r.u8()
        flags = r.u16()
        decimals = r.u8()
        return cls(
            schema, table, org_table, name, org_name, charset, length, type_, flags, decimals
        )

    def encode(self) -> bytes:
        parts = [
            lenenc_bytes(b"def"),
            *(
                lenenc_bytes(s.encode("utf-8"))
                for s in (self.schema, self.table, self.org_table, self.name, self.org_name)
            ),
            b"\x0c",
            u16(self.charset),
            u32(self.length),
            bytes((self.type, *u16(self.flags), self.decimals)),
            b"\0\0",
        ]
        return b"".join(parts)

    @property
    def unsigned(self) -> bool:
        return bool(self.flags & UNSIGNED_FLAG)


def text_row(payload: bytes, n: int, side: Side = "server") -> list[bytes | None]:
    """The ``n`` values of a text-protocol row (None for SQL NULL)."""
    r = Reader(payload, side, "text row")
    values = [r.lenenc_or_null() for _ in range(n)]
    if r.remaining:
        raise r.fail(f"{r.remaining} bytes after {n} values")
    return values


def encode_text_row(values: list[bytes | None]) -> bytes:
    return b"".join(b"\xfb" if v is None else lenenc_bytes(v) for v in values)


# Binary-protocol value sizes: fixed-size types; the temporal ones have a length byte; the
# rest are length-encoded strings.
_FIXED = {
    Type.TINY: 1,
    Type.SHORT: 2,
    Type.YEAR: 2,
    Type.LONG: 4,
    Type.INT24: 4,
    Type.FLOAT: 4,
    Type.LONGLONG: 8,
    Type.DOUBLE: 8,
}
_TEMPORAL = frozenset(
    {Type.DATE, Type.DATETIME, Type.TIMESTAMP, Type.TIME, Type.NEWDATE, Type.TIMESTAMP2,
     Type.DATETIME2, Type.TIME2}
)  # fmt: skip
_INT_FORMATS = {1: "b", 2: "h", 4: "i", 8: "q"}


def _binary_value(r: Reader, type_: int) -> bytes:
    """The raw bytes of one binary-protocol value of ``type_`` (its length prefix dropped)."""
    size = _FIXED.get(type_)  # type: ignore[call-overload]
    if size is not None:
        return r.fixed(size)
    if type_ in _TEMPORAL:
        return r.fixed(r.u8())
    if type_ == Type.NULL:
        return b""
    return r.lenenc_bytes()


def binary_row(payload: bytes, types: list[int], side: Side = "server") -> list[bytes | None]:
    """The raw values of a binary-protocol row (header 0x00, NULL bitmap with offset 2)."""
    r = Reader(payload, side, "binary row")
    if r.u8() != 0:
        raise r.fail("does not start with 0x00")
    n = len(types)
    bitmap = r.fixed((n + 9) // 8)
    values: list[bytes | None] = []
    for i, t in enumerate(types):
        bit = i + 2
        if bitmap[bit >> 3] & (1 << (bit & 7)):
            values.append(None)
        else:
            values.append(_binary_value(r, t))
    if r.remaining:
        raise r.fail(f"{r.remaining} bytes after {n} values")
    return values


def encode_binary_row(values: list[bytes | None], types: list[int]) -> bytes:
    """A binary-protocol row of raw values (as :func:`binary_row` returns them)."""
    n = len(types)
    bitmap = bytearray((n + 9) // 8)
    parts = []
    for i, (v, t) in enumerate(zip(values, types, strict=True)):
        if v is None:
            bit = i + 2
            bitmap[bit >> 3] |= 1 << (bit & 7)
        elif t in _FIXED:
            parts.append(v)
        elif t in _TEMPORAL:
            parts.append(bytes((len(v),)) + v)
        else:
            parts.append(lenenc_bytes(v))
    return b"\0" + bytes(bitmap) + b"".join(parts)


def binary_is_string(type_: int) -> bool:
    """Whether a binary-protocol value of ``type_`` is the same bytes as its text form."""
    return type_ not in _FIXED and type_ not in _TEMPORAL and type_ != Type.NULL


def binary_to_text(value: bytes, type_: int, unsigned: bool) -> bytes | None:
    """The text form of a binary-protocol value (as the text protocol would send it), or
    None when it cannot be read (a malformed value)."""
    try:
        if type_ in (Type.FLOAT, Type.DOUBLE):
            (f,) = struct.unpack("<f" if type_ == Type.FLOAT else "<d", value)
            return repr(f).encode()
        size = _FIXED.get(type_)  # type: ignore[call-overload]
        if size is not None:
            fmt = _INT_FORMATS[size]
            (i,) = struct.unpack("<" + (fmt.upper() if unsigned else fmt), value)
            return str(i).encode()
        if type_ in _TEMPORAL:
            return _temporal_text(value, type_)
    except (struct.error, KeyError, ValueError):
        return None
    return value


def _temporal_text(v: bytes, type_: int) -> bytes | None:
    if type_ in (Type.TIME, Type.TIME2):
        if not v:
            return b"00:00:00"
        if len(v) not in (8, 12):
            return None
        neg, days, h, m, s = struct.unpack_from("<BIBBB", v)
        us = struct.unpack_from("<I", v, 8)[0] if len(v) == 12 else 0
        text = f"{'-' if neg else ''}{days * 24 + h:02d}:{m:02d}:{s:02d}"
        return (text + (f".{us:06d}" if us else "")).encode()
    if not v:
        return b"0000-00-00" if type_ in (Type.DATE, Type.NEWDATE) else b"0000-00-00 00:00:00"
    if len(v) not in (4, 7, 11):
        return None
    y, mo, d = struct.unpack_from("<HBB", v)
    text = f"{y:04d}-{mo:02d}-{d:02d}"
    if len(v) >= 7:
        h, mi, s = v[4], v[5], v[6]
        text += f" {h:02d}:{mi:02d}:{s:02d}"
    if len(v) == 11:
        text += f".{struct.unpack_from('<I', v, 7)[0]:06d}"
    return text.encode()


# -- prepared statements ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrepareOk:
    """COM_STMT_PREPARE's OK: the statement id and how many definitions follow."""

    statement_id: int
    columns: int
    params: int
    warnings: int

    @classmethod
    def decode(cls, payload: bytes, side: Side = "server") -> PrepareOk:
        r = Reader(payload, side, "COM_STMT_PREPARE OK", pos=1)
        sid, cols, params = r.u32(), r.u16(), r.u16()
        warnings = 0
        if r.remaining >= 3:
            r.u8()
            warnings = r.u16()
        return cls(sid, cols, params, warnings)


@dataclass(frozen=True)
class Execute:
    """COM_STMT_EXECUTE: statement id, cursor flags and the parameters' raw values.

    ``types`` is the parameter types (type byte, unsigned flag) in force: sent with this
    execution (``new_params_bound``) or remembered from the previous one. ``values`` are
    raw binary-protocol values (None: NULL; a parameter sent with SEND_LONG_DATA and not
    repeated here is ``b""`` and named in ``long_data``).
    """

    statement_id: int
    flags: int
    types: tuple[tuple[int, bool], ...]
    values: tuple[bytes | None, ...]
    new_params_bound: bool
    names: tuple[str, ...] = ()

    @classmethod
    def decode(
        cls,
        payload: bytes,
        n_params: int,
        previous_types: tuple[tuple[int, bool], ...] | None,
        capabilities: int,
        long_data: frozenset[int] = frozenset(),
    ) -> Execute:
        r = Reader(payload, "client", "COM_STMT_EXECUTE", pos=1)
        sid = r.u32()
        flags = r.u8()
        r.u32()  # iteration count, always 1
        if capabilities & Cap.QUERY_ATTRIBUTES and flags & PARAMETER_COUNT_AVAILABLE:
            n_params = r.lenenc_int()
            if n_params > 65535:
                raise r.fail("more than 65535 parameters")
        if n_params == 0:
            return cls(sid, flags, (), (), False)
        return cls(sid, flags, *_params(r, n_params, previous_types, capabilities, long_data))


def _params(
    r: Reader,
    n: int,
    previous_types: tuple[tuple[int, bool], ...] | None,
    capabilities: int,
    long_data: frozenset[int] = frozenset(),
    *,
    named: bool = False,
) -> tuple[tuple[tuple[int, bool], ...], tuple[bytes | None, ...], bool, tuple[str, ...]]:
    """Parameters as in COM_STMT_EXECUTE and COM_QUERY's query attributes: NULL bitmap,
    new-params-bound flag, types (and names, with query attributes), values."""
    bitmap = r.fixed((n + 7) // 8)
    bound = r.u8() == 1
    names: list[str] = []
    if bound:
        types = []
        for _ in range(n):
            t = r.u8()
            flag = r.u8()
            types.append((t, bool(flag & 0x80)))
            if named:
                names.append(r.lenenc_bytes().decode("utf-8", "replace"))
        types_t = tuple(types)
    elif previous_types is not None and len(previous_types) == n:
        types_t = previous_types
    else:
        raise r.fail("parameters sent without their types")
    values: list[bytes | None] = []
    for i, (t, _unsigned) in enumerate(types_t):
        if bitmap[i >> 3] & (1 << (i & 7)):
            values.append(None)
        elif i in long_data:
            values.append(b"")
        else:
            values.append(_binary_value(r, t))
    return types_t, tuple(values), bound, tuple(names)


@dataclass(frozen=True)
class Query:
    """COM_QUERY: the statement text (bytes, in the session's character set) and, with
    CLIENT_QUERY_ATTRIBUTES, the attributes sent with it (names and raw values)."""

    text: bytes
    attributes: tuple[tuple[str, bytes | None], ...] = ()

    @classmethod
    def decode(cls, payload: bytes, capabilities: int) -> Query:
        if not capabilities & Cap.QUERY_ATTRIBUTES:
            return cls(payload[1:])
        r = Reader(payload, "client", "COM_QUERY", pos=1)
        n = r.lenenc_int()
        r.lenenc_int()  # parameter set count, always 1
        if n > 65535:
            raise r.fail("more than 65535 query attributes")
        if n == 0:
            return cls(r.rest())
        _types, values, _bound, names = _params(r, n, None, capabilities, named=True)
        return cls(r.rest(), tuple(zip(names, values, strict=True)))


def command_name(com: int) -> str:
    try:
        return "COM_" + Com(com).name
    except ValueError:
        return f"command 0x{com:02x}"
