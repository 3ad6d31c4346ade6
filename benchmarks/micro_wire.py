"""Micro-benchmark: the wire codec's cost per message (pgproxy.wire, no sockets, no PostgreSQL).

    .venv/bin/python -m benchmarks.micro_wire [--repeats N] [--json FILE] [--smoke]

Times what the relay does per message: framing a stream with FrameReader.feed (the whole
stream fed in 64 KiB reads, as the session reads a socket; frontend traffic of simple and
extended queries, backend traffic of results), decoding the messages the analyzer needs
(Query, Parse, Bind, RowDescription's column sources) and encoding what the proxy writes
itself (ErrorResponse, Query). Each figure is ns per message: the median of N repeats, each
the mean over a loop long enough to take a few milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

from pgproxy.wire import messages as m
from pgproxy.wire.codec import FrameReader

READ_SIZE = 64 * 1024
SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = 4242"
PREPARED = "SELECT aid, abalance, filler FROM pgbench_accounts WHERE aid = $1 AND bid = $2"


def row_description(columns: list[tuple[str, int, int, int]]) -> bytes:
    """A RowDescription body: (name, table OID, column number, type OID) per field, text format."""
    body = struct.pack("!h", len(columns))
    for name, table, attnum, type_oid in columns:
        body += m.encode_str(name) + struct.pack("!ihihih", table, attnum, type_oid, -1, -1, 0)
    return body


def data_row(values: list[bytes | None]) -> bytes:
    """A DataRow body in text format."""
    body = struct.pack("!h", len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return body


ROW_DESCRIPTION = row_description([("aid", 16390, 1, 23), ("abalance", 16390, 3, 23), ("filler", 16390, 4, 1042)])
BIND = m.Bind("", "s1", (1, 1), (struct.pack("!i", 4242), struct.pack("!i", 7)), (1,))
PARSE = m.Parse("s1", PREPARED, (23, 23))


def frontend_stream(transactions: int) -> tuple[bytes, int]:
    """Client traffic: per transaction one simple Query and one extended Parse/Bind/Describe/Execute/Sync."""
    one = (m.Query(SELECT).encode() + PARSE.encode() + BIND.encode() + m.Describe("P", "").encode()
           + m.Execute("").encode() + m.Sync().encode())
    return one * transactions, 6 * transactions


def backend_stream(transactions: int, rows: int = 10) -> tuple[bytes, int]:
    """Server traffic: per transaction RowDescription, `rows` DataRows, CommandComplete, ReadyForQuery."""
    row = m.frame(m.DATA_ROW, data_row([b"4242", b"-1234", b" " * 84]))
    one = (m.frame(m.ROW_DESCRIPTION, ROW_DESCRIPTION) + row * rows
           + m.frame(m.COMMAND_COMPLETE, m.encode_str(f"SELECT {rows}")) + m.ReadyForQuery("I").encode())
    return one * transactions, (rows + 3) * transactions


def feed_all(stream: bytes, allowed: frozenset[int]) -> Callable[[], int]:
    """A callable that frames `stream` in READ_SIZE reads with a fresh FrameReader; returns the count."""
    chunks = [stream[i:i + READ_SIZE] for i in range(0, len(stream), READ_SIZE)]

    def run() -> int:
        reader = FrameReader(max_message_bytes=1 << 20, allowed_types=allowed)
        return sum(len(reader.feed(chunk)) for chunk in chunks)

    return run


def cases(transactions: int) -> list[tuple[str, Callable[[], object], int]]:
    """(name, callable, messages handled per call) for every measured operation."""
    frontend, frontend_count = frontend_stream(transactions)
    backend, backend_count = backend_stream(transactions)
    assert feed_all(frontend, m.FRONTEND_TYPES)() == frontend_count
    assert feed_all(backend, m.BACKEND_TYPES)() == backend_count
    query_body, parse_body, bind_body = m.encode_str(SELECT), PARSE.encode()[5:], BIND.encode()[5:]
    error = m.ErrorResponse.make("ERROR", "42501", "a reviewer denied this statement",
                                 detail="rule personal-data: reads or writes personal data")
    return [
        (f"FrameReader.feed, frontend ({frontend_count} messages, {len(frontend) // 1024} KiB)",
         feed_all(frontend, m.FRONTEND_TYPES), frontend_count),
        (f"FrameReader.feed, backend ({backend_count} messages, {len(backend) // 1024} KiB)",
         feed_all(backend, m.BACKEND_TYPES), backend_count),
        ("decode_query", lambda: m.decode_query(query_body), 1),
        ("decode_parse", lambda: m.decode_parse(parse_body), 1),
        ("decode_bind (2 parameters)", lambda: m.decode_bind(bind_body), 1),
        ("row_description_sources (3 columns)", lambda: m.row_description_sources(ROW_DESCRIPTION), 1),
        ("ErrorResponse.make().encode()", lambda: m.ErrorResponse.make(
            "ERROR", "42501", "a reviewer denied this statement", detail="rule personal-data").encode(), 1),
        ("ErrorResponse.encode (prebuilt)", error.encode, 1),
        ("Query.encode", lambda: m.Query(SELECT).encode(), 1),
    ]


def ns_per_message(call: Callable[[], object], per_call: int, repeats: int, min_seconds: float) -> float:
    """Median over `repeats` of the mean time per message, each repeat looping for about `min_seconds`."""
    timer = timeit.Timer(call)
    number = 1
    while (took := timer.timeit(number)) < min_seconds / 10:
        number *= 10
    number = max(1, round(number * min_seconds / took))
    return statistics.median(t / number / per_call * 1e9 for t in timer.repeat(repeats, number))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="a short run that only proves the benchmark works")
    args = parser.parse_args()
    repeats, min_seconds, transactions = (3, 0.005, 100) if args.smoke else (args.repeats, 0.05, 2000)

    results = {name: ns_per_message(call, per_call, repeats, min_seconds)
               for name, call, per_call in cases(transactions)}
    print(f"| wire codec (median of {repeats}) | ns per message |")
    print("|---|---|")
    for name, ns in results.items():
        print(f"| {name} | {ns:.0f} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"ns_per_message": results, "repeats": repeats}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
