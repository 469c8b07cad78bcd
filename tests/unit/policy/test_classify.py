"""classify(): statement splitting, the cache, inputs that are not SQL, and hypothesis
fuzzing (it never raises)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast.parser import ParseError, parse_sql, parse_sql_json
from pglast.visitors import Visitor

from appliance.policy import Classification, classify
from appliance.policy._classify import (
    _STRUCT_FIELDS,
    GrammarError,
    _quote,
    cache_clear,
    cache_info,
)

from .test_corpus import CORPUS, PSQL


def test_statements_in_order_with_their_text_and_command() -> None:
    result = classify("SELECT 'é€'; /* c */ DELETE FROM t WHERE id = 1;\n  COMMIT ;")
    assert [s.index for s in result.statements] == [0, 1, 2]
    # The parser starts a statement after the comments before it.
    assert [s.text for s in result.statements] == [
        "SELECT 'é€'",
        "DELETE FROM t WHERE id = 1",
        "COMMIT",
    ]
    assert [s.command for s in result.statements] == [
        "SelectStmt",
        "DeleteStmt",
        "TransactionStmt",
    ]
    assert result.statements[1].writes == {"t"}
    assert result.classes == {"select", "delete", "transaction"}


def test_prepared_name_is_given_for_prepare_execute_deallocate() -> None:
    names = [
        classify(sql).statements[0].prepared_name
        for sql in ("PREPARE p1 AS SELECT 1", "EXECUTE p1", "DEALLOCATE p1", "SELECT 1")
    ]
    assert names == ["p1", "p1", "p1", None]


def test_unparseable_text_is_one_unknown_statement_with_the_reason() -> None:
    result = classify("SELECT 1; DROP TABEL t")
    assert result.classes == {"unknown"}
    assert len(result.statements) == 1
    assert result.statements[0].command == ""
    assert result.statements[0].text == "SELECT 1; DROP TABEL t"
    assert result.parse_error is not None and "syntax error" in result.parse_error


def test_cache_returns_the_same_object_for_the_same_text() -> None:
    cache_clear()
    first = classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
    again = classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
    assert again is first
    info = cache_info()
    assert (info.hits, info.misses) == (1, 1)
    other = classify("SELECT abalance FROM pgbench_accounts WHERE aid = 2")
    assert other is not first and other.classes == first.classes


def test_long_texts_are_not_cached_but_classified_alike() -> None:
    sql = "SELECT " + ", ".join(f"c{i}" for i in range(5000)) + " FROM t"
    assert len(sql) > 16 * 1024
    first, again = classify(sql), classify(sql)
    assert first == again and first is not again
    assert first.classes == {"select"}


def test_standard_conforming_strings_off_refuses_backslashes() -> None:
    # With standard_conforming_strings=on (what the grammar here assumes) this is one
    # SELECT of a string; a server with it off reads '\'' as a quote, then DROP TABLE runs.
    sql = "SELECT '\\'' ; DROP TABLE t; --'"
    assert classify(sql).classes == {"select"}
    off = classify(sql, standard_conforming_strings=False)
    assert off.classes == {"unknown"}
    assert off.parse_error is not None and "standard_conforming_strings" in off.parse_error
    assert classify("DELETE FROM t", standard_conforming_strings=False).classes == {
        "delete",
        "delete_without_where",
    }


@pytest.mark.parametrize(
    ("sql", "switches"),
    [
        ("SET NAMES 'SJIS'", True),
        ("SET client_encoding TO 'Shift_JIS'", True),
        ("set local client_encoding = gbk", True),
        ("SELECT set_config('client_encoding', 'BIG5', false)", True),
        ("SELECT set_config('client_encoding', current_setting('x'), false)", True),
        ("SELECT set_config(name, value, false) FROM settings", True),
        ("SET client_encoding TO 'UTF8'", False),
        ("SET client_encoding TO 'LATIN1'", False),
        ("SET client_encoding TO sql_ascii", False),
        ("SET NAMES 'utf-8'", False),
        ("SET client_encoding = DEFAULT", False),
        ("RESET client_encoding", False),
        ("SELECT set_config('client_encoding', 'unicode', false)", False),
        ("SELECT set_config('search_path', 'app', false)", False),
    ],
)
def test_switching_the_client_encoding_away_from_utf8_is_its_own_class(
    sql: str, switches: bool
) -> None:
    classes = classify(sql).classes
    assert "set" in classes
    assert ("encoding" in classes) is switches


def test_inputs_that_are_not_sql() -> None:
    for text in ("SELECT 1\x00; DROP TABLE t", "SELECT '\ud800'", "\x00"):
        result = classify(text)
        assert result.classes == {"unknown"} and result.parse_error
    assert classify(b"SELECT 1").classes == {"unknown"}  # type: ignore[arg-type]


def _nested(depth: int) -> str:
    return "SELECT * FROM " + "(SELECT * FROM " * depth + "t" + ") s" * depth


def test_deep_nesting_is_classified_up_to_a_limit_then_unknown() -> None:
    result = classify(_nested(100))
    assert result.classes == {"select"} and result.reads == {"t"}
    too_deep = classify(_nested(1000))
    assert too_deep.classes == {"unknown"}
    assert too_deep.parse_error == "the statement is nested too deeply to classify"
    calls = classify("SELECT " + "abs(" * 5000 + "1" + ")" * 5000)
    assert calls.classes == {"unknown"} and calls.parse_error
    parens = classify("SELECT " + "(" * 20000 + "1" + ")" * 20000)
    assert parens.classes <= {"select", "unknown"}


def test_where_nested_too_deeply_to_evaluate_counts_as_every_row() -> None:
    shallow = "DELETE FROM t WHERE " + "NOT " * 20 + "(id = 5)"
    assert classify(shallow).classes == {"delete"}
    deep = "DELETE FROM t WHERE " + "NOT " * 80 + "(id = 5)"
    assert classify(deep).classes == {"delete", "delete_without_where"}


def test_records_are_json_without_floats() -> None:
    result = classify("SELECT nextval('s'); DELETE FROM x.y USING z")
    record = result.to_record()
    text = json.dumps(record, sort_keys=True)
    assert json.loads(text) == record
    assert record["classes"] == ["delete", "delete_without_where", "function_call", "select"]
    assert record["statements"][1] == {
        "index": 1,
        "command": "DeleteStmt",
        "classes": ["delete", "delete_without_where"],
        "reads": ["z"],
        "writes": ["x.y"],
        "functions": [],
    }
    assert "parse_error" not in record
    assert "parse_error" in classify("nope").to_record()


# -- hypothesis ----------------------------------------------------------------------------

_FRAGMENTS = st.sampled_from(
    [
        "SELECT", "DELETE", "FROM", "WHERE", "UPDATE", "SET", "INSERT", "INTO", "VALUES",
        "WITH", "AS", "(", ")", ";", ",", "'", "''", '"', "$$", "$t$", "E'", "\\", "\\'",
        "--", "\n", "/*", "*/", "1", "=", "t", "x.y", "EXPLAIN", "ANALYZE", "COPY", "TO",
        "PROGRAM", "DROP", "TABLE", "pg_read_file(", "DO", "CALL", "PREPARE", "EXECUTE",
        "RETURNING", "*", "true", "NOT", "OR", "AND", "FOR UPDATE", "MERGE", "USING",
        "ON", "WHEN", "MATCHED", "THEN", "\x00", "é", "\ud800", " ",
    ]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200), st.booleans())
def test_classify_never_raises_on_any_text(sql: str, scs: bool) -> None:
    _check(classify(sql, standard_conforming_strings=scs))


@settings(max_examples=600, deadline=None)
@given(st.lists(_FRAGMENTS, max_size=40).map(" ".join), st.booleans())
def test_classify_never_raises_on_sql_like_text(sql: str, scs: bool) -> None:
    _check(classify(sql, standard_conforming_strings=scs))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["SELECT 1", "DELETE FROM t WHERE a = 1", "SELECT $$;$$", "COMMIT", "SET a = 1"]
        ),
        min_size=1,
        max_size=8,
    )
)
def test_each_statement_of_a_string_is_found(parts: list[str]) -> None:
    result = classify(";".join(parts))
    assert [s.text for s in result.statements] == parts


def _check(result: Classification) -> None:
    assert isinstance(result, Classification)
    assert result.classes == frozenset().union(*(s.classes for s in result.statements))
    if result.parse_error is not None:
        assert result.classes == {"unknown"}
        # The classifier catches its own bugs to fail closed; a fuzz run must find none.
        assert "a bug in appliance.policy" not in result.parse_error
    json.dumps(result.to_record())


# -- the walk sees every node ------------------------------------------------------------


def _shape_errors(kind: str, fields: dict[str, Any], out: list[str]) -> None:
    """Where the JSON tree has a dict that is neither a ``{"Type": {...}}`` wrapper nor a
    struct field the classifier knows from pglast.ast (the walk would not see inside)."""
    for key, value in fields.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, dict) or not item:
                continue  # scalars; {} is a NULL list entry
            struct = _STRUCT_FIELDS.get((kind, key))
            if struct is not None and not isinstance(value, list):
                _shape_errors(struct, item, out)
            elif len(item) == 1 and next(iter(item))[:1].isupper():
                ((child, child_fields),) = item.items()
                _shape_errors(child, child_fields, out)
            elif kind != "A_Const":  # A_Const's value union is read by _where, not walked
                out.append(f"{kind}.{key}: {sorted(item)}")


def test_the_walk_understands_every_node_of_the_corpus() -> None:
    texts = [c["sql"] for c in CORPUS] + [q["sql"] for q in PSQL]
    errors: list[str] = []
    for text in texts:
        try:
            tree = json.loads(parse_sql_json(text))
        except ParseError:
            continue
        for raw in tree.get("stmts", []):
            ((kind, fields),) = raw["stmt"].items()
            _shape_errors(kind, fields, errors)
    assert errors == []


class _Names(Visitor):
    """pglast's own full traversal of its object tree: every function call and relation."""

    def __init__(self) -> None:
        self.functions: set[str] = set()
        self.relations: set[str] = set()
        self.ctes: set[str] = set()

    def visit_FuncCall(self, ancestors: Any, node: Any) -> None:
        self.functions.add(".".join(_quote(s.sval) for s in node.funcname))

    def visit_RangeVar(self, ancestors: Any, node: Any) -> None:
        parts = [p for p in (node.catalogname, node.schemaname, node.relname) if p]
        self.relations.add(".".join(_quote(p) for p in parts))

    def visit_CommonTableExpr(self, ancestors: Any, node: Any) -> None:
        self.ctes.add(node.ctename)


def test_functions_and_relations_agree_with_pglasts_own_traversal() -> None:
    texts = [c["sql"] for c in CORPUS] + [q["sql"] for q in PSQL]
    checked = 0
    for text in texts:
        result = classify(text)
        if result.parse_error is not None or "CREATE FUNCTION" in text:
            continue  # the classifier does not read function bodies, they do not run
        if "do" in result.classes:
            continue  # a DO body is read by PL/pgSQL's parser, which pglast's walk skips
        names = _Names()
        for stmt in parse_sql(text):
            names(stmt)
        assert result.functions == names.functions, text
        found = result.reads | result.writes
        # DROP names its objects as strings, not RangeVars; a CTE reference is not a relation.
        dropped = frozenset().union(
            *(s.writes for s in result.statements if s.command == "DropStmt")
        )
        assert found - names.relations <= dropped, text
        assert names.relations - found <= names.ctes, text
        checked += 1
    assert checked > 150


# -- DO blocks and fast-path calls (issue 12) -------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "BEGIN EXECUTE 'DELETE FROM t'; END",
        "DECLARE r record; BEGIN FOR r IN EXECUTE 'SELECT 1' LOOP END LOOP; END",
        "DECLARE c refcursor; BEGIN OPEN c FOR EXECUTE 'SELECT 1'; END",
        "DECLARE a int[]; BEGIN a[(SELECT 1)] := 2; END",  # a subscripted target: not read
        "BEGIN PERFORM query_to_xml('delete from t', true, false, ''); END",
        "BEGIN this is not pl/pgsql; END",
    ],
)
def test_a_do_block_that_cannot_be_read_whole_is_unknown(body: str) -> None:
    assert "unknown" in classify(f"DO $body$ {body} $body$").classes


def test_a_do_body_that_holds_the_wrapping_tag_is_still_read() -> None:
    result = classify(
        "DO $x$ BEGIN RAISE NOTICE '$appliance_do$'; DELETE FROM t WHERE id = 1; END $x$"
    )
    assert result.classes == {"do", "delete"} and result.writes == {"t"}


def test_a_do_block_with_a_set_config_is_a_settings_change() -> None:
    result = classify("DO $$ BEGIN PERFORM set_config('client_encoding', 'SJIS', false); END $$")
    assert {"do", "set", "encoding"} <= result.classes


def test_a_syntax_error_carries_the_server_s_message_and_position() -> None:
    result = classify("select 'Ünï' froom x")
    assert result.syntax_error is not None
    assert result.syntax_error.message == 'syntax error at or near "x"'
    assert result.syntax_error.position == 20  # 1-based, in characters
    assert classify("select 1").syntax_error is None
    # at the end of the text, as the server puts it (make pg-regress: errors.sql)
    end = classify("CREATE TABLE").syntax_error
    assert end == GrammarError("syntax error at end of input", 13)
    # Text that is not read for other reasons is unknown, but no syntax error.
    off = classify("select 'a\\' ", standard_conforming_strings=False)
    assert off.classes == {"unknown"} and off.syntax_error is None


def test_fastpath_calls_are_classified_by_the_function_they_call() -> None:
    from appliance.policy import classify_function_call

    lo_open = classify_function_call(952)
    assert lo_open.functions == {"lo_open"} and lo_open.classes == {"function_call"}
    user = classify_function_call(16390)
    assert user.functions == {"oid:16390"} and user.classes == {"function_call", "unknown"}
