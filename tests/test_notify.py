"""Notifiers, received by a real local HTTP server; Slack interactivity with real signatures."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgproxy.approvals.notify import redact, webhook_signature
from pgproxy.config import load_config
from pgproxy.demo.run import demo_file
from pgproxy.pgcluster import PostgresCluster
from tests import corpus
from tests.approvals_support import api, approvals_config, decide, direct_value, reviewer_token, wait_pending
from tests.harness import ProxyThread, running_proxy, write_enforce_config

WEBHOOK_SECRET = "webhook-hmac-secret-0123456789abcdef"
SLACK_SECRET = "slack-signing-secret-0123456789abcdef"
SLACK_TOKEN = "xoxb-0123456789-test-bot-token"
LITERAL = "secret-literal@example.com"


class Receiver:
    """A local HTTP server that records what it receives; /flaky fails twice before it accepts, and
    /slack-api/ answers as Slack's Web API does (chat.postMessage: the new message's channel and ts)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.flaky_calls = 0
        self.slack_answers: list[tuple[bytes, dict[str, Any]]] = []  # what /slack-api/ answered, to each body
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.received.append((self.path, dict(self.headers), body))
                status = 200
                if self.path == "/flaky":
                    receiver.flaky_calls += 1
                    status = 500 if receiver.flaky_calls <= 2 else 200
                answer = b""
                if self.path.startswith("/slack-api/"):
                    sent = json.loads(body)
                    ts = sent.get("ts") or f"1700000000.{len(receiver.received):06d}"
                    answer = json.dumps({"ok": True, "channel": sent["channel"], "ts": ts}).encode()
                    receiver.slack_answers.append((body, json.loads(answer)))
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def payloads(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        return [(headers, body) for p, headers, body in self.received if p == path]

    def about(self, path: str, approval_id: str) -> list[dict[str, Any]]:
        """The JSON bodies received at `path` that mention `approval_id`, in order."""
        return [json.loads(body) for _, body in self.payloads(path) if approval_id.encode() in body]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    running.thread.start()
    yield running
    running.server.shutdown()


@pytest.fixture(scope="module")
def notifying(pg: PostgresCluster, receiver: Receiver,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyThread]:
    directory = tmp_path_factory.mktemp("notify")
    (directory / "webhook-secret").write_text(WEBHOOK_SECRET)
    (directory / "slack-secret").write_text(SLACK_SECRET)
    (directory / "slack-token").write_text(SLACK_TOKEN)
    # The DBAs review too (and only they review the dba-only rule).
    approvals = approvals_config(directory, 30).replace("groups: [reviewers]", "groups: [reviewers, dba]")
    extra = approvals + f"""\
  notify:
    - {{kind: slack, url: "{receiver.url}/slack"}}
    - {{kind: slack, token_file: slack-token, channel: C0PGPROXY, api_url: "{receiver.url}/slack-api"}}
    - {{kind: teams, url: "{receiver.url}/teams"}}
    - {{kind: webhook, url: "{receiver.url}/hook", secret_file: webhook-secret}}
    - {{kind: webhook, url: "{receiver.url}/flaky", secret_file: webhook-secret}}
    - {{kind: webhook, url: "{receiver.url}/other-rule", secret_file: webhook-secret, rules: [schema-change]}}
  slack:
    signing_secret_file: slack-secret
    users:
      U0ALICE: {{reviewer: alice, groups: [reviewers]}}
      U0DANA: {{reviewer: dana, groups: [dba]}}
"""
    policy = demo_file("policy.yaml").replace("rules:\n", """rules:
  - name: dba-only
    tags_read: [pii.ssn]
    action: review
    reason: social security numbers are for the DBAs
    reviewer_groups: [dba]
  - name: short-lived
    tables: [orders]
    kinds: [write]
    action: review
    reason: changes orders
    timeout_seconds: 1
""", 1)
    path = write_enforce_config(pg, directory, catalog=corpus.CATALOG, extra=extra, policy=policy)
    with running_proxy(load_config(path)) as proxy:
        yield proxy


def held(proxy: ProxyThread, sql: str, outcome: list[Any]) -> threading.Thread:
    def run() -> None:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            try:
                outcome.append(conn.execute(sql).fetchall())
            except psycopg.Error as exc:
                outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    return worker


def wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + 20
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_redaction_uses_postgres_scanner() -> None:
    assert redact("SELECT email FROM customers WHERE email = 'a@b.c' AND id > 41 /* 'x' */ AND note = $$y$$") \
        == "SELECT email FROM customers WHERE email = ? AND id > ? AND note = ?"
    assert "ssn" not in redact("SELECT 1 -- ssn 123-45-6789")
    # Non-ASCII text before a literal does not shift what is replaced (no piece of a value shows).
    assert redact("SELECT * FROM customers WHERE note = 'é€𝄞' AND ssn = '123-45-6789' AND name = 'Zoë'") == \
        "SELECT * FROM customers WHERE note = ? AND ssn = ? AND name = ?"


def test_payloads_carry_context_but_no_literal(notifying: ProxyThread, receiver: Receiver) -> None:
    outcome: list[Any] = []
    worker = held(notifying, f"SELECT id, email FROM customers WHERE email = '{LITERAL}'", outcome)
    request = wait_pending(notifying, "WHERE email =")
    wait_for(lambda: all(any(request["id"].encode() in body for _, body in receiver.payloads(path))
                         for path in ("/slack", "/teams", "/hook")), "the three notices")
    wait_for(lambda: receiver.flaky_calls >= 3, "the retried webhook")

    for path in ("/slack", "/teams", "/hook", "/flaky", "/slack-api/chat.postMessage"):
        for _, body in receiver.payloads(path):
            assert LITERAL.encode() not in body and b"secret-literal" not in body, path

    slack = json.loads(next(b for _, b in receiver.payloads("/slack") if request["id"].encode() in b))
    text = json.dumps(slack)
    assert "WHERE email = ?" in text and "public.customers.email" in text and "personal-data" in text
    buttons = {e["action_id"]: e for e in slack["blocks"][-1]["elements"]}
    assert buttons["open"]["url"] == request["url"]
    assert buttons["approve"]["value"] == f"{request['id']}:{request['statement_sha256']}"

    teams = json.loads(next(b for _, b in receiver.payloads("/teams") if request["id"].encode() in b))
    card = teams["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["content"]["actions"][0] == {"type": "Action.OpenUrl", "title": "Review", "url": request["url"]}

    headers, body = next((h, b) for h, b in receiver.payloads("/hook") if request["id"].encode() in b)
    expected = webhook_signature(WEBHOOK_SECRET, headers["X-Pgproxy-Timestamp"], body)
    assert hmac.compare_digest(headers["X-Pgproxy-Signature"], expected)
    hook = json.loads(body)
    assert (hook["event"], hook["agent"], hook["rule"], hook["parameters"]) == (
        "approval.requested", "agent", "personal-data", 0)
    assert not receiver.payloads("/other-rule")  # that notifier is for another rule

    assert decide(notifying, request, "deny", reason="cleanup")[0] == 200
    worker.join(15)


HOSTILE = "<!channel> <https://evil.example/approve|Approve> [Approve](https://evil.example/approve) <at>dana</at>"


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _slack_texts(message: dict[str, Any]) -> Iterator[str]:
    """Every text of a Slack message that Slack reads as mrkdwn, checked to be verbatim (no auto links)."""
    yield message["text"]
    for block in message["blocks"]:
        for text in [block.get("text"), *block.get("fields", [])]:
            if text is not None and text["type"] == "mrkdwn":
                assert text.get("verbatim") is True, text
                yield text["text"]


def _teams_markdown(element: Any) -> Iterator[str]:
    """Every text of an Adaptive Card that Teams reads as Markdown (TextBlocks, facts); a TextRun never is."""
    if isinstance(element, list):
        for item in element:
            yield from _teams_markdown(item)
    elif isinstance(element, dict):
        if element.get("type") == "TextBlock":
            yield element["text"]
        for fact in element.get("facts", []):
            yield fact["title"]
            yield fact["value"]
        for key, value in element.items():
            if key != "inlines":
                yield from _teams_markdown(value)


def test_chat_messages_are_inert(notifying: ProxyThread, receiver: Receiver) -> None:
    """An agent's name and the statement's identifiers reach Slack and Teams as text: no mention, no
    link, no fake Approve button, and the statement's code block cannot be closed from inside."""
    agent = "<!here> <https://evil.example/|Approve>"
    reason = f"{HOSTILE} ``` *bold*"  # the agent's justification, as hostile as its identifiers
    sql = (f'/* pgproxy: reason="{reason}" */ '
           f'SELECT email AS "{HOSTILE}", phone AS "``` *bold* <!channel> ```" FROM customers WHERE id = 64')
    outcome: list[Any] = []

    def run() -> None:
        with psycopg.connect(notifying.dsn(user=agent), autocommit=True) as conn:
            try:
                outcome.append(conn.execute(sql).fetchall())
            except psycopg.Error as exc:
                outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    request = wait_pending(notifying, "WHERE id = 64")
    assert (request["agent"], request["justification"]) == (agent, reason)
    wait_for(lambda: all(any(request["id"].encode() in body for _, body in receiver.payloads(path))
                         for path in ("/slack", "/teams")), "the chat notices")

    slack = json.loads(next(b for _, b in receiver.payloads("/slack") if request["id"].encode() in b))
    texts = list(_slack_texts(slack))
    for text in texts:
        # Slack's mentions and links are all <...>: with < and > escaped there are none.
        assert "<" not in text and ">" not in text, text
    shown = "\n".join(texts)
    assert "&lt;!channel&gt; &lt;https://evil.example/approve|Approve&gt;" in shown
    assert "`&lt;!here&gt; &lt;https://evil.example/|Approve&gt;`" in shown  # the agent, in a code span
    claimed = next(t for t in texts if t.startswith("*Justification (the agent's claim, not checked by pgproxy)*"))
    assert claimed.endswith("\n`&lt;!channel&gt; &lt;https://evil.example/approve|Approve&gt; [Approve](https://"
                            "evil.example/approve) &lt;at&gt;dana&lt;/at&gt; \u02cb\u02cb\u02cb *bold*`")  # one span
    block = next(t for t in texts if t.startswith("```"))
    assert block.endswith("```") and "`" not in block[3:-3]  # one code block, nothing inside ends it
    assert "\u02cb\u02cb\u02cb *bold* &lt;!channel&gt; \u02cb\u02cb\u02cb" in block
    assert slack["unfurl_links"] is False

    teams = json.loads(next(b for _, b in receiver.payloads("/teams") if request["id"].encode() in b))
    card = teams["attachments"][0]["content"]
    for text in _teams_markdown(card["body"]):
        assert "[" not in text and "<" not in text and "https://" not in text, text
    runs = [s for s in _strings(card["body"]) if HOSTILE in s or agent in s]
    assert len(runs) == 3  # the statement, the agent and the justification, each as plain text (TextRun)
    assert reason in runs and "Justification (the agent's claim, not checked by pgproxy): " in _strings(card["body"])
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Review", "url": request["url"]}]

    assert decide(notifying, request, "deny", reason="cleanup")[0] == 200
    worker.join(15)
    assert isinstance(outcome[0], psycopg.errors.InsufficientPrivilege)


def slack_post(proxy: ProxyThread, payload: dict[str, Any], *, secret: str = SLACK_SECRET,
               timestamp: int | str | None = None,
               headers: dict[str, str | None] | None = None) -> tuple[int, dict[str, Any]]:
    """Slack's POST of `payload`, signed with `secret`; `headers` replace (or, None, drop) Slack's own."""
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    stamp = str(timestamp if timestamp is not None else int(time.time()))
    signature = "v0=" + hmac.new(secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    sent: dict[str, str | None] = {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signature,
                                   **(headers or {})}
    request = urllib.request.Request(f"{proxy.server.approvals_url}/slack/interactivity", data=body, method="POST",
                                     headers={**{k: v for k, v in sent.items() if v is not None},
                                              "Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_slack_buttons_approve_with_a_valid_signature(notifying: ProxyThread, pg: PostgresCluster) -> None:
    sql = "SELECT email FROM customers WHERE id = 61"
    outcome: list[Any] = []
    worker = held(notifying, sql, outcome)
    request = wait_pending(notifying, "WHERE id = 61")

    alice = press(request, "approve", "U0ALICE")
    assert slack_post(notifying, alice, secret="not-the-slack-secret-0123456789")[0] == 401
    assert slack_post(notifying, alice, timestamp=int(time.time()) - 600)[0] == 401  # stale: a replay
    assert slack_post(notifying, press(request, "approve", "U0MALLORY"))[0] == 403  # not mapped to a reviewer
    time.sleep(0.2)
    assert worker.is_alive()  # none of those decided anything
    status, answer = slack_post(notifying, alice)
    assert (status, answer["text"]) == (200, "approved by alice")
    worker.join(15)
    assert outcome == [[(direct_value(pg, sql),)]]


def press(request: dict[str, Any], action: str, user: str) -> dict[str, Any]:
    """Slack's block_actions payload for a button of the message about `request`."""
    return {"type": "block_actions", "user": {"id": user},
            "actions": [{"action_id": action, "value": f"{request['id']}:{request['statement_sha256']}"}]}


def test_slack_users_have_only_the_groups_the_config_gives_them(notifying: ProxyThread, pg: PostgresCluster) -> None:
    """A rule for the DBAs only: a Slack reviewer who is not a DBA is refused (and does not count
    towards anything), a DBA's press approves it, end to end through the proxy."""
    sql = "SELECT ssn FROM customers WHERE id = 63"
    outcome: list[Any] = []
    worker = held(notifying, sql, outcome)
    request = wait_pending(notifying, "WHERE id = 63", token=reviewer_token("dana", groups=("dba",)))
    assert request["rule"] == "dba-only"
    status, answer = slack_post(notifying, press(request, "approve", "U0ALICE"))
    assert (status, answer["text"]) == (403, '"alice" is not in a reviewer group of this request (dba)')
    status, answer = slack_post(notifying, press(request, "approve", "U0NOBODY"))
    assert status == 403 and "not mapped to a pgproxy reviewer" in answer["text"]
    time.sleep(0.2)
    assert worker.is_alive()  # neither decided anything
    status, answer = slack_post(notifying, press(request, "approve", "U0DANA"))
    assert (status, answer["text"]) == (200, "approved by dana")
    worker.join(15)
    assert outcome == [[(direct_value(pg, sql),)]]


def test_malformed_slack_requests_get_400_and_decide_nothing(notifying: ProxyThread, pg: PostgresCluster) -> None:
    """Every header and field pgproxy reads from Slack (pgproxy.approvals.inputs.SLACK_HEADERS and
    SLACK_FIELDS), fed every wrong type and form of its kind, signed as Slack would: a 400 naming it."""
    from pgproxy.approvals.inputs import SLACK_FIELDS, SLACK_HEADERS
    from tests.malformed import MALFORMED, MISSING

    sql = "SELECT email FROM customers WHERE id = 65"
    outcome: list[Any] = []
    worker = held(notifying, sql, outcome)
    request = wait_pending(notifying, "WHERE id = 65")
    tried = 0
    for header, entry in SLACK_HEADERS.items():
        for value in [*MALFORMED[entry.kind], MISSING]:
            sent = None if value is MISSING else value
            if header == "X-Slack-Request-Timestamp" and sent is not None:
                status, body = slack_post(notifying, press(request, "approve", "U0ALICE"), timestamp=sent)
            else:
                status, body = slack_post(notifying, press(request, "approve", "U0ALICE"), headers={header: sent})
            assert status == 400 and header in body["error"], (header, value, status, body)
            tried += 1
    for field, entry in SLACK_FIELDS.items():
        for value in [*MALFORMED[entry.kind], *([MISSING] if entry.required else [])]:
            payload = press(request, "approve", "U0ALICE")
            where, _, key = field.replace("[0]", "").partition(".")
            target = payload["user"] if where == "user" else payload["actions"][0]
            if value is MISSING:
                del target[key]
            else:
                target[key] = value
            status, body = slack_post(notifying, payload)
            assert status == 400 and f'"{field}"' in body["error"], (field, value, status, body)
            tried += 1
    shapes: list[dict[str, Any]] = [{"actions": []}, {"user": "U0ALICE"}, {"actions": "approve"}, {"actions": [5]}]
    for shape in shapes:  # not a block action at all
        status, body = slack_post(notifying, {**press(request, "approve", "U0ALICE"), **shape})
        assert status == 400 and "not a Slack block action" in body["error"], (shape, body)
    assert tried > 40
    time.sleep(0.2)
    assert worker.is_alive()  # none of those decided anything
    status, answer = slack_post(notifying, press(request, "deny", "U0ALICE"))
    assert (status, answer["text"]) == (200, "denied by alice")
    worker.join(15)
    assert isinstance(outcome[0], psycopg.errors.InsufficientPrivilege)


def test_a_failing_notifier_never_blocks_the_hold(notifying: ProxyThread, receiver: Receiver, pg: PostgresCluster,
                                                 tmp_path: Path) -> None:
    extra = approvals_config(tmp_path, 30) + """\
  notify:
    - {kind: slack, url: "http://127.0.0.1:9/unreachable"}
"""
    path = write_enforce_config(pg, tmp_path, catalog=corpus.CATALOG, extra=extra)
    with running_proxy(load_config(path)) as proxy:
        sql = "SELECT phone FROM customers WHERE id = 62"
        outcome: list[Any] = []
        worker = held(proxy, sql, outcome)
        request = wait_pending(proxy, "WHERE id = 62")
        assert decide(proxy, request)[0] == 200
        worker.join(15)
        assert outcome == [[(direct_value(pg, sql),)]]


# -- the chat follows the request to its end ------------------------------------------------------

TITLES = {"approved": "Statement approved", "denied": "Statement denied", "expired": "Approval request expired",
          "withdrawn": "Approval request withdrawn"}


def outcome_notices(receiver: Receiver, request: dict[str, Any], status: str) -> dict[str, Any]:
    """What each notifier said about how `request` ended, checked for what every outcome shares: the
    Slack Web API message edited in place (the one chat.postMessage posted: same channel and ts, its
    Approve and Deny buttons gone), follow-ups to the Slack and Teams webhooks naming the request, and
    the webhook's signed event. Returns them by notifier."""
    rid = request["id"]
    wait_for(lambda: receiver.about("/slack-api/chat.update", rid) and len(receiver.about("/slack", rid)) == 2
             and len(receiver.about("/teams", rid)) == 2 and len(receiver.about("/hook", rid)) == 2,
             f"the notices that {rid} is {status}")
    (posted,) = [answer for body, answer in receiver.slack_answers
                 if rid.encode() in body and b'"ts"' not in body]  # chat.postMessage's answer
    (update,) = receiver.about("/slack-api/chat.update", rid)
    assert (update["channel"], update["ts"]) == ("C0PGPROXY", posted["ts"])
    updating = [h for h, b in receiver.payloads("/slack-api/chat.update") if rid.encode() in b]
    assert updating[0]["Authorization"] == f"Bearer {SLACK_TOKEN}"
    assert update["blocks"][0]["text"]["text"] == TITLES[status]
    assert [button["action_id"] for button in update["blocks"][-1]["elements"]] == ["open"]
    assert update["blocks"][-1]["elements"][0]["url"] == request["url"]

    follow_up = receiver.about("/slack", rid)[1]
    assert follow_up["blocks"][0]["text"]["text"] == TITLES[status]
    assert f"About approval request `{rid}`, held at " in json.dumps(follow_up["blocks"])
    assert [button["action_id"] for button in follow_up["blocks"][-1]["elements"]] == ["open"]

    card = receiver.about("/teams", rid)[1]["attachments"][0]["content"]
    assert card["body"][0]["text"] == f"Update: {TITLES[status].lower()}"
    assert any(text.startswith(f"approval request {rid}, held at ") for text in _strings(card["body"]))
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open", "url": request["url"]}]

    headers, body = next((h, b) for h, b in receiver.payloads("/hook") if rid.encode() in b
                         and b'"approval.requested"' not in b)
    assert hmac.compare_digest(headers["X-Pgproxy-Signature"],
                               webhook_signature(WEBHOOK_SECRET, headers["X-Pgproxy-Timestamp"], body))
    hook = json.loads(body)
    assert (hook["id"], hook["status"], hook["url"]) == (rid, status, request["url"])
    for texts in (_slack_texts(update), _slack_texts(follow_up)):
        for text in texts:
            assert "<" not in text and ">" not in text, text  # no mention or link from anyone's words
    return {"update": update, "follow_up": follow_up, "teams": card, "hook": hook}


def _outcome_text(message: dict[str, Any]) -> str:
    """The Slack message's section that says how the request ended."""
    return str(next(b["text"]["text"] for b in message["blocks"]
                    if "text" in b and b["text"]["text"].startswith(("*Approved*", "*Denied*", "*Expired*",
                                                                      "*Withdrawn*"))))


def test_the_chat_follows_a_decision(notifying: ProxyThread, receiver: Receiver, pg: PostgresCluster) -> None:
    sql = f"SELECT id, email FROM customers WHERE email = '{LITERAL}' OR id = 66"
    outcome: list[Any] = []
    worker = held(notifying, sql, outcome)
    request = wait_pending(notifying, "OR id = 66")
    assert decide(notifying, request, "approve", reason="ticket 7")[0] == 200
    worker.join(15)
    assert outcome == [[(66, direct_value(pg, "SELECT email FROM customers WHERE id = 66"))]]
    told = outcome_notices(receiver, request, "approved")
    assert _outcome_text(told["update"]) == _outcome_text(told["follow_up"]) == "*Approved* by `alice`"
    assert {"Approved: ", "by alice"} <= set(_strings(told["teams"]["body"]))
    assert (told["hook"]["event"], told["hook"]["decided_by"], told["hook"]["approved_by"],
            told["hook"]["decision_reason"]) == ("approval.decided", "alice", ["alice"], "ticket 7")
    for path in ("/slack", "/teams", "/hook", "/slack-api/chat.update"):
        assert all(LITERAL.encode() not in body for _, body in receiver.payloads(path)), path

    # A reviewer's reason is shown as inertly as the agent's words.
    sql = "SELECT email FROM customers WHERE id = 67"
    outcome = []
    worker = held(notifying, sql, outcome)
    request = wait_pending(notifying, "WHERE id = 67")
    assert decide(notifying, request, "deny", reason=HOSTILE)[0] == 200
    worker.join(15)
    told = outcome_notices(receiver, request, "denied")
    assert _outcome_text(told["update"]) == (
        "*Denied* by `alice`: `&lt;!channel&gt; &lt;https://evil.example/approve|Approve&gt; "
        "[Approve](https://evil.example/approve) &lt;at&gt;dana&lt;/at&gt;`")
    for text in _teams_markdown(told["teams"]["body"]):
        assert "[" not in text and "<" not in text and "https://" not in text, text
    assert f"by alice: {HOSTILE}" in set(_strings(told["teams"]["body"]))  # a TextRun: never read as Markdown
    assert (told["hook"]["event"], told["hook"]["decision_reason"]) == ("approval.decided", HOSTILE)


def test_the_chat_follows_an_expiry_and_a_withdrawal(notifying: ProxyThread, receiver: Receiver) -> None:
    outcome: list[Any] = []
    worker = held(notifying, "UPDATE orders SET status = status WHERE id = 68", outcome)  # expires after 1 s
    worker.join(15)
    assert isinstance(outcome[0], psycopg.errors.QueryCanceled)
    status, body = api(notifying, "GET", "/api/approvals?status=expired", token=reviewer_token())
    assert status == 200
    (request,) = [r for r in body["approvals"] if "WHERE id = 68" in r["statement"]]
    told = outcome_notices(receiver, request, "expired")
    assert _outcome_text(told["update"]).startswith("*Expired*: nobody decided before ")
    assert (told["hook"]["event"], told["hook"]["decided_by"]) == ("approval.expired", None)

    with psycopg.connect(notifying.dsn(), autocommit=True) as conn:
        errors: list[psycopg.Error] = []

        def run() -> None:
            try:
                conn.execute("SELECT phone FROM customers WHERE id = 69")
            except psycopg.Error as exc:
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        request = wait_pending(notifying, "WHERE id = 69")
        conn.cancel_safe(timeout=10)
        worker.join(15)
    assert isinstance(errors[0], psycopg.errors.QueryCanceled)
    told = outcome_notices(receiver, request, "withdrawn")
    assert _outcome_text(told["update"]) == "*Withdrawn*: the agent cancelled the statement or its connection ended"
    assert told["hook"]["event"] == "approval.withdrawn"


def _notify_config(tmp_path: Path, notifier: str) -> Path:
    (tmp_path / "signing-key").write_text("proxy-signing-key-0123456789abcdef0123")
    (tmp_path / "reviewer-secret").write_text("reviewer-side-secret-0123456789abcdef")
    (tmp_path / "slack-token").write_text(SLACK_TOKEN)
    (tmp_path / "user-token").write_text("xoxp-a-user-token-not-a-bot-token")
    path = tmp_path / "pgproxy.yaml"
    path.write_text(f"""\
routes:
  app: {{host: db, user: u}}
auth: {{jwt: {{algorithms: [HS256], secret_file: reviewer-secret}}}}
approvals:
  signing_key_file: signing-key
  reviewers:
    jwt: {{algorithms: [HS256], secret_file: reviewer-secret}}
  notify:
{notifier}""")
    return path


def test_slack_through_the_web_api_needs_a_bot_token_and_a_channel_id(tmp_path: Path) -> None:
    path = _notify_config(tmp_path, """\
    - {kind: slack, token_file: slack-token, channel: C024BE91L, rules: [personal-data]}
    - {kind: slack, url: "https://hooks.slack.com/services/T0/B0/x"}
""")
    api_notifier, webhook_notifier = load_config(path).approvals.notifiers  # type: ignore[union-attr]
    assert (api_notifier.token, api_notifier.channel, api_notifier.api_url, api_notifier.url) == (
        SLACK_TOKEN, "C024BE91L", "https://slack.com/api", "")
    assert SLACK_TOKEN not in repr(api_notifier)
    assert (webhook_notifier.token, webhook_notifier.url) == (None, "https://hooks.slack.com/services/T0/B0/x")


@pytest.mark.parametrize(("notifier", "expected"), [
    ("    - {kind: slack, token_file: slack-token}\n",
     "{file}:9: approvals.notify[0].token_file: a bot token needs channel: the id of the Slack channel to post in "
     "(e.g. C024BE91L)"),
    ("    - {kind: slack, token_file: slack-token, channel: '#approvals'}\n",
     "{file}:9: approvals.notify[0].channel: expected a Slack channel id (C, G or D and capital letters and "
     "digits, e.g. C024BE91L), got '#approvals'; chat.update needs the id, not the name"),
    ("    - {kind: slack, token_file: user-token, channel: C024BE91L}\n",
     "{file}:9: approvals.notify[0].token_file: expected a Slack bot token (xoxb-…)"),
    ("    - {kind: slack, token_file: slack-token, url: 'https://hooks.slack.com/x', channel: C024BE91L}\n",
     "{file}:9: approvals.notify[0].url: cannot be combined with token_file; set only one of them"),
    ("    - {kind: teams, url: 'https://teams.example/x', token_file: slack-token}\n",
     "{file}:9: approvals.notify[0].token_file: only for kind slack with a bot token (token_env or token_file)"),
    ("    - {kind: slack, url: 'https://hooks.slack.com/x', channel: C024BE91L}\n",
     "{file}:9: approvals.notify[0].channel: only for kind slack with a bot token (token_env or token_file)"),
])
def test_slack_web_api_errors_name_file_line_and_key(tmp_path: Path, notifier: str, expected: str) -> None:
    from pgproxy.config import ConfigError

    path = _notify_config(tmp_path, notifier)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == expected.replace("{file}", str(path))
    assert "xoxp-a-user" not in str(raised.value) and SLACK_TOKEN not in str(raised.value)
