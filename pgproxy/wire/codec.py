"""Sans-IO framing of the protocol v3 byte stream.

`FrameReader` turns the bytes read from one direction of a connection into
complete messages, each given as ``(type_byte, start, end)`` offsets into
`FrameReader.buffer`, so that the relay can forward the original bytes of a
run of messages without copying or re-encoding them. It checks what framing
alone can check (a known type byte, a length that is not negative and not over
the cap) and keeps a partly received message until its last byte arrives,
in a growable buffer, so that a large message costs O(n) to assemble.

`StartupReader` does the same for the untyped packets that open a connection
(StartupMessage, SSLRequest, GSSENCRequest, CancelRequest).

Nothing here touches a socket or an event loop.
"""

from __future__ import annotations

import struct

from pgproxy.wire.messages import MessageFormatError

_I32 = struct.Struct("!i")
# A typed message's int32 length field: unpack_length(buffer, offset of the type byte + 1) -> (length,).
unpack_length = _I32.unpack_from

Frame = tuple[int, int, int]  # (type byte, start offset, end offset) into FrameReader.buffer


class FrameError(MessageFormatError):
    """The stream cannot be framed: the connection cannot go on."""


class FrameReader:
    """Split one direction of a protocol v3 stream into typed messages.

    >>> r = FrameReader(max_message_bytes=1024, allowed_types=frozenset(b"Q"))
    >>> frames = r.feed(b"Q\\x00\\x00\\x00\\x0dSELECT 1\\x00")
    >>> [(chr(t), r.buffer[s + 5:e]) for t, s, e in frames]
    [('Q', b'SELECT 1\\x00')]

    With `listed_types`, only messages of those types are listed; the others are checked
    all the same, and `end` says where the complete messages end:

    >>> r = FrameReader(max_message_bytes=1024, allowed_types=frozenset(b"DZ"), listed_types=frozenset(b"Z"))
    >>> r.feed(b"D\\x00\\x00\\x00\\x06\\x00\\x00Z\\x00\\x00\\x00\\x05IZ\\x00"), r.end
    ([(90, 7, 13)], 13)
    """

    __slots__ = ("_need", "_partial", "allowed_types", "buffer", "end", "listed_types", "max_message_bytes")

    def __init__(self, *, max_message_bytes: int, allowed_types: frozenset[int],
                 listed_types: frozenset[int] | None = None) -> None:
        self.max_message_bytes = max_message_bytes
        self.allowed_types = allowed_types
        self.listed_types = allowed_types if listed_types is None else listed_types
        self.buffer: bytes = b""
        self.end = 0  # where the complete messages of the last feed() end in `buffer`
        self._partial = bytearray()
        self._need = 0  # bytes needed in _partial before parsing can go on

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete message held back, waiting for the rest."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return the messages completed by them (of the listed types), in order."""
        if self._partial:
            self._partial += data
            if len(self._partial) < self._need:
                self.end = 0
                return []
            buf = bytes(self._partial)
            self._partial = bytearray()
        else:
            buf = data
        self.buffer = buf
        frames: list[Frame] = []
        pos = 0
        size = len(buf)
        allowed = self.allowed_types
        listed = self.listed_types
        unpack = unpack_length
        longest = self.max_message_bytes + 4  # counting the length field
        while size - pos >= 5:
            type_byte = buf[pos]
            if type_byte not in allowed:
                raise FrameError(f"invalid message type 0x{type_byte:02x} ({_printable(type_byte)})")
            (length,) = unpack(buf, pos + 1)
            if not 4 <= length <= longest:
                if length < 4:
                    raise FrameError(f"invalid message length {length}")
                raise FrameError(
                    f"message of {length - 4} bytes exceeds the limit of {self.max_message_bytes} bytes"
                )
            end = pos + 1 + length
            if end > size:
                self._need = end - pos
                break
            if type_byte in listed:
                frames.append((type_byte, pos, end))
            pos = end
        else:
            if pos < size:
                # A header is split across reads; after its first byte the type can be checked.
                if buf[pos] not in allowed:
                    raise FrameError(
                        f"invalid message type 0x{buf[pos]:02x} ({_printable(buf[pos])})"
                    )
                self._need = 5
        self.end = pos
        if pos < size:
            self._partial = bytearray(buf[pos:])
        return frames


class StartupReader:
    """Read one untyped startup packet: int32 length (counting itself) and a body."""

    __slots__ = ("_buf", "max_packet_bytes")

    def __init__(self, *, max_packet_bytes: int) -> None:
        self.max_packet_bytes = max_packet_bytes
        self._buf = bytearray()

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        """Add bytes; once a packet is complete return (its body, the bytes after it)."""
        self._buf += data
        if len(self._buf) < 4:
            return None
        (length,) = _I32.unpack_from(self._buf, 0)
        if length < 8 or length > self.max_packet_bytes:
            raise FrameError(f"invalid length of startup packet ({length} bytes)")
        if len(self._buf) < length:
            return None
        body, rest = bytes(self._buf[4:length]), bytes(self._buf[length:])
        self._buf = bytearray()
        return body, rest


def _printable(type_byte: int) -> str:
    return repr(chr(type_byte)) if 32 <= type_byte < 127 else "not a printable character"
