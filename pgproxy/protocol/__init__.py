"""The protocol model (sans-IO): what the server holds -- prepared statements, portals and
cursors with PostgreSQL's lifetimes -- and the answers it still owes. The relay asks it; it
never guesses. Nothing here imports asyncio."""

from pgproxy.protocol.model import RESERVED_PREFIX, Desync, GuardRefusal, ProtocolModel, QueryPart
from pgproxy.protocol.objects import Objects, OpKind, Portal, PreparedStatement, SessionOp

__all__ = ["RESERVED_PREFIX", "Desync", "GuardRefusal", "Objects", "OpKind", "Portal", "PreparedStatement",
           "ProtocolModel", "QueryPart", "SessionOp"]
