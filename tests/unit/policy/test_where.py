"""WHERE clauses that keep every row (the ``*_without_where`` markers), and ones that do
not: vectors through the real parser."""

from __future__ import annotations

import pytest

from appliance.policy import classify
from appliance.policy._where import keeps_every_row

EVERY_ROW = [
    "1 = 1",
    "1.0 = 1",
    "1 <> 2",
    "1 != 2",
    "2 > 1",
    "1 <= 1",
    "'a' = 'a'",
    "'a' <> 'b'",
    "'1' = 1",
    "true",
    "TRUE = 't'",
    "'yes'::bool",
    "'on'::boolean",
    "'tr'::pg_catalog.bool",
    "NOT false",
    "NOT NOT true",
    "NOT (1 = 2)",
    "true IS TRUE",
    "false IS NOT TRUE",
    "(1 = 2) IS FALSE",
    "1 = 1 AND 2 = 2",
    "id = 5 OR true",
    "(id = 5 AND name = 'x') OR 'a' = 'a'",
    "1 IN (3, 2, 1)",
    "1 NOT IN (2, 3)",
    "2 BETWEEN 1 AND 3",
    "NULL IS NULL",
    "1 IS NOT NULL",
    "EXISTS (SELECT 1)",
    "id = id",
    "t.id >= t.id",
    "lower_name = lower_name",
    "id IS NOT DISTINCT FROM id",
    "name LIKE '%'",
    "name ILIKE '%%'",
    "id OPERATOR(pg_catalog.=) id",
    "1::int = 1::integer",
]

REAL_CONDITION = [
    "id = 5",
    "1 = 2",
    "1 = 1 AND id = 5",
    "false",
    "NOT true",
    "'b' > 'a'",  # depends on the collation
    "NULL = NULL",
    "NULL",
    "1 IN (2, 3)",
    "5 BETWEEN 1 AND 3",
    "id = id + 0",
    "random() = random()",
    "lower(name) = lower(name)",  # a function could return a different value each time
    "id = $1",
    "(SELECT true)",
    "EXISTS (SELECT 1 FROM u WHERE u.id = 3)",
    "name LIKE 'a%'",
    "id IS DISTINCT FROM id",
    "'maybe'::boolean",
    "id < id",
    "CURRENT OF c",
    "1 OPERATOR(myschema.=) 1",
    "x IS NULL OR x IS NOT NULL",  # true, but not proved here
]


@pytest.mark.parametrize("where", EVERY_ROW)
def test_where_keeps_every_row(where: str) -> None:
    assert "delete_without_where" in classify(f"DELETE FROM t WHERE {where}").classes
    assert "update_without_where" in classify(f"UPDATE t SET a = 1 WHERE {where}").classes


@pytest.mark.parametrize("where", REAL_CONDITION)
def test_where_is_a_real_condition(where: str) -> None:
    result = classify(f"DELETE FROM t WHERE {where}")
    assert result.parse_error is None
    assert "delete_without_where" not in result.classes


def test_no_where_at_all() -> None:
    assert keeps_every_row(None)


def test_markers_only_where_the_statement_runs() -> None:
    assert classify("EXPLAIN DELETE FROM t").classes == {"explain"}
    assert classify("CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM u").classes == {"ddl"}
    assert "delete_without_where" in classify("PREPARE p AS DELETE FROM t").classes
