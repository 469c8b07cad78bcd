"""MySQL statements classified (``appliance.policy._mysql``) into the classes and relations
PostgreSQL's classifier gives: the same text reads the same in both grammars; MySQL's own
forms (REPLACE, ON DUPLICATE KEY, multi-table DELETE, executable comments, RENAME TABLE,
LOCK TABLES, HANDLER, LOAD DATA, INTO OUTFILE) get the classes and tables they act on; what
the classifier cannot read is ``unknown``."""

from __future__ import annotations

import pytest

from appliance.policy import classify
from appliance.policy._mysql import classify_mysql

# Text both servers accept: the two classifiers must agree on classes and relations.
SHARED = [
    "SELECT a FROM t JOIN u ON t.id = u.id WHERE t.x = 1",
    "INSERT INTO t (a) VALUES (1)",
    "INSERT INTO t VALUES (1)",
    "INSERT INTO t SELECT * FROM s",
    "CREATE TABLE t2 AS SELECT * FROM t",
    "UPDATE t SET a = (SELECT max(b) FROM s) WHERE id = 2",
    "UPDATE t SET a = 1",
    "DELETE FROM t WHERE id = 1",
    "DELETE FROM t",
    "TRUNCATE TABLE t",
    "DROP TABLE t",
    "CREATE TABLE t (a INT)",
    "CREATE INDEX i ON t (a)",
    "ALTER TABLE t ADD COLUMN c INT",
    "BEGIN",
    "COMMIT",
    "SELECT 1; DROP TABLE t",
]


@pytest.mark.parametrize("text", SHARED)
def test_text_both_servers_read_is_classified_alike(text: str) -> None:
    mysql, pg = classify_mysql(text), classify(text)
    assert (mysql.classes, mysql.reads, mysql.writes) == (pg.classes, pg.reads, pg.writes)


@pytest.mark.parametrize(
    "text",
    ["CALL p(1)", "CALL s.p()", "SELECT my_func(1)", "SELECT s.my_func(1)", "SELECT s.concat(1)"],
)
def test_calls_are_classified_and_named_alike(text: str) -> None:
    """A called routine is a function_call under its name as written (a rule's
    ``functions``), in both grammars: ``s.concat`` is a stored function of s, no built-in."""
    mysql, pg = classify_mysql(text), classify(text)
    assert (mysql.classes, mysql.functions) == (pg.classes, pg.functions)
    assert "function_call" in mysql.classes


# (text, classes, reads, writes): MySQL's own forms.
MYSQL = [
    ("SELECT a FROM `shop`.`orders` o", {"select"}, {"shop.orders"}, set()),
    ("REPLACE INTO t (a) VALUES (1)", {"insert", "delete"}, set(), {"t"}),
    ("REPLACE t SET a = 1", {"insert", "delete"}, set(), {"t"}),
    ("INSERT t SET a = 1", {"insert"}, set(), {"t"}),
    ("INSERT INTO t (a) VALUES (1) ON DUPLICATE KEY UPDATE a = a + 1", {"insert", "update"}, set(), {"t"}),
    ("INSERT INTO db.t (a) SELECT b FROM s", {"insert"}, {"s"}, {"db.t"}),
    ("DELETE t1, t2 FROM t1 JOIN t2 ON t1.id = t2.id WHERE t1.x = 1", {"delete"}, set(), {"t1", "t2"}),
    ("UPDATE t1 JOIN t2 ON t1.id = t2.id SET t1.a = t2.a", {"update", "update_without_where"}, {"t2"}, {"t1"}),
    ("/*!50000 DROP TABLE t */", {"drop"}, set(), {"t"}),
    ("SELECT * FROM t WHERE a = 'x; DROP TABLE y'", {"select"}, {"t"}, set()),
    ("RENAME TABLE a TO b, `db`.`c` TO d", {"alter"}, set(), {"a", "b", "db.c", "d"}),
    ("LOCK TABLES t READ, u AS x WRITE, v LOW_PRIORITY WRITE", {"lock"}, {"t", "u", "v"}, set()),
    ("UNLOCK TABLES", {"lock"}, set(), set()),
    ("HANDLER `s`.`t` READ FIRST", {"select"}, {"s.t"}, set()),
    ("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t", {"copy_from"}, set(), {"t"}),
    ("SELECT * FROM t INTO OUTFILE '/tmp/x'", {"select", "file_access"}, {"t"}, set()),
    ("CREATE TABLE t2 LIKE t", {"ddl"}, {"t"}, {"t2"}),
    ("ALTER TABLE t RENAME TO u", {"alter"}, {"u"}, {"t"}),
    ("DROP DATABASE shop", {"drop"}, set(), {"shop"}),
    ("EXPLAIN DELETE FROM t", {"explain"}, {"t"}, set()),
    ("PREPARE s FROM 'DROP TABLE t'", {"prepare", "drop"}, set(), {"t"}),
    ("SET NAMES utf8mb4", {"set"}, set(), set()),
    ("USE shop", {"set"}, set(), set()),
    ("SAVEPOINT s1", {"transaction"}, set(), set()),
    ("GRANT ALL ON *.* TO 'x'@'%'", {"grant"}, set(), set()),
    ("DO RELEASE_LOCK('x')", {"lock"}, set(), set()),
]  # fmt: skip


@pytest.mark.parametrize(("text", "classes", "reads", "writes"), MYSQL)
def test_mysql_forms_get_their_classes_and_tables(
    text: str, classes: set[str], reads: set[str], writes: set[str]
) -> None:
    c = classify_mysql(text)
    assert (c.classes, c.reads, c.writes) == (classes, reads, writes)


@pytest.mark.parametrize(
    "text",
    [
        "FLUSH PRIVILEGES",
        "CALL refresh_totals(1)",  # its body is not known
        "CREATE PROCEDURE p() BEGIN DELETE FROM t; END",
        "SELECT /*!99999 1; DROP TABLE t; */ 2",
        "PREPARE s FROM @sql",
        "SELECT 'open",
    ],
)
def test_what_the_classifier_cannot_read_is_unknown(text: str) -> None:
    assert "unknown" in classify_mysql(text).classes
