"""The policy: ordered rules over an analysis and the agent's identity -> allow, mask, review or deny.

First match wins; the default action closes the list. A rule matches when every
condition it names holds; a condition listing several values holds when any does.
UNKNOWN statements are never allowed by the default: unless a rule says otherwise
they are reviewed (fail closed).

Observing (``mode: observe`` for the whole policy, ``observe: true`` for one rule) changes
nothing in how a statement is decided: the decision keeps the rule and the action, and is
marked `observed`, which means it is recorded, not enforced (the statement runs). Built-in
refusals that keep pgproxy's own reading of the session correct (`unreadable-text`) are
never observed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from pgproxy.analysis.model import Analysis, Flag, Kind
from pgproxy.names import in_any


class Action(StrEnum):
    ALLOW = "allow"
    # The statement runs and the tagged columns in its results are masked (pgproxy.masking);
    # one pgproxy cannot mask (tagged data not only as plain output columns) is reviewed instead.
    MASK = "mask"
    REVIEW = "review"
    DENY = "deny"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Action.ALLOW: 0, Action.MASK: 1, Action.REVIEW: 2, Action.DENY: 3}


class HoldMode(StrEnum):
    """How a statement that needs review is held: `wait` keeps the connection waiting for the
    decision; `retry` answers at once with an error naming the request, and lets the identical
    statement of the same agent run once after approval."""

    WAIT = "wait"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    action: Action
    reason: str
    kinds: frozenset[Kind] = frozenset()
    flags: frozenset[Flag] = frozenset()
    tags: frozenset[str] = frozenset()  # read or written
    tags_read: frozenset[str] = frozenset()
    tags_written: frozenset[str] = frozenset()
    tables: frozenset[str] = frozenset()  # "schema.table" or "table" (any schema)
    functions: frozenset[str] = frozenset()  # "schema.name" or "name"
    agents: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    line: int = 0  # where the rule is in the config file, for explanations
    # For review rules: how many distinct reviewers must approve (one deny ends it), who may,
    # and the longest grant (approving the same statement shape for a while) a reviewer may give.
    approvals_required: int = 1
    reviewer_groups: frozenset[str] = frozenset()  # empty: approvals.reviewers.groups
    max_grant_minutes: int = 0
    timeout_seconds: float | None = None  # empty: approvals.timeout_seconds
    observe: bool = False  # record what this rule would do (review or deny) and let the statement run
    hold_mode: HoldMode | None = None  # empty: approvals.hold_mode
    # A statement it holds must carry the agent's justification (see pgproxy.analysis.justification),
    # or it is refused at once. Only review rules have one.
    require_justification: bool = False


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    default: Action = Action.ALLOW
    observe: bool = False  # mode: observe -- every decision is recorded, none enforced
    version: str = field(default="")

    def __post_init__(self) -> None:
        if not self.version:
            object.__setattr__(self, "version", _fingerprint(self))


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    rule: str  # the matching rule's name, or "default"
    reason: str
    observed: bool = False  # recorded, not enforced: the statement runs whatever the action

    @property
    def enforced(self) -> Action:
        """What happens to the statement: the action, or ALLOW when it is only observed."""
        return Action.ALLOW if self.observed else self.action
    # REVIEW: the rule behind it (or behind another statement of its query string) that requires
    # the agent's justification; None when none does.
    justify: str | None = None


def _fingerprint(policy: Policy) -> str:
    canonical = [[r.name, r.action, r.reason, r.approvals_required, r.max_grant_minutes, r.timeout_seconds,
                  r.observe, r.hold_mode, r.require_justification, *(sorted(getattr(r, f)) for f in _SET_FIELDS)]
                 for r in policy.rules]
    return hashlib.sha256(json.dumps([canonical, policy.default, policy.observe]).encode()).hexdigest()[:16]


_SET_FIELDS = ("kinds", "flags", "tags", "tags_read", "tags_written", "tables", "functions", "agents", "groups",
               "reviewer_groups")


def tag_matches(wanted: Iterable[str], present: frozenset[str]) -> bool:
    """`pii` matches the tags `pii` and `pii.email`; `pii.email` matches only itself (and below)."""
    return any(tag == w or tag.startswith(w + ".") for w in wanted for tag in present)


def _name_matches(wanted: frozenset[str], qualified: Iterable[str]) -> bool:
    return any(name in wanted or name.rsplit(".", 1)[-1] in wanted for name in qualified)


def rule_matches(rule: Rule, analysis: Analysis, agent: str, groups: frozenset[str]) -> bool:
    return all((
        not rule.kinds or analysis.kind in rule.kinds,
        not rule.flags or bool(rule.flags & analysis.flags),
        not rule.tags or tag_matches(rule.tags, analysis.tags_read | analysis.tags_written),
        not rule.tags_read or tag_matches(rule.tags_read, analysis.tags_read),
        not rule.tags_written or tag_matches(rule.tags_written, analysis.tags_written),
        not rule.tables or _name_matches(rule.tables, analysis.tables),
        not rule.functions or _name_matches(rule.functions, analysis.functions),
        not rule.agents or in_any((agent,), rule.agents),
        not rule.groups or in_any(groups, rule.groups),
    ))


def decide(policy: Policy, analysis: Analysis, agent: str, groups: frozenset[str]) -> Decision:
    """The first matching rule's action; UNKNOWN never falls through to an allowing default.
    A statement after which pgproxy could not read text as the server does is denied before
    any rule: no policy can make analysis of what follows it meaningful."""
    if Flag.UNREADABLE in analysis.flags:
        return Decision(Action.DENY, "unreadable-text", analysis.reasons[0] if analysis.reasons
                        else "pgproxy could not read statements after this one")
    for rule in policy.rules:
        if rule_matches(rule, analysis, agent, groups):
            return Decision(rule.action, rule.name, rule.reason,
                            observed=(policy.observe or rule.observe) and rule.action is not Action.ALLOW,
                            justify=rule.name if rule.require_justification else None)
    if analysis.kind is Kind.UNKNOWN and policy.default is Action.ALLOW:
        reason = analysis.reasons[0] if analysis.reasons else "pgproxy cannot tell what this statement does"
        return Decision(Action.REVIEW, "unknown", reason, observed=policy.observe)
    return Decision(policy.default, "default", f"no rule matched; the default is {policy.default}",
                    observed=policy.observe and policy.default is not Action.ALLOW)


def rule_named(policy: Policy, name: str) -> Rule | None:
    return next((r for r in policy.rules if r.name == name), None)


def strictest(decisions: Iterable[Decision]) -> Decision:
    """The decision for a query string of several statements: the most severe one counts, by what
    is enforced first (a review that holds outranks a deny that is only observed), then by action.
    A review needs a justification when any rule behind one of its statements requires it."""
    decisions = list(decisions)
    found = max(decisions, key=lambda d: (d.enforced.severity, d.action.severity))
    if found.action is Action.REVIEW and found.justify is None:
        return replace(found, justify=next((d.justify for d in decisions if d.justify is not None), None))
    return found
