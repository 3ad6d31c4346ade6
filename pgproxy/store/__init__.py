"""One interface for approval requests, decisions, grants and the audit log.

SQLite (`pgproxy.store.sqlite`) is the default: a file, created on first use, WAL mode.
Every state change is a single conditional UPDATE, so two deciders (or a decider and the
expiry) can never both win: the one that finds the request still pending does.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"  # the agent cancelled, or its connection ended
    ABANDONED = "abandoned"  # the proxy restarted while it was pending: it can never run


class StoreError(Exception):
    """The store cannot be read or written: nothing risky may run (fail closed)."""


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    id: str
    agent: str
    groups: tuple[str, ...]
    database: str
    statement: str
    parameters: tuple[str | None, ...]  # as shown to reviewers (text, or hex for binary)
    statement_sha256: str  # over the statement and its parameters
    analysis: dict[str, Any]  # tables, columns and tags, kinds, flags, reasons
    rule: str
    reason: str
    client_address: str
    application_name: str
    created_at: float
    expires_at: float
    status: Status = Status.PENDING
    decided_by: str | None = None
    decision_reason: str | None = None
    decided_at: float | None = None
    decision_token: str | None = None  # the proxy-signed decision (JWS)
    required_approvals: int = 1  # distinct reviewers who must approve (the two-person rule: 2)
    reviewer_groups: tuple[str, ...] = ()  # who may decide
    max_grant_minutes: int = 0  # the longest grant a reviewer may give with an approval
    shape: str = ""  # the normalized statement a grant covers
    approved_by: tuple[str, ...] = ()  # reviewers who approved so far
    hold_mode: str = "wait"  # "retry": nobody waits; the agent runs the statement again (see Store.retry)
    used_at: float | None = None  # retry mode: when the approved statement ran (it runs once)
    justification: str | None = None  # the agent's reason (its claim), from the statement's leading comment
    masked: bool = False  # approved with masking (an approver chose it): its results are masked
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "status": self.status.value, "agent": self.agent, "groups": list(self.groups),
            "database": self.database, "statement": self.statement, "parameters": list(self.parameters),
            "statement_sha256": self.statement_sha256, "analysis": self.analysis, "rule": self.rule,
            "reason": self.reason, "client_address": self.client_address,
            "application_name": self.application_name, "created_at": self.created_at,
            "expires_at": self.expires_at, "decided_by": self.decided_by,
            "decision_reason": self.decision_reason, "decided_at": self.decided_at,
            "decision_token": self.decision_token, "required_approvals": self.required_approvals,
            "approved_by": list(self.approved_by), "max_grant_minutes": self.max_grant_minutes,
            "hold_mode": self.hold_mode, "used_at": self.used_at, "justification": self.justification,
            "masked": self.masked,
        }


@dataclass(frozen=True, slots=True)
class Grant:
    """Statements of one shape that one agent may run unreviewed until `expires_at`."""

    id: str
    agent: str
    database: str
    shape: str
    expires_at: float
    approval_id: str
    granted_by: str


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One stored audit event. `body` is the event's JSON exactly as hashed:
    hash = sha256(previous event's hash + body)."""

    seq: int
    time: float
    type: str
    body: str
    hash: str


@dataclass(frozen=True, slots=True)
class AuditHead:
    """The chain's head at one moment, signed by the proxy (a JWT naming seq and hash)."""

    seq: int
    hash: str
    signed_at: float
    signature: str


class Store(Protocol):
    async def create(self, request: ApprovalRequest) -> None: ...

    async def get(self, approval_id: str) -> ApprovalRequest | None: ...

    async def list(self, status: Status | None = None, limit: int = 200) -> list[ApprovalRequest]: ...

    async def finish(self, approval_id: str, status: Status, *, now: float) -> ApprovalRequest | None:
        """End a pending request without a reviewer (expired, withdrawn); None if it was not pending.
        Reviewers' decisions go through `vote`, which also refuses a request past its expiry."""
        ...

    async def vote(self, approval_id: str, reviewer: str, *, approve: bool, reason: str, token: str,
                   now: float, grant_minutes: int = 0, token_id: str | None = None,
                   masked: bool = False) -> tuple[ApprovalRequest | None, str]:
        """Record one reviewer's decision, the grant (minutes) an approval agrees to, and the id of the
        decision token it came in (`token_id`), in one transaction; an approval with `masked` makes
        the request's results masked (one such approval among several is enough). Returns the
        request and what happened: "approved" or "denied" (final), "recorded" (more approvals
        needed), "voted" (this reviewer already did, by any spelling of their name), "widens" (an
        approval with a longer grant than an earlier approval of the same request agreed to: not
        recorded, so the grant a final approval gives is what every approver agreed to), "replayed"
        (`token_id` was used before: nothing recorded), or "closed" (not pending, or expired)."""
        ...

    async def retry(self, request: ApprovalRequest, *, now: float,
                    window: float) -> tuple[ApprovalRequest, str, ApprovalRequest | None]:
        """Retry mode, in one transaction: what the latest retry-mode request of the same agent
        (and groups), database, statement hash (text and parameters) and analysis (what the
        statement was seen to touch, which a session's search_path can change) says about
        running it now, or else
        `request` stored. Returns the request that answers and what happened: "used" (approved
        less than `window` seconds ago and not used yet: now it is, so two sessions retrying at
        once cannot both run it), "pending" (not decided, not expired), "denied" or "expired"
        (less than `window` seconds ago), or "created" (`request` stored), with the earlier
        request it replaces, if any (an approval used already or too old, a denial or expiry
        older than `window`)."""
        ...

    async def add_grant(self, grant: Grant) -> None: ...

    async def use_token_id(self, jti: str, now: float) -> bool:
        """Record a decision token's jti; False if it was used before (a replay)."""
        ...

    async def find_grant(self, agent: str, database: str, shape: str, now: float) -> Grant | None: ...

    async def abandon_pending(self) -> int:
        """At start: every wait-mode request still pending belongs to a connection that is gone
        (retry-mode requests wait for nobody: they stay pending until decided or expired)."""
        ...

    async def append_events(self, rows: Sequence[AuditRow]) -> None:
        """Append audit events (one transaction: all or none)."""
        ...

    async def last_event(self) -> AuditRow | None: ...

    async def events(self, *, after_seq: int = 0, since: float | None = None, until: float | None = None,
                     type: str | None = None, limit: int = 1000) -> builtins.list[AuditRow]:
        """Events in chain order with seq > after_seq, within [since, until) and of `type` when given."""
        ...

    async def add_head(self, head: AuditHead) -> None: ...

    async def heads(self) -> builtins.list[AuditHead]: ...

    async def prunable(self, before: float) -> tuple[int, str, int] | None:
        """The last event older than `before` (its seq and hash) and how many events that is,
        or None. The newest event is never prunable: the chain keeps a head."""
        ...

    async def checkpoint(self) -> None:
        """Housekeeping after many appends, off the event loop (SQLite: a WAL checkpoint)."""
        ...

    async def prune_events(self, through_seq: int, anchor: AuditRow, head: AuditHead) -> None:
        """Delete events (and signed heads) up to `through_seq`, append `anchor`, which records
        what was pruned, and store `head`, the anchor's signature, in one transaction."""
        ...

    async def close(self) -> None: ...
