"""Enforce mode: the StatementGate that analyses each statement, applies the policy and
guards results. It owns the decision cache and each session's analysis state (the
search_path the session set). What the session's prepared statements and cursors are is the
protocol model's to know: a judgement travels with the object it judged (see
pgproxy.decision)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import pglast

from pgproxy.analysis.cache import DecisionCache, normalize, normalize_shaped, shape_key
from pgproxy.analysis.gate import analyze, planning_runs_code
from pgproxy.analysis.justification import FORM as JUSTIFICATION_FORM
from pgproxy.analysis.justification import MalformedJustification
from pgproxy.analysis.justification import justification as read_justification
from pgproxy.analysis.masking import unmaskable
from pgproxy.analysis.model import Analysis, Kind
from pgproxy.analysis.schema import Schema
from pgproxy.approvals.display import statement_view
from pgproxy.approvals.preview import Previews
from pgproxy.approvals.service import Approvals, statement_sha256
from pgproxy.audit import AuditLog, iso, members, statement_members
from pgproxy.decision import (
    ALLOW,
    CANCELLED_WHILE_HELD,
    FUNCTION_CALL,
    Judgement,
    Part,
    Statement,
    StatementGate,
    Verdict,
)
from pgproxy.errors import SqlState
from pgproxy.masking import CopySpec, MaskSpec
from pgproxy.policy import Action, Decision, HoldMode, decide, rule_named, strictest
from pgproxy.protocol.objects import OpKind
from pgproxy.store import ApprovalRequest, Status, StoreError

if TYPE_CHECKING:
    from pgproxy.catalog import Catalog
    from pgproxy.config import Config
    from pgproxy.session import Session

log = logging.getLogger("pgproxy.enforce")

# Statements up to this size are analysed on the event loop (well under a millisecond for
# typical ones); longer ones go to a worker thread so that other sessions are not stalled.
INLINE_ANALYSIS_BYTES = 8 * 1024


@dataclass(slots=True)
class Verdicts:
    """A query string's decision and the analyses behind it (cached together)."""

    decision: Decision
    analyses: tuple[Analysis, ...]
    # Its audit event's members (normalized statement; analysis and decision), made once.
    audit_members: tuple[str, str] | None = None
    # Whether allowing it changes the session's state (see PolicyGate._remember), found once.
    remembered: bool | None = None
    # Per statement: its effect on the session's objects and the tagged columns it reads.
    parts: tuple[Part, ...] | None = None

    @property
    def plain_allow(self) -> bool:
        """An ALLOW already found to change nothing in the session's state."""
        return self.remembered is False and self.decision.action is Action.ALLOW


@dataclass(slots=True)
class SessionState:
    search_path: tuple[str, ...] | None = None
    refresh_pending: bool = False  # DDL passed: re-read the schema once it is visible (committed)
    # Relations DDL of the open transaction changed (its effect is not visible to others yet)
    ddl_targets: set[str] = field(default_factory=set)
    # Barriers this session's committed DDL set up, released once the schema is read again
    published: list[asyncio.Future[None]] = field(default_factory=list)
    # The cache key's context, for the (schema version, search_path) it was built for.
    key_prefix: tuple[tuple[str, tuple[str, ...]], tuple[str, ...]] = (("", ()), ())
    # This session's recent decisions by statement shape (see cache.shape_key), valid for
    # one cache key context and one generation of the shared cache: a hit skips the shared
    # cache's normalizing and LRU bookkeeping.
    recent: dict[str, Verdicts] = field(default_factory=dict)
    recent_for: tuple[tuple[str, ...], int] = ((), -1)
    recent_chars: int = 0


RECENT_ENTRIES = 128  # per session
# How long a statement waits for the schema to be read after another session's DDL became
# visible, before it reads the schema itself (the DDL's session may be gone).
SCHEMA_WAIT_SECONDS = 10.0
RECENT_CHARS = 32 * 1024  # of statement text, per session


class PolicyGate(StatementGate):
    """Decides each statement of a session from the analysis and the policy."""

    def __init__(self, config: Config, catalog: Catalog, approvals: Approvals | None = None,
                 audit: AuditLog | None = None) -> None:
        self.config = config
        self.catalog = catalog
        self.approvals = approvals
        self.audit = audit
        # Observed decisions (mode: observe, or a rule's observe) go to the hold point too, which
        # records them and lets them run; without approvals, other reviews are refused (_verdict).
        self.observing = config.policy.observe or any(rule.observe for rule in config.policy.rules)
        self.holds = approvals is not None or self.observing
        self.strict = True  # every statement is analysed: the protocol model's predictions bind
        self.policy = config.policy
        self.limits = config.analysis
        self.cache: DecisionCache[Verdicts] = DecisionCache(
            max_entries=self.limits.cache_entries, max_bytes=self.limits.cache_bytes)
        self._refreshes: set[asyncio.Task[None]] = set()
        # Per database: relations a visible DDL changed, until the schema is read again. A
        # statement touching one (or naming what the old schema does not know) waits for it.
        self._barriers: dict[str, list[tuple[frozenset[str], asyncio.Future[None]]]] = {}
        self._tagged: tuple[str, dict[tuple[int, int], str]] = ("", {})
        self._masks: tuple[str, MaskSpec | None] = ("", None)
        # EXPLAIN previews of held statements, run in the background (see pgproxy.approvals.preview).
        self.previews = Previews(config.approvals.explain_timeout_seconds if config.approvals is not None else 0)

    def state(self, session: Session) -> SessionState:
        if not isinstance(session.gate_state, SessionState):
            session.gate_state = SessionState()
        return session.gate_state

    # -- the decision point -----------------------------------------------------------

    def judge(self, session: Session, statement: Statement) -> Judgement | Awaitable[Judgement]:
        if self._barriers.get(session.database):
            return self._judge_after_ddl(session, statement)
        return self._judge(session, statement)

    async def _judge_after_ddl(self, session: Session, statement: Statement) -> Judgement:
        """Another session's DDL became visible and the schema is being read again: a statement
        that touches what it changed (or names what the old schema does not know) is judged on
        the new schema, never the old one."""
        schema = self.catalog.schema(session.database)
        identity = session.identity
        assert identity is not None
        while schema is not None and statement.protocol != "function":
            barriers = self._barriers.get(session.database, [])
            verdicts = self._compute(statement.sql, schema, self.state(session), identity.agent_id, identity.groups)
            waiting = [future for targets, future in barriers if _touches(verdicts, targets)]
            if not waiting:
                break
            done, _ = await asyncio.wait(waiting, timeout=SCHEMA_WAIT_SECONDS)
            if not done:  # the DDL's session is gone or slow: read the schema here
                await self.refresh_schema(session)
                self._release(session.database, waiting)
            schema = self.catalog.schema(session.database)
        judged = self._judge(session, statement)
        return judged if isinstance(judged, Judgement) else await judged

    def _release(self, database: str, futures: list[asyncio.Future[None]]) -> None:
        for future in futures:
            if not future.done():
                future.set_result(None)
        remaining = [(t, f) for t, f in self._barriers.get(database, []) if not f.done()]
        if remaining:
            self._barriers[database] = remaining
        else:
            self._barriers.pop(database, None)

    def _judge(self, session: Session, statement: Statement) -> Judgement | Awaitable[Judgement]:
        if self.audit is not None and self.audit.saturated:
            return self._judge_when_audited(session, statement)
        schema = self.catalog.schema(session.database)
        identity = session.identity
        assert identity is not None
        if statement.protocol == "function":
            return self._judgement(self._builtin(Action.REVIEW, "function-call",
                                                 "the fast-path FunctionCall interface runs a function by OID, "
                                                 "which pgproxy does not analyse"), session, statement, None)
        if schema is None:
            return self._judgement(self._builtin(Action.REVIEW, "no-schema",
                                                 "pgproxy has not read this database's schema"),
                                   session, statement, None)
        state = self.state(session)
        sql = statement.sql
        # UTF-8 takes at most 4 bytes a character, so a short statement needs no encoding to be
        # known to be under both limits below (its character count stands in for its size).
        size = len(sql)
        if size * 4 > min(INLINE_ANALYSIS_BYTES, self.limits.max_statement_bytes) \
                and size <= self.limits.max_statement_bytes:  # more characters than that: over it, unencoded
            size = len(sql.encode("utf-8", "surrogateescape"))
        if size > self.limits.max_statement_bytes:
            reason = (f"the statement is larger than {self.limits.max_statement_bytes} bytes, "
                      "so pgproxy does not analyse it")
            return self._judgement(self._builtin(self.limits.oversized_action, "oversized-statement", reason),
                                   session, statement, None)
        key = self._key(schema, state, identity.agent_id, identity.groups)
        shape = shape_key(sql)
        if shape is not None:
            verdicts = self._recent(state, key).get(shape)
            if verdicts is not None:
                self.cache.hits += 1
                return self._conclude(session, schema, verdicts, statement)
        normalized = normalize_shaped(sql, shape)
        cached, by_shape = self.cache.lookup(sql, normalized, key)
        if cached is not None:
            if by_shape and shape is not None:
                self._recall(state, shape, cached)
            return self._conclude(session, schema, cached, statement)
        if size <= INLINE_ANALYSIS_BYTES:
            verdicts = self._compute(sql, schema, state, identity.agent_id, identity.groups)
            if self._store(sql, normalized, key, verdicts) and shape is not None:
                self._recall(state, shape, verdicts)
            return self._conclude(session, schema, verdicts, statement)
        return self._judge_in_thread(session, schema, statement, state, normalized, key)

    def settled(self, session: Session, sql: str) -> bool:
        """The relay's shortcut (see StatementGate.settled): true only when the session's memo
        holds an ALLOW for the statement's shape that has nothing to remember, and there is
        no audit log to write; judge() would then return ALLOW and do nothing else."""
        state = session.gate_state
        schema = self.catalog.schema(session.database)
        if (self.audit is not None or schema is None or not isinstance(state, SessionState)
                or len(sql) * 4 > self.limits.max_statement_bytes or state.ddl_targets
                or session.database in self._barriers):
            return False
        identity = session.identity
        assert identity is not None
        shape = shape_key(sql)
        if shape is None:
            return False
        verdicts = self._recent(state, self._key(schema, state, identity.agent_id, identity.groups)).get(shape)
        if verdicts is None or not verdicts.plain_allow:
            return False
        self.cache.hits += 1
        return True

    def _recent(self, state: SessionState, key: tuple[str, ...]) -> dict[str, Verdicts]:
        """The session's memo of decisions by shape, emptied if it was kept for another cache
        key context or generation of the shared cache."""
        if state.recent_for[0] is not key or state.recent_for[1] != self.cache.generation:
            state.recent_for = (key, self.cache.generation)
            state.recent.clear()
            state.recent_chars = 0
        return state.recent

    @staticmethod
    def _recall(state: SessionState, shape: str, verdicts: Verdicts) -> None:
        """Keep a decision that holds for every statement of this shape in the session's memo."""
        if len(state.recent) >= RECENT_ENTRIES or state.recent_chars + len(shape) > RECENT_CHARS:
            state.recent.clear()
            state.recent_chars = 0
        state.recent[shape] = verdicts
        state.recent_chars += len(shape)

    async def _judge_when_audited(self, session: Session, statement: Statement) -> Judgement:
        """The audit queue is full: wait for room (back-pressure), or refuse (fail closed)."""
        assert self.audit is not None
        if not await self.audit.admit():
            session.log.error("statement refused: the audit log is not keeping up",
                              extra={"audit_error": self.audit.failure})
            return Judgement(Verdict.DENY, SqlState.SYSTEM_ERROR,
                             "pgproxy cannot record this statement in its audit log, so it was not run",
                             detail="The audit log's queue is full; try again shortly.")
        judged = self.judge(session, statement)
        return judged if isinstance(judged, Judgement) else await judged

    async def _judge_in_thread(self, session: Session, schema: Schema, statement: Statement, state: SessionState,
                               normalized: str | None, key: tuple[str, ...]) -> Judgement:
        """A long statement is analysed off the event loop, so other sessions carry on meanwhile."""
        identity = session.identity
        assert identity is not None
        verdicts = await asyncio.to_thread(self._compute, statement.sql, schema, state, identity.agent_id,
                                           identity.groups)
        self._store(statement.sql, normalized, key, verdicts)
        return self._conclude(session, schema, verdicts, statement)

    def _conclude(self, session: Session, schema: Schema, verdicts: Verdicts, statement: Statement) -> Judgement:
        state = session.gate_state
        if (isinstance(state, SessionState) and state.ddl_targets and verdicts.decision.action is Action.ALLOW
                and _touches(verdicts, frozenset(state.ddl_targets))):
            # Inside the transaction that changed them, pgproxy has not read the new definitions
            # (it reads them when the transaction commits): judging on the old ones could miss
            # what the change added.
            return self._judgement(self._builtin(
                Action.REVIEW, "schema-changing",
                f"it uses {', '.join(sorted(state.ddl_targets))}, which DDL earlier in this transaction "
                "changed; pgproxy reads the new definition when the transaction commits"),
                session, statement, verdicts)
        if self.audit is None and verdicts.plain_allow:
            return ALLOW  # the common case: nothing to remember, nothing to record
        self._remember(session, verdicts)
        if verdicts.parts is None:
            verdicts.parts = self._parts(schema, verdicts, session)
        return self._judgement(verdicts.decision, session, statement, verdicts)

    def _parts(self, schema: Schema, verdicts: Verdicts, session: Session) -> tuple[Part, ...]:
        """Each statement's effect on the session's objects (with the judgement of the query a
        PREPARE or DECLARE keeps, decided now and applied when it runs) and its tagged reads."""
        identity = session.identity
        assert identity is not None
        parts = []
        for analysis in verdicts.analyses:
            op = analysis.op
            if op is not None and analysis.stored is not None:
                stored = analysis.stored
                decision = decide(self.policy, stored, identity.agent_id, identity.groups)
                inner = Verdicts(decision, (stored,))
                inner.parts = (Part(None, _tagged_reads(schema, stored), stored.lexing),)
                op = replace(op, facts=self._verdict(decision, inner, "extended", session.database))
            parts.append(Part(op, _tagged_reads(schema, analysis), analysis.lexing, self._copy_spec(schema, analysis)))
        return tuple(parts)

    # -- masking ---------------------------------------------------------------------------

    def mask_spec(self, schema: Schema) -> MaskSpec:
        """The masks of the tagged columns of base tables (what a RowDescription can name)."""
        spec = self._masks[1]
        if self._masks[0] != schema.version or spec is None:
            tagged = {(r.oid, r.attnums[r.columns.index(c)]): tags for r in schema.relations.values()
                      if r.kind in ("r", "p", "f") for c, tags in r.tags.items() if c in r.columns}
            spec = MaskSpec(self.config.masking, tagged)
            self._masks = (schema.version, spec)
        return spec

    def _copy_spec(self, schema: Schema, analysis: Analysis) -> CopySpec | None:
        output = analysis.copy_output
        if output is None:
            return None
        kinds = []
        text = set()
        for position, key in enumerate(output.columns):
            relation = schema.relations.get((key.schema, key.table)) if key is not None else None
            tags = relation.tags.get(key.column) if relation is not None and key is not None else None
            kinds.append(self.config.masking.kind_for(tags) if tags else None)
            if relation is not None and key is not None and key.column in relation.text_columns:
                text.add(position)
        return CopySpec(output.format, tuple(kinds), frozenset(text))

    @staticmethod
    def _unmaskable(verdicts: Verdicts | None) -> str | None:
        """Why a statement's results cannot be masked (None: they can)."""
        return "pgproxy could not analyse it" if verdicts is None else unmaskable(verdicts.analyses)

    # -- the hold point ---------------------------------------------------------------------

    async def hold(self, session: Session, sql: str, parameters: tuple[str | None, ...],
                   judgement: Judgement) -> Judgement:
        """Hold a statement judged REVIEW until a reviewer decides, it expires, or it is withdrawn.
        One whose decision is only observed is recorded and runs at once (after the same grant check).

        Cancelled (the client's CancelRequest, Terminate or disconnect), the statement is withdrawn
        and recorded as such once, whenever that comes: while its request waits or is being stored
        (with the request's id; the request is withdrawn too), or before (no request exists)."""
        recorded: list[str] = []  # outcomes audited by _hold
        try:
            return await self._hold(session, sql, parameters, judgement, recorded)
        except asyncio.CancelledError:
            if not recorded and self.audit is not None:
                verdicts = judgement.context if isinstance(judgement.context, Verdicts) else None
                self._audit(session, sql, judgement.protocol, verdicts, verdicts.decision if verdicts else None,
                            "withdrawn", statement_sha256(sql, parameters))
            raise

    async def _hold(self, session: Session, sql: str, parameters: tuple[str | None, ...], judgement: Judgement,
                    recorded: list[str]) -> Judgement:
        approvals = self.approvals
        identity = session.identity
        assert identity is not None
        verdicts = judgement.context if isinstance(judgement.context, Verdicts) else None
        decision = verdicts.decision if verdicts is not None else None
        rule = rule_named(self.policy, decision.rule) if decision is not None else None
        # A long text's hash is taken in a worker thread (hashlib lets the event loop run meanwhile).
        size = len(sql) + sum(len(p) for p in parameters if p is not None)
        sha = statement_sha256(sql, parameters) if size <= INLINE_ANALYSIS_BYTES \
            else await asyncio.to_thread(statement_sha256, sql, parameters)
        shape = _grant_key(sql, sha, verdicts)
        started = time.monotonic()

        def audited(outcome: str, result: Judgement, **fields: object) -> Judgement:
            recorded.append(outcome)
            if self.audit is not None:
                self._audit(session, sql, judgement.protocol, verdicts, decision, outcome, sha,
                            {**fields, "wait_seconds": round(time.monotonic() - started, 3)})
            return result

        try:
            justification = read_justification(sql)
        except MalformedJustification as exc:
            if not judgement.observed:  # observed: recorded below, and it runs
                return audited("malformed-justification",
                               Judgement(Verdict.DENY, SqlState.SYNTAX_ERROR, exc.message))
            justification = None
        if justification is None and judgement.justify is not None and not judgement.observed:
            return audited("unjustified", _unjustified(judgement.justify))
        try:
            grant = await approvals.covered(identity.agent_id, session.database, shape) if approvals else None
        except StoreError:
            grant = None
        if grant is not None and judgement.composed:
            grant = None  # it covers what a name stood for when it ran: a shape says nothing of that
        if grant is not None:
            session.log.info("statement covered by a grant", extra={"grant": grant.id, "granted_by": grant.granted_by,
                                                                    "approval": grant.approval_id})
            return audited("granted", self._allow_approved(session, verdicts), grant={
                "id": grant.id, "granted_by": grant.granted_by, "approval_id": grant.approval_id,
                "expires": iso(grant.expires_at)})
        if judgement.observed:
            if self.audit is not None:
                self._audit(session, sql, judgement.protocol, verdicts, decision, "observed", sha)
            return self._allow_approved(session, verdicts)
        assert approvals is not None  # without approvals, REVIEW is refused (see _verdict)
        timeout = rule.timeout_seconds if rule is not None and rule.timeout_seconds else approvals.timeout_seconds
        mode = rule.hold_mode if rule is not None and rule.hold_mode is not None else approvals.hold_mode
        now = time.time()
        # Whether a reviewer may approve it with masking, and if not, why (shown on the page).
        problem = self._unmaskable(verdicts) if not judgement.composed else "it runs another object (EXECUTE, FETCH)"
        masking = {"possible": problem is None, "reason": problem}
        reason = decision.reason if decision is not None else judgement.message
        if decision is not None and decision.action is Action.MASK and problem is not None:
            reason = f"{reason}; pgproxy cannot mask its result: {problem}"  # the rule masks; this it cannot
        request = ApprovalRequest(
            id=approvals.new_id(), agent=identity.agent_id, groups=tuple(sorted(identity.groups)),
            database=session.database, statement=sql, parameters=parameters, statement_sha256=sha,
            analysis={"statements": _request_analyses(sql, verdicts.analyses), "masking": masking}
            if verdicts is not None else {},
            rule=decision.rule if decision is not None else "review",
            reason=reason,
            client_address=session.client_address,
            application_name=_application_name(session), created_at=now, expires_at=now + timeout,
            required_approvals=rule.approvals_required if rule is not None else 1,
            reviewer_groups=tuple(sorted(rule.reviewer_groups)) if rule is not None else (),
            max_grant_minutes=rule.max_grant_minutes if rule is not None else 0, shape=shape, hold_mode=mode.value,
            justification=justification)
        if mode is HoldMode.RETRY:  # most retries find their request: its view is made when read
            return await self._answer_retry(session, request, verdicts, audited)
        try:
            # What reviewers will see is made now, in a worker thread, before any notifier asks
            # (and before the notice: from then on the client may withdraw a stored request).
            await statement_view(request)
        except Exception:
            log.exception("could not prepare the approval request's view", extra={"session": session.id})
        expires = _utc(request.expires_at)
        session.send_notice(f"statement held for approval: {approvals.link(request.id)}",
                            detail=f"{judgement.message}. A reviewer must approve it before {expires}; "
                                   "cancel the query to withdraw the request.")
        preview = None
        if verdicts is not None and session.upstream is not None:
            # Shown as "estimating" from the start; run once the request is stored, in the
            # background: it never delays the request.
            preview = self.previews.start(request.id, session.upstream.route, sql, parameters, verdicts.analyses,
                                          self.state(session).search_path)
        try:
            outcome = await approvals.hold(request, stored=preview)
        except StoreError:
            log.exception("approval store unavailable", extra={"session": session.id})
            return audited("error", Judgement(
                Verdict.DENY, SqlState.SYSTEM_ERROR,
                "pgproxy cannot record the approval request, so the statement was not run"), approval_id=request.id)
        except asyncio.CancelledError:
            audited("withdrawn", CANCELLED_WHILE_HELD, approval_id=request.id)
            raise
        held = {"approval_id": request.id, "reviewers": list(outcome.reviewers),
                "decision_reason": outcome.reason, "justification": justification}
        if outcome.status is Status.APPROVED:
            session.log.info("held statement approved", extra={"approval": request.id,
                                                                "reviewer": outcome.reviewer})
            return audited("approved", self._allow_approved(session, verdicts, masked=outcome.masked),
                           **held, masked=outcome.masked)
        if outcome.status is Status.DENIED:
            return audited("rejected", Judgement(
                Verdict.DENY, SqlState.INSUFFICIENT_PRIVILEGE,
                f"denied by reviewer {outcome.reviewer}: {outcome.reason or 'no reason given'}",
                detail=f"approval request {request.id}"), **held)
        if outcome.status is Status.EXPIRED:
            return audited("expired", Judgement(
                Verdict.DENY, SqlState.QUERY_CANCELED,
                f"approval request expired after {timeout:g} s without a decision",
                detail=f"approval request {request.id}"), **held)
        return audited("withdrawn", CANCELLED_WHILE_HELD, **held)

    async def _answer_retry(self, session: Session, request: ApprovalRequest, verdicts: Verdicts | None,
                            audited: Callable[..., Judgement]) -> Judgement:
        """Retry mode: the statement is answered at once, never held (see Approvals.retry). It runs
        only as the one use of an approval of the identical statement by the same agent."""
        approvals = self.approvals
        assert approvals is not None
        try:
            answer = await approvals.retry(request)
        except StoreError:
            log.exception("approval store unavailable", extra={"session": session.id})
            return audited("error", Judgement(
                Verdict.DENY, SqlState.SYSTEM_ERROR,
                "pgproxy cannot record the approval request, so the statement was not run"), approval_id=request.id)
        found = answer.request
        link = approvals.link(found.id)
        held: dict[str, object] = {"approval_id": found.id, "hold_mode": "retry"}
        if answer.outcome == "used":
            session.log.info("approved statement run again", extra={"approval": found.id})
            return audited("approved", self._allow_approved(session, verdicts, masked=found.masked), **held,
                           reviewers=list(found.approved_by), decision_reason=found.decision_reason,
                           masked=found.masked)
        ended = found.decided_at if found.decided_at is not None else found.expires_at
        until = _utc(ended + approvals.retry_window_seconds)
        again = f"Running the same statement again gets this answer until {until}."
        if answer.outcome == "denied":
            return audited("rejected", Judgement(
                Verdict.DENY, SqlState.INSUFFICIENT_PRIVILEGE,
                f"denied by reviewer {found.decided_by}: {found.decision_reason or 'no reason given'}; "
                f"the request id is {found.id} ({link})", detail=again),
                **held, reviewers=list(dict.fromkeys([*found.approved_by, found.decided_by])),
                decision_reason=found.decision_reason)
        if answer.outcome == "expired":
            return audited("expired", Judgement(
                Verdict.DENY, SqlState.QUERY_CANCELED,
                f"approval request {found.id} expired after {found.expires_at - found.created_at:g} s without a "
                f"decision ({link})", detail=again), **held)
        first = "approval required" if answer.outcome == "created" else "approval still pending"
        detail = (f"{found.reason}; the statement did not run. Once a reviewer approves, this agent's identical "
                  f"statement (same text and parameters) runs once, within {approvals.retry_window_seconds:g} s "
                  "of the approval.")
        earlier = answer.earlier
        if earlier is not None and earlier.status is Status.APPROVED:
            detail = (f"Approval request {earlier.id} was approved and its one run is used or over; this is a new "
                      f"request. {detail}")
        return audited("approval-required" if answer.outcome == "created" else "approval-pending", Judgement(
            Verdict.DENY, SqlState.OBJECT_NOT_IN_PREREQUISITE_STATE,
            f"{first} (rule {found.rule}): {link}; the request id is {found.id}; run the same statement again "
            f"after a reviewer approves it (before {_utc(found.expires_at)})", detail=detail), **held)

    def _allow_approved(self, session: Session, verdicts: Verdicts | None, *, masked: bool = False) -> Judgement:
        """A held statement may run (approved, or covered by a grant): the session remembers it as allowed.
        Approved with masking (`masked`): it runs with the tagged columns of its results masked, which
        only a statement pgproxy can mask does; any other is refused (fail closed)."""
        if masked:
            schema = self.catalog.schema(session.database)
            problem = self._unmaskable(verdicts)
            if problem is not None or schema is None or verdicts is None:
                return Judgement(Verdict.DENY, SqlState.INSUFFICIENT_PRIVILEGE,
                                 f"approved with masking, but pgproxy cannot mask its result: {problem}")
            self._remember(session, replace(verdicts, decision=replace(verdicts.decision, action=Action.ALLOW)))
            return Judgement(Verdict.ALLOW, context=verdicts, parts=verdicts.parts, mask=self.mask_spec(schema))
        if verdicts is not None:
            self._remember(session, replace(verdicts, decision=replace(verdicts.decision, action=Action.ALLOW)))
        return ALLOW

    def _key(self, schema: Schema, state: SessionState, agent: str, groups: frozenset[str]) -> tuple[str, ...]:
        """Everything besides the statement's text that its decision depends on."""
        path = state.search_path or schema.search_path
        if state.key_prefix[0] != (schema.version, path):
            # Rebuilt only when the schema or the session's search_path changes, not per statement.
            state.key_prefix = ((schema.version, path),
                                (schema.version, self.policy.version, agent, ",".join(sorted(groups)), ",".join(path)))
        return state.key_prefix[1]

    def _compute(self, sql: str, schema: Schema, state: SessionState, agent: str,
                 groups: frozenset[str]) -> Verdicts:
        """Analyse and decide; touches no shared state, so it may run in a worker thread."""
        analyses = analyze(sql, schema, search_path=state.search_path, allowed_functions=self.limits.allowed_functions)
        decision = strictest(decide(self.policy, a, agent, groups) for a in analyses)
        return Verdicts(decision, tuple(analyses))

    def _store(self, sql: str, normalized: str | None, key: tuple[str, ...], verdicts: Verdicts) -> bool:
        """Cache a decision; return whether it holds for every statement that normalizes alike."""
        if not _cacheable(verdicts.analyses):
            return False
        return self.cache.put(sql, normalized, key, verdicts,
                              literal_sensitive=any(a.literal_sensitive for a in verdicts.analyses))

    def _remember(self, session: Session, verdicts: Verdicts) -> None:
        """Track what an allowed statement changes in the session's own state (its search_path;
        after DDL, the schema is read again)."""
        if verdicts.decision.action is not Action.ALLOW:
            return
        if verdicts.remembered is None:
            verdicts.remembered = any(
                a.op is not None or a.search_path is not None or a.ddl_targets is not None or a.lexing
                or any(a.reads.values())
                for a in verdicts.analyses)
        if not verdicts.remembered:
            return
        state = self.state(session)
        in_block = session.model.predicted.in_block  # where the statement will run
        for analysis in verdicts.analyses:
            if analysis.search_path is not None:
                state.search_path = analysis.search_path
            op = analysis.op.kind if analysis.op is not None else None
            if op is OpKind.BEGIN:
                in_block = True
            if analysis.ddl_targets is not None:
                state.refresh_pending = True
                state.ddl_targets |= analysis.ddl_targets
                if not in_block:  # visible when the statement ends: nothing may use the old schema
                    self._publish(session, state)
            elif op in _PUBLISHES and state.ddl_targets:
                self._publish(session, state)
                in_block = False

    def _publish(self, session: Session, state: SessionState) -> None:
        """The session's DDL becomes visible to others: statements touching what it changed wait
        until the schema is read again (after the server's answer: see cycle_done)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers.setdefault(session.database, []).append((frozenset(state.ddl_targets), future))
        state.published.append(future)
        state.ddl_targets.clear()

    def _judgement(self, decision: Decision, session: Session, statement: Statement,
                   verdicts: Verdicts | None) -> Judgement:
        analyses = verdicts.analyses if verdicts is not None else ()
        if decision.action is Action.ALLOW:
            if self.audit is not None:
                self._audit(session, statement.sql, statement.protocol, verdicts, decision, "allowed", None)
            if verdicts is None or verdicts.parts is None or not any(
                    p.op or p.permitted or p.lexing for p in verdicts.parts):
                return ALLOW
            return Judgement(Verdict.ALLOW, context=verdicts, protocol=statement.protocol, parts=verdicts.parts)
        if decision.action is Action.MASK and not decision.observed:
            judged = self._verdict(decision, verdicts, statement.protocol, session.database)
            if judged.mask is not None:
                assert verdicts is not None
                self._remember(session, replace(verdicts, decision=replace(decision, action=Action.ALLOW)))
                if self.audit is not None:
                    self._audit(session, statement.sql, statement.protocol, verdicts, decision, "masked", None)
                return judged
        summary = {"action": decision.action.value, "rule": decision.rule,
                   "kinds": sorted({a.kind.value for a in analyses}),
                   "tables": sorted({t for a in analyses for t in a.tables})}
        if not decision.observed:
            session.log.info("statement refused", extra=summary)
        if decision.action is Action.DENY and not decision.observed:
            if self.audit is not None:
                self._audit(session, statement.sql, statement.protocol, verdicts, decision, "denied", None)
            return self._verdict(decision, verdicts, statement.protocol)
        if self.audit is not None and self.approvals is None and not decision.observed:
            self._audit(session, statement.sql, statement.protocol, verdicts, decision, "refused", None)
        # Held and observed statements are audited at the hold point (`hold`), with its outcome.
        return self._verdict(decision, verdicts, statement.protocol, session.database)

    def _builtin(self, action: Action, rule: str, reason: str) -> Decision:
        """A decision pgproxy makes before the policy's rules (nothing to analyse, or nothing it
        could trust): in observe mode it is observed like the rules' decisions."""
        return Decision(action, rule, reason, observed=self.policy.observe and action is not Action.ALLOW)

    def _verdict(self, decision: Decision, verdicts: Verdicts | None, protocol: str,
                 database: str | None = None) -> Judgement:
        """The judgement a decision makes (no audit, no log: see _judgement)."""
        analyses = verdicts.analyses if verdicts is not None else ()
        parts = verdicts.parts if verdicts is not None else None
        # Planning runs what the planner folds: user functions, and whatever pgproxy cannot tell.
        plans_code = verdicts is None or any(planning_runs_code(a) for a in analyses)
        if decision.action is Action.ALLOW:
            return Judgement(Verdict.ALLOW, context=verdicts, protocol=protocol, parts=parts)
        reason = decision.reason
        if decision.action is Action.MASK and not decision.observed:
            problem = self._unmaskable(verdicts)
            schema = self.catalog.schema(database) if database is not None else None
            if problem is None and schema is not None:
                return Judgement(Verdict.ALLOW, context=verdicts, protocol=protocol, parts=parts,
                                 mask=self.mask_spec(schema))
            # What cannot be masked is reviewed, never allowed.
            reason = f"{reason}; pgproxy cannot mask its result: {problem or 'the schema is not read'}"
        detail = "; ".join(dict.fromkeys(r for a in analyses for r in a.reasons)) or None
        if decision.action is Action.DENY:
            # Observed: a REVIEW the hold point records and lets run (nothing to ask the server first).
            return Judgement(Verdict.REVIEW if decision.observed else Verdict.DENY, SqlState.INSUFFICIENT_PRIVILEGE,
                             f"pgproxy denied this statement (rule {decision.rule}): {decision.reason}",
                             detail=detail, context=verdicts, protocol=protocol, parts=parts, plans_code=plans_code,
                             observed=decision.observed)
        # Holding only for what is observed: with nobody to ask, other reviews are refused like a deny.
        refused = self.holds and self.approvals is None and not decision.observed
        return Judgement(Verdict.DENY if refused else Verdict.REVIEW, SqlState.INSUFFICIENT_PRIVILEGE,
                         f"approval required (rule {decision.rule}): {reason}",
                         detail=detail, context=verdicts, protocol=protocol, parts=parts, plans_code=plans_code,
                         ask=protocol == "simple" and _server_can_check(analyses),
                         stale=any(_NOT_KNOWN in r for a in analyses for r in a.reasons), observed=decision.observed,
                         justify=decision.justify)

    def _audit(self, session: Session, sql: str, protocol: str, verdicts: Verdicts | None,
               decision: Decision | None, outcome: str, sha: str | None,
               extra: dict[str, object] | None = None) -> None:
        """Record one statement decision (the hot path: mostly joins strings made once)."""
        assert self.audit is not None
        described = verdicts.audit_members if verdicts is not None else None
        if described is None:
            described = _described(sql, verdicts, decision, self.limits.max_statement_bytes)
            if verdicts is not None:
                verdicts.audit_members = described
        if sha is None:
            sha = hashlib.sha256(sql.encode("utf-8", "surrogateescape")).hexdigest()
        text = members({"statement": sql}) if self.audit.full_statements else described[0]
        parts = [session.audit_members, text, described[1],
                 f'"protocol":"{protocol}","statement_sha256":"{sha}","outcome":"{outcome}"']
        if extra:
            parts.append(members(extra))
        self.audit.record("statement", ",".join(parts))

    # -- after each ReadyForQuery ------------------------------------------------------

    def cycle_done(self, session: Session, *, closing: bool = False) -> None:
        state = self.state(session)
        if state.refresh_pending and (closing or session.model.transaction_status == "I"):
            # The DDL is visible now (committed, or rolled back; or its session ended without
            # saying which): read the schema it made.
            state.refresh_pending = False
            state.ddl_targets.clear()
            published, state.published = state.published, []
            task = asyncio.get_running_loop().create_task(self.catalog.refresh(session.database))
            self._refreshes.add(task)
            task.add_done_callback(functools.partial(self._refreshed, session.database, published))

    def session_closed(self, session: Session) -> None:
        if isinstance(session.gate_state, SessionState) and session.gate_state.refresh_pending:
            self.cycle_done(session, closing=True)

    async def refresh_schema(self, session: Session) -> None:
        try:
            await self.catalog.refresh(session.database)
        except Exception as exc:
            log.warning("schema refresh failed", extra={"error": str(exc)})
            self.audit_catalog("catalog.refresh_failed", session.database, error=str(exc))
            return
        self.audit_catalog("catalog.refreshed", session.database, reason="a name the server knows")

    def server_refused(self, session: Session, sql: str, judgement: Judgement) -> None:
        self._audit_unheld(session, sql, judgement, "server-refused")

    def withdrawn(self, session: Session, sql: str, judgement: Judgement) -> None:
        self._audit_unheld(session, sql, judgement, "withdrawn")

    def _audit_unheld(self, session: Session, sql: str, judgement: Judgement, outcome: str) -> None:
        """A statement judged REVIEW that ended before its hold point (which would have audited it)."""
        if self.audit is not None:
            verdicts = judgement.context if isinstance(judgement.context, Verdicts) else None
            self._audit(session, sql, judgement.protocol, verdicts, verdicts.decision if verdicts else None,
                        outcome, None)

    async def close(self) -> None:
        if self.approvals is not None:
            await self.approvals.close()
        await self.previews.close()
        for task in list(self._refreshes):
            task.cancel()
        await asyncio.gather(*self._refreshes, return_exceptions=True)
        await self.catalog.close()

    def _refreshed(self, database: str, published: list[asyncio.Future[None]], task: asyncio.Task[None]) -> None:
        self._refreshes.discard(task)
        self._release(database, published)  # on failure too: the old schema stays in force (logged)
        if task.cancelled():
            return
        if task.exception() is not None:
            # The old schema stays in force; names the DDL created resolve to nothing (review).
            log.warning("schema refresh failed", extra={"error": str(task.exception())})
            self.audit_catalog("catalog.refresh_failed", database, error=str(task.exception()))
        else:
            self.audit_catalog("catalog.refreshed", database)

    def audit_catalog(self, event: str, database: str, **fields: object) -> None:
        """Record that a database's schema was read (at start, or after DDL)."""
        if self.audit is None:
            return
        schema = self.catalog.schema(database)
        self.audit.record(event, {"database": database, "schema_version": schema.version if schema else None,
                                  "relations": len(schema.relations) if schema else 0,
                                  "tagged_columns": sum(len(r.tags) for r in schema.relations.values())
                                  if schema else 0, **fields})

    # -- the result guard ----------------------------------------------------------------

    def forbidden_columns(self, session: Session, columns: list[tuple[int, int]],
                          permitted: frozenset[tuple[int, int]]) -> list[str]:
        """Tagged columns in a result that the execution producing it did not declare it reads."""
        schema = self.catalog.schema(session.database)
        if schema is None:
            return []
        by_oid = self._tagged_columns(schema)
        refused: list[str] = []
        for column in columns:  # a loop, not a comprehension: most results have no tagged column
            if column in by_oid and column not in permitted:
                refused.append(by_oid[column])
        return refused

    def _tagged_columns(self, schema: Schema) -> dict[tuple[int, int], str]:
        """(table oid, attnum) -> schema.table.column for every tagged column (views included)."""
        if self._tagged[0] != schema.version:
            tagged = {(r.oid, r.attnums[r.columns.index(c)]): f"{r.qualified}.{c}"
                      for r in schema.relations.values() for c in r.tags if c in r.columns}
            self._tagged = (schema.version, tagged)
        return self._tagged[1]


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def _described(sql: str, verdicts: Verdicts | None, decision: Decision | None,
               max_statement_bytes: int) -> tuple[str, str]:
    """A statement's audit members: its text with literals replaced (literals can be PII),
    and its analysis and decision. A text over the analysis limit is not scanned (that would
    hold up the event loop for as long as analysing it would): its size stands in for it."""
    size = len(sql.encode("utf-8", "surrogateescape"))
    oversized = size > max_statement_bytes or (decision is not None and decision.rule == "oversized-statement")
    normalized = sql if sql == FUNCTION_CALL or oversized else normalize(sql)
    if oversized:
        shown = f"<{size}-byte statement, not analysed>"
    elif normalized is None:
        shown = f"<{size}-byte statement that PostgreSQL's scanner rejects>"
    else:
        shown = normalized.replace("\x00", "?")
    analyses = verdicts.analyses if verdicts is not None else ()
    return members({"statement": shown}), statement_members(
        commands=[a.command for a in analyses], kinds=[a.kind.value for a in analyses],
        tables=[t for a in analyses for t in a.tables],
        reads={str(k): v for a in analyses for k, v in a.reads.items()},
        writes={str(k): v for a in analyses for k, v in a.writes.items()},
        functions=[f for a in analyses for f in a.functions], flags=[f.value for a in analyses for f in a.flags],
        rule=decision.rule if decision is not None else "", action=decision.action.value if decision else "review",
        reason=decision.reason if decision is not None else "")


# What a Parse checks: parse analysis resolves every name of these (utility statements are
# analysed only when they run), and a text pgproxy's parser (the server's grammar) rejects.
_PARSE_CHECKS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "?"})
_NOT_KNOWN = "is not known to pgproxy"


def _server_can_check(analyses: Sequence[Analysis]) -> bool:
    return len(analyses) == 1 and analyses[0].command in _PARSE_CHECKS


# Statements that end a transaction block: DDL inside it becomes visible (or is undone).
_PUBLISHES = frozenset({OpKind.COMMIT, OpKind.ROLLBACK, OpKind.PREPARE_TRANSACTION})


def _touches(verdicts: Verdicts, targets: frozenset[str]) -> bool:
    """Whether a statement uses one of `targets` (a relation, or a function it calls, also
    through views and other functions), or names what the schema does not know yet."""
    return any(a.kind is Kind.UNKNOWN or a.tables & targets or a.functions & targets
               or (a.ddl_targets or frozenset()) & targets for a in verdicts.analyses)


def _unjustified(rule: str) -> Judgement:
    """The refusal of a statement held by a rule that requires a justification it does not carry."""
    return Judgement(Verdict.DENY, SqlState.INSUFFICIENT_PRIVILEGE,
                     f"pgproxy refused this statement (rule {rule}): the rule requires a justification; start the "
                     f"statement with {JUSTIFICATION_FORM}",
                     detail='For example /* pgproxy: reason="ticket 42: refund order 7" */ SELECT …; the reviewer '
                            "reads the reason as your claim before deciding.")


def _grant_key(sql: str, sha: str, verdicts: Verdicts | None) -> str:
    """What a grant given on this statement covers. A statement whose decision turns on a literal
    (SET ROLE 'x', set_config…), or whose literals and parameters choose which tagged values it
    shows or changes (`left(ssn, 0) … WHERE id < 0` is not `left(ssn, 11) … WHERE id < 4`), is
    covered only as it is, text and parameters (its SHA-256); any other by its shape."""
    if verdicts is None or any(a.literal_sensitive or a.tags_read or a.tags_written for a in verdicts.analyses):
        return f"= {sha}"
    return normalize(sql) or sql


def _application_name(session: Session) -> str:
    """The session's application_name now: as the server last reported it (a client may set it
    after connecting, as pgjdbc does), else as the client's startup gave it."""
    reported = session.model.application_name
    return reported if reported is not None else session.parameters.get("application_name", "")


def _request_analyses(sql: str, analyses: Sequence[Analysis]) -> list[dict[str, object]]:
    """The analyses an approval request shows, each with the text of the statement under review:
    a decision cached for the statement's shape carries another statement's text, whose literals
    can be PII."""
    texts: list[str] | None = [sql] if len(analyses) == 1 else None
    if texts is None:
        try:
            texts = list(pglast.split(sql))
        except pglast.parser.ParseError:
            texts = None
    shown = []
    for index, analysis in enumerate(analyses):
        described = analysis.to_json()
        if analysis.ddl_targets is not None:
            described["ddl_targets"] = sorted(analysis.ddl_targets)  # what DDL changes, for the reviewer
        described["statement"] = texts[index] if texts is not None and len(texts) == len(analyses) else None
        shown.append(described)
    return shown


def _cacheable(analyses: Sequence[Analysis]) -> bool:
    """Statements that change how later ones are read (SET search_path) are judged afresh."""
    return not any(a.search_path is not None for a in analyses)


def _tagged_reads(schema: Schema, analysis: Analysis) -> frozenset[tuple[int, int]]:
    """The tagged columns a statement reads, as (table oid, attnum): what its results may show."""
    found = set()
    for key, tags in analysis.reads.items():
        if not tags:
            continue
        relation = schema.relations.get((key.schema, key.table))
        if relation is not None and key.column in relation.columns:
            found.add((relation.oid, relation.attnums[relation.columns.index(key.column)]))
    return frozenset(found)
