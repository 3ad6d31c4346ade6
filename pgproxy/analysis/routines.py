"""User functions and procedures: what their bodies run, as queries the walker can judge.

A SQL or PL/pgSQL function's body is made of queries and expressions that run with the
caller's rights on the caller's search_path (unless the function SETs its own). `body()`
turns one into plain SELECTs, so that calling the function counts what those read, as if
the caller had written them (see References.call). A body pgproxy cannot see through is
*opaque* and calling it stays `runs_code`:

- another language (C, PL/Python, …), or a definition PostgreSQL would not print;
- any statement that is not a query: writes, DDL, CALL, COMMIT, SET, …;
- dynamic SQL (EXECUTE, FOR … IN EXECUTE, OPEN … FOR EXECUTE, RETURN QUERY EXECUTE);
- text pglast cannot parse.

Names inside a body that no column in scope matches may be the function's parameters or
variables (`names`), or be qualified by the function's name, a block label or a record
variable (`qualifiers`); any other is unknown to the walker, so the body is opaque.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import pglast
from pglast import ast, parser
from pglast.enums import VariableSetKind

from pgproxy.protocol.lexing import LEXING_SETTINGS

# PL/pgSQL statements whose queries and expressions are all (non-dynamic) PLpgSQL_expr.
_PLPGSQL_STATEMENTS = frozenset({
    "PLpgSQL_stmt_block", "PLpgSQL_stmt_assign", "PLpgSQL_stmt_if", "PLpgSQL_stmt_case",
    "PLpgSQL_stmt_loop", "PLpgSQL_stmt_while", "PLpgSQL_stmt_fori", "PLpgSQL_stmt_fors",
    "PLpgSQL_stmt_forc", "PLpgSQL_stmt_foreach_a", "PLpgSQL_stmt_exit", "PLpgSQL_stmt_return",
    "PLpgSQL_stmt_return_next", "PLpgSQL_stmt_return_query", "PLpgSQL_stmt_raise",
    "PLpgSQL_stmt_assert", "PLpgSQL_stmt_execsql", "PLpgSQL_stmt_perform", "PLpgSQL_stmt_getdiag",
    "PLpgSQL_stmt_open", "PLpgSQL_stmt_fetch", "PLpgSQL_stmt_close",
})
_PLPGSQL_DATUMS = ("PLpgSQL_var", "PLpgSQL_rec", "PLpgSQL_row")
# PLpgSQL_expr.parseMode (PostgreSQL's RawParseMode): a query, an expression, an assignment.
_QUERY, _EXPRESSION, _ASSIGNMENTS = 0, 2, frozenset({3, 4, 5})


@dataclass(frozen=True, slots=True)
class Routine:
    """One user function or procedure (one overload), as introspected."""

    oid: int
    schema: str
    name: str
    language: str  # pg_language.lanname
    definition: str | None = None  # pg_get_functiondef(), for SQL and PL/pgSQL functions
    # The names of its argument and result types (an array's: its element type's): a value passed
    # in or returned is converted to them, which runs a domain's checks (Schema.type_calls).
    types: tuple[str, ...] = ()

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class Body:
    """What a routine's body runs, as pglast SELECT nodes (`opaque`: why it cannot be seen)."""

    queries: tuple[Any, ...] = ()
    names: frozenset[str] = frozenset()  # parameters and variables
    qualifiers: frozenset[str] = frozenset()  # the function's name, block labels, record variables
    search_path: tuple[str, ...] | None = None  # the function's own SET search_path
    opaque: str | None = None


class Opaque(Exception):
    """A body pgproxy cannot see through."""


@functools.lru_cache(maxsize=4096)
def body(routine: Routine) -> Body:
    """The queries `routine` runs when called; never raises (an opaque Body says why)."""
    if routine.language not in ("sql", "plpgsql") or not routine.definition:
        return Body(opaque=f"{routine.qualified} is written in {routine.language}")
    try:
        create = pglast.parse_sql(routine.definition)[0].stmt
        if not isinstance(create, ast.CreateFunctionStmt):
            raise Opaque("its definition is not a CREATE FUNCTION")
        return statement_body(create, routine.definition)
    except Opaque as exc:
        return Body(opaque=f"{routine.qualified}: {exc}")
    except pglast.parser.ParseError as exc:
        return Body(opaque=f"{routine.qualified}: pgproxy cannot parse its body ({exc})")
    except RecursionError:
        return Body(opaque=f"{routine.qualified}: its body is nested too deeply to analyse")


def statement_body(create: ast.CreateFunctionStmt, text: str) -> Body:
    """The body of a CREATE FUNCTION/PROCEDURE statement (`text`: the statement's own text,
    which PL/pgSQL's parser needs whole). Raises Opaque."""
    options = {o.defname: o.arg for o in create.options or () if isinstance(o, ast.DefElem)}
    language = options.get("language")
    language_name = (language.sval or "").lower() if isinstance(language, ast.String) else "sql"
    params = frozenset(p.name for p in create.parameters or () if p.name)
    qualifiers = frozenset({(create.funcname or (ast.String(sval=""),))[-1].sval or ""})
    path = _search_path(create)
    # A call that leaves out an argument evaluates its default (which may call functions).
    defaults = tuple(ast.SelectStmt(targetList=(ast.ResTarget(val=p.defexpr),))
                     for p in create.parameters or () if p.defexpr is not None)
    found = _language_body(create, text, language_name, options)
    return Body(defaults + found.queries, params | found.names, qualifiers | found.qualifiers, path)


def _language_body(create: ast.CreateFunctionStmt, text: str, language_name: str,
                   options: dict[str | None, Any]) -> Body:
    if language_name == "sql":
        if create.sql_body is not None:
            stated = create.sql_body
            nodes = list(stated[0]) if isinstance(stated, tuple) and stated and isinstance(stated[0], tuple) \
                else list(stated) if isinstance(stated, tuple) else [stated]
        else:
            nodes = [raw.stmt for raw in pglast.parse_sql(_source(options))]
        return Body(tuple(_query(node) for node in nodes))
    if language_name == "plpgsql":
        found = _PlpgsqlBody()
        found.visit(pglast.parse_plpgsql(text))
        return Body(tuple(found.queries), frozenset(found.names), frozenset(found.labels | found.records))
    raise Opaque(f"it is written in {language_name}")


def _source(options: dict[str | None, Any]) -> str:
    source = options.get("as")
    parts = list(source) if isinstance(source, (list, tuple)) else [source]
    if len(parts) != 1 or not isinstance(parts[0], ast.String):
        raise Opaque("its body is not SQL text")
    return parts[0].sval or ""


def _search_path(create: ast.CreateFunctionStmt) -> tuple[str, ...] | None:
    """The search_path the routine SETs for itself, if any. A routine that sets its role, or a
    setting that changes how the server reads its body's text, is opaque."""
    path: tuple[str, ...] | None = None
    for option in create.options or ():
        setting = option.arg if isinstance(option, ast.DefElem) and option.defname == "set" else None
        if not isinstance(setting, ast.VariableSetStmt):
            continue
        name = (setting.name or "").lower()
        if name in LEXING_SETTINGS or name in ("role", "session_authorization"):
            raise Opaque(f"it sets {name}")
        if name != "search_path":
            continue
        if setting.kind != VariableSetKind.VAR_SET_VALUE:
            raise Opaque("pgproxy cannot tell the search_path it sets")
        values: list[str] = []
        for arg in setting.args or ():
            value = getattr(arg, "val", None)
            if not isinstance(value, ast.String):
                raise Opaque("its search_path is not a list of names")
            values.extend(_split_path(value.sval or ""))
        if "$user" in values:
            raise Opaque("its search_path names $user")
        path = tuple(values)
    return path


def _split_path(text: str) -> list[str]:
    """A search_path value as the server splits it: commas, "quoted" names kept, others lowercased."""
    names = []
    for match in re.finditer(r'\s*(?:"((?:[^"]|"")*)"|([^,"\s]+))\s*(?:,|$)', text):
        quoted, plain = match.groups()
        names.append(quoted.replace('""', '"') if quoted is not None else plain.lower())
    return names


def _query(node: Any) -> Any:
    """A body statement as a SELECT the walker judges (RETURN x: SELECT x)."""
    if isinstance(node, ast.ReturnStmt):
        return ast.SelectStmt(targetList=(ast.ResTarget(val=node.returnval),))
    if isinstance(node, ast.SelectStmt) and node.intoClause is None:
        return node
    raise Opaque(f"its body runs {type(node).__name__.removesuffix('Stmt')}, not only queries")


class _PlpgsqlBody:
    """Collects a PL/pgSQL function's queries and names from pglast's JSON tree."""

    def __init__(self) -> None:
        self.queries: list[Any] = []
        self.names: set[str] = set()
        self.labels: set[str] = set()
        self.records: set[str] = set()

    def visit(self, tree: Any) -> None:
        pending = [tree]
        while pending:
            current = pending.pop()
            if isinstance(current, list):
                pending.extend(current)
                continue
            if not isinstance(current, dict):
                continue
            for key, value in current.items():
                if key == "dynquery" or key.startswith("PLpgSQL_stmt_dyn"):
                    raise Opaque("its body runs dynamic SQL (EXECUTE)")
                if key.startswith("PLpgSQL_stmt_") and key not in _PLPGSQL_STATEMENTS:
                    raise Opaque(f"its body runs {key.removeprefix('PLpgSQL_stmt_').upper()}")
                if key == "PLpgSQL_expr" and isinstance(value, dict):
                    self.queries.append(_plpgsql_query(str(value.get("query", "")), value.get("parseMode", 0)))
                    continue
                if key in _PLPGSQL_DATUMS and isinstance(value, dict) and value.get("refname"):
                    self.names.add(str(value["refname"]))
                    if key != "PLpgSQL_var":
                        self.records.add(str(value["refname"]))
                if key == "label" and isinstance(value, str):
                    self.labels.add(value)
                pending.append(value)


def _plpgsql_query(text: str, mode: Any) -> Any:
    if mode == _QUERY:
        nodes = pglast.parse_sql(text)
        if len(nodes) != 1:
            raise Opaque("a query in its body is not one statement")
        if isinstance(nodes[0].stmt, ast.SelectStmt) and nodes[0].stmt.intoClause is not None:
            raise Opaque("its body runs SELECT INTO a table")
        return _query(nodes[0].stmt)
    if mode == _EXPRESSION:
        return _one_select(f"SELECT {text}")
    if mode in _ASSIGNMENTS:
        depth = 0
        for token in parser.scan(text):
            if token.name in ("ASCII_40", "ASCII_91"):
                depth += 1
            elif token.name in ("ASCII_41", "ASCII_93"):
                depth -= 1
            elif depth == 0 and token.name in ("COLON_EQUALS", "ASCII_61"):
                # The target (with its subscripts) and the value, both judged as expressions.
                return _one_select(f"SELECT {text[:token.start]}, {text[token.end + 1:]}")
        raise Opaque("an assignment in its body has no target")
    raise Opaque(f"its body has an expression of an unknown kind ({mode})")


def _one_select(text: str) -> Any:
    nodes = pglast.parse_sql(text)
    if len(nodes) != 1 or not isinstance(nodes[0].stmt, ast.SelectStmt):
        raise Opaque("an expression in its body is not one expression")
    return nodes[0].stmt
