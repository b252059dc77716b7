"""WebSockets inside a WSGI app, with every byte written by wsrace's IO thread: ``accept(environ)``.

::

    from wsrace.wsgi import accept, Refused

    def app(environ, start_response):
        try:
            ws = accept(environ)
        except Refused as exc:          # not a valid WebSocket handshake: an HTTP error
            return exc(environ, start_response)
        while True:
            ws.send(ws.receive())       # or ws.detach(on_message) and return at once
        return ws.response(start_response)

``accept`` validates the handshake (errors are answered by the WSGI server,
as any response), takes the socket from the WSGI server for good
(:mod:`.takeover`), and gives it to this process's hub (:mod:`.hub`), whose
IO thread answers the handshake and from then on is the only code that
reads or writes it. Flask apps use :mod:`.flask` (``Sock``) instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import fields, replace
from typing import Any

from ..limits import Limits
from ..protocol.handshake import Handshake, HttpError, check_upgrade
from .hub import hub, post_worker_init, shutdown, track
from .takeover import StartResponse, UnsupportedServer, body_problem, detect, rebuild_head, take
from .websocket import ConnectionClosed, WebSocket

__all__ = ["ConnectionClosed", "Refused", "UnsupportedServer", "WebSocket", "accept", "hub", "post_worker_init",
           "shutdown"]

# simple-websocket's options that only tune its own reader thread: accepted (flask-sock apps pass them) and ignored.
_IGNORED = frozenset({"receive_bytes", "thread_class", "event_class", "selector_class"})
_LIMITS = frozenset(f.name for f in fields(Limits))
_UNSET: Any = object()


class Refused(HttpError):
    """Not a WebSocket handshake we can accept; the WSGI server still owns the socket. Also a WSGI app answering it."""

    @property
    def wsgi_headers(self) -> list[tuple[str, str]]:
        """The error's own headers (``Sec-WebSocket-Version``, ``Allow``, ...) as WSGI wants them."""
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.headers]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        body = (self.message + "\n").encode("utf-8")
        start_response(f"{self.status} {_REASONS.get(self.status, 'Error')}",
                       [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                        *self.wsgi_headers])
        return [body]


_REASONS = {400: "Bad Request", 405: "Method Not Allowed", 426: "Upgrade Required"}


def accept(environ: dict[str, Any], subprotocols: Sequence[str] | str | None = None, ping_interval: float | None = _UNSET,
           max_message_size: int | None = None, **options: Any) -> WebSocket:
    """Take the WebSocket of this request away from the WSGI server and open it on wsrace's IO thread.

    ``subprotocols``: those this endpoint speaks (the first the client also
    offers is agreed). ``ping_interval``: seconds between keepalive pings
    (None: none; default ``Limits.ping_interval``). ``max_message_size``:
    bytes (None: ``Limits.max_message_bytes``, 16 MiB — never unlimited).
    Any other :class:`~server.limits.Limits` field may be given by name
    (``max_queue_bytes``, ``stall_timeout``, ...); simple-websocket's
    ``receive_bytes``, ``thread_class``, ``event_class`` and
    ``selector_class`` are accepted and ignored.

    Raises :class:`Refused` (answer it: it is a WSGI app) for a request that
    is not a valid handshake, :class:`UnsupportedServer` for a WSGI server
    that cannot hand its socket over — both before the socket is touched.
    Once this returns, the view must finish with :meth:`WebSocket.response`
    (flask: ``wsrace.flask.Sock`` does it), never with a response of its own.
    """
    mode, _ = detect(environ)
    limits = _limits(ping_interval, max_message_size, options)
    head = rebuild_head(environ)
    try:
        problem = body_problem(environ)
        if problem:
            raise HttpError(400, problem)
        request = Handshake().receive_data(head)
        if request is None:
            raise HttpError(400, "incomplete request head")
        check_upgrade(request)
    except HttpError as exc:
        raise Refused(exc.status, exc.message, exc.headers) from None
    if isinstance(subprotocols, str):
        subprotocols = [subprotocols]
    taken = take(environ)
    ws = WebSocket(mode, subprotocols or (), borrowed=taken.borrowed)
    track(ws)
    try:
        hub().adopt(taken.sock, taken.request, ws.bridge(), limits).result(timeout=limits.handshake_timeout)
    except (OSError, FutureTimeout) as exc:  # the client left before the IO thread took it
        ws.not_opened(f"the client left during the handshake: {exc}")
    else:
        ws.not_opened("the handshake failed")  # if the IO thread answered it with an HTTP error; else a no-op
    return ws


def _limits(ping_interval: float | None, max_message_size: int | None, options: dict[str, Any]) -> Limits:
    unknown = set(options) - _LIMITS - _IGNORED
    if unknown:
        raise TypeError(f"unknown WebSocket option(s) {', '.join(sorted(unknown))}; "
                        f"expected subprotocols, ping_interval, max_message_size or a Limits field")
    chosen = {name: value for name, value in options.items() if name in _LIMITS}
    if ping_interval is not _UNSET:
        chosen["ping_interval"] = ping_interval
    if max_message_size is not None:
        chosen["max_message_bytes"] = max_message_size
    return replace(hub().limits, **chosen)
