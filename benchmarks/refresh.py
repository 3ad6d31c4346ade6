"""Benchmark: reading a database's schema again (introspection plus tagging and lineage), as
pgproxy does after DDL, for the demo database and for a synthetic schema.

    .venv/bin/python -m benchmarks.refresh [--tables N] [--views N] [--functions N] [--rounds N]
                                            [--json FILE] [--smoke]

Starts a throwaway PostgreSQL (pgproxy's own fixture) with the demo data, and a second database
of N tables (a tagged column each), views over them (every other one over a user function)
and functions (SQL and PL/pgSQL, half each). Reports the median seconds of a refresh for each
(each the median of the rounds), and the seconds to work out the lineage of every function
and view of the synthetic schema once (what calling or reading each one reads: the first
statement to use one after a refresh pays its share). The defaults are the closing note's:
2,000 tables, 200 views, 200 functions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from pgproxy.analysis.gate import analyze
from pgproxy.analysis.model import Flag
from pgproxy.analysis.schema import Schema
from pgproxy.catalog import Catalog, load_catalog
from pgproxy.config import Route
from pgproxy.demo.run import demo_file, demo_sql
from pgproxy.pgcluster import PostgresCluster


def synthetic_sql(tables: int, views: int, functions: int) -> str:
    parts = [f"CREATE TABLE t{i} (id int primary key, note text, secret text);" for i in range(tables)]
    parts += [f"CREATE FUNCTION f{i}() RETURNS TABLE (id int, s text) LANGUAGE sql "
              f"AS $$ SELECT id, secret FROM t{i % tables} $$;" if i % 2 else
              f"CREATE FUNCTION f{i}() RETURNS TABLE (id int, s text) LANGUAGE plpgsql AS $$ "
              f"DECLARE n int; BEGIN n := (SELECT count(*) FROM t{i % tables}); "
              f"RETURN QUERY SELECT t.id, t.secret FROM t{i % tables} t WHERE t.id > n; END $$;"
              for i in range(functions)]
    parts += [f"CREATE VIEW v{i} AS SELECT * FROM f{i % functions}();" if i % 2 and functions
              else f"CREATE VIEW v{i} AS SELECT id, secret FROM t{i % tables};" for i in range(views)]
    return "\n".join(parts)


def synthetic_catalog(tables: int) -> str:
    lines = ["synthetic:", "  public:"]
    for i in range(tables):
        lines += [f"    t{i}:", "      secret: [pii]"]
    return "\n".join(lines) + "\n"


def lineage_seconds(schema: Schema, views: int, functions: int) -> float:
    """Analyse a call of every function and a read of every view on a freshly read schema
    (whose lineage nothing has worked out yet); each must read the tagged column."""
    started = time.perf_counter()
    found = [analyze(f"SELECT * FROM f{i}()", schema)[0] for i in range(functions)]
    found += [analyze(f"SELECT * FROM v{i}", schema)[0] for i in range(views)]
    elapsed = time.perf_counter() - started
    assert all(a.tags_read == frozenset({"pii"}) and Flag.RUNS_CODE not in a.flags for a in found), found
    return elapsed


async def timed_refresh(catalog: Catalog, route: str, rounds: int) -> float:
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        await catalog.refresh(route)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tables", type=int, default=2000)
    parser.add_argument("--views", type=int, default=200)
    parser.add_argument("--functions", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true", help="a short run that proves this works")
    args = parser.parse_args()
    if args.smoke:
        args.tables, args.views, args.functions, args.rounds = 20, 4, 4, 1
    with PostgresCluster() as pg, tempfile.TemporaryDirectory(prefix="pgproxy-bench-") as tmp:
        pg.create_role("bench_owner", "bench-pass")
        routes = []
        for name, sql in (("app", demo_sql()), ("synthetic", synthetic_sql(args.tables, args.views,
                                                                          args.functions))):
            pg.create_database(name, owner="bench_owner")
            pg.psql(sql, dbname=name, user="bench_owner")
            routes.append(Route(name=name, host=pg.host, port=pg.port, dbname=name, user="bench_owner",
                                password="bench-pass"))
        catalog_file = Path(tmp) / "catalog.yaml"
        catalog_file.write_text(demo_file("catalog.yaml") + synthetic_catalog(args.tables))

        async def measure() -> dict[str, float]:
            catalog = Catalog()
            await catalog.load(routes, load_catalog(catalog_file))
            found = {"demo_refresh_s": await timed_refresh(catalog, "app", args.rounds),
                     "synthetic_refresh_s": await timed_refresh(catalog, "synthetic", args.rounds)}
            schema = catalog.schema("synthetic")
            assert schema is not None
            found["synthetic_relations"] = float(len(schema.relations))
            found["synthetic_lineage_s"] = lineage_seconds(schema, args.views, args.functions)
            await catalog.close()
            return found

        found = asyncio.run(measure())
    shape = f"{args.tables} tables, {args.views} views, {args.functions} functions"
    print(f"| schema | refresh (s, median of {args.rounds}) |")
    print("|---|---|")
    print(f"| demo database | {found['demo_refresh_s']:.3f} |")
    print(f"| synthetic ({shape}) | {found['synthetic_refresh_s']:.3f} |")
    print(f"\nlineage of every function and view of the synthetic schema, once: "
          f"{found['synthetic_lineage_s']:.3f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
