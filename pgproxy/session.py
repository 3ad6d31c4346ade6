"""The relay: one Session per client connection, an asyncio shell around the protocol model.

Theory of operation
-------------------
A session goes through STARTUP (SSL/GSSENC negotiation, the startup packet),
AUTHENTICATING (the agent proves who it is: SCRAM for static agents, a JWT sent as the
password otherwise), CONNECTING (the proxy opens and authenticates the upstream with its
own credentials), then relays. Where it is in the query cycle -- what the server holds,
what it still owes, COPY, the transaction -- is the protocol model's to say
(`pgproxy.protocol.ProtocolModel`, sans-IO); the relay keeps no second account of it.

Once relaying, each socket is read by a callback. `_client_data` splits the client's bytes
into messages and hands each to the decision point (`_client_message`): a statement's text
is judged when it arrives (Query, Parse); what is held or refused is an execution (an
Execute of a portal, a simple Query, and the FETCH / EXECUTE of objects a name stands for),
judged by what the model says it runs. Everything allowed is forwarded as the client's
original bytes, a run of messages at a time, in the callback itself. A message whose
decision takes time (a long analysis, a hold, or the server's answers to what came before
it) starts a task, `_continue`; the client's later messages wait their turn.

`_upstream_data` checks each server message against the model, which replaces the error the
refusal mechanism provoked with the proxy's own, drops what the result guard refused, and
raises `Desync` when the server answers what it did not expect: the session then ends (08P01).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import hmac
import ipaddress
import logging
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

from pgproxy.audit import members
from pgproxy.decision import (
    ALLOW,
    CANCELLED_WHILE_HELD,
    FUNCTION_CALL,
    Judgement,
    Statement,
    StatementGate,
    Verdict,
    approved,
    execution,
    facts,
    shown_parameters,
    strictest,
)
from pgproxy.errors import AuthFailed, ClientProtocolError, ProxyError, SqlState, UpstreamProtocolError
from pgproxy.identity import Authenticator, Identity
from pgproxy.logs import SessionLog
from pgproxy.protocol import RESERVED_PREFIX, Desync, GuardRefusal, Portal, PreparedStatement, ProtocolModel, QueryPart
from pgproxy.protocol.objects import REFERENCES, OpKind
from pgproxy.upstream import UpstreamConnection, connect_upstream, send_cancel
from pgproxy.wire import messages as m
from pgproxy.wire.codec import FrameError, FrameReader, StartupReader, unpack_length
from pgproxy.wire.scram import ScramError

if TYPE_CHECKING:
    from pgproxy.audit import AuditLog
    from pgproxy.config import Config

READ_CHUNK = 256 * 1024
# Until the agent has logged in, a message may be at most this large (PostgreSQL's own cap
# on authentication packets), whatever limits.max_message_bytes allows afterwards.
AUTH_MAX_MESSAGE_BYTES = 65535
TERMINATE_DRAIN_SECONDS = 5.0  # how long replies to messages sent before Terminate may take


class State(enum.Enum):
    """Where the session is in its life. Once relaying, where it is in the query cycle (idle,
    waiting for answers, in COPY, held) is the protocol model's to say (`Session.model`)."""

    STARTUP = "startup"
    AUTHENTICATING = "authenticating"
    CONNECTING = "connecting"
    READY = "ready"  # relaying
    CLOSED = "closed"


_TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTUP: frozenset({State.AUTHENTICATING, State.CLOSED}),
    State.AUTHENTICATING: frozenset({State.CONNECTING, State.CLOSED}),
    State.CONNECTING: frozenset({State.READY, State.CLOSED}),
    State.READY: frozenset({State.CLOSED}),
    State.CLOSED: frozenset({State.CLOSED}),
}


class InvalidTransition(RuntimeError):
    """A bug in the proxy: the session tried a transition the protocol does not have."""


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

    async def cancel(self, request: m.CancelRequest) -> bool:
        session = self._by_pid.get(request.process_id)
        if session is None or session.backend_key is None:
            return False
        expected = session.backend_key.secret_key.to_bytes(4, "big", signed=True)
        given = request.secret_key.to_bytes(4, "big", signed=True)
        if not hmac.compare_digest(expected, given):
            return False
        await session.cancel_upstream()
        return True


# --- The session ---------------------------------------------------------------------------


class Session:
    """One client connection and the upstream connection it uses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 config: Config, authenticator: Authenticator, registry: SessionRegistry,
                 tls_context: ssl.SSLContext | None, gate: StatementGate | None = None,
                 refusal: ProxyError | None = None, audit: AuditLog | None = None) -> None:
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
        self.transaction_status = "I"
        self.last_client_activity = time.monotonic()
        self._frames = FrameReader(max_message_bytes=min(AUTH_MAX_MESSAGE_BYTES, self.limits.max_message_bytes),
                                   allowed_types=m.FRONTEND_TYPES)
        self._pending_client: deque[tuple[int, bytes]] = deque()  # frames read during auth
        self._closing = False
        self.gate_state: Any = None  # the gate's per-session state
        self._waiting: asyncio.Future[Judgement] | None = None  # a decision being waited for
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
        self._upstream_said_fatal = False
        self._terminating = False  # the client sent Terminate

    # -- state ---------------------------------------------------------------------------

    def _to(self, new: State) -> None:
        if new is self.state:
            return
        if new not in _TRANSITIONS[self.state]:
            raise InvalidTransition(f"{self.state.value} -> {new.value}")
        self.state = new

    # -- entry point ---------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until either side ends it."""
        try:
            try:
                async with asyncio.timeout(self.limits.auth_timeout_seconds):
                    if not await self._startup():
                        return
                    if self.refusal is not None:
                        raise self.refusal
                    await self._authenticate()
                    await self._connect()
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
        """A login refused is one event; a session that ended with an error says so when it closes."""
        if self.audit is None:
            return
        if self.identity is None or self.upstream is None or self.backend_key is None:
            self.audit.record("connection.refused", {
                **self._who(), "user": self.parameters.get("user", ""), "stage": self.state.value,
                "sqlstate": exc.sqlstate, "reason": exc.message})
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

    async def cancel_upstream(self) -> None:
        if self._waiting is not None:
            # A held statement: the CancelRequest withdraws it (it never reached the server).
            self.log.info("cancel request withdrew a held statement")
            self._waiting.cancel()
            return
        if self.upstream is not None and self.upstream.backend_key is not None:
            self.log.info("cancel request forwarded")
            await send_cancel(self.upstream.route, self.upstream.backend_key)

    # -- startup -------------------------------------------------------------------------

    async def _read_packet(self) -> tuple[bytes, bytes]:
        reader = StartupReader(max_packet_bytes=self.limits.max_startup_packet_bytes)
        while True:
            data = await self.reader.read(READ_CHUNK)
            if not data:
                raise ConnectionResetError("client closed the connection during startup")
            try:
                packet = reader.feed(data)
            except FrameError as exc:
                raise ClientProtocolError(str(exc)) from None
            if packet is not None:
                return packet

    async def _startup(self) -> bool:
        """Negotiate encryption and read the StartupMessage; False when there is no session."""
        negotiated = False  # an SSLRequest or GSSENCRequest was answered already
        while True:
            body, rest = await self._read_packet()
            try:
                packet = m.decode_startup_packet(body)
            except m.UnsupportedProtocolVersion as exc:
                raise ClientProtocolError(str(exc), sqlstate=SqlState.FEATURE_NOT_SUPPORTED) from None
            except m.MessageFormatError as exc:
                raise ClientProtocolError(f"invalid startup packet: {exc}") from None
            if isinstance(packet, m.CancelRequest):
                await self.registry.cancel(packet)
                return False
            if isinstance(packet, m.StartupMessage):
                break
            # SSLRequest / GSSENCRequest: a client must wait for the answer before sending more;
            # bytes sent ahead of a TLS handshake could be injected by a man in the middle.
            if rest:
                raise ClientProtocolError("received unencrypted data after SSL request")
            if negotiated:
                raise ClientProtocolError("encryption was already negotiated on this connection")
            negotiated = True
            if isinstance(packet, m.SSLRequest) and self.tls_context is not None:
                self.writer.write(b"S")
                await self.writer.drain()
                await self.writer.start_tls(self.tls_context)
                self.client_tls = True
            else:
                self.writer.write(b"N")
                await self.writer.drain()
        self.parameters = packet.parameters
        self._feed_client(rest)
        user = self.parameters.get("user", "")
        self.database = self.parameters.get("database") or user
        self.log.bind(agent=user, database=self.database)
        if not user:
            raise ProxyError(SqlState.INVALID_AUTHORIZATION, "no PostgreSQL user name specified in startup packet")
        if self.parameters.get("replication", "false").lower() not in ("false", "off", "no", "0"):
            raise ProxyError(SqlState.FEATURE_NOT_SUPPORTED, "pgproxy does not support replication connections")
        unsupported = tuple(k for k in self.parameters if k.startswith("_pq_."))
        if (packet.protocol & 0xFFFF) > 0 or unsupported:
            self.writer.write(m.NegotiateProtocolVersion(0, unsupported).encode())
        self._to(State.AUTHENTICATING)
        return True

    def _feed_client(self, data: bytes) -> None:
        try:
            for type_byte, start, end in self._frames.feed(data):
                self._pending_client.append((type_byte, self._frames.buffer[start:end]))
        except FrameError as exc:
            raise ClientProtocolError(str(exc)) from None

    async def _next_auth_message(self) -> bytes:
        """The body of the client's next message during authentication (a 'p' message)."""
        while not self._pending_client:
            data = await self.reader.read(READ_CHUNK)
            if not data:
                raise ConnectionResetError("client closed the connection during authentication")
            self._feed_client(data)
        type_byte, raw = self._pending_client.popleft()
        if type_byte == m.TERMINATE:
            raise ConnectionResetError("client terminated during authentication")
        if type_byte != m.PASSWORD:
            raise ClientProtocolError(
                f"expected a password message during authentication, got {chr(type_byte)!r}"
            )
        return raw[5:]

    # -- authentication ------------------------------------------------------------------

    async def _authenticate(self) -> None:
        user = self.parameters["user"]
        method = self.authenticator.method_for(user)
        if method == "scram":
            await self._authenticate_scram(user)
            self.identity = self.authenticator.static_identity(user)
        else:
            if not self._cleartext_allowed():
                raise AuthFailed(
                    "pgproxy does not accept a token over an unencrypted connection; "
                    "connect with sslmode=require",
                    sqlstate=SqlState.INVALID_AUTHORIZATION,
                )
            self.writer.write(m.Authentication(m.AUTH_CLEARTEXT_PASSWORD).encode())
            await self.writer.drain()
            try:
                token = m.decode_password(await self._next_auth_message()).password
            except m.MessageFormatError as exc:
                raise ClientProtocolError(f"invalid password message: {exc}") from None
            self.identity = await self.authenticator.verify_jwt(token, user)
        self.log.bind(agent=self.identity.agent_id)
        self.log.info("authenticated", extra={"method": self.identity.method,
                                              "client": self.client_address, "tls": self.client_tls})
        if self.audit is not None:
            self.audit_members = members(self._who())
            self._audit_session_event("connection.authenticated", method=self.identity.method, tls=self.client_tls)

    def _cleartext_allowed(self) -> bool:
        if self.client_tls:
            return True
        if not self.config.auth.allow_cleartext_on_loopback:
            return False
        try:
            return ipaddress.ip_address(self.client_address).is_loopback
        except ValueError:
            return self.client_address == "local"

    async def _authenticate_scram(self, user: str) -> None:
        server = self.authenticator.scram_server(user)
        self.writer.write(m.auth_sasl(["SCRAM-SHA-256"]).encode())
        await self.writer.drain()
        failed = AuthFailed(f'password authentication failed for user "{user}"')
        try:
            initial = m.decode_sasl_initial_response(await self._next_auth_message())
            if initial.mechanism != "SCRAM-SHA-256" or initial.data is None:
                raise ClientProtocolError("client selected an invalid SASL authentication mechanism")
            first = server.server_first(initial.data)
            self.writer.write(m.Authentication(m.AUTH_SASL_CONTINUE, first).encode())
            await self.writer.drain()
            final = server.server_final(await self._next_auth_message())
        except ScramError:
            raise failed from None
        except m.MessageFormatError as exc:
            raise ClientProtocolError(f"invalid SASL message: {exc}") from None
        self.writer.write(m.Authentication(m.AUTH_SASL_FINAL, final).encode())

    # -- upstream ------------------------------------------------------------------------

    async def _connect(self) -> None:
        route = self.config.routes.get(self.database)
        if route is None:
            raise ProxyError(SqlState.INVALID_CATALOG_NAME, f'database "{self.database}" does not exist',
                             hint="pgproxy has no route for this database name.")
        self._to(State.CONNECTING)
        self.upstream = await connect_upstream(route, self.parameters,
                                               max_message_bytes=self.limits.max_message_bytes)
        self.backend_key = self.registry.register(self)
        self._frames.max_message_bytes = self.limits.max_message_bytes
        greeting = [m.Authentication(m.AUTH_OK).encode(), *self.upstream.startup_frames,
                    self.backend_key.encode(), m.ReadyForQuery("I").encode()]
        self.writer.write(b"".join(greeting))
        await self.writer.drain()
        self._to(State.READY)
        self.log.info("session ready", extra={"upstream": f"{route.host}:{route.port}/{route.dbname}",
                                              "application_name": self.parameters.get("application_name", "")})

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
                if (data[0] == m.BIND and self._quick_cycle(data)) or (data[0] == m.QUERY and self._quick_query(data)):
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

    # The hot paths: reads that the general path (_frames.feed, then _forward_client) would
    # forward unchanged, taken while nothing is outstanding. Each asks the model and the gate
    # the same questions in fewer steps, and returns False (nothing done) for anything else,
    # which then takes the general path.

    def _quick_query(self, data: bytes) -> bool:
        """A read that is one whole Query which the gate has `settled`: allowed, with nothing to
        remember or record, no effect on the session's objects and nothing tagged to show."""
        size = len(data)
        if (size < 6 or size > self._frames.max_message_bytes + 5 or data[-1] != 0
                or unpack_length(data, 1)[0] != size - 1):
            return False
        if self.gate is not None:
            if not self.gate.settled(self, m.decode_str(data[5:-1])):
                return False
            self.statements += 1
        assert self._upstream is not None
        self.model.query(None)
        self._upstream.transport.write(data)
        return True

    def _quick_cycle(self, data: bytes) -> bool:
        """A read that is exactly Bind (unnamed portal), Describe of it or not, Execute (all rows)
        and Sync, of a prepared statement the model knows and the gate allowed with nothing to
        resolve when it runs, outside a transaction block (see ProtocolModel.quick_cycle)."""
        model = self.model
        if model.confirmed.in_block or model.confirmed.frames or model.doomed:
            return False
        size = len(data)
        (length,) = unpack_length(data, 1)
        end = 1 + length
        if length < 7 or end + 15 > size or data[5] != 0:
            return False  # not whole, or a named portal
        name_end = data.index(0, 6, end)
        statement = model.confirmed.statements.get(m.decode_str(data[6:name_end]))
        if statement is None or statement.op is not None:
            return False
        judged = statement.facts
        if judged is not None and (not isinstance(judged, Judgement) or judged.verdict is not Verdict.ALLOW):
            return False
        described = data[end] == m.DESCRIBE
        if described:
            if data[end:end + 7] != _DESCRIBE_UNNAMED_PORTAL:
                return False
            end += 7
        if data[end:] != _EXECUTE_ALL_SYNC:
            return False
        if not described and self.gate is not None and statement.columns is None:
            return False  # the result guard needs the portal described first (the general path does it)
        model.quick_cycle(statement, data[5:1 + length], described,
                          judged.permitted if judged is not None else frozenset())
        assert self._upstream is not None
        self._upstream.transport.write(data)
        return True

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
        elif isinstance(outcome, _Wait):
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

    async def _continue(self, buf: bytes, batch: list[tuple[int, int, int]], wait: _Wait) -> None:
        """Finish the message `wait` stopped at, then the rest of its batch and what was deferred."""
        while True:
            type_byte, start, end = batch[wait.index]
            resume: _Resume | None = None
            run_start = start
            first = wait.index
            if wait.decide is not None:
                resume = _Resume(await self._await_decision(wait.decide))
            elif wait.hold is not None:
                decided = await self._hold(*wait.hold)
                if decided.verdict is Verdict.ALLOW:
                    for portal in wait.approve:
                        portal.approved = True
                    resume = _Resume(wait.judged, approved=True)
                else:
                    self._send_refusal(type_byte, decided)
                    first, run_start = wait.index + 1, end
            else:
                await self._until_answered()
            outcome = self._forward_client(buf, batch, first, run_start, resume)
            while outcome is False and self._deferred:
                buf, batch = self._deferred.popleft()
                self._deferred_bytes -= len(buf)
                outcome = self._forward_client(buf, batch)
            if not isinstance(outcome, _Wait):
                break
            wait = outcome
        # Still in the same callback as the last forward: nothing can have been deferred since.
        self._slow = None
        self._resume_client("deferred")
        if outcome is True:
            self._client_terminated()

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

    def _forward_client(self, buf: bytes, batch: list[tuple[int, int, int]], first: int = 0,
                        run_start: int | None = None, resume: _Resume | None = None) -> bool | _Wait:
        """Forward messages `first`... of one read. True when the client terminated; a `_Wait`
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
            action = self._client_message(type_byte, buf, start, end, resume if index == first else None)
            if action is None:
                continue
            if isinstance(action, _Wait):
                upstream.write(buf[run_start:start])
                action.index = index
                return action
            if action is _TERMINATE:
                upstream.write(buf[run_start:end])
                return True
            if isinstance(action, _Refuse):
                upstream.write(buf[run_start:start] + action.data)
                run_start = end
            else:  # bytes the proxy sends before the message (a Describe the result guard needs)
                assert isinstance(action, bytes)
                upstream.write(buf[run_start:start] + action)
                run_start = start
        upstream.write(buf[run_start:batch[-1][2]])
        return False

    def _client_message(self, type_byte: int, buf: bytes, start: int, end: int,
                        resume: _Resume | None) -> bytes | _Refuse | _Wait | object | None:
        """One client message: None to forward it, or what to do instead (see _forward_client)."""
        model = self.model
        try:
            if type_byte == m.EXECUTE:
                return self._on_execute(buf, start, end, resume)
            if type_byte == m.BIND:
                return self._on_bind(buf, start, end)
            if type_byte == m.SYNC:
                model.sync()
                return None
            if type_byte == m.PARSE:
                return self._on_parse(buf[start + 5:end], resume)
            if type_byte == m.QUERY or type_byte == m.FUNCTION_CALL:
                return self._on_query(type_byte, buf[start + 5:end], resume)
            if type_byte == m.DESCRIBE or type_byte == m.CLOSE:
                kind, name = chr(buf[start + 5]), m.decode_str(buf[start + 6:end - 1])
                if buf[end - 1] != 0 or kind not in ("S", "P"):
                    raise m.MessageFormatError("invalid Describe or Close message")
                if model.is_reserved(name):
                    return self._reserved(name)
                (model.describe if type_byte == m.DESCRIBE else model.close)(kind, name)
                return None
            if type_byte == m.COPY_DONE or type_byte == m.COPY_FAIL:
                model.copy_end()
                return None
            if type_byte == m.TERMINATE:
                self.log.info("client terminated")
                self.ended_by = "client terminated"
                self._terminating = True
                return _TERMINATE
            if type_byte == m.PASSWORD:
                raise ClientProtocolError("unexpected password message after authentication")
            return None  # Flush, CopyData
        except m.MessageFormatError as exc:
            raise ClientProtocolError(f"invalid {chr(type_byte)!r} message: {exc}") from None

    def _reserved(self, name: str) -> _Refuse:
        return self._refusal(m.PARSE, Judgement(
            Verdict.DENY, SqlState.INSUFFICIENT_PRIVILEGE,
            f'the name "{name}" is reserved by pgproxy', detail=f"Names starting with {RESERVED_PREFIX} are "
            "pgproxy's own."))

    def _on_parse(self, body: bytes, resume: _Resume | None) -> _Refuse | _Wait | None:
        parse = m.decode_parse(body)
        if self.model.is_reserved(parse.name):
            return self._reserved(parse.name)
        judged: Judgement = ALLOW
        if self.gate is not None:
            if resume is not None and resume.judgement is not None:
                judged = resume.judgement
            else:
                decided = self._judge(Statement("extended", parse.sql, parse.name))
                if not isinstance(decided, Judgement):
                    return _Wait(decide=decided)
                judged = decided
            # Parsing runs nothing: a statement that needs review is held when it is executed.
            if judged.verdict is Verdict.DENY or (judged.verdict is Verdict.REVIEW and not self.gate.holds):
                return self._refusal(m.PARSE, judged)
        parts = judged.parts
        op = parts[0].op if parts is not None and len(parts) == 1 else None
        self.model.parse(parse.name, PreparedStatement(parse.sql, judged, op))
        return None

    def _on_bind(self, buf: bytes, start: int, end: int) -> _Refuse | _Wait | None:
        body = buf[start + 5:end]
        portal_end = body.index(0)
        statement_end = body.index(0, portal_end + 1)
        portal = m.decode_str(body[:portal_end])
        statement = m.decode_str(body[portal_end + 1:statement_end])
        model = self.model
        if model.is_reserved(portal) or model.is_reserved(statement):
            return self._reserved(portal if model.is_reserved(portal) else statement)
        # Binding to the unnamed portal always replaces it; a named one must not exist yet.
        if not model.statement(statement)[1] or (portal != "" and not model.portal(portal)[1]):
            return _Wait()
        model.bind(portal, statement, body)
        return None

    def _on_execute(self, buf: bytes, start: int, end: int, resume: _Resume | None) -> bytes | _Refuse | _Wait | None:
        name = m.decode_str(buf[start + 5:buf.index(0, start + 5)])
        model = self.model
        portal, certain = model.portal(name)
        if not certain:
            return _Wait()
        if portal is None:
            model.execute(name, None, frozenset())  # the server refuses it: no such portal
            return None
        found = execution(model, portal)
        if found is None:
            return _Wait()
        judged = found.judgement
        if resume is not None and resume.approved:
            judged = approved(judged)
        if judged.verdict is Verdict.ALLOW:
            before = None
            if self.gate is not None and model.needs_describe(portal):
                # The result guard must know the portal's columns before its rows come.
                model.describe("P", name, own=True)
                before = m.Describe("P", name).encode()
            runs = model.runs(portal.statement)[0]
            model.execute(name, portal, judged.permitted,
                          runs.statement if isinstance(runs, Portal) else runs)
            return before
        if judged.verdict is Verdict.REVIEW and self.gate is not None and self.gate.holds:
            return _Wait(hold=(found.sql, shown_parameters(found.parameters), judged), approve=found.approve)
        return self._refusal(m.EXECUTE, judged)

    def _on_query(self, type_byte: int, body: bytes, resume: _Resume | None) -> _Refuse | _Wait | None:
        model = self.model
        if self.gate is None:
            (model.query(None) if type_byte == m.QUERY else model.function_call())
            return None
        sql = m.decode_query_text(body) if type_byte == m.QUERY else FUNCTION_CALL
        if resume is not None and resume.judgement is not None:
            judged = resume.judgement
        else:
            decided = self._judge(Statement("simple" if type_byte == m.QUERY else "function", sql))
            if not isinstance(decided, Judgement):
                return _Wait(decide=decided)
            judged = decided
        is_approved = resume is not None and resume.approved
        if type_byte == m.FUNCTION_CALL:
            if judged.verdict is Verdict.ALLOW or is_approved:
                model.function_call()
                return None
            if judged.verdict is Verdict.REVIEW and self.gate.holds:
                return _Wait(hold=(FUNCTION_CALL, (), judged), judged=judged)
            return self._refusal(type_byte, judged)
        resolved = self._resolve_query(judged, is_approved, sql)
        if resolved is None:
            return _Wait()
        parts, combined, shown, bind, covered = resolved
        if combined.verdict is Verdict.ALLOW or is_approved:
            model.query(parts)
            return None
        if combined.verdict is Verdict.REVIEW and self.gate.holds:
            return _Wait(hold=(shown, shown_parameters(bind), combined), judged=judged, approve=covered)
        return self._refusal(type_byte, combined)

    def _resolve_query(self, judged: Judgement, is_approved: bool, sql: str) -> tuple[
            list[QueryPart] | None, Judgement, str, bytes | None, list[Portal]] | None:
        """A simple Query's statements as the model records them, with what each EXECUTE or
        FETCH in it runs (objects its earlier statements create count), and the judgement of
        the whole; None when a name it runs is not yet certain."""
        if judged.parts is None:
            return None, judged, sql, None, []
        model = self.model
        objects = model.predicted.copy()
        segment = model.segment + 1
        combined = judged
        notes: list[str] = []
        bind: bytes | None = None
        covered: list[Portal] = []
        parts: list[QueryPart] = []
        for part in judged.parts:
            op = part.op
            runs: PreparedStatement | None = None
            permitted = part.permitted
            if op is not None and op.kind in REFERENCES:
                table = objects.statements if op.kind is OpKind.EXECUTE else objects.portals
                touched = (objects.statement_touched if op.kind is OpKind.EXECUTE else objects.portal_touched)
                everything = (objects.statements_touched_all if op.kind is OpKind.EXECUTE
                              else objects.portals_touched_all)
                if not model.certain_at(max(touched.get(op.name, -1), everything)):
                    return None
                target = table.get(op.name)
                if isinstance(target, Portal):
                    referenced = facts(target.statement)
                    if target.approved and referenced.verdict is not Verdict.DENY:
                        referenced = approved(referenced)
                    runs = target.statement
                    bind = target.bind or bind
                    covered.append(target)
                elif isinstance(target, PreparedStatement):
                    referenced = facts(target)
                    runs = target
                else:
                    referenced = ALLOW
                if runs is not None:
                    notes.append(f"-- {op.name} is: {runs.sql}")
                    combined = replace(strictest(combined, referenced), composed=True)
                    permitted = permitted | referenced.permitted
            if op is not None and is_approved and op.kind is OpKind.DECLARE and isinstance(op.facts, Judgement):
                op = replace(op, facts=approved(op.facts))  # the approval covers the cursor it declares
            if op is not None and objects.touches(op):
                objects.apply(op, segment)
            parts.append(QueryPart(op, permitted, runs))
        shown = "\n".join([sql, *notes]) if notes else sql
        return parts, combined, shown, bind, covered

    def _judge(self, statement: Statement) -> Judgement | Awaitable[Judgement]:
        assert self.gate is not None
        self.statements += 1
        return self.gate.judge(self, statement)

    def _refusal(self, type_byte: int, judgement: Judgement) -> _Refuse:
        """The bytes that make the server fail in place of a refused message (see ProtocolModel.refuse)."""
        error = m.ErrorResponse.make("ERROR", judgement.sqlstate, judgement.message, detail=judgement.detail).encode()
        simple = type_byte == m.QUERY or type_byte == m.FUNCTION_CALL
        return _Refuse(self.model.refuse(error, simple=simple))

    def _send_refusal(self, type_byte: int, judgement: Judgement) -> None:
        assert self._upstream is not None
        self._upstream.transport.write(self._refusal(type_byte, judgement).data)

    async def _hold(self, sql: str, parameters: tuple[str | None, ...], judgement: Judgement) -> Judgement:
        """The hold point: wait for a reviewer while the connection stays responsive."""
        assert self.gate is not None
        return await self._await_decision(self.gate.hold(self, sql, parameters, judgement))

    async def _await_decision(self, pending: Awaitable[Judgement]) -> Judgement:
        """Wait for a decision. Meanwhile the client is still read (`_client_data`): a Terminate,
        a disconnect or a CancelRequest withdraws the statement; other messages wait their turn."""
        decision = asyncio.ensure_future(pending)
        self._waiting = decision
        try:
            await asyncio.wait((decision,))
        finally:
            self._waiting = None
            if not decision.done():
                decision.cancel()
        if decision.cancelled():
            return CANCELLED_WHILE_HELD
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
            if model.refusals:
                if out is None:
                    out = []
                out += (buf[pos:start], self._guard_refused(model.refusals.pop()))
                pos = start
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
            "pgproxy refused a result that contains a tagged column the statement was not cleared to read",
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


@dataclass(slots=True)
class _Resume:
    """Continuing at a message that waited: its decision (`judgement`), and whether a reviewer
    approved running it."""

    judgement: Judgement | None = None
    approved: bool = False


@dataclass(slots=True)
class _Refuse:
    data: bytes  # what the server is sent instead of the refused message


_TERMINATE = object()
_DESCRIBE_UNNAMED_PORTAL = m.Describe("P", "").encode()
_EXECUTE_ALL_SYNC = m.Execute("", 0).encode() + m.Sync().encode()


@dataclass(slots=True)
class _Wait:
    """Where forwarding stopped: message `index` of the batch waits for its decision (`decide`),
    for a reviewer (`hold`: sql, parameters as shown, judgement; `approve`: the portals an
    approval covers), or, with neither, for the server's answers to what came before it."""

    index: int = 0
    decide: Awaitable[Judgement] | None = None
    hold: tuple[str, tuple[str | None, ...], Judgement] | None = None
    judged: Judgement | None = None  # the statement's own judgement (a Query's, kept for after the hold)
    approve: list[Portal] = field(default_factory=list)


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


