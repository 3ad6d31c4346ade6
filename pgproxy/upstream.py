"""Connecting to the real PostgreSQL: routes, TLS (sslmode), authentication.

The proxy holds the upstream credentials; agents never see them. An upstream
login failure is reported to the agent without the upstream's user name or
the reason the upstream gave, since both describe the proxy's secrets.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field

from pgproxy.config import Route, SslMode
from pgproxy.errors import ProxyError, SqlState, UpstreamProtocolError
from pgproxy.wire import messages as m
from pgproxy.wire.codec import FrameError, FrameReader
from pgproxy.wire.scram import ScramClient, ScramError, md5_password

log = logging.getLogger("pgproxy.upstream")

READ_CHUNK = 256 * 1024

# Startup parameters that describe the client's session and pass through to the upstream.
# user/database are replaced by the route's; replication is refused before we get here.
_NOT_FORWARDED = frozenset({"user", "database", "replication"})


@dataclass(slots=True)
class UpstreamConnection:
    """An authenticated upstream connection, ready for queries."""

    route: Route
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    backend_key: m.BackendKeyData | None
    # Raw ParameterStatus and NoticeResponse frames the upstream sent during startup, to forward.
    startup_frames: list[bytes] = field(default_factory=list)
    # Bytes the upstream sent after its first ReadyForQuery (normally none).
    leftover: bytes = b""

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


class UpstreamRefused(ProxyError):
    """The upstream answered the startup with an ErrorResponse."""


def upstream_ssl_context(route: Route) -> ssl.SSLContext | None:
    if route.sslmode is SslMode.DISABLE:
        return None
    if route.sslmode is SslMode.REQUIRE:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context(
        cafile=str(route.sslrootcert) if route.sslrootcert else None
    )
    ctx.check_hostname = True
    return ctx


async def _open(route: Route) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(route.host, route.port, limit=READ_CHUNK)
    ctx = upstream_ssl_context(route)
    if ctx is None:
        return reader, writer
    writer.write(m.SSLRequest().encode())
    await writer.drain()
    answer = await reader.readexactly(1)
    if answer != b"S":
        writer.close()
        raise ProxyError(
            SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
            f'the upstream for database "{route.name}" does not accept TLS, '
            f"but its route requires sslmode={route.sslmode}",
        )
    await writer.start_tls(ctx, server_hostname=route.host)
    return reader, writer


async def connect_upstream(route: Route, client_parameters: dict[str, str], *,
                           max_message_bytes: int) -> UpstreamConnection:
    """Open, secure and authenticate a connection to the route's server."""
    try:
        async with asyncio.timeout(route.connect_timeout_seconds):
            reader, writer = await _open(route)
            try:
                return await _startup(route, reader, writer, client_parameters, max_message_bytes)
            except BaseException:
                writer.close()
                raise
    except TimeoutError:
        raise ProxyError(
            SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
            f'timed out connecting to the upstream for database "{route.name}"',
        ) from None
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
        log.warning("upstream connect failed", extra={"route": route.name, "error": str(exc)})
        raise ProxyError(
            SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
            f'could not connect to the upstream for database "{route.name}"',
            detail=type(exc).__name__,
        ) from None


async def _startup(route: Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   client_parameters: dict[str, str], max_message_bytes: int) -> UpstreamConnection:
    params = {k: v for k, v in client_parameters.items() if k not in _NOT_FORWARDED and not k.startswith("_pq_.")}
    params = {"user": route.user, "database": route.dbname, **params}
    writer.write(m.StartupMessage(params).encode())
    await writer.drain()
    frames = FrameReader(max_message_bytes=max_message_bytes, allowed_types=m.BACKEND_TYPES)
    conn = UpstreamConnection(route, reader, writer, None)
    scram: ScramClient | None = None
    while True:
        data = await reader.read(READ_CHUNK)
        if not data:
            raise UpstreamProtocolError(
                f'the upstream for database "{route.name}" closed the connection during startup'
            )
        try:
            batch = frames.feed(data)
        except FrameError as exc:
            raise UpstreamProtocolError(f"upstream sent an invalid message: {exc}") from None
        buf = frames.buffer
        for index, (type_byte, start, end) in enumerate(batch):
            body = buf[start + 5:end]
            if type_byte == m.AUTHENTICATION:
                scram = await _authenticate(route, writer, m.decode_authentication(body), scram)
            elif type_byte == m.ERROR_RESPONSE:
                raise _refusal(route, m.decode_error_response(body))
            elif type_byte == m.BACKEND_KEY_DATA:
                conn.backend_key = m.decode_backend_key_data(body)
            elif type_byte in (m.PARAMETER_STATUS, m.NOTICE_RESPONSE, m.NEGOTIATE_PROTOCOL_VERSION):
                if type_byte != m.NEGOTIATE_PROTOCOL_VERSION:
                    conn.startup_frames.append(buf[start:end])
            elif type_byte == m.READY_FOR_QUERY:
                if frames.pending_bytes:
                    raise UpstreamProtocolError("upstream sent a partial message after ReadyForQuery")
                conn.leftover = b"".join(buf[s:e] for _, s, e in batch[index + 1:])
                return conn
            else:
                raise UpstreamProtocolError(
                    f"upstream sent unexpected message {chr(type_byte)!r} during startup"
                )


async def _authenticate(route: Route, writer: asyncio.StreamWriter, auth: m.Authentication,
                        scram: ScramClient | None) -> ScramClient | None:
    """Answer one authentication request; return the SCRAM exchange in progress, if any."""
    if auth.code == m.AUTH_OK:
        return scram
    password = route.password
    if auth.code in (m.AUTH_CLEARTEXT_PASSWORD, m.AUTH_MD5_PASSWORD, m.AUTH_SASL) and password is None:
        raise ProxyError(
            SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
            f'the upstream for database "{route.name}" asks for a password, '
            "but its route has none configured",
        )
    try:
        if auth.code == m.AUTH_CLEARTEXT_PASSWORD:
            assert password is not None
            writer.write(m.PasswordMessage(password).encode())
        elif auth.code == m.AUTH_MD5_PASSWORD:
            assert password is not None
            digest = md5_password(route.user, password, auth.data[:4])
            writer.write(m.PasswordMessage(digest.decode()).encode())
        elif auth.code == m.AUTH_SASL:
            assert password is not None
            if ScramClient.mechanism not in m.sasl_mechanisms(auth.data):
                raise ProxyError(SqlState.FEATURE_NOT_SUPPORTED,
                                 "the upstream offers no SASL mechanism pgproxy supports")
            scram = ScramClient(password)
            writer.write(m.SASLInitialResponse(ScramClient.mechanism, scram.client_first()).encode())
        elif auth.code == m.AUTH_SASL_CONTINUE and scram is not None:
            writer.write(m.SASLResponse(scram.client_final(auth.data)).encode())
        elif auth.code == m.AUTH_SASL_FINAL and scram is not None:
            scram.verify_server_final(auth.data)
            return None
        else:
            raise ProxyError(SqlState.FEATURE_NOT_SUPPORTED,
                             f"the upstream asks for authentication method {auth.code}, "
                             "which pgproxy does not support")
    except ScramError as exc:
        raise UpstreamProtocolError(f"SCRAM exchange with the upstream failed: {exc}") from None
    await writer.drain()
    return scram


def _refusal(route: Route, error: m.ErrorResponse) -> ProxyError:
    code = error.code
    if code.startswith("28"):
        # The upstream rejected the proxy's own credentials: say so without echoing them.
        log.error("upstream rejected the route's credentials",
                  extra={"route": route.name, "sqlstate": code})
        return UpstreamRefused(
            SqlState.SQLCLIENT_UNABLE_TO_ESTABLISH,
            f'pgproxy could not log in to the upstream for database "{route.name}"',
            hint="An administrator should check the route's user and password.",
        )
    # Anything else (no such database upstream, too many connections…) passes through as is.
    return UpstreamRefused(code or SqlState.CONNECTION_FAILURE, error.message or "upstream refused",
                           detail=error.fields.get(m.FIELD_DETAIL), hint=error.fields.get(m.FIELD_HINT))


async def send_cancel(route: Route, key: m.BackendKeyData) -> None:
    """Forward a CancelRequest to the upstream backend that `key` names."""
    try:
        async with asyncio.timeout(route.connect_timeout_seconds):
            _, writer = await asyncio.open_connection(route.host, route.port)
            writer.write(m.CancelRequest(key.process_id, key.secret_key).encode())
            await writer.drain()
            writer.close()
            await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        log.warning("could not forward cancel request", extra={"route": route.name, "error": str(exc)})
