"""The catalog: the upstream's schema (introspected) with the data owner's tags on it (a file).

Three parts, each usable alone:

- `introspect(route)` reads, in one read-only snapshot over one connection, every
  table, view, materialized view, foreign and partitioned table with its columns
  (PostgreSQL's own catalogs included), every function name with the schemas that
  define one, the operators defined outside the system schemas, the route role's
  effective search_path, which columns each view reads (`ViewSources`) and the
  inheritance/partition tree. Nothing is tagged yet.
- `load_catalog(path)` reads and validates the catalog file, which tags columns
  per database (route name), schema, table and column::

      app:
        public:
          customers:
            email: [pii, pii.email]
            ssn: [pii, sensitive]
          audit:
            "*": pii          # a table tag: every column of public.audit

- `apply_tags(schema, view_sources, tags)` puts the tags on the introspected
  schema. Tags spread conservatively: every column of a view (or materialized
  view) that reads a tagged column, directly or through other views, carries
  that column's tags; partitions, inheritance parents and children share tags
  by column name, since a query on one returns the rows of the others.

`Catalog` ties them together for the running proxy: one tagged `Schema` per
route, refreshed after DDL passes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import hashlib
import json
import logging
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pgproxy.analysis.routines import Routine
from pgproxy.analysis.schema import Relation, Schema
from pgproxy.config import Route, _At, _describe, _Loader, read_yaml
from pgproxy.errors import ProxyError, UpstreamProtocolError
from pgproxy.upstream import READ_CHUNK, UpstreamConnection, connect_upstream
from pgproxy.wire import messages as m
from pgproxy.wire.codec import FrameError, FrameReader

log = logging.getLogger("pgproxy.catalog")

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT_SECONDS = 60.0

Row = tuple[str | None, ...]
# view (or materialized view) oid -> every (relation oid, attnum) it reads: the columns it
# names directly and, through views it reads, the columns beneath them down to the tables.
ViewSources = dict[int, frozenset[tuple[int, int]]]
# (schema, table) -> column name, or "*" for the whole table -> tags; exact (case-sensitive) names.
Tags = dict[tuple[str, str], dict[str, frozenset[str]]]

_VIEW_KINDS = frozenset("vm")
_TAG = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*")
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")


# --- Running a query ------------------------------------------------------------------


async def simple_query(conn: UpstreamConnection, sql: str, *,
                       max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[Row]:
    """Run `sql` as one simple-protocol Query; return the rows of all its statements, as text.

    For introspection only: no COPY, no binary values. An ErrorResponse raises
    UpstreamProtocolError with the server's message once ReadyForQuery has
    arrived, so the connection stays usable::

        rows = await simple_query(conn, "SELECT oid::text, relname FROM pg_class")
    """
    conn.writer.write(m.Query(sql).encode())
    await conn.writer.drain()
    rows, error = await read_replies(conn, ignored=_IGNORED_REPLIES, max_message_bytes=max_message_bytes,
                                     during="an introspection query")
    if error is not None:
        raise _query_failed(error)
    return rows


async def read_replies(conn: UpstreamConnection, *, ignored: frozenset[int], max_message_bytes: int,
                       during: str) -> tuple[list[Row], m.ErrorResponse | None]:
    """The upstream's replies up to ReadyForQuery to what pgproxy sent on its own connection: the
    DataRows' values as text, and the first ErrorResponse (the connection stays usable). A reply
    type not in `ignored`, or the connection closing (`during` says doing what), raises."""
    frames = FrameReader(max_message_bytes=max_message_bytes, allowed_types=m.BACKEND_TYPES)
    rows: list[Row] = []
    error: m.ErrorResponse | None = None
    data, conn.leftover = conn.leftover, b""
    while True:
        if not data:
            data = await conn.reader.read(READ_CHUNK)
            if not data:
                raise _query_failed(error) if error else UpstreamProtocolError(
                    f"the upstream closed the connection during {during}")
        try:
            batch = frames.feed(data)
        except FrameError as exc:
            raise UpstreamProtocolError(f"upstream sent an invalid message: {exc}") from None
        data = b""
        buf = frames.buffer
        for index, (type_byte, start, end) in enumerate(batch):
            if type_byte == m.DATA_ROW:
                rows.append(_decode_data_row(buf[start + 5:end]))
            elif type_byte == m.ERROR_RESPONSE:
                error = error or m.decode_error_response(buf[start + 5:end])
            elif type_byte == m.READY_FOR_QUERY:
                if frames.pending_bytes:
                    raise UpstreamProtocolError("upstream sent a partial message after ReadyForQuery")
                conn.leftover = b"".join(buf[s:e] for _, s, e in batch[index + 1:])
                return rows, error
            elif type_byte not in ignored:
                raise UpstreamProtocolError(f"upstream sent unexpected message {chr(type_byte)!r} during {during}")


_IGNORED_REPLIES = frozenset({m.ROW_DESCRIPTION, m.COMMAND_COMPLETE, m.EMPTY_QUERY_RESPONSE,
                              m.NOTICE_RESPONSE, m.PARAMETER_STATUS, m.NOTIFICATION_RESPONSE})
# ... and to Parse, Bind, Execute, Sync.
EXTENDED_REPLIES = _IGNORED_REPLIES | {m.PARSE_COMPLETE, m.BIND_COMPLETE, m.NO_DATA}


def _query_failed(error: m.ErrorResponse) -> UpstreamProtocolError:
    exc = UpstreamProtocolError(error.message or "the upstream reported an error")
    exc.detail = error.fields.get(m.FIELD_DETAIL)
    exc.hint = error.fields.get(m.FIELD_HINT)
    return exc


def _decode_data_row(body: bytes) -> Row:
    """DataRow: int16 column count, then per column an int32 length (-1: NULL) and the bytes."""
    try:
        (count,) = _I16.unpack_from(body, 0)
        pos = 2
        values: list[str | None] = []
        for _ in range(count):
            (length,) = _I32.unpack_from(body, pos)
            pos += 4
            if length < 0:
                values.append(None)
                continue
            if pos + length > len(body):
                raise struct.error("value runs past the end of the message")
            values.append(m.decode_str(body[pos:pos + length]))
            pos += length
    except struct.error:
        raise UpstreamProtocolError("upstream sent a malformed DataRow") from None
    if pos != len(body):
        raise UpstreamProtocolError("upstream sent a malformed DataRow")
    return tuple(values)


# --- Introspection --------------------------------------------------------------------

# One Query message, one REPEATABLE READ snapshot. Every SELECT's first column says what
# its rows are. After reading the route role's search_path, the path is pinned to
# pg_catalog so that no object in the role's schemas can stand in for a catalog.
#
# View columns: the _RETURN rule of a view depends on each table column it reads
# (refobjsubid > 0). A whole-row reference (row_to_json(c), c::text, SELECT c) leaves
# no column dependency at all, so a view whose rule holds a whole-row Var
# (":varattno 0 " in its stored tree) counts as reading every column of every
# relation it depends on.
#
# Operators, casts and domain constraints whose function is in C or `internal` are counted as
# PostgreSQL's own are: only a superuser can create such a function (extensions such as citext
# and PostGIS do), and they read no table. Any other language's function can run SQL.
_INTROSPECTION_SQL = """\
BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
SELECT 'path', s.name
  FROM pg_catalog.unnest(pg_catalog.current_schemas(false)) WITH ORDINALITY AS s(name, ord)
 ORDER BY s.ord;
SET LOCAL search_path = pg_catalog, pg_temp;
SELECT 'rel', c.oid::text, n.nspname, c.relname, c.relkind::text, a.attnum::text, a.attname
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p', 'S') AND n.nspname !~ '^pg_(toast_)?temp_'
 ORDER BY c.oid, a.attnum;
SELECT DISTINCT 'fn', p.proname, n.nspname
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname !~ '^pg_(toast_)?temp_';
SELECT DISTINCT 'op', o.oprname
  FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
  JOIN pg_proc p ON p.oid = o.oprcode JOIN pg_language l ON l.oid = p.prolang
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND l.lanname NOT IN ('c', 'internal');
SELECT DISTINCT 'dep', r.ev_class::text, d.refobjid::text, d.refobjsubid::text
  FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
 WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
   AND r.rulename = '_RETURN' AND d.refobjid <> r.ev_class AND d.refobjsubid >= 0;
SELECT 'wholerow', r.ev_class::text
  FROM pg_rewrite r
 WHERE r.rulename = '_RETURN' AND r.ev_action::text LIKE '%:varattno 0 %';
SELECT 'inherits', i.inhrelid::text, i.inhparent::text FROM pg_inherits i;
SELECT DISTINCT 'viewfn', r.ev_class::text, n.nspname, p.proname
  FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
  JOIN pg_proc p ON p.oid = d.refobjid JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_proc'::regclass AND r.rulename = '_RETURN'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema');
SELECT 'routine', p.oid::text, n.nspname, p.proname, l.lanname,
       CASE WHEN l.lanname IN ('sql', 'plpgsql') AND p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) END,
       array_to_string(ARRAY(
           SELECT DISTINCT coalesce(e.typname, t.typname) FROM pg_type t
             LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typlen = -1
            WHERE t.oid = p.prorettype OR t.oid = ANY (coalesce(p.proallargtypes, p.proargtypes::oid[]))
            ORDER BY 1), ',')
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast_)?temp_';
SELECT DISTINCT 'runs', CASE WHEN d.classid = 'pg_policy'::regclass THEN 'rw' ELSE 'w' END,
       coalesce(ad.adrelid, co.conrelid, ix.indrelid, po.polrelid)::text, n.nspname, p.proname
  FROM pg_depend d JOIN pg_proc p ON p.oid = d.refobjid JOIN pg_namespace n ON n.oid = p.pronamespace
  LEFT JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND ad.oid = d.objid
  LEFT JOIN pg_constraint co ON d.classid = 'pg_constraint'::regclass AND co.oid = d.objid
  LEFT JOIN pg_index ix ON d.classid = 'pg_class'::regclass AND ix.indexrelid = d.objid
  LEFT JOIN pg_policy po ON d.classid = 'pg_policy'::regclass AND po.oid = d.objid
 WHERE d.refclassid = 'pg_proc'::regclass AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND coalesce(ad.adrelid, co.conrelid, ix.indrelid, po.polrelid) IS NOT NULL;
SELECT DISTINCT 'hook', r.ev_class::text FROM pg_rewrite r WHERE r.rulename <> '_RETURN';
SELECT DISTINCT 'hook', t.tgrelid::text FROM pg_trigger t WHERE NOT t.tgisinternal;
SELECT 'text', a.attrelid::text, a.attnum::text
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_type t ON t.oid = a.atttypid
 WHERE c.relkind IN ('r', 'p', 'f') AND a.attnum > 0 AND NOT a.attisdropped
   AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
   AND (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END) IN (25, 1043, 1042, 19);
SELECT DISTINCT 'gen', ad.adrelid::text, ad.adnum::text, d.refobjid::text, d.refobjsubid::text
  FROM pg_attrdef ad JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
 WHERE d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0;
SELECT DISTINCT 'cast', t.typname, c.castcontext::text, n.nspname, p.proname
  FROM pg_cast c JOIN pg_proc p ON p.oid = c.castfunc JOIN pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_type t ON t.oid = c.casttarget JOIN pg_language l ON l.oid = p.prolang
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND l.lanname NOT IN ('c', 'internal');
SELECT 'domain', t.oid::text, t.typname, t.typbasetype::text FROM pg_type t WHERE t.typtype = 'd';
SELECT DISTINCT 'domainfn', coalesce(co.contypid, t.oid)::text, n.nspname, p.proname
  FROM pg_depend d JOIN pg_proc p ON p.oid = d.refobjid JOIN pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_language l ON l.oid = p.prolang
  LEFT JOIN pg_constraint co ON d.classid = 'pg_constraint'::regclass AND co.oid = d.objid AND co.contypid <> 0
  LEFT JOIN pg_type t ON d.classid = 'pg_type'::regclass AND t.oid = d.objid AND t.typtype = 'd'
 WHERE d.refclassid = 'pg_proc'::regclass AND coalesce(co.contypid, t.oid) IS NOT NULL
   AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND l.lanname NOT IN ('c', 'internal');
SELECT DISTINCT 'domaincol', a.attrelid::text,
       (CASE WHEN t.typtype = 'd' THEN t.oid ELSE t.typelem END)::text
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_type t ON t.oid = a.atttypid
 WHERE c.relkind IN ('r', 'p', 'f') AND a.attnum > 0 AND NOT a.attisdropped
   AND (t.typtype = 'd' OR (t.typelem <> 0 AND t.typlen = -1
        AND (SELECT e.typtype FROM pg_type e WHERE e.oid = t.typelem) = 'd'));
COMMIT;
"""


@dataclass(frozen=True, slots=True)
class Introspection:
    """What `introspect` found: an untagged Schema and what tagging needs besides it."""

    schema: Schema
    view_sources: ViewSources
    # Partitions and inheritance children -> their direct parents.
    inherits: dict[int, frozenset[int]] = field(default_factory=dict)
    # Generated columns (table oid, attnum) -> the columns their expression reads.
    generated: dict[tuple[int, int], frozenset[tuple[int, int]]] = field(default_factory=dict)


async def introspect(route: Route, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                     timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> Introspection:
    """Read the upstream's schema as the route's role sees it (untagged)::

        found = await introspect(config.routes["app"])
        found.schema.lookup(None, "customers").columns   # ('id', 'name', 'email', ...)
        schema, warnings = apply_tags(found.schema, found.view_sources, tags,
                                      inherits=found.inherits)

    Connection and query failures raise ProxyError (UpstreamProtocolError for
    the query, which is bounded by `timeout_seconds`).
    """
    return await _introspect(route, max_message_bytes=max_message_bytes,
                             timeout_seconds=timeout_seconds, on_query=None)


async def _introspect(route: Route, *, max_message_bytes: int, timeout_seconds: float,
                      on_query: Callable[[], None] | None) -> Introspection:
    """`introspect`, calling `on_query` just before the query goes out (see Catalog.refresh)."""
    conn = await connect_upstream(
        route, {"application_name": "pgproxy-introspect", "client_encoding": "UTF8"},
        max_message_bytes=max_message_bytes)
    try:
        async with asyncio.timeout(timeout_seconds):
            if on_query is not None:
                on_query()
            rows = await simple_query(conn, _INTROSPECTION_SQL, max_message_bytes=max_message_bytes)
    except TimeoutError:
        raise UpstreamProtocolError(
            f'timed out introspecting the upstream for database "{route.name}"') from None
    finally:
        await _terminate(conn)
    return _build(rows)


async def _terminate(conn: UpstreamConnection) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        if not conn.writer.is_closing():
            conn.writer.write(m.Terminate().encode())
        conn.close()
        await conn.writer.wait_closed()


def _build(rows: list[Row]) -> Introspection:
    """Turn the introspection query's rows into an Introspection."""
    by_kind: dict[str | None, list[Row]] = {}
    for row in rows:
        by_kind.setdefault(row[0], []).append(row)
    if not by_kind.get("rel"):
        raise UpstreamProtocolError("the introspection query returned no relations")

    columns: dict[int, tuple[str, str, str, list[str], list[int]]] = {}
    for _, oid, nspname, relname, relkind, attnum, attname in by_kind.get("rel", []):
        entry = columns.setdefault(int(_text(oid)), (_text(nspname), _text(relname), _text(relkind), [], []))
        if attnum is not None and attname is not None:
            entry[3].append(attname)
            entry[4].append(int(attnum))
    texts: dict[int, set[int]] = {}  # text-like columns, which masks may replace with text
    for _, oid, attnum in by_kind.get("text", []):
        texts.setdefault(int(_text(oid)), set()).add(int(_text(attnum)))
    relations = {
        (schema, name): Relation(oid, schema, name, kind, tuple(cols), tuple(nums),
                                 text_columns=frozenset(c for c, n in zip(cols, nums, strict=True)
                                                        if n in texts.get(oid, ())))
        for oid, (schema, name, kind, cols, nums) in columns.items()
    }
    functions: dict[str, set[str]] = {}
    for _, proname, nspname in by_kind.get("fn", []):
        functions.setdefault(_text(proname), set()).add(_text(nspname))
    operators = frozenset(_text(row[1]) for row in by_kind.get("op", []))
    search_path = tuple(_text(row[1]) for row in by_kind.get("path", []))

    deps: dict[int, set[tuple[int, int]]] = {}
    for _, view, ref, subid in by_kind.get("dep", []):
        deps.setdefault(int(_text(view)), set()).add((int(_text(ref)), int(_text(subid))))
    whole_row = {int(_text(row[1])) for row in by_kind.get("wholerow", [])}
    inherits: dict[int, set[int]] = {}
    for _, child, parent in by_kind.get("inherits", []):
        if int(_text(child)) in columns and int(_text(parent)) in columns:  # not partitioned indexes
            inherits.setdefault(int(_text(child)), set()).add(int(_text(parent)))

    generated: dict[tuple[int, int], set[tuple[int, int]]] = {}
    for _, table, attnum, ref, subid in by_kind.get("gen", []):
        generated.setdefault((int(_text(table)), int(_text(attnum))), set()).add((int(_text(ref)), int(_text(subid))))
    calls: dict[int, set[tuple[str, str]]] = {}
    for _, view, nspname, proname in by_kind.get("viewfn", []):
        calls.setdefault(int(_text(view)), set()).add((_text(nspname), _text(proname)))
    routines: dict[tuple[str, str], list[Routine]] = {}
    for _, oid, nspname, proname, lanname, definition, types in by_kind.get("routine", []):
        routines.setdefault((_text(nspname), _text(proname)), []).append(
            Routine(int(_text(oid)), _text(nspname), _text(proname), _text(lanname), definition,
                    tuple(types.split(",")) if types else ()))
    # Row-level security policies run their functions on every read and write of their table;
    # defaults, CHECK constraints and index expressions on every write.
    write_calls: dict[int, set[tuple[str, str]]] = {}
    for _, mode, table, nspname, proname in by_kind.get("runs", []):
        function = (_text(nspname), _text(proname))
        write_calls.setdefault(int(_text(table)), set()).add(function)
        if mode == "rw":
            calls.setdefault(int(_text(table)), set()).add(function)
    # User code that converting a value runs: cast functions (by target type name; implicit and
    # assignment casts may run where no type is named) and the functions of a domain's constraints
    # and default (on every cast to the domain, and every write of a column of it, or of an array
    # of it; a cast runs no default, which is counted anyway).
    type_calls: dict[str, set[tuple[str, str]]] = {}
    implicit_calls: set[tuple[str, str]] = set()
    for _, typname, context, nspname, proname in by_kind.get("cast", []):
        function = (_text(nspname), _text(proname))
        type_calls.setdefault(_text(typname), set()).add(function)
        if context in ("i", "a"):
            implicit_calls.add(function)
    domains = {int(_text(row[1])): (_text(row[2]), int(_text(row[3]))) for row in by_kind.get("domain", [])}
    domain_calls: dict[int, set[tuple[str, str]]] = {}
    for _, domain, nspname, proname in by_kind.get("domainfn", []):
        domain_calls.setdefault(int(_text(domain)), set()).add((_text(nspname), _text(proname)))

    def checks(domain: int) -> set[tuple[str, str]]:
        """The constraint functions a value of `domain` passes: its own and its base domains'."""
        found: set[tuple[str, str]] = set()
        seen: set[int] = set()
        while domain in domains and domain not in seen:
            seen.add(domain)
            found |= domain_calls.get(domain, set())
            domain = domains[domain][1]
        return found
    domain_checks = {type_oid: passes for type_oid in domains if (passes := checks(type_oid))}
    for type_oid, passes in domain_checks.items():
        type_calls.setdefault(domains[type_oid][0], set()).update(passes)
    for _, table, column_type in by_kind.get("domaincol", []):
        if int(_text(column_type)) in domain_checks:
            write_calls.setdefault(int(_text(table)), set()).update(domain_checks[int(_text(column_type))])
    _through_views(calls, deps)
    hooks = {int(_text(row[1])) for row in by_kind.get("hook", [])}
    relations = {key: dataclasses.replace(r, calls=frozenset(calls.get(r.oid, ())), write_hooks=r.oid in hooks,
                                          write_calls=frozenset(write_calls.get(r.oid, ())))
                 if r.oid in calls or r.oid in hooks or r.oid in write_calls else r
                 for key, r in relations.items()}
    by_oid = {r.oid: r for r in relations.values()}
    view_sources = _view_sources(by_oid, deps, whole_row)
    frozen_inherits = {child: frozenset(parents) for child, parents in inherits.items()}
    schema = Schema(
        relations=relations,
        functions={name: frozenset(schemas) for name, schemas in functions.items()},
        user_operators=operators,
        search_path=search_path,
        type_calls={name: frozenset(found) for name, found in type_calls.items()},
        implicit_calls=frozenset(implicit_calls),
        version="",
        routines={key: tuple(found) for key, found in routines.items()},
    )
    version = _digest({
        "relations": sorted([r.oid, r.schema, r.name, r.kind, r.columns, r.attnums]
                            for r in relations.values()),
        "functions": sorted([name, sorted(schemas)] for name, schemas in functions.items()),
        "operators": sorted(operators),
        "search_path": search_path,
        "view_sources": sorted([view, sorted(pairs)] for view, pairs in view_sources.items()),
        "inherits": sorted([child, sorted(parents)] for child, parents in inherits.items()),
        "generated": sorted([list(column), sorted(sources)] for column, sources in generated.items()),
        "calls": sorted([view, sorted(names)] for view, names in calls.items()),
        "write_calls": sorted([table, sorted(names)] for table, names in write_calls.items()),
        "hooks": sorted(hooks),
        "type_calls": sorted([name, sorted(found)] for name, found in type_calls.items()),
        "implicit_calls": sorted(implicit_calls),
        "routines": sorted([r.oid, r.schema, r.name, r.language, r.definition or "", r.types]
                           for found in routines.values() for r in found),
    })
    return Introspection(dataclasses.replace(schema, version=version), view_sources, frozen_inherits,
                         {column: frozenset(sources) for column, sources in generated.items()})


def _text(value: str | None) -> str:
    if value is None:
        raise UpstreamProtocolError("the introspection query returned an unexpected NULL")
    return value


def _through_views(calls: dict[int, set[tuple[str, str]]], deps: dict[int, set[tuple[int, int]]]) -> None:
    """A view that reads a view calling functions calls them too (a fixpoint, for chains)."""
    changed = True
    while changed:
        changed = False
        for view, refs in deps.items():
            inherited = set().union(*(calls.get(ref, set()) for ref, _ in refs)) if refs else set()
            if not inherited <= calls.get(view, set()):
                calls.setdefault(view, set()).update(inherited)
                changed = True


def _view_sources(by_oid: dict[int, Relation], deps: dict[int, set[tuple[int, int]]],
                  whole_row: set[int]) -> ViewSources:
    """Each view's columns read, directly and through the views it reads (a fixpoint,
    so even a cycle of views, which PostgreSQL would refuse to run, terminates)."""
    direct: dict[int, set[tuple[int, int]]] = {}
    for view, refs in deps.items():
        if view not in by_oid or by_oid[view].kind not in _VIEW_KINDS:
            continue
        read: set[tuple[int, int]] = set()
        for ref, subid in refs:
            relation = by_oid.get(ref)
            if relation is None:  # a sequence, a composite type...
                continue
            if view in whole_row:
                read.update((ref, attnum) for attnum in relation.attnums)
            elif subid > 0:
                read.add((ref, subid))
        direct[view] = read
    sources = {view: set(read) for view, read in direct.items()}
    changed = True
    while changed:
        changed = False
        for view, found in sources.items():
            through = {ref for ref, _ in found if ref in sources and ref != view}
            before = len(found)
            for ref in through:
                found |= sources[ref]
            changed = changed or len(found) != before
    return {view: frozenset(found) for view, found in sources.items()}


def _digest(value: object) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


# --- Tags -------------------------------------------------------------------------------


# A catalog file entry -> the columns it tags: (table oid, attnum; 0 for "*"), kept across renames.
Identities = dict[tuple[str, str, str], set[tuple[int, int]]]


def apply_tags(schema: Schema, view_sources: ViewSources, tags: Tags, *,
               inherits: Mapping[int, frozenset[int]] | None = None,
               database: str | None = None, identities: Identities | None = None,
               generated: Mapping[tuple[int, int], frozenset[tuple[int, int]]] | None = None,
               ) -> tuple[Schema, list[str]]:
    """A copy of `schema` whose relations carry `tags`, and warnings for tagged names
    that do not exist upstream (`database`, when given, prefixes the names in them)::

        tagged, warnings = apply_tags(found.schema, found.view_sources,
                                      catalog_file.tags_for("app"), database="app")
        tagged.lookup("public", "customers").tags["email"]   # frozenset({'pii', 'pii.email'})

    A "*" entry tags every column of its table. Views reading a tagged column carry
    its tags on every one of their columns; relations in one inheritance or
    partition tree share tags by column name. The version changes with the tags.

    Tags belong to columns, not names: `identities` (kept by the caller from one reading of
    the schema to the next) records the column each file entry resolved to; when a rename
    makes the entry's name resolve to nothing, the tag stays on that column and a warning
    names it under its new name, so the file can be updated.
    """
    prefix = f"{database}." if database else ""
    warnings: list[str] = []
    by_oid = schema.by_oid()
    tagged: dict[int, dict[str, set[str]]] = {}
    stale: dict[int, list[str]] = {}

    remembered = identities if identities is not None else {}
    known_schemas = {s for s, _ in schema.relations}
    for (schema_name, table), columns in tags.items():  # file order, for the warnings
        relation = schema.relations.get((schema_name, table))
        for column, column_tags in columns.items():
            key = (schema_name, table, column)
            resolved: set[tuple[int, int]] = set()
            if relation is not None and column == "*":
                resolved.add((relation.oid, 0))
            elif relation is not None and column in relation.columns:
                resolved.add((relation.oid, relation.attnums[relation.columns.index(column)]))
            for oid, attnum in remembered.get(key, ()):  # where the entry's column went (a rename)
                still = by_oid.get(oid)
                if still is not None and (attnum == 0 or attnum in still.attnums):
                    resolved.add((oid, attnum))
            watched = bool(remembered.get(key))
            remembered[key] = resolved
            if not resolved and watched:  # pgproxy saw the column go: dropped, not renamed
                warnings.append(f"catalog: {prefix}{schema_name}.{table}.{column} was dropped; "
                                "remove it from the catalog file")
                continue
            if not resolved:
                warnings.append(_unresolved(schema, known_schemas, prefix, schema_name, table, column))
                if relation is not None:
                    stale.setdefault(relation.oid, []).append(warnings[-1])
                continue
            for oid, attnum in sorted(resolved):
                target = by_oid[oid]
                names = target.columns if attnum == 0 else (target.columns[target.attnums.index(attnum)],)
                for name in names:
                    tagged.setdefault(oid, {}).setdefault(name, set()).update(column_tags)
                now = (target.schema, target.name, column if attnum == 0 else names[0])
                if now != key:
                    warnings.append(f"catalog: {prefix}{schema_name}.{table}.{column} was renamed: it is now "
                                    f"{target.qualified}.{now[2]}, still tagged; update the catalog file")
    warnings = list(dict.fromkeys(warnings))
    _share_across_inheritance(by_oid, inherits or {}, tagged)

    def tags_of(oid: int, attnum: int) -> set[str]:
        relation = by_oid.get(oid)
        if relation is None or attnum not in relation.attnums:
            return set()
        return tagged.get(oid, {}).get(relation.columns[relation.attnums.index(attnum)], set())

    # A generated column carries the tags of the columns its expression reads (stored values
    # computed from them: `GENERATED ALWAYS AS (ssn)` is the ssn).
    for (oid, attnum), sources in (generated or {}).items():
        relation = by_oid.get(oid)
        found_tags: set[str] = set()
        for source in sources:
            found_tags |= tags_of(*source)
        if relation is not None and found_tags and attnum in relation.attnums:
            tagged.setdefault(oid, {}).setdefault(relation.columns[relation.attnums.index(attnum)],
                                                  set()).update(found_tags)

    derived: dict[int, set[str]] = {}
    for view, sources in view_sources.items():
        found: set[str] = set()
        for oid, attnum in sources:
            found |= tags_of(oid, attnum)
        if found:
            derived[view] = found
    for view, found in derived.items():
        for column in by_oid[view].columns if view in by_oid else ():
            tagged.setdefault(view, {}).setdefault(column, set()).update(found)

    relations = {
        key: dataclasses.replace(relation, tags={
            column: frozenset(column_tags)
            for column, column_tags in tagged.get(relation.oid, {}).items() if column_tags
        }, stale=_stale(stale.get(relation.oid)))
        for key, relation in schema.relations.items()
    }
    version = _digest([schema.version, sorted(
        [r.oid, column, sorted(column_tags)]
        for r in relations.values() for column, column_tags in r.tags.items()),
        sorted([r.oid, r.stale] for r in relations.values() if r.stale)])
    return dataclasses.replace(schema, relations=relations, version=version), warnings


def _stale(warnings: list[str] | None) -> str | None:
    """What a statement using a relation with a tagged column that no longer exists is told."""
    if not warnings:
        return None
    return ("; ".join(w.removeprefix("catalog: ") for w in dict.fromkeys(warnings))
            + ": the catalog file tags a column that does not exist (renamed or dropped while pgproxy was not "
              "watching?), so pgproxy cannot tell where its data went; update the catalog file")


def _unresolved(schema: Schema, known_schemas: set[str], prefix: str, schema_name: str, table: str,
                column: str) -> str:
    """Why a catalog file entry names nothing upstream (the same words for every entry of a
    missing schema or table: apply_tags reports each once)."""
    relation = schema.relations.get((schema_name, table))
    if schema_name not in known_schemas:
        return f"catalog: {prefix}{schema_name}: no such schema{_did_you_mean(schema_name, known_schemas)}"
    if relation is None:
        in_schema = sorted(name for s, name in schema.relations if s == schema_name)
        return (f"catalog: {prefix}{schema_name}.{table}: no such table or view in schema "
                f"{schema_name}{_did_you_mean(table, in_schema)}")
    return (f"catalog: {prefix}{schema_name}.{table}.{column}: no such column in "
            f"{relation.qualified}{_did_you_mean(column, relation.columns)}")


def _share_across_inheritance(by_oid: dict[int, Relation], inherits: Mapping[int, frozenset[int]],
                              tagged: dict[int, dict[str, set[str]]]) -> None:
    """Give every relation of one inheritance/partition tree the tags of the others' columns
    of the same name: a query on a parent returns its children's rows, and a partition holds
    rows of its parent."""
    root: dict[int, int] = {}

    def find(oid: int) -> int:
        while root.get(oid, oid) != oid:
            oid = root[oid]
        return oid

    for child, parents in inherits.items():
        for parent in parents:
            root[find(child)] = find(parent)
    trees: dict[int, list[int]] = {}
    for oid in {*inherits, *(p for parents in inherits.values() for p in parents)}:
        trees.setdefault(find(oid), []).append(oid)
    for members in trees.values():
        shared: dict[str, set[str]] = {}
        for oid in members:
            for column, column_tags in tagged.get(oid, {}).items():
                shared.setdefault(column, set()).update(column_tags)
        for oid in members:
            relation = by_oid.get(oid)
            if relation is None:
                continue
            for column in relation.columns:
                if column in shared:
                    tagged.setdefault(oid, {}).setdefault(column, set()).update(shared[column])


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    """" (did you mean email?)" for a near miss, case differences included."""
    folded = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), folded, n=1)
    return f" (did you mean {folded[close[0]]}?)" if close else ""


# --- The catalog file -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CatalogFile:
    """A validated catalog file: database (route name) -> (schema, table) -> column or "*" -> tags."""

    source: Path | None
    databases: dict[str, Tags]

    def tags_for(self, database: str) -> Tags:
        """The tags of one database (route name); empty when the file does not name it."""
        return {table: dict(columns) for table, columns in self.databases.get(database, {}).items()}


def load_catalog(path: Path) -> CatalogFile:
    """Read and validate a catalog file; raise ConfigError as ``file:line: dotted.key: problem``::

        catalog = load_catalog(Path("catalog.yaml"))
        catalog.tags_for("app")[("public", "customers")]["email"]   # frozenset({'pii', 'pii.email'})
    """
    root = read_yaml(path, "catalog", "a mapping of database names to schemas")
    loader = _Loader(path)
    databases: dict[str, Tags] = {}
    for database, db_at in _names(loader, _At(root, "", root.start_mark.line + 1), "database names"):
        tags: Tags = {}
        for schema_name, schema_at in _names(loader, db_at, "schema names"):
            for table, table_at in _names(loader, schema_at, "table or view names"):
                tags[(schema_name, table)] = {
                    column: _tags(loader, column_at)
                    for column, column_at in _names(loader, table_at, 'column names (or "*")')
                }
        databases[database] = tags
    return CatalogFile(path, databases)


def _names(loader: _Loader, at: _At, what: str) -> list[tuple[str, _At]]:
    """A non-empty mapping of names, in file order."""
    if not isinstance(at.node, yaml.MappingNode):
        loader.fail(at, f"expected a mapping of {what}, got {loader.describe(at)}")
    found = loader.entries(at)
    if not found:
        loader.fail(at, f"expected a mapping of {what}, got an empty mapping")
    for name, child in found.items():
        if not name:
            loader.fail(child, "names cannot be empty")
    return list(found.items())


def _tags(loader: _Loader, at: _At) -> frozenset[str]:
    """A tag, or a non-empty list of tags."""
    if isinstance(at.node, yaml.SequenceNode):
        items = loader.items(at)
        if not items:
            loader.fail(at, "expected a tag or a list of tags, got an empty list")
        return frozenset(_tag(loader, item) for item in items)
    if isinstance(at.node, yaml.MappingNode):
        loader.fail(at, "expected a tag or a list of tags, got a mapping")
    return frozenset({_tag(loader, at)})


def _tag(loader: _Loader, at: _At) -> str:
    value = loader.value(at)
    if not isinstance(value, str):
        quote = "; quote it to make it text" if isinstance(value, bool | int | float) else ""
        loader.fail(at, f"expected a tag, got {_describe(value)}{quote}")
    if not _TAG.fullmatch(value):
        loader.fail(at, f"invalid tag {value!r}: use lowercase letters, digits and _, "
                        "in dot-separated parts (e.g. pii.email)")
    return value


# --- The running proxy's catalog ------------------------------------------------------------


@dataclass(eq=False)
class _Refresh:
    """One introspection of one route, which callers join until its query has gone out."""

    task: asyncio.Task[None] | None = None
    querying: bool = False


class Catalog:
    """The current tagged Schema of every route.

    ``schema(route)`` is None until that route's introspection has succeeded;
    callers treat that as "cannot resolve" (review). After DDL passes through,
    ``await catalog.refresh(route)``: calls that overlap share introspections,
    and each caller gets one that started after its call (so it sees its DDL).
    """

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._max_message_bytes = max_message_bytes
        self._timeout_seconds = timeout_seconds
        self._routes: dict[str, Route] = {}
        self._file: CatalogFile | None = None
        self._introspected: dict[str, Introspection] = {}
        self._schemas: dict[str, Schema] = {}
        self._warnings: dict[str, list[str]] = {}
        self._running: dict[str, _Refresh] = {}
        self._queued: dict[str, _Refresh] = {}
        # Per route: the column each catalog file entry resolved to (tags survive renames).
        self._identities: dict[str, Identities] = {}

    async def load(self, routes: Mapping[str, Route] | Iterable[Route],
                   catalog_file: CatalogFile | None) -> list[str]:
        """Introspect every route and tag it; return the warnings (a route that cannot be
        introspected is one: its schema stays None until a refresh succeeds).

        Calling it again (a reload) keeps a route's schema while its Route is unchanged.
        """
        given = list(routes.values()) if isinstance(routes, Mapping) else list(routes)
        new_routes = {route.name: route for route in given}
        for name in list(self._introspected):
            if self._routes.get(name) != new_routes.get(name):
                self._forget(name)
        self._routes = new_routes
        self._file = catalog_file
        self._warnings.clear()  # load returns them all; refresh logs only new ones
        warnings: list[str] = []
        if catalog_file is not None:
            for database in catalog_file.databases:
                if database not in new_routes:
                    warnings.append(f"catalog: {database}: no route for database {database}"
                                    f"{_did_you_mean(database, new_routes)}")
        for name in self._introspected:
            self._apply(name)
        names = list(new_routes)
        results = await asyncio.gather(*(self.refresh(name) for name in names), return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, ProxyError):
                warnings.append(f"catalog: {name}: cannot introspect the upstream: {result.message}")
            elif isinstance(result, BaseException):
                raise result
            warnings.extend(self._warnings.get(name, []))
        return warnings

    def schema(self, route_name: str) -> Schema | None:
        return self._schemas.get(route_name)

    def introspection(self, route_name: str) -> Introspection | None:
        """The untagged introspection behind schema(route_name), with its view sources."""
        return self._introspected.get(route_name)

    async def refresh(self, route_name: str) -> None:
        """Re-introspect one route and re-tag it; raise ProxyError (keeping the old schema)
        when the upstream cannot be introspected."""
        if route_name not in self._routes:
            raise KeyError(f"no route named {route_name!r}")
        job = self._queued.get(route_name)
        if job is None:
            running = self._running.get(route_name)
            if running is None:
                job = self._running[route_name] = self._start(route_name, after=None)
            elif not running.querying:
                job = running
            else:  # its snapshot may predate the caller's DDL: queue one after it
                job = self._queued[route_name] = self._start(route_name, after=running)
        assert job.task is not None
        # Shielded: a caller that gives up (its client went away) leaves the others' refresh alone.
        await asyncio.shield(job.task)

    async def close(self) -> None:
        """Cancel introspections still in flight (the proxy is shutting down)."""
        jobs = [job.task for job in (*self._running.values(), *self._queued.values()) if job.task is not None]
        for task in jobs:
            task.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)

    def _start(self, route_name: str, after: _Refresh | None) -> _Refresh:
        job = _Refresh()
        job.task = asyncio.create_task(self._run(route_name, job, after))
        job.task.add_done_callback(lambda task: task.cancelled() or task.exception())
        return job

    async def _run(self, route_name: str, job: _Refresh, after: _Refresh | None) -> None:
        if after is not None and after.task is not None:
            await asyncio.wait([after.task])
            del self._queued[route_name]
            self._running[route_name] = job

        def querying() -> None:
            job.querying = True

        route = self._routes.get(route_name)
        try:
            if route is None:  # dropped by a reload meanwhile
                return
            found = await _introspect(route,
                                      max_message_bytes=self._max_message_bytes,
                                      timeout_seconds=self._timeout_seconds, on_query=querying)
            if self._routes.get(route_name) != route:  # changed by a reload meanwhile
                return
            self._introspected[route_name] = found
            self._apply(route_name)
        finally:
            if self._running.get(route_name) is job:
                del self._running[route_name]

    def _apply(self, route_name: str) -> None:
        found = self._introspected[route_name]
        tags = self._file.tags_for(route_name) if self._file is not None else {}
        schema, warnings = apply_tags(found.schema, found.view_sources, tags,
                                      inherits=found.inherits, database=route_name,
                                      identities=self._identities.setdefault(route_name, {}),
                                      generated=found.generated)
        previous = self._warnings.get(route_name)
        if previous is not None:
            for warning in warnings:
                if warning not in previous:  # e.g. DDL dropped a tagged column
                    log.warning(warning, extra={"route": route_name})
        self._schemas[route_name] = schema
        self._warnings[route_name] = warnings

    def warnings(self, route_name: str) -> list[str]:
        """What the last reading of the route found wrong with the catalog file (stale names...)."""
        return list(self._warnings.get(route_name, []))

    def _forget(self, route_name: str) -> None:
        self._identities.pop(route_name, None)
        self._introspected.pop(route_name, None)
        self._schemas.pop(route_name, None)
        self._warnings.pop(route_name, None)
