"""An agent's justification: why it runs a statement, said in a leading SQL comment.

The form is one block comment at the very start of the statement text (only whitespace before it)::

    /* pgproxy: reason="ticket 42: refund for order 7" */ SELECT email FROM customers WHERE id = 7

``pgproxy`` and ``reason`` are keywords (any case); the reason is a double-quoted string in which
``""`` stands for one ``"``, 1 to :data:`MAX_REASON_CHARS` characters on one line, without control
or invisible characters. The comment is part of the text the server runs, and stays a comment
there: a text this module accepts holds no ``/*`` or ``*/`` inside the comment, so the server's
scanner (which nests block comments) ends it exactly where this one does.

Only the start of the text counts: a ``pgproxy:`` comment anywhere else (after another comment,
inside a string, in a later statement of the query string) is an ordinary comment, so nothing
the statement *contains* can pose as the agent's reason. A leading comment that starts with
``pgproxy:`` but is not of the form above is :class:`MalformedJustification`, whose message says
what is wrong and how to write it; a leading comment that does not start with ``pgproxy:`` is
an ordinary comment. Whatever the reason says is the agent's claim, never pgproxy's finding.

>>> justification('/* pgproxy: reason="the ""refund"" ticket" */ SELECT 1')
'the "refund" ticket'
>>> justification("SELECT 1 /* pgproxy: reason=\\"x\\" */") is None
True
"""

from __future__ import annotations

import re

from pgproxy.names import invisible

__all__ = ["FORM", "MAX_REASON_CHARS", "MalformedJustification", "justification"]

MAX_REASON_CHARS = 500
FORM = '/* pgproxy: reason="…" */'
# PostgreSQL's scanner's whitespace (scan.l: space [ \t\n\r\f\v]).
_WHITESPACE = " \t\n\r\f\v"
# The longest comment read: the reason with every character a doubled quote, and the words around it.
_MAX_COMMENT_CHARS = 2 * MAX_REASON_CHARS + 64
_MARK = re.compile(r"[ \t\n\r\f\v]*pgproxy[ \t\n\r\f\v]*:", re.IGNORECASE)
_BODY = re.compile(r'[ \t\n\r\f\v]*reason[ \t\n\r\f\v]*=[ \t\n\r\f\v]*"((?:[^"]|"")*)"[ \t\n\r\f\v]*', re.IGNORECASE)


class MalformedJustification(Exception):
    """A leading ``pgproxy:`` comment that is not of the documented form; `message` says why."""

    def __init__(self, problem: str) -> None:
        self.message = (f"malformed pgproxy justification: {problem}; start the statement with "
                        f'{FORM} (at most {MAX_REASON_CHARS} characters, one line, "" for a quote)')
        super().__init__(self.message)


def justification(sql: str) -> str | None:
    """The reason in the statement's leading ``pgproxy:`` comment; None when it has none.

    Raises MalformedJustification for a leading ``pgproxy:`` comment of another form."""
    start = len(sql) - len(sql.lstrip(_WHITESPACE))
    if sql.startswith("--", start) and _MARK.match(sql, start + 2):
        raise MalformedJustification("it is a -- comment; only a /* */ comment carries a justification")
    if not sql.startswith("/*", start):
        return None
    mark = _MARK.match(sql, start + 2)
    if mark is None:
        return None  # an ordinary comment
    end = sql.find("*/", mark.end(), start + _MAX_COMMENT_CHARS)
    if end < 0:
        raise MalformedJustification(f"the comment is not closed within {_MAX_COMMENT_CHARS} characters")
    body = sql[mark.end():end]
    if "/*" in body:
        raise MalformedJustification("it contains /*, which would open a nested comment")
    found = _BODY.fullmatch(body)
    if found is None:
        if body.count('"') % 2:
            raise MalformedJustification('the reason is not closed by a double quote (a */ inside it would end '
                                         "the comment)")
        raise MalformedJustification('expected reason="…" after pgproxy:, and nothing else in the comment')
    reason = found.group(1).replace('""', '"')
    if not reason.strip():
        raise MalformedJustification("the reason is empty")
    if len(reason) > MAX_REASON_CHARS:
        raise MalformedJustification(f"the reason is {len(reason)} characters long")
    hidden = invisible(reason)
    if hidden is not None:
        raise MalformedJustification(f"the reason contains a control or invisible character ({hidden})")
    return reason
