"""Enforce mode end to end: the policy corpora through `pgproxy check` and live through the
proxy (psql: simple protocol; asyncpg: extended), the decision cache, oversized and deeply
nested statements, and the result guard."""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pglast
import psycopg
import pytest

from pgproxy.analysis.references import References
from pgproxy.analysis.schema import Schema
from pgproxy.config import Config, load_config
from pgproxy.enforce import PolicyGate
from pgproxy.pgcluster import PostgresCluster, find_pg_bin
from pgproxy.policy import strictest
from pgproxy.wire import messages as m
from tests import corpus
from tests.harness import (
    ProxyThread,
    RawClient,
    error_fields,
    piecemeal_upstream,
    raw_session,
    running_proxy,
    write_enforce_config,
)

REFUSED = {"review": "approval required", "deny": "pgproxy denied this statement"}
BENIGN = corpus.load("benign")
RISKY = corpus.load("risky")


@pytest.fixture(scope="module")
def corpus_db(pg: PostgresCluster) -> None:
    pg.psql((corpus.CORPORA / "setup.sql").read_text(), dbname="app", user="app_scram")
    # One table name in two schemas, tagged only in crm (the search_path test).
    pg.psql("CREATE TABLE IF NOT EXISTS public.contacts (id int, phone text);"
            "CREATE TABLE IF NOT EXISTS crm.contacts (id int, phone text)", dbname="app", user="app_scram")


@pytest.fixture(scope="module")
def enforce(pg: PostgresCluster, corpus_db: None,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyThread, Config]]:
    config = load_config(write_enforce_config(pg, tmp_path_factory.mktemp("enforce"), catalog=corpus.CATALOG))
    with running_proxy(config) as proxy:
        yield proxy, config


@pytest.fixture(scope="module")
def schema(enforce: tuple[ProxyThread, Config]) -> Schema:
    gate = enforce[0].server.gate
    assert isinstance(gate, PolicyGate)
    found = gate.catalog.schema("app")
    assert found is not None
    return found


def _gate(proxy: ProxyThread) -> PolicyGate:
    gate = proxy.server.gate
    assert isinstance(gate, PolicyGate)
    return gate


def explained_action(sql: str, schema: Schema, config: Config) -> tuple[str, str]:
    from pgproxy.check import explain

    explanations = explain(sql, schema, config, agent="agent", groups=frozenset({"agents"}))
    final = strictest(e.decision for e in explanations)
    why = "; ".join(f"{e.analysis.command}: {e.decision.rule} {e.analysis.reasons}" for e in explanations)
    return final.action.value, why


@pytest.mark.parametrize("case", BENIGN + RISKY, ids=lambda c: c.id)
def test_corpus_through_check(case: corpus.Case, schema: Schema, enforce: tuple[ProxyThread, Config]) -> None:
    action, why = explained_action(case.sql, schema, enforce[1])
    assert action == case.expect, f"{case.reason}: got {action} ({why})"


def test_corpora_are_big_enough() -> None:
    assert len(BENIGN) >= 60 and all(c.expect == "allow" for c in BENIGN)
    assert len(RISKY) >= 150 and {c.expect for c in RISKY} == {"review", "deny"}


def _copy_from_stdin(sql: str) -> bool:
    return "FROM STDIN" in " ".join(sql.upper().split())


def _statements(sql: str) -> int:
    try:
        return len(pglast.split(sql))
    except pglast.parser.ParseError:
        return 1


def _refusal(message: str) -> str | None:
    return next((action for action, text in REFUSED.items() if text in message), None)


@pytest.mark.parametrize("corpus_name", ["benign", "risky"])
def test_corpus_live_with_psql_simple_protocol(enforce: tuple[ProxyThread, Config], corpus_name: str) -> None:
    proxy, _ = enforce
    mismatches = []
    for case in corpus.load(corpus_name):
        result = subprocess.run(
            [str(find_pg_bin("psql")), "-X", "-q", proxy.dsn(), "-c", "BEGIN", "-c", case.sql, "-c", "ROLLBACK"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        refused = _refusal(result.stderr)
        if (refused or "allow") != case.expect:
            mismatches.append(f"{case.id} expected {case.expect}, got {refused or 'allow'}: {result.stderr[:200]}")
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("corpus_name", ["benign", "risky"])
async def test_corpus_live_with_asyncpg_extended_protocol(enforce: tuple[ProxyThread, Config],
                                                          corpus_name: str) -> None:
    proxy, _ = enforce
    conn = await asyncpg.connect(proxy.dsn())
    mismatches = []
    try:
        for case in corpus.load(corpus_name):
            if case.expect == "allow" and _copy_from_stdin(case.sql):
                continue  # asyncpg's fetch() waits forever for COPY data, direct or not: psql covers these
            if _statements(case.sql) > 1:
                # The server refuses to prepare several statements at once: nothing of them runs,
                # so there is nothing to hold (psql's simple protocol runs these).
                continue
            transaction = conn.transaction()
            await transaction.start()
            refused = None
            try:
                await conn.fetch(case.sql)  # Parse/Bind/Execute: the extended protocol
            except asyncpg.PostgresError as exc:
                refused = _refusal(str(exc))
            except asyncpg.InterfaceError:
                pass  # e.g. COPY through fetch(); not a refusal
            finally:
                await transaction.rollback()
            if (refused or "allow") != case.expect:
                mismatches.append(f"{case.id} expected {case.expect}, got {refused or 'allow'}")
    finally:
        await conn.close()
    assert not mismatches, "\n".join(mismatches)


# --- the decision cache -------------------------------------------------------------------


def _outcome(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> str:
    try:
        conn.execute(sql)
        return "allow"
    except psycopg.errors.InsufficientPrivilege as exc:
        conn.rollback()
        return _refusal(str(exc)) or "other"
    except psycopg.Error:
        conn.rollback()
        return "allow"  # reached the server, which refused it for its own reasons


def test_cache_never_merges_statements_that_differ_in_meaning(enforce: tuple[ProxyThread, Config]) -> None:
    proxy, _ = enforce
    gate = proxy.server.gate
    assert isinstance(gate, PolicyGate)
    pairs = [
        # (benign warm-up, same normalized shape but risky, expected)
        ("SELECT set_config('statement_timeout', '1000', false)",
         "SELECT set_config('role', 'postgres', false)", "deny"),
        ("SELECT a FROM customers AS c(a)", "SELECT a FROM customers AS c(x, y, a)", "review"),
        ("SELECT t.country FROM customers t", "SELECT t.email FROM customers t", "review"),
        ("SELECT x FROM (SELECT country AS x FROM customers) s", "SELECT x FROM (SELECT ssn AS x FROM customers) s",
         "review"),
        ("SELECT o FROM orders o", "SELECT o FROM customers o", "review"),
        ("SELECT id FROM customers WHERE id = 1", "SELECT id FROM customers WHERE email = 'a@b.c'", "review"),
        # After a non-ASCII character every token still counts whole (a key made of shifted
        # slices made these two, which differ in one column's last letter, one key).
        ("SELECT 'é', ssx || '' FROM customers c, (SELECT 1 AS ssx) s",
         "SELECT 'é', ssn || '' FROM customers c, (SELECT 1 AS ssx) s", "review"),
    ]
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for benign, risky, expected in pairs:
            assert _outcome(conn, benign) == "allow", benign
            assert _outcome(conn, benign) == "allow", benign  # now from the cache
            assert _outcome(conn, risky) == expected, risky
        hits = gate.cache.hits
        # Literals do not change a decision's key: a new value is a cache hit.
        assert _outcome(conn, "SELECT id FROM customers WHERE id = 2") == "allow"
        assert gate.cache.hits == hits + 1
        # Whether EXPLAIN runs its statement turns on a constant the normalized key drops: a
        # decision for one must not answer the other, in either order.
        assert _outcome(conn, "EXPLAIN (ANALYZE 1) SELECT ssn FROM customers") == "review"
        assert _outcome(conn, "EXPLAIN (ANALYZE 0) SELECT ssn FROM customers") == "allow"
        assert _outcome(conn, "EXPLAIN (ANALYZE 0) SELECT email FROM customers") == "allow"
        assert _outcome(conn, "EXPLAIN (ANALYZE 1) SELECT email FROM customers") == "review"


def _answers(client: RawClient, count: int) -> list[list[str]]:
    """The next `count` answers (up to ReadyForQuery): each one's first-column values, or
    ["error <SQLSTATE>"]."""
    answers = []
    for _ in range(count):
        answer = []
        for type_byte, body in client.until_ready():
            if type_byte == ord("D"):
                (length,) = struct.unpack_from("!i", body, 2)
                answer.append(body[6:6 + length].decode())
            elif type_byte == ord("E"):
                answer.append(f"error {error_fields(body)['C']}")
        answers.append(answer)
    return answers


def _read_apart() -> None:
    """Let the proxy read what was sent so far on its own, before the rest arrives."""
    time.sleep(0.05)


def test_reads_are_framed_alike_when_the_decision_is_remembered(enforce: tuple[ProxyThread, Config]) -> None:
    """A Query the session has already decided (by its shape) takes the relay's shortcut when
    it arrives alone in one read; split across reads, several in one read, or followed by part
    of the next, it is framed and judged like any other, and every answer comes in order."""
    proxy, _ = enforce

    def ask(row: int) -> bytes:
        return m.Query(f"SELECT id FROM orders WHERE id = {row}").encode()

    with raw_session(proxy) as client:
        client.send(ask(1))
        assert _answers(client, 1) == [["1"]]
        client.send(ask(2))  # alone: the shortcut
        assert _answers(client, 1) == [["2"]]
        split = ask(3)
        client.send(split[:3])
        _read_apart()
        client.send(split[3:])
        assert _answers(client, 1) == [["3"]]
        client.send(ask(4) + ask(5))
        assert _answers(client, 2) == [["4"], ["5"]]
        following = ask(7)
        client.send(ask(6) + following[:8])
        _read_apart()
        client.send(following[8:])
        assert _answers(client, 2) == [["6"], ["7"]]
        # A statement of another shape behind a remembered one is still judged.
        client.send(ask(8) + m.Query("SELECT email FROM customers WHERE id = 1").encode())
        assert _answers(client, 2) == [["8"], ["error 42501"]]
        client.send(ask(9))
        assert _answers(client, 1) == [["9"]]


async def test_server_reads_cut_anywhere_reach_the_client_whole(pg: PostgresCluster, corpus_db: None,
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's answers read in pieces cut at random places (inside a header, inside a
    body, several messages and a part) or several to a read: every result and error arrives
    whole and in order, the result guard still refuses before any row leaves, and the session
    is known to be idle after answers that came joined (its idle timeout ends it)."""
    config = load_config(write_enforce_config(pg, tmp_path, catalog=corpus.CATALOG))
    with piecemeal_upstream(pg) as port:
        routes = {name: dataclasses.replace(route, port=port) for name, route in config.routes.items()}
        limits = dataclasses.replace(config.limits, idle_timeout_seconds=2)
        with running_proxy(dataclasses.replace(config, routes=routes, limits=limits)) as proxy:
            with raw_session(proxy) as client:
                for _ in range(6):
                    client.send(b"".join(m.Query(f"SELECT {i} + 1").encode() for i in range(3)))
                    assert _answers(client, 3) == [["1"], ["2"], ["3"]]
                assert any(type_byte == ord("E") and error_fields(body)["C"] == "57P05"
                           for type_byte, body in client.until_ready())
            with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
                for i in range(1, 40):
                    assert conn.execute(f"SELECT {i}, repeat('x', {i * 7})").fetchone() == (i, "x" * i * 7)
                with pytest.raises(psycopg.errors.DivisionByZero):
                    conn.execute("SELECT 1 / 0")
                with conn.pipeline():
                    first = conn.execute("SELECT count(*) FROM orders")
                    second = conn.execute("SELECT id FROM orders ORDER BY id LIMIT 3")
                assert first.fetchone() == (5000,) and second.fetchall() == [(1,), (2,), (3,)]
                rows = conn.execute("SELECT id, status FROM orders ORDER BY id").fetchall()
                assert [row[0] for row in rows] == list(range(1, 5001))
            client = await asyncpg.connect(proxy.dsn())
            try:
                for i in range(1, 30):
                    assert await client.fetchval("SELECT count(*) FROM orders WHERE id <= $1", i) == i
                monkeypatch.setattr(References, "read_all", lambda self, relation: None)
                _gate(proxy).cache.clear()
                for _ in range(3):
                    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="refused a result"):
                        await client.fetch("SELECT * FROM customers WHERE id = $1", 5)
                assert await client.fetchval("SELECT count(*) FROM orders WHERE id <= $1", 7) == 7
            finally:
                await client.close()


def test_prepared_statement_reads_are_framed_alike(enforce: tuple[ProxyThread, Config]) -> None:
    """Runs of an allowed prepared statement (Bind, Execute, Sync) take the relay's shortcut
    when a read holds only such whole messages; split across reads, or sharing a read with
    a Parse, they are framed and judged like any other."""
    proxy, _ = enforce

    def run(row: int, statement: str = "allowed") -> bytes:
        return (m.Bind("", statement, (), (str(row).encode(),), ()).encode() + m.Execute("").encode()
                + m.Sync().encode())

    with raw_session(proxy) as client:
        client.send(m.Parse("allowed", "SELECT id FROM orders WHERE id = $1").encode() + m.Sync().encode())
        assert _answers(client, 1) == [[]]
        client.send(run(1))  # alone: the shortcut
        assert _answers(client, 1) == [["1"]]
        client.send(run(2) + run(3))
        assert _answers(client, 2) == [["2"], ["3"]]
        split = run(4)
        client.send(split[:12])
        _read_apart()
        client.send(split[12:])
        assert _answers(client, 1) == [["4"]]
        # A Parse in the same read is judged: this one needs review, so it fails, and with it
        # the rest of its cycle.
        risky = m.Parse("risky", "SELECT email FROM customers WHERE id = $1").encode()
        client.send(run(5) + risky + run(6, "risky"))
        assert _answers(client, 2) == [["5"], ["error 42501"]]
        client.send(run(7))
        assert _answers(client, 1) == [["7"]]


def test_normalize_memo_never_merges_texts_the_scanner_tells_apart() -> None:
    from pgproxy.analysis.cache import _normalize, normalize

    # Each group: texts that differ only in digits. The memo (keyed by the text with its
    # integers replaced, when that is sound) must give what the scanner gives for every one.
    groups = [
        ["SELECT abalance FROM pgbench_accounts WHERE aid = 1", "SELECT abalance FROM pgbench_accounts WHERE aid = 22"],
        ['SELECT "c 1" FROM t', 'SELECT "c 2" FROM t'],
        ["SELECT t1.a FROM t1", "SELECT t2.a FROM t2"],
        ["SELECT é1 FROM t", "SELECT é2 FROM t"],
        ["SELECT $1::int", "SELECT $2::int"],
        ["SELECT 1.5", "SELECT 1.6", "SELECT 15"],
        ["SELECT 1e3", "SELECT 1e4"],
        ["SELECT 0x1F", "SELECT 0x2F"],
        ["SELECT a -- 1\nFROM t", "SELECT a -- 2\nFROM t"],
        ["SELECT a /* 1 */ FROM t1", "SELECT a /* 2 */ FROM t1"],
        ["SELECT 'a1'", "SELECT 'a2'"],
        ["SELECT $$1$$", "SELECT $$2$$"],
        ["SELECT x[1:2] FROM t", "SELECT x[3:4] FROM t"],
        ["SELECT 1::numeric(10, 2)", "SELECT 2::numeric(12, 3)"],
        ["SELECT a FROM t LIMIT 10 OFFSET 5", "SELECT a FROM t LIMIT 20 OFFSET 6"],
    ]
    for group in groups:
        for text in group + group:  # the second pass comes from the memo
            assert normalize(text) == _normalize(text), text
    # Every token is kept whole whatever characters come before it.
    for before in ("é", "ééé", "€", "𝄞", "Zoë", "日本"):
        assert _normalize(f"SELECT '{before}', \"{before}\", ssn FROM customers") == \
            f'SELECT \x00 , "{before}" , ssn FROM customers'
    assert normalize("SELECT t1.a FROM t1") != normalize("SELECT t2.a FROM t2")
    assert normalize('SELECT "c 1" FROM t') != normalize('SELECT "c 2" FROM t')
    assert normalize("SELECT $1::int") != normalize("SELECT $2::int")


def test_cache_key_includes_search_path(enforce: tuple[ProxyThread, Config]) -> None:
    proxy, _ = enforce
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert _outcome(conn, "SELECT phone FROM contacts") == "allow"  # public.contacts: untagged
        assert _outcome(conn, "SET search_path TO crm, public") == "allow"
        assert _outcome(conn, "SELECT phone FROM contacts") == "review"  # now crm.contacts.phone: pii
        assert _outcome(conn, "SET search_path TO public") == "allow"
        assert _outcome(conn, "SELECT phone FROM contacts") == "allow"


def test_cache_key_includes_groups(pg: PostgresCluster, corpus_db: None, tmp_path: Path) -> None:
    from pgproxy.demo.run import demo_file
    from tests.harness import make_token

    policy = demo_file("policy.yaml").replace("rules:\n", """rules:
  - name: support-reads-email
    groups: [support]
    tags_read: [pii.email]
    kinds: [read]
    action: allow
    reason: support staff look up customers by email
""", 1)
    config = load_config(write_enforce_config(pg, tmp_path, catalog=corpus.CATALOG, policy=policy))
    with running_proxy(config) as proxy:
        sql = "SELECT email FROM customers WHERE id = 3"
        with psycopg.connect(proxy.dsn(password=make_token(groups=["support"]))) as support:
            assert _outcome(support, sql) == "allow"
        with psycopg.connect(proxy.dsn(password=make_token(groups=["agents"]))) as other:
            assert _outcome(other, sql) == "review"


# --- bounds ---------------------------------------------------------------------------------


def test_oversized_statement_is_not_parsed(enforce: tuple[ProxyThread, Config]) -> None:
    proxy, config = enforce
    huge = "SELECT id FROM orders WHERE status IN (" + ",".join(["'x'"] * 2_500_000) + ")"
    assert len(huge) > 10_000_000
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="larger than") as info:
            conn.execute(huge)
        assert f"{config.analysis.max_statement_bytes} bytes" in str(info.value)
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (5000,)


def test_long_statement_analysed_off_the_event_loop(enforce: tuple[ProxyThread, Config]) -> None:
    proxy, _ = enforce
    ids = list(range(1, 12_000))
    sql = f"SELECT count(*) FROM orders WHERE id IN ({','.join(map(str, ids))})"
    assert len(sql) > 8 * 1024
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute(sql).fetchone() == (5000,)
        risky = f"SELECT count(email) FROM customers WHERE id IN ({','.join(map(str, ids))})"
        assert _outcome(conn, risky) == "review"


def test_deeply_nested_statement_is_bounded(enforce: tuple[ProxyThread, Config]) -> None:
    proxy, _ = enforce
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for depth in (500, 5000):
            nested = "SELECT " + "(" * depth + "1" + ")" * depth
            assert _outcome(conn, nested) == "review"
        subqueries = "SELECT 1 FROM orders WHERE id IN (" * 200 + "SELECT 1" + ")" * 200
        assert _outcome(conn, subqueries) == "review"
        assert conn.execute("SELECT 1").fetchone() == (1,)


# --- the result guard -----------------------------------------------------------------------


def test_result_guard_catches_what_the_analysis_missed(enforce: tuple[ProxyThread, Config],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    proxy, _ = enforce
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert _outcome(conn, "SELECT * FROM customers WHERE id = 1") == "review"
        # The test hook: the analysis no longer expands stars, so it sees no tagged column
        # (and the cache, which holds the correct earlier decision, is emptied).
        monkeypatch.setattr(References, "read_all", lambda self, relation: None)
        _gate(proxy).cache.clear()
        for sql in ("SELECT * FROM customers WHERE id = 4", "SELECT * FROM customer_contacts LIMIT 1"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="refused a result") as info:
                conn.execute(sql)
            assert "email" in (info.value.diag.message_detail or "")
        # Untagged results pass under the guard, and the session carries on.
        assert conn.execute("SELECT * FROM orders WHERE id = 1").fetchone() is not None


async def test_result_guard_in_extended_protocol(enforce: tuple[ProxyThread, Config],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    proxy, _ = enforce
    monkeypatch.setattr(References, "read_all", lambda self, relation: None)
    _gate(proxy).cache.clear()
    conn = await asyncpg.connect(proxy.dsn())
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="refused a result"):
            await conn.fetch("SELECT * FROM customers WHERE id = $1", 5)
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE id < $1", 10) == 9
    finally:
        await conn.close()


def test_result_guard_checks_a_result_again_once_the_tags_change(enforce: tuple[ProxyThread, Config],
                                                                 pg: PostgresCluster,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A result the guard once let through is not let through on memory alone after the schema
    is re-read: a replaced view can carry a tag in a column that looks just as before."""
    proxy, _ = enforce
    gate = _gate(proxy)
    view = "CREATE OR REPLACE VIEW guard_probe AS SELECT id, {} AS country FROM customers"
    with psycopg.connect(pg.dsn(dbname="app"), autocommit=True) as owner:
        owner.execute(view.format("country"))
        owner.execute("GRANT SELECT ON guard_probe TO app_scram")
        try:
            proxy.call(gate.catalog.refresh("app"))
            monkeypatch.setattr(References, "read_all", lambda self, relation: None)
            gate.cache.clear()
            with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
                for _ in range(2):
                    assert conn.execute("SELECT * FROM guard_probe LIMIT 1").fetchone() is not None
                owner.execute(view.format("ssn"))  # the same name and type: an identical RowDescription
                proxy.call(gate.catalog.refresh("app"))
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="refused a result") as info:
                    conn.execute("SELECT * FROM guard_probe LIMIT 1")
                assert "guard_probe.country" in (info.value.diag.message_detail or "")
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            owner.execute("DROP VIEW guard_probe")
            proxy.call(gate.catalog.refresh("app"))


# --- pgproxy check ----------------------------------------------------------------------------


def test_check_command_human_and_json(enforce: tuple[ProxyThread, Config]) -> None:
    _, config = enforce
    assert config.source is not None
    sql = "SELECT c.id, c.email FROM customers c WHERE c.country = 'DE'; SELECT pg_read_file('x')"
    human = subprocess.run([sys.executable, "-m", "pgproxy.cli", "check", "--config", str(config.source), sql],
                           capture_output=True, text=True, timeout=60)
    assert human.returncode == 0, human.stderr
    assert "kind:      read (SELECT)" in human.stdout
    assert "public.customers.email [pii, pii.email]" in human.stdout
    assert "rule:      personal-data" in human.stdout
    assert "action:    DENY" in human.stdout
    assert "Decision for the whole query string: DENY" in human.stdout
    as_json = subprocess.run([sys.executable, "-m", "pgproxy.cli", "check", "--config", str(config.source),
                              "--json", sql], capture_output=True, text=True, timeout=60)
    objects = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [o["action"] for o in objects] == ["review", "deny"]
    assert objects[0]["reads"][1] == {"column": "public.customers.email", "tags": ["pii", "pii.email"]}
    assert objects[1]["flags"] == ["server_access"] and objects[1]["rule"] == "server-access"


def test_schema_refreshes_after_ddl_passes(pg: PostgresCluster, corpus_db: None, tmp_path: Path) -> None:
    import time

    from pgproxy.demo.run import demo_file
    from tests.harness import STATIC_AGENT, STATIC_PASSWORD

    policy = demo_file("policy.yaml").replace("rules:\n", """rules:
  - name: etl-may-change-schema
    groups: [etl]
    kinds: [ddl]
    action: allow
    reason: the ETL job owns its staging tables
""", 1)
    config = load_config(write_enforce_config(pg, tmp_path, catalog=corpus.CATALOG, policy=policy))
    with running_proxy(config) as proxy, \
            psycopg.connect(proxy.dsn(STATIC_AGENT, STATIC_PASSWORD), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS staging_refresh")
        assert _outcome(conn, "SELECT note FROM staging_refresh") == "review"  # unknown to pgproxy
        conn.execute("CREATE TABLE staging_refresh (note text)")
        deadline = time.monotonic() + 20
        while _outcome(conn, "SELECT note FROM staging_refresh") != "allow":
            assert time.monotonic() < deadline, "the schema was not re-read after CREATE TABLE"
            time.sleep(0.1)
        conn.execute("DROP TABLE staging_refresh")
