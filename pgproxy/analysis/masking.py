"""Whether a statement's results can be masked: its tagged columns reach the result only as
plain output columns, which the RowDescription names exactly (table OID, attnum), and nothing
else of the statement depends on their values.

The test reuses the reference walker: the SELECT is walked again with its plain output columns
(`col`, `t.col`, `*`, `t.*`) replaced by constants. If the copy still reads a tagged column, the
statement uses tagged data somewhere masking cannot reach: in a filter, join, sort, grouping or
LIMIT (an oracle: `WHERE email LIKE 'a%'` answers a question about values the result never
shows), inside an expression (`upper(email)`, `email::bytea`, `left(email, 3)`, `row(email)`,
`json_agg(email)`), a subquery, a CTE or a function. A target is kept (its reads count) when it
may not be a plain column: a bare name that is also the name of a FROM item (`SELECT c FROM
customers c` is the whole row), a target an ORDER BY / GROUP BY names or numbers (sorting by a
masked column still orders rows by its real value), every target under DISTINCT. Tagged columns
of views and materialized views are never masked (their values may be computed), nor set
operations (their results name no table). What is not a SELECT (or a COPY … TO STDOUT of a table
or such a SELECT) cannot be masked at all.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from pglast import ast

from pgproxy.analysis.model import Analysis, ColumnKey, CopyOutput, Flag, Kind
from pgproxy.analysis.references import References, Scope, Unresolved
from pgproxy.analysis.schema import Relation, Schema
from pgproxy.masking import CopyFormat

_BASE_TABLES = frozenset({"r", "p", "f"})  # relkinds whose columns hold stored values, not computed ones


def unmaskable(analyses: Sequence[Analysis]) -> str | None:
    """Why the results of a query string's statements cannot be masked (None: they can). A statement
    that reads and writes no tagged column has nothing to mask; one pgproxy cannot read never can."""
    for analysis in analyses:
        if analysis.kind is Kind.UNKNOWN:
            return analysis.reasons[0] if analysis.reasons else "pgproxy cannot tell what it does"
        if analysis.tags_written:
            return "it writes tagged columns, which masking its result does not undo"
        if Flag.EXECUTES in analysis.flags and analysis.tags_read:
            return "EXPLAIN ANALYZE returns a plan, not rows pgproxy can mask"
        if analysis.tags_read and analysis.unmaskable is not None:
            return analysis.unmaskable
        stored = analysis.stored
        if stored is not None and stored.tags_read and stored.unmaskable is not None:
            return stored.unmaskable
    return None


def select_unmaskable(query: ast.SelectStmt, analysis: Analysis, schema: Schema, path: tuple[str, ...],
                      allowed_functions: frozenset[str]) -> str | None:
    """Why the SELECT's results cannot be masked, or None when they can (see the module)."""
    if not analysis.tags_read:
        return None
    if query.larg is not None:
        return "a set operation's result columns name no table, so pgproxy cannot tell which to mask"
    for key in sorted(analysis.reads):
        if not analysis.reads[key]:
            continue
        relation = schema.relations.get((key.schema, key.table))
        if relation is None or relation.kind not in _BASE_TABLES:
            return f"it reads {key}, a tagged column of a view, whose values may be computed"
    planned = copy.deepcopy(query)
    planned.targetList = tuple(_plain_outputs_replaced(planned))
    refs = References(schema, path, allowed_functions)
    try:
        refs.statement(planned, Scope([], None))
    except Unresolved as exc:
        return f"pgproxy could not trace its output columns ({exc})"
    used = sorted(str(k) for k, tags in refs.reads.items() if tags)
    if used:
        return (f"it uses {', '.join(used)} other than as a plain output column (in a filter, join, sort, "
                "grouping, expression, subquery or function), which masking the result cannot hide")
    return None


def _plain_outputs_replaced(query: ast.SelectStmt) -> list[Any]:
    targets = list(query.targetList or ())
    if query.distinctClause:
        return targets  # DISTINCT compares every output value: each one counts
    ranges = _range_names(query)
    named = _named_by_clauses(query, targets)
    out = []
    for index, target in enumerate(targets):
        if (isinstance(target, ast.ResTarget) and index not in named and _plain_column(target.val, ranges)):
            out.append(ast.ResTarget(name=target.name, val=ast.A_Const(val=ast.Integer(ival=1))))
        else:
            out.append(target)
    return out


def _plain_column(node: Any, ranges: set[str]) -> bool:
    """A column reference that is certainly a column (or `*`), not a whole row."""
    if not isinstance(node, ast.ColumnRef) or not node.fields:
        return False
    last = node.fields[-1]
    if isinstance(last, ast.A_Star):
        return True
    return isinstance(last, ast.String) and last.sval not in ranges


def _range_names(query: ast.SelectStmt) -> set[str]:
    """Every name a FROM item or CTE is known by (a bare name equal to one may be a whole row)."""
    names: set[str] = set()
    for cte in (query.withClause.ctes if query.withClause is not None else None) or ():
        names.add(cte.ctename)

    def visit(item: Any) -> None:
        alias = getattr(item, "alias", None)
        if alias is not None:
            names.add(str(alias.aliasname))
        if isinstance(item, ast.RangeVar):
            names.add(str(item.relname))
        elif isinstance(item, ast.JoinExpr):
            visit(item.larg)
            visit(item.rarg)
            if item.join_using_alias is not None:
                names.add(str(item.join_using_alias.aliasname))

    for item in query.fromClause or ():
        visit(item)
    return names


def _named_by_clauses(query: ast.SelectStmt, targets: list[Any]) -> set[int]:
    """Targets that ORDER BY or GROUP BY may name by position or by output name."""
    items = [s.node for s in query.sortClause or () if isinstance(s, ast.SortBy)] + list(query.groupClause or ())
    found: set[int] = set()
    for item in items:
        if isinstance(item, ast.A_Const):
            value = getattr(item.val, "ival", None)
            if isinstance(value, int) and 1 <= value <= len(targets):
                found.add(value - 1)
            else:
                found |= set(range(len(targets)))
        elif isinstance(item, ast.ColumnRef) and len(fields := item.fields or ()) == 1 \
                and isinstance(fields[0], ast.String):
            name = fields[0].sval
            for index, target in enumerate(targets):
                if isinstance(target, ast.ResTarget) and name in (target.name, _last_name(target.val)):
                    found.add(index)
        elif not isinstance(item, ast.ColumnRef):
            found |= set(range(len(targets)))  # grouping sets, expressions: keep every output
    return found


def _last_name(node: Any) -> str | None:
    if isinstance(node, ast.ColumnRef) and node.fields and isinstance(node.fields[-1], ast.String):
        return str(node.fields[-1].sval)
    return None


# -- COPY … TO STDOUT ---------------------------------------------------------------------------


def copy_output(node: ast.CopyStmt, schema: Schema, path: tuple[str, ...]) -> CopyOutput | str:
    """A COPY TO STDOUT's format and output columns in order (None for a column that is no
    table column), or why pgproxy cannot map them."""
    fmt = copy_format(node.options or ())
    if isinstance(fmt, str):
        return fmt
    if node.relation is not None:
        relation = schema.lookup(node.relation.schemaname or None, node.relation.relname or "", path)
        if relation is None or relation.kind != "r":
            return "pgproxy masks COPY of a table only"
        names = [c.sval for c in node.attlist] if node.attlist else list(relation.columns)
        return CopyOutput(fmt, tuple(ColumnKey(relation.schema, relation.name, n) for n in names))
    query = node.query
    sources = (query.fromClause or ()) if isinstance(query, ast.SelectStmt) else ()
    if not isinstance(query, ast.SelectStmt) or query.withClause is not None or query.larg is not None \
            or len(sources) != 1 or not isinstance(sources[0], ast.RangeVar):
        return "pgproxy masks COPY (SELECT …) TO STDOUT only when the query reads one table"
    item = sources[0]
    relation = schema.lookup(item.schemaname or None, item.relname or "", path)
    if relation is None:
        return f'relation "{item.relname}" is not known to pgproxy'
    names_of_item = {str(item.alias.aliasname if item.alias is not None else item.relname)}
    columns: list[ColumnKey | None] = []
    for target in query.targetList or ():
        found = _copy_target(target, relation, names_of_item)
        if isinstance(found, str):
            return found
        columns += found
    return CopyOutput(fmt, tuple(columns))


def _copy_target(target: Any, relation: Relation, item_names: set[str]) -> list[ColumnKey | None] | str:
    val = target.val if isinstance(target, ast.ResTarget) else None
    if not isinstance(val, ast.ColumnRef):
        return [None]  # not a column: the eligibility test made sure it holds no tagged value
    fields = list(val.fields or ())
    prefix, last = fields[:-1], fields[-1]
    if prefix and not (len(prefix) == 1 and isinstance(prefix[0], ast.String) and prefix[0].sval in item_names):
        return "pgproxy masks COPY (SELECT …) output columns named as column or table.column only"
    if isinstance(last, ast.A_Star):
        return [ColumnKey(relation.schema, relation.name, c) for c in relation.columns]
    name = last.sval if isinstance(last, ast.String) else None
    if name not in relation.columns:
        return f"pgproxy cannot tell which column {name!r} of the COPY's query is"
    return [ColumnKey(relation.schema, relation.name, name)]


_COPY_OPTIONS = frozenset({"format", "delimiter", "null", "header", "quote", "escape", "force_quote"})


def copy_format(options: Any) -> CopyFormat | str:
    """A COPY TO's text, CSV or binary format from its options, or why masking cannot read it."""
    values: dict[str, Any] = {}
    for option in options:
        if option.defname not in _COPY_OPTIONS:
            return f"pgproxy cannot mask COPY with the option {option.defname.upper()}"
        values[option.defname] = option.arg
    kind = _word(values.get("format")) if "format" in values else "text"
    if kind == "binary":
        if len(values) > 1:  # PostgreSQL refuses them all in binary mode: nothing to guess about
            return "pgproxy masks binary COPY without other options"
        return CopyFormat(binary=True)
    csv = kind == "csv"
    if not csv and kind != "text":
        return f"pgproxy cannot mask COPY in format {kind!r}"
    found = CopyFormat(csv=csv, delimiter="," if csv else "\t", null="" if csv else "\\N")
    settings: dict[str, Any] = {}
    for name in ("delimiter", "null", "quote", "escape"):
        if name in values:
            word = _word(values[name], lower=False)
            if word is None or (name != "null" and len(word) != 1):
                return f"pgproxy cannot read COPY's {name.upper()} option"
            settings[name] = word
    if "quote" in settings and "escape" not in settings:
        settings["escape"] = settings["quote"]
    if "header" in values:
        header = values["header"]
        word = _word(header) if header is not None else "true"
        if word not in ("true", "on", "1", "false", "off", "0"):
            return "pgproxy cannot read COPY's HEADER option"
        settings["header"] = word in ("true", "on", "1")
    found = CopyFormat(**{**{f: getattr(found, f) for f in ("csv", "delimiter", "null", "quote", "escape",
                                                            "header")}, **settings})
    if not found.isascii_safe():
        return "pgproxy masks COPY only with ASCII delimiters and quotes"
    return found


def _word(arg: Any, *, lower: bool = True) -> str | None:
    if isinstance(arg, ast.String):
        return str(arg.sval).lower() if lower else str(arg.sval)
    if isinstance(arg, ast.Integer):
        return str(arg.ival)
    if isinstance(arg, ast.Boolean):
        return "true" if arg.boolval else "false"
    return None
