"""What a flood of unauthenticated attempts does to the audit log.

    .venv/bin/python -m benchmarks.audit_flood [--duration 60] [--clients 8] [--json F] [--smoke]

Clients that never authenticate (a startup packet, then a password that is not a token) hit
`pgproxy run` (pass-through mode, audit log on) as fast as they can, for `duration` seconds,
in three configurations:

1. rate bound off, user ``agent``: every attempt is one `connection.refused` event, so the
   events per second the writer sustains under the flood;
2. rate bound off, a 4,000-character user name (an attacker-chosen id): the log's growth when
   every event is recorded but cut short;
3. the defaults (60 events one by one per 60 s, the rest counted), same long user name: the
   growth a flood can cause in a deployed proxy.

Growth is the SQLite database's (pages in use, WAL included), per minute of flood.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from benchmarks.audit import AUDIT_SECTION, KEY
from pgproxy.wire import messages as m

UNBOUNDED = "  unauthenticated_events_per_interval: 1000000000\n"
CONFIGURATIONS = (
    ("rate bound off, user 'agent'", "agent", UNBOUNDED),
    ("rate bound off, 4,000-character user", "u" * 4000, UNBOUNDED),
    ("defaults (60 per 60 s), 4,000-character user", "u" * 4000, ""),
)


async def _attempt(port: int, startup: bytes, password: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(startup)
        await reader.readexactly(9)  # AuthenticationCleartextPassword
        writer.write(password)
        while await reader.read(4096):  # the ErrorResponse, then the close
            pass
    finally:
        writer.close()


async def flood(port: int, user: str, clients: int, duration: float) -> int:
    """Refused logins from `clients` concurrent connections for `duration` seconds; how many."""
    startup = m.StartupMessage({"user": user, "database": "app"}).encode()
    password = m.PasswordMessage("not-a-token").encode()
    deadline = time.monotonic() + duration
    attempts = 0

    async def client() -> None:
        nonlocal attempts
        while time.monotonic() < deadline:
            await _attempt(port, startup, password)
            attempts += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return attempts


def _stored(path: Path) -> tuple[int, int]:
    """(the newest seq, the database's size in bytes as its readers see it, WAL included: what
    the file holds once the WAL is checkpointed into it)."""
    with sqlite3.connect(path) as db:
        seq = db.execute("SELECT coalesce(max(seq), 0) FROM audit_events").fetchone()[0]
        pages, page_size = db.execute("PRAGMA page_count").fetchone()[0], db.execute("PRAGMA page_size").fetchone()[0]
    return int(seq), int(pages) * int(page_size)


def measure(duration: float, clients: int, directory: Path) -> dict[str, dict[str, float]]:
    from benchmarks.run import pgproxy_process
    from pgproxy.pgcluster import PostgresCluster

    results: dict[str, dict[str, float]] = {}
    with PostgresCluster() as pg:
        for number, (name, user, limits) in enumerate(CONFIGURATIONS):
            with ExitStack() as stack:
                proxy = stack.enter_context(pgproxy_process(pg, directory, "passthrough", KEY, name=f"flood-{number}",
                                                            extra=AUDIT_SECTION + limits))
                store = proxy.home / "audit.sqlite3"
                port = int(proxy.url.rsplit(":", 1)[1].split("/", 1)[0])
                time.sleep(0.5)  # proxy.started written
                seq_before, size_before = _stored(store)
                started = time.perf_counter()
                attempts = asyncio.run(flood(port, user, clients, duration))
                elapsed = time.perf_counter() - started
            seq_after, size_after = _stored(store)  # stopped: everything written
            with sqlite3.connect(store) as db:
                refused = db.execute(
                    "SELECT count(*) FROM audit_events WHERE type = 'connection.refused'").fetchone()[0]
                counted = sum(json.loads(body)["events"] for (body,) in db.execute(
                    "SELECT body FROM audit_events WHERE type = 'connection.refused.aggregated'"))
            results[name] = {
                "attempts": attempts, "attempts_per_second": attempts / elapsed,
                "events": seq_after - seq_before - 1,  # without proxy.stopped
                "events_per_second": (seq_after - seq_before - 1) / elapsed,
                "refused_one_by_one": refused, "refused_counted": counted,
                "bytes_per_minute": (size_after - size_before) / elapsed * 60,
            }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of flood per configuration")
    parser.add_argument("--clients", type=int, default=8, help="concurrent flooding connections")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--smoke", action="store_true", help="a short run that only proves it works")
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.clients = 1.0, 2
    with tempfile.TemporaryDirectory(prefix="pgproxy-bench-flood-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o755)
        results = measure(args.duration, args.clients, directory)
    print(f"unauthenticated flood, {args.clients} clients, {args.duration:g} s per configuration:\n")
    print("| configuration | attempts/s | audit events/s | one by one + counted | log growth |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['attempts_per_second']:,.0f} | {r['events_per_second']:,.1f} | "
              f"{r['refused_one_by_one']:,.0f} + {r['refused_counted']:,.0f} of {r['attempts']:,.0f} | "
              f"{r['bytes_per_minute'] / 1e6:,.2f} MB/min |")
    if args.json is not None:
        args.json.write_text(json.dumps({"results": results, "duration": args.duration, "clients": args.clients},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
