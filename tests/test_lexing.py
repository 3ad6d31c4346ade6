"""Text is read as the server reads it (DESIGN.md, decision 12): the settings PostgreSQL's
scanner consults and the client encoding, through a real proxy in front of a real server.

Every way to turn standard_conforming_strings off or to pick an ASCII-unsafe client encoding
is refused (SET, SET LOCAL, set_config, startup parameters, options, database and role
defaults), so that a string the proxy reads as a literal can never be a subquery to the
server; ASCII-safe encodings are transcoded, so a LATIN1 client works; a change of encoding
is followed through SET, SET LOCAL and ROLLBACK, set_config, RESET ALL, DISCARD ALL and role
defaults (psycopg re-encodes its queries as the server reports, so a right answer is the
proof); a pipeline that would have pgproxy read text before the server reported a change is
refused instead."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgproxy.config import load_config
from pgproxy.parameters import parse_options, split_identifiers
from pgproxy.pgcluster import PostgresCluster
from pgproxy.protocol import Desync, ProtocolModel
from pgproxy.protocol.lexing import Lexing, encoding_name, setting_refusal
from pgproxy.wire import messages as m
from tests import corpus
from tests.harness import (
    UPSTREAM_USERS,
    ProxyThread,
    RawClient,
    error_fields,
    make_token,
    running_proxy,
    write_enforce_config,
)

# A string literal to pglast and sqlglot when backslashes are plain characters; with
# standard_conforming_strings off, the server reads a subquery reading ssn.
SMUGGLED = "SELECT 'a\\', ' AS x, (SELECT ssn FROM customers ORDER BY id LIMIT 1) AS y --'"
APPROVAL = "approval required"
DENIED = "pgproxy denied this statement"


@pytest.fixture(scope="module")
def lexdbs(pg: PostgresCluster) -> None:
    """Databases whose defaults put a session in a state pgproxy cannot read (and one it can)."""
    for name in ("lex_scs", "lex_sjis", "lex_latin1"):
        pg.psql(f"DROP DATABASE IF EXISTS {name}")
        pg.create_database(name, owner="app_scram")
    pg.psql("ALTER DATABASE lex_scs SET standard_conforming_strings = off")
    pg.psql("ALTER ROLE app_md5 IN DATABASE lex_sjis SET client_encoding = 'SJIS'")
    pg.psql("ALTER ROLE app_md5 IN DATABASE lex_latin1 SET client_encoding = 'LATIN1'")


@pytest.fixture(scope="module")
def proxy(pg: PostgresCluster, lexdbs: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyThread]:
    directory = tmp_path_factory.mktemp("lexing")
    (directory / "md5-password").write_text(UPSTREAM_USERS["app_md5"][0])
    pg.psql((corpus.CORPORA / "setup.sql").read_text(), dbname="app", user="app_scram")
    routes = "\n".join(
        f"  {name}: {{host: {pg.host}, port: {pg.port}, dbname: {name}, user: {user}, password_file: {secret}}}"
        for name, user, secret in (("lex_scs", "app_scram", "upstream-password"),
                                   ("lex_sjis", "app_md5", "md5-password"),
                                   ("lex_latin1", "app_md5", "md5-password")))
    path = write_enforce_config(pg, directory, catalog=corpus.CATALOG, routes=routes)
    with running_proxy(load_config(path)) as running:
        yield running


@pytest.fixture(scope="module")
def ssn(pg: PostgresCluster) -> str:
    return pg.psql("SELECT ssn FROM customers ORDER BY id LIMIT 1", dbname="app").strip()


def _error(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> str:
    with pytest.raises(psycopg.Error) as raised:
        conn.execute(sql)
    conn.rollback()
    return str(raised.value)


def _connect(proxy: ProxyThread, **params: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(proxy.dsn(**params), autocommit=True)


@pytest.mark.parametrize("statement", [
    "SET standard_conforming_strings = off",
    "SET standard_conforming_strings TO false",
    "SET standard_conforming_strings = 'of'",
    "SET SESSION standard_conforming_strings = 0",
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "SELECT set_config('standard_conforming_strings', 'no', true)",
    "SELECT set_config('standard_' || 'conforming_strings', 'off', false)",
    "SELECT set_config(name, 'off', false) FROM pg_settings WHERE name LIKE 'standard_conf%'",
])
def test_standard_conforming_strings_stay_on(proxy: ProxyThread, statement: str, ssn: str) -> None:
    with _connect(proxy) as conn:
        assert DENIED in _error(conn, statement)
        with conn.transaction():  # SET LOCAL inside a block is the same statement
            with pytest.raises(psycopg.Error, match=DENIED):
                conn.execute(statement.replace("SET SESSION ", "SET ").replace("SET ", "SET LOCAL ", 1)
                             if statement.startswith("SET ") else statement)
            raise psycopg.Rollback()
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)
        # Still on: the smuggled text is two literals to the server as to pgproxy.
        row = conn.execute(SMUGGLED).fetchone()
        assert row == ("a\\", " AS x, (SELECT ssn FROM customers ORDER BY id LIMIT 1) AS y --")
        assert ssn not in repr(row)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_the_setting_and_the_smuggled_read_in_one_go_are_refused(proxy: ProxyThread, protocol: str,
                                                                 ssn: str) -> None:
    with RawClient(proxy.port) as client:
        client.login()
        if protocol == "simple":
            client.send(m.Query(f"SET standard_conforming_strings = off; {SMUGGLED}").encode())
        else:
            client.send(b"".join(m.Parse("", sql).encode() + m.Bind("", "", (), (), ()).encode()
                                 + m.Execute("", 0).encode() for sql in ("SET standard_conforming_strings = off",
                                                                         SMUGGLED)) + m.Sync().encode())
        replies = client.until_ready()
    errors = [error_fields(body) for kind, body in replies if kind == m.ERROR_RESPONSE]
    assert errors and "standard_conforming_strings off" in errors[0]["M"], replies
    assert ssn.encode() not in b"".join(body for _, body in replies)


def _startup_error(proxy: ProxyThread, database: str = "app", **parameters: str) -> dict[str, str]:
    """Log in with further startup `parameters`; the ErrorResponse pgproxy ends it with."""
    with RawClient(proxy.port) as client:
        client.send(m.StartupMessage({"user": "agent", "database": database, **parameters}).encode())
        request = client.read_message()
        assert request is not None and request[0] == m.AUTHENTICATION, request
        client.send(m.PasswordMessage(make_token("agent")).encode())
        replies = client.until_ready()
    errors = [error_fields(body) for kind, body in replies if kind == m.ERROR_RESPONSE]
    assert errors, f"the session started: {replies}"
    return errors[0]


@pytest.mark.parametrize(("parameters", "code", "named"), [
    ({"options": "-c standard_conforming_strings=off"}, "42501", "standard_conforming_strings"),
    ({"options": "--standard-conforming-strings=off"}, "42501", "standard_conforming_strings"),
    ({"standard_conforming_strings": "off"}, "42501", "standard_conforming_strings"),
    ({"client_encoding": "SJIS"}, "42501", "SJIS"),
    ({"client_encoding": "big5"}, "42501", "BIG5"),
    ({"client_encoding": "win932"}, "42501", "SJIS"),
    ({"options": "-c client_encoding=GBK"}, "42501", "GBK"),
    ({"client_encoding": "no-such-encoding"}, "42501", "no-such-encoding"),
    ({"options": "-c role=app_md5"}, "42501", "role"),
    ({"options": "-c session_authorization=app_md5"}, "42501", "session_authorization"),
    ({"options": "-c local_preload_libraries=auto_explain"}, "42501", "local_preload_libraries"),
    ({"options": "-B 100"}, "08P01", "-B"),
    ({"options": "-c search_path"}, "08P01", "search_path"),
    ({"is_superuser": "on"}, "08P01", "is_superuser"),
    ({"role": "app_md5"}, "08P01", "role"),
])
def test_startup_parameters_are_judged(proxy: ProxyThread, parameters: dict[str, str], code: str,
                                       named: str) -> None:
    error = _startup_error(proxy, **parameters)
    assert error["C"] == code, error
    assert named in error["M"], error


def test_startup_search_path_is_the_one_names_resolve_against(proxy: ProxyThread) -> None:
    # crm.notes.body is tagged; public has no notes table: only the judged path finds it.
    with _connect(proxy, options="-c search_path=crm,public") as conn:
        assert conn.execute("SHOW search_path").fetchone() == ("crm,public",)
        assert conn.execute("SELECT count(id) FROM notes").fetchone() is not None
        assert APPROVAL in _error(conn, "SELECT body FROM notes")
    with RawClient(proxy.port) as client:
        client.login(search_path="crm")
        client.send(m.Query("SELECT body FROM notes").encode())
        replies = client.until_ready()
    assert any(kind == m.ERROR_RESPONSE and APPROVAL in error_fields(body)["M"] for kind, body in replies)


def test_plain_startup_parameters_pass(proxy: ProxyThread) -> None:
    with _connect(proxy, application_name="lexing-test", options="-c statement_timeout=5000 -c geqo=off",
                  client_encoding="UTF8") as conn:
        assert conn.execute("SHOW application_name").fetchone() == ("lexing-test",)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("5s",)
        assert conn.execute("SHOW geqo").fetchone() == ("off",)


@pytest.mark.parametrize(("database", "named"), [("lex_scs", "standard_conforming_strings"),
                                                 ("lex_sjis", "client_encoding")])
def test_unreadable_database_or_role_defaults_are_refused_at_connect(proxy: ProxyThread, database: str,
                                                                     named: str) -> None:
    error = _startup_error(proxy, database=database)
    assert error["C"] == "42501" and named in error["M"], error


@pytest.mark.parametrize("value", ["SJIS", "Shift_JIS", "SHIFT_JIS_2004", "BIG5", "GBK", "UHC", "GB18030",
                                   "JOHAB", "win950", "windows936", "MULE_INTERNAL", "EUC_TW"])
def test_ascii_unsafe_or_unknown_client_encodings_are_refused(proxy: ProxyThread, value: str) -> None:
    with _connect(proxy) as conn:
        assert DENIED in _error(conn, f"SET client_encoding = '{value}'")
        assert DENIED in _error(conn, f"SET NAMES '{value}'")
        assert DENIED in _error(conn, f"SELECT set_config('client_encoding', '{value}', false)")
        assert conn.execute("SELECT 'é'").fetchone() == ("é",)


def test_a_latin1_client_is_read_as_the_server_reads_it(proxy: ProxyThread) -> None:
    with _connect(proxy, client_encoding="latin1") as conn:
        assert conn.info.encoding == "iso8859-1"
        assert conn.execute("SELECT 'café'").fetchone() == ("café",)
        assert conn.execute("SELECT count(*) FROM customers WHERE country <> 'café'").fetchone() is not None
        assert APPROVAL in _error(conn, "SELECT ssn FROM customers WHERE name <> 'café'")
    with psycopg.connect(proxy.dsn(dbname="lex_latin1"), autocommit=True) as conn:  # a role default
        assert conn.info.encoding == "iso8859-1"
        assert conn.execute("SELECT 'café'").fetchone() == ("café",)


@pytest.mark.parametrize("change", [
    ["SET client_encoding = 'LATIN1'"],
    ["SET NAMES 'LATIN9'"],
    ["SELECT set_config('client_encoding', 'WIN1252', false)"],
    ["BEGIN", "SET LOCAL client_encoding = 'LATIN1'"],
    ["BEGIN", "SET client_encoding = 'LATIN2'"],
])
def test_a_change_of_encoding_is_followed(proxy: ProxyThread, change: list[str]) -> None:
    with _connect(proxy) as conn:
        for statement in change:
            conn.execute(statement)
        assert conn.info.encoding != "utf-8"
        assert conn.execute("SELECT 'é'").fetchone() == ("é",)
        if change[0] == "BEGIN":
            conn.execute("ROLLBACK")  # undoes the change: back to UTF8
            assert conn.info.encoding == "utf-8"
            assert conn.execute("SELECT '€'").fetchone() == ("€",)
        for reset in ("RESET ALL", "SET client_encoding = 'LATIN1'", "DISCARD ALL", "SET client_encoding TO DEFAULT"):
            conn.execute(reset)
            assert conn.execute("SELECT 'é'").fetchone() == ("é",)
        assert conn.info.encoding == "utf-8"
        assert conn.execute("SELECT '€'").fetchone() == ("€",)


def test_text_after_an_unanswered_change_waits_or_is_refused(proxy: ProxyThread) -> None:
    change = (m.Parse("", "SET client_encoding = 'LATIN1'").encode() + m.Bind("", "", (), (), ()).encode()
              + m.Execute("", 0).encode())
    latin1_query = m.frame(m.QUERY, "SELECT 'café'".encode("latin-1") + b"\x00")
    with RawClient(proxy.port) as client:
        client.login()
        # Pipelined behind its Sync: read once the server has answered and reported LATIN1.
        client.send(change + m.Sync().encode() + latin1_query)
        replies = client.until_ready() + client.until_ready()
        rows = [body for kind, body in replies if kind == m.DATA_ROW]
        assert rows and rows[0].endswith("café".encode("latin-1")), replies
        # No Sync before the next statement: nothing would tell pgproxy how to read it.
        client.send(m.Query("SET client_encoding = 'UTF8'").encode())
        client.until_ready()
        client.send(change + m.Parse("", "SELECT 1").encode() + m.Sync().encode())
        replies = client.until_ready()
        errors = [error_fields(body) for kind, body in replies if kind == m.ERROR_RESPONSE]
        assert errors and errors[0]["C"] == "08P01" and "Sync" in errors[0].get("D", ""), replies
        client.send(m.Query("SELECT 'ok'").encode())
        assert any(kind == m.DATA_ROW for kind, _ in client.until_ready())


# -- the model's side (sans-IO) ------------------------------------------------------------


def _status(name: str, value: str) -> bytes:
    return m.ParameterStatus(name, value).encode()[5:]


def test_a_change_nobody_announced_ends_the_session() -> None:
    model = ProtocolModel(strict=True)
    model.parameter_status(_status("client_encoding", "UTF8"))
    with pytest.raises(Desync, match="without a statement"):
        model.parameter_status(_status("client_encoding", "LATIN1"))
    model.lexing.pending = True
    with pytest.raises(Desync, match="SJIS"):
        model.parameter_status(_status("client_encoding", "SJIS"))
    with pytest.raises(Desync, match="standard_conforming_strings"):
        model.parameter_status(_status("standard_conforming_strings", "off"))
    model.parameter_status(_status("client_encoding", "LATIN1"))
    assert model.lexing.decode(b"caf\xe9") == "café"
    lenient = ProtocolModel(strict=False)  # pass-through analyses nothing: it only follows
    lenient.parameter_status(_status("client_encoding", "SJIS"))


def test_encoding_names_match_the_servers(pg: PostgresCluster) -> None:
    """Every encoding PostgreSQL has is either refused or transcoded, under each of its names."""
    names = pg.psql("SELECT pg_encoding_to_char(i) FROM generate_series(0, 41) i", dbname="app").split()
    for name in names:
        canonical = encoding_name(name)
        assert canonical == name, name
        refused = setting_refusal("client_encoding", name)
        if refused is None:
            assert Lexing(encoding=name).decode(b"abc") == "abc"
    # The server agrees on what each alias pgproxy knows means.
    from pgproxy.protocol import lexing

    for alias, canonical in lexing._ALIASES.items():
        try:
            shown = pg.psql(f"SET client_encoding = '{alias}'; SHOW client_encoding", dbname="app").strip()
        except RuntimeError:
            continue  # PostgreSQL cannot convert to it from UTF8 (MULE_INTERNAL...)
        assert shown == canonical, alias


def test_reads_survive_a_reset_to_a_latin1_default(proxy: ProxyThread, tmp_path: Path) -> None:
    with psycopg.connect(proxy.dsn(dbname="lex_latin1"), autocommit=True) as conn:
        conn.execute("SET client_encoding = 'UTF8'")
        assert conn.execute("SELECT '€'").fetchone() == ("€",)
        conn.execute("RESET client_encoding")  # back to the role's LATIN1
        assert conn.info.encoding == "iso8859-1"
        assert conn.execute("SELECT 'café'").fetchone() == ("café",)


@pytest.mark.parametrize(("options", "settings"), [
    ("-c search_path=crm", [("search_path", "crm")]),
    ("-csearch_path=crm --statement-timeout=5s", [("search_path", "crm"), ("statement_timeout", "5s")]),
    ("  -c   geqo=off  ", [("geqo", "off")]),
    ("-c application_name=a\\ b", [("application_name", "a b")]),  # a backslash keeps the space
    ("-c Search_Path=x,y", [("search_path", "x,y")]),
])
def test_options_are_split_as_postgresql_splits_them(options: str, settings: list[tuple[str, str]]) -> None:
    assert [(s.name, s.value) for s in parse_options(options)] == settings


@pytest.mark.parametrize(("value", "names"), [
    ("crm, public", ["crm", "public"]),
    ('"$user", Public', ["$user", "public"]),
    ('"Mixed Case","a,b"', ["Mixed Case", "a,b"]),
    ('"say ""hi"""', ['say "hi"']),
    ("", []),
    ("a,,b", None),
    ('"open', None),
    ("a b", None),
])
def test_search_path_lists_split_as_the_server_splits_them(value: str, names: list[str] | None) -> None:
    assert split_identifiers(value) == names
