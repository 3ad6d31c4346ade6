"""The EXPLAIN preview's reading of a plan, and what it refuses to plan (sans-IO)."""

from __future__ import annotations

from pgproxy.analysis.gate import analyze
from pgproxy.analysis.schema import Relation, Schema
from pgproxy.approvals.preview import _estimated_rows, not_explained


def test_the_estimate_is_read_from_the_plan_not_from_names_in_it() -> None:
    # An alias may spell anything; the estimate is the one at the end of the line.
    spoofed = ['Seq Scan on customers "rows=5"  (cost=0.00..35.50 rows=1000 width=4)']
    assert _estimated_rows(spoofed) == 1000
    # DML: the rows the plan under the ModifyTable node yields, not what the node returns
    # (rows=0 without RETURNING); a CTE's plan is indented further and does not count.
    update = ["Update on orders  (cost=0.15..8.17 rows=0 width=0)",
              "  CTE x",
              "    ->  Seq Scan on customers  (cost=0.00..1.00 rows=77 width=4)",
              "  ->  Index Scan using orders_pkey on orders  (cost=0.15..8.17 rows=3 width=10)",
              "        Index Cond: (id < 4)"]
    assert _estimated_rows(update) == 3
    assert _estimated_rows([]) is None


def schema() -> Schema:
    customers = Relation(oid=1, schema="public", name="customers", kind="r", columns=("id", "email"),
                         attnums=(1, 2), tags={})
    return Schema({("public", "customers"): customers}, {"page_fold": frozenset({"public"})}, frozenset(),
                  ("public",), "v1")


def test_what_is_not_planned() -> None:
    def why(sql: str) -> str | None:
        return not_explained(analyze(sql, schema()), sql)

    assert why("SELECT email FROM customers WHERE id = 1") is None
    assert why("DELETE FROM customers WHERE id = 1") is None
    assert why("CREATE TABLE t (a int)") == "no estimate for DDL: see what it changes below"
    assert "could run code" in (why("SELECT page_fold(id) FROM customers") or "")
    assert "could run code" in (why("SELECT * FROM nowhere") or "")  # unreadable: not planned
    assert why("SELECT 1; SELECT 2") == "no estimate for a request of 2 statements"
    assert (why("EXPLAIN ANALYZE DELETE FROM customers") or "").startswith("no estimate for EXPLAIN")
