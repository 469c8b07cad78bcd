"""Issue 19: an export whose masked recording the ledger writer cannot keep up with waits
for the writer alone; the appliance's other sessions go on meanwhile.

The proxy hands every result chunk to the ledger writer process over one channel. When the
writer (masking every row) falls behind, the channel fills; the proxy used to block its
whole event loop in ``send`` until the writer caught up, so every other session stalled
for as long as the export ran. Now the export's session stops reading its server until the
channel drains, and the others are served in between: here, a run of short sessions, each a
real ``psql -c 'SELECT 1'`` with its own connection and authentication, all complete while
one export of a table of masked-looking rows is still running (an order, not a time)."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from tests.lab.lab import Lab, PgServer
from tests.lab.proxy import TargetSpec, job_env, running_appliance, statements

PORT = 6491
ROWS = 150_000  # ~24 MB as COPY text: seconds of the writer's masking
SESSIONS = 10


def test_other_sessions_run_while_an_export_waits_for_the_ledger_writer(
    lab: Lab, pg: PgServer, tmp_path: Path
) -> None:
    pg.admin_sql(
        "DROP TABLE IF EXISTS bp_export;"
        " CREATE TABLE bp_export AS SELECT g AS id, 'customer' || g || '@example.com' AS email,"
        " 'called (555) 010-' || lpad((g % 10000)::text, 4, '0') || ' about order ' || g"
        " || ' on 2024-05-01 10:05:06+00, card 4111 1111 1111 1111' AS note,"
        " now() AS at FROM generate_series(1, "
        f"{ROWS}) g; ALTER TABLE bp_export OWNER TO app;",
        database="app",
    )
    env = job_env(PORT, "app")
    with running_appliance(
        lab,
        pg,
        tmp_path,
        targets=[TargetSpec("db", PORT, accounts=[("app", "app")])],
        policy={"rules": [{"name": "default", "action": "allow"}]},
        ledger_options={"max_result_bytes": 256 * 1024 * 1024},
    ) as app:
        export = lab.popen(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", "COPY bp_export TO STDOUT"],
            job=True,
            env={**env, "PGAPPNAME": "bp-export"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert export.stdout is not None
        try:
            assert export.stdout.readline().startswith(b"1\t")  # the export is under way
            received = [0]

            def drain() -> None:
                assert export.stdout is not None
                while chunk := export.stdout.read(1 << 16):
                    received[0] += len(chunk)

            reading = threading.Thread(target=drain, daemon=True)
            reading.start()
            for n in range(SESSIONS):
                r = lab.job(
                    ["psql", "-X", "-A", "-t", "-c", f"SELECT {n}"],
                    env={**env, "PGAPPNAME": f"bp-other-{n}"},
                    timeout=120,
                )
                assert r.returncode == 0 and r.stdout.strip() == str(n), r.stderr
            # Every short session is done, and the export is not: it waits for the writer.
            assert export.poll() is None
            assert export.wait(timeout=600) == 0
            reading.join(timeout=60)
        finally:
            if export.poll() is None:
                export.kill()
                export.wait()
        assert received[0] > 15_000_000
        # Nothing was dropped: the export and every other session are in the ledger.
        copy = app.session_by_app("bp-export", timeout=300)
        assert statements(copy) == ["COPY bp_export TO STDOUT"]
        for n in range(SESSIONS):
            assert statements(app.session_by_app(f"bp-other-{n}", timeout=60)) == [f"SELECT {n}"]
        verified = app.verify()
        assert verified.returncode == 0, verified.stdout + verified.stderr
