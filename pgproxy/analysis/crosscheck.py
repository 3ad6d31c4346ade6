"""The second opinion: sqlglot (postgres dialect) must find the same relations as the
server's grammar did. A statement sqlglot cannot parse, reads as an opaque command, or
reads with other tables than pglast is UNKNOWN (DESIGN.md, decision 1)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from pgproxy.analysis.schema import SYSTEM_SCHEMAS

if TYPE_CHECKING:
    from pgproxy.analysis.gate import Context

# sqlglot warns on stderr when it falls back to an opaque Command; that is a verdict here, not noise.
logging.getLogger("sqlglot").setLevel(logging.ERROR)


def _name(identifier: exp.Expression | None) -> str | None:
    if not isinstance(identifier, exp.Identifier):
        return None
    text = str(identifier.this)
    return text if identifier.quoted else text.lower()  # PostgreSQL folds unquoted names


CANNOT_READ = "second parser (sqlglot) cannot read the statement"


def crosscheck_tables(sql: str, tables: set[str], context: Context, *, catalog_only: bool = False) -> str | None:
    """None when sqlglot agrees with `tables` (schema.table names), else why not. `catalog_only`:
    the walker found nothing but system catalogs and system functions, and nothing flagged."""
    try:
        trees = sqlglot.parse(sql, read="postgres")
    except (SqlglotError, ValueError, RecursionError) as exc:
        if catalog_only and tables and all(t.split(".", 1)[0] in SYSTEM_SCHEMAS for t in tables):
            # Only system catalogs (drivers' metadata queries, such as asyncpg's type
            # introspection): no user data to misread. The walker visits every field of every
            # node (tests/test_walker.py), so a subquery reading a user table would be among
            # `tables`; credential catalogs are flagged anyway.
            return None
        return f"{CANNOT_READ}: {str(exc).splitlines()[0][:200]}"
    if len(trees) != 1 or trees[0] is None:
        return "second parser (sqlglot) splits the statement differently"
    tree = trees[0]
    if isinstance(tree, exp.Command):
        return "second parser (sqlglot) reads the statement as an opaque command"
    ctes = {_name(cte.args.get("alias", exp.TableAlias()).args.get("this")) for cte in tree.find_all(exp.CTE)}
    found: set[str] = set()
    for table in tree.find_all(exp.Table):
        name = _name(table.this if isinstance(table.this, exp.Identifier) else None)
        if name is None:
            continue  # a table function (generate_series(…)) or a VALUES list
        if table.find_ancestor(exp.Lock) is not None:
            continue  # FOR UPDATE OF x names an item of the FROM list, not a table
        schema = _name(table.args.get("db"))
        if schema is None and name in ctes:
            continue
        relation = context.schema.lookup(schema, name, context.path)
        found.add(relation.qualified if relation is not None else f"{schema or '?'}.{name}")
    if found != tables:
        missing = sorted(tables - found)
        extra = sorted(found - tables)
        detail = "; ".join(part for part in (
            f"only the server's grammar sees {', '.join(missing)}" if missing else "",
            f"only sqlglot sees {', '.join(extra)}" if extra else "",
        ) if part)
        return f"the two parsers disagree on the tables: {detail}"
    return None
