"""Run-time sampling's cost: pgproxy (enforce mode) with sampling off and on, side by side, one run.

    .venv/bin/python -m benchmarks.sampling [--duration S] [--rounds N] [--rate R] [--json FILE] [--smoke]

Three `pgproxy run` processes in front of one pgbench scale-10 database, identical but for the
`sampling` section: off, on at the default rate (1 result per second), and on at `--rate` results
per second (default 50). Each has the same audit log, so only sampling differs. Workloads, rounds
interleaved and the order rotated:
- pgbench select-only (-S), simple protocol, 1 client, and prepared, 8 clients: results of one
  integer column, nothing to sample, so this is the cost of looking (one test per result);
- a range of 10 rows of free text (`sampling_text.body`, untagged, an email in every fourth row),
  simple protocol, 8 clients: results that are sampled at the rate and classified by the worker.
Reported: TPS and p99 latency (medians of the rounds), each ratio on / off, and what the worker did
(results sampled, values classified, pii.detected events, worker CPU seconds).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import tempfile
from contextlib import ExitStack
from pathlib import Path

from benchmarks.run import RunningProxy, bench_database, pgproxy_process
from benchmarks.workloads import Workload, bench_policy, medians, pgbench, rotated
from pgproxy.pgcluster import PostgresCluster

TEXT_ROWS = 100_000
TEXT_SQL = f"""
DROP TABLE IF EXISTS sampling_text;
CREATE TABLE sampling_text (id int PRIMARY KEY, body text);
INSERT INTO sampling_text
SELECT i, 'Ticket ' || i || ': the parcel for order ' || (i * 7919 % 100000) || ' arrived damaged'
          || CASE WHEN i % 4 = 0 THEN '; write to customer' || i || '@example.com' ELSE '' END
  FROM generate_series(1, {TEXT_ROWS}) AS i;
ANALYZE sampling_text;
"""
TEXT_SCRIPT = "text_range.sql"
WORKLOADS = (
    Workload("select-only simple, 1 client", ("-S", "-M", "simple"), 1),
    Workload("select-only prepared, 8 clients", ("-S", "-M", "prepared"), 8),
    Workload("10 rows of free text, 8 clients", ("-M", "simple", f"-f{TEXT_SCRIPT}"), 8),
)
AUDIT = "audit: {signing_key_file: signing-key, store: audit.sqlite3}\n"


def targets(rate: float) -> dict[str, str]:
    return {"off": AUDIT,
            "on, 1/s": AUDIT + "sampling: {enabled: true}\n",
            f"on, {rate:g}/s": AUDIT + f"sampling: {{enabled: true, results_per_second: {rate}}}\n"}


def worker_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process's children (the sampling worker), from /proc."""
    total = 0.0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    ticks = 100.0  # USER_HZ on Linux
    for child in children:
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def sampling_events(home: Path) -> tuple[list[str], dict[str, int]]:
    """The columns of the pii.detected events in a stopped proxy's audit log, and its counts."""
    with sqlite3.connect(home / "audit.sqlite3") as db:
        found = [json.loads(body) for (body,) in
                 db.execute("SELECT body FROM audit_events WHERE type = 'pii.detected'")]
        stopped = [json.loads(body) for (body,) in db.execute(
            "SELECT body FROM audit_events WHERE type = 'proxy.stopped' ORDER BY seq DESC LIMIT 1")]
    return sorted({f"{e['table']}.{e['column']}" for e in found}), stopped[0].get("sampling", {}) if stopped else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per pgbench run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0, help="results per second of the third proxy")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="a short run that only proves the benchmark works")
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.rounds = 1.0, 1
    configs = targets(args.rate)
    names = ["direct", *configs]
    samples: dict[str, dict[str, list[dict[str, float]]]] = {w.name: {t: [] for t in names} for w in WORKLOADS}
    with ExitStack() as stack:
        directory = Path(tempfile.mkdtemp(prefix="pgproxy-bench-sampling-"))
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        directory.chmod(0o755)
        pg = stack.enter_context(PostgresCluster(settings={"max_connections": "100"}))
        urls = {"direct": bench_database(pg, scale=10)}
        pg.psql(TEXT_SQL, dbname="app", user="bench")
        proxies: dict[str, RunningProxy] = {}
        running = stack.enter_context(ExitStack())  # the proxies, stopped before their logs are read
        for index, (name, extra) in enumerate(configs.items()):
            home = directory / f"pgproxy-{index}"
            home.mkdir()
            (home / "signing-key").write_text("bench-signing-key-" + "k" * 32)
            proxies[name] = running.enter_context(pgproxy_process(pg, directory, "enforce", "bench-secret-" + "z" * 24,
                                                                name=home.name, policy=bench_policy(), extra=extra))
            urls[name] = proxies[name].url
        logs = directory / "logs"
        logs.mkdir()
        (logs / TEXT_SCRIPT).write_text(f"\\set id random(1, {TEXT_ROWS - 10})\n"
                                        "SELECT id, body FROM sampling_text WHERE id BETWEEN :id AND :id + 9;\n")
        cpu_before = {name: worker_cpu_seconds(p.pid) for name, p in proxies.items()}
        for round_number in range(args.rounds):
            order = rotated(names, round_number)
            for workload in WORKLOADS:
                for target in order:
                    samples[workload.name][target].append(pgbench(urls[target], workload, args.duration, logs))
        cpu = {name: round(worker_cpu_seconds(p.pid) - cpu_before[name], 2) for name, p in proxies.items()}
        running.close()  # each proxy records proxy.stopped, with what sampling did
        workers: dict[str, dict[str, object]] = {}
        for name, proxy in proxies.items():
            columns, counts = sampling_events(proxy.home)
            workers[name] = {"cpu_seconds": cpu[name], "detected": columns, "counts": counts}
    results = {w: {t: medians(runs) for t, runs in by_target.items()} for w, by_target in samples.items()}
    print(f"{args.rounds} interleaved round(s) of {args.duration:g} s per pgbench run\n")
    print(f"{'workload':34} {'target':10} {'TPS':>9} {'p99 ms':>8} {'vs off':>7}")
    for label, by_target in results.items():
        off = by_target["off"]["tps"]
        for target, found in by_target.items():
            ratio = f"{found['tps'] / off:.3f}" if target != "direct" else ""
            print(f"{label:34} {target:10} {found['tps']:9.0f} {found['p99_ms']:8.2f} {ratio:>7}")
    print()
    for name, worker in workers.items():
        shown = ", ".join(str(c) for c in worker["detected"]) or "no column"  # type: ignore[attr-defined]
        print(f"sampling {name}: worker CPU {worker['cpu_seconds']} s; {worker['counts'] or 'no counts'}; "
              f"pii.detected for {shown}")
    if args.json is not None:
        args.json.write_text(json.dumps({"results": results, "workers": workers, "duration": args.duration,
                                         "rounds": args.rounds, "rate": args.rate}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
