"""Audit events that clients who have not authenticated cause: bounded in size and in rate.

Anyone who can reach the listener (or the approvals web app) can cause a refused login, a
protocol violation before login, or a refused decision with a forged token; each is an audit
event. Two bounds keep them from growing the log without limit:

- size: every field the client chose (user, database, application_name, an approval id, the
  reason, which may quote them) is cut to a few dozen characters by `bounded`, which keeps the
  full value's length and SHA-256 so that it is still identifiable;
- rate: in each interval the first `per_interval` such events are recorded one by one; the
  rest are counted, per event type and per key (client address and reason class, never a
  client-chosen text), and recorded as one ``<type>.aggregated`` event when the interval ends.
  The counts are exact: keys beyond `MAX_KEYS` are summed into `other_events`.

Sans-IO: `admit` and `due` take the time and return what to record; the audit log records it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from typing import Any

NAME_CHARS = 64  # a client-chosen name (PostgreSQL's own names are at most 63 bytes)
REASON_CHARS = 256  # a refusal's message, which may quote a client-chosen name
MAX_KEYS = 100  # distinct (address, reason) counts an aggregated event lists one by one

Key = tuple[tuple[str, str | int | None], ...]


def bounded(value: str | None, limit: int = NAME_CHARS) -> str | None:
    """`value` cut to `limit` characters, followed by its length and SHA-256 when it was longer::

        bounded("x" * 8192)  # 'xxx…x…[8192 chars, sha256:5f1e…]'
    """
    if value is None or len(value) <= limit:
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")  # the bytes the client sent
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogatepass")
    return f"{value[:limit]}…[{len(value)} chars, sha256:{hashlib.sha256(raw).hexdigest()}]"


class Unauthenticated:
    """The rate bound: which unauthenticated events are recorded one by one, and the counts of
    the others, per interval."""

    def __init__(self, per_interval: int, interval_seconds: float) -> None:
        self.per_interval = per_interval
        self.interval_seconds = interval_seconds
        self._started: float | None = None  # the current interval's start (wall clock)
        self._recorded = 0  # recorded one by one in this interval
        self._counts: dict[str, Counter[Key]] = {}  # type -> key -> events counted instead
        self._other: Counter[str] = Counter()  # type -> events whose key did not fit in MAX_KEYS
        self.counted = 0  # events counted instead of recorded, since start (exact)

    def admit(self, type_: str, key: Mapping[str, str | int | None], now: float) -> bool:
        """True: record this event one by one. False: it was counted for the aggregate."""
        if self._started is None:
            self._started = now
        if self._recorded < self.per_interval:
            self._recorded += 1
            return True
        counts = self._counts.setdefault(type_, Counter())
        item = tuple(sorted(key.items()))
        if item in counts or len(counts) < MAX_KEYS:
            counts[item] += 1
        else:
            self._other[type_] += 1
        self.counted += 1
        return False

    def due(self, now: float, *, final: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """The aggregated events to record when the interval has ended (or at shutdown, `final`);
        a new interval starts."""
        started = self._started
        if started is None or (not final and now - started < self.interval_seconds):
            return []
        events = []
        for type_, counts in self._counts.items():
            listed = [{**dict(key), "events": n} for key, n in counts.most_common()]
            other = self._other.get(type_, 0)
            events.append((f"{type_}.aggregated", {
                "interval_start": started, "interval_end": now,
                "events": sum(counts.values()) + other, "recorded_one_by_one": self._recorded,
                "counts": listed, "other_events": other}))
        self._started = None if final or not (self._recorded or self._counts) else now
        self._recorded = 0
        self._counts = {}
        self._other = Counter()
        return events
