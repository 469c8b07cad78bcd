"""Rebuild a recorded session as a pcap that Wireshark can open and reassemble.

The ledger keeps decoded, masked messages, not packets. A *renderer* per protocol turns a
session's entries back into wire messages: ``(time, "c2s" | "s2c", bytes)``; this module
wraps them in a synthetic but well-formed TCP connection between the recorded client and
server addresses (three-way handshake, sequence and acknowledgement numbers, segments of at
most 1460 bytes with PSH on the last, an ACK from the peer, FIN both ways) over Ethernet and
IPv4 or IPv6, written with dpkt. What the pcap shows is what the ledger recorded, masked values
included; it is a view of the evidence, not the evidence (the entries are).

Protocols register renderers with :func:`register_renderer` from the module their registry
entry names (:mod:`appliance.proxy.registry`, ``pcap``), imported on first use: PostgreSQL's
is :mod:`appliance.proxy.pg.pcap`.
"""

from __future__ import annotations

import importlib
import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import dpkt

from appliance.ledger.errors import LedgerError
from appliance.ledger.store import BlobReader

Segment = tuple[float, str, bytes]
Renderer = Callable[[list[dict[str, Any]], BlobReader], list[Segment]]
MSS = 1460
C2S, S2C = "c2s", "s2c"
_RENDERERS: dict[str, Renderer] = {}
_CLIENT_MAC = b"\x02\x00\x00\x00\x00\x01"
_SERVER_MAC = b"\x02\x00\x00\x00\x00\x02"
_ISN = {C2S: 0x1000_0000, S2C: 0x2000_0000}  # fixed, so a pcap is reproducible


def register_renderer(protocol: str, fn: Renderer) -> None:
    """Make ``fn`` the renderer of sessions whose session.start data says ``protocol``."""
    _RENDERERS[protocol] = fn


def renderer_for(protocol: str) -> Renderer:
    """The renderer of ``protocol``'s sessions; raises LedgerError if it has none."""
    if protocol not in _RENDERERS:
        from appliance.proxy import registry  # names modules only; imports nothing heavy

        entry = registry.PROTOCOLS.get(protocol)
        if entry is not None and entry.pcap is not None:
            importlib.import_module(entry.pcap)
    try:
        return _RENDERERS[protocol]
    except KeyError:
        raise LedgerError(
            f"no pcap renderer for protocol {protocol!r} (known: {', '.join(sorted(_RENDERERS))})"
        ) from None


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"10.0.0.1:5432"`` or ``"[::1]:5432"`` -> (ip, port); raise LedgerError."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
        port_n = int(port)
    except ValueError:
        raise LedgerError(f"not an ip:port endpoint: {text!r}") from None
    if not sep or not 0 < port_n < 65536:
        raise LedgerError(f"not an ip:port endpoint: {text!r}")
    return host, port_n


class _Conn:
    def __init__(self, client: tuple[str, int], server: tuple[str, int]) -> None:
        c, s = ipaddress.ip_address(client[0]), ipaddress.ip_address(server[0])
        if c.version != s.version:
            raise LedgerError("client and server addresses are of different IP versions")
        self.v6 = c.version == 6
        fam = socket.AF_INET6 if self.v6 else socket.AF_INET
        self.addr = {
            C2S: (socket.inet_pton(fam, client[0]), client[1]),
            S2C: (socket.inet_pton(fam, server[0]), server[1]),
        }
        self.next_seq = dict(_ISN)

    def packet(self, direction: str, flags: int, payload: bytes = b"") -> bytes:
        other = S2C if direction == C2S else C2S
        (src, sport), (dst, dport) = self.addr[direction], self.addr[other]
        ack = self.next_seq[other] if flags & dpkt.tcp.TH_ACK else 0
        tcp = dpkt.tcp.TCP(
            sport=sport,
            dport=dport,
            seq=self.next_seq[direction],
            ack=ack,
            flags=flags,
            win=65535,
            data=payload,
        )
        tcp.off = 5
        self.next_seq[direction] = (
            self.next_seq[direction]
            + len(payload)
            + (1 if flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN) else 0)
        ) & 0xFFFFFFFF
        ip: dpkt.Packet
        if self.v6:
            ip = dpkt.ip6.IP6(src=src, dst=dst, nxt=dpkt.ip.IP_PROTO_TCP, hlim=64, data=tcp)
            ip.plen = len(tcp)
            eth_type = dpkt.ethernet.ETH_TYPE_IP6
        else:
            ip = dpkt.ip.IP(src=src, dst=dst, p=dpkt.ip.IP_PROTO_TCP, ttl=64, data=tcp)
            eth_type = dpkt.ethernet.ETH_TYPE_IP
        smac, dmac = (_CLIENT_MAC, _SERVER_MAC) if direction == C2S else (_SERVER_MAC, _CLIENT_MAC)
        return bytes(dpkt.ethernet.Ethernet(src=smac, dst=dmac, type=eth_type, data=ip))


def write_pcap(
    out: BinaryIO,
    client: tuple[str, int],
    server: tuple[str, int],
    segments: Sequence[Segment],
    *,
    start: float | None = None,
    end: float | None = None,
) -> int:
    """Write one TCP connection carrying ``segments`` in order; return the packet count.

    ``start``/``end`` time the handshake and the FINs (default: around the first and last
    segment). Timestamps never go backwards in the file.
    """
    conn = _Conn(client, server)
    w = dpkt.pcap.Writer(out, linktype=dpkt.pcap.DLT_EN10MB)
    t0 = start if start is not None else (segments[0][0] if segments else 0.0)
    last = t0
    count = 0
    A, S, F, P = dpkt.tcp.TH_ACK, dpkt.tcp.TH_SYN, dpkt.tcp.TH_FIN, dpkt.tcp.TH_PUSH

    def emit(ts: float, direction: str, flags: int, payload: bytes = b"") -> None:
        nonlocal last, count
        last = max(last, ts)
        w.writepkt(conn.packet(direction, flags, payload), ts=last)
        count += 1

    emit(t0, C2S, S)
    emit(t0, S2C, S | A)
    emit(t0, C2S, A)
    for ts, direction, payload in segments:
        if direction not in (C2S, S2C):
            raise LedgerError(f"segment direction must be {C2S!r} or {S2C!r}, got {direction!r}")
        for i in range(0, len(payload), MSS):
            chunk = payload[i : i + MSS]
            emit(ts, direction, A | (P if i + MSS >= len(payload) else 0), chunk)
        if payload:
            emit(ts, S2C if direction == C2S else C2S, A)
    t_end = end if end is not None else last
    emit(t_end, C2S, F | A)
    emit(t_end, S2C, F | A)
    emit(t_end, C2S, A)
    return count
