"""Holding statements for a reviewer, and deciding them.

`hold()` stores a request and waits (no CPU, one future) until a decision, the expiry, or
the agent withdrawing it. In retry mode nobody waits: `retry()` answers a statement at once
from the store (a new request, still pending, denied, expired, or approved and now used).
`decide()` checks the reviewer (a verified identity, in an allowed group, never the
requesting agent), that the decision names the statement hash that was shown, and that the
request is still pending; then it stores the decision signed by the proxy and wakes the
held session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from pgproxy.approvals.notify import Notifier
from pgproxy.audit import AuditLog, iso
from pgproxy.identity import Identity
from pgproxy.names import in_any, invisible, same
from pgproxy.policy import HoldMode
from pgproxy.store import ApprovalRequest, Grant, Status, Store, StoreError
from pgproxy.unauthenticated import REASON_CHARS, bounded

log = logging.getLogger("pgproxy.approvals")


class DecisionRefused(Exception):
    """A decision that cannot be accepted; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class RetryAnswer:
    """What retry mode says about a statement that needs review (see Store.retry)."""

    request: ApprovalRequest  # the request that answers (the new one, for "created")
    outcome: str  # "created", "pending", "used", "denied" or "expired"
    earlier: ApprovalRequest | None = None  # "created": the request it replaces (e.g. an approval used)


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    reviewer: str | None = None
    reason: str | None = None
    reviewers: tuple[str, ...] = ()  # everyone who voted on it
    masked: bool = False  # approved with masking: the statement runs with its tagged columns masked


def statement_sha256(statement: str, parameters: tuple[str | None, ...]) -> str:
    """The hash a decision must name: the statement and its parameters, exactly as shown."""
    canonical = json.dumps({"statement": statement, "parameters": list(parameters)}, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()


class Approvals:
    def __init__(self, store: Store, *, signing_key: str, reviewer_groups: frozenset[str],
                 timeout_seconds: float, public_url: str, notifier: Notifier | None = None,
                 audit: AuditLog | None = None, hold_mode: HoldMode = HoldMode.WAIT,
                 retry_window_seconds: float = 600.0) -> None:
        self.store = store
        self.notifier = notifier
        self.audit = audit
        self.signing_key = signing_key
        self.reviewer_groups = reviewer_groups
        self.timeout_seconds = timeout_seconds
        self.hold_mode = hold_mode
        self.retry_window_seconds = retry_window_seconds
        self.public_url = public_url.rstrip("/")
        self._waiters: dict[str, asyncio.Future[Outcome]] = {}
        self._withdrawals: set[asyncio.Future[None]] = set()  # kept referenced until done
        self._expiries: set[asyncio.Task[None]] = set()  # retry-mode requests, marked expired on time

    def link(self, approval_id: str) -> str:
        return f"{self.public_url}/approvals/{approval_id}"

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(18)  # unguessable: the link is all a chat message carries

    @property
    def held(self) -> int:
        return len(self._waiters)

    async def hold(self, request: ApprovalRequest, *, stored: Callable[[], None] | None = None) -> Outcome:
        """Store `request` and wait for its outcome. Cancelling the wait withdraws it, also while
        the request is still being stored (a client gone right after the hold notice). `stored`
        is called once the request is stored (work that must not delay it starts there)."""
        created = asyncio.ensure_future(self.store.create(request))
        try:
            await asyncio.shield(created)  # StoreError propagates: the statement does not run
        except asyncio.CancelledError:
            await self._withdraw(created, request.id)
            raise
        self._requested(request)
        if stored is not None:
            stored()
        waiter: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiters[request.id] = waiter
        log.info("statement held", extra={"approval": request.id, "agent": request.agent, "rule": request.rule})
        try:
            remaining = max(0.0, request.expires_at - time.time())
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), remaining)
            except TimeoutError:
                return await self._close(request.id, Status.EXPIRED)
            except asyncio.CancelledError:
                await self._withdraw(created, request.id)
                raise
        finally:
            self._waiters.pop(request.id, None)

    def _requested(self, request: ApprovalRequest) -> None:
        """A request was stored: audit it and tell the reviewers."""
        if self.audit is not None:
            self.audit.record("approval.requested", {
                "approval_id": request.id, "agent": request.agent, "database": request.database,
                "rule": request.rule, "statement_sha256": request.statement_sha256,
                "required_approvals": request.required_approvals, "expires": iso(request.expires_at),
                "hold_mode": request.hold_mode, "justification": request.justification})
        if self.notifier is not None:
            self.notifier.requested(request, self.link(request.id))  # in the background

    async def retry(self, request: ApprovalRequest) -> RetryAnswer:
        """Retry mode: answer a statement that needs review at once (StoreError propagates: the
        statement does not run). A new request is stored, audited and notified like a held one,
        and marked expired when its time is up; nobody waits for it."""
        found, outcome, earlier = await self.store.retry(request, now=time.time(), window=self.retry_window_seconds)
        if outcome == "created":
            self._requested(found)
            self._expire_on_time(found)
            log.info("approval requested (retry mode)", extra={"approval": found.id, "agent": found.agent,
                                                                "rule": found.rule})
        elif outcome == "used":
            log.info("approval used by the retried statement", extra={"approval": found.id, "agent": found.agent})
        return RetryAnswer(found, outcome, earlier)

    async def watch_retry_requests(self) -> None:
        """At start: the retry-mode requests an earlier run left pending (nobody waits for them, so
        a restart does not abandon them) are marked expired when their time is up."""
        for request in await self.store.list(Status.PENDING, limit=1_000_000):
            if request.hold_mode == HoldMode.RETRY:
                self._expire_on_time(request)

    def _expire_on_time(self, request: ApprovalRequest) -> None:
        expiry = asyncio.ensure_future(self._expire(request))
        self._expiries.add(expiry)
        expiry.add_done_callback(self._expiries.discard)

    async def _expire(self, request: ApprovalRequest) -> None:
        await asyncio.sleep(max(0.0, request.expires_at - time.time()))
        await self._close(request.id, Status.EXPIRED)

    async def _withdraw(self, created: asyncio.Future[None], approval_id: str) -> None:
        """Withdraw a request once it is stored, in a task of its own: the session that held it
        may cancel again (a disconnect and the relay's end both do) before the store answers."""
        withdrawal = asyncio.ensure_future(self._withdraw_once_stored(created, approval_id))
        self._withdrawals.add(withdrawal)
        withdrawal.add_done_callback(self._withdrawals.discard)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(withdrawal)

    async def _withdraw_once_stored(self, created: asyncio.Future[None], approval_id: str) -> None:
        try:
            await created
        except Exception:  # not stored (the store failed): nothing to withdraw
            return
        await self._close(approval_id, Status.WITHDRAWN)

    async def _close(self, approval_id: str, status: Status) -> Outcome:
        """End a pending request without a reviewer; if a decision won the race, that counts."""
        try:
            closed = await self.store.finish(approval_id, status, now=time.time())
        except StoreError:
            log.exception("could not record the end of an approval request", extra={"approval": approval_id})
            return Outcome(status)
        if closed is not None:
            log.info(f"approval request {status.value}", extra={"approval": approval_id})
            if self.notifier is not None:
                self.notifier.concluded(closed, self.link(approval_id))  # the chat follows, in the background
            return Outcome(status)
        waiter = self._waiters.get(approval_id)
        if waiter is not None and waiter.done():
            return waiter.result()
        found = await self.store.get(approval_id)
        if found is None:
            return Outcome(status)
        return Outcome(found.status, found.decided_by, found.decision_reason, _voters(found, found.decided_by),
                       masked=found.masked)

    async def covered(self, agent: str, database: str, shape: str) -> Grant | None:
        """A grant that lets `agent` run statements of this shape unreviewed now, if any."""
        return await self.store.find_grant(agent, database, shape, time.time())

    async def decide(self, approval_id: str, reviewer: Identity, *, approve: bool, reason: str,
                     statement_hash: str, grant_minutes: int = 0, token_id: str | None = None,
                     masked: bool = False) -> ApprovalRequest:
        """Record `reviewer`'s decision, or raise DecisionRefused. `token_id`: the jti of the decision
        token it came in, recorded as used with the vote (and only if the vote is recorded).
        `masked`: approve with masking, which only a request whose result pgproxy can mask takes."""
        request = await self.store.get(approval_id)
        if request is None:
            raise DecisionRefused(404, f"no approval request {approval_id}")
        hidden = invisible(reviewer.agent_id)
        if hidden is not None:
            raise DecisionRefused(403, f"the reviewer's name contains an invisible or control character ({hidden})")
        if same(reviewer.agent_id, request.agent):
            raise DecisionRefused(403, "the requesting agent cannot decide its own request")
        groups = frozenset(request.reviewer_groups) or self.reviewer_groups
        if groups and not in_any(reviewer.groups, groups):
            raise DecisionRefused(403, f'"{reviewer.agent_id}" is not in a reviewer group of this request '
                                       f"({', '.join(sorted(groups))})")
        now = time.time()
        if request.status is not Status.PENDING or request.expires_at <= now:
            state = request.status.value if request.status is not Status.PENDING else "expired"
            raise DecisionRefused(409, f"approval request {approval_id} is no longer pending ({state})")
        if statement_hash != request.statement_sha256:
            raise DecisionRefused(409, "statement_sha256 does not match the statement of this request")
        if masked:
            masking = request.analysis.get("masking") if isinstance(request.analysis, dict) else None
            if not approve:
                raise DecisionRefused(400, "masking comes only with an approval")
            if not isinstance(masking, dict) or masking.get("possible") is not True:
                why = masking.get("reason") if isinstance(masking, dict) else None
                raise DecisionRefused(409, "this statement's result cannot be masked"
                                           f"{': ' + why if why else ''}; approve it or deny it")
            if grant_minutes:
                raise DecisionRefused(403, "an approval with masking covers this statement once; it gives no grant")
        if grant_minutes and (not approve or grant_minutes > request.max_grant_minutes):
            limit = request.max_grant_minutes
            raise DecisionRefused(403, "a grant comes only with an approval" if not approve else
                                  f"the rule allows grants of at most {limit} minutes" if limit else
                                  "the rule does not allow grants")
        token = jwt.encode({
            "iss": "pgproxy", "approval_id": approval_id, "statement_sha256": request.statement_sha256,
            "decision": "approve_masked" if masked else "approve" if approve else "deny",
            "reviewer": reviewer.agent_id, "reason": reason, "grant_minutes": grant_minutes, "iat": int(now),
        }, self.signing_key, algorithm="HS256")
        decided, outcome = await self.store.vote(approval_id, reviewer.agent_id, approve=approve, reason=reason,
                                                 token=token, now=now, grant_minutes=grant_minutes,
                                                 token_id=token_id, masked=masked)
        if decided is None or outcome == "closed":
            raise DecisionRefused(409, f"approval request {approval_id} is no longer pending")
        if outcome == "replayed":
            raise DecisionRefused(409, "this decision token was used already")
        if outcome == "widens":
            raise DecisionRefused(403, _widening(decided, grant_minutes))
        if outcome == "voted":
            raise DecisionRefused(409, f'"{reviewer.agent_id}" has already approved this request; '
                                       "another reviewer must approve it")
        log.info("approval decision recorded", extra={"approval": approval_id, "outcome": outcome,
                                                      "reviewer": reviewer.agent_id})
        if self.audit is not None:
            self.audit.record("approval.decision", {
                "approval_id": approval_id, "reviewer": reviewer.agent_id, "via": reviewer.method,
                "decision": "approve_masked" if masked else "approve" if approve else "deny", "reason": reason,
                "outcome": outcome,
                "grant_minutes": grant_minutes, "statement_sha256": request.statement_sha256,
                "justification": request.justification})
        if outcome == "approved" and grant_minutes:
            # No approval widens an earlier one's grant (the store refuses it), so the last
            # approver's grant is the one every approver agreed to.
            await self.store.add_grant(Grant(
                id=secrets.token_urlsafe(12), agent=request.agent, database=request.database, shape=request.shape,
                expires_at=now + grant_minutes * 60, approval_id=approval_id,
                granted_by=", ".join(_voters(decided, reviewer.agent_id))))
        if outcome in ("approved", "denied"):
            if self.notifier is not None:
                self.notifier.concluded(decided, self.link(approval_id))  # the chat follows, in the background
            waiter = self._waiters.get(approval_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(Outcome(decided.status, reviewer.agent_id, reason,
                                          _voters(decided, reviewer.agent_id), masked=decided.masked))
        return decided

    def refused(self, approval_id: str, status: int, message: str, *, reviewer: str | None, via: str,
                client_address: str = "") -> None:
        """Audit a decision that was not accepted (forged, replayed, self-approval, too late…).
        What the client chose is bounded; without a known reviewer, also in rate (see
        pgproxy.unauthenticated)."""
        approval_id, message = bounded(approval_id) or "", bounded(message, REASON_CHARS) or ""
        log.warning("decision refused", extra={"approval": approval_id, "status": status, "reason": message,
                                               "reviewer": reviewer})
        if self.audit is None:
            return
        event = {"approval_id": approval_id, "reviewer": reviewer, "via": via, "http_status": status,
                 "reason": message, "client_address": client_address}
        if reviewer is None:
            self.audit.record_unauthenticated("approval.decision_refused", event, {
                "client_address": client_address, "via": via, "http_status": status})
        else:
            self.audit.record("approval.decision_refused", event)

    async def close(self) -> None:
        if self.notifier is not None:
            await self.notifier.close()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(Outcome(Status.WITHDRAWN))
        for expiry in list(self._expiries):  # a retry request past its time reads as expired anyway
            expiry.cancel()
        with contextlib.suppress(StoreError):
            await self.store.close()


def _widening(request: ApprovalRequest, grant_minutes: int) -> str:
    earlier = ", ".join(f'"{name}"' for name in request.approved_by)
    return (f"a grant of {grant_minutes} minutes is more than {earlier} agreed to: with several approvers, a grant "
            "is only what every one of them agreed to; approve with the same grant or a shorter one, or once")


def _voters(request: ApprovalRequest, decider: str | None) -> tuple[str, ...]:
    """The reviewers who approved `request`, and the one who decided it last."""
    return tuple(dict.fromkeys((*request.approved_by, *((decider,) if decider else ()))))
