"""What a PostgreSQL session holds: prepared statements, portals (cursors) and the open
transaction with its savepoints, with the server's lifetimes for each.

The rules, from PostgreSQL's ``tcop/postgres.c``, ``utils/mmgr/portalmem.c``,
``commands/prepare.c`` and ``commands/portalcmds.c`` (checked by tests against the server):

- Prepared statements: protocol ``Parse`` names and SQL ``PREPARE`` names are one namespace;
  the unnamed protocol statement is separate (SQL cannot name it). They are not transactional:
  they survive COMMIT and ROLLBACK; ``Close``, ``DEALLOCATE name|ALL`` and ``DISCARD ALL``
  remove them (DEALLOCATE ALL leaves the unnamed statement). A ``Parse`` of the unnamed
  statement drops the old one before anything can fail; a simple Query drops it too.
- Portals: protocol portals and SQL cursors are one namespace. A portal keeps the statement it
  was bound from (closing or replacing the statement later changes nothing). Portals end with
  the transaction that created them -- at COMMIT a ``WITH HOLD`` cursor is kept instead (it
  is "held over" and survives later aborts); at ROLLBACK TO SAVEPOINT the portals created
  since that savepoint end; RELEASE hands a subtransaction's portals to its parent. Outside a
  transaction block every ``Sync``, simple Query and FunctionCall ends the implicit
  transaction, and an error ends it at once.
- Where the server's rules make existence depend on details the proxy does not see (a failed
  execution may leave a portal unusable and later dropped at commit; a failed unnamed ``Bind``
  may or may not have replaced the old portal), the portal is kept but marked *doubtful*: its
  name may or may not exist, but if it exists it runs what the model says.

`Objects` is plain data with no I/O; `ProtocolModel` keeps two of them, the server's
confirmed state and the state predicted from what was forwarded since.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from pgproxy.masking import MaskSpec


class OpKind(enum.Enum):
    """What running a statement does to the session's objects (beyond its own result)."""

    PREPARE = "prepare"  # PREPARE name AS query
    EXECUTE = "execute"  # EXECUTE name(...): runs a prepared statement
    DEALLOCATE = "deallocate"  # DEALLOCATE name (name "" with all=True: DEALLOCATE ALL)
    DECLARE = "declare"  # DECLARE name [WITH HOLD] CURSOR FOR query
    FETCH = "fetch"  # FETCH / MOVE: runs a cursor's (or protocol portal's) query
    CLOSE = "close"  # CLOSE name | ALL
    DISCARD_ALL = "discard all"
    BEGIN = "begin"
    COMMIT = "commit"  # COMMIT / END / COMMIT AND CHAIN
    ROLLBACK = "rollback"  # ROLLBACK / ABORT [AND CHAIN]
    SAVEPOINT = "savepoint"
    RELEASE = "release"
    ROLLBACK_TO = "rollback to"
    PREPARE_TRANSACTION = "prepare transaction"


# Ops that name an object whose verdict decides what the statement runs.
REFERENCES = frozenset({OpKind.EXECUTE, OpKind.FETCH})


@dataclass(frozen=True, slots=True)
class SessionOp:
    """One statement's effect on the session's objects, as the analysis reads it."""

    kind: OpKind
    name: str = ""
    all: bool = False  # DEALLOCATE ALL, CLOSE ALL
    hold: bool = False  # DECLARE ... WITH HOLD
    chain: bool = False  # COMMIT / ROLLBACK AND CHAIN
    query: str = ""  # PREPARE / DECLARE: the text of the query the object keeps
    facts: Any = None  # PREPARE / DECLARE: the gate's verdict on that query (what runs later)


@dataclass(slots=True, eq=False)
class PreparedStatement:
    """A prepared statement: its text and the gate's verdict on it (`facts`, opaque here).

    `op` is what running it does to the session (a statement such as ``EXECUTE x`` or
    ``FETCH c`` runs another object, resolved when it runs). `columns` are the table columns
    of its result, (table oid, attnum), once a Describe showed them. `param_types` are its
    parameters' type OIDs: the Parse's declared ones (0: unspecified), then the server's
    ParameterDescription once a Describe showed them (what binary parameters are read as)."""

    sql: str
    facts: Any = None
    op: SessionOp | None = None
    columns: list[tuple[int, int]] | None = None
    param_types: tuple[int, ...] = ()


@dataclass(slots=True, eq=False)
class Portal:
    """A portal or cursor: a snapshot of the statement it was bound from, taken at Bind (or
    DECLARE), with the Bind's parameters. `approved` is set once a reviewer approved running
    it: the approval covers this portal, its statement and its parameters."""

    statement: PreparedStatement
    bind: bytes | None = None  # the Bind message's body (its parameters), None for a cursor
    holdable: bool = False
    columns: list[tuple[int, int]] | None = None
    approved: bool = False
    approved_mask: MaskSpec | None = None  # approved with masking: how its results are masked

    @property
    def result_columns(self) -> list[tuple[int, int]] | None:
        return self.columns if self.columns is not None else self.statement.columns


@dataclass(slots=True)
class Frame:
    """One level of the open transaction: the top level (name None) or a savepoint, with the
    names of the portals created in it."""

    name: str | None
    portals: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Objects:
    """The session's objects and transaction, either as confirmed by the server or as predicted.

    `touched` / `touched_all` record, per name and per namespace, the segment (see
    ProtocolModel) of the last forwarded message that may change it: a later segment may rely
    on a prediction only once that segment is confirmed."""

    statements: dict[str, PreparedStatement] = field(default_factory=dict)
    portals: dict[str, Portal] = field(default_factory=dict)
    doubtful: set[str] = field(default_factory=set)  # portal names that may be gone
    frames: list[Frame] = field(default_factory=list)  # the open transaction; [] when none
    in_block: bool = False  # an explicit transaction block (BEGIN) is open
    failed: bool = False  # ... and aborted (until ROLLBACK)
    statement_touched: dict[str, int] = field(default_factory=dict)
    portal_touched: dict[str, int] = field(default_factory=dict)
    statements_touched_all: int = -1
    portals_touched_all: int = -1

    def copy(self) -> Objects:
        return Objects(dict(self.statements), dict(self.portals), set(self.doubtful),
                       [Frame(f.name, set(f.portals)) for f in self.frames], self.in_block, self.failed,
                       dict(self.statement_touched), dict(self.portal_touched),
                       self.statements_touched_all, self.portals_touched_all)

    # -- statements ----------------------------------------------------------------------

    def set_statement(self, name: str, statement: PreparedStatement, segment: int) -> None:
        self.statements[name] = statement
        self.statement_touched[name] = segment

    def drop_statement(self, name: str, segment: int) -> None:
        self.statements.pop(name, None)
        self.statement_touched[name] = segment

    def drop_named_statements(self, segment: int) -> None:
        """DEALLOCATE ALL / DISCARD ALL: every named statement (the unnamed one stays)."""
        unnamed = self.statements.get("")
        self.statements.clear()
        if unnamed is not None:
            self.statements[""] = unnamed
        self.statements_touched_all = segment

    # -- portals -------------------------------------------------------------------------

    def add_portal(self, name: str, portal: Portal, segment: int) -> None:
        self.drop_portal(name, segment)
        if not self.frames:
            self.frames.append(Frame(None))  # the implicit transaction the message started
        self.portals[name] = portal
        self.frames[-1].portals.add(name)

    def drop_portal(self, name: str, segment: int) -> None:
        if self.portals.pop(name, None) is not None:
            for frame in self.frames:
                frame.portals.discard(name)
        self.doubtful.discard(name)
        self.portal_touched[name] = segment

    def drop_all_portals(self, segment: int) -> None:
        """CLOSE ALL / DISCARD ALL."""
        self.portals.clear()
        self.doubtful.clear()
        for frame in self.frames:
            frame.portals.clear()
        self.portals_touched_all = segment

    def doubt(self, name: str, segment: int) -> None:
        if name in self.portals:
            self.doubtful.add(name)
            self.portal_touched[name] = segment

    # -- transactions --------------------------------------------------------------------

    def begin(self) -> None:
        if not self.frames:
            self.frames.append(Frame(None))
        self.in_block = True

    def end_transaction(self, committed: bool, segment: int) -> None:
        """The transaction ends: its portals end with it, except WITH HOLD cursors at a commit."""
        for frame in self.frames:
            for name in frame.portals:
                portal = self.portals.get(name)
                if portal is None:
                    continue
                if not (committed and portal.holdable):
                    del self.portals[name]
                    self.doubtful.discard(name)
        self.frames = []
        self.in_block = False
        self.failed = False
        self.portals_touched_all = segment

    def error(self, segment: int) -> None:
        """A statement failed: outside a block the implicit transaction ends at once (aborted);
        inside one, the block is aborted until ROLLBACK."""
        if self.in_block:
            self.failed = True
        else:
            self.end_transaction(False, segment)

    def savepoint(self, name: str) -> None:
        self.frames.append(Frame(name))

    def _savepoint_index(self, name: str) -> int | None:
        for index in range(len(self.frames) - 1, 0, -1):
            if self.frames[index].name == name:
                return index
        return None

    def release(self, name: str) -> None:
        index = self._savepoint_index(name)
        if index is None:
            return
        parent = self.frames[index - 1]
        for frame in self.frames[index:]:
            parent.portals |= frame.portals
        del self.frames[index:]

    def rollback_to(self, name: str, segment: int) -> None:
        index = self._savepoint_index(name)
        if index is None:
            return
        for frame in self.frames[index:]:
            for portal in frame.portals:
                self.portals.pop(portal, None)
                self.doubtful.discard(portal)
        del self.frames[index + 1:]
        self.frames[index] = Frame(name)
        self.failed = False
        self.portals_touched_all = segment

    def apply(self, op: SessionOp, segment: int, *, tag: bytes = b"") -> None:
        """The effect of a statement that succeeded. `tag` is its CommandComplete tag when
        known (a COMMIT of an aborted block answers ROLLBACK: it rolled back)."""
        kind = op.kind
        if kind is OpKind.PREPARE:
            self.set_statement(op.name, PreparedStatement(op.query, op.facts), segment)
        elif kind is OpKind.DEALLOCATE:
            if op.all:
                self.drop_named_statements(segment)
            else:
                self.drop_statement(op.name, segment)
        elif kind is OpKind.DECLARE:
            self.add_portal(op.name, Portal(PreparedStatement(op.query, op.facts), holdable=op.hold), segment)
        elif kind is OpKind.CLOSE:
            if op.all:
                self.drop_all_portals(segment)
            else:
                self.drop_portal(op.name, segment)
        elif kind is OpKind.DISCARD_ALL:
            self.drop_all_portals(segment)
            self.drop_named_statements(segment)
        elif kind is OpKind.BEGIN:
            self.begin()
        elif kind is OpKind.COMMIT or kind is OpKind.PREPARE_TRANSACTION:
            self.end_transaction(not tag.startswith(b"ROLLBACK"), segment)
            if op.chain:
                self.begin()
        elif kind is OpKind.ROLLBACK:
            self.end_transaction(False, segment)
            if op.chain:
                self.begin()
        elif kind is OpKind.SAVEPOINT:
            self.savepoint(op.name)
        elif kind is OpKind.RELEASE:
            self.release(op.name)
        elif kind is OpKind.ROLLBACK_TO:
            self.rollback_to(op.name, segment)

    def touches(self, op: SessionOp | None) -> bool:
        """Whether the op changes anything (most statements change nothing)."""
        return op is not None and op.kind not in REFERENCES
