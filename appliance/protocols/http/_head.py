"""Checks on a raw HTTP/1.1 request head before it is parsed: what the appliance refuses
as ambiguous, so that the server can never read two requests where policy saw one.

h11 (the parser behind :mod:`.h1`) is lenient where RFC 9112 lets a recipient be: it
merges equal duplicate ``Content-Length`` values, takes ``Transfer-Encoding`` over
``Content-Length``, unfolds obsolete line folding and accepts bare LF line ends. A proxy
in front of a server that reads those otherwise is how requests are smuggled
(RFC 9112 §11.2), so a head with any of them is refused with 400 and the connection
closed:

- a line that does not end in CRLF (a bare LF or CR);
- obsolete line folding (a line starting with SP or HTAB, RFC 9112 §5.2);
- whitespace between a field name and its colon (RFC 9112 §5.1);
- more than one ``Content-Length`` (even equal), more than one ``Transfer-Encoding``,
  both together, a ``Transfer-Encoding`` other than exactly ``chunked``, or a
  ``Content-Length`` that is not plain digits;
- a body on GET, HEAD or TRACE (a body that a server may ignore is a second request
  hidden from policy);
- more than ``max_fields`` fields.

The head's size is bounded by the caller (431 past ``max_head``).
"""

from __future__ import annotations

import re

from appliance.protocols.http._errors import PeerError

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "http2-settings",
    }
)
"""Connection-specific fields (RFC 9110 §7.6.1, RFC 9113 §8.2.2): never forwarded as they came."""

_NO_BODY_METHODS = frozenset({b"GET", b"HEAD", b"TRACE"})
_DIGITS = re.compile(rb"[0-9]{1,18}")


def check_request_head(head: bytes, *, max_fields: int = 100) -> None:
    """Raise :class:`PeerError` (400) if the request head ``head`` (through its blank
    line) is ambiguous; see the module docstring."""
    if b"\r" in head.replace(b"\r\n", b"") or b"\n" in head.replace(b"\r\n", b""):
        raise PeerError("a line of the request head does not end in CRLF")
    lines = head.split(b"\r\n")
    method = lines[0].split(b" ", 1)[0]
    fields = lines[1:-2]  # the head ends with CRLF CRLF: two empty strings at the end
    if len(fields) > max_fields:
        raise PeerError(f"more than {max_fields} header fields", status=431)
    content_length: list[bytes] = []
    transfer_encoding: list[bytes] = []
    for line in fields:
        if line[:1] in (b" ", b"\t"):
            raise PeerError("obsolete line folding in the request head")
        name, colon, value = line.partition(b":")
        if not colon:
            raise PeerError("a header line without a colon")
        if name != name.rstrip(b" \t"):
            raise PeerError("whitespace between a header name and its colon")
        lower = name.lower()
        if lower == b"content-length":
            content_length.append(value.strip(b" \t"))
        elif lower == b"transfer-encoding":
            transfer_encoding.append(value.strip(b" \t"))
    if len(content_length) > 1:
        raise PeerError("more than one Content-Length")
    if len(transfer_encoding) > 1:
        raise PeerError("more than one Transfer-Encoding")
    if content_length and transfer_encoding:
        raise PeerError("both Content-Length and Transfer-Encoding")
    if transfer_encoding and transfer_encoding[0].lower() != b"chunked":
        raise PeerError("a Transfer-Encoding other than chunked", status=501)
    if content_length and not _DIGITS.fullmatch(content_length[0]):
        raise PeerError("a Content-Length that is not a number")
    has_body = bool(transfer_encoding) or (bool(content_length) and int(content_length[0]) > 0)
    if has_body and method in _NO_BODY_METHODS:
        raise PeerError(f"a body on {method.decode('ascii', 'replace')}")


__all__ = ["HOP_BY_HOP", "check_request_head"]
