"""How the server reads statement text: the settings its scanner consults, and the bytes'
encoding (DESIGN.md, decision 12). Sans-IO, like the rest of the protocol model.

Theory of operation
-------------------
PostgreSQL converts every string a client sends (query text, statement and portal names,
text parameters) from the session's ``client_encoding`` to the server's encoding when it
reads the message, then scans the text with ``standard_conforming_strings`` deciding whether
a backslash in an ordinary string literal escapes the next character. pgproxy analyses text
with libpg_query and sqlglot, which read UTF-8 with standard-conforming strings. So:

- ``standard_conforming_strings`` must stay on: turning it off is refused, and a server
  whose defaults turn it off is refused at connect.
- Client encodings in which a multibyte character can contain an ASCII byte (a trailing
  ``0x5c``, backslash, ends a string early for the server) are refused: PostgreSQL refuses
  them as server encodings for the same reason. Every other encoding is ASCII-safe and is
  transcoded to UTF-8 before analysis, as the server converts it.
- The state in force is what the server last reported (ParameterStatus; both settings are
  reported). A statement that may change it makes the text after it wait until the server
  has answered it up to ReadyForQuery, where PostgreSQL reports the new values; text is
  never analysed under a guess. A change the proxy did not expect ends the session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pgproxy.wire.messages import decode_str

# PostgreSQL's encoding names and their aliases (src/common/encnames.c), keyed by the name as
# its clean_encoding_name() leaves it: lower case, letters and digits only.
_ALIASES = {
    "abc": "WIN1258", "alt": "WIN866", "big5": "BIG5", "euccn": "EUC_CN", "eucjis2004": "EUC_JIS_2004",
    "eucjp": "EUC_JP", "euckr": "EUC_KR", "euctw": "EUC_TW", "gb18030": "GB18030", "gbk": "GBK",
    "iso88591": "LATIN1", "iso885910": "LATIN6", "iso885913": "LATIN7", "iso885914": "LATIN8",
    "iso885915": "LATIN9", "iso885916": "LATIN10", "iso88592": "LATIN2", "iso88593": "LATIN3",
    "iso88594": "LATIN4", "iso88595": "ISO_8859_5", "iso88596": "ISO_8859_6", "iso88597": "ISO_8859_7",
    "iso88598": "ISO_8859_8", "iso88599": "LATIN5", "johab": "JOHAB", "koi8": "KOI8R", "koi8r": "KOI8R",
    "koi8u": "KOI8U", "latin1": "LATIN1", "latin10": "LATIN10", "latin2": "LATIN2", "latin3": "LATIN3",
    "latin4": "LATIN4", "latin5": "LATIN5", "latin6": "LATIN6", "latin7": "LATIN7", "latin8": "LATIN8",
    "latin9": "LATIN9", "mskanji": "SJIS", "muleinternal": "MULE_INTERNAL", "shiftjis": "SJIS",
    "shiftjis2004": "SHIFT_JIS_2004", "sjis": "SJIS", "sqlascii": "SQL_ASCII", "tcvn": "WIN1258",
    "tcvn5712": "WIN1258", "uhc": "UHC", "unicode": "UTF8", "utf8": "UTF8", "vscii": "WIN1258",
    "win": "WIN1251", "win1250": "WIN1250", "win1251": "WIN1251", "win1252": "WIN1252", "win1253": "WIN1253",
    "win1254": "WIN1254", "win1255": "WIN1255", "win1256": "WIN1256", "win1257": "WIN1257",
    "win1258": "WIN1258", "win866": "WIN866", "win874": "WIN874", "win932": "SJIS", "win936": "GBK",
    "win949": "UHC", "win950": "BIG5", "windows1250": "WIN1250", "windows1251": "WIN1251",
    "windows1252": "WIN1252", "windows1253": "WIN1253", "windows1254": "WIN1254", "windows1255": "WIN1255",
    "windows1256": "WIN1256", "windows1257": "WIN1257", "windows1258": "WIN1258", "windows866": "WIN866",
    "windows874": "WIN874", "windows932": "SJIS", "windows936": "GBK", "windows949": "UHC",
    "windows950": "BIG5",
}
# Client-only encodings: the second byte of a multibyte character can be an ASCII byte.
ASCII_UNSAFE = frozenset({"SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "UHC", "GB18030", "JOHAB"})
# The Python codec that converts each ASCII-safe encoding to Unicode as the server does.
# (SQL_ASCII: the server converts nothing and checks the bytes against its own encoding.)
_CODECS = {
    "UTF8": "utf-8", "SQL_ASCII": "utf-8", "LATIN1": "latin-1", "LATIN2": "iso8859-2",
    "LATIN3": "iso8859-3", "LATIN4": "iso8859-4", "LATIN5": "iso8859-9", "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13", "LATIN8": "iso8859-14", "LATIN9": "iso8859-15", "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5", "ISO_8859_6": "iso8859-6", "ISO_8859_7": "iso8859-7", "ISO_8859_8": "iso8859-8",
    "WIN1250": "cp1250", "WIN1251": "cp1251", "WIN1252": "cp1252", "WIN1253": "cp1253", "WIN1254": "cp1254",
    "WIN1255": "cp1255", "WIN1256": "cp1256", "WIN1257": "cp1257", "WIN1258": "cp1258", "WIN866": "cp866",
    "WIN874": "cp874", "KOI8R": "koi8-r", "KOI8U": "koi8-u", "EUC_JP": "euc_jp", "EUC_JIS_2004": "euc_jis_2004",
    "EUC_KR": "euc_kr", "EUC_CN": "gb2312",
}
# The settings PostgreSQL's scanner consults, as the server reports them (ParameterStatus).
# (backslash_quote only decides whether \' in an E'' string is an error, never a token's end.)
CLIENT_ENCODING = "client_encoding"
STANDARD_CONFORMING_STRINGS = "standard_conforming_strings"
LEXING_SETTINGS = frozenset({CLIENT_ENCODING, STANDARD_CONFORMING_STRINGS})

_NOT_ALNUM = re.compile(r"[^a-z0-9]")
# PostgreSQL's parse_bool(): a unique prefix of true/false/yes/no, on/off, 1/0.
_TRUE = re.compile(r"^(t(r(ue?)?)?|y(es?)?|on|1)$")
_FALSE = re.compile(r"^(f(a(l(se?)?)?)?|n(o)?|off?|0)$")


def encoding_name(name: str) -> str | None:
    """The canonical name PostgreSQL gives an encoding name or alias (None: not one it knows)."""
    return _ALIASES.get(_NOT_ALNUM.sub("", name.lower()))


def parse_bool(value: str) -> bool | None:
    text = value.strip().lower()
    if _TRUE.match(text):
        return True
    if _FALSE.match(text):
        return False
    return None


def setting_refusal(name: str, value: str) -> str | None:
    """Why pgproxy cannot let `name` take `value` (None: it can read text after it).

    >>> setting_refusal("client_encoding", "latin1") is None
    True
    >>> setting_refusal("standard_conforming_strings", "off")[:40]
    'standard_conforming_strings off makes a '
    """
    name = name.lower()
    if name == STANDARD_CONFORMING_STRINGS:
        if parse_bool(value) is True:
            return None
        return ("standard_conforming_strings off makes a backslash in a string literal escape the next character, "
                "so pgproxy would read statements differently from the server")
    if name == CLIENT_ENCODING:
        canonical = encoding_name(value)
        if canonical is None:
            return f'"{value}" is not an encoding pgproxy knows'
        if canonical in ASCII_UNSAFE:
            return (f"in client encoding {canonical} a multibyte character can contain a quote or backslash "
                    "byte, so pgproxy would read statements differently from the server (PostgreSQL refuses "
                    "it as a server encoding for the same reason); use UTF8")
        if canonical not in _CODECS:
            return f"pgproxy cannot transcode client encoding {canonical}; use UTF8"
    return None


class UnreadableText(Exception):
    """Bytes that are not text in the session's client encoding (the server refuses them too)."""


@dataclass(slots=True)
class Lexing:
    """The lexing state in force on the server (as reported), and whether a statement that
    may change it is still unanswered (`pending`) or a change made in the open transaction
    block may be undone when it ends (`in_block`)."""

    encoding: str = "UTF8"
    codec: str | None = None  # None: UTF-8 (decoded like every other protocol string)
    pending: bool = False
    in_block: bool = False

    @property
    def plain(self) -> bool:
        """UTF-8 and nothing pending: the hot paths may read text without asking."""
        return self.codec is None and not self.pending

    def decode(self, raw: bytes) -> str:
        """Client text as the server reads it, in Unicode."""
        if self.codec is None:
            return decode_str(raw)
        try:
            return raw.decode(self.codec)
        except UnicodeDecodeError as exc:
            raise UnreadableText(f"invalid byte sequence for encoding {self.encoding}: "
                                 f"0x{raw[exc.start:exc.start + 1].hex()}") from None

    def report(self, name: str, value: str, *, strict: bool) -> str | None:
        """The server reported a setting (ParameterStatus): follow it, or say why the session
        cannot go on (`strict`: statements are analysed, so the text must be readable)."""
        if name not in LEXING_SETTINGS:
            return None
        refused = setting_refusal(name, value)
        if name == CLIENT_ENCODING:
            canonical = encoding_name(value)
            changed = canonical != self.encoding
            if refused is None and canonical is not None:
                self.encoding = canonical
                codec = _CODECS[canonical]
                self.codec = None if codec == "utf-8" else codec
        else:
            changed = refused is not None
        if not strict:
            return None
        if refused is not None:
            return f"the server's {name} is now {value}: {refused}"
        if changed and not self.pending:
            return f"the server's {name} changed to {value} without a statement pgproxy expected to change it"
        return None

    def settle(self, status: str) -> None:
        """A ReadyForQuery with nothing outstanding: the server has reported what changed. A
        change inside a transaction block lasts only if the block commits: until the block
        ends, ending it may change the state again."""
        if self.pending:
            self.pending = False
            self.in_block = status != "I"
        elif status == "I":
            self.in_block = False
