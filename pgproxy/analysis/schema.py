"""The schema the analysis resolves names against: relations with their columns and
tags, functions and operators, as introspected from the upstream (see pgproxy.catalog)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pgproxy.analysis.routines import Routine

# Schemas whose functions and operators are PostgreSQL's own.
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})


@dataclass(frozen=True, slots=True)
class Relation:
    """A table, view, materialized view, foreign or partitioned table."""

    oid: int
    schema: str
    name: str
    kind: str  # pg_class.relkind: r, v, m, f, p, S (a sequence)
    columns: tuple[str, ...]  # attribute names in attnum order (dropped columns excluded)
    attnums: tuple[int, ...] = ()  # pg_attribute.attnum of each column, same order
    tags: dict[str, frozenset[str]] = field(default_factory=dict)  # column -> tags (tagged ones only)
    # User functions (schema, name) reading it runs (see References.call): a view's, also through
    # the views it reads, and a table's row-level security policies'.
    calls: frozenset[tuple[str, str]] = frozenset()
    write_hooks: bool = False  # rules or triggers run when it is written: code pgproxy cannot see
    # User functions writing it runs: its defaults', CHECK constraints', index expressions', policies'.
    write_calls: frozenset[tuple[str, str]] = frozenset()
    # The catalog file tags a column of it that does not exist (renamed or dropped while pgproxy
    # was not watching): where that data went is unknown, so using the relation is too.
    stale: str | None = None
    # Columns of a text-like type (text, varchar, char, name, or a domain over one): a mask that is
    # text is valid for them only (see pgproxy.masking).
    text_columns: frozenset[str] = frozenset()

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class Schema:
    """Everything name resolution needs, for one upstream database."""

    relations: dict[tuple[str, str], Relation]  # (schema, name) -> relation, exact (case-sensitive) names
    functions: dict[str, frozenset[str]]  # function name -> schemas defining one of that name
    user_operators: frozenset[str]  # operator symbols defined outside the system schemas
    search_path: tuple[str, ...]  # effective schemas, in order, for the route's role ("$user" resolved)
    version: str  # changes whenever anything here (routines included) changes
    # User functions converting a value to a type runs, by the type's name: its cast functions and
    # (a domain) its constraints' functions; and the cast functions that may run where no type is
    # named (implicit and assignment casts): every statement may run those.
    type_calls: dict[str, frozenset[tuple[str, str]]] = field(default_factory=dict)
    implicit_calls: frozenset[tuple[str, str]] = frozenset()
    # User functions and procedures by (schema, name): every overload, for their bodies.
    routines: dict[tuple[str, str], tuple[Routine, ...]] = field(default_factory=dict)
    # What calling a routine does, worked out once per schema (see References.call).
    effects: dict[Any, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def by_oid(self) -> dict[int, Relation]:
        return {r.oid: r for r in self.relations.values()}

    def lookup(self, schema: str | None, name: str, search_path: tuple[str, ...] | None = None) -> Relation | None:
        """Resolve a relation name as the server would (pg_catalog first unless listed)."""
        if schema is not None:
            return self.relations.get((schema, name))
        path = search_path if search_path is not None else self.search_path
        if "pg_catalog" not in path:
            path = ("pg_catalog", *path)
        for candidate in path:
            relation = self.relations.get((candidate, name))
            if relation is not None:
                return relation
        return None

    def function_schemas(self, name: str) -> frozenset[str]:
        return self.functions.get(name, frozenset())
