"""Scale: 1,000 client connections through one pgproxy, 200 of them holding a statement for review.

    .venv/bin/python -m benchmarks.scale [--clients 800] [--held 200] [--duration 15] [--rounds 1]
                                         [--json FILE] [--smoke]

Starts a throwaway PostgreSQL (pgbench tables and the demo data in one database), and pgproxy
(`pgproxy run`, its own process) enforcing the demo policy with approvals configured. A child
process opens `--held` connections (asyncpg) and keeps them open. Then, in each round, pgbench
select-only runs with `--clients` clients (-j 2) twice (which goes first alternates by round):
- free: the child's connections are idle, nothing is held;
- held: each of the child's connections waits on `SELECT email FROM customers LIMIT 1`
  (personal data: held for review); after the run a reviewer denies them all through the API.
Reports the TPS of both runs and their ratio (DESIGN.md: held/free >= 0.9), and pgproxy's
resident memory (VmRSS): idle, with the child's connections open, at the peak of each run,
and with everything held (DESIGN.md: <= 300 MB). `--smoke` (50 clients, 10 held, 1 s) only
proves the benchmark works.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from benchmarks.approvals import call
from benchmarks.run import bench_database, pgproxy_process, wait_for_port
from benchmarks.workloads import Workload, pgbench
from pgproxy.demo.run import demo_sql
from pgproxy.pgcluster import PostgresCluster, free_port

HELD_STATEMENT = "SELECT email FROM customers LIMIT 1"  # customers.email is tagged pii: review
RSS_TARGET_MB = 300
RATIO_TARGET = 0.9

# The child holding statements: it connects, says so, then on each "hold" line sends the
# statement on every connection and, once all have been decided, reports how many failed.
HOLDER = """
import asyncio, sys
import asyncpg
async def main(dsn, n, sql):
    conns = await asyncio.gather(*(asyncpg.connect(dsn) for _ in range(n)))
    print("connected", flush=True)
    while (await asyncio.to_thread(sys.stdin.readline)).strip() == "hold":
        outcomes = await asyncio.gather(*(c.fetchval(sql) for c in conns), return_exceptions=True)
        print("released", sum(isinstance(o, Exception) for o in outcomes), flush=True)
    await asyncio.gather(*(c.close() for c in conns))
asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"""


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft limit on open files (children inherit it) to `needed`, if allowed.

    Returns the new soft limit; raises if the hard limit is below `needed`.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise RuntimeError(f"{needed} open files are needed but the hard limit is {hard}: raise `ulimit -Hn`")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


def rss_kib(pid: int) -> int:
    """Resident memory of process `pid` (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


class PeakRss:
    """Samples a process's VmRSS in a thread until stopped; `peak_kib` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.peak_kib = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, rss_kib(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, rss_kib(self.pid))


class Holder:
    """The child process holding one statement on each of its `count` connections."""

    def __init__(self, url: str, count: int) -> None:
        self.count = count
        self.process = subprocess.Popen([sys.executable, "-c", HOLDER, url, str(count), HELD_STATEMENT],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._expect("connected")

    def _expect(self, word: str) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith(word):
            raise RuntimeError(f"the holder process said {line!r} (exit {self.process.poll()}), not {word!r}")
        return line

    def hold(self) -> None:
        """Send the statement on every connection (pgproxy holds each for review)."""
        assert self.process.stdin is not None
        self.process.stdin.write("hold\n")
        self.process.stdin.flush()

    def released(self) -> int:
        """Wait until every held statement has been decided; the number that ended in an error."""
        return int(self._expect("released").split()[1])

    def close(self) -> None:
        """Let the child close its connections and exit; kill it if it does not."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            with suppress(BrokenPipeError):
                self.process.stdin.close()
        try:
            self.process.wait(10)  # more only if statements are still held (a failed run): then kill
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@contextmanager
def holder(url: str, count: int) -> Iterator[Holder]:
    """A Holder, closed on exit (also when the run fails)."""
    child = Holder(url, count)
    try:
        yield child
    finally:
        child.close()


def pending(base: str, at_least: int, seconds: float = 120) -> list[dict[str, object]]:
    """The pending approval requests, once there are `at_least` of them."""
    from tests.approvals_support import reviewer_token

    deadline = time.monotonic() + seconds
    while True:
        found: list[dict[str, object]] = call(f"{base}/api/approvals?status=pending&limit=1000",
                                              reviewer_token())["approvals"]
        if len(found) >= at_least:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(found)} of {at_least} statements were held after {seconds:g} s")
        time.sleep(0.1)


def deny_all(base: str, requests: list[dict[str, object]]) -> None:
    """A reviewer denies every request (so the held connections are free again)."""
    from tests.approvals_support import reviewer_token

    token = reviewer_token()
    for request in requests:
        call(f"{base}/api/approvals/{request['id']}/decision", token,
             {"decision": "deny", "reason": "benchmark round over", "statement_sha256": request["statement_sha256"]})


def approvals_extra(home: Path, web_port: int, max_connections: int) -> str:
    """More config for pgproxy_process(): approvals on 127.0.0.1:`web_port` (their files written into
    `home`, the proxy's directory) and a connection limit."""
    from tests.approvals_support import approvals_config

    text = approvals_config(home, timeout=3600)
    listen = "listen: {host: 127.0.0.1, port: 0}"
    if listen not in text:
        raise RuntimeError("tests.approvals_support.approvals_config changed: no web listen line to replace")
    return (text.replace(listen, f"listen: {{host: 127.0.0.1, port: {web_port}}}")
            + f"limits: {{max_connections: {max_connections}}}\n")


@dataclass(frozen=True, slots=True)
class ScaleResult:
    clients: int
    held: int
    duration: float
    rounds: int
    fd_limit: int
    tps_free: float  # medians over rounds
    tps_held: float
    ratio_held_vs_free: float
    connect_ms: dict[str, float | None]  # pgbench's (>= 14) time to connect all its clients, by phase (median)
    rss_mb: dict[str, float]  # pgproxy's VmRSS in MB (10^6 bytes), by moment
    samples: dict[str, list[float]]  # every TPS figure, by phase


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwind, so the ExitStack stops everything this run started


def measure(clients: int, held: int, duration: float, rounds: int) -> ScaleResult:
    """Run the benchmark; every process and directory it starts is gone when it returns or raises."""
    total = clients + held
    fd_limit = raise_fd_limit(4 * total + 1024)  # pgproxy: 2 sockets per client; pgbench; PostgreSQL
    workload = Workload(f"select-only, {clients} clients", ("-S", "-M", "simple"), clients)
    tps: dict[str, list[float]] = {"free": [], "held": []}
    connect: dict[str, list[float]] = {"free": [], "held": []}
    rss: dict[str, int] = {}  # KiB
    with ExitStack() as stack:
        directory = Path(tempfile.mkdtemp(prefix="pgproxy-scale-"))
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        directory.chmod(0o755)
        pg = stack.enter_context(PostgresCluster(settings={"max_connections": str(total + 30)}))
        bench_database(pg, scale=1)
        pg.psql(demo_sql(), dbname="app", user="bench")
        web_port = free_port()
        home = directory / "pgproxy-scale"
        home.mkdir()
        proxy = stack.enter_context(pgproxy_process(pg, directory, "enforce", "scale-secret-" + "z" * 24,
                                                    name=home.name,
                                                    extra=approvals_extra(home, web_port, total + 50)))
        wait_for_port(web_port)
        base = f"http://127.0.0.1:{web_port}"
        logs = directory / "logs"
        logs.mkdir()
        rss["idle"] = rss_kib(proxy.pid)
        child = stack.enter_context(holder(proxy.url + "?sslmode=disable", held))
        rss[f"{held} connections open, idle"] = rss_kib(proxy.pid)
        for round_number in range(rounds):
            for phase in ("free", "held") if round_number % 2 == 0 else ("held", "free"):
                if phase == "held":
                    child.hold()
                    requests = pending(base, held)
                    key = f"{held} held, no pgbench running"
                    rss[key] = max(rss.get(key, 0), rss_kib(proxy.pid))
                with PeakRss(proxy.pid) as peak:
                    run = pgbench(proxy.url, workload, duration, logs)
                tps[phase].append(run["tps"])
                if "connect_ms" in run:
                    connect[phase].append(run["connect_ms"])
                key = f"{total} connections, {held if phase == 'held' else 0} held (peak)"
                rss[key] = max(rss.get(key, 0), peak.peak_kib)
                if phase == "held":
                    deny_all(base, requests)
                    if (failed := child.released()) != held:
                        raise RuntimeError(f"{held - failed} held statements ran although they were denied")
    free, with_held = statistics.median(tps["free"]), statistics.median(tps["held"])
    return ScaleResult(clients, held, duration, rounds, fd_limit, free, with_held, with_held / free,
                       {phase: statistics.median(times) if times else None for phase, times in connect.items()},
                       {k: v * 1024 / 1e6 for k, v in rss.items()}, tps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=800, help="pgbench clients (not held)")
    parser.add_argument("--held", type=int, default=200, help="connections holding a statement for review")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per pgbench run")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (free, held) runs, order alternating")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="50 clients, 10 held, 1 s: only proves it works")
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.held, args.duration, args.rounds = 50, 10, 1.0, 1
    signal.signal(signal.SIGTERM, _interrupted)

    result = measure(args.clients, args.held, args.duration, args.rounds)
    print(f"pgbench select-only, {result.clients} clients (-j 2), {result.rounds} round(s) of {result.duration:g} s; "
          f"{result.held} more connections open, holding a statement or idle; medians\n")
    print("| measure | this run | target |")
    print("|---|---|---|")
    print(f"| TPS, nothing held | {result.tps_free:.0f} | |")
    print(f"| TPS, {result.held} held | {result.tps_held:.0f} | |")
    print(f"| held / nothing held | {result.ratio_held_vs_free:.3f} | >= {RATIO_TARGET} |")
    for phase, label in (("free", "nothing held"), ("held", f"{result.held} held")):
        ms = result.connect_ms[phase]
        print(f"| pgbench: connecting {result.clients} clients, {label} | "
              f"{'not reported' if ms is None else f'{ms:.0f} ms'} | |")
    for name, mb in result.rss_mb.items():
        print(f"| pgproxy RSS, {name} | {mb:.0f} MB | <= {RSS_TARGET_MB} MB |")
    if args.json is not None:
        args.json.write_text(json.dumps({**asdict(result), "targets": {"ratio_held_vs_free": RATIO_TARGET,
                                                                       "rss_mb": RSS_TARGET_MB}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
