"""Side-by-side benchmarks: a direct connection, pgbouncer (session mode), pgproxy in pass-through
mode and pgproxy enforcing the demo policy, measured in one run in interleaved rounds so that
machine noise hits all of them alike.

    .venv/bin/python -m benchmarks.run [--duration S] [--rounds N] [--copy-repeats N] [--json FILE]
                                       [--relay-floor] [--check] [--smoke]

Workloads (benchmarks/workloads.py), all on a pgbench scale-10 database:
- pgbench select-only (-S), simple and prepared, at 1 and 8 clients;
- pgbench TPC-B-like (its builtin script) at 8 clients;
- a mixed workload of 200 distinct statement shapes at 8 clients (the decision cache holds 200 keys);
- a connection storm: select-only with a new connection per transaction (-C), 8 clients;
- COPY out of 1,000,000 rows (`COPY pgbench_accounts TO STDOUT` through psql into /dev/null).
Reports TPS and latency p50/p99 (from pgbench's per-transaction log), COPY rows/s, and ratios:
DESIGN.md's (each with a target and a regression floor) and the same comparisons for the other workloads. Each ratio is
the ratio of the medians, followed by its lowest and highest value within one round.
`--relay-floor` adds two targets, benchmarks/relay_floor.py: a relay on the same event loop that
forwards bytes without looking at them, the floor under any relay of pgproxy's design, and the same
relay doing only the looking the design requires (message headers, shape keys, ReadyForQuery,
RowDescription), the floor under pgproxy itself.
`--check` compares the ratios with the regression floors in benchmarks/floors.json (what this code
reaches on the reference machine, less its noise; DESIGN.md's targets are kept and shown beside them)
and exits 1 on a regression.
`--smoke` is a short run that proves the suite works (CI); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.workloads import (
    COPY_TABLE,
    COPY_WORKLOAD,
    MIXED,
    STORM,
    TPCB,
    WORKLOADS,
    Workload,
    bench_policy,
    copy_out,
    medians,
    pgbench,
    rotated,
    write_mixed_scripts,
)
from pgproxy.demo.run import demo_file
from pgproxy.pgcluster import PostgresCluster, find_pg_bin, free_port

# What other benchmarks (scale.py, audit.py) build on.
__all__ = ["PASSWORD", "TARGETS", "WORKLOADS", "RunningProxy", "Workload", "bench_database", "pgbench", "pgbouncer",
           "pgproxy", "pgproxy_process", "wait_for_port", "write_proxy_config"]

FLOORS = Path(__file__).with_name("floors.json")
PASSWORD = "bench-password"
TARGETS = ("direct", "pgbouncer", "passthrough", "enforce")
RELAY_FLOOR = "relay-floor"
RELAY_LOOKING = "relay-looking"
Results = dict[str, dict[str, dict[str, float]]]  # workload -> target -> measure -> value


@dataclass(frozen=True, slots=True)
class RunningProxy:
    """A pgproxy process started by `pgproxy_process()`: the agent's URL, its pid and directory."""

    url: str
    pid: int
    home: Path


def wait_for_port(port: int, seconds: float = 20, process: subprocess.Popen[bytes] | None = None,
                  log: Path | None = None) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`; raise if `process` exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"the process exited ({process.returncode}) before listening on {port}:\n{tail}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextmanager
def pgbouncer(pg: PostgresCluster, directory: Path) -> Iterator[str]:
    """pgbouncer in session mode in front of `pg`'s database `app`; yields its URL."""
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
        wait_for_port(port, process=process, log=home / "pgbouncer.log")
        yield f"postgresql://bench:{PASSWORD}@127.0.0.1:{port}/app"
    finally:
        process.terminate()
        process.wait(10)


def write_proxy_config(pg: PostgresCluster, directory: Path, mode: str, token_secret: str, *, name: str | None = None,
                       policy: str | None = None, extra: str = "") -> tuple[Path, int]:
    """The files of a pgproxy in `mode` in front of `pg`'s database `app` (see pgproxy_process);
    returns its directory (its config is ``pgproxy.yaml`` there) and the port it will listen on."""
    port = free_port()
    home = directory / (name or f"pgproxy-{mode}")
    home.mkdir(exist_ok=True)
    (home / "catalog.yaml").write_text(demo_file("catalog.yaml"))
    (home / "pw").write_text(PASSWORD)
    (home / "jwt").write_text(token_secret)
    indented = "\n".join("  " + line for line in (policy or demo_file("policy.yaml")).splitlines())
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
{extra}
policy:
{indented}
""")
    return home, port


@contextmanager
def pgproxy_process(pg: PostgresCluster, directory: Path, mode: str, token_secret: str, *, name: str | None = None,
                    policy: str | None = None, extra: str = "") -> Iterator[RunningProxy]:
    """`pgproxy run` (its own process) in `mode` in front of `pg`'s database `app`, with the demo catalog.

    Its files go in `directory / name` (default ``pgproxy-<mode>``), which may already hold files
    that `extra` (more top-level config) names. `policy` defaults to the demo policy.
    """
    import jwt

    home, port = write_proxy_config(pg, directory, mode, token_secret, name=name, policy=policy, extra=extra)
    with open(home / "log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "pgproxy.cli", "run", "--config",
                                    str(home / "pgproxy.yaml")], stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for_port(port, process=process, log=home / "log")
        token = jwt.encode({"sub": "agent", "exp": int(time.time()) + 86400}, token_secret, algorithm="HS256")
        yield RunningProxy(f"postgresql://agent:{token}@127.0.0.1:{port}/app", process.pid, home)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextmanager
def pgproxy(pg: PostgresCluster, directory: Path, mode: str, token_secret: str, *, name: str | None = None,
            policy: str | None = None, extra: str = "") -> Iterator[str]:
    """`pgproxy_process()`, yielding only the agent's URL."""
    with pgproxy_process(pg, directory, mode, token_secret, name=name, policy=policy, extra=extra) as proxy:
        yield proxy.url


@contextmanager
def relay_floor(pg: PostgresCluster, directory: Path, *, looking: bool = False) -> Iterator[str]:
    """benchmarks/relay_floor.py in front of `pg`; yields the URL that logs in to `app` through it."""
    port = free_port()
    log = directory / f"{RELAY_LOOKING if looking else RELAY_FLOOR}.log"
    command = [sys.executable, "-m", "benchmarks.relay_floor", *(["--looking"] if looking else []), str(port),
               str(pg.port)]
    with open(log, "w") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, cwd=Path(__file__).parent.parent)
    try:
        wait_for_port(port, process=process, log=log)
        yield f"postgresql://bench:{PASSWORD}@127.0.0.1:{port}/app"
    finally:
        process.terminate()
        process.wait(10)


def bench_database(pg: PostgresCluster, scale: int) -> str:
    """Role `bench` owning database `app`, initialised by `pgbench -i -s scale`; its direct URL."""
    pg.create_role("bench", PASSWORD)
    pg.create_database("app", owner="bench")
    url = pg.dsn(user="bench", password=PASSWORD, dbname="app")
    subprocess.run([str(find_pg_bin("pgbench")), "-i", "-q", "-s", str(scale), url],
                   check=True, capture_output=True, timeout=600)
    return url


def ratios(results: Results, copy: dict[str, dict[str, float]]) -> dict[str, float]:
    """DESIGN.md's performance table (and the same comparisons for the other workloads), as ratios."""
    out: dict[str, float] = {}
    for mode in ("simple", "prepared"):
        eight = results[f"select-only {mode}, 8 clients"]
        out[f"enforce_vs_pgbouncer_tps_8_{mode}"] = eight["enforce"]["tps"] / eight["pgbouncer"]["tps"]
        out[f"enforce_vs_passthrough_tps_8_{mode}"] = eight["enforce"]["tps"] / eight["passthrough"]["tps"]
        out[f"passthrough_vs_pgbouncer_tps_8_{mode}"] = eight["passthrough"]["tps"] / eight["pgbouncer"]["tps"]
        if RELAY_FLOOR in eight:
            out[f"relay_floor_vs_pgbouncer_tps_8_{mode}"] = eight[RELAY_FLOOR]["tps"] / eight["pgbouncer"]["tps"]
            out[f"relay_looking_vs_pgbouncer_tps_8_{mode}"] = eight[RELAY_LOOKING]["tps"] / eight["pgbouncer"]["tps"]
        one = results[f"select-only {mode}, 1 client"]
        added_bouncer = one["pgbouncer"]["mean_ms"] - one["direct"]["mean_ms"]
        added_proxy = one["enforce"]["mean_ms"] - one["direct"]["mean_ms"]
        out[f"added_latency_vs_pgbouncer_1_{mode}"] = added_proxy / added_bouncer if added_bouncer > 0 else float("inf")
    for key, workload in (("tpcb", TPCB), ("mixed", MIXED), ("storm", STORM)):
        by_target = results[workload.name]
        out[f"enforce_vs_pgbouncer_tps_8_{key}"] = by_target["enforce"]["tps"] / by_target["pgbouncer"]["tps"]
        out[f"enforce_vs_passthrough_tps_8_{key}"] = by_target["enforce"]["tps"] / by_target["passthrough"]["tps"]
    # pgbouncer keeps its server connections across a storm; direct and pgproxy open one per client.
    out["enforce_vs_direct_tps_8_storm"] = results[STORM.name]["enforce"]["tps"] / results[STORM.name]["direct"]["tps"]
    for other in ("direct", "pgbouncer", "passthrough"):
        out[f"copy_enforce_vs_{other}_rows_per_s"] = copy["enforce"]["rows_per_s"] / copy[other]["rows_per_s"]
    return out


def past(name: str, value: float, limit: float) -> bool:
    """Whether a ratio is on the wrong side of a floor or target: added latency is a ceiling
    (lower is better), the TPS ratios are floors."""
    return value > limit if name.startswith("added_latency") else value < limit


def report(results: Results, copy: dict[str, dict[str, float]], found: dict[str, float],
           by_round: dict[str, list[float]], limits: dict[str, dict[str, float]],
           args: argparse.Namespace) -> list[str]:
    """Print the markdown tables; return the names of the ratios past their regression floor."""
    print(f"{args.rounds} interleaved round(s); pgbench runs of {args.duration:g} s, "
          f"COPY {args.copy_repeats} time(s) per round; medians\n")
    print("| workload | target | TPS | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for name, by_target in results.items():
        for target, r in by_target.items():
            print(f"| {name} | {target} | {r['tps']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |")
    print("\n| workload | target | rows | rows/s | elapsed s |")
    print("|---|---|---|---|---|")
    for target, c in copy.items():
        print(f"| {COPY_WORKLOAD} | {target} | {c['rows']:.0f} | {c['rows_per_s']:.0f} | {c['elapsed_s']:.3f} |")
    print("\n| ratio | this run | rounds: lowest-highest | regression floor | DESIGN.md target |")
    print("|---|---|---|---|---|")
    regressions = []
    for name, value in found.items():
        spread = f"{min(by_round[name]):.3f}-{max(by_round[name]):.3f}"
        if name not in limits:
            print(f"| {name} | {value:.3f} | {spread} | - | - |")
            continue
        floor, design = limits[name]["floor"], limits[name]["target"]
        regressed = past(name, value, floor)
        if regressed:
            regressions.append(name)
        print(f"| {name} | {value:.3f} | {spread} | {floor}{' REGRESSION' if regressed else ''} "
              f"| {design}{' not met' if past(name, value, design) else ''} |")
    return regressions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per pgbench run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median counts)")
    parser.add_argument("--copy-repeats", type=int, default=3, help="COPY runs per target per round")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--relay-floor", action="store_true",
                        help="also measure benchmarks/relay_floor.py, looking at nothing and at what the "
                             "design requires")
    parser.add_argument("--check", action="store_true", help="exit 1 if a ratio is past its regression floor")
    parser.add_argument("--smoke", action="store_true", help="a short run that only proves the suite works")
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.rounds, args.copy_repeats = 1.0, 1, 1

    targets = (*TARGETS, RELAY_FLOOR, RELAY_LOOKING) if args.relay_floor else TARGETS
    samples: dict[str, dict[str, list[dict[str, float]]]] = {w.name: {t: [] for t in targets} for w in WORKLOADS}
    copies: dict[str, list[dict[str, float]]] = {t: [] for t in targets}
    with ExitStack() as stack:
        directory = Path(tempfile.mkdtemp(prefix="pgproxy-bench-"))
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        directory.chmod(0o755)
        pg = stack.enter_context(PostgresCluster(settings={"max_connections": "200"}))
        direct = bench_database(pg, scale=10)
        rows = int(pg.psql(f"SELECT count(*) FROM {COPY_TABLE}", dbname="app"))
        policy = bench_policy()
        urls: dict[str, str] = {
            "direct": direct,
            "pgbouncer": stack.enter_context(pgbouncer(pg, directory)),
            "passthrough": stack.enter_context(pgproxy(pg, directory, "passthrough", "bench-secret-" + "x" * 24,
                                                       policy=policy)),
            "enforce": stack.enter_context(pgproxy(pg, directory, "enforce", "bench-secret-" + "y" * 24,
                                                   policy=policy)),
        }
        if args.relay_floor:
            urls[RELAY_FLOOR] = stack.enter_context(relay_floor(pg, directory))
            urls[RELAY_LOOKING] = stack.enter_context(relay_floor(pg, directory, looking=True))
        logs = directory / "logs"
        logs.mkdir()
        write_mixed_scripts(logs)
        for round_number in range(args.rounds):
            order = rotated(targets, round_number)
            for workload in WORKLOADS:
                for target in order:
                    samples[workload.name][target].append(pgbench(urls[target], workload, args.duration, logs))
            for target in order:
                copies[target].append(copy_out(urls[target], rows, args.copy_repeats))

    results = {w: {t: medians(runs) for t, runs in by_target.items()} for w, by_target in samples.items()}
    copy = {t: medians(runs) for t, runs in copies.items()}
    found = ratios(results, copy)
    # The same ratios within each round (its targets ran back to back): how far the medians can be trusted.
    by_round: dict[str, list[float]] = {name: [] for name in found}
    for index in range(args.rounds):
        within = ratios({w: {t: runs[index] for t, runs in by_target.items()} for w, by_target in samples.items()},
                        {t: runs[index] for t, runs in copies.items()})
        for name, value in within.items():
            by_round[name].append(value)
    limits: dict[str, dict[str, float]] = json.loads(FLOORS.read_text())
    regressions = report(results, copy, found, by_round, limits, args)
    if args.json is not None:
        args.json.write_text(json.dumps({"results": results, "copy": copy, "ratios": found, "ratio_rounds": by_round,
                                         "floors": {name: v["floor"] for name, v in limits.items()},
                                         "targets": {name: v["target"] for name, v in limits.items()},
                                         "duration": args.duration, "rounds": args.rounds,
                                         "copy_repeats": args.copy_repeats}, indent=2))
    if args.check and regressions:
        print(f"\nbelow the floor: {', '.join(regressions)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
