"""Benchmark: `pgproxy scan` -- how many values the classifiers get through per second, and how
long a scan of the demo database takes.

    .venv/bin/python -m benchmarks.scan [--sample 500] [--rounds 3] [--values 3000] [--json FILE] [--smoke]

Starts a throwaway PostgreSQL (pgproxy's own fixture) with the demo data. Reports the seconds to
import and load the classifiers (spaCy, Presidio's recognizers), then, as the median of the rounds:
values classified per second for three kinds of column classified directly (short values: the
demo's emails; short values without PII: statuses and plans; free text: the demo's ticket
bodies, cycled to `--values` distinct values so no value is classified twice), and the whole
scan of the demo database (`scan_route`: listing, sampling, classifying every text column)
with its values per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from pgproxy.config import Route
from pgproxy.demo.run import demo_sql
from pgproxy.pgcluster import PostgresCluster


def rate(classifier: Any, values: list[str], column: str) -> float:
    started = time.perf_counter()
    classifier.classify(values, column)
    return len(values) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sample", type=int, default=500, help="rows sampled per table")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--values", type=int, default=3000, help="values per kind of column, classified directly")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true", help="a short run that proves this works")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.values, args.sample = 1, 100, 50
    started = time.perf_counter()
    from classifiers import Classifier  # timed: importing spaCy and Presidio is most of loading
    from pgproxy.scan import scan_route

    classifier = Classifier()
    found: dict[str, float] = {"load_s": time.perf_counter() - started}
    with PostgresCluster() as pg:
        pg.create_role("bench_owner", "bench-pass")
        pg.create_database("app", owner="bench_owner")
        pg.psql(demo_sql(), dbname="app", user="bench_owner")
        route = Route(name="app", host=pg.host, port=pg.port, dbname="app", user="bench_owner", password="bench-pass")
        emails = pg.psql("SELECT email FROM customers ORDER BY id", dbname="app").split()
        bodies = pg.psql("SELECT body FROM support_tickets ORDER BY id", dbname="app").splitlines()
        kinds = {
            "emails": ([emails[i % len(emails)] + ("" if i < len(emails) else f".{i}") for i in range(args.values)],
                       "email"),
            "no_pii": ([f"{('free', 'pro', 'enterprise', 'open', 'closed')[i % 5]} {i}" for i in range(args.values)],
                       "plan"),
            "free_text": ([f"{bodies[i % len(bodies)]} #{i}" for i in range(args.values)], "body"),
        }
        rates: dict[str, list[float]] = {kind: [] for kind in kinds}
        scans: list[tuple[float, int]] = []
        for _ in range(args.rounds):
            for kind, (values, column) in kinds.items():
                rates[kind].append(rate(classifier, values, column))
            started = time.perf_counter()
            result = asyncio.run(scan_route(route, classifier, {}, sample=args.sample))
            scans.append((time.perf_counter() - started, result.values))
            assert not result.errors, result.errors
    for kind in kinds:
        found[f"{kind}_values_per_s"] = statistics.median(rates[kind])
    seconds = statistics.median(s for s, _ in scans)
    found["demo_scan_s"] = seconds
    found["demo_scan_values"] = float(scans[0][1])
    found["demo_scan_values_per_s"] = scans[0][1] / seconds
    print(f"classifiers loaded in {found['load_s']:.2f} s")
    print(f"| column kind | values per second (median of {args.rounds}) |")
    print("|---|---|")
    for kind in kinds:
        print(f"| {kind} | {found[f'{kind}_values_per_s']:.0f} |")
    print(f"\ndemo database, --sample {args.sample}: {found['demo_scan_s']:.2f} s for "
          f"{found['demo_scan_values']:.0f} values ({found['demo_scan_values_per_s']:.0f} values/s)")
    if args.json is not None:
        args.json.write_text(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
