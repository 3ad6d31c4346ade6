"""Micro-benchmark: the relay's in-process cost per pgbench select-only transaction.

    .venv/bin/python -m benchmarks.micro_relay [--transactions N] [--rounds N] [--json FILE] [--smoke]

A Session that writes to no socket is fed, in a loop, the bytes of one pgbench -S transaction
from the client and the server's answer to it, read by read as a socket would deliver them:
simple (Query; RowDescription, DataRow, CommandComplete, ReadyForQuery) and prepared (Bind,
Describe, Execute, Sync; BindComplete, RowDescription, DataRow, CommandComplete,
ReadyForQuery). The enforce gate is the real one, with the schema read from a real PostgreSQL
(pgbench scale 1) and the demo policy. What is timed is everything the relay does with a read:
framing, the decision point, the protocol model, the result guard. Each figure is the median
of the rounds, in microseconds per transaction.
"""

from __future__ import annotations

import asyncio
import statistics
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.cpu import arguments, in_process_proxy, report
from benchmarks.run import bench_database
from pgproxy.config import SamplingConfig
from pgproxy.decision import StatementGate
from pgproxy.enforce import PolicyGate
from pgproxy.identity import Identity
from pgproxy.pgcluster import PostgresCluster
from pgproxy.sampling import Sampler
from pgproxy.server import ProxyServer
from pgproxy.session import Session, SessionRegistry
from pgproxy.wire import messages as m

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = 4242;"
PREPARED = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"


class _Sink:
    """A transport that takes writes and drops them."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False


class _Side:
    transport = _Sink()


class _Writer:
    transport = _Sink()

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 5555)


def _row_description(table: int) -> bytes:
    return m.frame(m.ROW_DESCRIPTION, struct.pack("!h", 1) + m.encode_str("abalance")
                   + struct.pack("!ihihih", table, 3, 23, 4, -1, 0))


def _answer(table: int, bind: bool) -> bytes:
    return ((m.frame(m.BIND_COMPLETE, b"") if bind else b"") + _row_description(table)
            + m.frame(m.DATA_ROW, struct.pack("!hi", 1, 1) + b"0") + m.frame(m.COMMAND_COMPLETE, b"SELECT 1\0")
            + m.ReadyForQuery("I").encode())


def offline_session(server: ProxyServer, gate: StatementGate | None) -> Session:
    """A Session in the relaying state whose sockets go nowhere."""
    loop = asyncio.new_event_loop()
    session = Session(asyncio.StreamReader(loop=loop), _Writer(),  # type: ignore[arg-type]
                      config=server.config, authenticator=server.authenticator, registry=SessionRegistry(),
                      tls_context=None, gate=gate)
    session.identity = Identity("agent", frozenset(), "jwt")
    session.database = "app"
    session._ended = loop.create_future()
    session._client = session._upstream = _Side()  # type: ignore[assignment]
    return session


def per_transaction(session: Session, client: bytes, server: bytes, transactions: int) -> float:
    client_data, upstream_data = session._client_data, session._upstream_data
    started = time.perf_counter()
    for _ in range(transactions):
        client_data(client)
        upstream_data(server)
    return (time.perf_counter() - started) / transactions * 1e6


def main() -> int:
    args = arguments(__doc__, 7, 200)
    found: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="pgproxy-micro-relay-") as tmp, PostgresCluster() as pg:
        bench_database(pg, 1)
        table = int(pg.psql("SELECT 'pgbench_accounts'::regclass::oid", dbname="app").strip())
        for mode in ("passthrough", "enforce", "enforce_sampling"):
            with in_process_proxy(pg, Path(tmp), mode.removesuffix("_sampling")) as (_, server):
                for protocol in ("simple", "prepared"):
                    session = offline_session(server, server.gate)
                    if mode == "enforce_sampling":  # sampling on: nothing here to sample, so the cost of looking
                        assert isinstance(server.gate, PolicyGate)
                        session.model.sampler = Sampler(SamplingConfig(enabled=True), server.gate.catalog.schema,
                                                        None, None)
                        session.model.sample_database = "app"
                    if protocol == "simple":
                        client, answer = m.Query(SELECT).encode(), _answer(table, bind=False)
                    else:
                        session._client_data(m.Parse("P0_1", PREPARED).encode() + m.Sync().encode())
                        session._upstream_data(m.frame(m.PARSE_COMPLETE, b"") + m.ReadyForQuery("I").encode())
                        client = (m.Bind("", "P0_1", (), (b"4242",), ()).encode() + m.Describe("P", "").encode()
                                  + m.Execute("").encode() + m.Sync().encode())
                        answer = _answer(table, bind=True)
                    per_transaction(session, client, answer, min(args.transactions, 1000))  # warm up
                    assert session._ended is not None and not session._ended.done(), session._ended
                    samples = [per_transaction(session, client, answer, args.transactions)
                               for _ in range(args.rounds)]
                    found[f"{mode}_{protocol}_us"] = statistics.median(samples)
    return report(found, "in process", args.json)


if __name__ == "__main__":
    raise SystemExit(main())
