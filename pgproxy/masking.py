"""Masking: the values of tagged columns in a result replaced by masks, as they pass (sans-IO).

A statement the policy masks (action `mask`), or that a reviewer approved with masking, runs
unchanged; what changes is its result. Which output columns are masked is never guessed from
names: a RowDescription names the table OID and attribute number of every plain column of a
result, and a column whose (table, attnum) is a tagged column of a base table is masked. COPY
has no RowDescription: its output columns are the ones the analysis resolved from the statement
(`COPY t (cols) TO STDOUT`, `COPY (SELECT cols FROM t) TO STDOUT`), checked against the column
count the server announces.

Masks depend on the column's tags (`MaskRules`, configurable): `email` keeps the first
character and the domain (`a***@example.com`), `last4` keeps the last four digits and the
punctuation (`***-**-6789`), `placeholder` is a fixed text, `null` is NULL. A mask that is text
is only valid for a text-like column (text, varchar, char, name): any other type gets NULL. For
those types the text and the binary format carry the same bytes (the value in the client
encoding), so one mask serves both formats; NULL is the same in both.

Binary COPY (`FORMAT binary`) is a byte stream, not one row per CopyData: a signature, flags
and a header extension, then tuples (a field count, then each field's length, -1 for NULL, and
its bytes), then a -1 trailer. PostgreSQL sends the header with the first tuple and every tuple
in a CopyData of its own, but nothing here relies on it: a tuple split across CopyData is held
back until it is whole. A tuple is laid out as a DataRow's body is, so it is masked as one.

Whether a statement *can* be masked (its tagged columns appear only as plain output columns)
is the analysis's question (pgproxy.analysis.masking); this module only rewrites.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType


class MaskKind(StrEnum):
    EMAIL = "email"  # first character and the domain: a***@example.com
    LAST4 = "last4"  # the last four digits and the punctuation: ***-**-6789
    PLACEHOLDER = "placeholder"  # a fixed text (masking.placeholder)
    NULL = "null"


# Of several rules that apply to a column, the one that reveals least wins.
_REVEALS = {MaskKind.EMAIL: 3, MaskKind.LAST4: 2, MaskKind.PLACEHOLDER: 1, MaskKind.NULL: 0}

DEFAULT_TAG_MASKS: Mapping[str, MaskKind] = MappingProxyType({
    "pii.email": MaskKind.EMAIL, "pii.phone": MaskKind.LAST4, "pii.ssn": MaskKind.LAST4})
DEFAULT_PLACEHOLDER = "***"

# Types whose values a text mask may replace: text, varchar, bpchar (char(n)), name. A domain's
# RowDescription names its base type. Anything else (numbers, dates, json, arrays, citext, whose
# OID is not fixed) gets NULL.
TEXT_TYPES = frozenset({25, 1043, 1042, 19})


@dataclass(frozen=True, slots=True)
class MaskRules:
    """Which mask each tag gets (`tags`: a tag, and every tag below it: `pii` covers `pii.email`),
    the mask of a tagged column no rule covers (`default`), and the placeholder text."""

    # A plain dict of its own (a config travels to worker processes, which pickle it).
    tags: Mapping[str, MaskKind] = field(default_factory=lambda: dict(DEFAULT_TAG_MASKS))
    default: MaskKind = MaskKind.PLACEHOLDER
    placeholder: str = DEFAULT_PLACEHOLDER

    def kind_for(self, tags: frozenset[str]) -> MaskKind:
        """The mask of a column with these tags: of the rules covering any of its tags, the one
        that reveals least; `default` when none does.

        >>> MaskRules().kind_for(frozenset({"pii", "pii.email"}))
        <MaskKind.EMAIL: 'email'>
        """
        found = [kind for name, kind in self.tags.items()
                 if any(tag == name or tag.startswith(name + ".") for tag in tags)]
        return min(found, key=_REVEALS.__getitem__) if found else self.default

    def text(self, kind: MaskKind, value: str) -> str | None:
        """The masked text of `value` (None: NULL)."""
        if kind is MaskKind.EMAIL:
            local, at, domain = value.rpartition("@")
            if not at or not local or not domain:
                return self.placeholder
            return f"{local[0]}***@{domain}"
        if kind is MaskKind.LAST4:
            digits = [i for i, c in enumerate(value) if c in "0123456789"]
            kept = set(digits[-4:]) if len(digits) > 4 else set()
            return "".join(c if i in kept or not c.isalnum() else "*" for i, c in enumerate(value))
        if kind is MaskKind.PLACEHOLDER:
            return self.placeholder
        return None

    def value(self, kind: MaskKind, raw: bytes, codec: str) -> bytes | None:
        """A text column's value (in the client encoding, `codec`) masked; None: NULL. A value
        that does not decode gets the placeholder (never a part of it)."""
        if kind is MaskKind.NULL:
            return None
        try:
            text = raw.decode(codec)
        except (UnicodeDecodeError, LookupError):
            return self.placeholder.encode(codec, "replace")
        masked = self.text(kind, text)
        return None if masked is None else masked.encode(codec, "replace")

    def masker(self, kind: MaskKind | None, codec: str) -> Callable[[bytes], bytes | None]:
        """`value` for one mask and encoding, with a fast path for ASCII values: the encodings
        pgproxy reads are ASCII-safe (an ASCII byte is always that character), so an ASCII value's
        bytes are its characters."""
        if kind is None or kind is MaskKind.NULL:
            return _null
        placeholder = self.placeholder.encode(codec, "replace")
        slow = functools.partial(self.value, kind, codec=codec)
        if kind is MaskKind.PLACEHOLDER:
            return lambda raw: placeholder
        if kind is MaskKind.EMAIL:
            def email(raw: bytes) -> bytes | None:
                if not raw.isascii():
                    return slow(raw)
                local, at, domain = raw.rpartition(b"@")
                return local[:1] + b"***@" + domain if at and local and domain else placeholder
            return email

        def last4(raw: bytes) -> bytes | None:
            if not raw.isascii():
                return slow(raw)
            masked = raw.translate(_ALNUM_STARS)
            if len(raw) - len(raw.translate(None, _DIGITS)) <= 4:
                return masked
            kept = bytearray(masked)
            found = 0
            for i in range(len(raw) - 1, -1, -1):
                if 48 <= raw[i] <= 57:
                    kept[i] = raw[i]
                    found += 1
                    if found == 4:
                        break
            return bytes(kept)
        return last4


def _null(raw: bytes) -> None:
    return None


_DIGITS = b"0123456789"
_ALNUM_STARS = bytes.maketrans(_DIGITS + bytes(range(65, 91)) + bytes(range(97, 123)), b"*" * 62)
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")


@dataclass(slots=True)
class RowMask:
    """The masks of one result's DataRows: (field index, mask; None: NULL, the column is not
    text-like), in field order."""

    columns: tuple[tuple[int, MaskKind | None], ...]
    rules: MaskRules
    codec: str = "utf-8"
    # Per field up to the last masked one: its masker, or None (fields after it pass as they are).
    _maskers: list[Callable[[bytes], bytes | None] | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        by_index = {index: self.rules.masker(kind, self.codec) for index, kind in self.columns}
        self._maskers = [by_index.get(i) for i in range(max(by_index, default=-1) + 1)]

    def data_row(self, body: bytes) -> bytes:
        """A DataRow's body with the masked fields replaced (a malformed row raises ValueError)."""
        if _I16.unpack_from(body, 0)[0] < len(self._maskers):
            raise ValueError("DataRow has fewer fields than its RowDescription")
        unpack = _I32.unpack_from
        pos = 2
        out: list[bytes] = []
        done = 0  # body[:done] is in `out`
        for masker in self._maskers:
            length = unpack(body, pos)[0]
            end = pos + 4 + (length if length > 0 else 0)
            if masker is not None and length >= 0:
                masked = masker(body[pos + 4:end])
                out.append(body[done:pos])
                out.append(_NULL if masked is None else _I32.pack(len(masked)) + masked)
                done = end
            pos = end
        if pos > len(body):  # checked once: positions only grow (nothing is sent before this returns)
            raise ValueError("DataRow field runs past the message")
        out.append(body[done:])
        return b"".join(out)


_NULL = _I32.pack(-1)


def row_mask(fields: list[tuple[int, int, int]], tagged: Mapping[tuple[int, int], frozenset[str]],
             rules: MaskRules, codec: str) -> RowMask:
    """The RowMask of a result whose RowDescription has these (table oid, attnum, type oid)
    fields; `tagged` maps the tagged columns of base tables to their tags."""
    columns = []
    for index, (oid, attnum, type_oid) in enumerate(fields):
        tags = tagged.get((oid, attnum))
        if tags is not None:
            columns.append((index, rules.kind_for(tags) if type_oid in TEXT_TYPES else None))
    return RowMask(tuple(columns), rules, codec)


@dataclass(frozen=True, slots=True)
class CopySpec:
    """How a masked COPY … TO STDOUT's rows read: its format, each output column's mask (None:
    not a tagged column) and which output columns are text-like."""

    format: CopyFormat
    columns: tuple[MaskKind | None, ...]
    text_columns: frozenset[int]


@dataclass(frozen=True, slots=True, eq=False)
class MaskSpec:
    """What masking an execution's results needs: the rules, and the tagged columns of base tables
    by (table oid, attnum) with their tags (those a RowDescription can name)."""

    rules: MaskRules
    tagged: Mapping[tuple[int, int], frozenset[str]]

    def rows(self, fields: list[tuple[int, int, int]], codec: str | None) -> RowMask:
        return row_mask(fields, self.tagged, self.rules, codec or "utf-8")

    def copy(self, spec: CopySpec, codec: str | None) -> CopyMask:
        return CopyMask(spec.format, spec.columns, self.rules, codec or "utf-8", spec.text_columns)


# -- COPY TO STDOUT (text, CSV and binary) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class CopyFormat:
    """A COPY TO's format, as its options set it (PostgreSQL's defaults otherwise): text, CSV, or
    binary (`binary`: the other fields do not apply)."""

    csv: bool = False
    delimiter: str = "\t"
    null: str = "\\N"
    quote: str = '"'
    escape: str = '"'
    header: bool = False
    binary: bool = False

    def isascii_safe(self) -> bool:
        """Delimiter, quote and escape are single ASCII characters that cannot be confused with
        each other, a newline, or (text format) the backslash escapes. Binary COPY has none."""
        if self.binary:
            return True
        marks = (self.delimiter, self.quote, self.escape) if self.csv else (self.delimiter,)
        return all(len(c) == 1 and c.isascii() and c not in "\r\n" and (self.csv or c != "\\") for c in marks) \
            and self.delimiter != self.quote and self.delimiter not in self.null


_UNESCAPE = {ord("b"): "\b", ord("f"): "\f", ord("n"): "\n", ord("r"): "\r", ord("t"): "\t", ord("v"): "\v"}


@dataclass(slots=True)
class CopyMask:
    """The masks of one COPY TO's rows. In text and CSV, each CopyData the server sends is one
    row (the first is the header line when the format has one); binary COPY is read as a
    stream (`BinaryCopyStream`)."""

    format: CopyFormat
    columns: tuple[MaskKind | None, ...]  # per output column: its mask (None: not masked)
    rules: MaskRules
    codec: str = "utf-8"
    text_columns: frozenset[int] = frozenset()  # positions whose type is text-like
    _header_pending: bool = False
    _maskers: tuple[Callable[[bytes], bytes | None] | None, ...] = ()
    _marks: tuple[bytes, bytes, bytes] = (b"", b"", b"")  # delimiter, NULL string, quote (ASCII)
    _quick_ok: bool = False
    _binary: BinaryCopyStream | None = None

    def __post_init__(self) -> None:
        if self.format.binary:
            self._binary = BinaryCopyStream(len(self.columns), RowMask(
                tuple((i, kind if i in self.text_columns else None) for i, kind in enumerate(self.columns)
                      if kind is not None), self.rules, self.codec))
            return
        self._header_pending = self.format.header
        self._maskers = tuple(None if kind is None else self.rules.masker(kind if i in self.text_columns else None,
                                                                           self.codec)
                              for i, kind in enumerate(self.columns))
        fmt = self.format
        self._marks = (fmt.delimiter.encode(), fmt.null.encode(self.codec, "replace"), fmt.quote.encode())
        # The masks of a field without escapes, quotes or delimiters add none, unless the placeholder does.
        placeholder = self.rules.placeholder
        self._quick_ok = not any(c in placeholder for c in ("\\", fmt.delimiter, fmt.quote, "\n", "\r"))

    def copy_data(self, body: bytes) -> bytes:
        """One CopyData's body (a row) with the masked fields replaced (ValueError if malformed).
        Binary COPY: what of the stream is whole so far, masked (b"": nothing yet)."""
        if self._binary is not None:
            return self._binary.feed(body)
        if self._header_pending:
            self._header_pending = False
            return body
        quick = self._quick(body)
        return quick if quick is not None else self._row(body)

    def finish(self) -> None:
        """The server sent CopyDone: a binary stream must have ended with its trailer (ValueError)."""
        if self._binary is not None:
            self._binary.finish()

    def _quick(self, body: bytes) -> bytes | None:
        """An ASCII row without escapes or quotes: its fields are what splitting on the delimiter
        gives (None: take the general path)."""
        delimiter, null, quote = self._marks
        if not self._quick_ok or not body.isascii() or not body.endswith(b"\n") \
                or (quote if self.format.csv else b"\\") in body:
            return None
        fields = body[:-1].split(delimiter)
        if len(fields) != len(self._maskers):
            raise ValueError(f"COPY row has {len(fields)} fields where pgproxy expected {len(self._maskers)}")
        for index, masker in enumerate(self._maskers):
            if masker is None or fields[index] == null:
                continue
            masked = masker(fields[index])
            if masked is None:
                fields[index] = null
            else:
                fields[index] = quote + masked + quote if self.format.csv else masked
        return delimiter.join(fields) + b"\n"

    def _row(self, body: bytes) -> bytes:
        text = body.decode(self.codec)
        fields = _csv_fields(text, self.format) if self.format.csv else _text_fields(text, self.format)
        if len(fields) != len(self.columns):
            raise ValueError(f"COPY row has {len(fields)} fields where pgproxy expected {len(self.columns)}")
        out: list[str] = []
        for position, ((raw, value), kind) in enumerate(zip(fields, self.columns, strict=True)):
            if kind is None:
                out.append(raw)
                continue
            masked = None
            if value is not None and position in self.text_columns:
                masked = self.rules.text(kind, value)
            out.append(self.format.null if masked is None else
                       _csv_quote(masked, self.format) if self.format.csv else _text_escape(masked, self.format))
        return (self.format.delimiter.join(out) + "\n").encode(self.codec, "replace")


COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\0"
_HEADER = len(COPY_SIGNATURE) + 8  # the signature, the flags and the header extension's length
# Flag bits 16-31 mark changes a reader must understand or stop at (bit 16: each tuple carries an
# OID, gone since PostgreSQL 12); bits 0-15 may be ignored.
_CRITICAL_FLAGS = 0xFFFF0000
# PostgreSQL builds each row in one buffer of at most 1 GB (MaxAllocSize): a partial tuple longer
# than that is not a stream PostgreSQL sent.
_MAX_PENDING = 1 << 30


@dataclass(slots=True)
class BinaryCopyStream:
    """A binary COPY TO's stream, read across CopyData boundaries (PostgreSQL's "Binary Format"
    of COPY): the header passes unchanged, each tuple is masked by `rows` (a tuple is laid out as
    a DataRow's body), the trailer passes; a tuple or header split across CopyData is held back
    until it is whole. Anything else raises ValueError: a tuple whose field count is not
    `columns`, flags pgproxy cannot read, bytes after the trailer, a stream that stops early."""

    columns: int
    rows: RowMask
    _pending: bytes = b""  # the start of what is not whole yet
    _stage: int = 0  # 0: the header, 1: tuples, 2: after the trailer

    def feed(self, data: bytes) -> bytes:
        """The next CopyData's body; returns what of the stream is now whole, masked."""
        buf = self._pending + data if self._pending else data
        pos = 0
        out: list[bytes] = []
        if self._stage == 0:
            pos = self._header(buf)
            if pos == 0:
                self._hold(buf)
                return b""
            out.append(buf[:pos])
            self._stage = 1
        while self._stage == 1:
            end = self._tuple_end(buf, pos)
            if end is None:
                break
            if end == pos + 2:  # the trailer
                out.append(buf[pos:end])
                self._stage = 2
            else:
                out.append(self.rows.data_row(buf[pos:end]))
            pos = end
        if self._stage == 2 and pos < len(buf):
            raise ValueError("binary COPY data follows its trailer")
        self._hold(buf[pos:])
        return b"".join(out)

    def finish(self) -> None:
        if self._stage != 2 or self._pending:
            raise ValueError("binary COPY ended before its trailer")

    def _hold(self, rest: bytes) -> None:
        if len(rest) > _MAX_PENDING:
            raise ValueError("binary COPY tuple is longer than PostgreSQL sends")
        self._pending = rest

    @staticmethod
    def _header(buf: bytes) -> int:
        """The header's length once it is whole (0 before), checked as far as it has come."""
        seen = min(len(buf), len(COPY_SIGNATURE))
        if buf[:seen] != COPY_SIGNATURE[:seen]:
            raise ValueError("binary COPY does not start with PostgreSQL's signature")
        if len(buf) < _HEADER:
            return 0
        flags = _I32.unpack_from(buf, len(COPY_SIGNATURE))[0] & 0xFFFFFFFF
        if flags & _CRITICAL_FLAGS:
            raise ValueError(f"binary COPY has flags pgproxy cannot read ({flags:#010x})")
        extension = _I32.unpack_from(buf, _HEADER - 4)[0]
        if extension < 0:
            raise ValueError("binary COPY header extension has a negative length")
        return _HEADER + extension if len(buf) >= _HEADER + extension else 0

    def _tuple_end(self, buf: bytes, pos: int) -> int | None:
        """Where the tuple (or trailer) at `pos` ends; None when it is not whole yet."""
        size = len(buf)
        if size - pos < 2:
            return None
        count = _I16.unpack_from(buf, pos)[0]
        if count == -1:
            return pos + 2
        if count != self.columns:
            raise ValueError(f"binary COPY tuple has {count} fields where pgproxy expected {self.columns}")
        pos += 2
        for _ in range(count):
            if size - pos < 4:
                return None
            length = _I32.unpack_from(buf, pos)[0]
            if length < -1:
                raise ValueError("binary COPY field has a negative length")
            pos += 4 + (length if length > 0 else 0)
            if pos > size:
                return None
        return pos


def _line(text: str) -> str:
    if not text.endswith("\n"):
        raise ValueError("COPY row does not end with a newline")
    return text[:-1]


def _text_fields(text: str, fmt: CopyFormat) -> list[tuple[str, str | None]]:
    """A text-format row's fields: (as sent, value; None for NULL)."""
    line = _line(text)
    fields: list[tuple[str, str | None]] = []
    start = 0
    i = 0
    value: list[str] = []
    while True:
        if i == len(line) or line[i] == fmt.delimiter:
            raw = line[start:i]
            fields.append((raw, None if raw == fmt.null else "".join(value)))
            if i == len(line):
                return fields
            start = i = i + 1
            value = []
            continue
        char = line[i]
        if char == "\\" and i + 1 < len(line):
            following = line[i + 1]
            value.append(_UNESCAPE.get(ord(following), following))
            i += 2
            continue
        value.append(char)
        i += 1


def _text_escape(value: str, fmt: CopyFormat) -> str:
    out = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    if fmt.delimiter != "\t":
        out = out.replace(fmt.delimiter, "\\" + fmt.delimiter)
    return out.replace("\t", "\\t")


def _csv_fields(text: str, fmt: CopyFormat) -> list[tuple[str, str | None]]:
    """A CSV row's fields: (as sent, value; None for an unquoted NULL string)."""
    line = _line(text)
    fields: list[tuple[str, str | None]] = []
    i = 0
    while True:
        start = i
        value: list[str] = []
        quoted = False
        while i < len(line) and (quoted or line[i] != fmt.delimiter):
            char = line[i]
            if quoted and char == fmt.escape and i + 1 < len(line) and line[i + 1] in (fmt.quote, fmt.escape) \
                    and not (fmt.escape == fmt.quote and line[i + 1] != fmt.quote):
                value.append(line[i + 1])
                i += 2
                continue
            if char == fmt.quote:
                quoted = not quoted
            else:
                value.append(char)
            i += 1
        if quoted:
            raise ValueError("COPY CSV row has an unterminated quoted field")
        raw = line[start:i]
        fields.append((raw, None if raw == fmt.null else "".join(value)))
        if i == len(line):
            return fields
        i += 1


def _csv_quote(value: str, fmt: CopyFormat) -> str:
    escaped = value.replace(fmt.escape, fmt.escape + fmt.escape) if fmt.escape != fmt.quote else value
    return fmt.quote + escaped.replace(fmt.quote, fmt.escape + fmt.quote) + fmt.quote
