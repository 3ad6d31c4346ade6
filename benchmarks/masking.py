"""Masking overhead: a 10,000-row result masked vs the same result unmasked, through one proxy, one run.

    .venv/bin/python -m benchmarks.masking [--rounds 30] [--json out.json] [--smoke]

Two tables hold the same 10,000 rows (id, name, email, phone, ssn, country): `bench_tagged`, whose
four personal columns are tagged, and `bench_plain`, untagged. The proxy runs in this process with a
policy whose rule masks personal data; a child process (psycopg) reads each whole table through it,
rounds interleaved: `bench_tagged` comes back masked (its DataRows rewritten), `bench_plain` is
relayed untouched, so the two differ only by masking. Also timed, same rounds: binary results, COPY
TO STDOUT of both tables, and the unmasked read directly from PostgreSQL (what the relay adds at all).
Reported: the median time per read and per row, and masked / unmasked.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROWS = 10_000
COLUMNS = "id, name, email, phone, ssn, country"

CLIENT = """
import json, sys, time
import psycopg
proxy, direct, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
COLUMNS = "id, name, email, phone, ssn, country"

def copy_rows(conn, table):
    with conn.cursor().copy(f"COPY (SELECT {COLUMNS} FROM {table}) TO STDOUT") as copy:
        return [len(row) for row in copy]

cases = {
    "text": lambda conn, table: conn.execute(f"SELECT {COLUMNS} FROM {table}").fetchall(),
    "binary": lambda conn, table: conn.cursor(binary=True).execute(f"SELECT {COLUMNS} FROM {table}").fetchall(),
    "copy": copy_rows,
}
with psycopg.connect(proxy, autocommit=True) as via, psycopg.connect(direct, autocommit=True) as plain:
    assert via.execute("SELECT email FROM bench_tagged WHERE id = 1").fetchone()[0].count("***") == 1  # masked
    for _ in range(rounds):
        for name, run in cases.items():
            for label, conn, table in (("masked", via, "bench_tagged"), ("unmasked", via, "bench_plain"),
                                       ("direct", plain, "bench_plain")):
                started = time.perf_counter()
                rows = run(conn, table)
                elapsed = time.perf_counter() - started
                assert len(rows) >= 10_000
                print(json.dumps([name, label, elapsed]), flush=True)
"""

POLICY = """\
default: allow
rules:
  - {name: personal-data, tags: [pii], action: mask, reason: personal data is shown masked}
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--smoke", action="store_true", help="2 rounds: only proves the benchmark works")
    args = parser.parse_args()
    rounds = 2 if args.smoke else args.rounds

    from pgproxy.config import load_config
    from pgproxy.demo.run import demo_sql
    from pgproxy.pgcluster import PostgresCluster
    from tests.harness import running_proxy, write_enforce_config

    catalog = "app:\n  public:\n    bench_tagged:\n" + "".join(
        f"      {column}: [pii, pii.{column}]\n" for column in ("name", "email", "phone", "ssn"))
    with PostgresCluster() as pg, tempfile.TemporaryDirectory(prefix="pgproxy-bench-") as tmp:
        pg.create_role("app_scram", "scram-pass")
        pg.create_database("app", owner="app_scram")
        pg.psql(demo_sql(), dbname="app", user="app_scram")
        for table in ("bench_tagged", "bench_plain"):
            pg.psql(f"CREATE TABLE {table} AS SELECT row_number() OVER () AS id, c.name, c.email, c.phone, c.ssn, "
                    f"c.country FROM customers c CROSS JOIN generate_series(1, {ROWS // 1000}) LIMIT {ROWS}",
                    dbname="app", user="app_scram")
        directory = Path(tmp)
        config = load_config(write_enforce_config(pg, directory, catalog=catalog, policy=POLICY))
        with running_proxy(config) as proxy:
            client = subprocess.run(
                [sys.executable, "-c", CLIENT, proxy.dsn(), pg.dsn(user="app_scram", password="scram-pass",
                                                                   dbname="app"), str(rounds)],
                capture_output=True, text=True, timeout=1200)
    if client.returncode != 0:
        print(client.stderr, file=sys.stderr)
        return 1
    times: dict[str, dict[str, list[float]]] = {}
    for line in client.stdout.splitlines():
        case, label, elapsed = json.loads(line)
        times.setdefault(case, {}).setdefault(label, []).append(elapsed * 1e3)
    figures: dict[str, object] = {"rows": ROWS, "rounds": rounds, "ms": times}
    ratios: dict[str, float] = {}
    print(f"| {ROWS:,} rows, {rounds} rounds, median | masked | unmasked (through the proxy) | direct | "
          "masked / unmasked | unmasked / direct |")
    print("|---|---|---|---|---|---|")
    for case, label in (("text", "SELECT, text results"), ("binary", "SELECT, binary results"),
                        ("copy", "COPY (SELECT …) TO STDOUT")):
        medians = {name: statistics.median(values) for name, values in times[case].items()}
        ratios[f"{case}_masked_vs_unmasked"] = medians["masked"] / medians["unmasked"]
        ratios[f"{case}_unmasked_vs_direct"] = medians["unmasked"] / medians["direct"]
        print(f"| {label} | {medians['masked']:.1f} ms ({medians['masked'] * 1e3 / ROWS:.2f} µs/row) "
              f"| {medians['unmasked']:.1f} ms | {medians['direct']:.1f} ms "
              f"| {ratios[f'{case}_masked_vs_unmasked']:.2f}x | {ratios[f'{case}_unmasked_vs_direct']:.2f}x |")
    figures["ratios"] = ratios
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
