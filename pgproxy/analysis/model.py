"""What the analysis says about one statement: a plain value the policy decides on."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pgproxy.masking import CopyFormat
from pgproxy.protocol.objects import SessionOp

NOT_MASKABLE = "pgproxy masks only the results of SELECT and of COPY … TO STDOUT"


class Kind(StrEnum):
    """What sort of statement it is (the policy's `kinds`)."""

    READ = "read"
    WRITE = "write"
    DDL = "ddl"
    GRANT = "grant"
    ROLE = "role"
    COPY_TO = "copy_to"
    COPY_FROM = "copy_from"
    SESSION = "session"
    TRANSACTION = "transaction"
    UTILITY = "utility"
    UNKNOWN = "unknown"


class Flag(StrEnum):
    """Facts about a statement that rules can match (the policy's `flags`)."""

    SERVER_ACCESS = "server_access"  # server files, programs, large objects, other databases, settings
    CREDENTIALS = "credentials"  # reads credential catalogs (pg_authid, pg_shadow, …)
    RUNS_CODE = "runs_code"  # DO, CALL, user functions or operators not allow-listed
    SQL_FROM_STRING = "sql_from_string"  # built-ins that run SQL given as a string (query_to_xml…)
    ADMIN = "admin"  # acts on other sessions or the server (pg_terminate_backend…)
    UNBOUNDED_WRITE = "unbounded_write"  # UPDATE / DELETE without WHERE
    EXECUTES = "executes"  # EXPLAIN ANALYZE: the statement runs
    # Would make the server read later statement text in a way pgproxy cannot follow
    # (standard_conforming_strings off, an ASCII-unsafe client_encoding): always denied.
    UNREADABLE = "unreadable"


@dataclass(frozen=True, slots=True, order=True)
class ColumnKey:
    schema: str
    table: str
    column: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}.{self.column}"


@dataclass(frozen=True, slots=True)
class CopyOutput:
    """A COPY … TO STDOUT's format and output columns in order (None: not a table column)."""

    format: CopyFormat
    columns: tuple[ColumnKey | None, ...]


@dataclass(frozen=True, slots=True)
class Analysis:
    """One statement's analysis. `kind` UNKNOWN always carries `reasons`."""

    sql: str  # the statement's own text
    command: str  # e.g. "SELECT", "UPDATE", "CREATE TABLE"
    kind: Kind
    tables: frozenset[str] = frozenset()  # schema.table of every relation referenced
    reads: dict[ColumnKey, frozenset[str]] = field(default_factory=dict)  # column -> its tags
    writes: dict[ColumnKey, frozenset[str]] = field(default_factory=dict)
    functions: frozenset[str] = frozenset()  # schema.name (or bare name when unresolved)
    flags: frozenset[Flag] = frozenset()
    reasons: tuple[str, ...] = ()  # why unknown, or notes a reviewer should see
    literal_sensitive: bool = False  # the decision depends on a literal: never cache by normalized text
    op: SessionOp | None = None  # what running it does to the session's statements, cursors, transaction
    # PREPARE / DECLARE: the analysis of the query the new object keeps (judged when it runs)
    stored: Analysis | None = None
    search_path: tuple[str, ...] | None = None  # SET search_path: the session's new path
    lexing: bool = False  # running it may change how the server reads later text (client_encoding...)
    # DDL: the relations it creates, changes or drops (schema.name); None for other statements.
    ddl_targets: frozenset[str] | None = None
    # DDL that derives data from tagged columns: each object (schema.name, or schema.table.column)
    # that will hold or return what they hold, with the tags it carries from them.
    derives: dict[str, frozenset[str]] = field(default_factory=dict)
    # It calls a user function that is not allow-listed or that reads tagged columns: the planner
    # may run it (folding an immutable function) before the statement executes.
    calls_code: bool = False
    # Why its results cannot be masked (pgproxy.analysis.masking), or None when they can: its tagged
    # columns reach the result only as plain output columns of base tables.
    unmaskable: str | None = NOT_MASKABLE
    copy_output: CopyOutput | None = None  # COPY … TO STDOUT that can be masked: how to read its rows

    @property
    def tags_read(self) -> frozenset[str]:
        return frozenset().union(*self.reads.values()) if self.reads else frozenset()

    @property
    def tags_written(self) -> frozenset[str]:
        return frozenset().union(*self.writes.values()) if self.writes else frozenset()

    def to_json(self) -> dict[str, object]:
        def columns(cols: dict[ColumnKey, frozenset[str]]) -> list[dict[str, object]]:
            return [{"column": str(k), "tags": sorted(v)} for k, v in sorted(cols.items())]

        return {
            "statement": self.sql,
            "command": self.command,
            "kind": self.kind.value,
            "tables": sorted(self.tables),
            "reads": columns(self.reads),
            "writes": columns(self.writes),
            "functions": sorted(self.functions),
            "flags": sorted(f.value for f in self.flags),
            "reasons": list(self.reasons),
            "derives": [{"object": k, "tags": sorted(v)} for k, v in sorted(self.derives.items())],
        }
