"""A/B: this checkout's pgproxy against another checkout's, side by side on one PostgreSQL,
pgbench select-only at 8 clients, runs interleaved (the order alternates each round) so that
machine noise hits both alike. For a change to the relay: is it faster or slower, and by how much.

    git worktree add /tmp/base <commit>
    .venv/bin/python -m benchmarks.ab --base /tmp/base [--duration 5] [--rounds 4] [--json FILE] [--smoke]

Both run as `pgproxy run` processes (each with its own tree on PYTHONPATH) in pass-through and
enforce mode; it prints each one's median TPS, every round's TPS, and this / base.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jwt

from benchmarks.run import bench_database, wait_for_port, write_proxy_config
from pgproxy.pgcluster import PostgresCluster, find_pg_bin

HERE = Path(__file__).resolve().parent.parent
SECRET = "ab-secret-" + "q" * 24


@contextmanager
def proxy_from(tree: Path, pg: PostgresCluster, directory: Path, mode: str, name: str) -> Iterator[str]:
    """`pgproxy run` from the checkout `tree`; yields the agent's URL."""
    home, port = write_proxy_config(pg, directory, mode, SECRET, name=name)
    process = subprocess.Popen([sys.executable, "-m", "pgproxy.cli", "run", "--config", str(home / "pgproxy.yaml")],
                               env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=process)
        token = jwt.encode({"sub": "agent", "exp": int(time.time()) + 86400}, SECRET, algorithm="HS256")
        yield f"postgresql://agent:{token}@127.0.0.1:{port}/app"
    finally:
        process.terminate()
        process.wait(10)


def tps(url: str, protocol: str, duration: float) -> float:
    out = subprocess.run([str(find_pg_bin("pgbench")), "-S", "-M", protocol, "-n", "-c", "8", "-j", "2", "-T",
                          str(max(1, round(duration))), url], capture_output=True, text=True, timeout=duration + 120)
    found = re.search(r"tps = ([\d.]+)", out.stdout)
    if found is None:
        raise RuntimeError(f"pgbench failed: {out.stderr[-500:]}")
    return float(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the other checkout (e.g. a git worktree)")
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true", help="a short run that proves this works")
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.rounds = 1, 1
    found: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="pgproxy-ab-") as tmp, PostgresCluster() as pg:
        bench_database(pg, 1 if args.smoke else 10)
        for mode in ("passthrough", "enforce"):
            with (proxy_from(args.base.resolve(), pg, Path(tmp), mode, f"base-{mode}") as base,
                  proxy_from(HERE, pg, Path(tmp), mode, f"this-{mode}") as this):
                for protocol in ("simple", "prepared"):
                    runs: dict[str, list[float]] = {"base": [], "this": []}
                    for round_ in range(args.rounds):
                        order = [("base", base), ("this", this)]
                        for name, url in order if round_ % 2 == 0 else reversed(order):
                            runs[name].append(tps(url, protocol, args.duration))
                    medians = {name: statistics.median(values) for name, values in runs.items()}
                    found[f"{mode}_{protocol}_8"] = {"base_tps": medians["base"], "this_tps": medians["this"],
                                                     "this_vs_base": medians["this"] / medians["base"],
                                                     "rounds": runs}
    print("| workload | base TPS | this TPS | this / base | rounds (base; this) |")
    print("|---|---|---|---|---|")
    for name, row in found.items():
        rounds = row["rounds"]
        assert isinstance(rounds, dict)
        print(f"| {name} | {row['base_tps']:.0f} | {row['this_tps']:.0f} | {row['this_vs_base']:.3f} | "
              f"{', '.join(f'{v:.0f}' for v in rounds['base'])}; {', '.join(f'{v:.0f}' for v in rounds['this'])} |")
    if args.json is not None:
        args.json.write_text(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
