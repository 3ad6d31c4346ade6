"""The relay state machine: one Session per client connection.

Theory of operation
-------------------
A session moves through the states of the protocol chapter's message flow:
STARTUP (SSL/GSSENC negotiation, the startup packet), AUTHENTICATING (the
agent proves who it is: SCRAM for static agents, a JWT sent as the password
otherwise), CONNECTING (the proxy opens and authenticates the upstream with
its own credentials), then the query cycle: READY, SIMPLE_QUERY,
EXTENDED_QUERY, COPY_IN / COPY_OUT, HELD (a statement waits for a decision)
and FAILED_UNTIL_SYNC (the proxy refused an extended-protocol message and,
as the server would, ignores the rest of that pipeline until Sync).

Once the session is ready, each socket is read by a callback. `_client_data`
splits the client's bytes into messages; each statement (Query, Parse,
FunctionCall) passes the decision point `_judge`; everything allowed is
forwarded as the client's original bytes, a run of messages at a time, in the
callback itself. `_upstream_data` forwards the server's bytes a read at a
time and watches only the message types that move the state (ReadyForQuery,
CopyIn/CopyOutResponse, CopyDone, ErrorResponse). Reads of whole messages of
the most common kinds, while nothing is queued, partly read or refused, go
through shortcuts (`_quick_query`, `_quick_bind`, `_quick_answer`) that do the
same in fewer steps and leave anything else to the general path.

Refusing a statement must leave the upstream exactly where PostgreSQL would
be after an error: the transaction block aborted, and in the extended
protocol the rest of the pipeline skipped until Sync. Rather than imitate
that, the proxy lets the server do it: in place of the refused message it
sends ``Describe`` of a statement name that cannot exist (unique to this
session), so the server raises its own error at exactly that point in the
stream. When that error comes back, `_upstream_data` replaces it with the
proxy's ErrorResponse. Earlier results therefore arrive first, in order, and
the ReadyForQuery that follows carries the server's true transaction status.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import hmac
import ipaddress
import itertools
import logging
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from pgproxy.audit import members
from pgproxy.errors import AuthFailed, ClientProtocolError, ProxyError, SqlState, UpstreamProtocolError
from pgproxy.identity import Authenticator, Identity
from pgproxy.logs import SessionLog
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
    STARTUP = "startup"
    AUTHENTICATING = "authenticating"
    CONNECTING = "connecting"
    READY = "ready"
    SIMPLE_QUERY = "simple query"
    EXTENDED_QUERY = "extended query"
    COPY_IN = "copy in"
    COPY_OUT = "copy out"
    HELD = "held"
    FAILED_UNTIL_SYNC = "failed until sync"
    CLOSED = "closed"

    # Members are singletons: hashing by identity (in C) beats Enum's hash of the name, and
    # every message that moves the state looks its transition up.
    __hash__ = object.__hash__


_QUERY_STATES = frozenset({State.SIMPLE_QUERY, State.EXTENDED_QUERY})
_CYCLE = frozenset({State.READY, State.SIMPLE_QUERY, State.EXTENDED_QUERY, State.COPY_IN,
                    State.COPY_OUT, State.HELD, State.FAILED_UNTIL_SYNC})

# Legal transitions. Pipelining means a client may send the next statement before the
# previous one's results arrive, so every state of the query cycle can follow another,
# except that COPY states are entered only from a query state and left only to one.
_TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTUP: frozenset({State.AUTHENTICATING, State.CLOSED}),
    State.AUTHENTICATING: frozenset({State.CONNECTING, State.CLOSED}),
    State.CONNECTING: frozenset({State.READY, State.CLOSED}),
    State.READY: (_CYCLE - {State.COPY_IN, State.COPY_OUT}) | {State.CLOSED},
    State.SIMPLE_QUERY: _CYCLE | {State.CLOSED},
    State.EXTENDED_QUERY: _CYCLE | {State.CLOSED},
    State.COPY_IN: _QUERY_STATES | {State.READY, State.CLOSED},
    State.COPY_OUT: _QUERY_STATES | {State.READY, State.CLOSED},
    State.HELD: _QUERY_STATES | {State.READY, State.FAILED_UNTIL_SYNC, State.CLOSED},
    State.FAILED_UNTIL_SYNC: _QUERY_STATES | {State.READY, State.CLOSED},
    State.CLOSED: frozenset({State.CLOSED}),
}


class InvalidTransition(RuntimeError):
    """A bug in the proxy: the session tried a transition the protocol does not have."""


# --- The decision point ---------------------------------------------------------------


class Verdict(enum.Enum):
    ALLOW = "allow"
    REVIEW = "review"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    sqlstate: str = SqlState.INSUFFICIENT_PRIVILEGE
    message: str = ""
    detail: str | None = None
    context: Any = None  # what the gate needs to hold it (its analysis)
    protocol: str = "simple"  # of the statement judged: "simple", "extended" or "function"


ALLOW = Judgement(Verdict.ALLOW)
CANCELLED_WHILE_HELD = Judgement(Verdict.DENY, SqlState.QUERY_CANCELED,
                                 "canceling statement due to user request",
                                 detail="The statement was waiting for approval; the request was withdrawn.")


def _shown_parameters(bind: m.Bind) -> tuple[str | None, ...]:
    """Bind parameters as a reviewer sees them: text as text, binary values as hex."""
    formats = bind.param_formats
    shown: list[str | None] = []
    for index, value in enumerate(bind.params):
        binary = (formats[0] if len(formats) == 1 else formats[index] if formats else 0) == 1
        if value is None:
            shown.append(None)
        elif binary:
            shown.append("\\x" + value.hex())
        else:
            shown.append(value.decode("utf-8", "replace"))
    return tuple(shown)


FUNCTION_CALL = "<function call>"  # a FunctionCall's statement text: it carries no SQL


@dataclass(slots=True)
class Statement:
    """What reaches the decision point: one message that can run SQL."""

    protocol: str  # "simple" (Query), "extended" (Parse) or "function" (FunctionCall)
    sql: str  # for FunctionCall: FUNCTION_CALL
    statement_name: str = ""  # Parse's prepared-statement name


class StatementGate:
    """Decides each statement (the analysis and policy plug in here) and guards results."""

    holds = False  # whether REVIEW statements are held for a reviewer (else refused)

    async def hold(self, session: Session, sql: str, parameters: tuple[str | None, ...],
                   judgement: Judgement) -> Judgement:
        """Wait for a reviewer's decision on a statement judged REVIEW."""
        return judgement

    def judge(self, session: Session, statement: Statement) -> Judgement | Awaitable[Judgement]:
        """The decision, or an awaitable of it when deciding takes time (the session waits)."""
        return ALLOW

    def settled(self, session: Session, sql: str) -> bool:
        """Whether a simple-protocol `sql` is allowed by a decision the session already holds,
        with nothing to remember or record: then the relay forwards it without judge(). False
        whenever in doubt (judge() decides)."""
        return False

    def cycle_done(self, session: Session) -> None:
        """Called at each ReadyForQuery."""

    def forbidden_columns(self, session: Session, columns: list[tuple[int, int]]) -> list[str]:
        """Of a result's (table oid, attnum) columns, those the session may not see (their names)."""
        return []

    def tags_version(self, session: Session) -> str:
        """Changes whenever the tagged columns of the session's database may have changed. Until
        it does, a result with no forbidden column keeps having none: a session's permitted
        columns only grow."""
        return ""

    async def close(self) -> None:
        """Stop background work (the server is shutting down)."""


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
        self._outstanding = 0  # Query/Sync/FunctionCall forwarded, not yet answered by ReadyForQuery
        self._copy_return = State.SIMPLE_QUERY
        self._refusal_prefix = f"pgproxy.refused.{secrets.token_hex(8)}."
        self._refusal_seq = itertools.count(1)
        # Refusals in flight: (marker name, cycle number it belongs to, error to send instead).
        self._refusals: deque[tuple[str, int, bytes]] = deque()
        self._cycles_sent = 0
        self._cycles_done = 0
        self._closing = False
        self.gate_state: Any = None  # the gate's per-session state
        self._waiting: asyncio.Future[Judgement] | None = None  # a decision being waited for
        self._deferred: deque[tuple[bytes, list[tuple[int, int, int]]]] = deque()  # read while held
        self._deferred_bytes = 0
        # The relay (see `_relay`): its end, its two sockets, why the client is not being read,
        # and the task finishing a statement whose decision takes time.
        self._ended: asyncio.Future[None] | None = None
        self._client: _Side | None = None
        self._upstream: _Side | None = None
        # Only the server messages the relay looks at are listed (not DataRows, for one).
        self._upstream_frames = FrameReader(max_message_bytes=self.limits.max_message_bytes,
                                            allowed_types=m.BACKEND_TYPES,
                                            listed_types=_WATCHED if gate is None else _GUARDED)
        self._passed = _PASSED | {m.ROW_DESCRIPTION} if gate is None else _PASSED  # see _quick_answer
        self._client_pauses: set[str] = set()
        self._slow: asyncio.Task[None] | None = None
        # Extended protocol: statements that need review (name -> sql, judgement) and portals
        # bound to them (name -> sql, parameters as shown, judgement): held at Execute.
        self._review_statements: dict[str, tuple[str, Judgement]] = {}
        self._review_portals: dict[str, tuple[str, tuple[str | None, ...], Judgement]] = {}
        self._guarding = False  # a result was refused: drop the server's output until ReadyForQuery
        self._clean_results: set[bytes] = set()  # see _refused
        self._clean_version = ""
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
        if self.state is State.READY and self._slow is None and not self._frames.pending_bytes:
            try:
                if (data[0] == m.QUERY and self._quick_query(data)) or (data[0] == m.BIND and self._quick_bind(data)):
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
    # only forward and count, taken while the session is idle with nothing queued or partly
    # read. Each does the same for them in fewer steps, and returns False (nothing done) for
    # anything else, which then takes the general path.

    def _quick_query(self, data: bytes) -> bool:
        """A read that is one whole Query, which the gate (if any) has `settled`."""
        size = len(data)
        if (size < 6 or size > self._frames.max_message_bytes + 5 or data[-1] != 0
                or unpack_length(data, 1)[0] != size - 1):
            return False
        if self.gate is not None:
            if not self.gate.settled(self, m.decode_str(data[5:-1])):
                return False
            self.statements += 1
        assert self._upstream is not None
        self._cycles_sent += 1
        self._outstanding += 1
        self._to(State.SIMPLE_QUERY)
        self._upstream.transport.write(data)
        return True

    def _quick_bind(self, data: bytes) -> bool:
        """A read of whole Bind, Describe, Execute, Close, Flush and Sync messages (a prepared
        statement run again) in a session with no statement under review: the statements
        they run were judged at their Parse, so there is nothing to judge or track."""
        if self._review_statements or self._review_portals:
            return False
        size = len(data)
        longest = self._frames.max_message_bytes + 4
        syncs = 0
        pos = 0
        while pos < size:
            if size - pos < 5:
                return False  # a header split across reads
            type_byte = data[pos]
            if type_byte == m.SYNC:
                syncs += 1
            elif type_byte not in _EXTENDED:
                return False
            (length,) = unpack_length(data, pos + 1)
            if not 4 <= length <= longest:
                return False
            pos += 1 + length
        if pos != size:
            return False  # the last message is not all there
        assert self._upstream is not None
        self._cycles_sent += syncs
        self._outstanding += syncs
        self._to(State.EXTENDED_QUERY)
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
        """Finish the statement `wait` stopped at, then the rest of its batch and what was deferred."""
        while True:
            type_byte, start, end = batch[wait.index]
            hold = wait.hold
            judgement: Judgement | None = None
            if wait.decide is not None:
                assert wait.statement is not None
                decided = await self._await_decision(wait.decide)
                judgement = self._after_decision(type_byte, wait.statement, decided)
                if judgement is None:
                    hold = (wait.statement.sql, (), decided)
            if hold is not None:
                judgement = await self._hold(*hold)
            assert judgement is not None
            run_start = start
            if judgement.verdict is not Verdict.ALLOW:
                run_start = end
                self._refuse(wait.refuse_as, judgement)
            outcome = self._forward_client(buf, batch, wait.index + 1, run_start)
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

    def _forward_client(self, buf: bytes, batch: list[tuple[int, int, int]], first: int = 0,
                        run_start: int | None = None) -> bool | _Wait:
        """Forward messages `first`… of one read. True when the client terminated; a `_Wait` when a
        statement's decision must be awaited (what came before it is forwarded)."""
        assert self._upstream is not None
        upstream = self._upstream.transport
        if first >= len(batch):
            if run_start is not None and run_start < batch[-1][2]:
                upstream.write(buf[run_start:batch[-1][2]])
            return False
        if run_start is None:
            run_start = batch[first][1]
        for index in range(first, len(batch)):
            type_byte, start, end = batch[index]
            if self.state is State.FAILED_UNTIL_SYNC and type_byte != m.SYNC and type_byte != m.TERMINATE:
                continue  # the server discards it unseen (it is failing until Sync); forwarded as is
            if type_byte == m.QUERY or type_byte == m.PARSE or type_byte == m.FUNCTION_CALL:
                self._enter_statement(type_byte)
                if self.gate is not None:
                    statement, decided = self._judge(type_byte, buf[start + 5:end])
                    if not isinstance(decided, Judgement):
                        # Deciding takes a while: let what came before go ahead, then wait.
                        upstream.write(buf[run_start:start])
                        return _Wait(index, type_byte, decide=decided, statement=statement)
                    after = self._after_decision(type_byte, statement, decided)
                    if after is None:
                        upstream.write(buf[run_start:start])
                        return _Wait(index, type_byte, hold=(statement.sql, (), decided))
                    if after.verdict is not Verdict.ALLOW:
                        upstream.write(buf[run_start:start])
                        run_start = end
                        self._refuse(type_byte, after)
            elif type_byte == m.SYNC:
                self._cycles_sent += 1
                self._outstanding += 1
                if self.state is State.FAILED_UNTIL_SYNC or self.state is State.READY:
                    self._to(State.EXTENDED_QUERY)  # ReadyForQuery will answer this Sync
            elif type_byte in _EXTENDED:
                if self.state is State.READY:
                    self._to(State.EXTENDED_QUERY)
                if self._review_statements and type_byte != m.FLUSH:
                    held = self._track_review(type_byte, buf[start + 5:end])
                    if held is not None:
                        # Fails, if refused, in place of the Execute.
                        upstream.write(buf[run_start:start])
                        return _Wait(index, m.PARSE, hold=held)
            elif type_byte == m.COPY_DONE or type_byte == m.COPY_FAIL:
                if self.state is State.COPY_IN:
                    self._to(self._copy_return)
            elif type_byte == m.TERMINATE:
                upstream.write(buf[run_start:end])
                self.log.info("client terminated")
                self.ended_by = "client terminated"
                self._terminating = True
                return True
            elif type_byte == m.PASSWORD:
                raise ClientProtocolError("unexpected password message after authentication")
        upstream.write(buf[run_start:batch[-1][2]])
        return False

    def _after_decision(self, type_byte: int, statement: Statement, judgement: Judgement) -> Judgement | None:
        """Bookkeeping once a statement is decided: the judgement to act on now, or None when
        the statement is to be held now."""
        assert self.gate is not None
        if type_byte == m.PARSE:
            self._review_statements.pop(statement.statement_name, None)
        if judgement.verdict is not Verdict.REVIEW or not self.gate.holds:
            return judgement
        if type_byte == m.PARSE:
            # Parsing runs nothing: the hold comes at Execute, with the parameters.
            self._review_statements[statement.statement_name] = (statement.sql, judgement)
            return ALLOW
        return None

    def _track_review(self, type_byte: int, body: bytes) -> tuple[str, tuple[str | None, ...], Judgement] | None:
        """Follow statements that need review through Bind and Close; at their Execute, say what to hold."""
        try:
            if type_byte == m.BIND:
                bind = m.decode_bind(body)
                reviewed = self._review_statements.get(bind.statement)
                if reviewed is None:
                    self._review_portals.pop(bind.portal, None)
                else:
                    self._review_portals[bind.portal] = (reviewed[0], _shown_parameters(bind), reviewed[1])
            elif type_byte == m.EXECUTE:
                portal = m.decode_execute(body).portal
                return self._review_portals.get(portal)
            elif type_byte == m.CLOSE:
                kind, name = body[:1], m.decode_str(body[1:-1])
                (self._review_statements if kind == b"S" else self._review_portals).pop(name, None)
        except m.MessageFormatError as exc:
            raise ClientProtocolError(f"invalid {chr(type_byte)!r} message: {exc}") from None
        return None

    async def _hold(self, sql: str, parameters: tuple[str | None, ...], judgement: Judgement) -> Judgement:
        """The hold point: wait for a reviewer while the connection stays responsive."""
        assert self.gate is not None
        previous = self.state
        self._to(State.HELD)
        try:
            return await self._await_decision(self.gate.hold(self, sql, parameters, judgement))
        finally:
            if self.state is State.HELD:
                self._to(previous if previous in _QUERY_STATES else State.EXTENDED_QUERY)

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

    def _enter_statement(self, type_byte: int) -> None:
        if type_byte == m.PARSE:
            self._to(State.EXTENDED_QUERY)
        else:
            # Query and FunctionCall each form one cycle ended by ReadyForQuery.
            self._cycles_sent += 1
            self._outstanding += 1
            self._to(State.SIMPLE_QUERY)

    def _judge(self, type_byte: int, body: bytes) -> tuple[Statement, Judgement | Awaitable[Judgement]]:
        assert self.gate is not None
        self.statements += 1
        try:
            if type_byte == m.QUERY:
                statement = Statement("simple", m.decode_query_text(body))
            elif type_byte == m.PARSE:
                parse = m.decode_parse(body)
                statement = Statement("extended", parse.sql, parse.name)
            else:
                statement = Statement("function", FUNCTION_CALL)
        except m.MessageFormatError as exc:
            raise ClientProtocolError(f"invalid {chr(type_byte)!r} message: {exc}") from None
        return statement, self.gate.judge(self, statement)

    def send_notice(self, message: str, detail: str | None = None) -> None:
        """A NoticeResponse to the client (whole messages only, so it cannot split another)."""
        self.writer.write(m.NoticeResponse.make(message, detail=detail).encode())

    def _refuse(self, type_byte: int, judgement: Judgement) -> None:
        """Send the server a message that fails where the refused one stood (see the module doc)."""
        assert self.upstream is not None
        if judgement.verdict is Verdict.REVIEW:
            # The hold point: the approvals issue waits here for a reviewer. Until then a
            # statement that needs review is refused with a message saying so.
            self._to(State.HELD)
        marker = f"{self._refusal_prefix}{next(self._refusal_seq)}"
        error = m.ErrorResponse.make("ERROR", judgement.sqlstate, judgement.message,
                                     detail=judgement.detail).encode()
        probe = m.Describe("S", marker).encode()
        if type_byte == m.PARSE:
            # The cycle this belongs to ends at the client's own Sync.
            self._refusals.append((marker, self._cycles_sent + 1, error))
            self.upstream.writer.write(probe)
            self._to(State.FAILED_UNTIL_SYNC)
        else:
            self._refusals.append((marker, self._cycles_sent, error))
            self.upstream.writer.write(probe + m.Sync().encode())
            self._to(State.SIMPLE_QUERY)

    def _upstream_data(self, data: bytes) -> None:
        """A read from the server: watch it (and guard results), then pass it on."""
        if self._ended is None or self._ended.done():
            return
        frames = self._upstream_frames
        if not frames.pending_bytes and not self._refusals and not self._guarding:
            try:
                if self._quick_answer(data):
                    return
            except Exception as exc:  # it ends this session only (see _relay)
                self._end(exc)
                return
        try:
            batch = frames.feed(data)
            if not frames.end:
                return
            buf = frames.buffer
            if self.gate is None:
                out = self._watch_upstream(buf, batch, 0, frames.end)
            else:
                out = self._guard_upstream(buf, batch, frames.end)
        except FrameError as exc:
            self._end(UpstreamProtocolError(f"upstream sent an invalid message: {exc}"))
            return
        except Exception as exc:  # it ends this session only (see _relay)
            self._end(exc)
            return
        assert self._client is not None
        self._client.transport.write(out)

    def _quick_answer(self, data: bytes) -> bool:
        """The server's hot path, like the client's (see `_quick_query`): a read of whole
        messages that only complete results (rows, completions, ReadyForQuery, and
        RowDescriptions the result guard lets through), with no refusal in flight and no
        result being dropped. ReadyForQuery moves the state as in `_watch_upstream`; any
        other message it looks at, or a bad length, takes the general path."""
        size = len(data)
        longest = self._upstream_frames.max_message_bytes + 4
        passed = self._passed
        gate = self.gate
        ready = 0
        last = 0
        pos = 0
        while pos < size:
            if size - pos < 5:
                return False  # a header split across reads
            type_byte = data[pos]
            (length,) = unpack_length(data, pos + 1)
            end = pos + 1 + length
            if not 4 <= length <= longest or end > size:
                return False  # a bad length, or the last message is not all there
            if type_byte in passed:
                pass
            elif type_byte == m.READY_FOR_QUERY and length == 5:
                ready += 1
                last = pos
            elif type_byte == m.ROW_DESCRIPTION and gate is not None:
                if self._refused(data[pos + 5:end]):
                    return False
            else:
                return False
            pos = end
        if ready:
            self._cycles_ended(ready, data[last + 5])
            if gate is not None:
                gate.cycle_done(self)
        assert self._client is not None
        self._client.transport.write(data)
        return True

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

    def _watch_upstream(self, buf: bytes, batch: list[tuple[int, int, int]], first: int, last: int) -> bytes:
        """Track the state from the server's messages (`batch`: the watched ones among
        buf[first:last]); return the bytes for the client."""
        replaced: list[tuple[int, int, bytes]] = []
        for type_byte, start, end in batch:
            if type_byte == m.READY_FOR_QUERY:
                self._cycles_ended(1, buf[start + 5])
            elif type_byte == m.ERROR_RESPONSE:
                if self.state is State.COPY_IN or self.state is State.COPY_OUT:
                    self._to(self._copy_return)
                try:
                    error = m.decode_error_response(buf[start + 5:end])
                except m.MessageFormatError as exc:
                    raise UpstreamProtocolError(f"upstream sent an invalid ErrorResponse: {exc}") from None
                if error.severity in ("FATAL", "PANIC"):
                    self._upstream_said_fatal = True
                if self._refusals:
                    marker, _, ours = self._refusals[0]
                    if error.code == "26000" and f'"{marker}"' in error.message:
                        self._refusals.popleft()
                        replaced.append((start, end, ours))
            elif type_byte == m.COPY_IN_RESPONSE or type_byte == m.COPY_OUT_RESPONSE:
                if self.state in _QUERY_STATES:
                    self._copy_return = self.state
                self._to(State.COPY_IN if type_byte == m.COPY_IN_RESPONSE else State.COPY_OUT)
            elif type_byte == m.COPY_DONE:
                if self.state is State.COPY_OUT:
                    self._to(self._copy_return)
            elif type_byte == m.COPY_BOTH_RESPONSE:
                raise UpstreamProtocolError("upstream started COPY BOTH, which pgproxy does not relay")
            elif type_byte == m.AUTHENTICATION or type_byte == m.BACKEND_KEY_DATA:
                raise UpstreamProtocolError(f"upstream sent {chr(type_byte)!r} after startup")
        if not replaced:
            return buf if first == 0 and last == len(buf) else buf[first:last]
        parts: list[bytes] = []
        pos = first
        for start, end, ours in replaced:
            parts += (buf[pos:start], ours)
            pos = end
        parts.append(buf[pos:last])
        return b"".join(parts)

    def _cycles_ended(self, count: int, status: int) -> None:
        """`count` ReadyForQuery messages arrived, the last with transaction `status`."""
        self._cycles_done += count
        self._outstanding -= count
        self.transaction_status = chr(status)
        while self._refusals and self._refusals[0][1] <= self._cycles_done:
            self._refusals.popleft()  # its pipeline failed earlier; the server skipped it
        if self._outstanding <= 0:
            self._outstanding = 0
            self._to(State.READY)

    def _guard_upstream(self, buf: bytes, batch: list[tuple[int, int, int]], last: int) -> bytes:
        """The result guard (DESIGN.md, decision 5), then the usual state tracking.

        A RowDescription naming a tagged column that no allowed statement of this session
        declared it reads is an analysis bug caught in time: the result is replaced by an
        ErrorResponse and everything the server sends up to ReadyForQuery is dropped, so
        not one of its rows reaches the client.
        """
        gate = self.gate
        assert gate is not None
        if not self._guarding:
            for type_byte, start, end in batch:
                if type_byte == m.ROW_DESCRIPTION and self._refused(buf[start + 5:end]):
                    break
            else:
                # Nothing to refuse (most reads: results cleared, DataRows, completions).
                cycles = self._cycles_done
                forwarded = self._watch_upstream(buf, batch, 0, last)
                if self._cycles_done != cycles:
                    gate.cycle_done(self)
                return forwarded
        out: list[bytes] = []
        kept: list[tuple[int, int, int]] = []  # watched messages in buf[pos:]
        pos = 0  # what comes before is forwarded or dropped
        for frame in batch:
            type_byte, start, end = frame
            if self._guarding:
                if type_byte != m.READY_FOR_QUERY:
                    continue
                self._guarding = False
                pos = start  # the refused result's cycle is over: what it sent before is dropped
            elif type_byte == m.ROW_DESCRIPTION:
                refused = self._refused(buf[start + 5:end])
                if refused:
                    self.log.error("result guard refused a result", extra={"columns": refused})
                    if self.audit is not None:
                        self._audit_session_event("result.refused", columns=refused)
                    out.append(self._watch_upstream(buf, kept, pos, start))
                    kept = []
                    out.append(m.ErrorResponse.make(
                        "ERROR", SqlState.INSUFFICIENT_PRIVILEGE,
                        "pgproxy refused a result that contains a tagged column the statement was "
                        "not cleared to read", detail=f"columns: {', '.join(refused)}").encode())
                    self._guarding = True
                    continue
            kept.append(frame)
            if type_byte == m.READY_FOR_QUERY:
                out.append(self._watch_upstream(buf, kept, pos, end))
                kept = []
                pos = end
                gate.cycle_done(self)
        if not self._guarding:
            out.append(self._watch_upstream(buf, kept, pos, last))
        return b"".join(out)

    def _refused(self, description: bytes) -> list[str]:
        """The result guard's verdict on a RowDescription's body: the tagged columns in it that
        this session may not read. A session's permitted columns only grow, so a description
        found clean stays clean while the tagged columns stay the same (`tags_version`): it
        is not decoded or checked again."""
        gate = self.gate
        assert gate is not None
        clean = self._clean_results
        version = gate.tags_version(self)
        if version != self._clean_version:
            clean.clear()
            self._clean_version = version
        elif description in clean:
            return []
        columns = _table_columns(description)
        refused = gate.forbidden_columns(self, columns) if columns else []
        if not refused and len(description) <= _CLEAN_RESULT_BYTES:
            if len(clean) >= _CLEAN_RESULTS:
                clean.clear()
            clean.add(description)
        return refused

    async def _idle_watch(self) -> None:
        timeout = self.limits.idle_timeout_seconds
        while True:
            await asyncio.sleep(min(timeout / 4, 5.0))
            idle = time.monotonic() - self.last_client_activity
            if self.state is State.READY and self.transaction_status == "I" and idle >= timeout:
                self.log.info("idle session timeout")
                raise ProxyError(SqlState.IDLE_SESSION_TIMEOUT,
                                 "terminating connection due to idle-session timeout")


_CLEAN_RESULTS = 32  # RowDescriptions a session remembers as clean (see Session._refused)
_CLEAN_RESULT_BYTES = 512  # larger ones are checked each time
_TABLE_COLUMNS_MEMO = 4096  # entries
_TABLE_COLUMNS_MEMO_BODY = 2048  # bytes: larger RowDescriptions are decoded each time
_table_columns_memo: dict[bytes, list[tuple[int, int]]] = {}


def _table_columns(body: bytes) -> list[tuple[int, int]]:
    """A RowDescription's fields that are columns of a table, as (table oid, attnum).

    A statement's results repeat the same RowDescription, so it is decoded once."""
    found = _table_columns_memo.get(body)
    if found is None:
        try:
            found = [c for c in m.row_description_sources(body) if c[0] != 0]
        except m.MessageFormatError as exc:
            raise UpstreamProtocolError(f"upstream sent an invalid RowDescription: {exc}") from None
        if len(body) <= _TABLE_COLUMNS_MEMO_BODY:
            if len(_table_columns_memo) >= _TABLE_COLUMNS_MEMO:
                _table_columns_memo.clear()
            _table_columns_memo[body] = found
    return found


@dataclass(slots=True)
class _Wait:
    """Where forwarding stopped: message `index` of the batch waits for its decision (`decide`)
    or for a reviewer (`hold`: sql, parameters as shown, judgement). If it is refused, the
    server is made to fail in place of a message of type `refuse_as`."""

    index: int
    refuse_as: int
    decide: Awaitable[Judgement] | None = None
    statement: Statement | None = None
    hold: tuple[str, tuple[str | None, ...], Judgement] | None = None


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


_EXTENDED = frozenset({m.BIND, m.DESCRIBE, m.EXECUTE, m.CLOSE, m.FLUSH})
# The server messages the relay looks at: state tracking, then the result guard's too.
_WATCHED = frozenset({m.READY_FOR_QUERY, m.ERROR_RESPONSE, m.COPY_IN_RESPONSE, m.COPY_OUT_RESPONSE,
                      m.COPY_DONE, m.COPY_BOTH_RESPONSE, m.AUTHENTICATION, m.BACKEND_KEY_DATA})
_GUARDED = _WATCHED | {m.ROW_DESCRIPTION}
_PASSED = m.BACKEND_TYPES - _GUARDED  # server messages that move nothing
