"""What auditing costs.

    .venv/bin/python -m benchmarks.audit [--events 200000] [--duration 10] [--rounds 3] [--json F] [--smoke]

1. The writer: how many events per second the audit writer sustains into SQLite (events shaped
   like a real statement event, queued as fast as the hot path can), and what `record()` costs
   the hot path per event.
2. The proxy: pgbench select-only (simple protocol, so every transaction is a decided and
   audited statement) through pgproxy enforcing the demo policy with the audit log off and on,
   in interleaved rounds of the same run, and the ratio on/off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from pgproxy.audit import AuditLog, members
from pgproxy.config import AuditConfig

KEY = "benchmark-signing-key-0123456789abcdef"
AUDIT_SECTION = """\
audit:
  store: audit.sqlite3
  signing_key_file: jwt
"""


def _statement_fragment(n: int) -> str:
    """Members like those of a real allowed-statement event (about 600 bytes)."""
    return ",".join([
        members({"session": "5f2c9a1b3d4e", "agent": "agent", "groups": ["agents"], "client_address": "127.0.0.1",
                 "application_name": "pgbench", "database": "app"}),
        members({"statement": "SELECT abalance FROM pgbench_accounts WHERE aid = ?"}),
        members({"commands": ["SELECT"], "kinds": ["read"], "tables": ["public.pgbench_accounts"],
                 "columns_read": ["public.pgbench_accounts.abalance", "public.pgbench_accounts.aid"],
                 "columns_written": [], "tags": [], "functions": [], "flags": [], "rule": "default",
                 "action": "allow", "reason": "no rule matched"}),
        f'"protocol":"simple","statement_sha256":"{n:064x}","outcome":"allowed"',
    ])


async def writer_throughput(events: int, directory: Path) -> dict[str, float]:
    """Queue `events` events, then time how long the writer takes to store them all."""
    audit = AuditLog(AuditConfig(signing_key=KEY, store=directory / "writer.sqlite3", queue_events=events + 10))
    await audit.start({"benchmark": "writer"})
    fragments = [_statement_fragment(n) for n in range(events)]
    started = time.perf_counter()
    for fragment in fragments:
        audit.record("statement", fragment)
    queued = time.perf_counter() - started
    started = time.perf_counter()
    while audit.written < events + 1:
        await asyncio.sleep(0.01)
    written = time.perf_counter() - started
    await audit.close()
    size = (directory / "writer.sqlite3").stat().st_size
    return {"events": events, "record_ns_per_event": queued / events * 1e9,
            "writer_events_per_second": events / written, "bytes_per_event": size / (events + 2)}


def proxy_overhead(duration: float, rounds: int, directory: Path) -> tuple[dict[str, dict[str, float]], int]:
    """pgbench -S (simple) through enforce mode with the audit log off and on, interleaved;
    the median TPS per workload and target, and how many statement events were recorded."""
    from benchmarks.run import Workload, bench_database, pgbench, pgproxy
    from pgproxy.pgcluster import PostgresCluster

    workloads = (Workload("select-only simple, 1 client", ("-S", "-M", "simple"), 1),
                 Workload("select-only simple, 8 clients", ("-S", "-M", "simple"), 8))
    samples: dict[str, dict[str, list[dict[str, float]]]] = {w.name: {"off": [], "on": []} for w in workloads}
    with ExitStack() as stack:
        pg = stack.enter_context(PostgresCluster(settings={"max_connections": "100"}))
        bench_database(pg, 10)
        urls = {"off": stack.enter_context(pgproxy(pg, directory, "enforce", KEY, name="audit-off")),
                "on": stack.enter_context(pgproxy(pg, directory, "enforce", KEY, name="audit-on",
                                                  extra=AUDIT_SECTION))}
        logs = directory / "logs"
        logs.mkdir()
        for number in range(rounds):
            for workload in workloads:
                order = ("off", "on") if number % 2 == 0 else ("on", "off")
                for target in order:
                    samples[workload.name][target].append(pgbench(urls[target], workload, duration, logs))
    with sqlite3.connect(directory / "audit-on" / "audit.sqlite3") as db:
        recorded = db.execute("SELECT count(*) FROM audit_events WHERE type = 'statement'").fetchone()[0]
    tps = {name: {target: statistics.median(r["tps"] for r in runs) for target, runs in by_target.items()}
           for name, by_target in samples.items()}
    return tps, int(recorded)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events for the writer benchmark")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per pgbench run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--smoke", action="store_true", help="a short run that only proves it works")
    args = parser.parse_args()
    if args.smoke:
        args.events, args.duration, args.rounds = 2000, 1.0, 1
    with tempfile.TemporaryDirectory(prefix="pgproxy-bench-audit-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o755)
        writer = asyncio.run(writer_throughput(args.events, directory))
        print(f"audit writer, {writer['events']:.0f} statement events into SQLite:\n")
        print("| measure | value |\n|---|---|")
        print(f"| record() on the hot path | {writer['record_ns_per_event']:.0f} ns per event |")
        print(f"| writer throughput | {writer['writer_events_per_second']:,.0f} events/s |")
        print(f"| stored size | {writer['bytes_per_event']:.0f} bytes per event |")
        tps, recorded = proxy_overhead(args.duration, args.rounds, directory)
        print(f"\npgbench through pgproxy (enforce, demo policy), audit off vs on; {args.rounds} interleaved "
              f"round(s) of {args.duration:g} s, median TPS:\n")
        print("| workload | audit off | audit on | on / off |\n|---|---|---|---|")
        for name, by_target in tps.items():
            print(f"| {name} | {by_target['off']:.0f} | {by_target['on']:.0f} | "
                  f"{by_target['on'] / by_target['off']:.3f} |")
        print(f"\nstatement events the audited proxy recorded: {recorded:,}")
    if args.json is not None:
        args.json.write_text(json.dumps({"writer": writer, "tps": tps, "statement_events": recorded,
                                         "duration": args.duration,
                                         "rounds": args.rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
