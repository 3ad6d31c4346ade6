"""`pgproxy scan` against the demo database: finds the tagged PII and the untagged tickets,
leaves decoys alone, writes tags keeping comments, and never prints a sampled value."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgproxy.catalog import load_catalog
from pgproxy.cli import main
from pgproxy.demo.run import demo_file, demo_sql
from pgproxy.pgcluster import PostgresCluster
from pgproxy.scan import Table, sample_sql
from tests.harness import UPSTREAM_USERS, write_enforce_config

# A database of its own, with only the demo data: the suite's `app` gains tables other tests make.
SCANNED = "scan_app"

DECOYS = """
CREATE SCHEMA scan_decoys;
CREATE TABLE scan_decoys.accounts (
    id int PRIMARY KEY,
    order_number text,   -- shaped like US phone numbers
    sku varchar(20),     -- shaped like SSNs
    request_id text,     -- UUIDs
    checksum text,       -- MD5 hashes
    version text,        -- shaped like IPv4 addresses
    created text,        -- timestamps
    contact text         -- emails: PII whatever the name
);
INSERT INTO scan_decoys.accounts
SELECT i,
       (200 + i % 700) || '-555-' || lpad((i % 10000)::text, 4, '0'),
       lpad((100 + i % 800)::text, 3, '0') || '-' || lpad((10 + i % 89)::text, 2, '0') || '-' || lpad(i::text, 4, '0'),
       md5(i::text)::uuid::text,
       md5('x' || i),
       '1.' || (i % 20) || '.' || (i % 7) || '.' || (i % 3),
       (timestamptz '2024-01-01 00:00:00+00' + i * interval '7 hours')::text,
       'buyer' || i || '@example.org'
  FROM generate_series(1, 400) AS i;
ANALYZE scan_decoys.accounts;
"""


@pytest.fixture(scope="module")
def scanned(pg: PostgresCluster) -> Iterator[str]:
    pg.psql(f"DROP DATABASE IF EXISTS {SCANNED}")
    pg.create_database(SCANNED, owner="app_scram")
    pg.psql(demo_sql(), dbname=SCANNED, user="app_scram")
    yield SCANNED
    pg.psql(f"DROP DATABASE IF EXISTS {SCANNED}")


@pytest.fixture
def decoys(pg: PostgresCluster, scanned: str) -> Iterator[None]:
    pg.psql(DECOYS, dbname=scanned, user="app_scram")
    try:
        yield
    finally:
        pg.psql("DROP SCHEMA scan_decoys CASCADE", dbname=scanned, user="app_scram")


@pytest.fixture
def config(pg: PostgresCluster, tmp_path: Path, decoys: None, scanned: str) -> Path:
    return write_enforce_config(pg, tmp_path, catalog=demo_file("catalog.yaml"), dbname=scanned)


def scan(capsys: pytest.CaptureFixture[str], config: Path, *flags: str) -> tuple[int, str, str]:
    code = main(["scan", "--config", str(config), "--sample", "300", *flags])
    out, err = capsys.readouterr()
    return code, out, err


def test_scan_finds_the_untagged_pii_and_agrees_with_the_tags(
        config: Path, capsys: pytest.CaptureFixture[str], pg: PostgresCluster) -> None:
    code, out, err = scan(capsys, config, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert list(report) == ["columns", "detected", "errors"] and report["errors"] == [] and report["detected"] == []
    columns = {(c["table"], c["column"]): c for c in report["columns"]}
    for column in columns.values():
        assert {"table", "column", "tagged", "suggested", "entities", "sampled"} <= set(column)
    body = columns[("public.support_tickets", "body")]
    assert body["tagged"] == []
    assert body["suggested"] == ["pii", "pii.email"]
    assert 0.1 < body["entities"]["EMAIL_ADDRESS"] < 0.2  # every 7th ticket
    assert body["sampled"] == 300
    # The demo catalog's tags and the scan's suggestions agree.
    for name in ("name", "email", "phone", "ssn"):
        found = columns[("public.customers", name)]
        assert found["suggested"] == found["tagged"], found
        assert found["suggested"], found
    assert columns[("scan_decoys.accounts", "contact")]["suggested"] == ["pii", "pii.email"]
    pii = {("public.support_tickets", "body"), ("scan_decoys.accounts", "contact")} | {
        ("public.customers", name) for name in ("name", "email", "phone", "ssn")}
    for key, found in columns.items():
        if key not in pii:  # decoys, statuses, countries, plans
            assert found["suggested"] == [], found
    assert columns[("scan_decoys.accounts", "order_number")]["entities"]["PHONE_NUMBER"] > 0.9
    assert columns[("scan_decoys.accounts", "sku")]["entities"]["US_SSN"] > 0.9
    # No sampled value is printed.
    sampled = pg.psql("SELECT email, phone, ssn, name FROM customers ORDER BY id LIMIT 20", dbname=SCANNED)
    for word in sampled.split():
        if len(word) > 5:
            assert word not in out and word not in err
    assert "@example" not in out and "555-01" not in out


def test_check_write_and_the_human_report(config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    before = catalog.read_text()
    code, out, err = scan(capsys, config, "--check")
    assert code == 1
    assert "+ public.support_tickets.body: add pii, pii.email (EMAIL_ADDRESS 14%" in out
    assert "+ scan_decoys.accounts.contact: add pii, pii.email" in out
    assert "= public.customers.ssn: tagged as suggested" in out
    assert "+      body: [pii, pii.email]" in out  # the diff --write would apply
    assert "2 columns look like PII and lack tags" in err
    assert catalog.read_text() == before

    code, out, err = scan(capsys, config, "--write")
    assert code == 0, err
    text = catalog.read_text()
    for line in before.splitlines():  # every line, comments included, is still there
        assert line in text.splitlines()
    assert text.startswith(before.split("\n      name:")[0])
    tags = load_catalog(catalog).tags_for("app")
    assert tags[("public", "support_tickets")]["body"] == {"pii", "pii.email"}
    assert tags[("scan_decoys", "accounts")]["contact"] == {"pii", "pii.email"}

    code, out, err = scan(capsys, config, "--check")
    assert code == 0, err
    assert "+ " not in out


def test_scan_errors(config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = scan(capsys, config, "--route", "nope")
    assert code == 2 and "no route named 'nope'" in err
    (tmp_path / "recognizers.yaml").write_text("recognizers:\n  - entity: x\n")
    config.write_text(config.read_text() + "recognizers: recognizers.yaml\n")
    code, _, err = scan(capsys, config)
    assert code == 2
    assert f"{tmp_path / 'recognizers.yaml'}:2: recognizers[0]" in err


def test_sampling_is_bounded() -> None:
    small = sample_sql(Table("public", "t", 800, 10, ("a", 'we"ird')), 500, 2.5)
    assert "TABLESAMPLE" not in small and "LIMIT 500" in small
    assert 'left("we""ird"::text, 1000)' in small
    assert small.startswith("BEGIN READ ONLY;\nSET LOCAL statement_timeout = 2500;")
    large = sample_sql(Table("public", "t", 10_000_000, 200_000, ("a",)), 500, 10)
    assert "TABLESAMPLE SYSTEM (0.015000) REPEATABLE (0) LIMIT 500" in large
    medium = sample_sql(Table("public", "t", 100_000, 1000, ("a",)), 500, 10)
    assert "TABLESAMPLE BERNOULLI (1.500000) REPEATABLE (0) LIMIT 500" in medium


def test_a_table_that_cannot_be_sampled_fails_the_scan(config: Path, capsys: pytest.CaptureFixture[str],
                                                        pg: PostgresCluster) -> None:
    import psycopg

    dsn = pg.dsn(user="app_scram", password=UPSTREAM_USERS["app_scram"][0], dbname=SCANNED)
    with psycopg.connect(dsn) as locker:
        locker.execute("LOCK TABLE scan_decoys.accounts IN ACCESS EXCLUSIVE MODE")  # until the block ends
        code, out, err = scan(capsys, config, "--timeout", "1", "--json")
    assert code == 1
    report = json.loads(out)
    [error] = report["errors"]
    assert error["table"] == "scan_decoys.accounts"
    assert error["message"] in ("canceling statement due to lock timeout",
                                "canceling statement due to statement timeout")  # both are 1 s
    assert {c["table"] for c in report["columns"]} == {"public.customers", "public.orders", "public.support_tickets"}
    assert f"scan_decoys.accounts was not sampled: {error['message']}" in err


TYPED = """
CREATE SCHEMA scan_typed;
CREATE TABLE scan_typed.people (
    id int PRIMARY KEY,
    dob date,              -- a birth date: not text, but its name says what it is
    mobile_phone bigint,   -- phone numbers kept as numbers
    last_login_ip inet,
    total numeric,         -- decoys: no hint, so not even sampled
    created date,
    parts int[]
);
INSERT INTO scan_typed.people
SELECT i, date '1950-01-01' + i * 37, 2025550100 + i % 100, ('10.1.' || i % 250 || '.' || i % 7)::inet,
       i * 1.5, date '2024-01-01' + i, ARRAY[i, i + 1]
  FROM generate_series(1, 300) AS i;
ANALYZE scan_typed.people;
"""


def test_columns_that_are_not_text_are_scanned_when_their_names_hint(
        config: Path, capsys: pytest.CaptureFixture[str], pg: PostgresCluster) -> None:
    pg.psql(TYPED, dbname=SCANNED, user="app_scram")
    try:
        code, out, err = scan(capsys, config, "--json")
    finally:
        pg.psql("DROP SCHEMA scan_typed CASCADE", dbname=SCANNED, user="app_scram")
    assert code == 0, err
    columns = {c["column"]: c for c in json.loads(out)["columns"] if c["table"] == "scan_typed.people"}
    assert set(columns) == {"dob", "mobile_phone", "last_login_ip"}  # no hint: total, created, parts, id
    assert columns["dob"]["suggested"] == ["pii", "pii.birth_date"] and columns["dob"]["sampled"] == 300
    assert columns["mobile_phone"]["suggested"] == ["pii", "pii.phone"]
    assert columns["last_login_ip"]["suggested"] == ["pii", "pii.ip_address"]
