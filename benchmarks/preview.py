"""What the EXPLAIN preview adds to the time a held statement's request takes to appear.

    .venv/bin/python -m benchmarks.preview [--rounds 40]

Two proxies run in this process over one throwaway PostgreSQL with the demo data: one with
EXPLAIN previews (the default, `approvals.explain_timeout_seconds: 5`), one without (`0`). Each
round, on each proxy in turn (the order alternates), an asyncpg client sends a statement that
is held (`SELECT email FROM customers WHERE id = $1`, a new id each round) and the time until
its request is listed by the API (polled every millisecond) is taken; then the request is
denied. With previews it also takes the time until the preview is ready (the estimate on the
page). Printed: medians and 90th percentiles, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.approvals import call


async def one_round(dsn: str, base: str, token: str, ident: int) -> tuple[float, float | None]:
    """Seconds until the held request is listed; seconds until its preview is ready (None: off)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        held = asyncio.create_task(conn.fetchval("SELECT email FROM customers WHERE id = $1", ident))
        found = None
        while found is None:
            pending = await asyncio.to_thread(call, f"{base}/api/approvals?status=pending&limit=20", token)
            found = next((r for r in pending["approvals"] if r["parameters"] == [str(ident)]), None)
            if found is None:
                await asyncio.sleep(0.001)
        visible = time.perf_counter() - started
        ready: float | None = None
        while True:
            request = await asyncio.to_thread(call, f"{base}/api/approvals/{found['id']}", token)
            state = request["preview"]["state"]
            if state != "estimating":
                if state == "ready":
                    ready = time.perf_counter() - started
                break
            await asyncio.sleep(0.001)
        await asyncio.to_thread(call, f"{base}/api/approvals/{found['id']}/decision", token,
                                {"decision": "deny", "reason": "bench", "statement_sha256": found["statement_sha256"]})
        with contextlib.suppress(asyncpg.PostgresError):
            await held
        return visible, ready
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()

    from pgproxy.config import load_config
    from pgproxy.demo.run import demo_sql
    from pgproxy.pgcluster import PostgresCluster
    from tests import corpus
    from tests.approvals_support import approvals_config, reviewer_token
    from tests.harness import running_proxy, write_enforce_config

    with (PostgresCluster() as pg, tempfile.TemporaryDirectory(prefix="pgproxy-bench-") as tmp):
        pg.create_role("app_scram", "scram-pass")
        pg.create_database("app", owner="app_scram")
        pg.psql(demo_sql(), dbname="app", user="app_scram")
        configs = {}
        for name, seconds in (("with preview", 5), ("without preview", 0)):
            directory = Path(tmp) / name.replace(" ", "-")
            directory.mkdir()
            extra = approvals_config(directory, 600) + f"  explain_timeout_seconds: {seconds}\n"
            configs[name] = load_config(write_enforce_config(pg, directory, catalog=corpus.CATALOG, extra=extra))
        token = reviewer_token()
        visible: dict[str, list[float]] = {name: [] for name in configs}
        ready: list[float] = []
        with running_proxy(configs["with preview"]) as on, running_proxy(configs["without preview"]) as off:
            proxies = {"with preview": on, "without preview": off}
            for round_ in range(args.rounds + 2):  # the first two warm up (connections, caches)
                order = list(proxies) if round_ % 2 == 0 else list(reversed(proxies))
                for name in order:
                    proxy = proxies[name]
                    took, estimated = asyncio.run(one_round(proxy.dsn(), proxy.server.approvals_url or "", token,
                                                            round_ + 1))
                    if round_ >= 2:
                        visible[name].append(took * 1e3)
                        if estimated is not None:
                            ready.append(estimated * 1e3)

    def p90(values: list[float]) -> float:
        return sorted(values)[int(0.9 * (len(values) - 1))]

    print(f"| {args.rounds} rounds | median | p90 |")
    print("|---|---|---|")
    for name, values in visible.items():
        print(f"| request listed, {name} | {statistics.median(values):.1f} ms | {p90(values):.1f} ms |")
    if ready:
        print(f"| preview ready (with preview) | {statistics.median(ready):.1f} ms | {p90(ready):.1f} ms |")
    ratio = statistics.median(visible["with preview"]) / statistics.median(visible["without preview"])
    print(f"\nrequest listed, with / without preview (ratio of the medians): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
