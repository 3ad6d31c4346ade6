"""Shared fixtures: one throwaway PostgreSQL for the whole run, and proxies in front of it."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import pytest

from pgproxy.demo.run import demo_sql
from pgproxy.pgcluster import PostgresCluster
from tests.approvals_support import approving, retrying  # noqa: F401  (fixtures shared by several test modules)
from tests.harness import DATABASE, UPSTREAM_USERS, ProxyThread, make_config, running_proxy
from tests.pki import Pki, make_pki


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# A test run stopped with SIGTERM (a CI time limit, `timeout`, `kill`) unwinds like Ctrl-C, so the
# fixtures still stop the PostgreSQL servers they started.
signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(scope="session", autouse=True)
def no_blocking_cancel_in_this_process() -> Iterator[None]:
    """psycopg's `Connection.cancel()` (libpq's PQcancel) waits until the server closes the cancel
    connection, and psycopg's C implementation holds the GIL meanwhile: a proxy on a thread of this
    process (ProxyThread) can never answer it, and the run hangs where not even pytest-timeout can
    stop it. Tests run that call in a process of its own (tests/python/cancel_probe.py), as users do."""
    def refused(*args: Any) -> NoReturn:
        raise RuntimeError("psycopg's cancel() deadlocks against an in-process proxy: use cancel_safe(), "
                           "or tests/python/cancel_probe.py (its own process)")

    with pytest.MonkeyPatch.context() as patch:
        for connection in (psycopg.Connection, psycopg.AsyncConnection):
            patch.setattr(connection, "cancel", refused)
        yield


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def pg(pki: Pki) -> Iterator[PostgresCluster]:
    """PostgreSQL with the demo data in `app`, and roles for each upstream auth method."""
    hba = [f"host{kind} all {user} 127.0.0.1/32 {method}"
           for user, (_, method) in UPSTREAM_USERS.items() for kind in ("", "ssl")]
    with PostgresCluster(hba_lines=hba, ssl_cert=pki.server_cert, ssl_key=pki.server_key,
                         settings={"max_connections": "300"}) as cluster:
        for user, (password, method) in UPSTREAM_USERS.items():
            cluster.create_role(user, password,
                                password_encryption="md5" if method == "md5" else "scram-sha-256")
        cluster.create_database(DATABASE, owner="app_scram")
        cluster.psql(demo_sql(), dbname=DATABASE, user="app_scram")
        cluster.psql("GRANT ALL ON ALL TABLES IN SCHEMA public TO app_md5, app_plain;"
                     "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app_md5, app_plain;",
                     dbname=DATABASE)
        yield cluster


@pytest.fixture(scope="session")
def proxy(pg: PostgresCluster) -> Iterator[ProxyThread]:
    """The default proxy: JWT and SCRAM agents, route `app` -> the test cluster (SCRAM upstream)."""
    with running_proxy(make_config(pg)) as running:
        yield running


@pytest.fixture
def direct_dsn(pg: PostgresCluster) -> str:
    password = UPSTREAM_USERS["app_scram"][0]
    return pg.dsn(user="app_scram", password=password, dbname=DATABASE)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
