"""wsrace's fixed WebSocket server: worker threads post, one IO thread writes.

Quick use::

    from server import Server, DemoApp
    srv = Server(DemoApp, port=0).start()
    ...                      # conn.send() from any thread, never blocks
    srv.shutdown()
"""

from .app import DemoApp
from .connection import Connection, ConnectionClosed, Handler, Limits, OverflowPolicy, Router
from .frames import OutMessage
from .handshake import HttpError, HttpRequest
from .loop import IOLoop
from .server import Server

__all__ = [
    "Connection",
    "ConnectionClosed",
    "DemoApp",
    "Handler",
    "HttpError",
    "HttpRequest",
    "IOLoop",
    "Limits",
    "OutMessage",
    "OverflowPolicy",
    "Router",
    "Server",
]
