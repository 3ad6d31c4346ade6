"""How names of people and groups are compared: agents, reviewers, groups.

Identity providers treat user names as the same person whatever their case or Unicode form
(``alice``, ``ALICE`` and fullwidth ``alice`` are one account), so pgproxy compares names in one
canonical form: Unicode NFKC, case-folded, NFKC again (Unicode's NFKC_Casefold, near
enough). Every comparison of identities goes through :func:`canonical`: the two-person
rule's distinct reviewers, the requesting agent against its reviewer, group membership and
the policy's ``agents`` and ``groups`` conditions. Names are still shown as they were given.

A name with a character that shows nothing or moves text (zero-width spaces, bidi controls,
other format and control characters) is refused outright (:func:`invisible`): ``agent\\u200b``
looks like ``agent`` to a person but no normalisation makes it equal, and a reviewer must see
who is asking.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

__all__ = ["canonical", "in_any", "invisible", "same"]

# Control, format, surrogate, private-use and unassigned code points; line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# Default_Ignorable_Code_Point characters outside those categories (Unicode's
# DerivedCoreProperties.txt): fillers and selectors that render as nothing.
_INVISIBLE_RANGES = ((0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
                     (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0), (0xE0100, 0xE01EF))


def canonical(name: str) -> str:
    """The form names are compared in: ``canonical("ALICE") == canonical("alice")``."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def same(first: str, second: str) -> bool:
    """Whether two names are one identity."""
    return canonical(first) == canonical(second)


def in_any(names: Iterable[str], wanted: Iterable[str]) -> bool:
    """Whether any of `names` is one of `wanted` (group membership, the policy's lists)."""
    canonical_wanted = {canonical(name) for name in wanted}
    return any(canonical(name) in canonical_wanted for name in names)


def invisible(name: str) -> str | None:
    """The first character of `name` that must not be in an identity, as ``U+200B``; None if none.

    >>> invisible("agent\\u200b")
    'U+200B'
    """
    for char in name:
        code = ord(char)
        if unicodedata.category(char) in _REFUSED_CATEGORIES or any(
                low <= code <= high for low, high in _INVISIBLE_RANGES):
            return f"U+{code:04X}"
    return None
