"""The throwaway PostgreSQL that tests, `pgproxy demo` and benchmarks share.

Run as root (as here), these exercise the unprivileged path: the server and
psql run as the `postgres` system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import psycopg
import pytest

from pgproxy import pgcluster
from pgproxy.pgcluster import PostgresCluster, find_pg_bin
from tests.pki import make_pki

SCRAM_PASSWORD = "p@ss:w/rd%?#'\" é"  # every character a URL or SQL literal could trip on
MD5_PASSWORD = "md5 secret"

try:
    find_pg_bin("initdb")
except RuntimeError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)


def demo_sql() -> str:
    return resources.files("pgproxy.demo").joinpath("data.sql").read_text(encoding="utf-8")


def port_is_open(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex((host, port)) == 0


def postmaster_processes(data_dir: Path) -> list[int]:
    """Live processes whose working directory is `data_dir` (the postmaster and its children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) == data_dir:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    with PostgresCluster(hba_lines=["host all md5_user 127.0.0.1/32 md5"]) as pg:
        yield pg


def test_runs_as_an_unprivileged_user_when_root(cluster: PostgresCluster) -> None:
    if os.geteuid() != 0:
        pytest.skip("only meaningful when the tests run as root")
    postgres_uid = pwd.getpwnam("postgres").pw_uid
    assert cluster.data_dir.stat().st_uid == postgres_uid
    assert cluster.base_dir.stat().st_uid == postgres_uid
    assert cluster.psql("SELECT current_user").strip() == "postgres"
    server_processes = postmaster_processes(cluster.data_dir)
    assert server_processes
    owners = set()
    for pid in server_processes:
        try:
            owners.add(Path(f"/proc/{pid}").stat().st_uid)
        except FileNotFoundError:
            continue  # a short-lived backend exited after the listing
    assert owners == {postgres_uid}


def test_superuser_dsn_connects_over_tcp(cluster: PostgresCluster) -> None:
    with psycopg.connect(cluster.dsn()) as conn:
        row = conn.execute("SELECT current_user, inet_server_addr()::text").fetchone()
    assert row == ("postgres", "127.0.0.1/32")


def test_scram_role_connects_with_a_url_quoted_password(cluster: PostgresCluster) -> None:
    cluster.create_role("scram user", SCRAM_PASSWORD)
    stored = cluster.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'scram user'")
    assert stored.startswith("SCRAM-SHA-256$")

    with psycopg.connect(cluster.dsn(user="scram user", password=SCRAM_PASSWORD)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("scram user",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(cluster.dsn(user="scram user", password="wrong")).close()


def test_md5_role_connects(cluster: PostgresCluster) -> None:
    cluster.create_role("md5_user", MD5_PASSWORD, password_encryption="md5")
    stored = cluster.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'md5_user'")
    assert stored.startswith("md5")

    with psycopg.connect(cluster.dsn(user="md5_user", password=MD5_PASSWORD)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("md5_user",)


def test_psql_failure_carries_the_server_error(cluster: PostgresCluster) -> None:
    with pytest.raises(RuntimeError, match='relation "no_such_table" does not exist'):
        cluster.psql("SELECT 1; SELECT * FROM no_such_table; SELECT 2")


DEMO_DIGEST = """
SELECT md5(string_agg(c::text, E'\\n' ORDER BY c.id)) FROM customers c;
SELECT md5(string_agg(o::text, E'\\n' ORDER BY o.id)) FROM orders o;
"""


def test_demo_data_loads_the_same_every_time(cluster: PostgresCluster) -> None:
    cluster.create_role("demo_owner", "owner password")
    for db in ("demo_a", "demo_b"):
        cluster.create_database(db, owner="demo_owner")
        cluster.psql(demo_sql(), dbname=db, user="demo_owner")

    counts = cluster.psql(
        "SELECT count(*) FROM customers; SELECT count(*) FROM orders;", dbname="demo_a"
    )
    assert counts.split() == ["1000", "5000"]
    digest_a = cluster.psql(DEMO_DIGEST, dbname="demo_a")
    assert cluster.psql(DEMO_DIGEST, dbname="demo_b") == digest_a

    # Loading again replaces the tables with the same content, sequences included.
    cluster.psql(demo_sql(), dbname="demo_a")
    assert cluster.psql(DEMO_DIGEST, dbname="demo_a") == digest_a
    with psycopg.connect(cluster.dsn(dbname="demo_a")) as conn:
        new_id = conn.execute(
            "INSERT INTO customers (name) VALUES ('New') RETURNING id"
        ).fetchone()
        conn.rollback()
        analyzed = conn.execute(
            "SELECT count(*) FROM pg_stat_user_tables"
            " WHERE relname IN ('customers', 'orders') AND last_analyze IS NOT NULL"
        ).fetchone()
    assert new_id == (1001,)
    assert analyzed == (2,)


def test_demo_data_looks_synthetic_but_plausible(cluster: PostgresCluster) -> None:
    cluster.create_database("demo_shape")
    cluster.psql(demo_sql(), dbname="demo_shape")
    checks = cluster.psql(
        """
        SELECT count(*) FILTER (WHERE email !~ '^[a-z]+\\.[a-z]+[0-9]+@example\\.com$'),
               count(*) FILTER (WHERE phone !~ '^\\+1-[0-9]{3}-555-01[0-9]{2}$'),
               count(*) FILTER (WHERE ssn !~ '^9[0-9]{2}-[0-9]{2}-[0-9]{4}$'),
               count(*) FILTER (WHERE plan NOT IN ('free', 'pro', 'enterprise')),
               count(DISTINCT email), count(DISTINCT name) > 100, count(DISTINCT country) > 5
        FROM customers;
        SELECT count(*) FILTER (WHERE customer_id IS NULL OR total <= 0),
               count(DISTINCT status) >= 3
        FROM orders;
        """,
        dbname="demo_shape",
    )
    assert checks.split() == ["0|0|0|0|1000|t|t", "0|t"]


def test_ssl_cluster_accepts_verify_full(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with PostgresCluster(ssl_cert=pki.server_cert, ssl_key=pki.server_key) as pg:
        assert (pg.data_dir / "server.key").stat().st_mode & 0o777 == 0o600
        for host in ("127.0.0.1", "localhost"):
            url = pg.dsn(host=host)
            with psycopg.connect(url, sslmode="verify-full", sslrootcert=str(pki.ca_cert)) as conn:
                used_ssl = conn.execute(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                ).fetchone()
            assert used_ssl == (True,)
        # `host` lines still admit clients that do not ask for TLS.
        with psycopg.connect(pg.dsn(), sslmode="disable") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_stop_leaves_nothing_behind() -> None:
    pg = PostgresCluster()
    pg.start()
    base_dir, data_dir, port = pg.base_dir, pg.data_dir, pg.port
    assert port_is_open(pg.host, port)
    assert postmaster_processes(data_dir)

    pg.stop()
    assert not port_is_open(pg.host, port)
    assert postmaster_processes(data_dir) == []
    assert not base_dir.exists()
    pg.stop()  # idempotent


def test_keep_leaves_the_data_and_log() -> None:
    parent = Path(tempfile.mkdtemp(prefix="pgproxy-test-"))
    try:
        parent.chmod(0o755)  # traversable by the postgres user when we are root
        base_dir = parent / "kept"
        with PostgresCluster(base_dir, keep=True) as pg:
            pass
        assert (base_dir / "data" / "PG_VERSION").exists()
        assert "ready to accept connections" in (base_dir / "postgresql.log").read_text()
        assert not port_is_open(pg.host, pg.port)
        assert postmaster_processes(base_dir / "data") == []
    finally:
        shutil.rmtree(parent)


def test_unreachable_base_dir_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands the cluster to another user")
    # pytest's tmp_path sits under a 0700 directory of root's.
    (tmp_path / "mine.txt").write_text("not the cluster's")
    with pytest.raises(RuntimeError, match=r"'postgres' user .* cannot reach"):
        PostgresCluster(tmp_path).start()
    assert (tmp_path / "mine.txt").exists()  # a directory we did not create is left alone


def test_a_taken_port_is_retried_with_another(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_free_port = pgcluster.free_port
        handed_out: list[int] = []

        def taken_then_free(host: str = "127.0.0.1") -> int:
            handed_out.append(taken if not handed_out else real_free_port(host))
            return handed_out[-1]

        monkeypatch.setattr(pgcluster, "free_port", taken_then_free)

        with PostgresCluster() as pg:
            assert handed_out[0] == taken
            assert pg.port == handed_out[-1] != taken
            assert pg.psql("SELECT 1").strip() == "1"

        with pytest.raises(RuntimeError, match=r"(?s)did not start.*already in use"):
            PostgresCluster(port=taken).start()


def test_start_failure_shows_the_server_log_and_cleans_up() -> None:
    pg = PostgresCluster(settings={"shared_buffers": "plenty"})
    with pytest.raises(RuntimeError, match='invalid value for parameter "shared_buffers"'):
        pg.start()
    assert not pg.base_dir.exists()
    assert postmaster_processes(pg.data_dir) == []


def test_missing_program_names_what_to_install() -> None:
    with pytest.raises(RuntimeError, match="install the PostgreSQL server"):
        find_pg_bin("pg_no_such_program")
