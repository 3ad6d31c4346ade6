"""Whether a statement's results can be masked: its tagged columns reach the result only as
plain output columns, which the RowDescription names exactly (table OID, attnum), and nothing
else of the statement depends on their values.

The test reuses the reference walker: the SELECT is walked again with its plain output columns
(`col`, `t.col`, `*`, `t.*`) replaced by constants. If the copy still reads a tagged column, the
statement uses tagged data somewhere masking cannot reach: in a filter, join, sort, grouping or
LIMIT (an oracle: `WHERE email LIKE 'a%'` answers a question about values the result never
shows), inside an expression (`upper(email)`, `email::bytea`, `left(email, 3)`, `row(email)`,
`json_agg(email)`), a subquery in an expression, or a function. A target is kept (its reads
count) when it may not be a plain column: a bare name that is also the name of a FROM item
(`SELECT c FROM customers c` is the whole row), a target an ORDER BY / GROUP BY names or numbers
(sorting by a masked column still orders rows by its real value), every target under DISTINCT.

Subqueries in FROM and CTEs are followed (`_Plan`): PostgreSQL names the base table's column for
a result column that is a plain column of a subquery's or CTE's plain column, as deep as they go
(parse_target.c, markTargetListOrigin). So a subquery's (not LATERAL) or a CTE's plain output
column is replaced too when the query around it shows that column as a replaced plain output
and names it nowhere else: not in a filter, join, sort, grouping or expression, not in a USING
list or under a NATURAL join, not read whole (`s`, `s.*`, `row_to_json(s)`), not from a LATERAL
item or a subquery in an expression. Names over-approximate: any reference with the column's
name anywhere in that query counts. A CTE is followed only when every use of it is such a FROM
item (and what flows is what flows out of every use), never under WITH RECURSIVE; a set operation
or VALUES, or a select list with a star (`SELECT *`), is never followed. What is not followed
keeps its reads, so the statement is reviewed.

Tagged columns of views and materialized views are never masked (their values may be computed),
nor set operations (their results name no table). What is not a SELECT (or a COPY … TO STDOUT of a
table or of a SELECT of one table) cannot be masked at all.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pglast import ast

from pgproxy.analysis.model import Analysis, ColumnKey, CopyOutput, Flag, Kind
from pgproxy.analysis.references import References, Scope, Unresolved, descendants, node_fields, output_names
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
    _Plan.of(planned).query(planned, None, {})
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


# -- following plain output columns into subqueries and CTEs ------------------------------------


@dataclass(slots=True)
class _Shown:
    """The column references a query's replaced targets held: what reaches its output as it is."""

    everything: bool = False  # `*`
    whole: set[str] = field(default_factory=set)  # `t.*`: t's columns
    bare: set[str] = field(default_factory=set)  # `col`
    qualified: set[tuple[str, str]] = field(default_factory=set)  # `t.col`


@dataclass(slots=True)
class _Used:
    """What of a query is left once its replaced targets are gone, as names: the columns it may
    still read (any name of any column reference or USING list, at any depth), the FROM items it
    may read whole (`t`, `t.*`, `row_to_json(t)`), and whether a `*` of its own select list is left."""

    names: set[str] = field(default_factory=set)
    whole: set[str] = field(default_factory=set)
    star: bool = False


@dataclass(slots=True)
class _Source:
    """A subquery in FROM (`body`) or a use of a CTE (`cte`), as the query around it sees it: the
    names that reach it (its alias or the CTE's name, the aliases of joins around it), its column
    names in order (None: not known), and whether it sits under a join that compares or renames
    its columns out of sight of names (NATURAL, a join alias with a column list)."""

    names: frozenset[str]
    outputs: list[str | None] | None
    blocked: bool
    body: ast.SelectStmt | None = None
    cte: ast.CommonTableExpr | None = None

    def flow(self, shown: _Shown, used: _Used) -> frozenset[int]:
        """The positions of its columns whose values reach the query's output only as they are:
        shown by a replaced target, and named nowhere else in the query."""
        if self.blocked or self.outputs is None or used.star or self.names & used.whole:
            return frozenset()
        whole = shown.everything or bool(self.names & shown.whole)
        return frozenset(index for index, name in enumerate(self.outputs)
                         if name is not None and name not in used.names
                         and (whole or name in shown.bare or any((q, name) in shown.qualified for q in self.names)))


@dataclass(slots=True)
class _Plan:
    """Replaces, in (a copy of) a SELECT, the targets that are plain columns whose values reach its
    result only as they are: its own plain outputs, and, following them, those of the subqueries
    in FROM and the CTEs they come from, as deep as they go. PostgreSQL follows the same columns
    when it names a result column's table and attnum (parse_target.c, markTargetListOrigin), so
    each one the analysis follows is masked where the result shows it."""

    # Unqualified relation names as often as the statement names them, and CTE names as often as
    # it defines them: a CTE is followed only when each use of it is a FROM item followed here.
    named: dict[str, int]
    defined: dict[str, int]
    uses: dict[int, list[frozenset[int]]] = field(default_factory=dict)  # id(CTE) -> what flows out of each use

    @classmethod
    def of(cls, root: ast.SelectStmt) -> _Plan:
        named: dict[str, int] = {}
        defined: dict[str, int] = {}
        for node in descendants(root):
            if isinstance(node, ast.RangeVar) and not node.schemaname and not node.catalogname:
                named[str(node.relname)] = named.get(str(node.relname), 0) + 1
            elif isinstance(node, ast.CommonTableExpr):
                defined[str(node.ctename)] = defined.get(str(node.ctename), 0) + 1
        return cls(named, defined)

    def query(self, query: ast.SelectStmt, flowing: frozenset[int] | None,
              ctes: dict[str, ast.CommonTableExpr | None]) -> None:
        """Replace the plain targets of `query` at the positions `flowing` (None: all of them, the
        statement's own result) and follow its sources; a set operation or VALUES is left whole."""
        if query.larg is not None or query.valuesLists:
            return
        targets = query.targetList or ()
        if flowing is not None and any(_star(t) for t in targets):
            flowing = frozenset()  # positions are not targets: follow nothing
        own = list(query.withClause.ctes or ()) if query.withClause is not None else []
        recursive = query.withClause is not None and bool(query.withClause.recursive)
        scope: dict[str, ast.CommonTableExpr | None] = {**ctes, **{str(c.ctename): None if recursive else c
                                                                    for c in own}}
        shown = _replace_plain_outputs(query, flowing)
        sources, apart = _sources(query.fromClause or (), scope)
        used = _used(query, apart)
        for source in sources:
            flow = source.flow(shown, used)
            if source.body is not None:
                self.query(source.body, flow, scope)
            elif source.cte is not None:
                self.uses.setdefault(id(source.cte), []).append(flow)
        if recursive:
            return
        for index in reversed(range(len(own))):  # a CTE is used by the query and the CTEs after it
            cte = own[index]
            if not isinstance(cte.ctequery, ast.SelectStmt):
                continue
            uses = self.uses.get(id(cte), [])
            name = str(cte.ctename)
            every = bool(uses) and self.named.get(name) == len(uses) and self.defined.get(name) == 1
            visible = {**ctes, **{str(c.ctename): c for c in own[:index]}}
            self.query(cte.ctequery, frozenset.intersection(*uses) if every else frozenset(), visible)


def _star(target: Any) -> bool:
    """A target `*` or `t.*`."""
    val = target.val if isinstance(target, ast.ResTarget) else None
    parts = (val.fields or ()) if isinstance(val, ast.ColumnRef) else ()
    return bool(parts) and isinstance(parts[-1], ast.A_Star)


def _replace_plain_outputs(query: ast.SelectStmt, flowing: frozenset[int] | None) -> _Shown:
    """Replace, in place, the targets at `flowing` (None: all) that are plain columns by constants
    (under the same output names); returns what they showed. Under DISTINCT none is replaced."""
    shown = _Shown()
    targets = list(query.targetList or ())
    if query.distinctClause:
        return shown  # DISTINCT compares every output value: each one counts
    ranges = _range_names(query)
    named = _named_by_clauses(query, targets)
    for index, target in enumerate(targets):
        val = target.val if isinstance(target, ast.ResTarget) else None
        if (flowing is None or index in flowing) and index not in named and isinstance(val, ast.ColumnRef) \
                and _plain_column(val, ranges):
            parts = list(val.fields or ())
            last = parts[-1]
            names = [str(f.sval) for f in parts[:-1] if isinstance(f, ast.String)]
            if isinstance(last, ast.A_Star):
                if names:
                    shown.whole.add(names[-1])
                else:
                    shown.everything = True
            elif names:
                shown.qualified.add((names[-1], str(last.sval)))
            else:
                shown.bare.add(str(last.sval))
            targets[index] = ast.ResTarget(name=target.name or _last_name(val),
                                           val=ast.A_Const(val=ast.Integer(ival=1)))
    query.targetList = tuple(targets)
    return shown


def _sources(items: Sequence[Any], scope: dict[str, ast.CommonTableExpr | None], around: frozenset[str] = frozenset(),
             blocked: bool = False) -> tuple[list[_Source], set[int]]:
    """The subqueries (not LATERAL) and CTE uses among FROM items, and the ids of every subquery
    that is not LATERAL: they see nothing of the query around them (their own reads count where
    they are), so they are left out of what the query around them uses."""
    found: list[_Source] = []
    apart: set[int] = set()
    for item in items:
        if isinstance(item, ast.JoinExpr):
            joins = frozenset(str(a.aliasname) for a in (item.alias, item.join_using_alias) if a is not None)
            inner, inner_apart = _sources((item.larg, item.rarg), scope, around | joins, blocked or bool(
                item.isNatural) or (item.alias is not None and bool(item.alias.colnames)))
            found += inner
            apart |= inner_apart
        elif isinstance(item, ast.RangeSubselect) and not item.lateral:
            apart.add(id(item))
            if isinstance(item.subquery, ast.SelectStmt):
                names = frozenset({str(item.alias.aliasname)} if item.alias is not None else ())
                found.append(_Source(around | names, _renamed(output_names(item.subquery), item.alias), blocked,
                                     body=item.subquery))
        elif isinstance(item, ast.RangeVar) and not item.schemaname and not item.catalogname \
                and (cte := scope.get(str(item.relname))) is not None:
            columns: list[str | None] | None = [str(n.sval) for n in cte.aliascolnames] if cte.aliascolnames \
                else output_names(cte.ctequery)
            name = str(item.alias.aliasname) if item.alias is not None else str(item.relname)
            found.append(_Source(around | {name}, _renamed(columns, item.alias), blocked, cte=cte))
    return found, apart


def _renamed(columns: list[str | None] | None, alias: ast.Alias | None) -> list[str | None] | None:
    """A subquery's or CTE's column names under its alias's column list (`AS s(a, b)`)."""
    if columns is None or alias is None or not alias.colnames:
        return columns
    new: list[str | None] = [str(n.sval) for n in alias.colnames]
    return new + columns[len(new):]


def _used(query: ast.SelectStmt, apart: set[int]) -> _Used:
    """What the query still names once its replaced targets are gone (its CTEs and the subqueries
    `apart` left out: they cannot see its FROM items)."""
    used = _Used(star=any(_star(t) and len(t.val.fields) == 1 for t in query.targetList or ()))

    def fields(node: ast.Node) -> Iterable[str]:
        if node is query:
            return (f for f in node_fields(type(node)) if f != "withClause")
        if id(node) in apart:
            return (f for f in node_fields(type(node)) if f != "subquery")
        return node_fields(type(node))

    for node in descendants(query, fields):
        if isinstance(node, ast.ColumnRef):
            parts = node.fields or ()
            names = [str(f.sval) for f in parts if isinstance(f, ast.String)]
            used.names.update(names)
            if len(names) == 1 and len(parts) == 1:
                used.whole.add(names[0])  # a bare name may be a whole row
            elif names and isinstance(parts[-1], ast.A_Star):
                used.whole.add(names[-1])
        elif isinstance(node, ast.JoinExpr):
            used.names.update(str(n.sval) for n in node.usingClause or ())
    return used


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
    """Targets that ORDER BY or GROUP BY may name by position or by output name. A position counts
    output columns, which are targets only up to the first star (`SELECT *, id … ORDER BY 2`
    sorts by the star's second column)."""
    items = [s.node for s in query.sortClause or () if isinstance(s, ast.SortBy)] + list(query.groupClause or ())
    stars = [i for i, t in enumerate(targets) if _star(t)]
    numbered = stars[0] if stars else len(targets)
    found: set[int] = set()
    for item in items:
        if isinstance(item, ast.A_Const):
            value = getattr(item.val, "ival", None)
            if isinstance(value, int) and 1 <= value <= numbered:
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
