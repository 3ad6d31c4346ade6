"""Expression-slot injection over the policy corpora (tests/injection.py): a subquery reading a
tagged column in every expression slot of every corpus statement must be seen by the analysis.

    .venv/bin/python -m tests.injection     # the same run, printed as a report
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pglast
import psycopg
import pytest
from pglast import ast

from pgproxy.analysis.schema import Schema
from pgproxy.config import Config
from tests import corpus, injection
from tests.harness import ProxyThread
from tests.test_enforce import BENIGN, RISKY, corpus_db, enforce, schema  # noqa: F401  (fixtures)


def _server(dsn: str) -> injection.ServerCheck:
    """A mutant -> what PostgreSQL says when the table owner runs it in a transaction rolled back.
    Mutants of deny cases (server files, programs, other hosts) and of cases that cannot run in a
    transaction block are not run (tests/corpora/README.md)."""

    def check(mutant: injection.Mutant, sql: str) -> str | None:
        if mutant.case.expect == "deny" or "[no-tx]" in mutant.case.reason:
            return f"not run: a {mutant.case.expect} case{' [no-tx]' if '[no-tx]' in mutant.case.reason else ''}"
        if any(isinstance(raw.stmt, ast.TransactionStmt) for raw in pglast.parse_sql(sql)):
            return "not run: it ends the transaction that would undo it"
        conn = psycopg.connect(dsn, connect_timeout=10)
        try:
            conn.execute("SET LOCAL statement_timeout = '5s'")
            conn.execute(sql.encode())  # bytes, no parameters: the simple protocol, several statements
            return None
        except psycopg.Error as exc:
            return f"{exc.sqlstate}: {str(exc).strip().splitlines()[0]}" if exc.sqlstate else f"not run: {exc}"
        finally:
            conn.rollback()
            conn.close()

    return check


def test_every_expression_slot_is_walked(schema: Schema, enforce: tuple[ProxyThread, Config],  # noqa: F811
                                         direct_dsn: str, record_property: Callable[[str, object], None]) -> None:
    """Unwalked: no analysis of the mutant reports the probe column and none is UNKNOWN (held or
    not). Each is then run on PostgreSQL: where its parse analysis refuses any subquery ("cannot
    use subquery in index predicate"), the position is no expression slot and does not count."""
    report = injection.run(BENIGN + RISKY + injection.seeds(), schema, enforce[1])
    report.confirm(_server(direct_dsn))
    record_property("injection_sites", report.total)
    for name, count in report.tried.items():
        record_property(f"injection_sites_{name}", count)
    record_property("injection_unwalked", len(report.unwalked))
    record_property("injection_masked", len(report.masked))
    if os.environ.get("PGPROXY_INJECTION_REPORT"):
        print(f"\n{report.report()}")
    assert report.total > 5000, report.summary()
    assert not report.unwalked, f"{report.summary()}\n{report.details(limit=50)}"


@pytest.mark.parametrize(("sql", "sites"), [
    ("SELECT email FROM customers TABLESAMPLE SYSTEM (10)",
     {"SelectStmt.fromClause[0].RangeTableSample.args[0]", "SelectStmt.fromClause[0].RangeTableSample.repeatable",
      "SelectStmt.whereClause", "SelectStmt.targetList[0].ResTarget.val"}),
    ("SELECT id FROM orders ORDER BY total DESC OFFSET 2",
     {"SelectStmt.sortClause[0].SortBy.node", "SelectStmt.limitOffset", "SelectStmt.havingClause"}),
    ("INSERT INTO orders (customer_id, total) VALUES (1, 2) RETURNING id",
     {"InsertStmt.selectStmt.SelectStmt.valuesLists[0][1]",
      "InsertStmt.returningClause.ReturningClause.exprs[0].ResTarget.val"}),
    ("SELECT sum(total) OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM orders",
     {"SelectStmt.targetList[0].ResTarget.val.FuncCall.over.WindowDef.startOffset"}),
    ("CALL archive_orders()", {"CallStmt.funccall.FuncCall.args"}),
    ("SELECT x.* FROM XMLTABLE(XMLNAMESPACES('http://example.com/a' AS a), '/a:r' PASSING xml '<r/>' "
     "COLUMNS id int PATH '@id' DEFAULT 0) AS x",
     {"SelectStmt.fromClause[0].RangeTableFunc.namespaces[0].ResTarget.val",
      "SelectStmt.fromClause[0].RangeTableFunc.docexpr",
      "SelectStmt.fromClause[0].RangeTableFunc.columns[0].RangeTableFuncCol.coldefexpr"}),
    ("EXPLAIN SELECT id FROM orders", {"ExplainStmt.query.SelectStmt.whereClause"}),
])
def test_the_generator_reaches_the_slots(sql: str, sites: set[str]) -> None:
    """The mutation engine itself, without a server: named slots, filled or empty, get a mutant."""
    probe = injection.Probe(*injection.PROBE_COLUMNS[0][:1], frozenset({"pii"}), *injection.PROBE_COLUMNS[0][1:])
    mutants = list(injection.mutate(corpus.Case("inline", 1, "allow", "", sql), probe))
    missing = sites - {m.path for m in mutants}
    assert not missing, "\n".join(m.path for m in mutants)
    assert all(probe.sql in m.sql for m in mutants)


def test_seeds_parse() -> None:
    seeds = injection.seeds()
    assert len(seeds) > 50
    for case in seeds:
        pglast.parse_sql(case.sql)
