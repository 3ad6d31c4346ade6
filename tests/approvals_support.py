"""Shared by the approvals tests and the page tests: a proxy that holds statements, and its API."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pgproxy.config import TlsConfig, load_config
from pgproxy.pgcluster import PostgresCluster, find_pg_bin
from tests import corpus
from tests.harness import ProxyThread, make_token, running_proxy, write_enforce_config

REVIEWER_SECRET = "reviewer-side-secret-0123456789abcdef"
REVIEWER_AUDIENCE = "pgproxy-approvals"
DECISION_SECRET = "outside-approval-system-key-0123456789"
# The approvals section's keys for retry mode (start_proxy's `settings`), and the request id in its errors.
RETRY = "  hold_mode: retry\n  retry_window_seconds: 600\n"
REQUEST_ID = re.compile(r"the request id is ([A-Za-z0-9_-]+)")


def reviewer_token(sub: str = "alice", *, groups: tuple[str, ...] = ("reviewers",), secret: str = REVIEWER_SECRET,
                   ttl: float = 600) -> str:
    return make_token(sub, secret=secret, groups=groups, ttl=ttl, aud=REVIEWER_AUDIENCE)


def approvals_config(directory: Path, timeout: float, demo_code: str | None = None, http: str = "",
                     settings: str = "") -> str:
    """The approvals section; `demo_code`: with the demo's sign-in, for the demo reviewer "alice";
    `http`: the web app's bounds (the flow mapping of approvals.http); `settings`: more keys of the
    section (YAML lines indented by two spaces)."""
    demo = ""
    if demo_code is not None:
        (directory / "demo-token").write_text(reviewer_token())
        (directory / "demo-code").write_text(demo_code)
        demo = "  demo_login_token_file: demo-token\n  demo_login_code_file: demo-code\n"
    (directory / "reviewer-secret").write_text(REVIEWER_SECRET)
    (directory / "signing-key").write_text("proxy-signing-key-0123456789abcdef0123")
    (directory / "decision-secret").write_text(DECISION_SECRET)
    return f"""\
approvals:
  listen: {{host: 127.0.0.1, port: 0}}
  store: approvals.sqlite3
  timeout_seconds: {timeout}
  signing_key_file: signing-key
  reviewers:
    jwt: {{algorithms: [HS256], secret_file: reviewer-secret, issuer: "https://issuer.test",
           audience: {REVIEWER_AUDIENCE}}}
    groups: [reviewers]
    sso_header: X-Forwarded-Access-Token
  decision_tokens:
    jwt: {{algorithms: [HS256], secret_file: decision-secret, issuer: "https://approvals.example",
           audience: pgproxy-decisions}}
{demo}{f"  http: {http}" + chr(10) if http else ""}{settings}"""


def start_proxy(pg: PostgresCluster, directory: Path, *, timeout: float = 30, demo_code: str | None = None,
                catalog: str = corpus.CATALOG, http: str = "", settings: str = "", policy: str | None = None,
                tls: TlsConfig | None = None) -> Any:
    """A holding proxy; `http`: the web app's bounds; `settings`: more keys of its approvals section;
    `policy`: not the demo's; `tls`: clients may connect over TLS."""
    path = write_enforce_config(pg, directory, catalog=catalog, policy=policy,
                                extra=approvals_config(directory, timeout, demo_code, http, settings))
    config = load_config(path)
    if tls is not None:
        config = dataclasses.replace(config, listen=dataclasses.replace(config.listen, tls=tls))
    return running_proxy(config)


@contextmanager
def proxy_with_tables(pg: PostgresCluster, directory: Path, tables: str, setup: str,
                      tagged: str) -> Iterator[ProxyThread]:
    """A holding proxy over the corpus catalog plus `tagged` (catalog lines for public), with
    `tables` (a comma list) made by `setup` and dropped afterwards."""
    pg.psql(f"DROP TABLE IF EXISTS {tables}; {setup}", dbname="app", user="app_scram")
    catalog = corpus.CATALOG.replace("    AuditLog:\n", f"{tagged}    AuditLog:\n")
    try:
        with start_proxy(pg, directory, catalog=catalog) as proxy:
            yield proxy
    finally:
        pg.psql(f"DROP TABLE IF EXISTS {tables}", dbname="app", user="app_scram")


def held_psql(proxy: ProxyThread, sql: str) -> subprocess.Popen[str]:
    """psql running `sql` through the proxy, in the background (held until decided)."""
    return subprocess.Popen([str(find_pg_bin("psql")), "-X", "-At", proxy.dsn(), "-c", sql],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def approving(pg: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyThread]:
    with start_proxy(pg, tmp_path_factory.mktemp("approvals")) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def retrying(pg: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyThread]:
    """A proxy that holds in retry mode."""
    with start_proxy(pg, tmp_path_factory.mktemp("retry"), settings=RETRY) as proxy:
        yield proxy


def api(proxy: ProxyThread, method: str, path: str, body: dict[str, Any] | None = None,
        token: str | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{proxy.server.approvals_url}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_pending(proxy: ProxyThread, fragment: str, *, token: str | None = None) -> dict[str, Any]:
    """The pending request whose statement contains `fragment`, as a reviewer (`token`: alice) reads it."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status, body = api(proxy, "GET", "/api/approvals?status=pending", token=token or reviewer_token())
        assert status == 200, body
        for request in body["approvals"]:
            if fragment in request["statement"]:
                return request  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"no pending approval for {fragment!r}")


def get_request(proxy: ProxyThread, approval_id: str) -> dict[str, Any]:
    status, body = api(proxy, "GET", f"/api/approvals/{approval_id}", token=reviewer_token())
    assert status == 200, body
    return body


def decide(proxy: ProxyThread, request: dict[str, Any], decision: str = "approve", *, reason: str = "ok",
           token: str | None = None, sha: str | None = None, grant_minutes: int = 0) -> tuple[int, dict[str, Any]]:
    body = {"decision": decision, "reason": reason, "statement_sha256": sha or request["statement_sha256"],
            "grant_minutes": grant_minutes}
    return api(proxy, "POST", f"/api/approvals/{request['id']}/decision", body, token or reviewer_token())


def direct_value(pg: PostgresCluster, sql: str) -> str:
    return pg.psql(sql, dbname="app").strip()
