"""The ``ws`` object a WSGI view gets: simple-websocket's surface over a connection the IO thread owns.

``send()`` only queues (any thread, any number of threads); ``receive()``
takes from the messages the IO thread read; pings, pongs and the close are
the IO thread's. :meth:`WebSocket.detach` hands the connection to callbacks
run on wsrace's worker pool, so the view can return and give its WSGI thread
back.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import simple_websocket

from ..codes import CloseCode
from ..errors import ConnectionClosed as _Closed
from ..errors import WsraceError
from .takeover import StartResponse, handled_response

if TYPE_CHECKING:
    from ..connections.handle import ConnectionHandle

logger = logging.getLogger(__name__)

OnMessage = Callable[["WebSocket", "str | bytes"], None]
OnClose = Callable[["WebSocket"], None]


class ConnectionClosed(simple_websocket.ConnectionClosed, WsraceError):
    """The connection is closed: ``reason`` is the close code (an int), ``message`` its reason text.

    A subclass of simple-websocket's (and flask-sock's) ``ConnectionClosed``,
    so code that catches theirs catches this one.
    """

    def __init__(self, reason: int = CloseCode.NO_STATUS, message: str | None = None) -> None:
        super().__init__(reason, message)
        self.code = reason


class WebSocket:
    """One WebSocket taken over from a WSGI server. Every method is safe from any thread.

    ``mode`` names the WSGI server it came from (``"werkzeug"``,
    ``"gunicorn"``), as flask-sock's does.
    """

    def __init__(self, mode: str, subprotocols: Sequence[str] = (), borrowed: bool = False) -> None:
        self.mode = mode
        self.borrowed = borrowed  # TLS by the WSGI server: its SSLSocket is lent to us until the connection closes
        self.subprotocols = list(subprotocols)
        self._conn: ConnectionHandle | None = None
        self._ready = threading.Condition()
        self._messages: deque[str | bytes] = deque()
        self._closed: tuple[int, str] | None = None  # (code, reason) once closed and every message is in
        self._close_called = False
        self._deliver = threading.RLock()  # one delivery at a time: strand, detach() and the close, in order
        self._on_message: OnMessage | None = None
        self._on_close: OnClose | None = None

    def bridge(self) -> Bridge:
        """The handler that feeds this WebSocket: what :func:`~server.wsgi.accept` gives the hub with the socket."""
        return Bridge(self.subprotocols, self._opened, self._received, self._ended)

    # -- simple-websocket's surface ----------------------------------------

    @property
    def connected(self) -> bool:
        """True until either side starts closing."""
        return self._conn is not None and self._conn.is_open and not self._close_called

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol agreed in the handshake (one of ``subprotocols`` the client offered), or None."""
        return self._conn.subprotocol if self._conn is not None else None

    @property
    def close_reason(self) -> int | None:
        return self._conn.close_code if self._conn is not None else None

    @property
    def close_message(self) -> str | None:
        return self._conn.close_reason if self._conn is not None else None

    @property
    def connection(self) -> ConnectionHandle:
        """The wsrace connection underneath (``queued_bytes``, ``peer``, ``send(..., fanout=True)``)."""
        if self._conn is None:
            raise ConnectionClosed(CloseCode.ABNORMAL, "the WebSocket never opened")
        return self._conn

    def send(self, data: str | bytes | bytearray | memoryview, timeout: float | None = None) -> None:
        """Queue one message: bytes-like as binary, anything else as text (``str(data)``). Any thread.

        Returns once queued, not sent; waits only while this client's queue is
        full (see ``ConnectionHandle.send``). Raises :class:`ConnectionClosed`
        once the connection is closing or closed.
        """
        message = bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else str(data)
        try:
            self.connection.send(message, timeout)
        except _Closed as exc:
            raise ConnectionClosed(exc.code, exc.reason) from None

    def receive(self, timeout: float | None = None) -> str | bytes | None:
        """The next message; None after ``timeout`` seconds (0: do not wait; None: wait for ever).

        Messages that arrived before the close are returned first; then this
        raises :class:`ConnectionClosed`.
        """
        if self._on_message is not None:
            raise RuntimeError("receive() on a detached WebSocket: its messages go to the on_message callback")
        with self._ready:
            if not self._ready.wait_for(lambda: self._messages or self._closed is not None, timeout):
                return None
            if self._messages:
                return self._messages.popleft()
            assert self._closed is not None
        raise ConnectionClosed(*self._closed)

    def close(self, reason: int | None = None, message: str | None = None) -> None:
        """Start the closing handshake with code ``reason`` (default 1000) after what is queued. Any thread.

        Raises :class:`ConnectionClosed` if the connection is already closing or closed.
        """
        conn = self.connection
        if not self.connected:
            raise ConnectionClosed(conn.close_code or CloseCode.NO_STATUS, conn.close_reason or None)
        self._close_called = True
        conn.close(reason or CloseCode.NORMAL, message or "")

    # -- wsrace's additions ------------------------------------------------

    def response(self, start_response: StartResponse) -> Iterable[bytes]:
        """What the view returns (WSGI): nothing the WSGI server sends after this can reach the client.

        Over TLS terminated by the WSGI server this first closes the
        connection (1000, if still open) and waits until it is closed: the
        server may use its ``SSLSocket`` again only then.
        """
        if self.borrowed and self._conn is not None:
            if self.connected:
                self.close()
            self._conn.wait_closed()
        return handled_response(self.mode, start_response)

    @property
    def detached(self) -> bool:
        return self._on_message is not None

    def detach(self, on_message: OnMessage, on_close: OnClose | None = None) -> None:
        """Hand the connection to callbacks, so the view can return and free its WSGI thread.

        ``on_message(ws, message)`` runs on wsrace's worker pool, one message
        at a time in the order received — first for any message that arrived
        and was not ``receive()``-d yet; ``on_close(ws)`` runs once after the
        last one. They run without a Flask app or request context. An
        exception in ``on_message`` is logged and closes the connection with 1011.
        """
        if self.borrowed:
            raise RuntimeError("detach() is not possible over TLS terminated by the WSGI server: the server gets its "
                               "SSLSocket back when the view returns, so the view must stay until the connection "
                               "closes. Terminate TLS in front (nginx, haproxy) to detach.")
        with self._deliver:
            if self._on_message is not None:
                raise RuntimeError("this WebSocket is detached already")
            self._on_message, self._on_close = on_message, on_close
            while self._messages:
                self._call_on_message(self._messages.popleft())
            if self._closed is not None:
                self._call_on_close()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the connection is closed and every message delivered; False after ``timeout``."""
        with self._ready:
            return self._ready.wait_for(lambda: self._closed is not None, timeout)

    def stopped(self) -> None:
        """For the hub, once stopped: end this WebSocket if its close job was dropped with the pool's queue."""
        conn = self._conn
        self._ended(conn.close_code or CloseCode.GOING_AWAY if conn else CloseCode.ABNORMAL,
                    conn.close_reason if conn else "server shutting down")

    def not_opened(self, reason: str) -> None:
        """For :func:`~server.wsgi.accept`: unless the connection opened, mark it closed (1006, ``reason``)."""
        if self._conn is None:
            self._ended(CloseCode.ABNORMAL, reason)

    # -- the handler side: the IO thread and the worker pool ------------------

    def _opened(self, conn: ConnectionHandle) -> None:
        self._conn = conn

    def _received(self, message: str | bytes) -> None:
        """A worker (this connection's strand): deliver one message."""
        with self._deliver:
            if self._on_message is not None:
                self._call_on_message(message)
                return
            with self._ready:
                self._messages.append(message)
                self._ready.notify()

    def _ended(self, code: int, reason: str) -> None:
        """A worker, after every message: the connection is closed. The first end wins; later ones do nothing."""
        with self._deliver:
            with self._ready:
                if self._closed is not None:
                    return
                self._closed = (code, reason)
                self._ready.notify_all()
            if self._on_close is not None:
                self._call_on_close()

    def _call_on_message(self, message: str | bytes) -> None:
        assert self._on_message is not None
        try:
            self._on_message(self, message)
        except ConnectionClosed:
            pass  # the client left while we answered
        except Exception:
            logger.exception("%s: on_message failed", self._conn.peer if self._conn else "?")
            if self.connected:
                self.connection.close(CloseCode.INTERNAL_ERROR, "internal error")

    def _call_on_close(self) -> None:
        on_close, self._on_close = self._on_close, None  # exactly once
        if on_close is None:
            return
        try:
            on_close(self)
        except Exception:
            logger.exception("%s: on_close failed", self._conn.peer if self._conn else "?")


class Bridge:
    """The wsrace :class:`~server.connections.handler.Handler` (and its one-route router) behind a :class:`WebSocket`.

    Made by :meth:`WebSocket.bridge`: it calls the WebSocket's own delivery methods, on the IO thread
    (``opened``) and on the connection's strand (``received``, and ``ended`` after the last message).
    """

    def __init__(self, subprotocols: Sequence[str], opened: Callable[[ConnectionHandle], None],
                 received: Callable[[str | bytes], None], ended: Callable[[int, str], None]) -> None:
        self.subprotocols = list(subprotocols)
        self._opened, self._received, self._ended = opened, received, ended

    def route(self, request: object) -> Bridge:
        return self

    def on_open(self, conn: ConnectionHandle) -> None:
        self._opened(conn)

    def on_message(self, conn: ConnectionHandle, message: str | bytes) -> None:
        self._received(message)

    def on_close(self, conn: ConnectionHandle) -> None:
        code, reason = conn.close_code or CloseCode.ABNORMAL, conn.close_reason
        conn.after_messages(lambda: self._ended(code, reason))
