"""The agent's justification: a leading `/* pgproxy: reason="…" */` comment, read as the server
reads the comment, carried to the approval request, the webhook and the audit log; a rule that
requires one refuses a statement without it at once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pglast
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgproxy.analysis.justification import MAX_REASON_CHARS, MalformedJustification, justification
from pgproxy.config import ConfigError, load_config
from pgproxy.demo.run import demo_file
from pgproxy.pgcluster import PostgresCluster
from tests import corpus
from tests.approvals_support import api, approvals_config, decide, reviewer_token, wait_pending
from tests.harness import ProxyThread, running_proxy, write_enforce_config
from tests.test_audit import events, of
from tests.test_notify import WEBHOOK_SECRET, Receiver, held, receiver, wait_for  # noqa: F401  (receiver: a fixture)

# -- the grammar ------------------------------------------------------------------------------

READ = [
    ('/* pgproxy: reason="ticket 42" */ SELECT 1', "ticket 42"),
    ('\n\t /*pgproxy:reason="ticket 42"*/SELECT 1', "ticket 42"),  # whitespace is optional, and may lead
    ('/* PGPROXY : Reason = "ticket 42" */ SELECT 1', "ticket 42"),  # keywords in any case
    ('/* pgproxy: reason="the ""refund"" ticket" */ SELECT 1', 'the "refund" ticket'),
    ('/* pgproxy:\n   reason="Rückerstattung für 注文 7" */ SELECT 1', "Rückerstattung für 注文 7"),
    (f'/* pgproxy: reason="{"x" * MAX_REASON_CHARS}" */ SELECT 1', "x" * MAX_REASON_CHARS),
]
ABSENT = [
    "SELECT 1",
    "/* a comment of the agent's driver */ SELECT 1",
    'SELECT 1 /* pgproxy: reason="only the start counts" */',
    '/* first */ /* pgproxy: reason="not the leading comment" */ SELECT 1',
    """SELECT '/* pgproxy: reason="inside a string" */'""",
    'SELECT 1; /* pgproxy: reason="a later statement" */ SELECT 2',
    "/* pgproxy reason without a colon is an ordinary comment */ SELECT 1",
]
MALFORMED = [
    ('-- pgproxy: reason="x"\nSELECT 1', "it is a -- comment"),
    ('/* pgproxy: reason="x"', "the comment is not closed"),
    ('/* pgproxy: reason="x /* y" */ SELECT 1', "nested comment"),
    ('/* pgproxy: reason="ends */ here" */ SELECT 1', "not closed by a double quote"),
    ('/* pgproxy: ticket="42" */ SELECT 1', 'expected reason="…"'),
    ('/* pgproxy: reason=ticket-42 */ SELECT 1', 'expected reason="…"'),
    ('/* pgproxy: reason="x" ticket="42" */ SELECT 1', 'expected reason="…"'),
    ('/* pgproxy: reason="  " */ SELECT 1', "the reason is empty"),
    (f'/* pgproxy: reason="{"x" * (MAX_REASON_CHARS + 1)}" */ SELECT 1', "the reason is 501 characters long"),
    (f'/* pgproxy: reason="{"x" * 5000}" */ SELECT 1', "not closed within"),
    ('/* pgproxy: reason="line one\nline two" */ SELECT 1', "U+000A"),
    ('/* pgproxy: reason="approved\u202e by security" */ SELECT 1', "U+202E"),  # right-to-left override
]


@pytest.mark.parametrize(("sql", "reason"), READ)
def test_a_leading_pgproxy_comment_is_the_agents_reason(sql: str, reason: str) -> None:
    assert justification(sql) == reason


@pytest.mark.parametrize("sql", ABSENT)
def test_a_pgproxy_comment_anywhere_else_is_an_ordinary_comment(sql: str) -> None:
    assert justification(sql) is None


@pytest.mark.parametrize(("sql", "problem"), MALFORMED)
def test_a_malformed_pgproxy_comment_is_refused_saying_why_and_how(sql: str, problem: str) -> None:
    with pytest.raises(MalformedJustification) as raised:
        justification(sql)
    assert raised.value.message.startswith("malformed pgproxy justification: ")
    assert problem in raised.value.message
    assert 'start the statement with /* pgproxy: reason="…" */' in raised.value.message


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from('ab "*/\n\u202e') | st.characters(codec="utf-8"), max_size=40),
       st.text(" \t\n", max_size=3))
def test_the_comment_read_is_the_comment_the_server_scans(reason: str, tail: str) -> None:
    """Whatever a reason holds (quotes, comment marks, any character): a justification read is
    exactly the first token of the text as PostgreSQL's scanner reads it, so no piece of the
    comment is SQL the server runs, and nothing of the SQL is part of the reason."""
    sql = f'/* pgproxy: reason="{reason}"{tail} */ SELECT 1'
    try:
        found = justification(sql)
    except MalformedJustification:
        return
    assert found == reason.replace('""', '"')
    tokens = pglast.parser.scan(sql)
    assert tokens[0].name == "C_COMMENT" and sql[tokens[0].end + 1:] == " SELECT 1"


# -- the policy setting -----------------------------------------------------------------------


SCRAM = ("SCRAM-SHA-256$4096:cGdwcm94eS1leGFtcGxlIQ==$XXpFLRHWbhyNSy+rKeWe1SZrYE5kuQHMlA5KPVxp9GQ=:"
         "/YpXHegAWh2xafzbwAGj2diYYifL9CXl7MWFRxFndQ8=")


def _policy_config(tmp_path: Path, rule: str) -> Path:
    path = tmp_path / "pgproxy.yaml"
    path.write_text(f"""\
mode: enforce
auth: {{agents: [{{id: a, scram_secret: "{SCRAM}"}}]}}
routes:
  app: {{host: db, user: u}}
policy:
  rules:
{rule}""")
    return path


def test_a_review_rule_can_require_a_justification(tmp_path: Path) -> None:
    path = _policy_config(tmp_path, """\
    - {name: orders, tables: [orders], action: review, require_justification: true}
    - {name: email, tags: [pii], action: review}
""")
    first, second = load_config(path).policy.rules
    assert first.require_justification and not second.require_justification


@pytest.mark.parametrize(("rule", "expected"), [
    ("    - {name: orders, tables: [orders], action: allow,\n       require_justification: true}\n",
     "{file}:8: policy.rules[0].require_justification: only a review rule can require a justification "
     "(rule 'orders' is allow): it is what the reviewer reads"),
    ("    - name: orders\n      tables: [orders]\n      action: deny\n      require_justification: true\n",
     "{file}:10: policy.rules[0].require_justification: only a review rule can require a justification "
     "(rule 'orders' is deny): it is what the reviewer reads"),
    ("    - {name: orders, tables: [orders], action: review, require_justification: 'yes'}\n",
     "{file}:7: policy.rules[0].require_justification: expected true or false, got 'yes'"),
])
def test_require_justification_errors_name_file_line_and_key(tmp_path: Path, rule: str, expected: str) -> None:
    path = _policy_config(tmp_path, rule)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == expected.replace("{file}", str(path))


# -- end to end -------------------------------------------------------------------------------

REQUIRING_RULE = """rules:
  - name: order-changes
    tables: [orders]
    kinds: [write]
    action: review
    reason: changes orders
    require_justification: true
"""


@pytest.fixture(scope="module")
def justifying(pg: PostgresCluster, receiver: Receiver,  # noqa: F811
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyThread]:
    directory = tmp_path_factory.mktemp("justification")
    (directory / "webhook-secret").write_text(WEBHOOK_SECRET)
    extra = approvals_config(directory, 30) + f"""\
  notify:
    - {{kind: webhook, url: "{receiver.url}/justified", secret_file: webhook-secret}}
audit:
  flush_interval_seconds: 0.05
"""
    policy = demo_file("policy.yaml").replace("rules:\n", REQUIRING_RULE, 1)
    path = write_enforce_config(pg, directory, catalog=corpus.CATALOG, extra=extra, policy=policy)
    with running_proxy(load_config(path)) as proxy:
        yield proxy


def _requests(proxy: ProxyThread, fragment: str) -> list[dict[str, Any]]:
    status, body = api(proxy, "GET", "/api/approvals", token=reviewer_token())
    assert status == 200, body
    return [r for r in body["approvals"] if fragment in r["statement"]]


def _refused(proxy: ProxyThread, sql: str, params: tuple[Any, ...] | None = None,
             application_name: str = "justification") -> psycopg.Error:
    with psycopg.connect(proxy.dsn(), autocommit=True, application_name=application_name) as conn, \
            pytest.raises(psycopg.Error) as raised:
        conn.execute(sql, params)
    return raised.value


def test_the_justification_reaches_the_request_the_webhook_and_the_audit(
        justifying: ProxyThread, receiver: Receiver) -> None:  # noqa: F811
    reason = 'ticket 42: <!channel> says "refund" now'
    quoted = reason.replace('"', '""')
    sql = f'/* pgproxy: reason="{quoted}" */ UPDATE orders SET status = status WHERE id = 81'
    outcome: list[Any] = []
    worker = held(justifying, sql, outcome)
    request = wait_pending(justifying, "WHERE id = 81")
    assert request["justification"] == reason and request["rule"] == "order-changes"
    status, fetched = api(justifying, "GET", f"/api/approvals/{request['id']}", token=reviewer_token())
    assert status == 200 and fetched["justification"] == reason

    wait_for(lambda: any(request["id"].encode() in body for _, body in receiver.payloads("/justified")), "webhook")
    hook = json.loads(next(b for _, b in receiver.payloads("/justified") if request["id"].encode() in b))
    assert (hook["event"], hook["justification"]) == ("approval.requested", reason)
    assert "pgproxy" not in hook["statement"]  # the comment is not repeated in the redacted statement

    assert decide(justifying, request, "deny", reason="not this week")[0] == 200
    worker.join(15)
    assert isinstance(outcome[0], psycopg.errors.InsufficientPrivilege)
    found = events(justifying)
    assert of(found, "approval.requested", approval_id=request["id"])[0]["justification"] == reason
    decision = of(found, "approval.decision", approval_id=request["id"])[0]
    assert (decision["decision"], decision["justification"]) == ("deny", reason)
    wait_for(lambda: of(events(justifying), "statement", approval_id=request["id"]), "the held statement's event")
    statement = of(events(justifying), "statement", approval_id=request["id"])[0]
    assert (statement["outcome"], statement["justification"]) == ("rejected", reason)


def test_a_rule_requiring_a_justification_refuses_a_statement_without_one(justifying: ProxyThread) -> None:
    """Refused at once, with how to add one; the same statement with one is held. The decision
    cache (which drops comments) does not carry one statement's justification to another."""
    without = [
        ("UPDATE orders SET status = status WHERE id = 82", None),
        ("UPDATE orders SET status = status WHERE id = %s AND 82 = 82", (82,)),  # the extended protocol
        # A query string: the personal-data rule (no justification needed) is the first review.
        ("SELECT email FROM customers WHERE id = 82; UPDATE orders SET status = status WHERE id = 82", None),
        ('/* an ordinary comment */ /* pgproxy: reason="not leading" */ UPDATE orders SET status = status '
         "WHERE id = 82", None),
    ]
    for sql, params in without:
        error = _refused(justifying, sql, params, application_name="unjustified")
        assert isinstance(error, psycopg.errors.InsufficientPrivilege), (sql, error)
        assert error.diag.message_primary == (
            "pgproxy refused this statement (rule order-changes): the rule requires a justification; start the "
            'statement with /* pgproxy: reason="…" */'), sql
        assert "the reviewer reads the reason as your claim" in (error.diag.message_detail or "")
    # What a prepared statement runs counts, also beside a statement held by another rule.
    with psycopg.connect(justifying.dsn(), autocommit=True, application_name="unjustified") as conn:
        conn.execute("PREPARE change_82 AS UPDATE orders SET status = status WHERE id = 82")
        for sql in ("EXECUTE change_82", "SELECT email FROM customers WHERE id = 82; EXECUTE change_82"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as raised:
                conn.execute(sql)
            assert "(rule order-changes): the rule requires a justification" in str(raised.value), sql
            without.append((sql, None))
    assert not _requests(justifying, "= 82")  # nobody was asked
    wait_for(lambda: len(of(events(justifying), "statement", application_name="unjustified",
                            outcome="unjustified")) == len(without), "the refusals' audit events")
    refused = of(events(justifying), "statement", application_name="unjustified")
    assert [e["outcome"] for e in refused if e["outcome"] != "allowed"] == ["unjustified"] * len(without)

    outcome: list[Any] = []
    worker = held(justifying, '/* pgproxy: reason="ticket 43" */ UPDATE orders SET status = status WHERE id = 82',
                  outcome)
    request = wait_pending(justifying, "WHERE id = 82")
    assert request["justification"] == "ticket 43"
    assert decide(justifying, request, "deny", reason="no")[0] == 200
    worker.join(15)

    with psycopg.connect(justifying.dsn(), autocommit=True) as conn:  # extended protocol, with parameters
        results: list[Any] = []

        def run() -> None:
            try:
                conn.execute('/* pgproxy: reason="ticket 44" */ UPDATE orders SET status = %s WHERE id = 83',
                             ("paid",))
            except psycopg.Error as exc:
                results.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        request = wait_pending(justifying, "WHERE id = 83")
        assert (request["justification"], request["parameters"]) == ("ticket 44", ["paid"])
        assert decide(justifying, request, "deny", reason="no")[0] == 200
        thread.join(15)
        assert isinstance(results[0], psycopg.errors.InsufficientPrivilege)


@pytest.mark.parametrize(("comment", "problem"), [
    # The server ends this comment at the */ inside the quotes: what follows is the statement.
    ('/* pgproxy: reason="ticket 42 */', "not closed by a double quote"),
    ('/* pgproxy: reason="" */', "the reason is empty"),
    (f'/* pgproxy: reason="{"x" * (MAX_REASON_CHARS + 1)}" */', "the reason is 501 characters long"),
    ('/* pgproxy: because="ticket 42" */', 'expected reason="…"'),
])
def test_a_held_statement_with_a_malformed_justification_is_refused(
        justifying: ProxyThread, comment: str, problem: str) -> None:
    """Also under a rule that does not require one: the agent meant to say why, and is told what to fix."""
    sql = f"{comment} SELECT email FROM customers WHERE id = 84"
    error = _refused(justifying, sql)
    assert isinstance(error, psycopg.errors.SyntaxError), error
    assert error.diag.message_primary is not None
    assert error.diag.message_primary.startswith("malformed pgproxy justification: ")
    assert problem in error.diag.message_primary
    assert not _requests(justifying, "id = 84")


def test_observe_mode_records_but_does_not_refuse_for_a_missing_justification(
        pg: PostgresCluster, tmp_path: Path) -> None:
    """Observe mode holds and refuses nothing the policy decides: a statement its rule would refuse
    for lack of a justification (or for a malformed one) runs, and the audit says it was observed."""
    extra = approvals_config(tmp_path, 30) + "audit:\n  flush_interval_seconds: 0.05\n"
    policy = demo_file("policy.yaml").replace("rules:\n", REQUIRING_RULE, 1)
    path = write_enforce_config(pg, tmp_path, catalog=corpus.CATALOG, extra=extra, policy=policy)
    path.write_text(path.read_text().replace("mode: enforce\n", "mode: observe\n", 1))
    with running_proxy(load_config(path)) as proxy, \
            psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for sql in ("UPDATE orders SET status = status WHERE id = 83",
                    '/* pgproxy: reason="" */ UPDATE orders SET status = status WHERE id = 83'):
            assert conn.execute(sql).rowcount == 1, sql
        found = [e for e in of(events(proxy), "statement") if "UPDATE orders" in e["statement"]]
        assert [(e["rule"], e["outcome"]) for e in found] == [("order-changes", "observed")] * 2, found
