"""The decision cache (DESIGN.md, decision 4).

The key is the statement normalized by PostgreSQL's own scanner (constants become a
placeholder, comments and spacing go, every other token stays exactly as written, so
aliases, identifiers and column-alias lists all stay in the key) plus everything else
the decision depends on: the schema, policy and agent-group versions and the session's
search_path. Statements whose decision depends on a literal (SET, set_config(…), COPY
to a file…) are cached under their exact text instead: the normalized key then only
records that, and the lookup falls through to the exact text.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

import pglast

_CONSTANTS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_PLACEHOLDER = "\x00"  # cannot occur in SQL text (protocol strings are NUL-terminated)
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})

V = TypeVar("V")


# normalize() runs PostgreSQL's scanner once per *shape* of statement, not per statement.
# In an ASCII text without quotes, dollar signs or comments, a run of digits with no
# identifier character or dot on either side can only be a whole integer constant, which
# the scanner turns into the placeholder. Two such texts that differ only in those runs
# therefore normalize alike, and the text with the runs replaced is a sound memo key; any
# other text is memoised under its exact self. (A key with a placeholder cannot equal an
# exact text: texts containing NUL are never memoised.)
_INTEGER = re.compile(r"\b(?<!\.)[0-9]+\b(?!\.)", re.ASCII)
MEMO_ENTRIES = 4096
MEMO_KEY_CHARS = 1024  # longer statements are scanned every time (bounds the memo's memory)
_memo: dict[str, str] = {}


def shape_key(sql: str) -> str | None:
    """The key under which `sql`'s normalized form is memoised: equal keys normalize alike.
    None for a text that is not memoised (long, or containing NUL)."""
    if len(sql) > MEMO_KEY_CHARS or _PLACEHOLDER in sql:
        return None
    quick = sql.isascii() and not ("'" in sql or '"' in sql or "$" in sql or "--" in sql or "/*" in sql)
    return _INTEGER.sub(_PLACEHOLDER, sql) if quick else sql


def normalize(sql: str) -> str | None:
    """Tokens joined by spaces with constants replaced; None if the scanner fails."""
    return normalize_shaped(sql, shape_key(sql))


def normalize_shaped(sql: str, key: str | None) -> str | None:
    """normalize(sql) for a caller that already has its shape_key."""
    if key is None:
        return _normalize(sql)
    found = _memo.get(key)
    if found is None:
        found = _normalize(sql)
        if found is None:
            return None
        if len(_memo) >= MEMO_ENTRIES:
            _memo.clear()  # simple, and safe if a worker thread normalizes too
        _memo[key] = found
    return found


def _normalize(sql: str) -> str | None:
    try:
        tokens = pglast.parser.scan(sql)
    except pglast.parser.ParseError:
        return None
    parts: list[str] = []
    for token in tokens:
        if token.name in _COMMENTS:
            continue
        if token.name in _CONSTANTS:
            parts.append(_PLACEHOLDER)
        else:
            # Offsets count characters of the text as given (pglast turns libpg_query's byte
            # offsets into them): slicing the UTF-8 bytes with them would shift every token
            # after a non-ASCII character, and texts that differ in meaning could share a key.
            parts.append(sql[token.start:token.end + 1])
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class _ExactOnly:
    """Marks a normalized key whose statements must be looked up by exact text."""


EXACT_ONLY = _ExactOnly()


class DecisionCache(Generic[V]):
    """An LRU map bounded by entries and by the bytes of its keys."""

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, ...], V | _ExactOnly] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.generation = 0  # counts clear()s: memos of its values made before one are stale

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _size(key: tuple[str, ...]) -> int:
        return sum(len(part) for part in key) + 64

    def get(self, sql: str, context: tuple[str, ...]) -> V | None:
        return self.lookup(sql, normalize(sql), context)[0]

    def lookup(self, sql: str, normalized: str | None, context: tuple[str, ...]) -> tuple[V | None, bool]:
        """The value for `sql` (normalized: normalize(sql)) in `context`, and whether it holds for
        every statement that normalizes alike (False when it was found by exact text)."""
        if normalized is None:
            return None, False
        value = self._lookup((normalized, *context))
        by_shape = True
        if isinstance(value, _ExactOnly):
            value = self._lookup(("=", sql, *context))
            by_shape = False
        if value is None or isinstance(value, _ExactOnly):
            self.misses += 1
            return None, False
        self.hits += 1
        return value, by_shape

    def _lookup(self, key: tuple[str, ...]) -> V | _ExactOnly | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, sql: str, normalized: str | None, context: tuple[str, ...], value: V, *,
            literal_sensitive: bool) -> bool:
        """Store `value` (normalized: normalize(sql)); return whether it was stored for every
        statement that normalizes alike."""
        if normalized is None or self.max_entries == 0:
            return False
        if literal_sensitive:
            self._store((normalized, *context), EXACT_ONLY)
            self._store(("=", sql, *context), value)
            return False
        existing = self._entries.get((normalized, *context))
        if isinstance(existing, _ExactOnly):
            self._store(("=", sql, *context), value)  # a sibling needed its literals: stay exact
            return False
        self._store((normalized, *context), value)
        return True

    def _store(self, key: tuple[str, ...], value: V | _ExactOnly) -> None:
        size = self._size(key)
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._entries.move_to_end(key)
        else:
            self._bytes += size
        self._entries[key] = value
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            old, _ = self._entries.popitem(last=False)
            self._bytes -= self._size(old)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
        self.generation += 1
