"""Function lineage: calling a SQL or PL/pgSQL function counts what its body reads; a body
pgproxy cannot see through runs code. Pure analysis over a hand-made schema (the live
end-to-end cases are in test_approvals.py and the corpora)."""

from __future__ import annotations

import itertools

import pytest

from pgproxy.analysis.gate import analyze, planning_runs_code
from pgproxy.analysis.model import Analysis, Flag, Kind
from pgproxy.analysis.routines import Routine
from pgproxy.analysis.schema import Relation, Schema

PII = frozenset({"pii"})
CUSTOMERS = Relation(1, "public", "customers", "r", ("id", "name", "ssn"), (1, 2, 3), tags={"ssn": PII})
SHADOW = Relation(2, "shadow", "customers", "r", ("id", "name", "ssn"), (1, 2, 3))  # untagged
_oids = itertools.count(100)


def _schema(*definitions: tuple[str, str, str, str]) -> Schema:
    """(schema, name, language, CREATE FUNCTION text) each."""
    routines: dict[tuple[str, str], tuple[Routine, ...]] = {}
    functions: dict[str, set[str]] = {n: {"pg_catalog"} for n in ("lower", "upper", "count", "set_config")}
    for schema, name, language, text in definitions:
        routines[(schema, name)] = (*routines.get((schema, name), ()), Routine(next(_oids), schema, name, language,
                                                                               text))
        functions.setdefault(name, set()).add(schema)
    return Schema(relations={("public", "customers"): CUSTOMERS, ("shadow", "customers"): SHADOW},
                  functions={k: frozenset(v) for k, v in functions.items()}, user_operators=frozenset(),
                  search_path=("public",), version="test", routines=routines)


def _plpgsql(body: str, name: str = "f", args: str = "p_id int", extra: str = "") -> tuple[str, str, str, str]:
    return ("public", name, "plpgsql",
            f"CREATE OR REPLACE FUNCTION public.{name}({args}) RETURNS SETOF text LANGUAGE plpgsql {extra} "
            f"AS $function$ {body} $function$")


def _sql(body: str, name: str = "f", args: str = "p_id int", extra: str = "") -> tuple[str, str, str, str]:
    return ("public", name, "sql",
            f"CREATE OR REPLACE FUNCTION public.{name}({args}) RETURNS SETOF text LANGUAGE sql {extra} "
            f"AS $function$ {body} $function$")


def _call(schema: Schema, sql: str = "SELECT f(1)") -> Analysis:
    [analysis] = analyze(sql, schema)
    return analysis


# A query that reads the tagged column, in the places a body can hold one.
_READS = ("SELECT ssn FROM customers WHERE id = p_id",
          "SELECT c.name FROM customers c WHERE c.ssn LIKE '1%' AND c.id = p_id",
          "SELECT count(*)::text FROM customers WHERE EXISTS (SELECT 1 FROM customers x WHERE x.ssn = name)",
          "SELECT upper(t.ssn) FROM (SELECT * FROM customers) t")
_PLACES = (
    lambda q: _sql(q),
    lambda q: _sql(f"SELECT 1; {q}"),
    lambda q: _plpgsql(f"BEGIN RETURN QUERY {q}; END"),
    lambda q: _plpgsql(f"DECLARE x text; BEGIN x := ({q} LIMIT 1); RETURN NEXT x; END"),
    lambda q: _plpgsql(f"DECLARE x text; BEGIN {q.replace('SELECT', 'SELECT', 1)} LIMIT 1 INTO x; RETURN NEXT x; END"),
    lambda q: _plpgsql(f"BEGIN PERFORM ({q} LIMIT 1); END"),
    lambda q: _plpgsql(f"BEGIN IF EXISTS ({q}) THEN RETURN NEXT 'y'; END IF; END"),
    lambda q: _plpgsql(f"DECLARE r record; BEGIN FOR r IN {q} LOOP RETURN NEXT 'row'; END LOOP; END"),
    lambda q: _plpgsql(f"BEGIN RAISE EXCEPTION 'v %', ({q} LIMIT 1); END"),
    lambda q: _plpgsql(f"DECLARE c CURSOR FOR {q}; x text; BEGIN OPEN c; FETCH c INTO x; CLOSE c; END"),
    lambda q: _plpgsql(f"<<outer>> DECLARE x text; BEGIN WHILE x IS NULL LOOP x := ({q} LIMIT 1); END LOOP; END"),
    lambda q: _plpgsql(f"BEGIN ASSERT ({q} LIMIT 1) IS NULL; END"),
    lambda q: _plpgsql(f"DECLARE x text := ({q} LIMIT 1); BEGIN RETURN NEXT x; END"),
    lambda q: _plpgsql(f"BEGIN CASE WHEN ({q} LIMIT 1) = 'a' THEN RETURN; ELSE RETURN; END CASE; END"),
)


@pytest.mark.parametrize("query", _READS)
@pytest.mark.parametrize("place", range(len(_PLACES)))
def test_what_a_body_reads_counts_wherever_it_reads_it(query: str, place: int) -> None:
    """Every read of the tagged column, in every place of a body that runs a query or an
    expression: calling the function reads it."""
    analysis = _call(_schema(_PLACES[place](query)))
    assert analysis.tags_read == PII and Flag.RUNS_CODE not in analysis.flags, analysis
    assert analysis.kind is Kind.READ


@pytest.mark.parametrize("definition", [
    _plpgsql("BEGIN EXECUTE 'SELECT 1'; END"),
    _plpgsql("BEGIN RETURN QUERY EXECUTE 'SELECT ssn FROM customers'; END"),
    _plpgsql("DECLARE r record; BEGIN FOR r IN EXECUTE 'SELECT 1' LOOP END LOOP; END"),
    _plpgsql("DECLARE c refcursor; BEGIN OPEN c FOR EXECUTE 'SELECT 1'; END"),
    _plpgsql("BEGIN UPDATE customers SET name = 'x' WHERE id = p_id; END"),
    _plpgsql("BEGIN CALL f(1); END"),
    _plpgsql("BEGIN COMMIT; END"),
    _plpgsql("BEGIN SET search_path = shadow; END"),
    _plpgsql("BEGIN PERFORM set_config('search_path', 'shadow', true); END"),
    _plpgsql("BEGIN RETURN QUERY SELECT ssn FROM nowhere; END"),
    _plpgsql("BEGIN RETURN QUERY SELECT nothing FROM customers; END"),
    _plpgsql("BEGIN RETURN QUERY SELECT ssn FROM customers; END", extra="SET role TO 'postgres'"),
    _plpgsql("BEGIN RETURN QUERY SELECT 'x'; END", extra="SET standard_conforming_strings TO 'off'"),
    _plpgsql("BEGIN RETURN QUERY SELECT * FROM f(1); END"),  # calls itself
    _sql("INSERT INTO customers (id) VALUES (p_id) RETURNING name"),
    _sql("WITH d AS (DELETE FROM customers RETURNING ssn) SELECT ssn FROM d"),
    _sql("SELECT name INTO TEMP t FROM customers"),
    ("public", "f", "c", "CREATE FUNCTION public.f(int) RETURNS text LANGUAGE c AS 'lib', 'f'"),
    ("public", "f", "plpython3u", None),
])
def test_a_body_pgproxy_cannot_see_through_runs_code(definition: tuple[str, str, str, str]) -> None:
    analysis = _call(_schema(definition))
    assert Flag.RUNS_CODE in analysis.flags, analysis


def test_lineage_is_transitive_and_allow_listing_vouches_for_code_not_reads() -> None:
    schema = _schema(_sql("SELECT g(p_id)"),
                     _sql("SELECT h(p_id)", name="g"),
                     _plpgsql("BEGIN RETURN NEXT (SELECT ssn FROM customers WHERE id = p_id); END", name="h"),
                     _plpgsql("BEGIN EXECUTE 'SELECT 1'; END", name="opaque"))
    analysis = _call(schema)
    assert analysis.tags_read == PII and Flag.RUNS_CODE not in analysis.flags
    assert {"public.f", "public.g", "public.h"} <= analysis.functions
    assert analysis.tables == frozenset({"public.customers"})  # for `tables:` rules and DDL barriers
    [allowed] = analyze("SELECT f(1), opaque(1)", schema, allowed_functions=frozenset({"f", "opaque"}))
    assert allowed.tags_read == PII and Flag.RUNS_CODE not in allowed.flags
    [not_allowed] = analyze("SELECT opaque(1)", schema)
    assert Flag.RUNS_CODE in not_allowed.flags


def test_planning_is_judged_when_it_may_run_what_needs_judging() -> None:
    """The planner may fold a function before the statement executes: a statement is judged
    before planning (at Bind) when it calls a function not allow-listed, or one that reads
    tagged columns, even allow-listed; an allow-listed one that reads nothing tagged is not."""
    schema = _schema(_sql("SELECT name FROM customers WHERE id = p_id"),
                     _sql("SELECT ssn FROM customers WHERE id = p_id", name="g"))
    vouched = frozenset({"f", "g"})
    cases = {("SELECT f(1)", frozenset()): True, ("SELECT f(1)", vouched): False,
             ("SELECT g(1)", vouched): True, ("SELECT lower('x')", frozenset()): False}
    for (sql, allowed), expected in cases.items():
        [analysis] = analyze(sql, schema, allowed_functions=allowed)
        assert planning_runs_code(analysis) is expected, (sql, allowed)


def test_names_resolve_where_the_function_runs() -> None:
    """On the function's own SET search_path, else on the caller's (the session's)."""
    own = _schema(_sql("SELECT ssn FROM customers", extra="SET search_path TO 'shadow'"))
    assert _call(own).tags_read == frozenset()
    callers = _schema(_sql("SELECT ssn FROM customers"))
    assert _call(callers).tags_read == PII
    [shadowed] = analyze("SELECT f(1)", callers, search_path=("shadow", "public"))
    assert shadowed.tags_read == frozenset()


def test_a_parameter_default_runs_when_the_argument_is_left_out() -> None:
    schema = _schema(_sql("SELECT p_id::text", args="p_id text DEFAULT g()"),
                     _sql("SELECT ssn FROM customers", name="g", args=""))
    assert _call(schema, "SELECT f()").tags_read == PII


def test_a_user_function_shadowing_a_builtin_counts() -> None:
    """`lower(5)` may run public.lower(int), not pg_catalog.lower(text): both are counted."""
    schema = _schema(_sql("SELECT ssn FROM customers WHERE id = p", name="lower", args="p int"))
    assert _call(schema, "SELECT lower(5)").tags_read == PII


def test_create_function_shows_what_its_body_reads_and_what_will_carry_it() -> None:
    [analysis] = analyze("CREATE FUNCTION g(p int) RETURNS text LANGUAGE plpgsql AS $$ DECLARE x text; "
                         "BEGIN x := (SELECT ssn FROM customers WHERE id = p); RETURN x; END $$", _schema())
    assert analysis.kind is Kind.DDL and analysis.tags_read == PII
    assert analysis.derives == {"public.g()": PII}
    assert "public.g" in (analysis.ddl_targets or ())
    [view] = analyze("CREATE VIEW v AS SELECT f(id) FROM customers", _schema(_sql("SELECT ssn FROM customers")))
    assert view.derives == {"public.v": PII}
    [generated] = analyze("ALTER TABLE customers ADD COLUMN c text GENERATED ALWAYS AS (upper(ssn)) STORED",
                          _schema())
    assert generated.derives == {"public.customers.c": PII}
