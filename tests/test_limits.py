"""Limits a demanding operator relies on: back-pressure and the idle timeout."""

from __future__ import annotations

import time

import psycopg
import pytest

from pgproxy.config import Limits
from pgproxy.pgcluster import PostgresCluster
from pgproxy.session import Session
from pgproxy.startup import READ_CHUNK
from pgproxy.wire import messages as m
from tests.harness import RawClient, error_fields, make_config, running_proxy


def test_slow_reader_gets_back_pressure_not_buffering(pg: PostgresCluster) -> None:
    limit = 64 * 1024
    with running_proxy(make_config(pg, limits=Limits(max_buffered_bytes=limit))) as proxy:
        client = RawClient(proxy.port, timeout=30)
        client.login()
        # Roughly 40 MB of COPY data, while the client reads nothing for a while.
        client.send(m.Query("COPY (SELECT g, repeat('x', 30) FROM generate_series(1, 1000000) g) "
                            "TO STDOUT").encode())
        (session,) = proxy.server.sessions
        peaks = []
        for _ in range(20):
            time.sleep(0.1)
            peaks.append(proxy.call(_buffered(session)))
        # The proxy stops reading the upstream once its queue to the client is full: at most
        # the limit plus one read's worth is held, never the whole result.
        assert max(peaks) <= limit + READ_CHUNK
        rows = 0
        while (message := client.read_message()) is not None:
            if message[0] == m.COPY_DATA:
                rows += 1
            if message[0] == m.READY_FOR_QUERY:
                break
        assert rows == 1_000_000
        client.close()


async def _buffered(session: Session) -> int:
    """Bytes the proxy holds for the client in user space (read on the proxy's loop)."""
    return session.writer.transport.get_write_buffer_size()


def test_idle_session_timeout(pg: PostgresCluster) -> None:
    config = make_config(pg, limits=Limits(idle_timeout_seconds=1))
    with running_proxy(config) as proxy:
        client = RawClient(proxy.port, timeout=20)
        client.login()
        started = time.monotonic()
        message = client.read_message()
        assert message is not None and message[0] == m.ERROR_RESPONSE
        fields = error_fields(message[1])
        assert (fields["C"], fields["S"]) == ("57P05", "FATAL")
        assert "idle-session timeout" in fields["M"]
        assert client.read_message() is None  # then the proxy closes the connection
        assert time.monotonic() - started < 20
        client.close()


def test_idle_timeout_spares_open_transactions_and_running_queries(pg: PostgresCluster) -> None:
    config = make_config(pg, limits=Limits(idle_timeout_seconds=1))
    with running_proxy(config) as proxy, psycopg.connect(proxy.dsn()) as conn:
        conn.execute("SELECT pg_sleep(2.5)")  # busy, not idle
        conn.execute("SELECT 1")  # inside the transaction psycopg opened
        time.sleep(2.5)  # idle in transaction: PostgreSQL's idle_session_timeout spares it too
        assert conn.execute("SELECT 'alive'").fetchone() == ("alive",)
        conn.commit()
        time.sleep(3)
        with pytest.raises(psycopg.OperationalError, match="idle-session timeout"):
            conn.execute("SELECT 1")
