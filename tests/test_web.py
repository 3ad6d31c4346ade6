"""The approvals web app's bounds: every route protected and with its security headers; half-sent
requests closed; slow HTTP clients past the connection cap turned away, so agents still log in."""

from __future__ import annotations

import contextlib
import json
import re
import resource
import select
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgproxy.pgcluster import PostgresCluster, free_port
from tests import corpus
from tests.approvals_support import approvals_config, decide, held_psql, reviewer_token, start_proxy, wait_pending
from tests.harness import ProxyThread, make_token, write_enforce_config
from tests.test_cli import clean_env, pgproxy_command

# Routes anyone may call, and what they may tell: liveness, the pages' static shells and assets,
# whether the demo's sign-in is offered (and the sign-in itself, which takes the demo's code),
# who the caller is (nobody), and Slack's signed callbacks. Every other route needs a reviewer.
PUBLIC = {("GET", "/healthz"), ("GET", "/approvals"), ("GET", "/approvals/{id}"), ("GET", "/assets/{name}"),
          ("GET", "/api/demo-login"),
          ("POST", "/api/demo-login"), ("GET", "/api/whoami"), ("POST", "/slack/interactivity")}


def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None,
          body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def assert_security_headers(headers: dict[str, str], where: str) -> None:
    assert headers.get("Cache-Control") == "no-store", where
    assert headers.get("X-Frame-Options") == "DENY", where
    assert "frame-ancestors 'none'" in headers.get("Content-Security-Policy", ""), where
    assert headers.get("X-Content-Type-Options") == "nosniff", where
    assert headers.get("Referrer-Policy") == "no-referrer", where
    assert re.search(r"aiohttp|python|\d", headers.get("Server", ""), re.I) is None, (where, headers.get("Server"))


def test_every_route_is_protected_and_carries_the_security_headers(approving: ProxyThread) -> None:
    """Walks every route the app registers: without a token only the public ones answer, and
    they tell nothing about requests; every answer carries the security headers."""
    client = held_psql(approving, "SELECT email FROM customers WHERE id = 71")
    try:
        request = wait_pending(approving, "WHERE id = 71")
        app = approving.server.web_app
        assert app is not None
        base = approving.server.approvals_url or ""
        secrets = ("customers", request["statement_sha256"], request["id"])
        seen = set()
        for route in app.router.routes():
            path = route.resource.canonical if route.resource is not None else ""
            seen.add((route.method, path))
            url = base + path.replace("{id}", request["id"]).replace("{name}", "approval.js")
            body = b"{}" if route.method == "POST" else None
            status, headers, answer = fetch(url, route.method, {"Content-Type": "application/json"}, body)
            assert_security_headers(headers, f"{route.method} {path}")
            if (route.method if route.method != "HEAD" else "GET", path) not in PUBLIC:
                assert status == 401, (route.method, path, status)
            for secret in secrets:
                assert secret.encode() not in answer, (route.method, path, secret)
        assert seen >= PUBLIC  # the list above is not stale
        status, _, answer = fetch(f"{base}/healthz")
        assert (status, json.loads(answer)) == (200, {"status": "ok"})  # liveness, and nothing more
        status, _, answer = fetch(f"{base}/healthz", headers={"Authorization": f"Bearer {reviewer_token()}"})
        assert status == 200 and json.loads(answer)["held"] >= 1
        for path in ("/nope", f"/api/approvals/{request['id']}", "/api/approvals?status=pending"):
            _, headers, _ = fetch(base + path, headers={"Authorization": f"Bearer {reviewer_token()}"})
            assert_security_headers(headers, path)
        assert decide(approving, request, "deny", reason="done")[0] == 200
    finally:
        client.kill()


TIMED_OUT = (b"", b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (raises if it never does)."""
    sock.settimeout(60)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@pytest.fixture(scope="module")
def impatient(pg: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyThread]:
    with start_proxy(pg, tmp_path_factory.mktemp("impatient"),
                     http="{header_timeout_seconds: 0.5, body_timeout_seconds: 0.5, max_body_bytes: 4096}") as proxy:
        yield proxy


def web_socket(proxy: ProxyThread) -> socket.socket:
    port = int((proxy.server.approvals_url or "").rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def test_half_sent_requests_are_closed(impatient: ProxyThread) -> None:
    with web_socket(impatient) as sock:  # headers that never end
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert read_until_closed(sock) in TIMED_OUT
    with web_socket(impatient) as sock:  # a body shorter than it said
        sock.sendall(b"POST /api/demo-login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"code\": ")
        assert b" 408 " in read_until_closed(sock).split(b"\r\n", 1)[0]
    with web_socket(impatient) as sock:  # nothing at all
        assert read_until_closed(sock) in TIMED_OUT
    with web_socket(impatient) as sock:  # a whole request, then half of the next on the same connection
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHo")
        answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 200") and b'{"status": "ok"}' in answer


def test_a_body_over_the_limit_is_refused(impatient: ProxyThread) -> None:
    status, headers, _ = fetch(f"{impatient.server.approvals_url}/api/demo-login", "POST",
                               {"Content-Type": "application/json"}, b'{"code": "' + b"x" * 5000 + b'"}')
    assert status == 413
    assert_security_headers(headers, "413")


@contextlib.contextmanager
def proxy_process_with_few_files(pg: PostgresCluster, directory: Path, files: int, http: str
                                 ) -> Iterator[tuple[int, int]]:
    """`pgproxy run` limited to `files` open files; yields (agent port, web port)."""
    path = write_enforce_config(pg, directory, catalog=corpus.CATALOG, extra=approvals_config(directory, 30, http=http))
    agent_port, web_port = free_port(), free_port()
    text = re.sub(r"^listen: \{host: 127.0.0.1, port: 0\}", f"listen: {{host: 127.0.0.1, port: {agent_port}}}",
                  path.read_text(), flags=re.M)
    path.write_text(re.sub(r"^  listen: \{host: 127.0.0.1, port: 0\}",
                           f"  listen: {{host: 127.0.0.1, port: {web_port}}}", text, flags=re.M))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with (directory / "stderr").open("w") as stderr:
        proc = subprocess.Popen(
            [*pgproxy_command(), "run", "--config", str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=stderr, env=clean_env(), cwd=directory, start_new_session=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (files, hard)))
    try:
        deadline = time.monotonic() + 30
        for port in (agent_port, web_port):
            while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
                assert proc.poll() is None and time.monotonic() < deadline, (directory / "stderr").read_text()
                time.sleep(0.05)
        yield agent_port, web_port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


def test_slow_http_clients_do_not_starve_agent_logins(pg: PostgresCluster, tmp_path: Path) -> None:
    """More slow HTTP clients than the web app's cap (and than the process has files for), each
    sending its headers a byte at a time: agents still log in and run statements, and the
    clients past the cap are turned away (503, closed)."""
    cap, slow_clients = 20, 220
    with proxy_process_with_few_files(pg, tmp_path, 200, f"{{max_connections: {cap}, header_timeout_seconds: 600}}"
                                      ) as (agent_port, web_port):
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        clients: list[socket.socket] = []
        try:
            for _ in range(slow_clients):
                sock = socket.create_connection(("127.0.0.1", web_port), timeout=10)
                clients.append(sock)
            for byte in range(3):  # byte by byte, each client in turn
                for sock in clients:
                    with contextlib.suppress(OSError):
                        sock.send(request[byte:byte + 1])
            dsn = f"postgresql://agent:{make_token('agent')}@127.0.0.1:{agent_port}/app?sslmode=disable"
            for _ in range(3):
                with psycopg.connect(dsn, connect_timeout=20) as conn:
                    assert conn.execute("SELECT count(*) FROM orders WHERE id <= 3").fetchone() == (3,)
            turned_away = 0
            for sock in clients:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    with contextlib.suppress(OSError):
                        turned_away += sock.recv(100).startswith(b"HTTP/1.1 503")
            assert turned_away == slow_clients - cap
        finally:
            for sock in clients:
                sock.close()
