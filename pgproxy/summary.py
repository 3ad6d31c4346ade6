"""`pgproxy audit summary`: what the policy decided, rule by rule, over a time range of the
audit log -- above all in observe mode, where it is what enforce mode would have done.

Each `statement` event carries the policy's `rule` and `action` and what happened (`outcome`).
A statement counts for the action its rule gave: `review` would be held (or refused without
approvals), `deny` would be denied, `allow` runs. Its outcome says whether that was enforced
or only observed (`observed`: it ran anyway). Examples are shown as the audit log shows
statements by default, literals replaced by `?`, whatever `audit.full_statements` recorded.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pgproxy.analysis.cache import normalize
from pgproxy.audit import iso, rows_in_order
from pgproxy.store import Store

# What the policy's action would do to a statement, as the summary names it.
WOULD = {"review": "held", "deny": "denied", "allow": "allowed"}
# Outcomes in which the statement ran only because its decision was observed.
OBSERVED = "observed"
# Outcomes in which the policy's review or deny was carried out (held, refused, denied).
ENFORCED = frozenset({"denied", "refused", "approved", "rejected", "expired", "withdrawn", "granted", "error",
                      "masked"})
EXAMPLE_CHARS = 200


@dataclass(slots=True)
class RuleSummary:
    """The statements one rule decided with one action."""

    rule: str
    action: str
    statements: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    examples: Counter[str] = field(default_factory=Counter)

    @property
    def would(self) -> str:
        return WOULD.get(self.action, self.action)

    @property
    def observed(self) -> int:
        return self.outcomes[OBSERVED]

    @property
    def enforced(self) -> int:
        return sum(count for outcome, count in self.outcomes.items() if outcome in ENFORCED)

    def to_json(self, examples: int) -> dict[str, Any]:
        return {"rule": self.rule, "action": self.action, "would_be": self.would, "statements": self.statements,
                "observed": self.observed, "enforced": self.enforced, "outcomes": dict(sorted(self.outcomes.items())),
                "examples": [{"statement": text, "count": count}
                             for text, count in self.examples.most_common(examples)]}


@dataclass(slots=True)
class Summary:
    since: float | None
    until: float | None
    first: float | None = None  # the time of the first and last statement counted
    last: float | None = None
    rules: dict[tuple[str, str], RuleSummary] = field(default_factory=dict)

    @property
    def statements(self) -> int:
        return sum(r.statements for r in self.rules.values())

    def total(self, would: str) -> int:
        return sum(r.statements for r in self.rules.values() if r.would == would)

    def ordered(self) -> list[RuleSummary]:
        """Deny rules first, then review, then allow; the busiest first within each."""
        rank = {"deny": 0, "review": 1, "allow": 2}
        return sorted(self.rules.values(), key=lambda r: (rank.get(r.action, 3), -r.statements, r.rule))

    def to_json(self, examples: int) -> dict[str, Any]:
        return {"since": _when(self.since), "until": _when(self.until), "first": _when(self.first),
                "last": _when(self.last), "statements": self.statements, "held": self.total("held"),
                "denied": self.total("denied"), "allowed": self.total("allowed"),
                "observed": sum(r.observed for r in self.rules.values()),
                "rules": [r.to_json(examples) for r in self.ordered()]}


def _when(t: float | None) -> str | None:
    return iso(t) if t is not None else None


def shown(statement: object) -> str:
    """A statement as the summary shows it: literals replaced by `?` (they can be personal data),
    whether or not the log recorded them, and cut to EXAMPLE_CHARS."""
    if not isinstance(statement, str):
        return "<no statement>"
    if statement.startswith("<") and statement.endswith(">"):
        return statement  # pgproxy's own description of a statement it did not show (oversized, unscannable)
    normalized = normalize(statement)
    if normalized is None:
        return "<statement that PostgreSQL's scanner rejects>"
    normalized = normalized.replace("\x00", "?")  # the placeholder normalize() puts for each constant
    return normalized if len(normalized) <= EXAMPLE_CHARS else normalized[:EXAMPLE_CHARS - 1] + "…"


async def summarize(store: Store, *, since: float | None = None, until: float | None = None) -> Summary:
    """Count the `statement` events in [since, until) by rule and action."""
    summary = Summary(since, until)
    async for row in rows_in_order(store, since=since, until=until, type="statement"):
        try:
            event = json.loads(row.body)
        except ValueError:
            continue  # `pgproxy audit verify` names a changed event; a summary counts what it can read
        if not isinstance(event, dict):
            continue
        rule, action = str(event.get("rule") or "-"), str(event.get("action") or "-")
        found = summary.rules.get((rule, action))
        if found is None:
            found = summary.rules[(rule, action)] = RuleSummary(rule, action)
        found.statements += 1
        found.outcomes[str(event.get("outcome") or "-")] += 1
        found.examples[shown(event.get("statement"))] += 1
        summary.first = row.time if summary.first is None else summary.first
        summary.last = row.time
    return summary


def format_human(summary: Summary, examples: int) -> str:
    """The summary as a table by rule, then each rule's most frequent statements."""
    span = (f"{_when(summary.first)} to {_when(summary.last)}" if summary.first is not None
            else "no statements")
    lines = [f"Statements in the audit log: {summary.statements} ({span})",
             f"  would be held (review): {summary.total('held')}",
             f"  would be denied (deny): {summary.total('denied')}",
             f"  allowed:                {summary.total('allowed')}",
             "  'observed' ran only because the decision was observed (observe mode or the rule's observe);",
             "  'enforced' were held, refused or denied for real.", ""]
    if not summary.rules:
        return "\n".join(lines).rstrip() + "\n"
    ordered = summary.ordered()
    width = max(len("rule"), *(len(r.rule) for r in ordered))
    lines.append(f"{'rule':<{width}}  {'would be':<8}  {'statements':>10}  {'observed':>8}  {'enforced':>8}")
    for r in ordered:
        lines.append(f"{r.rule:<{width}}  {r.would:<8}  {r.statements:>10}  {r.observed:>8}  {r.enforced:>8}")
    for r in ordered:
        if examples <= 0:
            continue
        lines += ["", f"{r.rule} (would be {r.would}):"]
        lines += [f"  {count:>6}  {text}" for text, count in r.examples.most_common(examples)]
    return "\n".join(lines).rstrip() + "\n"
