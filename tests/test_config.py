"""load_config: a valid file becomes the expected dataclasses; an invalid one fails with
``file:line: dotted.key: problem`` naming exactly where the user has to look."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pgproxy.config import (
    AuthConfig,
    Config,
    ConfigError,
    JwtConfig,
    Limits,
    ListenConfig,
    LoggingConfig,
    Mode,
    Route,
    SlackReviewer,
    SslMode,
    StaticAgent,
    TlsConfig,
    load_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pgproxy.yaml"

# A well-formed verifier (4096 iterations, 16-byte salt, 32-byte keys).
SCRAM = (
    "SCRAM-SHA-256$4096:cGdwcm94eS1leGFtcGxlIQ==$"
    "XXpFLRHWbhyNSy+rKeWe1SZrYE5kuQHMlA5KPVxp9GQ=:/YpXHegAWh2xafzbwAGj2diYYifL9CXl7MWFRxFndQ8="
)
UPSTREAM_PASSWORD = "upstream-pw-Xq7"
JWT_SECRET = "jwt-secret-Zr4-0123456789abcdef0123"


# One line of valid auth, for cases about something else.
AUTH = "auth: {agents: [{id: a, scram_secret_env: AGENT_SCRAM}]}"


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    """Write dedented YAML, with <scram> and <auth> filled in, to tmp_path/name."""
    path = tmp_path / name
    text = textwrap.dedent(text).lstrip("\n")
    path.write_text(text.replace("<scram>", SCRAM).replace("<auth>", AUTH))
    return path


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_PASSWORD", UPSTREAM_PASSWORD)
    monkeypatch.setenv("AGENT_SCRAM", SCRAM)
    monkeypatch.delenv("PGPROXY_TEST_UNSET", raising=False)


def test_full_config_round_trips(tmp_path: Path) -> None:
    for name in ("server.crt", "server.key", "upstream-ca.crt"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "jwt").write_text(JWT_SECRET + "\n")
    (tmp_path / "secrets" / "reports-password").write_text("reports-pw\n")
    path = write(tmp_path, """
        mode: enforce
        listen:
          host: 0.0.0.0
          port: 7432
          tls:
            cert_file: server.crt
            key_file: server.key
        limits:
          max_message_bytes: 1048576
          max_startup_packet_bytes: 4096
          max_buffered_bytes: 65536
          max_connections: 50
          auth_timeout_seconds: 5
          idle_timeout_seconds: 1.5
        auth:
          allow_cleartext_on_loopback: yes
          jwt:
            secret_file: secrets/jwt
            algorithms: [HS256, HS512]
            issuer: https://issuer.example
            audience: pgproxy
            agent_claim: agent
            groups_claim: roles
            leeway_seconds: 0
            require_user_match: false
          agents:
            - id: alice
              scram_secret: "<scram>"
              groups: [readers, writers]
            - id: bob
              scram_secret_env: AGENT_SCRAM
        routes:
          app:
            host: db.internal
            user: app_owner
            password_env: APP_PASSWORD
          reports:
            host: replica.internal
            port: 6543
            dbname: analytics
            user: reporter
            password_file: secrets/reports-password
            sslmode: verify-full
            sslrootcert: upstream-ca.crt
            connect_timeout_seconds: 2.5
        logging:
          level: debug
    """)

    assert load_config(path) == Config(
        source=path,
        mode=Mode.ENFORCE,
        listen=ListenConfig(
            host="0.0.0.0",
            port=7432,
            tls=TlsConfig(cert_file=tmp_path / "server.crt", key_file=tmp_path / "server.key"),
        ),
        limits=Limits(
            max_message_bytes=1048576,
            max_startup_packet_bytes=4096,
            max_buffered_bytes=65536,
            max_connections=50,
            auth_timeout_seconds=5.0,
            idle_timeout_seconds=1.5,
        ),
        auth=AuthConfig(
            jwt=JwtConfig(
                algorithms=("HS256", "HS512"),
                secret=JWT_SECRET,
                issuer="https://issuer.example",
                audience="pgproxy",
                agent_claim="agent",
                groups_claim="roles",
                leeway_seconds=0.0,
                require_user_match=False,
            ),
            agents=(
                StaticAgent("alice", scram_secret=SCRAM, groups=frozenset({"readers", "writers"})),
                StaticAgent(id="bob", scram_secret=SCRAM),
            ),
            allow_cleartext_on_loopback=True,
        ),
        routes={
            "app": Route(
                name="app", host="db.internal", port=5432, dbname="app", user="app_owner",
                password=UPSTREAM_PASSWORD,
            ),
            "reports": Route(
                name="reports", host="replica.internal", port=6543, dbname="analytics",
                user="reporter", password="reports-pw", sslmode=SslMode.VERIFY_FULL,
                sslrootcert=tmp_path / "upstream-ca.crt", connect_timeout_seconds=2.5,
            ),
        },
        logging=LoggingConfig(level="debug"),
    )


def test_minimal_config_takes_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """
        auth:
          agents:
            - id: alice
              scram_secret: "<scram>"
        routes:
          app: {host: db, user: app_owner}
    """)

    config = load_config(path)

    assert (config.mode, config.listen, config.limits) == (
        Mode.PASSTHROUGH, ListenConfig(), Limits()
    )
    assert config.routes == {
        "app": Route(name="app", host="db", port=5432, dbname="app", user="app_owner")
    }
    assert config.logging == LoggingConfig(level="info")
    assert config.audit is None  # no approvals and no audit section: nothing to record it with


def test_audit_defaults_to_the_approvals_store_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNING_KEY", "k" * 32)
    monkeypatch.setenv("AUDIT_KEY", "a" * 32)
    approvals = """
        approvals:
          signing_key_env: SIGNING_KEY
          store: state/approvals.db
          reviewers: {jwt: {secret_env: SIGNING_KEY}}
    """
    base = "routes:\n  app: {host: db, user: u}\n<auth>\n" + textwrap.dedent(approvals).lstrip("\n")
    config = load_config(write(tmp_path, base))
    assert config.audit is not None and config.approvals is not None
    assert (config.audit.store, config.audit.signing_key) == (tmp_path / "state/approvals.db", "k" * 32)
    assert (config.audit.full_statements, config.audit.retention_days, config.audit.queue_events) == (False, 0, 10000)
    own = load_config(write(tmp_path, base + "audit:\n  store: audit.db\n  signing_key_env: AUDIT_KEY\n"
                                             "  full_statements: true\n  retention_days: 90\n"))
    assert own.audit is not None
    assert (own.audit.store, own.audit.signing_key, own.audit.full_statements, own.audit.retention_days) == (
        tmp_path / "audit.db", "a" * 32, True, 90)
    assert "a" * 32 not in repr(own.audit)
    off = load_config(write(tmp_path, base + "audit: {enabled: false}\n"))
    assert off.audit is None


HOLDING = """
    routes:
      app: {host: db, user: u}
    <auth>
    approvals:
      signing_key_env: SIGNING_KEY
      reviewers: {jwt: {secret_env: SIGNING_KEY}}
      <approvals>
    policy:
      rules:
        - name: ssn
          tags: [pii.ssn]
          action: review
          <rule>
"""


def test_hold_mode_and_expiry_per_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNING_KEY", "k" * 32)
    text = HOLDING.replace("<approvals>", "hold_mode: retry\n      retry_window_seconds: 120").replace(
        "<rule>", "hold_mode: wait\n          timeout_seconds: 45")
    config = load_config(write(tmp_path, text))
    assert config.approvals is not None
    assert (config.approvals.hold_mode, config.approvals.retry_window_seconds) == ("retry", 120)
    assert (config.policy.rules[0].hold_mode, config.policy.rules[0].timeout_seconds) == ("wait", 45)
    defaults = load_config(write(tmp_path, HOLDING.replace("<approvals>", "").replace("<rule>", "")))
    assert defaults.approvals is not None
    assert (defaults.approvals.hold_mode, defaults.approvals.retry_window_seconds) == ("wait", 600)
    assert (defaults.policy.rules[0].hold_mode, defaults.policy.rules[0].timeout_seconds) == (None, None)


@pytest.mark.parametrize(("approvals", "rule", "expected"), [
    ("hold_mode: later", "", "{file}:7: approvals.hold_mode: expected one of wait, retry; got 'later'"),
    ("retry_window_seconds: 0", "", "{file}:7: approvals.retry_window_seconds: expected a number greater than 0, "
                                    "got 0"),
    ("", "hold_mode: retyr", "{file}:13: policy.rules[0].hold_mode: expected one of wait, retry; got 'retyr'; "
                             "did you mean 'retry'?"),
    ("", "timeout_seconds: -5", "{file}:13: policy.rules[0].timeout_seconds: expected a number greater than 0, "
                                "got -5"),
])
def test_hold_settings_are_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, approvals: str, rule: str,
                                     expected: str) -> None:
    monkeypatch.setenv("SIGNING_KEY", "k" * 32)
    path = write(tmp_path, HOLDING.replace("<approvals>", approvals).replace("<rule>", rule))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == expected.replace("{file}", str(path))


def test_explain_previews_have_a_time_limit_and_can_be_turned_off(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNING_KEY", "k" * 32)
    base = ("routes:\n  app: {host: db, user: u}\n<auth>\napprovals:\n  signing_key_env: SIGNING_KEY\n"
            "  reviewers: {jwt: {secret_env: SIGNING_KEY}}\n")
    default = load_config(write(tmp_path, base)).approvals
    assert default is not None and default.explain_timeout_seconds == 5.0
    off = load_config(write(tmp_path, base + "  explain_timeout_seconds: 0\n")).approvals
    assert off is not None and off.explain_timeout_seconds == 0
    with pytest.raises(ConfigError, match=r"approvals\.explain_timeout_seconds: expected a number of at least 0"):
        load_config(write(tmp_path, base + "  explain_timeout_seconds: -1\n"))


SLACK_BASE = """\
routes:
  app: {host: db, user: u}
<auth>
approvals:
  signing_key_env: SIGNING_KEY
  reviewers: {jwt: {secret_env: SIGNING_KEY}, groups: [reviewers, dba]}
  slack:
    signing_secret_env: SIGNING_KEY
    users:
"""


def test_slack_users_map_to_a_reviewer_and_explicit_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNING_KEY", "k" * 32)
    path = write(tmp_path, SLACK_BASE + "      U024BE7LH: {reviewer: dana, groups: [dba]}\n")
    config = load_config(path)
    assert config.approvals is not None
    assert config.approvals.slack_users == {"U024BE7LH": SlackReviewer("dana", frozenset({"dba"}))}


@pytest.mark.parametrize(("users", "expected"), [
    pytest.param("      U024BE7LH: alice\n",
                 "{file}:10: approvals.slack.users.U024BE7LH: expected {reviewer: NAME, groups: [GROUP, ...]}, got "
                 "'alice'; a Slack user is in the reviewer groups listed here, and only those", id="name-only"),
    pytest.param("      U024BE7LH: {reviewer: alice}\n",
                 "{file}:10: approvals.slack.users.U024BE7LH.groups: required key is missing", id="no-groups"),
    pytest.param("      U024BE7LH: {reviewer: alice, groups: []}\n",
                 "{file}:10: approvals.slack.users.U024BE7LH.groups: expected at least one reviewer group",
                 id="empty-groups"),
    pytest.param("      alice: {reviewer: alice, groups: [dba]}\n",
                 "{file}:10: approvals.slack.users.alice: expected a Slack user id (capital letters and digits, "
                 "e.g. U024BE7LH), got 'alice'", id="not-a-user-id"),
    pytest.param('      U024BE7LH: {reviewer: "ali\\u200bce", groups: [dba]}\n',
                 "{file}:10: approvals.slack.users.U024BE7LH.reviewer: 'ali\\u200bce' contains an invisible or "
                 "control character (U+200B); names that look alike must be alike", id="invisible-name"),
    pytest.param('      U024BE7LH: {reviewer: alice, groups: ["dba\\u202e"]}\n',
                 "{file}:10: approvals.slack.users.U024BE7LH.groups[0]: 'dba\\u202e' contains an invisible or "
                 "control character (U+202E); names that look alike must be alike", id="bidi-group"),
])
def test_slack_users_without_explicit_groups_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         users: str, expected: str) -> None:
    monkeypatch.setenv("SIGNING_KEY", "k" * 32)
    path = write(tmp_path, SLACK_BASE + users)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == expected.replace("{file}", str(path))


@pytest.mark.parametrize(("auth", "expected"), [
    pytest.param('auth: {agents: [{id: "agent\\u200b", scram_secret_env: AGENT_SCRAM}]}',
                 "{file}:3: auth.agents[0].id: 'agent\\u200b' contains an invisible or control character (U+200B); "
                 "names that look alike must be alike", id="zero-width-space"),
    pytest.param('auth: {agents: [{id: bob, scram_secret_env: AGENT_SCRAM}, {id: BOB, scram_secret_env: AGENT_SCRAM}]}',
                 "{file}:3: auth.agents[1].id: duplicate id 'BOB' (first at line 3 as 'bob': names are compared "
                 "ignoring case and Unicode form)", id="same-name-other-case"),
])
def test_agent_names_are_canonical_and_visible(tmp_path: Path, auth: str, expected: str) -> None:
    path = write(tmp_path, f"routes:\n  app: {{host: db, user: u}}\n{auth}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == expected.replace("{file}", str(path))


def test_jwt_algorithms_default_to_the_key_kind(tmp_path: Path) -> None:
    (tmp_path / "jwt.pem").write_text("-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----")
    routes = "routes:\n  app: {host: db, user: u}\n"
    with_secret = write(tmp_path, "auth:\n  jwt: {secret_env: APP_PASSWORD}\n" + routes, "a.yaml")
    with_key = write(tmp_path, "auth:\n  jwt: {public_key_file: jwt.pem}\n" + routes, "b.yaml")

    hmac_jwt = load_config(with_secret).auth.jwt
    public_key_jwt = load_config(with_key).auth.jwt

    assert hmac_jwt is not None and hmac_jwt.algorithms == ("HS256",)
    assert public_key_jwt is not None and public_key_jwt.algorithms == ("RS256", "ES256")
    assert public_key_jwt.public_key is not None
    assert public_key_jwt.public_key.startswith("-----BEGIN PUBLIC KEY-----")


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPROXY_APP_PASSWORD", "example-upstream-password")

    config = load_config(EXAMPLE)

    assert config.routes["app"].password == "example-upstream-password"
    assert [agent.id for agent in config.auth.agents] == ["example-agent", "report-bot"]


def test_merge_keys_share_settings_between_routes(tmp_path: Path) -> None:
    path = write(tmp_path, """
        <auth>
        routes:
          app: &primary
            host: db
            user: u
          app_ro:
            <<: *primary
            user: reader
    """)

    routes = load_config(path).routes

    assert (routes["app_ro"].host, routes["app_ro"].user) == ("db", "reader")


def test_secrets_stay_out_of_repr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", JWT_SECRET)
    path = write(tmp_path, """
        auth:
          jwt: {secret_env: JWT_SECRET}
          agents: [{id: a, scram_secret: "<scram>"}]
        routes:
          app: {host: db, user: u, password_env: APP_PASSWORD}
    """)

    shown = repr(load_config(path))

    for secret in (UPSTREAM_PASSWORD, JWT_SECRET, SCRAM.split("$")[2]):
        assert secret not in shown


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("""
        routes:
          app: {host: db, user: u, password_env: "s3cret-Pa55 word"}
        <auth>
        """, "{file}:2: routes.app.password_env: expected the name of an environment variable"
        " (letters, digits, _)",
        id="password-pasted-into-password_env"),
    pytest.param("""
        routes:
          app: {host: db, user: u}
        auth:
          agents: [{id: a, scram_secret: "SCRAM-SHA-256$4096:s3cret$s3cret:s3cret"}]
        """, "{file}:4: auth.agents[0].scram_secret: not a SCRAM secret: salt is not valid base64",
        id="malformed-scram-secret"),
])
def test_errors_never_echo_a_secret(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as raised:
        load_config(path)

    assert str(raised.value) == expected.replace("{file}", str(path))
    assert "s3cret" not in str(raised.value)


def test_unreadable_file_names_the_file_and_reason(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError) as raised:
        load_config(missing)

    assert str(raised.value) == f"{missing}: cannot read config: No such file or directory"


# (YAML, the whole message the user sees). {file} is the config's path, {dir} its
# directory; <auth> is one line of valid auth, <scram> a valid SCRAM secret.
ERRORS = [
    pytest.param("""
        routes:
          app:
            host: db
            port: abc
            user: u
        <auth>
        """, "{file}:4: routes.app.port: expected an integer from 1 to 65535, got 'abc'",
        id="port-not-an-integer"),
    pytest.param("""
        listen:
          port: 70000
        routes:
          app: {host: db, user: u}
        <auth>
        """, "{file}:2: listen.port: expected an integer from 0 to 65535, got 70000",
        id="port-out-of-range"),
    pytest.param("""
        routes:
          app:
            host: db
            prot: 5432
            user: u
        <auth>
        """, "{file}:4: routes.app.prot: unknown key 'prot'; did you mean 'port'?",
        id="unknown-key-with-suggestion"),
    pytest.param("""
        routes:
          app: {host: db, user: u}
        <auth>
        colour: blue
        """, "{file}:4: colour: unknown key 'colour'"
        " (expected one of mode, listen, limits, auth, routes, logging, catalog, analysis, policy, approvals, audit,"
        " recognizers, masking, sampling)",
        id="unknown-key-without-suggestion"),
    pytest.param("""
        mode: passthrough
        <auth>
        """, "{file}:1: routes: required key is missing",
        id="missing-routes"),
    pytest.param("""
        routes: {}
        <auth>
        """, "{file}:1: routes: needs at least one route (database name: upstream)",
        id="no-routes"),
    pytest.param("""
        routes:
          app:
            user: u
            port: 5432
        <auth>
        """, "{file}:2: routes.app.host: required key is missing",
        id="missing-route-host"),
    pytest.param("""
        routes:
          app:
            host: db
            host: db2
            user: u
        <auth>
        """, "{file}:4: routes.app.host: duplicate key (first at line 3)",
        id="duplicate-key"),
    pytest.param("""
        routes:
          app:
            host: db
            user: u
            password_env: APP_PASSWORD
            password_file: password.txt
        <auth>
        """, "{file}:6: routes.app.password_file: cannot be combined with password_env;"
        " set only one of them",
        id="password-env-and-file"),
    pytest.param("""
        routes:
          app:
            host: db
            user: u
            password_env: PGPROXY_TEST_UNSET
        <auth>
        """, "{file}:5: routes.app.password_env: environment variable PGPROXY_TEST_UNSET"
        " is not set",
        id="password-env-unset"),
    pytest.param("""
        routes:
          app:
            host: db
            user: u
            password_file: nowhere.txt
        <auth>
        """, "{file}:5: routes.app.password_file: no such file: {dir}/nowhere.txt",
        id="password-file-missing"),
    pytest.param("""
        routes:
          app:
            host: db
            user: u
            sslmode: prefer
        <auth>
        """, "{file}:5: routes.app.sslmode: expected one of disable, require, verify-full;"
        " got 'prefer'",
        id="bad-sslmode"),
    pytest.param("""
        routes:
          app:
            host: db
            user: u
            sslmode: verify_full
        <auth>
        """, "{file}:5: routes.app.sslmode: expected one of disable, require, verify-full;"
        " got 'verify_full'; did you mean 'verify-full'?",
        id="sslmode-near-miss"),
    pytest.param("""
        routes:
          app:
            host: db
            user: u
            sslmode: verify-full
        <auth>
        """, "{file}:5: routes.app.sslmode: verify-full needs sslrootcert"
        " (the CA certificate file)",
        id="verify-full-without-sslrootcert"),
    pytest.param("""
        routes:
          app:
            host: db
            user: no
        <auth>
        """, "{file}:4: routes.app.user: expected a string, got false; quote it to make it text",
        id="yaml-boolean-where-text-expected"),
    pytest.param("""
        routes:
          app:
            host: db
            user: u
            connect_timeout_seconds:
        <auth>
        """, "{file}:5: routes.app.connect_timeout_seconds: expected a number greater than 0,"
        " got no value",
        id="empty-value"),
    pytest.param("""
        listen:
          tls:
            cert_file: server.crt
        routes:
          app: {host: db, user: u}
        <auth>
        """, "{file}:2: listen.tls.key_file: required key is missing",
        id="tls-without-key-file"),
    pytest.param("""
        listen:
          tls:
            cert_file: missing.crt
            key_file: missing.key
        routes:
          app: {host: db, user: u}
        <auth>
        """, "{file}:3: listen.tls.cert_file: no such file: {dir}/missing.crt",
        id="tls-cert-file-missing"),
    pytest.param("""
        listen: [127.0.0.1, 6432]
        routes:
          app: {host: db, user: u}
        <auth>
        """, "{file}:1: listen: expected a mapping, got a list",
        id="section-not-a-mapping"),
    pytest.param("""
        limits:
          max_message_bytes: 100
        routes:
          app: {host: db, user: u}
        <auth>
        """, "{file}:2: limits.max_message_bytes: expected an integer from 1024 to 1073741823,"
        " got 100",
        id="limit-too-small"),
    pytest.param("""
        limits:
          auth_timeout_seconds: 0
        routes:
          app: {host: db, user: u}
        <auth>
        """, "{file}:2: limits.auth_timeout_seconds: expected a number greater than 0, got 0",
        id="timeout-zero"),
    pytest.param("""
        logging:
          level: verbose
        routes:
          app: {host: db, user: u}
        <auth>
        """, "{file}:2: logging.level: expected one of debug, info, warning, error;"
        " got 'verbose'",
        id="bad-log-level"),
    pytest.param("""
        routes:
          app: {host: db, user: u}
        """, "{file}:1: auth: required key is missing;"
        " without auth.jwt or auth.agents no agent can log in",
        id="missing-auth"),
    pytest.param("""
        routes:
          app: {host: db, user: u}
        auth:
          allow_cleartext_on_loopback: true
        """, "{file}:3: auth: needs jwt or agents; otherwise no agent can log in",
        id="auth-without-a-login-method"),
    pytest.param("""
        routes:
          app: {host: db, user: u}
        auth:
          agents:
            - id: a
              scram_secret: "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA"
        """, "{file}:6: auth.agents[0].scram_secret: not a SCRAM secret: keys must be 32 bytes",
        id="malformed-scram-secret"),
    pytest.param("""
        routes:
          app: {host: db, user: u}
        auth:
          agents:
            - id: a
              scram_secret: md5d41d8cd98f00b204e9800998ecf8427e
        """, "{file}:6: auth.agents[0].scram_secret: not a SCRAM secret: expected"
        " SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>",
        id="md5-secret-instead-of-scram"),
    pytest.param("""
        routes:
          app: {host: db, user: u}
        auth:
          agents:
            - id: a
              scram_secret: "<scram>"
            - id: a
              scram_secret: "<scram>"
        """, "{file}:7: auth.agents[1].id: duplicate id 'a' (first at line 5)",
        id="duplicate-agent-id"),
    pytest.param("""
        routes:
          app: {host: db, user: u}
        auth:
          jwt:
            issuer: https://issuer.example
        """, "{file}:4: auth.jwt: needs one of secret_env, secret_file, public_key_file"
        " or jwks_url",
        id="jwt-without-key-source"),
    pytest.param("""
        routes:
          app: {host: db, user: u}
        auth:
          jwt:
            secret_env: APP_PASSWORD
            algorithms: [RS256]
        """, "{file}:6: auth.jwt.algorithms[0]: RS256 needs public_key_file or jwks_url,"
        " but the key comes from secret_env",
        id="jwt-public-key-algorithm-with-secret"),
    pytest.param("""
        routes:
          app: {host: db, user: u}
        auth:
          jwt:
            jwks_url: auth.example/jwks.json
        """, "{file}:5: auth.jwt.jwks_url: expected an http:// or https:// URL,"
        " got 'auth.example/jwks.json'",
        id="jwks-url-without-scheme"),
    pytest.param("""
        routes:
          app: {host: db,
          user: u
        """, "{file}:4: invalid YAML: expected ',' or '}', but got '<stream end>'"
        " (while parsing a flow mapping at line 2)",
        id="yaml-syntax-error"),
    pytest.param("""
        routes:
          app:
            host: db
           user: u
        """, "{file}:4: invalid YAML: expected <block end>, but found '<block mapping start>'"
        " (while parsing a block mapping at line 2)",
        id="yaml-bad-indentation"),
    pytest.param("""
        routes:
          app: {host: db, user: u}
        <auth>
        audit:
          retention_days: 30
        """, "{file}:4: audit: signing_key_env or signing_key_file is required (without an approvals section "
        "there is no key to borrow)",
        id="audit-without-a-key"),
    pytest.param("""
        routes:
          app: {host: db, user: u}
        <auth>
        audit:
          signing_key_env: APP_PASSWORD
          queue_events: 5
        """, "{file}:5: audit.signing_key_env: the signing key must be at least 32 characters",
        id="audit-short-key"),
    pytest.param("""
        routes:
          app: {host: db, user: u}
        <auth>
        audit:
          signing_key_env: PGPROXY_TEST_UNSET
          flush_interval: 1
        """, "{file}:6: audit.flush_interval: unknown key 'flush_interval'; did you mean "
        "'flush_interval_seconds'?",
        id="audit-unknown-key"),
    pytest.param("""
        - routes
        - auth
        """, "{file}:1: expected a mapping of settings at the top level, got a list",
        id="top-level-list"),
    pytest.param("", "{file}: config is empty; expected a mapping with 'auth' and 'routes'",
                 id="empty-file"),
    pytest.param("# nothing yet\n",
                 "{file}: config is empty; expected a mapping with 'auth' and 'routes'",
                 id="only-comments"),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_invalid_config_names_file_line_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as raised:
        load_config(path)

    expected = expected.replace("{file}", str(path)).replace("{dir}", str(tmp_path))
    assert str(raised.value) == expected


def test_the_web_apps_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """approvals.http: defaults, values, and errors that name the file, line and key."""
    from pgproxy.approvals.http import HttpLimits

    monkeypatch.setenv("SIGNING_KEY", "k" * 32)
    base = ("routes:\n  app: {host: db, user: u}\n<auth>\napprovals:\n  signing_key_env: SIGNING_KEY\n"
            "  reviewers: {jwt: {secret_env: SIGNING_KEY}}\n")
    config = load_config(write(tmp_path, base))
    assert config.approvals is not None and config.approvals.http == HttpLimits()
    given = load_config(write(tmp_path, base + "  http: {max_connections: 20, header_timeout_seconds: 0.5,\n"
                                               "         body_timeout_seconds: 2, max_body_bytes: 4096}\n"))
    assert given.approvals is not None
    assert given.approvals.http == HttpLimits(20, 0.5, 2, 4096)
    for value, message in (("max_connections: 0", "approvals.http.max_connections: expected an integer from 1 "
                                                   "to 1000000, got 0"),
                           ("header_timeout_seconds: 0", "approvals.http.header_timeout_seconds: expected a number "
                                                         "greater than 0, got 0"),
                           ("body_timeout_seconds: -1", "approvals.http.body_timeout_seconds: expected a number "
                                                        "greater than 0, got -1"),
                           ("max_body_bytes: 10", "approvals.http.max_body_bytes: expected an integer from 1024 to "
                                                  "67108864, got 10"),
                           ("header_timeout: 1", "approvals.http.header_timeout: unknown key 'header_timeout'; did "
                                                 "you mean 'header_timeout_seconds'?")):
        path = write(tmp_path, base + f"  http:\n    {value}\n")
        with pytest.raises(ConfigError) as raised:
            load_config(path)
        assert str(raised.value) == f"{path}:8: {message}"
