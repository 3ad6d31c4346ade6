"""Protocol features through the proxy: COPY, LISTEN/NOTIFY, cancel, notices,
FunctionCall, and the decision point refusing statements exactly as PostgreSQL
would refuse them."""

from __future__ import annotations

import asyncio
import hashlib
import struct
import threading
import time
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from pgproxy.decision import ALLOW, Judgement, Statement, StatementGate, Verdict
from pgproxy.errors import SqlState
from pgproxy.pgcluster import PostgresCluster
from pgproxy.session import Session
from pgproxy.wire import messages as m
from pgproxy.wire.codec import FrameReader
from tests.harness import ProxyThread, error_fields, make_config, raw_session, running_proxy

COPY_ROWS = 1_000_000


def copy_out_digest(dsn: str, query: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with psycopg.connect(dsn) as conn, conn.cursor().copy(f"COPY ({query}) TO STDOUT") as copy:
        for chunk in copy:
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def test_copy_out_million_rows_byte_identical(proxy: ProxyThread, direct_dsn: str) -> None:
    query = (f"SELECT g, md5(g::text), now()::date - (g % 365) FROM generate_series(1, {COPY_ROWS}) g")
    via = copy_out_digest(proxy.dsn(), query)
    direct = copy_out_digest(direct_dsn, query)
    assert via == direct
    assert via[1] > 40 * COPY_ROWS


def test_frames_of_unlisted_types_are_checked_and_passed_over() -> None:
    """The relay lists only the server messages it watches; the rest still count towards `end`."""
    rows = m.frame(m.DATA_ROW, b"\x00\x01\x00\x00\x00\x011") * 3
    ready = m.ReadyForQuery("I").encode()
    reader = FrameReader(max_message_bytes=1024, allowed_types=m.BACKEND_TYPES,
                         listed_types=frozenset({m.READY_FOR_QUERY}))
    stream = rows + ready
    assert reader.feed(stream[:len(rows) + 2]) == [] and reader.end == len(rows)
    # The held-back start of ReadyForQuery and the rest of it: offsets are into the new buffer.
    assert reader.feed(stream[len(rows) + 2:]) == [(m.READY_FOR_QUERY, 0, len(ready))]
    assert reader.end == len(ready) and reader.buffer == ready
    with pytest.raises(m.MessageFormatError, match="invalid message length 2"):
        reader.feed(b"D\x00\x00\x00\x02")  # an unlisted message is checked all the same


def test_copy_in_million_rows_byte_identical(proxy: ProxyThread, direct_dsn: str) -> None:
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS copy_in; CREATE TABLE copy_in (id int, label text)")
    sent = hashlib.sha256()

    def rows() -> Iterator[bytes]:
        batch = []
        for i in range(1, COPY_ROWS + 1):
            batch.append(f"{i}\tlabel-{i}\n")
            if len(batch) == 10_000:
                yield "".join(batch).encode()
                batch = []

    with psycopg.connect(proxy.dsn()) as conn:
        with conn.cursor().copy("COPY copy_in FROM STDIN") as copy:
            for block in rows():
                sent.update(block)
                copy.write(block)
        conn.commit()
    # Read it back directly from the server, in the same text format.
    back = copy_out_digest(direct_dsn, "SELECT * FROM copy_in ORDER BY id")
    assert back[0] == sent.hexdigest()
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE copy_in")


def test_copy_from_stdin_error_recovers(proxy: ProxyThread) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE c (x int)")
        with pytest.raises(psycopg.errors.InvalidTextRepresentation), \
                conn.cursor().copy("COPY c FROM STDIN") as copy:
            copy.write(b"1\nnot-a-number\n")
        assert conn.execute("SELECT count(*) FROM c").fetchone() == (0,)


async def test_asyncpg_copy_both_ways(proxy: ProxyThread) -> None:
    conn = await asyncpg.connect(proxy.dsn())
    try:
        await conn.execute("CREATE TEMP TABLE a (id int, v text)")
        await conn.copy_records_to_table("a", records=[(i, f"v{i}") for i in range(5000)])
        assert await conn.fetchval("SELECT count(*) FROM a") == 5000
        chunks: list[bytes] = []

        async def sink(data: bytes) -> None:
            chunks.append(data)

        await conn.copy_from_query("SELECT * FROM a WHERE id < 3 ORDER BY id", output=sink)
        assert b"".join(chunks) == b"0\tv0\n1\tv1\n2\tv2\n"
    finally:
        await conn.close()


async def test_listen_notify_across_two_clients(proxy: ProxyThread) -> None:
    listener = await asyncpg.connect(proxy.dsn())
    sender = await asyncpg.connect(proxy.dsn())
    received: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    try:
        await listener.add_listener("jobs", lambda _c, _pid, channel, payload:
                                    received.put_nowait((channel, payload)))
        await sender.execute("NOTIFY jobs, 'first'")
        await sender.execute("SELECT pg_notify('jobs', 'second')")
        got = [await asyncio.wait_for(received.get(), 10) for _ in range(2)]
        assert got == [("jobs", "first"), ("jobs", "second")]
    finally:
        await listener.close()
        await sender.close()


def test_cancel_is_forwarded_to_the_right_backend(proxy: ProxyThread) -> None:
    with psycopg.connect(proxy.dsn()) as victim, psycopg.connect(proxy.dsn()) as bystander:
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                victim.execute("SELECT pg_sleep(60)")
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=run)
        started = time.monotonic()
        worker.start()
        time.sleep(0.5)
        victim.cancel_safe(timeout=10)
        worker.join(30)
        assert not worker.is_alive()
        assert isinstance(outcome[0], psycopg.errors.QueryCanceled)
        assert time.monotonic() - started < 30  # it did not run to the end of pg_sleep(60)
        assert bystander.execute("SELECT 1").fetchone() == (1,)  # other sessions untouched
        victim.rollback()
        assert victim.execute("SELECT 2").fetchone() == (2,)


def test_cancel_with_wrong_key_does_nothing(proxy: ProxyThread) -> None:
    import socket
    import struct

    with psycopg.connect(proxy.dsn()) as conn:
        pid = conn.info.backend_pid  # the proxy's own key, not the upstream's
        assert conn.execute("SELECT pg_backend_pid()").fetchone() != (pid,)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(struct.pack("!iiii", 16, 80877102, pid, 12345))
            assert sock.recv(1) == b""  # closed without reply, as PostgreSQL does
        assert conn.execute("SELECT 'still here'").fetchone() == ("still here",)


def test_notices_and_parameter_status(proxy: ProxyThread) -> None:
    with psycopg.connect(proxy.dsn(application_name="agent-x")) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello from the server'; END $$")
        assert notices == ["hello from the server"]
        assert conn.info.parameter_status("application_name") == "agent-x"
        conn.execute("SET application_name = 'renamed'")
        assert conn.info.parameter_status("application_name") == "renamed"
        assert conn.info.parameter_status("server_version") is not None


def test_function_call_message(proxy: ProxyThread) -> None:
    # FunctionCall ('F') is the fast-path interface; call int4pl(int4, int4) by OID, text format.
    with psycopg.connect(proxy.dsn()) as conn:
        row = conn.execute("SELECT 'int4pl(int4, int4)'::regprocedure::oid").fetchone()
        assert row is not None
        fn_oid = int(row[0])
    with raw_session(proxy) as client:
        args = b"".join(struct.pack("!i", len(a)) + a for a in (b"20", b"22"))
        body = struct.pack("!ihhh", fn_oid, 1, 0, 2) + args + struct.pack("!h", 0)
        client.send(m.frame(m.FUNCTION_CALL, body))
        replies = client.until_ready()
        assert [chr(t) for t, _ in replies] == ["V", "Z"]
        (length,) = struct.unpack("!i", replies[0][1][:4])
        assert replies[0][1][4:4 + length] == b"42"


# --- The decision point --------------------------------------------------------------


class RefuseMarked(StatementGate):
    """A test gate: refuses every statement containing the word REFUSE_ME."""

    def __init__(self) -> None:
        self.seen: list[Statement] = []

    def judge(self, session: Session, statement: Statement) -> Judgement:
        self.seen.append(statement)
        if "REFUSE_ME" in statement.sql:
            return Judgement(Verdict.DENY, SqlState.INSUFFICIENT_PRIVILEGE,
                             "statement refused by test rule", detail="rule: test")
        return ALLOW


@pytest.fixture
def gated(pg: PostgresCluster) -> Iterator[tuple[ProxyThread, RefuseMarked]]:
    gate = RefuseMarked()
    with running_proxy(make_config(pg), gate=gate) as proxy:
        yield proxy, gate


def test_refused_simple_query_never_reaches_upstream(gated: tuple[ProxyThread, RefuseMarked],
                                                     direct_dsn: str) -> None:
    proxy, gate = gated
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="refused by test rule") as info:
            conn.execute("CREATE TABLE refused_t (x int) -- REFUSE_ME")
        assert info.value.diag.message_detail == "rule: test"
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with psycopg.connect(direct_dsn) as direct:
        assert direct.execute("SELECT to_regclass('refused_t')").fetchone() == (None,)
    assert any(s.protocol == "simple" and "REFUSE_ME" in s.sql for s in gate.seen)


def test_refusal_inside_transaction_aborts_it_like_postgres(
        gated: tuple[ProxyThread, RefuseMarked]) -> None:
    proxy, _ = gated
    with psycopg.connect(proxy.dsn()) as conn:
        conn.execute("CREATE TEMP TABLE r (x int)")
        conn.execute("INSERT INTO r VALUES (1)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT 'REFUSE_ME'")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 'ok'").fetchone() == ("ok",)


async def test_refused_parse_in_extended_protocol(gated: tuple[ProxyThread, RefuseMarked]) -> None:
    proxy, gate = gated
    conn = await asyncpg.connect(proxy.dsn())
    try:
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="refused by test rule"):
            await conn.fetch("SELECT $1::text AS REFUSE_ME", "x")
        assert await conn.fetchval("SELECT $1::int * 2", 21) == 42
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute("SELECT 1")
                await conn.execute("SELECT 'REFUSE_ME'")
        assert await conn.fetchval("SELECT 'after'") == "after"
        assert any(s.protocol == "extended" for s in gate.seen)
    finally:
        await conn.close()


def pipeline_outcome(dsn: str, second: str) -> tuple[type[BaseException] | None, object]:
    """Run three inserts in one pipeline, the second one `second`; return (error, table)."""
    error: type[BaseException] | None = None
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE p (x int)")
        try:
            with conn.pipeline():
                conn.execute("INSERT INTO p VALUES (1)")
                conn.execute(second)
                conn.execute("INSERT INTO p VALUES (3)")
        except psycopg.Error as exc:
            error = type(exc)
        table = conn.execute("SELECT array_agg(x ORDER BY x) FROM p").fetchone()
        return error, table


def test_refusal_in_a_pipeline_matches_postgres_error(gated: tuple[ProxyThread, RefuseMarked],
                                                      direct_dsn: str) -> None:
    proxy, _ = gated
    refused = pipeline_outcome(proxy.dsn(), "INSERT INTO p VALUES (2) -- REFUSE_ME")
    failed = pipeline_outcome(direct_dsn, "INSERT INTO p VALUES (2/0)")
    assert refused[0] is psycopg.errors.InsufficientPrivilege
    assert failed[0] is psycopg.errors.DivisionByZero
    assert refused[1] == failed[1]  # the same statements took effect as after a server error


def test_refusal_mid_pipeline_results_stay_in_order(gated: tuple[ProxyThread, RefuseMarked]) -> None:
    proxy, _ = gated

    def cycle(sql: str) -> bytes:
        return (m.Parse("", sql).encode() + m.Bind("", "", (), (), ()).encode()
                + m.Execute("").encode() + m.Sync().encode())

    with raw_session(proxy) as client:
        client.send(cycle("SELECT 'first'") + cycle("SELECT 'REFUSE_ME'") + cycle("SELECT 'third'"))
        replies = [client.until_ready() for _ in range(3)]
    assert [[chr(t) for t, _ in r] for r in replies] == [
        ["1", "2", "D", "C", "Z"], ["E", "Z"], ["1", "2", "D", "C", "Z"]]
    assert replies[0][2][1].endswith(b"first")
    refusal = error_fields(replies[1][0][1])
    assert (refusal["C"], refusal["M"]) == ("42501", "statement refused by test rule")
    assert replies[2][2][1].endswith(b"third")


def test_messages_after_a_refused_parse_are_skipped_until_sync(gated: tuple[ProxyThread, RefuseMarked]) -> None:
    proxy, gate = gated
    with raw_session(proxy) as client:
        # After the refused Parse the server skips everything up to Sync, a Query included:
        # one ErrorResponse, one ReadyForQuery, and the session goes on normally.
        client.send(m.Parse("", "SELECT 'REFUSE_ME'").encode() + m.Bind("", "", (), (), ()).encode()
                    + m.Execute("").encode() + m.Query("SELECT 'skipped'").encode()
                    + m.Parse("", "SELECT 'also skipped'").encode() + m.Sync().encode())
        replies = client.until_ready()
        assert [chr(t) for t, _ in replies] == ["E", "Z"]
        assert error_fields(replies[0][1])["C"] == "42501"
        client.send(m.Query("SELECT 'next'").encode())
        replies = client.until_ready()
        assert [chr(t) for t, _ in replies] == ["T", "D", "C", "Z"]
        # The model expects no answer to the skipped Query: the session is idle, not waiting
        # for a ReadyForQuery that will never come.
        (session,) = proxy.server.sessions
        assert session.model.idle
    assert not any("skipped" in s.sql for s in gate.seen)  # never judged: never run either
