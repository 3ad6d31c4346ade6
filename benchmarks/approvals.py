"""Held statements: time from the decision POST to the first row at the client, and the
proxy's memory per held statement.

    .venv/bin/python -m benchmarks.approvals [--held N]

The proxy runs in this process; N asyncpg clients run in a child process (so their memory
does not count), each holding one statement. The proxy's resident memory is read before and
while all N are held; then each is approved, and the child reports when each row arrived.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CLIENT = """
import asyncio, json, sys, time
import asyncpg
async def main(dsn, n):
    conns = await asyncio.gather(*(asyncpg.connect(dsn) for _ in range(n)))
    print("connected", flush=True)
    async def one(i, c):
        await c.fetchval("SELECT email FROM customers WHERE id = $1", i + 1)
        return i + 1, time.time()
    for ident, at in await asyncio.gather(*(one(i, c) for i, c in enumerate(conns))):
        print(json.dumps([ident, at]), flush=True)
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def call(url: str, token: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     method="POST" if body is not None else "GET")
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--held", type=int, default=200)
    args = parser.parse_args()

    from pgproxy.config import load_config
    from pgproxy.demo.run import demo_sql
    from pgproxy.pgcluster import PostgresCluster
    from tests import corpus
    from tests.approvals_support import approvals_config, reviewer_token
    from tests.harness import running_proxy, write_enforce_config

    with (PostgresCluster(settings={"max_connections": str(args.held + 20)}) as pg,
          tempfile.TemporaryDirectory(prefix="pgproxy-bench-") as tmp):
        pg.create_role("app_scram", "scram-pass")
        pg.create_database("app", owner="app_scram")
        pg.psql(demo_sql(), dbname="app", user="app_scram")
        directory = Path(tmp)
        config = load_config(write_enforce_config(pg, directory, catalog=corpus.CATALOG,
                                                  extra=approvals_config(directory, 600)))
        with running_proxy(config) as proxy:
            base = proxy.server.approvals_url
            token = reviewer_token()
            idle = rss_kib()
            child = subprocess.Popen([sys.executable, "-c", CLIENT, proxy.dsn(), str(args.held)],
                                     stdout=subprocess.PIPE, text=True)
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "connected"
            connected = rss_kib()
            deadline = time.monotonic() + 120
            while True:
                pending = call(f"{base}/api/approvals?status=pending&limit=1000", token)["approvals"]
                if len(pending) >= args.held:
                    break
                assert time.monotonic() < deadline
                time.sleep(0.1)
            held = rss_kib()
            posted: dict[int, float] = {}
            for request in pending:
                ident = int(request["parameters"][0])  # int4 bound in binary, shown as its value
                posted[ident] = time.time()
                call(f"{base}/api/approvals/{request['id']}/decision", token,
                     {"decision": "approve", "reason": "bench", "statement_sha256": request["statement_sha256"]})
            arrived = {ident: at for ident, at in (json.loads(line) for line in child.stdout)}
            child.wait(60)
    latencies = sorted((arrived[i] - posted[i]) * 1e3 for i in posted)
    per_held = (held - connected) / args.held
    print(f"| {args.held} held statements | value |")
    print("|---|---|")
    print(f"| decision POST -> row at the client, median | {statistics.median(latencies):.2f} ms |")
    print(f"| decision POST -> row at the client, p99 | {latencies[int(0.99 * (len(latencies) - 1))]:.2f} ms |")
    print(f"| proxy RSS: idle / {args.held} connected / all held | {idle // 1024} / {connected // 1024} / "
          f"{held // 1024} MiB |")
    print(f"| memory per held statement (held - connected) | {per_held:.1f} KiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
