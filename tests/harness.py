"""Test harness: a pgproxy running on its own event loop in a thread.

Synchronous drivers (psycopg, psql, pgbench) and asynchronous ones (asyncpg on
the test's own loop) can all talk to it, as they would to a deployed proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import random
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt

from pgproxy.config import (
    AuthConfig,
    Config,
    JwtConfig,
    Limits,
    ListenConfig,
    Route,
    StaticAgent,
    TlsConfig,
)
from pgproxy.decision import StatementGate
from pgproxy.demo.run import demo_file
from pgproxy.pgcluster import PostgresCluster
from pgproxy.server import ProxyServer, new_event_loop
from pgproxy.wire.messages import (
    BACKEND_KEY_DATA,
    BackendKeyData,
    PasswordMessage,
    StartupMessage,
    decode_backend_key_data,
    decode_fields,
)
from pgproxy.wire.scram import make_scram_secret
from tests.pki import Pki

JWT_SECRET = "test-jwt-secret-0123456789abcdef0123"
JWT_ISSUER = "https://issuer.test"
JWT_AUDIENCE = "pgproxy-tests"
STATIC_AGENT = "batch"
STATIC_PASSWORD = "batch-password"
UPSTREAM_USERS = {  # role -> (password, how the upstream authenticates it)
    "app_scram": ("scram-pass", "scram-sha-256"),
    "app_md5": ("md5-pass", "md5"),
    "app_plain": ("plain-pass", "password"),
}
DATABASE = "app"


def make_token(sub: str = "agent", *, secret: str = JWT_SECRET, groups: Any = ("agents",),
               ttl: float = 600, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "groups": list(groups), "iss": JWT_ISSUER,
                               "aud": JWT_AUDIENCE, "iat": now, "exp": now + int(ttl)}
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, algorithm="HS256")


def upstream_route(cluster: PostgresCluster, *, user: str = "app_scram", name: str = DATABASE,
                   **overrides: Any) -> Route:
    password = UPSTREAM_USERS[user][0] if user in UPSTREAM_USERS else None
    route = Route(name=name, host=cluster.host, port=cluster.port, dbname=DATABASE, user=user,
                  password=password)
    return dataclasses.replace(route, **overrides)


def make_config(cluster: PostgresCluster, *, routes: list[Route] | None = None,
                tls: TlsConfig | None = None, limits: Limits | None = None,
                allow_cleartext_on_loopback: bool = True, **jwt_overrides: Any) -> Config:
    jwt_config = JwtConfig(algorithms=("HS256",), secret=JWT_SECRET, issuer=JWT_ISSUER,
                           audience=JWT_AUDIENCE)
    jwt_config = dataclasses.replace(jwt_config, **jwt_overrides)
    agents = (StaticAgent(STATIC_AGENT, make_scram_secret(STATIC_PASSWORD), frozenset({"etl"})),)
    routes = routes or [upstream_route(cluster)]
    return Config(
        source=None,
        routes={r.name: r for r in routes},
        listen=ListenConfig(host="127.0.0.1", port=0, tls=tls),
        limits=limits or Limits(),
        auth=AuthConfig(jwt=jwt_config, agents=agents,
                        allow_cleartext_on_loopback=allow_cleartext_on_loopback),
    )


class ProxyThread:
    """A ProxyServer on a private event loop in a daemon thread."""

    def __init__(self, config: Config, *, gate: StatementGate | None = None) -> None:
        self.config = config
        self.loop = new_event_loop()  # the loop production uses (uvloop when installed)
        self.server = ProxyServer(config, gate=gate)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ProxyThread:
        self._thread.start()
        self.call(self.server.start())
        return self

    def call(self, coro: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.call(self.server.close())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.loop.close()

    @property
    def port(self) -> int:
        return self.server.port

    def dsn(self, user: str = "agent", password: str | None = None, *, dbname: str = DATABASE,
            **params: str) -> str:
        if password is None:
            password = make_token(user) if user != STATIC_AGENT else STATIC_PASSWORD
        query = urllib.parse.urlencode({"sslmode": "disable", **params}, quote_via=urllib.parse.quote)
        return (f"postgresql://{urllib.parse.quote(user, safe='')}:"
                f"{urllib.parse.quote(password, safe='')}@127.0.0.1:{self.port}/{dbname}?{query}")

    def session_count(self) -> int:
        return len(self.server.sessions)


@contextmanager
def running_proxy(config: Config, *, gate: StatementGate | None = None) -> Iterator[ProxyThread]:
    proxy = ProxyThread(config, gate=gate).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@contextmanager
def piecemeal_upstream(cluster: PostgresCluster, *, seed: int = 6) -> Iterator[int]:
    """A TCP relay in front of `cluster` (its port is yielded) that passes what the server sends
    on in bursts (what arrives within a few milliseconds), every other one cut at random places
    into pieces sent one by one: the proxy behind it reads the server's messages split in
    headers and bodies, whole, and several answers to a read."""
    listener = socket.create_server(("127.0.0.1", 0))
    cuts = random.Random(seed)
    sockets: list[socket.socket] = [listener]

    def pipe(source: socket.socket, target: socket.socket, piecemeal: bool) -> None:
        bursts = itertools.count()
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not piecemeal:
                    target.sendall(data)
                    continue
                time.sleep(0.005)  # answers to pipelined statements join into one burst
                source.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    while more := source.recv(65536):
                        data += more
                source.setblocking(True)
                if next(bursts) % 2:  # every other burst is cut (the others go whole)
                    points = sorted(cuts.sample(range(1, len(data)), min(len(data) - 1, 4)))
                    for start, end in zip([0, *points], [*points, len(data)], strict=True):
                        target.sendall(data[start:end])
                        time.sleep(0.002)  # each piece a read of its own
                else:
                    target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                server = socket.create_connection((cluster.host, cluster.port))
                for side in (client, server):
                    side.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sockets.extend((client, server))
                threading.Thread(target=pipe, args=(client, server, False), daemon=True).start()
                threading.Thread(target=pipe, args=(server, client, True), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def tls_config(pki: Pki) -> TlsConfig:
    return TlsConfig(cert_file=pki.server_cert, key_file=pki.server_key)


class RawClient:
    """A protocol-level client on a plain socket, for what drivers cannot send."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buf = b""
        self.backend_key: BackendKeyData | None = None  # what login() was handed, for a CancelRequest

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_message(self) -> tuple[int, bytes] | None:
        """The next message (type byte, body), or None when the proxy closed the connection."""
        while True:
            if len(self._buf) >= 5:
                (length,) = struct.unpack("!i", self._buf[1:5])
                if len(self._buf) >= 1 + length:
                    type_byte, body = self._buf[0], self._buf[5:1 + length]
                    self._buf = self._buf[1 + length:]
                    return type_byte, body
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buf += chunk

    def until_ready(self) -> list[tuple[int, bytes]]:
        """Messages up to and including ReadyForQuery (or until the connection closes)."""
        out: list[tuple[int, bytes]] = []
        while (message := self.read_message()) is not None:
            out.append(message)
            if message[0] == ord("Z"):
                break
        return out

    def login(self, user: str = "agent", token: str | None = None, database: str = DATABASE,
              **parameters: str) -> None:
        """Start up (with further startup `parameters`, e.g. application_name) and answer the
        password request with `token` (a JWT by default; a password for a direct login)."""
        self.send(StartupMessage({"user": user, "database": database, **parameters}).encode())
        request = self.read_message()
        assert request is not None and request[0] == ord("R"), request
        self.send(PasswordMessage(token or make_token(user)).encode())
        replies = self.until_ready()
        assert replies and replies[-1][0] == ord("Z"), replies
        self.backend_key = next((decode_backend_key_data(body) for type_byte, body in replies
                                 if type_byte == BACKEND_KEY_DATA), None)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def raw_session(proxy: ProxyThread, **login: str) -> Iterator[RawClient]:
    client = RawClient(proxy.port)
    try:
        client.login(**login)
        yield client
    finally:
        client.close()


def error_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse/NoticeResponse body, keyed by field code."""
    return decode_fields(body)


def write_enforce_config(cluster: PostgresCluster, directory: Path, *, catalog: str,
                         policy: str | None = None, extra: str = "", routes: str = "",
                         dbname: str | None = None) -> Path:
    """A YAML config for enforce mode (the demo policy unless `policy` is given), loaded as users do.
    `routes`: further lines of the routes mapping (indented by two spaces); `dbname`: the upstream
    database of the route `app` (by default `app` itself)."""
    (directory / "jwt-secret").write_text(JWT_SECRET)
    (directory / "upstream-password").write_text(UPSTREAM_USERS["app_scram"][0])
    (directory / "catalog.yaml").write_text(catalog)
    policy_text = policy if policy is not None else demo_file("policy.yaml")
    indented = "\n".join("  " + line for line in policy_text.splitlines())
    path = directory / "pgproxy.yaml"
    upstream = f"host: {cluster.host}, port: {cluster.port}, " + (f"dbname: {dbname}, " if dbname else "")
    path.write_text(f"""\
mode: enforce
listen: {{host: 127.0.0.1, port: 0}}
catalog: catalog.yaml
auth:
  allow_cleartext_on_loopback: true
  jwt: {{algorithms: [HS256], secret_file: jwt-secret, issuer: "{JWT_ISSUER}", audience: {JWT_AUDIENCE}}}
  agents:
    - {{id: {STATIC_AGENT}, scram_secret: "{make_scram_secret(STATIC_PASSWORD)}", groups: [etl]}}
routes:
  {DATABASE}: {{{upstream}user: app_scram, password_file: upstream-password}}
{routes}
{extra}
policy:
{indented}
""")
    return path
