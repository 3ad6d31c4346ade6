"""Held statements end to end: real clients wait, a reviewer decides through the real HTTP API."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from pgproxy.config import load_config
from pgproxy.pgcluster import PostgresCluster
from pgproxy.wire import messages as m
from tests import corpus
from tests.approvals_support import (
    DECISION_SECRET,
    api,
    approvals_config,
    decide,
    direct_value,
    held_psql,
    proxy_with_tables,
    reviewer_token,
    start_proxy,
    wait_pending,
)
from tests.harness import (
    ProxyThread,
    RawClient,
    error_fields,
    raw_session,
    running_proxy,
    write_enforce_config,
)


def test_psql_held_then_approved(approving: ProxyThread, pg: PostgresCluster) -> None:
    sql = "SELECT name, email FROM customers WHERE id = 11"
    client = held_psql(approving, sql)
    try:
        request = wait_pending(approving, "WHERE id = 11")
        assert client.poll() is None  # still waiting
        assert (request["agent"], request["rule"], request["database"]) == ("agent", "personal-data", "app")
        columns = {c["column"] for s in request["analysis"]["statements"] for c in s["reads"]}
        assert "public.customers.email" in columns
        status, decided = decide(approving, request, reason="support ticket 7")
        assert status == 200 and decided["status"] == "approved" and decided["decided_by"] == "alice"
        out, err = client.communicate(timeout=15)
    finally:
        client.kill()
    assert out.strip() == direct_value(pg, sql).replace("|", "|")
    assert f"statement held for approval: {approving.server.approvals_url}/approvals/{request['id']}" in err


async def test_asyncpg_extended_hold_covers_the_parameters(approving: ProxyThread, pg: PostgresCluster) -> None:
    conn = await asyncpg.connect(approving.dsn())
    try:
        fetch = asyncio.create_task(conn.fetch("SELECT email FROM customers WHERE id = $1", 12))
        request = await asyncio.to_thread(wait_pending, approving, "WHERE id = $1")
        # asyncpg binds in binary: the reviewer is shown the value, read as the type the server
        # described for the parameter (int4), not its bytes.
        assert request["parameters"] == ["12"]
        assert not fetch.done()
        status, _ = await asyncio.to_thread(decide, approving, request)
        assert status == 200
        rows = await asyncio.wait_for(fetch, 15)
        assert [r["email"] for r in rows] == [direct_value(pg, "SELECT email FROM customers WHERE id = 12")]
        # Another execution of the same prepared statement is a new request (approve once).
        again = asyncio.create_task(conn.fetch("SELECT email FROM customers WHERE id = $1", 13))
        second = await asyncio.to_thread(wait_pending, approving, "WHERE id = $1")
        assert second["id"] != request["id"] and second["parameters"] == ["13"]
        await asyncio.to_thread(decide, approving, second, "deny", reason="not needed")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="denied by reviewer alice: not needed"):
            await asyncio.wait_for(again, 15)
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE id < $1", 3) == 2
    finally:
        await conn.close()


def test_the_request_names_the_application_the_session_set_last(approving: ProxyThread) -> None:
    """pgjdbc (and others) set application_name after connecting: the request shows the
    session's current one, as the server reported it, not the startup's."""
    with psycopg.connect(approving.dsn(), autocommit=True, application_name="at-startup") as conn:
        conn.execute("SET application_name = 'billing-agent'")
        outcome: list[BaseException] = []
        worker = threading.Thread(target=_capture, args=(outcome, conn, "SELECT email FROM customers WHERE id = 19"))
        worker.start()
        request = wait_pending(approving, "WHERE id = 19")
        assert request["application_name"] == "billing-agent"
        assert decide(approving, request, "deny", reason="done")[0] == 200
        worker.join(15)


def test_denied_inside_a_transaction_behaves_like_postgres(approving: ProxyThread, pg: PostgresCluster) -> None:
    before = direct_value(pg, "SELECT email FROM customers WHERE id = 14")
    with psycopg.connect(approving.dsn()) as conn:
        conn.execute("SELECT count(*) FROM orders")
        outcome: list[BaseException] = []
        update = "UPDATE customers SET email = 'x@example.com' WHERE id = 14"
        worker = threading.Thread(target=_capture, args=(outcome, conn, update))
        worker.start()
        request = wait_pending(approving, "WHERE id = 14")
        assert decide(approving, request, "deny", reason="writes are not allowed today")[0] == 200
        worker.join(15)
        assert isinstance(outcome[0], psycopg.errors.InsufficientPrivilege)
        assert "writes are not allowed today" in str(outcome[0])
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert direct_value(pg, "SELECT email FROM customers WHERE id = 14") == before


def test_expiry(pg: PostgresCluster, tmp_path: Path) -> None:
    with start_proxy(pg, tmp_path, timeout=1) as proxy, psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled, match="expired after 1 s") as info:
            conn.execute("SELECT ssn FROM customers WHERE id = 15")
        approval_id = (info.value.diag.message_detail or "").rsplit(" ", 1)[-1]
        status, request = api(proxy, "GET", f"/api/approvals/{approval_id}", token=reviewer_token())
        assert status == 200 and request["status"] == "expired"
        assert decide(proxy, request)[0] == 409  # a decision after expiry is refused
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_cancel_withdraws_the_request(approving: ProxyThread) -> None:
    with psycopg.connect(approving.dsn(), autocommit=True) as conn:
        outcome: list[BaseException] = []
        worker = threading.Thread(target=_capture, args=(outcome, conn, "SELECT phone FROM customers WHERE id = 16"))
        worker.start()
        request = wait_pending(approving, "WHERE id = 16")
        conn.cancel_safe(timeout=10)
        worker.join(15)
        assert isinstance(outcome[0], psycopg.errors.QueryCanceled)
        assert api(approving, "GET", f"/api/approvals/{request['id']}", token=reviewer_token())[1]["status"] \
            == "withdrawn"
        assert decide(approving, request)[0] == 409
        assert conn.execute("SELECT 'after cancel'").fetchone() == ("after cancel",)


def test_disconnect_while_held_withdraws(approving: ProxyThread) -> None:
    with raw_session(approving) as client:
        client.send(m.Query("SELECT email FROM customers WHERE id = 17").encode())
        request = wait_pending(approving, "WHERE id = 17")
        client.send(m.Terminate().encode())
    deadline = time.monotonic() + 10
    while api(approving, "GET", f"/api/approvals/{request['id']}", token=reviewer_token())[1]["status"] != "withdrawn":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_decisions_that_are_refused(approving: ProxyThread, pg: PostgresCluster) -> None:
    before = direct_value(pg, "SELECT phone FROM customers WHERE id = 18")
    with psycopg.connect(approving.dsn(), autocommit=True) as conn:
        outcome: list[BaseException] = []
        update = "UPDATE customers SET phone = '0' WHERE id = 18"
        worker = threading.Thread(target=_capture, args=(outcome, conn, update))
        worker.start()
        request = wait_pending(approving, "WHERE id = 18")
        path = f"/api/approvals/{request['id']}/decision"
        body = {"decision": "approve", "reason": "", "statement_sha256": request["statement_sha256"]}
        cases = {
            "no token": (None, 401),
            "forged token": (reviewer_token(secret="not-the-reviewer-secret-0123456789ab"), 401),
            "expired token": (reviewer_token(ttl=-120), 401),
            "self-approval": (reviewer_token("agent"), 403),
            "not a reviewer": (reviewer_token("bob", groups=("staff",)), 403),
        }
        for name, (token, expected) in cases.items():
            assert api(approving, "POST", path, body, token)[0] == expected, name
        assert decide(approving, request, sha="0" * 64)[0] == 409  # not the statement that was shown
        assert api(approving, "POST", "/api/approvals/no-such-id/decision", body, reviewer_token())[0] == 404
        assert decide(approving, request, "deny", reason="no")[0] == 200
        assert decide(approving, request)[0] == 409  # replayed: no longer pending
        worker.join(15)
        assert isinstance(outcome[0], psycopg.errors.InsufficientPrivilege)
    assert direct_value(pg, "SELECT phone FROM customers WHERE id = 18") == before  # it never ran


def _capture(outcome: list[BaseException], conn: psycopg.Connection[Any], sql: str) -> None:
    try:
        conn.execute(sql)
    except BaseException as exc:
        outcome.append(exc)


def test_held_statement_in_the_middle_of_a_pipeline(approving: ProxyThread, pg: PostgresCluster) -> None:
    def cycle(sql: str, *params: bytes) -> bytes:
        return (m.Parse("", sql).encode() + m.Bind("", "", (), params, ()).encode()
                + m.Execute("").encode() + m.Sync().encode())

    with raw_session(approving) as client:
        client.send(cycle("SELECT 'first'") + cycle("SELECT email FROM customers WHERE id = $1", b"19")
                    + cycle("SELECT 'third'"))
        # The hold's NoticeResponse may come before earlier results: notices may come at any time.
        first = [r for r in client.until_ready() if r[0] != m.NOTICE_RESPONSE]
        assert [chr(t) for t, _ in first] == ["1", "2", "D", "C", "Z"]
        request = wait_pending(approving, "WHERE id = $1")
        assert request["parameters"] == ["19"]
        assert decide(approving, request)[0] == 200
        second, third = ([r for r in client.until_ready() if r[0] != m.NOTICE_RESPONSE] for _ in range(2))
    assert [chr(t) for t, _ in second] == ["1", "2", "D", "C", "Z"]
    assert direct_value(pg, "SELECT email FROM customers WHERE id = 19").encode() in second[2][1]
    assert [chr(t) for t, _ in third] == ["1", "2", "D", "C", "Z"] and third[2][1].endswith(b"third")


def test_binary_parameters_of_types_the_parse_declared(approving: ProxyThread) -> None:
    """pgjdbc declares the types of the parameters it sends in binary in its Parse, and does not
    describe the statement: the request shows the values, read as those types."""
    sql = "SELECT email FROM customers WHERE id = $1 AND $2::int8 > 0"
    with raw_session(approving) as client:
        client.send(m.Parse("", sql, (23, 20)).encode()
                    + m.Bind("", "", (1,), (b"\x00\x00\x00\x0b", (-5).to_bytes(8, "big", signed=True)), ()).encode()
                    + m.Execute("").encode() + m.Sync().encode())
        request = wait_pending(approving, "AND $2::int8 > 0")
        assert request["parameters"] == ["11", "-5"]
        assert decide(approving, request, "deny", reason="done")[0] == 200
        client.until_ready()


def test_store_failure_fails_closed(approving: ProxyThread, pg: PostgresCluster,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from pgproxy.store import StoreError
    from pgproxy.store.sqlite import SqliteStore

    async def broken(self: SqliteStore, request: object) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(SqliteStore, "create", broken)
    before = direct_value(pg, "SELECT email FROM customers WHERE id = 20")
    with psycopg.connect(approving.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.SystemError, match="cannot record the approval request"):
            conn.execute("UPDATE customers SET email = 'y@example.com' WHERE id = 20")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert direct_value(pg, "SELECT email FROM customers WHERE id = 20") == before


def test_api_needs_a_reviewer_and_lists_by_status(approving: ProxyThread) -> None:
    assert api(approving, "GET", "/api/approvals")[0] == 401
    assert api(approving, "GET", "/api/approvals?status=bogus", token=reviewer_token())[0] == 400
    assert api(approving, "GET", "/api/approvals?limit=0", token=reviewer_token())[0] == 400
    status, limited = api(approving, "GET", "/api/approvals?limit=1", token=reviewer_token())
    assert status == 200 and len(limited["approvals"]) == 1
    status, body = api(approving, "GET", "/api/approvals?status=denied", token=reviewer_token())
    assert status == 200 and all(a["status"] == "denied" for a in body["approvals"])
    assert api(approving, "GET", "/healthz")[0] == 200


def test_held_error_fields(approving: ProxyThread) -> None:
    with raw_session(approving) as client:
        client.send(m.Query("SELECT ssn FROM customers WHERE id = 21").encode())
        notice = client.read_message()
        assert notice is not None and notice[0] == m.NOTICE_RESPONSE
        assert "statement held for approval" in error_fields(notice[1])["M"]
        request = wait_pending(approving, "WHERE id = 21")
        assert decide(approving, request, "deny", reason="no")[0] == 200
        replies = client.until_ready()
        fields = error_fields(replies[0][1])
        assert (chr(replies[0][0]), fields["C"], replies[-1][1]) == ("E", "42501", b"I")


async def test_two_hundred_held_at_once(approving: ProxyThread, pg: PostgresCluster) -> None:
    import aiohttp

    count = 200
    emails = dict(line.split("|") for line in pg.psql(
        f"SELECT id, email FROM customers WHERE id <= {count} ORDER BY id", dbname="app").splitlines())
    connections = await asyncio.gather(*(asyncpg.connect(approving.dsn()) for _ in range(count)))
    try:
        fetches = [asyncio.create_task(conn.fetchval("SELECT email FROM customers WHERE id = $1", i + 1))
                   for i, conn in enumerate(connections)]
        headers = {"Authorization": f"Bearer {reviewer_token()}"}
        async with aiohttp.ClientSession(base_url=approving.server.approvals_url or "", headers=headers) as http:
            deadline = time.monotonic() + 60
            while True:
                async with http.get("/api/approvals?status=pending") as response:
                    pending = [a for a in (await response.json())["approvals"] if "WHERE id = $1" in a["statement"]]
                if len(pending) == count:
                    break
                assert time.monotonic() < deadline, f"only {len(pending)} held"
                await asyncio.sleep(0.1)
            assert not any(f.done() for f in fetches)

            async def approve(request: dict[str, Any]) -> int:
                body = {"decision": "approve", "reason": "batch", "statement_sha256": request["statement_sha256"]}
                async with http.post(f"/api/approvals/{request['id']}/decision", json=body) as response:
                    return response.status

            assert set(await asyncio.gather(*(approve(r) for r in pending))) == {200}
        results = await asyncio.wait_for(asyncio.gather(*fetches), 60)
        assert results == [emails[str(i + 1)] for i in range(count)]  # each its own row
    finally:
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)


@pytest.fixture(scope="module")
def strict(pg: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyThread, Path]]:
    """A proxy whose policy needs two reviewers for SSNs and allows grants for email lookups."""
    from pgproxy.demo.run import demo_file

    directory = tmp_path_factory.mktemp("strict")
    policy = demo_file("policy.yaml").replace("rules:\n", """rules:
  - name: two-person-ssn
    tags_read: [pii.ssn]
    action: review
    reason: social security numbers need two reviewers
    approvals_required: 2
  - name: two-person-phone
    tags_read: [pii.phone]
    kinds: [read]
    action: review
    reason: phone numbers need two reviewers
    approvals_required: 2
    max_grant_minutes: 30
  - name: email-lookup
    tags_read: [pii.email]
    kinds: [read]
    action: review
    reason: looks up customers by email
    max_grant_minutes: 30
  - name: role-switch
    kinds: [role]
    action: review
    reason: switching roles
    max_grant_minutes: 30
""", 1)
    path = write_enforce_config(pg, directory, catalog=corpus.CATALOG, policy=policy,
                                extra=approvals_config(directory, 30))
    with running_proxy(load_config(path)) as proxy:
        yield proxy, directory


def test_two_person_rule(strict: tuple[ProxyThread, Path], pg: PostgresCluster) -> None:
    proxy, _ = strict
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        outcome: list[BaseException] = []
        rows: list[object] = []

        def run() -> None:
            try:
                rows.append(conn.execute("SELECT ssn FROM customers WHERE id = 31").fetchone())
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        request = wait_pending(proxy, "WHERE id = 31")
        assert request["required_approvals"] == 2
        status, first = decide(proxy, request)
        assert (status, first["status"], first["approved_by"]) == (200, "pending", ["alice"])
        assert decide(proxy, request)[0] == 409  # alice cannot be the second reviewer too
        time.sleep(0.3)
        assert worker.is_alive() and not rows  # one approval is not enough
        status, second = decide(proxy, request, token=reviewer_token("carol"))
        assert (status, second["status"], second["approved_by"]) == (200, "approved", ["alice", "carol"])
        worker.join(15)
        assert rows == [(direct_value(pg, "SELECT ssn FROM customers WHERE id = 31"),)] and not outcome

        # A single deny ends it, whatever approvals came before.
        worker = threading.Thread(target=run)
        rows.clear()
        worker.start()
        again = wait_pending(proxy, "WHERE id = 31")
        assert decide(proxy, again)[0] == 200
        assert decide(proxy, again, "deny", reason="not both", token=reviewer_token("carol"))[0] == 200
        worker.join(15)
        assert isinstance(outcome[0], psycopg.errors.InsufficientPrivilege) and not rows


def test_reviewers_are_compared_in_one_canonical_form(strict: tuple[ProxyThread, Path], pg: PostgresCluster) -> None:
    """alice and ALICE are one person to the two-person rule; AGENT is the requesting agent; a
    name with an invisible character is no reviewer at all; group names compare the same way."""
    proxy, _ = strict
    sql = "SELECT ssn FROM customers WHERE id = 37"
    client = held_psql(proxy, sql)
    try:
        request = wait_pending(proxy, "WHERE id = 37")
        assert decide(proxy, request)[0] == 200  # alice, the first of two
        for name in ("ALICE", "Alice", "\uff41\uff4c\uff49\uff43\uff45"):  # the last is fullwidth
            status, body = decide(proxy, request, token=reviewer_token(name))
            assert status == 409 and "has already approved this request" in body["error"], name
        for name in ("AGENT", "Agent"):
            assert decide(proxy, request, token=reviewer_token(name)) == (
                403, {"error": "the requesting agent cannot decide its own request"}), name
        for name, hidden in (("agent\u200b", "U+200B"), ("carol\u202e", "U+202E"), ("\u2066dave", "U+2066")):
            assert decide(proxy, request, token=reviewer_token(name)) == (403, {
                "error": f'reviewer token refused: claim "sub" contains an invisible or control character ({hidden})'})
            assert api(proxy, "GET", f"/api/approvals/{request['id']}", token=reviewer_token(name))[0] == 403
        assert client.poll() is None  # still one approval
        status, decided = decide(proxy, request, token=reviewer_token("carol", groups=("REVIEWERS",)))
        assert (status, decided["status"], decided["approved_by"]) == (200, "approved", ["alice", "carol"])
        out, _ = client.communicate(timeout=15)
    finally:
        client.kill()
    assert out.strip() == direct_value(pg, sql)


def test_grant_covers_the_identical_statement_until_it_ends(strict: tuple[ProxyThread, Path],
                                                            pg: PostgresCluster) -> None:
    """A grant never covers more than was approved: for a statement reading tagged columns, the
    literals choose which values it shows, so only the identical statement is covered."""
    import sqlite3

    proxy, directory = strict
    sql = "SELECT email FROM customers WHERE id = {}"
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        results: list[object] = []
        worker = threading.Thread(target=lambda: results.append(conn.execute(sql.format(32)).fetchone()))
        worker.start()
        request = wait_pending(proxy, "WHERE id = 32")
        assert decide(proxy, request, grant_minutes=31)[0] == 403  # over the rule's 30 minutes
        assert decide(proxy, request, grant_minutes=10)[0] == 200
        first_request_id = request["id"]
        worker.join(15)
        # The same statement again: passes at once, without a new request.
        assert conn.execute(sql.format(32)).fetchone() == (direct_value(pg, sql.format(32)),)
        pending = api(proxy, "GET", "/api/approvals?status=pending", token=reviewer_token())[1]["approvals"]
        assert not [a for a in pending if "WHERE id = 32" in a["statement"]]

        # Another literal, or another shape, is not covered.
        def held_then_cancelled(statement: str, marker: str) -> None:
            def cancel_soon() -> None:
                wait_pending(proxy, marker)
                conn.cancel_safe(timeout=5)

            canceller = threading.Thread(target=cancel_soon)
            canceller.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute(statement)
            canceller.join()

        held_then_cancelled(sql.format(33), "WHERE id = 33")
        held_then_cancelled("SELECT email, name FROM customers WHERE id = 34", "WHERE id = 34")
        # When the grant ends, the statement is held again.
        with sqlite3.connect(directory / "approvals.sqlite3") as db:
            db.execute("UPDATE grants SET expires_at = 0")
        ended: list[BaseException] = []
        worker = threading.Thread(target=_capture, args=(ended, conn, sql.format(32)))
        worker.start()
        request = wait_pending(proxy, "WHERE id = 32")
        assert decide(proxy, request, "deny", reason="grant over")[0] == 200
        worker.join(15)
        assert isinstance(ended[0], psycopg.errors.InsufficientPrivilege)
        # A decision that turns on a literal: a grant for one role is not a grant for another.
        worker = threading.Thread(target=lambda: conn.execute("SET ROLE 'app_scram'"))
        worker.start()
        request = wait_pending(proxy, "SET ROLE 'app_scram'")
        assert decide(proxy, request, grant_minutes=5)[0] == 200
        worker.join(15)
        conn.execute("SET ROLE 'app_scram'")  # covered
        held_then_cancelled("SET ROLE 'postgres'", "SET ROLE 'postgres'")
        conn.execute("RESET ROLE")
    # The audit log says which grant let the statement through, and who gave it.
    assert proxy.server.audit is not None
    proxy.call(proxy.server.audit.flush())
    with sqlite3.connect(directory / "approvals.sqlite3") as db:
        granted = [json.loads(body) for (body,) in db.execute("SELECT body FROM audit_events WHERE type = 'statement'")
                   if '"outcome":"granted"' in body]
    covered = [(e["grant"]["approval_id"], e["grant"]["granted_by"], e["action"]) for e in granted]
    assert len(covered) == 2 and covered[0] == (first_request_id, "alice", "review")  # then the SET ROLE


def test_a_grant_is_what_every_approver_agreed_to(strict: tuple[ProxyThread, Path], pg: PostgresCluster) -> None:
    """With the two-person rule, the second approver cannot attach a grant (or a longer one) the
    first did not give: the grant is only what both agreed to."""
    import sqlite3

    proxy, directory = strict
    sql = "SELECT phone FROM customers WHERE id = 39"
    expected = direct_value(pg, sql)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        # alice approves once; carol cannot turn that into a standing approval.
        rows: list[object] = []
        worker = threading.Thread(target=lambda: rows.append(conn.execute(sql).fetchone()))
        worker.start()
        request = wait_pending(proxy, "WHERE id = 39")
        assert decide(proxy, request)[0] == 200
        status, body = decide(proxy, request, token=reviewer_token("carol"), grant_minutes=10)
        assert status == 403 and 'more than "alice" agreed to' in body["error"], body
        assert decide(proxy, request, token=reviewer_token("carol"))[1]["status"] == "approved"
        worker.join(15)
        assert rows == [(expected,)]
        # No grant: the same statement is held again. alice offers 10 minutes, carol may not widen it
        # to 30, and her 5 is what both agreed to.
        rows.clear()
        worker = threading.Thread(target=lambda: rows.append(conn.execute(sql).fetchone()))
        worker.start()
        again = wait_pending(proxy, "WHERE id = 39")
        assert again["id"] != request["id"]
        assert decide(proxy, again, grant_minutes=10)[0] == 200
        assert decide(proxy, again, token=reviewer_token("carol"), grant_minutes=30)[0] == 403
        status, decided = decide(proxy, again, token=reviewer_token("carol"), grant_minutes=5)
        assert (status, decided["status"]) == (200, "approved")
        worker.join(15)
        assert rows == [(expected,)]
        assert conn.execute(sql).fetchone() == (expected,)  # covered by the grant, no new request
    decided_at = api(proxy, "GET", f"/api/approvals/{again['id']}", token=reviewer_token())[1]["decided_at"]
    with sqlite3.connect(directory / "approvals.sqlite3") as db:
        grants = db.execute("SELECT approval_id, granted_by, expires_at FROM grants WHERE approval_id IN (?, ?)",
                            (request["id"], again["id"])).fetchall()
    assert grants == [(again["id"], "alice, carol", decided_at + 5 * 60)]


def test_restart_abandons_pending_requests(pg: PostgresCluster, tmp_path: Path) -> None:
    from tests.harness import RawClient

    path = write_enforce_config(pg, tmp_path, catalog=corpus.CATALOG, extra=approvals_config(tmp_path, 30))
    crashed = ProxyThread(load_config(path)).start()
    client = RawClient(crashed.port)
    try:
        client.login()
        client.send(m.Query("SELECT email FROM customers WHERE id = 36").encode())
        request = wait_pending(crashed, "WHERE id = 36")
        # A crash: the proxy's loop stops dead; nothing gets to withdraw the request.
        crashed.loop.call_soon_threadsafe(crashed.loop.stop)
        crashed._thread.join(10)
        with running_proxy(load_config(path)) as restarted:
            status, found = api(restarted, "GET", f"/api/approvals/{request['id']}", token=reviewer_token())
            assert (status, found["status"]) == (200, "abandoned")
            assert decide(restarted, found)[0] == 409  # it can never be approved, so never run
    finally:
        client.close()
        crashed.loop.run_until_complete(crashed.server.close())
        crashed.loop.close()


def decision_token(request: dict[str, Any], decision: str = "approve", *, sub: str = "dave",
                   secret: str = DECISION_SECRET, approval_id: str | None = None, jti: str | None = None) -> str:
    import secrets as random_ids

    import jwt

    now = int(time.time())
    return jwt.encode({
        "approval_id": approval_id or request["id"], "statement_sha256": request["statement_sha256"],
        "decision": decision, "reason": "approved in the ticketing system", "sub": sub, "groups": ["reviewers"],
        "iss": "https://approvals.example", "aud": "pgproxy-decisions", "iat": now, "exp": now + 300,
        "jti": jti or random_ids.token_hex(8)}, secret, algorithm="HS256")


def test_self_contained_decision_tokens(approving: ProxyThread, pg: PostgresCluster) -> None:
    with psycopg.connect(approving.dsn(), autocommit=True) as conn:
        results: list[object] = []
        worker = threading.Thread(target=lambda: results.append(
            conn.execute("SELECT email FROM customers WHERE id = 41").fetchone()))
        worker.start()
        request = wait_pending(approving, "WHERE id = 41")
        path = f"/api/approvals/{request['id']}/decision"
        forged = decision_token(request, secret="forged-key-0123456789abcdef0123456789")
        assert api(approving, "POST", path, {}, forged)[0] == 401
        assert api(approving, "POST", path, {}, decision_token(request, approval_id="another-id"))[0] == 403
        assert api(approving, "POST", path, {}, decision_token(request, sub="agent"))[0] == 403  # self-approval
        token = decision_token(request)
        status, decided = api(approving, "POST", path, {}, token)
        assert (status, decided["status"], decided["decided_by"]) == (200, "approved", "dave")
        worker.join(15)
        assert results == [(direct_value(pg, "SELECT email FROM customers WHERE id = 41"),)]
        assert api(approving, "POST", path, {}, token)[0] == 409  # a jti is accepted once


def _hs256(claims: dict[str, Any], secret: str = DECISION_SECRET) -> str:
    """A JWT signed as PyJWT would, but with whatever claims (PyJWT's encode refuses some)."""
    import base64
    import hashlib
    import hmac

    def part(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing = part(b'{"alg":"HS256","typ":"JWT"}') + b"." + part(json.dumps(claims).encode())
    return (signing + b"." + part(hmac.digest(secret.encode(), signing, hashlib.sha256))).decode()


def test_malformed_decision_token_claims_get_400_and_never_burn_the_token(approving: ProxyThread,
                                                                         pg: PostgresCluster) -> None:
    """Every claim the proxy reads from a decision token (pgproxy.approvals.inputs.DECISION_CLAIMS), fed
    every wrong type and form of its kind: a 400 naming the claim, nothing recorded; the token id stays
    unused, so the well-formed token with the same jti then decides."""
    import jwt

    from pgproxy.approvals.inputs import DECISION_CLAIMS
    from tests.malformed import MALFORMED, MISSING

    sql = "SELECT email FROM customers WHERE id = 42"
    client = held_psql(approving, sql)
    try:
        request = wait_pending(approving, "WHERE id = 42")
        path = f"/api/approvals/{request['id']}/decision"
        good = jwt.decode(decision_token(request, jti="one-jti-for-all"), options={"verify_signature": False})
        tried = 0
        for claim, entry in DECISION_CLAIMS.items():
            for value in [*MALFORMED[entry.kind], *([MISSING] if entry.required else [])]:
                claims = {k: v for k, v in good.items() if k != claim}
                if value is not MISSING:
                    claims[claim] = value
                status, body = api(approving, "POST", path, {}, _hs256(claims))
                if claim == "approval_id" and value is MISSING:  # then it is no decision token at all
                    assert (status, body["error"]) == (401, "reviewer token refused: invalid signature")
                    continue
                assert status == 400 and f'"{claim}"' in body["error"], (claim, value, status, body)
                tried += 1
        assert tried > 80
        assert api(approving, "GET", f"/api/approvals/{request['id']}", token=reviewer_token())[1]["status"] \
            == "pending"
        status, decided = api(approving, "POST", path, {}, _hs256(good))
        assert (status, decided["status"], decided["decided_by"]) == (200, "approved", "dave")
        out, _ = client.communicate(timeout=15)
        assert out.strip() == direct_value(pg, sql)
    finally:
        client.kill()
    # Used once it decided: the same jti for another request is a replay.
    other = held_psql(approving, "SELECT email FROM customers WHERE id = 43")
    try:
        second = wait_pending(approving, "WHERE id = 43")
        status, body = api(approving, "POST", f"/api/approvals/{second['id']}/decision", {},
                           decision_token(second, jti="one-jti-for-all"))
        assert (status, body["error"]) == (409, "this decision token was used already")
        # A refused decision does not burn its jti either: self-approval, then the same jti decides.
        assert api(approving, "POST", f"/api/approvals/{second['id']}/decision", {},
                   decision_token(second, sub="AGENT", jti="second-jti"))[0] == 403
        status, decided = api(approving, "POST", f"/api/approvals/{second['id']}/decision", {},
                              decision_token(second, "deny", jti="second-jti"))
        assert (status, decided["status"]) == (200, "denied")
    finally:
        other.kill()


def test_the_request_shows_the_statement_under_review(approving: ProxyThread) -> None:
    """A decision cached for the statement's shape must not bring another statement's text
    (whose literals can be PII) into a later request."""
    seen = []
    for literal in ("4", "7"):
        sql = f"SELECT email FROM customers WHERE phone = '555-0{literal}'"
        client = held_psql(approving, sql)
        try:
            request = wait_pending(approving, f"'555-0{literal}'")
            seen.append(request["analysis"]["statements"][0]["statement"])
            status, _ = decide(approving, request, "deny", reason="not today")
            assert status == 200
            client.communicate(timeout=15)
        finally:
            client.kill()
    assert seen == ["SELECT email FROM customers WHERE phone = '555-04'",
                    "SELECT email FROM customers WHERE phone = '555-07'"]


@pytest.mark.parametrize(("sql", "code"), [
    ("SELECT ssn FROM customerz WHERE id = 1", "42P01"),  # a guessed table name
    ("SELECT ssn, social_security FROM customers WHERE id = 1", "42703"),  # a guessed column
    ("SELEC ssn FROM customers", "42601"),  # a syntax error
])
def test_the_server_refuses_first_what_it_would_refuse_anyway(approving: ProxyThread, sql: str, code: str) -> None:
    """A statement the server would reject gets the server's own error at once: no reviewer is
    asked, and nothing of it runs."""
    pending = api(approving, "GET", "/api/approvals?status=pending", token=reviewer_token())[1]["approvals"]
    with psycopg.connect(approving.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(sql)
        assert raised.value.sqlstate == code, raised.value
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session carries on
        # Inside a block the error aborts it, as the statement itself would have.
        conn.execute("BEGIN")
        with pytest.raises(psycopg.Error):
            conn.execute(sql)
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT 2").fetchone() == (2,)
    after = api(approving, "GET", "/api/approvals?status=pending", token=reviewer_token())[1]["approvals"]
    assert [a["id"] for a in after] == [a["id"] for a in pending]


def test_a_name_the_server_knows_refreshes_the_schema(approving: ProxyThread, pg: PostgresCluster) -> None:
    """A table made behind pgproxy's back: the server parses the statement, so pgproxy reads the
    schema again and judges it on what it now knows, instead of holding it as unknown."""
    pg.psql("DROP TABLE IF EXISTS made_later; CREATE TABLE made_later (id int, note text);"
            "INSERT INTO made_later VALUES (1, 'hello')", dbname="app", user="app_scram")
    with psycopg.connect(approving.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT note FROM made_later").fetchall() == [("hello",)]
        # A tagged read through it is still held (the test's reviewer denies it).
        pg.psql("CREATE OR REPLACE VIEW made_later_v AS SELECT ssn FROM customers", dbname="app", user="app_scram")
        held = threading.Thread(target=lambda: decide(approving, wait_pending(approving, "made_later_v"), "deny"))
        held.start()
        with pytest.raises(psycopg.Error, match="denied by reviewer"):
            conn.execute("SELECT ssn FROM made_later_v")
        held.join(20)


async def test_a_name_the_server_knows_refreshes_the_schema_in_the_extended_protocol(approving: ProxyThread,
                                                                                     pg: PostgresCluster) -> None:
    """The same through Parse/Bind/Execute: the server parsed the statement, so pgproxy reads the
    schema again before it would hold the statement at Bind as unknown."""
    pg.psql("DROP TABLE IF EXISTS made_later_x; CREATE TABLE made_later_x (id int, note text);"
            "INSERT INTO made_later_x VALUES (1, 'hello')", dbname="app", user="app_scram")
    conn = await asyncpg.connect(approving.dsn())
    try:
        assert await conn.fetchval("SELECT note FROM made_later_x WHERE id = $1", 1) == "hello"
    finally:
        await conn.close()


def test_a_client_gone_right_after_the_notice_withdraws_its_request(approving: ProxyThread) -> None:
    """The race between storing a request and its client going away: 50 clients disconnect the
    moment the hold notice arrives; none may leave a request a reviewer could still approve."""
    for index in range(50):
        with RawClient(approving.port) as client:
            client.login()
            client.send(m.Query(f"SELECT email FROM customers WHERE id = {7000 + index}").encode())
            while (message := client.read_message()) is not None and message[0] != m.NOTICE_RESPONSE:
                pass
            assert message is not None
    deadline = time.monotonic() + 15
    while True:
        pending = api(approving, "GET", "/api/approvals?status=pending", token=reviewer_token())[1]["approvals"]
        left = [a for a in pending if "WHERE id = 7" in a["statement"] and len(a["statement"]) > 40]
        if not left:
            break
        assert time.monotonic() < deadline, f"{len(left)} requests stay pending: {left[0]['statement']}"
        time.sleep(0.05)
    withdrawn = api(approving, "GET", "/api/approvals?status=withdrawn", token=reviewer_token())[1]["approvals"]
    ours = [a for a in withdrawn if a["statement"].startswith("SELECT email FROM customers WHERE id = 70")]
    assert len(ours) == 50
    assert decide(approving, ours[0])[0] == 409


@pytest.fixture
def migrating(pg: PostgresCluster, tmp_path: Path) -> Iterator[ProxyThread]:
    with proxy_with_tables(pg, tmp_path, "mig_orders, mig_version",
                           "CREATE TABLE mig_orders (id int, total int); INSERT INTO mig_orders VALUES (1, 10)",
                           # tagged before the migration that adds it
                           "    mig_orders:\n      secret_note: [pii]\n") as proxy:
        yield proxy


def _approved_in_background(proxy: ProxyThread, fragment: str) -> threading.Thread:
    worker = threading.Thread(target=lambda: decide(proxy, wait_pending(proxy, fragment)))
    worker.start()
    return worker


def _denied_in_background(proxy: ProxyThread, fragment: str) -> threading.Thread:
    worker = threading.Thread(target=lambda: decide(proxy, wait_pending(proxy, fragment), "deny", reason="no"))
    worker.start()
    return worker


def test_a_migration_is_judged_on_the_schema_it_makes(migrating: ProxyThread, pg: PostgresCluster) -> None:
    """The schema a statement is judged on is the one it will see: a column the catalog tags,
    added in a transaction that pauses before COMMIT, is tagged from the commit on; inside the
    transaction, what the DDL changed is held; a table it creates is known after the commit."""
    pg.psql("UPDATE mig_orders SET total = 11", dbname="app", user="app_scram")
    with psycopg.connect(migrating.dsn(), autocommit=True) as conn, \
            psycopg.connect(migrating.dsn(), autocommit=True) as other:
        conn.execute("BEGIN")
        approver = _approved_in_background(migrating, "ADD COLUMN secret_note")
        conn.execute("ALTER TABLE mig_orders ADD COLUMN secret_note text DEFAULT 'the secret'")
        approver.join(15)
        approver = _approved_in_background(migrating, "CREATE TABLE mig_version")
        conn.execute("CREATE TABLE mig_version (version_num text)")
        approver.join(15)
        # Inside the transaction: what the DDL changed is held, not judged on the old schema.
        denier = _denied_in_background(migrating, "SELECT * FROM mig_orders")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="denied by reviewer"):
            conn.execute("SELECT * FROM mig_orders")
        denier.join(15)
        conn.execute("ROLLBACK")  # the held statement failed the block; do it again, committed
        conn.execute("BEGIN")
        for fragment, statement in (("ADD COLUMN secret_note", "ALTER TABLE mig_orders ADD COLUMN secret_note text "
                                     "DEFAULT 'the secret'"),
                                    ("CREATE TABLE mig_version", "CREATE TABLE mig_version (version_num text)")):
            approver = _approved_in_background(migrating, fragment)
            conn.execute(statement)
            approver.join(15)
        time.sleep(0.5)  # a pause before COMMIT: the proxy must not keep what it read meanwhile
        conn.execute("COMMIT")
        # Any session, at once: the new column is tagged, the new table known.
        denier = _denied_in_background(migrating, "SELECT * FROM mig_orders")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="denied by reviewer"):
            other.execute("SELECT * FROM mig_orders")
        denier.join(15)
        assert other.execute("SELECT id, total FROM mig_orders").fetchall() == [(1, 11)]
        assert other.execute("SELECT count(*) FROM mig_version").fetchone() == (0,)


@pytest.fixture
def renaming(pg: PostgresCluster, tmp_path: Path) -> Iterator[ProxyThread]:
    with proxy_with_tables(pg, tmp_path, "ren_t, ren_t2",
                           "CREATE TABLE ren_t (id int, secret text); INSERT INTO ren_t VALUES (1, 'the secret')",
                           "    ren_t:\n      secret: [pii]\n") as proxy:
        yield proxy


def test_tags_follow_a_column_through_renames(renaming: ProxyThread) -> None:
    """Tags belong to columns, not names: an approved rename of the column or its table keeps the
    tag (and the catalog file's stale name is reported under the new one), and so does renaming back."""
    proxy = renaming
    gate = proxy.server.gate
    assert gate is not None

    def approved(conn: psycopg.Connection[tuple[object, ...]], ddl: str) -> None:
        approver = _approved_in_background(proxy, ddl)
        conn.execute(ddl)
        approver.join(15)

    def held(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> None:
        denier = _denied_in_background(proxy, sql)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="denied by reviewer"):
            conn.execute(sql)
        denier.join(15)

    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        held(conn, "SELECT secret FROM ren_t")
        approved(conn, "ALTER TABLE ren_t RENAME COLUMN secret TO other")
        held(conn, "SELECT other FROM ren_t")
        approved(conn, "ALTER TABLE ren_t RENAME TO ren_t2")
        held(conn, "SELECT other FROM ren_t2")
        assert conn.execute("SELECT id FROM ren_t2").fetchall() == [(1,)]
        warnings = gate.catalog.warnings("app")  # type: ignore[attr-defined]
        assert "catalog: app.public.ren_t.secret was renamed: it is now public.ren_t2.other, still tagged; " \
               "update the catalog file" in warnings
        # A new column under the old name is tagged by the file; the renamed one keeps its tag.
        approved(conn, "ALTER TABLE ren_t2 RENAME TO ren_t")
        approved(conn, "ALTER TABLE ren_t ADD COLUMN secret text")
        held(conn, "SELECT other FROM ren_t")
        held(conn, "SELECT secret FROM ren_t")
        approved(conn, "ALTER TABLE ren_t DROP COLUMN secret")
        approved(conn, "ALTER TABLE ren_t RENAME COLUMN other TO secret")  # and back
        held(conn, "SELECT secret FROM ren_t")
        assert not [w for w in gate.catalog.warnings("app") if "ren_t" in w]  # type: ignore[attr-defined]


def test_a_generated_column_inherits_the_tags_it_reads(renaming: ProxyThread) -> None:
    """The review of the DDL shows the tagged column its expression reads; once it exists, the
    generated column (stored values computed from it) carries its tags."""
    proxy = renaming
    ddl = "ALTER TABLE ren_t ADD COLUMN copied text GENERATED ALWAYS AS (upper(secret)) STORED"
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        def approve() -> None:
            request = wait_pending(proxy, "GENERATED ALWAYS")
            reads = {c["column"] for s in request["analysis"]["statements"] for c in s["reads"]}
            assert "public.ren_t.secret" in reads
            decide(proxy, request)

        approver = threading.Thread(target=approve)
        approver.start()
        conn.execute(ddl)
        approver.join(15)
        denier = _denied_in_background(proxy, "SELECT copied FROM ren_t")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="denied by reviewer"):
            conn.execute("SELECT copied FROM ren_t")
        denier.join(15)
        assert conn.execute("SELECT id FROM ren_t").fetchall() == [(1,)]


def _held_reads(proxy: ProxyThread, sql: str) -> tuple[set[str], set[str]]:
    """Run `sql` through the proxy, have the reviewer deny it, and return the tagged columns and
    flags its request showed (and what it said would carry tags, as `derives: object`)."""
    shown: dict[str, set[str]] = {}

    def deny() -> None:
        request = wait_pending(proxy, sql)
        statements = request["analysis"]["statements"]
        shown["reads"] = {c["column"] for s in statements for c in s["reads"] if c["tags"]} | {
            f"derives: {d['object']}" for s in statements for d in s["derives"] if d["tags"] == ["pii"]}
        shown["flags"] = {f for s in statements for f in s["flags"]}
        decide(proxy, request, "deny", reason="no")

    worker = threading.Thread(target=deny)
    worker.start()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="denied by reviewer"):
        conn.execute(sql)
    worker.join(15)
    return shown["reads"], shown["flags"]


def test_tags_follow_the_data_through_functions(renaming: ProxyThread, pg: PostgresCluster) -> None:
    """What a SQL or PL/pgSQL function reads counts as read by the statement that calls it,
    directly or through views over it (function -> view -> view): the tagged column is shown to
    the reviewer. A function that reads nothing tagged runs unreviewed; one pgproxy cannot see
    through (dynamic SQL) runs code; a rule runs on every write."""
    pg.psql("""
        CREATE OR REPLACE FUNCTION ren_f() RETURNS TABLE (id int, s text) LANGUAGE sql
            AS $$ SELECT id, secret FROM ren_t $$;
        CREATE OR REPLACE VIEW ren_v AS SELECT * FROM ren_f();
        CREATE OR REPLACE VIEW ren_vv AS SELECT id FROM ren_v;
        CREATE OR REPLACE FUNCTION ren_g(p_id int) RETURNS text LANGUAGE plpgsql AS $$
            DECLARE found_one text;
            BEGIN found_one := (SELECT upper(secret) FROM ren_t WHERE id = p_id); RETURN found_one; END $$;
        CREATE OR REPLACE FUNCTION ren_count() RETURNS bigint LANGUAGE plpgsql AS $$
            DECLARE n bigint; BEGIN SELECT count(id) INTO n FROM ren_t; RETURN n; END $$;
        CREATE OR REPLACE FUNCTION ren_dyn() RETURNS text LANGUAGE plpgsql AS $$
            DECLARE r text; BEGIN EXECUTE 'SELECT secret FROM ren_t' INTO r; RETURN r; END $$;
        CREATE TABLE IF NOT EXISTS ren_log (note text);
        CREATE TABLE IF NOT EXISTS ren_orders (id int);
        CREATE OR REPLACE RULE ren_copy AS ON INSERT TO ren_orders DO ALSO INSERT INTO ren_log SELECT secret FROM ren_t;
        CREATE TABLE IF NOT EXISTS ren_copies (id int, copied text DEFAULT ren_g(1));
    """, dbname="app", user="app_scram")
    try:
        proxy = renaming
        proxy.call(proxy.server.gate.catalog.refresh("app"))  # type: ignore[union-attr]
        for sql in ("SELECT * FROM ren_v", "SELECT id FROM ren_vv", "SELECT ren_g(1)"):
            reads, flags = _held_reads(proxy, sql)
            assert reads == {"public.ren_t.secret"} and "runs_code" not in flags, (sql, reads, flags)
        # DDL over the function shows what it reads and what will carry the tag.
        reads, _ = _held_reads(proxy, "CREATE VIEW ren_w AS SELECT id, ren_g(id) AS g FROM ren_t")
        assert reads == {"public.ren_t.secret", "derives: public.ren_w"}, reads
        reads, flags = _held_reads(proxy, "SELECT ren_dyn()")
        assert "runs_code" in flags and not reads
        reads, flags = _held_reads(proxy, "INSERT INTO ren_orders VALUES (1)")
        assert "runs_code" in flags
        # A default that calls a function copies what the function reads into the new row.
        reads, flags = _held_reads(proxy, "INSERT INTO ren_copies (id) VALUES (1)")
        assert reads == {"public.ren_t.secret"} and "runs_code" not in flags, (reads, flags)
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            assert conn.execute("SELECT ren_count()").fetchone() == (1,)  # nothing tagged: not held
            assert conn.execute("SELECT count(*) FROM ren_log").fetchone() == (0,)
    finally:
        pg.psql("DROP VIEW IF EXISTS ren_vv, ren_v; DROP FUNCTION IF EXISTS ren_f(), ren_g(int), ren_count(), "
                "ren_dyn() CASCADE; DROP TABLE IF EXISTS ren_orders, ren_log, ren_copies", dbname="app",
                user="app_scram")


def test_reading_a_request_takes_a_reviewer_group(approving: ProxyThread) -> None:
    """Any token the reviewer issuer signs is not enough: reading requests (statements, literals,
    parameters) takes a reviewer group, as deciding does."""
    client = held_psql(approving, "SELECT email FROM customers WHERE id = 61")
    try:
        request = wait_pending(approving, "WHERE id = 61")
        nobody = reviewer_token("mallory", groups=())
        other = reviewer_token("olga", groups=("auditors",))
        for path in ("/api/approvals?status=pending", f"/api/approvals/{request['id']}"):
            status, body = api(approving, "GET", path, token=nobody)
            assert status == 403 and "no reviewer group" in body["error"], (path, body)
        status, body = api(approving, "GET", "/api/approvals?status=pending", token=other)
        assert status == 200 and body["approvals"] == []
        assert api(approving, "GET", f"/api/approvals/{request['id']}", token=other)[0] == 404
        status, body = api(approving, "GET", f"/api/approvals/{request['id']}", token=reviewer_token())
        assert status == 200 and body["statement"].endswith("id = 61")
        assert decide(approving, request, "deny", reason="done")[0] == 200
    finally:
        client.kill()


def test_a_decision_from_another_site_is_refused(approving: ProxyThread) -> None:
    """Only JSON, and not from a browser page of another origin (what an SSO proxy's header would
    otherwise let any site do with a signed-in reviewer's browser)."""
    client = held_psql(approving, "SELECT email FROM customers WHERE id = 62")
    try:
        request = wait_pending(approving, "WHERE id = 62")
        url = f"{approving.server.approvals_url}/api/approvals/{request['id']}/decision"
        body = json.dumps({"decision": "approve", "reason": "x", "statement_sha256": request["statement_sha256"]})
        for headers, expected in (({"Content-Type": "text/plain"}, 415),
                                  ({"Content-Type": "application/json", "Origin": "https://evil.example"}, 403),
                                  ({"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, 403)):
            http = urllib.request.Request(url, data=body.encode(), method="POST",
                                          headers={**headers, "Authorization": f"Bearer {reviewer_token()}"})
            with pytest.raises(urllib.error.HTTPError) as raised:
                urllib.request.urlopen(http, timeout=10)
            assert raised.value.code == expected, headers
        assert api(approving, "GET", f"/api/approvals/{request['id']}", token=reviewer_token())[1]["status"] \
            == "pending"
        assert decide(approving, request, "deny", reason="done")[0] == 200  # the page's way still works
    finally:
        client.kill()


def big_statement(size: int, marker: str) -> str:
    """A SELECT of about `size` bytes (an IN list of string literals) reading a tagged column
    (held), whose last literal is `marker`."""
    head = "SELECT email FROM customers WHERE name IN ("
    count = (size - len(head)) // 20
    return head + ", ".join(f"'customer {i:08d}'" for i in range(count)) + f", '{marker}')"


async def test_a_large_held_statement_stalls_no_one(approving: ProxyThread) -> None:
    """While a 4 MB held statement is fetched again and again (the page polls it), another
    session's statements keep completing, and each fetch answers a bounded view of it."""
    import aiohttp

    sql = big_statement(4 * 1024 * 1024, "the-4mb-end")
    holder = await asyncpg.connect(approving.dsn())
    other = await asyncpg.connect(approving.dsn())
    held = asyncio.create_task(holder.execute(sql))
    try:
        request = await asyncio.to_thread(wait_pending, approving, "SELECT email FROM customers WHERE name IN")
        assert request["statement_truncated"] and len(request["statement"]) < len(sql)
        headers = {"Authorization": f"Bearer {reviewer_token()}"}
        fetched: list[dict[str, Any]] = []
        selecting = True

        async def fetch_while_selecting(http: aiohttp.ClientSession) -> None:
            while selecting or len(fetched) < 4:
                async with http.get(f"/api/approvals/{request['id']}") as response:
                    assert response.status == 200
                    fetched.append(await response.json())

        async with aiohttp.ClientSession(base_url=approving.server.approvals_url or "", headers=headers) as http:
            fetchers = [asyncio.create_task(fetch_while_selecting(http)) for _ in range(2)]
            answers = []
            for _ in range(50):
                answers.append(await asyncio.wait_for(other.fetchval("SELECT 1"), 30))
                assert not any(f.done() for f in fetchers)  # the fetches are still going on
            selecting = False
            await asyncio.wait_for(asyncio.gather(*fetchers), 60)
        assert answers == [1] * 50
        for found in fetched:
            whole = found["statement_text"]
            assert whole["truncated"] and whole["bytes"] == len(sql.encode())
            assert whole["sha256"] == hashlib.sha256(sql.encode()).hexdigest()
            assert "the-4mb-end" not in found["statement_formatted"]
        assert (await asyncio.to_thread(decide, approving, request, "deny", reason="too long"))[0] == 200
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="too long"):
            await asyncio.wait_for(held, 30)
    finally:
        held.cancel()
        await asyncio.gather(holder.close(), other.close(), return_exceptions=True)


def test_the_whole_text_of_a_cut_statement_downloads(approving: ProxyThread) -> None:
    """What the page cuts can be downloaded whole, by a reviewer who may read the request only."""
    sql = big_statement(200_000, "the-end-\u202e")
    with psycopg.connect(approving.dsn(), autocommit=True) as conn:
        outcome: list[BaseException] = []
        worker = threading.Thread(target=_capture, args=(outcome, conn, sql))
        worker.start()
        request = wait_pending(approving, "SELECT email FROM customers WHERE name IN")
        path = f"/api/approvals/{request['id']}/text"
        url = f"{approving.server.approvals_url}{path}"
        http = urllib.request.Request(url, headers={"Authorization": f"Bearer {reviewer_token()}"})
        with urllib.request.urlopen(http, timeout=30) as response:
            assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert response.headers["Cache-Control"] == "no-store"
            assert response.read() == sql.encode()
        assert api(approving, "GET", path)[0] == 401
        assert api(approving, "GET", path, token=reviewer_token("mallory", groups=()))[0] == 403
        assert api(approving, "GET", path, token=reviewer_token("olga", groups=("auditors",)))[0] == 404
        assert api(approving, "GET", f"{path}?parameter=0", token=reviewer_token())[0] == 404
        assert decide(approving, request, "deny", reason="done")[0] == 200
        worker.join(15)
