"""Stall: how long one large held statement keeps every other session waiting.

    .venv/bin/python -m benchmarks.stall [--statement-mib 4] [--duration 10] [--fetchers 2] [--json FILE]

Starts a throwaway PostgreSQL with the demo data and pgproxy (`pgproxy run`, its own process)
enforcing the demo policy with approvals, `limits.max_message_bytes` set to `--statement-mib`, so
the statement sent is the largest one the proxy accepts (a simple-protocol Query of a SELECT with
a long IN list of string literals, well over `analysis.max_statement_bytes`: held as oversized).
Meanwhile a probe connection runs `SELECT 1` in a loop and records every round trip. Phases:
- quiet: nothing held, nothing fetched (the probe's own noise);
- holding: from sending the statement until `/healthz` counts it as held;
- fetching: `--fetchers` child processes fetch the request (`GET /api/approvals/{id}`, what the page
  polls every 2 s, and the pending list) in a loop for `--duration` seconds;
- deciding: a reviewer denies it, until the client has its error and a second more.
Reports per phase the probe's round trips, their median and worst, and the fetches completed.
The worst round trip is the longest the event loop left every session waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

from benchmarks.approvals import call
from benchmarks.run import PASSWORD, pgproxy_process, wait_for_port
from pgproxy.demo.run import demo_sql
from pgproxy.pgcluster import PostgresCluster, free_port

# A child process fetching the request as a reviewer's page does, until told to stop (stdin closes);
# it reads the bodies without decoding them, and reports how many fetches completed.
FETCHER = """
import sys, threading, urllib.request
base, approval, token = sys.argv[1:4]
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
count = 0
while not done.is_set():
    for path in (f"/api/approvals/{approval}", "/api/approvals?status=pending"):
        request = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + token})
        with urllib.request.urlopen(request, timeout=600) as response:
            response.read()
        count += 1
print(count, flush=True)
"""


def big_statement(size: int) -> str:
    """A SELECT of about `size` bytes (an IN list of string literals), under `size`."""
    head, tail = "SELECT id FROM customers WHERE name IN (", ")"
    items: list[str] = []
    used = len(head) + len(tail)
    number = 0
    while True:
        item = f"'customer {number:07d}'"
        if used + len(item) + 2 > size:
            break
        items.append(item)
        used += len(item) + 2
        number += 1
    return head + ", ".join(items) + tail


class Probe:
    """`SELECT 1` in a loop on its own connection; the round trips of each phase."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.phase = "quiet"
        self.samples: dict[str, list[float]] = {}
        self._stop = False

    async def run(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.url)
        try:
            while not self._stop:
                phase = self.phase
                started = time.perf_counter()
                value = await conn.fetchval("SELECT 1")
                assert value == 1
                self.samples.setdefault(phase, []).append(time.perf_counter() - started)
                await asyncio.sleep(0.001)
        finally:
            await conn.close()

    def stop(self) -> None:
        self._stop = True


async def measure(url: str, base: str, size: int, duration: float, fetchers: int) -> dict[str, Any]:
    import asyncpg

    from tests.approvals_support import reviewer_token

    token = reviewer_token()
    probe = Probe(url)
    probing = asyncio.create_task(probe.run())
    await asyncio.sleep(duration)
    probe.phase = "holding"
    sql = big_statement(size)
    holder = await asyncpg.connect(url)
    held = asyncio.create_task(holder.execute(sql))
    deadline = time.monotonic() + 600
    while (await asyncio.to_thread(call, f"{base}/healthz", token))["held"] < 1:  # health only: no statement read
        assert time.monotonic() < deadline and not held.done(), "the statement was not held"
        await asyncio.sleep(0.05)
    probe.phase = "fetching"
    pending = await asyncio.to_thread(call, f"{base}/api/approvals?status=pending", token)
    request = next(a for a in pending["approvals"] if a["statement"].startswith("SELECT id FROM customers WHERE"))
    children = [subprocess.Popen([sys.executable, "-c", FETCHER, base, request["id"], token],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(fetchers)]
    await asyncio.sleep(duration)
    probe.phase = "idle"
    fetched = 0
    for child in children:
        said, _ = await asyncio.to_thread(child.communicate, "", 600)
        fetched += int(said.strip() or 0)
    probe.phase = "deciding"
    await asyncio.to_thread(call, f"{base}/api/approvals/{request['id']}/decision", token,
                            {"decision": "deny", "reason": "benchmark over",
                             "statement_sha256": request["statement_sha256"]})
    with suppress(asyncpg.InsufficientPrivilegeError):
        await asyncio.wait_for(held, 60)
    await asyncio.sleep(1)  # what the end of the hold leaves to do (its audit event)
    await holder.close()
    probe.stop()
    await probing
    out: dict[str, Any] = {"statement_bytes": len(sql.encode()), "fetches": fetched, "phases": {}}
    for phase in ("quiet", "holding", "fetching", "deciding"):
        samples = probe.samples.get(phase, [])
        out["phases"][phase] = {
            "round_trips": len(samples),
            "median_ms": statistics.median(samples) * 1e3 if samples else None,
            "worst_ms": max(samples) * 1e3 if samples else None,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--statement-mib", type=float, default=4.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--fetchers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from tests.approvals_support import approvals_config

    limit = int(args.statement_mib * 1024 * 1024)
    with ExitStack() as stack:
        directory = Path(tempfile.mkdtemp(prefix="pgproxy-stall-"))
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        directory.chmod(0o755)
        pg = stack.enter_context(PostgresCluster())
        pg.create_role("bench", PASSWORD)
        pg.create_database("app", owner="bench")
        pg.psql(demo_sql(), dbname="app", user="bench")
        web_port = free_port()
        home = directory / "pgproxy-stall"
        home.mkdir()
        listen = "listen: {host: 127.0.0.1, port: 0}"
        extra = (approvals_config(home, timeout=3600).replace(listen, f"listen: {{host: 127.0.0.1, port: {web_port}}}")
                 + f"limits: {{max_message_bytes: {limit}}}\n")
        proxy = stack.enter_context(pgproxy_process(pg, directory, "enforce", "stall-secret-" + "z" * 24,
                                                    name=home.name, extra=extra))
        wait_for_port(web_port)
        # The Query message's own framing (type, length, NUL) fits under the limit.
        result = asyncio.run(measure(proxy.url + "?sslmode=disable", f"http://127.0.0.1:{web_port}",
                                     limit - 16, args.duration, args.fetchers))
    print(f"| {result['statement_bytes']:,}-byte held statement, {args.fetchers} fetchers | SELECT 1 round trips "
          "| median | worst |")
    print("|---|---|---|---|")
    for phase, found in result["phases"].items():
        median = f"{found['median_ms']:.2f} ms" if found["median_ms"] is not None else "-"
        worst = f"{found['worst_ms']:.1f} ms" if found["worst_ms"] is not None else "-"
        print(f"| {phase} | {found['round_trips']} | {median} | {worst} |")
    print(f"\nrequest fetches completed while fetching: {result['fetches']}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
