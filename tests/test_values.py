"""Binary parameter values read as PostgreSQL prints them: each type's binary form (the server's
own send function) against its text form, from the real server."""

from __future__ import annotations

import psycopg
import pytest

from pgproxy.wire.values import binary_text

CASES = [
    ("bool", "true"), ("bool", "false"),
    ("int2", "-32768"), ("int4", "11"), ("int4", "-2147483648"), ("int8", "9223372036854775807"),
    ("float4", "1.1"), ("float4", "-0.25"), ("float8", "0.1"), ("float8", "-12345.678"), ("float8", "NaN"),
    ("float8", "Infinity"),
    ("numeric", "12.35"), ("numeric", "0"), ("numeric", "-0.000123"), ("numeric", "10000"),
    ("numeric", "123456789012345678901234567890.5"), ("numeric", "1.000"), ("numeric", "NaN"),
    ("text", "héllo 'x'"), ("varchar", "abc"), ("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("date", "2024-02-29"), ("date", "1999-12-31"), ("date", "infinity"),
    ("timestamp", "2024-02-29 13:45:06.5"), ("timestamp", "1970-01-01 00:00:00"),
    ("timestamptz", "2024-02-29 13:45:06.123456+00"), ("jsonb", '{"a": [1, 2]}'), ("oid", "4294967295"),
]


@pytest.mark.parametrize(("type_name", "literal"), CASES)
def test_binary_values_read_as_the_server_prints_them(direct_dsn: str, type_name: str, literal: str) -> None:
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        found = conn.execute("SELECT typsend::text, oid FROM pg_type WHERE oid = %s::regtype", (type_name,)).fetchone()
        assert found is not None
        send, oid = found
        row = conn.execute(f"SELECT {send}(%s::{type_name}), %s::{type_name}::text", (literal, literal)).fetchone()
    assert row is not None
    data, text = row
    assert binary_text(int(oid), bytes(data)) == text


def test_what_is_not_a_value_of_the_type_is_not_read() -> None:
    assert binary_text(23, b"\x00\x00\x0b") is None  # three bytes are no int4
    assert binary_text(16, b"\x02") is None
    assert binary_text(25, b"\xff\xfe") is None  # not UTF-8
    assert binary_text(1700, b"\x00\x01\x00\x00\x00\x00\x00\x00\x27\x10") is None  # digit 10000
    assert binary_text(600, b"\x00" * 16) is None  # point: not a type pgproxy reads
