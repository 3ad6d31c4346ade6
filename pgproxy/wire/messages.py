"""Protocol v3 messages: one frozen, slotted dataclass per message, named as in
PostgreSQL's protocol chapter ("Message Formats"), each able to encode itself.

Only the messages the proxy must read or write have a class; everything else
is forwarded as the original bytes and only its type byte is looked at.
Strings on the wire are NUL-terminated; they are decoded as UTF-8 with
``surrogateescape`` so that any byte sequence survives a decode/encode round trip.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

# --- Message-type bytes -----------------------------------------------------
#
# Frontend (client -> server) messages after startup.
BIND = ord("B")
CLOSE = ord("C")  # also CommandComplete in the other direction
COPY_DATA = ord("d")
COPY_DONE = ord("c")
COPY_FAIL = ord("f")
DESCRIBE = ord("D")  # also DataRow in the other direction
EXECUTE = ord("E")  # also ErrorResponse in the other direction
FLUSH = ord("H")  # also CopyOutResponse in the other direction
FUNCTION_CALL = ord("F")
PARSE = ord("P")
PASSWORD = ord("p")  # PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse
QUERY = ord("Q")
SYNC = ord("S")  # also ParameterStatus in the other direction
TERMINATE = ord("X")

FRONTEND_TYPES = frozenset(
    {BIND, CLOSE, COPY_DATA, COPY_DONE, COPY_FAIL, DESCRIBE, EXECUTE, FLUSH, FUNCTION_CALL,
     PARSE, PASSWORD, QUERY, SYNC, TERMINATE}
)

# Backend (server -> client) messages.
AUTHENTICATION = ord("R")
BACKEND_KEY_DATA = ord("K")
BIND_COMPLETE = ord("2")
CLOSE_COMPLETE = ord("3")
COMMAND_COMPLETE = ord("C")
COPY_IN_RESPONSE = ord("G")
COPY_OUT_RESPONSE = ord("H")
COPY_BOTH_RESPONSE = ord("W")
DATA_ROW = ord("D")
EMPTY_QUERY_RESPONSE = ord("I")
ERROR_RESPONSE = ord("E")
FUNCTION_CALL_RESPONSE = ord("V")
NEGOTIATE_PROTOCOL_VERSION = ord("v")
NO_DATA = ord("n")
NOTICE_RESPONSE = ord("N")
NOTIFICATION_RESPONSE = ord("A")
PARAMETER_DESCRIPTION = ord("t")
PARAMETER_STATUS = ord("S")
PARSE_COMPLETE = ord("1")
PORTAL_SUSPENDED = ord("s")
READY_FOR_QUERY = ord("Z")
ROW_DESCRIPTION = ord("T")

BACKEND_TYPES = frozenset(
    {AUTHENTICATION, BACKEND_KEY_DATA, BIND_COMPLETE, CLOSE_COMPLETE, COMMAND_COMPLETE,
     COPY_DATA, COPY_DONE, COPY_IN_RESPONSE, COPY_OUT_RESPONSE, COPY_BOTH_RESPONSE, DATA_ROW,
     EMPTY_QUERY_RESPONSE, ERROR_RESPONSE, FUNCTION_CALL_RESPONSE, NEGOTIATE_PROTOCOL_VERSION,
     NO_DATA, NOTICE_RESPONSE, NOTIFICATION_RESPONSE, PARAMETER_DESCRIPTION, PARAMETER_STATUS,
     PARSE_COMPLETE, PORTAL_SUSPENDED, READY_FOR_QUERY, ROW_DESCRIPTION}
)

# Startup packets have no type byte; the first int32 after the length says what they are.
PROTOCOL_V3 = 196608  # 3 << 16 | 0
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# Authentication request codes (the int32 that starts an 'R' message).
AUTH_OK = 0
AUTH_CLEARTEXT_PASSWORD = 3
AUTH_MD5_PASSWORD = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")
_HEADER = struct.Struct("!ci")


def decode_str(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def encode_str(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape") + b"\x00"


FLUSH_MESSAGE = b"H\x00\x00\x00\x04"  # Flush: the server sends what it has buffered


def frame(type_byte: int, body: bytes) -> bytes:
    """A complete message: type byte, int32 length (counting itself), body."""
    return _HEADER.pack(bytes((type_byte,)), len(body) + 4) + body


class MessageFormatError(ValueError):
    """A message body does not match its documented format."""


class UnsupportedProtocolVersion(MessageFormatError):
    """A StartupMessage asks for a protocol major version other than 3."""


class _Cursor:
    """Reads the fields of one message body; raises MessageFormatError on a short read."""

    __slots__ = ("body", "pos")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 0

    def int32(self) -> int:
        if self.pos + 4 > len(self.body):
            raise MessageFormatError("message ends inside an int32 field")
        (value,) = _I32.unpack_from(self.body, self.pos)
        self.pos += 4
        return int(value)

    def int16(self) -> int:
        if self.pos + 2 > len(self.body):
            raise MessageFormatError("message ends inside an int16 field")
        (value,) = _I16.unpack_from(self.body, self.pos)
        self.pos += 2
        return int(value)

    def byte(self) -> int:
        if self.pos >= len(self.body):
            raise MessageFormatError("message ends inside a byte field")
        value = self.body[self.pos]
        self.pos += 1
        return value

    def cstring(self, decode: Callable[[bytes], str] = decode_str) -> str:
        end = self.body.find(b"\x00", self.pos)
        if end < 0:
            raise MessageFormatError("string field is not NUL-terminated")
        value = decode(self.body[self.pos:end])
        self.pos = end + 1
        return value

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.body):
            raise MessageFormatError("message ends inside a byte-string field")
        value = self.body[self.pos:self.pos + n]
        self.pos += n
        return value

    def rest(self) -> bytes:
        value = self.body[self.pos:]
        self.pos = len(self.body)
        return value

    def done(self) -> None:
        if self.pos != len(self.body):
            raise MessageFormatError(f"{len(self.body) - self.pos} unexpected bytes at end of message")


# --- Startup packets ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage:
    parameters: dict[str, str]
    protocol: int = PROTOCOL_V3

    def encode(self) -> bytes:
        body = _I32.pack(self.protocol) + b"".join(
            encode_str(k) + encode_str(v) for k, v in self.parameters.items()
        ) + b"\x00"
        return _I32.pack(len(body) + 4) + body


@dataclass(frozen=True, slots=True)
class SSLRequest:
    def encode(self) -> bytes:
        return _I32.pack(8) + _I32.pack(SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    def encode(self) -> bytes:
        return _I32.pack(8) + _I32.pack(GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    process_id: int
    secret_key: int

    def encode(self) -> bytes:
        return struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, self.process_id, self.secret_key)


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def decode_startup_packet(body: bytes) -> StartupPacket:
    """Decode a startup packet's body (everything after its int32 length)."""
    cur = _Cursor(body)
    code = cur.int32()
    if code == SSL_REQUEST_CODE:
        cur.done()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        cur.done()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        pid, key = cur.int32(), cur.int32()
        cur.done()
        return CancelRequest(pid, key)
    if code >> 16 != 3:
        raise UnsupportedProtocolVersion(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0 to 3.0"
        )
    params: dict[str, str] = {}
    while True:
        name = cur.cstring()
        if not name:
            break
        params[name] = cur.cstring()
    cur.done()
    return StartupMessage(params, code)


# --- Frontend messages --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    sql: str

    def encode(self) -> bytes:
        return frame(QUERY, encode_str(self.sql))


def decode_query(body: bytes) -> Query:
    return Query(decode_query_text(body))


def decode_query_text(body: bytes, decode: Callable[[bytes], str] = decode_str) -> str:
    """A Query's SQL text (what the relay needs of it, without building a Query); `decode`
    turns the client's bytes into text (they are in the session's client encoding)."""
    if body.find(b"\x00") == len(body) - 1:
        return decode(body[:-1])
    cur = _Cursor(body)  # to say what is wrong
    sql = cur.cstring(decode)
    cur.done()
    return sql


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    sql: str
    param_types: tuple[int, ...] = ()

    def encode(self) -> bytes:
        body = encode_str(self.name) + encode_str(self.sql) + _I16.pack(len(self.param_types))
        body += b"".join(_I32.pack(t) for t in self.param_types)
        return frame(PARSE, body)


def decode_parse(body: bytes, decode: Callable[[bytes], str] = decode_str) -> Parse:
    cur = _Cursor(body)
    name, sql = cur.cstring(decode), cur.cstring(decode)
    count = cur.int16()
    if count < 0:
        raise MessageFormatError("negative parameter type count")
    types = tuple(cur.int32() for _ in range(count))
    cur.done()
    return Parse(name, sql, types)


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]

    def encode(self) -> bytes:
        parts = [encode_str(self.portal), encode_str(self.statement),
                 _I16.pack(len(self.param_formats))]
        parts += [_I16.pack(f) for f in self.param_formats]
        parts.append(_I16.pack(len(self.params)))
        for p in self.params:
            parts.append(_I32.pack(-1) if p is None else _I32.pack(len(p)) + p)
        parts.append(_I16.pack(len(self.result_formats)))
        parts += [_I16.pack(f) for f in self.result_formats]
        return frame(BIND, b"".join(parts))


def decode_bind(body: bytes) -> Bind:
    cur = _Cursor(body)
    portal, statement = cur.cstring(), cur.cstring()
    param_formats = tuple(cur.int16() for _ in range(_count(cur)))
    params: list[bytes | None] = []
    for _ in range(_count(cur)):
        n = cur.int32()
        params.append(None if n == -1 else cur.raw(n))
    result_formats = tuple(cur.int16() for _ in range(_count(cur)))
    cur.done()
    return Bind(portal, statement, param_formats, tuple(params), result_formats)


def _count(cur: _Cursor) -> int:
    n = cur.int16()
    if n < 0:
        raise MessageFormatError("negative count")
    return n


@dataclass(frozen=True, slots=True)
class Describe:
    kind: str  # "S" statement or "P" portal
    name: str

    def encode(self) -> bytes:
        return frame(DESCRIBE, self.kind.encode() + encode_str(self.name))


@dataclass(frozen=True, slots=True)
class Execute:
    portal: str
    max_rows: int = 0

    def encode(self) -> bytes:
        return frame(EXECUTE, encode_str(self.portal) + _I32.pack(self.max_rows))


def decode_execute(body: bytes) -> Execute:
    cur = _Cursor(body)
    portal = cur.cstring()
    max_rows = cur.int32()
    cur.done()
    return Execute(portal, max_rows)


@dataclass(frozen=True, slots=True)
class Sync:
    def encode(self) -> bytes:
        return frame(SYNC, b"")


@dataclass(frozen=True, slots=True)
class Terminate:
    def encode(self) -> bytes:
        return frame(TERMINATE, b"")


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    password: str

    def encode(self) -> bytes:
        return frame(PASSWORD, encode_str(self.password))


def decode_password(body: bytes) -> PasswordMessage:
    cur = _Cursor(body)
    password = cur.cstring()
    cur.done()
    return PasswordMessage(password)


@dataclass(frozen=True, slots=True)
class SASLInitialResponse:
    mechanism: str
    data: bytes | None

    def encode(self) -> bytes:
        payload = _I32.pack(-1) if self.data is None else _I32.pack(len(self.data)) + self.data
        return frame(PASSWORD, encode_str(self.mechanism) + payload)


def decode_sasl_initial_response(body: bytes) -> SASLInitialResponse:
    cur = _Cursor(body)
    mechanism = cur.cstring()
    n = cur.int32()
    data = None if n == -1 else cur.raw(n)
    cur.done()
    return SASLInitialResponse(mechanism, data)


@dataclass(frozen=True, slots=True)
class SASLResponse:
    data: bytes

    def encode(self) -> bytes:
        return frame(PASSWORD, self.data)


# --- Backend messages ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Authentication:
    """Any 'R' message: `code` is one of the AUTH_* constants; `data` what follows it."""

    code: int
    data: bytes = b""

    def encode(self) -> bytes:
        return frame(AUTHENTICATION, _I32.pack(self.code) + self.data)


def decode_authentication(body: bytes) -> Authentication:
    cur = _Cursor(body)
    code = cur.int32()
    return Authentication(code, cur.rest())


def sasl_mechanisms(data: bytes) -> list[str]:
    """The mechanism names listed by AuthenticationSASL."""
    return [decode_str(m) for m in data.split(b"\x00") if m]


def auth_sasl(mechanisms: list[str]) -> Authentication:
    return Authentication(AUTH_SASL, b"".join(encode_str(m) for m in mechanisms) + b"\x00")


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    process_id: int
    secret_key: int

    def encode(self) -> bytes:
        return frame(BACKEND_KEY_DATA, struct.pack("!ii", self.process_id, self.secret_key))


def decode_backend_key_data(body: bytes) -> BackendKeyData:
    cur = _Cursor(body)
    pid, key = cur.int32(), cur.int32()
    cur.done()
    return BackendKeyData(pid, key)


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    name: str
    value: str

    def encode(self) -> bytes:
        return frame(PARAMETER_STATUS, encode_str(self.name) + encode_str(self.value))


def decode_parameter_status(body: bytes) -> ParameterStatus:
    cur = _Cursor(body)
    name, value = cur.cstring(), cur.cstring()
    cur.done()
    return ParameterStatus(name, value)


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    status: str  # "I" idle, "T" in a transaction block, "E" in a failed transaction block

    def encode(self) -> bytes:
        return frame(READY_FOR_QUERY, self.status.encode())


def decode_ready_for_query(body: bytes) -> ReadyForQuery:
    if len(body) != 1 or body not in (b"I", b"T", b"E"):
        raise MessageFormatError("ReadyForQuery status must be I, T or E")
    return ReadyForQuery(body.decode())


# Field codes of ErrorResponse / NoticeResponse (protocol chapter, "Error and Notice Message Fields").
FIELD_SEVERITY = "S"
FIELD_SEVERITY_NONLOCALIZED = "V"
FIELD_CODE = "C"
FIELD_MESSAGE = "M"
FIELD_DETAIL = "D"
FIELD_HINT = "H"


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """ErrorResponse ('E'); `fields` maps one-letter field codes to values."""

    fields: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, severity: str, code: str, message: str, *, detail: str | None = None,
             hint: str | None = None) -> ErrorResponse:
        fields = {FIELD_SEVERITY: severity, FIELD_SEVERITY_NONLOCALIZED: severity,
                  FIELD_CODE: code, FIELD_MESSAGE: message}
        if detail:
            fields[FIELD_DETAIL] = detail
        if hint:
            fields[FIELD_HINT] = hint
        return cls(fields)

    @property
    def code(self) -> str:
        return self.fields.get(FIELD_CODE, "")

    @property
    def message(self) -> str:
        return self.fields.get(FIELD_MESSAGE, "")

    @property
    def severity(self) -> str:
        return self.fields.get(FIELD_SEVERITY_NONLOCALIZED, self.fields.get(FIELD_SEVERITY, ""))

    def encode(self) -> bytes:
        return frame(ERROR_RESPONSE, _encode_fields(self.fields))


@dataclass(frozen=True, slots=True)
class NoticeResponse:
    fields: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, message: str, *, severity: str = "NOTICE", code: str = "00000",
             detail: str | None = None) -> NoticeResponse:
        fields = {FIELD_SEVERITY: severity, FIELD_SEVERITY_NONLOCALIZED: severity,
                  FIELD_CODE: code, FIELD_MESSAGE: message}
        if detail:
            fields[FIELD_DETAIL] = detail
        return cls(fields)

    def encode(self) -> bytes:
        return frame(NOTICE_RESPONSE, _encode_fields(self.fields))


def _encode_fields(fields: dict[str, str]) -> bytes:
    return b"".join(k.encode() + encode_str(v) for k, v in fields.items()) + b"\x00"


def decode_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse body."""
    cur = _Cursor(body)
    fields: dict[str, str] = {}
    while True:
        code = cur.byte()
        if code == 0:
            break
        fields[chr(code)] = cur.cstring()
    cur.done()
    return fields


def decode_error_response(body: bytes) -> ErrorResponse:
    return ErrorResponse(decode_fields(body))


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    newest_minor: int
    unrecognized: tuple[str, ...]

    def encode(self) -> bytes:
        body = _I32.pack(self.newest_minor) + _I32.pack(len(self.unrecognized))
        body += b"".join(encode_str(o) for o in self.unrecognized)
        return frame(NEGOTIATE_PROTOCOL_VERSION, body)


@dataclass(frozen=True, slots=True)
class CopyResponse:
    """CopyInResponse ('G'), CopyOutResponse ('H') or CopyBothResponse ('W')."""

    overall_format: int
    column_formats: tuple[int, ...]


def decode_copy_response(body: bytes) -> CopyResponse:
    cur = _Cursor(body)
    overall = cur.byte()
    formats = tuple(cur.int16() for _ in range(_count(cur)))
    cur.done()
    return CopyResponse(overall, formats)


def row_description_fields(body: bytes) -> list[tuple[int, int, int]]:
    """The (table OID, column attribute number, type OID) of each field of a RowDescription body."""
    cur = _Cursor(body)
    fields: list[tuple[int, int, int]] = []
    for _ in range(_count(cur)):
        cur.cstring()  # field name
        table_oid = cur.int32() & 0xFFFFFFFF
        attnum = cur.int16()
        type_oid = cur.int32() & 0xFFFFFFFF
        cur.raw(8)  # type size, type modifier, format code
        fields.append((table_oid, attnum, type_oid))
    cur.done()
    return fields


def row_description_sources(body: bytes) -> list[tuple[int, int]]:
    """The (table OID, column attribute number) of each field of a RowDescription body.

    Both are zero for a field that is not a plain column of a table.
    """
    cur = _Cursor(body)
    sources: list[tuple[int, int]] = []
    for _ in range(_count(cur)):
        cur.cstring()  # field name
        table_oid = cur.int32() & 0xFFFFFFFF
        attnum = cur.int16()
        cur.raw(12)  # type OID, type size, type modifier, format code
        sources.append((table_oid, attnum))
    cur.done()
    return sources
