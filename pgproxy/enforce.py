"""Enforce mode: the StatementGate that analyses each statement, applies the policy and
guards results. It owns the decision cache and each session's analysis state
(search_path set by the session, statements it PREPAREd, tagged columns it may read)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pgproxy.analysis.cache import DecisionCache
from pgproxy.analysis.gate import analyze
from pgproxy.analysis.model import Analysis, Kind
from pgproxy.analysis.schema import Schema
from pgproxy.errors import SqlState
from pgproxy.policy import Action, Decision, decide, strictest
from pgproxy.session import ALLOW, Judgement, Statement, StatementGate, Verdict

if TYPE_CHECKING:
    from pgproxy.catalog import Catalog
    from pgproxy.config import Config
    from pgproxy.session import Session

log = logging.getLogger("pgproxy.enforce")


@dataclass(frozen=True, slots=True)
class Verdicts:
    """A query string's decision and the analyses behind it (cached together)."""

    decision: Decision
    analyses: tuple[Analysis, ...]


@dataclass(slots=True)
class SessionState:
    search_path: tuple[str, ...] | None = None
    prepared: dict[str, Analysis] = field(default_factory=dict)
    permitted: set[tuple[int, int]] = field(default_factory=set)  # tagged (table oid, attnum) it may read
    refresh_pending: bool = False  # DDL passed: re-read the schema once it has run


class PolicyGate(StatementGate):
    """Decides each statement of a session from the analysis and the policy."""

    def __init__(self, config: Config, catalog: Catalog) -> None:
        self.config = config
        self.catalog = catalog
        self.policy = config.policy
        self.limits = config.analysis
        self.cache: DecisionCache[Verdicts] = DecisionCache(
            max_entries=self.limits.cache_entries, max_bytes=self.limits.cache_bytes)
        self._refreshes: set[asyncio.Task[None]] = set()
        self._tagged: tuple[str, dict[tuple[int, int], str]] = ("", {})

    def state(self, session: Session) -> SessionState:
        if not isinstance(session.gate_state, SessionState):
            session.gate_state = SessionState()
        return session.gate_state

    # -- the decision point -----------------------------------------------------------

    def judge(self, session: Session, statement: Statement) -> Judgement:
        schema = self.catalog.schema(session.database)
        identity = session.identity
        assert identity is not None
        if statement.protocol == "function":
            return self._judgement(Decision(Action.REVIEW, "function-call",
                                            "the fast-path FunctionCall interface runs a function by OID, "
                                            "which pgproxy does not analyse"), session, None)
        if schema is None:
            return self._judgement(Decision(Action.REVIEW, "no-schema",
                                            "pgproxy has not read this database's schema"), session, None)
        verdicts = self.evaluate(statement.sql, schema, session)
        self._remember(session, schema, verdicts)
        return self._judgement(verdicts.decision, session, verdicts)

    def evaluate(self, sql: str, schema: Schema, session: Session | None = None, *,
                 agent: str | None = None, groups: frozenset[str] | None = None) -> Verdicts:
        """The decision for one query string (several statements: the strictest counts)."""
        state = self.state(session) if session is not None else SessionState()
        if session is not None and session.identity is not None:
            agent, groups = session.identity.agent_id, session.identity.groups
        agent = agent or ""
        groups = groups or frozenset()
        if len(sql.encode("utf-8", "surrogateescape")) > self.limits.max_statement_bytes:
            action = self.limits.oversized_action
            reason = (f"the statement is larger than {self.limits.max_statement_bytes} bytes, "
                      "so pgproxy does not analyse it")
            return Verdicts(Decision(action, "oversized-statement", reason), ())
        path = state.search_path or schema.search_path
        context = (schema.version, self.policy.version, agent, ",".join(sorted(groups)), ",".join(path))
        cached = self.cache.get(sql, context)
        if cached is not None:
            return cached
        analyses = analyze(sql, schema, search_path=state.search_path, prepared=state.prepared,
                           allowed_functions=self.limits.allowed_functions)
        decision = strictest(decide(self.policy, a, agent, groups) for a in analyses)
        verdicts = Verdicts(decision, tuple(analyses))
        if _cacheable(analyses):
            self.cache.put(sql, context, verdicts,
                           literal_sensitive=any(a.literal_sensitive for a in analyses))
        return verdicts

    def _remember(self, session: Session, schema: Schema, verdicts: Verdicts) -> None:
        """Track what an allowed statement changes in the session's own state."""
        if verdicts.decision.action is not Action.ALLOW:
            return
        state = self.state(session)
        relations = {(r.schema, r.name): r for r in schema.relations.values() if r.tags}
        for analysis in verdicts.analyses:
            if analysis.prepared_name is not None:
                state.prepared[analysis.prepared_name] = analysis
            if analysis.search_path is not None:
                state.search_path = analysis.search_path
            if analysis.command == "DEALLOCATE":
                state.prepared.clear()  # conservative: forget them all (EXECUTE then needs review)
            if analysis.kind is Kind.DDL:
                state.refresh_pending = True
            for key, tags in analysis.reads.items():
                relation = relations.get((key.schema, key.table))
                if tags and relation is not None and key.column in relation.columns:
                    state.permitted.add((relation.oid, relation.attnums[relation.columns.index(key.column)]))

    def _judgement(self, decision: Decision, session: Session, verdicts: Verdicts | None) -> Judgement:
        analyses = verdicts.analyses if verdicts is not None else ()
        if decision.action is Action.ALLOW:
            return ALLOW
        summary = {"action": decision.action.value, "rule": decision.rule,
                   "kinds": sorted({a.kind.value for a in analyses}),
                   "tables": sorted({t for a in analyses for t in a.tables})}
        session.log.info("statement refused", extra=summary)
        detail = "; ".join(dict.fromkeys(r for a in analyses for r in a.reasons)) or None
        if decision.action is Action.DENY:
            return Judgement(Verdict.DENY, SqlState.INSUFFICIENT_PRIVILEGE,
                             f"pgproxy denied this statement (rule {decision.rule}): {decision.reason}",
                             detail=detail)
        return Judgement(Verdict.REVIEW, SqlState.INSUFFICIENT_PRIVILEGE,
                         f"approval required (rule {decision.rule}): {decision.reason}",
                         detail=detail)

    # -- after each ReadyForQuery ------------------------------------------------------

    def cycle_done(self, session: Session) -> None:
        state = self.state(session)
        if state.refresh_pending:
            state.refresh_pending = False
            task = asyncio.get_running_loop().create_task(self.catalog.refresh(session.database))
            self._refreshes.add(task)
            task.add_done_callback(self._refreshes.discard)

    # -- the result guard ----------------------------------------------------------------

    def forbidden_columns(self, session: Session, columns: list[tuple[int, int]]) -> list[str]:
        """Tagged columns in a result that no allowed statement of this session declared it reads."""
        schema = self.catalog.schema(session.database)
        if schema is None:
            return []
        state = self.state(session)
        by_oid = self._tagged_columns(schema)
        refused: list[str] = []
        for table_oid, attnum in columns:
            if table_oid == 0 or (table_oid, attnum) in state.permitted:
                continue
            name = by_oid.get((table_oid, attnum))
            if name is not None:
                refused.append(name)
        return refused


    def _tagged_columns(self, schema: Schema) -> dict[tuple[int, int], str]:
        """(table oid, attnum) -> schema.table.column for every tagged column (views included)."""
        if self._tagged[0] != schema.version:
            tagged = {(r.oid, r.attnums[r.columns.index(c)]): f"{r.qualified}.{c}"
                      for r in schema.relations.values() for c in r.tags if c in r.columns}
            self._tagged = (schema.version, tagged)
        return self._tagged[1]


def _cacheable(analyses: list[Analysis]) -> bool:
    """Statements whose meaning depends on the session's own history are judged afresh."""
    return not any(a.prepared_name is not None or a.search_path is not None or a.command.startswith("EXECUTE")
                   or a.command == "DEALLOCATE" for a in analyses)
