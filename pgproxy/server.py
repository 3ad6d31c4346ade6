"""The listener: accepts clients, caps connections, runs one Session per client,
and shuts down gracefully (every session gets PostgreSQL's own 57P01 message)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl

from aiohttp import web

from pgproxy import __version__
from pgproxy.approvals.http import BoundedSite
from pgproxy.approvals.notify import Notifier
from pgproxy.approvals.service import Approvals
from pgproxy.approvals.web import make_app
from pgproxy.audit import AuditLog
from pgproxy.catalog import Catalog, load_catalog
from pgproxy.config import ApprovalsConfig, Config, Mode
from pgproxy.decision import StatementGate
from pgproxy.enforce import PolicyGate
from pgproxy.errors import ProxyError, SqlState
from pgproxy.identity import Authenticator
from pgproxy.sampling import Sampler
from pgproxy.session import Session, SessionRegistry
from pgproxy.startup import READ_CHUNK
from pgproxy.store.sqlite import SqliteStore
from pgproxy.wire import messages as m

log = logging.getLogger("pgproxy.server")

# Connections over max_connections that still get a proper refusal (after the SSL and
# startup negotiation); beyond that they are closed at once.
REFUSAL_SLACK = 64


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed, else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def client_tls_context(config: Config) -> ssl.SSLContext | None:
    tls = config.listen.tls
    if tls is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx


async def build_policy_gate(config: Config, approvals: Approvals | None,
                            audit: AuditLog | None = None) -> PolicyGate:
    """Enforce mode's gate: read the catalog file, introspect every route, log the warnings."""
    catalog = Catalog(max_message_bytes=config.limits.max_message_bytes)
    catalog_file = load_catalog(config.catalog) if config.catalog is not None else None
    warnings = await catalog.load(config.routes, catalog_file)
    for warning in warnings:
        log.warning("catalog warning", extra={"warning": warning})
    gate = PolicyGate(config, catalog, approvals, audit)
    for database in config.routes:
        gate.audit_catalog("catalog.loaded", database, warnings=len(warnings))
    return gate


async def start_audit(config: Config) -> AuditLog | None:
    """Open the audit log (continuing its chain) and record that the proxy started."""
    if config.audit is None:
        log.warning("no audit log: the config has neither an audit nor an approvals section")
        return None
    audit = AuditLog(config.audit)
    source = config.source
    await audit.start({
        "version": __version__, "mode": config.mode.value, "config": str(source) if source else None,
        "config_sha256": hashlib.sha256(source.read_bytes()).hexdigest() if source else None,
        "policy_version": config.policy.version, "full_statements": config.audit.full_statements,
        "listen": f"{config.listen.host}:{config.listen.port}", **observing(config)})
    return audit


def observing(config: Config) -> dict[str, object]:
    """In enforce mode, the rules that are only observed (decided and recorded, not enforced), for
    the start's audit event (observe mode says so in `mode`)."""
    rules = [rule.name for rule in config.policy.rules if rule.observe]
    return {"observed_rules": rules} if config.mode is Mode.ENFORCE and rules else {}


def warn_if_observing(config: Config) -> None:
    """Nobody should believe a policy protects them when it is only observed: say so at start."""
    if config.mode is Mode.OBSERVE:
        log.warning("OBSERVE MODE: pgproxy holds and denies nothing the policy decides; statements it would "
                    "hold or deny run and are only recorded in the audit log (outcome 'observed')",
                    extra={"mode": config.mode.value})
    elif observing(config):
        log.warning("observed rules: statements these rules would hold or deny run and are only recorded in "
                    "the audit log (outcome 'observed')", extra=observing(config))


async def start_approvals(config: ApprovalsConfig, audit: AuditLog | None = None
                          ) -> tuple[Approvals, web.AppRunner, str]:
    """Open the store (abandoning what a previous run left pending), start the web app."""
    store = SqliteStore(config.store)
    await store.open()
    abandoned = await store.abandon_pending()
    if abandoned:
        log.warning("approval requests abandoned by a restart", extra={"count": abandoned})
    notifier = Notifier(config.notifiers) if config.notifiers else None
    approvals = Approvals(store, signing_key=config.signing_key, reviewer_groups=config.reviewer_groups,
                          timeout_seconds=config.timeout_seconds, public_url=config.public_url or "http://pending",
                          notifier=notifier, audit=audit, hold_mode=config.hold_mode,
                          retry_window_seconds=config.retry_window_seconds)
    await approvals.watch_retry_requests()
    # Idle kept-alive connections close as soon as half-sent requests do (see approvals.http).
    runner = web.AppRunner(make_app(approvals, config), access_log=None,
                           keepalive_timeout=config.http.header_timeout_seconds, lingering_time=0)
    await runner.setup()
    site = BoundedSite(runner, config.host, config.port)
    await site.start()
    port = runner.addresses[0][1]
    url = config.public_url or f"http://{config.host}:{port}"
    approvals.public_url = url.rstrip("/")
    log.info("approvals web app listening", extra={"url": url})
    return approvals, runner, url


class ProxyServer:
    """pgproxy's listener. `await start()`, then `await close()` to stop."""

    def __init__(self, config: Config, *, gate: StatementGate | None = None) -> None:
        self.config = config
        self.gate = gate
        self.authenticator = Authenticator(config.auth)
        self.registry = SessionRegistry()
        self.tls_context = client_tls_context(config)
        self.sessions: set[Session] = set()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._web: web.AppRunner | None = None
        self.approvals_url: str | None = None
        self.audit: AuditLog | None = None
        self.sampler: Sampler | None = None

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def web_app(self) -> web.Application | None:
        """The approvals web app, when it runs."""
        return self._web.app if self._web is not None else None

    @property
    def host(self) -> str:
        return self.config.listen.host

    async def start(self) -> None:
        if self.gate is None:
            self.audit = await start_audit(self.config)
        if self.config.mode in (Mode.ENFORCE, Mode.OBSERVE) and self.gate is None:
            approvals = None
            if self.config.approvals is not None:
                approvals, self._web, self.approvals_url = await start_approvals(self.config.approvals, self.audit)
            self.gate = await build_policy_gate(self.config, approvals, self.audit)
        if self.config.sampling.enabled and isinstance(self.gate, PolicyGate):
            self.sampler = Sampler(self.config.sampling, self.gate.catalog.schema, self.audit, self.config.recognizers)
            await self.sampler.start()
        listen = self.config.listen
        self._server = await asyncio.start_server(
            self._accept, listen.host, listen.port, limit=READ_CHUNK, backlog=1024,
        )
        log.info("listening", extra={"host": listen.host, "port": self.port,
                                     "tls": self.tls_context is not None,
                                     "mode": self.config.mode.value})
        warn_if_observing(self.config)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            limit = self.config.limits.max_connections
            refusal = None
            if len(self.sessions) >= limit:
                log.warning("connection refused: too many clients", extra={"limit": limit})
                too_many = m.ErrorResponse.make("FATAL", SqlState.TOO_MANY_CONNECTIONS,
                                                "sorry, too many clients already")
                if len(self.sessions) >= limit + REFUSAL_SLACK:
                    writer.write(too_many.encode())  # flooded: refuse without even a handshake
                    writer.close()
                    return
                # Like PostgreSQL, answer the SSL negotiation and read the startup packet first,
                # so that the client can show the reason.
                refusal = ProxyError(SqlState.TOO_MANY_CONNECTIONS, too_many.message)
            session = Session(reader, writer, config=self.config, authenticator=self.authenticator,
                              registry=self.registry, tls_context=self.tls_context, gate=self.gate,
                              refusal=refusal, audit=self.audit, sampler=self.sampler)
            self.sessions.add(session)
            try:
                await session.run()
            except Exception:
                log.exception("session failed", extra={"session": session.id})
            finally:
                self.sessions.discard(session)
        finally:
            self._handlers.discard(task)

    async def close(self) -> None:
        """Stop listening and end every session with 57P01 (admin shutdown)."""
        if self._server is None:
            return
        self._server.close()
        shutdown = ProxyError(SqlState.ADMIN_SHUTDOWN, "terminating connection due to administrator command")
        await asyncio.gather(*(s.terminate(shutdown) for s in list(self.sessions)),
                             return_exceptions=True)
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5.0)
        stopped: dict[str, object] = {}
        if self.sampler is not None:
            await self.sampler.close()
            stopped["sampling"] = self.sampler.counts()
            self.sampler = None
        if self.gate is not None:
            await self.gate.close()
        if self._web is not None:
            await self._web.cleanup()
            self._web = None
        if self.audit is not None:
            await self.audit.close(stopped)
            self.audit = None
        await self._server.wait_closed()
        self._server = None
        log.info("stopped")
