"""wsrace's fixed WebSocket server: worker threads post, one IO thread writes.

Quick use (a complete app: ``examples/chat.py``)::

    from server import Server, DemoApp
    srv = Server(DemoApp, port=0).start()
    ...                      # conn.send() from any thread; never touches a socket
    srv.shutdown()
"""

from .app import DemoApp
from .codes import CloseCode
from .connection import Connection
from .errors import ConnectionClosed, WsraceError
from .frames import OutMessage
from .handler import Handler, Router
from .handshake import HttpError, HttpRequest
from .http import Response
from .limits import Limits
from .loop import IOLoop
from .outbox import OverflowPolicy
from .server import BroadcastResult, Server
from .stats import Stats
from .transport import SocketTransport

__all__ = [
    "BroadcastResult",
    "CloseCode",
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
    "Response",
    "Router",
    "Server",
    "SocketTransport",
    "Stats",
    "WsraceError",
]
