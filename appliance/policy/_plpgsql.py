"""What a ``DO`` block runs: the SQL of its PL/pgSQL body, read with PL/pgSQL's own parser.

Where it sits: the classifier (:mod:`appliance.policy._classify`) meets a ``DoStmt`` and asks
:func:`body_sql` for the SQL texts its body will run; it classifies each of them as it
classifies any statement and gives the DO block the union of their classes (plus ``do``).

The body is parsed by libpg_query's copy of the server's PL/pgSQL grammar (pglast
``parse_plpgsql_json``), never with regular expressions. Every ``PLpgSQL_expr`` of the tree
is a text the server will parse and run as SQL when the block executes:

- parse mode 0 (a whole statement: ``INSERT ...``, ``PERFORM f()`` already spelled
  ``SELECT f()``, a ``FOR r IN SELECT`` query, ``CALL``) is taken as it is;
- modes 2 (an expression: ``IF v > 2``, ``RAISE ... , expr``, a variable's default) are run
  by the server as ``SELECT expr``, and read so here;
- modes 3 to 5 (an assignment ``target := expr``) are read as ``SELECT expr``, when the
  target is a plain (possibly dotted) name; a subscripted target is not read (None);
- mode 1 (a type name) runs nothing.

Anything this module cannot see through is ``None`` (the caller makes the block
``unknown``): a body that does not parse, dynamic SQL (``EXECUTE``, ``FOR ... IN EXECUTE``,
``OPEN ... FOR EXECUTE``, ``RETURN QUERY EXECUTE``), and any statement kind this module does
not know (a future PL/pgSQL grammar fails closed). ``COMMIT`` and ``ROLLBACK`` in the body
are reported as such.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pglast.parser import parse_plpgsql_json

__all__ = ["body_sql"]

# Statement kinds whose SQL (if any) is all in their PLpgSQL_expr children.
_STATEMENTS = frozenset(
    "PLpgSQL_stmt_" + kind
    for kind in (
        "block",
        "assign",
        "if",
        "case",
        "loop",
        "while",
        "fori",
        "fors",
        "forc",
        "foreach_a",
        "exit",
        "return",
        "return_next",
        "return_query",
        "raise",
        "assert",
        "execsql",
        "getdiag",
        "open",
        "fetch",
        "close",
        "perform",
        "call",
    )
)
# Statements that run SQL built at run time: nothing here can read it.
_DYNAMIC = frozenset({"PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors"})
_TRANSACTION = {"PLpgSQL_stmt_commit": "COMMIT", "PLpgSQL_stmt_rollback": "ROLLBACK"}
_MODE_STATEMENT, _MODE_TYPE, _MODE_EXPR = 0, 1, 2
_MODES_ASSIGN = frozenset({3, 4, 5})
# An assignment's target: a name, possibly qualified (rec.field, "Quoted".x), nothing else.
_ASSIGNMENT = re.compile(
    r'\s*(?:[A-Za-z_\x80-\uffff][\w$\x80-\uffff]*|"(?:[^"]|"")+")'
    r'(?:\s*\.\s*(?:[A-Za-z_\x80-\uffff][\w$\x80-\uffff]*|"(?:[^"]|"")+"))*'
    r"\s*(?::=|=)(.*)\Z",
    re.DOTALL,
)


def body_sql(body: str) -> list[str] | None:
    """The SQL texts a PL/pgSQL ``DO`` body runs, in no particular order, or None when the
    body cannot be read completely (see the module docstring). Never raises."""
    # The DO body is wrapped as a function so that the PL/pgSQL parser accepts it; the
    # dollar-quote tag is one the body does not contain.
    tag = "$appliance_do$"
    n = 0
    while tag in body:
        n += 1
        tag = f"$appliance_do{n}$"
    source = (
        f"CREATE FUNCTION pg_temp.appliance_do() RETURNS void LANGUAGE plpgsql AS {tag}{body}{tag}"
    )
    try:
        tree = json.loads(parse_plpgsql_json(source))
    except RecursionError:
        return None
    except Exception:  # pglast's ParseError and any other refusal: not readable
        return None
    out: list[str] = []
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key.startswith("PLpgSQL_stmt_"):
                if key in _DYNAMIC:
                    return None
                if key in _TRANSACTION:
                    out.append(_TRANSACTION[key])
                    continue
                if key not in _STATEMENTS:
                    return None
                if isinstance(value, dict) and "dynquery" in value:
                    return None  # OPEN ... FOR EXECUTE, RETURN QUERY EXECUTE
            if key == "PLpgSQL_expr":
                text = _expr_sql(value)
                if text is None:
                    return None
                if text:
                    out.append(text)
                continue
            if isinstance(value, (dict, list)):
                stack.append(value)
    return out


def _expr_sql(expr: Any) -> str | None:
    """The SQL the server runs for one PLpgSQL_expr; "" for none; None if unreadable."""
    if not isinstance(expr, dict):
        return None
    query = expr.get("query")
    if not isinstance(query, str):
        return None
    mode = expr.get("parseMode", _MODE_STATEMENT)
    if mode == _MODE_STATEMENT:
        return query
    if mode == _MODE_TYPE:
        return ""
    if mode == _MODE_EXPR:
        return "SELECT " + query
    if mode in _MODES_ASSIGN:
        match = _ASSIGNMENT.match(query)
        return "SELECT " + match.group(1).strip() if match else None
    return None
