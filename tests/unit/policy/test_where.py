"""WHERE clauses that keep every row (the ``*_without_where`` markers), and ones that do
not: vectors through the real parser."""

from __future__ import annotations

import re

import pytest

from appliance.policy import classify
from appliance.policy._where import keeps_every_row, same_for_every_number

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


# WHERE clauses whose numbers are each compared directly with a column: whether they keep
# every row is the same whatever the numbers (the shape cache of the PostgreSQL hooks).
COLUMN_AGAINST_NUMBER = ["aid = 5", "5 < aid", "aid = 1 AND bid <> 2", "a = -5", "t.a >= 0"]
NUMBERS_DECIDE = [
    "1 = 1",
    "2 > 3",
    "id IN (1, 2)",
    "x + 1 = x + 1",
    "id = 5::int",
    "a = 1 OR 2 > 1",
]
_INTEGER = re.compile(r"(?<![\w.])[0-9]+(?![\w.])")


@pytest.mark.parametrize("where", COLUMN_AGAINST_NUMBER)
def test_numbers_compared_with_a_column_decide_nothing(where: str) -> None:
    assert not classify(f"DELETE FROM t WHERE {where}").numbers_decide
    assert not classify(f"UPDATE t SET a = a + 7 WHERE {where}").numbers_decide


@pytest.mark.parametrize("where", NUMBERS_DECIDE)
def test_numbers_that_may_decide_are_flagged(where: str) -> None:
    assert classify(f"DELETE FROM t WHERE {where}").numbers_decide
    assert classify(f"UPDATE t SET a = 1 WHERE {where}").numbers_decide
    # also nested, and only in the statement that has it
    nested = classify(f"WITH d AS (DELETE FROM t WHERE {where} RETURNING *) SELECT * FROM d")
    assert nested.numbers_decide
    assert not classify(f"SELECT * FROM t WHERE {where}").numbers_decide


@pytest.mark.parametrize("where", EVERY_ROW + REAL_CONDITION + COLUMN_AGAINST_NUMBER)
def test_unflagged_statements_classify_the_same_for_other_numbers(where: str) -> None:
    """The promise ``numbers_decide`` False makes: any other integers, the same classes."""
    text = f"DELETE FROM t WHERE {where}"
    classified = classify(text)
    if classified.numbers_decide:
        return
    for n in ("0", "1", "2", "3", "99", "123456789"):
        assert classify(_INTEGER.sub(n, text)).classes == classified.classes, n


def test_no_where_is_the_same_for_every_number() -> None:
    assert same_for_every_number(None)
