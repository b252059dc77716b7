"""WebSocket close codes (RFC 6455 section 7.4) and the check on what may be sent."""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """The close codes this server sends or reports (RFC 6455 7.4.1; 1012-1014 registered with IANA)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # reported only: the peer's close frame carried no code
    ABNORMAL = 1006  # reported only: the connection ended without a close frame
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014


# Codes an endpoint may put in a close frame (RFC 6455 7.4), besides 3000-4999.
_SENDABLE = frozenset(CloseCode) - {CloseCode.NO_STATUS, CloseCode.ABNORMAL}
MAX_REASON_BYTES = 123  # a control frame's payload is at most 125 bytes, 2 of them the code


def check_close(code: int, reason: str) -> None:
    """Raise ValueError unless ``code`` and ``reason`` may go into a close frame."""
    if not (code in _SENDABLE or 3000 <= code <= 4999):
        raise ValueError(f"close code {code} may not be sent (RFC 6455 7.4): use 1000-1003, 1007-1014 or 3000-4999")
    size = len(reason.encode("utf-8"))
    if size > MAX_REASON_BYTES:
        raise ValueError(f"close reason is {size} bytes of UTF-8; at most {MAX_REASON_BYTES} fit in a close frame")
