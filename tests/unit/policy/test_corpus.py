"""The SQL corpus (tests/data/policy/sql_corpus.yaml) and real traffic captured from psql and
pgbench (tests/data/policy/regenerate.py) are classified right."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from appliance.policy import CLASSES, classify
from appliance.policy._vocabulary import SSH_CLASSES

from .helpers import DATA

CORPUS: list[dict[str, Any]] = yaml.safe_load((DATA / "sql_corpus.yaml").read_text())
PSQL: list[dict[str, str]] = yaml.safe_load((DATA / "psql_queries.yaml").read_text())
PGBENCH: list[dict[str, str]] = yaml.safe_load((DATA / "pgbench_statements.yaml").read_text())


def test_corpus_is_sound() -> None:
    assert len(CORPUS) >= 60
    names = [case["name"] for case in CORPUS]
    assert len(names) == len(set(names))
    used = {c for case in CORPUS for c in case["classes"]}
    assert used <= set(CLASSES)
    # Every SQL class of the vocabulary is exercised by at least one case (SSH's are by
    # tests/unit/policy/test_ssh.py).
    assert set(CLASSES) - SSH_CLASSES - used == set()


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_corpus_case(case: dict[str, Any]) -> None:
    result = classify(case["sql"])
    assert result.classes == frozenset(case["classes"]), result.to_record()
    for key in ("reads", "writes", "functions"):
        if key in case:
            assert getattr(result, key) == frozenset(case[key]), key
    if "statements" in case:
        assert len(result.statements) == case["statements"]
    assert (result.parse_error is not None) == case.get("parse_error", False)
    assert result.classes == frozenset().union(*(s.classes for s in result.statements))


@pytest.mark.parametrize("query", PSQL, ids=[f"{q['command']}#{i}" for i, q in enumerate(PSQL)])
def test_psql_meta_command_queries_are_plain_catalog_reads(query: dict[str, str]) -> None:
    result = classify(query["sql"])
    assert result.parse_error is None
    assert result.classes == {"select"}, result.to_record()
    assert result.writes == frozenset()
    assert result.reads, "a catalog query reads catalogs"
    assert all(r.startswith(("pg_catalog.", "information_schema.")) for r in result.reads), (
        result.reads
    )


# What each pgbench statement is, by how it starts (pgbench's own spelling, both cases).
_PGBENCH_KINDS = (
    ("drop table", {"drop"}),
    ("create table", {"ddl"}),
    ("truncate", {"truncate"}),
    ("insert into", {"insert"}),
    ("copy ", {"copy_from"}),
    ("vacuum", {"maintenance"}),
    ("alter table", {"alter"}),
    ("select", {"select"}),
    ("update", {"update"}),
    ("begin", {"transaction"}),
    ("commit", {"transaction"}),
    ("end", {"transaction"}),
)


@pytest.mark.parametrize("sql", [s["sql"] for s in PGBENCH])
def test_pgbench_statements(sql: str) -> None:
    expected = next(kind for prefix, kind in _PGBENCH_KINDS if sql.lower().startswith(prefix))
    result = classify(sql)
    assert result.classes == expected, result.to_record()
    if sql.startswith("UPDATE"):  # the TPC-B-like UPDATE ... SET x = x + n WHERE id = n
        assert result.writes == {sql.split()[1]}


def test_pgbench_capture_covers_the_builtin_scripts() -> None:
    sqls = [s["sql"] for s in PGBENCH]
    assert any(s.startswith("UPDATE pgbench_accounts") for s in sqls)
    assert any(s.startswith("SELECT abalance") for s in sqls)
    assert any(s.startswith("INSERT INTO pgbench_history") for s in sqls)
    assert any(s.startswith("copy pgbench_accounts from stdin") for s in sqls)
    assert any("generate_series" in s for s in sqls)  # -I G, server-side generation
