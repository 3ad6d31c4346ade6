"""Run-time sampling: the results of allowed statements, read through real drivers, are sampled and
classified off the hot path; PII in a column nobody tagged becomes a `pii.detected` audit event
(never a value), decoys do not, and `pgproxy scan` shows and writes what sampling found."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from pgproxy.catalog import load_catalog
from pgproxy.cli import main
from pgproxy.config import ConfigError, SamplingConfig, load_config
from pgproxy.demo.run import demo_file, demo_sql
from pgproxy.pgcluster import PostgresCluster, find_pg_bin
from pgproxy.sampling import RowSample, SampledColumn, Sampler
from tests.approvals_support import approvals_config
from tests.harness import ProxyThread, running_proxy, write_enforce_config
from tests.test_scan import DECOYS

SAMPLED = "sampling_app"  # a database of its own: the demo data and the decoys
AUDIT = """\
audit:
  flush_interval_seconds: 0.05
"""
SAMPLING = """\
sampling:
  enabled: true
  results_per_second: 100000
  rows_per_result: 100
"""
# A table whose notes held emails when agents read them, and no longer do when `pgproxy scan` runs.
GONE = """
CREATE TABLE sampling_gone (id int PRIMARY KEY, notes text);
INSERT INTO sampling_gone SELECT i, 'reach me at person' || i || '@example.net' FROM generate_series(1, 40) i;
"""
DECOY_COLUMNS = "id, order_number, sku, request_id, checksum, version, created"


@pytest.fixture(scope="module")
def sampled_db(pg: PostgresCluster) -> Iterator[str]:
    pg.psql(f"DROP DATABASE IF EXISTS {SAMPLED}")
    pg.create_database(SAMPLED, owner="app_scram")
    pg.psql(demo_sql() + DECOYS + GONE, dbname=SAMPLED, user="app_scram")
    yield SAMPLED
    pg.psql(f"DROP DATABASE IF EXISTS {SAMPLED}")


def sampling_config(pg: PostgresCluster, directory: Path, database: str, sampling: str = SAMPLING) -> Path:
    return write_enforce_config(pg, directory, catalog=demo_file("catalog.yaml"), dbname=database,
                                extra=approvals_config(directory, 30) + AUDIT + sampling)


@pytest.fixture(scope="module")
def config_path(pg: PostgresCluster, sampled_db: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sampling_config(pg, tmp_path_factory.mktemp("sampling"), sampled_db)


@pytest.fixture(scope="module")
def proxy(config_path: Path) -> Iterator[ProxyThread]:
    with running_proxy(load_config(config_path)) as running:
        yield running


def detections(proxy: ProxyThread) -> list[dict[str, Any]]:
    """The pii.detected events, once the worker has classified every queued sample."""
    sampler = proxy.server.sampler
    audit = proxy.server.audit
    assert sampler is not None and audit is not None
    proxy.call(asyncio.wait_for(sampler.idle(), 120), timeout=130)
    proxy.call(audit.flush())
    with sqlite3.connect(audit.config.store) as db:
        return [json.loads(body) for (body,) in
                db.execute("SELECT body FROM audit_events WHERE type = 'pii.detected' ORDER BY seq")]


def detected(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{e['table']}.{e['column']}": e for e in events}


def read_everything(proxy: ProxyThread) -> None:
    """What agents read, through each driver and protocol: tickets, the decoys, the notes."""
    psql = [str(find_pg_bin("psql")), "-X", "-At", proxy.dsn(), "-c"]
    subprocess.run([*psql, "SELECT id, body, status FROM support_tickets ORDER BY id LIMIT 100"],
                   capture_output=True, check=True, timeout=30)
    with psycopg.connect(proxy.dsn()) as conn:
        conn.execute(f"SELECT {DECOY_COLUMNS} FROM scan_decoys.accounts ORDER BY id LIMIT 100").fetchall()
        conn.cursor(binary=True).execute("SELECT contact FROM scan_decoys.accounts WHERE id > %s ORDER BY id",
                                         (0,)).fetchall()

    async def prepared() -> None:
        conn = await asyncpg.connect(proxy.dsn())
        try:
            statement = await conn.prepare("SELECT id, notes FROM sampling_gone WHERE id <= $1 ORDER BY id")
            for _ in range(3):
                await statement.fetch(40)
        finally:
            await conn.close()
    asyncio.run(prepared())


def test_untagged_pii_is_detected_and_decoys_are_not(proxy: ProxyThread, config_path: Path) -> None:
    read_everything(proxy)
    found = detected(detections(proxy))
    assert set(found) == {"public.support_tickets.body", "scan_decoys.accounts.contact", "public.sampling_gone.notes"}
    body = found["public.support_tickets.body"]
    assert body["database"] == "app" and "pii.email" in body["suggested"] and body["entities"]["EMAIL_ADDRESS"] >= 2
    assert body["sampled"] >= 100  # the first 100 tickets, read once
    notes = found["public.sampling_gone.notes"]
    assert notes["entities"]["EMAIL_ADDRESS"] == notes["sampled"] >= 40
    assert isinstance(notes["table_oid"], int) and notes["attnum"] == 2
    # Never a value: no sampled text is in the audit log.
    audit = proxy.server.audit
    assert audit is not None
    with sqlite3.connect(audit.config.store) as db:
        everything = "\n".join(body for (body,) in db.execute("SELECT body FROM audit_events"))
    assert "@example.net" not in everything and "buyer1@" not in everything
    sampler = proxy.server.sampler
    assert sampler is not None and sampler.taken >= 5 and sampler.classified >= 300 and sampler.dropped == 0


def test_a_column_is_reported_once_until_it_suggests_more(proxy: ProxyThread) -> None:
    before = len(detections(proxy))
    with psycopg.connect(proxy.dsn()) as conn:
        for _ in range(3):
            conn.execute("SELECT notes FROM sampling_gone").fetchall()
    assert len(detections(proxy)) == before


def test_scan_shows_writes_and_checks_what_sampling_found(proxy: ProxyThread, config_path: Path, pg: PostgresCluster,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    read_everything(proxy)
    detections(proxy)
    # The notes no longer hold emails: scan's own sample finds nothing; sampling saw them.
    pg.psql("UPDATE sampling_gone SET notes = 'resolved'", dbname=SAMPLED, user="app_scram")
    try:
        code = main(["scan", "--config", str(config_path), "--json", "--sample", "200"])
        out = json.loads(capsys.readouterr().out)
        assert code == 0
        notes = next(c for c in out["columns"] if c["table"] == "public.sampling_gone" and c["column"] == "notes")
        assert notes["suggested"] == [] and notes["entities"] == {}
        seen = {(d["table"], d["column"]): d for d in out["detected"]}
        assert seen[("public.sampling_gone", "notes")]["suggested"] == ["pii", "pii.email"]
        assert seen[("public.sampling_gone", "notes")]["tagged"] == []

        assert main(["scan", "--config", str(config_path), "--check", "--sample", "200"]) == 1
        human = capsys.readouterr()
        assert "public.sampling_gone.notes: add pii, pii.email (found at run time" in human.out
        assert "resolved" not in human.out and "@example.net" not in human.out

        assert main(["scan", "--config", str(config_path), "--write", "--sample", "200"]) == 0
        capsys.readouterr()
        tags = load_catalog(config_path.parent / "catalog.yaml").tags_for("app")
        assert tags[("public", "sampling_gone")]["notes"] == frozenset({"pii", "pii.email"})
    finally:
        (config_path.parent / "catalog.yaml").write_text(demo_file("catalog.yaml"))
        pg.psql("DELETE FROM sampling_gone; INSERT INTO sampling_gone SELECT i, 'reach me at person' || i || "
                "'@example.net' FROM generate_series(1, 40) i", dbname=SAMPLED, user="app_scram")


def test_the_rate_bounds_what_is_sampled(pg: PostgresCluster, sampled_db: str, tmp_path: Path) -> None:
    slow = SAMPLING.replace("results_per_second: 100000", "results_per_second: 0.001")
    with running_proxy(load_config(sampling_config(pg, tmp_path, sampled_db, slow))) as proxy, \
            psycopg.connect(proxy.dsn()) as conn:
        for _ in range(20):
            conn.execute("SELECT body FROM support_tickets LIMIT 50").fetchall()
            conn.execute("SELECT body FROM support_tickets WHERE id < %s", (50,)).fetchall()
        sampler = proxy.server.sampler
        assert sampler is not None and sampler.taken == 1
        found = detected(detections(proxy))
        assert list(found) == ["public.support_tickets.body"] and found["public.support_tickets.body"]["sampled"] <= 100


def test_sampling_off_runs_nothing(pg: PostgresCluster, sampled_db: str, tmp_path: Path) -> None:
    path = sampling_config(pg, tmp_path, sampled_db, sampling="")
    with running_proxy(load_config(path)) as proxy, psycopg.connect(proxy.dsn()) as conn:
        conn.execute("SELECT body FROM support_tickets").fetchall()
        assert proxy.server.sampler is None
        audit = proxy.server.audit
        assert audit is not None
        proxy.call(audit.flush())
        with sqlite3.connect(audit.config.store) as db:
            assert db.execute("SELECT count(*) FROM audit_events WHERE type = 'pii.detected'").fetchone() == (0,)


def test_results_pass_unchanged_while_sampled(proxy: ProxyThread, config_path: Path, pg: PostgresCluster) -> None:
    """Every driver gets exactly what a direct connection gets, sampled or not."""
    direct = pg.dsn(user="app_scram", password=(config_path.parent / "upstream-password").read_text(),
                    dbname=SAMPLED)
    query = ("SELECT t.id, t.body, c.country, t.status FROM support_tickets t "
             "JOIN customers c ON c.id = t.customer_id WHERE t.id < %s ORDER BY t.id")
    with psycopg.connect(direct) as conn:
        expected = conn.execute(query, (300,)).fetchall()
    for binary in (False, True):
        with psycopg.connect(proxy.dsn()) as conn:
            assert conn.cursor(binary=binary).execute(query, (300,)).fetchall() == expected
            with conn.cursor(name="c") as cursor:  # a portal run in parts
                cursor.itersize = 7
                assert list(cursor.execute(query, (300,))) == expected


def test_config_errors_say_why(pg: PostgresCluster, tmp_path: Path) -> None:
    path = write_enforce_config(pg, tmp_path, catalog=demo_file("catalog.yaml"), extra=SAMPLING)
    with pytest.raises(ConfigError, match=r"sampling reports what it finds as pii\.detected events in the audit log"):
        load_config(path)
    path.write_text(path.read_text().replace("mode: enforce", "mode: passthrough"))
    with pytest.raises(ConfigError, match="pass-through mode reads none"):
        load_config(path)
    path = sampling_config(pg, tmp_path, "app", SAMPLING + "  rows_per_result: 0\n")
    with pytest.raises(ConfigError, match=r"pgproxy.yaml:\d+.*rows_per_result"):
        load_config(path)


# -- the copy the relay takes -----------------------------------------------------------------


def data_row(*values: bytes | None) -> bytes:
    out = struct.pack("!h", len(values))
    for value in values:
        out += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return out


def column(attnum: int) -> SampledColumn:
    return SampledColumn("app", "public", "t", f"c{attnum}", 1, attnum)


def test_a_sample_copies_its_fields_bounded() -> None:
    sample = RowSample([(1, column(2)), (3, column(4))], limit=3, max_bytes=5, codec="utf-8")
    assert not sample.add(data_row(b"1", b"ann@x.org", b"skip", None))
    assert not sample.add(data_row(b"2", None, b"skip", b"bob"))
    assert sample.add(data_row(b"3", b"c", b"", b"d", b"after"))
    assert sample.values == [[b"ann@x", b"c"], [b"bob", b"d"]]
    short = RowSample([(3, column(4))], limit=3, max_bytes=5, codec="utf-8")
    assert short.add(data_row(b"1")) and short.values == [[]]  # fewer fields than described: the sample ends


def test_which_columns_are_sampled(proxy: ProxyThread) -> None:
    """Only untagged text-like columns of tables: not tagged ones, not numbers, not views' columns."""
    sampler = proxy.server.sampler
    assert sampler is not None
    gate = proxy.server.gate
    schema = gate.catalog.schema("app")  # type: ignore[union-attr]
    assert schema is not None
    names = {f"{c.table}.{c.column}" for c in sampler._candidates("app").values()}
    assert {"support_tickets.body", "support_tickets.status", "customers.country", "orders.status"} <= names
    assert not {"customers.email", "customers.ssn", "customers.id", "orders.total"} & names
    assert not any(c.schema in ("pg_catalog", "information_schema") for c in sampler._candidates("app").values())


def test_sampler_rate_without_a_proxy() -> None:
    async def run() -> None:
        sampler = Sampler(SamplingConfig(enabled=True, results_per_second=2), lambda _: None, None, None)
        assert sampler.due() and sampler.begin("app", [(1, 2)], None) is None  # no schema: nothing to sample
        assert sampler.due()  # nothing taken, the rate is not spent
        sampler.next_at = time.monotonic() + 10
        assert not sampler.due()
    asyncio.run(run())


STAFF = """
CREATE TABLE IF NOT EXISTS sampling_staff (id int PRIMARY KEY, ref text);
INSERT INTO sampling_staff SELECT i, 'EMP-' || lpad(i::text, 6, '0') FROM generate_series(1, 30) i
    ON CONFLICT DO NOTHING;
"""
RECOGNIZERS = """\
recognizers:
  - entity: EMPLOYEE_ID
    patterns: ['\\bEMP-\\d{6}\\b']
    tags: [pii, pii.employee_id]
"""


def test_the_worker_uses_the_configs_recognizers(pg: PostgresCluster, sampled_db: str, tmp_path: Path) -> None:
    pg.psql(STAFF, dbname=sampled_db, user="app_scram")
    (tmp_path / "recognizers.yaml").write_text(RECOGNIZERS)
    path = sampling_config(pg, tmp_path, sampled_db, SAMPLING + "recognizers: recognizers.yaml\n")
    with running_proxy(load_config(path)) as proxy, psycopg.connect(proxy.dsn()) as conn:
        conn.execute("SELECT id, ref FROM sampling_staff").fetchall()
        found = detected(detections(proxy))
    assert found["public.sampling_staff.ref"]["suggested"] == ["pii", "pii.employee_id"]
    assert found["public.sampling_staff.ref"]["entities"] == {"EMPLOYEE_ID": 30}


def test_a_broken_recognizers_file_stops_the_start(pg: PostgresCluster, sampled_db: str, tmp_path: Path) -> None:
    (tmp_path / "recognizers.yaml").write_text("recognizers:\n  - entity: X\n    patterns: ['(unclosed']\n"
                                               "    tags: [pii]\n")
    path = sampling_config(pg, tmp_path, sampled_db, SAMPLING + "recognizers: recognizers.yaml\n")
    proxy = ProxyThread(load_config(path))
    try:
        with pytest.raises(ConfigError, match=r"recognizers\.yaml:3: recognizers\[0\]\.patterns\[0\]: invalid"):
            proxy.start()
    finally:
        proxy.stop()


def test_a_worker_that_dies_is_replaced(pg: PostgresCluster, sampled_db: str, tmp_path: Path) -> None:
    """Killing the worker loses its counts, not sampling: the next samples start a new worker."""
    with running_proxy(load_config(sampling_config(pg, tmp_path, sampled_db))) as proxy, \
            psycopg.connect(proxy.dsn()) as conn:
        sampler = proxy.server.sampler
        assert sampler is not None and sampler._pool is not None
        [worker] = list(sampler._pool._processes.values())
        worker.kill()
        worker.join(30)
        conn.execute("SELECT notes FROM sampling_gone").fetchall()  # its batch meets the dead worker
        proxy.call(asyncio.wait_for(sampler.idle(), 120), timeout=130)
        conn.execute("SELECT notes FROM sampling_gone").fetchall()  # classified by the new one
        found = detected(detections(proxy))
        assert found["public.sampling_gone.notes"]["suggested"] == ["pii", "pii.email"]
        [replacement] = list(sampler._pool._processes.values())
        assert replacement.pid != worker.pid and replacement.is_alive()


def test_a_program_without_a_main_guard_is_told_why(tmp_path: Path, repo_root: Path) -> None:
    """Spawned processes import the program's main module again; one that starts pgproxy at import
    gets a sentence saying so, not multiprocessing's BrokenProcessPool."""
    script = tmp_path / "embedded.py"
    script.write_text("import asyncio\nfrom pgproxy.sampling import _spawn_worker\n"
                      "asyncio.run(_spawn_worker(None))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(repo_root)}, check=False)
    assert done.returncode != 0
    assert 'must do so under `if __name__ == "__main__":`' in done.stderr.splitlines()[-1]
