"""The relay's own cost per pgbench select-only transaction: the time spent inside the session's
socket callbacks (framing, the decision point, the protocol model, the result guard and the
writes they make), in pass-through and enforce mode, simple and prepared protocol.

    .venv/bin/python -m benchmarks.cpu [--transactions N] [--rounds N] [--json FILE] [--smoke]

The proxy runs in this process on its own event loop thread, configured as benchmarks/run.py
configures it; the two callbacks (`Session._client_data`, `Session._upstream_data`) are timed
with perf_counter. Unlike the TPS ratios of benchmarks/run.py this leaves out pgbench, the
server and the event loop's waiting, so it shows what a change to the relay costs. Each figure
is the median of the rounds, in microseconds per transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt

from benchmarks.run import bench_database, write_proxy_config
from pgproxy.config import load_config
from pgproxy.pgcluster import PostgresCluster, find_pg_bin
from pgproxy.server import ProxyServer, new_event_loop
from pgproxy.session import Session

MODES = ("passthrough", "enforce")
PROTOCOLS = ("simple", "prepared")
SECRET = "cpu-secret-" + "z" * 24


class Timed:
    """Wraps the session's socket callbacks, adding up the time spent in them."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._saved: dict[str, Any] = {}

    def install(self) -> None:
        for name in ("_client_data", "_upstream_data"):
            original: Callable[[Session, bytes], None] = getattr(Session, name)
            self._saved[name] = original

            def timed(session: Session, data: bytes, original: Callable[[Session, bytes], None] = original) -> None:
                started = time.perf_counter()
                try:
                    original(session, data)
                finally:
                    self.seconds += time.perf_counter() - started

            setattr(Session, name, timed)

    def remove(self) -> None:
        for name, original in self._saved.items():
            setattr(Session, name, original)


@contextmanager
def in_process_proxy(pg: PostgresCluster, directory: Path, mode: str) -> Iterator[tuple[str, ProxyServer]]:
    """pgproxy in `mode` on an event loop thread of this process; yields the agent's URL and the server."""
    home, port = write_proxy_config(pg, directory, mode, SECRET)
    loop = new_event_loop()
    server = ProxyServer(load_config(home / "pgproxy.yaml"))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    try:
        token = jwt.encode({"sub": "agent", "exp": int(time.time()) + 86400}, SECRET, algorithm="HS256")
        yield f"postgresql://agent:{token}@127.0.0.1:{port}/app", server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def per_transaction(timed: Timed, url: str, protocol: str, transactions: int) -> float:
    before = timed.seconds
    subprocess.run([str(find_pg_bin("pgbench")), "-S", "-M", protocol, "-n", "-c", "1", "-t", str(transactions),
                    url], check=True, capture_output=True, timeout=600)
    return (timed.seconds - before) / transactions * 1e6


def arguments(doc: str | None, rounds: int, smoke_transactions: int) -> argparse.Namespace:
    """The options this benchmark and micro_relay share: --transactions, --rounds, --json, --smoke."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--transactions", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true", help="a short run that proves this works")
    args = parser.parse_args()
    if args.smoke:
        args.transactions, args.rounds = smoke_transactions, 1
    return args


def report(found: dict[str, float], what: str, json_file: Path | None) -> int:
    for name, value in found.items():
        print(f"{name:28} {value:7.2f} us {what} per transaction")
    if json_file is not None:
        json_file.write_text(json.dumps(found, indent=2))
    return 0


def main() -> int:
    args = arguments(__doc__, 5, 300)
    found: dict[str, float] = {}
    timed = Timed()
    timed.install()
    try:
        with tempfile.TemporaryDirectory(prefix="pgproxy-cpu-") as tmp, PostgresCluster() as pg:
            bench_database(pg, 1)
            for mode in MODES:
                with in_process_proxy(pg, Path(tmp), mode) as (url, _):
                    for protocol in PROTOCOLS:
                        per_transaction(timed, url, protocol, min(args.transactions, 1000))  # warm up
                        samples = [per_transaction(timed, url, protocol, args.transactions)
                                   for _ in range(args.rounds)]
                        found[f"{mode}_{protocol}_us"] = statistics.median(samples)
    finally:
        timed.remove()
    return report(found, "in the relay's callbacks", args.json)


if __name__ == "__main__":
    raise SystemExit(main())
