"""Startup parameters are settings, judged like the SETs they are (DESIGN.md, decision 12).

A StartupMessage carries ``name=value`` pairs the server applies before the first statement:
``options=-c role=admin`` or ``search_path=evil`` would otherwise change the session without a
decision. pgproxy forwards only what it has judged:

- a short allow-list of parameters that change nothing pgproxy's analysis depends on, as they
  are (`application_name`, `DateStyle`, `TimeZone`, timeouts...);
- `client_encoding` and `standard_conforming_strings` only with values pgproxy can read text
  under (see pgproxy.protocol.lexing);
- `search_path` and every ``-c name=value`` / ``--name=value`` of `options`, as the statement
  ``SET name TO value`` through the policy (a role change is then held, which a startup cannot
  wait for, so it is refused); the search_path it sets is the one names resolve against;
- anything else is refused, naming the parameter.

Order as in PostgreSQL: the settings in `options` first, then the other parameters, so that
a later one wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgproxy.errors import ProxyError, SqlState
from pgproxy.protocol.lexing import LEXING_SETTINGS, setting_refusal

# Consumed by pgproxy itself (user, database) or refused before (replication, protocol options).
HANDLED = frozenset({"user", "database", "replication"})
# Forwarded as they are: they change how values are shown or how long things may take, never
# which objects a statement reads.
PLAIN = frozenset({
    "application_name", "datestyle", "timezone", "intervalstyle", "extra_float_digits", "client_min_messages",
    "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout",
    "default_transaction_isolation", "default_transaction_read_only", "default_transaction_deferrable",
    "bytea_output", "lc_monetary", "lc_numeric", "lc_time", "geqo", "jit",
})
# Settings a startup may not make in any way: loading libraries into the backend.
_NEVER = frozenset({"local_preload_libraries", "session_preload_libraries", "shared_preload_libraries"})


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting a startup packet asks for, and where it came from (for messages)."""

    name: str  # as the server reads it: lower case, '-' as '_'
    value: str
    source: str  # e.g. 'startup parameter "search_path"' or 'options "-c role=x"'

    @property
    def judged(self) -> bool:
        """Whether the policy judges it (as SET), rather than the allow-list or lexing rules."""
        return self.name not in PLAIN and self.name not in LEXING_SETTINGS


def _refused(sqlstate: SqlState, message: str, hint: str | None = None) -> ProxyError:
    return ProxyError(sqlstate, message, hint=hint)


def split_options(options: str) -> list[str]:
    """PostgreSQL's pg_split_opts(): words split on whitespace; a backslash keeps the next
    character (a space included) in the word."""
    words: list[str] = []
    current: list[str] = []
    in_word = False
    escaped = False
    for char in options:
        if escaped:
            current.append(char)
            escaped = False
            in_word = True
        elif char == "\\":
            escaped = True
            in_word = True
        elif char.isspace():
            if in_word:
                words.append("".join(current))
                current, in_word = [], False
        else:
            current.append(char)
            in_word = True
    if escaped:
        current.append("\\")
    if in_word:
        words.append("".join(current))
    return words


def _option_setting(text: str, shown: str) -> Setting:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise _refused(SqlState.PROTOCOL_VIOLATION, f'options "{shown}" must have the form name=value')
    return Setting(name.replace("-", "_").lower(), value, f'options "{shown}"')


def parse_options(options: str) -> list[Setting]:
    """The settings of an `options` startup parameter; only ``-c name=value`` and
    ``--name=value`` are accepted (PostgreSQL's other switches are refused)."""
    words = split_options(options)
    settings: list[Setting] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-c":
            if index + 1 >= len(words):
                raise _refused(SqlState.PROTOCOL_VIOLATION, 'options "-c" must be followed by name=value')
            settings.append(_option_setting(words[index + 1], f"-c {words[index + 1]}"))
            index += 2
            continue
        if word.startswith("-c") or word.startswith("--"):
            settings.append(_option_setting(word[2:], word))
        else:
            raise _refused(SqlState.PROTOCOL_VIOLATION,
                           f'pgproxy does not accept "{word}" in the startup parameter "options"',
                           hint="Only -c name=value and --name=value settings are accepted.")
        index += 1
    return settings


def startup_settings(parameters: dict[str, str]) -> list[Setting]:
    """Every setting a startup packet makes, in the order the server applies them; refuses
    parameters pgproxy does not accept and values it cannot read text under."""
    settings: list[Setting] = []
    others: list[Setting] = []
    for key, value in parameters.items():
        name = key.lower()
        if name in HANDLED or key.startswith("_pq_."):
            continue
        if name == "options":
            settings += parse_options(value)
        elif name in PLAIN or name in LEXING_SETTINGS or name == "search_path":
            others.append(Setting(name, value, f'startup parameter "{key}"'))
        else:
            raise _refused(SqlState.PROTOCOL_VIOLATION, f'pgproxy does not accept the startup parameter "{key}"',
                           hint="Set it with SET after connecting, or in options as -c name=value.")
    settings += others
    for setting in settings:
        if setting.name in _NEVER:
            raise _refused(SqlState.INSUFFICIENT_PRIVILEGE, f"{setting.source} is refused: it loads libraries "
                           "into the server process")
        refused = setting_refusal(setting.name, setting.value)
        if refused is not None:
            raise _refused(SqlState.INSUFFICIENT_PRIVILEGE, f"{setting.source} is refused: {refused}")
    return settings


def split_identifiers(value: str) -> list[str] | None:
    """PostgreSQL's SplitIdentifierString() for a list setting (search_path): names separated
    by commas, double quotes keep case and commas, others are folded to lower case; None when
    the list is malformed (the server refuses it too)."""
    names: list[str] = []
    pos, size = 0, len(value)
    while True:
        while pos < size and value[pos].isspace():
            pos += 1
        if pos < size and value[pos] == '"':
            end = pos + 1
            name = []
            while True:
                close = value.find('"', end)
                if close < 0:
                    return None
                name.append(value[end:close])
                if value.startswith('"', close + 1):
                    name.append('"')
                    end = close + 2
                    continue
                pos = close + 1
                break
            names.append("".join(name))
        else:
            end = pos
            while end < size and value[end] != "," and not value[end].isspace():
                end += 1
            if end == pos:
                return None if names or value.strip() else []
            names.append(value[pos:end].lower())
            pos = end
        while pos < size and value[pos].isspace():
            pos += 1
        if pos == size:
            return names
        if value[pos] != ",":
            return None
        pos += 1


def as_statement(setting: Setting) -> str:
    """The SET statement a judged setting is."""
    name = '"' + setting.name.replace('"', '""') + '"'
    if setting.name == "search_path":
        names = split_identifiers(setting.value)
        if names is None:
            raise _refused(SqlState.PROTOCOL_VIOLATION, f"{setting.source} is not a list of schema names")
        if not names:
            return "SET search_path TO ''"
        return "SET search_path TO " + ", ".join('"' + n.replace('"', '""') + '"' for n in names)
    return f"SET {name} TO '" + setting.value.replace("'", "''") + "'"
