"""The package's exceptions: one base class, so callers can catch everything wsrace raises."""

from __future__ import annotations


class WsraceError(Exception):
    """Base class of every exception this package raises on purpose."""


class ConnectionClosed(WsraceError):
    """Raised by :meth:`ConnectionHandle.send` once the connection is closing or closed."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket connection closed with code {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason
