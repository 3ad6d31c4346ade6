"""Structured logs: one JSON object a line on stderr.

Every record carries an ``event`` name; session records carry ``session``,
``agent`` and ``database``. Callers pass only values that are safe to print:
never a password, a token or a statement's literals.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

_RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
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
