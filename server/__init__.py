"""wsrace's fixed WebSocket server: worker threads post, one IO thread writes.

Quick use (a complete app: ``examples/chat.py``)::

    from server import Server, DemoApp
    srv = Server(DemoApp, port=0).start()
    ...                      # handlers get a ConnectionHandle: conn.send() from any thread
    srv.shutdown()

What is listed in ``__all__`` is the public API; the IO core (``server.core.loop``,
``server.core.transport``, ...) is importable for tests and tools but may change.
``DemoApp`` (the demo routes of ``python -m server``) is loaded on first use:
``import server`` does not import the demo application.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .codes import CloseCode
from .connections.handle import ConnectionHandle, State
from .connections.handler import Handler, Router
from .core.tls import TlsConfigError, server_context
from .errors import ConnectionClosed, WsraceError
from .limits import Limits, OverflowPolicy
from .protocol.frames import OutMessage
from .protocol.handshake import HttpError, HttpRequest
from .protocol.http import Response
from .scaleout.broker import BrokerError, PublishQueueFull, make_broker
from .scaleout.positions import HISTORY_LOST, Position, PositionError, Published
from .server import BroadcastResult, Server
from .stats import Stats
from .topics import LINES, Envelope, LineEnvelope

if TYPE_CHECKING:
    from .demo.app import DemoApp

__all__ = [
    "HISTORY_LOST",
    "LINES",
    "BroadcastResult",
    "BrokerError",
    "CloseCode",
    "ConnectionClosed",
    "ConnectionHandle",
    "DemoApp",
    "Envelope",
    "Handler",
    "HttpError",
    "HttpRequest",
    "Limits",
    "LineEnvelope",
    "OutMessage",
    "OverflowPolicy",
    "Position",
    "PositionError",
    "PublishQueueFull",
    "Published",
    "Response",
    "Router",
    "Server",
    "State",
    "Stats",
    "TlsConfigError",
    "WsraceError",
    "make_broker",
    "server_context",
]


def __getattr__(name: str) -> Any:
    if name == "DemoApp":  # the demo application, only when asked for
        from .demo.app import DemoApp

        return DemoApp
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
