"""Real clients through a real appliance (issue 4): psql, pgbench, pg_dump, psycopg 3 and
asyncpg as the job, each compared with the same client talking to PostgreSQL directly, and
every statement found in the ledger, in order, in its session.

One appliance serves the whole module (``tests/lab/proxy.py``): target ``db`` without
upstream TLS, with one account per authentication method of the lab server (``ci``: SCRAM,
``md5``, ``plain``: cleartext); the job picks the account by the user name it claims and
never has a password.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.lab.lab import Lab, PgServer
from tests.lab.proxy import (
    Appliance,
    TargetSpec,
    dsn,
    job_env,
    responses,
    running_appliance,
    statements,
)

PORT = 6432


@pytest.fixture(scope="module")
def appliance(
    lab: Lab, pg: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Appliance]:
    policy = {
        "rules": [
            {"name": "no-shell", "match": {"classes": ["copy_program"]}, "action": "deny"},
            {"name": "unknown", "match": {"classes": ["unknown"]}, "action": "allow"},
            {"name": "default", "action": "allow"},
        ]
    }
    with running_appliance(
        lab,
        pg,
        tmp_path_factory.mktemp("clients"),
        targets=[TargetSpec("db", PORT)],
        policy=policy,
    ) as app:
        yield app


def direct_env(pg: PgServer, role: str = "app") -> dict[str, str]:
    return {
        "PGHOST": pg.ipv4,
        "PGPORT": str(pg.port),
        "PGUSER": role,
        "PGDATABASE": "app",
        "PGPASSWORD": pg.passwords[role],
        "PGSSLMODE": "disable",
        "PGGSSENCMODE": "disable",
    }


# -- psql --------------------------------------------------------------------------------------

PSQL_SCRIPT = r"""
create schema psqlt;
set search_path = psqlt;
create table items (id int primary key, name text not null, price numeric(10,2), tags text[], created date);
create index items_name on items (name);
\copy items from stdin
1	apple	1.50	{red,green}	2024-01-01
2	pear	2.25	{}	2024-02-29
\.
\copy items to stdout with (format csv, header)
\d items
\dt
\di
begin;
insert into items values (3, 'plum', 3.00, null, null);
select * from items order by id;
select 1/0;
select 'not run';
rollback;
select count(*) from items;
begin;
savepoint a;
insert into items values (1, 'dup', 0, null, null);
rollback to savepoint a;
insert into items values (4, 'fig', 4.00, '{x}', '2024-03-01');
commit;
\echo sqlstate :LAST_ERROR_SQLSTATE
\x on
select * from items where id = 4;
\x off
\copy items (id, name) from stdin with (format csv)
5,"quoted, comma"
6,"line
break"
\.
select id, name from items where id >= 5 order by id;
do $$ begin raise notice 'note %', 42; end $$;
select 1 as a \; select 2 as b \; select 3 as c;
prepare q(int) as select name from items where id = $1;
execute q(2);
deallocate q;
select name from items where id = 1 \gset
\echo got :name
\df
listen chan;
notify chan, 'hello';
"""


def run_psql(lab: Lab, env: dict[str, str], script: str) -> subprocess.CompletedProcess[str]:
    return lab.job(["psql", "-X", "-v", "ON_ERROR_STOP=0", "-f", "-"], input=script, env=env)


def test_psql_script_output_is_identical_through_the_appliance(
    lab: Lab, pg: PgServer, appliance: Appliance
) -> None:
    direct = run_psql(lab, direct_env(pg), PSQL_SCRIPT)
    pg.admin_sql("drop schema psqlt cascade", database="app")
    proxied = run_psql(lab, job_env(PORT, PGAPPNAME="psql-script"), PSQL_SCRIPT)
    # The notification line names the server process: it differs between any two runs.
    pid = re.compile(r"server process with PID \d+")
    assert pid.sub("PID", proxied.stdout) == pid.sub("PID", direct.stdout)
    assert proxied.stderr == direct.stderr
    assert proxied.returncode == direct.returncode == 0
    assert "ERROR:  division by zero" in proxied.stderr
    assert "current transaction is aborted" in proxied.stderr
    assert "duplicate key value violates unique constraint" in proxied.stderr
    assert "quoted, comma" in proxied.stdout

    session = appliance.session_by_app("psql-script")
    texts = statements(session)
    # psql sends each line (up to its semicolon) as one Query, and \copy as COPY ... STDIN.
    assert texts[0] == "create schema psqlt;"
    assert "select 1/0;" in texts
    assert texts.index("select 1/0;") < texts.index("select 'not run';")
    assert any(t.startswith("COPY  items FROM STDIN") or "from stdin" in t.lower() for t in texts)
    by_n = responses(session)
    outcome = {e["data"]["text"]: by_n[e["data"]["n"]] for e in session if e["type"] == "statement"}
    assert outcome["select 1/0;"]["outcome"] == "error"
    assert outcome["select 1/0;"]["error"]["code"] == "22012"
    assert outcome["select 'not run';"]["error"]["code"] == "25P02"
    assert outcome["select count(*) from items;"]["rows"] == 1
    ns = [e["data"]["n"] for e in session if e["type"] == "statement"]
    assert ns == sorted(ns) == list(range(1, len(ns) + 1))
    assert session[-1]["type"] == "session.end"
    assert session[-1]["data"]["reason"] == "job terminated the session"
    assert session[-1]["data"]["statements"] == len(ns)


# -- pgbench -----------------------------------------------------------------------------------


def test_pgbench_init_and_runs_in_every_query_mode(lab: Lab, appliance: Appliance) -> None:
    init = lab.job(
        ["pgbench", "-i", "-s", "1", "-q"], env=job_env(PORT, PGAPPNAME="pgbench-init"), timeout=120
    )
    assert init.returncode == 0, init.stderr
    assert "done in" in init.stderr
    for mode in ("simple", "extended", "prepared"):
        r = lab.job(
            ["pgbench", "-n", "-c", "4", "-j", "2", "-t", "50", "-M", mode],
            env=job_env(PORT, PGAPPNAME=f"pgbench-{mode}"),
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert "number of transactions actually processed: 200/200" in r.stdout
        assert "number of failed transactions: 0" in r.stdout
    # pgbench opens one more connection first (it reads the scale from pgbench_branches).
    entries = appliance.wait_for(
        lambda es: (
            sum(
                1
                for e in es
                if e["type"] == "session.end"
                and e["session"] in _sessions_named(es, "pgbench-prepared")
            )
            == 5
        )
    )
    for mode in ("simple", "extended", "prepared"):
        sessions = _sessions_named(entries, f"pgbench-{mode}")
        assert len(sessions) == 5
        per_session = {
            sid: [e["data"] for e in entries if e["session"] == sid and e["type"] == "statement"]
            for sid in sessions
        }
        workers = {sid: s for sid, s in per_session.items() if len(s) > 10}
        # tpcb-like: BEGIN, 3 UPDATEs, SELECT, INSERT, END per transaction, 50 per client.
        assert sorted(len(s) for s in workers.values()) == [350] * 4, mode
        for sid, stmts in workers.items():
            assert {s["protocol"] for s in stmts} == {"simple" if mode == "simple" else "extended"}
            assert [s["n"] for s in stmts] == list(range(1, 351))
            texts = [s["text"] for s in stmts]
            assert texts[:7:6] == ["BEGIN;", "END;"]
            assert sum(t.startswith("UPDATE pgbench_accounts") for t in texts) == 50
            outcomes = [
                e["data"]["outcome"]
                for e in entries
                if e["session"] == sid and e["type"] == "response"
            ]
            assert outcomes == ["ok"] * 350
            if mode == "prepared":
                assert {s.get("prepared") for s in stmts} == {f"P_{i}" for i in range(7)}


def _sessions_named(entries: list[dict[str, Any]], app: str) -> set[str]:
    return {
        e["session"]
        for e in entries
        if e["type"] == "session.start" and e["data"].get("application_name") == app
    }


# -- pg_dump -----------------------------------------------------------------------------------

TYPES_SCHEMA = r"""
create schema dumpt;
set search_path = dumpt;
create type mood as enum ('sad', 'ok', 'happy');
create type pair as (a int, b text);
create domain posint as int check (value > 0);
create sequence counter start 100;
create table everything (
  id serial primary key,
  i2 smallint, i4 int, i8 bigint, num numeric(20,6), r real, d double precision,
  money money, t text, vc varchar(20), ch char(5), by bytea, b bool,
  dt date, tm time, tmz timetz, ts timestamp, tsz timestamptz, iv interval,
  u uuid, j json, jb jsonb, x xml, ip inet, net cidr, mac macaddr,
  pt point, bx box, ci circle, poly polygon, ln line, ls lseg, path path,
  bits bit(4), vbits varbit(8), arr int[], tarr text[][], rng int4range, trng tstzrange,
  tsv tsvector, tsq tsquery, m mood, p pair, pi posint, oid_ oid, nm name
);
insert into everything (i2, i4, i8, num, r, d, money, t, vc, ch, by, b, dt, tm, tmz, ts, tsz, iv,
  u, j, jb, x, ip, net, mac, pt, bx, ci, poly, ln, ls, path, bits, vbits, arr, tarr, rng, trng,
  tsv, tsq, m, p, pi, oid_, nm)
select g, g * 1000, g * 1000000000000, g / 7.0, g / 3.0, g / 9.0, (g * 1.25)::numeric::money,
  'text ' || g || E'\ttab\nnewline\\backslash', 'vc' || g, 'c' || g, decode('00ff' || lpad(to_hex(g), 2, '0'), 'hex'),
  g % 2 = 0, date '2024-01-01' + g, time '12:34:56.789', timetz '12:34:56+02',
  timestamp '2024-02-29 23:59:59.999999', timestamptz '2024-03-31 01:30:00+00', interval '1 day 2 hours' * g,
  md5(g::text)::uuid, json_build_object('g', g, 'a', array[1,2]), jsonb_build_object('k', g, 'n', null),
  xmlparse(content '<a>' || g || '</a>'), ('10.0.0.' || g)::inet, ('10.' || g || '.0.0/16')::cidr, ('08:00:2b:01:02:0' || g)::macaddr,
  point(g, -g), box(point(0,0), point(g,g)), circle(point(g,g), g), polygon '((0,0),(1,1),(1,0))',
  line '{1,-1,0}', lseg '[(0,0),(1,1)]', path '[(0,0),(1,1),(2,0)]', B'1010', B'101', array[g, g+1, null],
  array[['a','b'],['c', 'd"q']], int4range(g, g + 10), tstzrange('2024-01-01', '2024-02-01'),
  to_tsvector('english', 'the quick brown fox ' || g), to_tsquery('fox & quick'),
  (array['sad','ok','happy'])[1 + g % 3]::mood, row(g, 'p' || g)::pair, g, g, 'name' || g
from generate_series(1, 9) g;
insert into everything (t, num, d, r) values (null, 'NaN', 'Infinity', '-Infinity');
create view pos as select id, t from everything where i4 > 2000;
create materialized view mv as select count(*) as n from everything;
create function twice(x int) returns int language sql immutable as 'select 2 * x';
create index on everything using gin (tsv);
comment on table everything is 'every type: ''quoted''';
"""


def test_pg_dump_through_the_appliance_equals_a_direct_dump(
    lab: Lab, pg: PgServer, appliance: Appliance
) -> None:
    r = lab.job(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-q", "-f", "-"], input=TYPES_SCHEMA,
                env=direct_env(pg))  # fmt: skip
    assert r.returncode == 0, r.stderr
    for fmt in ("p", "c"):
        args = ["pg_dump", "--schema=dumpt", f"-F{fmt}"]
        direct = lab.popen(args, job=True, env=direct_env(pg), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)  # fmt: skip
        d_out, d_err = direct.communicate(timeout=60)
        proxied = lab.popen(args, job=True, env=job_env(PORT, PGAPPNAME=f"pg_dump-{fmt}"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        p_out, p_err = proxied.communicate(timeout=60)
        assert direct.returncode == 0, d_err
        assert proxied.returncode == 0, p_err
        if fmt == "c":
            # The custom format carries the dump's start time; compare the restored SQL.
            d_out, p_out = _restore(lab, d_out), _restore(lab, p_out)
        assert len(d_out) > 5000
        assert _unrestrict(p_out) == _unrestrict(d_out)
    session = appliance.session_by_app("pg_dump-p")
    copies = [t for t in statements(session) if t.startswith("COPY dumpt.everything")]
    assert len(copies) == 1
    assert session[-1]["data"]["reason"] == "job terminated the session"


def _unrestrict(dump: bytes) -> bytes:
    """The dump without its \\restrict/\\unrestrict lines (pg_dump 15.14 on writes a random
    key there, CVE-2025-8714): every other byte must be equal."""
    return re.sub(rb"(?m)^\\(un)?restrict \S+$", b"RESTRICT", dump)


def _restore(lab: Lab, archive: bytes) -> bytes:
    r = lab.popen(["pg_restore", "-f", "-"], job=True, stdin=subprocess.PIPE,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    out, err = r.communicate(archive, timeout=60)
    assert r.returncode == 0, err
    return out


# -- psycopg 3 ---------------------------------------------------------------------------------


def psycopg_workload(conninfo: str) -> list[Any]:
    """Extended protocol, prepared statements, binary, pipeline, COPY, errors, a cursor."""
    out: list[Any] = []
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=0) as conn:
        conn.execute("drop table if exists pyt")
        conn.execute("create table pyt (id int primary key, v text, data bytea, f float8)")
        out.append(conn.execute("select %s::int, %s::text, %s::text", (1, "x", None)).fetchall())
        out.append(
            conn.execute(
                "select %s::bytea, %s::numeric", (b"\x00\xff", 1.5), binary=True
            ).fetchall()
        )
        with conn.pipeline():
            for i in range(20):
                conn.execute(
                    "insert into pyt values (%s, %s, %s, %s)", (i, f"v{i}", bytes([i]), i / 3)
                )
            cur = conn.execute("select count(*), sum(id) from pyt")
        out.append(cur.fetchall())
        with conn.pipeline() as p:
            c1 = conn.execute("select 1")
            c2 = conn.execute("select 1/0")
            try:
                p.sync()
            except psycopg.errors.DivisionByZero as exc:
                out.append(("error", exc.sqlstate))
            out.append(c1.fetchall())
            del c2
        cur = conn.cursor()
        cur.executemany(
            "insert into pyt values (%s, %s, %s, %s)",
            [(100, "a", None, 0.5), (101, None, b"b", None)],
        )
        rows: list[Any] = []
        with cur.copy("copy (select id, v, data from pyt order by id) to stdout") as copy:
            rows.extend(copy.rows())
        out.append(rows)
        with cur.copy("copy pyt (id, v) from stdin") as copy:
            for i in range(200, 300):
                copy.write_row((i, f"copied {i}"))
        with cur.copy(
            "copy (select id, f from pyt where f is not null order by id) to stdout (format binary)"
        ) as copy:
            copy.set_types(["int4", "float8"])
            out.append(list(copy.rows()))
        out.append(conn.execute("select count(*) from pyt").fetchone())
        try:
            conn.execute("insert into pyt values (1, 'dup')")
        except psycopg.errors.UniqueViolation as exc:
            out.append(("error", exc.sqlstate, exc.diag.message_primary))
        with conn.transaction(), conn.cursor(name="named") as named:
            named.execute("select id from pyt order by id")
            out.append(named.fetchmany(3))
            out.append(len(named.fetchall()))
        conn.execute("drop table pyt")
    return out


def test_psycopg_workload_same_result_through_the_appliance(
    lab: Lab, pg: PgServer, appliance: Appliance
) -> None:
    direct = lab.run_in_runner(
        psycopg_workload,
        f"host={pg.ipv4} port={pg.port} user=app dbname=app password={pg.passwords['app']} sslmode=disable",
    )
    proxied = lab.run_in_runner(psycopg_workload, dsn(PORT, application_name="psycopg-work"))
    assert proxied == direct
    session = appliance.session_by_app("psycopg-work")
    texts = statements(session)
    assert texts.count("insert into pyt values ($1, $2, $3, $4)") == 22
    by_n = responses(session)
    stmts = [e["data"] for e in session if e["type"] == "statement"]
    errors = [by_n[s["n"]]["error"]["code"] for s in stmts if by_n[s["n"]]["error"]]
    assert errors == ["22012", "23505"]


# -- asyncpg -----------------------------------------------------------------------------------


async def _asyncpg_workload(kwargs: dict[str, Any]) -> list[Any]:
    import asyncpg

    out: list[Any] = []
    conn = await asyncpg.connect(**kwargs)
    try:
        await conn.execute(
            "drop table if exists apt; create table apt (id int, v text, j jsonb, ts timestamptz,"
            " n numeric, u uuid, a int[])"
        )
        await conn.executemany(
            "insert into apt values ($1, $2, $3, $4, $5, $6, $7)",
            [(i, f"v{i}", f'{{"i": {i}}}', None, i / 4, None, [i, i + 1]) for i in range(50)],
        )
        out.append([tuple(r) for r in await conn.fetch("select $1::int + 1, $2::text", 1, "two")])
        stmt = await conn.prepare("select id, v, j, n, a from apt where id < $1 order by id")
        out.append([tuple(r) for r in await stmt.fetch(5)])
        out.append([tuple(r) for r in await stmt.fetch(3)])
        async with conn.transaction():
            got = [r[0] async for r in conn.cursor("select id from apt order by id", prefetch=7)]
        out.append(got)
        await conn.copy_records_to_table(
            "apt", records=[(1000, "copied", None, None, None, None, None)]
        )
        out.append(await conn.fetchval("select count(*) from apt"))
        try:
            await conn.execute("select 1/0")
        except asyncpg.DivisionByZeroError as exc:
            out.append(("error", exc.sqlstate))
        out.append(await conn.fetchval("select v from apt where id = $1", 1000))
        await conn.execute("drop table apt")
    finally:
        await conn.close()
    return out


def asyncpg_workload(kwargs: dict[str, Any]) -> list[Any]:
    return asyncio.run(_asyncpg_workload(kwargs))


def test_asyncpg_workload_same_result_through_the_appliance(
    lab: Lab, pg: PgServer, appliance: Appliance
) -> None:
    direct = lab.run_in_runner(
        asyncpg_workload,
        {"host": pg.ipv4, "port": pg.port, "user": "app", "database": "app",
         "password": pg.passwords["app"], "ssl": False},
    )  # fmt: skip
    proxied = lab.run_in_runner(
        asyncpg_workload,
        {"host": "127.0.0.1", "port": PORT, "user": "ci", "database": "app", "ssl": False,
         "server_settings": {"application_name": "asyncpg-work"}},
    )  # fmt: skip
    assert proxied == direct
    session = appliance.session_by_app("asyncpg-work")
    texts = statements(session)
    assert texts.count("insert into apt values ($1, $2, $3, $4, $5, $6, $7)") == 50
    assert any(t.upper().startswith("COPY") and "apt" in t and "STDIN" in t.upper() for t in texts)


# -- cancel --------------------------------------------------------------------------------------


def test_psql_cancel_stops_the_running_statement(
    lab: Lab, pg: PgServer, appliance: Appliance
) -> None:
    proc = lab.popen(
        ["psql", "-X", "-c", "select pg_sleep(60) as psql_cancel"],
        job=True,
        env=job_env(PORT, PGAPPNAME="psql-cancel"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _wait_running(pg, "psql_cancel")
    proc.send_signal(2)  # SIGINT: psql sends a CancelRequest
    _, err = proc.communicate(timeout=20)
    assert b"canceling statement due to user request" in err
    session = appliance.session_by_app("psql-cancel")
    (response,) = [e["data"] for e in session if e["type"] == "response"]
    assert response["error"]["code"] == "57014"
    appliance.wait_for(
        lambda entries: any(
            e["type"] == "cancel.requested" and e["data"]["outcome"] == "forwarded" for e in entries
        )
    )


def test_psycopg_cancel_stops_the_running_statement(
    lab: Lab, pg: PgServer, appliance: Appliance
) -> None:
    def body() -> str:
        with psycopg.connect(dsn(PORT, application_name="psycopg-cancel")) as conn:

            def cancel() -> None:
                _wait_running(pg, "psycopg_cancel")
                conn.cancel()

            canceller = threading.Thread(target=cancel)
            canceller.start()
            try:
                conn.execute("select pg_sleep(60) as psycopg_cancel")
            except psycopg.errors.QueryCanceled as exc:
                conn.rollback()
                # The connection is still usable after the cancel.
                assert conn.execute("select 42").fetchone() == (42,)
                return str(exc.sqlstate)
            finally:
                canceller.join(30)
            return "not cancelled"

    assert lab.run_in_runner(body) == "57014"
    session = appliance.session_by_app("psycopg-cancel")
    codes = [
        e["data"]["error"]["code"] if e["data"]["error"] else None
        for e in session
        if e["type"] == "response"
    ]
    assert "57014" in codes


def _wait_running(pg: PgServer, marker: str, timeout: float = 20) -> None:
    """Until the server runs the statement carrying ``marker`` (a cancel sent earlier would
    find nothing to cancel)."""
    deadline = time.monotonic() + timeout
    sql = (
        "select count(*) from pg_stat_activity where state = 'active' "
        f"and query like '%{marker}%' and query not like '%pg_stat_activity%'"
    )
    while pg.admin_sql(sql).strip() != "1":
        assert time.monotonic() < deadline, f"{marker} never ran"
        time.sleep(0.05)


# -- the ledger: every statement, in order, in its session --------------------------------------


def test_every_statement_is_in_the_ledger_in_order_in_its_session(
    lab: Lab, appliance: Appliance
) -> None:
    """Three clients at once, interleaving: each session's statements are exactly what that
    client sent, in order, and no statement is in another session."""
    sent: dict[str, list[str]] = {}

    def client(name: str, pipeline: bool) -> None:
        texts = [f"select {i} as {name}_{i}" for i in range(40)]
        with psycopg.connect(dsn(PORT, application_name=name), autocommit=True) as conn:
            if pipeline:
                with conn.pipeline():
                    for text in texts:
                        conn.execute(text)
            else:
                for text in texts:
                    conn.execute(text)
        sent[name] = texts

    def psql(name: str) -> None:
        texts = [f"select {i} as {name}_{i};" for i in range(40)]
        r = lab.job(["psql", "-X", "-q", "-f", "-"], input="\n".join(texts),
                    env=job_env(PORT, PGAPPNAME=name))  # fmt: skip
        assert r.returncode == 0, r.stderr
        sent[name] = texts

    threads = [
        threading.Thread(target=lambda: lab.run_in_runner(client, "order_plain", False)),
        threading.Thread(target=lambda: lab.run_in_runner(client, "order_pipe", True)),
        threading.Thread(target=psql, args=("order_psql",)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(sent) == ["order_pipe", "order_plain", "order_psql"]
    for name, texts in sent.items():
        session = appliance.session_by_app(name)
        assert len({e["session"] for e in session}) == 1
        assert statements(session) == texts, name
        by_n = responses(session)
        assert [by_n[n]["outcome"] for n in range(1, 41)] == ["ok"] * 40
        assert [by_n[n]["columns"] for n in range(1, 41)] == [[f"{name}_{i}"] for i in range(40)]
