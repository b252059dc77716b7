"""The HTTP phase of one connection, sans I/O: bytes in, a decision out — reply and close, or upgrade.

:class:`HttpPhase` feeds a :class:`~server.protocol.handshake.Handshake`, asks the
application's router once the request is complete, and turns every outcome
into a decision the connection carries out: :class:`Reply` (an HTTP answer,
then close) or :class:`Upgrade` (the 101 and the route's handler). Bad
requests and a raising ``route()`` become HTTP errors here, logged and
counted, so no exception reaches the IO loop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from wsproto.extensions import Extension

from ..limits import Limits
from ..protocol.handshake import Handshake, HttpError, HttpRequest
from ..protocol.http import Response
from ..stats import Stats
from .handler import Handler, Router

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    """Send ``data`` (a complete HTTP response), then close."""

    data: bytes
    status: int


@dataclass(frozen=True)
class Upgrade:
    """Send ``reply`` (the 101) and run ``handler`` over a WebSocket session with ``extension``."""

    handler: Handler
    reply: bytes
    extension: Extension | None
    request: HttpRequest
    subprotocol: str | None = None


class HttpPhase:
    """One request, routed. Runs on the IO thread (``route()`` must not block)."""

    def __init__(self, router: Router, limits: Limits, stats: Stats, peer: str) -> None:
        self._router = router
        self._limits = limits
        self._stats = stats
        self._peer = peer
        self._handshake = Handshake()
        self.request: HttpRequest | None = None  # once complete

    def receive_data(self, data: bytes) -> Reply | Upgrade | None:
        """Bytes from the client; ``None`` until the request is complete."""
        try:
            request = self._handshake.receive_data(data)
            if request is None:
                return None
            self.request = request
            return self._route(request)
        except HttpError as exc:
            self._stats.http_errors += 1
            logger.info("%s: HTTP %s: %s", self._peer, exc.status, exc.message)
            return self.reject(exc)
        except Exception:
            # A bug in route(): answer 500 now, not at the handshake timeout.
            self._stats.http_errors += 1
            self._stats.route_errors += 1
            logger.exception("%s: routing %s failed", self._peer, self.request.path if self.request else "the request")
            return self.reject(HttpError(500, "internal server error"))

    def reject(self, error: HttpError) -> Reply:
        """Answer ``error`` (its status, a one-line text body)."""
        return Reply(self._handshake.reject(error), error.status)

    def timed_out(self) -> Reply:
        """No complete request within the handshake timeout: 408."""
        self._stats.handshake_timeouts += 1
        logger.info("%s: no complete request within %.1fs", self._peer, self._limits.handshake_timeout)
        return self.reject(HttpError(408, "request timeout"))

    def _route(self, request: HttpRequest) -> Reply | Upgrade:
        target = self._router.route(request)
        if isinstance(target, Response):  # a plain HTTP route
            return Reply(self._handshake.respond(target.status, *target.encoded()), target.status)
        if isinstance(target, bytes):  # a complete response, built by the route itself
            return Reply(target, 200)
        if not hasattr(target, "on_message"):
            raise TypeError(f"route() returned {type(target).__name__}; expected a Handler, a Response or bytes")
        subprotocol = choose_subprotocol(request.subprotocols, getattr(target, "subprotocols", ()))
        reply, extension = self._handshake.accept(self._limits.deflate, self._limits.max_message_bytes, subprotocol)
        return Upgrade(target, reply, extension, request, subprotocol)


def choose_subprotocol(offered: list[str], supported: Sequence[str]) -> str | None:
    """The first subprotocol the client offers that the handler supports (simple-websocket's rule), or None."""
    return next((name for name in offered if name in supported), None)
