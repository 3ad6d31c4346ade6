"""The SQLite store: one file, WAL mode, one connection per store object, used from a worker thread."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pgproxy.names import same
from pgproxy.store import ApprovalRequest, AuditHead, AuditRow, Grant, Status, StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approval_requests (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    groups TEXT NOT NULL,
    database TEXT NOT NULL,
    statement TEXT NOT NULL,
    parameters TEXT NOT NULL,
    statement_sha256 TEXT NOT NULL,
    analysis TEXT NOT NULL,
    rule TEXT NOT NULL,
    reason TEXT NOT NULL,
    client_address TEXT NOT NULL,
    application_name TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    status TEXT NOT NULL,
    decided_by TEXT,
    decision_reason TEXT,
    decided_at REAL,
    decision_token TEXT,
    required_approvals INTEGER NOT NULL DEFAULT 1,
    reviewer_groups TEXT NOT NULL DEFAULT '[]',
    max_grant_minutes INTEGER NOT NULL DEFAULT 0,
    shape TEXT NOT NULL DEFAULT '',
    approved_by TEXT NOT NULL DEFAULT '[]',
    hold_mode TEXT NOT NULL DEFAULT 'wait',
    used_at REAL,
    justification TEXT,
    masked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS approval_requests_status ON approval_requests (status, created_at);
CREATE INDEX IF NOT EXISTS approval_requests_statement
    ON approval_requests (agent, database, statement_sha256, created_at);
CREATE TABLE IF NOT EXISTS approval_votes (
    approval_id TEXT NOT NULL REFERENCES approval_requests (id),
    reviewer TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    token TEXT NOT NULL,
    voted_at REAL NOT NULL,
    grant_minutes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (approval_id, reviewer)
);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    database TEXT NOT NULL,
    shape TEXT NOT NULL,
    expires_at REAL NOT NULL,
    approval_id TEXT NOT NULL,
    granted_by TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS grants_lookup ON grants (agent, database, shape, expires_at);
CREATE TABLE IF NOT EXISTS used_token_ids (
    jti TEXT PRIMARY KEY,
    used_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_events (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events (time);
CREATE TABLE IF NOT EXISTS audit_heads (
    seq INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    signed_at REAL NOT NULL,
    signature TEXT NOT NULL
);
"""
BUSY_TIMEOUT_MS = 5000  # how long a write waits for another connection's write lock

_COLUMNS = ("id", "agent", "groups", "database", "statement", "parameters", "statement_sha256", "analysis",
            "rule", "reason", "client_address", "application_name", "created_at", "expires_at", "status",
            "decided_by", "decision_reason", "decided_at", "decision_token", "required_approvals",
            "reviewer_groups", "max_grant_minutes", "shape", "approved_by", "hold_mode", "used_at", "justification",
            "masked")
# Columns added since the first stores were made: (name, definition), added to older stores.
_ADDED_COLUMNS = {
    "approval_requests": (("hold_mode", "TEXT NOT NULL DEFAULT 'wait'"), ("used_at", "REAL"),
                          ("justification", "TEXT"), ("masked", "INTEGER NOT NULL DEFAULT 0")),
    "approval_votes": (("grant_minutes", "INTEGER NOT NULL DEFAULT 0"),),
}


class SqliteStore:
    """Approval requests in a SQLite file. Every call runs in a worker thread, one at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()
        self._db: sqlite3.Connection | None = None
        self._closed = False  # close() was called: no operation may reopen the connection
        self._appending = False  # this connection writes the audit log (see append_events)

    async def _run(self, fn: Any, *args: Any) -> Any:
        async with self._lock:
            if self._closed:
                raise StoreError(f"store {self.path}: closed")
            try:
                return await self._in_thread(fn, *args)
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {exc}") from exc

    @staticmethod
    async def _in_thread(fn: Any, *args: Any) -> Any:
        """`fn` in a worker thread, for a caller holding the lock. Cancelled, it still waits
        for the thread, so the lock (and the connection) is held until the thread is done:
        closing a connection another thread is using crashes the process."""
        work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            while not work.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({work})
            raise

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                 timeout=BUSY_TIMEOUT_MS / 1000)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            for table, added in _ADDED_COLUMNS.items():  # a store made before these columns existed
                present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                for name, definition in added:
                    if present and name not in present:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def open(self) -> None:
        await self._run(self._connection)

    async def create(self, request: ApprovalRequest) -> None:
        def insert() -> None:
            _insert(self._connection(), request)

        await self._run(insert)

    async def get(self, approval_id: str) -> ApprovalRequest | None:
        def select() -> ApprovalRequest | None:
            found = self._connection().execute(
                f"SELECT {', '.join(_COLUMNS)} FROM approval_requests WHERE id = ?", (approval_id,)).fetchone()
            return _request(found) if found else None

        result: ApprovalRequest | None = await self._run(select)
        return result

    async def list(self, status: Status | None = None, limit: int = 200) -> list[ApprovalRequest]:
        def select() -> list[ApprovalRequest]:
            where, args = ("WHERE status = ?", (status.value,)) if status is not None else ("", ())
            rows = self._connection().execute(
                f"SELECT {', '.join(_COLUMNS)} FROM approval_requests {where} ORDER BY created_at DESC LIMIT ?",
                (*args, limit)).fetchall()
            return [_request(r) for r in rows]

        result: list[ApprovalRequest] = await self._run(select)
        return result

    async def finish(self, approval_id: str, status: Status, *, now: float) -> ApprovalRequest | None:
        def update() -> ApprovalRequest | None:
            db = self._connection()
            changed = db.execute(
                "UPDATE approval_requests SET status = ?, decided_at = ? WHERE id = ? AND status = ?",
                (status.value, now, approval_id, Status.PENDING.value)).rowcount
            if changed != 1:
                return None
            found = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM approval_requests WHERE id = ?",
                               (approval_id,)).fetchone()
            return _request(found)

        result: ApprovalRequest | None = await self._run(update)
        return result

    async def vote(self, approval_id: str, reviewer: str, *, approve: bool, reason: str, token: str,
                   now: float, grant_minutes: int = 0, token_id: str | None = None,
                   masked: bool = False) -> tuple[ApprovalRequest | None, str]:
        def record() -> tuple[ApprovalRequest | None, str]:
            db = self._connection()
            with _transaction(db):
                return self._vote(db, approval_id, reviewer, approve, reason, token, now, grant_minutes, token_id,
                                  masked and approve)

        result: tuple[ApprovalRequest | None, str] = await self._run(record)
        return result

    @staticmethod
    def _vote(db: sqlite3.Connection, approval_id: str, reviewer: str, approve: bool, reason: str, token: str,
              now: float, grant_minutes: int, token_id: str | None,
              masked: bool = False) -> tuple[ApprovalRequest | None, str]:
        select = f"SELECT {', '.join(_COLUMNS)} FROM approval_requests WHERE id = ?"
        row = db.execute(select, (approval_id,)).fetchone()
        if row is None:
            return None, "closed"
        request = _request(row)
        if request.status is not Status.PENDING or request.expires_at <= now:
            return request, "closed"
        if any(same(reviewer, earlier) for earlier in request.approved_by):
            return request, "voted"  # one person, however their name is spelled
        if approve and grant_minutes:
            # A grant is what every approver agreed to: no approval may widen an earlier one's.
            agreed = db.execute("SELECT min(grant_minutes) FROM approval_votes WHERE approval_id = ? AND "
                                "decision IN ('approve', 'approve_masked')", (approval_id,)).fetchone()[0]
            if agreed is not None and grant_minutes > agreed:
                return request, "widens"
        if token_id is not None:
            if db.execute("SELECT 1 FROM used_token_ids WHERE jti = ?", (token_id,)).fetchone() is not None:
                return request, "replayed"
            db.execute("INSERT INTO used_token_ids VALUES (?, ?)", (token_id, now))
        db.execute("INSERT INTO approval_votes (approval_id, reviewer, decision, reason, token, voted_at, "
                   "grant_minutes) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (approval_id, reviewer, "approve_masked" if masked else "approve" if approve else "deny", reason,
                    token, now, grant_minutes if approve else 0))
        approved_by = (*request.approved_by, reviewer) if approve else request.approved_by
        if not approve:
            status, outcome = Status.DENIED, "denied"
        elif len(approved_by) >= request.required_approvals:
            status, outcome = Status.APPROVED, "approved"
        else:
            status, outcome = Status.PENDING, "recorded"
        finished = status is not Status.PENDING
        db.execute(
            "UPDATE approval_requests SET status = ?, approved_by = ?, decided_by = ?, decision_reason = ?, "
            "decided_at = ?, decision_token = ?, masked = max(masked, ?) WHERE id = ?",
            (status.value, json.dumps(list(approved_by)), reviewer if finished else None,
             reason if finished else None, now if finished else None, token if finished else None, int(masked),
             approval_id))
        return _request(db.execute(select, (approval_id,)).fetchone()), outcome

    async def retry(self, request: ApprovalRequest, *, now: float,
                    window: float) -> tuple[ApprovalRequest, str, ApprovalRequest | None]:
        def answer() -> tuple[ApprovalRequest, str, ApprovalRequest | None]:
            db = self._connection()
            with _transaction(db):  # BEGIN IMMEDIATE: one writer at a time, across processes too
                return self._retry(db, request, now, window)

        result: tuple[ApprovalRequest, str, ApprovalRequest | None] = await self._run(answer)
        return result

    @staticmethod
    def _retry(db: sqlite3.Connection, request: ApprovalRequest, now: float,
               window: float) -> tuple[ApprovalRequest, str, ApprovalRequest | None]:
        row = db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM approval_requests WHERE agent = ? AND database = ? "
            "AND statement_sha256 = ? AND groups = ? AND analysis = ? AND hold_mode = 'retry' "
            "ORDER BY created_at DESC LIMIT 1",
            (request.agent, request.database, request.statement_sha256, json.dumps(list(request.groups)),
             json.dumps(request.analysis))).fetchone()
        earlier = _request(row) if row is not None else None
        if earlier is not None:
            if earlier.status is Status.PENDING:
                if earlier.expires_at > now:
                    return earlier, "pending", None
                db.execute("UPDATE approval_requests SET status = ?, decided_at = ? WHERE id = ? AND status = ?",
                           (Status.EXPIRED.value, earlier.expires_at, earlier.id, Status.PENDING.value))
                earlier = replace(earlier, status=Status.EXPIRED, decided_at=earlier.expires_at)
            decided_at = earlier.decided_at if earlier.decided_at is not None else earlier.expires_at
            if now < decided_at + window:
                if earlier.status is Status.APPROVED and earlier.used_at is None:
                    used = db.execute("UPDATE approval_requests SET used_at = ? WHERE id = ? AND used_at IS NULL",
                                      (now, earlier.id)).rowcount
                    if used == 1:
                        return replace(earlier, used_at=now), "used", None
                elif earlier.status in (Status.DENIED, Status.EXPIRED):
                    return earlier, earlier.status.value, None
        _insert(db, request)
        return request, "created", earlier

    async def add_grant(self, grant: Grant) -> None:
        def insert() -> None:
            self._connection().execute(
                "INSERT INTO grants VALUES (?, ?, ?, ?, ?, ?, ?)",
                (grant.id, grant.agent, grant.database, grant.shape, grant.expires_at, grant.approval_id,
                 grant.granted_by))

        await self._run(insert)

    async def find_grant(self, agent: str, database: str, shape: str, now: float) -> Grant | None:
        def select() -> Grant | None:
            row = self._connection().execute(
                "SELECT id, agent, database, shape, expires_at, approval_id, granted_by FROM grants "
                "WHERE agent = ? AND database = ? AND shape = ? AND expires_at > ? ORDER BY expires_at DESC",
                (agent, database, shape, now)).fetchone()
            return Grant(*row) if row else None

        result: Grant | None = await self._run(select)
        return result

    async def use_token_id(self, jti: str, now: float) -> bool:
        def insert() -> bool:
            try:
                self._connection().execute("INSERT INTO used_token_ids VALUES (?, ?)", (jti, now))
            except sqlite3.IntegrityError:
                return False
            return True

        result: bool = await self._run(insert)
        return result

    async def abandon_pending(self) -> int:
        def update() -> int:
            cursor = self._connection().execute(
                "UPDATE approval_requests SET status = ? WHERE status = ? AND hold_mode = 'wait'",
                (Status.ABANDONED.value, Status.PENDING.value))
            return int(cursor.rowcount)

        result: int = await self._run(update)
        return result

    # -- the audit log ------------------------------------------------------------------

    async def append_events(self, rows: Sequence[AuditRow]) -> None:
        """Written on the event loop itself, not in a worker thread: a batch takes about a
        millisecond, while a thread doing Python work would make the loop wait for the GIL at
        every I/O (measured: a third of the proxy's throughput). Only when another connection
        holds the write lock does the wait for it go to a thread."""
        values = [(r.seq, r.time, r.type, r.body, r.hash) for r in rows]

        def insert() -> None:
            db = self._connection()
            with _transaction(db):
                db.executemany("INSERT INTO audit_events VALUES (?, ?, ?, ?, ?)", values)

        async with self._lock:
            if self._closed:
                raise StoreError(f"store {self.path}: closed")
            try:
                db = self._connection()
                if not self._appending:
                    # Checkpoints (which fsync) run in `checkpoint`, in a thread, not in a commit here.
                    db.execute("PRAGMA wal_autocheckpoint = 0")
                    self._appending = True
                db.execute("PRAGMA busy_timeout = 0")
                try:
                    insert()
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                finally:
                    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                await self._in_thread(insert)  # another writer holds the lock: wait for it off the loop
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {exc}") from exc

    async def checkpoint(self) -> None:
        def run() -> None:
            self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)")

        await self._run(run)

    async def last_event(self) -> AuditRow | None:
        def select() -> AuditRow | None:
            row = self._connection().execute(
                "SELECT seq, time, type, body, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
            return AuditRow(*row) if row else None

        result: AuditRow | None = await self._run(select)
        return result

    async def events(self, *, after_seq: int = 0, since: float | None = None, until: float | None = None,
                     type: str | None = None, limit: int = 1000) -> builtins.list[AuditRow]:
        def select() -> builtins.list[AuditRow]:
            where: list[str] = ["seq > ?"]
            args: list[Any] = [after_seq]
            if since is not None:
                where.append("time >= ?")
                args.append(since)
            if until is not None:
                where.append("time < ?")
                args.append(until)
            if type is not None:
                where.append("type = ?")
                args.append(type)
            rows = self._connection().execute(
                f"SELECT seq, time, type, body, hash FROM audit_events WHERE {' AND '.join(where)} "
                "ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
            return [AuditRow(*row) for row in rows]

        result: list[AuditRow] = await self._run(select)
        return result

    async def add_head(self, head: AuditHead) -> None:
        def insert() -> None:
            self._connection().execute("INSERT OR REPLACE INTO audit_heads VALUES (?, ?, ?, ?)",
                                       (head.seq, head.hash, head.signed_at, head.signature))

        await self._run(insert)

    async def heads(self) -> builtins.list[AuditHead]:
        def select() -> builtins.list[AuditHead]:
            rows = self._connection().execute(
                "SELECT seq, hash, signed_at, signature FROM audit_heads ORDER BY seq").fetchall()
            return [AuditHead(*row) for row in rows]

        result: list[AuditHead] = await self._run(select)
        return result

    async def prunable(self, before: float) -> tuple[int, str, int] | None:
        def select() -> tuple[int, str, int] | None:
            db = self._connection()
            newest = db.execute("SELECT max(seq) FROM audit_events").fetchone()[0]
            row = db.execute("SELECT seq, hash FROM audit_events WHERE time < ? AND seq < ? "
                             "ORDER BY seq DESC LIMIT 1", (before, newest or 0)).fetchone()
            if row is None:
                return None
            count = db.execute("SELECT count(*) FROM audit_events WHERE seq <= ?", (row[0],)).fetchone()[0]
            return int(row[0]), str(row[1]), int(count)

        result: tuple[int, str, int] | None = await self._run(select)
        return result

    async def prune_events(self, through_seq: int, anchor: AuditRow, head: AuditHead) -> None:
        def prune() -> None:
            db = self._connection()
            with _transaction(db):
                db.execute("DELETE FROM audit_events WHERE seq <= ?", (through_seq,))
                db.execute("DELETE FROM audit_heads WHERE seq <= ?", (through_seq,))
                db.execute("INSERT INTO audit_events VALUES (?, ?, ?, ?, ?)",
                           (anchor.seq, anchor.time, anchor.type, anchor.body, anchor.hash))
                db.execute("INSERT OR REPLACE INTO audit_heads VALUES (?, ?, ?, ?)",
                           (head.seq, head.hash, head.signed_at, head.signature))

        await self._run(prune)

    async def close(self) -> None:
        async with self._lock:  # after the operation in flight, never during it
            self._closed = True
            if self._db is not None:
                db, self._db = self._db, None
                await asyncio.to_thread(db.close)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _request(row: tuple[Any, ...]) -> ApprovalRequest:
    values = dict(zip(_COLUMNS, row, strict=True))
    return ApprovalRequest(
        id=values["id"], agent=values["agent"], groups=tuple(json.loads(values["groups"])),
        database=values["database"], statement=values["statement"],
        parameters=tuple(json.loads(values["parameters"])), statement_sha256=values["statement_sha256"],
        analysis=json.loads(values["analysis"]), rule=values["rule"], reason=values["reason"],
        client_address=values["client_address"], application_name=values["application_name"],
        created_at=values["created_at"], expires_at=values["expires_at"], status=Status(values["status"]),
        decided_by=values["decided_by"], decision_reason=values["decision_reason"],
        decided_at=values["decided_at"], decision_token=values["decision_token"],
        required_approvals=values["required_approvals"], reviewer_groups=tuple(json.loads(values["reviewer_groups"])),
        max_grant_minutes=values["max_grant_minutes"], shape=values["shape"],
        approved_by=tuple(json.loads(values["approved_by"])), hold_mode=values["hold_mode"],
        used_at=values["used_at"], justification=values["justification"], masked=bool(values["masked"]),
    )


def _insert(db: sqlite3.Connection, request: ApprovalRequest) -> None:
    row = (request.id, request.agent, json.dumps(list(request.groups)), request.database, request.statement,
           json.dumps(list(request.parameters)), request.statement_sha256, json.dumps(request.analysis),
           request.rule, request.reason, request.client_address, request.application_name,
           request.created_at, request.expires_at, request.status.value, None, None, None, None,
           request.required_approvals, json.dumps(list(request.reviewer_groups)), request.max_grant_minutes,
           request.shape, "[]", request.hold_mode, None, request.justification, 0)
    db.execute(f"INSERT INTO approval_requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
               row)
