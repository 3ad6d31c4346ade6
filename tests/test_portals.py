"""The attacks of the protocol-model issue, through a real proxy in front of a real server:
a raw v3 client makes PostgreSQL run a portal other than the one the proxy would judge by
statement name or by its own counts. Each must be held (the test's reviewer never approves),
so no tagged value reaches the client; benign results still arrive."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgproxy.pgcluster import PostgresCluster
from pgproxy.wire import messages as m
from tests.approvals_support import decide, start_proxy, wait_pending
from tests.harness import ProxyThread, RawClient, error_fields, raw_session

RISKY = "SELECT ssn, email FROM customers WHERE id = 1"


@pytest.fixture(scope="module")
def held(pg: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyThread]:
    # Held statements expire after a second: the tests see the refusal instead of the rows.
    with start_proxy(pg, tmp_path_factory.mktemp("portals"), timeout=1) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def secrets_of_customer_1(pg: PostgresCluster) -> list[bytes]:
    row = pg.psql("SELECT ssn || '|' || email FROM customers WHERE id = 1", dbname="app").strip()
    return [value.encode() for value in row.split("|")]


def _parse(name: str, sql: str) -> bytes:
    return m.Parse(name, sql).encode()


def _bind(portal: str, statement: str) -> bytes:
    return m.Bind(portal, statement, (), (), ()).encode()


def _execute(portal: str, rows: int = 0) -> bytes:
    return m.Execute(portal, rows).encode()


def _close(kind: str, name: str) -> bytes:
    return m.frame(m.CLOSE, kind.encode() + m.encode_str(name))


SYNC = m.Sync().encode()


def _exchange(client: RawClient, data: bytes, cycles: int = 1) -> list[tuple[int, bytes]]:
    client.send(data)
    replies: list[tuple[int, bytes]] = []
    for _ in range(cycles):
        replies += [r for r in client.until_ready() if r[0] != m.NOTICE_RESPONSE]
    return replies


def _leaked(replies: list[tuple[int, bytes]], secrets: list[bytes]) -> bool:
    return any(secret in body for _, body in replies for secret in secrets)


def _rows(replies: list[tuple[int, bytes]]) -> list[bytes]:
    return [body for type_byte, body in replies if type_byte == m.DATA_ROW]


def test_portal_keeps_the_statement_it_was_bound_from(held: ProxyThread, secrets_of_customer_1: list[bytes]) -> None:
    with raw_session(held) as client:
        replies = _exchange(client, _parse("", RISKY) + _bind("", "") + _parse("", "SELECT 'x'")
                            + _execute("") + SYNC)
        assert not _leaked(replies, secrets_of_customer_1)
        assert m.ERROR_RESPONSE in [t for t, _ in replies]
        assert _rows(_exchange(client, m.Query("SELECT 'still here'").encode()))


def test_close_of_the_statement_leaves_its_portal(held: ProxyThread, secrets_of_customer_1: list[bytes]) -> None:
    with raw_session(held) as client:
        _exchange(client, m.Query("BEGIN").encode())
        replies = _exchange(client, _parse("s", RISKY) + _bind("p", "s") + _close("S", "s")
                            + _parse("s", "SELECT 'x'") + _execute("p") + SYNC)
        assert not _leaked(replies, secrets_of_customer_1)


def test_failed_duplicate_parse_changes_nothing(held: ProxyThread, secrets_of_customer_1: list[bytes]) -> None:
    with raw_session(held) as client:
        _exchange(client, _parse("s", RISKY) + SYNC)
        # The second Parse fails (42P05): "s" is still the risky statement.
        _exchange(client, _parse("s", "SELECT 'x'") + SYNC)
        replies = _exchange(client, _bind("", "s") + _execute("") + SYNC)
        assert not _leaked(replies, secrets_of_customer_1)


def test_sql_fetch_reads_a_protocol_portal(held: ProxyThread, secrets_of_customer_1: list[bytes]) -> None:
    with raw_session(held) as client:
        _exchange(client, m.Query("BEGIN").encode())
        _exchange(client, _parse("s", RISKY) + _bind("p", "s") + SYNC)
        replies = _exchange(client, m.Query("FETCH ALL FROM p").encode())
        assert not _leaked(replies, secrets_of_customer_1)
        _exchange(client, m.Query("ROLLBACK").encode())


def test_sql_execute_runs_a_protocol_statement(held: ProxyThread, secrets_of_customer_1: list[bytes]) -> None:
    with raw_session(held) as client:
        _exchange(client, _parse("s", RISKY) + SYNC)
        # PREPARE of the same name fails: the protocol statement holds it; EXECUTE runs that one.
        _exchange(client, m.Query("PREPARE s AS SELECT 'x'").encode())
        replies = _exchange(client, m.Query("EXECUTE s").encode())
        assert not _leaked(replies, secrets_of_customer_1)


def test_a_portal_from_before_a_savepoint_survives_rollback_to(held: ProxyThread,
                                                                secrets_of_customer_1: list[bytes]) -> None:
    with raw_session(held) as client:
        _exchange(client, m.Query("BEGIN").encode())
        _exchange(client, _parse("s", RISKY) + _bind("p", "s") + SYNC)
        _exchange(client, m.Query("SAVEPOINT a").encode())
        # A failed pipeline: the Close after the error is skipped, so "p" is still there.
        _exchange(client, _parse("", "SELECT 1/0") + _bind("", "") + _execute("") + _close("P", "p") + SYNC)
        _exchange(client, m.Query("ROLLBACK TO a").encode())
        replies = _exchange(client, _execute("p") + SYNC)
        assert not _leaked(replies, secrets_of_customer_1)


def test_with_hold_cursor_outlives_its_transaction(held: ProxyThread, secrets_of_customer_1: list[bytes]) -> None:
    with raw_session(held) as client:
        _exchange(client, m.Query("DECLARE c CURSOR WITH HOLD FOR " + RISKY).encode())
        replies = _exchange(client, m.Query("FETCH ALL FROM c").encode())
        assert not _leaked(replies, secrets_of_customer_1)


def test_reserved_names_are_refused(held: ProxyThread) -> None:
    with raw_session(held) as client:
        replies = _exchange(client, _parse("pgproxy_reserved_x", "SELECT 1") + SYNC)
        assert [t for t, _ in replies] == [m.ERROR_RESPONSE, m.READY_FOR_QUERY]
        assert b"reserved" in replies[0][1]
        assert _rows(_exchange(client, m.Query("SELECT 'after'").encode()))
        replies = _exchange(client, m.Query("PREPARE pgproxy_reserved_y AS SELECT 1").encode())
        assert [t for t, _ in replies] == [m.ERROR_RESPONSE, m.READY_FOR_QUERY] and b"reserved" in replies[0][1]


def test_benign_pipelines_pass(held: ProxyThread) -> None:
    with raw_session(held) as client:
        replies = _exchange(client, _parse("", "SELECT 'b1'") + _bind("", "") + _execute("") + SYNC
                            + _parse("", "SELECT 'b2'") + _bind("", "") + _execute("") + SYNC, cycles=2)
        assert [row[-2:] for row in _rows(replies)] == [b"b1", b"b2"]
        replies = _exchange(client, m.Query("BEGIN; DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 3) g; "
                                            "FETCH 2 FROM c; COMMIT").encode())
        assert len(_rows(replies)) == 2


def test_unknown_portal_reaches_the_server(held: ProxyThread) -> None:
    """An Execute of a portal the model says does not exist goes to the server, which refuses it."""
    with raw_session(held) as client:
        replies = _exchange(client, _execute("nope") + SYNC)
        assert replies[0][0] == m.ERROR_RESPONSE and b"34000" in replies[0][1]


def test_a_portal_the_model_does_not_know_ends_the_session(approving: ProxyThread, pg: PostgresCluster,
                                                           secrets_of_customer_1: list[bytes]) -> None:
    """A function opens a cursor (a portal) that no message of the client created: when the client
    executes that portal, the server's rows are not what the model expected. The session ends
    with 08P01 before any row leaves, and the event is audited."""
    pg.psql("CREATE OR REPLACE FUNCTION open_sneaky() RETURNS refcursor LANGUAGE plpgsql AS $$ "
            "DECLARE c refcursor := 'sneaky'; BEGIN OPEN c FOR SELECT ssn, email FROM customers "
            "WHERE id = 1; RETURN c; END $$; GRANT EXECUTE ON FUNCTION open_sneaky() TO app_scram",
            dbname="app")
    with raw_session(approving) as client:
        _exchange(client, m.Query("BEGIN").encode())
        # The function runs code pgproxy cannot see: it is held; the reviewer approves it.
        client.send(m.Query("SELECT open_sneaky()").encode())
        request = wait_pending(approving, "open_sneaky")
        assert decide(approving, request)[0] == 200
        assert _rows([r for r in client.until_ready() if r[0] != m.NOTICE_RESPONSE])
        client.send(_execute("sneaky") + SYNC)
        replies: list[tuple[int, bytes]] = []
        while (message := client.read_message()) is not None:
            replies.append(message)
    assert not _leaked(replies, secrets_of_customer_1)
    assert replies and replies[-1][0] == m.ERROR_RESPONSE
    fields = error_fields(replies[-1][1])
    assert fields["C"] == "08P01" and "lost track" in fields["M"]
    audit = approving.server.audit
    assert audit is not None
    approving.call(audit.flush())
    events = approving.call(audit.store.events(type="session.desync"))
    assert any("did not expect" in row.body for row in events), events


def test_planning_that_runs_code_is_held_before_it_runs(held: ProxyThread, pg: PostgresCluster,
                                                        secrets_of_customer_1: list[bytes]) -> None:
    """The planner folds immutable functions: binding (or declaring a cursor over) a statement
    that calls one runs it. A user function is code pgproxy cannot see, so such a statement is
    held at Bind or DECLARE, not at Execute or FETCH; here nobody approves, and nothing leaks."""
    pg.psql("CREATE OR REPLACE FUNCTION plan_leak() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION 'value: %', (SELECT ssn FROM customers WHERE id = 1); END $$; "
            "GRANT EXECUTE ON FUNCTION plan_leak() TO app_scram", dbname="app")
    with raw_session(held) as client:
        replies = _exchange(client, _parse("", "SELECT plan_leak() WHERE $1::int = 1")
                            + m.Bind("", "", (), (b"1",), ()).encode() + SYNC)
        assert not _leaked(replies, secrets_of_customer_1)
        assert [t for t, _ in replies] == [m.PARSE_COMPLETE, m.ERROR_RESPONSE, m.READY_FOR_QUERY]
        assert b"expired" in replies[1][1]
        _exchange(client, m.Query("BEGIN").encode())
        replies = _exchange(client, m.Query("DECLARE c CURSOR FOR SELECT plan_leak()").encode())
        assert not _leaked(replies, secrets_of_customer_1) and replies[0][0] == m.ERROR_RESPONSE
