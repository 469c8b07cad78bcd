"""PostgreSQL compatibility defects found trying the appliance as a new user would (issue 12),
each with real clients against a real server, compared with the server reached directly.

- A statement after an answered ``SET`` (or ``set_config()``, a function call) runs, even
  with non-ASCII text or a backslash: only statements truly pipelined behind an unanswered
  settings change may be refused.
- Text PostgreSQL's grammar rejects reaches the job as the server would report it (42601,
  the parser's message and position) and aborts a transaction block like a server error;
  it is recorded as that error, never as a policy denial.
- ``DO`` blocks are classified by their PL/pgSQL body: one that inserts runs under a
  default ``allow``, one that drops is denied by the rule against DROP.
- Fast-path function calls (psql's ``\\lo_import``, ``\\lo_unlink``) are classified by the
  function they call, so a rule can allow them by name, and the table of their OIDs
  matches the server's catalog.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from appliance.protocols.postgres.fastpath import FASTPATH_FUNCTIONS
from tests.lab.lab import Lab, PgServer
from tests.lab.proxy import Appliance, TargetSpec, dsn, job_env, responses, running_appliance

PORT = 6480

POLICY = {
    "rules": [
        {"name": "no-drop", "match": {"classes": ["drop"]}, "action": "deny"},
        {
            "name": "large-objects",
            "match": {"functions": ["lo_*", "loread", "lowrite"]},
            "action": "allow",
        },
        {"name": "no-functions", "match": {"classes": ["function_call"]}, "action": "deny"},
        {"name": "default", "action": "allow"},
    ]
}


@pytest.fixture(scope="module")
def appliance(
    lab: Lab, pg: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Appliance]:
    pg.admin_sql(
        "drop table if exists compat, keep_compat;"
        "create table compat (n int, name text); create table keep_compat (n int);"
        "alter table compat owner to app; alter table keep_compat owner to app;",
        database="app",
    )
    with running_appliance(
        lab,
        pg,
        tmp_path_factory.mktemp("compat"),
        targets=[TargetSpec("db", PORT)],
        policy=POLICY,
    ) as app:
        yield app


def _direct(pg: PgServer, script: str) -> tuple[str, str]:
    """psql straight to the server (superuser, unix socket): stdout and stderr."""
    proc = subprocess.run(
        [
            "runuser", "-u", "postgres", "--", "psql", "-X", "-h", str(pg.socket_dir),
            "-p", str(pg.port), "-d", "app", "-f", "-",
        ],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    return proc.stdout, proc.stderr


def _through(lab: Lab, script: str, app_name: str) -> tuple[str, str]:
    r = lab.job(["psql", "-X", "-f", "-"], input=script, env=job_env(PORT, PGAPPNAME=app_name))
    return r.stdout, r.stderr


def _entries(session: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["data"] for e in session if e["type"] == kind]


# -- 1. a statement after an answered SET ------------------------------------------------------


def test_non_ascii_text_after_an_answered_set_runs_in_psql(lab: Lab, appliance: Appliance) -> None:
    r = lab.job(
        [
            "psql", "-X", "-At", "-c", "SET search_path TO public", "-c", "select 'Müller'",
            "-c", "select set_config('application_name', 'set-then-text', false)",
            "-c", "select E'back\\\\slash', 'Ünïcode'",
        ],
        env=job_env(PORT, PGAPPNAME="set-then-text"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["SET", "Müller", "set-then-text", "back\\slash|Ünïcode"]
    session = appliance.session_by_app("set-then-text")
    assert _entries(session, "policy.decision") == []


def test_non_ascii_text_after_an_answered_set_runs_in_psycopg(
    lab: Lab, appliance: Appliance
) -> None:
    def body() -> list[Any]:
        with psycopg.connect(dsn(PORT, application_name="set-psycopg"), autocommit=True) as conn:
            conn.execute("SET search_path TO public")
            first = conn.execute("select 'Müller'").fetchone()
            conn.execute("select set_config('search_path', 'public', false)")
            second = conn.execute("select %s::text || 'ß'", ("Straße",)).fetchone()
            return [first, second]

    assert lab.run_in_runner(body) == [("Müller",), ("Straßeß",)]


# -- 2. syntax errors as the server reports them ------------------------------------------------

SYNTAX = r"""
selec 1;
\echo :LAST_ERROR_SQLSTATE
select 'Müller' froom compat;
\echo :LAST_ERROR_SQLSTATE
select 1; selec 2;
begin;
insert into compat values (1, 'in-tx');
selec 3;
\echo :LAST_ERROR_SQLSTATE
select 1;
\echo :LAST_ERROR_SQLSTATE
commit;
select count(*) from compat where name = 'in-tx';
"""


def test_a_syntax_error_reaches_the_job_as_the_server_reports_it(
    lab: Lab, pg: PgServer, appliance: Appliance
) -> None:
    direct_out, direct_err = _direct(pg, SYNTAX)
    out, err = _through(lab, SYNTAX, "syntax-psql")
    assert direct_out.count("42601") == 3 and "25P02" in direct_out, direct_out
    # The same errors, messages, positions (psql's LINE/caret lines), the same aborted
    # transaction and rollback; psql prints the file's line numbers the same way.
    assert err == direct_err
    assert out == direct_out
    session = appliance.session_by_app("syntax-psql")
    assert _entries(session, "policy.decision") == []  # not denials: errors
    errors = [r for r in responses(session).values() if r["outcome"] == "error"]
    codes = [r["error"]["code"] for r in errors]
    assert codes.count("42601") == 4 and codes.count("25P02") == 1, codes
    stmt = next(s for s in _entries(session, "statement") if s["text"].startswith("selec 1"))
    assert stmt["decision"]["decision"] == "syntax_error"


def test_a_syntax_error_reaches_psycopg_in_the_extended_protocol(
    lab: Lab, appliance: Appliance
) -> None:
    def body() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with psycopg.connect(dsn(PORT, application_name="syntax-psycopg"), autocommit=True) as conn:
            try:
                conn.execute("selec %s", (1,))
            except psycopg.errors.SyntaxError as exc:
                out["code"] = exc.sqlstate
                out["position"] = exc.diag.statement_position
            out["after"] = conn.execute("select 1").fetchone()
        return out

    out = lab.run_in_runner(body)
    assert out == {"code": "42601", "position": "1", "after": (1,)}


# -- DO blocks ------------------------------------------------------------------------------------


def test_do_blocks_are_decided_by_what_their_body_runs(
    lab: Lab, pg: PgServer, appliance: Appliance
) -> None:
    script = r"""
\set VERBOSITY verbose
DO $$ BEGIN INSERT INTO compat VALUES (7, 'from-do'); END $$;
DO $$ BEGIN DROP TABLE keep_compat; END $$;
"""
    out, err = _through(lab, script, "do-blocks")
    assert "DO" in out
    assert "42501: statement denied by policy rule 'no-drop'" in err
    assert "from-do" in pg.admin_sql("select name from compat where n = 7", database="app")
    assert "keep_compat" in pg.admin_sql("select tablename from pg_tables", database="app")
    session = appliance.session_by_app("do-blocks")
    (denial,) = _entries(session, "policy.decision")
    assert denial["rule"] == "no-drop" and "do" in denial["classes"]


# -- 3. fast-path function calls ------------------------------------------------------------------


def test_fastpath_oids_match_the_server_catalog(pg: PgServer) -> None:
    names = ",".join(f"'{n}'" for n in FASTPATH_FUNCTIONS.values())
    rows = pg.admin_sql(
        f"select oid, proname from pg_proc where proname in ({names})"
        " and pronamespace = 'pg_catalog'::regnamespace order by oid"
    )
    catalog = {int(o): n for o, n in (line.split("|") for line in rows.split())}
    assert catalog == FASTPATH_FUNCTIONS


def test_psql_large_objects_pass_by_function_name(lab: Lab, appliance: Appliance) -> None:
    with tempfile.TemporaryDirectory(prefix="appliance-lo-") as where:
        Path(where).chmod(0o755)  # the job (nobody) reads the file it imports
        source = Path(where) / "blob.txt"
        source.write_text("large object payload\n")
        source.chmod(0o644)
        out, err = _through(lab, _LO_SCRIPT.format(source=source), "large-objects")
    assert "lo_import" in out and " length \n--------\n     21\n" in out, (out, err)
    assert "lo_unlink" in out
    # Calls of other functions are still refused by the rule that names their class.
    assert "42501: statement denied by policy rule 'no-functions'" in err
    session = appliance.session_by_app("large-objects")
    calls = [s for s in _entries(session, "statement") if s["protocol"] == "function"]
    names = {s["text"] for s in calls}
    assert "-- fast-path function call: lo_open (oid 952)" in names, names
    assert all(s["decision"]["rule"] == "large-objects" for s in calls)


_LO_SCRIPT = """
\\set VERBOSITY verbose
\\lo_import {source}
\\set oid :LASTOID
select length(lo_get(:oid)) as length;
\\lo_unlink :oid
select pg_sleep(0);
"""
