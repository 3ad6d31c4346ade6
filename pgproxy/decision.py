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
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pgproxy.errors import ClientProtocolError, ProxyError, SqlState
from pgproxy.masking import CopySpec, MaskSpec
from pgproxy.protocol import RESERVED_PREFIX, Portal, PreparedStatement, ProtocolModel, QueryPart, SessionOp
from pgproxy.protocol.lexing import UnreadableText
from pgproxy.protocol.objects import REFERENCES, OpKind
from pgproxy.wire import messages as m
from pgproxy.wire.codec import unpack_length
from pgproxy.wire.values import binary_text

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
    lexing: bool = False  # running it may change how the server reads the text after it
    copy: CopySpec | None = None  # COPY … TO STDOUT: how to mask its rows when it is masked


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
    # Planning it runs code pgproxy cannot see (the planner folds immutable functions): it is
    # held at Bind, which plans the statement, rather than at Execute.
    plans_code: bool = False
    # REVIEW: the server can check the text first, running nothing (one statement of a kind
    # whose Parse resolves its names, or one pgproxy's parser rejects): an error it would
    # raise anyway is the answer at once, without troubling a reviewer.
    ask: bool = False
    stale: bool = False  # REVIEW: it names what pgproxy's schema does not know (re-read it if the server does)
    # REVIEW: the policy's review or deny is only observed (mode: observe, or the rule's observe):
    # the hold point records it and lets the execution run without asking anyone.
    observed: bool = False
    justify: str | None = None  # REVIEW: the rule behind it that requires the agent's justification to hold it
    # ALLOW: the tagged columns in its results are masked (policy action mask, or a reviewer's
    # approval with masking); None: they pass as they are.
    mask: MaskSpec | None = None

    @property
    def changes_lexing(self) -> bool:
        """Running it may change how the server reads later text (client_encoding...)."""
        return self.parts is not None and any(p.lexing for p in self.parts)

    @property
    def permitted(self) -> Columns:
        """Tagged columns its results may show (those its statements declare they read)."""
        if not self.parts:
            return frozenset()
        if len(self.parts) == 1:
            return self.parts[0].permitted
        return frozenset().union(*(p.permitted for p in self.parts))


ALLOW = Judgement(Verdict.ALLOW)
# A CancelRequest withdraws the statement pgproxy makes the client wait for (see Session.cancel):
# the client gets PostgreSQL's own message for a cancelled statement, and the detail says why
# nothing ran.
CANCELLED_WHILE_HELD = Judgement(Verdict.DENY, SqlState.QUERY_CANCELED,
                                 "canceling statement due to user request",
                                 detail="The statement was waiting for approval; the request was withdrawn.")
CANCELLED_WHILE_DECIDED = Judgement(Verdict.DENY, SqlState.QUERY_CANCELED,
                                    "canceling statement due to user request",
                                    detail="The statement was withdrawn while pgproxy was still deciding whether it "
                                           "needs approval; it did not run.")


def strictest(first: Judgement, second: Judgement) -> Judgement:
    """The stricter of two judgements; of two equal verdicts, one that is enforced outranks one
    that is only observed (an observed review must not carry a held one through). A justification
    one of them requires is required of the result."""
    if _STRICTNESS[second.verdict] != _STRICTNESS[first.verdict]:
        found = second if _STRICTNESS[second.verdict] > _STRICTNESS[first.verdict] else first
    else:
        found = second if (first.observed and not second.observed) or (first.mask is None and second.mask) else first
    if found.verdict is Verdict.ALLOW and found.mask is None and (first.mask or second.mask):
        found = replace(found, mask=first.mask or second.mask)
    if found.justify is None and found.verdict is Verdict.REVIEW and (first.justify or second.justify):
        return replace(found, justify=first.justify or second.justify)
    return found


def approved(judgement: Judgement, mask: MaskSpec | None = None) -> Judgement:
    """What a judgement becomes once a reviewer approved it: the execution may run and its
    results may show the columns the statement reads (masked, when the reviewer approved with
    masking: `mask`)."""
    return replace(judgement, verdict=Verdict.ALLOW, mask=mask or judgement.mask)


def shown_parameters(bind: bytes | None, codec: str | None = None,
                     types: tuple[int, ...] = ()) -> tuple[str | None, ...]:
    """Bind parameters as a reviewer sees them: text as text (in the session's client encoding,
    `codec`; None: UTF-8), binary values as the text of their type (`types`: the statement's
    parameter type OIDs, see PreparedStatement), or as hex when the type is unknown or not one
    pgproxy reads (pgproxy.wire.values)."""
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
            text = binary_text(types[index], value) if index < len(types) else None
            shown.append(text if text is not None else "\\x" + value.hex())
        else:
            shown.append(value.decode(codec or "utf-8", "replace"))
    return tuple(shown)


FUNCTION_CALL = "<function call>"  # a FunctionCall's statement text: it carries no SQL
# Statements a transaction block aborted by an error still runs (PostgreSQL's IsTransactionExitStmt).
# They also undo settings changed in the block (or since the savepoint).
_ENDS_BLOCK = frozenset({OpKind.COMMIT, OpKind.ROLLBACK, OpKind.ROLLBACK_TO, OpKind.PREPARE_TRANSACTION})
# Messages whose strings the server reads in the client encoding (text, names).
_READS_TEXT = frozenset({m.QUERY, m.PARSE, m.BIND, m.EXECUTE, m.DESCRIBE, m.CLOSE, m.FUNCTION_CALL})


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
    runs: PreparedStatement | None = None  # for EXECUTE x / FETCH c: the statement that name runs
    parameter_types: tuple[int, ...] = ()  # of the statement the parameters were bound to


def facts(statement: PreparedStatement) -> Judgement:
    judged = statement.facts
    return judged if isinstance(judged, Judgement) else ALLOW


def _portal_judgement(portal: Portal) -> Judgement:
    judged = facts(portal.statement)
    if portal.approved and judged.verdict is not Verdict.DENY:
        return approved(judged, portal.approved_mask)
    return judged


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
        return Execution(own, statement.sql, portal.bind, [portal], parameter_types=statement.param_types)
    judged, sql, bind, covered = _referenced(target)
    combined = strictest(own, judged)
    combined = replace(combined, composed=True, parts=(
        Part(None, own.permitted | judged.permitted, own.changes_lexing or judged.changes_lexing),),
        mask=own.mask or judged.mask if combined.verdict is Verdict.ALLOW else None)
    shown = f"{statement.sql}\n-- {statement.op.name if statement.op else ''} is: {sql}" if sql else statement.sql
    runs = target.statement if isinstance(target, Portal) else target
    types = target.statement.param_types if isinstance(target, Portal) and bind else statement.param_types
    return Execution(combined, shown, bind or portal.bind, [portal, *covered], runs, types)


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

    def session_closed(self, session: Session) -> None:
        """Called when a session ends (whatever it left unfinished is the gate's to settle)."""

    def forbidden_columns(self, session: Session, columns: list[tuple[int, int]], permitted: Columns) -> list[str]:
        """Of a result's (table oid, attnum) columns, the tagged ones the execution that produced
        it was not cleared to show (their names)."""
        return []

    async def close(self) -> None:
        """Stop background work (the server is shutting down)."""

    async def refresh_schema(self, session: Session) -> None:
        """Read the session's database schema again (the server knows a name pgproxy does not)."""

    def server_refused(self, session: Session, sql: str, judgement: Judgement) -> None:
        """A statement that needed review was refused by the server itself, before any review."""

    def withdrawn(self, session: Session, sql: str, judgement: Judgement) -> None:
        """A statement judged `judgement` was withdrawn by the client's CancelRequest before it was
        held (while the server checked it, or the schema was read again): it did not run."""


@dataclass(slots=True)
class Resume:
    """Continuing at a message that waited: its decision (`judgement`), and whether a reviewer
    approved running it."""

    judgement: Judgement | None = None
    approved: bool = False
    asked: bool = False  # the server parsed the statement already
    mask: MaskSpec | None = None  # approved with masking


@dataclass(slots=True)
class Refuse:
    data: bytes  # what the server is sent instead of the refused message


_DESCRIBE_UNNAMED_PORTAL = m.Describe("P", "").encode()
_EXECUTE_ALL_SYNC = m.Execute("", 0).encode() + m.Sync().encode()


@dataclass(slots=True)
class Wait:
    """Where forwarding stopped: message `index` of the batch waits for its decision (`decide`),
    for a reviewer (`hold`: sql, parameters as shown, judgement; `approve`: the portals an
    approval covers), or, with neither, for the server's answers to what came before it."""

    index: int = 0
    decide: Awaitable[Judgement] | None = None
    hold: tuple[str, tuple[str | None, ...], Judgement] | None = None
    judged: Judgement | None = None  # the statement's own judgement (a Query's, kept for after the hold)
    approve: list[Portal] = field(default_factory=list)
    # First have the server parse this Query (its body, and its text; see ProtocolModel.ask).
    ask: tuple[bytes, str] | None = None
    # The server parsed this statement, which names what pgproxy's schema does not know:
    # read the schema again and judge it afresh before holding it.
    refresh: PreparedStatement | None = None


class DecisionPoint:
    """One session's decision point: each client message that can run SQL or changes what the
    server holds is recorded in the protocol model, judged by what it runs, and forwarded,
    refused (the server is made to fail in its place), or made to wait (see `Wait`)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.model = session.model
        self.gate = session.gate

    # The hot paths: reads that the general path (framing, then `message` for each) would
    # forward unchanged, taken while nothing is outstanding. Each asks the model and the gate
    # the same questions in fewer steps and records the read in the model (the relay then
    # forwards it), or returns False having changed nothing: the general path takes it.

    def quick_query(self, data: bytes) -> bool:
        """A read that is one whole Query which the gate has `settled`: allowed, with nothing to
        remember or record, no effect on the session's objects and nothing tagged to show."""
        size = len(data)
        if (size < 6 or size > self.session.max_message_bytes + 5 or data[-1] != 0
                or unpack_length(data, 1)[0] != size - 1):
            return False
        if self.gate is not None:
            if not self.model.lexing.plain or not self.gate.settled(self.session, m.decode_str(data[5:-1])):
                return False
            self.session.statements += 1
        self.model.query(None)
        return True

    def quick_cycle(self, data: bytes) -> bool:
        """A read that is exactly Bind (unnamed portal), Describe of it or not, Execute (all rows)
        and Sync, of a prepared statement the model knows and the gate allowed with nothing to
        resolve when it runs, outside a transaction block (see ProtocolModel.quick_cycle)."""
        model = self.model
        if model.confirmed.in_block or model.confirmed.frames or model.doomed or not model.lexing.plain:
            return False
        size = len(data)
        if size < 5:
            return False
        (length,) = unpack_length(data, 1)
        end = 1 + length
        if length < 7 or end + 15 > size or data[5] != 0:
            return False  # not whole, or a named portal
        name_end = data.find(0, 6, end)
        if name_end < 0:
            return False
        statement = model.confirmed.statements.get(m.decode_str(data[6:name_end]))
        if statement is None or statement.op is not None:
            return False
        judged = statement.facts
        if judged is not None and (not isinstance(judged, Judgement) or judged.verdict is not Verdict.ALLOW
                                   or judged.changes_lexing or judged.mask is not None):
            return False
        described = data[end] == m.DESCRIBE
        if described:
            if data[end:end + 7] != _DESCRIBE_UNNAMED_PORTAL:
                return False
            end += 7
        if data[end:] != _EXECUTE_ALL_SYNC:
            return False
        if not described and self.gate is not None and statement.columns is None:
            return False  # the result guard needs the portal described first (the general path does it)
        model.quick_cycle(statement, data[5:1 + length], described,
                          judged.permitted if judged is not None else frozenset())
        return True

    def message(self, type_byte: int, buf: bytes, start: int, end: int,
                resume: Resume | None) -> bytes | Refuse | Wait | None:
        """One client message (not Terminate): None to forward it, bytes to send before it, a
        `Refuse` to send instead of it, or a `Wait`: it must wait for its decision, a reviewer,
        or the server's answers to what came before it."""
        model = self.model
        try:
            if model.lexing.pending and type_byte in _READS_TEXT:
                return self._lexing_unsettled(type_byte)
            if type_byte == m.EXECUTE:
                return self._on_execute(buf, start, end, resume)
            if type_byte == m.BIND:
                return self._on_bind(buf, start, end, resume)
            if type_byte == m.SYNC:
                model.sync()
                return None
            if type_byte == m.PARSE:
                return self._on_parse(buf[start + 5:end], resume)
            if type_byte == m.QUERY or type_byte == m.FUNCTION_CALL:
                return self._on_query(type_byte, buf[start + 5:end], resume)
            if type_byte == m.DESCRIBE or type_byte == m.CLOSE:
                kind, name = chr(buf[start + 5]), model.lexing.decode(buf[start + 6:end - 1])
                if buf[end - 1] != 0 or kind not in ("S", "P"):
                    raise m.MessageFormatError("invalid Describe or Close message")
                if model.is_reserved(name):
                    return self._reserved(name)
                (model.describe if type_byte == m.DESCRIBE else model.close)(kind, name)
                return None
            if type_byte == m.COPY_DONE or type_byte == m.COPY_FAIL:
                model.copy_end()
                return None
            return None  # Flush, CopyData
        except m.MessageFormatError as exc:
            raise ClientProtocolError(f"invalid {chr(type_byte)!r} message: {exc}") from None
        except UnreadableText as exc:
            return self.refusal(type_byte, Judgement(Verdict.DENY, SqlState.CHARACTER_NOT_IN_REPERTOIRE, str(exc)))

    def _lexing_unsettled(self, type_byte: int) -> Refuse | Wait:
        """A statement that may change how the server reads text has not been answered up to its
        ReadyForQuery (where the server reports the new settings): wait for it, or, when nothing
        more is coming before a Sync the client has not sent, refuse rather than guess."""
        if not self.model.idle:
            return Wait()
        return self.refusal(type_byte, Judgement(
            Verdict.DENY, SqlState.PROTOCOL_VIOLATION,
            "pgproxy must see the server's answer to a change of client_encoding or standard_conforming_strings "
            "before it reads the next statement", detail="Send Sync after the statement that changes the setting."))

    def _reserved(self, name: str, type_byte: int = m.PARSE) -> Refuse:
        return self.refusal(type_byte, Judgement(
            Verdict.DENY, SqlState.INSUFFICIENT_PRIVILEGE,
            f'the name "{name}" is reserved by pgproxy', detail=f"Names starting with {RESERVED_PREFIX} are "
            "pgproxy's own."))

    def _on_parse(self, body: bytes, resume: Resume | None) -> Refuse | Wait | None:
        parse = m.decode_parse(body, self.model.lexing.decode)
        if self.model.is_reserved(parse.name):
            return self._reserved(parse.name)
        judged: Judgement = ALLOW
        if self.gate is not None:
            if resume is not None and resume.judgement is not None:
                judged = resume.judgement
            else:
                decided = self._judge(Statement("extended", parse.sql, parse.name))
                if not isinstance(decided, Judgement):
                    return Wait(decide=decided)
                judged = decided
            # Parsing runs nothing: a statement that needs review is held when it is executed.
            if judged.verdict is Verdict.DENY or (judged.verdict is Verdict.REVIEW and not self.gate.holds):
                return self.refusal(m.PARSE, judged)
        parts = judged.parts
        op = parts[0].op if parts is not None and len(parts) == 1 else None
        self.model.parse(parse.name, PreparedStatement(parse.sql, judged, op, param_types=parse.param_types))
        return None

    def _on_bind(self, buf: bytes, start: int, end: int, resume: Resume | None) -> Refuse | Wait | None:
        body = buf[start + 5:end]
        portal_end = body.index(0)
        statement_end = body.index(0, portal_end + 1)
        model_text = self.model.lexing.decode
        portal = model_text(body[:portal_end])
        statement = model_text(body[portal_end + 1:statement_end])
        model = self.model
        if model.is_reserved(portal) or model.is_reserved(statement):
            return self._reserved(portal if model.is_reserved(portal) else statement)
        # Binding to the unnamed portal always replaces it; a named one must not exist yet.
        found, certain = model.statement(statement)
        if not certain or (portal != "" and not model.portal(portal)[1]):
            return Wait()
        judged = facts(found) if found is not None else ALLOW
        if judged.verdict is not Verdict.ALLOW and judged.plans_code and self.gate is not None:
            # Binding plans the statement, and planning it runs code: judged here, not at Execute.
            if resume is None or not resume.approved:
                if not model.idle:
                    return Wait()  # only what will run (see _on_query)
                if self._refused_anyway(found.op if found is not None else None):
                    model.bind(portal, statement, body)
                    return None
                if judged.verdict is Verdict.REVIEW and self.gate.holds and found is not None:
                    if judged.stale and not (resume is not None and resume.asked):
                        return Wait(refresh=found)
                    return Wait(hold=(found.sql, shown_parameters(body, model.lexing.codec, found.param_types), judged))
                return self.refusal(m.BIND, judged)
            created = model.bind(portal, statement, body)
            if created is not None:
                created.approved = True  # the approval covers the portal this Bind makes
                created.approved_mask = resume.mask
            return None
        model.bind(portal, statement, body)
        return None

    def _on_execute(self, buf: bytes, start: int, end: int, resume: Resume | None) -> bytes | Refuse | Wait | None:
        model = self.model
        name = model.lexing.decode(buf[start + 5:buf.index(0, start + 5)])
        portal, certain = model.portal(name)
        if not certain:
            return Wait()
        if portal is None:
            model.execute(name, None, frozenset())  # the server refuses it: no such portal
            return None
        found = execution(model, portal)
        if found is None:
            return Wait()
        judged = found.judgement
        if resume is not None and resume.approved:
            judged = approved(judged, resume.mask)
        if judged.verdict is Verdict.ALLOW and judged.mask is not None:
            # Masked: the proxy describes the portal itself, so that the RowDescription naming its
            # columns (table, attnum, type) comes right before its rows, whatever the client did.
            parts = judged.parts
            copy = parts[0].copy if parts is not None and len(parts) == 1 else None
            masked = model.execute_masked(name, portal, judged.permitted, judged.mask, copy, found.runs)
            self._lexing_may_change(judged.changes_lexing, (portal.statement.op,))
            return masked
        if judged.verdict is Verdict.ALLOW:
            before = None
            if self.gate is not None and model.needs_describe(portal):
                # The result guard must know the portal's columns before its rows come.
                model.describe("P", name, own=True)
                before = m.Describe("P", name).encode()
            model.execute(name, portal, judged.permitted, found.runs)
            self._lexing_may_change(judged.changes_lexing, (portal.statement.op,))
            return before
        if not model.idle:
            return Wait()  # hold or refuse only what will run: an earlier message may yet fail
        if self._refused_anyway(portal.statement.op):
            model.execute(name, portal, judged.permitted, fails=True)  # no rows come: nothing to guard
            return None
        if judged.verdict is Verdict.REVIEW and self.gate is not None and self.gate.holds:
            if judged.stale and not (resume is not None and resume.asked) and found.runs is None:
                return Wait(refresh=portal.statement)
            shown = shown_parameters(found.parameters, model.lexing.codec, found.parameter_types)
            return Wait(hold=(found.sql, shown, judged), approve=found.approve)
        return self.refusal(m.EXECUTE, judged)

    def _on_query(self, type_byte: int, body: bytes, resume: Resume | None) -> Refuse | Wait | None:
        model = self.model
        if self.gate is None:
            (model.query(None) if type_byte == m.QUERY else model.function_call())
            return None
        if model.segment_open:
            # Whether the server runs this Query or skips it (an earlier message of the pipeline
            # failed) is known once those messages are answered: judging it before could hold
            # what never runs, and a refusal's own Sync would end the server's skipping early.
            return Wait()
        sql = m.decode_query_text(body, model.lexing.decode) if type_byte == m.QUERY else FUNCTION_CALL
        if resume is not None and resume.judgement is not None:
            judged = resume.judgement
        else:
            decided = self._judge(Statement("simple" if type_byte == m.QUERY else "function", sql))
            if not isinstance(decided, Judgement):
                return Wait(decide=decided)
            judged = decided
        is_approved = resume is not None and resume.approved
        if type_byte == m.FUNCTION_CALL:
            if judged.verdict is Verdict.ALLOW or is_approved:
                model.function_call()
                return None
            if not model.idle:
                return Wait(judged=judged)
            if self._refused_anyway(None):
                model.function_call()
                return None
            if judged.verdict is Verdict.REVIEW and self.gate.holds:
                return Wait(hold=(FUNCTION_CALL, (), judged), judged=judged)
            return self.refusal(type_byte, judged)
        for part in judged.parts or ():
            if part.op is not None and model.is_reserved(part.op.name):
                return self._reserved(part.op.name, type_byte)  # PREPARE, DECLARE, ... of pgproxy's names
        resolved = self._resolve_query(judged, is_approved, sql, resume.mask if resume is not None else None)
        if resolved is None:
            return Wait()
        parts, combined, shown, bind, covered = resolved
        if combined.verdict is Verdict.ALLOW or is_approved:
            model.query(parts)
            self._lexing_may_change(
                judged.changes_lexing or any(p.runs is not None and facts(p.runs).changes_lexing for p in parts or ()),
                (p.op for p in parts or ()))
            return None
        if not model.idle:
            return Wait(judged=judged)  # hold or refuse only what will run (see _refused_anyway)
        if self._refused_anyway(parts[0].op if parts else None):
            model.query(parts)
            return None
        if combined.verdict is Verdict.REVIEW and self.gate.holds:
            if judged.ask and not (resume is not None and resume.asked):
                return Wait(ask=(body, sql), judged=judged)
            types = next((p.statement.param_types for p in reversed(covered) if p.bind), ())  # whose bind it is
            return Wait(hold=(shown, shown_parameters(bind, model.lexing.codec, types), combined), judged=judged,
                        approve=covered)
        return self.refusal(type_byte, combined)

    def _lexing_may_change(self, changes: bool, ops: Iterable[SessionOp | None]) -> None:
        """After forwarding an execution: if it may change how the server reads text, or ends the
        block in which such a change was made, later text waits for the server's report."""
        lexing = self.model.lexing
        if changes or (lexing.in_block and any(op is not None and op.kind in _ENDS_BLOCK for op in ops)):
            lexing.pending = True

    def _refused_anyway(self, first: SessionOp | None) -> bool:
        """The server will refuse the statement without running it: its transaction block is
        aborted (it said so) and the statement does not end the block. Holding it would ask a
        reviewer about something that never runs; the server's own error is the answer."""
        model = self.model
        return (model.idle and model.confirmed.failed
                and (first is None or first.kind not in _ENDS_BLOCK))

    def _resolve_query(self, judged: Judgement, is_approved: bool, sql: str, approved_mask: MaskSpec | None = None,
                       ) -> tuple[list[QueryPart] | None, Judgement, str, bytes | None, list[Portal]] | None:
        """A simple Query's statements as the model records them, with what each EXECUTE or
        FETCH in it runs (objects its earlier statements create count), and the judgement of
        the whole; None when a name it runs is not yet certain."""
        if judged.parts is None:
            if judged.mask is not None or approved_mask is not None:
                # Masking needs the statements (each result's masks): never run one unmasked instead.
                raise ProxyError(SqlState.INTERNAL_ERROR, "pgproxy cannot mask this statement's result")
            return None, judged, sql, None, []
        model = self.model
        objects = model.predicted.copy()
        segment = model.segment + 1
        combined = judged
        notes: list[str] = []
        bind: bytes | None = None
        covered: list[Portal] = []
        parts: list[QueryPart] = []
        for part in judged.parts:
            op = part.op
            runs: PreparedStatement | None = None
            permitted = part.permitted
            mask = approved_mask or judged.mask if is_approved or judged.verdict is Verdict.ALLOW else None
            if op is not None and op.kind in REFERENCES:
                table = objects.statements if op.kind is OpKind.EXECUTE else objects.portals
                touched = (objects.statement_touched if op.kind is OpKind.EXECUTE else objects.portal_touched)
                everything = (objects.statements_touched_all if op.kind is OpKind.EXECUTE
                              else objects.portals_touched_all)
                if not model.certain_at(max(touched.get(op.name, -1), everything)):
                    return None
                target = table.get(op.name)
                if isinstance(target, Portal):
                    referenced = facts(target.statement)
                    if target.approved and referenced.verdict is not Verdict.DENY:
                        referenced = approved(referenced, target.approved_mask)
                    runs = target.statement
                    bind = target.bind or bind
                    covered.append(target)
                elif isinstance(target, PreparedStatement):
                    referenced = facts(target)
                    runs = target
                else:
                    referenced = ALLOW
                if runs is not None:
                    notes.append(f"-- {op.name} is: {runs.sql}")
                    combined = replace(strictest(combined, referenced), composed=True)
                    permitted = permitted | referenced.permitted
                    mask = mask or (referenced.mask if referenced.verdict is Verdict.ALLOW else None)
            if op is not None and is_approved and op.kind is OpKind.DECLARE and isinstance(op.facts, Judgement):
                op = replace(op, facts=approved(op.facts, approved_mask))  # the approval covers the cursor
            if op is not None and objects.touches(op):
                objects.apply(op, segment)
            parts.append(QueryPart(op, permitted, runs, mask, part.copy if mask is not None else None))
        shown = "\n".join([sql, *notes]) if notes else sql
        return parts, combined, shown, bind, covered

    def _judge(self, statement: Statement) -> Judgement | Awaitable[Judgement]:
        assert self.gate is not None
        self.session.statements += 1
        return self.gate.judge(self.session, statement)

    def refusal(self, type_byte: int, judgement: Judgement) -> Refuse:
        """The bytes that make the server fail in place of a refused message (see ProtocolModel.refuse)."""
        error = m.ErrorResponse.make("ERROR", judgement.sqlstate, judgement.message, detail=judgement.detail).encode()
        simple = type_byte == m.QUERY or type_byte == m.FUNCTION_CALL
        return Refuse(self.model.refuse(error, simple=simple, query=type_byte == m.QUERY))
