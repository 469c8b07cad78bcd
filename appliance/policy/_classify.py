"""SQL classification: what each statement of a query string does when the server runs it.

Sits between the PostgreSQL decoder and the policy in the data path: the proxy hands every
query text to :func:`classify` and matches the result against the rules.

The text is parsed with the server's own grammar (libpg_query through pglast), never with
regular expressions, so comments, dollar quoting and ``E''`` strings hide nothing. Every
statement of a multi-statement string is classified (the server parses the whole string
before it runs any of it, so a syntax error anywhere means nothing runs; here it means the
whole string is ``unknown``). Each statement is walked node by node, so effects inside CTEs,
subqueries and function arguments are found: see :data:`appliance.policy._vocabulary.CLASSES`
for the classes and what sets them.

Why the JSON tree and not ``pglast.ast`` objects: building the Python objects costs about
50 µs for a pgbench UPDATE, parsing to JSON and ``json.loads`` about 8 µs, and the proxy
classifies every statement. The field types that the JSON leaves implicit (a ``RangeVar*``
field holds a bare struct, a ``Node*`` field a ``{"Type": {...}}`` wrapper) are read once from
``pglast.ast``'s slot declarations, so the walk still sees every node with its type.

Limits, by nature of reading text and not the catalog: what views, rules, triggers,
user-defined operators and column defaults run is invisible; ``EXECUTE name`` is classified
as ``prepare`` only (the proxy knows which PREPARE it refers to, see
:attr:`StatementClass.prepared_name`); the parse assumes ``standard_conforming_strings=on``
(pass the session's value, see :func:`classify`).
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from pglast import ast as pg_ast
from pglast.parser import ParseError, parse_sql_json

from appliance.policy._functions import call_classes
from appliance.policy._plpgsql import body_sql
from appliance.policy._where import keeps_every_row, same_for_every_number
from appliance.protocols.postgres import fastpath
from appliance.protocols.postgres.copy import CopySpec
from appliance.protocols.postgres.encodings import ascii_safe

__all__ = [
    "Classification",
    "CopySpec",
    "GrammarError",
    "StatementClass",
    "classify",
    "classify_function_call",
    "copy_spec",
]

# Texts up to this many characters are cached (keyed by the exact text).
_CACHE_TEXT_LIMIT = 16 * 1024
_CACHE_ENTRIES = 4096

_ROLE_SETTINGS = frozenset({"role", "session_authorization"})
_RELATION_OBJECTS = frozenset(
    {
        "OBJECT_TABLE",
        "OBJECT_VIEW",
        "OBJECT_MATVIEW",
        "OBJECT_SEQUENCE",
        "OBJECT_INDEX",
        "OBJECT_FOREIGN_TABLE",
    }
)
_MERGE_COMMANDS = {"CMD_UPDATE": "update", "CMD_DELETE": "delete", "CMD_INSERT": "insert"}
_SIMPLE_NAME = re.compile(r"[a-z_][a-z0-9_$]*")
_MISSING: dict[str, Any] = {}


@dataclass(frozen=True)
class StatementClass:
    """One statement of a query string, classified.

    ``command`` is the parse-tree node of the statement (``DeleteStmt``), empty when the
    text did not parse. ``text`` is the statement's own text, cut from the query string.
    Relation and function names are as written, schema-qualified when written so
    (``public.customers``, ``customers``); a name part that is not a plain lower-case
    identifier keeps its double quotes (``"Customers"``). ``prepared_name`` is the
    prepared statement a PREPARE, EXECUTE or DEALLOCATE names.
    """

    index: int
    text: str
    command: str
    classes: frozenset[str]
    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    prepared_name: str | None = None
    copy: CopySpec | None = None  # for a COPY statement
    # An UPDATE or DELETE (also nested) whose WHERE compares numbers otherwise than a column
    # with a constant: its classes may depend on an integer's value (``WHERE 3 > 2`` keeps
    # every row, ``WHERE 2 > 3`` none; see _where.same_for_every_number).
    numbers_decide: bool = False

    def to_record(self) -> dict[str, Any]:
        """A JSON-safe summary for the ledger (without the text, which is recorded apart)."""
        record: dict[str, Any] = {
            "index": self.index,
            "command": self.command,
            "classes": sorted(self.classes),
            "reads": sorted(self.reads),
            "writes": sorted(self.writes),
            "functions": sorted(self.functions),
        }
        if self.prepared_name is not None:
            record["prepared_name"] = self.prepared_name
        return record


@dataclass(frozen=True)
class GrammarError:
    """PostgreSQL's grammar rejects the text: the server would answer SQLSTATE 42601 with
    this message and position (1-based, in characters, as the ErrorResponse's ``P`` field)
    and run nothing of it."""

    message: str
    position: int


@dataclass(frozen=True)
class Classification:
    """A whole query string, classified: one :class:`StatementClass` per statement, in
    order, and the unions of their classes, relations and functions.

    An empty string or one holding only comments has no statements. Unparseable text has
    one statement of class ``unknown`` and ``parse_error`` says why; when the reason is that
    PostgreSQL's grammar rejects it, ``syntax_error`` is the error the server would give.
    """

    statements: tuple[StatementClass, ...]
    classes: frozenset[str]
    reads: frozenset[str]
    writes: frozenset[str]
    functions: frozenset[str]
    parse_error: str | None = None
    syntax_error: GrammarError | None = None
    numbers_decide: bool = False  # one of the statements' (StatementClass.numbers_decide)

    @classmethod
    def of(
        cls,
        statements: Iterable[StatementClass],
        parse_error: str | None = None,
        syntax_error: GrammarError | None = None,
    ) -> Classification:
        """The classification made of ``statements`` (unions computed here)."""
        stmts = tuple(statements)

        def union(attr: str) -> frozenset[str]:
            return frozenset().union(*(getattr(s, attr) for s in stmts))

        return cls(
            stmts,
            union("classes"),
            union("reads"),
            union("writes"),
            union("functions"),
            parse_error,
            syntax_error,
            any(s.numbers_decide for s in stmts),
        )

    def to_record(self) -> dict[str, Any]:
        """A JSON-safe summary for the ledger."""
        record: dict[str, Any] = {
            "classes": sorted(self.classes),
            "reads": sorted(self.reads),
            "writes": sorted(self.writes),
            "functions": sorted(self.functions),
            "statements": [s.to_record() for s in self.statements],
        }
        if self.parse_error is not None:
            record["parse_error"] = self.parse_error
        return record


def classify(sql: str, *, standard_conforming_strings: bool = True) -> Classification:
    """Classify every statement of ``sql``. Never raises.

    ``standard_conforming_strings`` is the session's setting (the server reports it in a
    ParameterStatus message, and a client may change it). The grammar here always treats a
    backslash in ``'...'`` as an ordinary character; with the setting off the server treats
    it as an escape, so the same text can hold different statements. Then any text with a
    backslash is ``unknown`` rather than risk reading it differently from the server.

    Results for texts up to 16 KiB are cached by exact text (an LRU of 4096 entries).
    """
    if not isinstance(sql, str):
        return _unparseable("", f"not text: {type(sql).__name__}")
    if len(sql) <= _CACHE_TEXT_LIMIT:
        return _classify_cached(sql, standard_conforming_strings)
    return _classify(sql, standard_conforming_strings)


def classify_function_call(oid: int) -> Classification:
    """Classify a fast-path FunctionCall of function ``oid`` (there is no SQL text): a
    built-in large-object function has the classes a call to it in SQL would have, and its
    name in ``functions``, so rules can allow it by name (``functions: [lo_*]``); a function
    the appliance cannot name is ``unknown`` too, named ``oid:<n>`` in ``functions``."""
    text = fastpath.statement_text(oid)
    name = fastpath.function_name(oid)
    if name is None:
        classes = frozenset({"function_call", "unknown"})
        functions = frozenset({f"oid:{oid}"})
    else:
        classes = call_classes(("pg_catalog", name))
        functions = frozenset({name})
    return Classification.of(
        [StatementClass(0, text, "FunctionCall", classes, functions=functions)]
    )


def cache_info() -> functools._CacheInfo:
    """Hits, misses and size of the classification cache (for the benchmark and stats)."""
    return _classify_cached.cache_info()


def cache_clear() -> None:
    """Empty the classification cache (for the benchmark's cold runs)."""
    _classify_cached.cache_clear()


@functools.lru_cache(maxsize=_CACHE_ENTRIES)
def _classify_cached(sql: str, standard_conforming_strings: bool) -> Classification:
    return _classify(sql, standard_conforming_strings)


def _classify(sql: str, standard_conforming_strings: bool) -> Classification:
    try:
        encoded = sql.encode("utf-8")
    except UnicodeEncodeError:
        return _unparseable(sql, "the text is not valid Unicode (lone surrogate)")
    if "\x00" in sql:
        return _unparseable(sql, "the text contains a NUL character")
    if not standard_conforming_strings and "\\" in sql:
        return _unparseable(
            sql,
            "standard_conforming_strings is off and the text has a backslash: "
            "its statements cannot be told apart safely",
        )
    try:
        tree = json.loads(parse_sql_json(sql))
    except ParseError as exc:  # the server's own message: 'syntax error at or near ...'
        # pglast's location is 0-based in characters; the server's position is 1-based.
        message = str(exc.args[0]) if exc.args else str(exc)
        location = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
        if location == 0 and message.endswith("at end of input"):
            # pglast gives no location there; the server's is the end of the text
            location = len(sql)
        return _unparseable(sql, message, GrammarError(message, location + 1))
    except RecursionError:
        return _unparseable(sql, "the statement is nested too deeply to classify")
    except Exception as exc:  # the parser's other limits
        return _unparseable(sql, f"the parser refused the text: {type(exc).__name__}: {exc}")
    try:
        statements = [
            _statement(index, raw, encoded) for index, raw in enumerate(tree.get("stmts", ()))
        ]
    except RecursionError:
        return _unparseable(sql, "the statement is nested too deeply to classify")
    except Exception as exc:
        # A bug in this module, not in the client's SQL: fail closed and say so.
        return _unparseable(
            sql, f"classifier error (a bug in appliance.policy): {type(exc).__name__}: {exc}"
        )
    return Classification.of(statements)


def _unparseable(sql: str, reason: str, syntax_error: GrammarError | None = None) -> Classification:
    text = sql.strip() if isinstance(sql, str) else ""
    return Classification.of(
        [StatementClass(0, text, "", frozenset({"unknown"}))],
        parse_error=reason,
        syntax_error=syntax_error,
    )


def _statement(index: int, raw: dict[str, Any], encoded: bytes) -> StatementClass:
    # libpg_query's locations are byte offsets; a length of 0 means "to the end".
    start = int(raw.get("stmt_location", 0))
    length = int(raw.get("stmt_len", 0))
    chunk = encoded[start : start + length] if length else encoded[start:]
    text = chunk.decode("utf-8", errors="replace").strip()
    ((kind, fields),) = raw["stmt"].items()
    walk = _Walk()
    walk.run(kind, fields)
    return StatementClass(
        index,
        text,
        kind,
        frozenset(walk.classes),
        frozenset(walk.reads),
        frozenset(walk.writes),
        frozenset(walk.functions),
        walk.prepared_name,
        _copy_spec(fields) if kind == "CopyStmt" else None,
        walk.numbers_decide,
    )


# -- the walk ---------------------------------------------------------------------------------


_WRAPPED = frozenset({"Node", "Expr", "List"})


def _struct_fields() -> dict[tuple[str, str], str]:
    """(node type, field) -> struct type, for the fields the JSON writes without a wrapper."""
    nodes = {
        name
        for name, obj in vars(pg_ast).items()
        if inspect.isclass(obj) and issubclass(obj, pg_ast.Node)
    }
    out: dict[tuple[str, str], str] = {}
    for name in nodes:
        slots = getattr(getattr(pg_ast, name), "__slots__", None)
        if not isinstance(slots, dict):
            continue
        for field, info in slots.items():
            base = info.c_type.rstrip("*")
            # Node, Expr (abstract) and List fields hold {"Type": {...}} wrappers.
            if info.c_type.endswith("*") and base in nodes and base not in _WRAPPED:
                out[(name, field)] = base
    return out


_STRUCT_FIELDS = _struct_fields()


class _Ctx(NamedTuple):
    """How a node is reached.

    ``effects``: the node runs (False inside EXPLAIN without ANALYZE, a view's query, a
    rule's actions: names are still recorded, as reads, but no classes are added).
    ``top``: the node is the statement being run (a SELECT adds ``select`` only then).
    ``ctes``: the CTE names in scope, which are not relations.
    """

    effects: bool
    top: bool
    ctes: frozenset[str]


_Handler = Callable[["_Walk", str, dict[str, Any], _Ctx], None]
_HANDLERS: dict[str, _Handler] = {}


def _handles(*kinds: str) -> Callable[[_Handler], _Handler]:
    def register(fn: _Handler) -> _Handler:
        for kind in kinds:
            _HANDLERS[kind] = fn
        return fn

    return register


class _Walk:
    """Collects the classes, relations and functions of one statement, walking its parse
    tree with an explicit stack (deep trees cannot overflow Python's)."""

    def __init__(self) -> None:
        self.classes: set[str] = set()
        self.reads: set[str] = set()
        self.writes: set[str] = set()
        self.functions: set[str] = set()
        self.prepared_name: str | None = None
        self.numbers_decide = False  # see StatementClass.numbers_decide
        self._stack: list[tuple[str, dict[str, Any], _Ctx]] = []

    def run(self, kind: str, fields: dict[str, Any]) -> None:
        self._stack.append((kind, fields, _Ctx(True, True, frozenset())))
        while self._stack:
            kind, fields, ctx = self._stack.pop()
            handler = _HANDLERS.get(kind)
            if handler is not None:
                handler(self, kind, fields, ctx)
            else:
                if ctx.top:
                    self.add(ctx, "unknown")  # a statement this module does not know
                self.children(kind, fields, ctx)

    # -- helpers used by the handlers ------------------------------------------------------

    def add(self, ctx: _Ctx, *classes: str) -> None:
        if ctx.effects:
            self.classes.update(classes)

    def relation(self, rangevar: Any, ctx: _Ctx, *, write: bool) -> None:
        """Record a RangeVar (bare struct fields) as read or written."""
        if not isinstance(rangevar, dict):
            return
        name = rangevar.get("relname")
        if not isinstance(name, str):
            return
        schema, catalog = rangevar.get("schemaname"), rangevar.get("catalogname")
        if schema is None and name in ctx.ctes:
            return  # a reference to a CTE, not to a relation
        parts = [p for p in (catalog, schema, name) if isinstance(p, str)]
        qualified = ".".join(_quote(p) for p in parts)
        (self.writes if write and ctx.effects else self.reads).add(qualified)

    def push(self, node: Any, ctx: _Ctx, *, kind: str | None = None) -> None:
        """Queue ``node``: a ``{"Type": {...}}`` wrapper, a list of them, or (with ``kind``)
        a bare struct of that type."""
        if kind is not None:
            if isinstance(node, dict):
                self._stack.append((kind, node, ctx))
        elif isinstance(node, dict):
            if len(node) == 1:
                ((k, v),) = node.items()
                if k[:1].isupper() and isinstance(v, dict):
                    self._stack.append((k, v, ctx))
        elif isinstance(node, list):
            for item in node:
                self.push(item, ctx)

    def children(
        self,
        kind: str,
        fields: dict[str, Any],
        ctx: _Ctx,
        *,
        skip: tuple[str, ...] = (),
        top: tuple[str, ...] = (),
        effects: bool | None = None,
    ) -> None:
        """Queue every child of a node, except those in ``skip``; those in ``top`` are
        statements that run as such (EXPLAIN ANALYZE's query). ``effects`` overrides the
        context's for all children. A ``withClause`` brings its CTE names into scope."""
        child = _Ctx(ctx.effects if effects is None else effects, False, ctx.ctes)
        with_clause = fields.get("withClause")
        if isinstance(with_clause, dict) and "withClause" not in skip:
            child = self._with(with_clause, child)
            skip = (*skip, "withClause")
        for key, value in fields.items():
            if key in skip or not isinstance(value, (dict, list)):
                continue
            node_ctx = child._replace(top=True) if key in top else child
            struct = _STRUCT_FIELDS.get((kind, key))
            if struct is not None:
                self.push(value, node_ctx, kind=struct)
            else:
                self.push(value, node_ctx)

    def _with(self, clause: dict[str, Any], ctx: _Ctx) -> _Ctx:
        """Queue the CTEs of a WITH clause; return the context of the statement body."""
        ctes = [c.get("CommonTableExpr", _MISSING) for c in clause.get("ctes", ())]
        names = [c.get("ctename") for c in ctes if isinstance(c.get("ctename"), str)]
        recursive = bool(clause.get("recursive"))
        for position, cte in enumerate(ctes):
            # A non-recursive CTE sees only the CTEs before it; a name it uses that is not
            # one of those is a relation (WITH t AS (SELECT * FROM t) reads the table t).
            visible = names if recursive else names[:position]
            self.push(cte.get("ctequery"), ctx._replace(ctes=ctx.ctes.union(visible)))
        return ctx._replace(ctes=ctx.ctes.union(names))


def _quote(part: str) -> str:
    if _SIMPLE_NAME.fullmatch(part):
        return part
    return '"' + part.replace('"', '""') + '"'


def _name(nodes: Any) -> tuple[str, ...]:
    """The parts of a name written as a list of String nodes."""
    if not isinstance(nodes, list):
        return ()
    return tuple(
        str(n.get("String", _MISSING).get("sval", "")) for n in nodes if isinstance(n, dict)
    )


def _ascii_safe_constant(node: Any) -> bool:
    """True if ``node`` is a string constant naming an encoding the server and the appliance
    read alike (see :mod:`appliance.protocols.postgres.encodings`)."""
    value = _string_value(node)  # SET's bare words (= sjis) are string constants too
    return value is not None and ascii_safe(value)


def _string_value(node: Any) -> str | None:
    """The text of a string constant (``'role'``, also ``'role'::text``), else None."""
    if not isinstance(node, dict):
        return None
    if "TypeCast" in node:
        return _string_value(node["TypeCast"].get("arg"))
    value = node.get("A_Const", _MISSING).get("sval")
    return str(value.get("sval", "")) if isinstance(value, dict) else None


def _option_true(elem: dict[str, Any]) -> bool:
    """A boolean statement option (``ANALYZE``, ``ANALYZE true``, ``(ANALYZE off)``), read
    as the server's defGetBoolean does; an unreadable value counts as true (the server
    rejects it, and here the stricter reading is the safe one)."""
    arg = elem.get("arg")
    if not isinstance(arg, dict):
        return True
    if "Boolean" in arg:
        return bool(arg["Boolean"].get("boolval", False))
    if "Integer" in arg:
        return bool(arg["Integer"].get("ival", 0) != 0)
    if "String" in arg:
        return str(arg["String"].get("sval", "")).lower() not in ("false", "off", "0")
    return True


# -- handlers: one per node type whose effect is known ------------------------------------


def _simple(kind_classes: dict[str, tuple[str, ...]]) -> None:
    """Statements whose classes follow from their type alone; their children are walked."""

    def make(classes: tuple[str, ...]) -> _Handler:
        def handle(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
            walk.add(ctx, *classes)
            walk.children(kind, f, ctx)

        return handle

    for kind, classes in kind_classes.items():
        _HANDLERS[kind] = make(classes)


_DDL = (
    "CreateSeqStmt",
    "CreateSchemaStmt",
    "CreateExtensionStmt",
    "CreateEventTrigStmt",
    "CompositeTypeStmt",
    "CreateEnumStmt",
    "CreateRangeStmt",
    "DefineStmt",
    "CreateDomainStmt",
    "CreatedbStmt",
    "CreateTableSpaceStmt",
    "CreateFdwStmt",
    "CreateForeignServerStmt",
    "CreateUserMappingStmt",
    "CreatePublicationStmt",
    "CreateSubscriptionStmt",
    "CreateCastStmt",
    "CreateConversionStmt",
    "CreateOpClassStmt",
    "CreateOpFamilyStmt",
    "CreateAmStmt",
    "CreateTransformStmt",
    "CreatePLangStmt",
    "CreateStatsStmt",
    "CommentStmt",
    "SecLabelStmt",
    "ImportForeignSchemaStmt",
)
_ALTER = (
    "AlterDomainStmt",
    "AlterSeqStmt",
    "AlterFunctionStmt",
    "AlterObjectSchemaStmt",
    "AlterOwnerStmt",
    "AlterOperatorStmt",
    "AlterTypeStmt",
    "AlterEnumStmt",
    "AlterDatabaseStmt",
    "AlterDatabaseSetStmt",
    "AlterDatabaseRefreshCollStmt",
    "AlterSystemStmt",
    "AlterTableSpaceOptionsStmt",
    "AlterTableMoveAllStmt",
    "AlterExtensionStmt",
    "AlterExtensionContentsStmt",
    "AlterFdwStmt",
    "AlterForeignServerStmt",
    "AlterUserMappingStmt",
    "AlterPublicationStmt",
    "AlterSubscriptionStmt",
    "AlterEventTrigStmt",
    "AlterCollationStmt",
    "AlterObjectDependsStmt",
    "AlterOpFamilyStmt",
    "AlterStatsStmt",
    "AlterTSDictionaryStmt",
    "AlterTSConfigurationStmt",
    "ReassignOwnedStmt",
    "AlterDefaultPrivilegesStmt",  # its GrantStmt adds grant or revoke
)
_DROP = (
    "DropdbStmt",
    "DropOwnedStmt",
    "DropTableSpaceStmt",
    "DropSubscriptionStmt",
    "DropUserMappingStmt",
)
_simple(
    {
        **{kind: ("ddl",) for kind in _DDL},
        **{kind: ("alter",) for kind in _ALTER},
        **{kind: ("drop",) for kind in _DROP},
        "TransactionStmt": ("transaction",),
        "VariableShowStmt": ("set",),
        "DiscardStmt": ("set",),
        "ConstraintsSetStmt": ("set",),
        "ListenStmt": ("listen_notify",),
        "UnlistenStmt": ("listen_notify",),
        "NotifyStmt": ("listen_notify",),
        "CheckPointStmt": ("maintenance",),
        "ReindexStmt": ("maintenance",),
        "ClusterStmt": ("maintenance",),
        "VacuumStmt": ("maintenance",),
        "LockStmt": ("lock",),
        "CallStmt": ("unknown",),
        "LoadStmt": ("file_access",),
        "FetchStmt": ("select",),
        "ClosePortalStmt": ("select",),
        "CreateRoleStmt": ("role",),
        "AlterRoleStmt": ("role",),
        "AlterRoleSetStmt": ("role",),
        "DropRoleStmt": ("role",),
    }
)


@_handles("DoStmt")
def _do(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    """A DO block has the classes of what its PL/pgSQL body runs (:mod:`._plpgsql`), or is
    ``unknown`` when the body cannot be read (dynamic SQL, another language)."""
    body: str | None = None
    language = "plpgsql"
    for arg in f.get("args", ()):
        elem = arg.get("DefElem", _MISSING) if isinstance(arg, dict) else _MISSING
        value = elem.get("arg", _MISSING).get("String", _MISSING).get("sval")
        if elem.get("defname") == "as" and isinstance(value, str):
            body = value
        elif elem.get("defname") == "language" and isinstance(value, str):
            language = value.lower()
    texts = body_sql(body) if body is not None and language == "plpgsql" else None
    if texts is None:
        walk.add(ctx, "unknown")
        return
    walk.add(ctx, "do")
    for text in texts:
        inner = (
            _classify_cached(text, True)
            if len(text) <= _CACHE_TEXT_LIMIT
            else _classify(text, True)
        )
        walk.add(ctx, *inner.classes)
        if ctx.effects:
            walk.writes.update(inner.writes)
        walk.reads.update(inner.reads)
        walk.functions.update(inner.functions)


@_handles("SelectStmt")
def _select(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    if ctx.top:
        walk.add(ctx, "select")
    if f.get("lockingClause"):
        walk.add(ctx, "lock")
    into = f.get("intoClause")
    if isinstance(into, dict):  # SELECT ... INTO new_table creates a table
        walk.add(ctx, "ddl")
        walk.relation(into.get("rel"), ctx, write=True)
    walk.children(kind, f, ctx, skip=("intoClause",))


@_handles("InsertStmt")
def _insert(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.add(ctx, "insert")
    if f.get("onConflictClause", _MISSING).get("action") == "ONCONFLICT_UPDATE":
        walk.add(ctx, "update")
    walk.relation(f.get("relation"), ctx, write=True)
    walk.children(kind, f, ctx, skip=("relation",))


@_handles("UpdateStmt")
def _update(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.add(ctx, "update")
    if keeps_every_row(f.get("whereClause")):
        walk.add(ctx, "update_without_where")
    if not same_for_every_number(f.get("whereClause")):
        walk.numbers_decide = True
    walk.relation(f.get("relation"), ctx, write=True)
    walk.children(kind, f, ctx, skip=("relation",))


@_handles("DeleteStmt")
def _delete(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.add(ctx, "delete")
    if keeps_every_row(f.get("whereClause")):
        walk.add(ctx, "delete_without_where")
    if not same_for_every_number(f.get("whereClause")):
        walk.numbers_decide = True
    walk.relation(f.get("relation"), ctx, write=True)
    walk.children(kind, f, ctx, skip=("relation",))


@_handles("MergeStmt")
def _merge(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.add(ctx, "merge")
    for clause in f.get("mergeWhenClauses", ()):
        command = clause.get("MergeWhenClause", _MISSING).get("commandType")
        if command in _MERGE_COMMANDS:
            walk.add(ctx, _MERGE_COMMANDS[command])
    walk.relation(f.get("relation"), ctx, write=True)
    walk.children(kind, f, ctx, skip=("relation",))


@_handles("CopyStmt")
def _copy(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    is_from = bool(f.get("is_from"))
    walk.add(ctx, "copy_from" if is_from else "copy_to")
    if f.get("is_program"):
        walk.add(ctx, "copy_program")
    elif f.get("filename") is not None:
        walk.add(ctx, "file_access")  # a file on the server, not the client's STDIN/STDOUT
    walk.relation(f.get("relation"), ctx, write=is_from)
    walk.children(kind, f, ctx, skip=("relation",), top=("query",))


def _copy_spec(f: dict[str, Any]) -> CopySpec:
    relation = f.get("relation") or {}
    table = None
    if relation.get("schemaname") and relation.get("relname"):
        table = f"{relation['schemaname']}.{relation['relname']}"
    names = [a.get("String", _MISSING).get("sval") for a in f.get("attlist") or []]
    columns = tuple(names) if names and all(isinstance(n, str) for n in names) else None
    fmt, header = "text", False
    for option in f.get("options") or []:
        elem = option.get("DefElem", _MISSING)
        name = elem.get("defname")
        if name == "format":
            value = _option_string(elem)
            fmt = value if value in ("text", "csv", "binary") else fmt
        elif name == "header":
            header = _option_true(elem) or _option_string(elem) == "match"
    return CopySpec("in" if f.get("is_from") else "out", table, columns, fmt, header)


def _option_string(elem: dict[str, Any]) -> str | None:
    arg = elem.get("arg")
    if isinstance(arg, dict) and "String" in arg:
        return str(arg["String"].get("sval", "")).lower()
    return None


def copy_spec(sql: str) -> CopySpec | None:
    """What the COPY statement ``sql`` says of its data; None if ``sql`` is not exactly one
    COPY (then nothing is known of its rows: the caller fails closed). Read from the
    (cached) classification: the statement is parsed once."""
    stmts = classify(sql).statements
    return stmts[0].copy if len(stmts) == 1 else None


@_handles("ExplainStmt")
def _explain(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.add(ctx, "explain")
    analyze = False
    for option in f.get("options", ()):
        elem = option.get("DefElem", _MISSING)
        if elem.get("defname") == "analyze":
            analyze = _option_true(elem)
    # Without ANALYZE the statement is planned, not run: its names are recorded as reads.
    walk.children(kind, f, ctx, top=("query",), effects=ctx.effects and analyze)


@_handles("PrepareStmt")
def _prepare(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    # Classified by what it prepares: a rule that forbids a DELETE forbids preparing it.
    walk.add(ctx, "prepare")
    walk.prepared_name = f.get("name")
    walk.children(kind, f, ctx, top=("query",))


@_handles("ExecuteStmt")
def _execute(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.add(ctx, "prepare")
    walk.prepared_name = f.get("name")
    walk.children(kind, f, ctx)  # parameters are expressions and may call functions


@_handles("DeallocateStmt")
def _deallocate(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.add(ctx, "prepare")
    walk.prepared_name = f.get("name")  # None for DEALLOCATE ALL


@_handles("DeclareCursorStmt")
def _declare(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.children(kind, f, ctx, top=("query",))


@_handles("CreateTableAsStmt")
def _create_table_as(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.add(ctx, "ddl")
    into = f.get("into", _MISSING)
    walk.relation(into.get("rel"), ctx, write=True)
    runs = ctx.effects and not into.get("skipData")  # WITH NO DATA does not run the query
    walk.children(kind, f, ctx, skip=("into",), top=("query",), effects=runs)


@_handles("CreateStmt", "CreateForeignTableStmt", "IndexStmt", "CreateTrigStmt")
def _create_on_relation(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.add(ctx, "ddl")
    walk.relation(f.get("relation"), ctx, write=True)
    base = f.get("base")  # CreateForeignTableStmt wraps a CreateStmt
    if isinstance(base, dict):
        walk.relation(base.get("relation"), ctx, write=True)
    # Defaults, checks and trigger conditions run later, not now; index expressions run now
    # but must be immutable.
    walk.children(kind, f, ctx, skip=("relation", "base"), effects=False)


@_handles("ViewStmt")
def _view(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.add(ctx, "ddl")
    walk.relation(f.get("view"), ctx, write=True)
    walk.children(kind, f, ctx, skip=("view",), effects=False)


@_handles("RuleStmt", "CreatePolicyStmt", "AlterPolicyStmt")
def _rule_or_policy(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    # The rule's actions and the policy's expressions run later, as part of other statements.
    walk.add(ctx, "alter" if kind == "AlterPolicyStmt" else "ddl")
    walk.relation(f.get("relation") or f.get("table"), ctx, write=True)
    walk.children(kind, f, ctx, skip=("relation", "table"), effects=False)


@_handles("CreateFunctionStmt")
def _create_function(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.add(ctx, "ddl")  # the body runs when the function is called, not now


@_handles("AlterTableStmt")
def _alter_table(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    # ALTER TABLE ... ADD COLUMN ... DEFAULT f() and ALTER COLUMN TYPE ... USING run now.
    walk.add(ctx, "alter")
    walk.relation(f.get("relation"), ctx, write=True)
    walk.children(kind, f, ctx, skip=("relation",))


@_handles("RenameStmt")
def _rename(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.add(ctx, "alter")
    if f.get("renameType") == "OBJECT_ROLE":
        walk.add(ctx, "role")
    walk.relation(f.get("relation"), ctx, write=True)
    walk.children(kind, f, ctx, skip=("relation",))


@_handles("RefreshMatViewStmt")
def _refresh(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.add(ctx, "maintenance")
    walk.relation(f.get("relation"), ctx, write=True)


@_handles("DropStmt")
def _drop(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.add(ctx, "drop")
    if f.get("removeType") in _RELATION_OBJECTS:
        for obj in f.get("objects", ()):
            parts = _name(obj.get("List", _MISSING).get("items"))
            if parts:
                walk.relation(_as_rangevar(parts), ctx, write=True)


@_handles("TruncateStmt")
def _truncate(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.add(ctx, "truncate")
    for rel in f.get("relations", ()):
        walk.relation(rel.get("RangeVar"), ctx, write=True)


@_handles("GrantStmt")
def _grant(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.add(ctx, "grant" if f.get("is_grant") else "revoke")
    if f.get("objtype") == "OBJECT_TABLE" and f.get("targtype") == "ACL_TARGET_OBJECT":
        for obj in f.get("objects", ()):
            walk.relation(obj.get("RangeVar"), ctx, write=True)  # its privileges change


@_handles("GrantRoleStmt")
def _grant_role(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.add(ctx, "role", "grant" if f.get("is_grant") else "revoke")


@_handles("VariableSetStmt")
def _set(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    # Only as a statement of its own: inside ALTER ROLE/DATABASE/SYSTEM ... SET or a
    # function's SET clause it changes no session setting (the outer statement's class says
    # what happens).
    if ctx.top:
        walk.add(ctx, "role" if f.get("name") in _ROLE_SETTINGS else "set")
        if f.get("name") == "client_encoding" and f.get("kind") == "VAR_SET_VALUE":
            args = f.get("args") or [None]
            if len(args) != 1 or not _ascii_safe_constant(args[0]):
                walk.add(ctx, "encoding")


@_handles("RangeVar")
def _rangevar(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    walk.relation(f, ctx, write=False)


@_handles("FuncCall")
def _funccall(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    parts = _name(f.get("funcname"))
    if parts:
        walk.functions.add(".".join(_quote(p) for p in parts))
        walk.add(ctx, *call_classes(parts))
        if parts[-1] == "set_config":
            args = f.get("args") or [None]
            setting = _string_value(args[0])
            # set_config('role', ...) is SET ROLE; a setting name not written as a constant
            # could be 'role', so it counts as one.
            if setting is None or setting.strip().lower() in _ROLE_SETTINGS:
                walk.add(ctx, "role")
            if setting is None or setting.strip().lower() == "client_encoding":
                value = args[1] if len(args) > 1 else None
                if not _ascii_safe_constant(value):
                    walk.add(ctx, "encoding")
    walk.children(kind, f, ctx, skip=("funcname",))


@_handles("A_Const", "String", "Integer", "Float", "Boolean", "BitString", "ColumnRef")
def _leaf(walk: _Walk, kind: str, f: dict[str, Any], ctx: _Ctx) -> None:
    """Nothing below these nodes can run or name a relation."""


def _as_rangevar(parts: tuple[str, ...]) -> dict[str, Any]:
    fields = ("catalogname", "schemaname", "relname")[-len(parts) :] if len(parts) <= 3 else ()
    return dict(zip(fields, parts, strict=True)) if fields else {}
