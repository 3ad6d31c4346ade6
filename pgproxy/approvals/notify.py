"""Telling reviewers: Slack (Block Kit), Microsoft Teams (Adaptive Card) and a generic JSON webhook
signed with HMAC-SHA256. Messages never carry a literal value: the statement is shown with its
constants replaced by `?` (PostgreSQL's own scanner finds them) and parameters only counted; the
full detail is on the authenticated page. Delivery runs in the background, is retried, and a
notifier that fails is logged: it never blocks or fails the hold.

When a request ends (decided, expired, withdrawn), the chat follows: a Slack message posted with a
bot token (Web API `chat.postMessage`, which answers the message's channel and `ts`) is edited in
place with `chat.update`. An incoming webhook, Slack's or Teams', answers no message id and offers
no way to edit what it posted (editing a Teams message needs a registered Bot Framework bot), so
there the outcome is a follow-up message naming the request. The webhook gets an outcome event."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pglast

from pgproxy.approvals.display import chat_statement
from pgproxy.store import ApprovalRequest, Status

log = logging.getLogger("pgproxy.notify")

_CONSTANTS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
RETRY_DELAYS = (0.5, 2.0, 5.0)


SLACK_API = "https://slack.com/api"


@dataclass(frozen=True, slots=True)
class NotifierConfig:
    kind: str  # slack | teams | webhook
    url: str = ""  # the webhook (incoming webhook for Slack and Teams); empty for Slack's Web API
    secret: str | None = field(default=None, repr=False)  # webhook: the HMAC key
    rules: frozenset[str] = frozenset()  # only requests held by these rules (empty: all)
    # Slack's Web API: a bot token (chat:write) and the channel id to post in; messages are then
    # edited in place when the request ends. `api_url` is Slack's API base (tests point it elsewhere).
    token: str | None = field(default=None, repr=False)
    channel: str | None = None
    api_url: str = SLACK_API


def redact(sql: str) -> str:
    """The statement with every literal replaced by `?` (comments dropped: they may hold values too)."""
    try:
        tokens = pglast.parser.scan(sql)
    except pglast.parser.ParseError:
        return "(statement not shown: it cannot be tokenized; see the page)"
    # Token offsets count characters (pglast's, of the text as given), not bytes.
    parts: list[str] = []
    position = 0
    for token in tokens:
        parts.append(sql[position:token.start])
        if token.name in _CONSTANTS:
            parts.append("?")
        elif token.name in ("C_COMMENT", "SQL_COMMENT"):
            parts.append("")
        else:
            parts.append(sql[token.start:token.end + 1])
        position = token.end + 1
    return " ".join("".join(parts).split())


def tagged_columns(request: ApprovalRequest) -> list[str]:
    found: list[str] = []
    for statement in request.analysis.get("statements", []):
        for how in ("reads", "writes"):
            for column in statement.get(how, []):
                if column["tags"]:
                    found.append(f"{column['column']} ({', '.join(column['tags'])})")
        for derived in statement.get("derives", []):  # what DDL makes that will carry the tags
            found.append(f"{derived['object']} (will carry {', '.join(derived['tags'])})")
    return sorted(set(found))


# How a request ended -> the event the webhook gets.
OUTCOME_EVENTS = {Status.APPROVED: "approval.decided", Status.DENIED: "approval.decided",
                  Status.EXPIRED: "approval.expired", Status.WITHDRAWN: "approval.withdrawn"}


def summary(request: ApprovalRequest, link: str) -> dict[str, Any]:
    """What every notifier may say: no literal value of the statement (the justification is the agent's
    own words, as it wrote them)."""
    return {
        "event": "approval.requested", "id": request.id, "url": link, "agent": request.agent,
        "groups": list(request.groups), "database": request.database, "rule": request.rule,
        "reason": request.reason, "statement": chat_statement(request),
        "parameters": len(request.parameters), "statement_sha256": request.statement_sha256,
        "tagged_columns": tagged_columns(request), "application_name": request.application_name,
        "required_approvals": request.required_approvals, "expires_at": request.expires_at,
        "justification": request.justification, "maskable": maskable(request),
    }


def maskable(request: ApprovalRequest) -> bool:
    """Whether a reviewer may approve the request with masking (pgproxy can mask its result)."""
    masking = request.analysis.get("masking") if isinstance(request.analysis, dict) else None
    return isinstance(masking, dict) and masking.get("possible") is True


def outcome_summary(request: ApprovalRequest, link: str) -> dict[str, Any]:
    """A request's summary and how it ended (`status`, who decided, the reviewer's reason)."""
    return {**summary(request, link), "event": OUTCOME_EVENTS[request.status], "status": request.status.value,
            "decided_by": request.decided_by, "approved_by": list(request.approved_by),
            "decision_reason": request.decision_reason, "decided_at": request.decided_at,
            "created_at": request.created_at}


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


_TITLES = {"approved": "Statement approved", "denied": "Statement denied",
           "expired": "Approval request expired", "withdrawn": "Approval request withdrawn"}


# What reaches a chat message comes partly from the agent (its name, the statement's identifiers),
# so it is made inert there: no mention, no link, no formatting can be smuggled in.
#
# Slack (https://api.slack.com/reference/surfaces/formatting#escaping): mrkdwn reads `<...>` as a
# mention (`<!channel>`) or a link (`<https://x|Approve>`); `&`, `<` and `>` are to be sent as
# `&amp;`, `&lt;` and `&gt;`, which Slack shows as the characters. `verbatim` stops Slack from
# turning bare URLs, channel names and @mentions into live ones. Values go in code spans and the
# statement in a code block; a backtick inside would end them, and mrkdwn has no escape for it,
# so a backtick is shown as U+02CB (a lookalike) and a value's line breaks as spaces.
_BACKTICK_SHOWN = "\u02cb"


def slack_escape(text: str) -> str:
    """`text` as Slack mrkdwn shows it literally: ``<!channel>`` stays text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_code(text: str) -> str:
    """`text` as one inline code span that nothing in it can end."""
    return "`" + slack_escape(" ".join(text.split()).replace("`", _BACKTICK_SHOWN)) + "`"


def slack_code_block(text: str) -> str:
    """`text` as a code block that nothing in it can end."""
    return "```" + slack_escape(text.replace("`", _BACKTICK_SHOWN)) + "```"


def _slack_mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text, "verbatim": True}


JUSTIFICATION_TITLE = "Justification (the agent's claim, not checked by pgproxy)"


def _slack_justification(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The agent's reason, in a section of its own (a field's 2000 characters may not hold it escaped)."""
    if not info["justification"]:
        return []
    return [{"type": "section", "text": _slack_mrkdwn(f"*{JUSTIFICATION_TITLE}*\n{slack_code(info['justification'])}")}]


def _slack_request(title: str, info: dict[str, Any]) -> list[dict[str, Any]]:
    """The blocks that say what was asked: the header, who, where, why, and the statement."""
    columns = ", ".join(slack_code(column) for column in info["tagged_columns"]) or "none"
    return [
        {"type": "header", "text": {"type": "plain_text", "text": title}},
        {"type": "section", "fields": [
            _slack_mrkdwn(f"*Agent*\n{slack_code(info['agent'])}"),
            _slack_mrkdwn(f"*Database*\n{slack_code(info['database'])}"),
            _slack_mrkdwn(f"*Rule*\n{slack_escape(info['rule'])}: {slack_escape(info['reason'])}"),
            _slack_mrkdwn(f"*Tagged columns*\n{columns}"),
        ]},
        *_slack_justification(info),
        {"type": "section", "text": _slack_mrkdwn(slack_code_block(info["statement"]))},
    ]


def outcome(info: dict[str, Any], code: Callable[[str], str] = str) -> tuple[str, str]:
    """How a request ended, as (what happened, the rest): ("Denied", "by alice: not needed"). Names and
    the reviewer's reason are passed through `code` (Slack: a code span)."""
    status = info["status"]
    if status == "approved":
        return "Approved", "by " + ", ".join(code(name) for name in info["approved_by"] or [info["decided_by"]])
    if status == "denied":
        return "Denied", f"by {code(info['decided_by'])}: {code(info['decision_reason'] or 'no reason given')}"
    if status == "expired":
        return "Expired", f"nobody decided before {_utc(info['expires_at'])}"
    return "Withdrawn", "the agent cancelled the statement or its connection ended"


def _joined(happened: str, rest: str) -> str:
    return f"{happened} {rest}" if rest.startswith("by ") else f"{happened}: {rest}"


def slack_outcome(info: dict[str, Any], *, follow_up: bool) -> dict[str, Any]:
    """The message saying how a request ended: the original edited in place (`follow_up` False), or
    a new message naming the request it is about (an incoming webhook cannot edit)."""
    happened, rest = outcome(info, slack_code)
    blocks = [*_slack_request(_TITLES[info["status"]], info),
              {"type": "section", "text": _slack_mrkdwn(_joined(f"*{happened}*", rest))}]
    if follow_up:
        blocks.append({"type": "context", "elements": [_slack_mrkdwn(
            f"About approval request {slack_code(info['id'])}, held at {_utc(info['created_at'])}")]})
    blocks.append({"type": "actions", "elements": [
        {"type": "button", "text": {"type": "plain_text", "text": "Open"}, "url": info["url"], "action_id": "open"}]})
    message: dict[str, Any] = {
        "text": f"pgproxy: the request of {slack_code(info['agent'])} was {_joined(happened.lower(), rest)}",
        "blocks": blocks}
    if follow_up:
        message.update(unfurl_links=False, unfurl_media=False)
    return message


def slack_message(info: dict[str, Any]) -> dict[str, Any]:
    decision_value = f"{info['id']}:{info['statement_sha256']}"
    return {
        "text": f"pgproxy: {slack_code(info['agent'])} needs approval ({slack_escape(info['rule'])})",
        "unfurl_links": False, "unfurl_media": False,
        "blocks": [
            *_slack_request("Statement held for approval", info),
            {"type": "actions", "elements": [
                {"type": "button", "text": {"type": "plain_text", "text": "Review"}, "url": info["url"],
                 "action_id": "open"},
                {"type": "button", "text": {"type": "plain_text", "text": "Approve"}, "style": "primary",
                 "action_id": "approve", "value": decision_value},
                *([{"type": "button", "text": {"type": "plain_text", "text": "Approve with masking"},
                    "action_id": "approve_masked", "value": decision_value}] if info.get("maskable") else []),
                {"type": "button", "text": {"type": "plain_text", "text": "Deny"}, "style": "danger",
                 "action_id": "deny", "value": decision_value},
            ]},
        ],
    }


# Teams: an Adaptive Card's TextBlock and FactSet read Markdown (`[Approve](https://x)` is a live
# link); a RichTextBlock's TextRun never does (https://adaptivecards.io/explorer/TextRun.html). So
# every value from a request is a TextRun, and only pgproxy's own words are in TextBlocks.


def _teams_text(*runs: dict[str, Any], monospace: bool = False) -> dict[str, Any]:
    inlines = [{**run, "fontType": "Monospace"} if monospace else run for run in runs]
    return {"type": "RichTextBlock", "inlines": inlines}


def _teams_run(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextRun", "text": text, **style}


def _teams_fact(title: str, value: str) -> dict[str, Any]:
    return _teams_text(_teams_run(f"{title}: ", weight="Bolder"), _teams_run(value))


def _teams_card(title: str, info: dict[str, Any], *extra: dict[str, Any], action: str) -> dict[str, Any]:
    facts = [_teams_fact("Agent", info["agent"]), _teams_fact("Database", info["database"]),
             _teams_fact("Rule", f"{info['rule']}: {info['reason']}"),
             _teams_fact("Tagged columns", ", ".join(info["tagged_columns"]) or "none")]
    if info["justification"]:
        facts.append(_teams_fact(JUSTIFICATION_TITLE, info["justification"]))
    return {"type": "message", "attachments": [{
        "contentType": "application/vnd.microsoft.card.adaptive",
        "content": {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
            "version": "1.4",
            "body": [{"type": "TextBlock", "size": "Medium", "weight": "Bolder", "text": title},
                     *facts, *extra, _teams_text(_teams_run(info["statement"]), monospace=True)],
            "actions": [{"type": "Action.OpenUrl", "title": action, "url": info["url"]}],
        },
    }]}


def teams_message(info: dict[str, Any]) -> dict[str, Any]:
    return _teams_card("Statement held for approval", info, action="Review")


def teams_outcome(info: dict[str, Any]) -> dict[str, Any]:
    """A follow-up card on how a request ended, naming the request (a Teams webhook cannot edit the first)."""
    happened, rest = outcome(info)
    return _teams_card(
        f"Update: {_TITLES[info['status']].lower()}", info,
        _teams_text(_teams_run(f"{happened}: ", weight="Bolder"), _teams_run(rest)),
        _teams_fact("About", f"approval request {info['id']}, held at {_utc(info['created_at'])}"), action="Open")


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """`X-Pgproxy-Signature`: sha256=HMAC-SHA256(secret, "<timestamp>.<body>")."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


SlackMessage = tuple[str, str]  # a posted message's channel id and ts, which chat.update names


class Notifier:
    def __init__(self, configs: tuple[NotifierConfig, ...]) -> None:
        self.configs = configs
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Slack messages posted with the Web API, by approval id and notifier: the task posting each
        # answers its channel and ts (None if it could not be posted). Kept until the request ends.
        self._posted: dict[str, dict[int, asyncio.Task[SlackMessage | None]]] = {}
        self._closed = False

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
        if self._closed:  # shutting down: what is still being decided or withdrawn goes untold
            work.close()
            return None
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _notifiers(self, request: ApprovalRequest) -> list[tuple[int, NotifierConfig]]:
        return [(index, config) for index, config in enumerate(self.configs)
                if not config.rules or request.rule in config.rules]

    def requested(self, request: ApprovalRequest, link: str) -> None:
        """Send the notices for a new request in the background."""
        info = summary(request, link)
        for index, config in self._notifiers(request):
            if config.token is not None:
                posting = self._spawn(self._slack_post(config, slack_message(info), request.id))
                if posting is not None:
                    self._posted.setdefault(request.id, {})[index] = posting
            else:
                self._spawn(self._deliver(config, info))

    def concluded(self, request: ApprovalRequest, link: str) -> None:
        """Tell where the request was announced how it ended (approved, denied, expired, withdrawn),
        in the background: a Slack message posted with the Web API is edited in place; a webhook
        (Slack's or Teams') gets a follow-up message, the generic webhook an outcome event."""
        posted = self._posted.pop(request.id, {})
        if request.status not in OUTCOME_EVENTS:
            return
        info = outcome_summary(request, link)
        for index, config in self._notifiers(request):
            if config.token is not None:
                self._spawn(self._slack_update(config, info, posted.get(index)))
            else:
                self._spawn(self._deliver(config, info))

    async def _deliver(self, config: NotifierConfig, info: dict[str, Any]) -> None:
        requested = info["event"] == "approval.requested"
        if config.kind == "slack":
            payload = slack_message(info) if requested else slack_outcome(info, follow_up=True)
        elif config.kind == "teams":
            payload = teams_message(info) if requested else teams_outcome(info)
        else:
            payload = info
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if config.kind == "webhook" and config.secret:
            timestamp = str(int(time.time()))
            headers["X-Pgproxy-Timestamp"] = timestamp
            headers["X-Pgproxy-Signature"] = webhook_signature(config.secret, timestamp, body)
        await self._send(config, config.url, body, headers, info["id"])

    async def _slack_post(self, config: NotifierConfig, message: dict[str, Any], approval: str) -> SlackMessage | None:
        """Post with chat.postMessage; the new message's channel id and ts, or None."""
        body = json.dumps({"channel": config.channel, **message, "unfurl_links": False, "unfurl_media": False})
        answer = await self._send(config, f"{config.api_url}/chat.postMessage", body.encode(),
                                  _slack_headers(config), approval, slack_api=True)
        if answer is None:
            return None
        channel, ts = answer.get("channel"), answer.get("ts")
        if not isinstance(channel, str) or not isinstance(ts, str):
            log.error("notification given up", extra={"notifier": config.kind, "approval": approval,
                                                      "problem": "Slack's answer names no channel and ts"})
            return None
        return channel, ts

    async def _slack_update(self, config: NotifierConfig, info: dict[str, Any],
                            posting: asyncio.Task[SlackMessage | None] | None) -> None:
        """Edit the request's message with chat.update, once it is posted (a decision can come first);
        if it never was, post the outcome as a message of its own."""
        posted = None
        if posting is not None:
            await asyncio.wait({posting})
            posted = None if posting.cancelled() or posting.exception() else posting.result()
        if posted is None:
            await self._slack_post(config, slack_outcome(info, follow_up=True), info["id"])
            return
        channel, ts = posted
        body = json.dumps({"channel": channel, "ts": ts, **slack_outcome(info, follow_up=False)}).encode()
        await self._send(config, f"{config.api_url}/chat.update", body, _slack_headers(config), info["id"],
                         slack_api=True)

    async def _send(self, config: NotifierConfig, url: str, body: bytes, headers: dict[str, str], approval: str,
                    *, slack_api: bool = False) -> dict[str, Any] | None:
        """POST `body`, retrying failures (after RETRY_DELAYS); Slack's Web API answer (`slack_api`), {}
        for other endpoints, or None once given up. Slack refusing the call (`"ok": false`: a wrong
        token or channel, a message too long) is not retried: it would refuse it again."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        for attempt, delay in enumerate((0.0, *RETRY_DELAYS)):
            await asyncio.sleep(delay)
            try:
                async with self._session.post(url, data=body, headers=headers) as response:
                    if response.status < 300 and not slack_api:
                        return {}
                    if response.status < 300:
                        answer = await response.json(content_type=None)
                        if isinstance(answer, dict) and answer.get("ok") is True:
                            return answer
                        error = answer.get("error") if isinstance(answer, dict) else None
                        log.error("notification refused by Slack", extra={
                            "notifier": config.kind, "approval": approval,
                            "problem": str(error)[:100] if error is not None else "no ok in Slack's answer"})
                        return None
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                problem = type(exc).__name__
            log.warning("notification failed", extra={"notifier": config.kind, "attempt": attempt + 1,
                                                       "problem": problem, "approval": approval})
        log.error("notification given up", extra={"notifier": config.kind, "approval": approval})
        return None

    async def close(self) -> None:
        self._closed = True
        self._posted.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()


def _slack_headers(config: NotifierConfig) -> dict[str, str]:
    return {"Content-Type": "application/json; charset=utf-8", "Authorization": f"Bearer {config.token}"}
