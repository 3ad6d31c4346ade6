"""Every SQLSTATE pgproxy emits, and the exceptions that carry them.

The codes come from PostgreSQL's errcodes table (Appendix A of its manual);
the README lists each one with the situation that produces it. Keep this the
only place a SQLSTATE literal appears in the code.
"""

from __future__ import annotations

from enum import StrEnum


class SqlState(StrEnum):
    """SQLSTATEs sent to clients in ErrorResponse messages."""

    PROTOCOL_VIOLATION = "08P01"
    CONNECTION_FAILURE = "08006"
    SQLCLIENT_UNABLE_TO_ESTABLISH = "08001"
    FEATURE_NOT_SUPPORTED = "0A000"
    INVALID_AUTHORIZATION = "28000"
    INVALID_PASSWORD = "28P01"
    INVALID_CATALOG_NAME = "3D000"
    TOO_MANY_CONNECTIONS = "53300"
    ADMIN_SHUTDOWN = "57P01"
    IDLE_SESSION_TIMEOUT = "57P05"
    QUERY_CANCELED = "57014"
    # In retry hold mode: the statement needs an approval that has not been given (yet); the
    # same statement, run again after approval, runs once.
    OBJECT_NOT_IN_PREREQUISITE_STATE = "55000"
    SYSTEM_ERROR = "58000"
    INSUFFICIENT_PRIVILEGE = "42501"
    SYNTAX_ERROR = "42601"
    CHARACTER_NOT_IN_REPERTOIRE = "22021"
    INTERNAL_ERROR = "XX000"


class ProxyError(Exception):
    """A failure to report to the client as an ErrorResponse.

    `severity` is ERROR or FATAL as in PostgreSQL; FATAL ends the session.
    `sqlstate` is one of ours, or an upstream's code passed through unchanged.
    """

    def __init__(self, sqlstate: SqlState | str, message: str, *, severity: str = "FATAL",
                 detail: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = str(sqlstate)
        self.message = message
        self.severity = severity
        self.detail = detail
        self.hint = hint


class ClientProtocolError(ProxyError):
    """The client broke the protocol (bad framing, unknown or out-of-order message)."""

    def __init__(self, message: str, *, sqlstate: SqlState = SqlState.PROTOCOL_VIOLATION) -> None:
        super().__init__(sqlstate, message)


class UpstreamProtocolError(ProxyError):
    """The upstream server broke the protocol or went away unexpectedly."""

    def __init__(self, message: str) -> None:
        super().__init__(SqlState.CONNECTION_FAILURE, message)


class AuthFailed(ProxyError):
    """An agent failed to authenticate; the message never names the expected secret."""

    def __init__(self, message: str, *, sqlstate: SqlState = SqlState.INVALID_PASSWORD) -> None:
        super().__init__(sqlstate, message)


class IdentityRefused(AuthFailed):
    """A valid token whose subject cannot be an identity (it has an invisible character): who
    sent it is known, and not allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, sqlstate=SqlState.INVALID_AUTHORIZATION)
