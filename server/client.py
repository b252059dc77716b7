"""The reference subscriber: follow a ``/broadcast`` topic across disconnects, restarts and deploys.

What a client must do to lose nothing (the live page's JavaScript does the same):

1. connect with ``positions=1`` (each message then arrives as ``POSITION``
   newline ``MESSAGE``; the first text message with no newline is a bookmark,
   the position the subscription starts at) and remember the last position;
2. when the connection ends for any reason but the two below — 1001 (the
   server is going away), 1012 (restart, e.g. a rolling deploy), 1013
   (messages were missed), 1006 (the network) … — reconnect with backoff and
   ``since=`` that position: the server sends what came after it, then the
   live messages, each exactly once;
3. on 4410 (:data:`~server.scaleout.positions.HISTORY_LOST`) the history no
   longer holds the position (trimmed, or lost with its epoch): start over —
   load the current state from wherever it lives, subscribe without ``since=``;
4. on a protocol error (1002, 1003, 1007, 1009, 1010) stop: reconnecting
   would repeat it.

A blocking client on wsproto (a dependency): the thread that iterates is the
only one that writes to the socket (its pongs and close replies included);
:meth:`Subscription.close` and :meth:`Subscription.reconnect` from other
threads only shut the socket down.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from urllib.parse import urlencode, urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from .errors import WsraceError
from .scaleout.positions import HISTORY_LOST

logger = logging.getLogger(__name__)

FATAL = frozenset({1002, 1003, 1007, 1009, 1010})  # the same request would fail the same way


class SubscriptionEnded(WsraceError):
    """The server ended the subscription in a way a reconnect cannot mend: ``code`` and ``reason`` say why."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"subscription ended: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class HistoryLost(SubscriptionEnded):
    """4410: the server's history cannot serve the last position (start over without ``since``)."""


class Subscription:
    """``for position, message in Subscription(url, topic): ...`` — every message of ``topic``, each once.

    ``url`` is the server's ``ws://`` or ``wss://`` address (its ``/broadcast``
    route; a path other than ``/`` is kept). ``since``: a position to resume
    from (as a previous run saw it). Iterating reconnects on its own (backoff
    ``min_backoff`` doubling to ``max_backoff``, with jitter); it stops with
    :class:`HistoryLost` or :class:`SubscriptionEnded`, or when
    :meth:`close` is called. :attr:`position` is the last position seen (None
    again after :class:`HistoryLost`: iterating once more starts over),
    :attr:`reconnects` how many times it reconnected, :attr:`close_codes`
    how each connection ended (1006: no close frame, or nothing read for
    ``idle_timeout`` s — the server pings idle connections well within that).
    """

    def __init__(self, url: str, topic: str = "", since: str | None = None, *, min_backoff: float = 0.05,
                 max_backoff: float = 2.0, ssl_context: ssl.SSLContext | None = None,
                 connect_timeout: float = 10.0, idle_timeout: float | None = 60.0) -> None:
        base = url.rstrip("/")
        self._base = base if base.endswith("/broadcast") else base + "/broadcast"
        self.topic = topic
        self.position = since
        self.reconnects = 0
        self.close_codes: Counter[int] = Counter()
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._sock: socket.socket | None = None
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._closed = False

    def url(self) -> str:
        """Where the next connection goes: with ``since=`` the last position seen."""
        query = {"topic": self.topic, "positions": "1"}
        if self.position is not None:
            query["since"] = self.position
        return f"{self._base}?{urlencode(query)}"

    def __iter__(self) -> Iterator[tuple[str, str | bytes]]:
        backoff = self.min_backoff
        while not self._closed:
            try:
                sock = self._connect()
            except (OSError, _Refused) as exc:
                if self._closed:
                    return
                if isinstance(exc, _Refused) and exc.status < 500 and exc.status not in (408, 429):
                    raise SubscriptionEnded(None, f"refused: HTTP {exc.status} {exc.body}") from None
                logger.info("subscription %s: cannot connect (%s); retrying in %.2f s", self._base, exc, backoff)
                backoff = self._wait(backoff)
                continue
            code, reason = 1006, ""
            try:
                for data in self._messages(sock):
                    if isinstance(data, tuple):
                        code, reason = data
                        break
                    position, message = _split(data)
                    self.position = position
                    backoff = self.min_backoff  # it works again
                    if message is not None:
                        yield position, message
            finally:
                sock.close()
            self.close_codes[code] += 1
            if self._closed:
                return
            if code == HISTORY_LOST:
                self.position = None  # the next iteration is a fresh subscription
                raise HistoryLost(code, reason)
            if code in FATAL:
                raise SubscriptionEnded(code, reason)
            logger.info("subscription %s: closed (%s %s); resuming from %s", self._base, code, reason, self.position)
            self.reconnects += 1
            backoff = self._wait(backoff)

    def reconnect(self) -> None:
        """Drop the current connection (any thread; e.g. the network changed): the iteration resumes."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed already

    def close(self) -> None:
        """Stop: the iteration ends (any thread)."""
        self._closed = True
        self.reconnect()

    def _wait(self, backoff: float) -> float:
        time.sleep(backoff * random.uniform(0.5, 1.0))  # jitter: a restart's clients do not all return at once
        return min(backoff * 2, self.max_backoff)

    def _connect(self) -> socket.socket:
        url = urlsplit(self.url())
        secure = url.scheme == "wss"
        sock = socket.create_connection((url.hostname or "", url.port or (443 if secure else 80)),
                                        timeout=self.connect_timeout)
        self._sock = sock  # close() and reconnect() reach it from here on
        try:
            if secure:
                context = self._ssl_context or ssl.create_default_context()
                sock = self._sock = context.wrap_socket(sock, server_hostname=url.hostname)
            self._ws = WSConnection(ConnectionType.CLIENT)
            sock.sendall(self._ws.send(Request(host=url.netloc, target=f"{url.path}?{url.query}")))
            while True:  # the reply; frames after it stay in wsproto for _messages
                data = sock.recv(65536)
                if not data:
                    raise ConnectionResetError("the server closed the connection during the handshake")
                self._ws.receive_data(data)
                for event in self._ws.events():
                    if isinstance(event, AcceptConnection):
                        if self._closed:
                            raise ConnectionAbortedError("closed by Subscription.close()")
                        sock.settimeout(self.idle_timeout)
                        return sock
                    if isinstance(event, RejectConnection):
                        raise _Refused(event.status_code, self._rejected_body(sock, event.has_body))
        except BaseException:
            sock.close()
            raise

    def _rejected_body(self, sock: socket.socket, has_body: bool) -> str:
        body = b""
        while has_body and len(body) < 1000:
            for event in self._ws.events():
                if isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        return body.decode("utf-8", "replace").strip()
            data = sock.recv(65536)
            if not data:
                break
            self._ws.receive_data(data)
        return body.decode("utf-8", "replace").strip()

    def _messages(self, sock: socket.socket) -> Iterator[str | bytes | tuple[int, str]]:
        """Whole messages, then ``(close code, reason)``; answers pings and the close (this thread writes)."""
        parts: list = []  # of one message: str, or bytes/bytearray
        while True:
            for event in self._ws.events():
                if isinstance(event, (TextMessage, BytesMessage)):
                    parts.append(event.data)
                    if event.message_finished:
                        yield "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
                        parts.clear()
                elif isinstance(event, Ping):
                    try:
                        sock.sendall(self._ws.send(event.response()))
                    except OSError:
                        yield (1006, "")
                        return
                elif isinstance(event, CloseConnection):
                    try:
                        sock.sendall(self._ws.send(event.response()))
                    except OSError:
                        pass
                    yield (int(event.code), event.reason or "")
                    return
            try:
                data = sock.recv(65536)
            except TimeoutError:
                yield (1006, f"nothing for {self.idle_timeout:g} s")
                return
            except OSError:
                data = b""
            if not data:
                yield (1006, "")
                return
            self._ws.receive_data(data)


class _Refused(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status} {body}".strip())
        self.status = status
        self.body = body


def _split(data: str | bytes) -> tuple[str, str | bytes | None]:
    """A ``LineEnvelope`` message: (position, message), or (position, None) for a bookmark."""
    if isinstance(data, str):
        position, newline, message = data.partition("\n")
        return position, message if newline else None
    head, separator, body = data.partition(b"\n")
    if not separator:
        raise SubscriptionEnded(None, "a binary message without a position: is this a /broadcast?positions=1 route?")
    return head.decode("ascii"), body
