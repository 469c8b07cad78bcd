"""Classification of MySQL/MariaDB statement text into the policy's classes and relations
(the same vocabulary as PostgreSQL's, :mod:`appliance.policy._vocabulary`), so that one
rule (``classes: [drop, truncate]``) reads the same for both.

Where this sits: the MySQL session hooks (:mod:`appliance.proxy.mysql.hooks`) call
:func:`classify_mysql` for every COM_QUERY and COM_STMT_PREPARE text; the policy decides on
the result exactly as it does for PostgreSQL.

How: the text is split the way the server reads it (:mod:`._mysql_text`: quotes, comments,
executable comments opened), then each statement is parsed with sqlglot's MySQL dialect
(a maintained parser). sqlglot is lenient: it parses some text it does not know as a
generic ``Command`` or even as an expression (``FLUSH PRIVILEGES`` reads as an alias), so
only the statement node types listed here count as understood; commands are read by their
leading keywords from a table; anything else is ``unknown``, which policy denies unless a
rule names it. Never raises.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from appliance.policy._classify import Classification, StatementClass
from appliance.policy._mysql_text import split_statements, strip_strings

_CACHE_ENTRIES = 4096
_CACHE_TEXT_LIMIT = 16 * 1024
_MAX_TEXT = 1024 * 1024  # longer texts are not parsed: unknown (sqlglot is pure Python)

# Character sets the server would read a statement in otherwise than the appliance
# (multibyte characters whose trailing byte is a backslash or quote).
UNSAFE_CHARSETS = frozenset({"big5", "cp932", "gbk", "sjis", "gb18030"})

# Built-in functions without side effects worth a rule (anything else a statement calls is
# a ``function_call``, named in ``functions``).
_HARMLESS = frozenset(
    [
        "abs",
        "acos",
        "adddate",
        "addtime",
        "aes_decrypt",
        "aes_encrypt",
        "any_value",
        "ascii",
        "asin",
        "atan",
        "atan2",
        "avg",
        "bin",
        "bit_and",
        "bit_count",
        "bit_length",
        "bit_or",
        "bit_xor",
        "cast",
        "ceil",
        "ceiling",
        "char",
        "char_length",
        "character_length",
        "charset",
        "coalesce",
        "coercibility",
        "collation",
        "compress",
        "concat",
        "concat_ws",
        "connection_id",
        "conv",
        "convert",
        "convert_tz",
        "cos",
        "cot",
        "count",
        "crc32",
        "curdate",
        "current_date",
        "current_role",
        "current_time",
        "current_timestamp",
        "current_user",
        "curtime",
        "database",
        "date",
        "date_add",
        "date_format",
        "date_sub",
        "datediff",
        "day",
        "dayname",
        "dayofmonth",
        "dayofweek",
        "dayofyear",
        "decode",
        "default",
        "degrees",
        "des_decrypt",
        "des_encrypt",
        "elt",
        "encode",
        "encrypt",
        "exp",
        "export_set",
        "extract",
        "field",
        "find_in_set",
        "floor",
        "format",
        "found_rows",
        "from_base64",
        "from_days",
        "from_unixtime",
        "greatest",
        "group_concat",
        "hex",
        "hour",
        "if",
        "ifnull",
        "inet_aton",
        "inet_ntoa",
        "inet6_aton",
        "inet6_ntoa",
        "insert",
        "instr",
        "interval",
        "is_free_lock",
        "is_ipv4",
        "is_ipv6",
        "is_used_lock",
        "isnull",
        "json_array",
        "json_arrayagg",
        "json_contains",
        "json_contains_path",
        "json_depth",
        "json_extract",
        "json_insert",
        "json_keys",
        "json_length",
        "json_merge",
        "json_merge_patch",
        "json_merge_preserve",
        "json_object",
        "json_objectagg",
        "json_quote",
        "json_remove",
        "json_replace",
        "json_search",
        "json_set",
        "json_type",
        "json_unquote",
        "json_valid",
        "json_value",
        "last_day",
        "last_insert_id",
        "lcase",
        "least",
        "left",
        "length",
        "ln",
        "localtime",
        "localtimestamp",
        "locate",
        "log",
        "log10",
        "log2",
        "lower",
        "lpad",
        "ltrim",
        "make_set",
        "makedate",
        "maketime",
        "max",
        "md5",
        "microsecond",
        "mid",
        "min",
        "minute",
        "mod",
        "month",
        "monthname",
        "now",
        "nullif",
        "oct",
        "octet_length",
        "ord",
        "password",
        "period_add",
        "period_diff",
        "pi",
        "position",
        "pow",
        "power",
        "quarter",
        "quote",
        "radians",
        "rand",
        "regexp_instr",
        "regexp_like",
        "regexp_replace",
        "regexp_substr",
        "release_all_locks",
        "repeat",
        "replace",
        "reverse",
        "right",
        "round",
        "row_count",
        "rpad",
        "rtrim",
        "schema",
        "sec_to_time",
        "second",
        "session_user",
        "sha",
        "sha1",
        "sha2",
        "sign",
        "sin",
        "sleep",
        "soundex",
        "space",
        "sqrt",
        "std",
        "stddev",
        "stddev_pop",
        "stddev_samp",
        "str_to_date",
        "strcmp",
        "subdate",
        "substr",
        "substring",
        "substring_index",
        "subtime",
        "sum",
        "sysdate",
        "system_user",
        "tan",
        "time",
        "time_format",
        "time_to_sec",
        "timediff",
        "timestamp",
        "timestampadd",
        "timestampdiff",
        "to_base64",
        "to_days",
        "to_seconds",
        "trim",
        "truncate",
        "ucase",
        "uncompress",
        "uncompressed_length",
        "unhex",
        "unix_timestamp",
        "upper",
        "user",
        "utc_date",
        "utc_time",
        "utc_timestamp",
        "uuid",
        "uuid_short",
        "var_pop",
        "var_samp",
        "variance",
        "version",
        "week",
        "weekday",
        "weekofyear",
        "year",
        "yearweek",
        "row_number",
        "rank",
        "dense_rank",
        "lag",
        "lead",
        "first_value",
        "last_value",
        "nth_value",
        "ntile",
        "percent_rank",
        "cume_dist",
        "nextval",
        "lastval",
        "setval",
    ]
)
_LOCK_FUNCTIONS = frozenset({"get_lock", "release_lock", "release_all_locks"})
_FILE_FUNCTIONS = frozenset({"load_file"})

# Statements sqlglot reads as a generic Command (or not at all), by leading keywords.
_KEYWORDS: tuple[tuple[str, frozenset[str]], ...] = tuple(
    (k, frozenset(v.split()))
    for k, v in (
        ("LOCK TABLES", "lock"),
        ("LOCK TABLE", "lock"),
        ("UNLOCK TABLES", "lock"),
        ("UNLOCK TABLE", "lock"),
        ("CALL", "function_call unknown"),  # as PostgreSQL's CALL
        ("DEALLOCATE PREPARE", "prepare"),
        ("DROP PREPARE", "prepare"),
        ("EXECUTE", "prepare"),
        ("CREATE USER", "role"),
        ("CREATE ROLE", "role"),
        ("DROP USER", "role"),
        ("DROP ROLE", "role"),
        ("ALTER USER", "role"),
        ("RENAME USER", "role"),
        ("SET PASSWORD", "role"),
        ("SET ROLE", "role"),
        ("SET DEFAULT ROLE", "role"),
        ("GRANT", "grant"),
        ("REVOKE", "revoke"),
        ("OPTIMIZE", "maintenance"),
        ("ANALYZE", "maintenance"),
        ("CHECK TABLE", "maintenance"),
        ("CHECKSUM TABLE", "maintenance"),
        ("REPAIR", "maintenance"),
        ("SAVEPOINT", "transaction"),
        ("RELEASE SAVEPOINT", "transaction"),
        ("ROLLBACK", "transaction"),
        ("XA", "transaction"),
        ("RENAME TABLE", "alter"),
        ("RENAME TABLES", "alter"),
        ("SHOW", "select"),
        ("DESCRIBE", "select"),
        ("DESC", "select"),
        ("HELP", "select"),
        ("HANDLER", "select"),
        ("USE", "set"),
    )
)
_SHOW_SETTINGS = re.compile(r"SHOW\s+(?:(?:GLOBAL|SESSION|LOCAL)\s+)?(?:VARIABLES|STATUS)\b", re.I)
_WORDS = re.compile(r"[A-Za-z_]+")
_OUTFILE = re.compile(r"\bINTO\s+(?:OUTFILE|DUMPFILE)\b", re.I)
_INTO_VAR = re.compile(r"\bINTO\s+@", re.I)
_LOAD = re.compile(
    r"LOAD\s+(?:DATA|XML)\s+(?:(?:LOW_PRIORITY|CONCURRENT)\s+)?(LOCAL\s+)?INFILE\s+.*?\bINTO\s+TABLE\s+([`\w.$]+)",
    re.I | re.S,
)
_PREPARE = re.compile(r"PREPARE\s+([`\w$]+)\s+FROM\s+(.*)$", re.I | re.S)
_SET_STATEMENT = re.compile(r"SET\s+STATEMENT\s+.*?\s+FOR\s+(.*)$", re.I | re.S)
_CHARSET_SETTERS = re.compile(
    r"\b(?:NAMES|CHARACTER\s+SET|CHARSET|character_set_client\s*:?=)\s*(?:'|\"|`)?([\w@]+)", re.I
)


def classify_mysql(text: str, *, backslash_escapes: bool = True) -> Classification:
    """Classify every statement of ``text`` (a COM_QUERY or COM_STMT_PREPARE text, already
    decoded from the session's character set). ``backslash_escapes``: False when the
    session's sql_mode has NO_BACKSLASH_ESCAPES. Never raises; cached by exact text."""
    if len(text) <= _CACHE_TEXT_LIMIT:
        return _cached(text, backslash_escapes)
    return _classify(text, backslash_escapes)


@functools.lru_cache(maxsize=_CACHE_ENTRIES)
def _cached(text: str, backslash_escapes: bool) -> Classification:
    return _classify(text, backslash_escapes)


def _unknown(text: str, reason: str) -> Classification:
    return Classification.of(
        [StatementClass(0, text.strip()[:4096], "", frozenset({"unknown"}))], parse_error=reason
    )


def _classify(text: str, backslash_escapes: bool) -> Classification:
    if len(text) > _MAX_TEXT:
        return _unknown(text, f"longer than {_MAX_TEXT} characters: not parsed")
    if "\x00" in text:
        return _unknown(text, "the text contains a NUL character")
    split = split_statements(text, backslash_escapes=backslash_escapes)
    if split.error is not None:
        return _unknown(text, split.error)
    try:
        statements = [_statement(i, s, backslash_escapes) for i, s in enumerate(split.statements)]
    except RecursionError:
        return _unknown(text, "the statement is nested too deeply to classify")
    except Exception as exc:  # a bug here, not in the job's SQL: fail closed and say so
        return _unknown(
            text, f"classifier error (a bug in appliance.policy): {type(exc).__name__}: {exc}"
        )
    errors = [e for _s, e in statements if e is not None]
    return Classification.of([s for s, _e in statements], parse_error=errors[0] if errors else None)


def _statement(index: int, text: str, backslash_escapes: bool) -> tuple[StatementClass, str | None]:
    bare = strip_strings(text)
    head = " ".join(_WORDS.findall(bare[:80])[:3]).upper()
    classes: set[str] = set()
    # A constant unsafe character set is refused here; one taken from a variable is read
    # back from the server after the statement runs (the session's settings probe).
    charset = _new_charset(text) if _CHARSET_SETTERS.search(bare) else None
    if charset is not None and charset.lower() in UNSAFE_CHARSETS:
        classes.add("encoding")
    # -- forms sqlglot does not read ------------------------------------------------------------
    m = _PREPARE.match(text)
    if m:
        inner = _string_literal(m.group(2).strip(), backslash_escapes)
        if inner is None:
            return _make(index, text, "PREPARE", {"prepare", "unknown"}, prepared=m.group(1)), (
                "PREPARE from a variable: the statement is not known"
            )
        sub = _classify(inner, backslash_escapes)
        stmt = _make(
            index,
            text,
            "PREPARE",
            {"prepare", *sub.classes},
            sub.reads,
            sub.writes,
            sub.functions,
            m.group(1),
        )
        return stmt, sub.parse_error
    m = _SET_STATEMENT.match(text)
    if m:
        sub = _classify(m.group(1), backslash_escapes)
        return _make(
            index,
            text,
            "SET STATEMENT",
            {"set", *classes, *sub.classes},
            sub.reads,
            sub.writes,
            sub.functions,
        ), sub.parse_error
    m = _LOAD.match(text)
    if m:
        load = {"copy_from"} | (set() if m.group(1) else {"file_access"})
        return _make(index, text, "LOAD DATA", load, writes={_name(m.group(2))}), None
    if head.startswith("LOAD"):
        return _make(index, text, "LOAD", {"copy_from", "unknown"}), "LOAD statement not understood"
    if head.startswith("REPLACE"):
        sub = _classify("INSERT" + text[len("REPLACE") :], backslash_escapes)
        return _make(
            index,
            text,
            "REPLACE",
            {"insert", "delete", *sub.classes},
            sub.reads,
            sub.writes,
            sub.functions,
        ), sub.parse_error
    if head.startswith("DO "):
        sub = _classify("SELECT" + text[2:], backslash_escapes)
        return _make(
            index,
            text,
            "DO",
            set(sub.classes - {"select"}) or {"select"},
            sub.reads,
            sub.writes,
            sub.functions,
        ), sub.parse_error
    if head.startswith("KILL"):
        return _make(index, text, "KILL", {"unknown"}), "KILL is answered by the appliance, alone"
    if head.startswith("BEGIN") and head not in ("BEGIN", "BEGIN WORK"):
        return _make(index, text, "BEGIN", {"unknown"}), "a compound statement (BEGIN ... END)"
    outfile = bool(_OUTFILE.search(bare))
    if _INTO_VAR.search(bare) or outfile:
        # SELECT ... INTO OUTFILE/@var: sqlglot does not read the INTO clause: the rest is
        # classified without it; a file written adds file_access.
        cut = re.search(r"\bINTO\s+(?:OUTFILE|DUMPFILE|@)", bare, re.I)
        assert cut is not None
        rest = _INTO_TAIL.sub("", text[cut.start() :], count=1)
        sub = _classify(text[: cut.start()] + " " + rest, backslash_escapes)
        extra = {"file_access"} if outfile else set()
        return _make(
            index, text, "SELECT INTO", {*sub.classes, *extra}, sub.reads, sub.writes, sub.functions
        ), sub.parse_error
    # -- sqlglot -------------------------------------------------------------------------------
    try:
        trees = sqlglot.parse(text, read="mysql")
    except SqlglotError as exc:
        return _keywords(
            index, text, head, classes, bare, f"not parsed: {str(exc).splitlines()[0]}"
        )
    if len(trees) != 1 or trees[0] is None:
        return _keywords(index, text, head, classes, bare, "not one statement")
    tree = trees[0]
    if isinstance(tree, exp.Command) or not isinstance(tree, exp.Expression):
        return _keywords(index, text, head, classes, bare, None)
    return _tree(index, text, tree, classes)


_INTO_TAIL = re.compile(
    r"INTO\s+(?:(?:OUTFILE|DUMPFILE)\s+('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")(?:\s+(?:CHARACTER\s+SET\s+\w+|FIELDS|COLUMNS|LINES|TERMINATED|ENCLOSED|ESCAPED|STARTING|OPTIONALLY|BY|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"))*|@[\w.$@, ]+)",
    re.I,
)


def _keywords(
    index: int, text: str, head: str, classes: set[str], bare: str, error: str | None
) -> tuple[StatementClass, str | None]:
    """A statement read by its leading keywords only (see ``_KEYWORDS``)."""
    for prefix, found in _KEYWORDS:
        if head == prefix or head.startswith(prefix + " "):
            got = set(found)
            if prefix == "SHOW" and _SHOW_SETTINGS.match(bare):
                got = {"set"}
            if prefix == "GRANT" and not re.search(r"\bON\b", bare, re.I):
                got.add("role")  # GRANT role TO user
            if prefix == "REVOKE" and not re.search(r"\bON\b", bare, re.I):
                got.add("role")
            reads, writes = _keyword_relations(prefix, text)
            called = _CALLED.match(text.strip()) if prefix == "CALL" else None
            functions = {_name(called.group(1)).lower()} if called else set()
            return _make(index, text, prefix, got | classes, reads, writes, functions), None
    return (
        _make(index, text, head.split(" ")[0] if head else "", {"unknown", *classes}),
        error
        or f"statement {head.split(' ')[0] if head else '(empty)'!r} is not one the classifier knows",
    )


def _tree(
    index: int, text: str, tree: exp.Expression, classes: set[str]
) -> tuple[StatementClass, str | None]:
    writes: set[str] = set()
    numbers_decide = False  # see StatementClass.numbers_decide
    command = type(tree).__name__
    ctes = {c.alias_or_name for c in tree.find_all(exp.CTE)}
    if isinstance(tree, (exp.Select, exp.SetOperation, exp.Subquery)):
        classes.add("select")
    elif isinstance(tree, exp.Insert):
        classes.add("insert")
        if tree.args.get("conflict") or tree.args.get("on_conflict"):
            classes.add("update")
        writes.add(_table(tree.this))
    elif isinstance(tree, exp.Update):
        classes.add("update")
        if not _has_real_where(tree):
            classes.add("update_without_where")
        numbers_decide = _numbers_decide(tree)
        writes.add(_table(tree.this))
    elif isinstance(tree, exp.Delete):
        classes.add("delete")
        if not _has_real_where(tree):
            classes.add("delete_without_where")
        numbers_decide = _numbers_decide(tree)
        targets = tree.args.get("tables") or [tree.this]
        writes.update(_table(t) for t in targets if t is not None)
    elif isinstance(tree, exp.Create):
        kind = str(tree.args.get("kind") or "").upper()
        classes.add("ddl")
        if kind in ("USER", "ROLE"):
            classes.add("role")
        target = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
        if isinstance(target, exp.Index):  # CREATE INDEX i ON t: t changes
            target = target.args.get("table")
        if isinstance(target, exp.Table):
            writes.add(_table(target))
        if tree.expression is not None and isinstance(
            tree.expression, (exp.Select, exp.SetOperation)
        ):
            classes.add("select")
        if kind in ("PROCEDURE", "FUNCTION", "TRIGGER", "EVENT"):
            classes.add("unknown")  # its body runs later, as the definer
    elif isinstance(tree, exp.Drop):
        kind = str(tree.args.get("kind") or "").upper()
        classes.add("drop")
        if kind in ("USER", "ROLE"):
            classes.add("role")
        for t in tree.args.get("tables") or [tree.this]:
            if isinstance(t, exp.Table):
                writes.add(_table(t))
    elif isinstance(tree, exp.Alter):
        classes.add("alter")
        if isinstance(tree.this, exp.Table):
            writes.add(_table(tree.this))
    elif isinstance(tree, exp.TruncateTable):
        classes.add("truncate")
        writes.update(_table(t) for t in tree.expressions if isinstance(t, exp.Table))
    elif isinstance(tree, (exp.Transaction, exp.Commit, exp.Rollback)):
        classes.add("transaction")
    elif isinstance(tree, exp.Set):
        classes.add("set")
        if any(str(i.args.get("kind") or "").upper() == "TRANSACTION" for i in tree.expressions):
            classes.add("transaction")
    elif isinstance(tree, exp.Use):
        classes.add("set")
    elif isinstance(tree, exp.Show):
        classes.add("set" if _SHOW_SETTINGS.match(strip_strings(text)) else "select")
    elif isinstance(tree, exp.Describe):
        inner = tree.this
        if isinstance(inner, exp.Table):
            classes.add("select")
        else:
            classes.add("explain")
            if (
                re.match(r"\s*(?:EXPLAIN|DESCRIBE|DESC)\s+ANALYZE\b", text, re.I)
                or str(tree.args.get("style") or "").upper() == "ANALYZE"
            ):
                sub = (
                    _tree(index, text, inner, set())[0]
                    if isinstance(inner, exp.Expression)
                    else None
                )
                if sub is not None:
                    classes.update(sub.classes)
    elif isinstance(tree, exp.Kill):
        classes.add("unknown")
    else:
        return _make(
            index, text, command, {"unknown", *classes}
        ), f"statement of kind {command} is not one the classifier knows"
    if isinstance(tree, exp.Select) and tree.args.get("locks"):
        classes.add("lock")
    # Nested statements: a subquery's DELETE cannot exist in MySQL. CREATE ... SELECT is also
    # a select, INSERT ... SELECT an insert that reads its sources, as PostgreSQL's
    # classifier has them (one rule reads the same for both).
    if isinstance(tree, exp.Create) and tree.find(exp.Select) is not None:
        classes.add("select")
    reads = set()
    if not isinstance(tree, exp.Use):
        reads = {
            _table(t) for t in tree.find_all(exp.Table) if t.name and t.name not in ctes
        } - writes
    functions: set[str] = set()
    for f in tree.find_all(exp.Anonymous):
        name = str(f.this).lower()
        if isinstance(f.parent, exp.Dot) and f.parent.expression is f:
            # db.f(): a stored function of that database, never a built-in of that name
            name = f"{f.parent.this.name.lower()}.{name}"
        functions.add(name)
        if name in _FILE_FUNCTIONS:
            classes.add("file_access")
        elif name in _LOCK_FUNCTIONS:
            classes.add("lock")
        elif name not in _HARMLESS:
            classes.add("function_call")
    reads.discard("")
    writes.discard("")
    return _make(
        index, text, command, classes, reads, writes, functions, numbers_decide=numbers_decide
    ), None


def _has_real_where(tree: exp.Expression) -> bool:
    """A WHERE that is not always true (1=1, TRUE, 'a'='a', x=x...)."""
    where = tree.args.get("where")
    if where is None:
        return False
    cond = where.this
    if isinstance(cond, exp.Boolean):
        return not cond.this
    if isinstance(cond, exp.Literal):
        return cond.this in ("0", "")
    if isinstance(cond, (exp.EQ, exp.Is)) and cond.this == cond.expression:
        return False
    if isinstance(cond, exp.Not) and isinstance(cond.this, exp.Boolean):
        return bool(cond.this.this)
    return True


def _numbers_decide(tree: exp.Expression) -> bool:
    """May :func:`_has_real_where`'s answer for ``tree`` change with the value of an integer
    literal (``StatementClass.numbers_decide``: then the statement's allow is remembered by
    its exact text, not by its shape)? Only where it reads values: a WHERE that is a literal
    (``WHERE 5``, ``WHERE 0``), or an equality whose two sides are the same but for their
    numbers (``1 = 1``, ``1 = 2``). ``id = 5`` is a comparison whatever the number."""
    where = tree.args.get("where")
    if where is None:
        return False
    cond = where.this
    if isinstance(cond, exp.Literal):
        return True
    if isinstance(cond, (exp.EQ, exp.Is)):
        return _without_numbers(cond.this) == _without_numbers(cond.expression)
    return False


def _without_numbers(node: exp.Expression) -> exp.Expression:
    """``node`` with every number literal 0."""
    return node.transform(
        lambda n: exp.Literal.number(0) if isinstance(n, exp.Literal) and not n.is_string else n
    )


_NAME = r"[`\w$]+(?:\s*\.\s*[`\w$]+)?"
_RENAMED = re.compile(rf"({_NAME})\s+TO\s+({_NAME})", re.I)
_LOCKED = re.compile(
    rf"(?:^|,)\s*({_NAME})(?:\s+(?:AS\s+)?(?!READ\b|WRITE\b|LOW_PRIORITY\b)[`\w$]+)?\s+(?:READ|WRITE|LOW_PRIORITY)\b",
    re.I,
)
_CALLED = re.compile(rf"CALL\s+({_NAME})", re.I)
_HANDLED = re.compile(rf"HANDLER\s+({_NAME})", re.I)


def _keyword_relations(prefix: str, text: str) -> tuple[set[str], set[str]]:
    """The tables a statement read by its keywords names, as (reads, writes): RENAME TABLE
    writes both names of each pair, LOCK TABLES and HANDLER read theirs (as PostgreSQL's
    LOCK reads its tables)."""
    if prefix.startswith("RENAME TABLE"):
        return set(), {_name(n) for pair in _RENAMED.findall(text) for n in pair}
    if prefix.startswith("LOCK TABLE"):
        body = re.sub(r"^\s*LOCK\s+TABLES?\s+", "", text, flags=re.I)
        return {_name(m) for m in _LOCKED.findall(body)}, set()
    if prefix == "HANDLER":
        m = _HANDLED.match(text.strip())
        return ({_name(m.group(1))} if m else set()), set()
    return set(), set()


def _table(t: exp.Expression | None) -> str:
    if isinstance(t, exp.Schema):  # INSERT INTO t (a, b): the table with its column list
        t = t.this
    if not isinstance(t, exp.Table):
        return ""
    return f"{t.db}.{t.name}" if t.db else t.name


def _name(raw: str) -> str:
    return re.sub(r"\s+", "", raw.replace("`", ""))


def _string_literal(text: str, backslash_escapes: bool) -> str | None:
    """The value of a single quoted string literal making up all of ``text``, else None."""
    if len(text) < 2 or text[0] not in "'\"" or text[-1] != text[0]:
        return None
    q = text[0]
    out: list[str] = []
    i = 1
    escapes = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a"}
    while i < len(text) - 1:
        c = text[i]
        if c == "\\" and backslash_escapes:
            if i + 1 >= len(text) - 1:
                return None
            out.append(escapes.get(text[i + 1], text[i + 1]))
            i += 2
        elif c == q:
            if text[i + 1] != q:
                return None
            out.append(q)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _new_charset(text: str) -> str | None:
    """The character set a SET NAMES / SET CHARACTER SET / SET character_set_client
    statement switches to, when written as a plain name; None when it cannot be told."""
    m = _CHARSET_SETTERS.search(text)
    if m is None:
        return None
    value = m.group(1)
    if value.startswith("@") or value.upper() in ("DEFAULT",):
        return None
    return value


def _make(
    index: int,
    text: str,
    command: str,
    classes: Iterable[str],
    reads: Iterable[str] = (),
    writes: Iterable[str] = (),
    functions: Iterable[str] = (),
    prepared: str | None = None,
    *,
    numbers_decide: bool = False,
) -> StatementClass:
    return StatementClass(
        index,
        text,
        command,
        frozenset(classes),
        frozenset(reads),
        frozenset(writes),
        frozenset(functions),
        prepared.strip("`") if prepared else None,
        numbers_decide=numbers_decide,
    )


def cache_clear() -> None:
    _cached.cache_clear()
