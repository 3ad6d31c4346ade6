"""The audit log: every decision, append-only and hash-chained (DESIGN.md, data flow).

Theory of operation
-------------------
The hot path only appends to a queue (`AuditLog.record`, a deque append of a string it
mostly has ready: a session's fields are serialised once per session, a statement's
analysis once per cache entry). One writer task takes the queue in batches, numbers and
chains them, and writes each batch in one transaction.

Each stored event is a JSON object (`body`) that starts with its `seq`, `time` and `type`.
Its hash is ``sha256(previous event's hash + body)`` (the first event follows 64 zeros),
so changing, removing or reordering a stored event breaks the chain at that event. A
rewrite of the chain from some event on is caught by the signed heads: every
`sign_interval_seconds` (and at shutdown) the proxy signs the newest (seq, hash) with
its key (a JWT, HS256) and stores it; the same head also goes to the proxy's log, a copy
outside the database.

The queue is bounded. When it is full, a new statement waits for room (back-pressure,
`admit`); after `queue_full_wait_seconds` it is refused with 58000, so nothing runs
unaudited (fail closed). Events that cannot wait (a connection closing, a reviewer's
decision) are queued regardless; there is at most one such event in flight per session
or request. A crash loses what was not yet written, at most about one flush interval of
events; the next start records `proxy.started` with ``previous_stop: "unclean"``.

Retention prunes events older than `retention_days` and, in the same transaction,
appends an `audit.pruned` anchor naming the last pruned event and its hash, and signs it,
so the rest of the chain still verifies. Verification accepts missing first events only
with such an anchor that a signed head covers, and only when retention is configured:
without the key, no one can make one.

The proxy never signs over what it cannot vouch for: at start it checks the events after
the last signed head (the ones its next signature would cover) and refuses to start when
they do not follow that head, or contain an anchor it did not sign (`AuditChainBroken`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from pgproxy.config import AuditConfig
from pgproxy.store import AuditHead, AuditRow, Store, StoreError
from pgproxy.store.sqlite import SqliteStore
from pgproxy.unauthenticated import Unauthenticated

log = logging.getLogger("pgproxy.audit")

GENESIS = "0" * 64  # what the first event follows
HEAD_AUDIENCE = "pgproxy-audit"
PRUNE_EVERY_SECONDS = 3600.0
RETRY_SECONDS = 1.0  # after a failed write
CHECKPOINT_EVENTS = 4096  # events between store checkpoints (SQLite: WAL into the database file)


def chain_hash(previous: str, body: str) -> str:
    return hashlib.sha256(f"{previous}{body}".encode("utf-8", "surrogateescape")).hexdigest()


_second: tuple[int, str] = (-1, "")  # the last whole second formatted (the writer formats many per second)


def iso(t: float) -> str:
    """UTC time as stored in events: ``2026-11-24T09:30:00.123456Z`` (microseconds truncated)."""
    global _second
    whole = int(t)
    last = _second  # one read: another thread may replace it meanwhile
    if last[0] != whole:
        last = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{last[1]}.{int((t - whole) * 1_000_000):06d}Z"


def members(values: dict[str, Any]) -> str:
    """`values` as JSON object members without the braces, ready to join into an event."""
    return json.dumps(values, ensure_ascii=False, separators=(",", ":"), default=str)[1:-1]


_SURROGATES = re.compile("[\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    # Inside a JSON string: a backslash (written \\) and the byte the client sent, visibly.
    return f"\\\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\\\u{code:04x}"


def storable(fragment: str) -> str:
    """An event's JSON members with what UTF-8 cannot hold (bytes a client sent that are not
    UTF-8, kept by the codec as lone surrogates) written as visible escapes: ``\\xff``. A value
    an unauthenticated client chose can then never make the log unwritable."""
    if fragment.isascii():
        return fragment
    try:
        fragment.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATES.sub(_escaped, fragment)
    return fragment


def _body(seq: int, t: float, type_: str, fragment: str) -> str:
    return f'{{"seq":{seq},"time":"{iso(t)}","type":"{type_}"{"," if fragment else ""}{fragment}}}'


class AuditChainBroken(StoreError):
    """The stored chain does not follow its last signed head: continuing it would sign over
    events pgproxy did not write. The proxy does not start (fail closed)."""


def _chain(batch: Sequence[tuple[float, str, str]], seq: int, previous: str) -> list[AuditRow]:
    """Number and chain queued events."""
    rows: list[AuditRow] = []
    for t, type_, fragment in batch:
        seq += 1
        body = _body(seq, t, type_, fragment)
        previous = chain_hash(previous, body)
        rows.append(AuditRow(seq, t, type_, body, previous))
    return rows


class AuditLog:
    """The proxy's audit log. `await start()`, `record()` from anywhere on the loop, `await close()`."""

    def __init__(self, config: AuditConfig, store: Store | None = None) -> None:
        self.config = config
        self.store: Store = store if store is not None else SqliteStore(config.store)
        self._queue: deque[tuple[float, str, str]] = deque()
        self._seq = 0
        self._hash = GENESIS
        self._signed_seq = 0
        self._signed_at = 0.0
        self._pruned_at = 0.0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._lock = asyncio.Lock()  # one writer at a time: the loop, a flush at close, a prune
        self._writer: asyncio.Task[None] | None = None
        self.failure: str | None = None  # the last write error, until a write succeeds
        self.written = 0
        self._unsynced = 0  # events written since the last store checkpoint
        self.unauthenticated = Unauthenticated(config.unauthenticated_events_per_interval,
                                               config.unauthenticated_interval_seconds)

    @property
    def full_statements(self) -> bool:
        return self.config.full_statements

    async def start(self, started: dict[str, Any]) -> None:
        """Continue the chain in the store and record `proxy.started` (with `started`'s fields).
        AuditChainBroken when the stored chain is not one this proxy may continue."""
        signed_seq, problem = await unsigned_tail(self.store, self.config.signing_key)
        if problem is not None:
            raise AuditChainBroken(
                f"audit log {self.config.store} does not follow its last signed head, so pgproxy will not "
                f"continue it (its next signature would vouch for events it did not write): {problem}. "
                "Run `pgproxy audit verify`; keep the file as evidence and move it aside to start a new log")
        last = await self.store.last_event()
        if last is not None:
            self._seq, self._hash = last.seq, last.hash
        previous = "first" if last is None else "clean" if last.type == "proxy.stopped" else "unclean"
        if previous == "unclean":
            log.warning("the previous run did not stop cleanly: events it had not written are lost",
                        extra={"last_seq": last.seq if last else 0})
        # Events after `previous_signed_seq` were never signed by the run that wrote them (it
        # crashed, or someone without the key appended them): verify names them.
        self.record("proxy.started", {**started, "previous_stop": previous, "previous_seq": self._seq,
                                      "previous_signed_seq": signed_seq})
        await self.flush()
        if self.config.retention_days:
            await self.prune()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    # -- the hot path -----------------------------------------------------------------

    def record(self, type_: str, data: dict[str, Any] | str) -> None:
        """Queue an event; `data` is a dict of fields or already-joined JSON members."""
        self._queue.append((time.time(), type_, storable(data if isinstance(data, str) else members(data))))
        if len(self._queue) >= self.config.batch_events:
            self._wake.set()

    def record_unauthenticated(self, type_: str, data: dict[str, Any], key: Mapping[str, str | int | None]) -> None:
        """Queue an event a client that has not authenticated caused (its client-chosen fields
        already `bounded`), or count it under `key` for the interval's aggregated event."""
        now = time.time()
        self._record_aggregates(now)
        if self.unauthenticated.admit(type_, key, now):
            self.record(type_, data)

    def _record_aggregates(self, now: float, *, final: bool = False) -> None:
        for type_, fields in self.unauthenticated.due(now, final=final):
            self.record(type_, {**fields, "interval_start": iso(fields["interval_start"]),
                                "interval_end": iso(fields["interval_end"])})

    @property
    def saturated(self) -> bool:
        return len(self._queue) >= self.config.queue_events

    async def admit(self) -> bool:
        """Wait until the queue has room for a statement's event; False if it did not come in time."""
        deadline = time.monotonic() + self.config.queue_full_wait_seconds
        while self.saturated:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._room.clear()
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), remaining)
        return True

    # -- the writer -------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.flush_interval_seconds)
            self._wake.clear()
            self._record_aggregates(time.time())
            try:
                await self.flush()
                now = time.time()
                if now - self._signed_at >= self.config.sign_interval_seconds:
                    await self.sign()
                if self.config.retention_days and now - self._pruned_at >= PRUNE_EVERY_SECONDS:
                    await self.prune()
            except StoreError as exc:  # the store cannot be written: keep trying; statements wait meanwhile
                if self.failure is None:
                    log.error("audit log cannot be written; statements wait, then are refused",
                              extra={"error": str(exc), "queued": len(self._queue)})
                self.failure = str(exc)
                await asyncio.sleep(RETRY_SECONDS)
            except Exception as exc:  # a batch that can never be written (a bug): never retried forever
                log.exception("audit events could not be written; replaced by a record of the failure")
                self._replace_first_batch(exc)

    def _replace_first_batch(self, exc: Exception) -> None:
        """Put a record of the failure, which the chain then shows, in place of the batch that
        failed: the log goes on and nothing else waits behind it."""
        count = min(len(self._queue), self.config.batch_events)
        first = self._queue[0][0] if self._queue else time.time()
        for _ in range(count):
            self._queue.popleft()
        self._queue.appendleft((first, "audit.events_unwritable", members({
            "events": count, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})))

    async def flush(self) -> None:
        """Write every queued event (in batches). StoreError leaves them queued."""
        async with self._lock:
            while self._queue:
                # Chained on the loop (a few microseconds an event), in batches small enough not to
                # stall other sessions; see SqliteStore.append_events for why not in a thread.
                batch = [self._queue[i] for i in range(min(len(self._queue), self.config.batch_events))]
                rows = _chain(batch, self._seq, self._hash)
                await self.store.append_events(rows)
                for _ in batch:
                    self._queue.popleft()
                self._seq, self._hash = rows[-1].seq, rows[-1].hash
                self.written += len(rows)
                self._unsynced += len(rows)
                if self.failure is not None:
                    log.warning("audit log writable again", extra={"error": self.failure})
                    self.failure = None
                if not self.saturated:
                    self._room.set()
                await asyncio.sleep(0)  # let sessions run between batches
            if self._unsynced >= CHECKPOINT_EVENTS:
                self._unsynced = 0
                await self.store.checkpoint()

    async def sign(self) -> None:
        """Sign the chain's head (if it moved) and store the signature; also log it."""
        async with self._lock:
            if self._seq == self._signed_seq:
                self._signed_at = time.time()
                return
            head = self._signed(self._seq, self._hash)
            await self.store.add_head(head)
            self._signed_seq, self._signed_at = head.seq, head.signed_at
            log.info("audit head signed", extra={"seq": head.seq, "hash": head.hash})

    def _signed(self, seq: int, hash_: str) -> AuditHead:
        now = time.time()
        token = jwt.encode({"iss": "pgproxy", "aud": HEAD_AUDIENCE, "seq": seq, "hash": hash_, "iat": int(now)},
                           self.config.signing_key, algorithm="HS256")
        return AuditHead(seq, hash_, now, token)

    async def prune(self, now: float | None = None) -> int:
        """Drop events older than the retention; an `audit.pruned` anchor, signed in the same
        transaction, keeps the chain whole."""
        now = time.time() if now is None else now
        self._pruned_at = now
        before = now - self.config.retention_days * 86400
        await self.flush()
        async with self._lock:
            found = await self.store.prunable(before)
            if found is None:
                return 0
            through, last_hash, count = found
            anchor = _chain([(now, "audit.pruned", members({
                "pruned_through_seq": through, "pruned_last_hash": last_hash, "pruned_events": count,
                "before": iso(before)}))], self._seq, self._hash)[0]
            head = self._signed(anchor.seq, anchor.hash)
            await self.store.prune_events(through, anchor, head)
            self._seq, self._hash = anchor.seq, anchor.hash
            self._signed_seq, self._signed_at = head.seq, head.signed_at
            log.info("audit events pruned", extra={"through_seq": through, "events": count})
            log.info("audit head signed", extra={"seq": head.seq, "hash": head.hash})
            return count

    async def close(self, stopped: dict[str, Any] | None = None) -> None:
        """Record `proxy.stopped`, write everything, sign the head, close the store."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        self._record_aggregates(time.time(), final=True)
        self.record("proxy.stopped", stopped or {})
        try:
            await self.flush()
            await self.sign()
        except Exception:  # logged; the store is closed either way
            log.exception("audit events could not be written at shutdown", extra={"lost": len(self._queue)})
        await self.store.close()


# -- verification ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verification:
    """What `verify` found: `problem` is None when the whole chain holds."""

    events: int
    first_seq: int
    last_seq: int
    heads: int
    last_signed_seq: int
    problem: str | None = None
    # Events a run wrote but never signed (it stopped uncleanly), as a later start found them:
    # only the chain covers them, not the key (someone with the file could have appended them).
    unsigned_by_writer: tuple[tuple[int, int], ...] = ()

    def describe(self) -> str:
        if self.problem is not None:
            return f"audit log BROKEN: {self.problem}"
        if not self.events:
            return "audit log verified: it is empty"
        unsigned = self.last_seq - self.last_signed_seq
        tail = f"; {unsigned} event(s) after it not signed yet" if unsigned else ""
        pruned = (f"; {_events(1, self.first_seq - 1)} pruned by retention (a signed audit.pruned event "
                  "accounts for them)") if self.first_seq > 1 else ""
        unsigned_earlier = "".join(
            f"; {_events(first, last)} {'was' if first == last else 'were'} never signed by the run that wrote "
            f"{'it' if first == last else 'them'} (it stopped uncleanly; a later start signed over what it found)"
            for first, last in self.unsigned_by_writer)
        return (f"audit log verified: events {self.first_seq}-{self.last_seq} ({self.events} events) form an "
                f"unbroken chain{pruned}; {self.heads} signed head(s), the last at event {self.last_signed_seq}"
                f"{tail}{unsigned_earlier}")


def _named(row: AuditRow) -> str:
    return f"event {row.seq} ({row.type} at {iso(row.time)})"


def _events(first: int, last: int) -> str:
    return f"event {first}" if first == last else f"events {first}-{last}"


def _missing(first: int, last: int) -> str:
    return f"{_events(first, last)} {'is' if first == last else 'are'} missing"


async def rows_in_order(store: Store, *, after_seq: int = 0, since: float | None = None,
                        until: float | None = None, type: str | None = None,
                        page: int = 5000) -> AsyncIterator[AuditRow]:
    """Every stored event (of `type`, when given) in seq order, read a page at a time."""
    while True:
        rows = await store.events(after_seq=after_seq, since=since, until=until, type=type, limit=page)
        for row in rows:
            yield row
        if len(rows) < page:
            return
        after_seq = rows[-1].seq


async def _anchor_for(store: Store, through_seq: int) -> tuple[AuditRow, str] | None:
    """The `audit.pruned` event that says events up to `through_seq` were pruned, and the hash
    it recorded for the last of them."""
    for anchor in await store.events(type="audit.pruned", limit=1_000_000):
        with contextlib.suppress(ValueError, TypeError, KeyError):
            fields = json.loads(anchor.body)
            if fields["pruned_through_seq"] == through_seq:
                return anchor, str(fields["pruned_last_hash"])
    return None


async def previous_hash(store: Store, first: AuditRow) -> str | None:
    """The hash `first` follows: 64 zeros for event 1, else the hash of the event before it,
    or the one an `audit.pruned` anchor recorded when that event was pruned; None if lost.
    (For export; `verify` also checks that the anchor is the proxy's.)"""
    if first.seq == 1:
        return GENESIS
    before = await store.events(after_seq=first.seq - 2, limit=1)
    if before and before[0].seq == first.seq - 1:
        return before[0].hash
    found = await _anchor_for(store, first.seq - 1)
    return found[1] if found is not None else None


def _content_problem(row: AuditRow, previous: str) -> str | None:
    try:
        fields = json.loads(row.body)
    except ValueError:
        return f"{_named(row)} was changed: its content is not valid JSON"
    if not isinstance(fields, dict):
        return f"{_named(row)} was changed: its content is not a JSON object"
    if fields.get("seq") != row.seq:
        return (f"the event stored as event {row.seq} says it is event {fields.get('seq')}: "
                "events were reordered or renumbered")
    for column, value in (("time", iso(row.time)), ("type", row.type)):
        if fields.get(column) != value:
            return f"{_named(row)} was changed: its {column} column does not match its content"
    if chain_hash(previous, row.body) != row.hash:
        return (f"{_named(row)} was changed: its content does not match its hash "
                "(or the event before it was rewritten)")
    return None


def _signature_problem(head: AuditHead, signing_key: str) -> str | None:
    try:
        claims = jwt.decode(head.signature, signing_key, algorithms=["HS256"], audience=HEAD_AUDIENCE)
    except jwt.PyJWTError as exc:
        return (f"the head signed for event {head.seq} at {iso(head.signed_at)} has an invalid "
                f"signature ({exc}): it was forged, or the key is not the proxy's")
    if claims.get("seq") != head.seq or claims.get("hash") != head.hash:
        return f"the head signed for event {head.seq} was changed: it does not match its signature"
    return None


_NOT_PGPROXYS = ("pgproxy signs an audit.pruned event in the same transaction as it prunes, so this one "
                 "was not written by pgproxy")


async def verify(store: Store, signing_key: str, *, retention: bool = False) -> Verification:
    """Check the whole chain and the signed heads; report the first broken link.

    Missing first events are accepted only when `retention` is configured and a signed
    `audit.pruned` event accounts for them: the anchor must be covered by a head signed with
    `signing_key`, and no head of theirs may remain (pruning removes them)."""
    heads = {head.seq: head for head in await store.heads()}
    count, first_seq, last_seq, last_signed, previous = 0, 0, 0, 0, GENESIS
    last_good_head = 0
    accounting: AuditRow | None = None  # the anchor that accounts for the missing first events
    last_anchor: AuditRow | None = None
    unsigned: list[tuple[int, int]] = []

    def result(problem: str | None = None) -> Verification:
        return Verification(count, first_seq, last_seq, len(heads), last_signed, problem, tuple(unsigned))

    for head in heads.values():
        problem = _signature_problem(head, signing_key)
        if problem is not None:
            return result(problem)
    async for row in rows_in_order(store):
        if count == 0:
            first_seq = row.seq
            if row.seq > 1:
                missing = f"{_missing(1, row.seq - 1)}: the log starts at event {row.seq}"
                found = await _anchor_for(store, row.seq - 1)
                if found is None:
                    return result(f"{missing} and no audit.pruned event accounts for them")
                accounting, previous = found
                if not retention:
                    return result(f"{missing}; {_named(accounting)} says retention pruned them, but retention "
                                  "is not configured (audit.retention_days), and pgproxy prunes only with it "
                                  "(if it was on when they were pruned, verify with it on)")
                stale = [seq for seq in heads if seq < row.seq]
                if stale:
                    return result(f"{missing}, yet the head signed for event {max(stale)} is still there: they "
                                  "were deleted, not pruned (pruning removes their heads)")
        elif row.seq != last_seq + 1:
            return result(f"{_missing(last_seq + 1, row.seq - 1)}: the log goes from event {last_seq} to "
                          f"event {row.seq}")
        problem = _content_problem(row, previous)
        if problem is not None:
            return result(problem)
        signed = heads.get(row.seq)
        if signed is not None:
            if signed.hash != row.hash:
                return result(f"the chain was rewritten: {_named(row)} does not match the head signed at "
                              f"{iso(signed.signed_at)}; the first rewritten event comes after event "
                              f"{last_good_head}")
            last_good_head = last_signed = row.seq
        if row.type == "audit.pruned":
            last_anchor = row
        elif row.type == "proxy.started":
            unsigned.extend(_unsigned_before(row, first_seq))
        previous, last_seq = row.hash, row.seq
        count += 1
    beyond = [seq for seq in heads if seq > last_seq]
    if beyond:
        if count == 0:
            return result(f"every event is missing: a head was signed for event {max(beyond)}")
        return result(f"{_missing(last_seq + 1, max(beyond))}: the log ends at event {last_seq}, but a head "
                      f"was signed for event {max(beyond)}")
    if accounting is not None and accounting.seq > last_signed:
        return result(f"{_missing(1, first_seq - 1)}: the log starts at event {first_seq}; "
                      f"{_named(accounting)}, which says they were pruned, is not covered by a signed head: "
                      f"{_NOT_PGPROXYS}")
    if last_anchor is not None and last_anchor.seq > last_signed:
        return result(f"{_named(last_anchor)} is not covered by a signed head: {_NOT_PGPROXYS}")
    return result()


def _unsigned_before(started: AuditRow, first_seq: int) -> list[tuple[int, int]]:
    """The events a `proxy.started` event says the previous run never signed (still stored)."""
    fields = json.loads(started.body)
    signed, last = fields.get("previous_signed_seq"), fields.get("previous_seq")
    if not isinstance(signed, int) or not isinstance(last, int) or last <= signed:
        return []
    first = max(signed + 1, first_seq)
    return [(first, last)] if first <= last else []


async def unsigned_tail(store: Store, signing_key: str) -> tuple[int, str | None]:
    """The last signed head's seq, and what is wrong with the events after it (those the
    proxy's next signature would cover), or None: they must follow that head (or event 1 when
    nothing was signed yet), with no gap, and hold no `audit.pruned` event (the proxy signs its own)."""
    heads = await store.heads()
    previous, after = GENESIS, 0
    if heads:
        head = heads[-1]
        problem = _signature_problem(head, signing_key)
        if problem is not None:
            return head.seq, problem
        found = await store.events(after_seq=head.seq - 1, limit=1)
        if not found or found[0].seq != head.seq:
            return head.seq, f"event {head.seq}, whose head was signed at {iso(head.signed_at)}, is missing"
        if found[0].hash != head.hash:
            return head.seq, f"{_named(found[0])} does not match the head signed at {iso(head.signed_at)}"
        previous, after = head.hash, head.seq
    signed = after
    async for row in rows_in_order(store, after_seq=after):
        if row.seq != after + 1:
            return signed, (f"{_missing(after + 1, row.seq - 1)}: the log goes from event {after} to "
                            f"event {row.seq}")
        problem = _content_problem(row, previous)
        if problem is not None:
            return signed, problem
        if row.type == "audit.pruned":
            return signed, f"{_named(row)} is not covered by a signed head: {_NOT_PGPROXYS}"
        previous, after = row.hash, row.seq
    return signed, None


# -- export ------------------------------------------------------------------------------

CSV_COLUMNS = ("seq", "time", "type", "session", "agent", "groups", "client_address", "application_name",
               "database", "protocol", "commands", "kinds", "statement", "statement_sha256", "tables",
               "columns_read", "columns_written", "tags", "functions", "flags", "rule", "action", "outcome",
               "reason", "approval_id", "reviewers", "decision_reason", "grant", "wait_seconds", "sqlstate",
               "details", "prev", "hash")


def exported_line(row: AuditRow, previous: str) -> str:
    """One JSONL line: the stored event with `prev` and `hash` added at the end. Removing
    those two members gives back the exact text that was hashed."""
    return f'{row.body[:-1]},"prev":"{previous}","hash":"{row.hash}"}}'


# What makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection"), and the full-width
# forms some spreadsheets also accept: a cell starting with one gets a leading apostrophe.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def inert(cell: str) -> str:
    """`cell` as a spreadsheet shows it without running it: ``=HYPERLINK(…)`` becomes ``'=HYPERLINK(…)``."""
    return f"'{cell}" if cell.startswith(FORMULA_PREFIXES) else cell


def csv_record(row: AuditRow, previous: str) -> list[str]:
    """One CSV row in CSV_COLUMNS order; lists are joined with ';', other fields go to `details`.
    Every cell is `inert`: the log holds what clients chose (statements, names)."""
    fields: dict[str, Any] = json.loads(row.body)
    named = [_cell(fields.pop(column, None)) for column in CSV_COLUMNS[:-3]]
    details = json.dumps(fields, sort_keys=True, ensure_ascii=False) if fields else ""
    return [inert(cell) for cell in (*named, details, previous, row.hash)]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ";".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


async def export(store: Store, *, since: float | None, until: float | None,
                 emit: Callable[[AuditRow, str], object]) -> int:
    """Call `emit(row, previous hash)` for each event in [since, until), in order."""
    count = 0
    previous: str | None = None
    async for row in rows_in_order(store, since=since, until=until):
        if previous is None:
            previous = await previous_hash(store, row) or ""
        emit(row, previous)
        previous = row.hash
        count += 1
    return count


def statement_members(*, commands: Iterable[str], kinds: Iterable[str], tables: Iterable[str],
                      reads: dict[str, Iterable[str]], writes: dict[str, Iterable[str]], functions: Iterable[str],
                      flags: Iterable[str], rule: str, action: str, reason: str) -> str:
    """A statement's analysis and decision as JSON members (cached with the decision)."""
    tags = sorted({t for tags in (*reads.values(), *writes.values()) for t in tags})
    return members({
        "commands": list(dict.fromkeys(commands)), "kinds": sorted(set(kinds)),
        "tables": sorted(set(tables)), "columns_read": sorted(reads), "columns_written": sorted(writes),
        "tags": tags, "functions": sorted(set(functions)), "flags": sorted(set(flags)),
        "rule": rule, "action": action, "reason": reason})
