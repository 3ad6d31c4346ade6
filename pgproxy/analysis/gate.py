"""The gate: PostgreSQL's own grammar (libpg_query, through pglast) splits a query
string into statements and says what kind each one is; the reference walker
resolves what each touches; sqlglot cross-checks the tables. Anything either
parser fails on, or where they disagree, is UNKNOWN (the policy reviews it).

>>> from pgproxy.analysis.schema import Schema
>>> empty = Schema({}, {}, frozenset(), ("public",), "v0")
>>> [a.kind.value for a in analyze("BEGIN; SHOW TimeZone", empty)]
['transaction', 'session']
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import pglast
from pglast import ast
from pglast.enums import DiscardMode, SortByDir, TransactionStmtKind, VariableSetKind
from pglast.parser import ParseError
from pglast.stream import RawStream

from pgproxy.analysis.crosscheck import CANNOT_READ, crosscheck_tables
from pgproxy.analysis.masking import copy_output, select_unmaskable
from pgproxy.analysis.model import Analysis, ColumnKey, Flag, Kind
from pgproxy.analysis.references import RangeItem, References, Scope, Unresolved, descendants, node_fields
from pgproxy.analysis.routines import Opaque, statement_body
from pgproxy.analysis.schema import SYSTEM_SCHEMAS, Schema
from pgproxy.protocol.lexing import LEXING_SETTINGS, setting_refusal
from pgproxy.protocol.objects import OpKind, SessionOp

_DML = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)

# Statement node -> (command shown to people, kind). Node types not listed are UNKNOWN.
_UTILITY: dict[type[Any], tuple[str, Kind]] = {
    ast.TransactionStmt: ("TRANSACTION", Kind.TRANSACTION),
    ast.VariableShowStmt: ("SHOW", Kind.SESSION),
    ast.DiscardStmt: ("DISCARD", Kind.SESSION),
    ast.DeallocateStmt: ("DEALLOCATE", Kind.SESSION),
    ast.ListenStmt: ("LISTEN", Kind.UTILITY),
    ast.UnlistenStmt: ("UNLISTEN", Kind.UTILITY),
    ast.NotifyStmt: ("NOTIFY", Kind.UTILITY),
    ast.FetchStmt: ("FETCH", Kind.UTILITY),  # what it runs is judged when it runs (see SessionOp)
    ast.ClosePortalStmt: ("CLOSE", Kind.UTILITY),
    ast.ConstraintsSetStmt: ("SET CONSTRAINTS", Kind.TRANSACTION),
    ast.LockStmt: ("LOCK", Kind.UTILITY),
    ast.VacuumStmt: ("VACUUM", Kind.UTILITY),
    ast.CheckPointStmt: ("CHECKPOINT", Kind.UTILITY),
    ast.GrantStmt: ("GRANT", Kind.GRANT),
    ast.GrantRoleStmt: ("GRANT ROLE", Kind.GRANT),
    ast.AlterDefaultPrivilegesStmt: ("ALTER DEFAULT PRIVILEGES", Kind.GRANT),
    ast.CreateRoleStmt: ("CREATE ROLE", Kind.ROLE),
    ast.AlterRoleStmt: ("ALTER ROLE", Kind.ROLE),
    ast.AlterRoleSetStmt: ("ALTER ROLE SET", Kind.ROLE),
    ast.DropRoleStmt: ("DROP ROLE", Kind.ROLE),
    ast.ReassignOwnedStmt: ("REASSIGN OWNED", Kind.ROLE),
    ast.DropOwnedStmt: ("DROP OWNED", Kind.ROLE),
}
_DDL_PREFIXES = ("Create", "Alter", "Drop", "Define", "Rename", "Comment", "Truncate", "Index",
                 "View", "Reindex", "Cluster", "RefreshMatView", "Rule", "SecLabel", "Import",
                 "CompositeType")
# Utility statements that reach the server's files or configuration.
_SERVER_ACCESS_NODES = (ast.AlterSystemStmt, ast.LoadStmt, ast.CreateTableSpaceStmt,
                        ast.CreateUserMappingStmt, ast.AlterUserMappingStmt, ast.CreateSubscriptionStmt)


@dataclass(slots=True)
class Context:
    """What a statement's meaning depends on besides its text."""

    schema: Schema
    search_path: tuple[str, ...] | None = None  # the session's, when it changed it
    allowed_functions: frozenset[str] = frozenset()  # user functions/procedures allow-listed
    nested: bool = False  # analysing the query inside another statement

    def crosscheck_text(self, text: str, node: Any) -> str:
        """What the second parser reads: the statement as sent, or the nested query re-printed."""
        return RawStream()(node) if self.nested else text

    @property
    def path(self) -> tuple[str, ...]:
        return self.search_path if self.search_path is not None else self.schema.search_path


def analyze(sql: str, schema: Schema, *, search_path: tuple[str, ...] | None = None,
            allowed_functions: frozenset[str] = frozenset()) -> list[Analysis]:
    """Analyse every statement of a query string (one Analysis each; one UNKNOWN if it does not parse).

    What a statement does to the session's objects (PREPARE, DECLARE, EXECUTE, FETCH, CLOSE,
    transaction control...) is its `op`; what an EXECUTE or FETCH runs is resolved by the
    session when it runs (the protocol model knows what the name then stands for)."""
    context = Context(schema, search_path, allowed_functions)
    try:
        parsed = pglast.parse_sql(sql)
        texts = pglast.split(sql) if len(parsed) > 1 else [sql.strip().rstrip(";").strip()]
    except pglast.parser.ParseError as exc:
        return [unknown(sql, "?", f"syntax error: {exc}")]
    if len(texts) != len(parsed):
        return [unknown(sql, "?", "statement boundaries are ambiguous")]
    if not sql.isascii() and _long_identifier(sql):
        return [unknown(sql, "?", "an identifier with non-ASCII characters is longer than 63 bytes: PostgreSQL "
                                  "truncates it to a length that depends on the server's encoding")]
    results: list[Analysis] = []
    for raw, text in zip(parsed, texts, strict=True):
        # Later statements of one query string see what earlier ones did to the session.
        analysis = analyze_node(raw.stmt, text, context)
        results.append(analysis)
        if analysis.search_path is not None:
            context = replace(context, search_path=analysis.search_path)
    return results


_NAMEDATALEN = 63  # bytes of an identifier PostgreSQL keeps


def _long_identifier(sql: str) -> bool:
    """Whether an identifier is long enough to be truncated (in UTF-8; the server truncates in its
    own encoding, where a non-ASCII character may take another number of bytes)."""
    for token in pglast.parser.scan(sql):
        if token.name in ("IDENT", "UIDENT") and len(sql[token.start:token.end + 1].encode()) > _NAMEDATALEN:
            return True
    return False


def unknown(sql: str, command: str, reason: str, **extra: Any) -> Analysis:
    return Analysis(sql=sql, command=command, kind=Kind.UNKNOWN, reasons=(reason,), **extra)


def analyze_node(node: Any, text: str, context: Context, *, nested: bool = False) -> Analysis:
    """Analyse one parsed statement (`nested`: the query inside EXPLAIN, PREPARE, COPY…)."""
    command = _command(node)
    try:
        analysis = _analyze(node, text, command, replace(context, nested=nested))
        if _is_ddl(node):
            analysis = replace(analysis, ddl_targets=_ddl_targets(node, context),
                               derives=_derives(node, analysis, context))
        op = _session_op(node, text)
        return analysis if op is None else replace(analysis, op=op)
    except Unresolved as exc:
        return unknown(text, command, str(exc))
    except RecursionError:
        return unknown(text, command, "statement is nested too deeply to analyse")
    except Exception as exc:  # a node shape the walker did not expect: fail closed, never crash
        return unknown(text, command, f"pgproxy could not analyse this statement ({type(exc).__name__})")


def _walk(text: str, command: str, kind: Kind, context: Context, *nodes: Any,
          check_tables: bool = True) -> Analysis:
    refs = References(context.schema, context.path, context.allowed_functions)
    for node in nodes:
        if isinstance(node, _DML):
            refs.statement(node, Scope([], None))
        else:
            refs.expression(node, None)
    if refs.modifies and kind is Kind.READ:
        kind = Kind.WRITE  # a data-modifying CTE
    found = Analysis(sql=text, command=command, kind=kind, tables=frozenset(refs.tables | refs.indirect),
                     reads=refs.reads, writes=refs.writes, functions=frozenset(refs.functions),
                     flags=frozenset(refs.flags), literal_sensitive=refs.literal_sensitive, lexing=refs.lexing,
                     calls_code=refs.plans_code,
                     reasons=(refs.unreadable,) if refs.unreadable else ())
    if check_tables:
        catalog_only = not refs.flags and all(f.split(".", 1)[0] in SYSTEM_SCHEMAS for f in refs.functions)
        disagreement = crosscheck_tables(context.crosscheck_text(text, nodes[0]), refs.tables, context,
                                         catalog_only=catalog_only)
        if disagreement is not None and disagreement.startswith(CANNOT_READ):
            simpler = _for_sqlglot(nodes[0])
            if simpler is not None:  # the same statement without syntax sqlglot does not know
                disagreement = crosscheck_tables(RawStream()(simpler), refs.tables, context,
                                                 catalog_only=catalog_only)
        if disagreement is not None:
            # Unknown, but keeping what was found: a rule that denies on it still applies.
            return replace(found, kind=Kind.UNKNOWN, reasons=(*found.reasons, disagreement))
    return found


def _for_sqlglot(node: Any) -> Any | None:
    """A copy of `node` without the syntax sqlglot cannot parse and that names no table
    (``ORDER BY x USING <``, ``JOIN … USING (…) AS u``), or None when it has none."""
    copied = copy.deepcopy(node)
    changed = False
    for current in descendants(copied):
        if isinstance(current, ast.SortBy) and current.useOp is not None:
            current.useOp = None
            current.sortby_dir = SortByDir.SORTBY_DEFAULT
            changed = True
        elif isinstance(current, ast.JoinExpr) and current.join_using_alias is not None:
            current.join_using_alias = None
            changed = True
    return copied if changed else None


def _analyze(node: Any, text: str, command: str, context: Context) -> Analysis:
    if isinstance(node, ast.SelectStmt):
        if node.intoClause is not None:
            return _walk(text, "SELECT INTO", Kind.DDL, context, node)
        found = _walk(text, command, Kind.READ, context, node)
        if found.kind is not Kind.READ:
            return found
        return replace(found, unmaskable=select_unmaskable(node, found, context.schema, context.path,
                                                           context.allowed_functions))
    if isinstance(node, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)):
        return _walk(text, command, Kind.WRITE, context, node)
    if isinstance(node, ast.CopyStmt):
        return _copy(node, text, context)
    if isinstance(node, ast.ExplainStmt):
        return _explain(node, text, context)
    if isinstance(node, ast.PrepareStmt):
        # Preparing runs nothing: the query is judged at each EXECUTE of the name.
        inner = analyze_node(node.query, text, context, nested=True)
        return Analysis(sql=text, command="PREPARE", kind=Kind.SESSION, literal_sensitive=True,
                        stored=replace(inner, command=f"PREPARE ({inner.command})"))
    if isinstance(node, ast.ExecuteStmt):
        # What it runs is the prepared statement the name stands for when it runs; here only
        # its own parameters (expressions, subqueries included) are read.
        params = _walk(text, command, Kind.UTILITY, context, node.params or (), check_tables=False)
        return replace(params, literal_sensitive=True)
    if isinstance(node, ast.DeclareCursorStmt):
        inner = replace(analyze_node(node.query, text, context, nested=True), command="DECLARE CURSOR")
        if (node.options or 0) & _CURSOR_OPT_HOLD or planning_runs_code(inner):
            # A WITH HOLD cursor runs its query to the end when its transaction commits; and
            # DECLARE plans the query, which evaluates functions the planner may fold.
            return replace(inner, stored=inner)
        # Declaring runs nothing else: the query is judged at each FETCH or MOVE of the cursor.
        return Analysis(sql=text, command="DECLARE CURSOR", kind=Kind.SESSION, literal_sensitive=True,
                        stored=inner)
    if isinstance(node, (ast.CreateTableAsStmt, ast.ViewStmt)):
        return _walk(text, command, Kind.DDL, replace(context, nested=True), node.query)
    if isinstance(node, ast.VariableSetStmt):
        return _set(node, text, context)
    if isinstance(node, ast.DiscardStmt) and node.target == DiscardMode.DISCARD_ALL:
        # DISCARD ALL resets every setting, client_encoding included.
        return Analysis(sql=text, command=command, kind=Kind.SESSION, literal_sensitive=True,
                        search_path=context.schema.search_path, lexing=True)
    if isinstance(node, ast.DoStmt):
        return replace(unknown(text, command, "DO runs code pgproxy cannot see"),
                       flags=frozenset({Flag.RUNS_CODE}))
    if isinstance(node, ast.CallStmt):
        return _walk(text, command, Kind.UTILITY, context, node.funccall, check_tables=False)
    if isinstance(node, (ast.AlterRoleSetStmt, ast.AlterDatabaseSetStmt)) and node.setstmt is not None:
        setting = node.setstmt
        if (setting.name or "").lower() in LEXING_SETTINGS:
            found = _set_lexing(setting, (setting.name or "").lower(), text)
            if Flag.UNREADABLE in found.flags:  # later sessions: pgproxy would refuse them at connect
                return replace(found, command=command, kind=_UTILITY.get(type(node), ("", Kind.DDL))[1])
    if isinstance(node, _SERVER_ACCESS_NODES):
        return Analysis(sql=text, command=command, kind=Kind.DDL, flags=frozenset({Flag.SERVER_ACCESS}),
                        literal_sensitive=True)
    if type(node) in _UTILITY:
        kind = _UTILITY[type(node)][1]
        return Analysis(sql=text, command=command, kind=kind, literal_sensitive=True)
    if type(node).__name__.startswith(_DDL_PREFIXES):
        return _ddl(node, text, command, context)
    return unknown(text, command, f"pgproxy does not know what {command} does", literal_sensitive=True)


_CURSOR_OPT_HOLD = 0x0020  # PostgreSQL's parsenodes.h


def planning_runs_code(analysis: Analysis) -> bool:
    """Whether planning the statement may run user code that must be judged first: the planner
    folds immutable functions and estimates with stable ones, before the statement executes
    (and before any row a result guard could check; an error message can carry what a function
    read). That is code pgproxy cannot see, a user function not allow-listed, or one whose body
    reads tagged columns; and planning a statement pgproxy cannot read (kind UNKNOWN)."""
    return Flag.RUNS_CODE in analysis.flags or analysis.kind is Kind.UNKNOWN or analysis.calls_code


def _ddl(node: Any, text: str, command: str, context: Context) -> Analysis:
    """DDL is judged by its kind; queries it keeps to run later (a rule's condition and actions,
    a policy's USING and WITH CHECK, a SQL function's body, a trigger's WHEN) still count what
    they read. Names they take from their context (NEW, OLD, the policy's table, parameters)
    are not resolved here: such a statement is unknown."""
    if isinstance(node, ast.CreateFunctionStmt):
        return _create_function(node, text, command, context)
    kept = _kept_queries(node)
    computed = _column_expressions(node)
    if not kept and not computed:
        return Analysis(sql=text, command=command, kind=Kind.DDL, literal_sensitive=True)
    refs = References(context.schema, context.path, context.allowed_functions)
    for query in kept:
        try:
            refs.statement(query, Scope([], None))
        except Unresolved as exc:
            return unknown(text, command, f"a query this {command} keeps: {exc}", literal_sensitive=True)
    if computed:
        # Generated, default and CHECK expressions of ALTER TABLE read the table's columns: a
        # generated column copies what it reads (it inherits the tags once it exists).
        try:
            relation = refs.relation(node.relation)
            item = RangeItem(relation.name, relation, {c: c for c in relation.columns}, schema_name=relation.schema)
            refs.expression(computed, Scope([item], None))
        except Unresolved as exc:
            return unknown(text, command, f"an expression this {command} stores: {exc}", literal_sensitive=True)
    return Analysis(sql=text, command=command, kind=Kind.DDL, tables=frozenset(refs.tables | refs.indirect),
                    reads=refs.reads, writes=refs.writes, functions=frozenset(refs.functions),
                    flags=frozenset(refs.flags), literal_sensitive=True)


def _create_function(node: ast.CreateFunctionStmt, text: str, command: str, context: Context) -> Analysis:
    """CREATE FUNCTION/PROCEDURE counts what its body reads (SQL or PL/pgSQL, names resolved
    as they will be when a statement calls it: on the function's own search_path, or the
    caller's, which is this session's for all pgproxy can tell)."""
    try:
        found = statement_body(node, text)
    except (Opaque, ParseError) as exc:
        return Analysis(sql=text, command=command, kind=Kind.DDL, literal_sensitive=True,
                        reasons=(f"pgproxy cannot read what its body does: {exc}",))
    refs = References(context.schema, found.search_path if found.search_path is not None else context.path,
                      context.allowed_functions, names=found.names, qualifiers=found.qualifiers)
    try:
        for query in found.queries:
            refs.statement(query, Scope([], None))
    except Unresolved as exc:
        return unknown(text, command, f"a query in its body: {exc}", literal_sensitive=True)
    return Analysis(sql=text, command=command, kind=Kind.DDL, tables=frozenset(refs.tables | refs.indirect),
                    reads=refs.reads, functions=frozenset(refs.functions), flags=frozenset(refs.flags),
                    literal_sensitive=True)


def _column_expressions(node: Any) -> list[Any]:
    """The generated, default and CHECK expressions an ALTER TABLE adds."""
    if not isinstance(node, ast.AlterTableStmt) or node.relation is None:
        return []
    found: list[Any] = []
    for cmd in node.cmds or ():
        definition = getattr(cmd, "def_", None)
        constraints = (definition.constraints or () if isinstance(definition, ast.ColumnDef)
                       else (definition,) if isinstance(definition, ast.Constraint) else ())
        found += [c.raw_expr for c in constraints if isinstance(c, ast.Constraint) and c.raw_expr is not None]
        if isinstance(definition, ast.ColumnDef) and definition.raw_default is not None:
            found.append(definition.raw_default)
        if not isinstance(definition, (ast.ColumnDef, ast.Constraint)) and isinstance(definition, ast.Node):
            found.append(definition)  # SET DEFAULT / SET EXPRESSION: the expression itself
    return found


def _is_ddl(node: Any) -> bool:
    return (type(node).__name__.startswith(_DDL_PREFIXES) or isinstance(node, (ast.CreateTableAsStmt, ast.ViewStmt))
            or (isinstance(node, ast.SelectStmt) and node.intoClause is not None))


def _ddl_targets(node: Any, context: Context) -> frozenset[str]:
    """The relations and functions a DDL statement names (it may create, change or drop them),
    as schema.name: statements that use them wait for the schema DDL makes (see enforce)."""
    names = [(current.schemaname or None, current.relname or "") for current in descendants(node)
             if isinstance(current, ast.RangeVar)]
    if isinstance(node, ast.DropStmt):
        for dropped in node.objects or ():  # DROP TABLE s.t: each object a list of names
            if isinstance(dropped, (list, tuple)) and dropped and all(isinstance(p, ast.String) for p in dropped):
                parts = [p.sval or "" for p in dropped]
                names.append((parts[-2] if len(parts) > 1 else None, parts[-1]))
    found = {_relation_name(schema, name, context) for schema, name in names}
    # Functions: CREATE [OR REPLACE] FUNCTION f, and ALTER, DROP, RENAME … FUNCTION f(args). An
    # unqualified name may be any schema's that defines one, or the schema CREATE puts it in.
    routines = [current.objname for current in descendants(node) if isinstance(current, ast.ObjectWithArgs)]
    if isinstance(node, ast.CreateFunctionStmt):
        routines.append(node.funcname)
    for objname in routines:
        words = [p.sval or "" for p in objname or () if isinstance(p, ast.String)]
        if not words:
            continue
        schemas = {words[-2]} if len(words) > 1 else {*context.schema.function_schemas(words[-1]),
                                                        (context.path or ("?",))[0]}
        found |= {f"{schema}.{words[-1]}" for schema in schemas}
    return frozenset(found)


def _relation_name(schema: str | None, name: str, context: Context) -> str:
    """schema.name of a relation a statement names (one it creates: in the path's first schema)."""
    relation = context.schema.lookup(schema, name, context.path)
    return relation.qualified if relation is not None else f"{schema or (context.path or ('?',))[0]}.{name}"


def _derives(node: Any, analysis: Analysis, context: Context) -> dict[str, frozenset[str]]:
    """What a DDL statement that reads tagged columns makes hold or return their values: the
    view, table or function it creates, the columns it gives a generated or default expression,
    the tables its rules and triggers write. Each carries every tag the statement reads."""
    tags = analysis.tags_read
    if not tags:
        return {}

    objects = {f"{k.schema}.{k.table}.{k.column}" for k in analysis.writes}
    into = (node.view if isinstance(node, ast.ViewStmt) else node.into.rel if isinstance(node, ast.CreateTableAsStmt)
            and node.into is not None else node.intoClause.rel if isinstance(node, ast.SelectStmt)
            and node.intoClause is not None else None)
    if isinstance(into, ast.RangeVar):
        objects.add(_relation_name(into.schemaname or None, into.relname or "", context))
    if isinstance(node, ast.CreateFunctionStmt):
        words = [p.sval or "" for p in node.funcname or () if isinstance(p, ast.String)]
        objects.add(f"{words[-2] if len(words) > 1 else (context.path or ('?',))[0]}.{words[-1]}()")
    if isinstance(node, ast.AlterTableStmt) and node.relation is not None:
        table = _relation_name(node.relation.schemaname or None, node.relation.relname or "", context)
        for cmd in node.cmds or ():
            definition = getattr(cmd, "def_", None)
            if isinstance(definition, ast.ColumnDef):  # ADD COLUMN c … DEFAULT / GENERATED ALWAYS AS
                stores = definition.raw_default is not None or any(
                    getattr(c, "raw_expr", None) is not None for c in definition.constraints or ())
                column = definition.colname if stores else None
            else:  # ALTER COLUMN c SET DEFAULT / SET EXPRESSION AS
                column = getattr(cmd, "name", None) if isinstance(definition, ast.Node) \
                    and not isinstance(definition, ast.Constraint) else None
            if column:
                objects.add(f"{table}.{column}")
    return dict.fromkeys(sorted(objects), tags)


def _kept_queries(node: Any) -> list[Any]:
    """The outermost queries and subqueries inside a DDL statement."""
    def below(current: ast.Node) -> Iterable[str]:
        if current is node:
            return node_fields(type(current))
        if isinstance(current, ast.SubLink):
            return ("testexpr",)  # `x IN (SELECT …)`: x belongs to the outer expression
        return () if isinstance(current, _DML) else node_fields(type(current))

    return [current.subselect if isinstance(current, ast.SubLink) else current for current in descendants(node, below)
            if current is not node and isinstance(current, (ast.SubLink, *_DML))]


def _session_op(node: Any, text: str) -> SessionOp | None:
    """What a statement does to the session's prepared statements, cursors and transaction."""
    if isinstance(node, ast.PrepareStmt):
        return SessionOp(OpKind.PREPARE, node.name or "", query=_text(node.query))
    if isinstance(node, ast.ExecuteStmt):
        return SessionOp(OpKind.EXECUTE, node.name or "")
    if isinstance(node, ast.DeallocateStmt):
        return SessionOp(OpKind.DEALLOCATE, node.name or "", all=bool(node.isall) or node.name is None)
    if isinstance(node, ast.DeclareCursorStmt):
        return SessionOp(OpKind.DECLARE, node.portalname or "", hold=bool((node.options or 0) & _CURSOR_OPT_HOLD),
                         query=_text(node.query))
    if isinstance(node, ast.FetchStmt):
        return SessionOp(OpKind.FETCH, node.portalname or "")
    if isinstance(node, ast.ClosePortalStmt):
        return SessionOp(OpKind.CLOSE, node.portalname or "", all=node.portalname is None)
    if isinstance(node, ast.DiscardStmt) and node.target == DiscardMode.DISCARD_ALL:
        return SessionOp(OpKind.DISCARD_ALL)
    if isinstance(node, ast.ExplainStmt) and _explain_runs(node) and isinstance(node.query, ast.ExecuteStmt):
        return SessionOp(OpKind.EXECUTE, node.query.name or "")  # EXPLAIN ANALYZE EXECUTE x runs x
    if isinstance(node, ast.TransactionStmt):
        kind = node.kind
        chain = bool(node.chain)
        if kind in (TransactionStmtKind.TRANS_STMT_BEGIN, TransactionStmtKind.TRANS_STMT_START):
            return SessionOp(OpKind.BEGIN)
        if kind == TransactionStmtKind.TRANS_STMT_COMMIT:
            return SessionOp(OpKind.COMMIT, chain=chain)
        if kind == TransactionStmtKind.TRANS_STMT_ROLLBACK:
            return SessionOp(OpKind.ROLLBACK, chain=chain)
        if kind == TransactionStmtKind.TRANS_STMT_PREPARE:
            return SessionOp(OpKind.PREPARE_TRANSACTION)
        name = node.savepoint_name or ""
        if kind == TransactionStmtKind.TRANS_STMT_SAVEPOINT:
            return SessionOp(OpKind.SAVEPOINT, name)
        if kind == TransactionStmtKind.TRANS_STMT_RELEASE:
            return SessionOp(OpKind.RELEASE, name)
        if kind == TransactionStmtKind.TRANS_STMT_ROLLBACK_TO:
            return SessionOp(OpKind.ROLLBACK_TO, name)
    return None


def _text(query: Any) -> str:
    """The text of a query PREPARE or DECLARE keeps, as PostgreSQL's grammar prints it."""
    return RawStream()(query) if query is not None else ""


def _explain_runs(node: ast.ExplainStmt) -> bool:
    return any(opt.defname == "analyze" and (opt.arg is None or _truthy(opt.arg)) for opt in node.options or ())


def _copy(node: ast.CopyStmt, text: str, context: Context) -> Analysis:
    flags = frozenset({Flag.SERVER_ACCESS}) if node.filename is not None or node.is_program else frozenset()
    kind = Kind.COPY_FROM if node.is_from else Kind.COPY_TO
    if node.query is not None:
        inner = _walk(text, "COPY", kind, replace(context, nested=True), node.query)
        found = replace(inner, kind=kind if inner.kind is not Kind.UNKNOWN else Kind.UNKNOWN,
                        flags=inner.flags | flags, literal_sensitive=True)
        if kind is Kind.COPY_TO and inner.kind is not Kind.UNKNOWN and isinstance(node.query, ast.SelectStmt):
            return _copy_maskable(node, found, select_unmaskable(node.query, inner, context.schema, context.path,
                                                                 context.allowed_functions), context)
        return found
    refs = References(context.schema, context.path, context.allowed_functions)
    try:
        if node.relation is None:
            raise Unresolved("COPY names neither a table nor a query")
        relation = refs.relation(node.relation)
        if node.is_from:
            refs.written(relation)  # its rules, triggers, defaults… run on each row
        columns = [c.sval for c in node.attlist] if node.attlist else list(relation.columns)
        for column in columns:
            if column not in relation.columns:
                raise Unresolved(f'column "{column}" does not exist in {relation.qualified}')
            (refs.write if node.is_from else refs.read)(relation, column)
        if node.whereClause is not None:
            item = RangeItem(relation.name, relation, {c: c for c in relation.columns})
            refs.expression(node.whereClause, Scope([item], None))
    except Unresolved as exc:
        return unknown(text, "COPY", str(exc))
    found = Analysis(sql=text, command="COPY", kind=kind, tables=frozenset(refs.tables | refs.indirect),
                     reads=refs.reads, writes=refs.writes, functions=frozenset(refs.functions),
                     flags=frozenset(refs.flags) | flags, literal_sensitive=True)
    return _copy_maskable(node, found, None, context) if kind is Kind.COPY_TO else found


def _copy_maskable(node: ast.CopyStmt, found: Analysis, problem: str | None, context: Context) -> Analysis:
    """A COPY TO STDOUT whose query can be masked, with the format and columns its rows have."""
    if not found.tags_read:
        return replace(found, unmaskable=None)
    if node.filename is not None or node.is_program:
        return replace(found, unmaskable="pgproxy masks only COPY … TO STDOUT (rows it relays)")
    if problem is not None:
        return replace(found, unmaskable=problem)
    output = copy_output(node, context.schema, context.path)
    if isinstance(output, str):
        return replace(found, unmaskable=output)
    return replace(found, unmaskable=None, copy_output=output)


def _explain(node: ast.ExplainStmt, text: str, context: Context) -> Analysis:
    analyze_option = _explain_runs(node)
    inner = analyze_node(node.query, text, context, nested=True)
    # Whether it runs the statement can turn on a constant (ANALYZE 0 / ANALYZE 1), which the
    # cache's normalized key does not keep: such a decision is cached by exact text only.
    literal = inner.literal_sensitive or any(opt.arg is not None for opt in node.options or ())
    inner = replace(inner, literal_sensitive=literal)
    if analyze_option:  # EXPLAIN ANALYZE runs the statement: judge it as the statement
        return replace(inner, command=f"EXPLAIN ANALYZE ({inner.command})",
                       flags=inner.flags | {Flag.EXECUTES})
    # Plain EXPLAIN plans without running: it returns no values, but its row estimates for a
    # filter, join or sort on a column answer questions about that column's values (an oracle:
    # `WHERE ssn < '93'`). So it reads what the statement reads, except the plain output
    # expressions of a SELECT (estimates do not depend on them). Dangerous functions still count.
    if inner.kind is Kind.UNKNOWN:
        return replace(inner, command="EXPLAIN")
    return Analysis(sql=text, command="EXPLAIN", kind=Kind.UTILITY, tables=inner.tables,
                    reads=_estimated_reads(node.query, inner, context), functions=inner.functions,
                    flags=inner.flags - {Flag.UNBOUNDED_WRITE}, literal_sensitive=True)


def _estimated_reads(query: Any, inner: Analysis, context: Context) -> dict[ColumnKey, frozenset[str]]:
    """The columns whose values a plan's estimates depend on: a SELECT's reads without its
    output expressions (those holding no subquery); any other statement's reads."""
    if not isinstance(query, ast.SelectStmt) or query.larg is not None or not query.targetList:
        return inner.reads
    planned = copy.deepcopy(query)
    planned.targetList = tuple(
        target if not isinstance(target, ast.ResTarget) or _kept_queries(target)
        else ast.ResTarget(name=target.name, val=ast.A_Const(val=ast.Integer(ival=1)))
        for target in planned.targetList or ())
    refs = References(context.schema, context.path, context.allowed_functions)
    try:
        refs.statement(planned, Scope([], None))
    except Unresolved:
        return inner.reads
    return refs.reads


def _truthy(arg: Any) -> bool:
    value = getattr(arg, "sval", None) or getattr(getattr(arg, "val", None), "sval", None)
    if value is None:
        value = str(getattr(arg, "ival", getattr(getattr(arg, "val", None), "ival", 1)))
    return str(value).lower() not in ("false", "off", "0", "no")


def _set(node: ast.VariableSetStmt, text: str, context: Context) -> Analysis:
    name = (node.name or "").lower()
    if node.kind == VariableSetKind.VAR_RESET_ALL:
        # Back to the defaults of the login role: it can only drop privileges, and the
        # search_path returns to the role's own (which the session tracks).
        return Analysis(sql=text, command="RESET ALL", kind=Kind.SESSION, literal_sensitive=True,
                        search_path=context.schema.search_path, lexing=True)
    if name in LEXING_SETTINGS:
        return _set_lexing(node, name, text)
    if name in ("role", "session_authorization"):
        if node.kind in (VariableSetKind.VAR_RESET, VariableSetKind.VAR_SET_DEFAULT):
            # Back to the session's own role: privileges can only shrink. (Its default is the
            # login role, or what the startup parameters set, which pgproxy judged.)
            return Analysis(sql=text, command="RESET" if node.kind == VariableSetKind.VAR_RESET else "SET",
                            kind=Kind.SESSION, literal_sensitive=True)
        return Analysis(sql=text, command="SET ROLE" if name == "role" else "SET SESSION AUTHORIZATION",
                        kind=Kind.ROLE, literal_sensitive=True)
    if name == "search_path":
        path: tuple[str, ...]
        if node.kind in (VariableSetKind.VAR_RESET, VariableSetKind.VAR_SET_DEFAULT):
            path = context.schema.search_path
        elif node.kind == VariableSetKind.VAR_SET_VALUE:
            path = tuple(_setting_value(a) for a in node.args or ())
        else:
            return unknown(text, "SET", "pgproxy cannot tell the resulting search_path", literal_sensitive=True)
        if node.is_local:
            return unknown(text, "SET LOCAL", "SET LOCAL search_path is not tracked by pgproxy",
                           literal_sensitive=True)
        return Analysis(sql=text, command="SET", kind=Kind.SESSION, literal_sensitive=True, search_path=path)
    return Analysis(sql=text, command="RESET" if node.kind == VariableSetKind.VAR_RESET else "SET",
                    kind=Kind.SESSION, literal_sensitive=True)


def _set_lexing(node: ast.VariableSetStmt, name: str, text: str) -> Analysis:
    """SET of a setting the server's scanner consults: allowed only to a value pgproxy can
    read text under. Back to the session's default is allowed: pgproxy refused the session
    at connect if its defaults were unreadable."""
    command = "SET LOCAL" if node.is_local else "RESET" if node.kind == VariableSetKind.VAR_RESET else "SET"
    if node.kind in (VariableSetKind.VAR_RESET, VariableSetKind.VAR_SET_DEFAULT):
        return Analysis(sql=text, command=command, kind=Kind.SESSION, literal_sensitive=True, lexing=True)
    args = node.args or ()
    refused = (setting_refusal(name, _setting_value(args[0])) if node.kind == VariableSetKind.VAR_SET_VALUE
               and len(args) == 1 else f"pgproxy cannot tell the value this sets {name} to")
    if refused is not None:
        return Analysis(sql=text, command=command, kind=Kind.SESSION, literal_sensitive=True,
                        flags=frozenset({Flag.UNREADABLE}), reasons=(f"pgproxy cannot allow this: {refused}",))
    return Analysis(sql=text, command=command, kind=Kind.SESSION, literal_sensitive=True, lexing=True)


def _setting_value(arg: Any) -> str:
    val = getattr(arg, "val", None)
    return str(getattr(val, "sval", "") or getattr(val, "ival", ""))


def _command(node: Any) -> str:
    known = _UTILITY.get(type(node))
    if known is not None:
        return known[0]
    name = type(node).__name__
    simple = {
        "SelectStmt": "SELECT", "InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE",
        "MergeStmt": "MERGE", "CopyStmt": "COPY", "ExplainStmt": "EXPLAIN", "PrepareStmt": "PREPARE",
        "ExecuteStmt": "EXECUTE", "DeclareCursorStmt": "DECLARE CURSOR", "VariableSetStmt": "SET",
        "DoStmt": "DO", "CallStmt": "CALL", "CreateTableAsStmt": "CREATE TABLE AS", "ViewStmt": "CREATE VIEW",
        "CreateStmt": "CREATE TABLE", "IndexStmt": "CREATE INDEX", "DropStmt": "DROP",
        "AlterTableStmt": "ALTER TABLE", "TruncateStmt": "TRUNCATE", "CreateFunctionStmt": "CREATE FUNCTION",
    }
    if name in simple:
        return simple[name]
    words = "".join(f" {c}" if c.isupper() else c for c in name.removesuffix("Stmt")).strip().upper()
    return words
