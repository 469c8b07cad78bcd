"""Incremental, size-capped splitting of a PostgreSQL byte stream into messages.

This is the hot path of the proxy: every byte of every session passes through
:meth:`Framer.feed`. Most messages (DataRow above all) are relayed untouched, so the framer
builds no object per message. ``feed(data)`` returns one ``bytes`` chunk holding every
message completed by this call, back to back, and a list of ``(type, start, end)`` offsets
into it (``chunk[start:end]`` is the whole frame, header included; the payload starts at
``start + 5``). A shell that relays a chunk untouched writes ``chunk`` once.

Cost (measured by ``tests/bench/bench_pg_framing.py`` on the 2-core development machine,
CPython 3.11): about 0.3 µs per message for a stream of small DataRows, i.e. ~3 million
messages/s; the copy of each chunk's bytes is a memcpy per chunk, not per message.

Bounds, checked on the 5-byte header before any of the body is awaited or kept:

- a declared length below 4 (the length counts itself) or above the cap for that message
  type raises :class:`PeerProtocolError`; so does a type byte not allowed in this phase;
- between calls the framer keeps at most one incomplete message, so its buffer never
  exceeds the largest cap plus the 5-byte header. Within a call, memory is that plus the
  data passed in; the shell bounds its reads.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from appliance.protocols.postgres import codes as c
from appliance.protocols.postgres._errors import PeerProtocolError, Side

KiB = 1024
MiB = 1024 * KiB

_LENGTH = struct.Struct("!I")
_unpack_length = _LENGTH.unpack_from


def _length_at(data: bytes, pos: int) -> int:
    """The length word at ``pos`` (``_LENGTH``) in :meth:`Framer.feed`'s loop: compiled, this
    is native arithmetic, where a struct call costs hundreds of instructions."""
    return (data[pos] << 24) | (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]


# Message types by direction (protocol 3.0 and 3.2). Frontend, normal phase: what
# PostgresMain accepts after authentication.
FRONTEND_TYPES = bytes(
    (c.F_QUERY, c.F_PARSE, c.F_BIND, c.F_EXECUTE, c.F_DESCRIBE, c.F_CLOSE, c.F_SYNC,
     c.F_FLUSH, c.F_FUNCTION, c.F_COPY_DATA, c.F_COPY_DONE, c.F_COPY_FAIL, c.F_TERMINATE)
)  # fmt: skip
# Frontend during authentication: PasswordMessage / SASLInitialResponse / SASLResponse.
FRONTEND_AUTH_TYPES = bytes((c.F_PASSWORD,))
# Backend, normal phase (after the first ReadyForQuery).
BACKEND_TYPES = bytes(
    (c.B_PARSE_OK, c.B_BIND_OK, c.B_CLOSE_OK, c.B_NOTIFY, c.B_COMPLETE, c.B_DATAROW,
     c.B_ERROR, c.B_COPY_IN, c.B_COPY_OUT, c.B_EMPTY, c.B_NOTICE, c.B_PARAMETER, c.B_ROWDESC,
     c.B_FUNCTION_RESULT, c.B_COPY_BOTH, c.B_READY, c.B_COPY_DONE, c.B_COPY_DATA, c.B_NODATA,
     c.B_SUSPENDED, c.B_PARAMDESC)
)  # fmt: skip
# Backend during startup and authentication.
BACKEND_STARTUP_TYPES = bytes(
    (c.B_AUTHENTICATION, c.B_NEGOTIATE, c.B_PARAMETER, c.B_KEY, c.B_NOTICE, c.B_ERROR, c.B_READY)
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-message size caps in bytes, counted as PostgreSQL counts them (length field
    included, type byte excluded). PostgreSQL's own hard limit is 1 GiB.

    ``startup``: the untyped first packet (PostgreSQL's MAX_STARTUP_PACKET_LENGTH).
    ``query``: Query and Parse (SQL text). ``bind``: Bind and FunctionCall (parameter
    values). ``copy_data``: CopyData in either direction. ``data_row``: DataRow.
    ``frontend_other``: every other frontend message (control messages, passwords, SASL).
    ``backend_other``: every other backend message (errors, notices, descriptions...).
    """

    startup: int = 10_000
    query: int = 8 * MiB
    bind: int = 64 * MiB
    copy_data: int = 64 * MiB
    data_row: int = 64 * MiB
    frontend_other: int = 1 * MiB
    backend_other: int = 16 * MiB

    def __post_init__(self) -> None:
        for name in _LIMIT_NAMES:
            value = getattr(self, name)
            if not isinstance(value, int) or not 8 <= value <= 0x7FFFFFFF:
                raise ValueError(f"limit {name} must be an int in 8..2**31-1, got {value!r}")

    @property
    def largest(self) -> int:
        return max(int(getattr(self, name)) for name in _LIMIT_NAMES)

    def caps(self, types: bytes, *, frontend: bool) -> list[int]:
        """A 256-entry table: the cap for each allowed type byte, 0 for types not allowed."""
        special: Mapping[int, int]
        if frontend:
            special = {
                c.F_QUERY: self.query,
                c.F_PARSE: self.query,
                c.F_BIND: self.bind,
                c.F_FUNCTION: self.bind,
                c.F_COPY_DATA: self.copy_data,
            }
            other = self.frontend_other
        else:
            special = {c.B_DATAROW: self.data_row, c.B_COPY_DATA: self.copy_data}
            other = self.backend_other
        table = [0] * 256
        for t in types:
            table[t] = special.get(t, other)
        return table


# Limits' fields (a compiled dataclass has no ``__slots__`` to read them from).
_LIMIT_NAMES = tuple(f.name for f in fields(Limits))


def describe_type(t: int) -> str:
    """A printable name for a type byte, for error messages."""
    return repr(chr(t)) if 0x20 < t < 0x7F else f"0x{t:02x}"


class Framer:
    """Splits one direction of a connection into typed messages, enforcing caps.

    ``side`` names who sends these bytes (for blame). ``caps`` is a 256-entry table from
    :meth:`Limits.caps`; it can be replaced between calls (the phase changed) with
    :meth:`set_caps`.
    """

    __slots__ = ("_buf", "_caps", "_need", "_side")

    def __init__(self, caps: list[int], *, side: Side) -> None:
        if len(caps) != 256:
            raise ValueError("caps must have 256 entries")
        self._caps = caps
        self._side: Side = side
        self._buf = bytearray()
        # Total bytes the incomplete message at the head of _buf needs (0: header unknown).
        self._need = 0

    def set_caps(self, caps: list[int]) -> None:
        if len(caps) != 256:
            raise ValueError("caps must have 256 entries")
        self._caps = caps
        self._need = 0  # re-check a buffered header against the new caps

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message (or not yet split)."""
        return len(self._buf)

    def append(self, data: bytes) -> None:
        """Keep ``data`` without splitting it (a phase in which it must not be read yet)."""
        self._buf += data

    def take_untyped(self, cap: int) -> bytes | None:
        """Remove and return one untyped startup-phase packet (length word included) from the
        buffer, or None if it is incomplete. Raises PeerProtocolError for a length below 8
        (length word plus a 4-byte code) or above ``cap``.
        """
        buf = self._buf
        if len(buf) < 4:
            return None
        (length,) = _unpack_length(buf, 0)
        if length < 8 or length > cap:
            if buf[0] == 0x16:
                raise PeerProtocolError(
                    "a TLS handshake arrived where a startup packet was expected "
                    "(direct TLS, sslnegotiation=direct, is not supported; use the "
                    "SSLRequest negotiation)",
                    side=self._side,
                )
            raise PeerProtocolError(
                f"invalid length of startup packet: {length} (allowed 8..{cap})",
                side=self._side,
            )
        if len(buf) < length:
            return None
        packet = bytes(buf[:length])
        del buf[:length]
        return packet

    def take_frame(self) -> tuple[int, bytes] | None:
        """Remove and return the first complete typed message as ``(type, payload)``, or
        None if it is incomplete; the rest stays buffered. Same checks as :meth:`feed`."""
        buf = self._buf
        if len(buf) < 5:
            return None
        t = buf[0]
        (length,) = _unpack_length(buf, 1)
        if length > self._caps[t] or length < 4:
            self._reject(t, length)
        if len(buf) < 1 + length:
            return None
        payload = bytes(buf[5 : 1 + length])
        del buf[: 1 + length]
        self._need = 0
        return t, payload

    def take_leftover(self) -> bytes:
        """Remove and return everything buffered."""
        data = bytes(self._buf)
        self._buf.clear()
        self._need = 0
        return data

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
        """Add ``data``; return ``(chunk, frames)`` for every message now complete.

        ``frames`` lists ``(type, start, end)`` with ``chunk[start:end]`` the whole frame;
        frames are contiguous and cover ``chunk`` exactly. Raises PeerProtocolError for a
        type byte not allowed now, or a declared length below 4 or above the type's cap.
        """
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return b"", []
            data = bytes(buf)
            buf.clear()
        n = len(data)
        frames: list[tuple[int, int, int]] = []
        append = frames.append
        caps = self._caps
        pos = 0
        while n - pos >= 5:
            t = data[pos]
            length = _length_at(data, pos + 1)
            if length > caps[t] or length < 4:
                self._reject(t, length)
            end = pos + 1 + length
            if end > n:
                break
            append((t, pos, end))
            pos = end
        if pos == n:
            self._need = 0
            return data, frames
        rest = n - pos
        buf += data[pos:] if rest < n else data
        self._need = 1 + _length_at(data, pos + 1) if rest >= 5 else 5
        return (data[:pos] if pos else b""), frames

    def _reject(self, t: int, length: int) -> None:
        cap = self._caps[t]
        if cap == 0:
            raise PeerProtocolError(
                f"unexpected message type {describe_type(t)} (length {length})", side=self._side
            )
        if length < 4:
            raise PeerProtocolError(
                f"invalid message length {length} for type {describe_type(t)}", side=self._side
            )
        raise PeerProtocolError(
            f"message of type {describe_type(t)} is {length} bytes, over the cap of {cap}",
            side=self._side,
        )


@dataclass(slots=True, init=False)  # a written __init__ compiles (see scripts/compile.py)
class Messages:
    """Complete messages from one :meth:`Framer.feed`: ``chunk`` holds them back to back and
    ``frames`` lists ``(type, start, end)`` with ``chunk[start:end]`` one whole frame.

    Relay ``chunk`` as is when nothing needs changing; decode what needs inspecting with
    :meth:`payload` and :func:`~appliance.protocols.postgres.messages.decode_frontend` /
    ``decode_backend`` (or ``datarow_values(chunk, start + 5, end)`` for DataRow).
    """

    chunk: bytes
    frames: list[tuple[int, int, int]]

    def __init__(self, chunk: bytes, frames: list[tuple[int, int, int]]) -> None:
        self.chunk = chunk
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def types(self) -> bytes:
        """The type bytes of the messages, in order (b"TDDC Z"-like, for tests and logs)."""
        return bytes(t for t, _, _ in self.frames)

    def frame(self, i: int) -> bytes:
        """Message ``i`` as a whole frame (header included)."""
        _, s, e = self.frames[i]
        return self.chunk[s:e]

    def payload(self, i: int) -> bytes:
        """Message ``i``'s payload (after the type byte and length word)."""
        _, s, e = self.frames[i]
        return self.chunk[s + 5 : e]


def frames_of(chunk: bytes, frames: Iterable[tuple[int, int, int]]) -> list[tuple[int, bytes]]:
    """``(type, payload)`` pairs of a fed chunk, for tests and cold paths (copies)."""
    return [(t, chunk[s + 5 : e]) for t, s, e in frames]
