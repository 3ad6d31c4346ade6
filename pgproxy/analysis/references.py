"""Which base columns, tables and functions one statement touches, from the server's own AST.

Theory
------
Every value a query can return or change enters it through a reference to a
base relation: a column (``email``, ``c.email``), a star (``*``, ``c.*``), or
a whole row (``c``, ``row_to_json(c)``, ``c::text``). Derived tables (CTEs,
subqueries, joins, function results) only pass on what their own inner
references already brought in. So the walker resolves every reference in
every clause against the base relations in scope, and references that bind to
derived tables need no tracking: whatever they carry was counted where it was
read. This over-approximates on purpose (a name that could bind to a base
column counts even when the server would bind it elsewhere), and anything it
cannot resolve makes the statement UNKNOWN, which the policy treats as review.

Node types the walker has no rule for are traversed generically, so that a
column reference or a function call anywhere in them is still seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pglast import ast

from pgproxy.analysis.model import ColumnKey, Flag
from pgproxy.analysis.routines import Routine, body
from pgproxy.analysis.schema import SYSTEM_SCHEMAS, Relation, Schema
from pgproxy.protocol.lexing import LEXING_SETTINGS, setting_refusal

# Built-ins that reach the server's files, programs, large objects, other databases or settings.
SERVER_ACCESS_FUNCTIONS = frozenset({
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_ls_logdir", "pg_ls_waldir",
    "pg_ls_tmpdir", "pg_ls_archive_statusdir", "pg_ls_logicalsnapdir", "pg_ls_logicalmapdir",
    "pg_ls_replslotdir", "pg_stat_file", "pg_file_write", "pg_file_rename", "pg_file_unlink",
    "pg_file_sync", "pg_logdir_ls", "lo_import", "lo_export", "lo_get", "lo_put", "lo_from_bytea",
    "lo_open", "lo_close", "loread", "lowrite", "lo_create", "lo_creat", "lo_unlink", "lo_truncate",
    "lo_truncate64", "lo_lseek", "lo_lseek64", "lo_tell", "lo_tell64", "dblink", "dblink_exec",
    "dblink_connect", "dblink_connect_u", "dblink_send_query", "dblink_open", "dblink_fetch",
    "pg_reload_conf", "pg_rotate_logfile", "pg_promote", "pg_switch_wal", "pg_create_restore_point",
    "pg_backup_start", "pg_backup_stop", "pg_start_backup", "pg_stop_backup",
    "pg_create_logical_replication_slot", "pg_create_physical_replication_slot",
    "pg_drop_replication_slot", "pg_logical_emit_message", "pg_import_system_collations",
    "pg_log_backend_memory_contexts", "pg_stat_reset", "pg_stat_reset_shared",
})
# Built-ins that run SQL passed to them as a string: the proxy cannot see what that SQL does.
SQL_FROM_STRING_FUNCTIONS = frozenset({
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "cursor_to_xml",
    "cursor_to_xmlschema", "table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema",
    "schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema", "database_to_xml",
    "database_to_xmlschema", "database_to_xml_and_xmlschema", "ts_stat", "ts_rewrite",
})
ADMIN_FUNCTIONS = frozenset({"pg_terminate_backend", "pg_cancel_backend"})
CREDENTIAL_RELATIONS = frozenset({
    ("pg_catalog", "pg_authid"), ("pg_catalog", "pg_shadow"), ("pg_catalog", "pg_user_mapping"),
    ("pg_catalog", "pg_user_mappings"), ("information_schema", "user_mapping_options"),
    ("pg_catalog", "pg_largeobject"),
})
# set_config() settings whose change is a role change or reaches the server's files.
_SET_CONFIG_GUARDED = frozenset({"role", "session_authorization"})
# Planner statistics hold sampled values of every column: reading these columns of them counts as
# reading every tagged column of the database. (Their other columns -- null_frac, avg_width,
# n_distinct, correlation, frequencies -- are what health checks read: numbers, not values.)
# So do other sessions' statement texts, with their literals (an approved `… WHERE ssn = '…'`
# included): pg_stat_statements lives in whatever schema its extension was created in.
STATISTICS_VALUES = {
    ("pg_catalog", "pg_stats"): frozenset({"most_common_vals", "most_common_elems", "histogram_bounds"}),
    ("pg_catalog", "pg_stats_ext"): frozenset({"most_common_vals"}),
    ("pg_catalog", "pg_stats_ext_exprs"): frozenset({"most_common_vals", "most_common_elems", "histogram_bounds"}),
    ("pg_catalog", "pg_statistic"): frozenset({f"stavalues{i}" for i in range(1, 6)}),
    ("pg_catalog", "pg_statistic_ext_data"): frozenset({"stxdmcv", "stxdexpr"}),
    ("pg_catalog", "pg_stat_activity"): frozenset({"query"}),
    ("pg_catalog", "pg_prepared_statements"): frozenset({"statement"}),
    ("pg_catalog", "pg_cursors"): frozenset({"statement"}),
    (None, "pg_stat_statements"): frozenset({"query"}),
}


def _outputs(item: RangeItem) -> list[tuple[str | None, list[tuple[RangeItem, str]]]] | None:
    """An item's output columns in order, with the base columns each carries (None: not known)."""
    if item.relation is not None:
        return [(name, [(item, name)]) for name in item.visible]
    return item.outputs


def output_names(query: Any) -> list[str | None] | None:
    """The names of a subquery's output columns as far as they are certain (None for a column
    whose name PostgreSQL makes up); None when not even their number is known (a star)."""
    while isinstance(query, ast.SelectStmt) and query.larg is not None:
        query = query.larg  # a set operation takes its left side's names
    if not isinstance(query, ast.SelectStmt):
        return None
    if query.valuesLists:
        first = query.valuesLists[0]
        return [f"column{i + 1}" for i in range(len(first))] if isinstance(first, (list, tuple)) else None
    names: list[str | None] = []
    for target in query.targetList or ():
        if not isinstance(target, ast.ResTarget):
            return None
        value = target.val
        if target.name:
            names.append(target.name)
        elif isinstance(value, ast.ColumnRef):
            last = (value.fields or (None,))[-1]
            if not isinstance(last, ast.String):
                return None  # * or t.*: as many columns as the tables have
            names.append(last.sval or "")
        else:
            names.append(None)
    return names


def _string_constant(node: Any) -> str | None:
    """The value of a string constant ('x', or 'x'::text), else None."""
    if isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.String):
        return node.val.sval or ""
    return None


def node_fields(node_type: type[Any]) -> tuple[str, ...]:
    """The field names of a pglast node type."""
    slots: Any = getattr(node_type, "__slots__", ())
    return tuple(slots)


def descendants(root: Any, fields: Callable[[ast.Node], Iterable[str]] = lambda node: node_fields(type(node)),
                ) -> Iterator[ast.Node]:
    """Every pglast node in `root` (a node, or a list of them), depth first; below each node, the
    `fields` it names (all by default). A node may be changed when it is yielded: its fields are
    read after that."""
    pending: list[Any] = [root]
    while pending:
        current = pending.pop()
        if isinstance(current, (list, tuple)):
            pending.extend(current)
        elif isinstance(current, ast.Node):
            yield current
            pending.extend(getattr(current, name, None) for name in fields(current))


class Unresolved(Exception):
    """A name the walker cannot bind: the statement's effect is unknown."""


@dataclass(frozen=True, slots=True)
class Effect:
    """What calling one routine does, as its body's queries do it (`opaque`: pgproxy cannot
    see through it, so calling it runs code pgproxy cannot judge)."""

    reads: dict[ColumnKey, frozenset[str]] = field(default_factory=dict)
    tables: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    flags: frozenset[Flag] = frozenset()
    opaque: str | None = None
    plans_code: bool = False  # its body calls what planning should not run unjudged


@dataclass(slots=True)
class RangeItem:
    """One entry of a FROM list (or a DML target) as references see it."""

    name: str  # the alias, or the relation's own name
    relation: Relation | None  # a base relation, or None for a derived table
    visible: dict[str, str] = field(default_factory=dict)  # visible column name -> base column name
    members: list[RangeItem] = field(default_factory=list)  # a join alias covers these items
    schema_name: str | None = None  # for schema.table.column references (base items without alias)
    # A derived table's or join's output columns in order: (name, the base columns it carries);
    # a derived table's carry none (its values were counted where read). None: not known.
    outputs: list[tuple[str | None, list[tuple[RangeItem, str]]]] | None = None
    renamed: bool = False  # a join whose alias lists new column names
    opaque: bool = False  # ... over columns pgproxy cannot list: any use of it is unknown


@dataclass(slots=True)
class Scope:
    items: list[RangeItem]
    parent: Scope | None
    ctes: dict[str, list[str | None] | None] = field(default_factory=dict)  # CTE name -> its column names

    def chain(self) -> Iterator[Scope]:
        scope: Scope | None = self
        while scope is not None:
            yield scope
            scope = scope.parent

    def cte(self, name: str) -> bool:
        return any(name in s.ctes for s in self.chain())


@dataclass(slots=True)
class References:
    """What the walk found; `reasons` non-empty means UNKNOWN."""

    schema: Schema
    search_path: tuple[str, ...]
    allowed_functions: frozenset[str] = frozenset()
    reads: dict[ColumnKey, frozenset[str]] = field(default_factory=dict)
    writes: dict[ColumnKey, frozenset[str]] = field(default_factory=dict)
    tables: set[str] = field(default_factory=set)
    indirect: set[str] = field(default_factory=set)  # tables read by the routines it calls (not named here)
    # It calls a user function that is not allow-listed, or one that reads tagged columns: planning
    # it may run that (see gate.planning_runs_code).
    plans_code: bool = False
    functions: set[str] = field(default_factory=set)
    flags: set[Flag] = field(default_factory=set)
    reasons: list[str] = field(default_factory=list)
    literal_sensitive: bool = False
    modifies: bool = False  # a data-modifying statement anywhere (CTEs included)
    lexing: bool = False  # changes a setting the server's scanner consults (set_config)
    unreadable: str | None = None  # why such a change cannot be allowed
    # Inside a routine's body: its parameters and variables (a name no column matches may be one),
    # the names that qualify them (the function's, block labels, records), the routines being walked.
    names: frozenset[str] = frozenset()
    qualifiers: frozenset[str] = frozenset()
    calling: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        # An implicit or assignment cast's function may run wherever values meet a type (an
        # argument, an INSERT's target column) without the statement naming it: every statement
        # may run it. (Inside a routine's body they are already counted by the statement calling it.)
        if not self.calling:
            for schema_name, function in sorted(self.schema.implicit_calls):
                self.call(schema_name, function)

    # -- recording ---------------------------------------------------------------------

    def _record(self, into: dict[ColumnKey, frozenset[str]], relation: Relation, column: str) -> None:
        key = ColumnKey(relation.schema, relation.name, column)
        into[key] = relation.tags.get(column, frozenset())

    def read(self, relation: Relation, column: str) -> None:
        self._record(self.reads, relation, column)
        values = STATISTICS_VALUES.get((relation.schema, relation.name)) or STATISTICS_VALUES.get(
            (None, relation.name))
        if values is not None and column in values:
            for tagged in self.schema.relations.values():
                for name, tags in tagged.tags.items():
                    self.reads[ColumnKey(tagged.schema, tagged.name, name)] = tags

    def read_all(self, relation: Relation) -> None:
        for column in relation.columns:
            self.read(relation, column)

    def write(self, relation: Relation, column: str) -> None:
        self._record(self.writes, relation, column)

    def relation(self, node: ast.RangeVar) -> Relation:
        # database.schema.table may only name the current database; the server enforces that.
        name = node.relname or ""
        relation = self.schema.lookup(node.schemaname or None, name, self.search_path)
        if relation is None:
            shown = f"{node.schemaname}.{name}" if node.schemaname else name
            raise Unresolved(f'relation "{shown}" is not known to pgproxy')
        self.tables.add(relation.qualified)
        if relation.stale is not None:
            raise Unresolved(f"catalog error: {relation.stale}")
        if (relation.schema, relation.name) in CREDENTIAL_RELATIONS:
            self.flags.add(Flag.CREDENTIALS)
        for schema_name, function in sorted(relation.calls):  # a view over user functions runs them when read
            self.call(schema_name, function)
        return relation

    def written(self, relation: Relation) -> None:
        """Writing `relation` runs its rules and triggers (code pgproxy cannot see) and the
        functions of its defaults, constraints, indexes and policies (what they read is read)."""
        if relation.write_hooks:
            self.flags.add(Flag.RUNS_CODE)
        for schema_name, function in sorted(relation.write_calls):
            self.call(schema_name, function)

    def call(self, schema_name: str, name: str) -> None:
        """A user function or procedure runs: what its body reads counts as read here (its
        parameters are the statement's values). One pgproxy cannot see through runs code,
        unless allow-listed (the list vouches for what it does, never for what it reads)."""
        qualified = f"{schema_name}.{name}"
        self.functions.add(qualified)
        allowed = qualified in self.allowed_functions or name in self.allowed_functions
        routines = self.schema.routines.get((schema_name, name), ())
        effects = [self._effect(r) for r in routines] or [Effect(opaque=f"{qualified} has no body pgproxy reads")]
        self.plans_code = self.plans_code or not allowed or any(
            any(e.reads.values()) or e.plans_code for e in effects)
        for effect in effects:
            self.reads.update(effect.reads)
            self.indirect.update(effect.tables)
            self.functions.update(effect.functions)
            if effect.opaque is None:
                self.flags.update(effect.flags - {Flag.RUNS_CODE} if allowed else effect.flags)
            elif not allowed:
                self.flags.add(Flag.RUNS_CODE)
        # Its arguments and result are converted to its types: a domain's checks run (each function once).
        for routine in routines:
            for type_name in routine.types:
                for converts in sorted(self.schema.type_calls.get(type_name, ())):
                    if ".".join(converts) not in self.functions:
                        self.call(*converts)

    def _effect(self, routine: Routine) -> Effect:
        found = body(routine)
        if found.opaque is not None:
            return Effect(opaque=found.opaque)
        path = found.search_path if found.search_path is not None else self.search_path
        key = (routine.oid, path, self.allowed_functions)
        known: Effect | None = self.schema.effects.get(key)
        if known is not None:
            return known
        if routine.oid in self.calling:
            return Effect(opaque=f"{routine.qualified} calls itself")
        inner = References(self.schema, path, self.allowed_functions, names=found.names,
                           qualifiers=found.qualifiers, calling=self.calling | {routine.oid})
        try:
            for query in found.queries:
                inner.statement(query, Scope([], None))
        except Unresolved as exc:
            effect = Effect(opaque=f"{routine.qualified}: {exc}")
        else:
            if inner.modifies or inner.writes or inner.lexing or inner.unreadable:
                effect = Effect(opaque=f"{routine.qualified} changes data or settings")
            else:
                effect = Effect(dict(inner.reads), frozenset(inner.tables | inner.indirect), frozenset(inner.functions),
                                frozenset(inner.flags), plans_code=inner.plans_code)
        self.schema.effects[key] = effect
        return effect

    # -- statements -------------------------------------------------------------------

    def statement(self, node: Any, scope: Scope | None = None) -> None:
        """Walk one statement node (or a nested query)."""
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is not None:
            method(node, scope)
        else:
            self.expression(node, scope or Scope([], None))

    def _with(self, with_clause: ast.WithClause | None, scope: Scope) -> None:
        if with_clause is None:
            return
        if with_clause.recursive:  # every CTE of WITH RECURSIVE is visible in every one of them
            for cte in with_clause.ctes or ():
                scope.ctes[cte.ctename or ""] = None
        for cte in with_clause.ctes or ():
            names: list[str | None] | None = ([n.sval or "" for n in cte.aliascolnames] if cte.aliascolnames
                                              else output_names(cte.ctequery))
            self.statement(cte.ctequery, Scope([], scope))
            self._rest(cte, scope, "ctequery", "ctename", "aliascolnames")
            scope.ctes[cte.ctename or ""] = names
            if isinstance(cte.ctequery, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)):
                self.modifies = True

    def _SelectStmt(self, node: ast.SelectStmt, outer: Scope | None) -> None:
        scope = Scope([], outer)
        self._with(node.withClause, scope)
        if node.larg is not None or node.rarg is not None:
            # A set operation: each side is its own query; ORDER BY/LIMIT name output columns.
            self.statement(node.larg, scope)
            self.statement(node.rarg, scope)
            for clause in (node.sortClause, node.limitCount, node.limitOffset):
                self.expression(clause, Scope([], scope), outputs_only=True)
            self._rest(node, scope, "withClause", "larg", "rarg", "sortClause", "limitCount", "limitOffset",
                       "intoClause")
            return
        for item in node.fromClause or ():
            scope.items.append(self.from_item(item, scope))
        for values in node.valuesLists or ():
            self.expression(values, scope)
        self.expression(node.targetList, scope)
        self.expression(node.whereClause, scope)
        self.expression(node.havingClause, scope)
        self.expression(node.windowClause, scope)
        self.expression(node.limitCount, scope)
        self.expression(node.limitOffset, scope)
        aliases = {t.name for t in node.targetList or () if isinstance(t, ast.ResTarget) and t.name}
        self.expression(node.groupClause, scope, aliases=aliases)
        # ORDER BY and DISTINCT ON a bare name pick an output column first (its value was counted
        # in the select list); any other expression, like GROUP BY, reads input columns.
        for sort in (*(node.sortClause or ()), *(d for d in node.distinctClause or () if d is not None)):
            target = getattr(sort, "node", sort)
            fields = (target.fields or ()) if isinstance(target, ast.ColumnRef) else ()
            if len(fields) == 1 and isinstance(fields[0], ast.String) and (fields[0].sval or "") in aliases:
                self._rest(sort, scope, "node")
                continue
            self.expression(sort, scope, aliases=aliases)
        for locking in node.lockingClause or ():
            # FOR UPDATE OF names FROM items: it locks their rows and reads no value.
            self._rest(locking, scope, "lockedRels")
        # INTO names the table SELECT INTO creates (the gate judges it as DDL).
        self._rest(node, scope, "withClause", "fromClause", "valuesLists", "targetList", "whereClause",
                   "havingClause", "windowClause", "limitCount", "limitOffset", "groupClause", "sortClause",
                   "distinctClause", "lockingClause", "intoClause")

    def _rest(self, node: Any, scope: Scope, *handled: str) -> None:
        """Walk every field of `node` that its rule did not (`handled`): a field no rule knows
        (a new clause, a pglast upgrade) is walked generically, never skipped."""
        for slot in node_fields(type(node)):
            if slot not in handled:
                child = getattr(node, slot, None)
                if isinstance(child, (ast.Node, list, tuple)):
                    self.expression(child, scope)

    def from_item(self, node: Any, scope: Scope) -> RangeItem:
        """Bring one FROM-list entry into scope. LATERAL is assumed everywhere (over-approximation)."""
        if isinstance(node, ast.RangeVar):
            if not node.schemaname and scope.cte(node.relname or ""):
                names = next(s.ctes[node.relname or ""] for s in scope.chain() if (node.relname or "") in s.ctes)
                item = RangeItem(node.relname or "", None,
                                 outputs=None if names is None else [(n, []) for n in names])
                return self._aliased(item, node.alias)
            relation = self.relation(node)
            item = RangeItem(relation.name, relation, {c: c for c in relation.columns},
                             schema_name=relation.schema)
            return self._aliased(item, node.alias)
        if isinstance(node, ast.RangeSubselect):
            self.statement(node.subquery, scope)
            columns = output_names(node.subquery)
            return self._aliased(RangeItem("", None, outputs=None if columns is None else [(n, []) for n in columns]),
                                 node.alias)
        if isinstance(node, ast.RangeFunction):
            self.expression(node.functions, scope)
            self._rest(node, scope, "functions", "alias")
            return self._aliased(RangeItem("", None), node.alias)
        if isinstance(node, ast.JoinExpr):
            return self._join(node, scope)
        if isinstance(node, ast.RangeTableSample):
            item = self.from_item(node.relation, scope)
            self._rest(node, Scope([item], scope), "relation", "method")  # args, REPEATABLE
            return item
        if isinstance(node, ast.RangeTableFunc):
            self._rest(node, scope, "alias")  # the document, row and column expressions, XMLNAMESPACES
            return self._aliased(RangeItem("", None), node.alias)
        raise Unresolved(f"FROM item {type(node).__name__} is not analysed by pgproxy")

    def _join(self, node: ast.JoinExpr, scope: Scope) -> RangeItem:
        left = self.from_item(node.larg, scope)
        right = self.from_item(node.rarg, Scope([left], scope))  # JOIN LATERAL sees its left side
        join_scope = Scope([left, right], scope)
        for using in node.usingClause or ():
            self.column_ref([using.sval or ""], join_scope)
        left_out, right_out = _outputs(left), _outputs(right)
        merged: list[str] | None = [u.sval or "" for u in node.usingClause or ()]
        if node.isNatural:
            known = left_out is not None and right_out is not None and all(n is not None for n, _ in left_out) \
                and all(n is not None for n, _ in right_out)
            merged = [n for n, _ in left_out or () if n is not None and any(n == r for r, _ in right_out or ())] \
                if known else None
        outputs: list[tuple[str | None, list[tuple[RangeItem, str]]]] | None = None
        if left_out is not None and right_out is not None and merged is not None:
            sides = [dict(reversed(left_out)), dict(reversed(right_out))]
            outputs = [(n, [*sides[0].get(n, []), *sides[1].get(n, [])]) for n in merged]
            outputs += [(n, src) for n, src in (*left_out, *right_out) if n not in merged]
        if node.isNatural:
            if outputs is not None and merged is not None:
                for _, sources in outputs[:len(merged)]:  # the common columns are compared
                    for source, column in sources:
                        self._item_column(source, column)
            else:
                for item in (left, right):  # columns pgproxy cannot list: count them all
                    if item.relation is not None:
                        self.read_all(item.relation)
        self.expression(node.quals, join_scope)
        self._rest(node, join_scope, "larg", "rarg", "usingClause", "quals", "alias", "join_using_alias")
        members = [left, right]
        if node.join_using_alias is not None and merged is not None and outputs is not None:
            # JOIN … USING (…) AS u: u names the join columns only.
            members.append(RangeItem(node.join_using_alias.aliasname or "", None,
                                     outputs=outputs[:len(merged)]))
        joined = RangeItem("", None, members=members, outputs=outputs)
        alias = node.alias or (node.join_using_alias if outputs is None else None)
        if alias is not None:
            joined.name = alias.aliasname or ""
            colnames = [n.sval or "" for n in alias.colnames or ()]
            if colnames:
                joined.renamed = True
                if outputs is None:
                    joined.opaque = True  # renamed columns pgproxy cannot count: any use is unknown
                else:
                    joined.outputs = [*((new, src) for new, (_, src) in zip(colnames, outputs, strict=False)),
                                      *outputs[len(colnames):]]
        return joined

    @staticmethod
    def _aliased(item: RangeItem, alias: ast.Alias | None) -> RangeItem:
        if alias is None:
            return item
        item.name = alias.aliasname or ""
        item.schema_name = None  # an alias hides the relation's own name
        colnames = [n.sval or "" for n in alias.colnames or ()]
        if colnames and item.relation is not None:
            # FROM customers AS c(a, b, e): the first columns are renamed in order.
            renamed = dict(zip(colnames, item.relation.columns, strict=False))
            rest = {c: c for c in item.relation.columns[len(renamed):]}
            item.visible = {**renamed, **rest}
        elif colnames and item.outputs is not None:  # a subquery's or CTE's columns, renamed in order
            item.outputs = [*((n, []) for n in colnames), *item.outputs[len(colnames):]]
        return item

    def _dml(self, node: Any, outer: Scope | None) -> tuple[Scope, Relation, RangeItem]:
        """The scope, target relation and target item of INSERT/UPDATE/DELETE/MERGE.

        The target is always a table, never a CTE of the same name (as in the server).
        """
        scope = Scope([], outer)
        self._with(node.withClause, scope)
        self.modifies = True
        if node.relation is None:
            raise Unresolved("the statement names no target table")
        relation = self.relation(node.relation)
        self.written(relation)
        if (relation.schema, relation.name) == ("pg_catalog", "pg_settings"):
            # Its rules call set_config() with values from the statement's rows.
            self.flags.add(Flag.UNREADABLE)
            self.unreadable = "pgproxy cannot allow this: writing pg_settings changes settings it cannot follow"
        item = RangeItem(relation.name, relation, {c: c for c in relation.columns}, schema_name=relation.schema)
        return scope, relation, self._aliased(item, node.relation.alias)

    def _InsertStmt(self, node: ast.InsertStmt, outer: Scope | None) -> None:
        scope, relation, target = self._dml(node, outer)
        columns = [c.name or "" for c in node.cols] if node.cols else list(relation.columns)
        for column in columns:
            if column not in relation.columns:
                raise Unresolved(f'column "{column}" does not exist in {relation.qualified}')
            self.write(relation, column)
        if node.selectStmt is not None:
            self.statement(node.selectStmt, scope)
        target_scope = Scope([target], scope)
        for col in node.cols or ():
            self._rest(col, target_scope, "name", "val")  # subscripts: INSERT INTO t (a[(SELECT …)])
        if node.onConflictClause is not None:
            clause = node.onConflictClause
            # "excluded" is the row proposed for insertion: a second view of the target.
            excluded = RangeItem("excluded", relation, {c: c for c in relation.columns})
            conflict_scope = Scope([target, excluded], scope)
            for res in clause.targetList or ():
                self._set_target(relation, res, conflict_scope)
            self.expression(clause.whereClause, conflict_scope)
            if clause.infer is not None:
                self.expression(clause.infer, target_scope, aliases=set(relation.columns))
            self._rest(clause, conflict_scope, "targetList", "whereClause", "infer")
        self._returning(node, target_scope)
        self._rest(node, target_scope, "relation", "cols", "selectStmt", "onConflictClause", "returningList",
                   "returningClause", "withClause")

    def _set_target(self, relation: Relation, res: ast.ResTarget, scope: Scope) -> None:
        """SET column = value (or (a, b) = (SELECT …)): the column is written, the value read."""
        column = res.name or ""
        if column not in relation.columns:
            raise Unresolved(f'column "{column}" does not exist in {relation.qualified}')
        self.write(relation, column)
        self.expression(res.indirection, scope)
        value = res.val.source if isinstance(res.val, ast.MultiAssignRef) else res.val
        self.expression(value, scope)

    def _returning(self, node: Any, scope: Scope) -> None:
        self.expression(getattr(node, "returningList", None), scope)
        self.expression(getattr(node, "returningClause", None), scope)  # every field of it

    def _UpdateStmt(self, node: ast.UpdateStmt, outer: Scope | None) -> None:
        scope, relation, target = self._dml(node, outer)
        scope.items.append(target)
        for item in node.fromClause or ():
            scope.items.append(self.from_item(item, scope))
        for res in node.targetList or ():
            self._set_target(relation, res, scope)
        if node.whereClause is None:
            self.flags.add(Flag.UNBOUNDED_WRITE)
        self.expression(node.whereClause, scope)
        self._returning(node, scope)
        self._rest(node, scope, "relation", "fromClause", "targetList", "whereClause", "returningList",
                   "returningClause", "withClause")

    def _DeleteStmt(self, node: ast.DeleteStmt, outer: Scope | None) -> None:
        scope, relation, target = self._dml(node, outer)
        scope.items.append(target)
        for item in node.usingClause or ():
            scope.items.append(self.from_item(item, scope))
        for column in relation.columns:  # removing a row removes every value in it
            self.write(relation, column)
        if node.whereClause is None:
            self.flags.add(Flag.UNBOUNDED_WRITE)
        self.expression(node.whereClause, scope)
        self._returning(node, scope)
        self._rest(node, scope, "relation", "usingClause", "whereClause", "returningList", "returningClause",
                   "withClause")

    def _MergeStmt(self, node: ast.MergeStmt, outer: Scope | None) -> None:
        scope, relation, target = self._dml(node, outer)
        scope.items += [target, self.from_item(node.sourceRelation, scope)]
        for column in relation.columns:
            self.write(relation, column)
        self.expression(node.joinCondition, scope)
        for clause in node.mergeWhenClauses or ():
            self.expression(clause.condition, scope)
            for res in clause.targetList or ():
                self._rest(res, scope, "name")  # the value, and subscripts of the column set
            self.expression(clause.values, scope)
            self._rest(clause, scope, "condition", "targetList", "values")
        self._returning(node, scope)
        self._rest(node, scope, "relation", "sourceRelation", "joinCondition", "mergeWhenClauses", "returningList",
                   "returningClause", "withClause")

    # -- expressions ------------------------------------------------------------------

    def expression(self, node: Any, scope: Scope | None, *, aliases: set[str] | frozenset[str] = frozenset(),
                   outputs_only: bool = False) -> None:
        """Walk an expression (or a list of them), resolving every reference in `scope`."""
        if node is None:
            return
        scope = scope or Scope([], None)
        if isinstance(node, (list, tuple)):
            for child in node:
                self.expression(child, scope, aliases=aliases, outputs_only=outputs_only)
            return
        if not isinstance(node, ast.Node):
            return
        if isinstance(node, ast.ColumnRef):
            names = [(f.sval or "") if isinstance(f, ast.String) else "*" for f in node.fields or ()]
            if outputs_only:
                return  # a set operation's ORDER BY names its output columns
            try:
                self.column_ref(names, scope)
            except Unresolved:
                # Only a name that matches no input column can be an output alias (ORDER BY / GROUP BY).
                # Resolving input columns first over-approximates ORDER BY, never misses GROUP BY.
                if len(names) == 1 and names[0] in aliases:
                    return
                raise
            return
        if isinstance(node, (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)):
            self.statement(node, scope)
            return
        if isinstance(node, ast.FuncCall):
            self.function(node)
        elif isinstance(node, ast.A_Expr):
            self.operator(node.name)
        elif isinstance(node, ast.TypeCast):
            self.type_cast(node.typeName)
        elif isinstance(node, ast.RangeVar):
            # A relation where no rule expects one: what the statement does with it is unknown.
            raise Unresolved(f'pgproxy does not know how the statement uses relation "{node.relname}"')
        for slot in node_fields(type(node)):
            child = getattr(node, slot, None)
            if isinstance(child, (ast.Node, list, tuple)):
                self.expression(child, scope, aliases=aliases, outputs_only=outputs_only)

    def column_ref(self, names: list[str], scope: Scope) -> None:
        if len(names) == 1:
            self._unqualified(names[0], scope)
            return
        *qualifier, column = names
        item = self._find_item(qualifier, scope)
        if item is None and len(qualifier) == 1 and qualifier[0] in self.qualifiers:
            return  # a routine's record field, or a parameter or variable named with its function or block
        if item is None:
            raise Unresolved(f'reference "{".".join(names)}" names no table in scope')
        self._item_column(item, column)

    def _find_item(self, qualifier: list[str], scope: Scope) -> RangeItem | None:
        for level in scope.chain():
            for item in self._flatten(level.items):
                if len(qualifier) == 1 and item.name == qualifier[0]:
                    return item
                if (len(qualifier) >= 2 and item.relation is not None and item.schema_name == qualifier[-2]
                        and item.name == qualifier[-1]):
                    return item
        return None

    def _flatten(self, items: list[RangeItem]) -> Iterator[RangeItem]:
        for item in items:
            yield item
            yield from self._flatten(item.members)

    def _item_column(self, item: RangeItem, column: str) -> None:
        if item.opaque and column != "*":
            raise Unresolved(f'"{item.name}.{column}" renames a column pgproxy cannot trace to its table')
        if item.relation is None and item.outputs is not None and column != "*" and (item.renamed or not item.members):
            for name, sources in item.outputs:
                if name == column:
                    for source, base in sources:
                        self._item_column(source, base)
                    return
            if item.members:
                raise Unresolved(f'column "{item.name}.{column}" is not known to pgproxy')
            return  # a derived table's column: counted where it was read
        if item.members:
            for member in self._flatten(item.members):
                if member.relation is not None and (column == "*" or column in member.visible):
                    self._item_column(member, column)
            return
        if item.relation is None:
            return  # a derived table: its values were counted where they were read
        if column == "*":
            self.read_all(item.relation)
        elif column in item.visible:
            self.read(item.relation, item.visible[column])
        else:
            raise Unresolved(f'column "{item.name}.{column}" does not exist in {item.relation.qualified}')

    def _unqualified(self, name: str, scope: Scope) -> None:
        if name == "*":
            for item in self._flatten(scope.items):
                if item.relation is not None:
                    self.read_all(item.relation)
            return
        found = False
        derived = False
        for level in scope.chain():
            for item in self._flatten(level.items):
                if item.relation is not None and name in item.visible:
                    self.read(item.relation, item.visible[name])
                    found = True
                elif item.renamed and item.outputs is not None:
                    for output, sources in item.outputs:
                        if output == name:  # a join's column under the name its alias list gives it
                            for source, base in sources:
                                self._item_column(source, base)
                            found = True
                elif item.opaque:
                    raise Unresolved(f'"{item.name}" renames columns pgproxy cannot trace to their tables')
                elif item.relation is None and not item.members:
                    derived = True
        if found:
            return
        # A bare table name or alias is a whole-row reference: every column of it.
        for level in scope.chain():
            for item in self._flatten(level.items):
                if item.name == name:
                    self._item_column(item, "*")
                    return
        if not derived and name not in self.names:  # a routine's parameter or variable: a value
            raise Unresolved(f'column "{name}" is not known to pgproxy')

    def type_cast(self, type_name: ast.TypeName | None) -> None:
        """A cast to a type (or an array of it) runs its user cast functions and, for a domain, its
        constraints' functions. Matched by the type's name in any schema: a user type named like
        another counts the functions of both."""
        if type_name is None or not self.schema.type_calls:
            return
        names = [n.sval or "" for n in type_name.names or () if isinstance(n, ast.String)]
        for schema_name, function in sorted(self.schema.type_calls.get(names[-1] if names else "", ())):
            self.call(schema_name, function)

    def function(self, node: ast.FuncCall) -> None:
        names = [n.sval or "" for n in node.funcname or ()]
        name = names[-1]
        schema = names[-2] if len(names) > 1 else None
        schemas = self.schema.function_schemas(name)
        # The server picks among the overloads of every schema on the path by argument types,
        # which pgproxy does not know: each schema that defines one may be the one that runs.
        path = self.search_path if "pg_catalog" in self.search_path else ("pg_catalog", *self.search_path)
        candidates = [s for s in ((schema,) if schema is not None else path) if s in schemas]
        self.functions.add(f"{candidates[0]}.{name}" if candidates else ".".join(names))
        if not candidates:
            if name in SERVER_ACCESS_FUNCTIONS or name in SQL_FROM_STRING_FUNCTIONS:
                # An extension's (dblink, adminpack) that is not installed here: the name says enough.
                self.flags.add(Flag.SERVER_ACCESS if name in SERVER_ACCESS_FUNCTIONS else Flag.SQL_FROM_STRING)
                return
            raise Unresolved(f'function "{".".join(names)}" is not known to pgproxy')
        for resolved in candidates:
            if resolved not in SYSTEM_SCHEMAS:
                self.call(resolved, name)
            elif name in SERVER_ACCESS_FUNCTIONS:
                self.flags.add(Flag.SERVER_ACCESS)
            elif name in SQL_FROM_STRING_FUNCTIONS:
                self.flags.add(Flag.SQL_FROM_STRING)
            elif name in ADMIN_FUNCTIONS:
                self.flags.add(Flag.ADMIN)
            elif name == "set_config":
                self._set_config(node)

    def _set_config(self, node: ast.FuncCall) -> None:
        self.literal_sensitive = True
        args = list(node.args or ())
        setting = _string_constant(args[0]) if args else None
        if setting is not None:
            setting = setting.strip().lower()
        if setting == "search_path":
            raise Unresolved("a search_path changed through set_config() is not tracked by pgproxy")
        if setting is None or setting in _SET_CONFIG_GUARDED:
            self.flags.add(Flag.SERVER_ACCESS)
        if setting is None or setting in LEXING_SETTINGS:
            value = _string_constant(args[1]) if len(args) > 1 else None
            refused = ("pgproxy cannot tell which setting set_config() changes" if setting is None
                       else f"pgproxy cannot tell the value set_config() gives {setting}" if value is None
                       else setting_refusal(setting, value))
            if refused is not None:
                self.flags.add(Flag.UNREADABLE)
                self.unreadable = refused if refused.startswith("pgproxy") else f"pgproxy cannot allow this: {refused}"
            self.lexing = True

    def operator(self, name: tuple[Any, ...] | None) -> None:
        if not name:
            return
        parts = [n.sval or "" for n in name if isinstance(n, ast.String)]
        symbol = parts[-1] if parts else ""
        if (len(parts) > 1 and parts[-2] not in SYSTEM_SCHEMAS) or symbol in self.schema.user_operators:
            self.flags.add(Flag.RUNS_CODE)
