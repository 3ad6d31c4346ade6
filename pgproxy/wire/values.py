"""Binary-format parameter values as text, the way PostgreSQL would print them (sans-IO).

A client may send a Bind parameter in binary (asyncpg does for numbers, pgjdbc for int4…):
what a reviewer must read is the value, not its bytes. `binary_text(type_oid, data)` gives
the value's text form for the common built-in types, or None for a type it does not know or
bytes that are not a valid value of the type (the caller then shows them as hex)::

    >>> binary_text(23, b"\\x00\\x00\\x00\\x0b")
    '11'
    >>> binary_text(1700, b"\\x00\\x02\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\x0c\\x0d\\xac")
    '12.35'

The type is the statement's: the types the Parse declared, or the ParameterDescription the
server sent when the statement was described (see ProtocolModel).
"""

from __future__ import annotations

import math
import struct
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta

_EPOCH_DAY = date(2000, 1, 1).toordinal()  # PostgreSQL's dates and timestamps count from 2000-01-01
_EPOCH = datetime(2000, 1, 1)
_I64_MAX, _I64_MIN = 2**63 - 1, -(2**63)
_I32_MAX, _I32_MIN = 2**31 - 1, -(2**31)


def _integer(size: int) -> Callable[[bytes], str]:
    fmt = struct.Struct({2: "!h", 4: "!i", 8: "!q"}[size])
    return lambda data: str(fmt.unpack(data)[0])


def _float(size: int) -> Callable[[bytes], str]:
    fmt = struct.Struct("!f" if size == 4 else "!d")

    def shown(data: bytes) -> str:
        value = fmt.unpack(data)[0]
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if size == 4:  # the shortest text that reads back as the same float4
            value = next(float(f"{value:.{digits}g}") for digits in range(1, 10)
                         if fmt.pack(float(f"{value:.{digits}g}")) == data)
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return shown


def _bool(data: bytes) -> str:
    if data not in (b"\x00", b"\x01"):
        raise ValueError("not a bool")
    return "true" if data == b"\x01" else "false"


def _text(data: bytes) -> str:
    return data.decode("utf-8")  # strict: undecodable bytes are shown as hex


def _uuid(data: bytes) -> str:
    return str(uuid.UUID(bytes=data))


def _oid(data: bytes) -> str:
    return str(struct.unpack("!I", data)[0])


def _date(data: bytes) -> str:
    (days,) = struct.unpack("!i", data)
    if days in (_I32_MAX, _I32_MIN):
        return "infinity" if days == _I32_MAX else "-infinity"
    day = date.fromordinal(_EPOCH_DAY + days)  # ValueError outside years 1..9999: shown as hex
    return day.isoformat()


def _timestamp(zone: str) -> Callable[[bytes], str]:
    def shown(data: bytes) -> str:
        (micros,) = struct.unpack("!q", data)
        if micros in (_I64_MAX, _I64_MIN):
            return "infinity" if micros == _I64_MAX else "-infinity"
        moment = _EPOCH + timedelta(microseconds=micros)  # OverflowError outside years 1..9999: hex
        text = moment.isoformat(sep=" ")
        if moment.microsecond:
            text = text.rstrip("0")  # as PostgreSQL prints fractions: 12:00:00.5
        return text + zone
    return shown


_NUMERIC_SIGNS = {0x0000: "", 0x4000: "-"}
_NUMERIC_SPECIAL = {0xC000: "NaN", 0xD000: "Infinity", 0xF000: "-Infinity"}


def _numeric(data: bytes) -> str:
    """int16 ndigits, int16 weight, uint16 sign, int16 dscale, then ndigits base-10000 digits."""
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHh", data)
    if sign in _NUMERIC_SPECIAL:
        return _NUMERIC_SPECIAL[sign]
    if sign not in _NUMERIC_SIGNS or ndigits < 0 or dscale < 0 or len(data) != 8 + 2 * ndigits:
        raise ValueError("not a numeric")
    digits = struct.unpack_from(f"!{ndigits}h", data, 8)
    if any(not 0 <= d < 10000 for d in digits):
        raise ValueError("not a numeric")
    # digits[i] is worth 10000 ** (weight - i): write them out as one decimal string.
    whole = "".join(f"{d:04d}" for d in digits)
    point = 4 * (weight + 1)  # where the decimal point falls in `whole`
    if point <= 0:
        whole, point = "0" * (-point) + whole, 0
    elif point > len(whole):
        whole += "0" * (point - len(whole))
    integer = whole[:point].lstrip("0") or "0"
    fraction = (whole[point:] + "0" * dscale)[:dscale]
    return _NUMERIC_SIGNS[sign] + integer + (f".{fraction}" if dscale else "")


def _jsonb(data: bytes) -> str:
    if data[:1] != b"\x01":
        raise ValueError("unknown jsonb version")
    return _text(data[1:])


# Type OIDs (PostgreSQL's pg_type.dat) -> the text of a binary value of that type.
_DECODERS: dict[int, Callable[[bytes], str]] = {
    16: _bool,
    20: _integer(8), 21: _integer(2), 23: _integer(4),
    26: _oid,
    700: _float(4), 701: _float(8),
    1700: _numeric,
    25: _text, 1043: _text, 1042: _text, 19: _text, 114: _text, 3802: _jsonb,
    2950: _uuid,
    1082: _date,
    1114: _timestamp(""), 1184: _timestamp("+00"),
}

# Fixed sizes: a value of another length is not one of the type (shown as hex).
_SIZES = {16: 1, 20: 8, 21: 2, 23: 4, 26: 4, 700: 4, 701: 8, 2950: 16, 1082: 4, 1114: 8, 1184: 8}


def binary_text(type_oid: int, data: bytes) -> str | None:
    """The text of binary `data` as a value of type `type_oid`, or None when it cannot be read."""
    decoder = _DECODERS.get(type_oid)
    if decoder is None:
        return None
    size = _SIZES.get(type_oid)
    if size is not None and len(data) != size:
        return None
    try:
        return decoder(data)
    except (ValueError, OverflowError, struct.error):
        return None


def decode_parameter_description(body: bytes) -> tuple[int, ...]:
    """ParameterDescription: int16 count, then one int32 type OID per parameter."""
    (count,) = struct.unpack_from("!h", body)
    if count < 0 or len(body) != 2 + 4 * count:
        raise ValueError("malformed ParameterDescription")
    return struct.unpack_from(f"!{count}I", body, 2)
