"""Structured logs: one JSON object a line on stderr.

Every record carries an ``event`` name; session records carry ``session``,
``agent`` and ``database``. Callers pass only values that are safe to print:
never a password, a token or a statement's literals. Many of those values are
chosen by clients (a user name, a database, an application name, an error that
quotes them), so every field is bounded: a text longer than FIELD_CHARS is cut and
followed by its length and SHA-256, and a list or mapping keeps FIELD_ITEMS items,
so no client can make a log line larger than a few kilobytes.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

from pgproxy.unauthenticated import bounded

_RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
FIELD_CHARS = 512
FIELD_ITEMS = 20


def bounded_field(value: Any, depth: int = 0) -> Any:
    """A log field's value, bounded (see the module): texts cut, lists and mappings shortened,
    anything else that JSON cannot hold as it is shown as its (bounded) str()."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return bounded(value, FIELD_CHARS)
    if depth < 2 and isinstance(value, (list, tuple, set, frozenset)):
        items = [bounded_field(item, depth + 1) for item in list(value)[:FIELD_ITEMS]]
        return [*items, f"…{len(value) - FIELD_ITEMS} more"] if len(value) > FIELD_ITEMS else items
    if depth < 2 and isinstance(value, dict):
        kept = {bounded(str(k), FIELD_CHARS): bounded_field(v, depth + 1)
                for k, v in list(value.items())[:FIELD_ITEMS]}
        if len(value) > FIELD_ITEMS:
            kept["…"] = f"{len(value) - FIELD_ITEMS} more"
        return kept
    return bounded(str(value), FIELD_CHARS)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": bounded(record.getMessage(), FIELD_CHARS),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = bounded_field(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("pgproxy")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """A logger that adds the session's id, agent and database to every record."""

    def __init__(self, session_id: str) -> None:
        super().__init__(logging.getLogger("pgproxy.session"), {"session": session_id})

    def bind(self, **fields: str) -> None:
        assert isinstance(self.extra, dict)
        self.extra.update(fields)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs
