"""`pgproxy check`: explain the decision for a statement without running it."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pgproxy.analysis.gate import analyze, unknown
from pgproxy.analysis.masking import unmaskable
from pgproxy.analysis.model import Analysis, ColumnKey
from pgproxy.analysis.schema import Schema
from pgproxy.config import Config
from pgproxy.policy import Action, Decision, Policy, decide, strictest
from pgproxy.protocol.objects import REFERENCES, OpKind


@dataclass(frozen=True, slots=True)
class Explanation:
    analysis: Analysis
    decision: Decision

    def to_json(self) -> dict[str, object]:
        return {**self.analysis.to_json(), "action": self.decision.action.value,
                "rule": self.decision.rule, "reason": self.decision.reason, "observed": self.decision.observed}


def explain(sql: str, schema: Schema, config: Config, *, agent: str,
            groups: frozenset[str]) -> list[Explanation]:
    """One explanation per statement of `sql`, as enforce mode would decide it."""
    if len(sql.encode("utf-8", "surrogateescape")) > config.analysis.max_statement_bytes:
        analysis = unknown(sql[:200], "?", "the statement is larger than analysis.max_statement_bytes")
        action = config.analysis.oversized_action
        return [Explanation(analysis, Decision(action, "oversized-statement", analysis.reasons[0],
                                               observed=config.policy.observe))]
    analyses = analyze(sql, schema, allowed_functions=config.analysis.allowed_functions)
    explained: list[Explanation] = []
    # What PREPARE and DECLARE in this string keep is judged where EXECUTE, FETCH or MOVE run it,
    # as the session does (a name defined elsewhere is judged by what it stands for then).
    kept: dict[tuple[bool, str], Decision] = {}
    for analysis in analyses:
        decision = decide(config.policy, analysis, agent, groups)
        op = analysis.op
        if op is not None and analysis.stored is not None:
            kept[(op.kind is OpKind.PREPARE, op.name)] = decide(config.policy, analysis.stored, agent, groups)
        elif op is not None and op.kind in REFERENCES:
            runs = kept.get((op.kind is OpKind.EXECUTE, op.name))
            if runs is not None:
                decision = strictest([decision, runs])
            else:
                analysis = replace(analysis, reasons=(*analysis.reasons, f'"{op.name}" is not defined in this '
                                                      "statement: what it runs is judged when it runs"))
        elif op is not None and op.kind in (OpKind.DEALLOCATE, OpKind.CLOSE, OpKind.DISCARD_ALL):
            if op.all or op.kind is OpKind.DISCARD_ALL:
                kept = {key: value for key, value in kept.items()
                        if op.kind is not OpKind.DISCARD_ALL and key[0] != (op.kind is OpKind.DEALLOCATE)}
            else:
                kept.pop((op.kind is OpKind.DEALLOCATE, op.name), None)
        if decision.action is Action.MASK and not decision.observed:
            why = unmaskable([analysis])
            if why is not None:  # what cannot be masked is reviewed, as enforce mode does
                decision = replace(decision, action=Action.REVIEW,
                                   reason=f"{decision.reason}; pgproxy cannot mask its result: {why}")
        explained.append(Explanation(analysis, decision))
    return explained


def _columns(cols: dict[ColumnKey, frozenset[str]]) -> str:
    if not cols:
        return "-"
    return ", ".join(f"{k} [{', '.join(sorted(t))}]" if t else str(k) for k, t in sorted(cols.items()))


def _rule_line(policy: Policy, decision: Decision) -> str:
    rule = next((r for r in policy.rules if r.name == decision.rule), None)
    where = f" (config line {rule.line})" if rule is not None and rule.line else ""
    return f"{decision.rule}{where}: {decision.reason}"


def _action(decision: Decision) -> str:
    observed = " (observed: recorded in the audit log, not enforced; the statement runs)" if decision.observed else ""
    return f"{decision.action.value.upper()}{observed}"


def format_human(explanations: list[Explanation], policy: Policy) -> str:
    lines: list[str] = []
    for number, item in enumerate(explanations, 1):
        a = item.analysis
        statement = " ".join(a.sql.split())
        lines += [
            f"Statement {number}: {statement if len(statement) <= 200 else statement[:197] + '...'}",
            f"  kind:      {a.kind.value} ({a.command})",
            f"  tables:    {', '.join(sorted(a.tables)) or '-'}",
            f"  reads:     {_columns(a.reads)}",
            f"  writes:    {_columns(a.writes)}",
            f"  functions: {', '.join(sorted(a.functions)) or '-'}",
            f"  flags:     {', '.join(sorted(f.value for f in a.flags)) or '-'}",
        ]
        lines += [f"  why:       {reason}" for reason in a.reasons]
        lines += [f"  rule:      {_rule_line(policy, item.decision)}",
                  f"  action:    {_action(item.decision)}", ""]
    if len(explanations) > 1:
        final = strictest(e.decision for e in explanations)
        lines.append(f"Decision for the whole query string: {_action(final)} "
                     f"(the strictest of its {len(explanations)} statements)")
    return "\n".join(lines).rstrip() + "\n"
