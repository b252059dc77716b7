"""``from wsrace.wsgi import accept``: WebSockets in any WSGI app, written only by wsrace's IO thread (see server/wsgi)."""

from __future__ import annotations

from .server.wsgi import (
    ConnectionClosed,
    Refused,
    UnsupportedServer,
    WebSocket,
    accept,
    hub,
    post_worker_init,
    shutdown,
)

__all__ = ["ConnectionClosed", "Refused", "UnsupportedServer", "WebSocket", "accept", "hub", "post_worker_init",
           "shutdown"]
