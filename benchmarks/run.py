"""Side-by-side benchmarks: a direct connection, pgbouncer (session mode), pgproxy in pass-through
mode and pgproxy enforcing the demo policy, measured in one run in interleaved rounds so that
machine noise hits all of them alike.

    .venv/bin/python -m benchmarks.run [--duration S] [--rounds N] [--json FILE] [--check] [--smoke]

Workloads: pgbench select-only (-S), simple and prepared, at 1 and 8 clients. Reports TPS and
latency p50/p99 (from pgbench's per-transaction log) per target, and DESIGN.md's ratios.
`--check` compares the ratios with the floors in benchmarks/floors.json and exits 1 on a regression.
`--smoke` is a short run that proves the suite works (CI); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgproxy.demo.run import demo_file
from pgproxy.pgcluster import PostgresCluster, find_pg_bin, free_port

FLOORS = Path(__file__).with_name("floors.json")
PASSWORD = "bench-password"
TARGETS = ("direct", "pgbouncer", "passthrough", "enforce")


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    args: tuple[str, ...]
    clients: int


WORKLOADS = (
    Workload("select-only simple, 1 client", ("-S", "-M", "simple"), 1),
    Workload("select-only prepared, 1 client", ("-S", "-M", "prepared"), 1),
    Workload("select-only simple, 8 clients", ("-S", "-M", "simple"), 8),
    Workload("select-only prepared, 8 clients", ("-S", "-M", "prepared"), 8),
)


def wait_for_port(port: int, seconds: float = 20) -> None:
    import socket

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextmanager
def pgbouncer(pg: PostgresCluster, directory: Path) -> Any:
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise RuntimeError("pgbouncer is not installed: apt-get install pgbouncer (./dev setup does it)")
    port = free_port()
    home = directory / "pgbouncer"
    home.mkdir()
    (home / "userlist.txt").write_text(f'"bench" "{PASSWORD}"\n')
    (home / "pgbouncer.ini").write_text(f"""\
[databases]
app = host=127.0.0.1 port={pg.port} dbname=app user=bench password={PASSWORD}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = plain
auth_file = {home / "userlist.txt"}
pool_mode = session
max_client_conn = 200
default_pool_size = 50
logfile = {home / "pgbouncer.log"}
""")
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        shutil.chown(home, "postgres")
        for item in home.iterdir():
            shutil.chown(item, "postgres")
        directory.chmod(0o755)
        kwargs = {"user": "postgres", "group": "postgres"}
    process = subprocess.Popen([binary, str(home / "pgbouncer.ini")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, **kwargs)
    try:
        wait_for_port(port)
        yield f"postgresql://bench:{PASSWORD}@127.0.0.1:{port}/app"
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def pgproxy(pg: PostgresCluster, directory: Path, mode: str, token_secret: str) -> Any:
    import jwt

    port = free_port()
    home = directory / f"pgproxy-{mode}"
    home.mkdir()
    (home / "catalog.yaml").write_text(demo_file("catalog.yaml"))
    (home / "pw").write_text(PASSWORD)
    (home / "jwt").write_text(token_secret)
    policy = "\n".join("  " + line for line in demo_file("policy.yaml").splitlines())
    (home / "pgproxy.yaml").write_text(f"""\
mode: {mode}
listen: {{host: 127.0.0.1, port: {port}}}
catalog: catalog.yaml
auth:
  allow_cleartext_on_loopback: true
  jwt: {{algorithms: [HS256], secret_file: jwt}}
routes:
  app: {{host: 127.0.0.1, port: {pg.port}, user: bench, password_file: pw}}
logging: {{level: warning}}
policy:
{policy}
""")
    process = subprocess.Popen([sys.executable, "-m", "pgproxy.cli", "run", "--config", str(home / "pgproxy.yaml")],
                               stdout=subprocess.DEVNULL, stderr=open(home / "log", "w"))  # noqa: SIM115
    try:
        wait_for_port(port)
        token = jwt.encode({"sub": "agent", "exp": int(time.time()) + 86400}, token_secret, algorithm="HS256")
        yield f"postgresql://agent:{token}@127.0.0.1:{port}/app"
    finally:
        process.terminate()
        process.wait(10)


def pgbench(url: str, workload: Workload, duration: float, logs: Path) -> dict[str, float]:
    """One pgbench run: TPS and latency percentiles (ms) from its per-transaction log."""
    for old in logs.glob("pgbench_log.*"):
        old.unlink()
    result = subprocess.run(
        [str(find_pg_bin("pgbench")), *workload.args, "-n", "-c", str(workload.clients), "-j",
         str(min(2, workload.clients)), "-T", str(max(1, round(duration))), "-l", "--log-prefix",
         str(logs / "pgbench_log"), url],
        capture_output=True, text=True, timeout=duration + 120, cwd=logs)
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed: {result.stderr.strip()[-500:]}")
    tps = float(re.search(r"tps = ([\d.]+)", result.stdout).group(1))  # type: ignore[union-attr]
    latencies: list[int] = []
    for log in logs.glob("pgbench_log.*"):
        latencies += [int(line.split()[2]) for line in log.read_text().splitlines() if line.strip()]
    latencies.sort()
    return {"tps": tps, "p50_ms": latencies[len(latencies) // 2] / 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99)] / 1000,
            "mean_ms": statistics.fmean(latencies) / 1000}


def ratios(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """DESIGN.md's performance table, as ratios of this run's medians."""
    out: dict[str, float] = {}
    for mode in ("simple", "prepared"):
        eight = results[f"select-only {mode}, 8 clients"]
        out[f"enforce_vs_pgbouncer_tps_8_{mode}"] = eight["enforce"]["tps"] / eight["pgbouncer"]["tps"]
        out[f"enforce_vs_passthrough_tps_8_{mode}"] = eight["enforce"]["tps"] / eight["passthrough"]["tps"]
        one = results[f"select-only {mode}, 1 client"]
        added_bouncer = one["pgbouncer"]["mean_ms"] - one["direct"]["mean_ms"]
        added_proxy = one["enforce"]["mean_ms"] - one["direct"]["mean_ms"]
        out[f"added_latency_vs_pgbouncer_1_{mode}"] = added_proxy / added_bouncer if added_bouncer > 0 else float("inf")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per pgbench run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median counts)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--check", action="store_true", help="exit 1 if a ratio is below its floor")
    parser.add_argument("--smoke", action="store_true", help="a short run that only proves the suite works")
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.rounds = 1.0, 1

    directory = Path(tempfile.mkdtemp(prefix="pgproxy-bench-"))
    directory.chmod(0o755)
    samples: dict[str, dict[str, list[dict[str, float]]]] = {w.name: {t: [] for t in TARGETS} for w in WORKLOADS}
    with ExitStack() as stack:
        pg = stack.enter_context(PostgresCluster(settings={"max_connections": "200"}))
        pg.create_role("bench", PASSWORD)
        pg.create_database("app", owner="bench")
        subprocess.run([str(find_pg_bin("pgbench")), "-i", "-q", "-s", "10",
                        pg.dsn(user="bench", password=PASSWORD, dbname="app")],
                       check=True, capture_output=True, timeout=300)
        urls = {
            "direct": pg.dsn(user="bench", password=PASSWORD, dbname="app"),
            "pgbouncer": stack.enter_context(pgbouncer(pg, directory)),
            "passthrough": stack.enter_context(pgproxy(pg, directory, "passthrough", "bench-secret-" + "x" * 24)),
            "enforce": stack.enter_context(pgproxy(pg, directory, "enforce", "bench-secret-" + "y" * 24)),
        }
        logs = directory / "logs"
        logs.mkdir()
        for round_number in range(args.rounds):
            for workload in WORKLOADS:
                # Rotate the order each round so no target always runs first (warm caches, drift).
                order = TARGETS[round_number % 4:] + TARGETS[:round_number % 4]
                for target in order:
                    samples[workload.name][target].append(pgbench(urls[target], workload, args.duration, logs))
    shutil.rmtree(directory, ignore_errors=True)

    results = {w: {t: {k: statistics.median(s[k] for s in runs) for k in runs[0]} for t, runs in by_target.items()}
               for w, by_target in samples.items()}
    found = ratios(results)
    print(f"pgbench, {args.rounds} interleaved round(s) of {args.duration:g} s each; medians\n")
    print("| workload | target | TPS | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for name, by_target in results.items():
        for target, r in by_target.items():
            print(f"| {name} | {target} | {r['tps']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |")
    floors: dict[str, float] = json.loads(FLOORS.read_text())
    print("\n| ratio | this run | floor (DESIGN.md target) |")
    print("|---|---|---|")
    regressions = []
    for name, value in found.items():
        floor = floors.get(name)
        # Added latency is a ceiling (lower is better); the TPS ratios are floors.
        bad = floor is not None and (value > floor if name.startswith("added_latency") else value < floor)
        if bad:
            regressions.append(name)
        print(f"| {name} | {value:.3f} | {floor if floor is not None else '-'}{' REGRESSION' if bad else ''} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"results": results, "ratios": found, "floors": floors,
                                         "duration": args.duration, "rounds": args.rounds}, indent=2))
    if args.check and regressions:
        print(f"\nbelow the floor: {', '.join(regressions)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
