"""Agent identity, upstream authentication and TLS, end to end through real drivers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import psycopg
import pytest

from pgproxy.config import SslMode
from pgproxy.pgcluster import PostgresCluster
from tests.harness import (
    JWT_SECRET,
    STATIC_AGENT,
    STATIC_PASSWORD,
    ProxyThread,
    make_config,
    make_token,
    running_proxy,
    tls_config,
    upstream_route,
)
from tests.pki import Pki


def refused(dsn: str) -> tuple[str, str | None]:
    """The message libpq shows for a refused login, and its SQLSTATE.

    libpq reports a refused login as text only, so the code is read with asyncpg,
    which exposes the ErrorResponse's fields.
    """
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(dsn, connect_timeout=10).close()

    async def attempt() -> str | None:
        try:
            conn = await asyncpg.connect(dsn, ssl=False, timeout=10)
        except asyncpg.PostgresError as error:
            return str(error.sqlstate)
        await conn.close()
        return None

    return str(info.value), asyncio.run(attempt())


def test_jwt_agent_logs_in(proxy: ProxyThread) -> None:
    with psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("app_scram", "app")


def test_static_scram_agent_logs_in(proxy: ProxyThread) -> None:
    with psycopg.connect(proxy.dsn(STATIC_AGENT, STATIC_PASSWORD)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


async def test_static_scram_agent_with_asyncpg(proxy: ProxyThread) -> None:
    conn = await asyncpg.connect(proxy.dsn(STATIC_AGENT, STATIC_PASSWORD))
    try:
        assert await conn.fetchval("SELECT count(*) FROM orders") == 5000
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("user", "password", "sqlstate", "fragment"),
    [
        ("agent", make_token(ttl=-120), "28P01", "expired"),
        ("agent", make_token(secret="another-secret-of-enough-length-123"), "28P01", "signature"),
        ("agent", make_token(iss="https://evil.test"), "28P01", "issuer"),
        ("agent", make_token(aud="someone-else"), "28P01", "audience"),
        ("agent", "not-a-token", "28P01", "not a JWT"),
        ("agent", make_token("other-agent"), "28P01", 'token is for agent "other-agent"'),
        (STATIC_AGENT, "wrong-password", "28P01", "password authentication failed"),
    ],
    ids=["expired", "bad-signature", "issuer", "audience", "garbage", "user-mismatch", "scram-wrong"],
)
def test_login_rejections(proxy: ProxyThread, user: str, password: str, sqlstate: str,
                          fragment: str) -> None:
    message, code = refused(proxy.dsn(user, password))
    assert fragment in message
    assert code == sqlstate
    assert JWT_SECRET not in message and STATIC_PASSWORD not in message
    assert password not in message


def test_unknown_database_is_3d000(proxy: ProxyThread) -> None:
    message, code = refused(proxy.dsn(dbname="nope"))
    assert 'database "nope" does not exist' in message
    assert code == "3D000"


def test_cleartext_token_refused_without_tls(pg: PostgresCluster) -> None:
    with running_proxy(make_config(pg, allow_cleartext_on_loopback=False)) as proxy:
        message, code = refused(proxy.dsn())
        assert "unencrypted connection" in message
        assert code == "28000"
        # SCRAM never sends the password, so static agents may log in without TLS.
        with psycopg.connect(proxy.dsn(STATIC_AGENT, STATIC_PASSWORD)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("sslmode", ["require", "verify-full"])
def test_tls_between_agent_and_proxy(pg: PostgresCluster, pki: Pki, sslmode: str) -> None:
    config = make_config(pg, tls=tls_config(pki), allow_cleartext_on_loopback=False)
    with running_proxy(config) as proxy:
        dsn = proxy.dsn(sslmode=sslmode, sslrootcert=str(pki.ca_cert))
        dsn = dsn.replace("127.0.0.1", "localhost") if sslmode == "verify-full" else dsn
        with psycopg.connect(dsn) as conn:
            assert conn.info.pgconn.ssl_in_use
            assert conn.execute("SELECT count(*) FROM customers").fetchone() == (1000,)


def test_tls_verify_full_rejects_unknown_ca(pg: PostgresCluster, pki: Pki, tmp_path: Path) -> None:
    from tests.pki import make_pki

    other = make_pki(tmp_path)
    with running_proxy(make_config(pg, tls=tls_config(pki))) as proxy:
        dsn = proxy.dsn(sslmode="verify-full", sslrootcert=str(other.ca_cert))
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            psycopg.connect(dsn.replace("127.0.0.1", "localhost"), connect_timeout=10)


def test_sslmode_require_against_proxy_without_tls(proxy: ProxyThread) -> None:
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
        psycopg.connect(proxy.dsn(sslmode="require"), connect_timeout=10)


@pytest.mark.parametrize("user", ["app_scram", "app_md5", "app_plain"])
def test_upstream_auth_methods(pg: PostgresCluster, user: str) -> None:
    with running_proxy(make_config(pg, routes=[upstream_route(pg, user=user)])) as proxy, \
            psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user,)


@pytest.mark.parametrize("sslmode", [SslMode.REQUIRE, SslMode.VERIFY_FULL])
def test_tls_between_proxy_and_upstream(pg: PostgresCluster, pki: Pki, sslmode: SslMode) -> None:
    route = upstream_route(pg, sslmode=sslmode, sslrootcert=pki.ca_cert, host="localhost")
    with running_proxy(make_config(pg, routes=[route])) as proxy, \
            psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)


def test_upstream_wrong_password_does_not_leak(pg: PostgresCluster) -> None:
    route = upstream_route(pg, password="definitely-wrong")
    with running_proxy(make_config(pg, routes=[route])) as proxy:
        message, code = refused(proxy.dsn())
        assert 'could not log in to the upstream for database "app"' in message
        assert "app_scram" not in message and "definitely-wrong" not in message
        assert code == "08001"


def test_upstream_down_gives_clear_error(pg: PostgresCluster) -> None:
    from pgproxy.pgcluster import free_port

    route = upstream_route(pg, port=free_port())
    with running_proxy(make_config(pg, routes=[route])) as proxy:
        message, code = refused(proxy.dsn())
        assert 'could not connect to the upstream for database "app"' in message
        assert code == "08001"
