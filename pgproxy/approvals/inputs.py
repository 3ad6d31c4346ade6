"""What reaches the approvals app from outside, checked for type and form before anything changes.

A decision token's claims and a Slack interactivity request's headers and fields are read only
here, each by its entry in a table (`DECISION_CLAIMS`, `SLACK_HEADERS`, `SLACK_FIELDS`) naming
the form it must have. A value of another type or form is :class:`Malformed` (HTTP 400, naming
the claim or field and what it must be), raised before a token id is recorded or a vote is cast.
Checking meaning (signature, expiry, issuer, which request, who may decide) comes after, elsewhere.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DECISION_CLAIMS", "KINDS", "SLACK_FIELDS", "SLACK_HEADERS", "DecisionClaims", "Malformed", "SlackPress",
           "decision_claims", "slack_press", "slack_stamp"]

_MAX_NAME = 256
_MAX_REASON = 2000
_APPROVAL_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SLACK_USER = re.compile(r"[A-Z0-9]{2,32}")
_DIGITS = re.compile(r"[0-9]{1,12}")  # ASCII only: str.isdigit() also takes "²" and "٣"
_SLACK_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")


class Malformed(Exception):
    """A claim, header or field of the wrong type or form; `message` says which and what it must be."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _text(value: object, limit: int, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    if (not value and not empty) or len(value) > limit:
        raise ValueError(f"a {'' if empty else 'non-empty '}string of at most {limit} characters")
    return value


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ValueError(what)
        return value
    return check


def _decision(value: object) -> str:
    if value not in ("approve", "approve_masked", "deny"):
        raise ValueError('"approve", "approve_masked" or "deny"')
    return str(value)


def _time(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("a number (seconds since 1970)")
    return float(value)


def _names(value: object) -> frozenset[str]:
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and 0 < len(i) <= _MAX_NAME for i in items):
        raise ValueError("a list of names or a space-separated string")
    return frozenset(items)


def _audience(value: object) -> object:
    if isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        return value
    raise ValueError("a string or a list of strings")


# The forms, by kind. Every entry of the tables below names one; tests feed each kind its wrong values.
KINDS: dict[str, Callable[[object], Any]] = {
    "approval-id": _matching(_APPROVAL_ID, "an approval id (letters, digits, - and _)"),
    "sha256": _matching(_SHA256, "64 lowercase hexadecimal digits"),
    "decision": _decision,
    "name": lambda value: _text(value, _MAX_NAME),
    "reason": lambda value: _text(value, _MAX_REASON, empty=True),
    "token-id": lambda value: _text(value, _MAX_NAME),
    "time": _time,
    "names": _names,
    "issuer": lambda value: _text(value, 2048),
    "audience": _audience,
    "slack-user": _matching(_SLACK_USER, "a Slack user id"),
    "slack-action": lambda value: _text(value, 255),
    "slack-value": _matching(re.compile(r"[A-Za-z0-9_-]{1,100}:[0-9a-f]{64}"), "<approval id>:<statement_sha256>"),
    "slack-timestamp": _matching(_DIGITS, "a Unix time in ASCII digits"),
    "slack-signature": _matching(_SLACK_SIGNATURE, "v0= and 64 lowercase hexadecimal digits"),
}


@dataclass(frozen=True, slots=True)
class Entry:
    kind: str
    required: bool = True


# Claims of a self-contained decision token. "groups" stands for the configured groups_claim.
DECISION_CLAIMS: dict[str, Entry] = {
    "approval_id": Entry("approval-id"),
    "statement_sha256": Entry("sha256"),
    "decision": Entry("decision"),
    "sub": Entry("name"),
    "jti": Entry("token-id"),
    "iat": Entry("time"),
    "exp": Entry("time"),
    "nbf": Entry("time", required=False),
    "iss": Entry("issuer", required=False),
    "aud": Entry("audience", required=False),
    "reason": Entry("reason", required=False),
    "groups": Entry("names", required=False),
}


@dataclass(frozen=True, slots=True)
class DecisionClaims:
    approval_id: str
    statement_sha256: str
    decision: str
    sub: str
    jti: str
    reason: str
    groups: frozenset[str]


def _read(table: Mapping[str, Entry], found: Mapping[str, object], name: str, what: str,
          key: str | None = None) -> Any:
    """Entry `name` of `table`, read from `found` (under `key`, if it differs), checked."""
    entry = table[name]
    key = key or name
    if key not in found or found[key] is None:
        if entry.required:
            raise Malformed(f'{what} "{key}" is missing')
        return None
    try:
        return KINDS[entry.kind](found[key])
    except ValueError as exc:
        raise Malformed(f'{what} "{key}" must be {exc}') from None


def decision_claims(claims: Mapping[str, object], groups_claim: str = "groups") -> DecisionClaims:
    """A decision token's claims (its signature already checked), or Malformed."""
    read: dict[str, Any] = {name: _read(DECISION_CLAIMS, claims, name, "claim",
                                        groups_claim if name == "groups" else None)
                            for name in DECISION_CLAIMS}
    return DecisionClaims(approval_id=read["approval_id"], statement_sha256=read["statement_sha256"],
                          decision=read["decision"], sub=read["sub"], jti=read["jti"], reason=read["reason"] or "",
                          groups=read["groups"] or frozenset())


# Slack's interactivity requests: two headers, then the fields of the form's JSON "payload".
SLACK_HEADERS: dict[str, Entry] = {
    "X-Slack-Request-Timestamp": Entry("slack-timestamp"),
    "X-Slack-Signature": Entry("slack-signature"),
}
SLACK_FIELDS: dict[str, Entry] = {
    "user.id": Entry("slack-user"),
    "actions[0].action_id": Entry("slack-action"),
    "actions[0].value": Entry("slack-value", required=False),  # the Review button (a link) has none
}


def slack_stamp(headers: Mapping[str, str]) -> tuple[int, str]:
    """The timestamp and signature headers of a Slack request, or Malformed."""
    stamp = _read(SLACK_HEADERS, headers, "X-Slack-Request-Timestamp", "header")
    signature = _read(SLACK_HEADERS, headers, "X-Slack-Signature", "header")
    return int(stamp), signature


@dataclass(frozen=True, slots=True)
class SlackPress:
    """A button pressed in a pgproxy message: by whom, which, and (Approve, Deny) on what."""

    user: str
    action: str
    approval_id: str | None
    statement_sha256: str | None


def slack_press(body: bytes) -> SlackPress:
    """The block action in a Slack request's (signature-checked) body, or Malformed."""
    try:
        form = urllib.parse.parse_qs(body.decode("utf-8"), strict_parsing=True)
        payload = json.loads(form["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError):
        raise Malformed("not a Slack interactivity request: the body must be a form with a JSON payload") from None
    user = payload.get("user") if isinstance(payload, dict) else None
    actions = payload.get("actions") if isinstance(payload, dict) else None
    if not isinstance(user, dict) or not isinstance(actions, list) or not actions or not isinstance(actions[0], dict):
        raise Malformed("not a Slack block action: the payload needs a user and a list of actions")
    fields = {"user.id": user.get("id"), "actions[0].action_id": actions[0].get("action_id"),
              "actions[0].value": actions[0].get("value")}
    read = {name: _read(SLACK_FIELDS, fields, name, "Slack field") for name in SLACK_FIELDS}
    action = read["actions[0].action_id"]
    if action in ("approve", "approve_masked", "deny") and read["actions[0].value"] is None:
        raise Malformed('Slack field "actions[0].value" is missing')
    approval_id, _, sha = (read["actions[0].value"] or "").partition(":")
    return SlackPress(user=read["user.id"], action=action, approval_id=approval_id or None,
                      statement_sha256=sha or None)
