"""The configuration: typed, frozen values and the YAML loader that validates them.

Every error names the file, the line and the dotted key, e.g.
``pgproxy.yaml:14: routes.app.port: expected an integer from 1 to 65535, got 'abc'``.
"""

from __future__ import annotations

import datetime
import difflib
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml

from pgproxy.analysis.model import Flag, Kind
from pgproxy.approvals.http import HttpLimits
from pgproxy.approvals.notify import SLACK_API, NotifierConfig
from pgproxy.masking import DEFAULT_TAG_MASKS, MaskKind, MaskRules
from pgproxy.names import canonical, invisible
from pgproxy.policy import Action, HoldMode, Policy, Rule
from pgproxy.wire.scram import parse_scram_secret


class ConfigError(Exception):
    """The config file is unreadable or invalid; str() is the message for the user."""


class Mode(StrEnum):
    PASSTHROUGH = "passthrough"  # forward every statement unanalysed (the benchmarks' baseline)
    ENFORCE = "enforce"  # analyse and apply the policy
    # Analyse, decide and audit exactly as enforce does, but hold and deny nothing the policy
    # decides (for rolling a policy out on real traffic); pgproxy's own integrity checks still refuse.
    OBSERVE = "observe"


class SslMode(StrEnum):
    DISABLE = "disable"
    REQUIRE = "require"
    VERIFY_FULL = "verify-full"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 6432
    tls: TlsConfig | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int = 64 * 1024 * 1024
    max_startup_packet_bytes: int = 10_000
    max_buffered_bytes: int = 1024 * 1024  # per direction per session, before back-pressure
    max_connections: int = 1000
    auth_timeout_seconds: float = 30.0
    idle_timeout_seconds: float = 0.0  # 0 = off (as PostgreSQL's idle_session_timeout)


@dataclass(frozen=True, slots=True)
class JwtConfig:
    algorithms: tuple[str, ...]
    secret: str | None = field(default=None, repr=False)  # HS*, from secret_env / secret_file
    public_key: str | None = None  # PEM for RS256 / ES256, read from public_key_file
    jwks_url: str | None = None  # OIDC issuer's JWKS endpoint
    issuer: str | None = None
    audience: str | None = None
    agent_claim: str = "sub"
    groups_claim: str = "groups"
    leeway_seconds: float = 30.0
    require_user_match: bool = True  # the startup user must equal the agent id


@dataclass(frozen=True, slots=True)
class StaticAgent:
    id: str
    scram_secret: str = field(repr=False)  # "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>"
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class AuthConfig:
    jwt: JwtConfig | None = None
    agents: tuple[StaticAgent, ...] = ()
    allow_cleartext_on_loopback: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """Where agents' connections to one database name go."""

    name: str  # the database name agents ask for
    host: str
    port: int
    dbname: str
    user: str
    password: str | None = field(default=None, repr=False)  # from password_env / password_file
    sslmode: SslMode = SslMode.DISABLE
    sslrootcert: Path | None = None
    connect_timeout_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"


@dataclass(frozen=True, slots=True)
class AnalysisConfig:
    max_statement_bytes: int = 128 * 1024  # larger statements are not parsed at all
    oversized_action: Action = Action.REVIEW  # what such a statement gets: review or deny
    allowed_functions: frozenset[str] = frozenset()  # user functions/procedures that may run unreviewed
    cache_entries: int = 10_000
    cache_bytes: int = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    """Run-time sampling (pgproxy.sampling): values of untagged text columns in the results of
    allowed statements, classified off the hot path; PII found is a `pii.detected` audit event."""

    enabled: bool = False  # off: nothing is sampled and no worker process runs
    results_per_second: float = 1.0  # at most this many results sampled per second, across all sessions
    rows_per_result: int = 10  # the first rows of a sampled result are copied
    max_value_bytes: int = 1000  # each value copied is cut to this many bytes
    queue_samples: int = 256  # samples waiting for the classifier; beyond it new ones are dropped (counted)


@dataclass(frozen=True, slots=True)
class SlackReviewer:
    """Who a Slack user is to pgproxy: a reviewer name and the reviewer groups they are in (only those)."""

    name: str
    groups: frozenset[str]


@dataclass(frozen=True, slots=True)
class ApprovalsConfig:
    """Holding statements for review: where reviewers decide, and how decisions are checked."""

    signing_key: str = field(repr=False)  # signs the decisions the proxy stores (HS256)
    reviewer_jwt: JwtConfig
    reviewer_groups: frozenset[str] = frozenset({"reviewers"})
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""  # the base of links in notices; default http://host:port
    store: Path = Path("pgproxy-approvals.sqlite3")
    timeout_seconds: float = 300.0
    hold_mode: HoldMode = HoldMode.WAIT  # a rule's hold_mode overrides it
    # Retry mode: how long after its approval the identical statement may run (once), and how
    # long after a denial or expiry running it again gets that answer instead of a new request.
    retry_window_seconds: float = 600.0
    decision_token_jwt: JwtConfig | None = None  # outside approval systems' self-contained decisions
    # Demos only: the reviewer token the page hands out to whoever types the code printed on the
    # demo's terminal (never to what an agent holds: its token, the approval link).
    demo_login_token: str | None = field(default=None, repr=False)
    demo_login_code: str | None = field(default=None, repr=False)
    notifiers: tuple[NotifierConfig, ...] = ()
    slack_signing_secret: str | None = field(default=None, repr=False)  # Slack interactivity
    slack_users: dict[str, SlackReviewer] = field(default_factory=dict)  # by Slack user id
    sso_header: str | None = None  # a header an SSO proxy in front sets to the reviewer's token
    http: HttpLimits = field(default_factory=HttpLimits)  # the web app's connections: how many, how slow, how large
    # The EXPLAIN preview of a held statement (pgproxy.approvals.preview): its time limit; 0: none.
    explain_timeout_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """The audit log: a hash-chained record of every decision, written in batches off the hot path."""

    signing_key: str = field(repr=False)  # signs the chain's head (HS256); the approvals key by default
    store: Path = Path("pgproxy-approvals.sqlite3")
    full_statements: bool = False  # record statements with their literals (which can be PII)
    retention_days: float = 0  # 0: keep every event
    queue_events: int = 10_000  # events waiting for the writer; beyond it new statements wait
    batch_events: int = 256  # events per write (each write holds up the event loop about 1 ms)
    flush_interval_seconds: float = 0.2  # the longest an event waits before it is written
    sign_interval_seconds: float = 10.0  # how often the head of the chain is signed
    queue_full_wait_seconds: float = 5.0  # a statement waits this long for room, then is refused
    # Events unauthenticated clients cause (refused logins, refused decisions): this many per
    # interval are recorded one by one, the rest as one aggregated event of exact counts.
    unauthenticated_events_per_interval: int = 60
    unauthenticated_interval_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class Config:
    source: Path | None
    routes: dict[str, Route]
    listen: ListenConfig = ListenConfig()
    mode: Mode = Mode.PASSTHROUGH
    limits: Limits = Limits()
    auth: AuthConfig = AuthConfig()
    logging: LoggingConfig = LoggingConfig()
    catalog: Path | None = None  # the tags file (enforce mode)
    recognizers: Path | None = None  # custom PII recognizers (classifiers.custom) for `pgproxy scan`
    analysis: AnalysisConfig = AnalysisConfig()
    policy: Policy = field(default_factory=Policy)
    approvals: ApprovalsConfig | None = None  # None: statements that need review are refused
    audit: AuditConfig | None = None  # None: no audit log (without approvals, unless configured)
    masking: MaskRules = field(default_factory=MaskRules)  # the masks of tagged columns (action mask)
    sampling: SamplingConfig = SamplingConfig()  # run-time PII sampling of results (pgproxy.sampling)


def read_yaml(path: Path, what: str, expected: str) -> yaml.Node:
    """The composed YAML of a file (with line marks), or a ConfigError naming file and line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 text") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_error(path, text, e)) from None
    if root is None:
        raise ConfigError(f"{path}: {what} is empty; expected {expected}")
    return root


def load_config(path: Path) -> Config:
    """Read and validate a YAML config file; raise ConfigError naming file, line and key.

    Relative paths inside the file are taken relative to the file's directory, and
    secrets named by ``*_env`` / ``*_file`` keys are resolved here, so a Config that
    loaded is ready to use::

        config = load_config(Path("pgproxy.yaml"))
        config.routes["app"].password   # read from the route's password_env / password_file
    """
    root = read_yaml(path, "config", "a mapping with 'auth' and 'routes'")
    at = _At(root, "", root.start_mark.line + 1)
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            f"{path}:{at.line}: expected a mapping of settings at the top level, "
            f"got {_describe(root)}"
        )
    return _Loader(path).config(at)


# Loading, in three layers: _At carries a node with the dotted key and line that
# errors name; _Loader's typed readers (string, integer, file, ...) check one value
# each; its section readers (listen, jwt, route, ...) map one mapping onto one
# dataclass. An error is raised at the first problem found.

_JWT_ALGORITHMS = (
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256",
)
_JWT_KEY_SOURCES = ("secret_env", "secret_file", "public_key_file", "jwks_url")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_SLACK_USER_ID = re.compile(r"[A-Z0-9]{2,32}")
_SLACK_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{2,32}")
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class _At:
    """A YAML node, with the dotted key and the 1-based line that errors about it name."""

    node: yaml.Node
    key: str
    line: int


class _Loader:
    def __init__(self, source: Path) -> None:
        self._source = source
        self._base = source.absolute().parent
        self._constructor = yaml.constructor.SafeConstructor()

    def fail(self, at: _At, problem: str) -> NoReturn:
        where = f"{self._source}:{at.line}"
        raise ConfigError(f"{where}: {at.key}: {problem}" if at.key else f"{where}: {problem}")

    # -- structure --------------------------------------------------------------

    def entries(self, at: _At) -> dict[str, _At]:
        """A mapping's entries by key, in file order; '<<' merge keys are expanded."""
        node = at.node
        if not isinstance(node, yaml.MappingNode):
            self.fail(at, f"expected a mapping, got {self.describe(at)}")
        if node.tag != _MAP_TAG:
            self.fail(at, f"unsupported YAML tag {node.tag!r}")
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                got = _describe(self.value(_At(key_node, at.key, line)))
                self.fail(_At(key_node, at.key, line), f"keys must be text, got {got}")
            if key_node.value in seen:
                self.fail(
                    _At(key_node, _join(at.key, key_node.value), line),
                    f"duplicate key (first at line {seen[key_node.value]})",
                )
            seen[key_node.value] = line
        try:
            self._constructor.flatten_mapping(node)
        except yaml.MarkedYAMLError as e:
            self.fail(at, f"cannot merge: {e.problem}")
        # Merged entries come first, so the mapping's own keys override them.
        return {
            k.value: _At(v, _join(at.key, k.value), k.start_mark.line + 1) for k, v in node.value
        }

    def mapping(
        self, at: _At, allowed: Sequence[str], required: Sequence[str] = ()
    ) -> dict[str, _At]:
        """A mapping with a fixed set of keys: unknown keys and missing required keys fail."""
        found = self.entries(at)
        for name, child in found.items():
            if name not in allowed:
                hint = _suggest(name, allowed, allowed_list=True)
                self.fail(child, f"unknown key {name!r}{hint}")
        for name in required:
            if name not in found:
                self.fail(_At(at.node, _join(at.key, name), at.line), "required key is missing")
        return found

    def items(self, at: _At) -> list[_At]:
        node = at.node
        if not isinstance(node, yaml.SequenceNode):
            self.fail(at, f"expected a list, got {self.describe(at)}")
        if node.tag != _SEQ_TAG:
            self.fail(at, f"unsupported YAML tag {node.tag!r}")
        return [_At(n, f"{at.key}[{i}]", n.start_mark.line + 1) for i, n in enumerate(node.value)]

    def at_most_one(self, found: dict[str, _At], names: Sequence[str]) -> str | None:
        """Which of several mutually exclusive keys is given, if any."""
        given = [name for name in found if name in names]
        if len(given) > 1:
            self.fail(found[given[1]], f"cannot be combined with {given[0]}; set only one of them")
        return given[0] if given else None

    def exactly_one(self, at: _At, found: dict[str, _At], names: Sequence[str]) -> str:
        """Which of several mutually exclusive keys is given; one of them must be."""
        given = self.at_most_one(found, names)
        if given is None:
            self.fail(at, f"needs one of {_or(names)}")
        return given

    # -- scalars ----------------------------------------------------------------

    def value(self, at: _At) -> object:
        """A scalar's Python value; a mapping or list comes back as its node."""
        if not isinstance(at.node, yaml.ScalarNode):
            return at.node
        try:
            return self._constructor.construct_object(at.node)
        except yaml.constructor.ConstructorError as e:
            self.fail(at, f"unsupported YAML value: {e.problem}")
        except ValueError:  # e.g. an integer longer than Python converts
            self.fail(at, "unsupported YAML value")

    def describe(self, at: _At, *, secret: bool = False) -> str:
        return _describe(self.value(at), secret=secret)

    def string(self, at: _At, *, secret: bool = False) -> str:
        value = self.value(at)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, bool | int | float | bytes | datetime.date) and not secret:
            # YAML read a plain word as another type: user: no, dbname: 2024-01-01.
            self.fail(at, f"expected a string, got {_describe(value)}; quote it to make it text")
        self.fail(at, f"expected a non-empty string, got {_describe(value, secret=secret)}")

    def name(self, at: _At) -> str:
        """An identity or group name: text without invisible or control characters."""
        value = self.string(at)
        hidden = invisible(value)
        if hidden is not None:
            self.fail(at, f"{_describe(value)} contains an invisible or control character ({hidden}); "
                          "names that look alike must be alike")
        return value

    def names(self, at: _At) -> list[str]:
        return [self.name(item) for item in self.items(at)]

    def integer(self, at: _At, low: int, high: int | None = None) -> int:
        value = self.value(at)
        number = value if isinstance(value, int) and not isinstance(value, bool) else None
        if number is not None and low <= number and (high is None or number <= high):
            return number
        wanted = f"from {low} to {high}" if high is not None else f"of at least {low}"
        self.fail(at, f"expected an integer {wanted}, got {_describe(value)}")

    def number(self, at: _At, low: float, *, inclusive: bool) -> float:
        value = self.value(at)
        number = _as_float(value)
        if math.isfinite(number) and (number > low or (inclusive and number == low)):
            return number
        wanted = f"of at least {low:g}" if inclusive else f"greater than {low:g}"
        self.fail(at, f"expected a number {wanted}, got {_describe(value)}")

    def boolean(self, at: _At) -> bool:
        value = self.value(at)
        if isinstance(value, bool):
            return value
        self.fail(at, f"expected true or false, got {_describe(value)}")

    def choice(self, at: _At, choices: Sequence[str]) -> str:
        value = self.value(at)
        if isinstance(value, str) and value in choices:
            return value
        hint = _suggest(value, choices) if isinstance(value, str) else ""
        self.fail(at, f"expected one of {', '.join(choices)}; got {_describe(value)}{hint}")

    # -- files and the environment ---------------------------------------------

    def file(self, at: _At) -> Path:
        """An existing file; relative to the config file's directory unless absolute."""
        path = self._base / Path(self.string(at)).expanduser()
        if not path.exists():
            self.fail(at, f"no such file: {path}")
        if not path.is_file():
            self.fail(at, f"not a regular file: {path}")
        return path

    def secret(self, found: dict[str, _At], source: str) -> str:
        """A key or secret from `<name>_env` (an environment variable) or `<name>_file` (trimmed)."""
        return self.env(found[source]) if source.endswith("_env") else self.read(found[source]).strip()

    def read(self, at: _At) -> str:
        """The text of the file named at `at`, without its trailing newline."""
        path = self.file(at)
        try:
            text = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            self.fail(at, f"cannot read {path}: {e.strerror or e}")
        except UnicodeDecodeError:
            self.fail(at, f"cannot read {path}: not UTF-8 text")
        if not text:
            self.fail(at, f"{path} is empty")
        return text

    def env(self, at: _At) -> str:
        """The value of the environment variable named at `at` (never quoted in errors)."""
        name = self.string(at, secret=True)
        if not _ENV_NAME.fullmatch(name):
            # Most likely the secret itself was pasted here, so do not repeat it.
            self.fail(at, "expected the name of an environment variable (letters, digits, _)")
        value = os.environ.get(name)
        if value is None:
            self.fail(at, f"environment variable {name} is not set")
        if not value:
            self.fail(at, f"environment variable {name} is empty")
        return value

    # -- sections ---------------------------------------------------------------

    def config(self, at: _At) -> Config:
        found = self.mapping(
            at, ("mode", "listen", "limits", "auth", "routes", "logging", "catalog", "analysis", "policy",
                 "approvals", "audit", "recognizers", "masking", "sampling"),
            required=("routes",),
        )
        if "auth" not in found:
            self.fail(
                _At(at.node, "auth", at.line),
                "required key is missing; without auth.jwt or auth.agents no agent can log in",
            )
        modes = [mode.value for mode in Mode]
        mode = Mode(_opt(found, "mode", lambda at: self.choice(at, modes), "passthrough"))
        approvals = _opt(found, "approvals", self.approvals, None)
        audit = self.audit(found["audit"], approvals) if "audit" in found \
            else AuditConfig(signing_key=approvals.signing_key, store=approvals.store) if approvals is not None \
            else None
        if mode is Mode.OBSERVE and audit is None:
            self.fail(found["mode"], "observe mode records what it would hold or deny only in the audit log, "
                                     "and there is none: add an audit section (or approvals)")
        policy = _opt(found, "policy", lambda a: self.policy(a, audited=audit is not None), Policy())
        if mode is Mode.OBSERVE:
            policy = replace(policy, observe=True, version="")  # a new version: cached decisions differ
        sampling = _opt(found, "sampling", self.sampling, SamplingConfig())
        if sampling.enabled and mode is Mode.PASSTHROUGH:
            self.fail(found["sampling"], "sampling needs the schema pgproxy reads in enforce or observe mode (to "
                                         "know which column a value is from); pass-through mode reads none")
        if sampling.enabled and audit is None:
            self.fail(found["sampling"], "sampling reports what it finds as pii.detected events in the audit log, "
                                         "and there is none: add an audit section (or approvals)")
        return Config(
            source=self._source,
            mode=mode,
            listen=_opt(found, "listen", self.listen, ListenConfig()),
            limits=_opt(found, "limits", self.limits, Limits()),
            auth=self.auth(found["auth"]),
            routes=self.routes(found["routes"]),
            logging=_opt(found, "logging", self.logging, LoggingConfig()),
            catalog=_opt(found, "catalog", self.file, None),
            recognizers=_opt(found, "recognizers", self.file, None),
            analysis=_opt(found, "analysis", self.analysis, AnalysisConfig()),
            policy=policy,
            approvals=approvals,
            audit=audit,
            masking=_opt(found, "masking", self.masking, MaskRules()),
            sampling=sampling,
        )

    def listen(self, at: _At) -> ListenConfig:
        found = self.mapping(at, ("host", "port", "tls"))
        default = ListenConfig()
        return ListenConfig(
            host=_opt(found, "host", self.string, default.host),
            # 0 asks the OS for a free port (tests, demos).
            port=_opt(found, "port", lambda at: self.integer(at, 0, 65535), default.port),
            tls=_opt(found, "tls", self.tls, None),
        )

    def tls(self, at: _At) -> TlsConfig:
        found = self.mapping(at, ("cert_file", "key_file"), required=("cert_file", "key_file"))
        return TlsConfig(
            cert_file=self.file(found["cert_file"]), key_file=self.file(found["key_file"])
        )

    def limits(self, at: _At) -> Limits:
        found = self.mapping(at, [limit.name for limit in fields(Limits)])
        defaults = Limits()

        def integer(name: str, default: int, low: int, high: int | None = None) -> int:
            return _opt(found, name, lambda at: self.integer(at, low, high), default)

        def seconds(name: str, default: float, *, inclusive: bool) -> float:
            return _opt(found, name, lambda at: self.number(at, 0, inclusive=inclusive), default)

        return Limits(
            # 1073741823 (1 GB - 1) is PostgreSQL's own cap on one allocation (MaxAllocSize).
            max_message_bytes=integer(
                "max_message_bytes", defaults.max_message_bytes, 1024, 1073741823
            ),
            max_startup_packet_bytes=integer(
                "max_startup_packet_bytes", defaults.max_startup_packet_bytes, 256, 1048576
            ),
            max_buffered_bytes=integer("max_buffered_bytes", defaults.max_buffered_bytes, 8192),
            max_connections=integer("max_connections", defaults.max_connections, 1),
            auth_timeout_seconds=seconds(
                "auth_timeout_seconds", defaults.auth_timeout_seconds, inclusive=False
            ),
            idle_timeout_seconds=seconds(  # 0 = off
                "idle_timeout_seconds", defaults.idle_timeout_seconds, inclusive=True
            ),
        )

    def auth(self, at: _At) -> AuthConfig:
        found = self.mapping(at, ("allow_cleartext_on_loopback", "jwt", "agents"))
        jwt = _opt(found, "jwt", self.jwt, None)
        agents: tuple[StaticAgent, ...] = _opt(found, "agents", self.agents, ())
        if jwt is None and not agents:
            self.fail(at, "needs jwt or agents; otherwise no agent can log in")
        return AuthConfig(
            jwt=jwt,
            agents=agents,
            allow_cleartext_on_loopback=_opt(
                found, "allow_cleartext_on_loopback", self.boolean, False
            ),
        )

    def jwt(self, at: _At) -> JwtConfig:
        found = self.mapping(at, (
            "algorithms", *_JWT_KEY_SOURCES, "issuer", "audience", "agent_claim",
            "groups_claim", "leeway_seconds", "require_user_match",
        ))
        source = self.exactly_one(at, found, _JWT_KEY_SOURCES)
        secret = public_key = jwks_url = None
        if source == "secret_env":
            secret = self.env(found[source])
        elif source == "secret_file":
            secret = self.read(found[source])
        elif source == "public_key_file":
            public_key = self.read(found[source])
            if "-----BEGIN " not in public_key:
                self.fail(found[source], "expected a PEM file (-----BEGIN PUBLIC KEY-----)")
        else:
            jwks_url = self.string(found[source])
            if not jwks_url.startswith(("https://", "http://")):
                self.fail(found[source], f"expected an http:// or https:// URL, got {jwks_url!r}")
        symmetric = secret is not None
        default = JwtConfig(algorithms=("HS256",) if symmetric else ("RS256", "ES256"))
        return JwtConfig(
            algorithms=_opt(
                found, "algorithms",
                lambda at: self.algorithms(at, source, symmetric=symmetric), default.algorithms,
            ),
            secret=secret,
            public_key=public_key,
            jwks_url=jwks_url,
            issuer=_opt(found, "issuer", self.string, None),
            audience=_opt(found, "audience", self.string, None),
            agent_claim=_opt(found, "agent_claim", self.string, default.agent_claim),
            groups_claim=_opt(found, "groups_claim", self.string, default.groups_claim),
            leeway_seconds=_opt(
                found, "leeway_seconds", lambda at: self.number(at, 0, inclusive=True),
                default.leeway_seconds,
            ),
            require_user_match=_opt(
                found, "require_user_match", self.boolean, default.require_user_match
            ),
        )

    def algorithms(self, at: _At, source: str, *, symmetric: bool) -> tuple[str, ...]:
        items = self.items(at)
        if not items:
            self.fail(at, "needs at least one algorithm")
        algorithms: list[str] = []
        for item in items:
            name = self.choice(item, _JWT_ALGORITHMS)
            # A key must never work with the other family of algorithms: a public
            # key accepted as an HMAC secret lets anyone who has it sign tokens.
            if name.startswith("HS") != symmetric:
                needs = "secret_env or secret_file" if name.startswith("HS") else (
                    "public_key_file or jwks_url"
                )
                self.fail(item, f"{name} needs {needs}, but the key comes from {source}")
            if name in algorithms:
                self.fail(item, f"{name} is listed twice")
            algorithms.append(name)
        return tuple(algorithms)

    def agents(self, at: _At) -> tuple[StaticAgent, ...]:
        id_lines: dict[str, tuple[int, str]] = {}
        return tuple(self.agent(item, id_lines) for item in self.items(at))

    def agent(self, at: _At, id_lines: dict[str, tuple[int, str]]) -> StaticAgent:
        """One static agent; `id_lines` maps the ids read so far (canonical) to their lines and spelling."""
        sources = ("scram_secret", "scram_secret_env", "scram_secret_file")
        found = self.mapping(at, ("id", *sources, "groups"), required=("id",))
        agent_id = self.name(found["id"])
        first = id_lines.get(canonical(agent_id))
        if first is not None:
            self.fail(found["id"], f"duplicate id {agent_id!r} (first at line {first[0]}"
                      + ("" if first[1] == agent_id else f" as {first[1]!r}: names are compared ignoring case and "
                         "Unicode form") + ")")
        id_lines[canonical(agent_id)] = (found["id"].line, agent_id)
        source = self.exactly_one(at, found, sources)
        if source == "scram_secret":
            secret = self.string(found[source], secret=True)
        elif source == "scram_secret_env":
            secret = self.env(found[source])
        else:
            secret = self.read(found[source])
        secret = secret.strip()
        try:
            parse_scram_secret(secret)
        except ValueError as e:  # the message never quotes the secret
            self.fail(found[source], str(e))
        groups = _opt(found, "groups", self.names, None)
        return StaticAgent(id=agent_id, scram_secret=secret, groups=frozenset(groups or ()))

    def routes(self, at: _At) -> dict[str, Route]:
        entries = self.entries(at)
        if "" in entries:
            self.fail(_At(at.node, at.key, entries[""].line), "a database name must not be empty")
        routes = {name: self.route(name, route) for name, route in entries.items()}
        if not routes:
            self.fail(at, "needs at least one route (database name: upstream)")
        return routes

    def route(self, name: str, at: _At) -> Route:
        found = self.mapping(at, (
            "host", "port", "dbname", "user", "password_env", "password_file", "sslmode",
            "sslrootcert", "connect_timeout_seconds",
        ), required=("host", "user"))
        host = self.string(found["host"])
        port = _opt(found, "port", lambda at: self.integer(at, 1, 65535), 5432)
        dbname = _opt(found, "dbname", self.string, name)
        user = self.string(found["user"])
        password_from = self.at_most_one(found, ("password_env", "password_file"))
        password = None
        if password_from == "password_env":
            password = self.env(found[password_from])
        elif password_from == "password_file":
            password = self.read(found[password_from])
        sslmodes = [mode.value for mode in SslMode]
        sslmode = SslMode(_opt(found, "sslmode", lambda at: self.choice(at, sslmodes), "disable"))
        if sslmode is SslMode.VERIFY_FULL and "sslrootcert" not in found:
            self.fail(found["sslmode"], "verify-full needs sslrootcert (the CA certificate file)")
        return Route(
            name=name,
            host=host,
            port=port,
            dbname=dbname,
            user=user,
            password=password,
            sslmode=sslmode,
            sslrootcert=_opt(found, "sslrootcert", self.file, None),
            connect_timeout_seconds=_opt(
                found, "connect_timeout_seconds", lambda at: self.number(at, 0, inclusive=False),
                10.0,
            ),
        )

    def analysis(self, at: _At) -> AnalysisConfig:
        found = self.mapping(at, ("max_statement_bytes", "oversized_action", "allowed_functions",
                                  "cache_entries", "cache_bytes"))
        default = AnalysisConfig()
        return AnalysisConfig(
            max_statement_bytes=_opt(found, "max_statement_bytes", lambda a: self.integer(a, 64),
                                     default.max_statement_bytes),
            oversized_action=Action(_opt(found, "oversized_action", lambda a: self.choice(a, ["review", "deny"]),
                                         default.oversized_action.value)),
            allowed_functions=frozenset(self.strings(found["allowed_functions"])) if "allowed_functions" in found
            else frozenset(),
            cache_entries=_opt(found, "cache_entries", lambda a: self.integer(a, 0), default.cache_entries),
            cache_bytes=_opt(found, "cache_bytes", lambda a: self.integer(a, 0), default.cache_bytes),
        )

    def approvals(self, at: _At) -> ApprovalsConfig:
        found = self.mapping(at, ("listen", "public_url", "store", "timeout_seconds", "hold_mode",
                                  "retry_window_seconds", "signing_key_env",
                                  "signing_key_file", "reviewers", "decision_tokens", "demo_login_token_file",
                                  "demo_login_code_file",
                                  "notify", "slack", "http", "explain_timeout_seconds"),
                             required=("reviewers",))
        if "demo_login_token_file" in found and "demo_login_code_file" not in found:
            self.fail(found["demo_login_token_file"], "needs demo_login_code_file: the demo's sign-in hands the "
                      "reviewer's token only to whoever types the code printed on the demo's terminal")
        decision_token_jwt = None
        if "decision_tokens" in found:
            tokens = self.mapping(found["decision_tokens"], ("jwt",), required=("jwt",))
            decision_token_jwt = replace(self.jwt(tokens["jwt"]), require_user_match=False)
            if decision_token_jwt.jwks_url is not None:
                self.fail(tokens["jwt"], "decision tokens are checked with secret_* or public_key_file, not jwks_url")
        source = self.exactly_one(at, found, ("signing_key_env", "signing_key_file"))
        signing_key = self.secret(found, source)
        if len(signing_key) < 32:
            self.fail(found[source], "the signing key must be at least 32 characters")
        reviewers = self.mapping(found["reviewers"], ("jwt", "groups", "sso_header"), required=("jwt",))
        reviewer_jwt = replace(self.jwt(reviewers["jwt"]), require_user_match=False)
        listen = self.mapping(found["listen"], ("host", "port")) if "listen" in found else {}
        host = _opt(listen, "host", self.string, "127.0.0.1")
        port = _opt(listen, "port", lambda a: self.integer(a, 0, 65535), 8080)
        public_url = _opt(found, "public_url", self.string, "")
        if public_url and not public_url.startswith(("http://", "https://")):
            self.fail(found["public_url"], f"expected an http:// or https:// URL, got {public_url!r}")
        store = self._base / Path(self.string(found["store"])).expanduser() if "store" in found \
            else self._base / "pgproxy-approvals.sqlite3"
        return ApprovalsConfig(
            signing_key=signing_key, reviewer_jwt=reviewer_jwt,
            reviewer_groups=frozenset(self.names(reviewers["groups"])) if "groups" in reviewers
            else frozenset({"reviewers"}),
            host=host, port=port, public_url=public_url, store=store,
            timeout_seconds=_opt(found, "timeout_seconds", lambda a: self.number(a, 0, inclusive=False), 300.0),
            hold_mode=_opt(found, "hold_mode", self.hold_mode, HoldMode.WAIT),
            retry_window_seconds=_opt(found, "retry_window_seconds", lambda a: self.number(a, 0, inclusive=False),
                                      600.0),
            decision_token_jwt=decision_token_jwt,
            sso_header=_opt(reviewers, "sso_header", self.string, None),
            demo_login_token=self.read(found["demo_login_token_file"]).strip() if "demo_login_token_file" in found
            else None,
            demo_login_code=self.read(found["demo_login_code_file"]).strip() if "demo_login_code_file" in found
            else None,
            notifiers=tuple(self.notifier(item) for item in self.items(found["notify"])) if "notify" in found else (),
            http=self.http_limits(found["http"]) if "http" in found else HttpLimits(),
            explain_timeout_seconds=_opt(found, "explain_timeout_seconds",
                                         lambda a: self.number(a, 0, inclusive=True), 5.0),
            **self.slack(found["slack"]) if "slack" in found else {},
        )

    def http_limits(self, at: _At) -> HttpLimits:
        """approvals.http: the web app's connection cap, read timeouts and body size."""
        found = self.mapping(at, [limit.name for limit in fields(HttpLimits)])
        default = HttpLimits()

        def seconds(name: str, fallback: float) -> float:
            return _opt(found, name, lambda a: self.number(a, 0, inclusive=False), fallback)

        return HttpLimits(
            max_connections=_opt(found, "max_connections", lambda a: self.integer(a, 1, 1_000_000),
                                 default.max_connections),
            header_timeout_seconds=seconds("header_timeout_seconds", default.header_timeout_seconds),
            body_timeout_seconds=seconds("body_timeout_seconds", default.body_timeout_seconds),
            max_body_bytes=_opt(found, "max_body_bytes", lambda a: self.integer(a, 1024, 64 * 1024 * 1024),
                                default.max_body_bytes),
        )

    def audit(self, at: _At, approvals: ApprovalsConfig | None) -> AuditConfig | None:
        """The audit section; by default it shares the approvals store and signing key."""
        found = self.mapping(at, ("enabled", "store", "signing_key_env", "signing_key_file", "full_statements",
                                  "retention_days", "queue_events", "batch_events", "flush_interval_seconds",
                                  "sign_interval_seconds", "queue_full_wait_seconds",
                                  "unauthenticated_events_per_interval", "unauthenticated_interval_seconds"))
        if not _opt(found, "enabled", self.boolean, True):
            return None
        source = self.at_most_one(found, ("signing_key_env", "signing_key_file"))
        if source is not None:
            signing_key = self.secret(found, source)
            if len(signing_key) < 32:
                self.fail(found[source], "the signing key must be at least 32 characters")
        elif approvals is not None:
            signing_key = approvals.signing_key
        else:
            self.fail(at, "signing_key_env or signing_key_file is required (without an approvals section "
                          "there is no key to borrow)")
        default_store = approvals.store if approvals is not None else self._base / "pgproxy-audit.sqlite3"
        default = AuditConfig(signing_key="")

        def seconds(name: str, fallback: float) -> float:
            return _opt(found, name, lambda a: self.number(a, 0, inclusive=False), fallback)

        return AuditConfig(
            signing_key=signing_key,
            store=self._base / Path(self.string(found["store"])).expanduser() if "store" in found else default_store,
            full_statements=_opt(found, "full_statements", self.boolean, default.full_statements),
            retention_days=_opt(found, "retention_days", lambda a: self.number(a, 0, inclusive=True),
                                default.retention_days),
            queue_events=_opt(found, "queue_events", lambda a: self.integer(a, 100), default.queue_events),
            batch_events=_opt(found, "batch_events", lambda a: self.integer(a, 1), default.batch_events),
            flush_interval_seconds=seconds("flush_interval_seconds", default.flush_interval_seconds),
            sign_interval_seconds=seconds("sign_interval_seconds", default.sign_interval_seconds),
            queue_full_wait_seconds=seconds("queue_full_wait_seconds", default.queue_full_wait_seconds),
            unauthenticated_events_per_interval=_opt(found, "unauthenticated_events_per_interval",
                                                     lambda a: self.integer(a, 0),
                                                     default.unauthenticated_events_per_interval),
            unauthenticated_interval_seconds=seconds("unauthenticated_interval_seconds",
                                                     default.unauthenticated_interval_seconds),
        )

    def notifier(self, at: _At) -> NotifierConfig:
        found = self.mapping(at, ("kind", "url", "url_env", "secret_env", "secret_file", "rules", "token_env",
                                  "token_file", "channel", "api_url"), required=("kind",))
        kind = self.choice(found["kind"], ["slack", "teams", "webhook"])
        if kind == "slack" and self.at_most_one(found, ("token_env", "token_file", "url", "url_env")) in (
                "token_env", "token_file"):
            return self.slack_api(found)
        for name in ("token_env", "token_file", "channel", "api_url"):
            if name in found:
                self.fail(found[name], "only for kind slack with a bot token (token_env or token_file)")
        source = self.exactly_one(at, found, ("url", "url_env"))  # webhook URLs are secrets too
        url = self.string(found[source]) if source == "url" else self.env(found[source])
        if not url.startswith(("https://", "http://")):
            self.fail(found[source], "expected an http:// or https:// URL")
        secret_from = self.at_most_one(found, ("secret_env", "secret_file"))
        secret = self.secret(found, secret_from) if secret_from is not None else None
        if secret is None and kind == "webhook":
            self.fail(at, "a webhook needs secret_env or secret_file: its payloads are signed (HMAC-SHA256)")
        return NotifierConfig(kind=kind, url=url, secret=secret,
                              rules=frozenset(self.strings(found["rules"])) if "rules" in found else frozenset())

    def slack_api(self, found: dict[str, _At]) -> NotifierConfig:
        """Slack through its Web API (a bot token and a channel): messages can be edited when a request ends."""
        source = "token_env" if "token_env" in found else "token_file"
        token = self.secret(found, source)
        if not token.startswith("xoxb-"):
            self.fail(found[source], "expected a Slack bot token (xoxb-…)")
        if "channel" not in found:
            self.fail(found[source], "a bot token needs channel: the id of the Slack channel to post in (e.g. "
                                     "C024BE91L)")
        channel = self.string(found["channel"])
        if not _SLACK_CHANNEL_ID.fullmatch(channel):
            self.fail(found["channel"], f"expected a Slack channel id (C, G or D and capital letters and digits, "
                                        f"e.g. C024BE91L), got {channel!r}; chat.update needs the id, not the name")
        api_url = _opt(found, "api_url", self.string, SLACK_API).rstrip("/")
        if not api_url.startswith(("https://", "http://")):
            self.fail(found["api_url"], "expected an http:// or https:// URL")
        for name in ("secret_env", "secret_file"):
            if name in found:
                self.fail(found[name], "only for kind webhook (its payloads are signed)")
        return NotifierConfig(kind="slack", token=token, channel=channel, api_url=api_url,
                              rules=frozenset(self.strings(found["rules"])) if "rules" in found else frozenset())

    def slack(self, at: _At) -> dict[str, Any]:
        found = self.mapping(at, ("signing_secret_env", "signing_secret_file", "users"), required=("users",))
        source = self.exactly_one(at, found, ("signing_secret_env", "signing_secret_file"))
        secret = self.secret(found, source)
        users = {self.slack_user_id(user, at): self.slack_reviewer(at)
                 for user, at in self.entries(found["users"]).items()}
        return {"slack_signing_secret": secret, "slack_users": users}

    def slack_user_id(self, user: str, at: _At) -> str:
        if not _SLACK_USER_ID.fullmatch(user):
            self.fail(at, f"expected a Slack user id (capital letters and digits, e.g. U024BE7LH), got {user!r}")
        return user

    def slack_reviewer(self, at: _At) -> SlackReviewer:
        """A Slack user's reviewer name and groups: both required, so that pressing Approve in Slack
        never gives someone a group their reviewer token would not have."""
        if not isinstance(at.node, yaml.MappingNode):
            self.fail(at, f"expected {{reviewer: NAME, groups: [GROUP, ...]}}, got {self.describe(at)}; a Slack "
                          "user is in the reviewer groups listed here, and only those")
        found = self.mapping(at, ("reviewer", "groups"), required=("reviewer", "groups"))
        groups = self.names(found["groups"])
        if not groups:
            self.fail(found["groups"], "expected at least one reviewer group")
        return SlackReviewer(name=self.name(found["reviewer"]), groups=frozenset(groups))

    def strings(self, at: _At) -> list[str]:
        return [self.string(item) for item in self.items(at)]

    def policy(self, at: _At, *, audited: bool) -> Policy:
        found = self.mapping(at, ("default", "rules"))
        actions = [a.value for a in Action]
        default = Action(_opt(found, "default", lambda a: self.choice(a, actions), "allow"))
        names: dict[str, int] = {}
        rules = tuple(self.rule(item, names, audited=audited) for item in self.items(found["rules"])) \
            if "rules" in found else ()
        return Policy(rules=rules, default=default)

    def rule(self, at: _At, names: dict[str, int], *, audited: bool) -> Rule:
        conditions = ("kinds", "flags", "tags", "tags_read", "tags_written", "tables", "functions",
                      "agents", "groups")
        review_settings = ("approvals_required", "reviewer_groups", "max_grant_minutes", "timeout_seconds",
                           "hold_mode", "require_justification")
        found = self.mapping(at, ("name", "action", "reason", "observe", *conditions, *review_settings),
                             required=("name", "action"))
        name = self.string(found["name"])
        if name in names:
            self.fail(found["name"], f"duplicate rule name {name!r} (first at line {names[name]})")
        names[name] = found["name"].line
        if not any(c in found for c in conditions):
            self.fail(at, f"rule {name!r} has no condition; use policy.default for a catch-all")

        def choices(key: str, allowed: list[str]) -> frozenset[str]:
            if key not in found:
                return frozenset()
            return frozenset(self.choice(item, allowed) for item in self.items(found[key]))

        def names_of(key: str) -> frozenset[str]:
            return frozenset(self.strings(found[key])) if key in found else frozenset()

        def identities(key: str) -> frozenset[str]:
            return frozenset(self.names(found[key])) if key in found else frozenset()

        action = Action(self.choice(found["action"], [a.value for a in Action]))
        observe = _opt(found, "observe", self.boolean, False)
        if observe and action in (Action.ALLOW, Action.MASK):
            verb = "allows" if action is Action.ALLOW else "masks"
            self.fail(found["observe"], f"rule {name!r} {verb}, so there is nothing to observe; observe is for "
                                        "review and deny rules (it records what they would do and lets the "
                                        "statement run)")
        if observe and not audited:
            self.fail(found["observe"], f"rule {name!r} is observed, which records what it would do only in the "
                                        "audit log, and there is none: add an audit section (or approvals)")
        require_justification = _opt(found, "require_justification", self.boolean, False)
        if require_justification and action is not Action.REVIEW:
            self.fail(found["require_justification"], f"only a review rule can require a justification (rule "
                                                      f"{name!r} is {action.value}): it is what the reviewer reads")
        return Rule(
            name=name, action=action,
            reason=_opt(found, "reason", self.string, f"policy rule {name!r}"),
            kinds=frozenset(Kind(k) for k in choices("kinds", [k.value for k in Kind])),
            flags=frozenset(Flag(f) for f in choices("flags", [f.value for f in Flag])),
            tags=names_of("tags"), tags_read=names_of("tags_read"), tags_written=names_of("tags_written"),
            tables=names_of("tables"), functions=names_of("functions"), agents=identities("agents"),
            groups=identities("groups"), line=at.line,
            approvals_required=_opt(found, "approvals_required", lambda a: self.integer(a, 1, 10), 1),
            reviewer_groups=identities("reviewer_groups"),
            max_grant_minutes=_opt(found, "max_grant_minutes", lambda a: self.integer(a, 0, 7 * 24 * 60), 0),
            timeout_seconds=_opt(found, "timeout_seconds", lambda a: self.number(a, 0, inclusive=False), None),
            observe=observe,
            hold_mode=_opt(found, "hold_mode", self.hold_mode, None),
            require_justification=require_justification,
        )

    def masking(self, at: _At) -> MaskRules:
        """Masks per tag, merged over the defaults (pgproxy.masking)."""
        found = self.mapping(at, ("tags", "default", "placeholder"))
        kinds = [k.value for k in MaskKind]
        tags = dict(DEFAULT_TAG_MASKS)
        for tag, entry in (self.entries(found["tags"]) if "tags" in found else {}).items():
            if not _TAG.fullmatch(tag):
                self.fail(entry, "expected a tag: lower-case words joined by dots (e.g. pii.email)")
            tags[tag] = MaskKind(self.choice(entry, kinds))
        placeholder = _opt(found, "placeholder", self.string, MaskRules().placeholder)
        if not 1 <= len(placeholder) <= 64 or not placeholder.isprintable():
            self.fail(found["placeholder"], "expected 1 to 64 printable characters")
        return MaskRules(tags=tags, placeholder=placeholder,
                         default=MaskKind(_opt(found, "default", lambda a: self.choice(a, ["placeholder", "null"]),
                                               "placeholder")))

    def sampling(self, at: _At) -> SamplingConfig:
        found = self.mapping(at, [f.name for f in fields(SamplingConfig)])
        default = SamplingConfig()
        return SamplingConfig(
            enabled=_opt(found, "enabled", self.boolean, default.enabled),
            results_per_second=_opt(found, "results_per_second", lambda a: self.number(a, 0, inclusive=False),
                                    default.results_per_second),
            rows_per_result=_opt(found, "rows_per_result", lambda a: self.integer(a, 1, 1000), default.rows_per_result),
            max_value_bytes=_opt(found, "max_value_bytes", lambda a: self.integer(a, 16, 64 * 1024),
                                 default.max_value_bytes),
            queue_samples=_opt(found, "queue_samples", lambda a: self.integer(a, 1, 100_000), default.queue_samples),
        )

    def hold_mode(self, at: _At) -> HoldMode:
        return HoldMode(self.choice(at, [m.value for m in HoldMode]))

    def logging(self, at: _At) -> LoggingConfig:
        found = self.mapping(at, ("level",))
        level = _opt(found, "level", lambda at: self.choice(at, _LOG_LEVELS), LoggingConfig().level)
        return LoggingConfig(level=level)


_T = TypeVar("_T")
_TAG = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*")  # as in the catalog file


def _opt(found: dict[str, _At], name: str, read: Callable[[_At], _T], default: _T) -> _T:
    """read(found[name]) if the key is given, else the default."""
    return read(found[name]) if name in found else default


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _or(names: Sequence[str]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


def _suggest(word: str, choices: Sequence[str], *, allowed_list: bool = False) -> str:
    """"; did you mean 'port'?" for a near miss; otherwise, optionally, what is allowed."""
    by_folded = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), by_folded, n=1)
    if close:
        return f"; did you mean {by_folded[close[0]]!r}?"
    return f" (expected one of {', '.join(choices)})" if allowed_list else ""


def _describe(value: object, *, secret: bool = False) -> str:
    """How a value reads in "got ..."; with secret=True, only its kind."""
    if isinstance(value, yaml.MappingNode):
        return "a mapping"
    if isinstance(value, yaml.SequenceNode):
        return "a list"
    if value is None:
        return "no value"
    if secret:
        return "a boolean" if isinstance(value, bool) else (
            "a number" if isinstance(value, int | float) else "text"
        )
    if isinstance(value, bool):
        return "true" if value else "false"
    shown = value if isinstance(value, str) else str(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return repr(shown) if isinstance(value, str) else shown


def _as_float(value: object) -> float:
    """A YAML int or float as a float; NaN for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range
        return math.inf


def _yaml_error(path: Path, text: str, error: yaml.YAMLError) -> str:
    """file:line: invalid YAML: <what PyYAML said>."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}" if mark else f"{path}"
        problem = error.problem or error.context or "syntax error"
        if error.context and error.problem and error.problem.startswith("but "):
            problem = f"{error.context} {error.problem}"  # "expected X" + "but found Y"
        elif error.context and error.problem and error.context_mark:
            problem += f" ({error.context} at line {error.context_mark.line + 1})"
        if "'\\t'" in problem:
            problem += " (indent with spaces, not tabs)"
        return f"{where}: invalid YAML: {problem}"
    if isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1
        return f"{path}:{line}: invalid YAML: character U+{error.character:04X} is not allowed"
    return f"{path}: invalid YAML: {error}"
