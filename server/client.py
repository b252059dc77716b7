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

Uses simple-websocket (a dependency of this package) on a thread of its own.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import simple_websocket

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
    :meth:`close` is called. :attr:`position` is the last position seen,
    :attr:`reconnects` how many times it reconnected.
    """

    def __init__(self, url: str, topic: str = "", since: str | None = None, *, min_backoff: float = 0.05,
                 max_backoff: float = 2.0, ssl_context: ssl.SSLContext | None = None) -> None:
        base = url.rstrip("/")
        self._base = base if base.endswith("/broadcast") else base + "/broadcast"
        self.topic = topic
        self.position = since
        self.reconnects = 0
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._ssl_context = ssl_context
        self._ws: simple_websocket.Client | None = None
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
                self._ws = simple_websocket.Client.connect(self.url(), ssl_context=self._ssl_context)
            except (ConnectionError, OSError, simple_websocket.ConnectionError) as exc:
                logger.info("subscription %s: cannot connect (%s); retrying in %.2f s", self._base, exc, backoff)
                backoff = self._wait(backoff)
                continue
            try:
                while True:
                    data = self._ws.receive()
                    if data is None:
                        continue
                    position, message = _split(data)
                    self.position = position
                    backoff = self.min_backoff  # it works again
                    if message is not None:
                        yield position, message
            except simple_websocket.ConnectionClosed as closed:
                code, reason = closed.reason, closed.message or ""
            finally:
                self._ws.close()
            if self._closed:
                return
            if code == HISTORY_LOST:
                raise HistoryLost(code, reason)
            if code in FATAL:
                raise SubscriptionEnded(code, reason)
            logger.info("subscription %s: closed (%s %s); resuming from %s", self._base, code, reason, self.position)
            self.reconnects += 1
            backoff = self._wait(backoff)

    def close(self) -> None:
        """Stop: the iteration ends (from another thread: at its next message or close)."""
        self._closed = True
        if self._ws is not None:
            self._ws.close()

    def _wait(self, backoff: float) -> float:
        time.sleep(backoff * random.uniform(0.5, 1.0))  # jitter: a restart's clients do not all return at once
        return min(backoff * 2, self.max_backoff)


def _split(data: str | bytes) -> tuple[str, str | bytes | None]:
    """A ``LineEnvelope`` message: (position, message), or (position, None) for a bookmark."""
    if isinstance(data, str):
        position, newline, message = data.partition("\n")
        return position, message if newline else None
    head, separator, body = data.partition(b"\n")
    if not separator:
        raise SubscriptionEnded(None, "a binary message without a position: is this a /broadcast?positions=1 route?")
    return head.decode("ascii"), body
