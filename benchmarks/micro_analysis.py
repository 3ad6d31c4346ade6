"""Micro-benchmark: cold analysis and cached lookup per statement over the policy corpora.

    .venv/bin/python -m benchmarks.micro_analysis [--rounds N] [--json FILE]

Starts a throwaway PostgreSQL (pgproxy's own fixture) with the demo data and the corpora's
objects, introspects it as enforce mode does, then times, for every corpus statement:
- cold: analysis (pglast, the reference walker, the sqlglot cross-check) plus the policy decision;
- cached: the decision cache's lookup (normalizing with PostgreSQL's scanner, then the map).
Reports the median and p99 over all statements (each the best of N rounds, to shed noise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pgproxy.analysis.cache import DecisionCache, normalize
from pgproxy.analysis.gate import analyze
from pgproxy.catalog import Catalog, load_catalog
from pgproxy.config import Route
from pgproxy.demo.run import demo_file, demo_sql
from pgproxy.pgcluster import PostgresCluster
from pgproxy.policy import strictest
from tests import corpus


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from pgproxy.config import load_config
    from tests.harness import write_enforce_config

    cases = corpus.load("benign") + corpus.load("risky")
    with PostgresCluster() as pg, tempfile.TemporaryDirectory(prefix="pgproxy-bench-") as tmp:
        pg.create_role("app_scram", "scram-pass")
        pg.create_database("app", owner="app_scram")
        pg.psql(demo_sql(), dbname="app", user="app_scram")
        pg.psql((corpus.CORPORA / "setup.sql").read_text(), dbname="app", user="app_scram")
        directory = Path(tmp)
        config = load_config(write_enforce_config(pg, directory, catalog=corpus.CATALOG,
                                                  policy=demo_file("policy.yaml")))
        route = Route(name="app", host=pg.host, port=pg.port, dbname="app", user="app_scram",
                      password="scram-pass")
        catalog = Catalog()
        asyncio.run(catalog.load([route], load_catalog(directory / "catalog.yaml")))
        schema = catalog.schema("app")
        assert schema is not None

    groups = frozenset({"agents"})
    cold: list[float] = []
    uncacheable = 0
    cached: list[float] = []
    cache: DecisionCache[object] = DecisionCache(max_entries=100_000, max_bytes=256 * 1024 * 1024)
    key = (schema.version, config.policy.version, "agent", "agents", ",".join(schema.search_path))
    from pgproxy.policy import decide

    for case in cases:
        best = float("inf")
        for _ in range(args.rounds):
            started = time.perf_counter()
            analyses = analyze(case.sql, schema, allowed_functions=config.analysis.allowed_functions)
            decision = strictest(decide(config.policy, a, "agent", groups) for a in analyses)
            best = min(best, time.perf_counter() - started)
        cold.append(best)
        normalized = normalize(case.sql)
        if normalized is None:
            uncacheable += 1  # the scanner cannot tokenize it (a syntax error): never cached
            continue
        cache.put(case.sql, normalized, key, decision, literal_sensitive=any(a.literal_sensitive for a in analyses))
        best = float("inf")
        for _ in range(args.rounds):
            started = time.perf_counter()
            found = cache.get(case.sql, key)
            best = min(best, time.perf_counter() - started)
        assert found is not None
        cached.append(best)

    sizes = [len(c.sql.encode()) for c in cases]
    cold_ms = {"median": statistics.median(cold) * 1e3, "p99": percentile(cold, 0.99) * 1e3, "max": max(cold) * 1e3}
    cached_us = {"median": statistics.median(cached) * 1e6, "p99": percentile(cached, 0.99) * 1e6,
                 "max": max(cached) * 1e6}
    result = {"statements": len(cases), "uncacheable": uncacheable, "bytes_median": statistics.median(sizes),
              "bytes_max": max(sizes), "cold_ms": cold_ms, "cached_us": cached_us}
    print(f"| measure ({len(cases)} corpus statements, best of {args.rounds}) | median | p99 | max |")
    print("|---|---|---|---|")
    print(f"| cold analysis + decision (ms) | {cold_ms['median']:.3f} | {cold_ms['p99']:.3f} | {cold_ms['max']:.3f} |")
    print(f"| cached lookup (µs; {uncacheable} untokenizable statements excluded) | {cached_us['median']:.1f} | "
          f"{cached_us['p99']:.1f} | {cached_us['max']:.1f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
