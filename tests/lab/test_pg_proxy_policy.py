"""Policy and masking through a real appliance (issues 6 and 7), with real clients.

- A denial reaches psql, psycopg and asyncpg as SQLSTATE 42501 naming the rule, with the
  decision id in the hint, and has the effect of a server-side error: a transaction block
  is aborted (COMMIT rolls back), a pipeline's implicit transaction is rolled back, and the
  job gets the server's real transaction status; the session goes on. Observe mode lets
  the statement run and records ``enforced: false``.
- No raw card number, SSN or e-mail address of the PII table reaches any byte under the
  ledger directory or the appliance's log, whatever carried it: result rows, COPY OUT, an
  error detail echoing a value, INSERT literals, bind parameters, COPY IN cut mid-value.
- Response masking: off on target ``db``, on for target ``dbm`` (with a column rule on
  ``ssn``), seen from psql and psycopg output; a binary column under a rule (asyncpg asks
  for binary) fails closed with an error naming the column.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.lab.lab import Lab, PgServer
from tests.lab.proxy import (
    Appliance,
    RawClient,
    TargetSpec,
    dsn,
    job_env,
    running_appliance,
)

PLAIN, MASKED, OBSERVE = 6472, 6473, 6474

POLICY = {
    "rules": [
        {
            "name": "no-drop",
            "match": {"classes": ["drop"]},
            "action": "deny",
            "message": "no DROP from CI",
        },
        {"name": "unknown", "match": {"classes": ["unknown"]}, "action": "allow"},
        {"name": "default", "action": "allow"},
    ]
}
MASKING = {
    "columns": [{"target": "dbm", "column": "ssn", "style": "redact", "label": "SSN"}],
    "response": [{"target": "dbm"}],
}

ROWS = [
    (1, "Ada", "4111111111111111", "536-22-1234", "ada@example.com"),
    (2, "Bob", "5500000000000004", "401-32-7788", "bob@example.org"),
]
# Values the tests send themselves (literals, parameters, COPY IN).
LITERAL = (3, "Eve", "4012888888881881", "123-45-6789", "eve@example.net")
PARAMS = (4, "Pam", "6011111111111117", "387-12-3456", "pam@example.com")
COPIED = (5, "Cid", "378282246310005", "212-33-4455", "cid@example.com")
SENSITIVE = [v for r in (*ROWS, LITERAL, PARAMS, COPIED) for v in r[2:]]


@pytest.fixture(scope="module")
def appliance(
    lab: Lab, pg: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Appliance]:
    values = ", ".join(f"({i}, '{n}', '{c}', '{s}', '{e}')" for i, n, c, s, e in ROWS)
    pg.admin_sql(
        "drop table if exists pii, scratch, keep_me;"
        "create table pii (id int primary key, name text, card text unique, ssn text, email text);"
        f"insert into pii values {values};"
        "create table scratch (n int); create table keep_me (n int);"
        "alter table pii owner to app; alter table scratch owner to app;"
        "alter table keep_me owner to app;",
        database="app",
    )
    with running_appliance(
        lab,
        pg,
        tmp_path_factory.mktemp("policy"),
        targets=[TargetSpec("db", PLAIN), TargetSpec("dbm", MASKED)],
        policy=POLICY,
        masking=MASKING,
    ) as app:
        yield app


def denial_entries(session: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in session if e["type"] == "policy.decision"]


# -- denial ------------------------------------------------------------------------------------

PSQL_DENIED = r"""
\set VERBOSITY verbose
begin;
insert into scratch values (1);
drop table keep_me;
\echo after-deny :LAST_ERROR_SQLSTATE
insert into scratch values (2);
commit;
select count(*) as rows from scratch where n in (1, 2);
"""


def test_denial_aborts_the_transaction_in_psql_like_a_server_error(
    lab: Lab, appliance: Appliance
) -> None:
    r = lab.job(
        ["psql", "-X", "-f", "-"], input=PSQL_DENIED, env=job_env(PLAIN, PGAPPNAME="deny-psql")
    )
    assert r.returncode == 0, r.stderr
    assert "ERROR:  42501: statement denied by policy rule 'no-drop': no DROP from CI" in r.stderr
    assert "after-deny 42501" in r.stdout
    # As after any error in a transaction block: the next statement is refused, and COMMIT
    # rolls back: a migration never half-applies because one of its statements was denied.
    assert "25P02: current transaction is aborted" in r.stderr
    assert "ROLLBACK" in r.stdout and " rows \n------\n    0\n" in r.stdout
    # The stand-in the server refused never shows.
    assert "appliance: statement denied" not in r.stdout + r.stderr
    hint = next(line for line in r.stderr.splitlines() if line.startswith("HINT:"))
    session = appliance.session_by_app("deny-psql")
    (decision,) = denial_entries(session)
    assert hint == f"HINT:  appliance decision {decision['decision_id']}; classes: drop"
    assert (decision["action"], decision["rule"], decision["enforced"]) == ("deny", "no-drop", True)
    outcomes = {e["data"]["n"]: e["data"]["outcome"] for e in session if e["type"] == "response"}
    assert sorted(outcomes.values()).count("denied") == 1


def test_denial_reaches_psycopg_in_extended_protocol_with_the_real_status(
    lab: Lab, pg: PgServer, appliance: Appliance
) -> None:
    def body() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with psycopg.connect(dsn(PLAIN, application_name="deny-psycopg")) as conn:
            conn.execute("insert into scratch values (%s)", (3,))
            try:
                conn.execute("drop table keep_me")
            except psycopg.errors.InsufficientPrivilege as exc:
                out["error"] = (exc.sqlstate, exc.diag.message_primary, exc.diag.message_hint)
            out["status"] = conn.info.transaction_status.name
            conn.rollback()
            conn.execute("insert into scratch values (%s)", (4,))
            conn.commit()
            out["after"] = conn.execute("select count(*) from scratch where n in (3, 4)").fetchone()
        return out

    out = lab.run_in_runner(body)
    code, message, hint = out["error"]
    assert code == "42501"
    assert message == "statement denied by policy rule 'no-drop': no DROP from CI"
    assert hint.startswith("appliance decision ")
    assert out["status"] == "INERROR"  # the server's status: the transaction failed
    assert out["after"] == (1,)  # 3 was rolled back with it
    assert "keep_me" in pg.admin_sql("select tablename from pg_tables", database="app")


def test_denial_in_a_pipeline_rolls_back_its_implicit_transaction(
    lab: Lab, pg: PgServer, appliance: Appliance
) -> None:
    """Extended protocol, no BEGIN: everything up to Sync is one implicit transaction. An
    insert pipelined before a denied statement must not commit (it would not, had the
    server refused the statement), and the next batch runs normally."""
    from appliance.protocols.postgres.messages import Bind, Execute, Parse, Sync

    def batch(*sqls: str) -> bytes:
        return b"".join(
            Parse("", sql, ()).encode()
            + Bind("", "", (), (), ()).encode()
            + Execute("", 0).encode()
            for sql in sqls
        )

    client = RawClient(lab, PLAIN, "ci", application_name="deny-pipeline")
    try:
        client.startup()
        client.send(batch("insert into scratch values (7)", "drop table keep_me") + Sync().encode())
        first = client._until_ready()
        client.send(batch("insert into scratch values (8)") + Sync().encode())
        second = client._until_ready()
    finally:
        client.close()
    assert b"C\x00\x00\x00\x0fINSERT 0 1\x00" in first  # the server ran the insert...
    assert b"42501" in first and b"no DROP from CI" in first
    assert b"42601" not in first and b"appliance: statement denied" not in first
    assert first.endswith(b"Z\x00\x00\x00\x05I")
    assert b"INSERT 0 1" in second
    # ...and rolled it back with the denied statement's batch.
    counts = pg.admin_sql("select n from scratch where n in (7, 8) order by n", database="app")
    assert "8" in counts and "7" not in counts
    session = appliance.session_by_app("deny-pipeline")
    outcomes = sorted(
        (e["data"]["n"], e["data"]["outcome"]) for e in session if e["type"] == "response"
    )
    # The insert's response says what the server said (INSERT 0 1) before the rollback.
    assert outcomes == [(1, "ok"), (2, "denied"), (3, "ok")]


def test_denial_reaches_asyncpg(lab: Lab, appliance: Appliance) -> None:
    async def main() -> tuple[str, str, int]:
        import asyncpg

        conn = await asyncpg.connect(
            host="127.0.0.1", port=PLAIN, user="ci", database="app", ssl=False,
            server_settings={"application_name": "deny-asyncpg"},
        )  # fmt: skip
        try:
            try:
                await conn.fetch("drop table keep_me")
            except asyncpg.InsufficientPrivilegeError as exc:
                caught = (exc.sqlstate, str(exc))
            after = await conn.fetchval("select 42")
        finally:
            await conn.close()
        return caught[0], caught[1], after

    code, message, after = lab.run_in_runner(lambda: asyncio.run(main()))
    assert (code, after) == ("42501", 42)
    assert "no-drop" in message


def test_observe_mode_lets_the_statement_run_and_says_so(
    lab: Lab, pg: PgServer, tmp_path: Path
) -> None:
    pg.admin_sql(
        "create table observe_me (n int); alter table observe_me owner to app", database="app"
    )
    with running_appliance(
        lab, pg, tmp_path / "observe", targets=[TargetSpec("db", OBSERVE)],
        policy={**POLICY, "mode": "observe"},
    ) as app:  # fmt: skip
        r = lab.job(["psql", "-X", "-c", "drop table observe_me"],
                    env=job_env(OBSERVE, PGAPPNAME="observe"))  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "DROP TABLE" in r.stdout
        session = app.session_by_app("observe")
        (decision,) = denial_entries(session)
        assert (decision["action"], decision["enforced"]) == ("deny", False)
        (start,) = [e["data"] for e in session if e["type"] == "session.start"]
        assert start["policy_mode"] == "observe"
        (response,) = [e["data"] for e in session if e["type"] == "response"]
        assert response["outcome"] == "ok"
        (started,) = [e["data"] for e in app.entries() if e["type"] == "appliance.start"]
        assert "OBSERVE: nothing is blocked" in started["warning"]
        assert start["policy"]["warning"] == started["warning"]
    assert "observe_me" not in pg.admin_sql("select tablename from pg_tables", database="app")


# -- nothing unmasked reaches disk ---------------------------------------------------------------

PSQL_PII = f"""
select * from pii order by id;
\\copy pii to stdout
copy (select * from pii order by id) to stdout with (format csv);
insert into pii values {LITERAL!r};
insert into pii values (9, 'Dup', '{ROWS[0][2]}', null, null);
select id from pii where email = '{ROWS[1][4]}' or ssn = '{ROWS[1][3]}';
"""


def test_no_raw_pii_value_reaches_the_ledger_or_the_log(lab: Lab, appliance: Appliance) -> None:
    r = lab.job(["psql", "-X", "-f", "-"], input=PSQL_PII, env=job_env(PLAIN, PGAPPNAME="pii-psql"))
    assert r.returncode == 0, r.stderr
    # Responses are not masked for target db: the job saw the values, so they flowed.
    assert ROWS[0][2] in r.stdout and ROWS[1][3] in r.stdout
    assert f"Key (card)=({ROWS[0][2]}) already exists." in r.stderr

    def params() -> None:
        with psycopg.connect(dsn(PLAIN, application_name="pii-psycopg"), autocommit=True) as conn:
            conn.execute("insert into pii values (%s, %s, %s, %s, %s)", PARAMS)
            conn.execute("select * from pii where card = %s or ssn = %s", (ROWS[0][2], ROWS[1][3]))
            conn.execute("select %s::text, %s::text", (PARAMS[4], LITERAL[2]), binary=True)

    lab.run_in_runner(params)
    copy = RawClient(lab, PLAIN, "ci", application_name="pii-copy")
    try:
        copy.startup()
        line = "\t".join(str(v) for v in COPIED).encode() + b"\n"
        cut = line.index(COPIED[2].encode()) + 6  # inside the card number
        answer = copy.copy_in("copy pii from stdin", [line[:cut], line[cut:]])
        assert b"COPY 1" in answer
    finally:
        copy.close()

    async def binary() -> None:
        import asyncpg

        conn = await asyncpg.connect(
            host="127.0.0.1", port=PLAIN, user="ci", database="app", ssl=False,
            server_settings={"application_name": "pii-asyncpg"},
        )  # fmt: skip
        try:
            assert len(await conn.fetch("select * from pii")) == 5
        finally:
            await conn.close()

    lab.run_in_runner(lambda: asyncio.run(binary()))
    for app in ("pii-psql", "pii-psycopg", "pii-copy", "pii-asyncpg"):
        appliance.session_by_app(app)
    entries = appliance.entries()
    assert any(e["type"] == "masking.applied" for e in entries)
    for value in SENSITIVE:
        assert appliance.files_containing(value.encode()) == [], value
    r = appliance.verify()
    assert r.returncode == 0, r.stdout + r.stderr


# -- response masking ----------------------------------------------------------------------------


def test_response_masking_on_and_off_from_psql(lab: Lab, appliance: Appliance) -> None:
    sql = "select name, card, ssn, email from pii where id = 1"
    plain = lab.job(["psql", "-X", "-A", "-t", "-c", sql], env=job_env(PLAIN))
    masked = lab.job(["psql", "-X", "-A", "-t", "-c", sql], env=job_env(MASKED))
    assert plain.stdout.strip() == "Ada|4111111111111111|536-22-1234|ada@example.com"
    assert masked.stdout.strip() == "Ada|[REDACTED:CARD]|[REDACTED:SSN]|[REDACTED:EMAIL]"
    copied = lab.job(["psql", "-X", "-c", r"\copy (select * from pii where id = 2) to stdout"],
                     env=job_env(MASKED))  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    # COPY names no columns: the rule on ssn may be about any of them, so every field is
    # masked by it (fail closed); the detectors would have caught the values anyway.
    assert copied.stdout == "\t".join(["[REDACTED:SSN]"] * 5) + "\n"


def test_response_masking_on_and_off_from_psycopg(lab: Lab, appliance: Appliance) -> None:
    def fetch(port: int) -> Any:
        with psycopg.connect(dsn(port)) as conn:
            return conn.execute("select card, email from pii where id = %s", (2,)).fetchone()

    assert lab.run_in_runner(fetch, PLAIN) == (ROWS[1][2], ROWS[1][4])
    assert lab.run_in_runner(fetch, MASKED) == ("[REDACTED:CARD]", "[REDACTED:EMAIL]")


def test_a_binary_text_column_under_a_rule_is_masked_for_asyncpg(
    lab: Lab, appliance: Appliance
) -> None:
    """asyncpg asks for binary results: a text column's binary form is its text, so the
    rule's mask is written back, the same value the ledger keeps."""

    async def main() -> list[Any]:
        import asyncpg

        conn = await asyncpg.connect(
            host="127.0.0.1", port=MASKED, user="ci", database="app", ssl=False,
            server_settings={"application_name": "binary-masked"},
        )  # fmt: skip
        try:
            return [
                tuple(r)
                for r in await conn.fetch("select id, ssn from pii where id <= 2 order by id")
            ]
        finally:
            await conn.close()

    rows = lab.run_in_runner(lambda: asyncio.run(main()))
    assert rows == [(1, "[REDACTED:SSN]"), (2, "[REDACTED:SSN]")]
    session = appliance.session_by_app("binary-masked")
    (response,) = [e["data"] for e in session if e["type"] == "response" and e["data"]["rows"]]
    assert appliance.result_rows(response) == [["1", "[REDACTED:SSN]"], ["2", "[REDACTED:SSN]"]]


# -- startup parameters and client encoding ------------------------------------------------------


def test_safe_startup_settings_pass_and_others_refuse_the_session(
    lab: Lab, appliance: Appliance
) -> None:
    ok = lab.job(
        ["psql", "-X", "-At", "-c", "show statement_timeout"],
        env=job_env(PLAIN, PGAPPNAME="opts-ok", PGOPTIONS="-c statement_timeout=5s"),
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "5s"
    refused = {
        "opts-ro": {"PGOPTIONS": "-c default_transaction_read_only=off"},
        "opts-role": {"PGOPTIONS": "-c role=postgres"},
        "opts-sjis": {"PGCLIENTENCODING": "SJIS"},
    }
    for app, extra in refused.items():
        r = lab.job(["psql", "-X", "-c", "select 1"], env=job_env(PLAIN, PGAPPNAME=app, **extra))
        assert r.returncode != 0, (app, r.stdout)
        assert "the appliance refuses startup parameter" in r.stderr, (app, r.stderr)
        end = [e for e in appliance.session_by_app(app) if e["type"] == "session.end"]
        assert end[0]["data"]["reason"].startswith("startup refused"), end
    # A replication connection would stream the database past the statement policy.
    r = lab.job(
        ["psql", "-X", "-c", "IDENTIFY_SYSTEM", "dbname=app replication=database"],
        env=job_env(PLAIN, PGAPPNAME="opts-repl"),
    )
    assert r.returncode != 0 and "replication connections bypass statement policy" in r.stderr


def test_switching_to_another_client_encoding_ends_the_session(
    lab: Lab, pg: PgServer, appliance: Appliance
) -> None:
    """SET client_encoding is denied before it runs (next test); a function that switches
    it where the policy cannot see is caught by the server's own report of the change."""
    pg.admin_sql(
        "create or replace function switch_encoding() returns void language plpgsql as "
        "$$ begin perform set_config('client_encoding', 'SJIS', false); end $$;"
        "grant execute on function switch_encoding() to app",
        database="app",
    )
    r = lab.job(
        ["psql", "-X", "-c", "select switch_encoding()", "-c", "select 1"],
        env=job_env(PLAIN, PGAPPNAME="enc-switch"),
    )
    assert r.returncode != 0
    assert "the appliance refuses client encoding 'SJIS'" in r.stderr, r.stderr
    end = [e for e in appliance.session_by_app("enc-switch") if e["type"] == "session.end"]
    assert "client_encoding changed to SJIS" in end[0]["data"]["reason"]


def test_set_names_to_an_ascii_unsafe_encoding_is_denied_whatever_the_policy(
    lab: Lab, appliance: Appliance
) -> None:
    r = lab.job(
        ["psql", "-X", "-c", "SET NAMES 'SJIS'", "-c", "select 1 as still_here"],
        env=job_env(PLAIN, PGAPPNAME="enc-names"),
    )
    assert "the client encoding may not become" in r.stderr, r.stderr
    assert "still_here" in r.stdout  # denied, the session goes on
    session = appliance.session_by_app("enc-names")
    (decision,) = denial_entries(session)
    assert decision["rule"] == "(built-in) ascii-safe-encoding"


def test_a_statement_pipelined_behind_a_set_cannot_be_read_two_ways(
    lab: Lab, pg: PgServer, appliance: Appliance
) -> None:
    """SET standard_conforming_strings = off and, in the same write, a statement that is
    one SELECT with the setting on (as the policy would read it) but a SELECT and a DROP
    with it off (as the server will read it, once the SET has run)."""
    from appliance.protocols.postgres.messages import Query

    hidden = "SELECT 'a\\' , '; DROP TABLE keep_me; --'"
    client = RawClient(lab, PLAIN, "ci", application_name="scs-race")
    try:
        client.startup()
        client.send(
            Query("SET standard_conforming_strings = off").encode() + Query(hidden).encode()
        )
        first = client._until_ready()
        rest = first[first.index(b"Z\x00\x00\x00\x05") + 6 :]
        second = rest if b"Z\x00\x00\x00\x05" in rest else rest + client._until_ready()
    finally:
        client.close()
    assert b"SET" in first
    assert b"42501" in second and b"settings-in-flight" not in second  # the job's message
    assert b"sent before the server answered a statement that may change" in second
    assert "keep_me" in pg.admin_sql("select tablename from pg_tables", database="app")
    session = appliance.session_by_app("scs-race")
    rules = [d["rule"] for d in denial_entries(session)]
    assert rules == ["(built-in) settings-in-flight"]


def test_denial_inside_a_psycopg_pipeline(lab: Lab, pg: PgServer, appliance: Appliance) -> None:
    """psycopg's pipeline mode: the denial is the error of its own statement, the batch is
    rolled back with it, and the connection carries on."""

    def body() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with psycopg.connect(
            dsn(PLAIN, application_name="deny-psycopg-pipeline"), autocommit=True
        ) as conn:
            try:
                with conn.pipeline():
                    conn.execute("insert into scratch values (%s)", (21,))
                    conn.execute("drop table keep_me")
                    conn.execute("insert into scratch values (%s)", (22,))
            except psycopg.errors.InsufficientPrivilege as exc:
                out["error"] = exc.sqlstate
            out["status"] = conn.info.transaction_status.name
            out["after"] = conn.execute(
                "select count(*) from scratch where n in (21, 22)"
            ).fetchone()
        return out

    out = lab.run_in_runner(body)
    assert out["error"] == "42501"
    assert out["status"] == "IDLE"
    assert out["after"] == (0,)  # 21 rolled back with the batch, 22 never ran
    assert "keep_me" in pg.admin_sql("select tablename from pg_tables", database="app")


def test_a_column_rule_with_a_table_masks_that_table_s_column_only(
    lab: Lab, pg: PgServer, tmp_path: Path
) -> None:
    """{table: people, column: name}: people.name is masked (to the job and in the ledger),
    products.name is not; a computed column named name cannot be placed: masked."""
    pg.admin_sql(
        "drop table if exists people, products;"
        "create table people (name text); create table products (name text);"
        "insert into people values ('Ada Lovelace'); insert into products values ('Widget');"
        "alter table people owner to app; alter table products owner to app",
        database="app",
    )
    masking = {
        "columns": [
            {
                "target": "db",
                "table": "people",
                "column": "name",
                "style": "redact",
                "label": "NAME",
            }
        ],
        "response": [{"target": "db"}],
    }
    with running_appliance(
        lab, pg, tmp_path / "tables", targets=[TargetSpec("db", 6475)], masking=masking
    ) as app:
        sql = (
            "select name from people; select name from products;"
            " select upper(name) as name from products"
        )
        r = lab.job(["psql", "-X", "-At", "-c", sql], env=job_env(6475, PGAPPNAME="tables"))
        assert r.returncode == 0, r.stderr
        assert r.stdout.split("\n")[:3] == ["[REDACTED:NAME]", "Widget", "[REDACTED:NAME]"]
        session = app.session_by_app("tables")
        (ready,) = [e["data"] for e in session if e["type"] == "session.ready"]
        # people and products, and catalog views with a "name" column (pg_settings ...)
        assert "error" not in ready["column_tables"]
        assert ready["column_tables"]["relations"] >= 2
        assert app.files_containing(b"Ada Lovelace") == []
        assert app.files_containing(b"Widget") != []  # recorded as is: no rule for it
        # COPY as pg_dump writes it names schema, table and columns: masked per column.
        copies = {
            "COPY public.people (name) TO STDOUT": "[REDACTED:NAME]",
            "COPY public.products (name) TO STDOUT": "Widget",
            "COPY public.people (name) TO STDOUT (FORMAT csv, HEADER)": "name\n[REDACTED:NAME]",
            # unqualified and no column list: the columns are unknown, fail closed
            "COPY products TO STDOUT": "[REDACTED:NAME]",
        }
        for sql, expected in copies.items():
            r = lab.job(["psql", "-X", "-At", "-c", sql], env=job_env(6475, PGAPPNAME="copies"))
            assert r.returncode == 0, (sql, r.stderr)
            assert r.stdout.strip() == expected, (sql, r.stdout)
        assert app.files_containing(b"Ada Lovelace") == []


def test_non_ascii_text_pipelined_behind_a_function_call_waits_for_its_answer(
    lab: Lab, pg: PgServer, appliance: Appliance
) -> None:
    """A function may switch the client encoding where the policy cannot see; until its
    answer, pipelined text that another encoding would read otherwise (non-ASCII) is
    refused. Once answered, the same text runs."""
    from appliance.protocols.postgres.messages import Query

    pg.admin_sql(
        "create or replace function noop() returns int language sql as 'select 1';"
        "grant execute on function noop() to app",
        database="app",
    )
    client = RawClient(lab, PLAIN, "ci", application_name="fn-race")
    try:
        client.startup()
        client.send(Query("select noop()").encode() + Query("select 'café' as x").encode())
        first = client._until_ready()
        rest = first[first.index(b"Z\x00\x00\x00\x05") + 6 :]
        second = rest if b"Z\x00\x00\x00\x05" in rest else rest + client._until_ready()
        third = client.query("select 'café' as x")
    finally:
        client.close()
    assert b"42501" in second and b"may change how text is read" in second
    assert "café".encode() in third and b"42501" not in third
    session = appliance.session_by_app("fn-race")
    assert [d["rule"] for d in denial_entries(session)] == ["(built-in) settings-in-flight"]


def test_binary_jsonb_numeric_and_oid_are_masked_alike_for_the_job_and_the_ledger(
    lab: Lab, pg: PgServer, tmp_path: Path
) -> None:
    """One decision per value, two renderings: the job (asyncpg in binary, psql in text)
    and the ledger's result blob show the same masked values for jsonb, numeric and oid
    columns under column rules, and for a card inside a jsonb document (a detector)."""
    pg.admin_sql(
        "drop table if exists typed;"
        "create table typed (id int, doc jsonb, amount numeric, ref oid, note jsonb);"
        """insert into typed values (1, '{"pan": "4111111111111111"}', 4111111111111111, 4242,"""
        """ '{"card": "4111111111111111", "n": 1}');"""
        "alter table typed owner to app;",
        database="app",
    )
    masking = {
        "columns": [
            {"target": "db", "table": "typed", "column": c, "style": "redact", "label": c.upper()}
            for c in ("doc", "amount", "ref")
        ],
        "response": [{"target": "db"}],
    }
    sql = "select id, doc, amount, ref, note from typed"
    with running_appliance(
        lab, pg, tmp_path / "typed", targets=[TargetSpec("db", 6476)], masking=masking
    ) as app:

        async def binary() -> list[Any]:
            import asyncpg

            conn = await asyncpg.connect(
                host="127.0.0.1", port=6476, user="ci", database="app", ssl=False,
                server_settings={"application_name": "typed-binary"},
            )  # fmt: skip
            try:
                return list(await conn.fetchrow(sql))
            finally:
                await conn.close()

        from_binary = lab.run_in_runner(lambda: asyncio.run(binary()))
        r = lab.job(["psql", "-X", "-At", "-c", sql], env=job_env(6476, PGAPPNAME="typed-text"))
        assert r.returncode == 0, r.stderr
        from_text = r.stdout.strip().split("|")
        masked_doc = '"[REDACTED:DOC]"'
        masked_note = '{"n": 1, "card": "[REDACTED:CARD]"}'
        assert from_binary == [1, masked_doc, None, None, masked_note]
        assert from_text == ["1", masked_doc, "", "", masked_note]
        for app_name in ("typed-binary", "typed-text"):
            session = app.session_by_app(app_name)
            (response,) = [
                e["data"] for e in session if e["type"] == "response" and e["data"]["rows"]
            ]
            assert app.result_rows(response) == [["1", masked_doc, None, None, masked_note]]
        assert app.files_containing(b"4111111111111111") == []
