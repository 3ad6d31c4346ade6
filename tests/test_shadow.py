"""Observe mode (shadow rollout) end to end: a mixed workload through psycopg against the real
proxy runs whole, nothing is held, the audit log marks what enforce mode would have held or
denied and by which rule, and `pgproxy audit summary` counts it; one rule observed while
another still holds; pgproxy's own integrity checks still refuse; config errors name file:line."""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgproxy.config import ConfigError, load_config
from pgproxy.demo.run import demo_file
from pgproxy.pgcluster import PostgresCluster
from pgproxy.wire import messages as m
from tests import corpus
from tests.approvals_support import api, approvals_config, decide, direct_value, reviewer_token, wait_pending
from tests.harness import ProxyThread, raw_session, running_proxy, write_enforce_config
from tests.test_audit import audit_cli, events, of, run_held, wait_for
from tests.test_portals import SYNC, _exchange, _execute, _leaked, _rows

# Full statements are recorded, so the summary is seen to redact literals itself.
AUDIT = """\
audit:
  flush_interval_seconds: 0.05
  sign_interval_seconds: 0.2
  full_statements: true
"""
CANARY = "shadow-canary-5521@example.com"
OBSERVED_PII = demo_file("policy.yaml").replace(
    "    reason: reads or writes personal data\n", "    reason: reads or writes personal data\n    observe: true\n")
# The demo policy, and settings reviewed too (so that SET search_path is only observed in observe mode).
REVIEWED_SETTINGS = demo_file("policy.yaml") + """\
  - name: settings
    kinds: [session]
    action: review
    reason: changes a session setting
"""


def observe_config(pg: PostgresCluster, directory: Path, *, mode: str = "observe", policy: str | None = None,
                   extra: str | None = None, catalog: str = corpus.CATALOG) -> Path:
    """The tests' enforce config (demo policy, corpus catalog) in `mode`; approvals and the audit log."""
    path = write_enforce_config(pg, directory, catalog=catalog, policy=policy,
                                extra=approvals_config(directory, 30) + AUDIT if extra is None else extra)
    path.write_text(path.read_text().replace("mode: enforce\n", f"mode: {mode}\n", 1))
    return path


@pytest.fixture(scope="module")
def observing(pg: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyThread]:
    with running_proxy(load_config(observe_config(pg, tmp_path_factory.mktemp("observe")))) as proxy:
        yield proxy


def pending(proxy: ProxyThread) -> list[dict[str, Any]]:
    status, body = api(proxy, "GET", "/api/approvals?status=pending", token=reviewer_token())
    assert status == 200, body
    return list(body["approvals"])


def iso_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


# (statement, parameters, rule, the policy's action); parameters make psycopg use the extended protocol.
WORKLOAD: list[tuple[str, tuple[Any, ...] | None, str, str]] = [
    ("SELECT status, count(*) FROM orders GROUP BY status ORDER BY status", None, "default", "allow"),
    ("SELECT id, country FROM customers WHERE id = 7", None, "default", "allow"),
    ("SELECT email FROM customers WHERE id = 7", None, "personal-data", "review"),
    (f"SELECT id FROM customers WHERE email = '{CANARY}'", None, "personal-data", "review"),
    ("SELECT phone FROM customers WHERE id = %s", (9,), "personal-data", "review"),
    ("SELECT query_to_xml('SELECT 1 AS x', true, false, '')", None, "server-access", "deny"),
    ("CREATE TABLE shadow_mix (id int)", None, "schema-change", "review"),
    ("INSERT INTO shadow_mix VALUES (1), (2)", None, "default", "allow"),
    ("UPDATE shadow_mix SET id = id + 10", None, "unbounded-write", "review"),
    ("SELECT id FROM shadow_mix ORDER BY id", None, "default", "allow"),
    ("DROP TABLE shadow_mix", None, "schema-change", "review"),
]


def test_mixed_workload_runs_whole_and_the_audit_marks_what_would_be_held_or_denied(
        observing: ProxyThread, direct_dsn: str) -> None:
    since = iso_now()
    results: list[Any] = []
    with psycopg.connect(observing.dsn(), autocommit=True, application_name="shadow-mix") as conn:
        for sql, params, _, _ in WORKLOAD:
            cursor = conn.execute(sql, params)
            results.append(cursor.fetchall() if cursor.description else cursor.statusmessage)
        # Not a policy decision: after it, pgproxy could not read the session's text. Still denied.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="unreadable-text"):
            conn.execute("SET standard_conforming_strings = off")
        assert conn.execute("SELECT 1").fetchall() == [(1,)]  # the session carries on
        assert not pending(observing)  # nothing was ever held
    wait_for(observing, "connection.closed", application_name="shadow-mix")
    until = iso_now()

    # Every statement ran and returned what it returns directly.
    with psycopg.connect(direct_dsn) as direct:
        for index in range(5):
            sql, params = WORKLOAD[index][:2]
            assert results[index] == direct.execute(sql, params).fetchall(), sql
    assert results[2] and results[4] and not results[3]
    assert "<x>1</x>" in results[5][0][0]
    assert results[6:] == ["CREATE TABLE", "INSERT 0 2", "UPDATE 2", [(11,), (12,)], "DROP TABLE"]

    found = of(events(observing), "statement", application_name="shadow-mix")
    expected = [(rule, action, "allowed" if action == "allow" else "observed") for _, _, rule, action in WORKLOAD]
    assert [(e["rule"], e["action"], e["outcome"]) for e in found] == [
        *expected, ("unreadable-text", "deny", "denied"), ("default", "allow", "allowed")]
    assert found[4]["protocol"] == "extended" and "public.customers.email" in found[2]["columns_read"]
    assert not of(events(observing), "approval.requested")

    # The summary counts exactly the workload, by rule, with redacted examples.
    config = observing.server.config
    assert config.source is not None
    result = audit_cli("summary", "--config", str(config.source), "--since", since, "--until", until, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["statements"], summary["held"], summary["denied"], summary["allowed"], summary["observed"]) == (
        13, 6, 2, 5, 7)
    by_rule = {(r["rule"], r["action"]): r for r in summary["rules"]}
    assert {key: (r["statements"], r["observed"], r["enforced"]) for key, r in by_rule.items()} == {
        ("personal-data", "review"): (3, 3, 0), ("schema-change", "review"): (2, 2, 0),
        ("unbounded-write", "review"): (1, 1, 0), ("server-access", "deny"): (1, 1, 0),
        ("unreadable-text", "deny"): (1, 0, 1), ("default", "allow"): (5, 0, 0)}
    assert {e["statement"] for e in by_rule[("personal-data", "review")]["examples"]} == {
        "SELECT email FROM customers WHERE id = ?", "SELECT id FROM customers WHERE email = ?",
        "SELECT phone FROM customers WHERE id = $1"}
    assert CANARY in json.dumps(found)  # the log has it in full (audit.full_statements)…
    human = audit_cli("summary", "--config", str(config.source), "--since", since, "--until", until)
    assert human.returncode == 0, human.stderr
    for text in (result.stdout, human.stdout):
        assert CANARY not in text and "id = 7" not in text  # …the summary never shows a literal
    assert "would be held (review): 6" in human.stdout and "SELECT email FROM customers WHERE id = ?" in human.stdout
    earlier = json.loads(audit_cli("summary", "--config", str(config.source), "--until", since, "--json").stdout)
    assert not any(r["rule"] == "unbounded-write" for r in earlier["rules"])  # the range is respected


def test_observe_keeps_pgproxys_own_reading_of_the_session(pg: PostgresCluster, tmp_path: Path) -> None:
    """What runs because it is only observed still changes what pgproxy tracks, as an approval
    does: after an observed SET search_path names resolve on the new path (else the result guard
    would refuse the tagged column a wrongly resolved name hides), and after observed DDL the
    schema is read again. A startup setting the policy would refuse (a role change) is observed too."""
    pg.psql("CREATE SCHEMA IF NOT EXISTS crm; DROP TABLE IF EXISTS public.shadow_contacts, crm.shadow_contacts; "
            "CREATE TABLE public.shadow_contacts (id int, phone text); "
            "CREATE TABLE crm.shadow_contacts (id int, phone text); "
            "INSERT INTO crm.shadow_contacts VALUES (1, '+49 30 1234')", dbname="app", user="app_scram")
    catalog = corpus.CATALOG + "    shadow_contacts:\n      phone: [pii]\n"  # crm's, not public's
    path = observe_config(pg, tmp_path, policy=REVIEWED_SETTINGS, catalog=catalog)
    try:
        with running_proxy(load_config(path)) as proxy, \
                psycopg.connect(proxy.dsn(options="-c role=app_scram"), autocommit=True,
                                application_name="shadow-tracking") as conn:
            assert conn.execute("SELECT current_user").fetchall() == [("app_scram",)]
            conn.execute("SET search_path TO crm, public")
            assert conn.execute("SELECT phone FROM shadow_contacts").fetchall() == [("+49 30 1234",)]
            conn.execute("CREATE TABLE shadow_ddl (id int, secret text)")
            conn.execute("INSERT INTO shadow_ddl VALUES (1, 'x')")
            assert conn.execute("SELECT secret FROM shadow_ddl").fetchall() == [("x",)]
            conn.execute("DROP TABLE shadow_ddl")
            conn.close()
            wait_for(proxy, "connection.closed", application_name="shadow-tracking")
            found = of(events(proxy), "statement", application_name="shadow-tracking")
    finally:
        pg.psql("DROP TABLE IF EXISTS public.shadow_contacts, crm.shadow_contacts, crm.shadow_ddl",
                dbname="app", user="app_scram")
    assert [(e["rule"], e["outcome"]) for e in found] == [
        ("roles", "observed"), ("default", "allowed"), ("settings", "observed"), ("personal-data", "observed"),
        ("schema-change", "observed"), ("default", "allowed"), ("default", "allowed"), ("schema-change", "observed")]
    assert found[3]["tables"] == ["crm.shadow_contacts"] and found[6]["tables"] == ["crm.shadow_ddl"]


def test_the_result_guard_still_refuses(observing: ProxyThread, monkeypatch: pytest.MonkeyPatch) -> None:
    from pgproxy.analysis.references import References
    from pgproxy.enforce import PolicyGate

    gate = observing.server.gate
    assert isinstance(gate, PolicyGate)
    monkeypatch.setattr(References, "read_all", lambda self, relation: None)  # the analysis misses the star
    gate.cache.clear()
    try:
        with (psycopg.connect(observing.dsn(), autocommit=True, application_name="shadow-guard") as conn,
              pytest.raises(psycopg.errors.InsufficientPrivilege, match="refused a result")):
            conn.execute("SELECT * FROM customers WHERE id = 45")
    finally:
        gate.cache.clear()
    assert "public.customers.email" in wait_for(observing, "result.refused", application_name="shadow-guard")[
        "columns"]


def test_a_server_answer_the_model_did_not_expect_still_ends_the_session(
        observing: ProxyThread, pg: PostgresCluster) -> None:
    """The protocol-model attack of tests/test_portals.py, with the function's call only observed
    (it runs at once): the cursor it opens behind pgproxy's back is still caught before a row leaves."""
    pg.psql("CREATE OR REPLACE FUNCTION open_sneaky() RETURNS refcursor LANGUAGE plpgsql AS $$ "
            "DECLARE c refcursor := 'sneaky'; BEGIN OPEN c FOR SELECT ssn, email FROM customers "
            "WHERE id = 1; RETURN c; END $$; GRANT EXECUTE ON FUNCTION open_sneaky() TO app_scram",
            dbname="app")
    secrets = [value.encode() for value in direct_value(pg, "SELECT ssn || '|' || email FROM customers "
                                                            "WHERE id = 1").split("|")]
    with raw_session(observing) as client:
        _exchange(client, m.Query("BEGIN").encode())
        assert _rows(_exchange(client, m.Query("SELECT open_sneaky()").encode()))
        client.send(_execute("sneaky") + SYNC)
        replies: list[tuple[int, bytes]] = []
        while (message := client.read_message()) is not None:
            replies.append(message)
    assert not _leaked(replies, secrets)
    assert replies and replies[-1][0] == m.ERROR_RESPONSE and b"08P01" in replies[-1][1]
    statement = wait_for(observing, "statement", statement="SELECT open_sneaky()")
    assert (statement["rule"], statement["outcome"]) == ("personal-data", "observed")  # its body reads ssn
    wait_for(observing, "session.desync", session=statement["session"])


def test_observe_mode_says_so(pg: PostgresCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pgproxy.server"), \
            running_proxy(load_config(observe_config(pg, tmp_path))) as proxy:
        started = wait_for(proxy, "proxy.started")
    assert started["mode"] == "observe"
    assert any("OBSERVE MODE" in r.getMessage() and "holds and denies nothing" in r.getMessage()
               for r in caplog.records)


def test_one_rule_observed_while_another_still_holds(pg: PostgresCluster, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = observe_config(pg, tmp_path, mode="enforce", policy=OBSERVED_PII)
    with caplog.at_level(logging.WARNING, logger="pgproxy.server"), running_proxy(load_config(path)) as proxy:
        assert wait_for(proxy, "proxy.started")["observed_rules"] == ["personal-data"]
        assert any("observed rules" in r.getMessage() for r in caplog.records)
        with psycopg.connect(proxy.dsn(), autocommit=True, application_name="shadow-rule") as conn:
            email = conn.execute("SELECT email FROM customers WHERE id = 3").fetchall()
            assert email == [(direct_value(pg, "SELECT email FROM customers WHERE id = 3"),)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="server-access"):
                conn.execute("SELECT query_to_xml('SELECT 1 AS x', true, false, '')")
            # The observed rule does not carry a statement another rule holds: the string is held.
            worker, outcome = run_held(conn, "SELECT email FROM customers WHERE id = 4; "
                                             "CREATE TABLE shadow_rule (id int)")
            request = wait_pending(proxy, "shadow_rule")
            assert request["rule"] == "schema-change"
            assert decide(proxy, request, "deny", reason="not now")[0] == 200
            worker.join(15)
            assert isinstance(outcome[0], psycopg.errors.InsufficientPrivilege)
            # Nor a prepared statement it runs: EXECUTE's own text is observed, what it runs is held.
            conn.execute("PREPARE shadow_p AS UPDATE orders SET status = status")
            worker, outcome = run_held(conn, "SELECT email FROM customers WHERE id = 5; EXECUTE shadow_p")
            request = wait_pending(proxy, "EXECUTE shadow_p")
            assert request["rule"] == "unbounded-write"
            assert decide(proxy, request, "deny", reason="not now")[0] == 200
            worker.join(15)
            assert isinstance(outcome[0], psycopg.errors.InsufficientPrivilege)
            assert not pending(proxy)
        wait_for(proxy, "connection.closed", application_name="shadow-rule")
        found = of(events(proxy), "statement", application_name="shadow-rule")
    assert [(e["rule"], e["action"], e["outcome"]) for e in found] == [
        ("personal-data", "review", "observed"), ("server-access", "deny", "denied"),
        ("schema-change", "review", "rejected"), ("default", "allow", "allowed"),
        ("unbounded-write", "review", "rejected")]
    assert "does not exist" in direct_value(pg, "SELECT coalesce(to_regclass('shadow_rule')::text, "
                                                "'does not exist')")


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def _line(path: Path, fragment: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if fragment in line)


def test_config_errors_name_file_and_line(pg: PostgresCluster, tmp_path: Path) -> None:
    path = observe_config(pg, tmp_path, extra="")  # neither approvals nor audit: nowhere to record
    assert _error(path) == (f"{path}:{_line(path, 'mode: observe')}: mode: observe mode records what it would "
                            "hold or deny only in the audit log, and there is none: add an audit section (or "
                            "approvals)")
    path = observe_config(pg, tmp_path, mode="enforce", policy=OBSERVED_PII, extra="")
    assert _error(path) == (f"{path}:{_line(path, 'observe: true')}: policy.rules[4].observe: rule "
                            "'personal-data' is observed, which records what it would do only in the audit log, "
                            "and there is none: add an audit section (or approvals)")
    allow_rule = ("default: review\nrules:\n  - name: reads\n    kinds: [read]\n    action: allow\n"
                  "    observe: true\n")
    path = observe_config(pg, tmp_path, mode="enforce", policy=allow_rule)
    assert f"{path}:{_line(path, 'observe: true')}: policy.rules[0].observe: rule 'reads' allows, so there is " \
           "nothing to observe" in _error(path)
    path = observe_config(pg, tmp_path, mode="enforce", policy=OBSERVED_PII.replace("observe: true", "observe: 1"))
    assert _error(path) == f"{path}:{_line(path, 'observe: 1')}: policy.rules[4].observe: expected true or " \
                           "false, got 1"
    path = observe_config(pg, tmp_path, mode="observer")
    assert "mode: expected one of passthrough, enforce, observe; got 'observer'; did you mean 'observe'?" in \
           _error(path)
    config = load_config(observe_config(pg, tmp_path))
    enforced = load_config(observe_config(pg, tmp_path, mode="enforce"))
    assert config.policy.observe and not enforced.policy.observe
    assert config.policy.version != enforced.policy.version  # cached decisions never cross modes


def test_check_says_what_is_only_observed(observing: ProxyThread) -> None:
    from pgproxy.check import explain, format_human
    from pgproxy.enforce import PolicyGate

    gate = observing.server.gate
    assert isinstance(gate, PolicyGate)
    schema = gate.catalog.schema("app")
    assert schema is not None
    config = observing.server.config
    explained = explain("SELECT email FROM customers; SET standard_conforming_strings = off", schema, config,
                        agent="agent", groups=frozenset({"agents"}))
    assert [(e.decision.rule, e.to_json()["observed"]) for e in explained] == [
        ("personal-data", True), ("unreadable-text", False)]
    shown = format_human(explained, config.policy)
    assert "action:    REVIEW (observed: recorded in the audit log, not enforced; the statement runs)" in shown
    assert "action:    DENY\n" in shown and "whole query string: DENY (the strictest" in shown
