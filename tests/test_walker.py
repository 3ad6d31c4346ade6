"""The reference walker visits every field of every node (DESIGN.md, decision 2).

Enumerates pglast's node types and, for each field that can hold a node, puts a subquery
reading a tagged column (customers.ssn) there alone and walks the node: the walker must report
the read, or give up (Unresolved: the statement is then `unknown`, reviewed). A field it passes
over silently fails the test, unless it is listed in NOT_EXPRESSIONS with the reason PostgreSQL
never evaluates anything there. A pglast upgrade that adds a node type or field is covered the
same way, with no change here.
"""

from __future__ import annotations

import copy
from typing import Any

import pglast
import pytest
from pglast import ast

from pgproxy.analysis.model import ColumnKey
from pgproxy.analysis.references import References, Scope, Unresolved, descendants
from pgproxy.analysis.schema import Schema
from tests import corpus
from tests.test_enforce import corpus_db, enforce, schema  # noqa: F401 (fixtures)

SSN = ColumnKey("public", "customers", "ssn")


def _subquery() -> ast.SubLink:
    select: Any = pglast.parse_sql("SELECT (SELECT ssn FROM customers LIMIT 1)")[0].stmt
    sublink = select.targetList[0].val
    assert isinstance(sublink, ast.SubLink)
    return sublink


# Fields where PostgreSQL evaluates nothing: names, targets of a statement (judged as writes or
# by its kind), options. (type name, field) -> why.
NOT_EXPRESSIONS: dict[tuple[str, str], str] = {
    ("SelectStmt", "intoClause"): "names the table SELECT INTO creates (the gate judges it as DDL)",
    ("LockingClause", "lockedRels"): "FOR UPDATE OF names items of the FROM list, read by nothing",
    ("InsertStmt", "relation"): "the target table (its columns are counted as writes)",
    ("UpdateStmt", "relation"): "the target table",
    ("DeleteStmt", "relation"): "the target table",
    ("MergeStmt", "relation"): "the target table",
    ("RangeTableSample", "method"): "the sampling method's name",
    ("RangeVar", "alias"): "an alias: names only",
    ("RangeSubselect", "alias"): "an alias: names only",
    ("RangeFunction", "alias"): "an alias: names only",
    ("RangeTableFunc", "alias"): "an alias: names only",
    ("JoinExpr", "alias"): "an alias: names only",
    ("JoinExpr", "join_using_alias"): "an alias: names only",
    ("JoinExpr", "usingClause"): "column names, each resolved as a column of both sides",
    ("CommonTableExpr", "aliascolnames"): "a CTE's column names",
    ("InsertStmt", "cols"): "a column list: names (their subscripts are walked)",
    ("ColumnRef", "fields"): "names and *, never an expression",
    ("SortBy", "useOp"): "an operator's name (user operators are flagged by A_Expr)",
}
_FROM_ITEMS = (ast.RangeVar, ast.RangeSubselect, ast.RangeFunction, ast.JoinExpr, ast.RangeTableSample,
               ast.RangeTableFunc)
_STATEMENTS = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)


def _node_fields() -> list[tuple[type[Any], str, str]]:
    """Every (node type, field, C type) of pglast whose field can hold a node or a list of them."""
    found = []
    for name in dir(ast):
        cls = getattr(ast, name)
        if not (isinstance(cls, type) and issubclass(cls, ast.Node)) or cls in (ast.Node, ast.Expr):
            continue
        slots = getattr(cls, "__slots__", {})
        if not isinstance(slots, dict):
            continue
        for field_name, info in slots.items():
            c_type = getattr(info, "c_type", "")
            if c_type.endswith("*") and c_type not in ("char*", "Bitmapset*"):
                found.append((cls, field_name, c_type))
    return found


FIELDS = _node_fields()


def _holding(cls: type[Any], field_name: str, c_type: str, names: Schema, base: Any = None,
             depth: int = 0) -> Any | None:
    """A fresh `cls` whose `field_name` holds the subquery: directly where pglast allows any
    node, else inside a node of the field's own type (None: no node of that type can)."""
    subquery = _subquery()
    if c_type in ("List*", "Node*", "Expr*"):
        value: Any = (subquery,) if c_type == "List*" else subquery
    elif c_type == "SelectStmt*":
        value = subquery.subselect
    else:
        carrier = getattr(ast, c_type.rstrip("*"), None)
        if carrier is None or depth > 2:
            return None
        value = next((held for inner, name, inner_type in FIELDS if inner is carrier
                      and (held := _holding(inner, name, inner_type, names, None, depth + 1)) is not None
                      and _walk_node(held, names) is not False), None)
        if value is None:
            return None
    node = copy.deepcopy(base) if base is not None else cls()
    try:
        setattr(node, field_name, value)
    except (TypeError, ValueError, AttributeError):
        return None
    return node


def _walk_node(node: Any, names: Schema) -> bool | None:
    """Walk `node` as the walker reaches it: whether the read was seen (None: the walker gave
    up, which makes the statement unknown)."""
    refs = References(names, names.search_path)
    scope = Scope([], None)
    try:
        if isinstance(node, _STATEMENTS):
            refs.statement(node, scope)
        elif isinstance(node, _FROM_ITEMS):
            refs.from_item(node, scope)
        else:
            refs.expression(node, scope)
    except (Unresolved, RecursionError):
        return None
    except Exception:
        return None
    return SSN in refs.reads


def test_the_enumeration_covers_pglast() -> None:
    assert len(FIELDS) > 500  # pglast 6 on PostgreSQL 15: some 1,100 node-holding fields
    assert {(c.__name__, f) for c, f, _ in FIELDS} >= set(NOT_EXPRESSIONS), "stale NOT_EXPRESSIONS entries"


def _templates() -> dict[type[Any], list[Any]]:
    """Real nodes of each type, from the corpora's statements: a field is tested in a node
    whose other fields make sense (a TABLESAMPLE with a table, an INSERT with a target)."""
    found: dict[type[Any], list[Any]] = {}
    statements: list[Any] = []
    for case in corpus.load("benign") + corpus.load("risky"):
        try:
            statements += [raw.stmt for raw in pglast.parse_sql(case.sql)]
        except pglast.parser.ParseError:
            continue
    for node in descendants(statements):
        found.setdefault(type(node), []).append(node)
    return found


TEMPLATES = _templates()


@pytest.mark.parametrize(("cls", "field_name", "c_type"), FIELDS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_every_field_is_walked(cls: type[Any], field_name: str, c_type: str, schema: Schema) -> None:  # noqa: F811
    if (cls.__name__, field_name) in NOT_EXPRESSIONS:
        return
    # The first real node the walker reads without giving up and without the read already,
    # else a fresh one (whose missing parts may make the walker give up: never a false pass).
    for base in (*TEMPLATES.get(cls, ())[:25], None):
        if base is not None and _walk_node(copy.deepcopy(base), schema) is not False:
            continue
        node = _holding(cls, field_name, c_type, schema, base)
        if node is not None:
            break
    else:
        node = None
    if node is None:
        pytest.skip(f"no node of type {c_type} can hold an expression")
    seen = _walk_node(node, schema)
    assert seen is not False, f"{cls.__name__}.{field_name} ({c_type}) is not walked: a subquery there goes unseen"
