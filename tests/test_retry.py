"""Retry hold mode end to end: a statement that needs review is answered at once with an error
naming the request; after approval the same agent's identical statement runs once."""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from pgproxy.demo.run import demo_file
from pgproxy.pgcluster import PostgresCluster
from pgproxy.wire import messages as m
from tests.approvals_support import (
    REQUEST_ID,
    RETRY,
    api,
    decide,
    direct_value,
    get_request,
    reviewer_token,
    start_proxy,
    wait_pending,
)
from tests.harness import ProxyThread, error_fields, raw_session


def refused(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] | None = None) -> psycopg.Error:
    """The error running `sql` gets (it must get one)."""
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    return info.value


def request_id(error: psycopg.Error) -> str:
    found = REQUEST_ID.search(error.diag.message_primary or "")
    assert found is not None, error.diag.message_primary
    return found.group(1)


def requests_for(proxy: ProxyThread, fragment: str) -> list[dict[str, Any]]:
    status, body = api(proxy, "GET", "/api/approvals?limit=1000", token=reviewer_token())
    assert status == 200, body
    return [a for a in body["approvals"] if fragment in a["statement"]]


def test_psycopg_retry_after_approval_runs_once(retrying: ProxyThread, pg: PostgresCluster) -> None:
    sql = "SELECT name, email FROM customers WHERE id = %s"
    want = tuple(direct_value(pg, "SELECT name, email FROM customers WHERE id = 61").split("|"))
    link = f"{retrying.server.approvals_url}/approvals/"
    with psycopg.connect(retrying.dsn(), autocommit=True) as conn:
        first = refused(conn, sql, (61,))
        assert isinstance(first, psycopg.errors.ObjectNotInPrerequisiteState)  # 55000, at once: nothing waits
        approval_id = request_id(first)
        assert first.diag.message_primary == (
            f"approval required (rule personal-data): {link}{approval_id}; the request id is {approval_id}; "
            f"run the same statement again after a reviewer approves it (before "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(get_request(retrying, approval_id)['expires_at']))})")
        assert "runs once" in (first.diag.message_detail or "")
        request = get_request(retrying, approval_id)
        # psycopg binds a Python int in binary (int2, declared in the Parse): the reviewer sees its value.
        assert (request["status"], request["agent"], request["parameters"], request["hold_mode"]) == (
            "pending", "agent", ["61"], "retry")

        # Asking again before a decision: the same request, still pending; no second request.
        again = refused(conn, sql, (61,))
        assert isinstance(again, psycopg.errors.ObjectNotInPrerequisiteState)
        assert (again.diag.message_primary or "").startswith("approval still pending (rule personal-data): ")
        assert request_id(again) == approval_id
        same = [r["id"] for r in requests_for(retrying, "WHERE id = $1") if r["parameters"] == ["61"]]
        assert same == [approval_id]

        assert decide(retrying, request, reason="ticket 61")[0] == 200

    # The same statement, in another session of the same agent: its rows.
    with psycopg.connect(retrying.dsn(), autocommit=True) as conn:
        assert conn.execute(sql, (61,)).fetchall() == [want]
        assert get_request(retrying, approval_id)["used_at"] is not None
        # Once only: running it again needs a new approval.
        used = refused(conn, sql, (61,))
        assert isinstance(used, psycopg.errors.ObjectNotInPrerequisiteState)
        assert request_id(used) != approval_id
        assert (used.diag.message_primary or "").startswith("approval required (rule personal-data): ")
        detail = used.diag.message_detail or ""
        assert f"Approval request {approval_id} was approved and its one run is used" in detail
        # Another literal is another statement: a request of its own.
        other = refused(conn, sql, (62,))
        assert request_id(other) not in (approval_id, request_id(used))
        assert get_request(retrying, request_id(other))["parameters"] == ["62"]
        assert conn.execute("SELECT count(*) FROM orders WHERE id < 3").fetchone() == (2,)  # the session carries on


def test_another_agent_cannot_use_the_approval(retrying: ProxyThread, pg: PostgresCluster) -> None:
    sql = "SELECT email FROM customers WHERE id = 63"
    with psycopg.connect(retrying.dsn(), autocommit=True) as conn:
        approval_id = request_id(refused(conn, sql))
    assert decide(retrying, get_request(retrying, approval_id))[0] == 200
    with psycopg.connect(retrying.dsn("agent2"), autocommit=True) as intruder:
        theirs = refused(intruder, sql)
        assert isinstance(theirs, psycopg.errors.ObjectNotInPrerequisiteState)
        assert request_id(theirs) != approval_id
        assert get_request(retrying, request_id(theirs))["agent"] == "agent2"
    assert get_request(retrying, approval_id)["used_at"] is None  # still unused: the agent it was for runs it
    with psycopg.connect(retrying.dsn(), autocommit=True) as conn:
        assert conn.execute(sql).fetchone() == (direct_value(pg, sql),)


def test_denied_says_so_on_retry(retrying: ProxyThread, pg: PostgresCluster) -> None:
    before = direct_value(pg, "SELECT phone FROM customers WHERE id = 64")
    update = "UPDATE customers SET phone = '0' WHERE id = 64"
    with psycopg.connect(retrying.dsn(), autocommit=True) as conn:
        approval_id = request_id(refused(conn, update))
        assert decide(retrying, get_request(retrying, approval_id), "deny", reason="not for this ticket")[0] == 200
        for _ in range(2):
            denied = refused(conn, update)
            assert isinstance(denied, psycopg.errors.InsufficientPrivilege)
            assert denied.diag.message_primary == (
                f"denied by reviewer alice: not for this ticket; the request id is {approval_id} "
                f"({retrying.server.approvals_url}/approvals/{approval_id})")
            assert "Running the same statement again gets this answer until" in (denied.diag.message_detail or "")
    assert [r["id"] for r in requests_for(retrying, "WHERE id = 64")] == [approval_id]  # no new request
    assert direct_value(pg, "SELECT phone FROM customers WHERE id = 64") == before


def test_inside_a_transaction_the_error_aborts_it(retrying: ProxyThread, pg: PostgresCluster) -> None:
    sql = "SELECT ssn FROM customers WHERE id = 65"
    with psycopg.connect(retrying.dsn()) as conn:
        conn.execute("SELECT 1")
        approval_id = request_id(refused(conn, sql))
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert decide(retrying, get_request(retrying, approval_id))[0] == 200
        conn.execute("SELECT 1")
        assert conn.execute(sql).fetchone() == (direct_value(pg, sql),)
        conn.commit()


def test_extended_protocol_pipeline_stays_in_step(retrying: ProxyThread, pg: PostgresCluster) -> None:
    """The error comes at the Execute a held statement would have waited at; the rest of the
    pipeline runs as it does after any error."""
    def cycle(sql: str, *params: bytes) -> bytes:
        return (m.Parse("", sql).encode() + m.Bind("", "", (), params, ()).encode()
                + m.Execute("").encode() + m.Sync().encode())

    held = "SELECT email FROM customers WHERE id = $1"
    pipeline = cycle("SELECT 'first'") + cycle(held, b"66") + cycle("SELECT 'third'")
    with raw_session(retrying) as client:
        client.send(pipeline)
        first, second, third = (client.until_ready() for _ in range(3))
        assert [chr(t) for t, _ in first] == ["1", "2", "D", "C", "Z"]
        assert [chr(t) for t, _ in second] == ["1", "2", "E", "Z"]
        fields = error_fields(second[2][1])
        assert fields["C"] == "55000" and "the request id is" in fields["M"]
        assert [chr(t) for t, _ in third] == ["1", "2", "D", "C", "Z"] and third[2][1].endswith(b"third")
        request = wait_pending(retrying, "WHERE id = $1")
        assert request["parameters"] == ["66"] and request["id"] in fields["M"]
        assert decide(retrying, request)[0] == 200
        client.send(pipeline)
        first, second, third = (client.until_ready() for _ in range(3))
    assert [chr(t) for t, _ in second] == ["1", "2", "D", "C", "Z"]
    assert direct_value(pg, "SELECT email FROM customers WHERE id = 66").encode() in second[2][1]
    assert [chr(t) for t, _ in third] == ["1", "2", "D", "C", "Z"]


async def test_concurrent_retries_run_it_exactly_once(retrying: ProxyThread, pg: PostgresCluster) -> None:
    sql = "SELECT email FROM customers WHERE id = $1"
    sessions = await asyncio.gather(*(asyncpg.connect(retrying.dsn()) for _ in range(4)))
    try:
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError) as info:
            await sessions[0].fetchval(sql, 67)
        # What asyncpg shows: the exception's class and sqlstate, and pgproxy's message with the link.
        assert info.value.sqlstate == "55000"
        assert str(info.value).startswith(
            f"approval required (rule personal-data): {retrying.server.approvals_url}/approvals/")
        approval_id = REQUEST_ID.search(str(info.value))
        assert approval_id is not None
        status, _ = await asyncio.to_thread(decide, retrying, await asyncio.to_thread(
            get_request, retrying, approval_id.group(1)))
        assert status == 200
        outcomes = await asyncio.gather(*(s.fetchval(sql, 67) for s in sessions), return_exceptions=True)
    finally:
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
    rows = [o for o in outcomes if not isinstance(o, BaseException)]
    assert rows == [direct_value(pg, "SELECT email FROM customers WHERE id = 67")]
    assert all(isinstance(o, asyncpg.ObjectNotInPrerequisiteStateError) for o in outcomes if o not in rows)


def test_store_uses_an_approval_once_across_connections(tmp_path: Path) -> None:
    """Several store connections (as several processes would have) retry at once: one uses it."""
    from pgproxy.store import ApprovalRequest
    from pgproxy.store.sqlite import SqliteStore

    def request(statement: int, n: int) -> ApprovalRequest:
        now = time.time()
        return ApprovalRequest(
            id=f"r{statement}-{n}", agent="agent", groups=(), database="app", statement=f"SELECT {statement}",
            parameters=(), statement_sha256=f"{statement:064x}", analysis={}, rule="r", reason="why",
            client_address="", application_name="", created_at=now + n, expires_at=now + 600, hold_mode="retry")

    async def run() -> list[list[str]]:
        stores = [SqliteStore(tmp_path / "approvals.sqlite3") for _ in range(6)]
        for store in stores:
            await store.open()
        rounds = []
        try:
            for statement in range(20):
                assert (await stores[0].retry(request(statement, 0), now=time.time(), window=600))[1] == "created"
                await stores[0].vote(f"r{statement}-0", "alice", approve=True, reason="", token="t", now=time.time())
                answers = await asyncio.gather(*(s.retry(request(statement, i + 1), now=time.time(), window=600)
                                                 for i, s in enumerate(stores)))
                rounds.append(sorted(outcome for _, outcome, _ in answers))
        finally:
            for store in stores:
                await store.close()
        return rounds

    for outcomes in asyncio.run(run()):
        # One uses the approval; the first after it makes a new request, which the rest find pending.
        assert outcomes == ["created", *["pending"] * 4, "used"]


PER_RULE = demo_file("policy.yaml").replace("rules:\n", """rules:
  - name: quick-phone
    tags_read: [pii.phone]
    action: review
    reason: phone numbers, decided quickly
    timeout_seconds: 1
  - name: ssn-by-retry
    tags_read: [pii.ssn]
    action: review
    reason: social security numbers
    hold_mode: retry
    timeout_seconds: 1
""", 1)


def test_rules_choose_the_hold_mode_and_expiry(pg: PostgresCluster, tmp_path: Path) -> None:
    with start_proxy(pg, tmp_path, policy=PER_RULE, timeout=300) as proxy, \
            psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        # approvals.hold_mode is wait: a rule with its own expiry waits that long.
        with pytest.raises(psycopg.errors.QueryCanceled, match="expired after 1 s"):
            conn.execute("SELECT phone FROM customers WHERE id = 68")
        # The rule's hold_mode: answered at once; once expired, the retry says so (no new request).
        approval_id = request_id(refused(conn, "SELECT ssn FROM customers WHERE id = 68"))
        deadline = time.monotonic() + 15
        while get_request(proxy, approval_id)["status"] != "expired":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        expired = refused(conn, "SELECT ssn FROM customers WHERE id = 68")
        assert isinstance(expired, psycopg.errors.QueryCanceled)
        assert expired.diag.message_primary == (f"approval request {approval_id} expired after 1 s without a "
                                                f"decision ({proxy.server.approvals_url}/approvals/{approval_id})")
        assert [r["id"] for r in requests_for(proxy, "ssn FROM customers WHERE id = 68")] == [approval_id]


def test_retry_requests_survive_a_restart(pg: PostgresCluster, tmp_path: Path) -> None:
    """Nobody waits for a retry-mode request: after a restart it can still be approved and used,
    and one whose time is up is marked expired (here the ssn rule's 1 s)."""
    sql = "SELECT email FROM customers WHERE id = 69"
    with start_proxy(pg, tmp_path, settings=RETRY, policy=PER_RULE) as proxy, \
            psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        approval_id = request_id(refused(conn, sql))
        short = request_id(refused(conn, "SELECT ssn FROM customers WHERE id = 69"))
    with start_proxy(pg, tmp_path, settings=RETRY, policy=PER_RULE) as proxy:
        request = get_request(proxy, approval_id)
        assert request["status"] == "pending"
        assert decide(proxy, request)[0] == 200
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            assert conn.execute(sql).fetchone() == (direct_value(pg, sql),)
        deadline = time.monotonic() + 15
        while get_request(proxy, short)["status"] != "expired":
            assert time.monotonic() < deadline
            time.sleep(0.1)


# The MCP reference server for PostgreSQL, installed by ./dev setup (npm ci in tests/node).
MCP_SERVER = (Path(__file__).resolve().parent / "node" / "node_modules" / "@modelcontextprotocol" / "server-postgres"
              / "dist" / "index.js")


class McpServer:
    """`@modelcontextprotocol/server-postgres` driven as an MCP host drives it: JSON-RPC over its stdio."""

    def __init__(self, dsn: str) -> None:
        node = shutil.which("node")
        assert node is not None and MCP_SERVER.exists(), "run ./dev setup: it installs Node.js and tests/node"
        self.process = subprocess.Popen([node, str(MCP_SERVER), dsn], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self._ids = iter(range(1, 1_000_000))
        threading.Thread(target=self._read, daemon=True).start()
        initialized = self.request("initialize", {"protocolVersion": "2024-11-05", "capabilities": {},
                                                  "clientInfo": {"name": "pgproxy-tests", "version": "1"}})
        assert initialized["result"]["serverInfo"]["name"] == "example-servers/postgres"
        self.notify("notifications/initialized")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._messages.put(json.loads(line))

    def send(self, method: str, params: dict[str, Any] | None = None) -> int:
        """Send a request; return its id (see reply)."""
        request_id = next(self._ids)
        self._write({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}})
        return request_id

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        self._write({"jsonrpc": "2.0", "method": method, "params": params or {}})

    def reply(self, request_id: int, timeout: float = 30) -> dict[str, Any]:
        while True:
            message = self._messages.get(timeout=timeout)
            if message.get("id") == request_id:
                return message

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.reply(self.send(method, params))

    def query(self, sql: str) -> dict[str, Any]:
        """The reply to a tools/call of the server's `query` tool."""
        return self.request("tools/call", {"name": "query", "arguments": {"sql": sql}})

    def _write(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        self.process.terminate()
        self.process.communicate(timeout=10)


@contextmanager
def mcp_server(dsn: str) -> Iterator[McpServer]:
    server = McpServer(dsn)
    try:
        yield server
    finally:
        server.close()


def test_mcp_server_retry_after_approval(retrying: ProxyThread, pg: PostgresCluster) -> None:
    sql = "SELECT name, email FROM customers WHERE id = 71"
    with mcp_server(retrying.dsn()) as mcp:
        tools = mcp.request("tools/list")["result"]["tools"]
        assert [t["name"] for t in tools] == ["query"]
        # The server runs the tool's SQL in BEGIN TRANSACTION READ ONLY, with the simple protocol; an error
        # thrown by the driver becomes the JSON-RPC error, whose message is the server's primary message.
        held = mcp.query(sql)
        message = held["error"]["message"]
        assert message.startswith(f"approval required (rule personal-data): {retrying.server.approvals_url}/approvals/")
        found = REQUEST_ID.search(message)
        assert found is not None and "run the same statement again after a reviewer approves it" in message
        request = get_request(retrying, found.group(1))
        assert (request["status"], request["statement"]) == ("pending", sql)
        assert "approval still pending" in mcp.query(sql)["error"]["message"]
        assert decide(retrying, request)[0] == 200
        result = mcp.query(sql)["result"]
        assert result["isError"] is False
        name, email = direct_value(pg, sql).split("|")
        assert json.loads(result["content"][0]["text"]) == [{"name": name, "email": email}]
        # Once: the next call needs a new approval.
        again = mcp.query(sql)["error"]["message"]
        assert again.startswith("approval required") and found.group(1) not in again


def test_mcp_host_giving_up_in_wait_mode_withdraws_once_disconnected(approving: ProxyThread) -> None:
    """In wait mode an MCP host's tool call times out (60 s by default) while the statement is held.
    Cancelling the call does not stop the server's query; once the host ends the server (and its
    connection), the request is withdrawn: it can no longer be approved and run for nobody."""
    with mcp_server(approving.dsn()) as mcp:
        sql = "SELECT ssn FROM customers WHERE id = 72"
        call = mcp.send("tools/call", {"name": "query", "arguments": {"sql": sql}})
        request = wait_pending(approving, "WHERE id = 72")
        mcp.notify("notifications/cancelled", {"requestId": call, "reason": "Request timed out"})
    deadline = time.monotonic() + 15
    while get_request(approving, request["id"])["status"] != "withdrawn":
        assert time.monotonic() < deadline, get_request(approving, request["id"])["status"]
        time.sleep(0.05)
    assert decide(approving, request)[0] == 409
