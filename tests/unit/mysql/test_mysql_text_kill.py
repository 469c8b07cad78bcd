"""MySQL text read as the server reads it (statements split, executable comments opened),
and ``KILL`` mapped through the ids the appliance hands out (``proxy/mysql/kill.py``)."""

from __future__ import annotations

from appliance.policy._mysql_text import split_statements, strip_strings
from appliance.proxy.mysql.kill import ConnectionIds, Kill, KillRoute, parse_kill


def test_statements_are_split_where_the_server_splits_them() -> None:
    split = split_statements("select 'a;b'; /*! drop table t */ ; select 2 -- c;\n")
    assert split.error is None
    assert split.statements[0] == "select 'a;b'"
    assert any("drop table t" in s for s in split.statements)
    assert split_statements("select 'open").error is not None


def test_backslashes_escape_only_when_the_server_says_so() -> None:
    hidden = "select 'a\\'; drop table t; -- '"
    assert len(split_statements(hidden).statements) == 1
    assert len(split_statements(hidden, backslash_escapes=False).statements) > 1


def test_strings_are_stripped_for_keyword_checks() -> None:
    assert "secret" not in strip_strings("select 'secret' from t")


def test_kill_forms() -> None:
    assert parse_kill("KILL QUERY 42") == Kill(True, 42)
    assert parse_kill("kill 7;") == Kill(False, 7)
    assert parse_kill("KILL QUERY ID 9") == Kill(True, 9, True)
    assert parse_kill("KILL USER bob") is True  # another form: refused
    assert parse_kill("select 1") is None


def test_ids_are_issued_unique_and_resolved_until_released() -> None:
    counter = iter(range(1, 100))
    ids = ConnectionIds(lambda n: next(counter).to_bytes(n, "little"))
    route = KillRoute(("10.0.0.5", 3306), 1001, "job-a", "s1")
    first = ids.issue(route)
    second = ids.issue(KillRoute(("10.0.0.5", 3306), 1002, "job-b", "s2"))
    assert first != second and ids.resolve(first) == route and len(ids) == 2
    ids.release(first)
    assert ids.resolve(first) is None and len(ids) == 1
