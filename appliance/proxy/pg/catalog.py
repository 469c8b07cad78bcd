"""Which table a result column comes from, for column rules with a table pattern (sans-IO).

A RowDescription gives each column's table as an OID. Column rules name tables
(``{table: customers, column: name}``); without the names, such a rule must apply to every
column called ``name`` (fail closed), which also masks ``products.name``. So when a target
has rules with a table pattern, the session asks the server once, at startup, for the
relations that have a column any of those rules could match:

    oid -> "schema.table"

A relation missing from the map has no column such a rule could match, so "not in the map"
and "no rule applies" agree. A column with no table (a computed one) stays unknown and the
rules that may match apply, as before. Relations created later in the session are unknown
too: fail closed.

The query runs on the session's own upstream connection, as its service account, before
the job's startup completes; :class:`CatalogReader` reads its answer from the messages.
"""

from __future__ import annotations

from collections.abc import Iterable

from appliance.protocols.postgres import Messages, PeerProtocolError
from appliance.protocols.postgres.codes import B_DATAROW, B_ERROR, B_READY
from appliance.protocols.postgres.messages import (
    ErrorResponse,
    Query,
    datarow_values,
    decode_backend,
)

_SPECIAL = frozenset(".^$*+?()[]{}|\\")
# More relations than this and the map is dropped (the rules apply by column name alone).
MAX_RELATIONS = 100_000


def glob_to_regex(glob: str) -> str:
    """A shell-style pattern (``*``, ``?``, ``[...]``, ``[!...]``, as the masking config
    takes them) as an anchored PostgreSQL regular expression."""
    out = ["^"]
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and glob[j] == "!":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:
                out.append("\\[")  # no closing bracket: a literal one, as fnmatch does
                continue
            body = glob[i:j].replace("\\", "\\\\")
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body}]")
            i = j + 1
        elif c in _SPECIAL:
            out.append("\\" + c)
        else:
            out.append(c)
    out.append("$")
    return "".join(out)


def _literal(text: str) -> str:
    """An escape string literal: read the same whatever standard_conforming_strings is."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def catalog_query(column_globs: Iterable[str]) -> bytes | None:
    """The Query that maps the relations having a column matching any of ``column_globs``
    (case-insensitive, as identifiers fold); None if there are none."""
    patterns = sorted({glob_to_regex(g) for g in column_globs})
    if not patterns:
        return None
    array = "ARRAY[" + ", ".join(_literal(p) for p in patterns) + "]::text[]"
    sql = (
        "/* appliance: table names for column masking rules */ "
        "SELECT DISTINCT c.oid::text, n.nspname::text, c.relname::text "
        "FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
        "WHERE a.attnum > 0 AND NOT a.attisdropped "
        f"AND a.attname::text ~* ANY ({array}) "
        f"LIMIT {MAX_RELATIONS + 1}"
    )
    return Query(sql).encode()


class CatalogReader:
    """Reads the answer to :func:`catalog_query`: feed the server's messages until
    ``done``; then ``tables`` is the map (empty if the server refused: ``error`` says why,
    or if there were too many relations)."""

    def __init__(self) -> None:
        self.tables: dict[int, str] = {}
        self.error: str | None = None
        self.done = False
        self._rows = 0

    def feed(self, msgs: Messages) -> bytes:
        """Take the messages; returns the bytes that follow the answer's ReadyForQuery
        (none, unless the server sent more on its own)."""
        chunk = msgs.chunk
        for t, s, e in msgs.frames:
            if self.done:
                return chunk[s:]
            if t == B_DATAROW:
                self._row(chunk[s:e])
            elif t == B_ERROR:
                error = decode_backend(t, chunk[s + 5 : e])
                assert isinstance(error, ErrorResponse)
                self.error = f"{error.code}: {error.message}"
            elif t == B_READY:
                self.done = True
                if self._rows > MAX_RELATIONS:
                    self.tables.clear()
                    self.error = f"more than {MAX_RELATIONS} relations"
                if self.error is not None:
                    self.tables.clear()
        return b""

    def _row(self, frame: bytes) -> None:
        values = datarow_values(frame, 5)
        if len(values) != 3 or any(v is None for v in values):
            raise PeerProtocolError("unexpected row in the catalog lookup", side="server")
        self._rows += 1
        if self._rows > MAX_RELATIONS:
            return
        oid, schema, name = (v.decode("utf-8", "replace") for v in values if v is not None)
        try:
            self.tables[int(oid)] = f"{schema}.{name}"
        except ValueError:
            raise PeerProtocolError("unexpected row in the catalog lookup", side="server") from None


__all__ = ["MAX_RELATIONS", "CatalogReader", "catalog_query", "glob_to_regex"]
