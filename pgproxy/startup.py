"""Startup and authentication: from a new connection to a session ready to relay.

Encryption is negotiated (SSLRequest / GSSENCRequest), the StartupMessage read, the agent
authenticated (SCRAM for static agents, a JWT sent as the password otherwise), and the
upstream connection opened with the proxy's own credentials. Messages the client pipelines
behind its last authentication message are kept for the relay (`Session._pending_client`).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from typing import TYPE_CHECKING

from pgproxy.audit import members
from pgproxy.decision import Judgement, Statement, Verdict
from pgproxy.errors import AuthFailed, ClientProtocolError, ProxyError, SqlState
from pgproxy.identity import shown_name
from pgproxy.parameters import as_statement, startup_settings
from pgproxy.protocol import Desync
from pgproxy.upstream import connect_upstream
from pgproxy.wire import messages as m
from pgproxy.wire.codec import FrameError, StartupReader
from pgproxy.wire.scram import ScramError

if TYPE_CHECKING:
    from pgproxy.session import Session

READ_CHUNK = 256 * 1024

# Why a CancelRequest did nothing (SessionRegistry.cancel); as in PostgreSQL, its sender is told nothing.
NO_SUCH_SESSION = "no session has this process id"
WRONG_SECRET_KEY = "wrong secret key"


class State(enum.Enum):
    """Where the session is in its life. Once relaying, where it is in the query cycle (idle,
    waiting for answers, in COPY, held) is the protocol model's to say (`Session.model`)."""

    STARTUP = "startup"
    AUTHENTICATING = "authenticating"
    CONNECTING = "connecting"
    READY = "ready"  # relaying
    CLOSED = "closed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTUP: frozenset({State.AUTHENTICATING, State.CLOSED}),
    State.AUTHENTICATING: frozenset({State.CONNECTING, State.CLOSED}),
    State.CONNECTING: frozenset({State.READY, State.CLOSED}),
    State.READY: frozenset({State.CLOSED}),
    State.CLOSED: frozenset({State.CLOSED}),
}


class InvalidTransition(RuntimeError):
    """A bug in the proxy: the session tried a transition the protocol does not have."""


async def _read_packet(session: Session) -> tuple[bytes, bytes]:
    reader = StartupReader(max_packet_bytes=session.limits.max_startup_packet_bytes)
    while True:
        data = await session.reader.read(READ_CHUNK)
        if not data:
            raise ConnectionResetError("client closed the connection during startup")
        try:
            packet = reader.feed(data)
        except FrameError as exc:
            raise ClientProtocolError(str(exc)) from None
        if packet is not None:
            return packet

async def startup(session: Session) -> bool:
    """Negotiate encryption and read the StartupMessage; False when there is no session.

    PostgreSQL's rules (ProcessStartupPacket): each of SSLRequest and GSSENCRequest may come
    once, in either order; a refused one ('N') leaves the client free to try the other (libpq's
    ``gssencmode=prefer`` falls back to SSL on the same connection), an accepted one does not.
    pgproxy never accepts GSSAPI encryption."""
    ssl_done = gss_done = False
    while True:
        body, rest = await _read_packet(session)
        try:
            packet = m.decode_startup_packet(body)
        except m.UnsupportedProtocolVersion as exc:
            raise ClientProtocolError(str(exc), sqlstate=SqlState.FEATURE_NOT_SUPPORTED) from None
        except m.MessageFormatError as exc:
            raise ClientProtocolError(f"invalid startup packet: {exc}") from None
        if isinstance(packet, m.CancelRequest):
            await _cancel(session, packet)
            return False
        if isinstance(packet, m.StartupMessage):
            break
        is_ssl = isinstance(packet, m.SSLRequest)
        # A client must wait for the answer before sending more; bytes sent ahead of an
        # encryption handshake could be injected by a man in the middle.
        if rest:
            raise ClientProtocolError("received unencrypted data after "
                                      + ("SSL request" if is_ssl else "GSSAPI encryption request"))
        if ssl_done if is_ssl else gss_done:
            raise ClientProtocolError("encryption was already negotiated on this connection")
        if is_ssl and session.tls_context is not None:
            session.writer.write(b"S")
            await session.writer.drain()
            await session.writer.start_tls(session.tls_context)
            session.client_tls = True
            ssl_done = gss_done = True  # encrypted: no further negotiation
            continue
        session.writer.write(b"N")
        await session.writer.drain()
        if is_ssl:
            ssl_done = True
        else:
            gss_done = True
    session.parameters = packet.parameters
    feed_client(session, rest)
    user = session.parameters.get("user", "")
    session.database = session.parameters.get("database") or user
    session.log.bind(agent=shown_name(user), database=session.database)
    if not user:
        raise ProxyError(SqlState.INVALID_AUTHORIZATION, "no PostgreSQL user name specified in startup packet")
    if session.parameters.get("replication", "false").lower() not in ("false", "off", "no", "0"):
        raise ProxyError(SqlState.FEATURE_NOT_SUPPORTED, "pgproxy does not support replication connections")
    unsupported = tuple(k for k in session.parameters if k.startswith("_pq_."))
    if (packet.protocol & 0xFFFF) > 0 or unsupported:
        session.writer.write(m.NegotiateProtocolVersion(0, unsupported).encode())
    session._to(State.AUTHENTICATING)
    return True

async def _cancel(session: Session, request: m.CancelRequest) -> None:
    """A CancelRequest, on a connection of its own (plaintext, or TLS when the client negotiated
    it first, as libpq 17's PQcancelConn and asyncpg do for a TLS session). Like PostgreSQL,
    pgproxy answers nothing and closes the connection, whether the key matched or not. One that
    matched no session does nothing; it is logged (a wrong secret key for a live process id as a
    warning: someone may be guessing keys) and audited (bounded like refused logins)."""
    refused = await session.registry.cancel(request, tls=session.client_tls)
    if refused is None:
        return
    session.log.log(logging.WARNING if refused == WRONG_SECRET_KEY else logging.INFO, "cancel request ignored",
                    extra={"reason": refused, "client": session.client_address, "tls": session.client_tls})
    if session.audit is not None:
        session.audit.record_unauthenticated(
            "cancel.refused", {"client_address": session.client_address, "tls": session.client_tls,
                               "process_id": request.process_id, "reason": refused},
            {"client_address": session.client_address, "reason": refused})


def _settings_in_force(session: Session, frames: list[bytes]) -> None:
    """The upstream's settings as it reported them at login: a database or role default (or
    the startup parameters) may leave it reading text in a way pgproxy cannot follow."""
    model = session.model
    model.lexing.pending = True  # the first report sets the state
    try:
        for frame in frames:
            if frame[0] == m.PARAMETER_STATUS:
                model.parameter_status(frame[5:])
    except Desync as exc:
        assert session.upstream is not None
        session.upstream.close()
        raise ProxyError(SqlState.INSUFFICIENT_PRIVILEGE, f"pgproxy refuses this connection: {exc}",
                         hint="A database or role default (ALTER DATABASE/ROLE ... SET) sets it; "
                              "pgproxy can only serve sessions whose statements it reads as the server does.") from None
    model.lexing.settle("I")


def feed_client(session: Session, data: bytes) -> None:
    try:
        for type_byte, start, end in session._frames.feed(data):
            session._pending_client.append((type_byte, session._frames.buffer[start:end]))
    except FrameError as exc:
        raise ClientProtocolError(str(exc)) from None

async def _next_auth_message(session: Session) -> bytes:
    """The body of the client's next message during authentication (a 'p' message)."""
    while not session._pending_client:
        data = await session.reader.read(READ_CHUNK)
        if not data:
            raise ConnectionResetError("client closed the connection during authentication")
        feed_client(session, data)
    type_byte, raw = session._pending_client.popleft()
    if type_byte == m.TERMINATE:
        raise ConnectionResetError("client terminated during authentication")
    if type_byte != m.PASSWORD:
        raise ClientProtocolError(
            f"expected a password message during authentication, got {chr(type_byte)!r}"
        )
    return raw[5:]


async def authenticate(session: Session) -> None:
    user = session.parameters["user"]
    method = session.authenticator.method_for(user)
    if method == "scram":
        await _authenticate_scram(session, user)
        session.identity = session.authenticator.static_identity(user)
    else:
        if not _cleartext_allowed(session):
            raise AuthFailed(
                "pgproxy does not accept a token over an unencrypted connection; "
                "connect with sslmode=require",
                sqlstate=SqlState.INVALID_AUTHORIZATION,
            )
        session.writer.write(m.Authentication(m.AUTH_CLEARTEXT_PASSWORD).encode())
        await session.writer.drain()
        try:
            token = m.decode_password(await _next_auth_message(session)).password
        except m.MessageFormatError as exc:
            raise ClientProtocolError(f"invalid password message: {exc}") from None
        session.identity = await session.authenticator.verify_jwt(token, user)
    session.log.bind(agent=session.identity.agent_id)
    session.log.info("authenticated", extra={"method": session.identity.method,
                                          "client": session.client_address, "tls": session.client_tls})
    if session.audit is not None:
        session.audit_members = members(session._who())
        session._audit_session_event("connection.authenticated", method=session.identity.method, tls=session.client_tls)

def _cleartext_allowed(session: Session) -> bool:
    if session.client_tls:
        return True
    if not session.config.auth.allow_cleartext_on_loopback:
        return False
    try:
        return ipaddress.ip_address(session.client_address).is_loopback
    except ValueError:
        return session.client_address == "local"

async def _authenticate_scram(session: Session, user: str) -> None:
    server = session.authenticator.scram_server(user)
    session.writer.write(m.auth_sasl(["SCRAM-SHA-256"]).encode())
    await session.writer.drain()
    failed = AuthFailed(f'password authentication failed for user "{shown_name(user)}"')
    try:
        initial = m.decode_sasl_initial_response(await _next_auth_message(session))
        if initial.mechanism != "SCRAM-SHA-256" or initial.data is None:
            raise ClientProtocolError("client selected an invalid SASL authentication mechanism")
        first = server.server_first(initial.data)
        session.writer.write(m.Authentication(m.AUTH_SASL_CONTINUE, first).encode())
        await session.writer.drain()
        final = server.server_final(await _next_auth_message(session))
    except ScramError:
        raise failed from None
    except m.MessageFormatError as exc:
        raise ClientProtocolError(f"invalid SASL message: {exc}") from None
    session.writer.write(m.Authentication(m.AUTH_SASL_FINAL, final).encode())


async def judge_parameters(session: Session) -> None:
    """Judge the startup packet's settings (see pgproxy.parameters) before any reaches the
    server: refused ones end the session with a message naming them."""
    gate = session.gate
    for setting in startup_settings(session.parameters):
        if gate is None or not setting.judged:
            continue
        decided = gate.judge(session, Statement("simple", as_statement(setting)))
        judged = decided if isinstance(decided, Judgement) else await decided
        if judged.observed and judged.verdict is Verdict.REVIEW:  # recorded, then run (observe mode)
            judged = await gate.hold(session, as_statement(setting), (), judged)
        if judged.verdict is not Verdict.ALLOW:
            raise ProxyError(judged.sqlstate or SqlState.INSUFFICIENT_PRIVILEGE,
                             f"{setting.source} is refused: {judged.message}", detail=judged.detail,
                             hint="A startup cannot wait for a reviewer; connect without it.")


async def connect(session: Session) -> None:
    route = session.config.routes.get(session.database)
    if route is None:
        raise ProxyError(SqlState.INVALID_CATALOG_NAME, f'database "{session.database}" does not exist',
                         hint="pgproxy has no route for this database name.")
    session._to(State.CONNECTING)
    session.upstream = await connect_upstream(route, session.parameters,
                                           max_message_bytes=session.limits.max_message_bytes)
    _settings_in_force(session, session.upstream.startup_frames)
    session.backend_key = session.registry.register(session)
    session._frames.max_message_bytes = session.limits.max_message_bytes
    greeting = [m.Authentication(m.AUTH_OK).encode(), *session.upstream.startup_frames,
                session.backend_key.encode(), m.ReadyForQuery("I").encode()]
    session.writer.write(b"".join(greeting))
    await session.writer.drain()
    session._to(State.READY)
    session.log.info("session ready", extra={"upstream": f"{route.host}:{route.port}/{route.dbname}",
                                          "application_name": session.parameters.get("application_name", "")})
