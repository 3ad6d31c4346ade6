"""`pgproxy scan`: find the PII nobody tagged.

For one route, on the proxy's own upstream connection as the route's role, it lists
every text-like column (text, varchar, char, citext, json, jsonb and domains over
them) of every table, partitioned table and materialized view the role may read, and
every other column (numbers, dates, network addresses, arrays) whose name hints at
PII (`dob date`, `phone bigint`, `last_login_ip inet`). Then it samples one table at
a time in a read-only transaction bounded by a statement_timeout: ``TABLESAMPLE
BERNOULLI`` (``SYSTEM`` on large tables, which reads only the sampled pages) with a
fixed seed, and a ``LIMIT``. Each column's values go to the classifiers
(classifiers/), which weigh them with the column's name; the result is compared with
the catalog file's tags. Sampled values are classified and dropped: none is printed,
stored or logged.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from classifiers import Classifier, Evidence, name_hints
from pgproxy.audit import iso, rows_in_order
from pgproxy.catalog import Tags, _terminate, simple_query
from pgproxy.config import Route
from pgproxy.errors import ProxyError, UpstreamProtocolError
from pgproxy.store import Store
from pgproxy.upstream import connect_upstream

DEFAULT_SAMPLE = 500
DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_VALUE_CHARS = 1000  # the server cuts each value to this before it is sent
SYSTEM_SAMPLING_PAGES = 10_000  # tables larger than this many pages are sampled by page (SYSTEM)

_COLUMNS_SQL = """\
BEGIN READ ONLY;
SET LOCAL search_path = pg_catalog, pg_temp;
SELECT n.nspname, c.relname, greatest(c.reltuples, -1)::bigint::text, c.relpages::text, a.attname,
       CASE WHEN coalesce(b.typcategory, t.typcategory) = 'S'
                 OR coalesce(b.typname, t.typname) IN ('json', 'jsonb') THEN 'text' ELSE 'other' END
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_type b ON t.typtype = 'd' AND b.oid = t.typbasetype
 WHERE c.relkind IN ('r', 'p', 'm') AND NOT c.relispartition
   AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'
   AND coalesce(b.typcategory, t.typcategory) IN ('S', 'I', 'U', 'N', 'D', 'A')
   AND has_column_privilege(c.oid, a.attnum, 'SELECT')
 ORDER BY n.nspname, c.relname, a.attnum;
COMMIT;
"""


@dataclass(frozen=True, slots=True)
class Table:
    schema: str
    name: str
    estimated_rows: int  # -1: never analysed
    pages: int
    columns: tuple[str, ...]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class Finding:
    """One column: its catalog tags and what the scan found."""

    schema: str
    table: str
    column: str
    tagged: frozenset[str]
    evidence: Evidence

    @property
    def missing(self) -> frozenset[str]:
        """Suggested tags the catalog file does not give the column."""
        return self.evidence.suggested - self.tagged

    def to_json(self) -> dict[str, object]:
        return {"table": f"{self.schema}.{self.table}", "column": self.column, "tagged": sorted(self.tagged),
                **self.evidence.to_json()}


@dataclass(frozen=True, slots=True)
class Detection:
    """A column run-time sampling found PII in (pgproxy.sampling's `pii.detected` events, the
    latest counts, every suggestion), with its catalog tags now."""

    schema: str
    table: str
    column: str
    tagged: frozenset[str]
    suggested: frozenset[str]
    entities: dict[str, int]  # entity -> sampled values holding one
    sampled: int
    at: float  # when it was last reported

    @property
    def missing(self) -> frozenset[str]:
        return self.suggested - self.tagged

    def to_json(self) -> dict[str, object]:
        return {"table": f"{self.schema}.{self.table}", "column": self.column, "tagged": sorted(self.tagged),
                "suggested": sorted(self.suggested), "entities": dict(sorted(self.entities.items())),
                "sampled": self.sampled, "detected_at": iso(self.at)}


@dataclass(frozen=True, slots=True)
class TableError:
    table: str
    message: str


@dataclass(slots=True)
class ScanResult:
    findings: list[Finding]
    errors: list[TableError]
    tables: int
    values: int  # values classified (non-empty)
    detections: list[Detection] = field(default_factory=list)  # what run-time sampling found


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sample_sql(table: Table, sample: int, timeout_seconds: float) -> str:
    """The statements that sample one table: read-only, time-limited, a fixed seed."""
    columns = ", ".join(f"left({quote_ident(c)}::text, {MAX_VALUE_CHARS})" for c in table.columns)
    sampling = ""
    if table.estimated_rows > 2 * sample:
        percent = min(100.0, 100.0 * 3 * sample / table.estimated_rows)
        method = "SYSTEM" if table.pages > SYSTEM_SAMPLING_PAGES else "BERNOULLI"
        sampling = f" TABLESAMPLE {method} ({percent:.6f}) REPEATABLE (0)"
    timeout_ms = max(1, int(timeout_seconds * 1000))
    return (f"BEGIN READ ONLY;\n"
            f"SET LOCAL statement_timeout = {timeout_ms};\n"
            f"SET LOCAL lock_timeout = {timeout_ms};\n"
            f"SELECT {columns} FROM {quote_ident(table.schema)}.{quote_ident(table.name)}{sampling} LIMIT {sample};\n"
            f"COMMIT;\n")


async def scan_route(route: Route, classifier: Classifier, tags: Tags, *, sample: int = DEFAULT_SAMPLE,
                     timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS, max_message_bytes: int = 64 * 1024 * 1024,
                     progress: Callable[[int, int, str], None] | None = None) -> ScanResult:
    """Sample and classify every text-like column of the route's database.

    A table that cannot be sampled (timeout, lock, permission) is an error in the
    result, not a silent gap; connection failures raise ProxyError.
    """
    conn = await connect_upstream(route, {"application_name": "pgproxy-scan", "client_encoding": "UTF8"},
                                  max_message_bytes=max_message_bytes)
    findings: list[Finding] = []
    errors: list[TableError] = []
    values = 0
    try:
        tables = _tables(await _bounded(simple_query(conn, _COLUMNS_SQL, max_message_bytes=max_message_bytes),
                                        timeout_seconds, "listing the columns"),
                         lambda column: bool(name_hints(column, classifier.hint_phrases)))
        for index, table in enumerate(tables):
            if progress is not None:
                progress(index, len(tables), table.qualified)
            try:
                rows = await _bounded(simple_query(conn, sample_sql(table, sample, timeout_seconds),
                                                   max_message_bytes=max_message_bytes),
                                      timeout_seconds + 5, f"sampling {table.qualified}")
            except UpstreamProtocolError as exc:
                errors.append(TableError(table.qualified, exc.message))
                await simple_query(conn, "ROLLBACK", max_message_bytes=max_message_bytes)
                continue
            # Classification is CPU work; hand it to a thread so the loop stays responsive.
            evidence = await asyncio.to_thread(_classify_table, classifier, table, rows)
            table_tags = tags.get((table.schema, table.name), {})
            for column, found in zip(table.columns, evidence, strict=True):
                values += found.sampled
                tagged = table_tags.get(column, frozenset()) | table_tags.get("*", frozenset())
                findings.append(Finding(table.schema, table.name, column, tagged, found))
            del rows
        if progress is not None:
            progress(len(tables), len(tables), "")
    finally:
        await _terminate(conn)
    return ScanResult(findings, errors, len(tables), values)


def _classify_table(classifier: Classifier, table: Table, rows: list[tuple[str | None, ...]]) -> list[Evidence]:
    return [classifier.classify([row[i] for row in rows], column) for i, column in enumerate(table.columns)]


async def _bounded(query: object, timeout_seconds: float, doing: str) -> list[tuple[str | None, ...]]:
    try:
        async with asyncio.timeout(timeout_seconds):
            rows: list[tuple[str | None, ...]] = await query  # type: ignore[misc]
            return rows
    except TimeoutError:
        raise ProxyError("57014", f"timed out {doing}") from None  # the connection is in an unknown state: stop


def _tables(rows: list[tuple[str | None, ...]], hinted: Callable[[str], bool]) -> list[Table]:
    """The tables to sample, with their columns: every text-like one (strings, json), and any other
    (numbers, dates, network addresses, arrays, other types) whose name hints at PII: a `dob date`,
    a `phone bigint`, a `last_login_ip inet` hold PII too."""
    grouped: dict[tuple[str, str], tuple[int, int, list[str]]] = {}
    for schema, name, estimate, pages, column, kind in rows:
        assert schema is not None and name is not None and column is not None
        if kind != "text" and not hinted(column):
            continue
        entry = grouped.setdefault((schema, name), (int(estimate or -1), int(pages or 0), []))
        entry[2].append(column)
    return [Table(schema, name, estimate, pages, tuple(columns))
            for (schema, name), (estimate, pages, columns) in grouped.items()]


async def detections(store: Store, database: str, result: ScanResult, tags: Tags) -> list[Detection]:
    """What run-time sampling reported for the route's columns the scan listed (a column since
    dropped, or no longer readable by the route's role, is left out), with their tags now."""
    listed = {(f.schema, f.table, f.column) for f in result.findings}
    found: dict[tuple[str, str, str], Detection] = {}
    async for row in rows_in_order(store, type="pii.detected"):
        try:
            event = json.loads(row.body)
            schema, _, table = str(event["table"]).partition(".")
            key = (schema, table, str(event["column"]))
            if event["database"] != database or key not in listed:
                continue
            suggested = frozenset(str(tag) for tag in event["suggested"])
            entities = {str(entity): int(count) for entity, count in dict(event["entities"]).items()}
            sampled = int(event["sampled"])
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # `pgproxy audit verify` names a changed event; the scan uses what it can read
        before = found.get(key)
        table_tags = tags.get((schema, table), {})
        tagged = table_tags.get(key[2], frozenset()) | table_tags.get("*", frozenset())
        found[key] = Detection(schema, table, key[2], tagged,
                               suggested | (before.suggested if before is not None else frozenset()),
                               entities, sampled, row.time)
    return sorted(found.values(), key=lambda d: (d.schema, d.table, d.column))


# --- The command --------------------------------------------------------------------------


def format_human(result: ScanResult, database: str, sample: int) -> str:
    """The evidence per column, most worrying first; never a value."""
    lines = [f"database {database}: {len(result.findings)} text columns in {result.tables} tables, "
             f"up to {sample} values sampled from each table\n"]
    def order(f: Finding) -> tuple[int, str]:
        return (0 if f.missing else 1 if f.evidence.suggested else 2 if f.tagged else 3,
                f"{f.schema}.{f.table}.{f.column}")
    for finding in sorted(result.findings, key=order):
        evidence = finding.evidence
        if not finding.missing and not finding.tagged and not evidence.entities:
            continue
        mark = "+" if finding.missing else "=" if evidence.suggested else " "
        shares = ", ".join(f"{entity} {share:.0%}" for entity, share in sorted(  # the reasons first
            evidence.entities.items(), key=lambda item: (item[0] not in evidence.because, -item[1], item[0])))
        detail = f"{shares or 'nothing found'} of {evidence.sampled} values"
        if evidence.name_hints:
            detail += f"; name hints {', '.join(sorted(evidence.name_hints))}"
        if evidence.suggested:
            detail += f"; confidence {evidence.confidence}"
        if finding.missing:
            what = f"add {', '.join(sorted(finding.missing))}"
        elif evidence.suggested:
            what = "tagged as suggested"
        elif finding.tagged:
            what = f"tagged {', '.join(sorted(finding.tagged))}; nothing suggested"
        else:
            what = "no tags suggested"
        lines.append(f"{mark} {finding.schema}.{finding.table}.{finding.column}: {what} ({detail})\n")
    for detection in result.detections:
        if not detection.missing:
            continue
        shares = ", ".join(f"{entity} in {count} of {detection.sampled} values sampled"
                           for entity, count in sorted(detection.entities.items(), key=lambda item: -item[1]))
        lines.append(f"+ {detection.schema}.{detection.table}.{detection.column}: add "
                     f"{', '.join(sorted(detection.missing))} (found at run time: {shares}; "
                     f"last {iso(detection.at)})\n")
    for error in result.errors:
        lines.append(f"! {error.table}: not sampled: {error.message}\n")
    return "".join(lines)


def additions(result: ScanResult) -> dict[tuple[str, str, str], frozenset[str]]:
    """The tags `--write` adds: each column's missing suggestions, with those it already has."""
    added = {(f.schema, f.table, f.column): f.missing for f in result.findings if f.missing}
    for d in result.detections:
        if d.missing:
            key = (d.schema, d.table, d.column)
            added[key] = added.get(key, frozenset()) | d.missing
    return added


class Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()

    def __call__(self, done: int, total: int, table: str) -> None:
        if not self.enabled:
            return
        width = 30
        filled = width * done // total if total else width
        label = f" {table}" if table else ""
        self.stream.write(f"\r\x1b[K[{'#' * filled}{'.' * (width - filled)}] {done}/{total} tables{label}")
        if done >= total:
            self.stream.write("\r\x1b[K")
        self.stream.flush()


async def command(args: argparse.Namespace) -> int:
    """``pgproxy scan``: 0 when done (with --check: nothing to add), 1 when --check finds
    untagged PII or a table could not be sampled, 2 for a usage or config error."""
    from classifiers.custom import load_recognizers
    from pgproxy.catalog import load_catalog
    from pgproxy.catalog_edit import CatalogEditError, add_tags
    from pgproxy.config import load_config
    from pgproxy.store.sqlite import SqliteStore

    config = load_config(args.config)
    database = args.route or next(iter(config.routes))
    if database not in config.routes:
        print(f"pgproxy scan: no route named {database!r} (routes: {', '.join(config.routes)})", file=sys.stderr)
        return 2
    if args.sample < 1:
        print("pgproxy scan: --sample must be at least 1", file=sys.stderr)
        return 2
    if args.write and config.catalog is None:
        print(f"pgproxy scan: {args.config} names no catalog file to write; add `catalog: catalog.yaml` "
              "(an empty file will do)", file=sys.stderr)
        return 2
    catalog_file = load_catalog(config.catalog) if config.catalog is not None and \
        config.catalog.read_text(encoding="utf-8").strip() else None
    custom = load_recognizers(config.recognizers) if config.recognizers is not None else None
    classifier = await asyncio.to_thread(lambda: custom.classifier() if custom is not None else Classifier())
    tags = catalog_file.tags_for(database) if catalog_file is not None else {}
    try:
        result = await scan_route(config.routes[database], classifier, tags, sample=args.sample,
                                  timeout_seconds=args.timeout, max_message_bytes=config.limits.max_message_bytes,
                                  progress=Progress(sys.stderr))
    except ProxyError as exc:
        print(f"pgproxy scan: cannot scan database {database!r}: {exc.message}", file=sys.stderr)
        return 1
    if config.audit is not None and config.audit.store.exists():
        store = SqliteStore(config.audit.store)
        try:
            result.detections = await detections(store, database, result, tags)
        finally:
            await store.close()
    added = additions(result)
    new_text = old_text = ""
    if config.catalog is not None and added:
        old_text = config.catalog.read_text(encoding="utf-8")
        try:
            new_text = add_tags(old_text, database, added)
        except CatalogEditError as exc:
            print(f"pgproxy scan: cannot edit {config.catalog}: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps({"columns": [f.to_json() for f in result.findings],
                          "detected": [d.to_json() for d in result.detections],
                          "errors": [{"table": e.table, "message": e.message} for e in result.errors]}))
    else:
        sys.stdout.write(format_human(result, database, args.sample))
        if new_text != old_text:
            assert config.catalog is not None
            sys.stdout.write("\n" + "".join(difflib.unified_diff(
                old_text.splitlines(keepends=True), new_text.splitlines(keepends=True),
                fromfile=str(config.catalog), tofile=f"{config.catalog} (with --write)")))
        elif added:
            sys.stdout.write(f"\n{len(added)} columns need tags; the config names no catalog file\n")
    if args.write and new_text != old_text:
        assert config.catalog is not None
        _replace(config.catalog, new_text)
        print(f"pgproxy scan: tagged {len(added)} columns in {config.catalog}", file=sys.stderr)
    for error in result.errors:
        print(f"pgproxy scan: {error.table} was not sampled: {error.message}", file=sys.stderr)
    if result.errors:
        return 1
    if args.check and added:
        print(f"pgproxy scan: {len(added)} columns look like PII and lack tags", file=sys.stderr)
        return 1
    return 0


def _replace(path: Path, text: str) -> None:
    """Write `text` over `path` atomically, after checking it is still a valid catalog file."""
    from pgproxy.catalog import load_catalog

    temporary = path.with_name(f".{path.name}.pgproxy-scan")
    temporary.write_text(text, encoding="utf-8")
    try:
        load_catalog(temporary)
        shutil.copymode(path, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
