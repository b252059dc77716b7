"""What an application implements: a :class:`Router` that picks a :class:`Handler` per connection."""

from __future__ import annotations

from typing import Protocol

from ..protocol.handshake import HttpRequest
from ..protocol.http import Response
from .handle import ConnectionHandle


class Handler(Protocol):
    """What a route implements for one connection (one instance per connection).

    One connection's messages are handled one at a time, in the order received
    (a strand over the worker pool). A handler class that sets
    ``concurrent_messages = True`` opts out: each message goes to the pool on
    its own, so several may run at once and finish in any order.

    ``inline = True`` runs ``on_message`` on the IO thread instead, as soon as
    the message is complete: no hand-off to the pool and back, for handlers
    that never block (an echo, a lookup in memory, a ``send()``). Every other
    client waits while it runs; one slower than ``Limits.inline_warn`` is
    logged and counted (``stats.inline_slow``).

    A handler may also set ``subprotocols`` (a sequence of names): the first
    one the client offers in ``Sec-WebSocket-Protocol`` is chosen and sent back
    in the 101 (``conn.subprotocol``); none in common, none sent.
    """

    def on_open(self, conn: ConnectionHandle) -> None:
        """On the IO thread, once the 101 reply is queued. Must not block."""

    def on_message(self, conn: ConnectionHandle, message: str | bytes) -> None:
        """On a worker thread (the IO thread if ``inline``), once per received message, in order (see the class docstring)."""

    def on_close(self, conn: ConnectionHandle) -> None:
        """On the IO thread, once the socket is closed. Must not block."""


class Router(Protocol):
    def route(self, request: HttpRequest) -> Handler | Response | bytes:
        """A handler for a WebSocket route, or an HTTP response; may raise HttpError.

        Runs on the IO thread, once per request: it must be quick and must not
        block (no database calls, no sleeps) — every other client waits while
        it runs. Do slow checks in ``on_open`` by handing them to a worker, or
        before the server sees the request. An exception other than
        :class:`HttpError` is answered with 500, logged and counted.
        """
