"""Command line: ``pgproxy run | demo | check | scan | audit | scram-secret``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime
import getpass
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from pgproxy import __version__
from pgproxy.config import ConfigError, load_config
from pgproxy.logs import setup_logging
from pgproxy.store import Store, StoreError

log = logging.getLogger("pgproxy.cli")


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` on uvloop when it is installed, else on asyncio's own loop."""
    from pgproxy.server import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


async def wait_for_signal(stop: Callable[[], Awaitable[None]]) -> None:
    """Block until SIGINT or SIGTERM, then await `stop`."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, event.set)
    try:
        await event.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await stop()


async def _run(config_path: Path) -> int:
    from pgproxy.server import ProxyServer

    config = load_config(config_path)
    setup_logging(config.logging.level)
    server = ProxyServer(config)
    await server.start()
    await wait_for_signal(server.close)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        return run_loop(_run(args.config))
    except ConfigError as exc:
        print(f"pgproxy: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pgproxy: cannot listen: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:  # the approvals store or the audit log cannot be opened: nothing may run
        print(f"pgproxy: {exc}", file=sys.stderr)
        return 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_demo(args: argparse.Namespace) -> int:
    from pgproxy.demo.run import DemoEnvironment, serve_demo

    setup_logging(args.log_level)
    # Until the event loop installs its own handler, SIGTERM must still unwind through the
    # clean-up below, or the PostgreSQL being started would outlive us.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with DemoEnvironment(port=args.port, data_dir=args.data_dir) as demo:
            try:
                return run_loop(serve_demo(demo))
            finally:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the clean-up finish
    except (RuntimeError, OSError) as exc:
        print(f"pgproxy demo: {exc}", file=sys.stderr)
        return 1


async def _check(args: argparse.Namespace) -> int:
    from pgproxy.catalog import Catalog, load_catalog
    from pgproxy.check import explain, format_human

    config = load_config(args.config)
    database = args.database or next(iter(config.routes))
    if database not in config.routes:
        print(f"pgproxy check: no route for database {database!r} (routes: {', '.join(config.routes)})",
              file=sys.stderr)
        return 2
    catalog = Catalog(max_message_bytes=config.limits.max_message_bytes)
    catalog_file = load_catalog(config.catalog) if config.catalog is not None else None
    for warning in await catalog.load({database: config.routes[database]}, catalog_file):
        print(f"pgproxy check: warning: {warning}", file=sys.stderr)
    schema = catalog.schema(database)
    if schema is None:
        print(f"pgproxy check: cannot read the schema of database {database!r}", file=sys.stderr)
        return 1
    static = {a.id: a.groups for a in config.auth.agents}
    groups = frozenset(args.groups.split(",")) if args.groups else static.get(args.agent, frozenset())
    explanations = explain(args.sql, schema, config, agent=args.agent, groups=groups)
    if args.json:
        for item in explanations:
            print(json.dumps(item.to_json()))
    else:
        sys.stdout.write(format_human(explanations, config.policy))
    return 0


def run_with_config(main: Coroutine[Any, Any, int]) -> int:
    """Run a command that loads the config; a broken config exits 2 with its file:line message."""
    try:
        return run_loop(main)
    except ConfigError as exc:
        print(f"pgproxy: {exc}", file=sys.stderr)
        return 2


def cmd_check(args: argparse.Namespace) -> int:
    return run_with_config(_check(args))


def cmd_scan(args: argparse.Namespace) -> int:
    from pgproxy.scan import command

    return run_with_config(command(args))


def parse_when(text: str, now: float | None = None) -> float:
    """A point in time: ISO 8601 (UTC unless it names an offset) or a duration ago (30m, 24h, 7d)."""
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[:-1].replace(".", "", 1).isdigit() and text[-1:] in units:
        return now - float(text[:-1]) * units[text[-1]]
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO 8601 time (2026-11-24T09:30Z) nor a duration ago "
                         "(30m, 24h, 7d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


async def _audit(args: argparse.Namespace) -> int:
    from pgproxy import audit
    from pgproxy.store.sqlite import SqliteStore

    config = load_config(args.config)
    if config.audit is None:
        print(f"pgproxy audit: {args.config} has no audit log (it has neither an audit nor an approvals section)",
              file=sys.stderr)
        return 2
    if not config.audit.store.exists():
        print(f"pgproxy audit: no audit log at {config.audit.store}", file=sys.stderr)
        return 2
    store = SqliteStore(config.audit.store)
    try:
        if args.audit_command == "verify":
            found = await audit.verify(store, config.audit.signing_key,
                                       retention=config.audit.retention_days > 0)
            print(found.describe())
            return 0 if found.problem is None else 1
        if args.audit_command == "export":
            return await _export(args, store)
        if args.audit_command == "summary":
            return await _summary(args, store)
        return await _tail(args, store)
    finally:
        await store.close()


def _time_range(args: argparse.Namespace, command: str) -> tuple[float | None, float | None] | None:
    """`--since` and `--until` of `pgproxy audit <command>`; None (after saying why) when malformed."""
    try:
        return (parse_when(args.since) if args.since else None, parse_when(args.until) if args.until else None)
    except ValueError as exc:
        print(f"pgproxy audit {command}: {exc}", file=sys.stderr)
        return None


async def _export(args: argparse.Namespace, store: Store) -> int:
    from pgproxy import audit

    window = _time_range(args, "export")
    if window is None:
        return 2
    since, until = window
    # The loop runs nothing else meanwhile, so a blocking open is harmless here.
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout  # noqa: ASYNC230, SIM115
    try:
        if args.format == "csv":
            writer = csv.writer(out)
            writer.writerow(audit.CSV_COLUMNS)
            count = await audit.export(store, since=since, until=until,
                                       emit=lambda row, prev: writer.writerow(audit.csv_record(row, prev)))
        else:
            count = await audit.export(store, since=since, until=until,
                                       emit=lambda row, prev: out.write(audit.exported_line(row, prev) + "\n"))
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"pgproxy audit export: {count} events", file=sys.stderr)
    return 0


async def _summary(args: argparse.Namespace, store: Store) -> int:
    from pgproxy import summary

    window = _time_range(args, "summary")
    if window is None:
        return 2
    since, until = window
    found = await summary.summarize(store, since=since, until=until)
    if args.json:
        print(json.dumps(found.to_json(args.examples), ensure_ascii=False))
    else:
        sys.stdout.write(summary.format_human(found, args.examples))
    return 0


async def _tail(args: argparse.Namespace, store: Store) -> int:
    from pgproxy import audit

    last = await store.last_event()
    after = max(0, last.seq - args.lines) if last is not None else 0
    previous: str | None = None
    while True:
        for row in await store.events(after_seq=after, limit=1000):
            if previous is None:
                previous = await audit.previous_hash(store, row) or ""
            sys.stdout.write(audit.exported_line(row, previous) + "\n")
            previous, after = row.hash, row.seq
        sys.stdout.flush()
        if not args.follow:
            return 0
        await asyncio.sleep(0.5)


def cmd_audit(args: argparse.Namespace) -> int:
    return run_with_config(_audit(args))


def cmd_scram_secret(args: argparse.Namespace) -> int:
    from pgproxy.wire.scram import make_scram_secret

    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if not password:
        print("pgproxy scram-secret: empty password", file=sys.stderr)
        return 2
    print(make_scram_secret(password, iterations=args.iterations))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pgproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the proxy with a config file")
    run.add_argument("--config", type=Path, required=True, help="YAML config file")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="start a throwaway PostgreSQL with demo data and the proxy")
    demo.add_argument("--port", type=int, default=6432, help="proxy listen port (0: any free port)")
    demo.add_argument("--data-dir", type=Path, default=None,
                      help="directory for the throwaway server and config (removed on exit)")
    demo.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    demo.set_defaults(func=cmd_demo)

    check = sub.add_parser("check", help="explain the decision for a statement without running it")
    check.add_argument("--config", type=Path, required=True, help="YAML config file")
    check.add_argument("--agent", default="agent", help="the agent id to decide for (default: agent)")
    check.add_argument("--groups", default=None, help="comma-separated groups (default: the static agent's)")
    check.add_argument("--database", default=None, help="route name (default: the first route)")
    check.add_argument("--json", action="store_true", help="one JSON object per statement")
    check.add_argument("sql", help="the statement(s) to explain")
    check.set_defaults(func=cmd_check)

    scan = sub.add_parser("scan", help="sample text columns, find PII and propose catalog tags "
                                       "(never prints a sampled value)")
    scan.add_argument("--config", type=Path, required=True, help="YAML config file")
    scan.add_argument("--route", default=None, help="route (database) to scan (default: the first route)")
    scan.add_argument("--sample", type=int, default=500, help="rows sampled per table (default 500)")
    scan.add_argument("--timeout", type=float, default=10.0, help="seconds each table's sample may take (default 10)")
    scan.add_argument("--json", action="store_true", help="one JSON object: {\"columns\": [...]}")
    scan.add_argument("--write", action="store_true", help="add the suggested tags to the catalog file "
                                                           "(comments and order are kept)")
    scan.add_argument("--check", action="store_true", help="exit 1 when a column looks like PII and lacks tags")
    scan.set_defaults(func=cmd_scan)

    audit = sub.add_parser("audit", help="verify, export, follow or summarize the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the whole hash chain and the signed heads")
    export = audit_sub.add_parser("export", help="write events as JSONL or CSV (compliance evidence)")
    export.add_argument("--since", default=None, help="ISO 8601 time (UTC unless an offset is given) or 24h/7d ago")
    export.add_argument("--until", default=None, help="end (exclusive), same forms as --since")
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.add_argument("--output", type=Path, default=None, help="file to write (default: standard output)")
    tail = audit_sub.add_parser("tail", help="print the newest events, then follow new ones")
    tail.add_argument("--lines", "-n", type=int, default=10, help="how many of the newest events first")
    tail.add_argument("--no-follow", dest="follow", action="store_false", help="print and exit")
    summary = audit_sub.add_parser("summary", help="statements by rule: how many would be held, denied or allowed "
                                                   "(what observe mode would have enforced), with examples")
    summary.add_argument("--since", default=None, help="ISO 8601 time (UTC unless an offset is given) or 24h/7d ago")
    summary.add_argument("--until", default=None, help="end (exclusive), same forms as --since")
    summary.add_argument("--examples", type=int, default=3, help="most frequent statements shown per rule "
                                                                 "(literals replaced by ?; default 3)")
    summary.add_argument("--json", action="store_true", help="one JSON object")
    for command in (verify, export, tail, summary):
        command.add_argument("--config", type=Path, required=True, help="YAML config file")
        command.set_defaults(func=cmd_audit)

    secret = sub.add_parser("scram-secret",
                            help="print a SCRAM-SHA-256 secret for a static agent (password on stdin)")
    secret.add_argument("--iterations", type=int, default=4096)
    secret.set_defaults(func=cmd_scram_secret)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        code: int = args.func(args)
        return code
    return 130


if __name__ == "__main__":
    sys.exit(main())
