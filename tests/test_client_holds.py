"""What each real client shows of a held statement, in both hold modes (the README's "Which mode for which
client" table): in wait mode, whether the hold notice with the approval link reaches the program and how;
in retry mode, how the 55000 error and its link surface, and that the identical statement then runs.

Covered elsewhere, not repeated here: psql in wait mode (tests/test_approvals.py,
test_psql_held_then_approved: the notice on stderr); psycopg in retry mode (tests/test_retry.py,
test_psycopg_retry_after_approval_runs_once); asyncpg in retry mode (test_concurrent_retries_run_it_exactly_once)
and its wait-mode rows (test_asyncpg_extended_hold_covers_the_parameters); the MCP reference server
(test_mcp_server_retry_after_approval, test_mcp_host_giving_up_in_wait_mode_withdraws_once_disconnected).
Alembic is here too: a migration holds several statements in one transaction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psycopg
import pytest
import sqlalchemy
from sqlalchemy import event, text

from pgproxy.pgcluster import PostgresCluster, find_pg_bin
from tests.approvals_support import REQUEST_ID, decide, direct_value, get_request, wait_pending
from tests.harness import ProxyThread, make_token

HERE = Path(__file__).resolve().parent
PGJDBC = Path("/usr/share/java/postgresql.jar")  # Debian's libpostgresql-jdbc-java (./dev setup installs it)
HOLD_PROBE_JAVA = HERE / "java" / "HoldProbe.java"
HOLD_PROBE_NODE = HERE / "node" / "hold_probe.mjs"
# Bounds on a client subprocess (the JVM compiles HoldProbe.java at launch); never a pass/fail threshold.
SUBPROCESS_SECONDS = 120

T = TypeVar("T")


def link(proxy: ProxyThread, request: dict[str, Any]) -> str:
    return f"{proxy.server.approvals_url}/approvals/{request['id']}"


def notice_text(proxy: ProxyThread, request: dict[str, Any]) -> str:
    return f"statement held for approval: {link(proxy, request)}"


def held_in_thread(run: Callable[[], T]) -> Callable[[], T]:
    """Start `run` (a blocking client call) in a thread; the returned function joins it and gives
    its result (or raises its exception)."""
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append((True, run()))
        except BaseException as exc:
            outcome.append((False, exc))

    worker = threading.Thread(target=target, daemon=True)
    worker.start()

    def result() -> T:
        worker.join(SUBPROCESS_SECONDS)
        assert outcome, "the client call did not finish"
        ok, value = outcome[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    return result


def nothing_surfaced(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """The program saw no sign of the hold: nothing on its stdout or stderr (libpq's own notice
    printer writes to stderr), no log record but the proxy's own (it runs in this process)."""
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert [r.getMessage() for r in caplog.records if not r.name.startswith("pgproxy.")] == []


# -- psycopg 3 and asyncpg: only a handler sees the notice ------------------------------------------------


def notice_fields(diag: psycopg.errors.Diagnostic) -> tuple[str | None, ...]:
    """Severity, SQLSTATE, message and detail of a psycopg notice; read in the handler: the
    Diagnostic reads a result that is freed once the handler returns."""
    return diag.severity, diag.sqlstate, diag.message_primary, diag.message_detail


def test_psycopg_wait_shows_the_notice_only_to_a_handler(
        approving: ProxyThread, pg: PostgresCluster, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    sql = "SELECT email FROM customers WHERE id = %s"
    caplog.set_level(logging.DEBUG)
    with psycopg.connect(approving.dsn(), autocommit=True) as conn:
        capfd.readouterr()
        rows = held_in_thread(lambda: conn.execute(sql, (3,)).fetchall())
        request = wait_pending(approving, "WHERE id = $1")
        assert decide(approving, request)[0] == 200
        assert rows() == [(direct_value(pg, "SELECT email FROM customers WHERE id = 3"),)]
        nothing_surfaced(capfd, caplog)

        notices: list[tuple[str | None, ...]] = []
        conn.add_notice_handler(lambda diag: notices.append(notice_fields(diag)))
        rows = held_in_thread(lambda: conn.execute(sql, (4,)).fetchall())
        request = wait_pending(approving, "WHERE id = $1")
        [(severity, sqlstate, message, detail)] = notices
        assert (severity, sqlstate, message) == ("NOTICE", "00000", notice_text(approving, request))
        assert "A reviewer must approve it before" in (detail or "")
        assert decide(approving, request)[0] == 200
        assert rows() == [(direct_value(pg, "SELECT email FROM customers WHERE id = 4"),)]


async def test_asyncpg_wait_shows_the_notice_only_to_a_log_listener(
        approving: ProxyThread, pg: PostgresCluster, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    sql = "SELECT email FROM customers WHERE id = $1"
    caplog.set_level(logging.DEBUG, logger="asyncpg")
    conn = await asyncpg.connect(approving.dsn())
    try:
        capfd.readouterr()
        fetch = asyncio.create_task(conn.fetchval(sql, 5))
        request = await asyncio.to_thread(wait_pending, approving, "WHERE id = $1")
        assert (await asyncio.to_thread(decide, approving, request))[0] == 200
        assert await asyncio.wait_for(fetch, SUBPROCESS_SECONDS) == direct_value(
            pg, "SELECT email FROM customers WHERE id = 5")
        nothing_surfaced(capfd, caplog)

        notices: list[asyncpg.PostgresLogMessage] = []
        conn.add_log_listener(lambda _conn, message: notices.append(message))
        fetch = asyncio.create_task(conn.fetchval(sql, 6))
        request = await asyncio.to_thread(wait_pending, approving, "WHERE id = $1")
        assert [(n.severity, n.sqlstate, n.message) for n in notices] == [
            ("NOTICE", "00000", notice_text(approving, request))]
        assert (await asyncio.to_thread(decide, approving, request))[0] == 200
        assert await asyncio.wait_for(fetch, SUBPROCESS_SECONDS) == direct_value(
            pg, "SELECT email FROM customers WHERE id = 6")
    finally:
        await conn.close()


# -- SQLAlchemy 2 over psycopg ---------------------------------------------------------------------------


@contextmanager
def sqlalchemy_engine(proxy: ProxyThread) -> Iterator[sqlalchemy.Engine]:
    engine = sqlalchemy.create_engine(proxy.dsn().replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        yield engine
    finally:
        engine.dispose()


SQLALCHEMY_SELECT = text("SELECT email FROM customers WHERE id = :id")


def test_sqlalchemy_wait_shows_the_notice_only_to_a_psycopg_handler(
        approving: ProxyThread, pg: PostgresCluster, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with sqlalchemy_engine(approving) as engine, engine.connect() as conn:
        capfd.readouterr()
        caplog.clear()
        rows = held_in_thread(lambda: conn.execute(SQLALCHEMY_SELECT, {"id": 7}).all())
        request = wait_pending(approving, "WHERE id = $1")
        assert decide(approving, request)[0] == 200
        assert [tuple(r) for r in rows()] == [(direct_value(pg, "SELECT email FROM customers WHERE id = 7"),)]
        nothing_surfaced(capfd, caplog)

    # The notice reaches the program only through the DBAPI connection's handler, added on connect.
    notices: list[tuple[str | None, ...]] = []
    with sqlalchemy_engine(approving) as engine:
        event.listen(engine, "connect", lambda dbapi_conn, _record: dbapi_conn.add_notice_handler(
            lambda diag: notices.append(notice_fields(diag))))
        with engine.connect() as conn:
            rows = held_in_thread(lambda: conn.execute(SQLALCHEMY_SELECT, {"id": 8}).all())
            request = wait_pending(approving, "WHERE id = $1")
            assert [n[2] for n in notices] == [notice_text(approving, request)]
            assert decide(approving, request)[0] == 200
            assert [tuple(r) for r in rows()] == [(direct_value(pg, "SELECT email FROM customers WHERE id = 8"),)]


def test_sqlalchemy_retry(retrying: ProxyThread, pg: PostgresCluster) -> None:
    with sqlalchemy_engine(retrying) as engine:
        with engine.connect() as conn:
            with pytest.raises(sqlalchemy.exc.OperationalError) as info:
                conn.execute(SQLALCHEMY_SELECT, {"id": 9})
            # SQLAlchemy wraps psycopg's exception; its text starts with psycopg's class and message.
            assert isinstance(info.value.orig, psycopg.errors.ObjectNotInPrerequisiteState)
            assert info.value.orig.sqlstate == "55000"
            found = REQUEST_ID.search(str(info.value))
            assert found is not None
            request = get_request(retrying, found.group(1))
            assert str(info.value).startswith(
                f"(psycopg.errors.ObjectNotInPrerequisiteState) approval required (rule personal-data): "
                f"{link(retrying, request)}; ")
            conn.rollback()
        assert decide(retrying, request)[0] == 200
        with engine.connect() as conn:
            assert [tuple(r) for r in conn.execute(SQLALCHEMY_SELECT, {"id": 9})] == [
                (direct_value(pg, "SELECT email FROM customers WHERE id = 9"),)]


# -- psql ------------------------------------------------------------------------------------------------


def psql(proxy: ProxyThread, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(find_pg_bin("psql")), "-X", "-At", proxy.dsn(), "-c", sql],
                          capture_output=True, text=True, timeout=SUBPROCESS_SECONDS)


def test_psql_retry(retrying: ProxyThread, pg: PostgresCluster) -> None:
    sql = "SELECT email FROM customers WHERE id = 10"
    first = psql(retrying, sql)
    assert (first.returncode, first.stdout) == (1, "")
    found = REQUEST_ID.search(first.stderr)
    assert found is not None, first.stderr
    request = get_request(retrying, found.group(1))
    assert first.stderr.startswith(f"ERROR:  approval required (rule personal-data): {link(retrying, request)}; ")
    assert "\nDETAIL:  reads or writes personal data; the statement did not run." in first.stderr
    assert decide(retrying, request)[0] == 200
    again = psql(retrying, sql)
    assert (again.returncode, again.stdout, again.stderr) == (0, direct_value(pg, sql) + "\n", "")


# -- subprocess clients: pgjdbc and node-postgres --------------------------------------------------------


@contextmanager
def client_process(argv: list[str], cwd: Path | None = None) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        process.kill()
        process.communicate(timeout=SUBPROCESS_SECONDS)


def finished(process: subprocess.Popen[str]) -> tuple[list[dict[str, Any]], str]:
    """The JSON lines the probe printed, and its stderr; it must exit 0."""
    out, err = process.communicate(timeout=SUBPROCESS_SECONDS)
    assert process.returncode == 0, (out, err)
    return [json.loads(line) for line in out.splitlines()], err


def run_client(argv: list[str], cwd: Path | None = None) -> list[dict[str, Any]]:
    with client_process(argv, cwd) as process:
        lines, err = finished(process)
    assert err == ""
    return lines


def jdbc_argv(proxy: ProxyThread, sql: str, *params: int) -> list[str]:
    java = shutil.which("java")
    assert java is not None and PGJDBC.exists(), "run ./dev setup: it installs the JDK and libpostgresql-jdbc-java"
    url = f"jdbc:postgresql://127.0.0.1:{proxy.port}/app?sslmode=disable"
    return [java, "-cp", str(PGJDBC), str(HOLD_PROBE_JAVA), url, "agent", make_token("agent"), sql,
            *map(str, params)]


JDBC_SELECT = "SELECT email FROM customers WHERE id = ?"


def test_pgjdbc_wait_shows_the_notice_as_a_statement_warning(approving: ProxyThread, pg: PostgresCluster) -> None:
    with client_process(jdbc_argv(approving, JDBC_SELECT, 11)) as process:
        request = wait_pending(approving, "WHERE id = $1")
        assert process.poll() is None  # waiting
        # pgjdbc binds setInt in binary; the reviewer sees the value. It names itself with a SET after
        # connecting, which the request shows.
        assert (request["parameters"], request["application_name"]) == (["11"], "PostgreSQL JDBC Driver")
        assert decide(approving, request)[0] == 200
        lines, err = finished(process)
    email = direct_value(pg, "SELECT email FROM customers WHERE id = 11")
    # The notice is a SQLWarning on the statement (SQLState 00000, the message without its detail):
    # seen only by a program that calls getWarnings() after the statement; nothing is printed.
    assert lines == [{"rows": [[email]]},
                     {"warnings": [{"sqlstate": "00000", "message": notice_text(approving, request)}]}]
    assert err == ""


def test_pgjdbc_retry(retrying: ProxyThread, pg: PostgresCluster) -> None:
    [failed, warnings] = run_client(jdbc_argv(retrying, JDBC_SELECT, 12))
    error = failed["error"]
    assert (error["sqlstate"], error["class"], warnings) == (
        "55000", "org.postgresql.util.PSQLException", {"warnings": []})
    found = REQUEST_ID.search(error["message"])
    assert found is not None, error
    request = get_request(retrying, found.group(1))
    assert error["message"].startswith(
        f"ERROR: approval required (rule personal-data): {link(retrying, request)}; ")
    assert "\n  Detail: reads or writes personal data; the statement did not run." in error["message"]
    assert decide(retrying, request)[0] == 200
    email = direct_value(pg, "SELECT email FROM customers WHERE id = 12")
    assert run_client(jdbc_argv(retrying, JDBC_SELECT, 12)) == [{"rows": [[email]]}, {"warnings": []}]


def node_argv(proxy: ProxyThread, sql: str, params: list[Any], *, listen: bool = False) -> list[str]:
    node = shutil.which("node")
    assert node is not None and (HERE / "node" / "node_modules" / "pg").exists(), \
        "run ./dev setup: it installs Node.js and tests/node"
    return [node, str(HOLD_PROBE_NODE), proxy.dsn(), sql, json.dumps(params),
            *(["--listen-notices"] if listen else [])]


NODE_SELECT = "SELECT email FROM customers WHERE id = $1"


@pytest.mark.parametrize("listen", [False, True], ids=["no-listener", "notice-listener"])
def test_node_postgres_wait_shows_the_notice_only_to_a_listener(approving: ProxyThread, pg: PostgresCluster,
                                                                  listen: bool) -> None:
    customer = 13 + listen
    with client_process(node_argv(approving, NODE_SELECT, [customer], listen=listen)) as process:
        request = wait_pending(approving, "WHERE id = $1")
        assert process.poll() is None
        assert decide(approving, request)[0] == 200
        lines, err = finished(process)
    email = direct_value(pg, f"SELECT email FROM customers WHERE id = {customer}")
    notices = [{"notice": {"severity": "NOTICE", "code": "00000", "message": notice_text(approving, request)}}]
    assert lines == [*(notices if listen else []), {"rows": [{"email": email}]}]
    assert err == ""


def test_node_postgres_retry(retrying: ProxyThread, pg: PostgresCluster) -> None:
    [failed] = run_client(node_argv(retrying, NODE_SELECT, [15]))
    assert failed["error"]["code"] == "55000"
    found = REQUEST_ID.search(failed["error"]["message"])
    assert found is not None, failed
    request = get_request(retrying, found.group(1))
    assert failed["error"]["message"].startswith(f"approval required (rule personal-data): {link(retrying, request)}; ")
    assert decide(retrying, request)[0] == 200
    email = direct_value(pg, "SELECT email FROM customers WHERE id = 15")
    assert run_client(node_argv(retrying, NODE_SELECT, [15])) == [{"rows": [{"email": email}]}]


def test_psql_ctrl_c_withdraws_the_request(approving: ProxyThread) -> None:
    """psql in wait mode (its notice and rows: tests/test_approvals.py, test_psql_held_then_approved):
    Ctrl-C sends a cancel, which withdraws the request."""
    with client_process([str(find_pg_bin("psql")), "-X", "-At", approving.dsn(), "-c",
                         "SELECT phone FROM customers WHERE id = 16"]) as process:
        request = wait_pending(approving, "WHERE id = 16")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=SUBPROCESS_SECONDS)
    assert (process.returncode, out) == (1, "")
    assert err.startswith(f"NOTICE:  {notice_text(approving, request)}\nDETAIL:  ")
    assert "Cancel request sent\nERROR:  canceling statement due to user request" in err
    assert get_request(approving, request["id"])["status"] == "withdrawn"
    assert decide(approving, request)[0] == 409


# -- Alembic (over SQLAlchemy and psycopg) ---------------------------------------------------------------

ALEMBIC_REVISION = '''\
"""probe"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table("alembic_probe", sa.Column("id", sa.Integer, primary_key=True))
'''


@contextmanager
def alembic_project(proxy: ProxyThread, pg: PostgresCluster, directory: Path) -> Iterator[list[str]]:
    """A project made by `alembic init` (its generic template) with one revision that creates a table,
    pointed at the proxy; yields the command that upgrades it. Drops what it made afterwards."""
    alembic = str(Path(sys.executable).with_name("alembic"))
    subprocess.run([alembic, "init", "migrations"], cwd=directory, check=True, capture_output=True,
                   timeout=SUBPROCESS_SECONDS)
    (directory / "migrations" / "versions" / "0001_probe.py").write_text(ALEMBIC_REVISION)
    ini = directory / "alembic.ini"
    url = proxy.dsn().replace("postgresql://", "postgresql+psycopg://", 1)
    ini.write_text(ini.read_text().replace("driver://user:pass@localhost/dbname", url))
    try:
        yield [alembic, "upgrade", "head"]
    finally:
        pg.psql("DROP TABLE IF EXISTS alembic_probe, alembic_version", dbname="app", user="app_scram")


# What `alembic upgrade head` sends that needs review, in order, in its one transaction (transactional DDL):
# the version table and the revision's table are schema changes; the version table's first row is a
# statement pgproxy cannot tell about (rule cannot-tell): the table exists only in that uncommitted transaction.
ALEMBIC_HELD = ("CREATE TABLE alembic_version", "CREATE TABLE alembic_probe", "INSERT INTO alembic_version")
ALEMBIC_LOG = ("INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.\n"
               "INFO  [alembic.runtime.migration] Will assume transactional DDL.\n")


def test_alembic_wait_shows_nothing_while_held(approving: ProxyThread, pg: PostgresCluster, tmp_path: Path) -> None:
    with alembic_project(approving, pg, tmp_path) as upgrade, client_process(upgrade, cwd=tmp_path) as process:
        rules = []
        for statement in ALEMBIC_HELD:
            request = wait_pending(approving, statement)
            assert process.poll() is None
            rules.append(request["rule"])
            assert decide(approving, request)[0] == 200
        out, err = finished(process)
        assert direct_value(pg, "SELECT version_num FROM alembic_version") == "0001"
    assert rules == ["schema-change", "schema-change", "cannot-tell"]
    # Its log, and nothing about the holds: it waited silently after "Will assume transactional DDL.".
    assert (out, err) == ([], ALEMBIC_LOG + "INFO  [alembic.runtime.migration] Running upgrade  -> 0001, probe\n")


def test_alembic_retry_runs_until_every_statement_has_an_unused_approval(
        retrying: ProxyThread, pg: PostgresCluster, tmp_path: Path) -> None:
    """Each run stops at the first statement without an unused approval, and its rollback undoes the
    statements before it, whose approvals it used up: like a binary counter, the three held statements
    take 7 approvals and 8 runs (2**n - 1 and 2**n for n held statements in one transaction)."""
    stopped_at = []
    with alembic_project(retrying, pg, tmp_path) as upgrade:
        for _ in range(12):
            run = subprocess.run(upgrade, cwd=tmp_path, capture_output=True, text=True, timeout=SUBPROCESS_SECONDS)
            if run.returncode == 0:
                break
            found = REQUEST_ID.search(run.stderr)
            assert found is not None, run.stderr
            request = get_request(retrying, found.group(1))
            assert run.stderr.startswith(ALEMBIC_LOG)
            assert (f"sqlalchemy.exc.OperationalError: (psycopg.errors.ObjectNotInPrerequisiteState) approval "
                    f"required (rule {request['rule']}): {link(retrying, request)}; ") in run.stderr
            stopped_at.append(ALEMBIC_HELD.index(next(s for s in ALEMBIC_HELD if s in request["statement"])))
            assert decide(retrying, request)[0] == 200
        assert run.returncode == 0, run.stderr
        assert direct_value(pg, "SELECT version_num FROM alembic_version") == "0001"
    assert stopped_at == [0, 1, 0, 2, 0, 1, 0]  # indexes into ALEMBIC_HELD
