"""Bad input gets a clear error and harms no one else (DESIGN decision 10).

Each test opens a healthy session first, sends the proxy something no driver
would (over a plain socket), checks what that client sees (a FATAL
ErrorResponse with its SQLSTATE and message, or a clean close), and then
checks that the healthy session still works and that a new one can log in.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import psycopg
import pytest

from pgproxy.config import Limits
from pgproxy.pgcluster import PostgresCluster, find_pg_bin
from pgproxy.wire import messages as m
from tests.harness import (
    DATABASE,
    ProxyThread,
    RawClient,
    error_fields,
    make_config,
    make_token,
    raw_session,
    running_proxy,
    tls_config,
)
from tests.pki import Pki

pytestmark = pytest.mark.timeout(60)

IO_TIMEOUT = 10.0  # seconds any single socket operation may take before the test fails
SMALL_MESSAGE_LIMIT = 4096


# --- Reading what the proxy answers -------------------------------------------------------

Message = tuple[int, bytes]  # (type byte, body), as RawClient.read_message gives them


def read_to_close(client: RawClient) -> list[Message]:
    """Every message until the proxy closes the connection (each read bounded by a timeout)."""
    got: list[Message] = []
    while True:
        try:
            message = client.read_message()
        except ConnectionResetError:
            return got
        if message is None:
            return got
        got.append(message)


def kinds(messages: list[Message]) -> str:
    """The messages' type bytes as a string, e.g. "TDCZ"."""
    return "".join(chr(type_byte) for type_byte, _ in messages)


def describe(messages: list[Message]) -> list[str | dict[str, str]]:
    """Messages as a failing assertion should show them: errors in full, others by type."""
    return [error_fields(body) if type_byte == ord("E") else chr(type_byte)
            for type_byte, body in messages]


def expect_fatal(client: RawClient, sqlstate: str) -> str:
    """Read to the end: exactly one FATAL error with `sqlstate`, then a close. Its message."""
    messages = read_to_close(client)
    assert kinds(messages) == "E", describe(messages)
    fields = error_fields(messages[0][1])
    assert (fields["S"], fields["C"]) == ("FATAL", sqlstate), fields
    return fields["M"]


def query(client: RawClient, sql: str) -> list[Message]:
    client.send(m.Query(sql).encode())
    return client.until_ready()


def data_rows(messages: list[Message]) -> list[bytes]:
    """The first column of each DataRow (text format, never NULL here)."""
    rows = []
    for type_byte, body in messages:
        if type_byte == ord("D"):
            count, length = struct.unpack_from("!hi", body)
            assert count >= 1 and length >= 0
            rows.append(body[6:6 + length])
    return rows


def raw(proxy: ProxyThread) -> closing[RawClient]:
    """A connected RawClient that has sent nothing yet."""
    return closing(RawClient(proxy.port, timeout=IO_TIMEOUT))


# --- Everyone else must be unharmed -----------------------------------------------------


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def connect(proxy: ProxyThread) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(proxy.dsn(connect_timeout="10"), autocommit=True)


def live_sessions(proxy: ProxyThread) -> frozenset[object]:
    """The proxy's sessions right now (copied in one step, so safe from this thread)."""
    return frozenset(proxy.server.sessions)


@contextmanager
def others_unharmed(proxy: ProxyThread) -> Iterator[None]:
    """A healthy session opened before the bad input must still be the same working session
    after it; the proxy must drop the bad client's session; and a new client must log in.

    Sessions are compared by identity, not counted: one a previous test closed may still
    be on its way out."""
    earlier = live_sessions(proxy)
    with connect(proxy) as bystander:
        bystander.execute("CREATE TEMP TABLE survivor AS SELECT 42 AS answer")
        before = live_sessions(proxy)
        yield
        wait_for(lambda: live_sessions(proxy) <= before, "the bad client's session is gone")
        assert bystander.execute("SELECT answer FROM survivor").fetchone() == (42,)
    healthy = before - earlier
    wait_for(lambda: not live_sessions(proxy) & healthy, "the healthy session is gone")
    with connect(proxy) as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)


@pytest.fixture(scope="module")
def small_proxy(pg: PostgresCluster) -> Iterator[ProxyThread]:
    """A proxy that refuses messages over 4 KiB."""
    limits = Limits(max_message_bytes=SMALL_MESSAGE_LIMIT)
    with running_proxy(make_config(pg, limits=limits)) as running:
        yield running


# --- Before a startup packet ------------------------------------------------------------


def test_http_request_instead_of_startup_packet(proxy: ProxyThread) -> None:
    with others_unharmed(proxy), raw(proxy) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        message = expect_fatal(client, "08P01")
        # b"GET " read as the int32 length of a startup packet.
        assert message == f"invalid length of startup packet ({int.from_bytes(b'GET ')} bytes)"


def test_startup_packet_shorter_than_its_length_then_close(proxy: ProxyThread) -> None:
    packet = m.StartupMessage({"user": "agent", "database": DATABASE}).encode()
    lying = struct.pack("!i", len(packet) + 100) + packet[4:]
    with others_unharmed(proxy), raw(proxy) as client:
        client.send(lying)
        client.sock.shutdown(socket.SHUT_WR)
        # Nothing useful can be said to a client that has gone; the proxy just closes.
        assert read_to_close(client) == []


@pytest.mark.parametrize("length", [-1, 0, 4, 7])
def test_startup_packet_length_too_small(proxy: ProxyThread, length: int) -> None:
    with others_unharmed(proxy), raw(proxy) as client:
        client.send(struct.pack("!ii", length, m.PROTOCOL_V3) + b"user\x00agent\x00\x00")
        message = expect_fatal(client, "08P01")
        assert message == f"invalid length of startup packet ({length} bytes)"


def test_oversized_startup_packet_refused_from_its_header(proxy: ProxyThread) -> None:
    limit = proxy.config.limits.max_startup_packet_bytes
    with others_unharmed(proxy), raw(proxy) as client:
        # Only the header and a few bytes: the error must come without the rest of the packet.
        client.send(struct.pack("!ii", limit + 1, m.PROTOCOL_V3) + b"user\x00agent\x00")
        message = expect_fatal(client, "08P01")
        assert message == f"invalid length of startup packet ({limit + 1} bytes)"


def test_startup_packet_with_unterminated_parameters(proxy: ProxyThread) -> None:
    body = struct.pack("!i", m.PROTOCOL_V3) + b"user\x00agent"
    with others_unharmed(proxy), raw(proxy) as client:
        client.send(struct.pack("!i", 4 + len(body)) + body)
        message = expect_fatal(client, "08P01")
        assert message == "invalid startup packet: string field is not NUL-terminated"


# (1234, 5678) would be the CancelRequest code, and 3.x a version the proxy negotiates down.
@pytest.mark.parametrize(("major", "minor"), [(2, 0), (1, 0), (4, 0)])
def test_unsupported_protocol_version(proxy: ProxyThread, major: int, minor: int) -> None:
    packet = m.StartupMessage({"user": "agent", "database": DATABASE},
                              protocol=major << 16 | minor).encode()
    with others_unharmed(proxy), raw(proxy) as client:
        client.send(packet)
        message = expect_fatal(client, "0A000")  # as PostgreSQL answers it
        assert message == (f"unsupported frontend protocol "
                           f"{major}.{minor}: server supports 3.0 to 3.0")


STARTUP = m.StartupMessage({"user": "agent", "database": DATABASE}).encode()


def test_startup_pipelined_behind_ssl_request_without_tls(proxy: ProxyThread) -> None:
    """Bytes sent before the answer to an SSLRequest are refused, TLS configured or not:
    rather than answer 'N', the proxy ends the connection with a protocol violation."""
    with others_unharmed(proxy), raw(proxy) as client:
        client.send(m.SSLRequest().encode() + STARTUP)
        message = expect_fatal(client, "08P01")
        assert message == "received unencrypted data after SSL request"


def test_startup_pipelined_behind_ssl_request_with_tls(pg: PostgresCluster, pki: Pki) -> None:
    with running_proxy(make_config(pg, tls=tls_config(pki))) as tls_proxy, \
            others_unharmed(tls_proxy), raw(tls_proxy) as client:
        client.send(m.SSLRequest().encode() + STARTUP)
        message = expect_fatal(client, "08P01")
        assert message == "received unencrypted data after SSL request"


def test_second_ssl_request_is_refused(proxy: ProxyThread) -> None:
    with others_unharmed(proxy), raw(proxy) as client:
        client.send(m.SSLRequest().encode())
        assert client.sock.recv(1) == b"N"
        client.send(m.SSLRequest().encode())
        message = expect_fatal(client, "08P01")
        assert message == "encryption was already negotiated on this connection"


def test_ssl_request_answered_n_when_tls_is_not_configured(proxy: ProxyThread) -> None:
    """The control for the tests above: a client that waits for the answer goes on."""
    with raw(proxy) as client:
        client.send(m.SSLRequest().encode())
        assert client.sock.recv(1) == b"N"
        client.send(STARTUP)
        assert client.read_message() == (
            ord("R"), struct.pack("!i", m.AUTH_CLEARTEXT_PASSWORD))


def test_ssl_request_after_a_refused_gssenc_request(proxy: ProxyThread) -> None:
    """As PostgreSQL allows: GSSENCRequest answered 'N', then SSLRequest on the same connection
    (libpq's gssencmode=prefer fallback), then the startup packet. A second request of either
    kind is refused."""
    with raw(proxy) as client:
        client.send(m.GSSENCRequest().encode())
        assert client.sock.recv(1) == b"N"
        client.send(m.SSLRequest().encode())
        assert client.sock.recv(1) == b"N"
        client.send(STARTUP)
        assert client.read_message() == (
            ord("R"), struct.pack("!i", m.AUTH_CLEARTEXT_PASSWORD))
    with others_unharmed(proxy), raw(proxy) as client:
        client.send(m.SSLRequest().encode())
        assert client.sock.recv(1) == b"N"
        client.send(m.GSSENCRequest().encode())
        assert client.sock.recv(1) == b"N"
        client.send(m.GSSENCRequest().encode())
        assert expect_fatal(client, "08P01") == "encryption was already negotiated on this connection"


def test_startup_pipelined_behind_gssenc_request(proxy: ProxyThread) -> None:
    with others_unharmed(proxy), raw(proxy) as client:
        client.send(m.GSSENCRequest().encode() + STARTUP)
        assert expect_fatal(client, "08P01") == "received unencrypted data after GSSAPI encryption request"


def _kerberos_credential_cache(path: Path) -> None:
    """A Kerberos credential cache (MIT format 4) holding a ticket-granting ticket that is not
    real: enough for libpq to find credentials and try GSSAPI encryption first."""
    def counted(data: bytes) -> bytes:
        return struct.pack("!I", len(data)) + data

    def principal(*parts: str) -> bytes:
        return struct.pack("!II", 1, len(parts)) + counted(b"PGPROXY.TEST") + b"".join(
            counted(part.encode()) for part in parts)

    now = int(time.time())
    client = principal("agent")
    credential = (client + principal("krbtgt", "PGPROXY.TEST") + struct.pack("!H", 18) + counted(bytes(32))
                  + struct.pack("!IIII", now, now, now + 86400, 0) + b"\0" + struct.pack("!III", 0, 0, 0)
                  + counted(b"not-a-ticket") + counted(b""))
    path.write_bytes(struct.pack("!HHHHii", 0x0504, 12, 1, 8, 0, 0) + client + credential)


def test_psql_with_gssencmode_prefer_falls_back_to_tls(pg: PostgresCluster, pki: Pki, tmp_path: Path) -> None:
    """psql with Kerberos credentials and gssencmode=prefer asks for GSSAPI encryption first,
    then, refused, for TLS on the same connection: the session is encrypted and works."""
    cache = tmp_path / "krb5cc"
    _kerberos_credential_cache(cache)
    env = {**os.environ, "KRB5CCNAME": f"FILE:{cache}", "KRB5_CONFIG": os.devnull}
    with running_proxy(make_config(pg, tls=tls_config(pki))) as tls_proxy:
        dsn = tls_proxy.dsn(sslmode="require", gssencmode="prefer")
        result = subprocess.run([str(find_pg_bin("psql")), "-X", "-At", dsn, "-c",
                                 "SELECT 'through'", "-c", "\\conninfo"],
                                capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("through\n") and "SSL connection (protocol: TLS" in result.stdout, result.stdout


def test_silent_and_stalled_clients_time_out(pg: PostgresCluster) -> None:
    limits = Limits(auth_timeout_seconds=1)
    with running_proxy(make_config(pg, limits=limits)) as quick, others_unharmed(quick), \
            raw(quick) as silent, raw(quick) as stalled:
        started = time.monotonic()
        stalled.send(STARTUP[:10])  # half a startup packet, then nothing
        for client in (silent, stalled):
            message = expect_fatal(client, "08006")
            assert message == "authentication timed out after 1 s"
        assert 0.9 <= time.monotonic() - started < 15


def test_too_many_clients(pg: PostgresCluster) -> None:
    with running_proxy(make_config(pg, limits=Limits(max_connections=2))) as capped, \
            others_unharmed(capped):
        second = connect(capped)
        with raw(capped) as third:
            third.send(STARTUP)
            message = expect_fatal(third, "53300")
            assert message == "sorry, too many clients already"
        with pytest.raises(psycopg.OperationalError, match="sorry, too many clients already"):
            connect(capped)
        second.close()
        wait_for(lambda: capped.session_count() == 1, "the second client's session is gone")
        with connect(capped) as again:
            assert again.execute("SELECT 'in'").fetchone() == ("in",)


def test_too_many_clients_with_libpq_default_sslmode(pg: PostgresCluster) -> None:
    """libpq's default sslmode=prefer starts with an SSLRequest. PostgreSQL answers it and
    reports 53300 after the startup packet, so the user reads "too many clients"."""
    with running_proxy(make_config(pg, limits=Limits(max_connections=1))) as capped, \
            others_unharmed(capped), \
            pytest.raises(psycopg.OperationalError, match="sorry, too many clients already"):
        psycopg.connect(capped.dsn(sslmode="prefer", connect_timeout="10"))


# --- During authentication ----------------------------------------------------------------


def test_oversized_message_before_authentication(proxy: ProxyThread) -> None:
    """An unauthenticated client must not make the proxy buffer a message up to the
    (post-login) max_message_bytes: PostgreSQL caps a password packet at 65535 bytes."""
    announced = 1_000_000
    with others_unharmed(proxy), raw(proxy) as client:
        client.send(STARTUP)
        assert client.read_message() == (
            ord("R"), struct.pack("!i", m.AUTH_CLEARTEXT_PASSWORD))
        client.send(b"p" + struct.pack("!i", 4 + announced) + b"x" * 100)
        client.sock.settimeout(5)  # the length alone decides; no reason to wait for more
        message = expect_fatal(client, "08P01")
        assert message.startswith(f"message of {announced} bytes exceeds the limit of")


# --- After a successful login -------------------------------------------------------------


@pytest.mark.parametrize("type_byte", [b"Z", b"y", b"\x00", b"\xff"])
def test_unknown_message_type(proxy: ProxyThread, type_byte: bytes) -> None:
    with others_unharmed(proxy), raw_session(proxy) as client:
        client.send(type_byte + struct.pack("!i", 4))
        message = expect_fatal(client, "08P01")
        assert message.startswith(f"invalid message type 0x{type_byte[0]:02x}")


@pytest.mark.parametrize("length", [-1, 0, 3])
@pytest.mark.parametrize("type_byte", [b"Q", b"B"])
def test_message_length_too_small(proxy: ProxyThread, type_byte: bytes, length: int) -> None:
    with others_unharmed(proxy), raw_session(proxy) as client:
        client.send(type_byte + struct.pack("!i", length) + b"SELECT 1\x00")
        message = expect_fatal(client, "08P01")
        assert message == f"invalid message length {length}"


def test_bad_length_behind_a_whole_message(proxy: ProxyThread) -> None:
    """A read that starts with a whole, valid message is still checked to its end."""
    with others_unharmed(proxy), raw_session(proxy) as client:
        client.send(m.Bind("", "", (), (), ()).encode() + b"E" + struct.pack("!i", 2) + b"\x00" * 8)
        message = expect_fatal(client, "08P01")
        assert message == "invalid message length 2"


def test_message_over_the_size_limit(small_proxy: ProxyThread) -> None:
    with others_unharmed(small_proxy), raw_session(small_proxy) as client:
        # A query of exactly the limit is fine...
        sql = "SELECT 'at the limit'"
        sql += " " * (SMALL_MESSAGE_LIMIT - len(sql) - 1)  # the body counts the NUL too
        assert data_rows(query(client, sql)) == [b"at the limit"]
        # ...one byte more is refused from the header alone, without waiting for the body.
        client.send(b"Q" + struct.pack("!i", 4 + SMALL_MESSAGE_LIMIT + 1) + b"SELECT")
        message = expect_fatal(client, "08P01")
        assert message == (f"message of {SMALL_MESSAGE_LIMIT + 1} bytes exceeds the limit "
                           f"of {SMALL_MESSAGE_LIMIT} bytes")


def test_half_sent_message_then_disconnect(proxy: ProxyThread, pg: PostgresCluster) -> None:
    def upstream_backends() -> int:
        sql = (f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{DATABASE}' "
               "AND backend_type = 'client backend'")
        return int(pg.psql(sql))

    with others_unharmed(proxy):
        before = upstream_backends()
        with raw_session(proxy) as client:
            assert upstream_backends() == before + 1
            client.send(b"Q" + struct.pack("!i", 100) + b"SELECT 1")
        # others_unharmed checks that the proxy dropped the session; its upstream goes too.
        wait_for(lambda: upstream_backends() == before, "the upstream connection is closed")


def test_password_message_after_authentication(proxy: ProxyThread) -> None:
    with others_unharmed(proxy), raw_session(proxy) as client:
        client.send(m.PasswordMessage(make_token()).encode())
        message = expect_fatal(client, "08P01")
        assert message == "unexpected password message after authentication"


def test_query_string_without_terminating_nul(proxy: ProxyThread) -> None:
    """In passthrough mode the proxy forwards the message; the server rejects it with its own
    protocol-violation error, and the session goes on, as it would connected directly."""
    with others_unharmed(proxy), raw_session(proxy) as client:
        client.send(m.frame(m.QUERY, b"SELECT 1"))
        reply = client.until_ready()
        assert kinds(reply) == "EZ", describe(reply)
        fields = error_fields(reply[0][1])
        assert (fields["S"], fields["C"], fields["M"]) == (
            "ERROR", "08P01", "invalid string in message")
        assert data_rows(query(client, "SELECT 'still here'")) == [b"still here"]


def test_terminate_inside_a_pipelined_batch(proxy: ProxyThread) -> None:
    """Messages before the Terminate are answered, as PostgreSQL answers them; the session then
    ends cleanly, and nothing after the Terminate is run."""
    with others_unharmed(proxy), raw_session(proxy) as client:
        client.send(m.Query("SELECT 'before'").encode() + m.Terminate().encode()
                    + m.Query("SELECT 'after'").encode())
        reply = read_to_close(client)
        assert kinds(reply) == "TDCZ", describe(reply)
        assert data_rows(reply) == [b"before"]


def test_upstream_backend_terminated(proxy: ProxyThread, pg: PostgresCluster) -> None:
    with others_unharmed(proxy), raw_session(proxy) as client:
        (pid,) = data_rows(query(client, "SELECT pg_backend_pid()"))
        assert pg.psql(f"SELECT pg_terminate_backend({int(pid)})").strip() == "t"
        # The server's own FATAL reaches the client unchanged, then the connection closes.
        reply = read_to_close(client)
        assert kinds(reply) == "E", describe(reply)
        fields = error_fields(reply[0][1])
        assert (fields["S"], fields["C"], fields["M"]) == (
            "FATAL", "57P01", "terminating connection due to administrator command")
