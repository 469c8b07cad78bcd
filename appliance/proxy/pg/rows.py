"""The ledger writer's side of a PostgreSQL result blob: DataRow and CopyData frames in,
masked JSON lines out.

Where this sits: the session's recorder (:mod:`appliance.proxy.pg.recording`) copies the raw
frames of a statement's results into a :class:`~appliance.ledger.result_sink.RowsSink`
and names :class:`RowsTransform` as the blob's transform; the ledger writer (its own
process by default) makes one per blob and runs it on the sink's parts. So this module is
what that process imports for PostgreSQL, and it imports only what the masking of rows
needs: not the relay, the policy or the SQL parser the session core needs (issue 19: they
were 14 MB of the writer's memory).

Result blobs follow :mod:`appliance.ledger.results` (the one home of that format); the
header of a PostgreSQL result set also carries ``types`` (OIDs), ``formats`` and, when the
target's column rules name tables, ``tables``; a COPY's header says what its statement
says (``csv``, ``binary``, ``table``, ``columns``, ``header``). Everything in a blob is
masked, by the same decisions as the job's rows (:mod:`appliance.masking.postgres`).
"""

from __future__ import annotations

import struct

import orjson

from appliance.ledger import transform_helper
from appliance.ledger.result_sink import COPY, COPY_END, HEADER, ROWS
from appliance.masking import MaskCounts, TargetMasker
from appliance.masking.postgres import HeaderPlan, LedgerRows, header_plan
from appliance.protocols.postgres.messages import datarow_values
from appliance.proxy.records import MaskingTransform, pieces

__all__ = ["RowsTransform"]

_LEN = struct.Struct("!I")


class RowsTransform(MaskingTransform):
    """Runs in the ledger writer (its process or thread): the parts of a :class:`~appliance.
    ledger.result_sink.RowsSink` in (row runs are whole DataRow frames, COPY runs whole
    CopyData frames), masked JSON lines out (:mod:`appliance.ledger.results`), masked by
    :class:`~appliance.masking.postgres.LedgerRows` exactly as the job's rows are."""

    def __init__(self, masker: TargetMasker | None) -> None:
        super().__init__(masker)
        self.rows = LedgerRows(masker, self.counts)

    def part(self, kind: bytes, body: bytes) -> bytes:
        rows = self.rows
        if kind == HEADER:
            self.header = body
            # The same result shapes come back statement after statement: what a header
            # gives (its plan, its masked line, what masking it counted) is kept per
            # target and header bytes.
            planned, line, found = _cached_header(self.masker, body)
            rows.start(planned)
            if found:
                self.counts.update(found)
            return line
        if kind == ROWS:
            # All the run's rows at once: masking pre-filters them together.
            frames = _frames(body)
            if len(body) >= transform_helper.SHARE_FROM and self._splits_rows(frames):
                return self.shared(ROWS, pieces(frames))
            return self.masked(ROWS, frames)
        if kind == COPY and rows.copy is not None and rows.copy.format == "binary":
            return orjson.dumps(rows.copy_binary(sum(len(p) for p in _frames(body)))) + b"\n"
        if kind == COPY:
            # All the chunk's rows at once: masking pre-filters them together.
            lines = rows.take_lines(b"".join(_frames(body)))
            if len(lines) >= transform_helper.SHARE_FROM and self._splits_copy():
                return self.shared(COPY, _line_pieces(lines))
            return self.masked(COPY, [lines])
        if kind == COPY_END:
            return b"".join([orjson.dumps(line) + b"\n" for line in rows.copy_end()])
        return b""

    # A long run in pieces, some of which the ledger writer's helper process may mask on a
    # core that would sit idle (MaskingTransform.shared).

    def _splits_rows(self, frames: list[bytes]) -> bool:
        """Whether a run of DataRows may be masked in pieces: a masker and a header whose
        plan every row fits (else rows are planned one by one, and a plan made for one row
        is kept for the next: state the pieces would not share)."""
        plan = self.rows.plan
        if self.masker is None or self.header is None or plan is None or len(frames) < 2:
            return False
        width = _WIDTH.pack(len(plan.columns))
        return all(p[:2] == width for p in frames)

    def _splits_copy(self) -> bool:
        """Whether COPY lines may be masked in pieces: text format (a CSV value may span
        lines), with a masker."""
        copy = self.rows.copy
        return (
            self.masker is not None
            and self.header is not None
            and copy is not None
            and copy.format == "text"
        )

    def resume(self, header: bytes) -> None:
        self.rows.start(_cached_header(self.masker, header)[0])

    def masked(self, kind: bytes, frames: list[bytes]) -> bytes:
        """DataRow payloads, or one body of lines of a text COPY (which has no header line)."""
        rows = self.rows
        if kind == ROWS:
            cells = rows.rows([datarow_values(p) for p in frames])
            return b"".join([orjson.dumps(c) + b"\n" for c in cells])
        return b"".join([orjson.dumps(t) + b"\n" for t in rows.copy_lines(frames[0])])


def _line_pieces(lines: bytes) -> list[list[bytes]]:
    """Lines (``lines`` ends with a newline) in pieces of about :data:`~appliance.ledger.
    transform_helper.PIECE` bytes, cut at line ends."""
    pieces: list[list[bytes]] = []
    start, n = 0, len(lines)
    while start < n:
        end = lines.find(b"\n", min(start + transform_helper.PIECE, n) - 1) + 1
        pieces.append([lines[start:end]])
        start = end
    return pieces


_WIDTH = struct.Struct("!H")
_HEADER_CACHE = 1024
_HEADERS: dict[tuple[TargetMasker | None, bytes], tuple[HeaderPlan, bytes, MaskCounts]] = {}


def _cached_header(
    masker: TargetMasker | None, body: bytes
) -> tuple[HeaderPlan, bytes, MaskCounts]:
    """:func:`_header`, kept per target and header bytes."""
    key = (masker, body)
    hit = _HEADERS.get(key)
    if hit is None:
        hit = _header(masker, body)
        if len(_HEADERS) >= _HEADER_CACHE:
            _HEADERS.clear()
        _HEADERS[key] = hit
    return hit


def _header(masker: TargetMasker | None, body: bytes) -> tuple[HeaderPlan, bytes, MaskCounts]:
    """A result header part: its plan (rows are planned by the real column names), its line
    in the blob, and what masking that line counted. The counts may not be changed by the
    caller (they are cached)."""
    header = orjson.loads(body)
    planned = header_plan(masker, header)
    found = MaskCounts()
    if masker is None or not header.get("columns"):
        return planned, body + b"\n", found
    # Written masked: a column may be named after a value ("AS "4111...").
    masked = dict(header)
    masked["columns"] = [
        None if c is None else masker.mask_text(c, found) for c in header["columns"]
    ]
    return planned, orjson.dumps(masked, option=orjson.OPT_SORT_KEYS) + b"\n", found


def _frames(body: bytes) -> list[bytes]:
    """Payloads of back-to-back frames (type byte + length + payload)."""
    out = []
    pos, n = 0, len(body)
    while pos + 5 <= n:
        (length,) = _LEN.unpack_from(body, pos + 1)
        out.append(body[pos + 5 : pos + 1 + length])
        pos += 1 + length
    return out
