"""Exceptions raised by the clients: one class per kind of failure."""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

__all__ = [
    "RewindError",
    "ConnectionFailed",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
    "error_for",
]


class RewindError(Exception):
    """A request the server refused or could not carry out.

    Attributes:
        status: the HTTP status code (0 when the server was never reached).
        message: the server's ``error`` message (it names the bad field for a 400).
        request_id: the server's request id for a 5xx, to find it in the logs.
    """

    def __init__(self, status: int, message: str, request_id: Optional[str] = None) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.request_id = request_id


class ConnectionFailed(RewindError):
    """The server could not be reached (status 0)."""


class BadRequest(RewindError):
    """400: invalid input; the message names the field."""


class Unauthorized(RewindError):
    """401: no API key was sent."""


class Forbidden(RewindError):
    """403: the API key is wrong, revoked, or lacks the right."""


class NotFound(RewindError):
    """404: no such sandbox, snapshot or path."""


class Conflict(RewindError):
    """409: the sandbox exists already, or is busy, stopped or failed."""


class PayloadTooLarge(RewindError):
    """413: a body or file is over the server's limit."""


class RateLimited(RewindError):
    """429: too many requests for this key."""


class ServerError(RewindError):
    """5xx: the server failed; ``request_id`` finds it in the server's log."""


class ServiceUnavailable(ServerError):
    """503: the sandbox's agent or workspace is not available right now."""


_BY_STATUS: Dict[int, Type[RewindError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_for(status: int, body: Any) -> RewindError:
    """The exception for an error answer (``body`` is its parsed JSON or text)."""
    message = str(body) if body else "no message"
    request_id = None
    if isinstance(body, dict):
        message = str(body.get("error", body))
        request_id = body.get("request_id")
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else RewindError
    return cls(status, message, request_id)
