"""Record real PostgreSQL conversations as transcript fixtures (run once, as root).

    .venv/bin/python -m tests.unit.postgres.capture

Starts a throwaway PostgreSQL 15 without TLS (``localpg.LocalPg``), puts a recording relay
on 127.0.0.1 in front of it, runs real clients through the relay (psql, psycopg 3,
asyncpg) and writes one JSON file per conversation to ``data/``: metadata and the byte
chunks in the order they crossed the relay (``c``: client to server, ``s``: server to
client), base64. The unit tests replay them into the state machines, whole and one byte
at a time. Nothing here runs during the tests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from tests.unit.postgres.localpg import PASSWORDS, PG_BIN, LocalPg, free_port

DATA = Path(__file__).parent / "data"

PSQL_SCRIPT = r"""
create table t (id int primary key, name text, card text);
insert into t values (1, 'alice', '4111111111111111'), (2, 'bob', null);
select 1 as one \; select 'two' as two, null::text as three \; select * from t order by id;
do $$ begin raise notice 'hello %', 42; end $$;
select 1/0;
listen chan;
notify chan, 'payload';
copy t to stdout;
copy t (id, name) from stdin;
3	carol
4	dave
\.
begin;
select name from t where id = 1;
rollback;
set application_name = 'changed';
\lo_import /etc/hostname
select lo_unlink(oid) from pg_largeobject_metadata;
select g, repeat('x', 40) as pad, md5(g::text) from generate_series(1, 2000) g;
"""


class Relay:
    """Accepts one connection on 127.0.0.1 and relays it to ``upstream``, recording."""

    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self.chunks: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        client, _ = self._listener.accept()
        server = socket.create_connection(("127.0.0.1", self.upstream_port))
        pumps = [
            threading.Thread(target=self._pump, args=(client, server, "c")),
            threading.Thread(target=self._pump, args=(server, client, "s")),
        ]
        for p in pumps:
            p.start()
        for p in pumps:
            p.join()
        client.close()
        server.close()
        self._listener.close()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with self._lock:
                self.chunks.append((direction, data))
            dst.sendall(data)

    def wait(self) -> list[tuple[str, bytes]]:
        self._thread.join(timeout=60)
        if self._thread.is_alive():
            raise TimeoutError("relay did not finish")
        return self.chunks


def record(name: str, user: str, client: Callable[[int], None], note: str) -> None:
    relay = Relay(PG_PORT)
    client(relay.port)
    chunks = relay.wait()
    doc = {
        "name": name,
        "note": note,
        "user": user,
        "password": PASSWORDS[user],
        "chunks": [[d, base64.b64encode(b).decode("ascii")] for d, b in chunks],
    }
    DATA.mkdir(exist_ok=True)
    (DATA / f"{name}.json").write_text(json.dumps(doc, indent=0) + "\n")
    print(f"{name}: {len(chunks)} chunks, {sum(len(b) for _, b in chunks)} bytes")


def psql(user: str, script: str, *, sslmode: str = "prefer") -> Callable[[int], None]:
    def run(port: int) -> None:
        env = dict(os.environ, PGPASSWORD=PASSWORDS[user], PGGSSENCMODE="disable")
        env["PGSSLMODE"] = sslmode
        subprocess.run(
            [str(PG_BIN / "psql"), "-X", "-h", "127.0.0.1", "-p", str(port), "-U", user,
             "-d", user, "-v", "ON_ERROR_STOP=0", "-f", "-"],
            input=script.encode(), env=env, capture_output=True, timeout=60, check=True,
        )  # fmt: skip

    return run


def psycopg_session(port: int) -> None:
    import psycopg

    dsn = f"host=127.0.0.1 port={port} user=trust_user dbname=trust_user sslmode=disable gssencmode=disable"
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        conn.execute("create table p (id int, data bytea)")
        conn.execute("select %s::int, %s::text, %s::text", (1, "x", None)).fetchall()
        conn.execute("select %s::bytea", (b"\x00\x01\xff",), binary=True).fetchall()
        with conn.pipeline():
            for i in range(5):
                conn.execute("insert into p values (%s, %s)", (i, bytes([i])))
            conn.execute("select id, data from p order by id")
        cur = conn.cursor()
        cur.executemany("insert into p values (%s, %s)", [(10, b"a"), (11, None)])
        with cur.copy("copy p to stdout (format binary)") as copy:
            for _ in copy:
                pass
        with cur.copy("copy p (id) from stdin") as copy:
            copy.write_row((20,))
            copy.write_row((21,))
        try:
            conn.execute("select 1/0 where %s", (True,))
        except psycopg.errors.DivisionByZero:
            pass
        conn.execute("")
        with conn.transaction(), conn.cursor(name="named") as named:
            named.execute("select generate_series(1, 5)")
            named.fetchmany(2)
            named.fetchall()


def asyncpg_session(port: int) -> None:
    import asyncpg

    async def main() -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=port, user="trust_user", database="trust_user", ssl=False
        )
        try:
            await conn.execute("create table a (id int, v text); insert into a values (1, 'one')")
            await conn.fetch("select $1::int + 1, $2::text", 1, "two")
            async with conn.transaction():
                async for _ in conn.cursor("select generate_series(1, 10)", prefetch=3):
                    pass
            await conn.copy_records_to_table("a", records=[(2, "two"), (3, None)])
            stmt = await conn.prepare("select v from a where id = $1")
            await stmt.fetchrow(2)
        finally:
            await conn.close()

    asyncio.run(main())


# Passwords that exercise every branch of PostgreSQL's SASLprep (see saslprep.py).
SASLPREP_CASES = [
    "pencil",
    "\x07bell\x01",  # ASCII control characters: ASCII is used as is
    "I\u00adX",  # soft hyphen: mapped to nothing
    "\u2168",  # ROMAN NUMERAL NINE: NFKC gives "IX"
    "a\u00a0b",  # no-break space: mapped to space
    "x\u200by",  # zero-width space: PostgreSQL maps it to space (C.1.2 before B.1)
    "\u3000x",  # ideographic space
    "\ufb01",  # the fi ligature: NFKC gives "fi"
    "e\u0301",  # combining acute: NFKC composes
    "\u0627\u0031\u0628",  # right-to-left, well formed
    "\u0627\u0031",  # RandALCat first but not last: prohibited, raw password used
    "\u0627a\u0628",  # RandALCat with LCat: prohibited
    "\u00ad",  # empty after mapping: raw password used
    "x\u0221y",  # unassigned in Unicode 3.2
    "x\ue000y",  # private use
    "\U0001f600",  # emoji (unassigned in Unicode 3.2)
    "\u00e9t\u00e9 \u00fc",
]


def record_verifiers(pg: LocalPg) -> None:
    cases = []
    for i, password in enumerate(SASLPREP_CASES):
        pg.sql(
            f"SET password_encryption = 'scram-sha-256'; "
            f"CREATE ROLE saslprep_{i} PASSWORD $pw${password}$pw$"
        )
        verifier = pg.sql(f"select rolpassword from pg_authid where rolname = 'saslprep_{i}'")
        cases.append({"password": password, "verifier": verifier.strip()})
    path = Path(__file__).parents[1] / "credentials" / "data" / "pg15_scram_verifiers.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(cases, indent=1, ensure_ascii=True) + "\n")
    print(f"verifiers: {len(cases)}")


PG_PORT = 0


def main() -> None:
    global PG_PORT
    with LocalPg(tls=False) as pg:
        PG_PORT = pg.port
        record_verifiers(pg)
        record("psql_trust", "trust_user", psql("trust_user", PSQL_SCRIPT),
               "psql 15: SSLRequest refused, simple queries, multi-statement, notice, error, "
               "LISTEN/NOTIFY, COPY out and in, transaction, ParameterStatus, fast-path "
               "FunctionCall (large objects), a 2000-row result")  # fmt: skip
        record("psycopg_trust", "trust_user", psycopg_session,
               "psycopg 3: extended query, prepared statements, binary params and results, "
               "pipeline, executemany, binary COPY out, COPY in, error, empty query, named "
               "cursor")  # fmt: skip
        record("asyncpg_trust", "trust_user", asyncpg_session,
               "asyncpg: multi-statement simple query, Parse/Describe/Bind/Execute, portal "
               "with row limit (PortalSuspended), binary COPY in, prepared statement")  # fmt: skip
        for user in ("scram_user", "md5_user", "clear_user"):
            record(f"psql_{user.split('_')[0]}", user,
                   psql(user, "select current_user;\n", sslmode="disable"),
                   f"psql 15 authenticating as {user}")  # fmt: skip


if __name__ == "__main__":
    main()
