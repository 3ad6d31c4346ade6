"""The relay: one Session per client connection, an asyncio shell around the protocol model.

Theory of operation
-------------------
A session goes through STARTUP, AUTHENTICATING and CONNECTING (pgproxy.startup), then
relays. Where it is in the query cycle -- what the server holds,
what it still owes, COPY, the transaction -- is the protocol model's to say
(`pgproxy.protocol.ProtocolModel`, sans-IO); the relay keeps no second account of it.

Once relaying, each socket is read by a callback. `_client_data` splits the client's bytes
into messages and hands each to the decision point (pgproxy.decision.DecisionPoint): a statement's text
is judged when it arrives (Query, Parse); what is held or refused is an execution (an
Execute of a portal, a simple Query, and the FETCH / EXECUTE of objects a name stands for),
judged by what the model says it runs. Everything allowed is forwarded as the client's
original bytes, a run of messages at a time, in the callback itself. A message whose
decision takes time (a long analysis, a hold, or the server's answers to what came before
it) starts a task, `_continue`; the client's later messages wait their turn.

`_upstream_data` checks each server message against the model, which replaces the error the
refusal mechanism provoked with the proxy's own, drops what the result guard refused, and
raises `Desync` when the server answers what it did not expect: the session then ends (08P01).

A CancelRequest comes on a connection of its own and reaches the session through
`SessionRegistry.cancel` (`Session.cancel`): a statement pgproxy is still deciding on, checking
or holding is withdrawn -- refused like any other, so the client gets one error (57014) and,
at its Sync, ReadyForQuery, and the model stays in step; a statement the server runs gets the
cancel forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pgproxy.audit import members
from pgproxy.decision import (
    CANCELLED_WHILE_DECIDED,
    CANCELLED_WHILE_HELD,
    DecisionPoint,
    Judgement,
    Refuse,
    Resume,
    Statement,
    StatementGate,
    Verdict,
    Wait,
    facts,
)
from pgproxy.errors import AuthFailed, ClientProtocolError, ProxyError, SqlState, UpstreamProtocolError
from pgproxy.identity import Authenticator, Identity, shown_name
from pgproxy.logs import SessionLog
from pgproxy.protocol import Desync, GuardRefusal, PreparedStatement, ProtocolModel
from pgproxy.startup import (
    NO_SUCH_SESSION,
    TRANSITIONS,
    WRONG_SECRET_KEY,
    InvalidTransition,
    State,
    authenticate,
    connect,
    judge_parameters,
    startup,
)
from pgproxy.unauthenticated import REASON_CHARS, bounded
from pgproxy.upstream import UpstreamConnection, send_cancel
from pgproxy.wire import messages as m
from pgproxy.wire.codec import FrameError, FrameReader

if TYPE_CHECKING:
    from pgproxy.audit import AuditLog
    from pgproxy.config import Config
    from pgproxy.sampling import Sampler

# Until the agent has logged in, a message may be at most this large (PostgreSQL's own cap
# on authentication packets), whatever limits.max_message_bytes allows afterwards.
AUTH_MAX_MESSAGE_BYTES = 65535
TERMINATE_DRAIN_SECONDS = 5.0  # how long replies to messages sent before Terminate may take

T = TypeVar("T")


# --- Registry shared by the server's sessions ------------------------------------------


class SessionRegistry:
    """Maps the BackendKeyData the proxy handed out to sessions, for CancelRequest."""

    def __init__(self) -> None:
        self._by_pid: dict[int, Session] = {}

    def register(self, session: Session) -> m.BackendKeyData:
        while True:
            pid = secrets.randbelow(2**31 - 1) + 1
            if pid not in self._by_pid:
                break
        self._by_pid[pid] = session
        return m.BackendKeyData(pid, secrets.randbits(32) - 2**31)

    def unregister(self, session: Session) -> None:
        if session.backend_key is not None:
            self._by_pid.pop(session.backend_key.process_id, None)

    def sessions(self) -> list[Session]:
        return list(self._by_pid.values())

    async def cancel(self, request: m.CancelRequest, *, tls: bool) -> str | None:
        """Cancel what the session whose key `request` carries is doing for its client (see
        Session.cancel); `tls`: the CancelRequest came over TLS. None when the key was a session's;
        else why nothing was done (NO_SUCH_SESSION or WRONG_SECRET_KEY)."""
        session = self._by_pid.get(request.process_id)
        if session is None or session.backend_key is None:
            return NO_SUCH_SESSION
        expected = session.backend_key.secret_key.to_bytes(4, "big", signed=True)
        given = request.secret_key.to_bytes(4, "big", signed=True)
        if not hmac.compare_digest(expected, given):
            return WRONG_SECRET_KEY
        await session.cancel(tls=tls)
        return None


# --- The session ---------------------------------------------------------------------------


class Session:
    """One client connection and the upstream connection it uses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 config: Config, authenticator: Authenticator, registry: SessionRegistry,
                 tls_context: ssl.SSLContext | None, gate: StatementGate | None = None,
                 refusal: ProxyError | None = None, audit: AuditLog | None = None,
                 sampler: Sampler | None = None) -> None:
        self.id = secrets.token_hex(6)
        self.started = time.time()
        self.log = SessionLog(self.id)
        self.config = config
        self.limits = config.limits
        self.authenticator = authenticator
        self.registry = registry
        self.tls_context = tls_context
        self.gate = gate
        self.refusal = refusal  # refuse the session once its startup packet is read (e.g. 53300)
        self.sampler = sampler  # run-time PII sampling of results (pgproxy.sampling), when enabled
        self.audit = audit
        self.audit_members = ""  # who this session is, as JSON members of its audit events (once logged in)
        self.statements = 0  # judged so far
        self.ended_by = "client disconnected"
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.client_address: str = str(peer[0]) if isinstance(peer, tuple) else "local"
        self.client_tls = False
        self.state = State.STARTUP
        self.parameters: dict[str, str] = {}
        self.identity: Identity | None = None
        self.database = ""
        self.backend_key: m.BackendKeyData | None = None
        self.upstream: UpstreamConnection | None = None
        self.last_client_activity = time.monotonic()
        self._frames = FrameReader(max_message_bytes=min(AUTH_MAX_MESSAGE_BYTES, self.limits.max_message_bytes),
                                   allowed_types=m.FRONTEND_TYPES)
        self._pending_client: deque[tuple[int, bytes]] = deque()  # frames read during auth
        self._closing = False
        self.gate_state: Any = None  # the gate's per-session state
        self._waiting: asyncio.Future[Judgement] | None = None  # a decision being waited for
        # The statement the client waits for is being checked before its hold (see `_checked`),
        # and whether a CancelRequest withdrew it meanwhile.
        self._checking = False
        self._withdrawn = False
        self._held = False  # `_waiting` is a reviewer's decision (not the statement's analysis)
        self._deferred: deque[tuple[bytes, list[tuple[int, int, int]]]] = deque()  # read while held
        self._deferred_bytes = 0
        # The relay (see `_relay`): its end, its two sockets, why the client is not being read,
        # the task finishing a statement whose decision takes time, and what it waits for.
        self._ended: asyncio.Future[None] | None = None
        self._client: _Side | None = None
        self._upstream: _Side | None = None
        self._upstream_frames = FrameReader(max_message_bytes=self.limits.max_message_bytes,
                                            allowed_types=m.BACKEND_TYPES)
        self._client_pauses: set[str] = set()
        self._slow: asyncio.Task[None] | None = None
        self._answered: asyncio.Future[None] | None = None
        # What the server holds and owes (the one model; see pgproxy.protocol).
        self.model = ProtocolModel(strict=gate is not None and gate.strict,
                                   guard=None if gate is None else self._forbidden)
        self.decisions = DecisionPoint(self)
        self._upstream_said_fatal = False
        self._terminating = False  # the client sent Terminate

    # -- state ---------------------------------------------------------------------------

    def _to(self, new: State) -> None:
        if new is self.state:
            return
        if new not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"{self.state.value} -> {new.value}")
        self.state = new

    # -- entry point ---------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until either side ends it."""
        try:
            try:
                async with asyncio.timeout(self.limits.auth_timeout_seconds):
                    if not await startup(self):
                        return
                    if self.refusal is not None:
                        raise self.refusal
                    await authenticate(self)
                    await judge_parameters(self)
                    await connect(self)
                    if self.sampler is not None:
                        self.model.sampler, self.model.sample_database = self.sampler, self.database
            except TimeoutError:
                raise ProxyError(
                    SqlState.CONNECTION_FAILURE,
                    f"authentication timed out after {self.limits.auth_timeout_seconds:g} s",
                ) from None
            await self._relay()
        except ProxyError as exc:
            self._log_failure(exc)
            self._audit_failure(exc)
            await self._fatal(exc)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            # Before a startup packet this is usually a port probe (a load balancer's health check).
            level = logging.DEBUG if self.state is State.STARTUP else logging.INFO
            self.log.log(level, "connection lost", extra={"event_detail": type(exc).__name__})
        except InvalidTransition as exc:
            self.log.error("protocol state error", extra={"transition": str(exc)})
            self.ended_by = "pgproxy internal error"
            await self._fatal(ProxyError(SqlState.INTERNAL_ERROR, "pgproxy internal error"))
        finally:
            await self.close()

    def _log_failure(self, exc: ProxyError) -> None:
        event = {
            AuthFailed: "authentication refused",
            ClientProtocolError: "client protocol violation",
            UpstreamProtocolError: "upstream protocol violation",
        }.get(type(exc), "session refused")
        self.log.warning(event, extra={"sqlstate": exc.sqlstate, "reason": exc.message,
                                       "state": self.state.value})

    def _who(self) -> dict[str, object]:
        """The session's fields in its audit events (the agent is None before it logged in)."""
        identity = self.identity
        return {"session": self.id, "agent": identity.agent_id if identity is not None else None,
                "groups": sorted(identity.groups) if identity is not None else [],
                "client_address": self.client_address,
                "application_name": self.parameters.get("application_name", ""), "database": self.database}

    def _audit_session_event(self, type_: str, **fields: object) -> None:
        """An event of this logged-in session: its fields (serialised at login) and `fields`."""
        assert self.audit is not None
        self.audit.record(type_, f"{self.audit_members},{members(fields)}")

    def _audit_failure(self, exc: ProxyError) -> None:
        """A login refused is one event (what the client chose in it bounded; before the client
        authenticated, also in rate: see pgproxy.unauthenticated); a session that ended with an
        error says so when it closes."""
        if self.audit is None:
            return
        if self.identity is None or self.upstream is None or self.backend_key is None:
            event = {**self._who(), "user": bounded(shown_name(self.parameters.get("user", ""))),
                     "stage": self.state.value, "sqlstate": exc.sqlstate, "reason": bounded(exc.message, REASON_CHARS)}
            for name in ("application_name", "database"):
                event[name] = bounded(str(event[name]))
            if self.identity is None:
                self.audit.record_unauthenticated("connection.refused", event, {
                    "client_address": self.client_address, "stage": self.state.value, "sqlstate": exc.sqlstate})
            else:
                self.audit.record("connection.refused", event)
        else:
            self.ended_by = f"{exc.sqlstate}: {exc.message}"

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self.audit is not None and self.backend_key is not None:
            self._audit_session_event("connection.closed", duration_seconds=round(time.time() - self.started, 3),
                                      statements=self.statements, ended_by=self.ended_by)
        if self.state is not State.STARTUP:
            self.log.info("session closed")
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
        self.registry.unregister(self)
        if self.gate is not None:
            self.gate.session_closed(self)  # e.g. DDL committed, the client gone before its answer
        if self.upstream is not None:
            self.upstream.close()
        if not self.writer.is_closing():
            self.writer.close()
        # Once relaying, the socket's protocol is a `_Side`, which knows when it is closed.
        closed = self.writer.wait_closed() if self._client is None else asyncio.shield(self._client.closed)
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(closed, 1.0)

    async def terminate(self, error: ProxyError) -> None:
        """End the session from outside (shutdown, idle timeout) with a FATAL error."""
        self.ended_by = f"{error.sqlstate}: {error.message}"
        await self._fatal(error)
        await self.close()

    async def _fatal(self, exc: ProxyError) -> None:
        if self.writer.is_closing():
            return
        try:
            self.writer.write(m.ErrorResponse.make(
                exc.severity, exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint
            ).encode())
            await asyncio.wait_for(self.writer.drain(), 1.0)
        except (OSError, TimeoutError, ssl.SSLError):
            pass

    async def cancel(self, *, tls: bool) -> None:
        """A CancelRequest with this session's key (`tls`: it came over TLS): cancel the statement
        the client is waiting for, wherever it is, so that the client gets one answer to it.

        - pgproxy is deciding on it or holding it (`_waiting`): it is withdrawn (a held statement's
          approval request too) and never reaches the server; the client gets 57014;
        - pgproxy is checking it before its hold (the server parses it, the schema is read
          again: `_checking`): it is withdrawn once the check is over (see `_checked`);
        - otherwise the server is running it (or nothing, and PostgreSQL ignores the cancel):
          the CancelRequest is forwarded, with the upstream's own key.

        A decision that came in just before the cancel (the statement is about to be forwarded)
        counts as running: the cancel follows the statement to the server."""
        waiting = self._waiting
        if self._checking or (waiting is not None and not waiting.done()):
            self._withdrawn = self._checking
            if waiting is not None:
                waiting.cancel()
            self.log.info("cancel request withdrew a held statement" if self._held
                          else "cancel request withdrew a statement before its hold", extra={"tls": tls})
            return
        if self.upstream is not None and self.upstream.backend_key is not None:
            self.log.info("cancel request forwarded", extra={"tls": tls})
            await send_cancel(self.upstream.route, self.upstream.backend_key)

    # -- relay ---------------------------------------------------------------------------
    #
    # Once the session is ready, both sockets are read by callbacks (`_Side`) rather than
    # stream tasks: a read is framed, checked and forwarded in the callback itself, so an
    # allowed statement costs no task switch. Only a statement whose decision takes time (a
    # long analysis, a hold) starts a task, `_continue`; the client's later messages wait
    # their turn in `_deferred` until it ends.

    async def _relay(self) -> None:
        assert self.upstream is not None
        loop = asyncio.get_running_loop()
        self._ended = loop.create_future()
        client = _Side(self.writer.transport, self._client_data, self._client_lost,
                       # The client reads slower than the server answers: stop reading the server.
                       pause_peer=self._pause_upstream, resume_peer=self._resume_upstream)
        upstream = _Side(self.upstream.writer.transport, self._upstream_data, self._upstream_lost,
                         pause_peer=functools.partial(self._pause_client, "upstream"),
                         resume_peer=functools.partial(self._resume_client, "upstream"))
        # Bytes the startup's stream readers took in but nobody read yet come first.
        client_rest, client_eof = await client.take_over(self.reader)
        upstream_rest, upstream_eof = await upstream.take_over(self.upstream.reader)
        upstream_rest = self.upstream.leftover + upstream_rest
        self._client = client
        self._upstream = upstream
        client.transport.set_write_buffer_limits(high=self.limits.max_buffered_bytes)
        upstream.transport.set_write_buffer_limits(high=self.limits.max_buffered_bytes)
        if self._pending_client:
            # Messages the client pipelined behind its last authentication message.
            batch, pos = [], 0
            for type_byte, raw in self._pending_client:
                batch.append((type_byte, pos, pos + len(raw)))
                pos += len(raw)
            buf = b"".join(raw for _, raw in self._pending_client)
            self._pending_client.clear()
            self._client_batch(buf, batch)
        for data in (client_rest, *client.start()):
            if data and not self._ended.done():
                self._client_data(data)
        for data in (upstream_rest, *upstream.start()):
            if data and not self._ended.done():
                self._upstream_data(data)
        if client_eof or client.lost_early:
            self._client_lost()
        if upstream_eof or upstream.lost_early:
            self._upstream_lost()
        idle = None
        if self.limits.idle_timeout_seconds > 0:
            idle = asyncio.create_task(self._idle_watch())
        try:
            await asyncio.wait([self._ended] if idle is None else [self._ended, idle],
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            if idle is not None:
                idle.cancel()
            slow = self._slow
            if slow is not None:
                slow.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(*(t for t in (idle, slow) if t is not None), return_exceptions=True)
            if not self._ended.done():
                # Ended by the idle timeout (or cancelled): the sockets closing next is no news,
                # and an error set on this future now would never be read.
                self._ended.set_result(None)
        if idle is not None and idle.done() and not idle.cancelled() and idle.exception() is not None:
            raise idle.exception()  # type: ignore[misc]
        if self._ended.done():
            error = self._ended.exception()
            if error is None or isinstance(error, (ConnectionError, ssl.SSLError)):
                return
            if isinstance(error, (ProxyError, InvalidTransition)):
                raise error
            self.log.error("internal error", exc_info=error)
            raise ProxyError(SqlState.INTERNAL_ERROR, "pgproxy internal error")

    def _end(self, error: BaseException | None = None) -> None:
        """The relay is over: cleanly (None) or with the error that ended it."""
        ended = self._ended
        if ended is None or ended.done():
            return
        if error is None:
            ended.set_result(None)
        else:
            ended.set_exception(error)

    def _pause_client(self, reason: str) -> None:
        if not self._client_pauses and self._client is not None:
            self._client.transport.pause_reading()
        self._client_pauses.add(reason)

    def _resume_client(self, reason: str) -> None:
        if reason not in self._client_pauses:
            return
        self._client_pauses.discard(reason)
        if not self._client_pauses and self._client is not None and not self._client.transport.is_closing():
            self._client.transport.resume_reading()

    def _pause_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.transport.pause_reading()

    def _resume_upstream(self) -> None:
        if self._upstream is not None and not self._upstream.transport.is_closing():
            self._upstream.transport.resume_reading()

    def _client_data(self, data: bytes) -> None:
        """A read from the client: forward it now, or queue it behind a statement being decided."""
        if self._ended is None or self._ended.done():
            return
        self.last_client_activity = time.monotonic()
        if self._slow is None and not self._frames.pending_bytes and self.model.idle:
            try:
                decisions = self.decisions
                if ((data[0] == m.BIND and decisions.quick_cycle(data))
                        or (data[0] == m.QUERY and decisions.quick_query(data))):
                    assert self._upstream is not None
                    self._upstream.transport.write(data)
                    return
            except Exception as exc:  # it ends this session only (see _relay)
                self._end(exc)
                return
        try:
            batch = self._frames.feed(data)
        except FrameError as exc:
            self._cancel_waiting()
            self._end(ClientProtocolError(str(exc)))
            return
        if not batch:
            return
        buf = self._frames.buffer
        if self._slow is not None:
            self._defer(buf, batch)
        else:
            self._client_batch(buf, batch)

    def _defer(self, buf: bytes, batch: list[tuple[int, int, int]]) -> None:
        """Messages that arrive while a statement is decided or held wait their turn, within the
        buffered-bytes cap (past it the client is not read: back-pressure). A Terminate withdraws
        the statement and ends the session."""
        if any(t == m.TERMINATE for t, _, _ in batch):
            self.log.info("client terminated while a statement was held")
            self.ended_by = "client terminated"
            self._terminating = True
            self._cancel_waiting()
            self._end()
            return
        self._deferred.append((buf, batch))
        self._deferred_bytes += len(buf)
        if self._deferred_bytes >= self.limits.max_buffered_bytes:
            self._pause_client("deferred")

    def _cancel_waiting(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()

    def _client_batch(self, buf: bytes, batch: list[tuple[int, int, int]]) -> None:
        try:
            outcome = self._forward_client(buf, batch)
        except Exception as exc:  # it ends this session only (see _relay)
            self._end(exc)
            return
        if outcome is True:
            self._client_terminated()
        elif isinstance(outcome, Wait):
            self._slow = asyncio.create_task(self._continue(buf, batch, outcome))
            self._slow.add_done_callback(self._continued)

    def _client_terminated(self) -> None:
        """After Terminate the server answers what came before, then closes: pass that on."""
        assert self._client is not None and self._upstream is not None
        self._pause_client("terminated")
        if self._upstream.transport.is_closing():
            self._end()
        else:
            asyncio.get_running_loop().call_later(TERMINATE_DRAIN_SECONDS, self._end)

    async def _continue(self, buf: bytes, batch: list[tuple[int, int, int]], wait: Wait) -> None:
        """Finish the message `wait` stopped at, then the rest of its batch and what was deferred."""
        while True:
            type_byte, start, end = batch[wait.index]
            resume: Resume | None = None
            run_start = start
            first = wait.index
            if wait.decide is not None:
                resume = Resume(await self._await_decision(wait.decide))
            elif wait.ask is not None:
                (resume, first, run_start), withdrawn = await self._checked(self._ask(wait, run_start, end))
                if withdrawn and resume is not None:  # (None: the server refused it, and answered the client)
                    self._withdraw(type_byte, wait.ask[1], wait.judged)
                    resume, first, run_start = None, wait.index + 1, end
            elif wait.refresh is not None:
                _, withdrawn = await self._checked(self._judge_afresh(wait.refresh))
                if withdrawn:
                    self._withdraw(type_byte, wait.refresh.sql, facts(wait.refresh))
                    first, run_start = wait.index + 1, end
                else:
                    resume = Resume(asked=True)
            elif wait.hold is not None:
                decided = await self._hold(*wait.hold)
                if decided.verdict is Verdict.ALLOW:
                    for portal in wait.approve:
                        portal.approved = True
                        portal.approved_mask = decided.mask
                    resume = Resume(wait.judged, approved=True, mask=decided.mask)
                else:
                    self._send_refusal(type_byte, decided)
                    first, run_start = wait.index + 1, end
            else:
                await self._until_answered()
                if wait.judged is not None:
                    resume = Resume(wait.judged)  # judged already: not judged (or counted) again
            outcome = self._forward_client(buf, batch, first, run_start, resume)
            while outcome is False and self._deferred:
                buf, batch = self._deferred.popleft()
                self._deferred_bytes -= len(buf)
                outcome = self._forward_client(buf, batch)
            if not isinstance(outcome, Wait):
                break
            wait = outcome
        # Still in the same callback as the last forward: nothing can have been deferred since.
        self._slow = None
        self._resume_client("deferred")
        if outcome is True:
            self._client_terminated()

    async def _checked(self, check: Awaitable[T]) -> tuple[T, bool]:
        """Check the statement the client waits for before its hold (the server parses it, the
        schema is read again). A CancelRequest meanwhile cannot stop the check halfway (the model
        follows its answers), so it withdraws the statement once the check is over: the result is
        the check's and whether the statement was withdrawn."""
        self._checking = True
        self._withdrawn = False
        try:
            result = await check
        finally:
            self._checking = False
        withdrawn, self._withdrawn = self._withdrawn, False
        return result, withdrawn

    def _withdraw(self, type_byte: int, sql: str, judged: Judgement | None) -> None:
        """A statement withdrawn before its hold: the server is made to fail in its place, so the
        client gets 57014 (then, at its Sync, ReadyForQuery) and the model stays in step."""
        if self.gate is not None and judged is not None:
            self.gate.withdrawn(self, sql, judged)
        self._send_refusal(type_byte, CANCELLED_WHILE_DECIDED)

    async def _ask(self, wait: Wait, start: int, end: int) -> tuple[Resume | None, int, int]:
        """Before a Query is held, the server parses it (running nothing). If it refuses, its
        error is the client's answer and the Query is done; if it knows a name pgproxy does not,
        pgproxy's schema is stale: it is read again and the Query judged afresh."""
        assert self._upstream is not None and wait.ask is not None and wait.judged is not None
        body, sql = wait.ask
        self._upstream.transport.write(self.model.ask(body))
        await self._until_answered()
        if self.model.refused_by_server:
            if self.gate is not None:
                self.gate.server_refused(self, sql, wait.judged)
            return None, wait.index + 1, end
        if wait.judged.stale and self.gate is not None:
            await self.gate.refresh_schema(self)
            return Resume(asked=True), wait.index, start
        return Resume(wait.judged, asked=True), wait.index, start

    async def _judge_afresh(self, statement: PreparedStatement) -> None:
        """The server parsed a prepared statement whose names pgproxy's schema does not know: read
        the schema again, and judge the statement on it (what it does to the session's objects
        cannot change: its judgement is replaced only when that stays the same)."""
        assert self.gate is not None
        await self.gate.refresh_schema(self)
        decided = self.gate.judge(self, Statement("extended", statement.sql))
        judged = decided if isinstance(decided, Judgement) else await self._await_decision(decided)
        parts = judged.parts
        op = parts[0].op if parts is not None and len(parts) == 1 else None
        if op == statement.op:
            statement.facts = judged

    def _continued(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._end(task.exception())

    async def _until_answered(self) -> None:
        """Wait until the server answered everything forwarded (see ProtocolModel: a message
        that would rely on a prediction across segments waits for the answers instead)."""
        if self.model.idle:
            return
        assert self._upstream is not None
        # The server keeps answers to a pipeline until its Sync or a Flush: ask for them now.
        # (Flush has no answer and changes nothing.)
        self._upstream.transport.write(m.FLUSH_MESSAGE)
        waiter = asyncio.get_running_loop().create_future()
        self._answered = waiter
        try:
            await waiter
        finally:
            self._answered = None

    @property
    def max_message_bytes(self) -> int:
        """The largest client message now allowed (smaller until the agent has logged in)."""
        return self._frames.max_message_bytes

    def _forward_client(self, buf: bytes, batch: list[tuple[int, int, int]], first: int = 0,
                        run_start: int | None = None, resume: Resume | None = None) -> bool | Wait:
        """Forward messages `first`... of one read. True when the client terminated; a `Wait`
        when a message must wait (for its decision, a reviewer, or the server's answers to
        what came before it, which is forwarded)."""
        assert self._upstream is not None
        upstream = self._upstream.transport
        if first >= len(batch):
            if run_start is not None and run_start < batch[-1][2]:
                upstream.write(buf[run_start:batch[-1][2]])
            return False
        if run_start is None:
            run_start = batch[first][1]
        model = self.model
        for index in range(first, len(batch)):
            type_byte, start, end = batch[index]
            if model.doomed and type_byte != m.SYNC and type_byte != m.TERMINATE:
                continue  # a refusal made the server fail earlier in this pipeline: it skips this unseen
            if type_byte == m.TERMINATE:
                self.log.info("client terminated")
                self.ended_by = "client terminated"
                self._terminating = True
                upstream.write(buf[run_start:end])
                return True
            if type_byte == m.PASSWORD:
                raise ClientProtocolError("unexpected password message after authentication")
            action = self.decisions.message(type_byte, buf, start, end, resume if index == first else None)
            if action is None:
                continue
            if isinstance(action, Wait):
                upstream.write(buf[run_start:start])
                action.index = index
                return action
            if isinstance(action, Refuse):
                upstream.write(buf[run_start:start] + action.data)
                run_start = end
            else:  # bytes the proxy sends before the message (a Describe the result guard needs)
                assert isinstance(action, bytes)
                upstream.write(buf[run_start:start] + action)
                run_start = start
        upstream.write(buf[run_start:batch[-1][2]])
        return False

    def _send_refusal(self, type_byte: int, judgement: Judgement) -> None:
        assert self._upstream is not None
        self._upstream.transport.write(self.decisions.refusal(type_byte, judgement).data)

    async def _hold(self, sql: str, parameters: tuple[str | None, ...], judgement: Judgement) -> Judgement:
        """The hold point: wait for a reviewer while the connection stays responsive."""
        assert self.gate is not None
        self._held = True
        try:
            return await self._await_decision(self.gate.hold(self, sql, parameters, judgement), CANCELLED_WHILE_HELD)
        finally:
            self._held = False

    async def _await_decision(self, pending: Awaitable[Judgement],
                              cancelled: Judgement = CANCELLED_WHILE_DECIDED) -> Judgement:
        """Wait for a decision. Meanwhile the client is still read (`_client_data`): a Terminate,
        a disconnect or a CancelRequest withdraws the statement (the decision is then `cancelled`);
        other messages wait their turn."""
        decision = asyncio.ensure_future(pending)
        self._waiting = decision
        try:
            await asyncio.wait((decision,))
        finally:
            self._waiting = None
            if not decision.done():
                decision.cancel()
        if decision.cancelled():
            return cancelled
        return decision.result()

    def send_notice(self, message: str, detail: str | None = None) -> None:
        """A NoticeResponse to the client (whole messages only, so it cannot split another)."""
        self.writer.write(m.NoticeResponse.make(message, detail=detail).encode())

    # -- the server's side ---------------------------------------------------------------

    def _upstream_data(self, data: bytes) -> None:
        """A read from the server: follow it in the model (and guard results), then pass it on."""
        if self._ended is None or self._ended.done():
            return
        frames = self._upstream_frames
        if not frames.pending_bytes:
            try:
                if self.model.whole_answer(data, frames.max_message_bytes + 4):
                    assert self._client is not None
                    self._client.transport.write(data)
                    if self.gate is not None:
                        self.gate.cycle_done(self)
                    if self._answered is not None and not self._answered.done():
                        self._answered.set_result(None)
                    return
            except Desync as exc:
                self._desynced(str(exc))
                return
            except Exception as exc:  # it ends this session only (see _relay)
                self._end(exc)
                return
        try:
            batch = frames.feed(data)
            if not frames.end:
                return
            out = self._answers(frames.buffer, batch, frames.end)
        except FrameError as exc:
            self._end(UpstreamProtocolError(f"upstream sent an invalid message: {exc}"))
            return
        except (Desync, m.MessageFormatError) as exc:
            self._desynced(str(exc))
            return
        except Exception as exc:  # it ends this session only (see _relay)
            self._end(exc)
            return
        assert self._client is not None
        self._client.transport.write(out)
        if self._answered is not None and self.model.idle and not self._answered.done():
            self._answered.set_result(None)

    def _answers(self, buf: bytes, batch: list[tuple[int, int, int]], last: int) -> bytes:
        """Check each server message against the model; return the bytes for the client (the
        server's own, except where the model replaces or drops a message)."""
        model = self.model
        out: list[bytes] | None = None
        pos = 0  # buf[:pos] is in `out` already
        ready = False
        for type_byte, start, end in batch:
            if (type_byte == m.DATA_ROW or type_byte == m.COPY_DATA) and model.rows_ok:
                continue
            if type_byte == m.DATA_ROW and model.row_sample is not None:
                model.sample_row(buf[start + 5:end])  # copied for run-time sampling; it passes unchanged
                continue
            if model.refusals:
                if out is None:
                    out = []
                out += (buf[pos:start], self._guard_refused(model.refusals.pop()))
                pos = start
            if (type_byte == m.DATA_ROW or type_byte == m.COPY_DATA) and (
                    model.row_mask is not None or model.copy_mask is not None):
                masked = model.masked(type_byte, buf[start + 5:end])
                if masked is not None:
                    if out is None:
                        out = []
                    out += (buf[pos:start], masked)
                    pos = end
                    continue
            if type_byte == m.DATA_ROW and not model.rows_ok:
                if not model.guarding:
                    raise Desync("the server sent rows pgproxy did not expect")
                replacement: bytes | None = b""
            elif type_byte == m.ERROR_RESPONSE and self._fatal_upstream(buf[start + 5:end]):
                replacement = None
            else:
                if type_byte == m.READY_FOR_QUERY:
                    ready = True
                replacement = model.answer(type_byte, buf[start + 5:end])
            if model.refusals:
                replacement = (replacement if replacement is not None else buf[start:end]) + \
                    self._guard_refused(model.refusals.pop())
            if replacement is None:
                continue
            if out is None:
                out = []
            out += (buf[pos:start], replacement)
            pos = end
        if ready and self.gate is not None:
            self.gate.cycle_done(self)
        if out is None:
            return buf if last == len(buf) else buf[:last]
        out.append(buf[pos:last])
        return b"".join(out)

    def _fatal_upstream(self, body: bytes) -> bool:
        """A FATAL or PANIC error: the server ends the session; the client gets the server's words."""
        severity = m.decode_fields(body).get("S", "")
        if severity in ("FATAL", "PANIC"):
            self._upstream_said_fatal = True
            return True
        return False

    def _guard_refused(self, refusal: GuardRefusal) -> bytes:
        """The result guard refused an execution's result (DESIGN.md, decision 5): an analysis
        bug caught in time. Its rows, and what the server sends up to ReadyForQuery, are dropped."""
        self.log.error("result guard refused a result", extra={"columns": refusal.columns})
        if self.audit is not None:
            self._audit_session_event("result.refused", columns=refusal.columns)
        return m.ErrorResponse.make(
            "ERROR", SqlState.INSUFFICIENT_PRIVILEGE,
            refusal.message or "pgproxy refused a result that contains a tagged column the statement was not cleared "
                               "to read",
            detail=f"columns: {', '.join(refusal.columns)}").encode()

    def _desynced(self, reason: str) -> None:
        """The server answered what the model did not expect: end the session, fail closed."""
        self.log.error("protocol model out of step with the server", extra={"reason": reason})
        if self.audit is not None:
            self._audit_session_event("session.desync", reason=reason)
        self._cancel_waiting()
        self._end(UpstreamDesync(f"pgproxy lost track of the server's state and ended the session: {reason}"))

    def _forbidden(self, columns: list[tuple[int, int]], permitted: frozenset[tuple[int, int]]) -> list[str]:
        assert self.gate is not None
        return self.gate.forbidden_columns(self, columns, permitted)

    def _client_lost(self) -> None:
        if not self._terminating:
            if self._waiting is not None:
                self.log.info("client disconnected while a statement was held")
            else:
                self.log.info("client disconnected")
            self.ended_by = "client disconnected"
        self._cancel_waiting()
        self._end()

    def _upstream_lost(self) -> None:
        if self._upstream_said_fatal or self._terminating:
            self._end()  # the client has the server's own FATAL error, or asked to leave
        else:
            self._end(UpstreamProtocolError("the upstream server closed the connection unexpectedly"))

    async def _idle_watch(self) -> None:
        timeout = self.limits.idle_timeout_seconds
        while True:
            await asyncio.sleep(min(timeout / 4, 5.0))
            idle = time.monotonic() - self.last_client_activity
            if (self.model.idle and self._waiting is None and self.model.transaction_status == "I"
                    and idle >= timeout):
                self.log.info("idle session timeout")
                raise ProxyError(SqlState.IDLE_SESSION_TIMEOUT,
                                 "terminating connection due to idle-session timeout")


class UpstreamDesync(UpstreamProtocolError):
    """The server's answers and the protocol model disagree: the session ends (08P01)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.sqlstate = str(SqlState.PROTOCOL_VIOLATION)


class _Side(asyncio.Protocol):
    """One socket of a relaying session, read by callbacks instead of a stream reader: its
    reads go to `receive`, its end to `lost`, and `pause_peer`/`resume_peer` stop and restart
    reading the other socket while this one's write buffer is full."""

    def __init__(self, transport: asyncio.BaseTransport, receive: Callable[[bytes], None],
                 lost: Callable[[], None], pause_peer: Callable[[], None], resume_peer: Callable[[], None]) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.receive = receive
        self.lost = lost
        self._pause_peer = pause_peer
        self._resume_peer = resume_peer
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._early: list[bytes] | None = []  # read before start()
        self.lost_early = False  # the connection ended before start()

    async def take_over(self, reader: asyncio.StreamReader) -> tuple[bytes, bool]:
        """Become the transport's protocol; return what `reader` held unread and whether it had
        seen the end of the stream."""
        eof = bool(getattr(reader, "_eof", False))
        self.transport.set_protocol(self)
        reader.feed_eof()
        rest = await reader.read()
        if not self.transport.is_reading() and not self.transport.is_closing():
            self.transport.resume_reading()  # the reader may have paused it (a full buffer)
        return rest, eof

    def start(self) -> list[bytes]:
        """From now on reads go to `receive`; these came in since take_over()."""
        early, self._early = self._early or [], None
        return early

    def data_received(self, data: bytes) -> None:
        if self._early is None:
            self.receive(data)
        else:
            self._early.append(data)

    def pause_writing(self) -> None:
        self._pause_peer()

    def resume_writing(self) -> None:
        self._resume_peer()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self._early is None:
            self.lost()
        else:
            self.lost_early = True


