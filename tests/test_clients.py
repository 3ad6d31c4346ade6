"""Real drivers through the proxy give the same results as direct."""

from __future__ import annotations

import re
import subprocess
from decimal import Decimal

import asyncpg
import psycopg
import pytest

from pgproxy.pgcluster import PostgresCluster, find_pg_bin
from tests.harness import ProxyThread

SAMPLE = ("SELECT c.id, c.country, count(o.id) AS n, sum(o.total) AS total "
          "FROM customers c JOIN orders o ON o.customer_id = c.id "
          "WHERE c.id BETWEEN 10 AND 40 GROUP BY c.id, c.country ORDER BY c.id")


def psql(dsn: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(find_pg_bin("psql")), "-X", "-v", "ON_ERROR_STOP=1", dsn, *args],
                          input=stdin, capture_output=True, text=True, timeout=120)


def test_psql_same_output_as_direct(proxy: ProxyThread, direct_dsn: str) -> None:
    through = psql(proxy.dsn(), "-c", SAMPLE)
    direct = psql(direct_dsn, "-c", SAMPLE)
    assert through.returncode == 0, through.stderr
    assert through.stdout == direct.stdout
    assert "(31 rows)" in through.stdout


def test_psql_multi_statement_script_and_error(proxy: ProxyThread) -> None:
    script = ("CREATE TEMP TABLE t (x int);\nINSERT INTO t SELECT generate_series(1, 5);\n"
              "SELECT sum(x) FROM t;\nSELECT 1/0;\n")
    result = psql(proxy.dsn(), "-At", stdin=script)
    assert result.returncode == 3  # psql's code for a script stopped by an error
    assert "15" in result.stdout.split()
    assert "division by zero" in result.stderr


def test_psycopg_server_side_binding_and_types(proxy: ProxyThread, direct_dsn: str) -> None:
    query = "SELECT id, total, status FROM orders WHERE customer_id = %s AND total > %s ORDER BY id"
    with psycopg.connect(proxy.dsn()) as via, psycopg.connect(direct_dsn) as direct:
        got = via.execute(query, (7, Decimal("10.00"))).fetchall()
        want = direct.execute(query, (7, Decimal("10.00"))).fetchall()
        assert got == want and got
        # prepare=True makes psycopg use a named server-side prepared statement.
        for _ in range(3):
            assert via.execute("SELECT %s::int + 1", (41,), prepare=True).fetchone() == (42,)


def test_psycopg_pipeline_mode(proxy: ProxyThread) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE pipe (id int, v text)")
        with conn.pipeline():
            cur = conn.cursor()
            for i in range(200):
                cur.execute("INSERT INTO pipe VALUES (%s, %s)", (i, f"v{i}"))
            counts = conn.execute("SELECT count(*), sum(id) FROM pipe")
        assert counts.fetchone() == (200, sum(range(200)))


def test_psycopg_pipeline_error_recovers(proxy: ProxyThread) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
            conn.execute("SELECT 1")
            conn.execute("SELECT 1/0")
            conn.execute("SELECT 2")
        assert conn.execute("SELECT 'after'").fetchone() == ("after",)


def test_transaction_error_then_rollback(proxy: ProxyThread) -> None:
    with psycopg.connect(proxy.dsn()) as conn:
        conn.execute("CREATE TEMP TABLE tx (x int)")
        conn.commit()
        conn.execute("INSERT INTO tx VALUES (1)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX ON tx (x); INSERT INTO tx VALUES (1)")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM tx").fetchone() == (0,)


async def test_asyncpg_prepared_statements_and_executemany(proxy: ProxyThread, direct_dsn: str) -> None:
    via = await asyncpg.connect(proxy.dsn())
    direct = await asyncpg.connect(direct_dsn)
    try:
        stmt = await via.prepare("SELECT o.id, email, total FROM customers c JOIN orders o "
                                 "ON o.customer_id = c.id WHERE c.id = $1 ORDER BY o.id")
        for cid in (1, 2, 3):
            rows = await stmt.fetch(cid)
            want = await direct.fetch("SELECT o.id, email, total FROM customers c JOIN orders o "
                                      "ON o.customer_id = c.id WHERE c.id = $1 ORDER BY o.id", cid)
            assert [tuple(r) for r in rows] == [tuple(r) for r in want]
        assert [a.name for a in stmt.get_attributes()] == ["id", "email", "total"]
        await via.execute("CREATE TEMP TABLE many (a int, b text)")
        await via.executemany("INSERT INTO many VALUES ($1, $2)", [(i, str(i)) for i in range(500)])
        assert await via.fetchval("SELECT count(*) FROM many") == 500
        # A cursor in a transaction uses portals with a row limit (PortalSuspended).
        async with via.transaction():
            total = 0
            async for record in via.cursor("SELECT generate_series(1, 1000) AS g", prefetch=64):
                total += record["g"]
            assert total == sum(range(1, 1001))
    finally:
        await via.close()
        await direct.close()


async def test_asyncpg_error_inside_transaction(proxy: ProxyThread) -> None:
    conn = await asyncpg.connect(proxy.dsn())
    try:
        with pytest.raises(asyncpg.exceptions.UndefinedTableError):
            async with conn.transaction():
                await conn.execute("SELECT * FROM no_such_table")
        assert await conn.fetchval("SELECT 40 + 2") == 42
    finally:
        await conn.close()


@pytest.mark.parametrize("protocol", ["simple", "prepared", "extended"])
def test_pgbench_select_only(proxy: ProxyThread, pg: PostgresCluster, protocol: str) -> None:
    init = subprocess.run([str(find_pg_bin("pgbench")), "-i", "-q", "-s", "1",
                           pg.dsn(user="app_scram", password="scram-pass", dbname="app")],
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    run = subprocess.run([str(find_pg_bin("pgbench")), "-S", "-n", "-c", "4", "-j", "2", "-t", "200",
                          "-M", protocol, proxy.dsn()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", run.stdout)
    assert processed is not None, run.stdout
    assert processed.group(1) == processed.group(2) == "800"
    assert "number of failed transactions: 0" in run.stdout
