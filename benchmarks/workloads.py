"""What benchmarks/run.py measures: the pgbench workloads, the 200-shape mixed script, COPY out.

Every workload runs against a database initialised by `pgbench -i` (scale 10 in run.py, so
pgbench_accounts holds 1,000,000 rows). The pgbench tables carry no tags in the demo catalog,
so the demo policy allows every statement here except the COPY … TO of the COPY workload,
which `bench_policy()` allows for pgbench_accounts alone.
"""

from __future__ import annotations

import itertools
import re
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pgproxy.demo.run import demo_file
from pgproxy.pgcluster import find_pg_bin

MIXED_SHAPES = 200  # distinct normalized statements: the decision cache holds 200 entries, not one
SHAPES_PER_SCRIPT = 2  # pgbench takes at most 128 scripts, so each script picks one of a few shapes
MIXED_SCRIPTS = tuple(f"mixed-{n:03d}.sql" for n in range(MIXED_SHAPES // SHAPES_PER_SCRIPT))
COPY_TABLE = "pgbench_accounts"


@dataclass(frozen=True, slots=True)
class Workload:
    """A pgbench run: its options (besides clients, duration and logging) and client count.

    Script paths in `args` are relative to pgbench's working directory, the logs directory
    that `write_mixed_scripts()` fills.
    """

    name: str
    args: tuple[str, ...]
    clients: int


SELECT_ONLY = (
    Workload("select-only simple, 1 client", ("-S", "-M", "simple"), 1),
    Workload("select-only prepared, 1 client", ("-S", "-M", "prepared"), 1),
    Workload("select-only simple, 8 clients", ("-S", "-M", "simple"), 8),
    Workload("select-only prepared, 8 clients", ("-S", "-M", "prepared"), 8),
)
TPCB = Workload("TPC-B-like, 8 clients", ("-M", "simple"), 8)  # pgbench's builtin default script
MIXED = Workload(f"mixed {MIXED_SHAPES} shapes, 8 clients",
                 ("-M", "simple", *(f"-f{name}@1" for name in MIXED_SCRIPTS)), 8)
STORM = Workload("connection storm (-C), 8 clients", ("-S", "-M", "simple", "-C"), 8)
WORKLOADS = (*SELECT_ONLY, TPCB, MIXED, STORM)
COPY_WORKLOAD = f"COPY {COPY_TABLE} TO STDOUT"


def mixed_shapes() -> list[str]:
    """MIXED_SHAPES distinct read-only statements over the pgbench tables, with pgbench variables.

    Every one is an index lookup or a short index range (the tables are large), in shapes an
    application would send: column lists, predicates, ORDER BY, LIMIT, aggregates, joins,
    subqueries and CTEs. They differ in structure, not only in constants, so each normalizes
    to a different decision-cache key.
    """
    shapes: list[str] = []
    # Accounts by primary key: 5 column lists x 4 predicates x 5 tails = 100.
    for columns, where, tail in itertools.product(
            ("abalance", "aid, abalance", "aid, bid, abalance", "bid, abalance", "aid, filler"),
            ("aid = :aid", "aid BETWEEN :aid AND :aid + 9", "aid IN (:aid, :aid + 1, :aid + 2)",
             "aid > :aid AND aid <= :aid + 5"),
            ("", " ORDER BY aid", " ORDER BY aid DESC", " LIMIT 5", " ORDER BY abalance, aid LIMIT 3")):
        shapes.append(f"SELECT {columns} FROM pgbench_accounts WHERE {where}{tail}")
    # Aggregates over a short range: 6 x 2 x 3 = 36.
    for aggregate, where, group in itertools.product(
            ("count(*)", "sum(abalance)", "max(abalance)", "min(aid)", "avg(abalance)", "count(DISTINCT bid)"),
            ("aid BETWEEN :aid AND :aid + 99", "aid >= :aid AND aid < :aid + 50"),
            ("", " GROUP BY bid", " GROUP BY bid ORDER BY bid")):
        shapes.append(f"SELECT {aggregate} FROM pgbench_accounts WHERE {where}{group}")
    # Accounts joined to their branch: 4 x 3 x 2 = 24.
    for columns, join, where in itertools.product(
            ("a.abalance, b.bbalance", "a.aid, b.bid", "b.bbalance", "a.abalance + b.bbalance AS total"),
            ("JOIN pgbench_branches b ON b.bid = a.bid", "LEFT JOIN pgbench_branches b ON b.bid = a.bid",
             "JOIN pgbench_branches b USING (bid)"),
            ("a.aid = :aid", "a.aid BETWEEN :aid AND :aid + 4")):
        shapes.append(f"SELECT {columns} FROM pgbench_accounts a {join} WHERE {where}")
    # Tellers and branches (small tables): 3 x 3 + 2 x 2 + 2 x 2 = 17.
    for columns, where in itertools.product(("tbalance", "tid, bid, tbalance", "bid"),
                                            ("tid = :tid", "tid BETWEEN :tid AND :tid + 3",
                                             "bid = :bid ORDER BY tid")):
        shapes.append(f"SELECT {columns} FROM pgbench_tellers WHERE {where}")
    for columns, where in itertools.product(("t.tbalance, b.bbalance", "t.tid, b.bid"), ("t.tid = :tid",
                                                                                         "b.bid = :bid")):
        shapes.append(f"SELECT {columns} FROM pgbench_tellers t JOIN pgbench_branches b ON b.bid = t.bid "
                      f"WHERE {where}")
    for columns, where in itertools.product(("bbalance", "bid, bbalance"), ("bid = :bid",
                                                                            "bid <= :bid ORDER BY bid")):
        shapes.append(f"SELECT {columns} FROM pgbench_branches WHERE {where}")
    # Subqueries, CTEs, expressions: 23.
    shapes += [
        "SELECT abalance FROM pgbench_accounts WHERE aid = (SELECT max(aid) FROM pgbench_accounts "
        "WHERE aid <= :aid)",
        "SELECT aid FROM pgbench_accounts WHERE aid BETWEEN :aid AND :aid + 9 AND bid IN "
        "(SELECT bid FROM pgbench_branches WHERE bbalance >= 0)",
        "SELECT aid FROM pgbench_accounts a WHERE aid BETWEEN :aid AND :aid + 9 AND EXISTS "
        "(SELECT 1 FROM pgbench_tellers t WHERE t.bid = a.bid)",
        "SELECT (SELECT bbalance FROM pgbench_branches WHERE bid = :bid), (SELECT tbalance FROM pgbench_tellers "
        "WHERE tid = :tid)",
        "SELECT a.abalance, (SELECT count(*) FROM pgbench_tellers t WHERE t.bid = a.bid) FROM pgbench_accounts a "
        "WHERE a.aid = :aid",
        "WITH r AS (SELECT aid, abalance FROM pgbench_accounts WHERE aid BETWEEN :aid AND :aid + 9) "
        "SELECT sum(abalance) FROM r",
        "WITH r AS (SELECT aid, bid FROM pgbench_accounts WHERE aid BETWEEN :aid AND :aid + 9) "
        "SELECT r.aid, b.bbalance FROM r JOIN pgbench_branches b ON b.bid = r.bid",
        "WITH t AS (SELECT tid, tbalance FROM pgbench_tellers WHERE tid = :tid) SELECT * FROM t",
        "SELECT * FROM pgbench_accounts WHERE aid = :aid",
        "SELECT * FROM pgbench_branches WHERE bid = :bid",
        "SELECT * FROM pgbench_tellers WHERE tid = :tid",
        "SELECT abalance * 2 AS doubled FROM pgbench_accounts WHERE aid = :aid",
        "SELECT abs(abalance) FROM pgbench_accounts WHERE aid = :aid",
        "SELECT coalesce(abalance, 0) FROM pgbench_accounts WHERE aid = :aid",
        "SELECT abalance::text FROM pgbench_accounts WHERE aid = :aid",
        "SELECT length(filler) FROM pgbench_accounts WHERE aid = :aid",
        "SELECT aid, CASE WHEN abalance > 0 THEN 'credit' ELSE 'debit' END FROM pgbench_accounts WHERE aid = :aid",
        "SELECT greatest(abalance, 0), least(abalance, 0) FROM pgbench_accounts WHERE aid = :aid",
        "SELECT aid, abalance FROM pgbench_accounts WHERE aid = :aid UNION ALL "
        "SELECT tid, tbalance FROM pgbench_tellers WHERE tid = :tid",
        "SELECT DISTINCT bid FROM pgbench_accounts WHERE aid BETWEEN :aid AND :aid + 99",
        "SELECT aid FROM pgbench_accounts WHERE aid BETWEEN :aid AND :aid + 99 ORDER BY aid OFFSET 10 LIMIT 10",
        "SELECT aid, sum(abalance) OVER (ORDER BY aid) FROM pgbench_accounts WHERE aid BETWEEN :aid AND :aid + 9",
        "SELECT aid, row_number() OVER () FROM pgbench_accounts WHERE aid BETWEEN :aid AND :aid + 4",
    ]
    assert len(shapes) == MIXED_SHAPES, len(shapes)
    return shapes


def substituted(shape: str) -> str:
    """A mixed shape with its pgbench variables replaced by numbers, as pgbench sends it (-M simple)."""
    return re.sub(r":(aid|bid|tid)\b", "1", shape)


def write_mixed_scripts(directory: Path) -> None:
    """The MIXED workload's pgbench scripts, each choosing one of its shapes at random per transaction."""
    shapes = mixed_shapes()
    for number, name in enumerate(MIXED_SCRIPTS):
        mine = shapes[number * SHAPES_PER_SCRIPT:(number + 1) * SHAPES_PER_SCRIPT]
        lines = [r"\set aid random(1, 100000 * :scale)", r"\set bid random(1, 1 * :scale)",
                 r"\set tid random(1, 10 * :scale)", rf"\set shape random(1, {len(mine)})"]
        for index, shape in enumerate(mine, 1):
            lines += [rf"\if :shape = {index}" if index == 1 else rf"\elif :shape = {index}", shape + ";"]
        lines.append(r"\endif")
        (directory / name).write_text("\n".join(lines) + "\n")


def bench_policy() -> str:
    """The demo policy with one exception: COPY … TO of pgbench_accounts (the COPY workload) is allowed.

    The rule goes right before the demo's `export` rule, the one it makes an exception to, so
    every earlier rule still wins (COPY … TO PROGRAM or a file stays denied as server access).
    """
    exception = """\
  - name: bench-copy-accounts
    kinds: [copy_to]
    tables: [public.pgbench_accounts]
    action: allow
    reason: the benchmark exports pgbench_accounts
"""
    policy = demo_file("policy.yaml")
    anchor = "  - name: export\n"
    if anchor not in policy:
        raise RuntimeError("the demo policy has no `export` rule to put the COPY exception before")
    return policy.replace(anchor, exception + anchor)


def rotated(targets: Sequence[str], round_number: int) -> list[str]:
    """The targets in one round's order: rotated each round, so that no target always runs first
    (warm caches, drift)."""
    turn = round_number % len(targets)
    return [*targets[turn:], *targets[:turn]]


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds' runs."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def pgbench(url: str, workload: Workload, duration: float, logs: Path) -> dict[str, float]:
    """One pgbench run: TPS, latency mean and percentiles (ms) from its per-transaction log, connection time."""
    for old in logs.glob("pgbench_log.*"):
        old.unlink()
    result = subprocess.run(
        [str(find_pg_bin("pgbench")), *workload.args, "-n", "-c", str(workload.clients), "-j",
         str(min(2, workload.clients)), "-T", str(max(1, round(duration))), "-l", "--log-prefix",
         str(logs / "pgbench_log"), url],
        capture_output=True, text=True, timeout=duration + 300, cwd=logs)
    if result.returncode != 0:
        raise RuntimeError(f"pgbench ({workload.name}) failed: {result.stderr.strip()[-500:]}")
    found = re.search(r"tps = ([\d.]+)", result.stdout)
    if found is None:  # e.g. no transaction at all: -T also counts the time spent connecting the clients
        raise RuntimeError(f"pgbench ({workload.name}) reported no TPS:\n{result.stdout[-1000:]}"
                           f"{result.stderr[-1000:]}")
    tps = float(found.group(1))
    # "initial connection time" (connecting every client, before the first transaction), or with -C
    # "average connection time" (per transaction).
    connect = re.search(r"(?:initial|average) connection time = ([\d.]+) ms", result.stdout)
    latencies: list[int] = []
    for log in logs.glob("pgbench_log.*"):
        latencies += [int(line.split()[2]) for line in log.read_text().splitlines() if line.strip()]
    latencies.sort()
    measured = {"tps": tps, "p50_ms": latencies[len(latencies) // 2] / 1000,
                "p99_ms": latencies[int(len(latencies) * 0.99)] / 1000, "mean_ms": statistics.fmean(latencies) / 1000}
    if connect is not None:  # pgbench >= 14
        measured["connect_ms"] = float(connect.group(1))
    return measured


def copy_out(url: str, rows: int, repeats: int) -> dict[str, float]:
    """`COPY pgbench_accounts TO STDOUT` through psql into /dev/null, `repeats` times: the median.

    The elapsed time is psql's whole run (start, connect, copy, exit); connecting is a few
    milliseconds of a run that moves about 100 MB.
    """
    elapsed: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = subprocess.run([str(find_pg_bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c",
                                 f"{COPY_WORKLOAD}", url],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
        elapsed.append(time.perf_counter() - started)
        if result.returncode != 0 or result.stderr.strip():
            raise RuntimeError(f"COPY out failed (psql exit {result.returncode}): {result.stderr.strip()[-500:]}")
    seconds = statistics.median(elapsed)
    return {"rows": rows, "elapsed_s": seconds, "rows_per_s": rows / seconds}
