"""The SQL a DO block's PL/pgSQL body runs, read with PL/pgSQL's own parser."""

from __future__ import annotations

import pytest

from appliance.policy._plpgsql import body_sql


def test_statements_expressions_loops_and_assignments() -> None:
    body = """
    DECLARE n int := (SELECT count(*) FROM a); r record;
    BEGIN
      FOR r IN SELECT * FROM b LOOP PERFORM f(r.id); END LOOP;
      IF n > 0 THEN UPDATE c SET x = 1; END IF;
      n := n + 1;
      r.x = 2;
      RAISE NOTICE '%', n;
      COMMIT;
    END"""
    texts = body_sql(body)
    assert texts is not None
    assert set(texts) >= {
        "SELECT (SELECT count(*) FROM a)",
        "SELECT * FROM b",
        "SELECT f(r.id)",
        "UPDATE c SET x = 1",
        "SELECT n > 0",
        "SELECT n + 1",
        "SELECT 2",
        "SELECT n",
        "COMMIT",
    }


@pytest.mark.parametrize(
    "body",
    [
        "BEGIN EXECUTE 'DROP TABLE t'; END",
        "DECLARE r record; BEGIN FOR r IN EXECUTE 'SELECT 1' LOOP END LOOP; END",
        "DECLARE c refcursor; BEGIN OPEN c FOR EXECUTE 'SELECT 1'; END",
        "BEGIN RETURN QUERY EXECUTE 'SELECT 1'; END",
        "DECLARE a int[]; BEGIN a[1] := 2; END",
        "not a block at all",
    ],
)
def test_what_cannot_be_read_whole_is_none(body: str) -> None:
    assert body_sql(body) is None


def test_a_body_holding_the_wrapper_s_quote_tag_is_read() -> None:
    assert body_sql("BEGIN RAISE NOTICE '$appliance_do$'; DELETE FROM t; END") is not None
