"""What reviewers are shown of a held statement: made once per request, in a worker thread, bounded.

A statement can be as long as a protocol message (`limits.max_message_bytes`): laying out a
megabyte with PostgreSQL's grammar takes seconds, and the page asks for it every two seconds.
So a request's view is computed once, off the event loop, and cached (`statement_view`); the
page shows at most `DISPLAY_CHARS` of the statement (laid out by pglast only up to
`FORMAT_CHARS`) and of its parameters, with the SHA-256 and size of every text that was cut and
a link to download it whole; chat messages show a redacted head of it (`chat_statement`).

Invisible characters (bidirectional controls such as U+202E, zero-width and other format
characters, unusual spaces) make a statement read differently from what runs; `invisible_in()`
finds them, and `visible()` writes them as ⟨U+202E⟩ markers. The page uses the same character
class (assets/approval.js) to mark them and warn.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pglast

from pgproxy.store import ApprovalRequest

DISPLAY_CHARS = 64 * 1024  # of a statement shown on the page; the parameters share as many
FORMAT_CHARS = 32 * 1024  # longer statements are shown as sent, not laid out by pglast
LIST_CHARS = 2048  # of each statement and parameter in the list of requests
CHAT_CHARS = 2000  # of the redacted statement in a chat message (Slack allows 3000 per block)
CACHE_ENTRIES = 256  # requests whose view is kept (each is at most about 2 * DISPLAY_CHARS)

# Characters that show as nothing, as a space, or reorder what surrounds them: format characters
# (Unicode category Cf: bidirectional controls, zero-width spaces and joiners, tags, the BOM…),
# control characters but tab, newline and carriage return, every space but U+0020, line and
# paragraph separators, and blank letters and marks (Hangul fillers, the combining grapheme
# joiner, variation selectors, the braille blank). The page (assets/approval.js, INVISIBLE) uses
# the same class; tests/test_page.py checks that they stay alike.
INVISIBLE_CLASS = (r"\p{Cf}\p{Zl}\p{Zp}\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\xA0\u1680\u2000-\u200A\u202F\u205F"
                   r"\u3000\u115F\u1160\u3164\uFFA0\u034F\u180B-\u180F\uFE00-\uFE0F\u2800\U000E0100-\U000E01EF")


@functools.cache
def invisible_pattern() -> re.Pattern[str]:
    """INVISIBLE_CLASS for Python's re, which has no \\p{…}: the categories spelled out from
    unicodedata (a quarter of a second, once: the first render makes it, in a worker thread)."""
    import sys
    import unicodedata

    ranges: list[str] = []
    start = None
    for code in range(sys.maxunicode + 2):
        inside = code <= sys.maxunicode and unicodedata.category(chr(code)) in ("Cf", "Zl", "Zp")
        if inside and start is None:
            start = code
        elif not inside and start is not None:
            ranges.append(f"\\U{start:08X}-\\U{code - 1:08X}")
            start = None
    rest = INVISIBLE_CLASS.replace(r"\p{Cf}\p{Zl}\p{Zp}", "")
    return re.compile(f"[{''.join(ranges)}{rest}]")


_ASCII_INVISIBLE = re.compile("[\x00-\x08\x0B\x0C\x0E-\x1F\x7F]")  # the class's ASCII members


def visible(text: str) -> str:
    """`text` with every invisible character written as a marker: ``visible("a\\u202eb") == "a⟨U+202E⟩b"``."""
    pattern = _ASCII_INVISIBLE if text.isascii() else invisible_pattern()
    return pattern.sub(lambda found: f"⟨U+{ord(found.group()):04X}⟩", text)


_SCAN_CHARS = 64 * 1024  # scanned per regex call: a worker thread lets the event loop in between


def invisible_in(text: str) -> list[str]:
    """The invisible characters in `text`, as U+XXXX, each once, in order of appearance."""
    pattern = _ASCII_INVISIBLE if text.isascii() else invisible_pattern()
    found: dict[str, None] = {}
    for start in range(0, len(text), _SCAN_CHARS):
        for character in pattern.findall(text, start, start + _SCAN_CHARS):
            found[f"U+{ord(character):04X}"] = None
    return list(found)


@dataclass(frozen=True, slots=True)
class ShownText:
    """A text as the page shows it: at most a bounded head, and what identifies the whole."""

    text: str  # the head shown (for a statement: laid out by pglast when short enough)
    truncated: bool
    bytes: int  # of the whole text, UTF-8
    sha256: str  # of the whole text's bytes: what a download can be checked against
    invisible: tuple[str, ...]  # invisible characters in the whole text (U+XXXX)

    def to_json(self) -> dict[str, object]:
        return {"text": self.text, "truncated": self.truncated, "bytes": self.bytes, "sha256": self.sha256,
                "invisible": list(self.invisible)}


@dataclass(frozen=True, slots=True)
class StatementView:
    statement: ShownText
    parameters: tuple[ShownText | None, ...]  # None: a NULL parameter
    chat: str  # the statement with its literals replaced, invisible characters marked, at most CHAT_CHARS


def text_bytes(text: str) -> bytes:
    """A statement's or parameter's exact bytes (texts from clients may carry undecodable bytes
    as surrogate escapes)."""
    return text.encode("utf-8", "surrogateescape")


def _shown(text: str, head: str, limit: int) -> ShownText:
    data = text_bytes(text)
    return ShownText(head[:limit], len(head) > limit, len(data), hashlib.sha256(data).hexdigest(),
                     tuple(invisible_in(text)))


def _formatted(sql: str) -> str:
    """The statement laid out by PostgreSQL's own grammar (pglast), for reading; as sent if that
    fails or the statement is too long to lay out quickly."""
    if len(sql) > FORMAT_CHARS:
        return sql
    try:
        return str(pglast.prettify(sql))
    except Exception:  # any statement pglast cannot print back is shown as it was sent
        return sql


_CONSTANTS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})


def _redacted(sql: str) -> str:
    """At most CHAT_CHARS of the statement with every literal replaced by `?` and comments
    dropped (they may hold values too); only a bounded head of a long statement is scanned, cut
    before a literal the cut would leave open. Never a literal value: what cannot be scanned is
    not shown."""
    head = sql[:CHAT_CHARS * 4]
    for _ in range(4):
        try:
            tokens = pglast.parser.scan(head)
            break
        except pglast.parser.ParseError as exc:
            where = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
            if where is None or len(head) == len(sql):
                return "(statement not shown: it cannot be tokenized; see the page)"
            # The scanner's index counts bytes; the cut is before the literal it found open.
            cut = where if head.isascii() else len(text_bytes(head)[:where].decode("utf-8", "ignore"))
            if cut <= 0:
                return "(statement not shown: it cannot be tokenized; see the page)"
            head = head[:cut]
    else:
        return "(statement not shown: it cannot be tokenized; see the page)"
    parts: list[str] = []
    position = 0
    for token in tokens:  # offsets count characters of the text as given
        parts.append(head[position:token.start])
        if token.name in _CONSTANTS:
            parts.append("?")
        elif token.name not in _COMMENTS:
            parts.append(head[token.start:token.end + 1])
        position = token.end + 1
    shown = visible(" ".join("".join(parts).split()))
    if len(head) < len(sql) or len(shown) > CHAT_CHARS:
        return shown[:CHAT_CHARS] + f" … (cut; {len(text_bytes(sql)):,} bytes in all: see the page)"
    return shown


def render(statement: str, parameters: tuple[str | None, ...]) -> StatementView:
    """A request's view (pure and thread-safe: run it in a worker thread)."""
    budget = DISPLAY_CHARS
    shown_parameters: list[ShownText | None] = []
    for parameter in parameters:
        if parameter is None:
            shown_parameters.append(None)
            continue
        shown = _shown(parameter, parameter[:budget + 1], budget)
        budget -= len(shown.text)
        shown_parameters.append(shown)
    return StatementView(_shown(statement, _formatted(statement), DISPLAY_CHARS), tuple(shown_parameters),
                         _redacted(statement))


# One cache for every event loop of the process (tests run several proxies): its entries are
# futures of the worker threads, so a request asked for twice at once is rendered once.
_workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pgproxy-display")
_views: OrderedDict[tuple[str, str], Future[StatementView]] = OrderedDict()
_lock = threading.Lock()


def _view_future(request: ApprovalRequest) -> Future[StatementView]:
    key = (request.id, request.statement_sha256)
    with _lock:
        found = _views.get(key)
        if found is not None:
            _views.move_to_end(key)
            return found
        made = _workers.submit(render, request.statement, request.parameters)
        _views[key] = made
        while len(_views) > CACHE_ENTRIES:
            _views.popitem(last=False)
        return made


async def statement_view(request: ApprovalRequest) -> StatementView:
    """The request's view: rendered once in a worker thread, then cached."""
    return await asyncio.wrap_future(_view_future(request))


def chat_statement(request: ApprovalRequest) -> str:
    """What a chat message shows of the statement (for pgproxy.approvals.notify): the cached
    view's redacted head when the hold rendered it already (it does, before notifying), else
    the same bounded head made now."""
    found = _views.get((request.id, request.statement_sha256))
    if found is not None and found.done() and found.exception() is None:
        return found.result().chat
    return _redacted(request.statement)
