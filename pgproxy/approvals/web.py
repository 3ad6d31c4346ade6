"""The approvals HTTP API (aiohttp, on the proxy's own event loop).

Every endpoint except /healthz needs a reviewer's JWT (`Authorization: Bearer …`): a link
carries only an unguessable id, and seeing a request's details needs a reviewer identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import time
import urllib.parse
from importlib import resources
from typing import Any

import jwt
from aiohttp import web

from pgproxy.approvals.display import DISPLAY_CHARS, LIST_CHARS, statement_view, text_bytes
from pgproxy.approvals.http import CONNECTIONS, Connections, bounded
from pgproxy.approvals.inputs import Malformed, decision_claims, slack_press, slack_stamp
from pgproxy.approvals.preview import Preview, preview_of
from pgproxy.approvals.service import Approvals, DecisionRefused
from pgproxy.config import ApprovalsConfig, AuthConfig, JwtConfig, SlackReviewer
from pgproxy.errors import AuthFailed, IdentityRefused
from pgproxy.identity import Authenticator, Identity
from pgproxy.names import in_any
from pgproxy.store import ApprovalRequest, Status, StoreError

APPROVALS = web.AppKey("approvals", Approvals)
REVIEWERS = web.AppKey("reviewers", Authenticator)
DECISION_TOKENS = web.AppKey("decision_tokens", JwtConfig)  # set only when decision tokens are configured
# The demo reviewer's token and the code that unlocks it (printed on the demo's terminal): demo only.
DEMO_LOGIN = web.AppKey("demo_login", tuple[str, str])
SLACK = web.AppKey("slack", tuple[str, dict[str, SlackReviewer]])  # signing secret, reviewers by Slack user id
SSO_HEADER = web.AppKey("sso_header", str)  # where an SSO proxy in front puts the reviewer's token
# Per request, for the audit of refused decisions: who decided (if known) and how; the approval.
DECIDER = web.RequestKey("decider", tuple[str | None, str])
APPROVAL_ID = web.RequestKey("approval_id", str)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _unauthorized(message: str) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(text=json.dumps({"error": message}), content_type="application/json")


async def _reviewer(request: web.Request) -> Identity:
    token = _bearer(request)
    sso_header = request.app.get(SSO_HEADER)
    if not token and sso_header is not None:
        token = request.headers.get(sso_header, "").strip()  # set by the SSO proxy in front of pgproxy
    if not token:
        raise _unauthorized("a reviewer token is required (Authorization: Bearer …)")
    try:
        return await request.app[REVIEWERS].verify_jwt(token, "")
    except IdentityRefused as exc:
        message = exc.message.replace('JWT authentication failed for user ""', "reviewer token refused")
        raise web.HTTPForbidden(text=json.dumps({"error": message}), content_type="application/json") from None
    except AuthFailed as exc:
        raise _unauthorized(exc.message.replace('JWT authentication failed for user ""', "reviewer token refused")) \
            from None


async def whoami(request: web.Request) -> web.Response:
    """Who the request's token (pasted, or set by an SSO proxy) identifies; null if nobody."""
    try:
        reviewer = await _reviewer(request)
    except web.HTTPUnauthorized:
        return web.json_response({"reviewer": None}, headers={"Cache-Control": "no-store"})
    return web.json_response({"reviewer": reviewer.agent_id}, headers={"Cache-Control": "no-store"})


async def healthz(request: web.Request) -> web.Response:
    """Liveness for anyone; how many statements are held only for a reviewer."""
    try:
        reviewer = await _reviewer(request) if _bearer(request) else None
    except web.HTTPUnauthorized:
        reviewer = None
    approvals = request.app[APPROVALS]
    if reviewer is None or _not_a_reviewer(reviewer, approvals) is not None:
        return web.json_response({"status": "ok"})
    return web.json_response({"status": "ok", "held": approvals.held})


# On every response: nothing is cached (request data), framed, sniffed, or told where it came
# from, and the server does not name its software. The page and its assets set a stricter CSP.
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Server": "pgproxy",
}


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers["Server"] = "pgproxy"


def _may_read(reviewer: Identity, held: ApprovalRequest, approvals: Approvals) -> bool:
    """Reading a request (its statement, literals, parameters) takes what deciding it takes: a
    reviewer group of its rule (else of the approvals section)."""
    groups = frozenset(held.reviewer_groups) or approvals.reviewer_groups
    return not groups or in_any(reviewer.groups, groups)


def _not_a_reviewer(reviewer: Identity, approvals: Approvals) -> web.Response | None:
    """403 for a token the reviewer issuer signed whose subject is in no group at all (where
    reviewing needs one): it may read no request."""
    if approvals.reviewer_groups and not reviewer.groups:
        return _error(403, f'"{reviewer.agent_id}" is in no reviewer group')
    return None


_NO_STORE = {"Cache-Control": "no-store"}


async def list_approvals(request: web.Request) -> web.Response:
    reviewer = await _reviewer(request)
    approvals = request.app[APPROVALS]
    refused = _not_a_reviewer(reviewer, approvals)
    if refused is not None:
        return refused
    raw = request.query.get("status")
    try:
        status = Status(raw) if raw else None
    except ValueError:
        return _error(400, f"unknown status {raw!r}; one of {', '.join(s.value for s in Status)}")
    raw_limit = request.query.get("limit", "200")
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= 1000:  # not "²"
        return _error(400, "limit must be a number from 1 to 1000")
    found = await approvals.store.list(status, int(raw_limit))
    return web.json_response({"approvals": [_listed(a, approvals) for a in found
                                            if _may_read(reviewer, a, approvals)]}, headers=_NO_STORE)


async def get_approval(request: web.Request) -> web.Response:
    reviewer = await _reviewer(request)
    approvals = request.app[APPROVALS]
    found = await approvals.store.get(request.match_info["id"])
    refused = _not_a_reviewer(reviewer, approvals)
    if refused is not None:
        return refused
    if found is None or not _may_read(reviewer, found, approvals):
        # The same answer for a request that exists and one that does not: no probing of ids.
        return _error(404, "no such approval request")
    view = await statement_view(found)  # made once per request, in a worker thread
    return web.json_response({
        **_listed(found, approvals, DISPLAY_CHARS),
        "statement_formatted": view.statement.text,
        "statement_text": view.statement.to_json(),
        "parameter_texts": [p.to_json() if p is not None else None for p in view.parameters],
        "download_url": f"/api/approvals/{urllib.parse.quote(found.id, safe='')}/text",
        "preview": (preview_of(found.id) or _NO_PREVIEW).to_json(),
    }, headers=_NO_STORE)


# A request held by another pgproxy process (sharing a PostgreSQL store), or before a restart.
_NO_PREVIEW = Preview("none", note="no estimate: this request was not held by this pgproxy process")


def _listed(request: ApprovalRequest, approvals: Approvals, limit: int = LIST_CHARS) -> dict[str, Any]:
    """A request as the API lists it: every text cut to `limit` characters (`statement_truncated`
    says whether the statement was; the whole texts are at GET …/text), so that answering never
    costs the event loop more than a bounded amount of work."""
    data = request.to_json()
    data["statement"] = request.statement[:limit]
    data["statement_truncated"] = len(request.statement) > limit
    data["parameters"] = [p[:limit] if p is not None else None for p in request.parameters]
    statements = data["analysis"].get("statements")
    if isinstance(statements, list):
        data["analysis"] = {**data["analysis"], "statements": [
            {**s, "statement": s["statement"][:limit]} if isinstance(s.get("statement"), str) else s
            for s in statements]}
    data["url"] = approvals.link(request.id)
    return data


async def statement_text(request: web.Request) -> web.StreamResponse:
    """The whole statement (or `?parameter=N`, the Nth parameter from 0) as sent, for a reviewer
    who may read the request: what the page cuts, to download and check against its SHA-256."""
    reviewer = await _reviewer(request)
    approvals = request.app[APPROVALS]
    refused = _not_a_reviewer(reviewer, approvals)
    if refused is not None:
        return refused
    found = await approvals.store.get(request.match_info["id"])
    if found is None or not _may_read(reviewer, found, approvals):
        return _error(404, "no such approval request")
    raw = request.query.get("parameter")
    if raw is None:
        text, name = found.statement, "statement.sql"
    elif raw.isdigit() and int(raw) < len(found.parameters) and found.parameters[int(raw)] is not None:
        text, name = found.parameters[int(raw)] or "", f"parameter-{int(raw)}.txt"
    else:
        return _error(404, "no such parameter (parameters count from 0; NULL has no text)")
    body = await asyncio.to_thread(text_bytes, text) if len(text) > LIST_CHARS else text_bytes(text)
    return web.Response(body=body, content_type="text/plain", charset="utf-8", headers={
        **_NO_STORE, "Content-Disposition": f'attachment; filename="approval-{found.id}-{name}"'})


_ASSETS = resources.files("pgproxy.approvals").joinpath("assets")
_CONTENT_TYPES = {"approval.js": "text/javascript", "approval.css": "text/css", "inbox.js": "text/javascript",
                  "reviewer.js": "text/javascript"}
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


_SIGNIN = "  <!-- signin.html: the sign-in section both pages share (see web.py) -->\n"


@functools.cache
def _shell(name: str) -> str:
    """A page's static shell, with the sign-in section it shares with the other page in its place."""
    text = _ASSETS.joinpath(name).read_text()
    if _SIGNIN not in text:
        raise RuntimeError(f"{name} has no place for the sign-in section")
    return text.replace(_SIGNIN, _ASSETS.joinpath("signin.html").read_text())


async def page(request: web.Request) -> web.Response:
    """The approval page: a static shell; what it shows comes from the API with a reviewer token."""
    return web.Response(text=_shell("page.html"), content_type="text/html", headers=_PAGE_HEADERS)


async def inbox(request: web.Request) -> web.Response:
    """The inbox: a static shell listing, from the API with a reviewer token, the pending
    requests that reviewer may decide (the same reader check as GET /api/approvals)."""
    return web.Response(text=_shell("inbox.html"), content_type="text/html", headers=_PAGE_HEADERS)


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _CONTENT_TYPES:
        raise web.HTTPNotFound()
    return web.Response(text=_ASSETS.joinpath(name).read_text(), content_type=_CONTENT_TYPES[name],
                        headers=_PAGE_HEADERS)


async def demo_login_offered(request: web.Request) -> web.Response:
    """Whether the page offers the demo's sign-in (the demo only)."""
    return web.json_response({"enabled": DEMO_LOGIN in request.app}, headers={"Cache-Control": "no-store"})


async def demo_login(request: web.Request) -> web.Response:
    """The demo reviewer's token, for the code printed on the demo's terminal. Nothing an agent
    holds (its token, the approval link in its hold notice) opens it: an agent cannot sign in as
    the reviewer and approve its own statement."""
    found = request.app.get(DEMO_LOGIN)
    if found is None:
        return _error(404, "this is not a demo: sign in with your reviewer token")
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body must be JSON")
    code = body.get("code") if isinstance(body, dict) else None
    token, expected = found
    if not isinstance(code, str) or not hmac.compare_digest(code.strip().encode(), expected.encode()):
        return _error(403, "wrong code: type the DEMO_LOGIN_CODE the demo printed on its terminal")
    return web.json_response({"token": token}, headers={"Cache-Control": "no-store"})


def _cross_site(request: web.Request) -> web.Response | None:
    """A decision may not come from a page on another site: a signed-in reviewer's browser (an
    SSO proxy adds their token to every request) would otherwise approve for any site that
    posts to this one. Only JSON is accepted (a cross-site form cannot send it without a CORS
    preflight, which this app never answers), and a browser's Origin or Sec-Fetch-Site must say
    the request came from this app's own pages. Clients that are not browsers send neither."""
    if request.content_type != "application/json":
        return _error(415, "a decision must be sent as application/json")
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return _error(403, f"a decision may not come from another site (Sec-Fetch-Site: {site[:40]})")
    origin = request.headers.get("Origin")
    if origin is not None:
        allowed = {_origin(request.app[APPROVALS].public_url), f"{request.scheme}://{request.host}"}
        if origin not in allowed:
            return _error(403, f"a decision may not come from another site (Origin: {origin[:100]})")
    return None


def _origin(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    return f"{parsed.scheme}://{parsed.netloc}"


async def post_decision(request: web.Request) -> web.Response:
    refused = _cross_site(request)
    if refused is not None:
        return refused
    token = _bearer(request)
    checker = request.app.get(DECISION_TOKENS)
    if checker is not None and token and _names_an_approval(token):
        return await _decision_token(request, checker, token)
    reviewer = await _reviewer(request)
    request[DECIDER] = (reviewer.agent_id, reviewer.method)
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    decision = body.get("decision")
    if decision not in ("approve", "approve_masked", "deny"):
        return _error(400, 'decision must be "approve", "approve_masked" (approve with masking) or "deny"')
    statement_hash = body.get("statement_sha256")
    if not isinstance(statement_hash, str) or not statement_hash:
        return _error(400, "statement_sha256 is required: the hash of the statement you reviewed")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 2000:
        return _error(400, "reason must be a string of at most 2000 characters")
    grant_minutes = body.get("grant_minutes", 0)
    if not isinstance(grant_minutes, int) or isinstance(grant_minutes, bool) or grant_minutes < 0:
        return _error(400, "grant_minutes must be a whole number of minutes (0: approve once)")
    try:
        decided = await request.app[APPROVALS].decide(
            request.match_info["id"], reviewer, approve=decision != "deny", masked=decision == "approve_masked",
            reason=reason,
            statement_hash=statement_hash, grant_minutes=grant_minutes)
    except DecisionRefused as exc:
        return _error(exc.status, exc.message)
    return _decided(decided)


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _names_an_approval(token: str) -> bool:
    """Whether a bearer token is a self-contained decision (it carries approval_id), unverified yet."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return False
    return isinstance(claims, dict) and "approval_id" in claims


async def _decision_token(request: web.Request, checker: JwtConfig, token: str) -> web.Response:
    """A decision signed by an approval system outside the proxy: verified, bound, used once."""
    approvals = request.app[APPROVALS]
    key = checker.secret or checker.public_key or ""  # the config requires one of them
    try:
        # The signature first; then every claim's type and form (400); then what they say (401).
        signed = jwt.decode(token, key, algorithms=list(checker.algorithms), options={
            "verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_iss": False,
            "verify_aud": False, "verify_sub": False, "verify_jti": False})
        claims = decision_claims(signed, checker.groups_claim)
        jwt.decode(token, key, algorithms=list(checker.algorithms), audience=checker.audience,
                   issuer=checker.issuer, leeway=checker.leeway_seconds)
    except Malformed as exc:
        return _error(400, f"decision token refused: {exc.message}")
    except jwt.PyJWTError as exc:
        return _error(401, f"decision token refused: {exc}")
    if claims.approval_id != request.match_info["id"]:
        return _error(403, "the decision token is for another approval request")
    reviewer = Identity(claims.sub, claims.groups, "decision-token")
    request[DECIDER] = (reviewer.agent_id, reviewer.method)
    try:  # its jti is recorded with the vote, only when the decision is accepted
        decided = await approvals.decide(request.match_info["id"], reviewer, approve=claims.decision != "deny",
                                         masked=claims.decision == "approve_masked",
                                         reason=claims.reason, statement_hash=claims.statement_sha256,
                                         token_id=claims.jti)
    except DecisionRefused as exc:
        return _error(exc.status, exc.message)
    return _decided(decided)


def _decided(decided: ApprovalRequest) -> web.Response:
    return web.json_response({"id": decided.id, "status": decided.status.value, "decided_by": decided.decided_by,
                              "approved_by": list(decided.approved_by), "masked": decided.masked,
                              "required_approvals": decided.required_approvals,
                              "decision_token": decided.decision_token})


SLACK_MAX_AGE_SECONDS = 300  # Slack's own advice: refuse requests older than five minutes (replays)


async def slack_interactivity(request: web.Request) -> web.Response:
    """Approve/Deny buttons pressed in Slack: Slack signs each request; its user maps to a reviewer."""
    slack = request.app.get(SLACK)
    if slack is None:
        raise web.HTTPNotFound()
    secret, users = slack
    body = await request.read()
    try:
        timestamp, signature = slack_stamp(request.headers)
    except Malformed as exc:
        return _error(400, exc.message)
    if abs(time.time() - timestamp) > SLACK_MAX_AGE_SECONDS:
        return _error(401, "stale Slack request timestamp")
    expected = "v0=" + hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return _error(401, "invalid Slack signature")
    try:
        pressed = slack_press(body)
    except Malformed as exc:
        return _error(400, exc.message)
    slack_user = pressed.user
    request[DECIDER] = (None, f"slack:{slack_user}")
    if pressed.action not in ("approve", "approve_masked", "deny") or pressed.approval_id is None \
            or pressed.statement_sha256 is None:
        return web.json_response({"text": "ok"})
    approval_id, statement_hash = pressed.approval_id, pressed.statement_sha256
    request[APPROVAL_ID] = approval_id
    mapped = users.get(slack_user)
    if mapped is None:
        return web.json_response({"response_type": "ephemeral", "text": "Your Slack account is not mapped to a "
                                  "pgproxy reviewer (approvals.slack.users), so it is in no reviewer group."},
                                 status=403)
    approvals = request.app[APPROVALS]
    reviewer_name = mapped.name
    reviewer = Identity(reviewer_name, mapped.groups, "slack")  # only the groups the config gives this user
    request[DECIDER] = (reviewer_name, "slack")
    try:
        decided = await approvals.decide(approval_id, reviewer, approve=pressed.action != "deny",
                                         masked=pressed.action == "approve_masked",
                                         reason=f"decided in Slack by {reviewer_name}", statement_hash=statement_hash)
    except DecisionRefused as exc:
        return web.json_response({"response_type": "ephemeral", "text": exc.message}, status=exc.status)
    return web.json_response({"response_type": "in_channel", "replace_original": False,
                              "text": f"{decided.status.value}{' with masking' if decided.masked else ''} by "
                                      f"{reviewer_name}"})


@web.middleware
async def audit_refusals(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every decision the proxy does not accept is recorded: forged, replayed, self-approval, late…"""
    if request.match_info.route.name not in ("decision", "slack"):
        return await handler(request)  # type: ignore[no-any-return]
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        _refused(request, exc.status, exc.text or exc.reason)
        raise
    if response.status >= 400:
        _refused(request, response.status, response.text if isinstance(response, web.Response) else None)
    return response


def _refused(request: web.Request, status: int, body: str | None) -> None:
    message = body or ""
    with contextlib.suppress(ValueError, AttributeError):
        found = json.loads(message)  # {"error": …}, or Slack's {"text": …}
        message = str(found.get("error") or found.get("text") or message)
    reviewer, via = request.get(DECIDER, (None, "slack" if request.match_info.route.name == "slack" else "api"))
    request.app[APPROVALS].refused(request.get(APPROVAL_ID, request.match_info.get("id", "")), status, message,
                                   reviewer=reviewer, via=via, client_address=request.remote or "")


@web.middleware
async def store_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except StoreError:
        return _error(503, "the approval store is unavailable")


def make_app(approvals: Approvals, config: ApprovalsConfig) -> web.Application:
    """The approvals web app for `config`: API, page, and the optional integrations it names."""
    app = web.Application(middlewares=[bounded, audit_refusals, store_errors],
                          client_max_size=config.http.max_body_bytes)
    app.on_response_prepare.append(security_headers)
    app[CONNECTIONS] = Connections(config.http)
    app[APPROVALS] = approvals
    app[REVIEWERS] = Authenticator(AuthConfig(jwt=config.reviewer_jwt))
    if config.decision_token_jwt is not None:
        app[DECISION_TOKENS] = config.decision_token_jwt
    if config.demo_login_token is not None and config.demo_login_code is not None:
        app[DEMO_LOGIN] = (config.demo_login_token, config.demo_login_code)
    if config.slack_signing_secret is not None:
        app[SLACK] = (config.slack_signing_secret, config.slack_users)
    if config.sso_header is not None:
        app[SSO_HEADER] = config.sso_header
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/approvals", inbox)
    app.router.add_get("/approvals/{id}", page)
    app.router.add_get("/assets/{name}", asset)
    app.router.add_get("/api/demo-login", demo_login_offered)
    app.router.add_post("/api/demo-login", demo_login)
    app.router.add_get("/api/whoami", whoami)
    app.router.add_post("/slack/interactivity", slack_interactivity, name="slack")
    app.router.add_get("/api/approvals", list_approvals)
    app.router.add_get("/api/approvals/{id}", get_approval)
    app.router.add_get("/api/approvals/{id}/text", statement_text)
    app.router.add_post("/api/approvals/{id}/decision", post_decision, name="decision")
    return app
