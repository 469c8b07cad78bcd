"""The pcap renderer of recorded MySQL sessions (registered with
:func:`appliance.ledger.pcap.register_renderer` when imported; the registry's ``pcap``).

What it writes is valid MySQL protocol that Wireshark's MySQL dissector reads: the server's
handshake (v10), the client's login (user and database as recorded, no password), an OK;
then for each statement a COM_QUERY (COM_STMT_EXECUTE's text as a query), and for each
response an ERR, or a text result set (column count, column definitions, EOF, rows from
the masked result blob, EOF), or an OK; COM_QUIT at the end.
"""

from __future__ import annotations

from typing import Any

from appliance.ledger.entries import ts_to_us
from appliance.ledger.pcap import C2S, S2C, Segment, register_renderer
from appliance.ledger.results import cell_bytes, read_result, result_bytes
from appliance.ledger.store import BlobReader
from appliance.protocols.mysql._wire import packet
from appliance.protocols.mysql.constants import Cap, Status, Type
from appliance.protocols.mysql.messages import (
    ColumnDef,
    Eof,
    Err,
    Handshake,
    HandshakeResponse,
    Ok,
    encode_text_row,
)

_CAPS = int(
    Cap.PROTOCOL_41
    | Cap.SECURE_CONNECTION
    | Cap.PLUGIN_AUTH
    | Cap.LONG_PASSWORD
    | Cap.CONNECT_WITH_DB
    | Cap.TRANSACTIONS
)


def _ts(obj: dict[str, Any]) -> float:
    return ts_to_us(obj["ts"]) / 1e6


def _result(d: dict[str, Any], blobs: BlobReader) -> tuple[list[str], list[list[Any]]]:
    """The columns and rows of a response's result blob (:mod:`appliance.ledger.results`)."""
    columns = [str(c) for c in d.get("columns") or []]
    content = result_bytes(d, blobs.get)
    rows: list[list[Any]] = []
    for result in read_result(content) if content else []:
        columns = [str(c) for c in result.columns] or columns
        rows.extend(result.rows)
    return columns, rows


def render_mysql(entries: list[dict[str, Any]], blobs: BlobReader) -> list[Segment]:
    out: list[Segment] = []
    for e in entries:
        d, ts, typ = e["data"], _ts(e), e["type"]
        if typ == "session.start":
            hs = Handshake(
                str(d.get("server_version") or "appliance"),
                int(d.get("connection_id") or 1),
                b"\x01" * 20,
                _CAPS,
                45,
                Status.AUTOCOMMIT,
                "mysql_native_password",
            )
            out.append((ts, S2C, packet(0, hs.encode())))
            login = HandshakeResponse(
                _CAPS,
                1 << 24,
                45,
                str(d.get("user") or ""),
                b"",
                str(d.get("database") or ""),
                "mysql_native_password",
            )
            out.append((ts, C2S, packet(1, login.encode())))
            out.append((ts, S2C, packet(2, Ok(status=Status.AUTOCOMMIT).encode(_CAPS))))
        elif typ == "statement":
            out.append((ts, C2S, packet(0, b"\x03" + str(d.get("text", "")).encode())))
        elif typ == "response":
            err = d.get("error")
            if isinstance(err, dict):
                msg = packet(
                    1,
                    Err(
                        int(err.get("code") or 1105),
                        str(err.get("sqlstate") or "HY000"),
                        str(err.get("message", "")),
                    ).encode(),
                )
            else:
                columns, rows = _result(d, blobs)
                if not columns:
                    msg = packet(
                        1, Ok(int(d.get("affected_rows") or 0), 0, Status.AUTOCOMMIT).encode(_CAPS)
                    )
                else:
                    seq = 1
                    parts = [
                        packet(
                            seq,
                            bytes((len(columns),))
                            if len(columns) < 251
                            else b"\xfc" + len(columns).to_bytes(2, "little"),
                        )
                    ]
                    for name in columns:
                        seq += 1
                        parts.append(
                            packet(
                                seq,
                                ColumnDef(
                                    "", "", "", name, name, 45, 1024, Type.VAR_STRING, 0, 0
                                ).encode(),
                            )
                        )
                    seq += 1
                    parts.append(packet(seq, Eof(0, Status.AUTOCOMMIT).encode()))
                    for row in rows:
                        seq += 1
                        parts.append(packet(seq, encode_text_row([cell_bytes(v) for v in row])))
                    seq += 1
                    parts.append(packet(seq, Eof(0, Status.AUTOCOMMIT).encode()))
                    msg = b"".join(parts)
            out.append((ts, S2C, msg))
        elif typ == "session.end":
            out.append((ts, C2S, packet(0, b"\x01")))
    return out


register_renderer("mysql", render_mysql)
