"""The query index: a SQLite file derived from ``entries.log``, never a source of truth.

``index.sqlite`` maps each entry (by seq) to the fields queries filter on and to the byte
range of its record, so results are always read back from the log itself. A session's
identity is stored once (from its first entry that has one); an entry whose identity is null
or the same is matched by ``--identity`` through its session's. It is brought up to
date incrementally before each query (new entries appended since) and rebuilt from scratch if
the log no longer starts with what was indexed (checked through the leaf hash of the last
indexed entry), or on ``appliance ledger reindex``. If the ledger directory is read-only (an
auditor's copy), the index is built in memory.
"""

from __future__ import annotations

import hashlib
import mmap
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from appliance.ledger._framing import ENTRY_MAGIC, HEADER, FrameScanner, MappedFile
from appliance.ledger.entries import Entry, MalformedEntry, format_ts, parse_entry
from appliance.ledger.errors import LedgerError
from appliance.ledger.store import ENTRIES, INDEX, require_ledger

SCHEMA_VERSION = "2"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    type TEXT NOT NULL,
    session TEXT,
    account TEXT,
    target TEXT,
    decision TEXT,
    identity TEXT,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (session TEXT PRIMARY KEY, identity TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS entries_session ON entries (session, seq);
CREATE INDEX IF NOT EXISTS entries_ts ON entries (ts);
CREATE INDEX IF NOT EXISTS entries_type ON entries (type);
"""


@dataclass
class Query:
    """Filters; all given ones must match. Globs (``*``, ``?``, ``[..]``) are allowed in
    ``identity`` values, ``target`` and ``types``."""

    session: str | None = None
    identity: Sequence[tuple[str, str]] = ()
    target: str | None = None
    types: Sequence[str] = ()
    decision: str | None = None
    since: str | None = None  # entry timestamp, inclusive
    until: str | None = None  # entry timestamp, exclusive
    limit: int | None = None


class Index:
    """An open, up-to-date index of one ledger."""

    def __init__(self, directory: Path, db: sqlite3.Connection) -> None:
        self.directory = directory
        self.db = db

    @classmethod
    def open(cls, directory: Path, *, rebuild: bool = False) -> Index:
        """Open (creating or rebuilding as needed) and bring up to date."""
        require_ledger(directory)
        path = directory / INDEX
        try:
            if rebuild:
                path.unlink(missing_ok=True)
            db = sqlite3.connect(path)
            db.executescript(_SCHEMA)
        except sqlite3.Error:
            db = sqlite3.connect(":memory:")  # read-only copy: index in memory
            db.executescript(_SCHEMA)
        index = cls(directory, db)
        index.update()
        return index

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def update(self) -> int:
        """Index entries appended since the last update; return how many were added."""
        size = int(self._meta("size") or 0)
        start_offset = int(self._meta("offset") or 0)
        with MappedFile(self.directory / ENTRIES) as mf:
            if self._meta("version") != SCHEMA_VERSION or not self._still_valid(mf.data, size):
                self.db.executescript(
                    "DROP TABLE IF EXISTS entries; DROP TABLE IF EXISTS sessions; "
                    "DROP TABLE IF EXISTS meta;" + _SCHEMA
                )
                size, start_offset = 0, 0
            known: dict[str, str] = dict(self.db.execute("SELECT session, identity FROM sessions"))
            new_sessions: list[tuple[str, str]] = []
            rows = []
            last_leaf = self._meta("last_leaf")
            offset = start_offset
            scanner = FrameScanner(mf.data, ENTRY_MAGIC, start_offset)
            for frame in scanner:
                if frame.seq != size:
                    raise LedgerError(
                        f"{ENTRIES}: record {size} says seq {frame.seq}; run `ledger verify`"
                    )
                try:
                    obj = parse_entry(frame.payload)
                except MalformedEntry as exc:
                    raise LedgerError(f"entry {size} is malformed: {exc.reason}") from None
                data = obj["data"]
                decision = data.get("decision")
                ident = orjson.dumps(obj["identity"]).decode() if obj["identity"] else None
                sess = obj["session"]
                if sess is not None and ident is not None:
                    if sess not in known:
                        known[sess] = ident
                        new_sessions.append((sess, ident))
                    if known[sess] == ident:
                        ident = None  # the session's identity: stored once
                rows.append(
                    (
                        size,
                        obj["ts"],
                        obj["type"],
                        obj["session"],
                        obj["account"],
                        obj["target"],
                        decision if isinstance(decision, str) else None,
                        ident,
                        frame.offset,
                        frame.end - frame.offset,
                    )
                )
                size += 1
                offset = frame.end
                last_leaf = hashlib.sha256(b"\x00" + frame.payload).hexdigest()
            if scanner.damage is not None and not scanner.damage.at_eof:
                raise LedgerError(
                    f"{ENTRIES}: {scanner.damage.reason} at byte {scanner.damage.offset}; "
                    "run `appliance ledger verify`"
                )
            with self.db:
                self.db.executemany(
                    "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
                )
                self.db.executemany("INSERT INTO sessions VALUES (?, ?)", new_sessions)
                for k, v in (
                    ("version", SCHEMA_VERSION),
                    ("size", str(size)),
                    ("offset", str(offset)),
                    ("last_leaf", last_leaf or ""),
                ):
                    self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
        return len(rows)

    def _still_valid(self, data: bytes | mmap.mmap, size: int) -> bool:
        """True if the log's record ``size - 1`` is still the one that was indexed last."""
        if size == 0:
            return True
        row = self.db.execute(
            "SELECT offset, length FROM entries WHERE seq = ?", (size - 1,)
        ).fetchone()
        if row is None:
            return False
        off, length = row
        if len(data) < off + length:
            return False
        payload = data[off + HEADER.size : off + length - 4]
        return hashlib.sha256(b"\x00" + payload).hexdigest() == self._meta("last_leaf")

    def sessions_starting(self, prefix: str, limit: int = 10) -> list[str]:
        """Session ids that begin with ``prefix`` (at most ``limit``, sorted)."""
        rows = self.db.execute(
            "SELECT DISTINCT session FROM entries WHERE session >= ? AND session < ? "
            "ORDER BY session LIMIT ?",
            (prefix, prefix + "\U0010ffff", limit),
        )
        return [str(r[0]) for r in rows]

    def query(self, q: Query) -> Iterator[Entry]:
        """Entries matching ``q`` in seq order, read back from the log."""
        where: list[str] = []
        params: list[object] = []
        if q.session is not None:
            where.append("e.session = ?")
            params.append(q.session)
        for key, value in q.identity:
            path = "$" + "".join(f'."{part}"' for part in key.split("."))
            where.append("CAST(json_extract(COALESCE(e.identity, s.identity), ?) AS TEXT) GLOB ?")
            params += [path, value]
        if q.target is not None:
            where.append("target GLOB ?")
            params.append(q.target)
        if q.types:
            where.append("(" + " OR ".join("type GLOB ?" for _ in q.types) + ")")
            params += list(q.types)
        if q.decision is not None:
            where.append("decision = ?")
            params.append(q.decision)
        if q.since is not None:
            where.append("ts >= ?")
            params.append(q.since)
        if q.until is not None:
            where.append("ts < ?")
            params.append(q.until)
        sql = "SELECT seq, offset, length FROM entries e"
        if q.identity:
            sql += " LEFT JOIN sessions s ON e.session = s.session"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq"
        if q.limit is not None:
            sql += f" LIMIT {int(q.limit)}"
        rows = self.db.execute(sql, params).fetchall()
        with MappedFile(self.directory / ENTRIES) as mf:
            for seq, off, length in rows:
                raw = bytes(mf.data[off + HEADER.size : off + length - 4])
                yield Entry(seq, raw, parse_entry(raw))


def parse_time(text: str) -> str:
    """A user's time (ISO 8601 date or date-time, UTC unless an offset is given) as an entry
    timestamp string, for ``--since``/``--until``. Raises LedgerError if unreadable."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise LedgerError(f"not an ISO 8601 date or time: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return format_ts(dt.timestamp())


def parse_identity_filter(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (KEY may be a dotted path such as ``ci.repository``)."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise LedgerError(f"identity filter must be KEY=VALUE, got {text!r}")
    if '"' in key:
        raise LedgerError("identity keys cannot contain double quotes")
    return key, value
