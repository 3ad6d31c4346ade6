"""A CancelRequest for a statement pgproxy holds (DESIGN.md, decision 6): whichever way it comes, it
withdraws the statement, the client gets one answer (57014, then ReadyForQuery) and the session carries
on; the approval request is withdrawn in the store, where a reviewer can no longer approve it.

Each client's own cancel: psycopg's cancel() (libpq's PQcancel, a CancelRequest on a new plaintext
connection whatever the session's sslmode) and cancel_safe() (PQcancelConn, libpq 17+, which negotiates
TLS as the session did) and asyncpg's timeout (TLS as the session), each from a plaintext and a TLS
session; asyncpg's task cancellation; psql's Ctrl-C from a TLS session. At the protocol level: a held
Execute with another pipeline behind it, a simple Query of several statements, one in a transaction
block, a second cancel for the same statement, a cancel while pgproxy is still deciding on the statement
(before its hold), and forged keys. A cancel for a statement the server runs is forwarded, as before.

psycopg's cancel() runs in a process of its own (tests/python/cancel_probe.py; see conftest.py's
no_blocking_cancel_in_this_process): against a proxy on a thread of the test's process it deadlocks.
Covered elsewhere: psql's Ctrl-C over plaintext (test_client_holds.py::test_psql_ctrl_c_withdraws_the_request).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pgproxy.approvals.display import StatementView, statement_view
from pgproxy.decision import CANCELLED_WHILE_DECIDED, CANCELLED_WHILE_HELD, Judgement, Statement
from pgproxy.enforce import PolicyGate
from pgproxy.pgcluster import PostgresCluster, find_pg_bin
from pgproxy.session import Session
from pgproxy.store import ApprovalRequest
from pgproxy.wire import messages as m
from tests.approvals_support import api, decide, direct_value, get_request, reviewer_token, start_proxy, wait_pending
from tests.harness import ProxyThread, RawClient, error_fields, raw_session, tls_config
from tests.pki import Pki
from tests.test_audit import events, of

PROBE = Path(__file__).resolve().parent / "python" / "cancel_probe.py"
SUBPROCESS_SECONDS = 60  # a bound on a client process, never a pass/fail threshold

CANCELED = "canceling statement due to user request"  # PostgreSQL's own message, which clients match
WITHDRAWN_HELD = {"sqlstate": "57014", "class": "QueryCanceled", "message": CANCELED,
                  "detail": CANCELLED_WHILE_HELD.detail}


def held_sql(n: int, parameter: str | None = None) -> tuple[str, str]:
    """A statement the demo policy holds (it reads a PII column), unique to `n`, and the fragment
    of its text that finds its request."""
    return f"SELECT phone AS held_{n} FROM customers WHERE id = {parameter or n}", f"held_{n} FROM"


def assert_withdrawn(proxy: ProxyThread, request: dict[str, Any]) -> None:
    """The store says withdrawn, and a reviewer who opens it now cannot approve it (409)."""
    assert get_request(proxy, request["id"])["status"] == "withdrawn"
    status, body = decide(proxy, request)
    assert status == 409, body
    assert get_request(proxy, request["id"])["status"] == "withdrawn"


def requests_for(proxy: ProxyThread, fragment: str) -> list[dict[str, Any]]:
    """Every request (any status) whose statement contains `fragment`."""
    found = []
    for status in ("pending", "approved", "denied", "expired", "withdrawn"):
        code, body = api(proxy, "GET", f"/api/approvals?status={status}", token=reviewer_token())
        assert code == 200, body
        found += [r for r in body["approvals"] if fragment in r["statement"]]
    return found


def withdrawals(proxy: ProxyThread, fragment: str) -> list[dict[str, Any]]:
    """The audit log's statement events with outcome "withdrawn" for `fragment`."""
    return [e for e in of(events(proxy), "statement", outcome="withdrawn") if fragment in e["statement"]]


def cancel_logs(caplog: pytest.LogCaptureFixture) -> list[tuple[str, Any]]:
    """What the proxy logged of the CancelRequests its sessions got: (event, over TLS)."""
    return [(r.getMessage(), getattr(r, "tls", None)) for r in caplog.records
            if r.name.startswith("pgproxy.") and r.getMessage().startswith("cancel request")
            and r.getMessage() != "cancel request ignored"]


@pytest.fixture(scope="module")
def tls_approving(pg: PostgresCluster, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyThread]:
    """A holding proxy whose clients connect over TLS."""
    with start_proxy(pg, tmp_path_factory.mktemp("approvals-tls"), tls=tls_config(pki)) as proxy:
        yield proxy


@pytest.fixture(params=["plaintext", "tls"])
def session_over(request: pytest.FixtureRequest) -> tuple[ProxyThread, str, bool]:
    """A holding proxy, the agent's URL (sslmode disable or require) and whether it is TLS."""
    tls = request.param == "tls"
    proxy: ProxyThread = request.getfixturevalue("tls_approving" if tls else "approving")
    return proxy, proxy.dsn(sslmode="require" if tls else "disable"), tls


# -- psycopg 3: cancel() and cancel_safe(), in a process of their own --------------------------------------


@contextmanager
def cancel_probe(dsn: str, sql: str, method: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([sys.executable, str(PROBE), dsn, sql, method], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        process.kill()
        process.communicate(timeout=SUBPROCESS_SECONDS)


def cancelled(process: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """Tell the probe to cancel; the JSON lines it printed after (it must exit 0)."""
    assert process.stdin is not None
    process.stdin.write("cancel\n")
    process.stdin.flush()
    out, err = process.communicate(timeout=SUBPROCESS_SECONDS)
    assert process.returncode == 0, (out, err)
    lines = [json.loads(line) for line in out.splitlines()]
    assert "cancelled_in" in lines[0], lines
    return lines[1:]


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_psycopg_cancel_withdraws_a_held_statement(session_over: tuple[ProxyThread, str, bool], method: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    proxy, dsn, tls = session_over
    caplog.set_level(logging.INFO, logger="pgproxy")
    sql, fragment = held_sql(601 + 2 * ["cancel", "cancel_safe"].index(method) + tls * 4)
    with cancel_probe(dsn, sql, method) as process:
        request = wait_pending(proxy, fragment)
        assert process.poll() is None  # waiting
        lines = cancelled(process)
    assert lines == [{"error": WITHDRAWN_HELD}, {"after": [["after cancel"]]}]
    assert_withdrawn(proxy, request)
    [withdrawn] = withdrawals(proxy, fragment)  # audited once, with its request
    assert withdrawn["approval_id"] == request["id"]
    # PQcancel always connects in plaintext; PQcancelConn negotiates TLS as the session did.
    assert cancel_logs(caplog) == [("cancel request withdrew a held statement", tls and method == "cancel_safe")]


def test_psycopg_cancel_of_a_running_statement_is_forwarded(approving: ProxyThread, pg: PostgresCluster,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Not held: the server runs it, and the CancelRequest goes to the server, which answers."""
    caplog.set_level(logging.INFO, logger="pgproxy")
    running = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(60)'"
    with cancel_probe(approving.dsn(), "SELECT pg_sleep(60)", "cancel") as process:
        deadline = time.monotonic() + SUBPROCESS_SECONDS
        while direct_value(pg, running) != "1":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        lines = cancelled(process)
    assert time.monotonic() - started < 30  # it did not run to the end of pg_sleep(60)
    assert lines == [{"error": {"sqlstate": "57014", "class": "QueryCanceled", "message": CANCELED, "detail": None}},
                     {"after": [["after cancel"]]}]
    assert cancel_logs(caplog) == [("cancel request forwarded", False)]


# -- asyncpg: a timeout, and a cancelled task ------------------------------------------------------------


async def test_asyncpg_timeout_withdraws_a_held_statement(session_over: tuple[ProxyThread, str, bool],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """asyncpg answers a timeout with a CancelRequest (on a new connection, over TLS when the session
    is) and waits for the statement's answer before the connection takes another."""
    proxy, dsn, tls = session_over
    caplog.set_level(logging.INFO, logger="pgproxy")
    sql, fragment = held_sql(611 + tls, "$1")
    conn = await asyncpg.connect(dsn)
    try:
        fetch = asyncio.create_task(conn.fetch(sql, 611 + tls, timeout=5))
        request = await asyncio.to_thread(wait_pending, proxy, fragment)
        with pytest.raises(TimeoutError):
            await fetch
        assert await asyncio.wait_for(conn.fetchval("SELECT 'after cancel'"), SUBPROCESS_SECONDS) == "after cancel"
        assert not conn.is_in_transaction()
    finally:
        await conn.close()
    await asyncio.to_thread(assert_withdrawn, proxy, request)
    assert cancel_logs(caplog) == [("cancel request withdrew a held statement", tls)]


async def test_asyncpg_cancelled_task_withdraws_a_held_statement(approving: ProxyThread) -> None:
    sql, fragment = held_sql(613, "$1")
    conn = await asyncpg.connect(approving.dsn())
    try:
        fetch = asyncio.create_task(conn.fetch(sql, 613))
        request = await asyncio.to_thread(wait_pending, approving, fragment)
        fetch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fetch
        assert await asyncio.wait_for(conn.fetchval("SELECT 'after cancel'"), SUBPROCESS_SECONDS) == "after cancel"
    finally:
        await conn.close()
    await asyncio.to_thread(assert_withdrawn, approving, request)


# -- psql: Ctrl-C over TLS (over plaintext: test_client_holds.py) ----------------------------------------


def test_psql_ctrl_c_over_tls_withdraws_a_held_statement(tls_approving: ProxyThread) -> None:
    sql, fragment = held_sql(621)
    process = subprocess.Popen([str(find_pg_bin("psql")), "-X", "-At", tls_approving.dsn(sslmode="require"),
                                "-c", sql], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        request = wait_pending(tls_approving, fragment)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=SUBPROCESS_SECONDS)
    finally:
        process.kill()
    assert (process.returncode, out) == (1, "")
    assert err.endswith(f"Cancel request sent\nERROR:  {CANCELED}\nDETAIL:  {CANCELLED_WHILE_HELD.detail}\n"), err
    assert_withdrawn(tls_approving, request)


# -- the protocol: what else is in flight, and when the cancel comes -------------------------------------


def send_cancel(proxy: ProxyThread, client: RawClient, *, process_id: int | None = None,
                secret_key: int | None = None) -> None:
    """A CancelRequest on a connection of its own, with the key `client` was handed (or another);
    the proxy answers nothing and closes it, as PostgreSQL does."""
    key = client.backend_key
    assert key is not None
    request = m.CancelRequest(key.process_id if process_id is None else process_id,
                              key.secret_key if secret_key is None else secret_key)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(request.encode())
        assert sock.recv(1) == b""


def shown(replies: list[tuple[int, bytes]]) -> list[tuple[str, ...]]:
    """Messages as (type, SQLSTATE, message, detail) for errors and notices, (type, values) for
    rows, (type,) for the rest."""
    out: list[tuple[str, ...]] = []
    for type_byte, body in replies:
        if type_byte in (m.ERROR_RESPONSE, m.NOTICE_RESPONSE):
            fields = error_fields(body)
            out.append((chr(type_byte), fields["C"], fields["M"], fields.get("D", "")))
        elif type_byte == m.DATA_ROW:
            out.append(("D", body[6:].decode()))
        else:
            out.append((chr(type_byte),))
    return out


def without_notice(replies: list[tuple[str, ...]], proxy: ProxyThread,
                   request: dict[str, Any]) -> list[tuple[str, ...]]:
    """The hold's notice (with the request's link) must be there; the rest of the replies."""
    notices = [r for r in replies if r[0] == "N"]
    assert [n[2] for n in notices] == [f"statement held for approval: {proxy.server.approvals_url}/approvals/"
                                       f"{request['id']}"]
    return [r for r in replies if r[0] != "N"]


WITHDRAWN_ERROR = ("E", "57014", CANCELED, CANCELLED_WHILE_HELD.detail)


def _parse_bind_execute(sql: str) -> bytes:
    return m.Parse("", sql).encode() + m.Bind("", "", (), (), ()).encode() + m.Execute("", 0).encode()


SYNC = m.Sync().encode()


@pytest.mark.parametrize("cancels", [1, 2], ids=["once", "twice"])
def test_a_held_execute_with_a_pipeline_behind_it(approving: ProxyThread, cancels: int) -> None:
    """Parse, Bind, Execute (held), Sync, and a second Parse, Bind, Execute, Sync sent behind it:
    the held one fails (its segment up to Sync, as after any error); the next pipeline runs. A second
    CancelRequest right after the first changes nothing."""
    sql, fragment = held_sql(630 + cancels)
    with raw_session(approving) as client:
        client.send(_parse_bind_execute(sql) + SYNC + _parse_bind_execute("SELECT 42") + SYNC)
        request = wait_pending(approving, fragment)
        for _ in range(cancels):
            send_cancel(approving, client)
        first = without_notice(shown(client.until_ready()), approving, request)
        assert first == [("1",), ("2",), WITHDRAWN_ERROR, ("Z",)]
        assert shown(client.until_ready()) == [("1",), ("2",), ("D", "42"), ("C",), ("Z",)]
        client.send(m.Query("SELECT 'after cancel'").encode())
        assert shown(client.until_ready()) == [("T",), ("D", "after cancel"), ("C",), ("Z",)]
    assert_withdrawn(approving, request)
    assert len(withdrawals(approving, fragment)) == 1


def test_a_held_query_of_several_statements(approving: ProxyThread) -> None:
    """A simple Query is held whole: none of its statements ran, one error answers it."""
    sql, fragment = held_sql(641)
    with raw_session(approving) as client:
        client.send(m.Query(f"SELECT 'first'; {sql}; SELECT 'last'").encode())
        request = wait_pending(approving, fragment)
        send_cancel(approving, client)
        assert without_notice(shown(client.until_ready()), approving, request) == [WITHDRAWN_ERROR, ("Z",)]
        client.send(m.Query("SELECT 'after cancel'").encode())
        assert shown(client.until_ready()) == [("T",), ("D", "after cancel"), ("C",), ("Z",)]
    assert_withdrawn(approving, request)


def test_a_held_statement_in_a_transaction_block(approving: ProxyThread) -> None:
    """As after any error in a block: aborted until ROLLBACK."""
    sql, fragment = held_sql(642)
    with raw_session(approving) as client:
        client.send(m.Query("BEGIN").encode())
        assert shown(client.until_ready()) == [("C",), ("Z",)]
        client.send(m.Query(sql).encode())
        request = wait_pending(approving, fragment)
        send_cancel(approving, client)
        replies = client.until_ready()
        assert without_notice(shown(replies), approving, request) == [WITHDRAWN_ERROR, ("Z",)]
        assert replies[-1][1] == b"E"  # in a failed transaction block
        client.send(m.Query("SELECT 1").encode())
        assert [r[:2] for r in shown(client.until_ready())] == [("E", "25P02"), ("Z",)]
        client.send(m.Query("ROLLBACK").encode())
        replies = client.until_ready()
        assert replies[-1] == (m.READY_FOR_QUERY, b"I")
    assert_withdrawn(approving, request)


def test_a_forged_cancel_does_nothing_and_is_recorded(approving: ProxyThread, pg: PostgresCluster,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A wrong secret key, or a process id no session has: the statement stays held (an approval
    then runs it); each is logged and audited. The sender is told nothing, as by PostgreSQL."""
    caplog.set_level(logging.INFO, logger="pgproxy")
    sql, fragment = held_sql(651)
    with raw_session(approving) as client:
        key = client.backend_key
        assert key is not None
        client.send(m.Query(sql).encode())
        request = wait_pending(approving, fragment)
        send_cancel(approving, client, secret_key=key.secret_key ^ 1)
        send_cancel(approving, client, process_id=key.process_id ^ 1)
        # (What a CancelRequest does is done before the proxy closes its connection.)
        assert get_request(approving, request["id"])["status"] == "pending"
        assert decide(approving, request)[0] == 200
        replies = without_notice(shown(client.until_ready()), approving, request)
    assert replies == [("T",), ("D", direct_value(pg, "SELECT phone FROM customers WHERE id = 651")), ("C",), ("Z",)]
    ignored = [(r.getMessage(), getattr(r, "reason", None), getattr(r, "tls", None)) for r in caplog.records
               if r.getMessage() == "cancel request ignored"]
    assert ignored == [("cancel request ignored", "wrong secret key", False),
                       ("cancel request ignored", "no session has this process id", False)]
    assert cancel_logs(caplog) == []  # no session was told to cancel
    refused = of(events(approving), "cancel.refused")[-2:]
    assert [(e["reason"], e["client_address"], e["tls"], e["process_id"]) for e in refused] == [
        ("wrong secret key", "127.0.0.1", False, key.process_id),
        ("no session has this process id", "127.0.0.1", False, key.process_id ^ 1)]


# -- a cancel while pgproxy is still checking the statement, before its hold -----------------------------


@contextmanager
def paused(proxy: ProxyThread, monkeypatch: pytest.MonkeyPatch, where: str, fragment: str) -> Iterator[
        tuple[threading.Event, threading.Event]]:
    """Make the proxy pause at `where` for statements containing `fragment`, until the test sets the
    second event (the first is set when it gets there): "asking" and "refreshing", while the schema is
    read again (after the server parsed a simple Query, or before an Execute); "deciding", while the
    statement's decision is made; "storing", in the hold, before its request is stored."""
    gate = proxy.server.gate
    assert isinstance(gate, PolicyGate)
    arrived, release = threading.Event(), threading.Event()

    async def pause() -> None:
        arrived.set()
        await asyncio.to_thread(release.wait, SUBPROCESS_SECONDS)

    if where in ("asking", "refreshing"):
        refresh = gate.refresh_schema

        async def slow_refresh(session: Session) -> None:
            await pause()
            await refresh(session)

        monkeypatch.setattr(gate, "refresh_schema", slow_refresh)
    elif where == "deciding":
        judge = gate.judge

        def slow_judge(session: Session, statement: Statement) -> Judgement | Awaitable[Judgement]:
            judged = judge(session, statement)
            if fragment not in statement.sql:
                return judged

            async def later() -> Judgement:
                await pause()
                return judged if isinstance(judged, Judgement) else await judged

            return later()

        monkeypatch.setattr(gate, "judge", slow_judge)
    else:
        async def slow_view(request: ApprovalRequest) -> StatementView:
            if fragment in request.statement:
                await pause()
            return await statement_view(request)

        monkeypatch.setattr("pgproxy.enforce.statement_view", slow_view)
    try:
        yield arrived, release
    finally:
        release.set()


@pytest.mark.parametrize("where", ["asking", "refreshing", "deciding", "storing"])
def test_a_cancel_before_the_hold_withdraws_the_statement(pg: PostgresCluster, tmp_path: Path, where: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The client waits while pgproxy checks its statement before holding it; a CancelRequest then
    withdraws it as it would a held one: it does not run, and nobody is asked about it."""
    table = f"cancel_{where}"
    with start_proxy(pg, tmp_path) as proxy, raw_session(proxy) as client:
        if where in ("asking", "refreshing"):
            # A table created beside the proxy: its schema does not know it, the server does.
            pg.psql(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1)",
                    dbname="app", user="app_scram")
            sql, fragment = f"SELECT id FROM {table}", table
        else:
            sql, fragment = held_sql(660 + ["deciding", "storing"].index(where))
        try:
            with paused(proxy, monkeypatch, where, fragment) as (arrived, release):
                extended = where == "refreshing"
                client.send(_parse_bind_execute(sql) + SYNC if extended else m.Query(sql).encode())
                assert arrived.wait(SUBPROCESS_SECONDS)
                send_cancel(proxy, client)
                release.set()
                replies = shown(client.until_ready())
            detail = CANCELLED_WHILE_HELD.detail if where == "storing" else CANCELLED_WHILE_DECIDED.detail
            # In the extended protocol, a statement on a table pgproxy cannot tell about is checked (and
            # would be held) at Bind: planning it may run code.
            assert replies == [*([("1",)] if extended else []), ("E", "57014", CANCELED, detail), ("Z",)]
            client.send(m.Query("SELECT 'after cancel'").encode())
            assert shown(client.until_ready()) == [("T",), ("D", "after cancel"), ("C",), ("Z",)]
            assert requests_for(proxy, fragment) == []  # no reviewer was asked
            recorded = withdrawals(proxy, fragment)
            # Recorded once, with the rule that would have held it; not while no decision was made yet.
            assert [e.get("approval_id") for e in recorded] == ([] if where == "deciding" else [None])
        finally:
            if where in ("asking", "refreshing"):
                pg.psql(f"DROP TABLE IF EXISTS {table}", dbname="app", user="app_scram")
