"""The catalog: introspecting the real upstream, the catalog file, tags on tables and views."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgproxy import catalog as catalog_module
from pgproxy.analysis.gate import analyze
from pgproxy.analysis.model import ColumnKey, Flag, Kind
from pgproxy.analysis.schema import Relation, Schema
from pgproxy.catalog import (
    Catalog,
    CatalogFile,
    Introspection,
    apply_tags,
    introspect,
    load_catalog,
    simple_query,
)
from pgproxy.config import ConfigError, Route
from pgproxy.errors import ProxyError, UpstreamProtocolError
from pgproxy.pgcluster import PostgresCluster, free_port
from pgproxy.upstream import connect_upstream
from tests.harness import DATABASE, upstream_route

DEMO_CATALOG = Path(__file__).resolve().parent.parent / "examples" / "catalog.yaml"
PII = frozenset({"pii"})


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def scratch(pg: PostgresCluster) -> Iterator[str]:
    """A schema of the test's own in `app`, dropped with everything in it afterwards."""
    name = unique("cat")
    pg.psql(f"CREATE SCHEMA {name}; GRANT USAGE ON SCHEMA {name} TO PUBLIC;", dbname=DATABASE)
    yield name
    pg.psql(f"DROP SCHEMA {name} CASCADE;", dbname=DATABASE)


def write(tmp_path: Path, text: str, name: str = "catalog.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def catalog_text(tables: str, *, database: str = "app", schema: str = "public") -> str:
    indented = "\n".join("    " + line for line in tables.strip("\n").splitlines())
    return f"{database}:\n  {schema}:\n{indented}\n"


async def tagged(route: Route, text: str, tmp_path: Path) -> tuple[Schema, list[str]]:
    found = await introspect(route)
    tags = load_catalog(write(tmp_path, text)).tags_for(route.name)
    return apply_tags(found.schema, found.view_sources, tags, inherits=found.inherits,
                      database=route.name)


def relation(schema: Schema, schema_name: str, name: str) -> Relation:
    found = schema.relations.get((schema_name, name))
    assert found is not None, f"{schema_name}.{name} not introspected"
    return found


# --- simple_query ------------------------------------------------------------------------


async def test_simple_query_rows_nulls_and_several_statements(pg: PostgresCluster) -> None:
    conn = await connect_upstream(upstream_route(pg), {}, max_message_bytes=1 << 20)
    try:
        rows = await simple_query(conn, "SELECT 1, NULL::text, 'é'; SELECT 'two' UNION ALL SELECT 'three'")
        assert rows == [("1", None, "é"), ("two",), ("three",)]
        assert await simple_query(conn, "SET application_name = 'x'") == []
    finally:
        conn.close()


async def test_simple_query_error_raises_with_the_server_message_and_leaves_conn_usable(
        pg: PostgresCluster) -> None:
    conn = await connect_upstream(upstream_route(pg), {}, max_message_bytes=1 << 20)
    try:
        with pytest.raises(UpstreamProtocolError, match='relation "no_such_table" does not exist'):
            await simple_query(conn, "SELECT * FROM no_such_table")
        assert await simple_query(conn, "SELECT 42") == [("42",)]
    finally:
        conn.close()


# --- introspection -----------------------------------------------------------------------


async def test_introspection_finds_demo_tables_with_columns_in_order(pg: PostgresCluster) -> None:
    found = await introspect(upstream_route(pg))
    schema = found.schema
    customers = relation(schema, "public", "customers")
    assert customers.kind == "r"
    assert customers.columns == ("id", "name", "email", "phone", "ssn", "country", "plan", "created_at")
    assert customers.attnums == (1, 2, 3, 4, 5, 6, 7, 8)
    assert customers.tags == {}
    orders = relation(schema, "public", "orders")
    assert orders.columns == ("id", "customer_id", "total", "status", "created_at")
    assert orders.attnums == (1, 2, 3, 4, 5)
    assert schema.by_oid()[customers.oid] is customers
    # PostgreSQL's own catalogs are there too, the credential catalogs included.
    authid = relation(schema, "pg_catalog", "pg_authid")
    assert "rolpassword" in authid.columns
    assert relation(schema, "pg_catalog", "pg_shadow").kind == "v"
    assert relation(schema, "information_schema", "columns").kind == "v"
    # Functions by name, with every schema defining one.
    assert "pg_catalog" in schema.function_schemas("pg_read_file")
    assert schema.function_schemas("no_such_function") == frozenset()
    assert "+" not in schema.user_operators
    assert len(schema.version) == 16


async def test_introspection_is_stable_and_version_deterministic(pg: PostgresCluster) -> None:
    first = await introspect(upstream_route(pg))
    second = await introspect(upstream_route(pg))
    assert first.schema.version == second.schema.version
    assert first.schema == second.schema


async def test_dropped_columns_are_left_out_and_attnums_kept(pg: PostgresCluster, scratch: str) -> None:
    pg.psql(f"CREATE TABLE {scratch}.t (a int, b int, c int); ALTER TABLE {scratch}.t DROP COLUMN b;"
            f"CREATE TABLE {scratch}.empty ();", dbname=DATABASE)
    schema = (await introspect(upstream_route(pg))).schema
    t = relation(schema, scratch, "t")
    assert (t.columns, t.attnums) == (("a", "c"), (1, 3))
    assert relation(schema, scratch, "empty").columns == ()


async def test_relation_kinds(pg: PostgresCluster, scratch: str) -> None:
    pg.psql(f"""
        CREATE TABLE {scratch}.plain (id int);
        CREATE VIEW {scratch}.v AS SELECT id FROM {scratch}.plain;
        CREATE MATERIALIZED VIEW {scratch}.mv AS SELECT id FROM {scratch}.plain;
        CREATE TABLE {scratch}.parted (id int, at date) PARTITION BY RANGE (at);
        CREATE SEQUENCE {scratch}.seq;
    """, dbname=DATABASE)
    schema = (await introspect(upstream_route(pg))).schema
    kinds = {name: relation(schema, scratch, name).kind for name in ("plain", "v", "mv", "parted", "seq")}
    assert kinds == {"plain": "r", "v": "v", "mv": "m", "parted": "p", "seq": "S"}
    # A sequence reads like a one-row table (SELECT last_value FROM s): its columns are known.
    assert relation(schema, scratch, "seq").columns == ("last_value", "log_cnt", "is_called")


async def test_user_functions_and_operators(pg: PostgresCluster, scratch: str) -> None:
    function = unique("cat_fn")
    pg.psql(f"""
        CREATE FUNCTION {scratch}.{function}(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1';
        CREATE FUNCTION {scratch}.lower(int) RETURNS int LANGUAGE sql AS 'SELECT $1';
        CREATE FUNCTION {scratch}.same(int, int) RETURNS bool LANGUAGE sql AS 'SELECT $1 = $2';
        CREATE OPERATOR {scratch}.<~#~> (LEFTARG = int, RIGHTARG = int, FUNCTION = {scratch}.same);
    """, dbname=DATABASE)
    schema = (await introspect(upstream_route(pg))).schema
    assert schema.function_schemas(function) == frozenset({scratch})
    # A user function that shadows a built-in's name is seen in both schemas.
    assert schema.function_schemas("lower") == frozenset({"pg_catalog", scratch})
    assert "<~#~>" in schema.user_operators
    assert not {"=", "+", "||", "~~"} & schema.user_operators

    pg.psql(f"DROP FUNCTION {scratch}.{function}(int); DROP OPERATOR {scratch}.<~#~> (int, int);",
            dbname=DATABASE)
    after = (await introspect(upstream_route(pg))).schema
    assert after.function_schemas(function) == frozenset()
    assert "<~#~>" not in after.user_operators
    assert after.version != schema.version


async def test_search_path_of_the_route_role(pg: PostgresCluster) -> None:
    schema = (await introspect(upstream_route(pg))).schema
    # The default "$user", public: app_scram has no schema of its own, so only public is left.
    assert schema.search_path == ("public",)
    assert relation(schema, "public", "customers") is schema.lookup(None, "customers")
    # pg_catalog is searched first although current_schemas(false) does not list it.
    assert schema.lookup(None, "pg_class") is relation(schema, "pg_catalog", "pg_class")
    assert schema.lookup(None, "no_such_table") is None


async def test_search_path_set_on_a_dedicated_role(pg: PostgresCluster) -> None:
    role, password, missing = unique("cat_role"), "cat-role-pass", unique("cat_missing")
    pg.create_role(role, password)
    try:
        pg.psql(f"""
            CREATE SCHEMA {role} AUTHORIZATION {role};
            CREATE TABLE {role}.customers (id int, secret text);
            ALTER ROLE {role} IN DATABASE {DATABASE} SET search_path = "$user", {missing}, public;
        """, dbname=DATABASE)
        route = upstream_route(pg, user=role, password=password)
        schema = (await introspect(route)).schema
        # "$user" resolved to the role's schema, the missing schema dropped, pg_catalog implicit.
        assert schema.search_path == (role, "public")
        shadowing = schema.lookup(None, "customers")
        assert shadowing is not None and shadowing.qualified == f"{role}.customers"
        assert shadowing.columns == ("id", "secret")
        assert schema.lookup("public", "customers") is relation(schema, "public", "customers")
        assert schema.lookup(None, "orders") is relation(schema, "public", "orders")
    finally:
        pg.psql(f"DROP SCHEMA IF EXISTS {role} CASCADE;"
                f"ALTER ROLE {role} IN DATABASE {DATABASE} RESET search_path;", dbname=DATABASE)
        pg.psql(f"DROP ROLE {role};")


async def test_quoted_mixed_case_names(pg: PostgresCluster, scratch: str, tmp_path: Path) -> None:
    pg.psql(f'CREATE TABLE {scratch}."AuditLog" (id int, "Email" text, "e-mail ünï" text);',
            dbname=DATABASE)
    text = catalog_text("""
AuditLog:
  Email: pii
  "e-mail ünï": [pii.email]
auditlog:
  email: [pii]
""", schema=scratch)
    schema, warnings = await tagged(upstream_route(pg), text, tmp_path)
    audit = relation(schema, scratch, "AuditLog")
    assert audit.columns == ("id", "Email", "e-mail ünï")
    assert audit.tags == {"Email": PII, "e-mail ünï": frozenset({"pii.email"})}
    assert (scratch, "auditlog") not in schema.relations
    assert warnings == [f"catalog: app.{scratch}.auditlog: no such table or view in schema {scratch} "
                        "(did you mean AuditLog?)"]


# --- tags --------------------------------------------------------------------------------


async def test_demo_catalog_tags_customers(pg: PostgresCluster) -> None:
    catalog_file = load_catalog(DEMO_CATALOG)
    found = await introspect(upstream_route(pg))
    schema, warnings = apply_tags(found.schema, found.view_sources, catalog_file.tags_for("app"),
                                  inherits=found.inherits, database="app")
    assert warnings == []
    assert relation(schema, "public", "customers").tags == {
        "name": PII, "email": frozenset({"pii", "pii.email"}), "phone": PII,
        "ssn": frozenset({"pii", "sensitive"}),
    }
    assert relation(schema, "public", "orders").tags == {}
    assert schema.version != found.schema.version
    again, _ = apply_tags(found.schema, found.view_sources, catalog_file.tags_for("app"),
                          inherits=found.inherits)
    assert again.version == schema.version
    assert found.schema.relations[("public", "customers")].tags == {}  # the input is left alone


async def test_views_inherit_the_tags_of_the_columns_they_read(pg: PostgresCluster, scratch: str) -> None:
    pg.psql(f"""
        CREATE VIEW {scratch}.contacts AS SELECT id, email AS address FROM public.customers;
        CREATE VIEW {scratch}.totals AS SELECT id, total, status FROM public.orders;
        CREATE VIEW {scratch}.by_country AS SELECT country, count(*) AS n FROM public.customers GROUP BY 1;
        CREATE VIEW {scratch}.contact_ids AS SELECT id FROM {scratch}.contacts;
        CREATE VIEW {scratch}.joined AS
            SELECT o.id, o.total FROM public.orders o JOIN public.customers c ON c.id = o.customer_id
            WHERE c.ssn IS NOT NULL;
        CREATE VIEW {scratch}.whole_rows AS SELECT row_to_json(c) AS doc FROM public.customers c;
        CREATE VIEW {scratch}.as_text AS SELECT c.id, c::text AS line FROM public.customers c;
        CREATE VIEW {scratch}.counted AS SELECT count(*) AS n FROM public.customers;
        CREATE MATERIALIZED VIEW {scratch}.ssn_copy AS SELECT ssn FROM public.customers WITH NO DATA;
        CREATE VIEW {scratch}.over_matview AS SELECT length(ssn) AS len FROM {scratch}.ssn_copy;
    """, dbname=DATABASE)
    found = await introspect(upstream_route(pg))
    schema, warnings = apply_tags(found.schema, found.view_sources,
                                  load_catalog(DEMO_CATALOG).tags_for("app"), inherits=found.inherits)
    assert warnings == []
    customers = relation(schema, "public", "customers")
    email = frozenset({"pii", "pii.email"})
    sensitive = frozenset({"pii", "sensitive"})

    contacts = relation(schema, scratch, "contacts")
    assert found.view_sources[contacts.oid] == {(customers.oid, 1), (customers.oid, 3)}
    assert contacts.tags == {"id": email, "address": email}  # every column of a tagged view
    assert relation(schema, scratch, "totals").tags == {}
    assert relation(schema, scratch, "by_country").tags == {}
    assert relation(schema, scratch, "contact_ids").tags == {"id": email}  # through another view
    assert relation(schema, scratch, "joined").tags == {"id": sensitive, "total": sensitive}  # WHERE
    every_tag = frozenset({"pii", "pii.email", "sensitive"})
    assert relation(schema, scratch, "whole_rows").tags == {"doc": every_tag}
    assert relation(schema, scratch, "as_text").tags == {"id": every_tag, "line": every_tag}
    assert relation(schema, scratch, "counted").tags == {}
    assert relation(schema, scratch, "ssn_copy").tags == {"ssn": sensitive}
    assert relation(schema, scratch, "over_matview").tags == {"len": sensitive}


async def test_table_tag_star_covers_every_column(pg: PostgresCluster, tmp_path: Path) -> None:
    text = catalog_text("""
orders:
  "*": [finance]
  total: finance.amount
""")
    schema, warnings = await tagged(upstream_route(pg), text, tmp_path)
    assert warnings == []
    orders = relation(schema, "public", "orders")
    finance = frozenset({"finance"})
    assert orders.tags == {"id": finance, "customer_id": finance, "total": frozenset({"finance", "finance.amount"}),
                           "status": finance, "created_at": finance}


async def test_partitions_share_tags_with_their_parent(pg: PostgresCluster, scratch: str, tmp_path: Path) -> None:
    pg.psql(f"""
        CREATE TABLE {scratch}.events (id int, email text, at date) PARTITION BY RANGE (at);
        CREATE TABLE {scratch}.events_2024 PARTITION OF {scratch}.events
            FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
        CREATE TABLE {scratch}.base (id int, note text);
        CREATE TABLE {scratch}.child (extra text) INHERITS ({scratch}.base);
    """, dbname=DATABASE)
    text = catalog_text("""
events:
  email: [pii]
child:
  note: [sensitive]
""", schema=scratch)
    schema, warnings = await tagged(upstream_route(pg), text, tmp_path)
    assert warnings == []
    assert relation(schema, scratch, "events_2024").tags == {"email": PII}
    assert relation(schema, scratch, "base").tags == {"note": frozenset({"sensitive"})}
    assert relation(schema, scratch, "child").tags == {"note": frozenset({"sensitive"})}


async def test_warnings_for_names_that_do_not_exist(pg: PostgresCluster, tmp_path: Path) -> None:
    text = """
app:
  public:
    customers:
      emial: [pii]
      email: [pii]
    custmers:
      email: [pii]
  pubic:
    customers:
      email: [pii]
    orders:
      status: [pii]
"""
    schema, warnings = await tagged(upstream_route(pg), text, tmp_path)
    assert warnings == [
        "catalog: app.public.customers.emial: no such column in public.customers (did you mean email?)",
        "catalog: app.public.custmers: no such table or view in schema public (did you mean customers?)",
        "catalog: app.pubic: no such schema (did you mean public?)",
    ]
    assert relation(schema, "public", "customers").tags == {"email": PII}  # the rest still applies
    # The misspelt column's data is not tagged, and pgproxy cannot tell where it is: a statement
    # using the table is unknown, with the catalog error in its explanation.
    [analysis] = analyze("SELECT id FROM customers", schema)
    assert analysis.kind is Kind.UNKNOWN
    assert analysis.reasons[0].startswith("catalog error: app.public.customers.emial: no such column")
    assert "update the catalog file" in analysis.reasons[0]
    assert analyze("SELECT 1 FROM orders", schema)[0].kind is Kind.READ


async def test_catalog_load_refresh_and_warnings(pg: PostgresCluster, scratch: str, tmp_path: Path) -> None:
    pg.psql(f"CREATE TABLE {scratch}.notes (id int, body text);", dbname=DATABASE)
    text = f"""
app:
  {scratch}:
    notes:
      "*": [pii]
apps:
  public:
    customers:
      email: [pii]
"""
    catalog = Catalog()
    assert catalog.schema("app") is None
    warnings = await catalog.load([upstream_route(pg)], load_catalog(write(tmp_path, text)))
    assert warnings == ["catalog: apps: no route for database apps (did you mean app?)"]
    before = catalog.schema("app")
    assert before is not None
    assert relation(before, scratch, "notes").tags == {"id": PII, "body": PII}

    pg.psql(f"ALTER TABLE {scratch}.notes ADD COLUMN author text;", dbname=DATABASE)
    assert catalog.schema("app") is before  # nothing changes until a refresh
    await catalog.refresh("app")
    after = catalog.schema("app")
    assert after is not None and after.version != before.version
    notes = relation(after, scratch, "notes")
    assert notes.columns == ("id", "body", "author")
    assert notes.attnums == (1, 2, 3)
    assert notes.tags["author"] == PII  # the table tag covers the new column

    await catalog.refresh("app")
    unchanged = catalog.schema("app")
    assert unchanged is not None and unchanged.version == after.version
    with pytest.raises(KeyError):
        await catalog.refresh("nope")


async def test_refresh_warns_when_ddl_drops_a_tagged_column(
        pg: PostgresCluster, scratch: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pg.psql(f"CREATE TABLE {scratch}.people (id int, email text);", dbname=DATABASE)
    text = catalog_text("people:\n  email: [pii]\n", schema=scratch)
    catalog = Catalog()
    assert await catalog.load({"app": upstream_route(pg)}, load_catalog(write(tmp_path, text))) == []
    pg.psql(f"ALTER TABLE {scratch}.people DROP COLUMN email;", dbname=DATABASE)
    with caplog.at_level("WARNING", logger="pgproxy.catalog"):
        await catalog.refresh("app")
    # pgproxy saw the column go (a rename would have kept its tag): dropped, nothing to hold.
    assert f"catalog: app.{scratch}.people.email was dropped; remove it from the catalog file" in caplog.messages
    after = catalog.schema("app")
    assert after is not None and relation(after, scratch, "people").stale is None


async def test_concurrent_refreshes_coalesce(pg: PostgresCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = Catalog()
    await catalog.load([upstream_route(pg)], None)
    calls = 0
    real = catalog_module._introspect

    async def counting(route: Route, **kwargs: Any) -> Introspection:
        nonlocal calls
        calls += 1
        return await real(route, **kwargs)

    monkeypatch.setattr(catalog_module, "_introspect", counting)
    await asyncio.gather(*(catalog.refresh("app") for _ in range(10)))
    assert calls == 1


async def test_refresh_after_a_query_went_out_gets_a_later_snapshot(
        pg: PostgresCluster, scratch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller whose DDL may postdate the running introspection's snapshot waits for the next one."""
    pg.psql(f"CREATE TABLE {scratch}.t (a int);", dbname=DATABASE)
    catalog = Catalog()
    await catalog.load([upstream_route(pg)], None)
    real = catalog_module._introspect
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def slow(route: Route, **kwargs: Any) -> Introspection:
        nonlocal calls
        calls += 1
        result = await real(route, **kwargs)
        if calls == 1:
            started.set()
            await release.wait()
        return result

    monkeypatch.setattr(catalog_module, "_introspect", slow)
    first = asyncio.create_task(catalog.refresh("app"))
    await started.wait()  # the first introspection has read the schema
    pg.psql(f"ALTER TABLE {scratch}.t ADD COLUMN b int;", dbname=DATABASE)
    later = [asyncio.create_task(catalog.refresh("app")) for _ in range(3)]
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(first, *later)
    assert calls == 2  # the three late callers shared one introspection
    schema = catalog.schema("app")
    assert schema is not None and relation(schema, scratch, "t").columns == ("a", "b")


async def test_unreachable_upstream_is_a_warning_and_no_schema(pg: PostgresCluster) -> None:
    route = upstream_route(pg, name="down", port=free_port(), connect_timeout_seconds=2)
    catalog = Catalog()
    warnings = await catalog.load([route, upstream_route(pg)], None)
    assert len(warnings) == 1 and warnings[0].startswith("catalog: down: cannot introspect the upstream: ")
    assert catalog.schema("down") is None
    assert catalog.schema("app") is not None
    with pytest.raises(ProxyError):
        await catalog.refresh("down")


# --- the catalog file --------------------------------------------------------------------


def test_load_demo_catalog() -> None:
    catalog_file = load_catalog(DEMO_CATALOG)
    assert catalog_file.tags_for("app") == {
        ("public", "customers"): {"name": PII, "email": frozenset({"pii", "pii.email"}), "phone": PII,
                                  "ssn": frozenset({"pii", "sensitive"})},
    }
    assert catalog_file.tags_for("other") == {}


def test_load_catalog_forms(tmp_path: Path) -> None:
    path = write(tmp_path, """
# comments are fine
app:
  public:
    AuditLog:
      Email: pii
      "*": [audit, audit.trail, audit]
  crm:
    notes:
      "*": [pii]
""")
    assert load_catalog(path) == CatalogFile(path, {"app": {
        ("public", "AuditLog"): {"Email": PII, "*": frozenset({"audit", "audit.trail"})},
        ("crm", "notes"): {"*": PII},
    }})


@pytest.mark.parametrize(("text", "error"), [
    (catalog_text("customers:\n  email: [pii, PII]\n"),
     ":4: app.public.customers.email[1]: invalid tag 'PII': use lowercase letters"),
    (catalog_text("customers:\n  email: pii..email\n"),
     ":4: app.public.customers.email: invalid tag 'pii..email'"),
    (catalog_text("customers:\n  email: []\n"),
     ":4: app.public.customers.email: expected a tag or a list of tags, got an empty list"),
    (catalog_text("customers:\n  email: 42\n"),
     ":4: app.public.customers.email: expected a tag, got 42; quote it to make it text"),
    (catalog_text("customers:\n  email:\n"),
     ":4: app.public.customers.email: expected a tag, got no value"),
    (catalog_text("customers:\n  email: {pii: true}\n"),
     ":4: app.public.customers.email: expected a tag or a list of tags, got a mapping"),
    (catalog_text("customers: [pii]\n"),
     ":3: app.public.customers: expected a mapping of column names (or \"*\"), got a list"),
    (catalog_text("customers: pii\n"),
     ":3: app.public.customers: expected a mapping of column names (or \"*\"), got 'pii'"),
    (catalog_text("customers: {}\n"),
     ":3: app.public.customers: expected a mapping of column names (or \"*\"), got an empty mapping"),
    ("app:\n  public: [customers]\n", ":2: app.public: expected a mapping of table or view names, got a list"),
    ("- app\n", ":1: expected a mapping of database names, got a list"),
    (catalog_text("customers:\n  email: pii\n  email: pii\n"),
     ":5: app.public.customers.email: duplicate key (first at line 4)"),
    ("app:\n  public:\n    customers:\n      email: [pii\n", ": invalid YAML"),
])
def test_catalog_file_errors_name_file_line_and_key(tmp_path: Path, text: str, error: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_catalog(path)
    assert str(raised.value).startswith(str(path)), raised.value
    assert error in str(raised.value), raised.value


def test_catalog_file_unreadable_or_empty(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read catalog"):
        load_catalog(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="catalog is empty"):
        load_catalog(write(tmp_path, "# nothing yet\n"))


# --- apply_tags without a server ---------------------------------------------------------


def test_apply_tags_through_a_cycle_of_views_terminates() -> None:
    table = Relation(1, "s", "t", "r", ("a", "b"), (1, 2))
    v1 = Relation(2, "s", "v1", "v", ("x",), (1,))
    v2 = Relation(3, "s", "v2", "v", ("y",), (1,))
    schema = Schema({(r.schema, r.name): r for r in (table, v1, v2)}, {}, frozenset(), ("s",), "v0")
    sources = catalog_module._view_sources(
        {r.oid: r for r in (table, v1, v2)}, {2: {(3, 1), (1, 2)}, 3: {(2, 1)}}, set())
    assert sources == {2: frozenset({(3, 1), (1, 2), (2, 1)}), 3: frozenset({(2, 1), (3, 1), (1, 2)})}
    tagged_schema, warnings = apply_tags(schema, sources, {("s", "t"): {"b": PII}})
    assert warnings == []
    assert tagged_schema.relations[("s", "v2")].tags == {"y": PII}
    assert tagged_schema.relations[("s", "t")].tags == {"b": PII}


# --- Code that converting a value runs: casts and domains --------------------------------------


async def test_casts_and_domain_checks_run_what_their_functions_read(pg: PostgresCluster, scratch: str,
                                                                     tmp_path: Path) -> None:
    """A cast's function and a domain constraint's function run when a value is converted: what they
    read is read by every statement that converts (explicitly, or implicitly where no type is named)."""
    pg.psql(f"""
        SET search_path = {scratch};
        CREATE TABLE vault (id int, secret text);
        CREATE TABLE plain (id int, note text);
        CREATE TYPE badge AS (n int);
        CREATE FUNCTION peek(int) RETURNS badge LANGUAGE sql AS 'SELECT ROW(length(secret)) FROM vault LIMIT 1';
        CREATE CAST (int AS badge) WITH FUNCTION peek(int);
        CREATE FUNCTION known(text) RETURNS bool LANGUAGE sql
            AS 'SELECT EXISTS (SELECT 1 FROM vault WHERE secret = $1)';
        CREATE DOMAIN probe AS text CHECK (known(VALUE));
        CREATE DOMAIN deeper AS probe;
        CREATE TABLE probed (id int, p deeper[]);
        CREATE FUNCTION stamp() RETURNS text LANGUAGE sql AS 'SELECT secret FROM vault LIMIT 1';
        CREATE DOMAIN stamped AS text DEFAULT stamp();
        CREATE TABLE stamps (id int, s stamped);
        CREATE FUNCTION takes(v probe[]) RETURNS int LANGUAGE sql AS 'SELECT 1';
        CREATE FUNCTION gives() RETURNS deeper LANGUAGE sql AS $$SELECT 'x'::text$$;
    """, dbname=DATABASE)
    catalog = catalog_text("vault:\n  secret: [pii]", schema=scratch)
    schema, _ = await tagged(upstream_route(pg), catalog, tmp_path)
    secret = ColumnKey(scratch, "vault", "secret")

    def reads(sql: str) -> dict[ColumnKey, frozenset[str]]:
        [found] = analyze(sql, schema, search_path=(scratch,))
        assert found.kind is not Kind.UNKNOWN, found.reasons
        return found.reads

    assert reads("SELECT id FROM plain") == {ColumnKey(scratch, "plain", "id"): frozenset()}
    for sql in ("SELECT 1::badge", "SELECT CAST(id AS badge) FROM plain", "SELECT ARRAY[1]::badge[]",
                f"SELECT 1::{scratch}.badge", "SELECT 'x'::probe", "SELECT note::deeper FROM plain",
                "INSERT INTO probed VALUES (1, NULL)", "UPDATE probed SET id = 2",
                "INSERT INTO stamps (id) VALUES (1)", "SELECT takes(ARRAY['x'])", "SELECT gives()"):
        assert reads(sql).get(secret) == frozenset({"pii"}), sql

    # An implicit cast runs where no type is named: every statement may run it.
    pg.psql(f"SET search_path = {scratch}; CREATE TYPE token AS (t text); "
            "CREATE FUNCTION mint(text) RETURNS token LANGUAGE sql AS 'SELECT ROW(secret) FROM vault'; "
            "CREATE CAST (text AS token) WITH FUNCTION mint(text) AS IMPLICIT;", dbname=DATABASE)
    implicit, _ = await tagged(upstream_route(pg), catalog, tmp_path)
    assert implicit.version != schema.version
    [found] = analyze("SELECT id FROM plain", implicit, search_path=(scratch,))
    assert found.reads.get(secret) == frozenset({"pii"})


async def test_an_extensions_operators_and_casts_are_postgresqls_own(pg: PostgresCluster, scratch: str,
                                                                     tmp_path: Path) -> None:
    """citext defines =, <>, <… and assignment casts with C functions in the schema it is installed
    in: they read no table, so comparing or casting runs no user code (before, every statement with
    `=` was `runs_code` once citext was installed)."""
    pg.psql(f"CREATE EXTENSION citext SCHEMA {scratch}; CREATE TABLE {scratch}.plain (id int, note text)",
            dbname=DATABASE)
    schema, _ = await tagged(upstream_route(pg), catalog_text("plain:\n  note: [pii]", schema=scratch), tmp_path)
    assert not {"=", "<>", "<"} & schema.user_operators and not schema.implicit_calls
    for sql in ("SELECT id FROM plain WHERE id = 1", "SELECT id FROM plain WHERE note::citext = 'a'::citext",
                "SELECT id::text::bpchar::citext FROM plain"):
        [found] = analyze(sql, schema, search_path=(scratch, "public"))
        assert found.kind is Kind.READ and Flag.RUNS_CODE not in found.flags, (sql, found.flags, found.reasons)
