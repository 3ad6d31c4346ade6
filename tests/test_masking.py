"""Masking end to end: the policy action `mask` through psql, psycopg (text and binary results),
asyncpg (binary), cursors and portals run in parts, and COPY TO (text, CSV and binary), checked
against the values read directly; what cannot be masked falls back to review; the mask rules'
config; the binary COPY stream split anywhere."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pglast
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import ast

from pgproxy.config import ConfigError, load_config
from pgproxy.demo.run import demo_file
from pgproxy.masking import COPY_SIGNATURE, CopyFormat, CopyMask, CopySpec, MaskKind, MaskRules
from pgproxy.pgcluster import PostgresCluster, find_pg_bin
from tests.approvals_support import decide, direct_value, held_psql, wait_pending
from tests.harness import ProxyThread, running_proxy, write_enforce_config

MASK_POLICY = """\
default: allow
rules:
  - {name: cannot-tell, kinds: [unknown], action: review, reason: pgproxy cannot tell what this statement does}
  - {name: personal-data, tags: [pii], action: mask, reason: personal data is shown masked}
"""
COLUMNS = "id, name, email, phone, ssn, country"
ROWS = f"SELECT {COLUMNS} FROM customers WHERE id <= 5 ORDER BY id"


def masked_email(value: str) -> str:
    local, _, domain = value.rpartition("@")
    return f"{local[0]}***@{domain}"


def masked_digits(value: str) -> str:
    digits = [i for i, c in enumerate(value) if c.isdigit()]
    return "".join(c if i in digits[-4:] or not c.isalnum() else "*" for i, c in enumerate(value))


def expected(row: tuple[object, ...]) -> tuple[object, ...]:
    """A customers row (COLUMNS) as the default mask rules show it."""
    id_, _name, email, phone, ssn, country = row
    assert isinstance(email, str) and isinstance(phone, str) and isinstance(ssn, str)
    return id_, "***", masked_email(email), masked_digits(phone), masked_digits(ssn), country


@pytest.fixture(scope="module")
def masking(pg: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyThread]:
    """A proxy that masks personal data; without approvals, what it cannot mask is refused at once
    (the review it falls back to has nobody to ask)."""
    catalog = demo_file("catalog.yaml") + "      created_at: [pii.date]\n"  # a tagged column that is not text
    catalog += "    masking_generated:\n      email: [pii, pii.email]\n"
    path = write_enforce_config(pg, tmp_path_factory.mktemp("masking"), catalog=catalog, policy=MASK_POLICY)
    pg.psql("CREATE OR REPLACE VIEW masking_view AS SELECT id, lower(email) AS email FROM customers;"
            "DROP TABLE IF EXISTS masking_generated;"
            "CREATE TABLE masking_generated (id int, email text, domain text GENERATED ALWAYS AS "
            "(split_part(email, '@', 2)) STORED); INSERT INTO masking_generated VALUES (1, 'ann@example.com')",
            dbname="app", user="app_scram")
    try:
        with running_proxy(load_config(path)) as proxy:
            yield proxy
    finally:
        pg.psql("DROP VIEW IF EXISTS masking_view; DROP TABLE IF EXISTS masking_generated", dbname="app",
                user="app_scram")


@pytest.fixture(scope="module")
def direct_rows(direct_dsn_module: str) -> list[tuple[object, ...]]:
    with psycopg.connect(direct_dsn_module) as conn:
        return list(conn.execute(ROWS).fetchall())


@pytest.fixture(scope="module")
def direct_dsn_module(pg: PostgresCluster) -> str:
    from tests.harness import DATABASE, UPSTREAM_USERS
    return pg.dsn(user="app_scram", password=UPSTREAM_USERS["app_scram"][0], dbname=DATABASE)


def test_psql_text_results_are_masked(masking: ProxyThread, direct_rows: list[tuple[object, ...]]) -> None:
    out = subprocess.run([str(find_pg_bin("psql")), "-X", "-At", "-F", "|", masking.dsn(), "-c", ROWS],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    shown = [tuple(line.split("|")) for line in out.splitlines()]
    assert shown == [tuple(str(v) for v in expected(row)) for row in direct_rows]
    assert all("@" in row[2] and row[2] != direct[2] for row, direct in zip(shown, direct_rows, strict=True))


@pytest.mark.parametrize("binary", [False, True])
def test_psycopg_text_and_binary_results_are_masked(masking: ProxyThread, direct_rows: list[tuple[object, ...]],
                                                    binary: bool) -> None:
    with psycopg.connect(masking.dsn()) as conn:
        rows = conn.cursor(binary=binary).execute(
            f"SELECT {COLUMNS} FROM customers WHERE id <= %s ORDER BY id", (5,)).fetchall()
    assert rows == [expected(row) for row in direct_rows]


def test_asyncpg_binary_results_and_a_portal_run_in_parts_are_masked(
        masking: ProxyThread, direct_rows: list[tuple[object, ...]]) -> None:
    async def run() -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
        conn = await asyncpg.connect(masking.dsn())
        try:
            fetched = [tuple(r) for r in await conn.fetch(f"SELECT {COLUMNS} FROM customers WHERE id <= $1 ORDER BY id",
                                                          5)]
            async with conn.transaction():  # a cursor: one portal, executed 2 rows at a time
                parts = [tuple(r) async for r in conn.cursor(ROWS, prefetch=2)]
            return fetched, parts
        finally:
            await conn.close()

    fetched, parts = asyncio.run(run())
    assert fetched == [expected(row) for row in direct_rows]
    assert parts == fetched


def test_sql_cursor_fetches_are_masked(masking: ProxyThread, direct_rows: list[tuple[object, ...]]) -> None:
    with psycopg.connect(masking.dsn()) as conn:
        conn.execute(f"DECLARE c CURSOR FOR {ROWS}")
        first = conn.execute("FETCH 2 FROM c").fetchall()
        rest = conn.execute("FETCH ALL FROM c").fetchall()
        with conn.cursor(name="server_side") as named:  # psycopg's server-side cursor: DECLARE + FETCH
            named.execute(ROWS)
            server_side = named.fetchall()
    assert first + rest == [expected(row) for row in direct_rows]
    assert server_side == first + rest


def test_sql_prepare_and_execute_are_masked(masking: ProxyThread, direct_rows: list[tuple[object, ...]]) -> None:
    prepare = f"PREPARE masked_rows (int) AS SELECT {COLUMNS} FROM customers WHERE id <= $1 ORDER BY id"
    with psycopg.connect(masking.dsn(), autocommit=True) as conn:  # extended protocol
        conn.execute(prepare)
        extended = conn.execute("EXECUTE masked_rows (5)").fetchall()
    assert extended == [expected(row) for row in direct_rows]
    out = subprocess.run([str(find_pg_bin("psql")), "-X", "-At", "-F", "|", masking.dsn(), "-c", prepare, "-c",
                          "EXECUTE masked_rows (5)"], capture_output=True, text=True, timeout=30, check=True).stdout
    assert [tuple(line.split("|")) for line in out.splitlines() if "|" in line] == \
        [tuple(str(v) for v in expected(row)) for row in direct_rows]


def test_masks_follow_the_column_not_its_name(masking: ProxyThread, direct_rows: list[tuple[object, ...]]) -> None:
    with psycopg.connect(masking.dsn()) as conn:
        rows = conn.execute("SELECT c.email AS id, c.id AS email, t.* FROM customers c JOIN customers t USING (id) "
                            "WHERE c.id <= 5 ORDER BY c.id").fetchall()
    for row, direct in zip(rows, direct_rows, strict=True):
        assert row[:2] == (masked_email(str(direct[2])), direct[0])
        assert row[2] == direct[0] and row[3] == "***" and row[4] == masked_email(str(direct[2]))


def test_copy_to_text_and_csv_is_masked(masking: ProxyThread, direct_rows: list[tuple[object, ...]]) -> None:
    psql = [str(find_pg_bin("psql")), "-X", "-At", masking.dsn(), "-c"]
    text = subprocess.run([*psql, "COPY (SELECT id, email, ssn FROM customers WHERE id <= 5 ORDER BY id) TO STDOUT"],
                          capture_output=True, text=True, timeout=30, check=True).stdout
    assert text.splitlines() == [f"{r[0]}\t{masked_email(str(r[2]))}\t{masked_digits(str(r[4]))}" for r in direct_rows]
    csv = subprocess.run([*psql, "COPY customers (id, email, country) TO STDOUT WITH (FORMAT csv, HEADER)"],
                         capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
    assert csv[0] == "id,email,country"
    by_id = {line.split(",")[0]: line for line in csv[1:]}
    for row in direct_rows:
        assert by_id[str(row[0])] == f'{row[0]},"{masked_email(str(row[2]))}",{row[5]}'


def test_copy_to_binary_is_masked(masking: ProxyThread, direct_rows: list[tuple[object, ...]]) -> None:
    """psycopg reads binary COPY with the column types set: text columns masked as in text COPY,
    the tagged created_at (a timestamptz, no text mask fits it) NULL; of a query and of a table."""
    query = "COPY (SELECT id, email, ssn, created_at FROM customers WHERE id <= 5 ORDER BY id) TO STDOUT " \
            "(FORMAT BINARY)"
    with psycopg.connect(masking.dsn()) as conn:
        with conn.cursor().copy(query) as copy:
            copy.set_types(["int4", "text", "text", "timestamptz"])
            rows = list(copy.rows())
        with conn.cursor().copy("COPY customers (id, name, phone, country) TO STDOUT WITH (FORMAT binary)") as copy:
            copy.set_types(["int4", "text", "text", "text"])
            table = {row[0]: row for row in copy.rows()}
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session carries on
    assert rows == [(r[0], masked_email(str(r[2])), masked_digits(str(r[4])), None) for r in direct_rows]
    assert len(table) == 1000
    for r in direct_rows:
        assert table[r[0]] == (r[0], "***", masked_digits(str(r[3])), r[5])


def test_subqueries_in_from_and_ctes_are_masked(masking: ProxyThread, direct_rows: list[tuple[object, ...]]) -> None:
    """PostgreSQL's RowDescription names customers' columns for a subquery's or CTE's plain columns:
    masked there as they are in the table, in text and binary results, through every level."""
    with psycopg.connect(masking.dsn()) as conn:
        sub = conn.execute("SELECT s.id, s.e, s.ssn FROM (SELECT id, email AS e, ssn FROM customers "
                           "WHERE id <= %s) s ORDER BY s.id", (5,)).fetchall()
        cte = conn.cursor(binary=True).execute(
            "WITH c AS (SELECT id, email, phone FROM customers WHERE country IS NOT NULL OR id > 0) "
            "SELECT t.id, t.mail, t.phone FROM (SELECT id, email AS mail, phone FROM c WHERE id <= %s) t "
            "ORDER BY t.id", (5,)).fetchall()
        star = conn.execute("SELECT * FROM (SELECT id, name, country FROM customers WHERE id <= 5) s "
                            "ORDER BY id").fetchall()
    assert sub == [(r[0], masked_email(str(r[2])), masked_digits(str(r[4]))) for r in direct_rows]
    assert cte == [(r[0], masked_email(str(r[2])), masked_digits(str(r[3]))) for r in direct_rows]
    assert star == [(r[0], "***", r[5]) for r in direct_rows]


@pytest.mark.parametrize("binary", [False, True])
def test_copy_to_in_the_extended_protocol_is_masked(masking: ProxyThread, direct_rows: list[tuple[object, ...]],
                                                    binary: bool) -> None:
    """Parse/Bind/Execute of a COPY: pgproxy's own Describe before the Execute answers NoData, and
    the CopyData that follow are masked as in the simple protocol (they ended the session before)."""
    from pgproxy.wire import messages as m
    from tests.harness import raw_session

    sql = "COPY (SELECT id, email FROM customers WHERE id = 1) TO STDOUT" + (" (FORMAT binary)" if binary else "")
    with raw_session(masking) as client:
        client.send(m.Parse("", sql, ()).encode() + m.Bind("", "", (), (), ()).encode() + m.Execute("", 0).encode()
                    + m.Sync().encode())
        replies = client.until_ready()
    data = b"".join(body for type_byte, body in replies if type_byte == m.COPY_DATA)
    email = masked_email(str(direct_rows[0][2])).encode()
    if binary:
        values = [(1).to_bytes(4, "big"), email]
        assert data == COPY_SIGNATURE + bytes(8) + b"\0\2" + b"".join(len(v).to_bytes(4, "big") + v for v in values) \
            + b"\xff\xff"
    else:
        assert data == b"1\t" + email + b"\n"
    assert [t for t, _ in replies if t in (m.COPY_OUT_RESPONSE, m.COPY_DONE, m.ERROR_RESPONSE, m.NO_DATA)] == \
        [m.COPY_OUT_RESPONSE, m.COPY_DONE]  # pgproxy's own Describe: its NoData dropped


def test_a_tagged_column_that_is_not_text_is_null(masking: ProxyThread) -> None:
    """A text mask is not a valid timestamptz: the tagged created_at is NULL, in both formats and in COPY."""
    for binary in (False, True):
        with psycopg.connect(masking.dsn()) as conn:
            rows = conn.cursor(binary=binary).execute(
                "SELECT id, created_at FROM customers WHERE id <= 3 ORDER BY id").fetchall()
        assert rows == [(1, None), (2, None), (3, None)]
    out = subprocess.run([str(find_pg_bin("psql")), "-X", "-At", masking.dsn(), "-c",
                          "COPY (SELECT id, created_at FROM customers WHERE id <= 2 ORDER BY id) TO STDOUT"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.splitlines() == ["1\t\\N", "2\t\\N"]


def test_result_formats_chosen_per_column(masking: ProxyThread, direct_rows: list[tuple[object, ...]]) -> None:
    """Extended protocol by hand: the client asks for email in binary and the rest in text."""
    from pgproxy.wire import messages as m
    from tests.harness import raw_session

    with raw_session(masking) as client:
        client.send(m.Parse("", "SELECT id, email, phone FROM customers WHERE id = 1", ()).encode()
                    + m.Bind("", "", (), (), (0, 1, 0)).encode() + m.Execute("", 0).encode() + m.Sync().encode())
        replies = client.until_ready()
    rows = [body for type_byte, body in replies if type_byte == m.DATA_ROW]
    assert len(rows) == 1
    email, phone = str(direct_rows[0][2]), str(direct_rows[0][3])
    values = [b"1", masked_email(email).encode(), masked_digits(phone).encode()]
    assert rows[0] == b"\x00\x03" + b"".join(len(v).to_bytes(4, "big") + v for v in values)
    assert not any(type_byte == m.ROW_DESCRIPTION for type_byte, _ in replies)  # pgproxy's own Describe: dropped


def test_a_copy_whose_columns_are_not_the_ones_resolved_is_refused(masking: ProxyThread) -> None:
    """COPY of a table leaves its generated columns out: pgproxy resolved three columns, the server
    sends two, so the masks would land on the wrong columns. The COPY is refused before any row."""
    out = subprocess.run([str(find_pg_bin("psql")), "-X", "-At", masking.dsn(), "-c",
                          "COPY masking_generated TO STDOUT"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and out.stdout == ""
    assert "pgproxy refused a masked COPY" in out.stderr and "ann@" not in out.stderr
    with psycopg.connect(masking.dsn()) as conn, pytest.raises(psycopg.Error, match="refused a masked COPY"), \
            conn.cursor().copy("COPY masking_generated TO STDOUT (FORMAT binary)") as copy:
        assert not list(copy)  # binary: refused the same way
    with psycopg.connect(masking.dsn()) as conn:  # its columns named: masked
        assert conn.execute("SELECT id, email FROM masking_generated").fetchall() == [(1, "a***@example.com")]


# What masking cannot reach is reviewed (here: refused, there being no approvals), never allowed.
CANNOT_MASK = [
    ("SELECT id FROM customers WHERE email LIKE 'a%'", "other than as a plain output column"),
    ("SELECT upper(email) FROM customers", "other than as a plain output column"),
    ("SELECT left(email, 3) FROM customers", "other than as a plain output column"),
    ("SELECT email::bytea FROM customers", "other than as a plain output column"),
    ("SELECT row(email) FROM customers", "other than as a plain output column"),
    ("SELECT c FROM customers c", "other than as a plain output column"),
    ("SELECT json_agg(email) FROM customers", "other than as a plain output column"),
    ("SELECT email FROM customers ORDER BY 1", "other than as a plain output column"),
    ("SELECT *, id FROM customers ORDER BY 2", "other than as a plain output column"),  # 2: name, in the star
    ("SELECT id, c.* FROM customers c GROUP BY 4, 1", "other than as a plain output column"),
    ("SELECT id, email AS e FROM customers ORDER BY e", "other than as a plain output column"),
    ("SELECT DISTINCT email FROM customers", "other than as a plain output column"),
    ("SELECT count(*) FROM customers GROUP BY email", "other than as a plain output column"),
    ("SELECT x FROM (SELECT email AS x FROM customers WHERE email LIKE 'a%') s", "other than as a plain output column"),
    ("SELECT x FROM (SELECT email AS x FROM customers) s WHERE x LIKE 'a%'", "other than as a plain output column"),
    ("WITH c AS (SELECT upper(email) AS x FROM customers) SELECT x FROM c", "other than as a plain output column"),
    ("SELECT email FROM customers UNION SELECT name FROM customers", "set operation"),
    ("COPY (SELECT upper(email) FROM customers) TO STDOUT", "other than as a plain output column"),
    ("UPDATE customers SET email = email WHERE id = 1 RETURNING email", "writes tagged columns"),
    ("EXPLAIN ANALYZE SELECT email FROM customers", "EXPLAIN ANALYZE"),
]


@pytest.mark.parametrize(("sql", "why"), CANNOT_MASK)
def test_what_cannot_be_masked_is_reviewed(masking: ProxyThread, sql: str, why: str) -> None:
    with psycopg.connect(masking.dsn(), autocommit=True) as conn, pytest.raises(psycopg.Error) as raised:
        conn.execute(sql)
    assert raised.value.sqlstate == "42501"
    message = str(raised.value)
    assert "approval required (rule personal-data)" in message and "cannot mask its result" in message
    assert why in message


def test_a_view_of_tagged_columns_is_reviewed_not_masked(masking: ProxyThread) -> None:
    with psycopg.connect(masking.dsn(), autocommit=True) as conn, \
            pytest.raises(psycopg.Error, match="tagged column of a view, whose values may be computed"):
        conn.execute("SELECT email FROM masking_view")  # lower(email): its column names no base table


def test_statements_without_tagged_columns_run_unmasked(masking: ProxyThread) -> None:
    with psycopg.connect(masking.dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE customer_id = 1").fetchone() is not None
        assert conn.execute("SELECT country FROM customers WHERE id = 1").fetchone() is not None


# -- the rules, without a server ---------------------------------------------------------------------


def test_mask_rules() -> None:
    rules = MaskRules()
    assert rules.text(MaskKind.EMAIL, "alice@example.com") == "a***@example.com"
    assert rules.text(MaskKind.EMAIL, "not an address") == "***"
    assert rules.text(MaskKind.LAST4, "+1 (555) 123-4567") == "+* (***) ***-4567"
    assert rules.text(MaskKind.LAST4, "123-45-6789") == "***-**-6789"
    assert rules.text(MaskKind.LAST4, "1234") == "****"  # four digits or fewer: nothing kept
    assert rules.text(MaskKind.NULL, "x") is None
    assert rules.kind_for(frozenset({"pii", "pii.ssn", "sensitive"})) is MaskKind.LAST4
    assert MaskRules(tags={"sensitive": MaskKind.NULL, "pii.ssn": MaskKind.LAST4}).kind_for(
        frozenset({"pii.ssn", "sensitive"})) is MaskKind.NULL  # the one that reveals least
    assert rules.kind_for(frozenset({"pii", "pii.name"})) is MaskKind.PLACEHOLDER


def test_masks_read_values_in_the_client_encoding() -> None:
    """A first character that is not ASCII is one character, in whatever encoding the client reads."""
    rules = MaskRules()
    for codec in ("utf-8", "latin-1"):
        masker = rules.masker(MaskKind.EMAIL, codec)
        assert masker("éva@exämple.fr".encode(codec)) == "é***@exämple.fr".encode(codec)
        assert rules.masker(MaskKind.LAST4, codec)("Tél 01 23 45 67 89".encode(codec)) == \
            "*** ** ** ** 67 89".encode(codec)
    assert rules.masker(MaskKind.EMAIL, "utf-8")(b"\xff@x") == b"***"  # not UTF-8: the placeholder, nothing of it


def test_copy_rows_with_escapes_and_quotes() -> None:
    text = CopyMask(CopyFormat(), (None, MaskKind.EMAIL), MaskRules(), text_columns=frozenset({1}))
    assert text.copy_data(b"1\\tx\ta\\\\b@c.d\n") == b"1\\tx\ta***@c.d\n"
    assert text.copy_data(b"2\t\\N\n") == b"2\t\\N\n"
    csv = CopyMask(CopyFormat(csv=True, delimiter=",", null="", header=True), (MaskKind.PLACEHOLDER, None),
                   MaskRules(), text_columns=frozenset({0}))
    assert csv.copy_data(b"name,id\n") == b"name,id\n"
    assert csv.copy_data(b'"a,""b""\nc",1\n') == b'"***",1\n'
    assert csv.copy_data(b",2\n") == b",2\n"  # NULL stays NULL


def test_mask_config_is_validated(tmp_path: Path, pg: PostgresCluster) -> None:
    good = write_enforce_config(pg, tmp_path, catalog="{}", policy=MASK_POLICY, extra="""\
masking:
  placeholder: "[hidden]"
  default: "null"
  tags: {sensitive: "null", pii.name: placeholder}
""")
    rules = load_config(good).masking
    assert rules.placeholder == "[hidden]" and rules.default is MaskKind.NULL
    assert rules.tags["pii.email"] is MaskKind.EMAIL and rules.tags["sensitive"] is MaskKind.NULL
    for extra, problem in [("masking:\n  tags: {pii.email: redact}\n", "masking.tags.pii.email: expected one of"),
                           ("masking:\n  tags: {PII: email}\n", "masking.tags.PII: expected a tag"),
                           ("masking:\n  default: email\n", "masking.default: expected one of placeholder, null"),
                           ("masking:\n  placeholder: '" + "x" * 65 + "'\n", "masking.placeholder: expected 1 to 64"),
                           ("masking:\n  colour: red\n", "masking.colour: unknown key 'colour'")]:
        bad = write_enforce_config(pg, tmp_path, catalog="{}", policy=MASK_POLICY, extra=extra)
        with pytest.raises(ConfigError, match=r"pgproxy\.yaml:\d+: " + problem.replace(".", r"\.")):
            load_config(bad)


# -- approve with masking (the API; the page is in tests/test_page.py) ----------------------------------


def test_api_approve_with_masking_runs_the_held_statement_masked(approving: ProxyThread,
                                                                 pg: PostgresCluster) -> None:
    """asyncpg (extended protocol, binary results): held at Execute, approved with masking."""
    async def run() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(approving.dsn())
        try:
            return [tuple(r) for r in await conn.fetch("SELECT id, email, phone, country FROM customers "
                                                       "WHERE id = $1 AND country IS NOT NULL", 71)]
        finally:
            await conn.close()

    async def decide_when_held() -> tuple[int, dict[str, object]]:
        request = await asyncio.to_thread(wait_pending, approving, "WHERE id = $1 AND country")
        assert request["analysis"]["masking"] == {"possible": True, "reason": None}
        return await asyncio.to_thread(decide, approving, request, "approve_masked", reason="masked only")

    async def both() -> tuple[list[tuple[object, ...]], tuple[int, dict[str, object]]]:
        rows, decided = await asyncio.gather(run(), decide_when_held())
        return rows, decided

    rows, (status, body) = asyncio.run(both())
    assert status == 200 and body["status"] == "approved" and body["masked"] is True
    id_, email, phone, country = direct_value(pg, "SELECT id, email, phone, country FROM customers "
                                                  "WHERE id = 71").split("|")
    assert rows == [(int(id_), masked_email(email), masked_digits(phone), country)]


def test_api_refuses_masking_what_cannot_be_masked(approving: ProxyThread) -> None:
    client = held_psql(approving, "SELECT id FROM customers WHERE ssn LIKE '9%' AND id = 72")
    try:
        request = wait_pending(approving, "AND id = 72")
        assert request["analysis"]["masking"]["possible"] is False
        status, body = decide(approving, request, "approve_masked")
        assert status == 409 and "cannot be masked: it uses public.customers.ssn other than as a plain output " \
                                 "column" in str(body["error"])
        assert decide(approving, request, "deny", reason="no")[0] == 200
        _, err = client.communicate(timeout=15)
        assert "denied by reviewer alice: no" in err
    finally:
        client.kill()


def test_api_approval_with_masking_gives_no_grant(approving: ProxyThread) -> None:
    client = held_psql(approving, "SELECT email FROM customers WHERE id = 73")
    try:
        request = wait_pending(approving, "WHERE id = 73")
        status, body = decide(approving, request, "approve_masked", grant_minutes=5)
        assert status == 403 and "gives no grant" in str(body["error"])
        status, body = decide(approving, request, "maybe")
        assert status == 400 and "approve_masked" in str(body["error"])
        assert decide(approving, request, "deny")[0] == 200
    finally:
        client.kill()


def test_slack_offers_approve_with_masking_only_when_possible() -> None:
    from pgproxy.approvals.notify import slack_message, summary
    from pgproxy.store import ApprovalRequest

    def buttons(masking: dict[str, object]) -> list[str]:
        request = ApprovalRequest(id="a1", agent="agent", groups=(), database="app", statement="SELECT email FROM t",
                                  parameters=(), statement_sha256="0" * 64, analysis={"statements": [],
                                                                                       "masking": masking},
                                  rule="personal-data", reason="r", client_address="127.0.0.1", application_name="",
                                  created_at=0, expires_at=60)
        blocks = slack_message(summary(request, "http://x/approvals/a1"))["blocks"]
        return [e["action_id"] for b in blocks if b["type"] == "actions" for e in b["elements"]]

    assert buttons({"possible": True, "reason": None}) == ["open", "approve", "approve_masked", "deny"]
    assert buttons({"possible": False, "reason": "set operation"}) == ["open", "approve", "deny"]


# -- the protocol model (sans-IO): rows masked, or the result refused before any row -------------------


def _row_description(*fields: tuple[str, int, int, int]) -> bytes:
    """A RowDescription body: (name, table oid, attnum, type oid) per field, text format."""
    out = len(fields).to_bytes(2, "big")
    for name, oid, attnum, type_oid in fields:
        out += name.encode() + b"\0" + oid.to_bytes(4, "big") + attnum.to_bytes(2, "big") + type_oid.to_bytes(4, "big")
        out += b"\xff\xff" + b"\xff\xff\xff\xff" + b"\0\0"  # type size and modifier -1, text format
    return out


def _data_row(*values: bytes | None) -> bytes:
    return len(values).to_bytes(2, "big") + b"".join(
        (-1).to_bytes(4, "big", signed=True) if v is None else len(v).to_bytes(4, "big") + v for v in values)


EMAIL = (100, 3)  # (table oid, attnum) of a tagged column in these model tests


def _masked_query(permitted: frozenset[tuple[int, int]] = frozenset({EMAIL})) -> object:
    from pgproxy.masking import MaskSpec
    from pgproxy.protocol.model import ProtocolModel, QueryPart

    model = ProtocolModel(strict=False, guard=lambda columns, permitted: [])
    model.query([QueryPart(None, permitted, None, MaskSpec(MaskRules(), {EMAIL: frozenset({"pii.email"})}))])
    return model


def test_model_masks_the_rows_of_the_tagged_column_the_row_description_names() -> None:
    from pgproxy.protocol.model import ProtocolModel
    from pgproxy.wire import messages as m

    model = _masked_query()
    assert isinstance(model, ProtocolModel)
    assert model.answer(m.ROW_DESCRIPTION, _row_description(("id", 100, 1, 23), ("login", 100, 3, 25))) is None
    assert not model.rows_ok and model.row_mask is not None  # every row goes through `masked`
    assert model.masked(m.DATA_ROW, _data_row(b"7", b"bob@example.org")) == \
        m.frame(m.DATA_ROW, _data_row(b"7", b"b***@example.org"))
    assert model.masked(m.DATA_ROW, _data_row(b"8", None)) == m.frame(m.DATA_ROW, _data_row(b"8", None))
    model.answer(m.COMMAND_COMPLETE, b"SELECT 2\0")
    assert model.row_mask is None and not model.refusals


@pytest.mark.parametrize("fields", [
    (("login", 0, 0, 25),),  # an expression: the value names no column
    (("login", 200, 3, 25),),  # another relation's column (a view's, say)
    (),  # no columns at all
], ids=["expression", "other-relation", "none"])
def test_model_refuses_a_masked_result_that_does_not_show_the_tagged_column_plainly(
        fields: tuple[tuple[str, int, int, int], ...]) -> None:
    from pgproxy.protocol.model import ProtocolModel
    from pgproxy.wire import messages as m

    model = _masked_query()
    assert isinstance(model, ProtocolModel)
    model.answer(m.ROW_DESCRIPTION, _row_description(*fields))
    assert model.refusals and model.refusals[0].message is not None
    assert "cannot be masked" in model.refusals[0].message
    assert model.guarding and not model.rows_ok and model.row_mask is None  # its rows are dropped


# A binary COPY stream (PostgreSQL's "Binary Format"): a header with an extension (PostgreSQL sends
# none, a reader skips it) and flag bit 0 (not critical), tuples (id, email, ssn, a tagged
# timestamptz), the trailer. Tuples are laid out as DataRow bodies are.
_BINARY_HEADER = COPY_SIGNATURE + (1).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"ext"
_BINARY_ROWS = [
    (b"\0\0\0\1", b"alice@example.com", b"123-45-6789", b"\0\0\0\0\0\0\0\1"),
    (b"\0\0\0\2", None, "T\u00e9l 01 23 45 67 89".encode(), None),
    (b"\0\0\0\3", "\u00e9va@ex\u00e4mple.fr".encode(), b"1234", b"\0\0\0\0\0\0\0\2"),
    (b"\0\0\0\4", b"", None, None),
]
_BINARY_MASKED = [
    (b"\0\0\0\1", b"a***@example.com", b"***-**-6789", None),
    (b"\0\0\0\2", None, b"*** ** ** ** 67 89", None),
    (b"\0\0\0\3", "\u00e9***@ex\u00e4mple.fr".encode(), b"****", None),
    (b"\0\0\0\4", b"***", None, None),  # not an address: the placeholder
]
_BINARY_STREAM = _BINARY_HEADER + b"".join(_data_row(*r) for r in _BINARY_ROWS) + b"\xff\xff"


def _binary_mask() -> CopyMask:
    return CopyMask(CopyFormat(binary=True), (None, MaskKind.EMAIL, MaskKind.LAST4, MaskKind.EMAIL), MaskRules(),
                    text_columns=frozenset({1, 2}))


def _binary_boundaries() -> set[int]:
    """Where the masked stream's header, tuples and trailer end: the only places output may stop."""
    ends = {0, len(_BINARY_HEADER)}
    for row in _BINARY_MASKED:
        ends.add(max(ends) + len(_data_row(*row)))
    return ends | {max(ends) + 2}


def _fed(cuts: list[int]) -> list[bytes]:
    mask = _binary_mask()
    points = [0, *sorted(set(cuts)), len(_BINARY_STREAM)]
    out = [mask.copy_data(_BINARY_STREAM[a:b]) for a, b in itertools.pairwise(points)]
    mask.finish()
    return out


def test_binary_copy_stream_is_masked_whole_tuple_by_whole_tuple() -> None:
    whole = _fed([])
    assert whole == [_BINARY_HEADER + b"".join(_data_row(*r) for r in _BINARY_MASKED) + b"\xff\xff"]
    for cut in range(len(_BINARY_STREAM) + 1):  # split at every byte boundary
        parts = _fed([cut])
        assert b"".join(parts) == whole[0], cut
    ends = _binary_boundaries()
    one_by_one = _fed(list(range(len(_BINARY_STREAM))))  # every byte a CopyData of its own
    assert b"".join(one_by_one) == whole[0]
    total = 0
    for part in one_by_one:  # what goes out is always a whole header, tuples or the trailer
        total += len(part)
        assert total in ends


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(_BINARY_STREAM)), max_size=12))
def test_binary_copy_stream_split_anywhere_masks_as_the_whole(cuts: list[int]) -> None:
    parts = _fed(cuts)
    assert b"".join(parts) == _fed([])[0]
    ends, total = _binary_boundaries(), 0
    for part in parts:
        total += len(part)
        assert total in ends


def _binary_fails(stream: bytes, problem: str, *, finish: bool = False) -> None:
    mask = _binary_mask()
    with pytest.raises(ValueError, match=problem):
        mask.copy_data(stream)
        if finish:
            mask.finish()


def test_binary_copy_stream_that_pgproxy_cannot_read_is_refused() -> None:
    header = COPY_SIGNATURE + bytes(8)
    row = _data_row(*_BINARY_ROWS[0])
    _binary_fails(b"PGCOPY\n\xff\r\n\1" + bytes(8), "signature")
    _binary_fails(b"PGCOPX", "signature")  # as soon as it shows
    _binary_fails(COPY_SIGNATURE + (1 << 16).to_bytes(4, "big") + bytes(4), "flags")  # OIDs in each tuple
    _binary_fails(COPY_SIGNATURE + (1 << 31).to_bytes(4, "big") + bytes(4), "flags")
    _binary_fails(COPY_SIGNATURE + bytes(4) + (-1).to_bytes(4, "big", signed=True), "negative length")
    _binary_fails(header + _data_row(b"1", b"a@b.c", b"1"), "has 3 fields where pgproxy expected 4")
    _binary_fails(header + (5).to_bytes(2, "big"), "has 5 fields")  # before the tuple is whole
    _binary_fails(header + row[:10] + (-2).to_bytes(4, "big", signed=True), "negative length")
    _binary_fails(header + row + b"\xff\xff" + row, "follows its trailer")
    _binary_fails(header + row, "ended before its trailer", finish=True)
    _binary_fails(header + row[:-1], "ended before its trailer", finish=True)
    _binary_fails(COPY_SIGNATURE, "ended before its trailer", finish=True)
    ok = _binary_mask()  # flag bits 0-15 may be ignored
    assert ok.copy_data(COPY_SIGNATURE + (0xFFFF).to_bytes(4, "big") + bytes(4) + b"\xff\xff")
    ok.finish()


def _masked_copy(fmt: CopyFormat) -> object:
    from pgproxy.masking import MaskSpec
    from pgproxy.protocol.model import ProtocolModel, QueryPart

    model = ProtocolModel(strict=False, guard=lambda columns, permitted: [])
    spec = CopySpec(fmt, (None, MaskKind.EMAIL), frozenset({1}))
    model.query([QueryPart(None, frozenset({EMAIL}), None, MaskSpec(MaskRules(), {EMAIL: frozenset({"pii.email"})}),
                           spec)])
    return model


def _copy_out_response(overall: int, *formats: int) -> bytes:
    return bytes((overall,)) + len(formats).to_bytes(2, "big") + b"".join(f.to_bytes(2, "big") for f in formats)


def test_model_masks_a_binary_copy_stream_across_copy_data() -> None:
    from pgproxy.protocol.model import Desync, ProtocolModel
    from pgproxy.wire import messages as m

    header = COPY_SIGNATURE + bytes(8)
    row = _data_row(b"\0\0\0\7", b"bob@example.org")
    for ending in (b"\xff\xff", b""):
        model = _masked_copy(CopyFormat(binary=True))
        assert isinstance(model, ProtocolModel)
        model.answer(m.COPY_OUT_RESPONSE, _copy_out_response(1, 1, 1))
        assert model.copy_mask is not None and not model.rows_ok and not model.refusals
        assert model.masked(m.COPY_DATA, header[:10]) == b""  # nothing whole yet: no CopyData at all
        assert model.masked(m.COPY_DATA, header[10:] + row[:9]) == m.frame(m.COPY_DATA, header)
        assert model.masked(m.COPY_DATA, row[9:] + ending) == \
            m.frame(m.COPY_DATA, _data_row(b"\0\0\0\7", b"b***@example.org") + ending)
        if ending:
            model.answer(m.COPY_DONE, b"")
            model.answer(m.COMMAND_COMPLETE, b"COPY 1\0")
            assert model.copy_mask is None and not model.refusals
        else:  # CopyDone before the trailer: the stream PostgreSQL sends always has one
            with pytest.raises(Desync, match="ended before its trailer"):
                model.answer(m.COPY_DONE, b"")


def test_model_masks_a_copy_executed_in_the_extended_protocol() -> None:
    """pgproxy's own Describe of a COPY's portal answers NoData: the Execute waits for the
    CopyOutResponse (not refused for showing no column); no DataRow may pass meanwhile."""
    from pgproxy.masking import MaskSpec
    from pgproxy.protocol.model import ProtocolModel
    from pgproxy.protocol.objects import PreparedStatement
    from pgproxy.wire import messages as m

    model = ProtocolModel(strict=False, guard=lambda columns, permitted: [])
    model.parse("", PreparedStatement("COPY (SELECT id, login FROM t) TO STDOUT (FORMAT binary)"))
    portal = model.bind("", "", b"")
    assert portal is not None
    spec = CopySpec(CopyFormat(binary=True), (None, MaskKind.EMAIL), frozenset({1}))
    mask = MaskSpec(MaskRules(), {EMAIL: frozenset({"pii.email"})})
    assert model.execute_masked("", portal, frozenset({EMAIL}), mask, spec)
    model.sync()
    for answer in (m.PARSE_COMPLETE, m.BIND_COMPLETE):
        model.answer(answer, b"")
    assert model.answer(m.NO_DATA, b"") == b""  # the answer to pgproxy's own Describe: dropped
    # Not refused, and a DataRow now is one the relay does not expect (it ends the session).
    assert not model.refusals and not model.rows_ok and not model.guarding and model.row_mask is None
    model.answer(m.COPY_OUT_RESPONSE, _copy_out_response(1, 1, 1))
    stream = COPY_SIGNATURE + bytes(8) + _data_row(b"\0\0\0\1", b"bob@example.org") + b"\xff\xff"
    assert model.masked(m.COPY_DATA, stream) == m.frame(
        m.COPY_DATA, COPY_SIGNATURE + bytes(8) + _data_row(b"\0\0\0\1", b"b***@example.org") + b"\xff\xff")
    model.answer(m.COPY_DONE, b"")
    model.answer(m.COMMAND_COMPLETE, b"COPY 1\0")
    model.answer(m.READY_FOR_QUERY, b"I")
    assert model.idle and not model.refusals


@pytest.mark.parametrize(("fmt", "response"), [
    (CopyFormat(binary=True), _copy_out_response(0, 0, 0)),
    (CopyFormat(), _copy_out_response(1, 1, 1)),
    (CopyFormat(binary=True), _copy_out_response(1, 1, 0)),
    (CopyFormat(binary=True), _copy_out_response(1, 1, 1, 1)),
], ids=["binary-asked-text-sent", "text-asked-binary-sent", "mixed-formats", "column-count"])
def test_model_refuses_a_masked_copy_in_another_format(fmt: CopyFormat, response: bytes) -> None:
    from pgproxy.protocol.model import ProtocolModel
    from pgproxy.wire import messages as m

    model = _masked_copy(fmt)
    assert isinstance(model, ProtocolModel)
    model.answer(m.COPY_OUT_RESPONSE, response)
    assert model.refusals and "refused a masked COPY" in str(model.refusals[0].message)
    assert model.copy_mask is None and not model.rows_ok  # its CopyData are dropped


def test_binary_copy_format_is_read_from_the_statement(masking: ProxyThread) -> None:
    from pgproxy.analysis.gate import analyze
    from pgproxy.analysis.masking import copy_format, unmaskable
    from pgproxy.enforce import PolicyGate

    gate = masking.server.gate
    assert isinstance(gate, PolicyGate)
    schema = gate.catalog.schema("app")
    assert schema is not None
    for sql in ("COPY customers (id, email) TO STDOUT (FORMAT binary)",
                "COPY customers (id, email) TO STDOUT WITH (FORMAT BINARY)",
                "COPY customers (id, email) TO STDOUT BINARY",  # the old syntax
                "COPY (SELECT id, email FROM customers WHERE id < 3) TO STDOUT WITH (FORMAT binary)"):
        [analysis] = analyze(sql, schema)
        assert unmaskable([analysis]) is None, sql
        assert analysis.copy_output is not None and analysis.copy_output.format == CopyFormat(binary=True), sql
    [raw] = pglast.parse_sql("COPY t TO STDOUT (FORMAT binary, DELIMITER ',')")
    assert isinstance(raw.stmt, ast.CopyStmt)
    assert copy_format(raw.stmt.options) == "pgproxy masks binary COPY without other options"


def test_check_explains_mask_and_its_fallback_to_review(masking: ProxyThread) -> None:
    from pgproxy.check import explain
    from pgproxy.enforce import PolicyGate

    gate = masking.server.gate
    assert isinstance(gate, PolicyGate)
    schema = gate.catalog.schema("app")
    assert schema is not None
    [masked] = explain("SELECT email FROM customers", schema, gate.config, agent="agent", groups=frozenset())
    assert (masked.decision.action.value, masked.decision.rule) == ("mask", "personal-data")
    [held] = explain("SELECT id FROM customers WHERE email LIKE 'a%'", schema, gate.config, agent="agent",
                     groups=frozenset())
    assert held.decision.action.value == "review"
    assert "pgproxy cannot mask its result: it uses public.customers.email other than" in held.decision.reason


def test_psycopg_pipeline_of_masked_and_unmasked_statements(masking: ProxyThread,
                                                            direct_rows: list[tuple[object, ...]]) -> None:
    with psycopg.connect(masking.dsn()) as conn:
        with conn.pipeline():
            first = conn.execute(f"SELECT {COLUMNS} FROM customers WHERE id <= %s ORDER BY id", (5,))
            plain = conn.execute("SELECT id, country FROM customers WHERE id <= %s ORDER BY id", (5,))
            binary = conn.cursor(binary=True).execute(f"SELECT {COLUMNS} FROM customers WHERE id <= %s ORDER BY id",
                                                      (5,))
        assert first.fetchall() == [expected(row) for row in direct_rows]
        assert plain.fetchall() == [(row[0], row[5]) for row in direct_rows]
        assert binary.fetchall() == [expected(row) for row in direct_rows]


def test_with_approvals_what_cannot_be_masked_is_held_for_a_reviewer(pg: PostgresCluster, tmp_path: Path,
                                                                      direct_rows: list[tuple[object, ...]]) -> None:
    from tests.approvals_support import start_proxy

    with start_proxy(pg, tmp_path, catalog=demo_file("catalog.yaml"), policy=MASK_POLICY) as proxy:
        with psycopg.connect(proxy.dsn()) as conn:  # maskable: runs at once, masked, nothing held
            assert conn.execute(f"SELECT {COLUMNS} FROM customers WHERE id <= 5 ORDER BY id").fetchall() == \
                [expected(row) for row in direct_rows]
        client = held_psql(proxy, "SELECT id FROM customers WHERE email LIKE 'a%' AND id = 81")
        try:
            request = wait_pending(proxy, "AND id = 81")
            assert request["rule"] == "personal-data"
            assert "pgproxy cannot mask its result: it uses public.customers.email" in request["reason"]
            assert request["analysis"]["masking"]["possible"] is False
            assert decide(proxy, request, "approve", reason="fine")[0] == 200
            out, _ = client.communicate(timeout=15)
            assert out.strip() in ("", "81")  # it ran, unmasked (its result shows no tagged column)
            assert client.returncode == 0
        finally:
            client.kill()


# -- through subqueries in FROM and CTEs ---------------------------------------------------------------

# PostgreSQL names the base table's column in the RowDescription for a subquery's or CTE's column
# that is a plain column (markTargetListOrigin follows it): masked when, at every level, the tagged
# column is only a plain output column.
MASKABLE_THROUGH_SUBQUERIES = [
    "SELECT email FROM (SELECT id, email FROM customers) s",
    "SELECT s.e FROM (SELECT email AS e FROM customers WHERE country = 'DE') s",
    "SELECT * FROM (SELECT id, email, phone FROM customers WHERE id < 10) s",
    "SELECT s.*, o.total FROM (SELECT id, email FROM customers) s JOIN orders o ON o.customer_id = s.id "
    "WHERE o.total > 10 ORDER BY o.total LIMIT 5",
    "SELECT x.a, x.id FROM (SELECT email, id FROM customers) x(a)",
    "SELECT t.e FROM (SELECT s.e, s.id FROM (SELECT email AS e, id FROM customers) s WHERE s.id > 5) t",
    "SELECT s.email FROM (SELECT id, email FROM customers ORDER BY id LIMIT 10) s",
    "SELECT c.email, s.ssn FROM customers c JOIN (SELECT id, ssn FROM customers) s USING (id)",
    "WITH c AS (SELECT id, email FROM customers WHERE plan = 'pro') SELECT c.id, c.email FROM c",
    "WITH c(i, mail) AS (SELECT id, email FROM customers) SELECT mail FROM c WHERE i < 10",
    "WITH a AS (SELECT id, email FROM customers), b AS (SELECT id, email FROM a WHERE id < 5) SELECT email FROM b",
    "WITH c AS (SELECT id, email FROM customers) SELECT x.email, y.email FROM c x JOIN c y ON x.id = y.id",
    "WITH c AS (SELECT id, email FROM customers) SELECT s.m FROM (SELECT email AS m FROM c) s",
    "SELECT s.email FROM (WITH c AS (SELECT id, email FROM customers) SELECT email FROM c) s",
]
# What stays reviewed: the tagged column is filtered, sorted, grouped, compared, computed or read
# whole at some level, or reaches the result where names cannot follow it.
UNMASKABLE_THROUGH_SUBQUERIES = [
    "SELECT s.e FROM (SELECT email AS e FROM customers WHERE email LIKE 'a%') s",  # the filter is an oracle
    "SELECT * FROM (SELECT upper(email) e FROM customers) s",
    "SELECT s.e FROM (SELECT email AS e, length(email) AS l FROM customers) s",
    "SELECT s.e FROM (SELECT email AS e FROM customers) s WHERE s.e LIKE 'a%'",
    "SELECT e FROM (SELECT email AS e FROM customers) s WHERE e LIKE 'a%'",
    "SELECT s.e FROM (SELECT email AS e FROM customers) s WHERE (s).e LIKE 'a%'",
    "SELECT s.e FROM (SELECT email AS e FROM customers) s ORDER BY s.e",
    "SELECT s.e FROM (SELECT email AS e FROM customers) s ORDER BY 1",
    "SELECT s.*, s.id FROM (SELECT id, name FROM customers) s ORDER BY 2",  # 2: name, in the star
    "SELECT s.e FROM (SELECT email AS e FROM customers) s ORDER BY e",
    "SELECT s.e FROM (SELECT email AS e FROM customers) s GROUP BY s.e",
    "SELECT DISTINCT s.e FROM (SELECT email AS e FROM customers) s",
    "SELECT s.e FROM (SELECT DISTINCT email AS e FROM customers) s",
    "SELECT s.e FROM (SELECT email AS e FROM customers ORDER BY email LIMIT 1) s",
    "SELECT s.e FROM (SELECT email AS e FROM customers GROUP BY email) s",
    "SELECT s.e FROM (SELECT email AS e FROM customers UNION SELECT name FROM customers) s",
    "SELECT s.e, row_number() OVER (ORDER BY s.e) FROM (SELECT email AS e FROM customers) s",
    "SELECT s.e, length(s.e) FROM (SELECT email AS e FROM customers) s",
    "SELECT (SELECT s.e) FROM (SELECT email AS e FROM customers) s",
    "SELECT s FROM (SELECT email FROM customers) s",
    "SELECT s.email, row_to_json(s) FROM (SELECT email FROM customers) s",
    "SELECT s.email FROM (SELECT email FROM customers) s WHERE s.* IS NOT NULL",
    "SELECT id FROM (SELECT id, email FROM customers) s",  # read, never shown
    "SELECT s.e FROM (SELECT email AS e FROM customers) s, LATERAL (SELECT 1 WHERE s.e LIKE 'a%') l",
    "SELECT s.e FROM (SELECT email AS e FROM customers) s, generate_series(1, length(s.e))",
    "SELECT s.e FROM (SELECT email AS e FROM customers) s "
    "WHERE EXISTS (SELECT 1 FROM (SELECT s.e AS x) z WHERE z.x LIKE 'a%')",
    "SELECT * FROM (SELECT id, email FROM customers) s NATURAL JOIN (SELECT 1 AS id, 'a@b.c'::text AS email) t",
    "SELECT * FROM (SELECT id, email FROM customers) s JOIN (SELECT 'a@b.c'::text AS email) t USING (email)",
    "SELECT j.e FROM ((SELECT email, id FROM customers) s JOIN orders o ON o.customer_id = s.id) AS j(e)",
    "SELECT x.a FROM (SELECT email, id FROM customers) x(a) WHERE x.a LIKE 'a%'",
    "SELECT t.x FROM (SELECT s.e AS x FROM (SELECT email AS e FROM customers) s WHERE s.e LIKE 'a%') t",
    "SELECT l.f FROM (SELECT email AS e FROM customers) s, LATERAL (SELECT s.e AS f) l",
    "SELECT email FROM (SELECT * FROM customers) s",  # the star's other tagged columns: read, never shown
    "WITH c AS (SELECT id, email FROM customers) SELECT c.email FROM c WHERE c.email LIKE 'a%'",
    "WITH c AS (SELECT id, email FROM customers WHERE email LIKE 'a%') SELECT email FROM c",
    "WITH c AS (SELECT id, email FROM customers) SELECT c.email FROM c "
    "WHERE c.id IN (SELECT id FROM c AS d WHERE d.email LIKE 'a%')",
    "WITH c AS (SELECT id, email FROM customers) SELECT x.email FROM c x JOIN c y ON x.id = y.id "
    "AND y.email LIKE 'a%'",
    "WITH c AS (SELECT id, email FROM customers), d AS (SELECT email FROM c WHERE email LIKE 'a%') "
    "SELECT c.email FROM c, d",
    "WITH RECURSIVE c AS (SELECT id, email FROM customers) SELECT email FROM c",
    "WITH c AS (SELECT email FROM customers UNION ALL SELECT email FROM customers) SELECT email FROM c",
    "WITH c AS (SELECT id, email FROM customers) SELECT s.email FROM (WITH c AS (SELECT 1 AS id, 'x' AS email) "
    "SELECT id, email FROM c) s, c WHERE c.email = s.email",
    "WITH c AS MATERIALIZED (SELECT email FROM customers) SELECT email FROM c FOR UPDATE OF c",
    "COPY (SELECT email FROM (SELECT email FROM customers) s) TO STDOUT",  # COPY: only of one table
]


def _app_schema(proxy: ProxyThread) -> object:
    from pgproxy.enforce import PolicyGate

    gate = proxy.server.gate
    assert isinstance(gate, PolicyGate)
    schema = gate.catalog.schema("app")
    assert schema is not None
    return schema


@pytest.mark.parametrize("sql", MASKABLE_THROUGH_SUBQUERIES)
def test_plain_columns_through_subqueries_and_ctes_are_maskable(masking: ProxyThread, sql: str) -> None:
    from pgproxy.analysis.gate import analyze
    from pgproxy.analysis.masking import unmaskable
    from pgproxy.analysis.schema import Schema

    schema = _app_schema(masking)
    assert isinstance(schema, Schema)
    analyses = analyze(sql, schema)
    assert analyses[0].tags_read and unmaskable(analyses) is None


def test_no_tagged_value_leaves_a_masked_subquery_or_cte(masking: ProxyThread, direct_dsn_module: str) -> None:
    """Each statement above, run through the proxy in text and binary: rows come, and none of them
    holds a value of a tagged text column as it is stored."""
    with psycopg.connect(direct_dsn_module) as conn:
        stored = {v for row in conn.execute("SELECT name, email, phone, ssn FROM customers") for v in row}
    with psycopg.connect(masking.dsn(), autocommit=True) as conn:
        for sql in MASKABLE_THROUGH_SUBQUERIES:
            for binary in (False, True):
                rows = conn.cursor(binary=binary).execute(sql).fetchall()
                assert rows, sql
                assert not stored & {v for row in rows for v in row}, sql


@pytest.mark.parametrize("sql", UNMASKABLE_THROUGH_SUBQUERIES)
def test_tagged_columns_used_in_subqueries_and_ctes_are_not_maskable(masking: ProxyThread, sql: str) -> None:
    from pgproxy.analysis.gate import analyze
    from pgproxy.analysis.masking import unmaskable
    from pgproxy.analysis.schema import Schema

    schema = _app_schema(masking)
    assert isinstance(schema, Schema)
    analyses = analyze(sql, schema)
    assert analyses[0].tags_read and unmaskable(analyses) is not None


# -- tests that search: a tagged value in any expression slot is never masked ------------------------

MASKABLE_SEEDS = [
    "SELECT id, email FROM customers WHERE country = 'DE' ORDER BY id LIMIT 5 OFFSET 1",
    "SELECT c.id, c.name, o.total FROM customers c JOIN orders o ON o.customer_id = c.id "
    "WHERE o.status = 'paid' AND o.total > 10",
    "WITH recent AS (SELECT customer_id FROM orders WHERE total > 10) "
    "SELECT c.email, c.phone FROM customers c WHERE c.id IN (SELECT customer_id FROM recent)",
    "SELECT * FROM customers c WHERE c.plan = 'pro' ORDER BY c.id DESC FOR SHARE",
    "COPY (SELECT id, email, ssn FROM customers WHERE id < 10) TO STDOUT WITH (FORMAT csv)",
    "SELECT s.id, s.email FROM (SELECT id, email FROM customers WHERE country = 'DE') s ORDER BY s.id LIMIT 5",
    "WITH c AS (SELECT id, email, phone FROM customers WHERE plan = 'pro') "
    "SELECT c.email, c.phone, o.total FROM c JOIN orders o ON o.customer_id = c.id WHERE o.total > 10",
]


def test_a_tagged_value_in_any_expression_slot_is_never_masked(masking: ProxyThread) -> None:
    """Expression-slot injection (tests/injection.py): a subquery reading customers.ssn placed in
    every slot of maskable statements, one at a time. No mutant may be masked: wherever the
    value goes (a filter, a sort, a function argument, the select list, LIMIT…), masking the
    result's plain columns would not hide it."""
    from pgproxy.analysis.gate import analyze
    from pgproxy.analysis.masking import unmaskable
    from pgproxy.analysis.model import ColumnKey
    from pgproxy.enforce import PolicyGate
    from tests import corpus, injection

    gate = masking.server.gate
    assert isinstance(gate, PolicyGate)
    schema = gate.catalog.schema("app")
    assert schema is not None
    ssn = ColumnKey("public", "customers", "ssn")
    probe = injection.Probe(ssn, schema.relations[("public", "customers")].tags["ssn"], "public.customers", "ssn")
    mutants = 0
    for line, sql in enumerate(MASKABLE_SEEDS, 1):
        assert unmaskable(analyze(sql, schema)) is None, sql  # the seed itself is masked
        for mutant in injection.mutate(corpus.Case("masking", line, "mask", "seed", sql), probe):
            mutants += 1
            assert unmaskable(analyze(mutant.sql, schema)) is not None, (mutant.path, mutant.sql)
    assert mutants > 50  # the walk found the slots (87 when written)
