"""The query index: a SQLite file derived from ``entries.log``, never believed.

``index.sqlite`` maps each entry (by seq) to the fields queries filter on, to the byte range
of its record and to its leaf hash, so that results are read back from the log itself. A
session's identity is stored once (from its first entry that has one); an entry whose identity
is null or the same is matched by ``--identity`` through its session's. It is brought up to
date incrementally before each query (entries appended since) and rebuilt from scratch if the
log no longer starts with what was indexed, or on ``appliance ledger reindex``. If the ledger
directory is read-only (an auditor's copy), the index is built in memory.

Anyone who can write the ledger directory can edit the index, and the index is not signed, so
it is checked against the log (issue 12: two deleted rows hid a DROP TABLE and its denial):

- on open: its rows must cover seq 0..n-1 once each, their byte ranges must follow each other
  from the start of the log to where indexing stopped;
- every entry a read returns: the record at the row's offset has the row's seq, length, leaf
  hash and checksum, and the entry's own fields are the ones the row was matched on;
- reads of a session (:meth:`Index.session`, used by show, replay and export, and queries
  with ``--session``) also search the log itself for records of that session (the canonical key ``"session":"<id>"`` can only be
  an object key, never inside a string) and fail if the index left one out;
- ``appliance ledger verify`` compares every row with its entry (:func:`check_rows`).

An index that does not match is rebuilt from the log (:attr:`Index.notes` says why); a query
that had already returned entries when it found a mismatch is refused (IndexMismatch) after
the rebuild. What only ``verify`` finds: a row whose filter fields were edited so that a
filter other than the session skips it.
"""

from __future__ import annotations

import bisect
import hashlib
import mmap
import sqlite3
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from appliance.ledger._framing import ENTRY_MAGIC, HEADER, TRAILER, FrameScanner, MappedFile
from appliance.ledger.entries import Entry, MalformedEntry, format_ts, parse_entry
from appliance.ledger.errors import LedgerError, TamperError
from appliance.ledger.store import ENTRIES, INDEX, require_ledger

SCHEMA_VERSION = "3"
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
    length INTEGER NOT NULL,
    leaf TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (session TEXT PRIMARY KEY, identity TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS entries_session ON entries (session, seq);
CREATE INDEX IF NOT EXISTS entries_ts ON entries (ts);
CREATE INDEX IF NOT EXISTS entries_type ON entries (type);
"""
_DROP = "DROP TABLE IF EXISTS entries; DROP TABLE IF EXISTS sessions; DROP TABLE IF EXISTS meta;"
_ROW_COLUMNS = "seq, ts, type, session, account, target, decision, identity, offset, length, leaf"


class IndexMismatch(LedgerError):
    """``index.sqlite`` says something the log does not (exit 2: the index was rebuilt, run
    the command again). Raised only when a read had already returned entries."""


class Row(NamedTuple):
    """One entry as the index holds it. ``identity`` is the entry's own identity as JSON
    (None if null); the table stores NULL instead when it equals its session's."""

    seq: int
    ts: str
    type: str
    session: str | None
    account: str | None
    target: str | None
    decision: str | None
    identity: str | None
    offset: int
    length: int
    leaf: str


def leaf_hex(payload: bytes | memoryview) -> str:
    """The RFC 6962 leaf hash of an entry's stored bytes, hex."""
    return hashlib.sha256(b"\x00" + bytes(payload)).hexdigest()


def derive_row(seq: int, offset: int, end: int, payload: bytes, obj: dict[str, Any]) -> Row:
    """The index row of an entry: the one place that says what the index holds."""
    decision = obj["data"].get("decision")
    return Row(
        seq,
        obj["ts"],
        obj["type"],
        obj["session"],
        obj["account"],
        obj["target"],
        decision if isinstance(decision, str) else None,
        orjson.dumps(obj["identity"]).decode() if obj["identity"] else None,
        offset,
        end - offset,
        leaf_hex(payload),
    )


def row_difference(stored: Sequence[Any], row: Row, session_identity: str | None) -> str | None:
    """None if the stored row (the table's columns, in order) is the index row of the entry
    ``row`` was derived from; else what differs, in words."""
    for name, have, want in zip(Row._fields, stored, row, strict=True):
        if name == "identity" and have is None:
            # NULL: the entry has no identity of its own, or its session's
            if want is not None and want != session_identity:
                return "the index has no identity for it, or its session's, which differs"
            continue
        if have != want:
            return f"the index says {name} {have!r}, the entry {want!r}"
    return None


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
    """An open, up-to-date index of one ledger, checked as it is read (see module docstring)."""

    def __init__(self, directory: Path, db: sqlite3.Connection) -> None:
        self.directory = directory
        self.db = db
        # Why the index was rebuilt while open (a mismatch with the log), for the CLI to say.
        self.notes: list[str] = []

    @classmethod
    def open(cls, directory: Path, *, rebuild: bool = False) -> Index:
        """Open (creating or rebuilding as needed), bring up to date, check its structure.

        Raises TamperError if the log itself is damaged before its last record."""
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
        try:
            index.update()
            problem = index._structure_problem()
        except sqlite3.Error as exc:
            problem = f"it cannot be read ({exc})"
        if problem is not None:
            index.rebuild(problem)
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

    def rebuild(self, reason: str) -> None:
        """Throw the index away and build it again from the log; ``reason`` goes to notes."""
        self.notes.append(f"{INDEX} did not match {ENTRIES} ({reason}): rebuilt it from the log")
        self.db.executescript(_DROP + _SCHEMA)
        self.update()

    def update(self) -> int:
        """Index entries appended since the last update; return how many were added.

        Raises TamperError if the log is damaged anywhere but in its last record."""
        size = int(self._meta("size") or 0)
        start_offset = int(self._meta("offset") or 0)
        with MappedFile(self.directory / ENTRIES) as mf:
            stale = self._meta("version") != SCHEMA_VERSION
            if not stale and not self._still_valid(mf.data, size):
                stale = True
                self.notes.append(
                    f"{INDEX} did not match {ENTRIES} (its last row is not the log's record "
                    f"{size - 1}): rebuilt it from the log"
                )
            if stale:
                self.db.executescript(_DROP + _SCHEMA)
                size, start_offset = 0, 0
            known: dict[str, str] = dict(self.db.execute("SELECT session, identity FROM sessions"))
            new_sessions: list[tuple[str, str]] = []
            rows = []
            offset = start_offset
            scanner = FrameScanner(mf.data, ENTRY_MAGIC, start_offset)
            for frame in scanner:
                if frame.seq != size:
                    raise TamperError(
                        f"{ENTRIES}: record {size} says seq {frame.seq}; run `ledger verify`"
                    )
                try:
                    obj = parse_entry(frame.payload)
                except MalformedEntry as exc:
                    raise TamperError(f"entry {size} is malformed: {exc.reason}") from None
                row = derive_row(size, frame.offset, frame.end, frame.payload, obj)
                sess = row.session
                if sess is not None and row.identity is not None:
                    if sess not in known:
                        known[sess] = row.identity
                        new_sessions.append((sess, row.identity))
                    if known[sess] == row.identity:
                        row = row._replace(identity=None)  # the session's identity: stored once
                rows.append(row)
                size += 1
                offset = frame.end
            if scanner.damage is not None and not scanner.damage.at_eof:
                raise TamperError(
                    f"{ENTRIES}: {scanner.damage.reason} at byte {scanner.damage.offset}; "
                    "run `appliance ledger verify`"
                )
            with self.db:
                self.db.executemany(
                    f"INSERT INTO entries ({_ROW_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows
                )
                self.db.executemany("INSERT INTO sessions VALUES (?, ?)", new_sessions)
                for k, v in (
                    ("version", SCHEMA_VERSION),
                    ("size", str(size)),
                    ("offset", str(offset)),
                ):
                    self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
        return len(rows)

    def _still_valid(self, data: bytes | mmap.mmap, size: int) -> bool:
        """True if the log's record ``size - 1`` is still the one that was indexed last."""
        if size == 0:
            return True
        row = self.db.execute(
            f"SELECT {_ROW_COLUMNS} FROM entries WHERE seq = ?", (size - 1,)
        ).fetchone()
        return row is not None and _frame_problem(data, Row(*row)) is None

    def _structure_problem(self) -> str | None:
        """None if the rows cover seq 0..size-1 once each and their byte ranges follow each
        other from the start of the log to where indexing stopped; else what is wrong."""
        size = int(self._meta("size") or 0)
        end = int(self._meta("offset") or 0)
        count, lo, hi = self.db.execute(
            "SELECT COUNT(*), MIN(seq), MAX(seq) FROM entries"
        ).fetchone()
        if count != size or (size and (lo, hi) != (0, size - 1)):
            return f"it has {count} rows for seq {lo}..{hi}, the log {size} entries"
        if size == 0:
            return None if end == 0 else "it has no rows but says the log is not empty"
        (gaps,) = self.db.execute(
            "SELECT COUNT(*) FROM entries a JOIN entries b ON b.seq = a.seq + 1 "
            "WHERE b.offset != a.offset + a.length"
        ).fetchone()
        first = self.db.execute("SELECT offset FROM entries WHERE seq = 0").fetchone()[0]
        last = self.db.execute(
            "SELECT offset + length FROM entries WHERE seq = ?", (size - 1,)
        ).fetchone()[0]
        if gaps or first != 0 or last != end:
            return "its byte ranges do not follow each other through the log"
        return None

    def sessions_starting(self, prefix: str, limit: int = 10) -> list[str]:
        """Session ids that begin with ``prefix`` (at most ``limit``, sorted)."""
        rows = self.db.execute(
            "SELECT DISTINCT session FROM entries WHERE session >= ? AND session < ? "
            "ORDER BY session LIMIT ?",
            (prefix, prefix + "\U0010ffff", limit),
        )
        return [str(r[0]) for r in rows]

    def resolve_session(self, prefix: str) -> str:
        """The session named whole or by a beginning that names one session only.

        If the index knows none, the log itself is searched (an index with rows removed must
        not make a session vanish). Raises LedgerError if none or several match."""
        for attempt in range(2):
            matches = self.sessions_starting(prefix, limit=6) if prefix else []
            if prefix in matches or len(matches) == 1:
                return prefix if prefix in matches else matches[0]
            if matches:
                shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
                raise LedgerError(
                    f"{prefix!r} is the beginning of several sessions ({shown}); give more of it"
                )
            if attempt == 0 and prefix:
                hidden = self._hidden_session_entry(prefix)
                if hidden is not None:
                    self.rebuild(hidden)
                    continue
            break
        raise LedgerError(f"no entries for session {prefix!r} in {self.directory}")

    def _hidden_session_entry(self, prefix: str) -> str | None:
        """Why the index is wrong if the log holds an entry whose session begins with
        ``prefix`` (the caller found no such session in the index), else None."""
        needle = b'"session":' + orjson.dumps(prefix)[:-1]  # without the closing quote
        with MappedFile(self.directory / ENTRIES) as mf:
            for hit in _find_all(mf.data, needle, int(self._meta("offset") or 0)):
                row = self._row_at(hit)
                if row is None:
                    return f"no row covers byte {hit} of the log"
                entry = _read(mf.data, row)
                if isinstance(entry, str):
                    return entry
                session = entry.obj["session"]
                if isinstance(session, str) and session.startswith(prefix):
                    return f"entry {row.seq} of session {session!r} is missing from it"
        return None

    def _row_at(self, offset: int) -> Row | None:
        """The row whose byte range holds ``offset``."""
        found = self.db.execute(
            f"SELECT {_ROW_COLUMNS} FROM entries WHERE offset <= ? ORDER BY offset DESC LIMIT 1",
            (offset,),
        ).fetchone()
        if found is None or not found[8] <= offset < found[8] + found[9]:
            return None
        return Row(*found)

    def _session_identity(self, session: str | None) -> str | None:
        if session is None:
            return None
        found = self.db.execute(
            "SELECT identity FROM sessions WHERE session = ?", (session,)
        ).fetchone()
        return None if found is None else str(found[0])

    def _select(self, q: Query) -> list[Row]:
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
            where.append("e.target GLOB ?")
            params.append(q.target)
        if q.types:
            where.append("(" + " OR ".join("e.type GLOB ?" for _ in q.types) + ")")
            params += list(q.types)
        if q.decision is not None:
            where.append("e.decision = ?")
            params.append(q.decision)
        if q.since is not None:
            where.append("e.ts >= ?")
            params.append(q.since)
        if q.until is not None:
            where.append("e.ts < ?")
            params.append(q.until)
        columns = ", ".join(f"e.{c}" for c in _ROW_COLUMNS.split(", "))
        sql = f"SELECT {columns} FROM entries e"
        if q.identity:
            sql += " LEFT JOIN sessions s ON e.session = s.session"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY e.seq"
        if q.limit is not None:
            sql += f" LIMIT {int(q.limit)}"
        return [Row(*r) for r in self.db.execute(sql, params)]

    def query(self, q: Query) -> Iterator[Entry]:
        """Entries matching ``q`` in seq order, read back from the log and checked against
        it: their records (seq, offset, length, leaf hash) before the first is returned,
        their fields as each is returned. A mismatch found before anything was returned
        rebuilds the index and runs the query again; after, it rebuilds and raises
        IndexMismatch. With ``q.session``, the whole session is checked first as by
        :meth:`session`, so no entry of it is left out."""
        if q.session is not None:
            self.session(q.session)
        rows = self._select(q)
        with MappedFile(self.directory / ENTRIES) as mf:
            problem = next((p for r in rows if (p := _frame_problem(mf.data, r)) is not None), None)
            if problem is not None:
                self.rebuild(problem)
                rows = self._select(q)
            identities: dict[str | None, str | None] = {}
            for row in rows:
                if row.session not in identities:
                    identities[row.session] = self._session_identity(row.session)
                entry = _read(mf.data, row)
                if isinstance(entry, str):
                    problem = entry
                else:
                    problem = _entry_problem(entry, row, identities[row.session])
                if problem is not None:
                    self.rebuild(problem)
                    raise IndexMismatch(
                        f"{INDEX} did not match {ENTRIES} ({problem}); it was rebuilt from the "
                        "log: run the command again"
                    )
                assert not isinstance(entry, str)
                yield entry

    def session(self, session: str) -> list[Entry]:
        """Every entry of ``session``, complete: besides the checks of :meth:`query`, the log
        itself is searched for records of the session that the index left out. A mismatch
        rebuilds the index once; raises IndexMismatch if the rebuilt one disagrees too."""
        for attempt in range(2):
            problem = None
            rows = self._select(Query(session=session))
            identity = self._session_identity(session)
            found: list[Entry] = []
            with MappedFile(self.directory / ENTRIES) as mf:
                for row in rows:
                    entry = _read(mf.data, row)
                    problem = (
                        entry if isinstance(entry, str) else _entry_problem(entry, row, identity)
                    )
                    if problem is not None:
                        break
                    assert not isinstance(entry, str)
                    found.append(entry)
                if problem is None:
                    problem = self._left_out(mf.data, session, rows)
            if problem is None:
                return found
            if attempt == 0:
                self.rebuild(problem)
        raise IndexMismatch(f"{INDEX} does not match {ENTRIES} even after a rebuild: {problem}")

    def _left_out(self, data: bytes | mmap.mmap, session: str, rows: list[Row]) -> str | None:
        """What the index left out of ``session`` (found by searching the log), or None."""
        starts = [r.offset for r in rows]
        needle = b'"session":' + orjson.dumps(session)
        for hit in _find_all(data, needle, int(self._meta("offset") or 0)):
            i = bisect.bisect_right(starts, hit) - 1
            if i >= 0 and hit < rows[i].offset + rows[i].length:
                continue  # inside an entry the query returned
            row = self._row_at(hit)
            if row is None:
                return f"no row covers byte {hit} of the log"
            entry = _read(data, row)
            if isinstance(entry, str):
                return entry
            if entry.obj["session"] == session:  # else a key "session" inside its data
                return f"entry {row.seq} of session {session!r} is missing from it"
        return None


def _find_all(data: bytes | mmap.mmap, needle: bytes, end: int) -> Iterator[int]:
    pos = data.find(needle, 0, end)
    while pos != -1:
        yield pos
        pos = data.find(needle, pos + 1, end)


def _frame_problem(data: bytes | mmap.mmap, row: Row) -> str | None:
    """None if the log holds, at the row's offset, a good record of the row's seq, length
    and leaf hash; else what differs."""
    off, length = row.offset, row.length
    if off < 0 or length < HEADER.size + TRAILER.size or off + length > len(data):
        return f"the row of entry {row.seq} points outside the log"
    magic, seq, size = HEADER.unpack_from(data, off)
    if magic != ENTRY_MAGIC or seq != row.seq or HEADER.size + size + TRAILER.size != length:
        return f"the row of entry {row.seq} points at another record"
    end = off + length
    payload = data[off + HEADER.size : end - TRAILER.size]
    crc = zlib.crc32(payload, zlib.crc32(data[off : off + HEADER.size]))
    if crc != TRAILER.unpack_from(data, end - TRAILER.size)[0]:
        return f"record {row.seq} of the log is damaged; run `appliance ledger verify`"
    if leaf_hex(payload) != row.leaf:
        return f"entry {row.seq} in the log is not the one that was indexed"
    return None


def _read(data: bytes | mmap.mmap, row: Row) -> Entry | str:
    """The entry the row points at, or what is wrong with the record there."""
    problem = _frame_problem(data, row)
    if problem is not None:
        return problem
    raw = bytes(data[row.offset + HEADER.size : row.offset + row.length - TRAILER.size])
    try:
        return Entry(row.seq, raw, parse_entry(raw))
    except MalformedEntry as exc:
        return f"entry {row.seq} is malformed: {exc.reason}"


def _entry_problem(entry: Entry, row: Row, session_identity: str | None) -> str | None:
    want = derive_row(row.seq, row.offset, row.offset + row.length, entry.raw, entry.obj)
    problem = row_difference(row, want, session_identity)
    return None if problem is None else f"entry {row.seq}: {problem}"


# -- the whole index against the log (for `ledger verify`) ----------------------------------


def open_for_check(directory: Path) -> sqlite3.Connection | None:
    """The ledger's index opened read-only, or None if it has none (or not of this schema)."""
    path = directory / INDEX
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        version = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
    except sqlite3.Error:
        return None
    if version is None or version[0] != SCHEMA_VERSION:
        db.close()
        return None  # an older index: rebuilt when next used, never read as it is
    return db


def check_rows(db: sqlite3.Connection, rows: Sequence[Row]) -> list[str]:
    """Compare the stored rows for the seqs of ``rows`` (derived from the log) with them.

    A NULL identity is checked against the sessions table, which :func:`check_tables`
    checks in turn. The index may stop before the log (not updated yet), never disagree."""
    if not rows:
        return []
    stored = {
        r[0]: r
        for r in db.execute(
            f"SELECT {_ROW_COLUMNS} FROM entries WHERE seq >= ? AND seq <= ?",
            (rows[0].seq, rows[-1].seq),
        )
    }
    sessions: dict[str, str] = dict(db.execute("SELECT session, identity FROM sessions"))
    found = db.execute("SELECT value FROM meta WHERE key = 'size'").fetchone()
    size = int(found[0]) if found else 0
    out = []
    for row in rows:
        have = stored.get(row.seq)
        if have is None:
            if row.seq < size:
                out.append(f"entry {row.seq} has no row")
            continue
        problem = row_difference(have, row, sessions.get(row.session or ""))
        if problem is not None:
            out.append(f"entry {row.seq}: {problem}")
    return out


def first_identities(rows: Sequence[Row]) -> dict[str, tuple[int, str]]:
    """Per session, the seq and identity of its first row that has one (what the sessions
    table must hold)."""
    out: dict[str, tuple[int, str]] = {}
    for row in rows:
        if row.session is not None and row.identity is not None and row.session not in out:
            out[row.session] = (row.seq, row.identity)
    return out


def check_tables(
    db: sqlite3.Connection, entries: int, identities: dict[str, tuple[int, str]]
) -> list[str]:
    """What :func:`check_rows` cannot see: rows beyond the log, and the sessions table
    (``identities``: :func:`first_identities` of the whole log)."""
    out = []
    (beyond,) = db.execute("SELECT COUNT(*) FROM entries WHERE seq >= ?", (entries,)).fetchone()
    if beyond:
        out.append(f"{beyond} rows for entries the log does not hold")
    (indexed,) = db.execute("SELECT COUNT(*) FROM entries").fetchone()
    stored = dict(db.execute("SELECT session, identity FROM sessions"))
    for session in sorted(set(stored) | set(identities)):
        seq, identity = identities.get(session, (-1, None))
        if seq >= indexed:
            continue  # not indexed yet
        if stored.get(session) != identity:
            out.append(f"session {session!r}: the index holds another identity for it")
    return out


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
