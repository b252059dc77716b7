"""``from wsrace.wsgi import accept``: WebSockets in any WSGI app, written only by wsrace's IO thread (see server/wsgi)."""

from __future__ import annotations

from . import submodule

_wsgi = submodule("wsgi")
ConnectionClosed = _wsgi.ConnectionClosed
Refused = _wsgi.Refused
UnsupportedServer = _wsgi.UnsupportedServer
WebSocket = _wsgi.WebSocket
accept = _wsgi.accept
hub = _wsgi.hub
post_worker_init = _wsgi.post_worker_init
shutdown = _wsgi.shutdown

__all__ = ["ConnectionClosed", "Refused", "UnsupportedServer", "WebSocket", "accept", "hub", "post_worker_init",
           "shutdown"]
