"""Retry hold mode: time from a reviewer's decision to the retried statement's rows at the agent.

    .venv/bin/python -m benchmarks.retry [--rounds 50] [--json out.json] [--smoke]

The proxy runs in this process, in retry mode; the agent (psycopg) and the reviewer (HTTP) run in
a child process, so that nothing but the proxy runs on the proxy's interpreter. Each round the agent
runs a statement that needs review (its own literal, so its own request) and gets 55000 with the
request id; the reviewer reads the request and POSTs the approval; as soon as the POST answers,
the agent runs the same statement again and receives its row. Reported, median and p99 over the
rounds: the decision POST (sent -> answered), the retry (POST answered -> row at the agent) and
the two together (decision sent -> row), which is what an agent retrying at once would see.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

AGENT = """
import json, re, sys, time, urllib.request
import psycopg
dsn, base, token, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sql = "SELECT email FROM customers WHERE id = {}"

def call(path, body=None):
    request = urllib.request.Request(base + path, data=json.dumps(body).encode() if body is not None else None,
                                     method="POST" if body is not None else "GET")
    request.add_header("Authorization", "Bearer " + token)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())

with psycopg.connect(dsn, autocommit=True) as conn:
    for i in range(1, rounds + 1):
        try:
            conn.execute(sql.format(i))
            raise SystemExit("the statement ran without approval")
        except psycopg.errors.ObjectNotInPrerequisiteState as exc:
            approval_id = re.search(r"the request id is ([A-Za-z0-9_-]+)", exc.diag.message_primary).group(1)
        request = call("/api/approvals/" + approval_id)
        sent = time.perf_counter()
        call("/api/approvals/" + approval_id + "/decision",
             {"decision": "approve", "reason": "bench", "statement_sha256": request["statement_sha256"]})
        answered = time.perf_counter()
        row = conn.execute(sql.format(i)).fetchone()
        arrived = time.perf_counter()
        assert row is not None and row[0]
        print(json.dumps([sent, answered, arrived]), flush=True)
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[int(fraction * (len(ordered) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--smoke", action="store_true", help="3 rounds: only proves the benchmark works")
    args = parser.parse_args()
    rounds = 3 if args.smoke else args.rounds

    from pgproxy.config import load_config
    from pgproxy.demo.run import demo_sql
    from pgproxy.pgcluster import PostgresCluster
    from tests import corpus
    from tests.approvals_support import approvals_config, reviewer_token
    from tests.harness import running_proxy, write_enforce_config

    with PostgresCluster() as pg, tempfile.TemporaryDirectory(prefix="pgproxy-bench-") as tmp:
        pg.create_role("app_scram", "scram-pass")
        pg.create_database("app", owner="app_scram")
        pg.psql(demo_sql(), dbname="app", user="app_scram")
        directory = Path(tmp)
        approvals = approvals_config(directory, 600, settings="  hold_mode: retry\n")
        config = load_config(write_enforce_config(pg, directory, catalog=corpus.CATALOG, extra=approvals))
        with running_proxy(config) as proxy:
            agent = subprocess.run(
                [sys.executable, "-c", AGENT, proxy.dsn(), proxy.server.approvals_url or "", reviewer_token(),
                 str(rounds)], capture_output=True, text=True, timeout=600)
    if agent.returncode != 0:
        print(agent.stderr, file=sys.stderr)
        return 1
    times = [json.loads(line) for line in agent.stdout.splitlines()]
    figures = {
        "rounds": len(times),
        "decision_post_ms": [(answered - sent) * 1e3 for sent, answered, _ in times],
        "retry_ms": [(arrived - answered) * 1e3 for _, answered, arrived in times],
        "decision_to_rows_ms": [(arrived - sent) * 1e3 for sent, _, arrived in times],
    }
    print(f"| retry mode, {len(times)} rounds | median | p99 |")
    print("|---|---|---|")
    for key, label in (("decision_post_ms", "decision POST, sent -> answered"),
                       ("retry_ms", "retried statement, POST answered -> row at the agent"),
                       ("decision_to_rows_ms", "decision sent -> retried statement's row")):
        values = figures[key]
        assert isinstance(values, list)
        print(f"| {label} | {statistics.median(values):.2f} ms | {percentile(values, 0.99):.2f} ms |")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
