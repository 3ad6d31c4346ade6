"""The command line as a new user runs it: real processes, real signals, real PostgreSQL.

`pgproxy demo` and `pgproxy run --config` are contracts others rely on (DESIGN.md):
these tests start them with the installed console script (or ``python -m
pgproxy.cli`` when the script is not installed), talk to them with psycopg, stop
them with SIGINT or SIGTERM and check that nothing they started is left behind.
Every wait is bounded, and a test that fails part-way still kills what it started.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import psycopg
import pytest

from pgproxy.config import load_config
from pgproxy.pgcluster import PostgresCluster, free_port
from pgproxy.wire.scram import parse_scram_secret
from tests.harness import DATABASE, JWT_AUDIENCE, JWT_ISSUER, JWT_SECRET, UPSTREAM_USERS, make_token

# The waits below are bounded one by one, with messages that say what did not happen;
# pytest-timeout's bound for the whole test is only the last resort.
pytestmark = pytest.mark.timeout(300)

READY_TIMEOUT = 60.0  # initdb + loading the demo data, on a slow CI machine
STOP_TIMEOUT = 60.0  # a fast PostgreSQL shutdown and removing its files
START_TIMEOUT = 30.0  # `pgproxy run` listening
DEMO_KEYS = ("DATABASE_URL", "UPSTREAM_URL", "APPROVALS_URL", "CONFIG", "AGENT_TOKEN", "REVIEWER_TOKEN",
             "DEMO_LOGIN_CODE")
UPSTREAM_PASSWORD_ENV = "PGPROXY_TEST_PW"
JWT_SECRET_ENV = "PGPROXY_TEST_JWT_SECRET"


def pgproxy_command() -> list[str]:
    """The `pgproxy` console script installed next to this Python, else `python -m pgproxy.cli`."""
    script = Path(sys.executable).parent / "pgproxy"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "pgproxy.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without PG* variables (they would steer psql and libpq)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra)
    return env


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def postmasters_in(directory: Path) -> list[tuple[int, str]]:
    """Running `postgres` processes whose command line mentions `directory` (pid, command line)."""
    found: list[tuple[int, str]] = []
    for cmdline_file in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline_file.read_bytes().split(b"\0")
        except OSError:
            continue  # exited while we looked
        command = " ".join(arg.decode("utf-8", "replace") for arg in argv if arg)
        if Path(argv[0].decode("utf-8", "replace")).name == "postgres" and str(directory) in command:
            found.append((int(cmdline_file.parent.name), command))
    return found


def kill_postmasters_in(directory: Path) -> None:
    """Clean-up after a failed test: stop any PostgreSQL the demo left running in `directory`."""
    for pid, _ in postmasters_in(directory):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown; it takes its children along
    deadline = time.monotonic() + 10
    while postmasters_in(directory) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid, _ in postmasters_in(directory):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def stop(proc: subprocess.Popen[Any], sig: signal.Signals, timeout: float = STOP_TIMEOUT) -> int:
    """Send `sig` and wait (bounded) for the exit code.

    SIGINT goes to the whole process group, as a terminal's Ctrl-C does; SIGTERM to the
    process alone, as `kill` does. (The process leads its own group: start_new_session.)
    """
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pgproxy did not exit within {timeout:.0f} s of {sig.name}")


def reap(proc: subprocess.Popen[Any]) -> None:
    """Kill `proc` if it still runs (a failed test), and wait for it."""
    if proc.poll() is None:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


class LineReader:
    """Reads a pipe's lines on a thread, so the test can wait for each with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)  # end of file

    def until(self, last: str, timeout: float) -> list[str]:
        """Lines up to and including `last`; fails on EOF or when `timeout` passes first."""
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                raise TimeoutError(f"no {last!r} line within {timeout:.0f} s; got {lines}") from None
            if line is None:
                raise EOFError(f"output ended before {last!r}; got {lines}")
            lines.append(line)
            if line == last:
                return lines


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A fresh temporary directory the `postgres` user can traverse.

    pytest's tmp_path lives under a mode-0700 directory of ours; when the tests run
    as root, PostgreSQL runs as `postgres` and could not reach a data directory there.
    """
    path = Path(tempfile.mkdtemp(prefix="pgproxy-cli-test-")).resolve()
    path.chmod(0o755)
    try:
        yield path
    finally:
        kill_postmasters_in(path)
        shutil.rmtree(path, ignore_errors=True)


# -- pgproxy demo -------------------------------------------------------------------------------


class Demo:
    """A running `pgproxy demo`: its process, its KEY=value lines and where its stderr goes."""

    def __init__(self, proc: subprocess.Popen[str], lines: list[str], stderr_file: Path) -> None:
        self.proc = proc
        self.lines = lines
        self.stderr_file = stderr_file
        self.values = dict(line.split("=", 1) for line in lines if "=" in line)

    @property
    def config(self) -> Path:
        return Path(self.values["CONFIG"])

    @property
    def proxy_port(self) -> int:
        port = urlsplit(self.values["DATABASE_URL"]).port
        assert port is not None
        return port

    @property
    def upstream_port(self) -> int:
        port = urlsplit(self.values["UPSTREAM_URL"]).port
        assert port is not None
        return port

    def stderr(self) -> str:
        return self.stderr_file.read_text(errors="replace")


@contextlib.contextmanager
def running_demo(tmp_path: Path, *args: str) -> Iterator[Demo]:
    """Start `pgproxy demo --port 0 *args`, wait for READY; kill what is left on the way out."""
    stderr_file = tmp_path / "demo.stderr"
    with stderr_file.open("w") as stderr:
        proc = subprocess.Popen(
            [*pgproxy_command(), "demo", "--port", "0", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True,
            env=clean_env(), cwd=tmp_path, start_new_session=True,
        )
    assert proc.stdout is not None
    demo_dirs: list[Path] = []
    try:
        try:
            lines = LineReader(proc.stdout).until("READY", READY_TIMEOUT)
        except (TimeoutError, EOFError) as exc:
            reap(proc)
            pytest.fail(f"pgproxy demo did not get READY (exit code {proc.poll()}): {exc}\n"
                        f"stderr:\n{stderr_file.read_text(errors='replace')}")
        demo = Demo(proc, lines, stderr_file)
        if "CONFIG" in demo.values:
            demo_dirs.append(demo.config.parent)
        yield demo
    finally:
        reap(proc)
        for directory in demo_dirs:  # only left over when the test failed
            kill_postmasters_in(directory)
            if directory.name.startswith("pgproxy-demo-"):
                shutil.rmtree(directory, ignore_errors=True)


def check_demo_output(demo: Demo) -> None:
    keys = [line.split("=", 1)[0] for line in demo.lines if "=" in line]
    assert [key for key in keys if key in DEMO_KEYS] == list(DEMO_KEYS), demo.lines
    assert demo.lines[-1] == "READY"
    assert all(value for value in demo.values.values()), demo.lines
    assert demo.values["AGENT_TOKEN"] in demo.values["DATABASE_URL"]


def check_demo_works(demo: Demo) -> None:
    """The agent's URL, used as printed, reaches the demo data; the config is a valid config."""
    with psycopg.connect(demo.values["DATABASE_URL"], connect_timeout=10) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (5000,)
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (1000,)
    # The reviewer's token opens the approvals API; the agent's does not.
    import urllib.error
    import urllib.request

    for token, expected in ((demo.values["REVIEWER_TOKEN"], 200), (demo.values["AGENT_TOKEN"], 401)):
        request = urllib.request.Request(f"{demo.values['APPROVALS_URL']}/api/approvals?status=pending",
                                         headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status == expected
    # The page's demo sign-in hands out the reviewer's token only for the code printed on the
    # terminal: not for the agent's token, nothing, or a guess (an agent cannot approve itself).
    login = f"{demo.values['APPROVALS_URL']}/api/demo-login"
    with urllib.request.urlopen(login, timeout=10) as response:
        assert json.loads(response.read()) == {"enabled": True}
    for code, expected in ((demo.values["AGENT_TOKEN"], 403), ("", 403), (None, 403),
                           (demo.values["DEMO_LOGIN_CODE"] + "0", 403), (demo.values["DEMO_LOGIN_CODE"], 200)):
        request = urllib.request.Request(login, data=json.dumps({"code": code}).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, body = response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            status, body = exc.code, json.loads(exc.read())
        assert status == expected, (code, body)
        assert ("token" in body) == (expected == 200)
    assert body["token"] == demo.values["REVIEWER_TOKEN"]
    assert demo.config.is_file()
    config = load_config(demo.config)  # what `pgproxy run --config` loads
    route = config.routes["app"]
    assert (route.host, route.port) == ("127.0.0.1", demo.upstream_port)
    assert route.password is not None and route.password in demo.values["UPSTREAM_URL"]


def check_demo_stopped(demo: Demo, exit_code: int) -> None:
    """Exit 0; neither the proxy nor PostgreSQL listens; no PostgreSQL of the demo is left."""
    assert exit_code == 0, f"exit code {exit_code}; stderr:\n{demo.stderr()}"
    assert not accepts(demo.proxy_port), "the proxy still accepts connections"
    assert not accepts(demo.upstream_port), "the demo's PostgreSQL still accepts connections"
    assert postmasters_in(demo.config.parent) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_serves_the_demo_data_and_removes_everything_on_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    with running_demo(tmp_path) as demo:
        check_demo_output(demo)
        check_demo_works(demo)
        exit_code = stop(demo.proc, sig)
        check_demo_stopped(demo, exit_code)
        assert not demo.config.parent.exists(), "the demo's temporary directory is left behind"


@pytest.mark.parametrize("exists", [False, True], ids=["new-dir", "existing-dir"])
def test_demo_with_data_dir_removes_its_files_on_signal(
    tmp_path: Path, open_tmp: Path, exists: bool
) -> None:
    data_dir = open_tmp / "demo"
    if exists:
        data_dir.mkdir()
        (data_dir / "notes.txt").write_text("the user's own file\n")
    with running_demo(tmp_path, "--data-dir", str(data_dir)) as demo:
        check_demo_output(demo)
        assert demo.config.parent == data_dir
        assert (data_dir / "postgres").is_dir()
        check_demo_works(demo)
        exit_code = stop(demo.proc, signal.SIGTERM)
        check_demo_stopped(demo, exit_code)
    if exists:
        # What the demo wrote is gone; what the user had there stays.
        assert sorted(p.name for p in data_dir.iterdir()) == ["notes.txt"]
    else:
        assert not data_dir.exists(), f"left behind: {sorted(map(str, data_dir.rglob('*')))}"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_interrupted_while_starting_leaves_nothing_behind(
    tmp_path: Path, open_tmp: Path, sig: signal.Signals
) -> None:
    """A user who gives up while PostgreSQL is starting gets back a clean machine."""
    # The demo's temporary directory is made in TMPDIR: here, so the test can watch it.
    stderr_file = tmp_path / "demo.stderr"
    with stderr_file.open("w") as stderr:
        proc = subprocess.Popen(
            [*pgproxy_command(), "demo", "--port", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
            env=clean_env(TMPDIR=str(open_tmp)), cwd=tmp_path, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not postmasters_in(open_tmp):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the demo's PostgreSQL never started (exit code {proc.poll()}); "
                            f"stderr:\n{stderr_file.read_text(errors='replace')}")
            time.sleep(0.01)
        exit_code = stop(proc, sig)  # PostgreSQL runs; the demo data is still loading
        left = postmasters_in(open_tmp)
        assert left == [], f"exit code {exit_code}; PostgreSQL left running: {left}"
        assert list(open_tmp.iterdir()) == [], f"exit code {exit_code}; files left behind"
        assert exit_code != 0
    finally:
        reap(proc)


# -- pgproxy run --config -----------------------------------------------------------------------


def run_config_yaml(pg: PostgresCluster, port: int) -> str:
    return f"""\
listen:
  host: 127.0.0.1
  port: {port}
auth:
  allow_cleartext_on_loopback: true
  jwt:
    algorithms: [HS256]
    secret_env: {JWT_SECRET_ENV}
    issuer: {JWT_ISSUER}
    audience: {JWT_AUDIENCE}
routes:
  {DATABASE}:
    host: {pg.host}
    port: {pg.port}
    user: app_scram
    password_env: {UPSTREAM_PASSWORD_ENV}
"""


@contextlib.contextmanager
def running_proxy_process(pg: PostgresCluster, tmp_path: Path
                          ) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """`pgproxy run --config FILE` listening on a free port: (process, port, stderr file)."""
    env = clean_env(**{UPSTREAM_PASSWORD_ENV: UPSTREAM_USERS["app_scram"][0],
                       JWT_SECRET_ENV: JWT_SECRET})
    config_file = tmp_path / "pgproxy.yaml"
    stderr_file = tmp_path / "run.stderr"
    for _ in range(3):  # free_port() races with other processes: try another port if it was taken
        port = free_port()
        config_file.write_text(run_config_yaml(pg, port))
        with stderr_file.open("w") as stderr:
            proc = subprocess.Popen(
                [*pgproxy_command(), "run", "--config", str(config_file)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                env=env, cwd=tmp_path, start_new_session=True,
            )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not accepts(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            else:
                yield proc, port, stderr_file
                return
            reap(proc)
            errors = stderr_file.read_text(errors="replace")
            if "cannot listen" not in errors:
                pytest.fail(f"pgproxy run did not listen on {port} within {START_TIMEOUT:.0f} s "
                            f"(exit code {proc.returncode}); stderr:\n{errors}")
        finally:
            reap(proc)
    pytest.fail("pgproxy run found no free port in 3 attempts")


def test_run_config_serves_agents_logs_json_and_stops_on_sigterm(
    pg: PostgresCluster, tmp_path: Path
) -> None:
    token = make_token("agent")
    with running_proxy_process(pg, tmp_path) as (proc, port, stderr_file):
        with psycopg.connect(host="127.0.0.1", port=port, user="agent", password=token,
                             dbname=DATABASE, sslmode="disable", connect_timeout=10) as conn:
            assert conn.execute("SELECT count(*) FROM customers").fetchone() == (1000,)
        exit_code = stop(proc, signal.SIGTERM)
        stderr = stderr_file.read_text(errors="replace")
        assert exit_code == 0, f"exit code {exit_code}; stderr:\n{stderr}"
        assert not accepts(port)

    records: list[dict[str, Any]] = []
    for line in stderr.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"a stderr line is not JSON: {line!r}")
        assert isinstance(record, dict) and isinstance(record.get("event"), str), line
        records.append(record)
    # The agent's session (not the port probes before it): every record says who and where.
    ours = {r["session"] for r in records if "session" in r and r.get("agent") == "agent"}
    assert len(ours) == 1, f"expected one session of agent 'agent' in:\n{stderr}"
    session_records = [r for r in records if r.get("session") in ours]
    assert {r["event"] for r in session_records} >= {"authenticated", "session closed"}, stderr
    for record in session_records:
        assert (record.get("agent"), record.get("database")) == ("agent", DATABASE), record
    for secret in (token, UPSTREAM_USERS["app_scram"][0], JWT_SECRET):
        assert secret not in stderr, "a secret appears in the logs"


def test_log_lines_stay_small_whatever_clients_send(pg: PostgresCluster, tmp_path: Path) -> None:
    """A user name, a database and an application name of thousands of characters (refused and
    accepted logins): every stderr line stays small, each long value is cut with its length and hash."""
    long_user, long_app = "u" * 3000, "a" * 3000
    with running_proxy_process(pg, tmp_path) as (proc, port, stderr_file):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(host="127.0.0.1", port=port, user=long_user, password="x", dbname="d" * 3000,
                            sslmode="disable", connect_timeout=10).close()
        with psycopg.connect(host="127.0.0.1", port=port, user="agent", password=make_token("agent"),
                             dbname=DATABASE, sslmode="disable", application_name=long_app,
                             connect_timeout=10) as conn:
            conn.execute("SELECT 1")
        assert stop(proc, signal.SIGTERM) == 0
    stderr = stderr_file.read_text(errors="replace")
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert max(len(line) for line in stderr.splitlines()) < 4096
    shown = json.dumps(lines, ensure_ascii=False)
    assert long_user not in shown and "d" * 600 not in shown
    assert f"…[3000 chars, sha256:{hashlib.sha256(long_user.encode()).hexdigest()}]" in shown


def test_log_fields_are_bounded() -> None:
    from pgproxy.logs import FIELD_CHARS, FIELD_ITEMS, bounded_field

    assert bounded_field("x" * FIELD_CHARS) == "x" * FIELD_CHARS
    assert bounded_field("x" * 5000).startswith("x" * FIELD_CHARS + "…[5000 chars, sha256:")
    many = bounded_field(["y" * 5000] * 100)
    assert len(many) == FIELD_ITEMS + 1 and many[-1] == f"…{100 - FIELD_ITEMS} more"
    assert bounded_field({"k" * 5000: 1})[next(iter(bounded_field({"k" * 5000: 1})))] == 1
    assert bounded_field(3) == 3 and bounded_field(None) is None
    assert len(bounded_field(Path("p" * 5000))) < FIELD_CHARS + 100


# -- configuration errors -----------------------------------------------------------------------


def run_pgproxy(*args: str, cwd: Path, input_text: str | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*pgproxy_command(), *args], input=input_text,
                          stdin=None if input_text is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, cwd=cwd, env=env or clean_env(),
                          timeout=60, check=False)


def test_run_with_invalid_config_names_file_line_and_key(tmp_path: Path) -> None:
    text = (
        "auth:\n"
        "  allow_cleartext_on_loopback: true\n"
        "  jwt:\n"
        f"    secret_env: {JWT_SECRET_ENV}\n"
        "routes: {app: {host: x, port: abc, user: u}}\n"
    )
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "port: abc" in row)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = run_pgproxy("run", "--config", str(bad), cwd=tmp_path,
                         env=clean_env(**{JWT_SECRET_ENV: JWT_SECRET}))
    assert result.returncode != 0
    assert f"{bad}:{line}:" in result.stderr
    assert "routes.app.port" in result.stderr and "'abc'" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_run_with_missing_config_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    result = run_pgproxy("run", "--config", str(missing), cwd=tmp_path)
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert "cannot read config" in result.stderr and "No such file" in result.stderr
    assert "Traceback" not in result.stderr


# -- pgproxy scram-secret -----------------------------------------------------------------------


def test_scram_secret_from_stdin_is_a_valid_verifier_for_the_password(tmp_path: Path) -> None:
    password = "correct horse battery staple"
    result = run_pgproxy("scram-secret", "--iterations", "5000", cwd=tmp_path,
                         input_text=password + "\n")
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout + result.stderr
    secret_text = result.stdout.strip()
    assert len(result.stdout.splitlines()) == 1
    secret = parse_scram_secret(secret_text)
    assert secret.iterations == 5000
    # RFC 5802: the verifier is derived from the password, as PostgreSQL stores it.
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), secret.salt, secret.iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert secret.stored_key == hashlib.sha256(client_key).digest()
    assert secret.server_key == hmac.new(salted, b"Server Key", hashlib.sha256).digest()


def test_scram_secret_refuses_an_empty_password(tmp_path: Path) -> None:
    result = run_pgproxy("scram-secret", cwd=tmp_path, input_text="\n")
    assert result.returncode != 0
    assert result.stdout == ""
    assert "empty password" in result.stderr
