"""The approvals web app's listener, bounded: a slow or idle HTTP client cannot keep a connection
(and its file descriptor, which agents' sessions need too) for ever, nor can many of them.

aiohttp reads a request's headers without a deadline and accepts every connection. `BoundedSite`
listens like aiohttp's TCPSite, but each connection goes through `_Guarded`: past
`max_connections` open ones a new connection gets `503` and is closed at once; a request's
headers must arrive within `header_timeout_seconds` of the connection (or of the previous
response), else `408` and the connection is closed. `bounded` (a middleware) gives the body
`body_timeout_seconds` to arrive, whole; `client_max_size` caps its size (`413`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("pgproxy.approvals")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_connections: int = 100
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 10.0
    max_body_bytes: int = 64 * 1024


_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_TOO_SLOW = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Connections:
    """The web app's open connections and the protocol factory that bounds them."""

    def __init__(self, limits: HttpLimits) -> None:
        self.server: web.Server | None = None  # aiohttp's, once the runner is set up
        self.limits = limits
        self.open: dict[RequestHandler, _Guarded] = {}

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self)

    def request_started(self, handler: Any) -> None:
        guarded = self.open.get(handler)
        if guarded is not None:
            guarded.request_started()

    def request_done(self, handler: Any) -> None:
        guarded = self.open.get(handler)
        if guarded is not None:
            guarded.waiting = True


class _Guarded(asyncio.Protocol):
    """aiohttp's RequestHandler for one connection, with a deadline on each request's headers."""

    def __init__(self, connections: Connections) -> None:
        self.connections = connections
        self.handler: RequestHandler | None = None
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.waiting = True  # for a request's headers

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        transport = self.transport
        connections = self.connections
        if len(connections.open) >= connections.limits.max_connections:
            log.warning("approvals web app: connection refused, too many open",
                        extra={"limit": connections.limits.max_connections})
            transport.write(_BUSY)
            transport.close()
            return
        assert connections.server is not None
        self.handler = connections.server()
        connections.open[self.handler] = self
        self.handler.connection_made(transport)
        self._start_timer()

    def _start_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.connections.limits.header_timeout_seconds, self._timed_out)

    def _timed_out(self) -> None:
        self.timer = None
        if self.waiting and self.transport is not None and not self.transport.is_closing():
            self.transport.write(_TOO_SLOW)
            self.transport.close()

    def request_started(self) -> None:
        self.waiting = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def data_received(self, data: bytes) -> None:
        if self.handler is None:
            return
        if self.waiting and self.timer is None:
            self._start_timer()  # the next request on a kept-alive connection has begun
        self.handler.data_received(data)

    def eof_received(self) -> None:
        if self.handler is not None:
            self.handler.eof_received()

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.handler is not None:
            self.connections.open.pop(self.handler, None)
            self.handler.connection_lost(exc)
            self.handler = None


CONNECTIONS = web.AppKey("connections", Connections)


@web.middleware
async def bounded(request: web.Request, handler: Any) -> web.StreamResponse:
    """The request's headers are in: its body gets `body_timeout_seconds` to arrive, whole."""
    connections = request.app.get(CONNECTIONS)
    if connections is None:
        return await handler(request)  # type: ignore[no-any-return]
    connections.request_started(request.protocol)
    try:
        if request.body_exists:
            try:
                await asyncio.wait_for(request.read(), connections.limits.body_timeout_seconds)
            except TimeoutError:
                request.protocol.close()  # once the 408 is sent: the rest of the body is not awaited
                raise web.HTTPRequestTimeout(text='{"error": "the request body did not arrive in time"}',
                                             content_type="application/json") from None
        response: web.StreamResponse = await handler(request)
        return response
    finally:
        connections.request_done(request.protocol)


class BoundedSite(web.BaseSite):
    """aiohttp's TCPSite with each connection bounded (see the module's docstring)."""

    __slots__ = ("_host", "_port", "connections")

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        super().__init__(runner, backlog=128)
        self._host = host
        self._port = port
        self.connections = runner.app[CONNECTIONS]  # made with the app (make_app)
        self.connections.server = runner.server

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(
            self.connections, self._host, self._port, backlog=self._backlog, reuse_address=True)
