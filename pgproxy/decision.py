"""The decision point's vocabulary: what a gate says about a statement (`Judgement`), the gate
interface the relay calls (`StatementGate`), and how a judgement attaches to what executes.

A statement's text is judged when it arrives (Query, Parse, PREPARE, DECLARE); the judgement
is kept with the object the protocol model records (`PreparedStatement.facts`). What is held
or refused is an *execution*: an Execute of a portal, a FETCH or MOVE of a cursor, an
EXECUTE of a prepared statement, a simple Query. `execution()` finds the judgement that
applies to one, from the portal it runs and (for ``EXECUTE x`` / ``FETCH c``) the object
that name stands for when it runs.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pgproxy.errors import SqlState
from pgproxy.protocol import Portal, PreparedStatement, ProtocolModel, SessionOp
from pgproxy.protocol.objects import REFERENCES
from pgproxy.wire import messages as m

if TYPE_CHECKING:
    from pgproxy.session import Session


class Verdict(enum.Enum):
    ALLOW = "allow"
    REVIEW = "review"
    DENY = "deny"


_STRICTNESS = {Verdict.ALLOW: 0, Verdict.REVIEW: 1, Verdict.DENY: 2}

Columns = frozenset[tuple[int, int]]  # (table oid, attnum) of tagged columns


@dataclass(frozen=True, slots=True)
class Part:
    """One statement of a judged text: what running it does to the session's objects (`op`,
    whose `facts` is the judgement of a query PREPARE or DECLARE keeps) and the tagged
    columns its result may show when it runs."""

    op: SessionOp | None = None
    permitted: Columns = frozenset()


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    sqlstate: str = SqlState.INSUFFICIENT_PRIVILEGE
    message: str = ""
    detail: str | None = None
    context: Any = None  # what the gate needs to hold it (its analysis)
    protocol: str = "simple"  # of the statement judged: "simple", "extended" or "function"
    # The text's statements in order; None when nothing about them matters to the session
    # (no op, nothing tagged to show) or the gate does not analyse statements.
    parts: tuple[Part, ...] | None = None
    composed: bool = False  # covers another object's statement too (EXECUTE x, FETCH c)

    @property
    def permitted(self) -> Columns:
        """Tagged columns its results may show (those its statements declare they read)."""
        if not self.parts:
            return frozenset()
        if len(self.parts) == 1:
            return self.parts[0].permitted
        return frozenset().union(*(p.permitted for p in self.parts))


ALLOW = Judgement(Verdict.ALLOW)
CANCELLED_WHILE_HELD = Judgement(Verdict.DENY, SqlState.QUERY_CANCELED,
                                 "canceling statement due to user request",
                                 detail="The statement was waiting for approval; the request was withdrawn.")


def strictest(first: Judgement, second: Judgement) -> Judgement:
    return second if _STRICTNESS[second.verdict] > _STRICTNESS[first.verdict] else first


def approved(judgement: Judgement) -> Judgement:
    """What a judgement becomes once a reviewer approved it: the execution may run and its
    results may show the columns the statement reads."""
    return replace(judgement, verdict=Verdict.ALLOW)


def shown_parameters(bind: bytes | None) -> tuple[str | None, ...]:
    """Bind parameters as a reviewer sees them: text as text, binary values as hex."""
    if bind is None:
        return ()
    decoded = m.decode_bind(bind)
    formats = decoded.param_formats
    shown: list[str | None] = []
    for index, value in enumerate(decoded.params):
        binary = (formats[0] if len(formats) == 1 else formats[index] if formats else 0) == 1
        if value is None:
            shown.append(None)
        elif binary:
            shown.append("\\x" + value.hex())
        else:
            shown.append(value.decode("utf-8", "replace"))
    return tuple(shown)


FUNCTION_CALL = "<function call>"  # a FunctionCall's statement text: it carries no SQL


@dataclass(slots=True)
class Statement:
    """What reaches the decision point: one message that can run SQL."""

    protocol: str  # "simple" (Query), "extended" (Parse) or "function" (FunctionCall)
    sql: str  # for FunctionCall: FUNCTION_CALL
    statement_name: str = ""  # Parse's prepared-statement name


@dataclass(slots=True)
class Execution:
    """What one execution runs and the judgement that applies to it."""

    judgement: Judgement
    sql: str  # the text a reviewer sees: the statement, and what a name it runs stood for
    parameters: bytes | None  # the Bind body of the portal run (its parameters)
    approve: list[Portal]  # portals an approval of this execution covers


def facts(statement: PreparedStatement) -> Judgement:
    judged = statement.facts
    return judged if isinstance(judged, Judgement) else ALLOW


def _portal_judgement(portal: Portal) -> Judgement:
    judged = facts(portal.statement)
    return approved(judged) if portal.approved and judged.verdict is not Verdict.DENY else judged


def _referenced(target: PreparedStatement | Portal | None) -> tuple[Judgement, str, bytes | None, list[Portal]]:
    if target is None:
        return ALLOW, "", None, []  # the name stands for nothing: the server will refuse it
    if isinstance(target, Portal):
        return _portal_judgement(target), target.statement.sql, target.bind, [target]
    return facts(target), target.sql, None, []


def execution(model: ProtocolModel, portal: Portal) -> Execution | None:
    """The judgement for an Execute of `portal`, or None when what it runs is not yet certain
    (a name it runs was changed by a message whose answer has not come)."""
    own = _portal_judgement(portal)
    statement = portal.statement
    target, certain = model.runs(statement)
    if not certain:
        return None
    if statement.op is None or statement.op.kind not in REFERENCES:
        return Execution(own, statement.sql, portal.bind, [portal])
    judged, sql, bind, covered = _referenced(target)
    combined = strictest(own, judged)
    combined = replace(combined, composed=True,
                       parts=(Part(None, own.permitted | judged.permitted),))
    shown = f"{statement.sql}\n-- {statement.op.name if statement.op else ''} is: {sql}" if sql else statement.sql
    return Execution(combined, shown, bind or portal.bind, [portal, *covered])


class StatementGate:
    """Decides each statement (the analysis and policy plug in here) and guards results."""

    holds = False  # whether REVIEW statements are held for a reviewer (else refused)
    strict = False  # the protocol model's predictions are binding (the gate analyses every statement)

    async def hold(self, session: Session, sql: str, parameters: tuple[str | None, ...],
                   judgement: Judgement) -> Judgement:
        """Wait for a reviewer's decision on a statement judged REVIEW."""
        return judgement

    def judge(self, session: Session, statement: Statement) -> Judgement | Awaitable[Judgement]:
        """The decision, or an awaitable of it when deciding takes time (the session waits)."""
        return ALLOW

    def settled(self, session: Session, sql: str) -> bool:
        """Whether a simple-protocol `sql` is allowed by a decision the session already holds,
        with nothing to remember or record, no effect on the session's objects and nothing
        tagged to show: then the relay forwards it without judge(). False whenever in doubt."""
        return False

    def cycle_done(self, session: Session) -> None:
        """Called at each ReadyForQuery."""

    def forbidden_columns(self, session: Session, columns: list[tuple[int, int]], permitted: Columns) -> list[str]:
        """Of a result's (table oid, attnum) columns, the tagged ones the execution that produced
        it was not cleared to show (their names)."""
        return []

    async def close(self) -> None:
        """Stop background work (the server is shutting down)."""
