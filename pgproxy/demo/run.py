"""`pgproxy demo`: the embedded default.

Starts a throwaway PostgreSQL, loads the demo data, writes a config, starts the
proxy and prints ``KEY=value`` lines (DATABASE_URL, UPSTREAM_URL, CONFIG,
AGENT_TOKEN, REVIEWER_TOKEN, DEMO_LOGIN_CODE, then READY). Runs until SIGINT/SIGTERM and
removes what it started.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path
from types import TracebackType

import jwt
import yaml

from pgproxy.config import load_config
from pgproxy.pgcluster import PostgresCluster, free_port

DEMO_DATABASE = "app"
UPSTREAM_ROLE = "pgproxy_app"
AGENT_ID = "agent"
TOKEN_ISSUER = "pgproxy-demo"
TOKEN_AUDIENCE = "pgproxy"
REVIEWER_ID = "alice"
REVIEWER_AUDIENCE = "pgproxy-approvals"
_GENERATED = ("pgproxy.yaml", "upstream-password", "jwt-secret", "catalog.yaml", "reviewer-secret", "signing-key",
              "approvals.sqlite3", "approvals.sqlite3-wal", "approvals.sqlite3-shm", "demo-reviewer-token",
              "demo-login-code")


def demo_file(name: str) -> str:
    """A file shipped with the demo: data.sql, catalog.yaml or policy.yaml."""
    return resources.files("pgproxy.demo").joinpath(name).read_text()


def demo_sql() -> str:
    """The demo schema and data (DESIGN.md, "Demo data"), shared by demo, tests and benchmarks."""
    return demo_file("data.sql")


def mint_token(secret: str, subject: str, *, groups: list[str], hours: float = 24.0,
               audience: str = TOKEN_AUDIENCE) -> str:
    now = int(time.time())
    claims = {"sub": subject, "groups": groups, "iss": TOKEN_ISSUER, "aud": audience,
              "iat": now, "exp": now + int(hours * 3600)}
    return jwt.encode(claims, secret, algorithm="HS256")


class DemoEnvironment:
    """The demo's PostgreSQL, data and config; removed again on exit."""

    def __init__(self, *, port: int, data_dir: Path | None) -> None:
        # Resolve "any free port" now, so the config written below names the port in use.
        self.port = port or free_port()
        self._created_dir = data_dir is None or not data_dir.exists()
        self.base = Path(tempfile.mkdtemp(prefix="pgproxy-demo-")) if data_dir is None else data_dir
        self.cluster = PostgresCluster(self.base / "postgres")
        self.upstream_password = secrets.token_urlsafe(18)
        self.jwt_secret = secrets.token_urlsafe(32)
        self.reviewer_secret = secrets.token_urlsafe(32)  # reviewers' tokens come from another issuer
        self.signing_key = secrets.token_urlsafe(32)
        self.config_path = self.base / "pgproxy.yaml"

    def __enter__(self) -> DemoEnvironment:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o711)  # the server may run as an unprivileged user; it must reach base/postgres
        try:
            self.cluster.start()
            self.cluster.create_role(UPSTREAM_ROLE, self.upstream_password)
            self.cluster.create_database(DEMO_DATABASE, owner=UPSTREAM_ROLE)
            self.cluster.psql(demo_sql(), dbname=DEMO_DATABASE, user=UPSTREAM_ROLE)
            self._write_config()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cluster.stop()
        if self._created_dir:
            shutil.rmtree(self.base, ignore_errors=True)
        else:
            for name in _GENERATED:
                with contextlib.suppress(FileNotFoundError):
                    (self.base / name).unlink()

    def _write_config(self) -> None:
        password_file = self.base / "upstream-password"
        password_file.write_text(self.upstream_password + "\n")
        password_file.chmod(0o600)
        secret_file = self.base / "jwt-secret"
        secret_file.write_text(self.jwt_secret + "\n")
        secret_file.chmod(0o600)
        self.reviewer_token = mint_token(self.reviewer_secret, REVIEWER_ID, groups=["reviewers"],
                                         audience=REVIEWER_AUDIENCE)
        # The page's demo sign-in asks for this code, printed on the terminal only.
        self.login_code = "-".join(secrets.token_hex(3) for _ in range(3))
        for name, value in (("reviewer-secret", self.reviewer_secret), ("signing-key", self.signing_key),
                            ("demo-reviewer-token", self.reviewer_token), ("demo-login-code", self.login_code)):
            (self.base / name).write_text(value + "\n")
            (self.base / name).chmod(0o600)
        catalog_file = self.base / "catalog.yaml"
        catalog_file.write_text(demo_file("catalog.yaml"))
        config = {
            "mode": "enforce",
            "catalog": str(catalog_file),
            "policy": yaml.safe_load(demo_file("policy.yaml")),
            "listen": {"host": "127.0.0.1", "port": self.port},
            "auth": {
                # The demo listens on loopback only, so a token may travel without TLS there.
                "allow_cleartext_on_loopback": True,
                "jwt": {"algorithms": ["HS256"], "secret_file": str(secret_file),
                        "issuer": TOKEN_ISSUER, "audience": TOKEN_AUDIENCE},
            },
            "approvals": {
                "listen": {"host": "127.0.0.1", "port": 0},
                "store": str(self.base / "approvals.sqlite3"),
                "signing_key_file": str(self.base / "signing-key"),
                # The demo's page offers "sign in as the demo reviewer"; never set this outside a demo.
                "demo_login_token_file": str(self.base / "demo-reviewer-token"),
                "demo_login_code_file": str(self.base / "demo-login-code"),
                "reviewers": {"jwt": {"algorithms": ["HS256"], "secret_file": str(self.base / "reviewer-secret"),
                                      "issuer": TOKEN_ISSUER, "audience": REVIEWER_AUDIENCE},
                              "groups": ["reviewers"]},
            },
            # What agents read is sampled for PII nobody tagged (support_tickets.body): see `pgproxy scan`.
            "sampling": {"enabled": True},
            "routes": {
                DEMO_DATABASE: {"host": self.cluster.host, "port": self.cluster.port, "dbname": DEMO_DATABASE,
                                "user": UPSTREAM_ROLE, "password_file": str(password_file)},
            },
        }
        self.config_path.write_text("# Generated by `pgproxy demo`.\n" + yaml.safe_dump(config, sort_keys=False))


async def serve_demo(demo: DemoEnvironment) -> int:
    """Run the proxy for `demo`, print the KEY=value lines, and wait for a signal."""
    from pgproxy.cli import wait_for_signal
    from pgproxy.server import ProxyServer

    server = ProxyServer(load_config(demo.config_path))
    await server.start()
    token = mint_token(demo.jwt_secret, AGENT_ID, groups=["agents"])
    lines = {
        "DATABASE_URL": f"postgresql://{AGENT_ID}:{token}@127.0.0.1:{server.port}/{DEMO_DATABASE}",
        "UPSTREAM_URL": demo.cluster.dsn(user=UPSTREAM_ROLE, password=demo.upstream_password,
                                         dbname=DEMO_DATABASE),
        "APPROVALS_URL": server.approvals_url or "",
        "CONFIG": str(demo.config_path),
        "AGENT_TOKEN": token,
        "REVIEWER_TOKEN": demo.reviewer_token,
        "DEMO_LOGIN_CODE": demo.login_code,
    }
    for key, value in lines.items():
        print(f"{key}={value}", flush=True)
    print("READY", flush=True)
    await wait_for_signal(server.close)
    return 0
