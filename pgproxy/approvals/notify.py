"""Telling reviewers: Slack (Block Kit), Microsoft Teams (Adaptive Card) and a generic JSON webhook
signed with HMAC-SHA256. Messages never carry a literal value: the statement is shown with its
constants replaced by `?` (PostgreSQL's own scanner finds them) and parameters only counted; the
full detail is on the authenticated page. Delivery runs in the background, is retried, and a
notifier that fails is logged: it never blocks or fails the hold."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import pglast

from pgproxy.store import ApprovalRequest

log = logging.getLogger("pgproxy.notify")

_CONSTANTS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
RETRY_DELAYS = (0.5, 2.0, 5.0)


@dataclass(frozen=True, slots=True)
class NotifierConfig:
    kind: str  # slack | teams | webhook
    url: str
    secret: str | None = None  # webhook: the HMAC key
    rules: frozenset[str] = frozenset()  # only requests held by these rules (empty: all)


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


def summary(request: ApprovalRequest, link: str) -> dict[str, Any]:
    """What every notifier may say: nothing here is a literal value."""
    return {
        "event": "approval.requested", "id": request.id, "url": link, "agent": request.agent,
        "groups": list(request.groups), "database": request.database, "rule": request.rule,
        "reason": request.reason, "statement": redact(request.statement),
        "parameters": len(request.parameters), "statement_sha256": request.statement_sha256,
        "tagged_columns": tagged_columns(request), "application_name": request.application_name,
        "required_approvals": request.required_approvals, "expires_at": request.expires_at,
        "justification": request.justification,
    }


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


def slack_message(info: dict[str, Any]) -> dict[str, Any]:
    decision_value = f"{info['id']}:{info['statement_sha256']}"
    columns = ", ".join(slack_code(column) for column in info["tagged_columns"]) or "none"
    return {
        "text": f"pgproxy: {slack_code(info['agent'])} needs approval ({slack_escape(info['rule'])})",
        "unfurl_links": False, "unfurl_media": False,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "Statement held for approval"}},
            {"type": "section", "fields": [
                _slack_mrkdwn(f"*Agent*\n{slack_code(info['agent'])}"),
                _slack_mrkdwn(f"*Database*\n{slack_code(info['database'])}"),
                _slack_mrkdwn(f"*Rule*\n{slack_escape(info['rule'])}: {slack_escape(info['reason'])}"),
                _slack_mrkdwn(f"*Tagged columns*\n{columns}"),
            ]},
            *_slack_justification(info),
            {"type": "section", "text": _slack_mrkdwn(slack_code_block(info["statement"]))},
            {"type": "actions", "elements": [
                {"type": "button", "text": {"type": "plain_text", "text": "Review"}, "url": info["url"],
                 "action_id": "open"},
                {"type": "button", "text": {"type": "plain_text", "text": "Approve"}, "style": "primary",
                 "action_id": "approve", "value": decision_value},
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


def teams_message(info: dict[str, Any]) -> dict[str, Any]:
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
            "body": [{"type": "TextBlock", "size": "Medium", "weight": "Bolder", "text": "Statement held for approval"},
                     *facts, _teams_text(_teams_run(info["statement"]), monospace=True)],
            "actions": [{"type": "Action.OpenUrl", "title": "Review", "url": info["url"]}],
        },
    }]}


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """`X-Pgproxy-Signature`: sha256=HMAC-SHA256(secret, "<timestamp>.<body>")."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class Notifier:
    def __init__(self, configs: tuple[NotifierConfig, ...]) -> None:
        self.configs = configs
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def requested(self, request: ApprovalRequest, link: str) -> None:
        """Send the notices for a new request in the background."""
        info = summary(request, link)
        for config in self.configs:
            if config.rules and request.rule not in config.rules:
                continue
            task = asyncio.get_running_loop().create_task(self._deliver(config, info))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, config: NotifierConfig, info: dict[str, Any]) -> None:
        if config.kind == "slack":
            payload = slack_message(info)
        elif config.kind == "teams":
            payload = teams_message(info)
        else:
            payload = info
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if config.kind == "webhook" and config.secret:
            timestamp = str(int(time.time()))
            headers["X-Pgproxy-Timestamp"] = timestamp
            headers["X-Pgproxy-Signature"] = webhook_signature(config.secret, timestamp, body)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        for attempt, delay in enumerate((0.0, *RETRY_DELAYS)):
            await asyncio.sleep(delay)
            try:
                async with self._session.post(config.url, data=body, headers=headers) as response:
                    if response.status < 300:
                        return
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
            log.warning("notification failed", extra={"notifier": config.kind, "attempt": attempt + 1,
                                                       "problem": problem, "approval": info["id"]})
        log.error("notification given up", extra={"notifier": config.kind, "approval": info["id"]})

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
