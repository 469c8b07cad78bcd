"""Bytes of the MySQL protocol: packet framing with a size cap, and the basic field types
(fixed and length-encoded integers and strings).

A packet is a 3-byte little-endian payload length, a 1-byte sequence id and the payload.
A payload of 16 MiB - 1 or more is sent as several packets, each full one followed by the
next (the last shorter, maybe empty): :class:`Framer` joins them into one logical packet and
refuses any logical packet over its cap before buffering it whole.
"""

from __future__ import annotations

import struct

from appliance.protocols.mysql._errors import ER_NET_PACKET_TOO_LARGE, PeerProtocolError, Side

MAX_CHUNK = 0xFFFFFF
DEFAULT_MAX_PACKET = 64 * 1024 * 1024  # MySQL's default max_allowed_packet, 64 MiB
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def packet(seq: int, payload: bytes) -> bytes:
    """``payload`` framed as packet(s) starting at sequence id ``seq``."""
    n = len(payload)
    if n < MAX_CHUNK:
        return n.to_bytes(3, "little") + bytes((seq & 0xFF,)) + payload
    out = []
    pos = 0
    while True:
        chunk = payload[pos : pos + MAX_CHUNK]
        out.append(len(chunk).to_bytes(3, "little") + bytes((seq & 0xFF,)) + chunk)
        seq += 1
        pos += len(chunk)
        if len(chunk) < MAX_CHUNK:
            return b"".join(out)


def chunks_of(payload_length: int) -> int:
    """How many packets a payload of this length takes (sequence ids it uses)."""
    return payload_length // MAX_CHUNK + 1


class Framer:
    """Splits a byte stream into logical packets ``(seq, payload)``, capped.

    ``seq`` is the sequence id of the first packet of a logical one (a long payload's
    continuation packets advance it; :func:`chunks_of` says by how much). Raises
    :class:`PeerProtocolError` for ``side`` when a logical packet would exceed
    ``max_packet`` bytes, before holding it.
    """

    __slots__ = ("_buf", "_part", "_part_seq", "max_packet", "side")

    def __init__(self, side: Side, max_packet: int = DEFAULT_MAX_PACKET) -> None:
        self.side: Side = side
        self.max_packet = max_packet
        self._buf = b""
        self._part: list[bytes] | None = None  # a long payload being joined
        self._part_seq = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def take_rest(self) -> bytes:
        """The bytes fed but not yet part of a packet, removed from the framer (what follows
        a request to switch to TLS belongs to the TLS stream). Raises PeerProtocolError in
        the middle of a long payload."""
        if self._part is not None:
            raise PeerProtocolError("a packet was cut short by a switch to TLS", side=self.side)
        rest, self._buf = self._buf, b""
        return rest

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + data if self._buf else data
        out: list[tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        while end - pos >= 4:
            n = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            part = self._part
            held = sum(len(p) for p in part) if part is not None else 0
            if held + n > self.max_packet:
                raise PeerProtocolError(
                    f"packet over the appliance's limit of {self.max_packet} bytes",
                    side=self.side,
                    code=ER_NET_PACKET_TOO_LARGE,
                )
            if end - pos - 4 < n:
                break
            seq = buf[pos + 3]
            payload = buf[pos + 4 : pos + 4 + n]
            pos += 4 + n
            if n == MAX_CHUNK:
                if part is None:
                    self._part = [payload]
                    self._part_seq = seq
                else:
                    part.append(payload)
                continue
            if part is not None:
                part.append(payload)
                out.append((self._part_seq, b"".join(part)))
                self._part = None
            else:
                out.append((seq, payload))
        self._buf = buf[pos:] if pos < end else b""
        return out


class Reader:
    """Reads fields of one payload; any read past the end raises :class:`PeerProtocolError`
    for ``side`` (a truncated or malformed packet)."""

    __slots__ = ("data", "pos", "side", "what")

    def __init__(self, data: bytes, side: Side, what: str, pos: int = 0) -> None:
        self.data = data
        self.side: Side = side
        self.what = what
        self.pos = pos

    def fail(self, why: str) -> PeerProtocolError:
        return PeerProtocolError(f"malformed {self.what}: {why}", side=self.side)

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"needs {n} more bytes, has {len(self.data) - self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise self.fail("ends early")
        v = self.data[self.pos]
        self.pos += 1
        return v

    def u16(self) -> int:
        return int(_U16.unpack(self._take(2))[0])

    def u24(self) -> int:
        return int.from_bytes(self._take(3), "little")

    def u32(self) -> int:
        return int(_U32.unpack(self._take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self._take(8))[0])

    def fixed(self, n: int) -> bytes:
        return self._take(n)

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def nul(self) -> bytes:
        """A NUL-terminated string (the NUL is consumed)."""
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise self.fail("string without its NUL terminator")
        out = self.data[self.pos : end]
        self.pos = end + 1
        return out

    def nul_or_rest(self) -> bytes:
        """A string ended by NUL or by the end of the packet (both happen in the wild)."""
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            return self.rest()
        out = self.data[self.pos : end]
        self.pos = end + 1
        return out

    def lenenc_int(self) -> int:
        first = self.u8()
        if first < 0xFB:
            return first
        if first == 0xFC:
            return self.u16()
        if first == 0xFD:
            return self.u24()
        if first == 0xFE:
            return self.u64()
        raise self.fail(f"0x{first:02x} is not a length-encoded integer")

    def lenenc_bytes(self) -> bytes:
        return self._take(self.lenenc_int())

    def lenenc_or_null(self) -> bytes | None:
        """A text-row value: length-encoded bytes, or 0xFB for NULL."""
        if self.pos < len(self.data) and self.data[self.pos] == 0xFB:
            self.pos += 1
            return None
        return self.lenenc_bytes()


def lenenc_int(n: int) -> bytes:
    if n < 0xFB:
        return bytes((n,))
    if n < 1 << 16:
        return b"\xfc" + _U16.pack(n)
    if n < 1 << 24:
        return b"\xfd" + n.to_bytes(3, "little")
    return b"\xfe" + _U64.pack(n)


def lenenc_bytes(b: bytes) -> bytes:
    return lenenc_int(len(b)) + b


def u16(n: int) -> bytes:
    return _U16.pack(n)


def u32(n: int) -> bytes:
    return _U32.pack(n)


def u64(n: int) -> bytes:
    return _U64.pack(n)
