"""The approval page in a real headless Chromium (Debian's, driven by Playwright; nothing downloads a browser)."""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from pgproxy.pgcluster import PostgresCluster, find_pg_bin
from tests.approvals_support import (
    api,
    decide,
    direct_value,
    held_psql,
    reviewer_token,
    start_proxy,
    wait_pending,
)
from tests.harness import ProxyThread, make_token

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine notes advise: no sandbox as root, and no background networking on this closed network.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}; ./dev setup installs Debian's chromium package")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield launched
        launched.close()


def sign_in(page: Page, url: str) -> None:
    page.goto(url)
    page.fill("#token", reviewer_token())
    page.click("#signin-button")


def test_reviewer_approves_in_the_browser(browser: Browser, approving: ProxyThread, pg: PostgresCluster,
                                          tmp_path: Path) -> None:
    sql = "SELECT name, email FROM customers WHERE id = 51"
    client = held_psql(approving, sql)
    try:
        request = wait_pending(approving, "WHERE id = 51")
        # A phone, in Paris: times are the reviewer's local time, with the offset and the zone named.
        context = browser.new_context(viewport={"width": 390, "height": 844}, timezone_id="Europe/Paris")
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        sign_in(page, request["url"])
        expect(page.locator("#status")).to_have_text("pending")
        expect(page.locator("#summary")).to_have_text(
            "An AI agent's statement is waiting for a reviewer. Nothing of it has run.")
        expect(page.locator("#expires")).to_have_text(paris_time(request["expires_at"]))
        expect(page.locator("#created")).to_have_text(paris_time(request["created_at"]))
        expect(page.locator("#approve-means")).to_contain_text("Approve runs this statement once, for this session "
                                                               "only; its rows (or its effect) go to the agent.")
        expect(page.locator("#statement")).to_contain_text("FROM customers")
        expect(page.locator("#statement")).to_contain_text("id = 51")
        expect(page.locator("#agent")).to_contain_text("agent")
        expect(page.locator("#rule")).to_contain_text("personal-data")
        expect(page.locator("#columns")).to_contain_text("public.customers.email (read)")
        expect(page.locator("#columns")).to_contain_text("pii.email")
        expect(page.locator("#hash")).to_have_text(request["statement_sha256"])
        page.screenshot(path=str(tmp_path / "approval-page.png"), full_page=True)
        page.fill("#reason", "checked in the browser")
        page.click("#approve")
        expect(page.locator("#status")).to_have_text("approved")
        expect(page.locator("#status-detail")).to_contain_text("by alice: checked in the browser")
        expect(page.locator("#summary")).to_have_text(
            "Approved: the statement was released to run once for the agent's session; its rows (or its effect) "
            "went to the agent.")
        out, _ = client.communicate(timeout=15)
        assert out.strip() == direct_value(pg, sql)
        assert not errors, errors
        context.close()
    finally:
        client.kill()


def paris_time(seconds: float) -> str:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    local = datetime.fromtimestamp(seconds, ZoneInfo("Europe/Paris"))
    offset = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M:%S} {offset[:3]}:{offset[3:]} (Europe/Paris)"


def test_approving_a_write_asks_for_confirmation(browser: Browser, approving: ProxyThread) -> None:
    """Approving a statement that changes data takes a second click in a dialog naming the
    change; going back decides nothing. A read is approved in one click (the test above)."""
    client = held_psql(approving, "UPDATE customers SET email = email WHERE id = 56")
    try:
        request = wait_pending(approving, "WHERE id = 56")
        page = browser.new_page()
        sign_in(page, request["url"])
        expect(page.locator("#status")).to_have_text("pending")
        page.click("#approve")
        dialog = page.locator("#confirm")
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text("This statement writes data.")
        page.click("#confirm-cancel")
        expect(dialog).to_be_hidden()
        page.wait_for_timeout(300)  # time for a decision to be sent, were one sent
        status, found = api(approving, "GET", f"/api/approvals/{request['id']}", token=reviewer_token())
        assert (status, found["status"]) == (200, "pending")
        page.click("#approve")
        page.click("#confirm-approve")
        expect(page.locator("#status")).to_have_text("approved")
        expect(page.locator("#summary")).to_contain_text("Approved")
        _, err = client.communicate(timeout=15)
        assert "ERROR" not in err
        page.close()
    finally:
        client.kill()


def held_psql_as(proxy: ProxyThread, agent: str, sql: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(find_pg_bin("psql")), "-X", "-At", proxy.dsn(agent), "-c", sql],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_inbox_lists_pending_requests_with_filters(browser: Browser, approving: ProxyThread) -> None:
    """The inbox lists the pending requests a reviewer may decide, filtered by database, agent
    and rule, each linking to its page; a reviewer outside the rules' groups sees none of them."""
    clients = [held_psql_as(approving, "agent", "SELECT email FROM customers WHERE id = 58"),
               held_psql_as(approving, "inbox-bot", "SELECT phone FROM customers WHERE id = 59"),
               held_psql_as(approving, "agent", "CREATE TABLE inbox_made (id int)")]
    requests = []
    try:
        for fragment in ("WHERE id = 58", "WHERE id = 59", "CREATE TABLE inbox_made"):
            requests.append(wait_pending(approving, fragment))
        base = approving.server.approvals_url
        page = browser.new_page()
        page.goto(f"{base}/approvals")
        page.fill("#token", reviewer_token())
        page.click("#signin-button")
        listed = page.locator("#requests li")
        for fragment in ("WHERE id = 58", "WHERE id = 59", "CREATE TABLE inbox_made"):
            expect(listed.filter(has_text=fragment)).to_have_count(1)
        expect(listed.filter(has_text="WHERE id = 59")).to_contain_text("inbox-bot on app · rule personal-data")
        page.select_option("#filter-agent", "inbox-bot")
        expect(listed).to_have_count(1)
        expect(listed).to_contain_text("WHERE id = 59")
        page.select_option("#filter-agent", "agent")
        page.select_option("#filter-rule", "schema-change")
        expect(listed.filter(has_text="CREATE TABLE inbox_made")).to_have_count(1)
        expect(listed.filter(has_text="WHERE id = 58")).to_have_count(0)
        page.select_option("#filter-rule", "")
        page.select_option("#filter-database", "app")
        expect(listed.filter(has_text="WHERE id = 58")).to_have_count(1)
        assert "agent=agent" in page.url and "database=app" in page.url  # a filtered inbox can be shared
        page.get_by_role("link", name=re.compile("WHERE id = 58")).click()
        expect(page.locator("#status")).to_have_text("pending")
        expect(page.locator("#statement")).to_contain_text("id = 58")
        page.close()
        # Only what the reviewer may read: a token in no group of these rules lists nothing.
        context = browser.new_context(extra_http_headers={
            "X-Forwarded-Access-Token": reviewer_token("erin", groups=("auditors",))})
        page = context.new_page()
        page.goto(f"{base}/approvals")
        expect(page.locator("#count")).to_have_text("0 of 0 pending requests")
        context.close()
    finally:
        for request in requests:
            decide(approving, request, "deny", reason="cleanup")
        for client in clients:
            client.kill()


def test_page_updates_when_another_reviewer_decides(browser: Browser, approving: ProxyThread) -> None:
    client = held_psql(approving, "SELECT phone FROM customers WHERE id = 52")
    try:
        request = wait_pending(approving, "WHERE id = 52")
        page = browser.new_page()
        sign_in(page, request["url"])
        expect(page.locator("#status")).to_have_text("pending")
        assert decide(approving, request, "deny", reason="decided elsewhere", token=reviewer_token("carol"))[0] == 200
        expect(page.locator("#status")).to_have_text("denied", timeout=10_000)
        expect(page.locator("#decide")).to_be_hidden()
        page.close()
        _, err = client.communicate(timeout=15)
        assert "denied by reviewer carol: decided elsewhere" in err
    finally:
        client.kill()


def test_page_shows_nothing_without_a_reviewer_token(browser: Browser, approving: ProxyThread) -> None:
    client = held_psql(approving, "SELECT ssn FROM customers WHERE id = 53")
    try:
        request = wait_pending(approving, "WHERE id = 53")
        page = browser.new_page()
        page.goto(request["url"])
        expect(page.locator("#signin")).to_be_visible()
        expect(page.locator("#request")).to_be_hidden()
        assert "customers" not in page.content()  # the link alone reveals nothing
        page.fill("#token", "not-a-token")
        page.click("#signin-button")
        expect(page.locator("#signin-error")).to_contain_text("reviewer token refused")
        page.close()
        decide(approving, request, "deny", reason="cleanup")
        client.communicate(timeout=15)
    finally:
        client.kill()


def test_sso_provided_token(browser: Browser, approving: ProxyThread, pg: PostgresCluster) -> None:
    sql = "SELECT email FROM customers WHERE id = 54"
    client = held_psql(approving, sql)
    try:
        request = wait_pending(approving, "WHERE id = 54")
        # An SSO proxy in front of pgproxy adds the reviewer's token to every request it forwards.
        context = browser.new_context(extra_http_headers={"X-Forwarded-Access-Token": reviewer_token()})
        page = context.new_page()
        page.goto(request["url"])
        expect(page.locator("#status")).to_have_text("pending")  # no sign-in step
        expect(page.locator("#signin")).to_be_hidden()
        page.click("#approve")
        expect(page.locator("#status")).to_have_text("approved")
        out, _ = client.communicate(timeout=15)
        assert out.strip() == direct_value(pg, sql)
        context.close()
    finally:
        client.kill()


def test_the_demo_sign_in_needs_the_code_from_the_terminal(browser: Browser, pg: PostgresCluster,
                                                           tmp_path: Path) -> None:
    """What an agent holds (its token, the link) does not sign in as the demo reviewer."""
    with start_proxy(pg, tmp_path, demo_code="c0de-42") as proxy:
        client = held_psql(proxy, "SELECT ssn FROM customers WHERE id = 52")
        try:
            request = wait_pending(proxy, "WHERE id = 52")
            page = browser.new_page()
            page.goto(request["url"])
            expect(page.locator("#demo")).to_be_visible()
            for wrong in (make_token("agent"), ""):
                page.fill("#demo-code", wrong)
                page.click("#demo-login")
                expect(page.locator("#signin-error")).to_contain_text("wrong code")
                expect(page.locator("#request")).to_be_hidden()
            page.fill("#demo-code", "c0de-42")
            page.click("#demo-login")
            expect(page.locator("#status")).to_have_text("pending")
            page.close()
        finally:
            client.kill()
    (tmp_path / "plain").mkdir()
    with start_proxy(pg, tmp_path / "plain") as proxy:  # not a demo: no demo sign-in at all
        page = browser.new_page()
        page.goto(f"{proxy.server.approvals_url}/approvals/none")
        expect(page.locator("#signin")).to_be_visible()
        expect(page.locator("#demo")).to_be_hidden()
        page.close()


def test_a_page_on_another_site_cannot_approve(browser: Browser, approving: ProxyThread, tmp_path: Path) -> None:
    """A reviewer signed in through an SSO proxy (which adds their token to every request the
    browser makes) opens a page on another site that posts a decision, as a form and as a
    fetch: the request stays pending."""
    import http.server
    import threading

    from pgproxy.pgcluster import free_port

    client = held_psql(approving, "SELECT email FROM customers WHERE id = 53")
    try:
        request = wait_pending(approving, "WHERE id = 53")
        target = f"{approving.server.approvals_url}/api/approvals/{request['id']}/decision"
        field = ('{"decision":"approve","reason":"x","statement_sha256":"' + request["statement_sha256"]
                 + '","pad":"')
        (tmp_path / "index.html").write_text(f"""<!doctype html><html><body>
<form id="f" method="POST" action="{target}" enctype="text/plain"><input name='{field}' value='"}}'></form>
<script>
fetch("{target}", {{method: "POST", mode: "no-cors", credentials: "include",
  headers: {{"Content-Type": "text/plain"}}, body: '{field}"}}'}}).finally(() => document.getElementById("f").submit());
</script></body></html>""")
        port = free_port()
        handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            context = browser.new_context(extra_http_headers={"X-Forwarded-Access-Token": reviewer_token()})
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{port}/index.html")
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(500)
            context.close()
        finally:
            server.shutdown()
        status, found = api(approving, "GET", f"/api/approvals/{request['id']}", token=reviewer_token())
        assert status == 200 and found["status"] == "pending", found
        assert decide(approving, request, "deny", reason="done")[0] == 200
    finally:
        client.kill()


def held_in_thread(proxy: ProxyThread, sql: str, *parameters: str) -> threading.Thread:
    """A statement (with text parameters) run through the proxy by psycopg in a thread, held
    until decided (its outcome, an error, is not looked at)."""
    def run() -> None:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn, contextlib.suppress(psycopg.Error):
            conn.execute(sql, parameters or None)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return worker


def test_binary_parameters_are_shown_as_values(browser: Browser, approving: ProxyThread) -> None:
    """asyncpg binds numbers, dates, uuids… in binary: the page shows each as the value it is
    (read as the type the server described), not as the hex of its bytes."""
    import asyncio
    import datetime
    import decimal
    import uuid

    import asyncpg

    sql = ("SELECT email FROM customers WHERE id = $1 AND $2::int8 > 0 AND $3::numeric > 0 AND $4::float8 > 0 "
           "AND $5::bool AND $6::uuid IS NOT NULL AND $7::date IS NOT NULL AND $8::timestamptz IS NOT NULL "
           "AND $9::text IS NOT NULL AND $10::int2 > 0")
    values = (11, 9_000_000_000, decimal.Decimal("-1234.050"), 0.5, True,
              uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), datetime.date(2024, 2, 29),
              datetime.datetime(2024, 2, 29, 13, 45, 6, 500000, tzinfo=datetime.UTC), "plain text", 7)

    async def run() -> None:
        conn = await asyncpg.connect(approving.dsn())
        try:
            await conn.fetch(sql, *values)
        except asyncpg.PostgresError:
            pass  # denied below
        finally:
            await conn.close()

    worker = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    worker.start()
    request = wait_pending(approving, "AND $10::int2 > 0")
    try:
        page = browser.new_page()
        sign_in(page, request["url"])
        expect(page.locator("#status")).to_have_text("pending")
        shown = ["11", "9000000000", "-1234.050", "0.5", "true", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                 "2024-02-29", "2024-02-29 13:45:06.5+00", "plain text", "7"]
        expect(page.locator("#parameters li")).to_have_text(shown)
        page.close()
    finally:
        decide(approving, request, "deny", reason="cleanup")
        worker.join(15)


def test_the_page_shows_the_planners_estimate(browser: Browser, approving: ProxyThread, pg: PostgresCluster) -> None:
    """While a statement waits, pgproxy plans it (EXPLAIN, on its own connection, with the
    statement's parameters) and the page shows how many rows it would return or change, and the
    plan; nothing of it runs."""
    before = direct_value(pg, "SELECT count(*) FROM customers WHERE email LIKE '%@example.invalid'")
    update = held_psql(approving, "UPDATE customers SET email = 'x@example.invalid' WHERE id < 4")
    read = held_in_thread(approving, "SELECT email FROM customers WHERE id = %s", "42")
    try:
        changes = wait_pending(approving, "WHERE id < 4")
        reads = wait_pending(approving, "WHERE id = $1")
        page = browser.new_page()
        sign_in(page, changes["url"])
        expect(page.locator("#estimate")).to_have_text(
            re.compile(r"The planner estimates it changes about \d+ rows?\."))
        page.get_by_text("The plan (EXPLAIN: planned, not run)").click()
        expect(page.locator("#plan")).to_contain_text("Update on customers")
        page.goto(reads["url"])
        expect(page.locator("#estimate")).to_have_text("The planner estimates it returns about 1 row.")
        page.get_by_text("The plan (EXPLAIN: planned, not run)").click()
        expect(page.locator("#plan")).to_contain_text("(id = 42)")  # planned with the parameter's value
        page.close()
        # Planned, not run: nothing changed while it waited.
        assert direct_value(pg, "SELECT count(*) FROM customers WHERE email LIKE '%@example.invalid'") == before
    finally:
        for request in (changes, reads):
            decide(approving, request, "deny", reason="cleanup")
        update.communicate(timeout=15)
        read.join(15)


def test_no_estimate_for_ddl_or_code_the_planner_would_run(browser: Browser, approving: ProxyThread,
                                                           pg: PostgresCluster) -> None:
    """DDL is not planned: the page names what it changes. A statement calling a user function
    is not planned either (the planner may run it): the page says why."""
    pg.psql("CREATE OR REPLACE FUNCTION page_fold(x int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT x'",
            dbname="app", user="app_scram")
    ddl = held_psql(approving, "CREATE TABLE page_made (id int)")
    code = held_psql(approving, "SELECT email FROM customers WHERE id = page_fold(57)")
    try:
        created = wait_pending(approving, "CREATE TABLE page_made")
        calls = wait_pending(approving, "page_fold(57)")
        page = browser.new_page()
        sign_in(page, created["url"])
        expect(page.locator("#estimate")).to_have_text("no estimate for DDL: see what it changes below")
        expect(page.locator("#ddl-targets")).to_have_text("CREATE TABLE changes public.page_made")
        expect(page.locator("#plan-box")).to_be_hidden()
        page.goto(calls["url"])
        expect(page.locator("#estimate")).to_contain_text("no estimate: planning this statement could run code")
        page.close()
    finally:
        for request in (created, calls):
            decide(approving, request, "deny", reason="cleanup")
        ddl.communicate(timeout=15)
        code.communicate(timeout=15)
        pg.psql("DROP FUNCTION IF EXISTS page_fold(int)", dbname="app", user="app_scram")


def test_a_long_statement_is_cut_with_its_hash_and_a_download(browser: Browser, approving: ProxyThread,
                                                              tmp_path: Path) -> None:
    from tests.test_approvals import big_statement

    sql = big_statement(300_000, "the-very-end")
    worker = held_in_thread(approving, sql)
    request = wait_pending(approving, "SELECT email FROM customers WHERE name IN")
    try:
        page = browser.new_page()
        sign_in(page, request["url"])
        expect(page.locator("#status")).to_have_text("pending")
        expect(page.locator("#statement")).to_contain_text("customer 00000001")
        assert "the-very-end" not in page.locator("#statement").inner_text()
        cut = page.locator("#statement-cut")
        expect(cut).to_be_visible()
        expect(cut).to_contain_text(f"it has {len(sql):,} bytes")
        expect(cut.locator(".sha")).to_have_text(hashlib.sha256(sql.encode()).hexdigest())
        with page.expect_download() as download:
            cut.get_by_role("button", name="Download the whole statement").click()
        saved = tmp_path / "statement.sql"
        download.value.save_as(saved)
        assert saved.read_bytes() == sql.encode()
        page.close()
    finally:
        decide(approving, request, "deny", reason="cleanup")
        worker.join(15)


def test_invisible_characters_are_shown_and_flagged(browser: Browser, approving: ProxyThread) -> None:
    """A right-to-left override in a parameter and a zero-width space in the statement would
    display reversed or not at all: the page shows markers and a warning."""
    sql = "SELECT email FROM customers WHERE name = 'ad\u200bmin' AND phone = %s"
    worker = held_in_thread(approving, sql, "\u202etxt.exe")
    request = wait_pending(approving, "AND phone = $1")
    try:
        page = browser.new_page()
        sign_in(page, request["url"])
        expect(page.locator("#status")).to_have_text("pending")
        warning = page.locator("#invisible-warning")
        expect(warning).to_be_visible()
        expect(warning).to_contain_text("statement (U+200B)")
        expect(warning).to_contain_text("parameter $1 (U+202E)")
        expect(page.locator("#statement")).to_contain_text("ad⟨U+200B⟩min")
        expect(page.locator("#parameters")).to_contain_text("⟨U+202E⟩txt.exe")
        # The marker replaces the character: the text no longer reverses what follows it.
        assert "\u202e" not in page.locator("#parameters").inner_text()
        page.close()
        clean = held_in_thread(approving, "SELECT email FROM customers WHERE id = 55")
        plain = wait_pending(approving, "WHERE id = 55")
        page = browser.new_page()
        sign_in(page, plain["url"])
        expect(page.locator("#status")).to_have_text("pending")
        expect(page.locator("#invisible-warning")).to_be_hidden()
        page.close()
        decide(approving, plain, "deny", reason="cleanup")
        clean.join(15)
    finally:
        decide(approving, request, "deny", reason="cleanup")
        worker.join(15)


def test_the_page_and_the_server_agree_on_invisible_characters() -> None:
    """The page's character class is display.py's, in JavaScript's spelling."""
    from pgproxy.approvals.display import INVISIBLE_CLASS

    python = re.sub(r"\\U000([0-9A-F]{5})", r"\\u{\1}", INVISIBLE_CLASS)
    for name in ("reviewer.js",):  # the request page's and the inbox's (both load it)
        script = (Path(__file__).resolve().parent.parent / "pgproxy/approvals/assets" / name).read_text()
        found = re.search(r'const INVISIBLE = new RegExp\("\[(.*?)\]", "gu"\);', script.replace('" +\n', "")
                          .replace(" " * 29 + '"', ""), re.S)
        assert found is not None, name
        assert found.group(1).replace("\\\\", "\\") == python, name


def test_the_agents_reason_is_shown_as_its_claim(browser: Browser, approving: ProxyThread) -> None:
    """A justification comment reaches the page, labelled as the agent's claim; invisible characters
    in it cannot hide (the comment's grammar refuses them), and a statement without one says so."""
    reason = 'ticket <b>42</b> "urgent"'
    client = held_psql(approving, f'/* pgproxy: reason="{reason.replace(chr(34), chr(34) * 2)}" */ '
                                  "SELECT email FROM customers WHERE id = 57")
    plain = held_psql(approving, "SELECT email FROM customers WHERE id = 58")
    try:
        request = wait_pending(approving, "WHERE id = 57")
        page = browser.new_context().new_page()
        sign_in(page, request["url"])
        expect(page.locator("#justification")).to_have_text(reason)  # as text: no markup
        expect(page.locator("#justification-note")).to_be_visible()
        other = wait_pending(approving, "WHERE id = 58")
        page.goto(other["url"])
        expect(page.locator("#justification")).to_have_text("none given")
        expect(page.locator("#justification-note")).to_be_hidden()
        for held in (request, other):
            assert decide(approving, held, "deny", reason="done")[0] == 200
    finally:
        client.kill()
        plain.kill()


def test_reviewer_approves_with_masking_in_the_browser(browser: Browser, approving: ProxyThread,
                                                       pg: PostgresCluster) -> None:
    """"Approve with masking" runs the statement with its tagged columns masked; a statement pgproxy
    cannot mask is not offered it, and the page says why."""
    sql = "SELECT id, name, email FROM customers WHERE id = 61"
    client = held_psql(approving, sql)
    other = held_psql(approving, "SELECT id FROM customers WHERE email LIKE 'zz%' AND id = 62")
    try:
        request = wait_pending(approving, "WHERE id = 61")
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        sign_in(page, request["url"])
        expect(page.locator("#status")).to_have_text("pending")
        expect(page.locator("#masked-means")).to_contain_text("tagged columns masked")
        page.fill("#reason", "masked is enough")
        page.click("#approve-masked")
        expect(page.locator("#status")).to_have_text("approved")
        expect(page.locator("#summary")).to_contain_text("Approved with masking")
        out, _ = client.communicate(timeout=15)
        id_, name, email = direct_value(pg, sql).split("|")
        local, _, domain = email.rpartition("@")
        assert out.strip() == f"{id_}|***|{local[0]}***@{domain}" and name != "***"
        assert not errors, errors

        cannot = wait_pending(approving, "AND id = 62")
        page.goto(cannot["url"])  # signed in already (the token is kept for the tab)
        expect(page.locator("#status")).to_have_text("pending")
        expect(page.locator("#approve-masked")).to_be_hidden()
        expect(page.locator("#masked-not")).to_contain_text(
            "Approving with masking is not possible: it uses public.customers.email other than as a plain output")
        page.close()
    finally:
        client.kill()
        other.kill()
