"""A throwaway PostgreSQL server: the one way tests, ``pgproxy demo`` and benchmarks start one.

    with PostgresCluster() as pg:
        pg.create_role("app", "s3cret")
        pg.create_database("app", owner="app")
        url = pg.dsn(user="app", password="s3cret", dbname="app")

The server listens on 127.0.0.1 (password authentication, SCRAM by default) and
on a private unix socket (trust, used by `psql()` to administer it as the
superuser). Its log goes to ``base_dir/postgresql.log``.

PostgreSQL refuses to run as root. When this process is root, every
initdb / pg_ctl / psql invocation runs as the ``postgres`` system user and the
cluster's directory belongs to that user.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

__all__ = ["PostgresCluster", "find_pg_bin", "free_port"]

# The unprivileged account PostgreSQL runs as when we are root (Debian's,
# Red Hat's and the official images' packages all create it).
SYSTEM_USER = "postgres"

_INSTALL_HINT = (
    "install the PostgreSQL server (Debian/Ubuntu: apt-get install postgresql; "
    "Fedora/RHEL: dnf install postgresql-server; macOS: brew install postgresql) "
    "or put its bin directory on PATH"
)

# A unix socket path must fit in sockaddr_un.sun_path (108 bytes with the NUL).
_MAX_SOCKET_PATH = 107
_SOCKET_FILE_LEN = len("/.s.PGSQL.65535")

# Short, world-traversable parents for the private (mode 0700, random name) directories
# mkdtemp makes, when TMPDIR is too deep for a socket path or closed to the postgres user.
_FALLBACK_TMP_DIRS = (Path("/tmp"), Path("/var/tmp"))  # noqa: S108

_START_ATTEMPTS = 5
_START_TIMEOUT_SECONDS = 60
_STOP_TIMEOUT_SECONDS = 30
_LOG_TAIL_LINES = 40


def _version_key(path: Path, prefix: str) -> tuple[int, ...]:
    """Sort key for '/usr/lib/postgresql/15' or '/usr/pgsql-9.6' by version number."""
    numbers = re.findall(r"\d+", path.name.removeprefix(prefix))
    return tuple(int(n) for n in numbers)


def find_pg_bin(name: str) -> Path:
    """Locate a PostgreSQL program such as ``initdb``, ``pg_ctl`` or ``psql``.

    Looks on PATH first, then in the newest ``/usr/lib/postgresql/<version>/bin``
    (Debian, Ubuntu) and ``/usr/pgsql-<version>/bin`` (PGDG RPMs), then
    ``/usr/local/pgsql/bin`` (a source build). Raises RuntimeError saying what
    to install when the program is nowhere.
    """
    on_path = shutil.which(name)
    if on_path is not None:
        return Path(on_path)
    candidates: list[Path] = []
    for root, pattern, prefix in (
        (Path("/usr/lib/postgresql"), "*", ""),
        (Path("/usr"), "pgsql-*", "pgsql-"),
    ):
        versions = sorted(root.glob(pattern), key=lambda p: _version_key(p, prefix), reverse=True)
        candidates.extend(v / "bin" / name for v in versions)
    candidates.append(Path("/usr/local/pgsql/bin") / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        f"PostgreSQL program {name!r} not found on PATH, in /usr/lib/postgresql/*/bin, "
        f"/usr/pgsql-*/bin or /usr/local/pgsql/bin: {_INSTALL_HINT}"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now (another process may take it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class _RunAs:
    """The unprivileged account subprocesses switch to when we are root."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @classmethod
    def lookup(cls, name: str) -> _RunAs:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise RuntimeError(
                f"running as root, but PostgreSQL refuses to run as root and there is no "
                f"{name!r} system user to run it as: install the PostgreSQL server package "
                f"(it creates one) or run `useradd --system --user-group {name}`"
            ) from None
        groups = tuple(os.getgrouplist(name, entry.pw_gid))
        return cls(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)

    def can_search(self, directory: os.stat_result) -> bool:
        """Whether this account may traverse a directory with that stat (ignoring ACLs)."""
        if directory.st_uid == self.uid:
            return bool(directory.st_mode & stat.S_IXUSR)
        if directory.st_gid in self.groups:
            return bool(directory.st_mode & stat.S_IXGRP)
        return bool(directory.st_mode & stat.S_IXOTH)

    def blocked_at(self, path: Path) -> Path | None:
        """The first directory above `path` this account cannot traverse, if any."""
        for ancestor in reversed(path.resolve().parents):
            if not self.can_search(ancestor.stat()):
                return ancestor
        return None


def _alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie.

    The postmaster is not our child (pg_ctl's is), so once it exits it waits as a
    zombie until init reaps it, which some container inits do only now and then.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        proc_stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # gone, unless there is no procfs to ask
    except OSError:
        return True
    # Format: "pid (comm) state ..."; comm may contain spaces and parentheses.
    return proc_stat[proc_stat.rfind(")") + 2 :][:1] not in ("Z", "X")


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    # standard_conforming_strings is on (the default since 9.1): only quotes need doubling.
    return "'" + value.replace("'", "''") + "'"


class PostgresCluster:
    """A throwaway PostgreSQL server on 127.0.0.1.

    As a context manager it starts on enter and stops (and removes its files) on exit.

    `hba_lines` go into pg_hba.conf between ``local all all trust`` and the
    final ``host all all 127.0.0.1/32 scram-sha-256``; `settings` are
    postgresql.conf parameters that override the defaults set here. With
    `ssl_cert` and `ssl_key` the server also accepts TLS. With `keep`, `stop()`
    leaves `base_dir` (data directory and log) in place. When `port` is None a
    free one is picked, and another if a different process took it first.

    The superuser ``postgres`` gets a random password, so ``dsn()`` works for it.
    """

    host: str
    port: int
    superuser: str
    superuser_password: str
    base_dir: Path
    data_dir: Path
    socket_dir: Path
    log_file: Path

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        port: int | None = None,
        hba_lines: Sequence[str] = (),
        settings: Mapping[str, str] | None = None,
        ssl_cert: Path | None = None,
        ssl_key: Path | None = None,
        keep: bool = False,
    ) -> None:
        if (ssl_cert is None) != (ssl_key is None):
            raise ValueError("ssl_cert and ssl_key go together: give both or neither")
        self.host = "127.0.0.1"
        self.superuser = "postgres"
        self.superuser_password = secrets.token_urlsafe(24)
        self._fixed_port = port is not None
        self.port = port if port is not None else 0
        self._hba_lines = tuple(hba_lines)
        self._settings = dict(settings or {})
        self._ssl_cert = ssl_cert
        self._ssl_key = ssl_key
        self.keep = keep
        self._run_as = _RunAs.lookup(SYSTEM_USER) if os.geteuid() == 0 else None
        self._given_base_dir = base_dir
        self._private_socket_dir: Path | None = None
        self._created_base_dir = False
        self._settings_in_effect: dict[str, str] = {}
        self._started = False
        self._stopped = False
        # Paths are final only once start() has created the directory; set placeholders.
        self.base_dir = base_dir if base_dir is not None else Path()
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        self.log_file = self.base_dir / "postgresql.log"

    # -- lifetime -----------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Create the cluster with initdb and start it; returns once it accepts connections."""
        if self._started:
            raise RuntimeError("this PostgresCluster was already started; make a new one")
        self._started = True
        atexit.register(self.stop)
        try:
            self._make_dirs()
            self._initdb()
            self._configure()
            self._start_server()
            if self._stopped:  # stop() ran meanwhile (a signal handler): don't leave a server
                self._stop_server()
                raise RuntimeError("PostgresCluster.stop() was called while it was starting")
            self.psql(
                "SET password_encryption = 'scram-sha-256';\n"
                f"ALTER ROLE {_quote_ident(self.superuser)} "
                f"PASSWORD {_quote_literal(self.superuser_password)};"
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (fast shutdown, killed if it hangs) and remove base_dir unless `keep`.

        Idempotent, and safe to call from atexit or a signal handler.
        """
        if not self._started or self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        try:
            self._stop_server()
        finally:
            if self._private_socket_dir is not None:
                shutil.rmtree(self._private_socket_dir, ignore_errors=True)
            if not self.keep:
                self._remove_files()

    def _remove_files(self) -> None:
        """Remove base_dir; if it existed before start(), only what start() put in it."""
        if self._created_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        elif self._given_base_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            shutil.rmtree(self.base_dir / "socket", ignore_errors=True)
            self.log_file.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.base_dir.rmdir()  # only if nothing else is left in it

    # -- clients ------------------------------------------------------------------

    def dsn(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        dbname: str = "postgres",
        host: str | None = None,
    ) -> str:
        """A ``postgresql://`` URL reaching this server over TCP.

        Without `user` it is the superuser with its password. Every part is
        percent-encoded, so any password survives the trip.
        """
        if user is None or (user == self.superuser and password is None):
            user, password = self.superuser, self.superuser_password
        host = host or self.host
        netloc_host = f"[{host}]" if ":" in host else host
        userinfo = quote(user, safe="")
        if password is not None:
            userinfo += ":" + quote(password, safe="")
        return f"postgresql://{userinfo}@{netloc_host}:{self.port}/{quote(dbname, safe='')}"

    def psql(self, sql: str, *, dbname: str = "postgres", user: str | None = None) -> str:
        """Run `sql` through psql over the unix socket (trust) and return its unaligned output.

        Raises RuntimeError with psql's stderr when any statement fails.
        """
        args = [
            str(find_pg_bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At",
            "-h", str(self.socket_dir), "-p", str(self.port),
            "-U", user or self.superuser, "-d", dbname, "-f", "-",
        ]  # fmt: skip
        result = self._run(args, input_text=sql)
        if result.returncode != 0:
            raise RuntimeError(
                f"psql failed (exit {result.returncode}) on database {dbname!r}: "
                f"{result.stderr.strip()}"
            )
        return result.stdout

    def create_role(
        self,
        name: str,
        password: str,
        *,
        superuser: bool = False,
        password_encryption: str = "scram-sha-256",  # noqa: S107 (a method name, not a secret)
    ) -> None:
        """Create a login role; with password_encryption="md5" its password is stored as MD5.

        Note that the final pg_hba.conf line asks for SCRAM: an MD5 role needs an
        ``md5`` line of its own in `hba_lines`.
        """
        if password_encryption not in ("scram-sha-256", "md5"):
            raise ValueError(f"password_encryption must be 'scram-sha-256' or 'md5', "
                             f"not {password_encryption!r}")
        options = "LOGIN SUPERUSER" if superuser else "LOGIN"
        self.psql(
            f"SET password_encryption = {_quote_literal(password_encryption)};\n"
            f"CREATE ROLE {_quote_ident(name)} {options} PASSWORD {_quote_literal(password)};"
        )

    def create_database(self, name: str, *, owner: str | None = None) -> None:
        """Create a database (optionally owned by `owner`)."""
        owner_clause = f" OWNER {_quote_ident(owner)}" if owner is not None else ""
        self.psql(f"CREATE DATABASE {_quote_ident(name)}{owner_clause};")

    # -- internals ----------------------------------------------------------------

    def _make_dirs(self) -> None:
        if self._given_base_dir is None:
            self.base_dir = self._default_base_dir()
            self._created_base_dir = True
        else:
            self.base_dir = self._given_base_dir.resolve()
            self._created_base_dir = not self.base_dir.exists()
            self.base_dir.mkdir(parents=True, exist_ok=True)
            self.base_dir.chmod(0o700)
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "postgresql.log"
        socket_dir = self.base_dir / "socket"
        if len(str(socket_dir)) + _SOCKET_FILE_LEN > _MAX_SOCKET_PATH:
            # base_dir is too deep for a unix socket path: use a short private directory.
            socket_dir = Path(tempfile.mkdtemp(prefix="pgproxy-sock-", dir=_FALLBACK_TMP_DIRS[0]))
            self._private_socket_dir = socket_dir
        socket_dir.mkdir(mode=0o700, exist_ok=True)
        self.socket_dir = socket_dir
        if self._run_as is not None:
            blocked = self._run_as.blocked_at(self.base_dir)
            if blocked is not None:
                raise RuntimeError(
                    f"the {self._run_as.name!r} user that PostgreSQL runs as cannot reach "
                    f"{self.base_dir}: {blocked} is not searchable by it; choose a base_dir "
                    f"under a directory it can traverse (`chmod o+x {blocked}`, or leave "
                    f"base_dir out for a fresh directory in /tmp)"
                )
            self._chown_tree(self.base_dir)
            if self._private_socket_dir is not None:
                self._chown_tree(self._private_socket_dir)

    def _default_base_dir(self) -> Path:
        """A fresh directory in the temp dir, or in /tmp if the postgres user can't reach that."""
        parents = [Path(tempfile.gettempdir()), *_FALLBACK_TMP_DIRS]
        for parent in parents:
            if self._run_as is not None and (
                not parent.is_dir() or self._run_as.blocked_at(parent / "x") is not None
            ):
                continue
            return Path(tempfile.mkdtemp(prefix="pgproxy-pg-", dir=parent)).resolve()
        raise RuntimeError(
            f"no temporary directory the {SYSTEM_USER!r} user can traverse among "
            f"{', '.join(map(str, parents))}; pass base_dir"
        )

    def _chown_tree(self, top: Path) -> None:
        assert self._run_as is not None
        uid, gid = self._run_as.uid, self._run_as.gid
        os.chown(top, uid, gid)
        for root, dirs, files in os.walk(top):
            for name in (*dirs, *files):
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)

    def _server_bin(self, name: str) -> Path:
        """`name` from the same installation as initdb, so versions never mix."""
        initdb = find_pg_bin("initdb").resolve()
        sibling = initdb.parent / name
        return sibling if sibling.is_file() else find_pg_bin(name)

    def _env(self) -> dict[str, str]:
        # No PGHOST/PGPASSWORD/PGSERVICE… from the caller's environment may steer our tools.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self._run_as is not None:
            env["HOME"] = self._run_as.home
            env["USER"] = env["LOGNAME"] = self._run_as.name
        return env

    def _run(
        self,
        args: Sequence[str],
        *,
        input_text: str | None = None,
        timeout: float | None = None,
        new_session: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program (as the postgres user when we are root), capturing output."""
        kwargs: dict[str, Any] = {}
        if self._run_as is not None:
            kwargs.update(
                user=self._run_as.uid,
                group=self._run_as.gid,
                extra_groups=list(self._run_as.groups),
            )
        return subprocess.run(
            list(args),
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self.base_dir,
            env=self._env(),
            timeout=timeout,
            start_new_session=new_session,
            check=False,
            **kwargs,
        )

    def _initdb(self) -> None:
        result = self._run([
            str(find_pg_bin("initdb")), "-D", str(self.data_dir),
            "--username", self.superuser, "--auth-local=trust", "--auth-host=scram-sha-256",
            "-E", "UTF8", "--locale=C", "--no-sync",
        ])  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed (exit {result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()}")

    def _configure(self) -> None:
        hba = ["# written by pgproxy.pgcluster", "local all all trust", *self._hba_lines]
        settings: dict[str, str] = {
            "listen_addresses": self.host,
            "unix_socket_directories": str(self.socket_dir),
            "unix_socket_permissions": "0700",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "timezone": "UTC",
            "log_timezone": "UTC",
            "logging_collector": "off",
            "log_line_prefix": "%m [%p] %q%u@%d ",
        }
        if self._ssl_cert is not None and self._ssl_key is not None:
            for source, target, mode in (
                (self._ssl_cert, "server.crt", 0o644),
                (self._ssl_key, "server.key", 0o600),
            ):
                copied = self.data_dir / target
                shutil.copyfile(source, copied)
                copied.chmod(mode)
                if self._run_as is not None:
                    os.chown(copied, self._run_as.uid, self._run_as.gid)
            settings.update(ssl="on", ssl_cert_file="server.crt", ssl_key_file="server.key")
            hba.append(f"hostssl all all {self.host}/32 scram-sha-256")
        hba.append(f"host all all {self.host}/32 scram-sha-256")
        settings.update(self._settings)
        self._settings_in_effect = settings
        (self.data_dir / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# pgproxy.pgcluster settings (the port is set at each start)\n"
                       "include 'pgproxy.conf'\n")

    def _write_settings(self) -> None:
        lines = [f"{key} = {_quote_literal(value)}"
                 for key, value in {**self._settings_in_effect, "port": str(self.port)}.items()]
        path = self.data_dir / "pgproxy.conf"
        path.write_text("\n".join(lines) + "\n")
        if self._run_as is not None:
            os.chown(path, self._run_as.uid, self._run_as.gid)

    def _start_server(self) -> None:
        for attempt in range(1, _START_ATTEMPTS + 1):
            if not self._fixed_port:
                self.port = free_port(self.host)
            self._write_settings()
            log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            result = self._run(
                [
                    str(self._server_bin("pg_ctl")), "start", "-w",
                    "-t", str(_START_TIMEOUT_SECONDS),
                    "-D", str(self.data_dir), "-l", str(self.log_file),
                ],
                new_session=True,
            )  # fmt: skip
            if result.returncode == 0:
                return
            log = self._read_log(log_offset)
            port_taken = "Address already in use" in log or "could not bind" in log
            if port_taken and not self._fixed_port and attempt < _START_ATTEMPTS:
                continue
            pg_ctl_output = (result.stderr or result.stdout).strip()
            raise RuntimeError(
                f"PostgreSQL did not start on {self.host}:{self.port} "
                f"(pg_ctl exit {result.returncode}: {pg_ctl_output})\n"
                f"last lines of {self.log_file}"
                f"{'' if self.keep else ' (removed on failure; keep=True keeps it)'}:\n"
                f"{self._tail(log)}"
            )

    def _read_log(self, offset: int = 0) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    @staticmethod
    def _tail(text: str) -> str:
        lines = text.rstrip().splitlines()[-_LOG_TAIL_LINES:]
        return "\n".join(lines) if lines else "(the log is empty)"

    def _postmaster_pid(self) -> int | None:
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first_line)
        except (OSError, ValueError):
            return None

    def _is_our_postmaster(self, pid: int) -> bool:
        """Whether `pid` is alive and is the postmaster of data_dir (not a recycled pid)."""
        if not _alive(pid):
            return False
        proc = Path("/proc") / str(pid)
        if not Path("/proc/self").exists():
            return True  # no procfs to ask: trust postmaster.pid
        try:
            # The postmaster changes into its data directory and stays there.
            return Path(os.readlink(proc / "cwd")) == self.data_dir.resolve()
        except OSError:
            return False

    def _stop_server(self) -> None:
        pid = self._postmaster_pid()
        if pid is None or not self._is_our_postmaster(pid):
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError, RuntimeError):
            result = self._run(
                [str(self._server_bin("pg_ctl")), "stop", "-w", "-m", "fast",
                 "-t", str(_STOP_TIMEOUT_SECONDS), "-D", str(self.data_dir)],
                timeout=_STOP_TIMEOUT_SECONDS + 5,
            )
            # pg_ctl returns once postmaster.pid is gone; the process exits right after.
            if result.returncode == 0 and self._wait_gone(pid, 5.0):
                return
        if not self._is_our_postmaster(pid):
            return
        # pg_ctl could not stop it: immediate shutdown, then kill the whole process group
        # (pg_ctl starts the postmaster as a session leader, so its children share it).
        self._signal(pid, signal.SIGQUIT)
        if not self._wait_gone(pid, 5.0):
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
            self._signal(pid, signal.SIGKILL)
            self._wait_gone(pid, 5.0)

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)

    @staticmethod
    def _wait_gone(pid: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while _alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running" if self._started else "new"
        return f"<PostgresCluster {self.host}:{self.port} {self.base_dir} {state}>"

