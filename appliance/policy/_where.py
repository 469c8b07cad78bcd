"""Does a WHERE clause keep every row? Used for the risky markers ``delete_without_where``
and ``update_without_where``: ``WHERE 1=1`` deletes as much as no WHERE at all.

Works on the JSON parse tree of libpg_query (see :mod:`appliance.policy._classify`) and
only on what it can prove from the text: constants (``1=1``, ``'a'='a'``, ``true``,
``NOT false``, ``'t'::boolean``, ``1 IN (1, 2)``, ``2 BETWEEN 1 AND 3``, ``NULL IS NULL``),
the boolean operators over them (``true OR x > 5``), and an expression compared with itself
(``x = x``, ``lower(x) >= lower(x)``, ``x IS NOT DISTINCT FROM x``, ``x LIKE '%'``). The
self-comparisons skip rows where the value is NULL; they are marked anyway, because whoever
writes them means "every row". Anything it cannot prove counts as a real condition, except
an expression nested deeper than it looks (64 levels): that counts as keeping every row, so
that nesting (``NOT NOT ... true``) cannot hide a constant.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

_MAX_DEPTH = 64


class _TooDeep(Exception):
    """The expression is nested deeper than _MAX_DEPTH."""


_NO_VALUE = object()
_NULL = object()
_COMPARE = {
    "=": lambda a, b: a == b,
    "<>": lambda a, b: a != b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}
# Comparing an expression with itself: true for every row where it is not NULL.
_SELF_TRUE = frozenset({"=", "<=", ">="})
_BOOL_TYPES = frozenset({"bool", "boolean"})
_NUMBER_TYPES = frozenset(
    {"int2", "int4", "int8", "smallint", "integer", "int", "bigint", "numeric", "decimal"}
)
_TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "name"})
_MISSING: dict[str, Any] = {}


def keeps_every_row(where: dict[str, Any] | None) -> bool:
    """True if ``where`` (a parse-tree node, or None for no WHERE) is provably true for
    every row (NULLs aside, see the module docstring)."""
    if where is None:
        return True
    try:
        return _truth(where, 0) is True
    except _TooDeep:
        return True


def same_for_every_number(where: dict[str, Any] | None) -> bool:
    """True if :func:`keeps_every_row` gives the same answer for ``where`` whatever the
    values of its numeric constants: it has none, or each is compared directly with a column
    (``aid = 5``, ``5 < x``: unprovable whatever the number). Conservative: any other
    constant (``1 = 1``, ``x + 1 = x + 1``, ``id IN (1, 2)``, ``5::int``) answers False.

    What the shape cache of the PostgreSQL hooks relies on to let an UPDATE or DELETE that
    differs from another only in integer literals share its decision."""
    if where is None:
        return True
    stack: list[tuple[Any, int]] = [(where, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > _MAX_DEPTH:
            return False
        if isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        if len(node) == 1:
            ((kind, f),) = node.items()
            if kind == "A_Const":
                if isinstance(f, dict) and ("ival" in f or "fval" in f):
                    return False
                continue
            if kind == "A_Expr" and isinstance(f, dict) and _column_against_constant(f):
                left, right = f.get("lexpr"), f.get("rexpr")
                column = left if isinstance(left, dict) and "ColumnRef" in left else right
                stack.append((column, depth + 1))
                continue
        stack.extend((value, depth + 1) for value in node.values())
    return True


def _column_against_constant(f: dict[str, Any]) -> bool:
    """A comparison (``=``, ``<``, ...) of a column with a constant: :func:`_expr_truth`
    answers None for it whatever the constant (the column has no value in the text, and a
    column is never :func:`_same` as a constant)."""
    if f.get("kind") != "AEXPR_OP" or _operator(f.get("name", ())) not in _COMPARE:
        return False
    left, right = f.get("lexpr"), f.get("rexpr")
    sides = [
        next(iter(side)) if isinstance(side, dict) and len(side) == 1 else None
        for side in (left, right)
    ]
    return sorted(map(str, sides)) == ["A_Const", "ColumnRef"]


def _truth(node: Any, depth: int) -> bool | None:
    """True or False if the expression's value is known from the text, else None."""
    if depth > _MAX_DEPTH:
        raise _TooDeep
    if not isinstance(node, dict) or len(node) != 1:
        return None
    ((kind, f),) = node.items()
    depth += 1
    if kind == "BoolExpr":
        values = [_truth(a, depth) for a in f.get("args", ())]
        op = f.get("boolop")
        if op == "NOT_EXPR" and len(values) == 1:
            return None if values[0] is None else not values[0]
        if op == "AND_EXPR":
            return False if False in values else (True if all(values) else None)
        if op == "OR_EXPR":
            if True in values:
                return True
            return False if values and all(v is False for v in values) else None
        return None
    if kind == "A_Expr":
        return _expr_truth(f, depth)
    if kind == "NullTest":
        value = _value(f.get("arg"), depth)
        if value is _NO_VALUE:
            return None
        return bool((value is _NULL) == (f.get("nulltesttype") == "IS_NULL"))
    if kind == "BooleanTest":
        inner = _truth(f.get("arg"), depth)
        if inner is None:
            return None
        test = f.get("booltesttype")
        if test in ("IS_TRUE", "IS_NOT_FALSE"):
            return inner
        if test in ("IS_FALSE", "IS_NOT_TRUE"):
            return not inner
        return bool(test == "IS_NOT_UNKNOWN")
    if kind == "SubLink" and f.get("subLinkType") == "EXISTS_SUBLINK":
        # EXISTS (SELECT 1): a query without FROM, WHERE, HAVING or LIMIT yields one row.
        sub = f.get("subselect", _MISSING).get("SelectStmt", _MISSING)
        keys = ("fromClause", "whereClause", "havingClause", "limitCount", "limitOffset")
        if sub and "targetList" in sub and not any(k in sub for k in keys):
            return True
        return None
    value = _value(node, depth - 1)
    if isinstance(value, bool):
        return value
    return None


def _expr_truth(f: dict[str, Any], depth: int) -> bool | None:
    op = _operator(f.get("name", ()))
    kind = f.get("kind")
    left, right = f.get("lexpr"), f.get("rexpr")
    if kind == "AEXPR_OP" and op in _COMPARE:
        if op in _SELF_TRUE and _same(left, right):
            return True
        return _compare(op, _value(left, depth), _value(right, depth))
    if kind == "AEXPR_NOT_DISTINCT" and _same(left, right):
        return True
    if kind == "AEXPR_IN" and op in ("=", "<>"):
        value = _value(left, depth)
        items = [_value(i, depth) for i in _items(right)]
        results = [_compare("=", value, i) for i in items]
        if None in results or not results:
            return None
        return any(results) if op == "=" else not any(results)
    if kind == "AEXPR_BETWEEN":
        bounds = _items(right)
        if len(bounds) != 2:
            return None
        value = _value(left, depth)
        low = _compare(">=", value, _value(bounds[0], depth))
        high = _compare("<=", value, _value(bounds[1], depth))
        return None if low is None or high is None else (low and high)
    if kind in ("AEXPR_LIKE", "AEXPR_ILIKE") and op in ("~~", "~~*"):
        pattern = _value(right, depth)
        # x LIKE '%' matches every non-NULL string.
        if isinstance(pattern, str) and pattern and set(pattern) == {"%"}:
            return True
    return None


def _operator(name: Any) -> str | None:
    parts = [str(n.get("String", _MISSING).get("sval")) for n in name if isinstance(n, dict)]
    if len(parts) == 1 or (len(parts) == 2 and parts[0] == "pg_catalog"):
        return parts[-1]
    return None


def _items(node: Any) -> list[Any]:
    if isinstance(node, dict) and "List" in node:
        items = node["List"].get("items", [])
        return items if isinstance(items, list) else []
    return []


def _value(node: Any, depth: int) -> object:
    """The constant's Python value (bool, Decimal, str, _NULL), or _NO_VALUE."""
    if depth > _MAX_DEPTH:
        raise _TooDeep
    if not isinstance(node, dict) or len(node) != 1:
        return _NO_VALUE
    ((kind, f),) = node.items()
    if kind == "A_Const":
        if f.get("isnull"):
            return _NULL
        if "boolval" in f:
            return bool(f["boolval"].get("boolval", False))
        if "ival" in f:
            return Decimal(f["ival"].get("ival", 0))
        if "fval" in f:
            return _decimal(f["fval"].get("fval", ""))
        if "sval" in f:
            return str(f["sval"].get("sval", ""))
        return _NO_VALUE
    if kind == "TypeCast":
        inner = _value(f.get("arg"), depth + 1)
        names = [
            n.get("String", _MISSING).get("sval")
            for n in f.get("typeName", {}).get("names", ())
            if isinstance(n, dict)
        ]
        if inner is _NO_VALUE or inner is _NULL or not names or f["typeName"].get("arrayBounds"):
            return inner if inner is _NULL else _NO_VALUE
        if len(names) > 2 or (len(names) == 2 and names[0] != "pg_catalog"):
            return _NO_VALUE
        target = names[-1]
        if target in _BOOL_TYPES:
            return inner if isinstance(inner, bool) else _parse_bool(inner)
        if target in _NUMBER_TYPES and not isinstance(inner, bool):
            return _decimal(inner)
        if target in _TEXT_TYPES and isinstance(inner, str):
            return inner
        return _NO_VALUE
    return _NO_VALUE


def _compare(op: str, a: object, b: object) -> bool | None:
    if a is _NO_VALUE or b is _NO_VALUE or a is _NULL or b is _NULL:
        return None
    # An untyped string literal next to a number takes the number's type, as in PostgreSQL.
    if isinstance(a, Decimal) and isinstance(b, str):
        b = _decimal(b)
    elif isinstance(b, Decimal) and isinstance(a, str):
        a = _decimal(a)
    if isinstance(a, bool) and isinstance(b, str):
        b = _parse_bool(b)
    elif isinstance(b, bool) and isinstance(a, str):
        a = _parse_bool(a)
    if a is _NO_VALUE or b is _NO_VALUE or type(a) is not type(b):
        return None
    if isinstance(a, str) and op not in ("=", "<>", "!="):
        return None  # ordering of strings depends on the collation
    if isinstance(a, bool) and op not in ("=", "<>", "!="):
        return None
    result = _COMPARE[op](a, b)
    return bool(result)


def _decimal(text: object) -> object:
    try:
        return Decimal(str(text).strip())
    except (InvalidOperation, ValueError):
        return _NO_VALUE


def _parse_bool(text: object) -> object:
    """PostgreSQL's boolean input: true/false, yes/no, on/off, 1/0 and unique prefixes."""
    if not isinstance(text, str):
        return _NO_VALUE
    s = text.strip().lower()
    if not s:
        return _NO_VALUE
    if "true".startswith(s) or "yes".startswith(s) or s in ("on", "1"):
        return True
    if "false".startswith(s) or "no".startswith(s) or s in ("of", "off", "0"):
        return False
    return _NO_VALUE


def _same(a: Any, b: Any) -> bool:
    """The two expressions are written the same (positions aside), contain no NULL constant
    and call nothing that could return a different value each time (functions, subqueries,
    parameters)."""
    if not isinstance(a, dict) or not isinstance(b, dict) or a.keys() != b.keys():
        return False
    ca, cb = _canon(a, 0), _canon(b, 0)
    return ca is not None and ca == cb


def _canon(node: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise _TooDeep
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("FuncCall", "SubLink", "ParamRef"):
                return None
            if key == "A_Const" and isinstance(value, dict) and value.get("isnull"):
                return None  # NULL = NULL is NULL, not true
            if key == "location" or key.endswith(("_location", "_start", "_end")):
                continue
            sub = _canon(value, depth + 1)
            if sub is None and value is not None:
                return None
            out[key] = sub
        return out
    if isinstance(node, list):
        items = [_canon(v, depth + 1) for v in node]
        return None if any(i is None for i in items) else items
    return node
